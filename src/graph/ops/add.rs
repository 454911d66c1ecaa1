//! `a + b` as an op of its own; the passes fold it into a convolution's epilogue as a residual
//! wherever they may.

use std::ops::RangeInclusive;

use super::{GpuOp, GraphOp, PlainOp, Target};
use crate::error::{Error, Result};
use crate::gpu::{Dispatch, GpuContext};
use crate::kernels::elementwise;
use crate::precision::Precision;
use crate::tensor::{MemoryFormat, Tensor};

/// `a + b` of two values of one shape; inputs `[a, b]`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Add;

impl GraphOp for Add {
    fn kind(&self) -> &'static str {
        "add"
    }

    fn arity(&self) -> RangeInclusive<usize> {
        2..=2
    }

    fn output_shape(&self, inputs: &[[usize; 4]]) -> Result<[usize; 4]> {
        let (a, b) = (inputs[0], inputs[1]);
        if a != b {
            return Err(Error::invalid(
                "add",
                format!("input shapes {a:?} and {b:?} must match"),
            ));
        }
        Ok(a)
    }

    fn supports(&self, _layout: MemoryFormat, _precision: Precision) -> bool {
        true
    }

    fn lower(&self, _ctx: &GpuContext, _target: &Target) -> Result<Box<dyn GpuOp>> {
        self.lowered()
    }
}

impl PlainOp for Add {
    fn prepare(&self, ctx: &GpuContext, inputs: &[&Tensor], out: &Tensor) -> Result<Vec<Dispatch>> {
        Ok(vec![elementwise::prepare_add(
            ctx, inputs[0], inputs[1], out,
        )?])
    }
}
