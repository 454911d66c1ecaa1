//! The graph input: node 0 of every graph, written by the forward's copy (or conversion) of the
//! caller's tensor, so it has no launch of its own.

use std::ops::RangeInclusive;

use super::{GpuOp, GraphOp, PlainOp, Target};
use crate::error::{Error, Result};
use crate::gpu::{Dispatch, GpuContext};
use crate::precision::Precision;
use crate::tensor::{MemoryFormat, Tensor};

/// The graph input; its shape is the forward's input shape.
#[derive(Clone, Copy, Debug, Default)]
pub struct Input;

impl Input {
    /// The input's shape, checked: a zero dimension would plan buffers of no bytes.
    pub fn check(shape: [usize; 4]) -> Result<[usize; 4]> {
        if shape.contains(&0) {
            return Err(Error::invalid(
                "input",
                format!("the input has shape {shape:?}, with a zero dimension; every dimension must be at least 1"),
            ));
        }
        Ok(shape)
    }
}

impl GraphOp for Input {
    fn kind(&self) -> &'static str {
        "input"
    }

    fn arity(&self) -> RangeInclusive<usize> {
        0..=0
    }

    /// Not used: shape inference takes the input's shape from the forward.
    fn output_shape(&self, _inputs: &[[usize; 4]]) -> Result<[usize; 4]> {
        Err(Error::invalid(
            "input",
            "the graph input's shape comes from the forward; only node 0 may be an Input",
        ))
    }

    fn supports(&self, _layout: MemoryFormat, _precision: Precision) -> bool {
        true
    }

    fn lower(&self, _ctx: &GpuContext, _target: &Target) -> Result<Box<dyn GpuOp>> {
        self.lowered()
    }
}

impl PlainOp for Input {
    fn prepare(
        &self,
        _ctx: &GpuContext,
        _inputs: &[&Tensor],
        _out: &Tensor,
    ) -> Result<Vec<Dispatch>> {
        Ok(Vec::new())
    }
}
