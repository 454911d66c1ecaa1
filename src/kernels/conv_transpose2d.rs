//! Transposed 2-D convolution (`shaders/conv_transpose2d.wgsl`): PyTorch's `ConvTranspose2d`
//! with its bias and an optional ReLU, NCHW, f32 or f16 storage with f32 sums. Mask R-CNN's
//! mask predictor upsamples its 14x14 RoI features to 28x28 with one
//! (`mask_predictor.conv5_mask`: 256 -> 256, kernel 2, stride 2, then ReLU).
//!
//! # Why a kernel of its own, and why this one
//! A transposed convolution is a convolution of the input dilated by the stride, but run that
//! way three quarters of a stride-2 layer's multiply-adds would be with inserted zeros. The
//! kernel instead splits the output into its stride_h x stride_w phases (the pixels of one
//! remainder of oy and ox by the stride), each an ordinary convolution with a fixed subset of
//! the taps, and gathers each output pixel from those taps only: every multiply-add is a real
//! one and no two invocations write one output (a scatter over input pixels would need atomic
//! float adds, which WGSL lacks). Where the kernel equals the stride and nothing is padded
//! (Mask R-CNN's case) each phase has exactly one tap that always lands inside the input, and
//! the pipeline is specialised without the tap loop and bounds checks. The shader's header
//! gives the tiling and why.
//!
//! The weights arrive in PyTorch's layout `[Cin, Cout / groups, kh, kw]` and are stored per tap
//! and input channel, `[kh][kw][Cin][Cout]` (Cout padded to a multiple of 8), so that an
//! invocation reads its 8 output channels as two vec4s; only `groups = 1` is implemented.

use crate::error::{Error, Result};
use crate::gpu::{BatchGrid, Dispatch, GpuContext};
use crate::kernels::{check_io, check_nchw, check_output_shape, pipeline, ShaderSource};
use crate::precision::Precision;
use crate::tensor::{check_shape, Tensor};

const OP: &str = "conv_transpose2d";

/// The WGSL source.
pub const SHADER: ShaderSource = ShaderSource {
    name: "conv_transpose2d.wgsl",
    parts: &["common.wgsl", "conv_transpose2d.wgsl"],
    source: concat!(
        include_str!("../../shaders/common.wgsl"),
        include_str!("../../shaders/conv_transpose2d.wgsl")
    ),
    params: &[(
        "ConvTranspose2dParams",
        std::mem::size_of::<ConvTranspose2dParams>(),
    )],
    enables: "",
    precisions: &Precision::ALL,
};

/// Output channels per invocation (WGSL `COUT_TILE`); the weights' Cout is padded to it.
pub const COUT_TILE: usize = 8;
/// Pixels per invocation (WGSL `PIX_TILE`).
pub const PIX_TILE: usize = 8;
/// Invocations per workgroup (WGSL `WG_PIX`).
pub const WG_PIX: u32 = 64;

/// Mirrors `ConvTranspose2dParams` in the WGSL.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct ConvTranspose2dParams {
    in_channels: u32,
    in_height: u32,
    in_width: u32,
    out_channels: u32,
    out_height: u32,
    out_width: u32,
    cout_vec4: u32,
    kernel_h: u32,
    kernel_w: u32,
    stride_h: u32,
    stride_w: u32,
    pad_h: u32,
    pad_w: u32,
    dil_h: u32,
    dil_w: u32,
    batch: u32,
    relu: u32,
    _pad: [u32; 3],
}

/// PyTorch's `ConvTranspose2d` arguments besides the channels and the kernel size (which come
/// from the weights), and the fused ReLU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvTranspose2dOptions {
    /// (vertical, horizontal) stride, each at least 1.
    pub stride: (usize, usize),
    /// (vertical, horizontal) `padding`: rows and columns taken off each side of the output.
    pub padding: (usize, usize),
    /// (vertical, horizontal) `output_padding`: rows and columns added at the bottom and
    /// right, each smaller than the stride or the dilation along its axis.
    pub output_padding: (usize, usize),
    /// (vertical, horizontal) dilation of the kernel, each at least 1.
    pub dilation: (usize, usize),
    /// `groups`; only 1 is implemented.
    pub groups: usize,
    /// A ReLU after the bias.
    pub relu: bool,
}

