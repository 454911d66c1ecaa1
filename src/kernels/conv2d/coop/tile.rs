//! The direct-load blocks: one subgroup per block, its matrices loaded straight from storage,
//! any split-K. Their entry points are `shaders/conv2d_coop.tmpl.wgsl` expanded for one block
//! shape and one matrix side.

use super::shader::SHADER;
use crate::kernels::template::ShaderTemplate;
use crate::precision::Precision;

/// The template of the entry points `conv2d_coop` and `conv2d_coop_partial`.
pub const ENTRY: ShaderTemplate = ShaderTemplate {
    name: "conv2d_coop.tmpl.wgsl",
    source: include_str!("../../../../shaders/conv2d_coop.tmpl.wgsl"),
};

/// A block shape: `m_tiles` row segments of `side` pixels by `n_tiles * side` output channels
/// per subgroup.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CoopTile {
    /// Pixel segments (matrix rows of A) per block.
    pub m_tiles: usize,
    /// Output-channel tiles (matrix columns of B) per block.
    pub n_tiles: usize,
}

/// The block shapes the kernel is generated for, largest first. 4x4 ran a plain GEMM at 74-78
/// TFLOP/s on an H100 against 49-59 for 2x4; 2x4 wins on maps too small to fill the GPU with
/// 4x4 blocks (measured on an H200: layer4's convs at 19x29).
pub const TILES: [CoopTile; 3] = [
    CoopTile {
        m_tiles: 4,
        n_tiles: 4,
    },
    CoopTile {
        m_tiles: 2,
        n_tiles: 4,
    },
    CoopTile {
        m_tiles: 2,
        n_tiles: 2,
    },
];

impl CoopTile {
    /// Workgroup memory of the single-split entry point: the block's f32 accumulators.
    pub fn workgroup_bytes(&self, side: u32) -> u32 {
        (self.m_tiles * self.n_tiles) as u32 * side * side * 4
    }

    /// A name for the pipeline cache and labels, e.g. `conv2d_coop_16_4x4`.
    pub fn key(&self, side: u32) -> String {
        format!("conv2d_coop_{side}_{}x{}", self.m_tiles, self.n_tiles)
    }

    /// The whole module (f16): the static part and the generated entry points.
    pub fn module_source(&self, side: u32) -> String {
        let mut s = SHADER.module(Precision::F16);
        s.push('\n');
        s.push_str(&self.entry_source(side));
        s
    }

    /// The entry points `conv2d_coop` and `conv2d_coop_partial` for this block and matrix side.
    pub fn entry_source(&self, side: u32) -> String {
        ENTRY.expand(&[
            ("SIDE", side.into()),
            ("MT", self.m_tiles.into()),
            ("NT", self.n_tiles.into()),
        ])
    }
}
