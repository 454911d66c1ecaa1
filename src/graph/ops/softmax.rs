//! Softmax over the channels (see [`crate::kernels::softmax`]): a box predictor's class logits
//! to scores, written in f32 for the post-processing that reads them.

use std::ops::RangeInclusive;

use super::{GpuOp, GraphOp, PlainOp, Target};
use crate::error::Result;
use crate::gpu::{Dispatch, GpuContext};
use crate::kernels::softmax;
use crate::precision::Precision;
use crate::tensor::{MemoryFormat, Tensor};

/// `torch.softmax(x, dim=1)`; inputs `[x]` `[N, C, H, W]` (a box predictor's `[R, classes, 1,
/// 1]`), output of the same shape in f32.
#[derive(Clone, Copy, Debug, Default)]
pub struct Softmax;

impl GraphOp for Softmax {
    fn kind(&self) -> &'static str {
        "softmax"
    }

    fn arity(&self) -> RangeInclusive<usize> {
        1..=1
    }

    fn output_shape(&self, inputs: &[[usize; 4]]) -> Result<[usize; 4]> {
        Ok(inputs[0])
    }

    /// NCHW values in either precision; the output is f32 whatever the activations are.
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

impl PlainOp for Softmax {
    fn prepare(&self, ctx: &GpuContext, inputs: &[&Tensor], out: &Tensor) -> Result<Vec<Dispatch>> {
        Ok(vec![softmax::prepare(ctx, inputs[0], out)?])
    }
}
