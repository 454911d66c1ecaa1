//! What runs one convolution: the kernel, with its block, split and workgroup shape, and what
//! follows from that (the weight layout it reads, its split-K scratch, how far it reads past
//! its input, a stable name for the tuning cache).

use super::{candidates, ConvProblem, DeviceProfile};
use crate::error::{Error, Result};
use crate::kernels::conv2d::coop::{self, CoopBlock, CoopChoice};
use crate::kernels::conv2d::rows::RowTile;
use crate::kernels::conv2d::{direct, WeightLayout};

/// A workgroup's shape for the NCHW kernels: (invocations along pixels, along channel tiles).
pub type Workgroup = (u32, u32);

/// How one convolution runs, as [`super::choose`] (or the tuner, or a caller) picks it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConvChoice {
    /// The general direct kernel (`shaders/conv2d.wgsl`): NCHW, any kernel, stride and
    /// padding; reads [`WeightLayout::KMajor`].
    Direct {
        /// The workgroup's shape.
        workgroup: Workgroup,
    },
    /// The row kernel ([`crate::kernels::conv2d::rows`]): NCHW, no padding, unrolled for one
    /// kernel size; reads [`WeightLayout::KMajor`].
    Rows {
        /// The specialisation: kernel, stride, channels and pixels per invocation.
        tile: RowTile,
        /// Parts the input channels are split into (1: no split-K; at most the channels).
        split: usize,
        /// The workgroup's shape.
        workgroup: Workgroup,
    },
    /// Winograd F(2x2, 3x3): NCHW, 3x3, stride 1; reads [`WeightLayout::Winograd`].
    Winograd {
        /// The workgroup's shape.
        workgroup: Workgroup,
    },
    /// The grouped kernel ([`crate::kernels::conv2d::grouped`]): every convolution with more
    /// than one group, and only those; reads [`WeightLayout::KMajor`].
    Grouped {
        /// Output channels per invocation: 4 or 1.
        couts: usize,
        /// The workgroup's shape.
        workgroup: Workgroup,
    },
    /// The cooperative-matrix kernels ([`crate::kernels::conv2d::coop`]): f16, channels-last,
    /// an input already padded; read [`WeightLayout::TapMajor`].
    Coop(CoopChoice),
}

impl From<CoopChoice> for ConvChoice {
    fn from(c: CoopChoice) -> Self {
        ConvChoice::Coop(c)
    }
}

impl std::fmt::Display for ConvChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConvChoice::Direct { .. } => f.write_str("direct"),
            ConvChoice::Rows { tile, split, .. } => {
                write!(f, "rows {}x{}, split {split}", tile.couts, tile.pixels)
            }
            ConvChoice::Winograd { .. } => f.write_str("winograd"),
            ConvChoice::Grouped { .. } => f.write_str("grouped"),
            ConvChoice::Coop(c) => c.fmt(f),
        }
    }
}

impl ConvChoice {
    /// Checks a choice given from outside the strategy (a caller's, or the tuning cache's)
    /// against what the kernels can carry out for `problem`: NCHW workgroups of
    /// [`direct::WG_SIZE`] invocations, row tiles made for the problem's kernel size and stride
    /// with whole vec4s of channels and a power of two of pixels. A choice that failed this
    /// would divide by zero or run a kernel unrolled for another shape.
    pub fn check(&self, problem: &ConvProblem) -> Result<()> {
        let workgroup = match self {
            ConvChoice::Direct { workgroup }
            | ConvChoice::Winograd { workgroup }
            | ConvChoice::Grouped { workgroup, .. }
            | ConvChoice::Rows { workgroup, .. } => Some(*workgroup),
            ConvChoice::Coop(_) => None,
        };
        if let Some((pix, co)) = workgroup {
            if pix == 0 || co == 0 || pix.checked_mul(co) != Some(direct::WG_SIZE) {
                return Err(invalid(format!(
                    "{self} has a workgroup of {pix}x{co} invocations; the NCHW kernels take \
                     {} (use a choice from strategy::choose or strategy::candidates)",
                    direct::WG_SIZE
                )));
            }
        }
        if let ConvChoice::Rows { tile, split, .. } = self {
            let [_, _, kh, kw] = problem.weight;
            if tile.kernel != (kh, kw) || tile.stride != problem.stride {
                return Err(invalid(format!(
                    "the row tile is unrolled for a {}x{} kernel with stride {:?}, but the \
                     convolution has a {kh}x{kw} kernel with stride {:?}",
                    tile.kernel.0, tile.kernel.1, tile.stride, problem.stride
                )));
            }
            if tile.couts == 0 || !tile.couts.is_multiple_of(4) || !tile.pixels.is_power_of_two() {
                return Err(invalid(format!(
                    "a row tile computes a multiple of 4 channels and a power of two of pixels \
                     an invocation, not {} and {}",
                    tile.couts, tile.pixels
                )));
            }
            if *split == 0 {
                return Err(invalid("a split-K factor is at least 1".to_string()));
            }
        }
        Ok(())
    }

