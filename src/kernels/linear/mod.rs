//! Fully connected layers (`shaders/linear.wgsl`): PyTorch's `nn.Linear`, `y = x Wᵀ + b`, with
//! an optional ReLU, as a tiled GEMM. The input is any NCHW tensor `[M, C, H, W]` read as `M`
//! rows of `C*H*W` features in C, H, W order (`torch.flatten(x, start_dim=1)`: RoIAlign's
//! `[R, 256, 7, 7]` feeds torchvision's `TwoMLPHead` so); the output is `[M, out, 1, 1]`.
//!
//! # Why a kernel of its own
//! A linear layer is a 1x1 convolution of a 1x1 map, but the convolution kernels tile pixels
//! and output channels of one image, and a `[M, K, 1, 1]` input has a single pixel per image:
//! run that way, the layer was measured about 5x slower than a GEMM, which tiles the M rows as
//! well and shares every loaded value between 64 rows and 64 columns (see the shader's header
//! for the block sizes and why).
//!
//! The weights keep `nn.Linear`'s `[out, in]` layout, as saved: the kernel reads both operands
//! along K, so no transposed copy is needed. They are stored as the activations are (f32 or
//! f16); the bias stays f32, and the sums are f32 in either precision.
//!
//! # Two kernels
//! In f16, where the device's cooperative matrices passed their check ([`conv2d::coop::verified`])
//! and the layer is at least one matrix wide each way with K in whole matrices (torchvision's
//! box heads are: K = 12544 or 1024), the layer runs on them ([`coop`]); otherwise, and in f32,
//! on the tiled GEMM. [`LinearKernel::choose`] is where that is decided.

pub mod coop;

use crate::error::{Error, Result};
use crate::gpu::{grid_2d, Dispatch, GpuContext};
use crate::kernels::conv2d;
use crate::kernels::{check_io, check_nchw, check_output_shape, pipeline, ShaderSource};
use crate::precision::Precision;
use crate::tensor::{check_shape, Tensor};

const OP: &str = "linear";

/// The WGSL source.
pub const SHADER: ShaderSource = ShaderSource {
    name: "linear.wgsl",
    parts: &["common.wgsl", "linear.wgsl"],
    source: concat!(
        include_str!("../../../shaders/common.wgsl"),
        include_str!("../../../shaders/linear.wgsl")
    ),
    params: &[("LinearParams", std::mem::size_of::<LinearParams>())],
    enables: "",
    precisions: &Precision::ALL,
};

/// Rows of outputs per workgroup (WGSL `TILE_M`).
pub const TILE_M: usize = 64;
/// Columns of outputs per workgroup (WGSL `TILE_N`).
pub const TILE_N: usize = 64;
/// Features per step through K (WGSL `TILE_K`).
pub const TILE_K: usize = 16;

/// Blocks a layer should have for the largest block of [`coop::BLOCKS`] to be taken: about two
/// workgroups for each compute unit of a large GPU (132 on an H100 or H200), so that a small
/// layer (the predictor's 91 or 364 outputs) spreads over the device with smaller blocks.
const COOP_MIN_BLOCKS: usize = 256;

/// The kernel a linear layer runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinearKernel {
    /// The tiled GEMM of `shaders/linear.wgsl`: any precision and shape.
    Tiled,
    /// Cooperative matrices (`shaders/linear_coop.wgsl`).
    Cooperative {
        /// The matrices' side (16 on NVIDIA, 8 on lavapipe).
        side: u32,
        /// Lanes per subgroup: one subgroup per workgroup.
        subgroup_size: u32,
        /// Matrices of the output per subgroup.
        block: coop::LinearBlock,
    },
}