impl Default for ConvTranspose2dOptions {
    fn default() -> Self {
        ConvTranspose2dOptions {
            stride: (1, 1),
            padding: (0, 0),
            output_padding: (0, 0),
            dilation: (1, 1),
            groups: 1,
            relu: false,
        }
    }
}

impl ConvTranspose2dOptions {
    /// Square stride and padding, no output padding, dilation 1, no ReLU.
    pub fn new(stride: usize, padding: usize) -> Self {
        ConvTranspose2dOptions {
            stride: (stride, stride),
            padding: (padding, padding),
            ..Default::default()
        }
    }

    /// The same with the ReLU set as `relu` says.
    pub fn with_relu(self, relu: bool) -> Self {
        ConvTranspose2dOptions { relu, ..self }
    }

    /// Mask R-CNN's `conv5_mask` then its ReLU: kernel 2 (from the weights), stride 2, no
    /// padding.
    pub fn mask_upsample() -> Self {
        ConvTranspose2dOptions::new(2, 0).with_relu(true)
    }

    /// Checks the options: groups 1, positive stride and dilation, PyTorch's bound on the
    /// output padding.
    pub fn check(&self) -> Result<()> {
        if self.groups != 1 {
            return Err(Error::Unsupported {
                op: OP,
                message: format!(
                    "groups = {}: only groups = 1 is implemented (torchvision's mask head uses 1); \
                     run each group as its own layer on its slice of the channels",
                    self.groups
                ),
            });
        }
        let (sh, sw) = self.stride;
        let (dh, dw) = self.dilation;
        if sh == 0 || sw == 0 || dh == 0 || dw == 0 {
            return Err(Error::invalid(
                OP,
                format!(
                    "stride {:?} and dilation {:?}: each must be at least 1",
                    self.stride, self.dilation
                ),
            ));
        }
        let (oph, opw) = self.output_padding;
        if (oph >= sh && oph >= dh) || (opw >= sw && opw >= dw) {
            return Err(Error::invalid(
                OP,
                format!(
                    "output padding {:?} with stride {:?} and dilation {:?}: each must be smaller than the stride or the dilation along its axis, as PyTorch requires",
                    self.output_padding, self.stride, self.dilation
                ),
            ));
        }
        let big = |v: usize| v > u16::MAX as usize;
        if [sh, sw, dh, dw, self.padding.0, self.padding.1]
            .into_iter()
            .any(big)
        {
            return Err(Error::invalid(
                OP,
                format!(
                    "stride {:?}, padding {:?}, dilation {:?}: each must be at most {}",
                    self.stride,
                    self.padding,
                    self.dilation,
                    u16::MAX
                ),
            ));
        }
        Ok(())
    }

    /// Whether every output pixel gets exactly one tap per input channel, always inside the
    /// input: kernel = stride, no padding, no output padding, dilation 1.
    fn one_tap(&self, kernel: (usize, usize)) -> bool {
        kernel == self.stride
            && self.padding == (0, 0)
            && self.output_padding == (0, 0)
            && self.dilation == (1, 1)
    }
}

/// The output shape of a layer of weights `[Cin, Cout, kh, kw]` on `input` `[N, Cin, H, W]`:
/// `[N, Cout, (H - 1) * stride - 2 * padding + dilation * (kh - 1) + output_padding + 1, ...]`.
pub fn output_shape(
    input: [usize; 4],
    w_shape: [usize; 4],
    opts: &ConvTranspose2dOptions,
) -> Result<[usize; 4]> {
    opts.check()?;
    let [n, cin, h, w] = input;
    let [wcin, cout, kh, kw] = w_shape;
    if cin != wcin {
        return Err(Error::invalid(
            OP,
            format!(
                "the input {input:?} has {cin} channels but the weights {w_shape:?} take {wcin} (PyTorch's layout [Cin, Cout, kh, kw])"
            ),
        ));
    }
    if [n, cin, h, w, cout, kh, kw].contains(&0) {
        return Err(Error::invalid(
            OP,
            format!(
                "the input {input:?} and weights {w_shape:?}: every dimension must be at least 1"
            ),
        ));
    }
    let (dh, dw) = opts.dilation;
    if kh.saturating_mul(dh) > 1 << 20 || kw.saturating_mul(dw) > 1 << 20 {
        return Err(Error::invalid(
            OP,
            format!(
                "a {kh}x{kw} kernel dilated by {:?} spans more than 2^20 pixels",
                opts.dilation
            ),
        ));
    }
    let side = |size: usize, s: usize, p: usize, d: usize, k: usize, op: usize| {
        let full = (size - 1)
            .checked_mul(s)
            .and_then(|v| v.checked_add(d.checked_mul(k - 1)?))
            .and_then(|v| v.checked_add(op + 1))?;
        full.checked_sub(2 * p).filter(|&v| v > 0)
    };
    let (sh, sw) = opts.stride;
    let (ph, pw) = opts.padding;
    let (oph, opw) = opts.output_padding;
    match (
        side(h, sh, ph, dh, kh, oph),
        side(w, sw, pw, dw, kw, opw),
    ) {
        (Some(oh), Some(ow)) => Ok([n, cout, oh, ow]),
        _ => Err(Error::invalid(
            OP,
            format!(
                "the input {input:?} with weights {w_shape:?}, stride {:?}, padding {:?}, dilation {:?} and output padding {:?} gives no output pixels; reduce the padding",
                opts.stride, opts.padding, opts.dilation, opts.output_padding
            ),
        )),
    }
}

