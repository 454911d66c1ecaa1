//! The selected candidates' boxes: anchors, decoding and clipping (see
//! [`crate::kernels::box_decode`]).

use std::ops::RangeInclusive;

use super::anchors::AnchorSpec;
use super::geometry::{picture_size, DetectionGeometry};
use crate::error::{Error, Result};
use crate::gpu::{Dispatch, GpuContext};
use crate::graph::ops::{GpuOp, GraphOp, PlainOp, Target};
use crate::kernels::box_decode::{self, BoxCoding, DecodeSpec, LabelSource, RECORD};
use crate::precision::Precision;
use crate::tensor::{MemoryFormat, Tensor};

/// Candidate records `[N, 1, L*K, 6]` (x1, y1, x2, y2 in the resized picture, score, label
/// bits: the class, or the level for the RPN's proposals); inputs `[selected, regression, pictures]`: the top-k output `[N, L, K, 2]`, the
/// packed regression map `[N, A*4, HS, WS]`, and the pictures (whose shape alone is read).
#[derive(Clone, Debug)]
pub struct DecodeBoxes {
    /// The levels' packing, strides and the resized picture's size.
    pub geometry: DetectionGeometry,
    /// The anchors of each level.
    pub anchors: AnchorSpec,
    /// Classes of the classification head.
    pub classes: usize,
    /// How regressions become boxes.
    pub coding: BoxCoding,
    /// Boxes smaller than this after clipping become empty records (torchvision's RPN:
    /// `Some(1e-3)`); `None` keeps every box.
    pub min_size: Option<f32>,
    /// What the label word holds: the class, or the level (the RPN's per-level NMS).
    pub labels: LabelSource,
}

impl GraphOp for DecodeBoxes {
    fn kind(&self) -> &'static str {
        "decode_boxes"
    }

    fn arity(&self) -> RangeInclusive<usize> {
        3..=3
    }

    fn output_shape(&self, inputs: &[[usize; 4]]) -> Result<[usize; 4]> {
        let [n, levels, k, _] = inputs[0];
        if levels != self.geometry.levels.len() || levels != self.anchors.sizes.len() {
            return Err(Error::invalid(
                "decode_boxes",
                format!(
                    "{levels} levels selected, but the detector has {} levels and anchors for {}",
                    self.geometry.levels.len(),
                    self.anchors.sizes.len()
                ),
            ));
        }
        Ok([n, 1, levels.saturating_mul(k), RECORD])
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

impl PlainOp for DecodeBoxes {
    fn prepare(&self, ctx: &GpuContext, inputs: &[&Tensor], out: &Tensor) -> Result<Vec<Dispatch>> {
        let size = picture_size(inputs[2].shape());
        let (regions, _) = self.geometry.packed(size)?;
        let (h, w) = self.geometry.resized(size)?;
        let spec = DecodeSpec {
            regions,
            strides: self.geometry.strides(size)?,
            cell_anchors: self.anchors.cell_anchors(),
            anchors: self.anchors.per_location(),
            classes: self.classes,
            clip: (h as f32, w as f32),
            coding: self.coding,
            min_size: self.min_size,
            labels: self.labels,
        };
        Ok(vec![box_decode::prepare(
            ctx, inputs[0], inputs[1], &spec, out,
        )?])
    }
}
