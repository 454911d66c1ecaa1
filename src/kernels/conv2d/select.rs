//! Which convolution kernel runs which layer on which adapter: the one place that decides.
//!
//! [`algorithm`] picks the algorithm a layer's weights are laid out for; [`coop_choice`] picks
//! the block and the split-K factor of a cooperative-matrix convolution from its grid. The
//! NCHW kernels choose their row tiles and workgroup shapes themselves (see [`super::direct`]).

use super::coop::{self, CoopBlock, CoopChoice, StagedBlock, MAX_SPLIT, TILES};
use super::{conv_shape, Conv2dOptions, Conv2dWeights, ConvAlgorithm, ResidualMode};
use crate::error::Result;
use crate::gpu::GpuContext;
use crate::precision::Precision;

/// Workgroups a launch should have to keep a large GPU busy: about four per compute unit of an
/// H100 or H200 (132 units), one subgroup each. wgpu does not report compute units, so this is
/// the figure for the largest GPUs; on smaller ones it only means more split-K than needed.
pub const GPU_TARGET_WORKGROUPS: usize = 512;

/// Below this many workgroups a 4x4 block leaves most of a large GPU idle even before split-K
/// (about one per compute unit): the smaller 2x4 block doubles the grid. Measured on an H200,
/// layer4's 19x29 convolutions ran fastest as 2x4 blocks with split-K, the 38x57 ones as 4x4.
pub const SMALL_GRID: usize = 128;

/// A map gets the staged block when its grid of staged blocks holds at least this many
/// subgroups (8 per block): about four per compute unit of a 132-unit GPU. Measured on an H200,
/// the staged block ran the FPN's 150x225 and 75x113 maps at 92 and 50 TFLOP/s against 55 and 40
/// for the direct-load blocks, and the 38x57 and 19x29 maps at 7-30 TFLOP/s, below the direct
/// blocks with split-K.
pub const STAGED_MIN_SUBGROUPS: usize = 512;

/// Every split-K part runs at least this many k steps, so that the partial sums' traffic stays
/// small next to the multiplies.
const MIN_STEPS_PER_SPLIT: usize = 8;

/// How one convolution runs: the configuration of its kernel, as [`choice`] (or a caller)
/// picks it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KernelChoice {
    /// The NCHW kernels, with the row kernel's split-K factor (the other NCHW kernels run
    /// unsplit).
    Nchw {
        /// Parts the input channels are split into (1: no split-K).
        split: usize,
    },
    /// The cooperative-matrix kernels.
    Coop(CoopChoice),
    /// The grouped kernel ([`super::grouped`]): every convolution with `groups` > 1, and only
    /// those.
    Grouped,
}

impl From<CoopChoice> for KernelChoice {
    fn from(c: CoopChoice) -> Self {
        KernelChoice::Coop(c)
    }
}

impl std::fmt::Display for KernelChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KernelChoice::Nchw { split } => write!(f, "split {split}"),
            KernelChoice::Coop(c) => c.fmt(f),
            KernelChoice::Grouped => f.write_str("grouped"),
        }
    }
}

impl KernelChoice {
    /// A stable text form for caches: `nchw/4`, `coop/4x4/2`, `coop/staged`, `grouped`.
    pub fn code(&self) -> String {
        match self {
            KernelChoice::Grouped => "grouped".into(),
            KernelChoice::Nchw { split } => format!("nchw/{split}"),
            KernelChoice::Coop(CoopChoice {
                block: CoopBlock::Direct(t),
                split,
            }) => format!("coop/{}x{}/{split}", t.m_tiles, t.n_tiles),
            KernelChoice::Coop(CoopChoice {
                block: CoopBlock::Staged,
                ..
            }) => "coop/staged".into(),
        }
    }

    /// Reads [`KernelChoice::code`]'s form back; `None` for anything else.
    pub fn from_code(code: &str) -> Option<Self> {
        let parts: Vec<&str> = code.split('/').collect();
        match parts.as_slice() {
            ["nchw", split] => Some(KernelChoice::Nchw {
                split: split.parse().ok().filter(|&s| s >= 1)?,
            }),
            ["coop", "staged"] => Some(CoopChoice::STAGED.into()),
            ["grouped"] => Some(KernelChoice::Grouped),
            ["coop", tile, split] => {
                let (m, n) = tile.split_once('x')?;
                let tile = coop::CoopTile {
                    m_tiles: m.parse().ok()?,
                    n_tiles: n.parse().ok()?,
                };
                let split = split.parse().ok().filter(|&s| s >= 1)?;
                TILES
                    .contains(&tile)
                    .then_some(CoopChoice::direct(tile, split).into())
            }
            _ => None,
        }
    }
}

