//! The presets: which kernel, block, split and workgroup shape a convolution gets on a device,
//! reasoned from counts (and from what was measured where the comments say so), and the other
//! choices the tuner may time against them.

use super::{ConvChoice, ConvProblem, DeviceProfile, Workgroup};
use crate::error::Result;
use crate::kernels::conv2d::coop::{self, CoopBlock, CoopChoice, CoopTile, StagedBlock};
use crate::kernels::conv2d::rows::RowTile;
use crate::kernels::conv2d::{direct, grouped, ResidualMode, WeightLayout};
use crate::precision::Precision;
use crate::tensor::MemoryFormat;

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

/// Every split-K part of a cooperative-matrix convolution runs at least this many k steps, so
/// that the partial sums' traffic stays small next to the multiplies.
const MIN_STEPS_PER_SPLIT: usize = 8;

/// The most parts the row kernel's split-K uses.
pub const MAX_ROWS_SPLIT: usize = 16;

/// Each part of a split row-kernel convolution sums at least this many input channels.
const MIN_CHANNELS_PER_SPLIT: usize = 16;

/// Channel tiles a workgroup spans on a CPU adapter when the layer has that many.
///
/// llvmpipe runs a workgroup's invocations one SIMD batch after another on one thread, so the
/// batches that share pixels reuse the input from that core's cache: measured on lavapipe, 8
/// channel tiles by 8 pixel lanes against 64 pixel lanes took a 1x1 256->256 conv at 150x225
/// from 9.8 to 16.4 GFLOP/s, 2048->256 at 19x29 from 13.7 to 24.1, a 3x3 256->256 from 25.5 to
/// 27.5; 64-channel layers (4 tiles) did best with 16 x 4 (3x3 64->64: 19.2 -> 24.1).
pub const CPU_CHANNEL_LANES: usize = 8;

/// The kernels, before their configuration: what the weights are laid out for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Family {
    Direct,
    Rows,
    Winograd,
    Grouped,
    Coop,
}

/// The kernel family of `problem`, which depends on no input size: grouped convolutions take
/// the grouped kernel (the channels-last networks expand them to dense ones before this, see
/// the graph's `dense_groups` pass); channels-last f16 ones the cooperative matrices where the
/// problem says they run ([`ConvProblem::cooperative`]: the device has them and they passed
/// their check); other channels-last ones the general direct kernel, the only NCHW kernel
/// that also indexes channels-last tensors; Winograd where wanted and the layer allows it
/// (3x3, stride 1, no upsampled residual); the row kernel where there is no padding; the
/// general direct kernel otherwise.
fn family(problem: &ConvProblem) -> Family {
    let winograd_fits = problem.weight[2..] == [3, 3]
        && problem.stride == (1, 1)
        && !matches!(problem.residual, ResidualMode::Upsampled(_));
    let channels_last = problem.layout == MemoryFormat::ChannelsLast;
    if problem.groups > 1 {
        Family::Grouped
    } else if channels_last && problem.precision == Precision::F16 && problem.cooperative {
        Family::Coop
    } else if channels_last {
        Family::Direct
    } else if problem.winograd && winograd_fits {
        Family::Winograd
    } else if problem.padding == (0, 0) {
        Family::Rows
    } else {
        Family::Direct
    }
}

/// The layout `problem`'s weights need: that of every choice [`choose`] and [`candidates`]
/// give it, whatever the input's size (which it does not read), so that weights can be laid
/// out before any input is known.
pub fn weight_layout(problem: &ConvProblem) -> WeightLayout {
    match family(problem) {
        Family::Winograd => WeightLayout::Winograd,
        Family::Coop => WeightLayout::TapMajor,
        Family::Direct | Family::Rows | Family::Grouped => WeightLayout::KMajor,
    }
}

/// The preset for `problem` on `profile`: its family's kernel (see [`weight_layout`]) with
/// - the row kernel: its tile (16x16 on CPU adapters, 8x8 on GPUs) and, on GPUs, split-K until
///   the grid reaches the profile's target;
/// - the cooperative-matrix kernels: the staged block where its grid fills the device, else
///   4x4 or 2x4 direct-load blocks with split-K (see [`SMALL_GRID`], [`STAGED_MIN_SUBGROUPS`]);
/// - the NCHW kernels: a workgroup spanning channel tiles on CPU adapters
///   ([`CPU_CHANNEL_LANES`]), pixels on GPUs.
///
/// An error where the shapes do not make a convolution.
pub fn choose(problem: &ConvProblem, profile: &DeviceProfile) -> Result<ConvChoice> {
    let out = problem.output()?;
    let [_, cout, oh, ow] = out;
    let cpu = profile.cpu;
    Ok(match family(problem) {
        Family::Grouped => {
            // 4 output channels per invocation where they fit a group evenly: every input
            // value loaded then feeds 4 sums.
            let couts = if (cout / problem.groups).is_multiple_of(4) {
                4
            } else {
                1
            };
            let lanes = (oh * ow).div_ceil(grouped::PIX_TILE);
            ConvChoice::Grouped {
                couts,
                workgroup: workgroup_shape(lanes, cout / couts, cpu),
            }
        }
        Family::Coop => coop_preset(problem, profile)?.into(),
        Family::Winograd => {
            let lanes = oh.div_ceil(2) * ow.div_ceil(2);
            ConvChoice::Winograd {
                workgroup: workgroup_shape(lanes, cout.div_ceil(direct::COUT_TILE), cpu),
            }
        }
        Family::Rows => rows(
            problem,
            profile,
            rows_split(out, problem.weight[1], profile),
        )?,
        Family::Direct => general(problem, profile)?,
    })
}

