//! Mask R-CNN's mask post-processing (`shaders/masks.wgsl`): torchvision's
//! `maskrcnn_inference` ([`select_masks`]: per detection, the sigmoid of the mask logits'
//! channel of its label) and `paste_masks_in_image` ([`paste_masks`]: each probability map
//! resized into its box in a picture of zeros), for every image and slot of a batch in one
//! launch each.
//!
//! The detections are the records the crate's NMS writes, f32 `[N, 1, D, 6]` (x1, y1, x2, y2,
//! score, the label's u32 bits; a score that is not >= 0 marks an empty slot), boxes in the
//! original picture's pixels; mask row `k` belongs to record `k` (image `k / D`, slot
//! `k % D`), as RoIAlign writes its rows. Empty slots give zeros. The pasting also takes
//! records compacted across the batch ([`crate::kernels::compact_records`], word 5 holding each
//! one's row in the detections): mask `k` then goes back to that row, and empty records write
//! nothing.
//!
//! # The paste's arithmetic
//! torchvision's, step by step: the MxM map padded by one pixel of zeros, the box expanded
//! about its centre by `(M + 2) / M` in f32 (the Python float rounded to f32, as PyTorch
//! multiplies an f32 tensor by it), each coordinate truncated toward zero to an integer, the
//! padded map resized bilinearly (`align_corners=False`, PyTorch's f32 index arithmetic) to
//! `w = max(x2 - x1 + 1, 1)` by `h = max(y2 - y1 + 1, 1)` and its part inside the picture
//! placed at (x1, y1). Only the placed pixels are computed: the resized map is never made.
//!
//! Where torchvision's own code has no sensible answer the kernel writes zeros: a box that
//! lies wholly outside the picture (torchvision's slicing wraps negative ends around, or fails
//! on the mismatched shapes; the detectors clip their boxes to the picture, so it does not
//! arise), and a box whose expanded coordinates are not finite or beyond +-2^24 pixels.
//!
//! # Size
//! The pasted masks are `[N*D, 1, H, W]` f32: 100 detections of an 800x1333 picture are 427 MB,
//! more than many devices bind at once. [`check_paste_size`] refuses such an output with
//! [`Error::LimitExceeded`] naming the limit and what to change, before anything is allocated.

use crate::error::{Error, Result};
use crate::gpu::{Dispatch, GpuContext};
use crate::kernels::box_decode::check_records;
use crate::kernels::{
    check_nchw, check_output_shape, elementwise_dispatch, follows_batch, ShaderSource,
};
use crate::precision::Precision;
use crate::tensor::{check_shape, Tensor};

/// The WGSL source.
pub const SHADER: ShaderSource = ShaderSource {
    name: "masks.wgsl",
    parts: &["masks.wgsl"],
    source: include_str!("../../shaders/masks.wgsl"),
    params: &[
        ("SelectParams", std::mem::size_of::<SelectParams>()),
        ("PasteParams", std::mem::size_of::<PasteParams>()),
    ],
    enables: "",
    precisions: &Precision::ALL,
};

/// The padding torchvision's `paste_masks_in_image` gives each mask (its default, 1).
pub const PASTE_PADDING: usize = 1;

/// The largest mask side accepted (torchvision's is 28).
pub const MAX_MASK_SIZE: usize = 1024;

/// Mirrors `SelectParams` in the WGSL.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct SelectParams {
    len: u32,
    classes: u32,
    plane: u32,
    _pad: u32,
}

/// Mirrors `PasteParams` in the WGSL.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct PasteParams {
    len: u32,
    height: u32,
    width: u32,
    size: u32,
    scale: f32,
    zero: u32,
    rows_in_record: u32,
    _pad: u32,
}

/// Checks the f32 records tensor and that it is not the output.
fn check_records_tensor(
    ctx: &GpuContext,
    op: &'static str,
    detections: &Tensor,
    out: &Tensor,
) -> Result<()> {
    check_nchw(op, detections)?;
    check_shape(ctx, op, "the detections", detections.shape())?;
    if detections.precision() != Precision::F32 {
        return Err(Error::invalid(
            op,
            format!(
                "the detections are {}; they must be float32 records (as NMS writes them)",
                detections.precision()
            ),
        ));
    }
    if detections.buffer() == out.buffer() {
        return Err(Error::invalid(
            op,
            "the output shares a buffer with the detections; give the output its own tensor",
        ));
    }
    Ok(())
}

