//! Mask R-CNN's mask selection, torchvision's `maskrcnn_inference` (see
//! [`crate::kernels::masks`]): each detection's probability map of its own class.

use std::ops::RangeInclusive;

use crate::error::Result;
use crate::gpu::{Dispatch, GpuContext};
use crate::graph::ops::{GpuOp, GraphOp, PlainOp, Target};
use crate::kernels::masks;
use crate::precision::Precision;
use crate::tensor::{MemoryFormat, Tensor};

/// The probabilities `[N*D, 1, M, M]` (f32): per detection record, the sigmoid of the mask
/// logits' channel of its label; inputs `[logits, detections]`: the mask predictor's logits
/// `[N*D, C, M, M]` (stored as the activations are) and the detection records `[N, 1, D, 6]`
/// (f32, as NMS writes them). Empty slots give zeros.
#[derive(Clone, Copy, Debug, Default)]
pub struct SelectMasks;

impl GraphOp for SelectMasks {
    fn kind(&self) -> &'static str {
        "select_masks"
    }

    fn arity(&self) -> RangeInclusive<usize> {
        2..=2
    }

    fn output_shape(&self, inputs: &[[usize; 4]]) -> Result<[usize; 4]> {
        masks::select_output_shape(inputs[0], inputs[1])
    }

    /// NCHW logits in either precision; the probabilities are f32.
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

impl PlainOp for SelectMasks {
    fn prepare(&self, ctx: &GpuContext, inputs: &[&Tensor], out: &Tensor) -> Result<Vec<Dispatch>> {
        Ok(vec![masks::prepare_select(ctx, inputs[0], inputs[1], out)?])
    }
}