/// The configurations worth timing for `problem` (the preset among them, first), leaving out
/// those whose split-K scratch the device cannot bind: for the cooperative-matrix kernels the
/// 4x4 and 2x4 direct-load blocks with split-K factors of 1 to [`coop::MAX_SPLIT`] and the
/// staged block where it fits; for the row kernel its split-K factors; the other kernels have
/// only the preset.
pub fn candidates(problem: &ConvProblem, profile: &DeviceProfile) -> Result<Vec<ConvChoice>> {
    let mut all = vec![choose(problem, profile)?];
    match family(problem) {
        Family::Coop => {
            let steps = coop::steps(problem.weight, profile.matrix_side());
            for tile in &coop::TILES[..2] {
                let mut split = 1;
                while split <= coop::MAX_SPLIT
                    && (split == 1 || steps / split >= MIN_STEPS_PER_SPLIT)
                {
                    all.push(CoopChoice::direct(*tile, split).into());
                    split *= 2;
                }
            }
            if staged_fits(problem, profile).is_some() {
                all.push(CoopChoice::STAGED.into());
            }
        }
        Family::Rows => {
            let cin = problem.weight[1];
            let mut split = 1;
            while split <= MAX_ROWS_SPLIT && (split == 1 || cin / split >= MIN_CHANNELS_PER_SPLIT) {
                all.push(rows(problem, profile, split)?);
                split *= 2;
            }
        }
        Family::Direct | Family::Winograd | Family::Grouped => {}
    }
    let mut seen = Vec::new();
    all.retain(|c| {
        let new = !seen.contains(c);
        seen.push(*c);
        new && c
            .scratch_bytes(problem, profile)
            .is_ok_and(|b| b <= profile.max_binding_bytes)
    });
    Ok(all)
}

/// The row kernel for `problem` with its input channels split into `split` parts (clamped to
/// 1 to the channels), its tile and workgroup as the presets say.
pub fn rows(problem: &ConvProblem, profile: &DeviceProfile, split: usize) -> Result<ConvChoice> {
    let [_, cout, oh, ow] = problem.output()?;
    let [_, cin, kh, kw] = problem.weight;
    let (out_h, out_w) = if problem.flattens_plane() {
        (1, oh * ow)
    } else {
        (oh, ow)
    };
    let tile = row_tile((kh, kw), problem.stride, out_w, profile.cpu);
    let lanes = out_h * out_w.div_ceil(tile.pixels);
    Ok(ConvChoice::Rows {
        tile,
        split: split.clamp(1, cin),
        workgroup: workgroup_shape(lanes, cout.div_ceil(tile.couts), profile.cpu),
    })
}

/// The general direct kernel for `problem`.
fn general(problem: &ConvProblem, profile: &DeviceProfile) -> Result<ConvChoice> {
    let [_, cout, oh, ow] = problem.output()?;
    let lanes = (oh * ow).div_ceil(direct::PIX_TILE);
    Ok(ConvChoice::Direct {
        workgroup: workgroup_shape(lanes, cout.div_ceil(direct::COUT_TILE), profile.cpu),
    })
}

/// `choice` for an input that cannot be bound as whole vec4s (a caller's buffer ending
/// mid-vec4): the row kernel, which reads vec4s, gives way to the general kernel.
pub fn for_unaligned_input(
    choice: ConvChoice,
    problem: &ConvProblem,
    profile: &DeviceProfile,
) -> Result<ConvChoice> {
    match choice {
        ConvChoice::Rows { .. } => general(problem, profile),
        other => Ok(other),
    }
}

/// The row kernel's split-K factor for an output of shape `out` summing over `cin` input
/// channels: on a GPU, a power of two up to [`MAX_ROWS_SPLIT`] until the grid (8x8 tiles of
/// 8 pixels by 8 channels, 64 invocations a workgroup) reaches the profile's target, each part
/// keeping at least 16 channels; none on a CPU adapter, whose few threads any grid fills.
fn rows_split(out: [usize; 4], cin: usize, profile: &DeviceProfile) -> usize {
    if profile.cpu {
        return 1;
    }
    let [n, cout, oh, ow] = out;
    let invocations = n * oh * ow.div_ceil(8) * cout.div_ceil(8);
    let workgroups = invocations.div_ceil(64);
    let mut split = 1;
    while split < MAX_ROWS_SPLIT
        && workgroups * split < profile.target_workgroups
        && cin / (split * 2) >= MIN_CHANNELS_PER_SPLIT
    {
        split *= 2;
    }
    split
}

