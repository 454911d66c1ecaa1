//! Which convolution kernel runs which layer on which adapter: the one place that decides.
//!
//! [`algorithm`] picks the algorithm a layer's weights are laid out for; [`coop_choice`] picks
//! the block and the split-K factor of a cooperative-matrix convolution from its grid. The
//! NCHW kernels choose their row tiles and workgroup shapes themselves (see [`super::direct`]).

use super::coop::{self, CoopChoice, MAX_SPLIT, TILES};
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
/// padded) by weights of `w_shape`, reasoned from counts. On a GPU: 4x4 blocks, or 2x4 where the
/// 4x4 grid would not cover the compute units once; then split-K, a power of two up to
/// [`MAX_SPLIT`], until the grid reaches [`GPU_TARGET_WORKGROUPS`]. On a CPU adapter (where the
/// matrices are emulated and parallelism is a few threads): 4x4, no split.
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
    Ok(choose(out, coop::steps(w_shape, side as u32), side, cpu))
}

/// [`coop_choice`] on plain numbers: the output shape, the k steps, the matrix side and whether
/// the adapter is a CPU.
pub fn choose(out: [usize; 4], steps: usize, side: usize, cpu: bool) -> CoopChoice {
    let [n, cout, oh, ow] = out;
    let segments = oh * ow.div_ceil(side);
    let workgroups = |tile: coop::CoopTile| {
        n * segments.div_ceil(tile.m_tiles)
            * cout
                .next_multiple_of(crate::tensor::CHANNELS_LAST_ALIGN)
                .div_ceil(tile.n_tiles * side)
    };
    let (big, small) = (TILES[0], TILES[1]);
    if cpu {
        return CoopChoice {
            tile: big,
            split: 1,
        };
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
    CoopChoice { tile, split }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The choices measured best on an H200 for the seed FPN's convolutions at 1x3x600x900
    /// (16x16 matrices).
    #[test]
    fn gpu_choices_follow_the_measured_ones() {
        let tile = |m, n| coop::CoopTile {
            m_tiles: m,
            n_tiles: n,
        };
        // (output shape, k steps) -> (block, split)
        let cases = [
            // smooth3, 3x3 256->256 at 150x225
            ([1, 256, 150, 225], 9 * 16, tile(4, 4), 1),
            // a 3x3 stride-2 128->128 conv to 75x113
            ([1, 128, 75, 113], 9 * 8, tile(4, 4), 2),
            // layer3 3x3 256->256 at 38x57
            ([1, 256, 38, 57], 9 * 16, tile(4, 4), 4),
            // layer4 3x3 512->512 at 19x29
            ([1, 512, 19, 29], 9 * 32, tile(2, 4), 4),
            // layer4 1x1 2048->512 at 19x29
            ([1, 512, 19, 29], 128, tile(2, 4), 4),
            // toplayer 1x1 2048->256 at 19x29
            ([1, 256, 19, 29], 128, tile(2, 4), 8),
        ];
        for (out, steps, want_tile, want_split) in cases {
            let got = choose(out, steps, 16, false);
            assert_eq!(
                (got.tile, got.split),
                (want_tile, want_split),
                "{out:?} with {steps} steps"
            );
        }
    }

    #[test]
    fn cpu_adapters_never_split() {
        let got = choose([1, 512, 7, 7], 9 * 64, 8, true);
        assert_eq!(got.split, 1);
    }
}
