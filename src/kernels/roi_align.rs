//! Multi-scale RoIAlign (`shaders/roi_align.wgsl`): torchvision's `MultiScaleRoIAlign`, each
//! proposal pooled from the pyramid level the FPN paper's `LevelMapper` gives it, by
//! `roi_align(..., aligned=False)` as torchvision's CPU kernel computes it, for every image
//! and slot of a batch in one launch.
//!
//! The proposals are the records the crate's box decoding and NMS write (f32 `[N, 1, R, 6]`:
//! x1, y1, x2, y2, score, label bits, in the resized picture's pixels); a slot whose score is
//! not >= 0 is empty and its output is zeros. The output is `[N*R, C, S, S]`, stored as the
//! levels are (f32 or f16; the sampling runs in f32), row `n*R + r` for slot `r` of image `n`.
//!
//! # Levels as separate inputs
//! The levels are bound as they are, one storage binding each (at most [`MAX_LEVELS`]), not
//! packed into one map as the heads that share their weights across levels read them: the box
//! and mask heads pool from P2..P5, the FPN's own outputs, so no packing launch and no packed
//! copy (with the pool level and the gaps of [`crate::kernels::levels::pack`]) is needed, and
//! each level's shape checks against the proposals and the picture directly. The five level
//! bindings, the proposals and the output make 7 storage buffers, within wgpu's default limit
//! of 8 per shader stage; unused level bindings are bound to level 0.
//!
//! # Scales
//! [`RoiLevels::infer`] infers the levels' spatial scales as torchvision's `_setup_scales`
//! does, from each level's height against the (largest) resized picture's height,
//! `2^round(log2(h_l / h))`, and the `LevelMapper`'s range from the first and last scale; the
//! graph op does this for every picture shape, so that pictures whose padding makes a coarse
//! level's size round oddly get torchvision's scales, not the nominal ones.
//! [`RoiLevels::from_strides`] gives the nominal scales of levels of known strides.
//!
//! The `LevelMapper` is torchvision 0.29's: `floor(canonical_level + log2(sqrt(area) /
//! canonical_scale) + eps)` with eps 1e-6 added after the logarithm, clamped to
//! `[k_min, k_max]` (`k_max` when the two cross, as `torch.clamp` has it); a box of negative
//! or NaN area maps to no level and its output is zeros, as in torchvision, where its NaN
//! level matches none; a box of zero area maps to `k_min`. With a single level there is no
//! mapping: torchvision pools every box from it, whatever its area, and so does the kernel.

use crate::error::{Error, Result};
use crate::gpu::{Dispatch, GpuContext};
use crate::kernels::box_decode::RECORD;
use crate::kernels::{
    check_io, check_nchw, check_output_shape, follows_batch, layout_dispatch, ShaderSource,
};
use crate::precision::Precision;
use crate::tensor::{check_shape, check_shape_in, Tensor};

const OP: &str = "roi_align";

/// The WGSL source.
pub const SHADER: ShaderSource = ShaderSource {
    name: "roi_align.wgsl",
    parts: &["layout.wgsl", "roi_align.wgsl"],
    source: concat!(
        include_str!("../../shaders/layout.wgsl"),
        include_str!("../../shaders/roi_align.wgsl")
    ),
    params: &[("RoiAlignParams", std::mem::size_of::<RoiAlignParams>())],
    enables: "",
    precisions: &Precision::ALL,
};

/// Most levels one launch pools from (the shader's level bindings).
pub const MAX_LEVELS: usize = 5;

/// The largest output side accepted: far above the heads' 7 and 14, low enough that no index
/// arithmetic of the shader can overflow.
pub const MAX_OUTPUT_SIZE: usize = 256;

/// The largest sampling ratio accepted (torchvision's detectors use 2).
pub const MAX_SAMPLING_RATIO: usize = 16;

/// Mirrors `RoiAlignParams` in the WGSL.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct RoiAlignParams {
    len: u32,
    rois: u32,
    channels: u32,
    size: u32,
    sampling: u32,
    count: u32,
    k_min: i32,
    k_max: i32,
    canonical_scale: f32,
    canonical_level: f32,
    eps: f32,
    cl: u32,
    rows_in_record: u32,
    _pad: [u32; 3],
    levels: [[u32; 4]; MAX_LEVELS],
}

/// The pooling's attributes, torchvision's `MultiScaleRoIAlign` arguments.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RoiAlignOptions {
    /// Bins per side, S: 7 for the box heads, 14 for the mask heads.
    pub output_size: usize,
    /// Samples per bin side, 1 to [`MAX_SAMPLING_RATIO`] (torchvision's detectors: 2;
    /// torchvision's adaptive grid, `sampling_ratio <= 0`, is not supported).
    pub sampling_ratio: usize,
    /// The `LevelMapper`'s canonical box side (224).
    pub canonical_scale: u32,
    /// The level of a box of the canonical side (4).
    pub canonical_level: u32,
    /// Whether word 5 of each record holds its row in the `[N, 1, R, 6]` records it was
    /// compacted from ([`crate::kernels::compact_records`]), whose picture is that row / R (as
    /// torchvision's `rois` `[K, 5]` carry theirs), rather than the label, record `k` then
    /// belonging to picture `k / R`.
    pub rows_in_record: bool,
}