impl LinearKernel {
    /// The kernel for `rows` rows through weights `[out, in]` stored in `precision` on `ctx`:
    /// cooperative matrices where the device's passed their check, in f16, with `rows` and
    /// `out` at least one matrix side and `in` a multiple of it; the tiled GEMM otherwise.
    pub fn choose(
        ctx: &GpuContext,
        precision: Precision,
        rows: usize,
        [out_features, in_features]: [usize; 2],
    ) -> Self {
        if precision != Precision::F16 {
            return LinearKernel::Tiled;
        }
        let Some(support) = conv2d::coop::support(ctx) else {
            return LinearKernel::Tiled;
        };
        let side = support.side as usize;
        if rows < side
            || out_features < side
            || in_features % side != 0
            || !conv2d::coop::verified(ctx)
        {
            return LinearKernel::Tiled;
        }
        let blocks = |b: &coop::LinearBlock| {
            let (bm, bn) = b.extent(support.side);
            rows.div_ceil(bm) * out_features.div_ceil(bn)
        };
        let block = coop::BLOCKS
            .iter()
            .copied()
            .find(|b| blocks(b) >= COOP_MIN_BLOCKS)
            .unwrap_or(coop::BLOCKS[coop::BLOCKS.len() - 1]);
        LinearKernel::Cooperative {
            side: support.side,
            subgroup_size: support.subgroup_size,
            block,
        }
    }
}

/// Mirrors `LinearParams` in the WGSL.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct LinearParams {
    rows: u32,
    inputs: u32,
    outputs: u32,
    tiles_n: u32,
    tiles: u32,
    _pad: [u32; 3],
}

/// A linear layer's weights on the GPU: `weight` `[out, in]` stored as the activations are,
/// the bias in f32 (zeros for a layer without one).
#[derive(Debug)]
pub struct LinearWeights {
    /// `[out, in]`.
    shape: [usize; 2],
    precision: Precision,
    weight: wgpu::Buffer,
    bias: wgpu::Buffer,
}

impl LinearWeights {
    /// Uploads `weight` `[out_features, in_features]` (row-major, `nn.Linear`'s layout) and
    /// `bias` `[out_features]`, the weight stored in `precision`.
    pub fn new(
        ctx: &GpuContext,
        [out_features, in_features]: [usize; 2],
        weight: &[f32],
        bias: Option<&[f32]>,
        precision: Precision,
    ) -> Result<Self> {
        ctx.check_precision(OP, precision)?;
        if out_features == 0 || in_features == 0 {
            return Err(Error::invalid(
                OP,
                format!(
                    "a layer of {in_features} input and {out_features} output features; both must be positive"
                ),
            ));
        }
        let numel = out_features
            .checked_mul(in_features)
            .filter(|&n| u32::try_from(n).is_ok())
            .ok_or_else(|| {
                Error::invalid(
                    OP,
                    format!(
                        "a weight of [{out_features}, {in_features}] has more than 2^32 values"
                    ),
                )
            })?;
        if weight.len() != numel {
            return Err(Error::invalid(
                OP,
                format!(
                    "the weight [{out_features}, {in_features}] holds {numel} values but {} were given",
                    weight.len()
                ),
            ));
        }
        if let Some(b) = bias {
            if b.len() != out_features {
                return Err(Error::invalid(
                    OP,
                    format!(
                        "the bias has {} values but the layer has {out_features} output features",
                        b.len()
                    ),
                ));
            }
        }
        let bytes = precision.encode(weight);
        ctx.check_binding_size(OP, "the weight", bytes.len() as u64)?;
        let bias = match bias {
            Some(b) => b.to_vec(),
            None => vec![0.0; out_features],
        };
        Ok(LinearWeights {
            shape: [out_features, in_features],
            precision,
            weight: ctx.storage_from("linear weight", &bytes),
            bias: ctx.storage_from("linear bias", &bias),
        })
    }

    /// `[out_features, in_features]`.
    pub fn shape(&self) -> [usize; 2] {
        self.shape
    }

    /// How the weight is stored (the precision of the tensors it multiplies).
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Bytes the weight and the bias occupy on the GPU.
    pub fn byte_size(&self) -> u64 {
        self.weight.size() + self.bias.size()
    }
}

