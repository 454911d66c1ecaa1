//! The second stage's candidate boxes (`shaders/box_candidates.wgsl`): torchvision's
//! `RoIHeads.postprocess_detections` up to its NMS, for every image and proposal of a batch in
//! one launch. Per proposal and per class but the background, the class's regression decoded
//! by `BoxCoder` against the proposal, `clip_boxes_to_image`, the score threshold (`scores >
//! box_score_thresh`) and `remove_small_boxes(min_size)`; what is kept is written as the
//! records [`crate::kernels::nms`] takes.
//!
//! # Slots per proposal
//! torchvision flattens the `R x (C - 1)` (proposal, class) pairs of an image, and its
//! `batched_nms` takes whatever passes the threshold. With COCO's 91 classes and 1000
//! proposals that is 90,000 pairs per image: more than the NMS takes (one bit each in
//! workgroup memory, [`crate::kernels::nms::MAX_CANDIDATES`]), and a suppression mask of
//! 90,000^2 bits (1 GB) per image. Nothing is pre-selected to fit instead: the threshold
//! itself bounds how many classes of a proposal can pass. The scores of a proposal are a
//! softmax, which sums to 1, so at most `floor(1 / thresh)` of its classes can score strictly
//! above `thresh` (20 at torchvision's 0.05). Each proposal gets that many slots,
//! [`per_proposal`] (never more than `C - 1`), computed with a slack of 1e-3 on the sum,
//! a hundred times what f32 rounding leaves in a softmax of hundreds of classes: every class
//! that passes has a slot, and the output is exactly torchvision's candidate set. At the
//! defaults that is 20,000 slots for 1000 proposals, whose mask is 50 MB per image.
//!
//! The bound holds for scores that are probabilities (a softmax, as the Faster R-CNN box
//! predictor's are). Given scores summing to more than 1 + 1e-3 over a proposal's classes, a
//! proposal with more passing classes than slots keeps the first ones in class order.
//!
//! Proposal r of image n owns slots `(n R + r) K .. (n R + r + 1) K` of the output: its kept
//! classes in class order, then empty records (boxes 0, score -1, label `0xffff_ffff`). In
//! slot order that is torchvision's order of the candidates (proposal, then class), which the
//! NMS keeps among equal scores. An empty proposal slot (score not >= 0) has no candidates.

use crate::error::{Error, Result};
use crate::gpu::{Dispatch, GpuContext};
use crate::kernels::box_decode::RECORD;
use crate::kernels::{check_nchw, check_output_shape, elementwise_dispatch, ShaderSource};
use crate::precision::Precision;
use crate::tensor::{check_shape, Tensor};

const OP: &str = "box_candidates";

/// The WGSL source.
pub const SHADER: ShaderSource = ShaderSource {
    name: "box_candidates.wgsl",
    parts: &["box_candidates.wgsl"],
    source: include_str!("../../shaders/box_candidates.wgsl"),
    params: &[("CandidateParams", std::mem::size_of::<CandidateParams>())],
    enables: "",
    precisions: &Precision::ALL,
};

/// How far above 1 a proposal's probabilities may sum for [`per_proposal`]'s bound to hold:
/// f32 rounding in a softmax of C classes leaves about C * 6e-8 (5e-6 for 91 classes).
pub const SCORE_SUM_SLACK: f64 = 1e-3;

/// Mirrors `CandidateParams` in the WGSL.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct CandidateParams {
    rois: u32,
    classes: u32,
    per_roi: u32,
    _pad0: u32,
    weights: [f32; 4],
    clip_height: f32,
    clip_width: f32,
    xform_clip: f32,
    score_thresh: f32,
    min_size: f32,
    _pad: [u32; 3],
}