impl RoiAlignOptions {
    /// torchvision's detectors' pooling: `output_size` bins per side, sampling ratio 2,
    /// canonical scale 224 at level 4.
    pub fn new(output_size: usize) -> Self {
        RoiAlignOptions {
            output_size,
            sampling_ratio: 2,
            canonical_scale: 224,
            canonical_level: 4,
            rows_in_record: false,
        }
    }

    /// Checks the attributes.
    pub fn check(&self) -> Result<()> {
        if self.output_size == 0 || self.output_size > MAX_OUTPUT_SIZE {
            return Err(Error::invalid(
                OP,
                format!(
                    "output size {}; it must be 1 to {MAX_OUTPUT_SIZE} (7 for boxes, 14 for masks)",
                    self.output_size
                ),
            ));
        }
        if self.sampling_ratio == 0 || self.sampling_ratio > MAX_SAMPLING_RATIO {
            return Err(Error::invalid(
                OP,
                format!(
                    "sampling ratio {}; it must be 1 to {MAX_SAMPLING_RATIO} (torchvision's adaptive grid, 0, is not supported)",
                    self.sampling_ratio
                ),
            ));
        }
        if self.canonical_scale == 0 {
            return Err(Error::invalid(OP, "the canonical scale must be positive"));
        }
        Ok(())
    }
}

/// Each level's spatial scale and the `LevelMapper`'s range.
#[derive(Clone, Debug, PartialEq)]
pub struct RoiLevels {
    /// What box coordinates are multiplied by to land in each level, finest first.
    pub scales: Vec<f32>,
    /// The level of the first scale, `-log2(scales[0])`.
    pub k_min: i32,
    /// The level of the last scale.
    pub k_max: i32,
}

impl RoiLevels {
    /// torchvision's `_setup_scales` for levels of `sizes` (height, width; finest first)
    /// computed from pictures whose resized size is at most `image` (height, width): each
    /// level's scale `2^round(log2(h_l / h))` (the ratio in f32, ties to even, as
    /// `torch.tensor(ratio).log2().round()`; the width is not looked at), `k_min` and `k_max`
    /// from the first and the last scale.
    pub fn infer(sizes: &[(usize, usize)], image: (usize, usize)) -> Result<Self> {
        if sizes.is_empty() || sizes.len() > MAX_LEVELS {
            return Err(Error::invalid(
                OP,
                format!(
                    "{} levels given; 1 to {MAX_LEVELS} can be pooled from",
                    sizes.len()
                ),
            ));
        }
        if image.0 == 0 || image.1 == 0 || sizes.iter().any(|&(h, w)| h == 0 || w == 0) {
            return Err(Error::invalid(
                OP,
                format!(
                    "a {}x{} picture and levels {sizes:?}: every size must be positive",
                    image.0, image.1
                ),
            ));
        }
        let exponents: Vec<i32> = sizes
            .iter()
            .map(|&(h, _)| {
                let ratio = (h as f64 / image.0 as f64) as f32;
                ratio.log2().round_ties_even() as i32
            })
            .collect();
        Ok(RoiLevels {
            scales: exponents.iter().map(|&e| 2f32.powi(e)).collect(),
            k_min: -exponents[0],
            k_max: -exponents[exponents.len() - 1],
        })
    }

    /// The nominal scales of levels `levels` (log2 of their strides, finest first: 2..=5 for
    /// P2..P5): `2^-l`, the range from the first to the last.
    pub fn from_strides(levels: &[u32]) -> Self {
        RoiLevels {
            scales: levels.iter().map(|&l| 2f32.powi(-(l as i32))).collect(),
            k_min: levels.first().map_or(0, |&l| l as i32),
            k_max: levels.last().map_or(0, |&l| l as i32),
        }
    }
}

/// The output shape for levels whose first is `level0` `[N, C, h, w]` and proposals
/// `[N, 1, R, 6]`: `[N*R, C, S, S]`.
pub fn output_shape(
    level0: [usize; 4],
    proposals: [usize; 4],
    opts: &RoiAlignOptions,
) -> Result<[usize; 4]> {
    opts.check()?;
    let [n, c, _, _] = level0;
    let [pn, one, r, record] = proposals;
    if pn != n || one != 1 || record != RECORD || r == 0 {
        return Err(Error::invalid(
            OP,
            format!(
                "the proposals have shape {proposals:?}; expected [{n}, 1, R, {RECORD}] (R records of x1, y1, x2, y2, score, label per image of the levels' batch of {n})"
            ),
        ));
    }
    let rows = n
        .checked_mul(r)
        .ok_or_else(|| Error::invalid(OP, format!("{n} images of {r} proposals overflow")))?;
    Ok([rows, c, opts.output_size, opts.output_size])
}