    /// The layout of the weights the kernel reads.
    pub fn weight_layout(&self) -> WeightLayout {
        match self {
            ConvChoice::Direct { .. } | ConvChoice::Rows { .. } | ConvChoice::Grouped { .. } => {
                WeightLayout::KMajor
            }
            ConvChoice::Winograd { .. } => WeightLayout::Winograd,
            ConvChoice::Coop(_) => WeightLayout::TapMajor,
        }
    }

    /// Parts the sum is split into (1: no split-K).
    pub fn split(&self) -> usize {
        match self {
            ConvChoice::Rows { split, .. } => *split,
            ConvChoice::Coop(c) => c.split,
            _ => 1,
        }
    }

    /// Bytes of split-K partial sums this choice needs for `problem` (0 without split-K): what
    /// a plan's shared scratch buffer is sized from.
    pub fn scratch_bytes(&self, problem: &ConvProblem, profile: &DeviceProfile) -> Result<u64> {
        let out = problem.output()?;
        Ok(match self {
            ConvChoice::Rows { split, .. } => direct::partial_bytes(out, *split),
            ConvChoice::Coop(c) => {
                let cout_pad = WeightLayout::TapMajor.cout_pad(problem.weight[0]);
                coop::partial_bytes(out, cout_pad, *c, profile.matrix_side())
            }
            _ => 0,
        })
    }

    /// Bytes this choice reads from the start of `problem`'s input: for the cooperative-matrix
    /// kernels, whose last tiles read whole matrices past the value's end, more than the value
    /// holds; 0 for the kernels that read within it.
    pub fn input_bytes_read(&self, problem: &ConvProblem, profile: &DeviceProfile) -> u64 {
        match self {
            ConvChoice::Coop(_) => coop::input_bytes_read(
                problem.input,
                problem.weight,
                problem.stride,
                profile.matrix_side(),
            ),
            _ => 0,
        }
    }

    /// A stable text form for the tuning cache: `direct`, `winograd`, `grouped`,
    /// `rows/16x16/4` (channels x pixels per invocation, split), `coop/4x4/2` (block, split),
    /// `coop/staged`. It names the choice among a problem's [`candidates`]; the workgroup
    /// shape follows from the problem.
    pub fn code(&self) -> String {
        match self {
            ConvChoice::Direct { .. } => "direct".into(),
            ConvChoice::Winograd { .. } => "winograd".into(),
            ConvChoice::Grouped { .. } => "grouped".into(),
            ConvChoice::Rows { tile, split, .. } => {
                format!("rows/{}x{}/{split}", tile.couts, tile.pixels)
            }
            ConvChoice::Coop(CoopChoice {
                block: CoopBlock::Direct(t),
                split,
            }) => format!("coop/{}x{}/{split}", t.m_tiles, t.n_tiles),
            ConvChoice::Coop(CoopChoice {
                block: CoopBlock::Staged,
                ..
            }) => "coop/staged".into(),
        }
    }

    /// The candidate of `problem` on `profile` whose [`ConvChoice::code`] is `code`; `None`
    /// where there is none (a code of another kernel, or from another version).
    pub fn from_code(code: &str, problem: &ConvProblem, profile: &DeviceProfile) -> Option<Self> {
        candidates(problem, profile)
            .ok()?
            .into_iter()
            .find(|c| c.code() == code)
    }
}

/// An argument error of the convolution.
fn invalid(message: String) -> Error {
    Error::invalid("conv2d", message)
}