/// The output shape of a layer of weight `[out, in]` on `input` `[M, C, H, W]`: `[M, out, 1,
/// 1]`, or an error when `C*H*W` is not `in`.
pub fn output_shape(
    input: [usize; 4],
    [out_features, in_features]: [usize; 2],
) -> Result<[usize; 4]> {
    let [m, c, h, w] = input;
    let features = c.saturating_mul(h).saturating_mul(w);
    if features != in_features {
        return Err(Error::invalid(
            OP,
            format!(
                "the input {input:?} has {c}*{h}*{w} = {features} features per row, but the layer \
                 takes {in_features} (its weight is [{out_features}, {in_features}]); feed it the \
                 tensor it was trained on"
            ),
        ));
    }
    Ok([m, out_features, 1, 1])
}

/// Builds the launch writing `out` `[M, out, 1, 1]` = `relu?(x Wᵀ + b)` for `x` `[M, C, H, W]`
/// stored as the weights are, on the kernel [`LinearKernel::choose`] picks.
pub fn prepare(
    ctx: &GpuContext,
    x: &Tensor,
    weights: &LinearWeights,
    relu: bool,
    out: &Tensor,
) -> Result<Dispatch> {
    check_nchw(OP, x)?;
    check_nchw(OP, out)?;
    check_shape(ctx, OP, "the input", x.shape())?;
    let shape = output_shape(x.shape(), weights.shape)?;
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
    let [out_features, in_features] = weights.shape;
    let rows = shape[0];
    // Both kernels index in u32.
    let too_many = |what: &str| {
        Error::invalid(
            OP,
            format!("{what} has more than 2^32 values; run the rows in smaller batches"),
        )
    };
    if u32::try_from(x.numel()).is_err() {
        return Err(too_many("the input"));
    }
    if u32::try_from(out.numel()).is_err() {
        return Err(too_many("the output"));
    }
    if let LinearKernel::Cooperative {
        side,
        subgroup_size,
        block,
    } = LinearKernel::choose(ctx, x.precision(), rows, weights.shape)
    {
        return coop::prepare(ctx, x, weights, relu, out, (side, subgroup_size, block));
    }
    let tiles_n = out_features.div_ceil(TILE_N);
    let tiles = (rows.div_ceil(TILE_M) as u64) * tiles_n as u64;
    let tiles = u32::try_from(tiles).map_err(|_| too_many("the output's blocks"))?;
    let grid = grid_2d(tiles, ctx.limits().max_compute_workgroups_per_dimension);
    ctx.check_grid(OP, grid)?;
    let params = LinearParams {
        rows: rows as u32,
        inputs: in_features as u32,
        outputs: out_features as u32,
        tiles_n: tiles_n as u32,
        tiles,
        _pad: [0; 3],
    };
    let constants: &[(&'static str, u32)] = if relu { &[("RELU", 1)] } else { &[] };
    let pipeline = pipeline(ctx, &SHADER, x.precision(), OP, constants)?;
    let bind_group = bind(ctx, &pipeline, x, weights, out, &params);
    Ok(
        Dispatch::new(OP, pipeline, bind_group, grid).with_config(format!(
            "{TILE_M}x{TILE_N} blocks, {tiles} workgroups{}",
            if relu { ", relu" } else { "" }
        )),
    )
}

/// The bindings both kernels declare (`shaders/linear.wgsl`, `shaders/linear_coop.wgsl`), with
/// `params` as the uniform.
fn bind<P: bytemuck::Pod>(
    ctx: &GpuContext,
    pipeline: &wgpu::ComputePipeline,
    x: &Tensor,
    weights: &LinearWeights,
    out: &Tensor,
    params: &P,
) -> wgpu::BindGroup {
    let uniform = ctx.uniform(params);
    ctx.bind_group(
        OP,
        pipeline,
        &[
            (0, x.binding()),
            (1, weights.weight.as_entire_binding()),
            (2, weights.bias.as_entire_binding()),
            (3, out.binding()),
            (4, uniform.binding()),
        ],
    )
}

/// Runs a linear layer now and returns `relu?(x Wᵀ + b)` `[M, out, 1, 1]`.
pub fn linear(ctx: &GpuContext, x: &Tensor, weights: &LinearWeights, relu: bool) -> Result<Tensor> {
    let shape = output_shape(x.shape(), weights.shape)?;
    let out = Tensor::empty_as(ctx, shape, x.precision())?;
    ctx.submit(&[&prepare(ctx, x, weights, relu, &out)?])?;
    Ok(out)
}
