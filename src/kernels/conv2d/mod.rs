//! 2-D convolution with a fused epilogue: the options, the parameters and the weights every
//! kernel shares, and [`prepare`], which hands a convolution to the kernel [`strategy`] picks:
//! [`direct`] (NCHW: direct, row-tiled with [`rows`], Winograd), [`grouped`] (NCHW, more than
//! one group) or [`coop`] (channels-last, cooperative matrices, with the large-map block of
//! [`coop::staged`]).

pub mod coop;
pub mod direct;
pub mod grouped;
pub mod rows;
pub mod strategy;
mod weights;

pub use coop::CoopChoice;
pub use strategy::{ConvChoice, ConvProblem, DeviceProfile};
pub use weights::{Conv2dWeights, WeightLayout};

use crate::error::{Error, Result};
use crate::gpu::{Dispatch, GpuContext};
use crate::kernels::upsample_add::UpsampleMode;
use crate::kernels::{check_io, check_nchw, check_output_shape, pad2d};
use crate::tensor::{check_shape_in, padded_bytes, Tensor};

/// Weights (and the affine) are zero padded to a multiple of this many output channels: the
/// largest channel tile of the NCHW kernels.
pub const COUT_ALIGN: usize = 16;

/// A grouped convolution's weights `[cout, cin / groups, kh, kw]` as the equivalent dense
/// `[cout, cin, kh, kw]`: block diagonal, each output channel's group of inputs filled and the
/// rest zero. The channels-last networks run grouped convolutions this way (the
/// cooperative-matrix kernels have no grouped form): exact, at `groups` times the multiply-adds
/// and weight bytes of the [`grouped`] kernel.
pub fn dense_from_grouped(
    weight: &[f32],
    grouped_shape: [usize; 4],
    groups: usize,
) -> Result<Vec<f32>> {
    let [cout, cin_g, kh, kw] = grouped_shape;
    if groups == 0 || cout % groups != 0 || weight.len() != cout * cin_g * kh * kw {
        return Err(Error::invalid(
            "dense_from_grouped",
            format!(
                "weights of shape {grouped_shape:?} ({} values) cannot be split into {groups} \
                 groups: the output channels must be a multiple of the groups",
                weight.len()
            ),
        ));
    }
    let cin = cin_g * groups;
    let taps = kh * kw;
    let cout_g = cout / groups;
    let mut dense = vec![0.0f32; cout * cin * taps];
    for co in 0..cout {
        let first = co / cout_g * cin_g;
        let from = &weight[co * cin_g * taps..(co + 1) * cin_g * taps];
        let to = (co * cin + first) * taps;
        dense[to..to + cin_g * taps].copy_from_slice(from);
    }
    Ok(dense)
}

const FLAG_RELU: u32 = 1;
const FLAG_RESIDUAL: u32 = 2;
const FLAG_UPSAMPLE_BILINEAR: u32 = 4;
const FLAG_UPSAMPLE_NEAREST: u32 = 8;

/// The epilogue's flag bits by their names in `shaders/conv2d_epilogue.wgsl`, which declares
/// them for every convolution kernel (the tests check that both sides agree).
pub const EPILOGUE_FLAGS: [(&str, u32); 4] = [
    ("FLAG_RELU", FLAG_RELU),
    ("FLAG_RESIDUAL", FLAG_RESIDUAL),
    ("FLAG_UPSAMPLE_BILINEAR", FLAG_UPSAMPLE_BILINEAR),
    ("FLAG_UPSAMPLE_NEAREST", FLAG_UPSAMPLE_NEAREST),
];

/// Mirrors `Conv2dParams` in the WGSL.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct Conv2dParams {
    pub in_channels: u32,
    pub in_height: u32,
    pub in_width: u32,
    pub out_channels: u32,
    pub out_height: u32,
    pub out_width: u32,
    pub cout_vec4: u32,
    pub kernel_h: u32,
    pub kernel_w: u32,
    pub stride_h: u32,
    pub stride_w: u32,
    pub pad_h: u32,
    pub pad_w: u32,
    pub flags: u32,
    pub res_height: u32,
    pub res_width: u32,
    pub res_scale_h: f32,
    pub res_scale_w: f32,
    pub splits: u32,
    pub batch: u32,
    pub groups: u32,
    /// The input's and the output's padded channel counts when they are channels-last (the
    /// general direct kernel only), 0 for NCHW.
    pub in_cl: u32,
    pub out_cl: u32,
    pub _pad: u32,
}

