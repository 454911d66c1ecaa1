//! The best-scoring candidates of each level (see [`crate::kernels::top_k`]).

use std::ops::RangeInclusive;

use super::geometry::{picture_size, DetectionGeometry};
use crate::error::{Error, Result};
use crate::gpu::{Dispatch, GpuContext};
use crate::graph::ops::{GpuOp, GraphOp, PlainOp, Target};
use crate::kernels::top_k::{self, ScoreMode, TopKOptions};
use crate::precision::Precision;
use crate::tensor::{MemoryFormat, Tensor};

/// Per picture and level, the `k` best (score, flat index) pairs whose score is above
/// `score_thresh`, `[N, L, K, 2]`; inputs `[logits, pictures]` or, for
/// [`ScoreMode::SigmoidWithCenterness`], `[logits, centerness, pictures]` (the pictures' shape
/// alone is read: it places the levels).
#[derive(Clone, Debug)]
pub struct TopKScores {
    /// The levels' packing.
    pub geometry: DetectionGeometry,
    /// Anchors per location.
    pub anchors: usize,
    /// Classes.
    pub classes: usize,
    /// Candidates kept per level (torchvision's `topk_candidates`).
    pub k: usize,
    /// Scores at most this are dropped.
    pub score_thresh: f32,
    /// How logits become scores.
    pub mode: ScoreMode,
}

impl TopKScores {
    fn options(&self) -> TopKOptions {
        TopKOptions {
            anchors: self.anchors,
            classes: self.classes,
            k: self.k,
            score_thresh: self.score_thresh,
            mode: self.mode,
        }
    }

    fn with_centerness(&self) -> bool {
        self.mode == ScoreMode::SigmoidWithCenterness
    }
}

impl GraphOp for TopKScores {
    fn kind(&self) -> &'static str {
        "top_k"
    }

    fn arity(&self) -> RangeInclusive<usize> {
        let n = if self.with_centerness() { 3 } else { 2 };
        n..=n
    }

    fn output_shape(&self, inputs: &[[usize; 4]]) -> Result<[usize; 4]> {
        let logits = inputs[0];
        if logits[1] != self.anchors * self.classes {
            return Err(Error::invalid(
                "top_k",
                format!(
                    "the class logits have shape {logits:?}; {} anchors of {} classes need {} channels",
                    self.anchors,
                    self.classes,
                    self.anchors * self.classes
                ),
            ));
        }
        Ok(top_k::output_shape(
            logits,
            self.geometry.levels.len(),
            self.k,
        ))
    }

    /// NCHW and channels-last (the kernel's `CHANNELS_LAST` variant), f32 and f16; the output
    /// is f32 whatever the activations are.
    fn supports(&self, _layout: MemoryFormat, _precision: Precision) -> bool {
        true
    }

    /// Records, NCHW whatever the activations are.
    fn output_layout(&self, _graph: MemoryFormat) -> MemoryFormat {
        MemoryFormat::Nchw
    }

    fn output_precision(&self, _graph: Precision) -> Precision {
        Precision::F32
    }

    fn lower(&self, _ctx: &GpuContext, _target: &Target) -> Result<Box<dyn GpuOp>> {
        self.lowered()
    }
}

impl PlainOp for TopKScores {
    fn prepare(&self, ctx: &GpuContext, inputs: &[&Tensor], out: &Tensor) -> Result<Vec<Dispatch>> {
        let pictures = inputs[inputs.len() - 1];
        let (regions, _) = self.geometry.packed(picture_size(pictures.shape()))?;
        let centerness = self.with_centerness().then(|| inputs[1]);
        top_k::prepare(ctx, inputs[0], centerness, &regions, &self.options(), out)
    }
}
