//! The FPN's top-down merge, `upsample(coarse, size of lateral) + lateral`; on GPUs the
//! channels-last pipeline folds it into the lateral convolution's epilogue.

use std::ops::RangeInclusive;

use super::{GpuOp, GraphOp, PlainOp, Target, UpsampleMode};
use crate::error::{Error, Result};
use crate::gpu::{Dispatch, GpuContext};
use crate::kernels::upsample_add;
use crate::precision::Precision;
use crate::tensor::{MemoryFormat, Tensor};

/// `upsample(x, size of y) + y`; inputs `[x, y]`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UpsampleAdd(pub UpsampleMode);

impl GraphOp for UpsampleAdd {
    fn kind(&self) -> &'static str {
        "upsample_add"
    }

    fn arity(&self) -> RangeInclusive<usize> {
        2..=2
    }

    fn output_shape(&self, inputs: &[[usize; 4]]) -> Result<[usize; 4]> {
        let (x, y) = (inputs[0], inputs[1]);
        if x[..2] != y[..2] {
            return Err(Error::invalid(
                "upsample_add",
                format!("the coarse input {x:?} and the lateral input {y:?} must agree in batch and channels"),
            ));
        }
        Ok(y)
    }

    fn supports(&self, _layout: MemoryFormat, _precision: Precision) -> bool {
        true
    }

    fn lower(&self, _ctx: &GpuContext, _target: &Target) -> Result<Box<dyn GpuOp>> {
        self.lowered()
    }
}

impl PlainOp for UpsampleAdd {
    fn prepare(&self, ctx: &GpuContext, inputs: &[&Tensor], out: &Tensor) -> Result<Vec<Dispatch>> {
        Ok(vec![upsample_add::prepare(
            ctx, inputs[0], inputs[1], out, self.0,
        )?])
    }
}
