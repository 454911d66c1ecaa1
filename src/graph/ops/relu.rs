//! `relu(x)` as an op of its own; the passes fold it into a preceding convolution's epilogue
//! wherever they may.

use std::ops::RangeInclusive;

use super::{GpuOp, GraphOp, PlainOp, Target};
use crate::error::Result;
use crate::gpu::{Dispatch, GpuContext};
use crate::kernels::elementwise;
use crate::precision::Precision;
use crate::tensor::{MemoryFormat, Tensor};

/// ReLU; inputs `[x]`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Relu;

impl GraphOp for Relu {
    fn kind(&self) -> &'static str {
        "relu"
    }

    fn arity(&self) -> RangeInclusive<usize> {
        1..=1
    }

    fn output_shape(&self, inputs: &[[usize; 4]]) -> Result<[usize; 4]> {
        Ok(inputs[0])
    }

    /// Element-wise, so any layout (padding channels stay zero) and precision.
    fn supports(&self, _layout: MemoryFormat, _precision: Precision) -> bool {
        true
    }

    fn lower(&self, _ctx: &GpuContext, _target: &Target) -> Result<Box<dyn GpuOp>> {
        self.lowered()
    }
}

impl PlainOp for Relu {
    fn prepare(&self, ctx: &GpuContext, inputs: &[&Tensor], out: &Tensor) -> Result<Vec<Dispatch>> {
        Ok(vec![elementwise::prepare_relu(ctx, inputs[0], out)?])
    }
}