impl Conv2dParams {
    /// What an NCHW convolution kernel reads. `conv` is the convolution's output shape
    /// (`[n, cout, oh, ow]`, by which the residual's resize scales go), `input` the extent the
    /// kernel indexes (`[cin, h, w]`), `written` the plane it writes (`(h, w)`: a pointwise
    /// convolution may see its planes as one long row).
    pub(crate) fn new(
        opts: &Conv2dOptions,
        weights: &Conv2dWeights,
        residual: Option<&Tensor>,
        conv: [usize; 4],
        input: [usize; 3],
        written: (usize, usize),
        splits: usize,
    ) -> Self {
        let [n, cout, oh, ow] = conv;
        let [cin, in_h, in_w] = input;
        let [_, _, kh, kw] = weights.shape;
        let (flags, res_height, res_width) = epilogue_flags(opts, residual, oh, ow);
        Conv2dParams {
            in_channels: cin as u32,
            in_height: in_h as u32,
            in_width: in_w as u32,
            out_channels: cout as u32,
            out_height: written.0 as u32,
            out_width: written.1 as u32,
            cout_vec4: (weights.cout_pad / 4) as u32,
            kernel_h: kh as u32,
            kernel_w: kw as u32,
            stride_h: opts.stride.0 as u32,
            stride_w: opts.stride.1 as u32,
            pad_h: opts.padding.0 as u32,
            pad_w: opts.padding.1 as u32,
            flags,
            res_height: res_height as u32,
            res_width: res_width as u32,
            // In f32, as PyTorch computes its resize scales (see upsample_add).
            res_scale_h: res_height as f32 / oh as f32,
            res_scale_w: res_width as f32 / ow as f32,
            splits: splits as u32,
            batch: n as u32,
            groups: opts.groups as u32,
            in_cl: 0,
            out_cl: 0,
            _pad: 0,
        }
    }
}

/// How the epilogue adds the residual tensor, when there is one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ResidualMode {
    /// The residual has the output's shape and is added as it is (a ResNet shortcut).
    #[default]
    Same,
    /// The residual is a coarser map of the output's batch and channels, resized to the output's
    /// size first (the FPN's top-down merge: `upsample(coarse) + conv(x)`).
    Upsampled(UpsampleMode),
}

/// Stride, zero padding and the ReLU of the epilogue. The kernel size comes from the weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dOptions {
    /// (vertical, horizontal) stride, each at least 1.
    pub stride: (usize, usize),
    /// (vertical, horizontal) zero padding on each side.
    pub padding: (usize, usize),
    /// Apply ReLU after the affine epilogue and the residual add.
    pub relu: bool,
    /// How a residual, when given, is added.
    pub residual: ResidualMode,
    /// A zero halo of (vertical, horizontal) pixels around the output, written by the
    /// convolution itself: the padded input of the next convolution, made without a padding
    /// launch. Channels-last (cooperative-matrix) kernels only.
    pub out_padding: (usize, usize),
    /// Groups the input and output channels split into (PyTorch's `groups`, at least 1): output
    /// channel `co` sees only the input channels of group `co / (cout / groups)`, and the
    /// weights are `[cout, cin / groups, kh, kw]`.
    pub groups: usize,
}

impl Default for Conv2dOptions {
    fn default() -> Self {
        Conv2dOptions {
            stride: (1, 1),
            padding: (0, 0),
            relu: false,
            residual: ResidualMode::Same,
            out_padding: (0, 0),
            groups: 1,
        }
    }
}

impl Conv2dOptions {
    /// Square stride and padding, no ReLU.
    pub fn new(stride: usize, padding: usize) -> Self {
        Conv2dOptions {
            stride: (stride, stride),
            padding: (padding, padding),
            relu: false,
            residual: ResidualMode::Same,
            out_padding: (0, 0),
            groups: 1,
        }
    }

