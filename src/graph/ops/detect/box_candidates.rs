//! The two-stage detectors' candidate boxes: per proposal and class, the box predictor's
//! regression decoded, clipped, thresholded and filtered by size, as records for
//! [`super::BatchedNms`] (see [`crate::kernels::box_candidates`]).

use std::ops::RangeInclusive;

use super::geometry::{picture_size, DetectionGeometry, ResizeRule};
use crate::error::{Error, Result};
use crate::gpu::{Dispatch, GpuContext};
use crate::graph::ops::{GpuOp, GraphOp, PlainOp, Target};
use crate::kernels::box_candidates::{self, CandidateSpec};
use crate::kernels::nms::MAX_CANDIDATES;
use crate::precision::Precision;
use crate::tensor::{MemoryFormat, Tensor};

/// Candidate records `[N, 1, R K, 6]` (x1, y1, x2, y2 in the resized picture, score, label
/// bits; K = [`box_candidates::per_proposal`] slots per proposal), torchvision's
/// `RoIHeads.postprocess_detections` before its NMS; inputs `[proposals, regression, scores,
/// pictures]`: the proposal records `[N, 1, R, 6]` (f32, in the resized picture's pixels; an
/// empty slot has no candidates), `bbox_pred`'s output `[N R, 4 C, 1, 1]`, the softmax of
/// `cls_score`'s `[N R, C, 1, 1]` (f32), and the pictures, whose shape alone is read (their
/// resized size is what the boxes are clipped to).
#[derive(Clone, Debug)]
pub struct BoxCandidates {
    /// How the pictures were resized.
    pub resize: ResizeRule,
    /// The box coder's weights and cap, the score threshold and the smallest side kept; its
    /// `clip` is replaced by the resized picture's size for every picture shape.
    pub spec: CandidateSpec,
}

impl BoxCandidates {
    /// torchvision's `RoIHeads` post-processing for pictures resized by `resize`, scores kept
    /// strictly above `score_thresh` (`box_score_thresh`).
    pub fn new(resize: ResizeRule, score_thresh: f32) -> Self {
        BoxCandidates {
            resize,
            spec: CandidateSpec {
                score_thresh,
                ..CandidateSpec::faster_rcnn((0.0, 0.0))
            },
        }
    }

    /// The spec for pictures of shape `pictures`.
    fn spec(&self, pictures: [usize; 4]) -> Result<CandidateSpec> {
        let geometry = DetectionGeometry {
            resize: self.resize,
            levels: Vec::new(),
        };
        let (h, w) = geometry.resized(picture_size(pictures))?;
        Ok(CandidateSpec {
            clip: (h as f32, w as f32),
            ..self.spec
        })
    }
}

impl GraphOp for BoxCandidates {
    fn kind(&self) -> &'static str {
        "box_candidates"
    }

    fn arity(&self) -> RangeInclusive<usize> {
        4..=4
    }

    fn output_shape(&self, inputs: &[[usize; 4]]) -> Result<[usize; 4]> {
        let [proposals, regression, scores, pictures] = inputs else {
            return Err(Error::invalid(
                "box_candidates",
                "it takes the proposals, the regression, the scores and the pictures",
            ));
        };
        let classes = box_candidates::check_shapes(*proposals, *regression, *scores)?;
        if pictures[0] != proposals[0] {
            return Err(Error::invalid(
                "box_candidates",
                format!(
                    "{} pictures but proposals for {}",
                    pictures[0], proposals[0]
                ),
            ));
        }
        let spec = self.spec(*pictures)?;
        spec.check()?;
        // The candidates go to the batched NMS, which takes MAX_CANDIDATES per picture: said
        // here in the terms a Faster R-CNN user can change, rather than by the NMS.
        let slots = box_candidates::per_proposal(classes, spec.score_thresh);
        let rois = proposals[2];
        if rois.saturating_mul(slots) > MAX_CANDIDATES {
            return Err(Error::invalid(
                "box_candidates",
                format!(
                    "{rois} proposals with {slots} candidate slots each (the classes that can score \
                     above box_score_thresh {}: at most 1 / thresh of them) make {} candidates \
                     per picture; the batched NMS takes at most {MAX_CANDIDATES}: raise the score \
                     threshold (`--score-thresh`) or keep at most {} proposals \
                     (`--rpn-post-nms-top-n`)",
                    spec.score_thresh,
                    rois.saturating_mul(slots),
                    MAX_CANDIDATES / slots
                ),
            ));
        }
        Ok(box_candidates::output_shape(
            *proposals,
            classes,
            spec.score_thresh,
        ))
    }

    /// NCHW values in either precision (the regression as the activations are, the scores
    /// f32); the output is f32 whatever the activations are.
    fn supports(&self, layout: MemoryFormat, _precision: Precision) -> bool {
        layout == MemoryFormat::Nchw
    }

    fn output_precision(&self, _graph: Precision) -> Precision {
        Precision::F32
    }

    fn lower(&self, _ctx: &GpuContext, _target: &Target) -> Result<Box<dyn GpuOp>> {
        self.lowered()
    }
}

impl PlainOp for BoxCandidates {
    fn prepare(&self, ctx: &GpuContext, inputs: &[&Tensor], out: &Tensor) -> Result<Vec<Dispatch>> {
        let spec = self.spec(inputs[3].shape())?;
        Ok(vec![box_candidates::prepare(
            ctx, inputs[0], inputs[1], inputs[2], &spec, out,
        )?])
    }
}
