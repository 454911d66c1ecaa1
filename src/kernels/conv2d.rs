//! 2-D convolution with a fused epilogue (`shaders/conv2d.wgsl`).

use crate::error::{Error, Result};
use crate::gpu::{Dispatch, GpuContext};
use crate::kernels::conv2d_coop as coop;
use crate::kernels::conv2d_rows::RowTile;
use crate::kernels::upsample_add::UpsampleMode;
use crate::kernels::{check_io, check_output_shape, ShaderSource};
use crate::precision::Precision;
use crate::tensor::{check_shape, Tensor};

/// The WGSL source.
pub const SHADER: ShaderSource = ShaderSource {
    name: "conv2d.wgsl",
    parts: &[
        "common.wgsl",
        "resample.wgsl",
        "conv2d_epilogue.wgsl",
        "conv2d.wgsl",
    ],
    source: concat!(
        include_str!("../../shaders/common.wgsl"),
        include_str!("../../shaders/resample.wgsl"),
        include_str!("../../shaders/conv2d_epilogue.wgsl"),
        include_str!("../../shaders/conv2d.wgsl")
    ),
    params: &[("Conv2dParams", std::mem::size_of::<Conv2dParams>())],
    enables: "",
    precisions: &Precision::ALL,
};

/// Output channels per invocation of `conv2d.wgsl` (WGSL `COUT_TILE`).
pub const COUT_TILE: usize = 8;
/// Weights (and the affine) are zero padded to a multiple of this many output channels: the
/// largest channel tile of any convolution kernel.
pub const COUT_ALIGN: usize = 16;
/// Pixels per invocation (WGSL `PIX_TILE`).
pub const PIX_TILE: usize = 8;
/// Invocations per workgroup (WGSL `WG_PIX * WG_CO`).
pub const WG_SIZE: u32 = 64;

/// Channel tiles a workgroup spans on a CPU adapter when the layer has that many.
///
/// llvmpipe runs a workgroup's invocations one SIMD batch after another on one thread, so the
/// batches that share pixels reuse the input from that core's cache: measured on lavapipe, 8
/// channel tiles by 8 pixel lanes against 64 pixel lanes took a 1x1 256->256 conv at 150x225
/// from 9.8 to 16.4 GFLOP/s, 2048->256 at 19x29 from 13.7 to 24.1, a 3x3 256->256 from 25.5 to
/// 27.5; 64-channel layers (4 tiles) did best with 16 x 4 (3x3 64->64: 19.2 -> 24.1).
pub const CPU_CHANNEL_LANES: usize = 8;

/// The workgroup's shape, (invocations along pixels, along channel tiles), for `pixel_lanes`
/// invocations' worth of pixels and `channel_tiles` channel tiles on an adapter of
/// `device_type`. On a CPU adapter up to [`CPU_CHANNEL_LANES`] lanes go along channel tiles
/// (see there); on a GPU all go along pixels. Either way a map too small to fill the pixel lanes
/// gets only as many as it needs (at least 8, one SIMD width of a CPU adapter) and the rest go
/// along channel tiles, so that the deep layers do not leave most invocations idle.
pub fn workgroup_shape(
    pixel_lanes: usize,
    channel_tiles: usize,
    device_type: wgpu::DeviceType,
) -> (u32, u32) {
    let channel_lanes = match device_type {
        wgpu::DeviceType::Cpu => {
            // The largest power of two not above the tile count: no lane without a tile.
            let pow2 = 1usize << channel_tiles.max(1).ilog2();
            pow2.min(CPU_CHANNEL_LANES)
        }
        _ => 1,
    };
    let most_pixels = (WG_SIZE as usize / channel_lanes).max(8);
    let pix_lanes = pixel_lanes.next_power_of_two().clamp(8, most_pixels) as u32;
    (pix_lanes, WG_SIZE / pix_lanes)
}

/// How a convolution is computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvAlgorithm {
    /// Direct convolution, any kernel and stride.
    Direct,
    /// Winograd F(2x2, 3x3): 3x3 kernels with stride 1, 2.25x fewer multiplies.
    Winograd,
    /// Implicit GEMM on cooperative matrices (tensor cores): f16 only, on devices with
    /// [`GpuContext::cooperative_matrix`]; see [`crate::kernels::conv2d_coop`].
    CooperativeMatrix,
}