/// What the candidates are made with besides the tensors: torchvision's `RoIHeads` settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CandidateSpec {
    /// `BoxCoder`'s (wx, wy, ww, wh): (10, 10, 5, 5) in torchvision's `RoIHeads`.
    pub weights: [f32; 4],
    /// The most a log-size delta may be: `ln(1000 / 16)`.
    pub xform_clip: f32,
    /// Candidates score strictly above this (`box_score_thresh`, 0.05).
    pub score_thresh: f32,
    /// Candidates have both sides at least this (torchvision's fixed 1e-2).
    pub min_size: f32,
    /// Boxes are clipped to this (height, width): the resized picture, before padding.
    pub clip: (f32, f32),
}

impl CandidateSpec {
    /// torchvision's `RoIHeads` defaults for pictures resized to `clip` (height, width):
    /// weights (10, 10, 5, 5), log-size deltas capped at `ln(1000 / 16)`, score threshold
    /// 0.05, sides of at least 1e-2.
    pub fn faster_rcnn(clip: (f32, f32)) -> Self {
        CandidateSpec {
            weights: [10.0, 10.0, 5.0, 5.0],
            xform_clip: (1000.0f64 / 16.0).ln() as f32,
            score_thresh: 0.05,
            min_size: 1e-2,
            clip,
        }
    }

    /// Checks the settings.
    pub fn check(&self) -> Result<()> {
        if !self.score_thresh.is_finite() || !self.min_size.is_finite() {
            return Err(Error::invalid(
                OP,
                format!(
                    "the score threshold is {} and the minimum size {}; both must be finite numbers (torchvision: 0.05 and 1e-2)",
                    self.score_thresh, self.min_size
                ),
            ));
        }
        if self.weights.iter().any(|w| !w.is_finite() || *w == 0.0) || self.xform_clip.is_nan() {
            return Err(Error::invalid(
                OP,
                format!(
                    "box coder weights {:?} with cap {}; the weights must be finite and non-zero (torchvision: (10, 10, 5, 5), cap ln(1000 / 16))",
                    self.weights, self.xform_clip
                ),
            ));
        }
        Ok(())
    }
}

/// Output slots per proposal for `classes` classes (background included) and a score
/// threshold `score_thresh`: `C - 1`, or fewer where the threshold allows fewer classes to
/// pass. Probabilities summing to at most `1 + SCORE_SUM_SLACK` have fewer than
/// `(1 + SCORE_SUM_SLACK) / thresh` of them strictly above `thresh`; at least 1.
pub fn per_proposal(classes: usize, score_thresh: f32) -> usize {
    let all = classes.saturating_sub(1).max(1);
    if score_thresh > 0.0 {
        let bound = ((1.0 + SCORE_SUM_SLACK) / score_thresh as f64).floor();
        // `as` saturates: a tiny threshold bounds nothing.
        (bound as usize).clamp(1, all)
    } else {
        all
    }
}

/// The output shape for proposals `[N, 1, R, 6]` of `classes` classes: `[N, 1, R K, 6]`,
/// K = [`per_proposal`].
pub fn output_shape(proposals: [usize; 4], classes: usize, score_thresh: f32) -> [usize; 4] {
    let [n, _, r, _] = proposals;
    [
        n,
        1,
        r.saturating_mul(per_proposal(classes, score_thresh)),
        RECORD,
    ]
}

/// Checks the inputs' shapes against each other: proposals `[N, 1, R, 6]`, regression
/// `[N R, 4 C, 1, 1]`, scores `[N R, C, 1, 1]`. Returns C.
pub fn check_shapes(
    proposals: [usize; 4],
    regression: [usize; 4],
    scores: [usize; 4],
) -> Result<usize> {
    let [n, one, r, record] = proposals;
    if one != 1 || record != RECORD {
        return Err(Error::invalid(
            OP,
            format!(
                "the proposals have shape {proposals:?}; they must be records [N, 1, R, 6] (x1, y1, x2, y2, score, label bits), as NMS writes them"
            ),
        ));
    }
    let classes = scores[1];
    if scores != [n * r, classes, 1, 1] || classes < 2 {
        return Err(Error::invalid(
            OP,
            format!(
                "the scores have shape {scores:?}; for {n} pictures of {r} proposals they must be [{}, C, 1, 1] with C >= 2 classes, background included",
                n * r
            ),
        ));
    }
    if regression != [n * r, 4 * classes, 1, 1] {
        return Err(Error::invalid(
            OP,
            format!(
                "the box regression has shape {regression:?}; for {} proposals of {classes} classes it must be [{}, {}, 1, 1] (bbox_pred's 4 values per class)",
                n * r,
                n * r,
                4 * classes
            ),
        ));
    }
    Ok(classes)
}