/// The configurations worth timing for a convolution (the preset among them, first): for the
/// cooperative-matrix kernels the 4x4 and 2x4 direct-load blocks with split-K factors of 1 to
/// [`MAX_SPLIT`] and the staged block where it fits; for the row kernel its split-K factors;
/// the other kernels (Winograd, the direct kernel on padded inputs, the grouped kernel) have
/// only the preset.
pub fn candidates(
    ctx: &GpuContext,
    x_shape: [usize; 4],
    weights: &Conv2dWeights,
    opts: &Conv2dOptions,
) -> Result<Vec<KernelChoice>> {
    let preset = choice(ctx, x_shape, weights, opts)?;
    let mut all = vec![preset];
    let w_shape = weights.shape();
    if preset == KernelChoice::Grouped {
        return Ok(all);
    }
    match weights.algorithm() {
        ConvAlgorithm::CooperativeMatrix => {
            let side = coop::support(ctx).map_or(16, |s| s.side);
            let steps = coop::steps(w_shape, side);
            for tile in &TILES[..2] {
                let mut split = 1;
                while split <= MAX_SPLIT && (split == 1 || steps / split >= MIN_STEPS_PER_SPLIT) {
                    all.push(CoopChoice::direct(*tile, split).into());
                    split *= 2;
                }
            }
            if coop::staged_block(ctx).is_some_and(|b| coop::staged_fits(b, w_shape)) {
                all.push(CoopChoice::STAGED.into());
            }
        }
        ConvAlgorithm::Direct if opts.padding == (0, 0) => {
            let cin = w_shape[1];
            let mut split = 1;
            while split <= MAX_ROWS_SPLIT && (split == 1 || cin / split >= MIN_CHANNELS_PER_SPLIT) {
                all.push(KernelChoice::Nchw { split });
                split *= 2;
            }
        }
        _ => {}
    }
    let mut seen = Vec::new();
    all.retain(|c| {
        let new = !seen.contains(c);
        seen.push(*c);
        new
    });
    Ok(all)
}

/// The most parts the row kernel's split-K uses.
pub const MAX_ROWS_SPLIT: usize = 16;

/// Each part of a split row-kernel convolution sums at least this many input channels.
const MIN_CHANNELS_PER_SPLIT: usize = 16;

/// The configuration for a convolution of `x_shape` (as the kernel reads it: padded) by
/// `weights`, as this module's presets say for the device.
pub fn choice(
    ctx: &GpuContext,
    x_shape: [usize; 4],
    weights: &Conv2dWeights,
    opts: &Conv2dOptions,
) -> Result<KernelChoice> {
    if opts.groups > 1 {
        // Checks the groups against the shapes here, before anything is launched.
        conv_shape(x_shape, weights.shape(), opts)?;
        return Ok(KernelChoice::Grouped);
    }
    match weights.algorithm() {
        ConvAlgorithm::CooperativeMatrix => {
            Ok(coop_choice(ctx, x_shape, weights.shape(), opts)?.into())
        }
        // Only the row kernel (direct weights, no padding) splits.
        ConvAlgorithm::Direct if opts.padding == (0, 0) => {
            let out = conv_shape(x_shape, weights.shape(), opts)?;
            let gpu = ctx.adapter().device_type != wgpu::DeviceType::Cpu;
            Ok(KernelChoice::Nchw {
                split: rows_split(out, weights.shape()[1], gpu),
            })
        }
        _ => Ok(KernelChoice::Nchw { split: 1 }),
    }
}

/// The row kernel's split-K factor for an output of shape `out` summing over `cin` input
/// channels: on a GPU, a power of two up to [`MAX_ROWS_SPLIT`] until the grid (8x8 tiles of
/// 8 pixels by 8 channels, 64 invocations a workgroup) reaches [`GPU_TARGET_WORKGROUPS`], each
/// part keeping at least 16 channels; none on a CPU adapter, whose few threads any grid fills.
pub fn rows_split(out: [usize; 4], cin: usize, gpu: bool) -> usize {
    if !gpu {
        return 1;
    }
    let [n, cout, oh, ow] = out;
    let invocations = n * oh * ow.div_ceil(8) * cout.div_ceil(8);
    let workgroups = invocations.div_ceil(64);
    let mut split = 1;
    while split < MAX_ROWS_SPLIT
        && workgroups * split < GPU_TARGET_WORKGROUPS
        && cin / (split * 2) >= MIN_CHANNELS_PER_SPLIT
    {
        split *= 2;
    }
    split
}