/// The row kernel's tile for a convolution of `kernel` and `stride` whose output rows are
/// `out_width` wide.
///
/// On a CPU adapter (llvmpipe) 16 pixels by 16 channels: on a 3x3 256->256 conv at 150x225
/// on lavapipe it ran at 43.1 GFLOP/s against 31.3 for 8 x 16, 34.4 for 16 x 8, 40.8 for 32
/// x 8 and 28.7 for 32 x 16 (the accumulators outgrow what the core keeps close); rows
/// narrower than 16 take 8 pixels, which wastes fewer lanes. On a GPU 8 x 8 keeps a
/// thread's accumulators at 64 floats, within the register budget that leaves room for
/// occupancy (a preset, not measured here).
fn row_tile(
    kernel: (usize, usize),
    stride: (usize, usize),
    out_width: usize,
    cpu: bool,
) -> RowTile {
    let (couts, pixels) = match (cpu, out_width >= 16) {
        (true, true) => (16, 16),
        (true, false) => (16, 8),
        (false, _) => (8, 8),
    };
    RowTile {
        kernel,
        stride,
        couts,
        pixels,
    }
}

/// The workgroup's shape for `pixel_lanes` invocations' worth of pixels and `channel_tiles`
/// channel tiles. On a CPU adapter up to [`CPU_CHANNEL_LANES`] lanes go along channel tiles
/// (see there); on a GPU all go along pixels. Either way a map too small to fill the pixel lanes
/// gets only as many as it needs (at least 8, one SIMD width of a CPU adapter) and the rest go
/// along channel tiles, so that the deep layers do not leave most invocations idle.
fn workgroup_shape(pixel_lanes: usize, channel_tiles: usize, cpu: bool) -> Workgroup {
    let channel_lanes = if cpu {
        // The largest power of two not above the tile count: no lane without a tile.
        let pow2 = 1usize << channel_tiles.max(1).ilog2();
        pow2.min(CPU_CHANNEL_LANES)
    } else {
        1
    };
    let wg = direct::WG_SIZE;
    let most_pixels = (wg as usize / channel_lanes).max(8);
    let pix_lanes = pixel_lanes.next_power_of_two().clamp(8, most_pixels) as u32;
    (pix_lanes, wg / pix_lanes)
}

/// The staged block where the profile runs it and `problem`'s weights fit it.
fn staged_fits(problem: &ConvProblem, profile: &DeviceProfile) -> Option<StagedBlock> {
    profile
        .staged
        .filter(|&b| coop::staged_fits(b, problem.weight))
}

/// The block and split-K factor of a cooperative-matrix convolution, reasoned from counts:
/// - on a GPU, the staged block where the device runs it, the layer fits it and its grid fills
///   the GPU ([`STAGED_MIN_SUBGROUPS`]); else 4x4 direct-load blocks, or 2x4 where the 4x4 grid
///   would not cover the compute units once ([`SMALL_GRID`]), then split-K, a power of two up
///   to [`coop::MAX_SPLIT`], until the grid reaches the profile's target;
/// - on a CPU adapter (the matrices emulated, a few threads): the staged block wherever the
///   layer fits it, else 4x4 direct-load blocks; no split.
fn coop_preset(problem: &ConvProblem, profile: &DeviceProfile) -> Result<CoopChoice> {
    // The kernels take explicit padding: the input is read as it is.
    let unpadded = ConvProblem {
        padding: (0, 0),
        ..*problem
    };
    let [n, cout, oh, ow] = unpadded.output()?;
    let side = profile.matrix_side().max(1) as usize;
    let steps = coop::steps(problem.weight, side as u32);
    if let Some(block) = staged_fits(problem, profile) {
        let blocks =
            n * (oh * ow).div_ceil(block.block_pixels()) * cout.div_ceil(block.block_channels());
        if profile.cpu || blocks * 8 >= STAGED_MIN_SUBGROUPS {
            return Ok(CoopChoice::STAGED);
        }
    }
    let segments = oh * ow.div_ceil(side);
    let workgroups = |tile: CoopTile| {
        n * segments.div_ceil(tile.m_tiles)
            * cout
                .next_multiple_of(crate::tensor::CHANNELS_LAST_ALIGN)
                .div_ceil(tile.n_tiles * side)
    };
    let (big, small) = (coop::TILES[0], coop::TILES[1]);
    if profile.cpu {
        return Ok(CoopChoice::direct(big, 1));
    }
    let tile = if workgroups(big) < SMALL_GRID {
        small
    } else {
        big
    };
    let mut split = 1;
    while split < coop::MAX_SPLIT
        && workgroups(tile) * split < profile.target_workgroups
        && steps / (split * 2) >= MIN_STEPS_PER_SPLIT
    {
        split *= 2;
    }
    Ok(CoopChoice {
        block: CoopBlock::Direct(tile),
        split,
    })
}