/// Builds the launch writing `out` `[N, 1, R K, 6]` from the proposal records `proposals`
/// `[N, 1, R, 6]` (f32, boxes in the resized picture's pixels), the box predictor's
/// `regression` `[N R, 4 C, 1, 1]` (f32 or f16) and class probabilities `scores` `[N R, C, 1,
/// 1]` (f32).
pub fn prepare(
    ctx: &GpuContext,
    proposals: &Tensor,
    regression: &Tensor,
    scores: &Tensor,
    spec: &CandidateSpec,
    out: &Tensor,
) -> Result<Dispatch> {
    for t in [proposals, regression, scores, out] {
        check_nchw(OP, t)?;
        check_shape(ctx, OP, "a tensor", t.shape())?;
    }
    if [proposals, scores, out]
        .iter()
        .any(|t| t.precision() != Precision::F32)
    {
        return Err(Error::invalid(
            OP,
            "the proposals, the scores and the output must be float32 tensors (the regression may be f16): records carry labels as u32 bits, and the scores are compared with the threshold in f32",
        ));
    }
    spec.check()?;
    let classes = check_shapes(proposals.shape(), regression.shape(), scores.shape())?;
    let per_roi = per_proposal(classes, spec.score_thresh);
    check_output_shape(
        OP,
        out,
        output_shape(proposals.shape(), classes, spec.score_thresh),
    )?;
    if [proposals, regression, scores]
        .iter()
        .any(|t| t.buffer() == out.buffer())
    {
        return Err(Error::invalid(
            OP,
            "the output shares a buffer with an input; give the output its own tensor",
        ));
    }
    let [n, _, r, _] = proposals.shape();
    let rois = n * r;
    if u32::try_from(rois * 4 * classes).is_err() || u32::try_from(out.numel()).is_err() {
        return Err(Error::invalid(
            OP,
            format!(
                "{rois} proposals of {classes} classes index more than 2^32 values; run the pictures in smaller batches"
            ),
        ));
    }
    let params = CandidateParams {
        rois: rois as u32,
        classes: classes as u32,
        per_roi: per_roi as u32,
        _pad0: 0,
        weights: spec.weights,
        clip_height: spec.clip.0,
        clip_width: spec.clip.1,
        xform_clip: spec.xform_clip,
        score_thresh: spec.score_thresh,
        min_size: spec.min_size,
        _pad: [0; 3],
    };
    elementwise_dispatch(
        ctx,
        &SHADER,
        regression.precision(),
        OP,
        rois,
        &params,
        &[
            (0, proposals.binding()),
            (1, regression.binding()),
            (2, scores.binding()),
            (3, out.binding()),
        ],
        4,
    )
}

/// Runs the candidates' launch now and returns them, `[N, 1, R K, 6]` (downloading them waits
/// for the GPU).
pub fn box_candidates(
    ctx: &GpuContext,
    proposals: &Tensor,
    regression: &Tensor,
    scores: &Tensor,
    spec: &CandidateSpec,
) -> Result<Tensor> {
    spec.check()?;
    let classes = check_shapes(proposals.shape(), regression.shape(), scores.shape())?;
    let shape = output_shape(proposals.shape(), classes, spec.score_thresh);
    let out = Tensor::empty(ctx, shape)?;
    ctx.submit(&[&prepare(ctx, proposals, regression, scores, spec, &out)?])?;
    Ok(out)
}