/// The output shape of [`select_masks`] for logits `[K, C, M, M]` and detections
/// `[N, 1, D, 6]` with `K = N*D`: `[K, 1, M, M]`.
pub fn select_output_shape(logits: [usize; 4], detections: [usize; 4]) -> Result<[usize; 4]> {
    const OP: &str = "select_masks";
    let (n, d) = check_records(OP, detections)?;
    let [k, c, m, m2] = logits;
    if k != n * d || m != m2 || c == 0 || m == 0 {
        return Err(Error::invalid(
            OP,
            format!(
                "the mask logits have shape {logits:?}; expected [{}, C, M, M]: one row of square class maps per record of the detections {detections:?}",
                n * d
            ),
        ));
    }
    Ok([k, 1, m, m])
}

/// Builds the launch writing `out` (f32 `[K, 1, M, M]`) = per record, the sigmoid of the
/// channel of its label of `logits` `[K, C, M, M]` (f32 or f16); zeros for empty slots and for
/// labels that are not below C.
pub fn prepare_select(
    ctx: &GpuContext,
    logits: &Tensor,
    detections: &Tensor,
    out: &Tensor,
) -> Result<Dispatch> {
    const OP: &str = "select_masks";
    check_nchw(OP, logits)?;
    check_nchw(OP, out)?;
    check_shape(ctx, OP, "the mask logits", logits.shape())?;
    check_records_tensor(ctx, OP, detections, out)?;
    let shape = select_output_shape(logits.shape(), detections.shape())?;
    check_output_shape(OP, out, shape)?;
    check_shape(ctx, OP, "the output", shape)?;
    if out.precision() != Precision::F32 {
        return Err(Error::invalid(
            OP,
            format!(
                "the output is {}; the probabilities are written in f32 whatever the logits are stored in",
                out.precision()
            ),
        ));
    }
    if logits.buffer() == out.buffer() {
        return Err(Error::invalid(
            OP,
            "the output shares a buffer with the logits; give the output its own tensor",
        ));
    }
    let len = u32::try_from(logits.numel())
        .map(|_| out.numel() as u32)
        .map_err(|_| {
            Error::invalid(
                OP,
                format!(
                    "the mask logits {:?} have 2^32 values or more; select the masks of fewer detections at once",
                    logits.shape()
                ),
            )
        })?;
    let [_, c, m, _] = logits.shape();
    let params = SelectParams {
        len,
        classes: c as u32,
        plane: (m * m) as u32,
        _pad: 0,
    };
    let launch = elementwise_dispatch(
        ctx,
        &SHADER,
        logits.precision(),
        OP,
        out.numel(),
        &params,
        &[
            (0, logits.binding()),
            (1, detections.binding()),
            (2, out.binding()),
        ],
        3,
    )?;
    Ok(follows_batch(launch, out))
}

/// Runs the mask selection now: f32 `[K, 1, M, M]` probabilities.
pub fn select_masks(ctx: &GpuContext, logits: &Tensor, detections: &Tensor) -> Result<Tensor> {
    let shape = select_output_shape(logits.shape(), detections.shape())?;
    let out = Tensor::empty(ctx, shape)?;
    ctx.submit(&[&prepare_select(ctx, logits, detections, &out)?])?;
    Ok(out)
}

/// The output shape of [`paste_masks`] for masks `[K, 1, M, M]`, detections `[N, 1, D, 6]`
/// (`K = N*D`) and pictures of `picture` (height, width): `[K, 1, H, W]`.
pub fn paste_output_shape(
    masks: [usize; 4],
    detections: [usize; 4],
    picture: (usize, usize),
) -> Result<[usize; 4]> {
    const OP: &str = "paste_masks";
    let (n, d) = check_records(OP, detections)?;
    let [k, one, m, m2] = masks;
    if k != n * d || one != 1 || m != m2 || m == 0 {
        return Err(Error::invalid(
            OP,
            format!(
                "the masks have shape {masks:?}; expected [{}, 1, M, M]: one square map per record of the detections {detections:?}",
                n * d
            ),
        ));
    }
    if m > MAX_MASK_SIZE {
        return Err(Error::invalid(
            OP,
            format!("masks of side {m}; at most {MAX_MASK_SIZE} are pasted (torchvision's are 28)"),
        ));
    }
    let (h, w) = picture;
    if h == 0 || w == 0 {
        return Err(Error::invalid(
            OP,
            format!("a {h}x{w} picture; both sides must be at least 1"),
        ));
    }
    if h > 1 << 24 || w > 1 << 24 {
        return Err(Error::invalid(
            OP,
            format!("a {h}x{w} picture; sides above 2^24 pixels are not supported"),
        ));
    }
    Ok([k, 1, h, w])
}

