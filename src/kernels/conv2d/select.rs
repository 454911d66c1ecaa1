//! Which convolution kernel runs which layer on which adapter: the one place that decides.
//!
//! [`algorithm`] picks the algorithm a layer's weights are laid out for; [`coop_choice`] picks
//! the block and the split-K factor of a cooperative-matrix convolution from its grid. The
//! NCHW kernels choose their row tiles and workgroup shapes themselves (see [`super::direct`]).

use super::coop::{self, CoopBlock, CoopChoice, MAX_SPLIT, TILES};
use super::coop_staged::StagedBlock;
use super::{output_shape, Conv2dOptions, ConvAlgorithm, ResidualMode};
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

/// The algorithm a convolution's weights are laid out for: cooperative matrices for every
/// layer of an f16 network where `cooperative` (the device has them and they passed their
/// check), Winograd where asked and the layer allows it (3x3, stride 1, no upsampled
/// residual), direct otherwise.
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
    if cooperative && precision == Precision::F16 {
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
    let out = output_shape(x_shape, w_shape, &unpadded)?;
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

    #[test]
    fn cpu_adapters_never_split() {
        let got = choose([1, 512, 7, 7], 9 * 64, 8, None, true);
        assert_eq!(got.split, 1);
    }
}
