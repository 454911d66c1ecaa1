//! What runs a convolution on cooperative matrices: the block and the split-K factor.

use super::tile::CoopTile;

/// Output channels of the weights (and of the affine) are zero padded to a multiple of this:
/// the widest block, the staged one's 128.
pub const BLOCK_COUT_ALIGN: usize = 128;

/// The largest split-K factor the strategy picks.
pub const MAX_SPLIT: usize = 8;

/// Which kernel computes a block of the output.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CoopBlock {
    /// One subgroup per block, matrices loaded straight from storage; any split-K.
    Direct(CoopTile),
    /// Eight subgroups per block, staged in double-buffered workgroup memory
    /// ([`super::staged`]); no split-K.
    Staged,
}

/// How one convolution runs on cooperative matrices: the block and the split-K factor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CoopChoice {
    /// The kernel and block.
    pub block: CoopBlock,
    /// Parts the k steps are split into (1: no split-K). Each part stores f32 partial sums,
    /// which a second launch adds up before the epilogue.
    pub split: usize,
}

impl CoopChoice {
    /// A direct-load block with split-K factor `split`.
    pub fn direct(tile: CoopTile, split: usize) -> Self {
        CoopChoice {
            block: CoopBlock::Direct(tile),
            split,
        }
    }

    /// The staged block.
    pub const STAGED: CoopChoice = CoopChoice {
        block: CoopBlock::Staged,
        split: 1,
    };
}

impl std::fmt::Display for CoopChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.block {
            CoopBlock::Direct(t) => write!(
                f,
                "direct {}x{}, split {}",
                t.m_tiles, t.n_tiles, self.split
            ),
            CoopBlock::Staged => write!(f, "staged, split {}", self.split),
        }
    }
}