    /// The same options with ReLU on or off.
    pub fn with_relu(self, relu: bool) -> Self {
        Conv2dOptions { relu, ..self }
    }

    /// The same options with the residual added as `residual` says.
    pub fn with_residual(self, residual: ResidualMode) -> Self {
        Conv2dOptions { residual, ..self }
    }

    /// The same options with the channels split into `groups` groups.
    pub fn with_groups(self, groups: usize) -> Self {
        Conv2dOptions { groups, ..self }
    }

    /// The same options with a zero halo of `out_padding` around the output.
    pub fn with_out_padding(self, out_padding: (usize, usize)) -> Self {
        Conv2dOptions {
            out_padding,
            ..self
        }
    }
}

/// Checks a residual's shape against the output's: equal for [`ResidualMode::Same`], the same
/// batch and channels for [`ResidualMode::Upsampled`].
pub fn check_residual_shape(
    out: [usize; 4],
    residual: [usize; 4],
    mode: ResidualMode,
) -> Result<()> {
    let ok = match mode {
        ResidualMode::Same => residual == out,
        ResidualMode::Upsampled(_) => residual[..2] == out[..2],
    };
    if !ok {
        let rule = match mode {
            ResidualMode::Same => "it must match the output",
            ResidualMode::Upsampled(_) => "it must have the batch and channels of the output",
        };
        return Err(Error::invalid(
            "conv2d",
            format!("the residual has shape {residual:?}; {rule} {out:?}"),
        ));
    }
    Ok(())
}

/// The shape of the tensor a convolution writes: the convolution's own output, plus the
/// halo of [`Conv2dOptions::out_padding`]; or an error naming the offending value.
pub fn output_shape(
    input: [usize; 4],
    weight: [usize; 4],
    opts: &Conv2dOptions,
) -> Result<[usize; 4]> {
    let [n, c, h, w] = conv_shape(input, weight, opts)?;
    let (ph, pw) = opts.out_padding;
    let grow = |size: usize, pad: usize| pad.checked_mul(2).and_then(|p| p.checked_add(size));
    match (grow(h, ph), grow(w, pw)) {
        (Some(h), Some(w)) => Ok([n, c, h, w]),
        _ => Err(Error::invalid(
            "conv2d",
            format!("the output halo {:?} is too large", opts.out_padding),
        )),
    }
}

/// The shape of a convolution's output without its halo (what a residual must match), or an
/// error naming the offending value.
pub fn conv_shape(
    input: [usize; 4],
    weight: [usize; 4],
    opts: &Conv2dOptions,
) -> Result<[usize; 4]> {
    const OP: &str = "conv2d";
    let [n, c, h, w] = input;
    let [cout, cin_g, kh, kw] = weight;
    let groups = opts.groups;
    if groups == 0 || c % groups != 0 || cout % groups != 0 {
        return Err(Error::invalid(
            OP,
            format!(
                "groups {groups} must be at least 1 and divide both the input channels ({c}) and \
                 the output channels ({cout}); use a group count that divides both"
            ),
        ));
    }
    if c != cin_g * groups {
        let hint = if groups == 1 {
            String::new()
        } else {
            format!(
                " ({groups} groups of {cin_g}; grouped weights are [cout, cin / groups, kh, kw])"
            )
        };
        return Err(Error::invalid(
            OP,
            format!(
                "the input has {c} channels (shape {input:?}) but the weights expect {}{hint}",
                cin_g * groups
            ),
        ));
    }
    if opts.stride.0 == 0 || opts.stride.1 == 0 {
        return Err(Error::invalid(
            OP,
            format!("stride {:?} must be at least 1", opts.stride),
        ));
    }
    let (ph, pw) = opts.padding;
    if h + 2 * ph < kh || w + 2 * pw < kw {
        return Err(Error::invalid(
            OP,
            format!(
                "the {kh}x{kw} kernel is larger than the padded input {}x{} (input {h}x{w}, padding {ph}x{pw})",
                h + 2 * ph,
                w + 2 * pw
            ),
        ));
    }
    let oh = (h + 2 * ph - kh) / opts.stride.0 + 1;
    let ow = (w + 2 * pw - kw) / opts.stride.1 + 1;
    Ok([n, cout, oh, ow])
}