/// A transposed convolution's weights on the GPU: `[kh][kw][Cin][Cout]` stored as the
/// activations are, the bias f32.
#[derive(Debug)]
pub struct ConvTranspose2dWeights {
    /// PyTorch's `[Cin, Cout, kh, kw]`.
    shape: [usize; 4],
    precision: Precision,
    cout_pad: usize,
    weights: wgpu::Buffer,
    bias: wgpu::Buffer,
}

impl ConvTranspose2dWeights {
    /// Uploads `weight` in PyTorch's `ConvTranspose2d` layout `[Cin, Cout, kh, kw]` (row-major)
    /// and `bias` `[Cout]`, stored in `precision`.
    pub fn new(
        ctx: &GpuContext,
        shape: [usize; 4],
        weight: &[f32],
        bias: Option<&[f32]>,
        precision: Precision,
    ) -> Result<Self> {
        ctx.check_precision(OP, precision)?;
        let [cin, cout, kh, kw] = shape;
        let numel = shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .filter(|&n| n > 0 && u32::try_from(n).is_ok())
            .ok_or_else(|| {
                Error::invalid(
                    OP,
                    format!("weights of shape {shape:?}: every dimension must be at least 1 and the count below 2^32"),
                )
            })?;
        if weight.len() != numel {
            return Err(Error::invalid(
                OP,
                format!(
                    "the weights {shape:?} hold {numel} values but {} were given",
                    weight.len()
                ),
            ));
        }
        if let Some(b) = bias {
            if b.len() != cout {
                return Err(Error::invalid(
                    OP,
                    format!(
                        "the bias has {} values but the layer has {cout} output channels",
                        b.len()
                    ),
                ));
            }
        }
        let cout_pad = cout.next_multiple_of(COUT_TILE);
        let mut laid = vec![0.0f32; kh * kw * cin * cout_pad];
        for ci in 0..cin {
            for co in 0..cout {
                for ky in 0..kh {
                    for kx in 0..kw {
                        laid[((ky * kw + kx) * cin + ci) * cout_pad + co] =
                            weight[((ci * cout + co) * kh + ky) * kw + kx];
                    }
                }
            }
        }
        let bytes = precision.encode(&laid);
        ctx.check_binding_size(OP, "the weights", bytes.len() as u64)?;
        let mut b = vec![0.0f32; cout_pad];
        if let Some(bias) = bias {
            b[..cout].copy_from_slice(bias);
        }
        Ok(ConvTranspose2dWeights {
            shape,
            precision,
            cout_pad,
            weights: ctx.storage_from("conv_transpose2d weights", &bytes),
            bias: ctx.storage_from("conv_transpose2d bias", &b),
        })
    }

    /// PyTorch's `[Cin, Cout, kh, kw]`.
    pub fn shape(&self) -> [usize; 4] {
        self.shape
    }

    /// How the weights are stored (the precision of the tensors they multiply).
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Bytes the weights and the bias occupy on the GPU.
    pub fn byte_size(&self) -> u64 {
        self.weights.size() + self.bias.size()
    }
}

