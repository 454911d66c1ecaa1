//! The linear layer on cooperative matrices (tensor cores), f16 with f32 sums:
//! `shaders/linear_coop.wgsl` plus its entry point expanded from `shaders/linear_coop.tmpl.wgsl`
//! for one block and matrix side. Whether a layer runs here is [`super::LinearKernel::choose`]'s
//! decision.

use super::{LinearWeights, OP};
use crate::error::{Error, Result};
use crate::gpu::{grid_2d, Dispatch, GpuContext};
use crate::kernels::template::ShaderTemplate;
use crate::kernels::ShaderSource;
use crate::precision::Precision;
use crate::tensor::Tensor;

/// The module without its generated entry point.
pub const SHADER: ShaderSource = ShaderSource {
    name: "linear_coop.wgsl",
    parts: &["common.wgsl", "linear_coop.wgsl"],
    source: concat!(
        include_str!("../../../shaders/common.wgsl"),
        include_str!("../../../shaders/linear_coop.wgsl")
    ),
    params: &[("LinearCoopParams", std::mem::size_of::<LinearCoopParams>())],
    enables: "enable wgpu_cooperative_matrix;\n",
    precisions: &[Precision::F16],
};

/// The template of the entry point `linear_coop`.
pub const ENTRY: ShaderTemplate = ShaderTemplate {
    name: "linear_coop.tmpl.wgsl",
    source: include_str!("../../../shaders/linear_coop.tmpl.wgsl"),
};

/// A block: `m_tiles` x `n_tiles` matrices of the output per subgroup.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LinearBlock {
    /// Row tiles (matrices of x) per block.
    pub m_tiles: usize,
    /// Column tiles (matrices of the weight) per block.
    pub n_tiles: usize,
}

/// The blocks the kernel is generated for, largest first: a larger block loads each matrix of
/// x and of the weight for more products, a smaller one makes more workgroups of a small layer.
pub const BLOCKS: [LinearBlock; 3] = [
    LinearBlock {
        m_tiles: 4,
        n_tiles: 4,
    },
    LinearBlock {
        m_tiles: 2,
        n_tiles: 4,
    },
    LinearBlock {
        m_tiles: 2,
        n_tiles: 2,
    },
];

impl LinearBlock {
    /// Rows and columns of the output a block covers with matrices of `side`.
    pub fn extent(&self, side: u32) -> (usize, usize) {
        (self.m_tiles * side as usize, self.n_tiles * side as usize)
    }

    /// Workgroup memory of the entry point: one f32 accumulator on its way out.
    pub fn workgroup_bytes(&self, side: u32) -> u32 {
        side * side * 4
    }

    /// A name for the pipeline cache and labels, e.g. `linear_coop_16_4x4`.
    pub fn key(&self, side: u32) -> String {
        format!("linear_coop_{side}_{}x{}", self.m_tiles, self.n_tiles)
    }

    /// The whole module (f16): the static part and the generated entry point.
    pub fn module_source(&self, side: u32) -> String {
        let mut s = SHADER.module(Precision::F16);
        s.push('\n');
        s.push_str(&ENTRY.expand(&[
            ("SIDE", side.into()),
            ("MT", self.m_tiles.into()),
            ("NT", self.n_tiles.into()),
        ]));
        s
    }
}

/// Mirrors `LinearCoopParams` in the WGSL.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct LinearCoopParams {
    rows: u32,
    inputs: u32,
    outputs: u32,
    blocks_n: u32,
    blocks: u32,
    _pad: [u32; 3],
}

/// The launch of `block` with matrices of `side` run by subgroups of `subgroup_size` lanes,
/// writing `out` `[M, N, 1, 1]` = `relu?(x Wᵀ + b)` for `x` `[M, K]` (checked by the caller: f16,
/// M and N at least `side`, K a multiple of it).
pub(super) fn prepare(
    ctx: &GpuContext,
    x: &Tensor,
    weights: &LinearWeights,
    relu: bool,
    out: &Tensor,
    (side, subgroup_size, block): (u32, u32, LinearBlock),
) -> Result<Dispatch> {
    let [outputs, inputs] = weights.shape;
    let rows = x.shape()[0];
    let (bm, bn) = block.extent(side);
    let blocks_n = outputs.div_ceil(bn);
    let blocks = u32::try_from(rows.div_ceil(bm) as u64 * blocks_n as u64).map_err(|_| {
        Error::invalid(
            OP,
            "the output has more than 2^32 blocks; run the rows in smaller batches",
        )
    })?;
    let grid = grid_2d(blocks, ctx.limits().max_compute_workgroups_per_dimension);
    ctx.check_grid(OP, grid)?;
    let params = LinearCoopParams {
        rows: rows as u32,
        inputs: inputs as u32,
        outputs: outputs as u32,
        blocks_n: blocks_n as u32,
        blocks,
        _pad: [0; 3],
    };
    let mut constants = vec![("SG", subgroup_size)];
    if relu {
        constants.push(("RELU", 1));
    }
    let pipeline = ctx.pipeline_from(
        &block.key(side),
        || block.module_source(side),
        "linear_coop",
        &constants,
    )?;
    let bind_group = super::bind(ctx, &pipeline, x, weights, out, &params);
    Ok(
        Dispatch::new("linear_coop", pipeline, bind_group, grid).with_config(format!(
            "{}x{} {side}x{side} matrices, {blocks} subgroups{}",
            block.m_tiles,
            block.n_tiles,
            if relu { ", relu" } else { "" }
        )),
    )
}
