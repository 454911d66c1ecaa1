//! The cooperative-matrix convolution for large maps: a double-buffered block staged in
//! workgroup memory, the entry point `conv2d_coop_staged` of the cooperative-matrix module
//! (`shaders/conv2d_coop.wgsl` holds the bindings and the epilogue), expanded from
//! `shaders/conv2d_coop_staged.tmpl.wgsl` for one matrix side and subgroup size.
//!
//! The direct-load blocks of [`super::tile`] read every matrix straight from storage; each
//! subgroup then loads its own copy of tiles its neighbours also need. Here 8 subgroups share a
//! block of `BM` pixels by `BN` output channels (128 x 128 with 16x16 matrices: 4 x 2 subgroups of
//! 2 x 4 tiles each). Per k step (`KC` = 2 x side channels of one tap) the workgroup loads the
//! next step's A and B blocks into registers with 16-byte loads while it multiplies the current
//! pair of workgroup buffers, then stores them into the other pair: one barrier per step.
//! Measured on an H200 in a standalone probe built this way: 92 TFLOP/s on the FPN's largest 3x3
//! convolution against 55 for the direct-load blocks, 109 at batch 8. It needs maps large enough
//! to fill the GPU with such blocks; [`crate::kernels::conv2d::strategy`] keeps the direct-load
//! blocks with split-K for the others.

use super::shader::{padded_cin, SHADER};
use crate::kernels::template::ShaderTemplate;
use crate::precision::Precision;

/// The template of the entry point `conv2d_coop_staged`.
pub const ENTRY: ShaderTemplate = ShaderTemplate {
    name: "conv2d_coop_staged.tmpl.wgsl",
    source: include_str!("../../../../shaders/conv2d_coop_staged.tmpl.wgsl"),
};

/// Subgroups along pixels and along output channels.
const GRID: (usize, usize) = (4, 2);
/// Matrix tiles per subgroup along pixels and along output channels.
const TILES: (usize, usize) = (2, 4);
/// Workgroup-memory rows are padded by this many f16 (16 bytes), so that the rows a
/// cooperative load reads start in different banks.
const ROW_PAD: usize = 8;

/// The staged block's geometry for one matrix side and subgroup size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StagedBlock {
    /// The matrices' side.
    pub side: usize,
    /// Lanes per subgroup.
    pub subgroup: usize,
}

impl StagedBlock {
    /// Output pixels per block.
    pub fn block_pixels(&self) -> usize {
        GRID.0 * TILES.0 * self.side
    }

    /// Output channels per block; the weights' padded output channels must be a multiple.
    pub fn block_channels(&self) -> usize {
        GRID.1 * TILES.1 * self.side
    }

    /// Input channels per k step; the input's padded channels must be a multiple.
    pub fn step_channels(&self) -> usize {
        2 * self.side
    }

    /// Invocations per workgroup: 8 subgroups.
    pub fn invocations(&self) -> usize {
        GRID.0 * GRID.1 * self.subgroup
    }

    fn a_row(&self) -> usize {
        self.step_channels() + ROW_PAD
    }

    fn b_row(&self) -> usize {
        self.block_channels() + ROW_PAD
    }

    /// 16-byte chunks of the A and B blocks of one step.
    fn chunks(&self) -> (usize, usize) {
        (
            self.block_pixels() * self.step_channels() / 8,
            self.step_channels() * self.block_channels() / 8,
        )
    }

    /// Whether the kernel can be generated: every invocation loads whole chunks.
    pub fn loads_evenly(&self) -> bool {
        let (a, b) = self.chunks();
        let n = self.invocations();
        n > 0 && self.side.is_multiple_of(8) && a % n == 0 && b % n == 0
    }

    /// Elements (f16) of one of the two A buffers.
    fn a_buffer(&self) -> usize {
        self.block_pixels() * self.a_row()
    }

    /// Elements (f16) of one of the two B buffers.
    fn b_buffer(&self) -> usize {
        self.step_channels() * self.b_row()
    }

    /// Workgroup memory: two A and two B buffers (f16) and one f32 tile per subgroup for the
    /// epilogue.
    pub fn workgroup_bytes(&self) -> u32 {
        let a = 2 * self.a_buffer() * 2;
        let b = 2 * self.b_buffer() * 2;
        let c = GRID.0 * GRID.1 * self.side * self.side * 4;
        (a + b + c) as u32
    }

    /// A name for the pipeline cache, e.g. `conv2d_coop_staged_16_32`.
    pub fn key(&self) -> String {
        format!("conv2d_coop_staged_{}_{}", self.side, self.subgroup)
    }

    /// The whole module (f16): the static part and the generated entry point.
    pub fn module_source(&self) -> String {
        let mut s = SHADER.module(Precision::F16);
        s.push('\n');
        s.push_str(&self.entry_source());
        s
    }

    /// The entry point `conv2d_coop_staged`.
    pub fn entry_source(&self) -> String {
        let (a_chunks, b_chunks) = self.chunks();
        let wg = self.invocations();
        ENTRY.expand(&[
            ("SIDE", self.side.into()),
            ("GM", GRID.0.into()),
            ("GN", GRID.1.into()),
            ("TM", TILES.0.into()),
            ("TN", TILES.1.into()),
            ("KC", self.step_channels().into()),
            ("SBM", self.block_pixels().into()),
            ("SBN", self.block_channels().into()),
            ("LDA", self.a_row().into()),
            ("LDB", self.b_row().into()),
            ("A_BUF", self.a_buffer().into()),
            ("B_BUF", self.b_buffer().into()),
            ("WGS", wg.into()),
            ("PER_A", (a_chunks / wg).into()),
            ("PER_B", (b_chunks / wg).into()),
        ])
    }
}

/// Whether the staged block can compute a convolution with weights of `w_shape`: whole k
/// steps of input channels, and output channels that fill at least one block.
pub fn staged_fits(block: StagedBlock, w_shape: [usize; 4]) -> bool {
    padded_cin(w_shape[1]).is_multiple_of(block.step_channels())
        && w_shape[0] >= block.block_channels()
}
