//! Batched NMS over every level's candidates, and the boxes scaled back to the pictures (see
//! [`crate::kernels::nms`]).

use std::ops::RangeInclusive;

use super::geometry::{picture_size, DetectionGeometry, ResizeRule};
use crate::error::{Error, Result};
use crate::gpu::{Dispatch, GpuContext};
use crate::graph::ops::{GpuOp, GraphOp, PlainOp, Target};
use crate::kernels::box_decode::RECORD;
use crate::kernels::nms::{self, NmsOptions};
use crate::precision::Precision;
use crate::tensor::{MemoryFormat, Tensor};

/// The detections `[N, 1, D, 6]`: per picture, torchvision's `batched_nms` of the candidates
/// then its best `detections`, boxes in the pictures' pixels (or, for the RPN's proposals, left
/// in the resized picture's); inputs `[candidates, pictures]` (the pictures' shape alone is
/// read: it gives the scale back from the resized picture).
#[derive(Clone, Debug)]
pub struct BatchedNms {
    /// The resize the boxes are taken back through.
    pub geometry: DetectionGeometry,
    /// Boxes of one label overlapping a kept one by more than this IoU are dropped.
    pub iou_thresh: f32,
    /// Detections kept per picture.
    pub detections: usize,
    /// Whether the kept boxes are scaled back to the pictures' pixels (the detectors' output)
    /// or left in the resized picture's (the RPN's proposals, which RoIAlign reads there).
    pub scale_to_pictures: bool,
}

impl BatchedNms {
    fn options(&self, pictures: [usize; 4]) -> Result<NmsOptions> {
        Ok(NmsOptions {
            iou_thresh: self.iou_thresh,
            max_detections: self.detections,
            output_scale: if self.scale_to_pictures {
                self.geometry.box_scale(picture_size(pictures))?
            } else {
                // Still checks the pictures' size against the resize rule.
                self.geometry.resized(picture_size(pictures))?;
                [1.0, 1.0]
            },
        })
    }
}

impl GraphOp for BatchedNms {
    fn kind(&self) -> &'static str {
        "batched_nms"
    }

    fn arity(&self) -> RangeInclusive<usize> {
        2..=2
    }

    fn output_shape(&self, inputs: &[[usize; 4]]) -> Result<[usize; 4]> {
        Ok(nms::output_shape(inputs[0], &self.options(inputs[1])?))
    }

    /// Either layout, either precision (the output is f32 whatever the activations are): it reads only the candidates' records (NCHW whatever the graph's
    /// layout) and the pictures' shape.
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

impl PlainOp for BatchedNms {
    fn prepare(&self, ctx: &GpuContext, inputs: &[&Tensor], out: &Tensor) -> Result<Vec<Dispatch>> {
        nms::prepare(ctx, inputs[0], out, &self.options(inputs[1].shape())?)
    }
}

/// Detection records `[N, 1, D, 6]` in the resized picture's pixels taken to the pictures'
/// (torchvision's `transform.postprocess` of the boxes, `resize_boxes` with per-axis ratios
/// original / resized in f32): the same products [`BatchedNms`] makes with
/// `scale_to_pictures`, scores and labels copied bit for bit. Inputs `[records, pictures]` (the
/// pictures' shape alone is read). For a detector that reads its kept boxes in both frames:
/// Mask R-CNN pools its masks at the resized boxes and pastes them at the scaled ones.
#[derive(Clone, Debug)]
pub struct ScaleToPictures {
    /// The resize the boxes are taken back through.
    pub resize: ResizeRule,
}

impl ScaleToPictures {
    fn scale(&self, pictures: [usize; 4]) -> Result<[f32; 2]> {
        let geometry = DetectionGeometry {
            resize: self.resize,
            levels: Vec::new(),
        };
        geometry.box_scale(picture_size(pictures))
    }
}

impl GraphOp for ScaleToPictures {
    fn kind(&self) -> &'static str {
        "scale_records"
    }

    fn arity(&self) -> RangeInclusive<usize> {
        2..=2
    }

    fn output_shape(&self, inputs: &[[usize; 4]]) -> Result<[usize; 4]> {
        let [records, pictures] = [inputs[0], inputs[1]];
        if records[1] != 1 || records[3] != RECORD || records[0] != pictures[0] {
            return Err(Error::invalid(
                "scale_records",
                format!(
                    "records {records:?} for pictures {pictures:?}; expected [N, 1, D, {RECORD}] for N pictures"
                ),
            ));
        }
        self.scale(pictures)?;
        Ok(records)
    }

    /// Either layout, either precision, as [`BatchedNms`]: it reads only records (NCHW f32
    /// whatever the graph's layout) and the pictures' shape.
    fn supports(&self, _layout: MemoryFormat, _precision: Precision) -> bool {
        true
    }

    fn output_precision(&self, _graph: Precision) -> Precision {
        Precision::F32
    }

    fn output_layout(&self, _graph: MemoryFormat) -> MemoryFormat {
        MemoryFormat::Nchw
    }

    fn lower(&self, _ctx: &GpuContext, _target: &Target) -> Result<Box<dyn GpuOp>> {
        self.lowered()
    }
}

impl PlainOp for ScaleToPictures {
    fn prepare(&self, ctx: &GpuContext, inputs: &[&Tensor], out: &Tensor) -> Result<Vec<Dispatch>> {
        let scale = self.scale(inputs[1].shape())?;
        Ok(vec![nms::prepare_scale_records(
            ctx, inputs[0], out, scale,
        )?])
    }
}
