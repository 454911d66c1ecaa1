//! Average pooling: ResNet-D's downsampling shortcuts (timm's `resnet50d`, mmdetection's
//! `ResNetV1d`), a 2x2 stride-2 ceil-mode pool before the shortcut's 1x1 convolution.

use std::ops::RangeInclusive;

use super::{AvgPool2dOptions, GpuOp, GraphOp, PlainOp, Target};
use crate::error::Result;
use crate::gpu::{Dispatch, GpuContext};
use crate::kernels::avg_pool2d;
use crate::precision::Precision;
use crate::tensor::{MemoryFormat, Tensor};

/// Average pooling (ceil mode, no padding, the mean over each window's part inside the
/// input); inputs `[x]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AvgPool2d(pub AvgPool2dOptions);

impl GraphOp for AvgPool2d {
    fn kind(&self) -> &'static str {
        "avg_pool2d"
    }

    fn arity(&self) -> RangeInclusive<usize> {
        1..=1
    }

    fn output_shape(&self, inputs: &[[usize; 4]]) -> Result<[usize; 4]> {
        avg_pool2d::output_shape(inputs[0], &self.0)
    }

    fn supports(&self, _layout: MemoryFormat, _precision: Precision) -> bool {
        true
    }

    fn lower(&self, _ctx: &GpuContext, _target: &Target) -> Result<Box<dyn GpuOp>> {
        self.lowered()
    }
}

impl PlainOp for AvgPool2d {
    fn prepare(&self, ctx: &GpuContext, inputs: &[&Tensor], out: &Tensor) -> Result<Vec<Dispatch>> {
        Ok(vec![avg_pool2d::prepare(ctx, inputs[0], out, &self.0)?])
    }
}