/// The residual's binding, or the context's placeholder where there is none: the kernels
/// declare the binding either way, and the epilogue reads it only when told to.
fn residual_binding<'a>(
    ctx: &'a GpuContext,
    residual: Option<&'a Tensor>,
) -> wgpu::BindingResource<'a> {
    match residual {
        Some(r) => r.binding(),
        None => ctx.placeholder().as_entire_binding(),
    }
}

/// [`check_tensors`] for the kernels that read and write NCHW tensors (or channels-last ones
/// too, where `channels_last_ok`: the general direct kernel) and write no output halo;
/// `kernels` names them in the refusal.
#[allow(clippy::too_many_arguments)]
fn check_nchw_tensors(
    ctx: &GpuContext,
    x: &Tensor,
    weights: &Conv2dWeights,
    residual: Option<&Tensor>,
    out: &Tensor,
    opts: &Conv2dOptions,
    kernels: &str,
    channels_last_ok: bool,
) -> Result<[usize; 4]> {
    const OP: &str = "conv2d";
    if opts.out_padding != (0, 0) {
        return Err(Error::invalid(
            OP,
            format!(
                "{kernels} no output halo (out_padding {:?}); pad the output with kernels::pad2d",
                opts.out_padding
            ),
        ));
    }
    let shape = check_tensors(ctx, x, weights, residual, out, opts)?;
    // One layout for all of them is checked above, so the output's stands for the input's.
    if !channels_last_ok {
        check_nchw(OP, out)?;
    }
    Ok(shape)
}

/// The checks every convolution kernel makes of its tensors: the shapes (the output's with its
/// halo), the residual's, one precision and layout and no shared buffer, weights stored in the
/// input's precision. Returns the convolution's output shape without the halo.
fn check_tensors(
    ctx: &GpuContext,
    x: &Tensor,
    weights: &Conv2dWeights,
    residual: Option<&Tensor>,
    out: &Tensor,
    opts: &Conv2dOptions,
) -> Result<[usize; 4]> {
    const OP: &str = "conv2d";
    let written = output_shape(x.shape(), weights.shape, opts)?;
    let shape = conv_shape(x.shape(), weights.shape, opts)?;
    check_shape_in(ctx, OP, "the input", x.shape(), x.memory_format())?;
    check_shape_in(ctx, OP, "the output", written, out.memory_format())?;
    check_output_shape(OP, out, written)?;
    if let Some(r) = residual {
        check_residual_shape(shape, r.shape(), opts.residual)?;
    }
    let mut inputs = vec![x];
    inputs.extend(residual);
    check_io(OP, out, &inputs)?;
    let precision = x.precision();
    if weights.precision != precision {
        return Err(Error::invalid(
            OP,
            format!(
                "the weights are stored in {} but the input is {}; build the weights with Conv2dWeights::with_precision({precision})",
                weights.precision, precision
            ),
        ));
    }
    Ok(shape)
}

/// The epilogue's flags for `opts` and the residual given (if any), and the residual's height
/// and width (the output's, `oh` x `ow`, when there is none).
fn epilogue_flags(
    opts: &Conv2dOptions,
    residual: Option<&Tensor>,
    oh: usize,
    ow: usize,
) -> (u32, usize, usize) {
    let mut flags = 0;
    if opts.relu {
        flags |= FLAG_RELU;
    }
    let Some(r) = residual else {
        return (flags, oh, ow);
    };
    flags |= match opts.residual {
        ResidualMode::Same => FLAG_RESIDUAL,
        ResidualMode::Upsampled(UpsampleMode::Bilinear) => FLAG_UPSAMPLE_BILINEAR,
        ResidualMode::Upsampled(UpsampleMode::Nearest) => FLAG_UPSAMPLE_NEAREST,
    };
    let [_, _, rh, rw] = r.shape();
    (flags, rh, rw)
}

