//! Max pooling: the ResNet stem's 3x3 stride-2 pool, and torchvision's extra level (P6 as a
//! 1x1 stride-2 pool of P5).

use std::ops::RangeInclusive;

use super::{GpuOp, GraphOp, MaxPool2dOptions, PlainOp, Target};
use crate::error::Result;
use crate::gpu::{Dispatch, GpuContext};
use crate::kernels::max_pool2d;
use crate::precision::Precision;
use crate::tensor::{MemoryFormat, Tensor};

/// Max pooling; inputs `[x]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaxPool2d(pub MaxPool2dOptions);

impl GraphOp for MaxPool2d {
    fn kind(&self) -> &'static str {
        "max_pool2d"
    }

    fn arity(&self) -> RangeInclusive<usize> {
        1..=1
    }

    fn output_shape(&self, inputs: &[[usize; 4]]) -> Result<[usize; 4]> {
        max_pool2d::output_shape(inputs[0], &self.0)
    }

    fn supports(&self, _layout: MemoryFormat, _precision: Precision) -> bool {
        true
    }

    fn lower(&self, _ctx: &GpuContext, _target: &Target) -> Result<Box<dyn GpuOp>> {
        self.lowered()
    }
}

impl PlainOp for MaxPool2d {
    fn prepare(&self, ctx: &GpuContext, inputs: &[&Tensor], out: &Tensor) -> Result<Vec<Dispatch>> {
        Ok(vec![max_pool2d::prepare(ctx, inputs[0], out, &self.0)?])
    }
}