impl ConvAlgorithm {
    /// Output channels the weights are padded to a multiple of: a whole channel tile of every
    /// kernel, or a whole block of the cooperative-matrix one.
    fn cout_align(self) -> usize {
        match self {
            ConvAlgorithm::Direct | ConvAlgorithm::Winograd => COUT_ALIGN,
            ConvAlgorithm::CooperativeMatrix => coop::DEFAULT_TILE.block_channels(),
        }
    }
}

/// Winograd's G (4x3): U = G g G^T turns a 3x3 kernel into a 4x4 one.
const WINOGRAD_G: [[f64; 3]; 4] = [
    [1.0, 0.0, 0.0],
    [0.5, 0.5, 0.5],
    [0.5, -0.5, 0.5],
    [0.0, 0.0, 1.0],
];

/// Transforms OIHW 3x3 weights to `[Cin][16][cout_pad]` (U = G g G^T per channel pair, in f64),
/// zero padding the output channels to a multiple of [`COUT_ALIGN`].
fn to_winograd(shape: [usize; 4], weight: &[f32]) -> Vec<f32> {
    let [cout, cin, _, _] = shape;
    let cout_pad = cout.next_multiple_of(COUT_ALIGN);
    let mut out = vec![0.0f32; cin * 16 * cout_pad];
    for co in 0..cout {
        for ci in 0..cin {
            let g = &weight[(co * cin + ci) * 9..(co * cin + ci + 1) * 9];
            for r in 0..4 {
                for k in 0..4 {
                    let mut u = 0.0f64;
                    for a in 0..3 {
                        for b in 0..3 {
                            u += WINOGRAD_G[r][a] * g[a * 3 + b] as f64 * WINOGRAD_G[k][b];
                        }
                    }
                    out[(ci * 16 + r * 4 + k) * cout_pad + co] = u as f32;
                }
            }
        }
    }
    out
}

const FLAG_RELU: u32 = 1;
const FLAG_RESIDUAL: u32 = 2;
const FLAG_UPSAMPLE_BILINEAR: u32 = 4;
const FLAG_UPSAMPLE_NEAREST: u32 = 8;

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
    pub _pad0: u32,
    pub _pad1: u32,
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
}