/// The algorithm a convolution's weights are laid out for: direct for grouped convolutions
/// (the grouped kernel reads the direct layout; the channels-last networks expand grouped
/// convolutions to dense ones before this, see [`crate::graph::passes::dense_groups`]);
/// otherwise cooperative matrices for every layer of an f16 network where `cooperative` (the
/// device has them and they passed their check), Winograd where asked and the layer allows it
/// (3x3, stride 1, no upsampled residual), direct otherwise.
pub fn algorithm(
    w_shape: [usize; 4],
    opts: &Conv2dOptions,
    precision: Precision,
    cooperative: bool,
    winograd: bool,
) -> ConvAlgorithm {
    let winograd_fits = w_shape[2..] == [3, 3]
        && opts.stride == (1, 1)
        && !matches!(opts.residual, ResidualMode::Upsampled(_));
    if opts.groups > 1 {
        ConvAlgorithm::Direct
    } else if cooperative && precision == Precision::F16 {
        ConvAlgorithm::CooperativeMatrix
    } else if winograd && winograd_fits {
        ConvAlgorithm::Winograd
    } else {
        ConvAlgorithm::Direct
    }
}

/// The block and split-K factor for a cooperative-matrix convolution of `x_shape` (already
/// padded) by weights of `w_shape`, reasoned from counts:
/// - on a GPU, the staged block where the device runs it, the layer fits it and its grid fills
///   the GPU ([`STAGED_MIN_SUBGROUPS`]); else 4x4 direct-load blocks, or 2x4 where the 4x4 grid
///   would not cover the compute units once ([`SMALL_GRID`]), then split-K, a power of two up
///   to [`MAX_SPLIT`], until the grid reaches [`GPU_TARGET_WORKGROUPS`];
/// - on a CPU adapter (the matrices emulated, a few threads): the staged block wherever the
///   layer fits it, else 4x4 direct-load blocks; no split.
pub fn coop_choice(
    ctx: &GpuContext,
    x_shape: [usize; 4],
    w_shape: [usize; 4],
    opts: &Conv2dOptions,
) -> Result<CoopChoice> {
    let side = coop::support(ctx).map_or(16, |s| s.side) as usize;
    let unpadded = Conv2dOptions {
        padding: (0, 0),
        ..*opts
    };
    let out = conv_shape(x_shape, w_shape, &unpadded)?;
    let cpu = ctx.adapter().device_type == wgpu::DeviceType::Cpu;
    let staged = coop::staged_block(ctx).filter(|&b| coop::staged_fits(b, w_shape));
    Ok(choose(
        out,
        coop::steps(w_shape, side as u32),
        side,
        staged,
        cpu,
    ))
}

/// [`coop_choice`] on plain numbers: the output shape, the direct blocks' k steps, the matrix
/// side, the staged block where the device and the layer allow it, and whether the adapter is a
/// CPU.
pub fn choose(
    out: [usize; 4],
    steps: usize,
    side: usize,
    staged: Option<StagedBlock>,
    cpu: bool,
) -> CoopChoice {
    let [n, cout, oh, ow] = out;
    let side = side.max(1);
    if let Some(block) = staged {
        let blocks =
            n * (oh * ow).div_ceil(block.block_pixels()) * cout.div_ceil(block.block_channels());
        if cpu || blocks * 8 >= STAGED_MIN_SUBGROUPS {
            return CoopChoice::STAGED;
        }
    }
    let segments = oh * ow.div_ceil(side);
    let workgroups = |tile: coop::CoopTile| {
        n * segments.div_ceil(tile.m_tiles)
            * cout
                .next_multiple_of(crate::tensor::CHANNELS_LAST_ALIGN)
                .div_ceil(tile.n_tiles * side)
    };
    let (big, small) = (TILES[0], TILES[1]);
    if cpu {
        return CoopChoice::direct(big, 1);
    }
    let tile = if workgroups(big) < SMALL_GRID {
        small
    } else {
        big
    };
    let mut split = 1;
    while split < MAX_SPLIT
        && workgroups(tile) * split < GPU_TARGET_WORKGROUPS
        && steps / (split * 2) >= MIN_STEPS_PER_SPLIT
    {
        split *= 2;
    }
    CoopChoice {
        block: CoopBlock::Direct(tile),
        split,
    }
}