/// Checks that pasted masks of `shape` `[K, 1, H, W]` (f32) fit in one storage binding and one
/// buffer of this device; the error names the limit and suggests fewer detections or smaller
/// pictures.
pub fn check_paste_size(ctx: &GpuContext, shape: [usize; 4]) -> Result<()> {
    let [k, _, h, w] = shape;
    let bytes = shape
        .iter()
        .try_fold(4u64, |a, &d| a.checked_mul(d as u64))
        .unwrap_or(u64::MAX);
    let limits = ctx.limits();
    // The tighter of the two limits is the one to name.
    let mut checks = [
        (
            "max_storage_buffer_binding_size",
            limits.max_storage_buffer_binding_size,
        ),
        ("max_buffer_size", limits.max_buffer_size),
    ];
    checks.sort_by_key(|&(_, limit)| limit);
    for (limit_name, limit) in checks {
        if bytes > limit {
            let per_mask = (h as u64 * w as u64 * 4).max(1);
            return Err(Error::LimitExceeded {
                op: "paste_masks",
                what: format!(
                    "the byte size of the pasted masks [{k}, 1, {h}, {w}] ({k} detections of {h}x{w} f32 probabilities)"
                ),
                value: bytes,
                limit_name,
                limit,
                hint: format!(
                    "paste fewer detections at once (at most {} of this picture size: lower the detections per picture, or paste the records in parts), or paste into smaller pictures",
                    limit / per_mask
                ),
            });
        }
    }
    if u32::try_from(k * h * w).is_err() {
        return Err(Error::invalid(
            "paste_masks",
            format!(
                "the pasted masks [{k}, 1, {h}, {w}] have 2^32 values or more; paste fewer detections at once"
            ),
        ));
    }
    Ok(())
}

/// Builds the launch writing `out` (f32 `[K, 1, H, W]`) = each record's mask of `masks` (f32
/// `[K, 1, M, M]` probabilities) pasted into its box in an `H x W` picture of zeros, as
/// torchvision's `paste_masks_in_image(masks, boxes, (H, W), padding=1)`. With
/// `rows_in_record`, record `k`'s mask goes to the row of `out` its word 5 names (compacted
/// records) and empty records write nothing.
pub fn prepare_paste(
    ctx: &GpuContext,
    masks: &Tensor,
    detections: &Tensor,
    out: &Tensor,
    rows_in_record: bool,
) -> Result<Dispatch> {
    const OP: &str = "paste_masks";
    check_nchw(OP, masks)?;
    check_nchw(OP, out)?;
    check_shape(ctx, OP, "the masks", masks.shape())?;
    check_records_tensor(ctx, OP, detections, out)?;
    let [_, _, h, w] = out.shape();
    let shape = paste_output_shape(masks.shape(), detections.shape(), (h, w))?;
    check_output_shape(OP, out, shape)?;
    check_paste_size(ctx, shape)?;
    if masks.precision() != Precision::F32 || out.precision() != Precision::F32 {
        return Err(Error::invalid(
            OP,
            format!(
                "the masks are {} and the output {}; both must be f32 probabilities (select_masks writes f32)",
                masks.precision(),
                out.precision()
            ),
        ));
    }
    if masks.buffer() == out.buffer() {
        return Err(Error::invalid(
            OP,
            "the output shares a buffer with the masks; give the output its own tensor",
        ));
    }
    let m = masks.shape()[2];
    let params = PasteParams {
        len: out.numel() as u32,
        height: h as u32,
        width: w as u32,
        size: m as u32,
        scale: ((m + 2 * PASTE_PADDING) as f64 / m as f64) as f32,
        zero: 0,
        rows_in_record: rows_in_record as u32,
        _pad: 0,
    };
    let launch = elementwise_dispatch(
        ctx,
        &SHADER,
        Precision::F32,
        OP,
        out.numel(),
        &params,
        &[
            (4, masks.binding()),
            (1, detections.binding()),
            (5, out.binding()),
        ],
        6,
    )?;
    Ok(follows_batch(launch, out))
}

/// Runs the paste now: f32 `[K, 1, H, W]` masks in pictures of `picture` (height, width).
/// Refuses an output that does not fit the device (see [`check_paste_size`]) before allocating
/// it.
pub fn paste_masks(
    ctx: &GpuContext,
    masks: &Tensor,
    detections: &Tensor,
    picture: (usize, usize),
) -> Result<Tensor> {
    let shape = paste_output_shape(masks.shape(), detections.shape(), picture)?;
    check_paste_size(ctx, shape)?;
    let out = Tensor::empty(ctx, shape)?;
    ctx.submit(&[&prepare_paste(ctx, masks, detections, &out, false)?])?;
    Ok(out)
}