/// Builds the launch writing `out` `[N*R, C, S, S]` from `levels` (each `[N, C, h_l, w_l]`,
/// finest first, one precision) and `proposals` (NCHW f32 `[N, 1, R, 6]`), with each level's
/// scale and the mapper's range from `spec`. The levels and the output are NCHW, or all
/// channels-last.
pub fn prepare(
    ctx: &GpuContext,
    levels: &[&Tensor],
    proposals: &Tensor,
    spec: &RoiLevels,
    opts: &RoiAlignOptions,
    out: &Tensor,
) -> Result<Dispatch> {
    if levels.is_empty() || levels.len() > MAX_LEVELS {
        return Err(Error::invalid(
            OP,
            format!(
                "{} levels given; 1 to {MAX_LEVELS} can be pooled from",
                levels.len()
            ),
        ));
    }
    if spec.scales.len() != levels.len() {
        return Err(Error::invalid(
            OP,
            format!(
                "{} levels but {} scales; each level needs its scale",
                levels.len(),
                spec.scales.len()
            ),
        ));
    }
    if let Some(s) = spec.scales.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
        return Err(Error::invalid(
            OP,
            format!("a level's scale is {s}; scales must be positive and finite"),
        ));
    }
    let [n, c, _, _] = levels[0].shape();
    for (l, t) in levels.iter().enumerate() {
        check_shape_in(ctx, OP, "a level", t.shape(), t.memory_format())?;
        let [ln, lc, _, _] = t.shape();
        if (ln, lc) != (n, c) {
            return Err(Error::invalid(
                OP,
                format!(
                    "level {l} has shape {:?} but level 0 has {:?}; every level must have the same batch and channels",
                    t.shape(),
                    levels[0].shape()
                ),
            ));
        }
    }
    check_nchw(OP, proposals)?;
    check_shape(ctx, OP, "the proposals", proposals.shape())?;
    if proposals.precision() != Precision::F32 {
        return Err(Error::invalid(
            OP,
            format!(
                "the proposals are {}; they must be float32 records (the levels may be f16)",
                proposals.precision()
            ),
        ));
    }
    let shape = output_shape(levels[0].shape(), proposals.shape(), opts)?;
    check_output_shape(OP, out, shape)?;
    check_shape_in(ctx, OP, "the output", shape, out.memory_format())?;
    // One layout and precision for the levels and the output.
    check_io(OP, out, levels)?;
    if proposals.buffer() == out.buffer() {
        return Err(Error::invalid(
            OP,
            "the output shares a buffer with the proposals; give the output its own tensor",
        ));
    }
    let len = u32::try_from(out.storage_len()).map_err(|_| {
        Error::invalid(
            OP,
            format!("the output {shape:?} has more than 2^32 elements"),
        )
    })?;
    let mut table = [[0u32; 4]; MAX_LEVELS];
    for ((slot, t), &scale) in table.iter_mut().zip(levels).zip(&spec.scales) {
        let [_, _, h, w] = t.shape();
        *slot = [h as u32, w as u32, scale.to_bits(), 0];
    }
    let params = RoiAlignParams {
        len,
        rois: proposals.shape()[2] as u32,
        channels: c as u32,
        size: opts.output_size as u32,
        sampling: opts.sampling_ratio as u32,
        count: levels.len() as u32,
        k_min: spec.k_min,
        k_max: spec.k_max,
        canonical_scale: opts.canonical_scale as f32,
        canonical_level: opts.canonical_level as f32,
        eps: 1e-6,
        cl: out.memory_format().wgsl_flag(c),
        rows_in_record: opts.rows_in_record as u32,
        _pad: [0; 3],
        levels: table,
    };
    let mut buffers: Vec<(u32, wgpu::BindingResource<'_>)> = (0..MAX_LEVELS)
        .map(|l| (l as u32, levels.get(l).unwrap_or(&levels[0]).binding()))
        .collect();
    buffers.push((5, proposals.binding()));
    buffers.push((6, out.binding()));
    let launch = layout_dispatch(
        ctx,
        &SHADER,
        (out.precision(), out.memory_format()),
        OP,
        out.storage_len(),
        &params,
        &buffers,
        7,
    )?;
    Ok(follows_batch(launch, out))
}

/// Runs a multi-scale RoIAlign now and returns its output: `levels` finest first, pictures
/// resized to `image` (height, width), scales inferred as torchvision does
/// ([`RoiLevels::infer`]).
pub fn multi_scale_roi_align(
    ctx: &GpuContext,
    levels: &[&Tensor],
    proposals: &Tensor,
    image: (usize, usize),
    opts: &RoiAlignOptions,
) -> Result<Tensor> {
    let sizes: Vec<(usize, usize)> = levels
        .iter()
        .map(|t| (t.shape()[2], t.shape()[3]))
        .collect();
    let spec = RoiLevels::infer(&sizes, image)?;
    let first = levels
        .first()
        .ok_or_else(|| Error::invalid(OP, "no levels given; 1 to 5 can be pooled from"))?;
    let shape = output_shape(first.shape(), proposals.shape(), opts)?;
    let out = Tensor::empty_with(ctx, shape, first.precision(), first.memory_format())?;
    ctx.submit(&[&prepare(ctx, levels, proposals, &spec, opts, &out)?])?;
    Ok(out)
}