impl Default for Conv2dOptions {
    fn default() -> Self {
        Conv2dOptions {
            stride: (1, 1),
            padding: (0, 0),
            relu: false,
            residual: ResidualMode::Same,
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
}

/// Convolution weights on the GPU, laid out for the kernel, with the per-channel affine of the
/// epilogue (`scale`, `shift`; a bias and a folded batch norm both end up there).
#[derive(Debug)]
pub struct Conv2dWeights {
    shape: [usize; 4],
    algorithm: ConvAlgorithm,
    precision: Precision,
    /// Output channels after padding: the row length of the weights and of the affine.
    cout_pad: usize,
    weights: wgpu::Buffer,
    affine: wgpu::Buffer,
}

/// Reorders OIHW weights to `[K][cout_pad]` (K = input channel x kernel tap), zero padding the
/// output channels to `cout_pad` (so the kernels load them as vec4s, or as whole blocks) and K
/// to a multiple of `k_align` (whole steps of the cooperative-matrix kernel).
fn to_k_major(shape: [usize; 4], weight: &[f32], cout_pad: usize, k_align: usize) -> Vec<f32> {
    let [cout, cin, kh, kw] = shape;
    let k_len = cin * kh * kw;
    let mut out = vec![0.0f32; k_len.next_multiple_of(k_align) * cout_pad];
    for co in 0..cout {
        for k in 0..k_len {
            out[k * cout_pad + co] = weight[co * k_len + k];
        }
    }
    out
}

impl Conv2dWeights {
    /// Uploads OIHW `weight` of `shape` = [out channels, in channels, kernel h, kernel w], an
    /// optional bias, and an optional per-output-channel affine `(scale, shift)` applied after
    /// the bias: `out = (conv + bias) * scale + shift`.
    pub fn new(
        ctx: &GpuContext,
        shape: [usize; 4],
        weight: &[f32],
        bias: Option<&[f32]>,
        affine: Option<(&[f32], &[f32])>,
    ) -> Result<Self> {
        Self::with_algorithm(ctx, shape, weight, bias, affine, ConvAlgorithm::Direct)
    }

    /// Like [`Conv2dWeights::new`], with the weights laid out for `algorithm`. Winograd needs a
    /// 3x3 kernel, and the convolutions run with these weights must have stride 1.
    pub fn with_algorithm(
        ctx: &GpuContext,
        shape: [usize; 4],
        weight: &[f32],
        bias: Option<&[f32]>,
        affine: Option<(&[f32], &[f32])>,
        algorithm: ConvAlgorithm,
    ) -> Result<Self> {
        Self::with_precision(ctx, shape, weight, bias, affine, algorithm, Precision::F32)
    }

    /// Like [`Conv2dWeights::with_algorithm`], with the kernel stored in `precision` (for
    /// inputs and outputs of that precision). The epilogue's scale and shift stay f32.
    pub fn with_precision(
        ctx: &GpuContext,
        shape: [usize; 4],
        weight: &[f32],
        bias: Option<&[f32]>,
        affine: Option<(&[f32], &[f32])>,
        algorithm: ConvAlgorithm,
        precision: Precision,
    ) -> Result<Self> {
        const OP: &str = "Conv2dWeights::new";
        ctx.check_precision(OP, precision)?;
        if shape.contains(&0) {
            return Err(Error::invalid(
                OP,
                format!("weight shape {shape:?} has a zero dimension"),
            ));
        }
        let numel: usize = shape.iter().product();
        if weight.len() != numel {
            return Err(Error::invalid(
                OP,
                format!(
                    "weight shape {shape:?} holds {numel} values but {} were given",
                    weight.len()
                ),
            ));
        }
        let cout = shape[0];
        let check_len = |what: &str, v: &[f32]| -> Result<()> {
            if v.len() != cout {
                return Err(Error::invalid(
                    OP,
                    format!(
                        "{what} has {} values but there are {cout} output channels",
                        v.len()
                    ),
                ));
            }
            Ok(())
        };
        if algorithm == ConvAlgorithm::CooperativeMatrix
            && (precision != Precision::F16 || coop::subgroup_size(ctx).is_none())
        {
            return Err(Error::Unsupported {
                op: OP,
                message: format!(
                    "cooperative-matrix weights need f16 (asked: {precision}) and a device with 16x16x16 f16 cooperative matrices (this one: {}); use ConvAlgorithm::Direct",
                    if ctx.cooperative_matrix().is_some() { "yes, but too little workgroup memory" } else { "no" }
                ),
            });
        }
        let cout_pad = cout.next_multiple_of(algorithm.cout_align());
        let mut scale_shift = vec![0.0f32; 2 * cout_pad];
        scale_shift[..cout].fill(1.0);
        if let Some(b) = bias {
            check_len("the bias", b)?;
            scale_shift[cout_pad..cout_pad + cout].copy_from_slice(b);
        }
        if let Some((scale, shift)) = affine {
            check_len("the scale", scale)?;
            check_len("the shift", shift)?;
            for co in 0..cout {
                let b = scale_shift[cout_pad + co];
                scale_shift[co] = scale[co];
                scale_shift[cout_pad + co] = b * scale[co] + shift[co];
            }
        }
        let packed = match algorithm {
            ConvAlgorithm::Direct => to_k_major(shape, weight, cout_pad, 1),
            ConvAlgorithm::CooperativeMatrix => to_k_major(shape, weight, cout_pad, coop::MATRIX),
            ConvAlgorithm::Winograd if shape[2..] == [3, 3] => to_winograd(shape, weight),
            ConvAlgorithm::Winograd => {
                return Err(Error::invalid(
                    OP,
                    format!(
                        "Winograd F(2x2, 3x3) needs a 3x3 kernel; the weights have shape {shape:?}"
                    ),
                ))
            }
        };
        let packed = precision.encode(&packed);
        ctx.check_binding_size(OP, "the weights", packed.len() as u64)?;
        Ok(Conv2dWeights {
            shape,
            algorithm,
            precision,
            cout_pad,
            weights: ctx.storage_from("conv2d weights", &packed),
            affine: ctx.storage_from("conv2d affine", &scale_shift),
        })
    }

    /// [out channels, in channels, kernel h, kernel w].
    pub fn shape(&self) -> [usize; 4] {
        self.shape
    }

    /// How the kernel is stored (the precision of the tensors it convolves).
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// The algorithm the weights are laid out for.
    pub fn algorithm(&self) -> ConvAlgorithm {
        self.algorithm
    }

    /// Bytes the weights occupy on the GPU (after padding).
    pub fn byte_size(&self) -> u64 {
        self.weights.size() + self.affine.size()
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

/// The output shape of a convolution, or an error naming the offending value.
pub fn output_shape(
    input: [usize; 4],
    weight: [usize; 4],
    opts: &Conv2dOptions,
) -> Result<[usize; 4]> {
    const OP: &str = "conv2d";
    let [n, c, h, w] = input;
    let [cout, cin, kh, kw] = weight;
    if c != cin {
        return Err(Error::invalid(
            OP,
            format!("the input has {c} channels (shape {input:?}) but the weights expect {cin}"),
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

/// Builds the launch computing `out = relu?(conv(x) * scale + shift + residual?)`.
pub fn prepare(
    ctx: &GpuContext,
    x: &Tensor,
    weights: &Conv2dWeights,
    residual: Option<&Tensor>,
    out: &Tensor,
    opts: &Conv2dOptions,
) -> Result<Dispatch> {
    const OP: &str = "conv2d";
    let shape = output_shape(x.shape(), weights.shape, opts)?;
    check_shape(ctx, OP, "the input", x.shape())?;
    check_shape(ctx, OP, "the output", shape)?;
    check_output_shape(OP, out, shape)?;
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
    let [n, cout, oh, ow] = shape;
    let [_, cin, kh, kw] = weights.shape;
    let upsample = residual.is_some() && matches!(opts.residual, ResidualMode::Upsampled(_));
    let [_, _, h, w] = x.shape();
    // What the kernel sees: a pointwise conv with the plain epilogue runs on the flattened
    // plane (one long row), which fills the row tiles however narrow the map.
    let pointwise = kh == 1 && kw == 1 && opts.stride == (1, 1) && opts.padding == (0, 0);
    let (in_h, in_w, out_h, out_w) = if pointwise && !upsample {
        (1, h * w, 1, oh * ow)
    } else {
        (h, w, oh, ow)
    };
    let device_type = ctx.adapter().device_type;
    let mut constants = Vec::new();
    if upsample {
        constants.push(("UPSAMPLE", 1));
    }
    // The row kernel reads the input as whole vec4s; a tensor that cannot be bound so (a
    // caller's buffer ending mid-vec4) takes the general kernel.
    let (pipeline, label, grid, x_binding) = match (weights.algorithm, x.vec4_binding()) {
        (ConvAlgorithm::Winograd, _) => {
            if opts.stride != (1, 1) || upsample {
                return Err(Error::invalid(
                    OP,
                    format!(
                        "Winograd weights run with stride 1 and no upsampled residual (stride {:?}); \
                         build the weights with ConvAlgorithm::Direct",
                        opts.stride
                    ),
                ));
            }
            let lanes = oh.div_ceil(2) * ow.div_ceil(2);
            let (wg_pix, wg_co) = workgroup_shape(lanes, cout.div_ceil(COUT_TILE), device_type);
            constants.extend([("WG_PIX", wg_pix), ("WG_CO", wg_co)]);
            let pipeline = ctx.pipeline(&SHADER, precision, "conv2d_winograd", &constants)?;
            let grid = grid_for(lanes, cout.div_ceil(COUT_TILE), n, (wg_pix, wg_co));
            (pipeline, "conv2d_winograd", grid, x.binding())
        }
        (ConvAlgorithm::CooperativeMatrix, _) => {
            // Checked when the weights were made; the context is the same.
            let sg = coop::subgroup_size(ctx).unwrap_or(32);
            let tile = coop::DEFAULT_TILE;
            constants.push(("SG", sg));
            let pipeline = ctx.pipeline_from(
                &tile.key(),
                || tile.module_source(),
                "conv2d_coop",
                &constants,
            )?;
            // One workgroup (one subgroup) per block of pixels by channels.
            let pixel_blocks = (oh * ow).div_ceil(tile.block_pixels());
            let channel_blocks = cout.div_ceil(tile.block_channels());
            let grid = grid_for(pixel_blocks, channel_blocks, n, (1, 1));
            (pipeline, "conv2d_coop", grid, x.binding())
        }
        (ConvAlgorithm::Direct, Some(vec4_input)) if opts.padding == (0, 0) => {
            let tile = RowTile::choose((kh, kw), opts.stride, out_w, device_type);
            let lanes = out_h * out_w.div_ceil(tile.pixels);
            let (wg_pix, wg_co) = workgroup_shape(lanes, cout.div_ceil(tile.couts), device_type);
            constants.extend([("WG_PIX", wg_pix), ("WG_CO", wg_co)]);
            ctx.check_precision(OP, precision)?;
            let pipeline = ctx.pipeline_from(
                &format!("{}:{precision}", tile.key()),
                || tile.module_source(precision),
                "conv2d_rows",
                &constants,
            )?;
            let grid = grid_for(lanes, cout.div_ceil(tile.couts), n, (wg_pix, wg_co));
            (pipeline, "conv2d_rows", grid, vec4_input)
        }
        (ConvAlgorithm::Direct, _) => {
            let lanes = (oh * ow).div_ceil(PIX_TILE);
            let (wg_pix, wg_co) = workgroup_shape(lanes, cout.div_ceil(COUT_TILE), device_type);
            constants.extend([("WG_PIX", wg_pix), ("WG_CO", wg_co)]);
            let pipeline = ctx.pipeline(&SHADER, precision, "conv2d", &constants)?;
            let grid = grid_for(lanes, cout.div_ceil(COUT_TILE), n, (wg_pix, wg_co));
            (pipeline, "conv2d", grid, x.binding())
        }
    };
    ctx.check_grid(OP, grid)?;
    let mut flags = 0;
    if opts.relu {
        flags |= FLAG_RELU;
    }
    let (mut res_height, mut res_width) = (oh, ow);
    if let Some(r) = residual {
        flags |= match opts.residual {
            ResidualMode::Same => FLAG_RESIDUAL,
            ResidualMode::Upsampled(UpsampleMode::Bilinear) => FLAG_UPSAMPLE_BILINEAR,
            ResidualMode::Upsampled(UpsampleMode::Nearest) => FLAG_UPSAMPLE_NEAREST,
        };
        [_, _, res_height, res_width] = r.shape();
    }
    let params = Conv2dParams {
        in_channels: cin as u32,
        in_height: in_h as u32,
        in_width: in_w as u32,
        out_channels: cout as u32,
        out_height: out_h as u32,
        out_width: out_w as u32,
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
        _pad0: 0,
        _pad1: 0,
    };
    let uniform = ctx.uniform("conv2d params", &params);
    let residual = match residual {
        Some(r) => r.binding(),
        None => ctx.placeholder().as_entire_binding(),
    };
    let bind_group = ctx.bind_group(
        "conv2d",
        &pipeline,
        &[
            (0, x_binding),
            (1, weights.weights.as_entire_binding()),
            (2, weights.affine.as_entire_binding()),
            (3, residual),
            (4, out.binding()),
            (5, uniform.as_entire_binding()),
        ],
    );
    Ok(Dispatch {
        label,
        pipeline,
        bind_group,
        workgroups: grid,
    })
}

/// The grid of a kernel with `lanes` invocations along pixels and `channel_tiles` along output
/// channels, in workgroups of `shape`, for a batch of `n`.
fn grid_for(lanes: usize, channel_tiles: usize, n: usize, shape: (u32, u32)) -> [u32; 3] {
    let count = |v: usize| u32::try_from(v).unwrap_or(u32::MAX);
    [
        count(lanes.div_ceil(shape.0 as usize)),
        count(channel_tiles.div_ceil(shape.1 as usize)),
        count(n),
    ]
}

/// Submits a convolution now and returns its output (downloading it waits for the GPU).
pub fn conv2d(
    ctx: &GpuContext,
    x: &Tensor,
    weights: &Conv2dWeights,
    residual: Option<&Tensor>,
    opts: &Conv2dOptions,
) -> Result<Tensor> {
    let out = Tensor::empty_as(
        ctx,
        output_shape(x.shape(), weights.shape, opts)?,
        x.precision(),
    )?;
    let d = prepare(ctx, x, weights, residual, &out, opts)?;
    ctx.submit(&[&d])?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::{workgroup_shape, CPU_CHANNEL_LANES, WG_SIZE};
    use wgpu::DeviceType::{Cpu, DiscreteGpu};

    #[test]
    fn workgroups_span_channels_on_cpus_and_pixels_on_gpus() {
        // (pixel lanes, channel tiles, device) -> shape
        let cases = [
            (4219, 16, Cpu, (8, 8)),
            (4219, 4, Cpu, (16, 4)),
            (4219, 6, Cpu, (16, 4)),
            (4219, 1, Cpu, (64, 1)),
            (3, 128, Cpu, (8, 8)),
            (4219, 16, DiscreteGpu, (64, 1)),
            (20, 16, DiscreteGpu, (32, 2)),
            (1, 1, DiscreteGpu, (8, 8)),
        ];
        for (pixels, tiles, device, want) in cases {
            let got = workgroup_shape(pixels, tiles, device);
            assert_eq!(got, want, "{pixels} pixel lanes, {tiles} tiles, {device:?}");
            assert_eq!(got.0 * got.1, WG_SIZE);
            assert!(got.0 >= 8 && got.1 as usize <= CPU_CHANNEL_LANES.max(WG_SIZE as usize / 8));
        }
    }
}