/// The side of the device's cooperative matrices, or 16 (NVIDIA's) where it has none: the
/// sizes of the cooperative-matrix choices' scratch and reads are reasoned from it.
fn matrix_side(ctx: &GpuContext) -> u32 {
    coop::support(ctx).map_or(16, |s| s.side)
}

/// Bytes of split-K partial sums a convolution of `x_shape` by `weights` run as `choice` needs
/// (0 without split-K): what a plan's shared scratch buffer is sized from.
pub fn scratch_bytes(
    ctx: &GpuContext,
    x_shape: [usize; 4],
    weights: &Conv2dWeights,
    opts: &Conv2dOptions,
    choice: KernelChoice,
) -> Result<u64> {
    let out = conv_shape(x_shape, weights.shape(), opts)?;
    Ok(match choice {
        KernelChoice::Coop(c) => coop::partial_bytes(out, weights.cout_pad(), c, matrix_side(ctx)),
        KernelChoice::Nchw { split } => super::direct::partial_bytes(out, split),
        KernelChoice::Grouped => 0,
    })
}

/// Bytes a convolution run as `choice` reads from the start of its input of `x_shape`: for the
/// cooperative-matrix kernels, whose last tiles read whole matrices past the value's end, more
/// than the value holds; 0 for the kernels that read within it.
pub fn input_bytes_read(
    ctx: &GpuContext,
    x_shape: [usize; 4],
    w_shape: [usize; 4],
    opts: &Conv2dOptions,
    choice: KernelChoice,
) -> u64 {
    match choice {
        KernelChoice::Coop(_) => {
            coop::input_bytes_read(x_shape, w_shape, opts.stride, matrix_side(ctx))
        }
        KernelChoice::Nchw { .. } | KernelChoice::Grouped => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H200: StagedBlock = StagedBlock {
        side: 16,
        subgroup: 32,
    };

    /// The choices measured best on an H200 for the seed FPN's convolutions at 1x3x600x900
    /// (16x16 matrices).
    #[test]
    fn gpu_choices_follow_the_measured_ones() {
        let direct = |m, n, split| {
            CoopChoice::direct(
                coop::CoopTile {
                    m_tiles: m,
                    n_tiles: n,
                },
                split,
            )
        };
        // (output shape, k steps of the direct blocks, staged block fits) -> choice
        let cases = [
            // smooth3, 3x3 256->256 at 150x225
            ([1, 256, 150, 225], 9 * 16, true, CoopChoice::STAGED),
            // a 3x3 stride-2 128->128 conv to 75x113
            ([1, 128, 75, 113], 9 * 8, true, CoopChoice::STAGED),
            // the same where the staged block cannot run
            ([1, 128, 75, 113], 9 * 8, false, direct(4, 4, 2)),
            // layer3 3x3 256->256 at 38x57
            ([1, 256, 38, 57], 9 * 16, true, direct(4, 4, 4)),
            // layer4 3x3 512->512 at 19x29
            ([1, 512, 19, 29], 9 * 32, true, direct(2, 4, 4)),
            // layer4 1x1 2048->512 at 19x29
            ([1, 512, 19, 29], 128, true, direct(2, 4, 4)),
            // toplayer 1x1 2048->256 at 19x29
            ([1, 256, 19, 29], 128, true, direct(2, 4, 8)),
        ];
        for (out, steps, fits, want) in cases {
            let got = choose(out, steps, 16, fits.then_some(H200), false);
            assert_eq!(got, want, "{out:?} with {steps} steps");
        }
    }

    /// The FPN's small-map float32 convolutions at 1x3x600x900 get split-K on a GPU; the large
    /// maps and CPU adapters do not.
    #[test]
    fn row_kernel_splits_small_maps_on_gpus() {
        // toplayer 1x1 2048->256 at 19x29
        assert_eq!(rows_split([1, 256, 19, 29], 2048, true), 16);
        // layer4 3x3 512->512 at 19x29
        assert_eq!(rows_split([1, 512, 19, 29], 512, true), 8);
        // smooth3 3x3 256->256 at 150x225
        assert_eq!(rows_split([1, 256, 150, 225], 256, true), 1);
        // few input channels: every part keeps at least 16
        assert_eq!(rows_split([1, 64, 4, 4], 32, true), 2);
        assert_eq!(rows_split([1, 64, 4, 4], 16, true), 1);
        assert_eq!(rows_split([1, 512, 19, 29], 512, false), 1);
    }

    #[test]
    fn cpu_adapters_never_split() {
        let got = choose([1, 512, 7, 7], 9 * 64, 8, None, true);
        assert_eq!(got.split, 1);
    }
}