/// The buffer a split-K launch keeps its partial sums in: the caller's (a plan shares one among
/// its launches) or one of the launch's own.
enum Partials<'a> {
    Shared(&'a wgpu::Buffer),
    Own(wgpu::Buffer),
}

impl<'a> Partials<'a> {
    /// The caller's buffer when it is given (an error if it is smaller than `bytes`), else a
    /// new one; an error if `bytes` cannot be bound on this device.
    fn new(
        ctx: &GpuContext,
        given: Option<&'a wgpu::Buffer>,
        bytes: u64,
        what: &str,
    ) -> Result<Self> {
        ctx.check_binding_size("conv2d", "the split-K partial sums", bytes)?;
        match given {
            Some(b) if b.size() >= bytes => Ok(Partials::Shared(b)),
            Some(b) => Err(Error::invalid(
                "conv2d",
                format!(
                    "the partial-sum buffer holds {} bytes; {what} needs {bytes}",
                    b.size()
                ),
            )),
            None => Ok(Partials::Own(
                ctx.storage_zeroed("conv2d partial sums", bytes),
            )),
        }
    }

    /// The binding of its first `bytes`.
    fn binding(&self, bytes: u64) -> wgpu::BindingResource<'_> {
        let buffer = match self {
            Partials::Shared(b) => b,
            Partials::Own(b) => b,
        };
        wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer,
            offset: 0,
            size: wgpu::BufferSize::new(bytes),
        })
    }
}

/// The launches computing `out = relu?(conv(x) * scale + shift + residual?)`: one, or two for a
/// split-K convolution. The kernel, its block and its split are chosen as [`strategy`] says
/// for this device.
pub fn prepare(
    ctx: &GpuContext,
    x: &Tensor,
    weights: &Conv2dWeights,
    residual: Option<&Tensor>,
    out: &Tensor,
    opts: &Conv2dOptions,
) -> Result<Vec<Dispatch>> {
    prepare_with(ctx, x, weights, residual, out, opts, None, None)
}

/// [`prepare`] with the kernel's configuration `choice` (`None`: as [`strategy::choose`] says)
/// and the buffer for split-K partial sums (`None`: one of its own).
#[allow(clippy::too_many_arguments)]
pub fn prepare_with(
    ctx: &GpuContext,
    x: &Tensor,
    weights: &Conv2dWeights,
    residual: Option<&Tensor>,
    out: &Tensor,
    opts: &Conv2dOptions,
    choice: Option<ConvChoice>,
    partials: Option<&wgpu::Buffer>,
) -> Result<Vec<Dispatch>> {
    let problem = ConvProblem::of(x, weights, residual, opts);
    let profile = DeviceProfile::of(ctx);
    let mut choice = match choice {
        Some(c) => {
            c.check(&problem)?;
            c
        }
        None => strategy::choose(&problem, &profile)?,
    };
    if x.vec4_binding().is_none() {
        choice = strategy::for_unaligned_input(choice, &problem, &profile)?;
    }
    // The other kernels sum over every input channel: a grouped convolution there would read
    // its [cout, cin / groups] weights as dense ones.
    let grouped = matches!(choice, ConvChoice::Grouped { .. });
    if (opts.groups > 1) != grouped {
        return Err(Error::invalid(
            "conv2d",
            format!(
                "a convolution of {} groups cannot run as {choice}: grouped convolutions (and only \
                 they) take ConvChoice::Grouped",
                opts.groups
            ),
        ));
    }
    if weights.layout != choice.weight_layout() {
        return Err(layout_mismatch(weights.layout, choice, opts));
    }
    match choice {
        ConvChoice::Grouped { couts, workgroup } => {
            grouped::prepare(ctx, x, weights, residual, out, opts, couts, workgroup)
        }
        ConvChoice::Coop(c) => coop::prepare(ctx, x, weights, residual, out, opts, c, partials),
        other => direct::prepare(ctx, x, weights, residual, out, opts, other, partials),
    }
}