/// Builds the launch writing `out` `[N, Cout, OH, OW]` = `relu?(conv_transpose(x) + bias)` for
/// `x` `[N, Cin, H, W]` stored as the weights are.
pub fn prepare(
    ctx: &GpuContext,
    x: &Tensor,
    weights: &ConvTranspose2dWeights,
    opts: &ConvTranspose2dOptions,
    out: &Tensor,
) -> Result<Dispatch> {
    check_nchw(OP, x)?;
    check_nchw(OP, out)?;
    check_shape(ctx, OP, "the input", x.shape())?;
    let shape = output_shape(x.shape(), weights.shape, opts)?;
    check_output_shape(OP, out, shape)?;
    check_shape(ctx, OP, "the output", shape)?;
    if x.precision() != weights.precision {
        return Err(Error::invalid(
            OP,
            format!(
                "the input is {} but the weights are stored in {}; upload the weights in the input's precision",
                x.precision(),
                weights.precision
            ),
        ));
    }
    check_io(OP, out, &[x])?;
    let too_many = |what: &str| {
        Error::invalid(
            OP,
            format!("{what} has 2^32 values or more; run the batch in smaller parts"),
        )
    };
    if u32::try_from(x.numel()).is_err() {
        return Err(too_many("the input"));
    }
    if u32::try_from(out.numel()).is_err() {
        return Err(too_many("the output"));
    }
    let [n, cin, h, w] = x.shape();
    let [_, cout, oh, ow] = shape;
    let [_, _, kh, kw] = weights.shape;
    let (sh, sw) = opts.stride;
    // Phase 0 is the largest: ceil(OH / sh) x ceil(OW / sw) pixels per image.
    let phase0 = (oh.div_ceil(sh) * ow.div_ceil(sw)) as u64 * n as u64;
    let tiles = phase0.div_ceil(WG_PIX as u64 * PIX_TILE as u64);
    let grid = [
        u32::try_from(tiles).unwrap_or(u32::MAX),
        u32::try_from(cout.div_ceil(COUT_TILE)).unwrap_or(u32::MAX),
        (sh * sw) as u32,
    ];
    ctx.check_grid(OP, grid)?;
    let params = ConvTranspose2dParams {
        in_channels: cin as u32,
        in_height: h as u32,
        in_width: w as u32,
        out_channels: cout as u32,
        out_height: oh as u32,
        out_width: ow as u32,
        cout_vec4: (weights.cout_pad / 4) as u32,
        kernel_h: kh as u32,
        kernel_w: kw as u32,
        stride_h: sh as u32,
        stride_w: sw as u32,
        pad_h: opts.padding.0 as u32,
        pad_w: opts.padding.1 as u32,
        dil_h: opts.dilation.0 as u32,
        dil_w: opts.dilation.1 as u32,
        batch: n as u32,
        relu: opts.relu as u32,
        _pad: [0; 3],
    };
    let one_tap = opts.one_tap((kh, kw));
    let mut constants = vec![("WG_PIX", WG_PIX)];
    if one_tap {
        constants.push(("ONE_TAP", 1));
    }
    let pipeline = pipeline(ctx, &SHADER, x.precision(), OP, &constants)?;
    let uniform = ctx.uniform(&params);
    let bind_group = ctx.bind_group(
        OP,
        &pipeline,
        &[
            (0, x.binding()),
            (1, weights.weights.as_entire_binding()),
            (2, weights.bias.as_entire_binding()),
            (3, out.binding()),
            (4, uniform.binding()),
        ],
    );
    Ok(Dispatch::new(OP, pipeline, bind_group, grid)
        .with_config(format!(
            "{} phases x {tiles} tiles{}{}",
            sh * sw,
            if one_tap { ", one tap" } else { "" },
            if opts.relu { ", relu" } else { "" }
        ))
        .with_batch(BatchGrid::X {
            items_per_row: u32::try_from(phase0 / n.max(1) as u64).unwrap_or(u32::MAX),
            items_per_group: WG_PIX * PIX_TILE as u32,
        }))
}

/// Runs a transposed convolution now and returns `relu?(conv_transpose(x) + bias)`.
pub fn conv_transpose2d(
    ctx: &GpuContext,
    x: &Tensor,
    weights: &ConvTranspose2dWeights,
    opts: &ConvTranspose2dOptions,
) -> Result<Tensor> {
    let shape = output_shape(x.shape(), weights.shape, opts)?;
    let out = Tensor::empty_as(ctx, shape, x.precision())?;
    ctx.submit(&[&prepare(ctx, x, weights, opts, &out)?])?;
    Ok(out)
}
