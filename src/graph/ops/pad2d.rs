//! Zero padding: inserted by the passes before a padded convolution, so that the convolution
//! runs without a bounds check per tap.

use std::ops::RangeInclusive;

use super::{GpuOp, GraphOp, PlainOp, Target};
use crate::error::Result;
use crate::gpu::{Dispatch, GpuContext};
use crate::kernels::pad2d;
use crate::precision::Precision;
use crate::tensor::{MemoryFormat, Tensor};

/// Zero padding of each side by (vertical, horizontal); inputs `[x]`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pad2d(pub (usize, usize));

impl GraphOp for Pad2d {
    fn kind(&self) -> &'static str {
        "pad2d"
    }

    fn arity(&self) -> RangeInclusive<usize> {
        1..=1
    }

    fn output_shape(&self, inputs: &[[usize; 4]]) -> Result<[usize; 4]> {
        Ok(pad2d::output_shape(inputs[0], self.0))
    }

    fn supports(&self, _layout: MemoryFormat, _precision: Precision) -> bool {
        true
    }

    fn lower(&self, _ctx: &GpuContext, _target: &Target) -> Result<Box<dyn GpuOp>> {
        self.lowered()
    }
}

impl PlainOp for Pad2d {
    fn prepare(&self, ctx: &GpuContext, inputs: &[&Tensor], out: &Tensor) -> Result<Vec<Dispatch>> {
        Ok(vec![pad2d::prepare(ctx, inputs[0], out, self.0)?])
    }
}