/// The refusal of weights laid out as `layout` by `choice`, which reads another layout.
fn layout_mismatch(layout: WeightLayout, choice: ConvChoice, opts: &Conv2dOptions) -> Error {
    let needed = choice.weight_layout();
    let why = match layout {
        WeightLayout::Winograd => format!(
            "Winograd weights run 3x3 convolutions with stride 1, one group and no upsampled \
             residual (this one: stride {:?}, {} groups, residual {:?})",
            opts.stride, opts.groups, opts.residual
        ),
        WeightLayout::TapMajor => "cooperative-matrix weights run on f16 channels-last tensors \
                                   through conv2d::conv2d or a channels-last plan"
            .into(),
        WeightLayout::KMajor => "these weights run on the NCHW kernels".into(),
    };
    Error::invalid(
        "conv2d",
        format!(
            "{why}; the convolution runs as {choice}, which reads weights laid out as \
             WeightLayout::{needed:?}: build the weights with WeightLayout::{needed:?}"
        ),
    )
}

/// Submits a convolution now and returns its output (downloading it waits for the GPU).
pub fn conv2d(
    ctx: &GpuContext,
    x: &Tensor,
    weights: &Conv2dWeights,
    residual: Option<&Tensor>,
    opts: &Conv2dOptions,
) -> Result<Tensor> {
    conv2d_with(ctx, x, weights, residual, opts, None)
}

/// [`conv2d`] with the kernel's configuration `choice` (`None`: as [`strategy::choose`] says).
pub fn conv2d_with(
    ctx: &GpuContext,
    x: &Tensor,
    weights: &Conv2dWeights,
    residual: Option<&Tensor>,
    opts: &Conv2dOptions,
    choice: Option<ConvChoice>,
) -> Result<Tensor> {
    let shape = output_shape(x.shape(), weights.shape, opts)?;
    let out = Tensor::empty_with(ctx, shape, x.precision(), x.memory_format())?;
    conv2d_into(ctx, x, weights, residual, &out, opts, choice)?;
    Ok(out)
}

/// Submits a convolution into `out` now, with the kernel's configuration `choice` (`None`: as
/// [`strategy::choose`] says). A cooperative-matrix convolution with padding pads its input
/// first, into a tensor with the room after it that the kernel reads.
pub fn conv2d_into(
    ctx: &GpuContext,
    x: &Tensor,
    weights: &Conv2dWeights,
    residual: Option<&Tensor>,
    out: &Tensor,
    opts: &Conv2dOptions,
    choice: Option<ConvChoice>,
) -> Result<()> {
    // The shapes are checked before anything below sizes buffers from them.
    output_shape(x.shape(), weights.shape, opts)?;
    if weights.layout != WeightLayout::TapMajor {
        let launches = prepare_with(ctx, x, weights, residual, out, opts, choice, None)?;
        return ctx.submit(&launches.iter().collect::<Vec<_>>());
    }
    let padded_shape = pad2d::output_shape(x.shape(), opts.padding);
    let unpadded = Conv2dOptions {
        padding: (0, 0),
        ..*opts
    };
    let problem = ConvProblem::of(x, weights, residual, &unpadded)
        .with_input(padded_shape, residual.is_some());
    let profile = DeviceProfile::of(ctx);
    let choice = match choice {
        Some(c) => c,
        None => strategy::choose(&problem, &profile)?,
    };
    let read = choice.input_bytes_read(&problem, &profile);
    let mut launches = Vec::new();
    let staged;
    let input = if opts.padding != (0, 0) || x.bytes_to_end() < read {
        let layout = x.memory_format();
        let slack = read.saturating_sub(padded_bytes(padded_shape, x.precision(), layout));
        staged = Tensor::empty_with_slack(ctx, padded_shape, x.precision(), layout, slack)?;
        launches.push(pad2d::prepare(ctx, x, &staged, opts.padding)?);
        &staged
    } else {
        x
    };
    launches.extend(prepare_with(
        ctx,
        input,
        weights,
        residual,
        out,
        &unpadded,
        Some(choice),
        None,
    )?);
    ctx.submit(&launches.iter().collect::<Vec<_>>())
}
