//! Zeroes what lies between the levels of a packed map, after each hidden layer of a head.

use std::ops::RangeInclusive;

use super::geometry::{picture_size, DetectionGeometry};
use crate::error::Result;
use crate::gpu::{Dispatch, GpuContext};
use crate::graph::ops::{GpuOp, GraphOp, PlainOp, Target};
use crate::kernels::levels;
use crate::precision::Precision;
use crate::tensor::{MemoryFormat, Tensor};

/// `x` inside the levels' regions, zero outside, within a zero border of `padding` (rows,
/// columns) on each side; inputs `[x, pictures]` (the pictures' shape alone is read: it places
/// the regions). The passes give it the padding of the convolution that reads it.
#[derive(Clone, Debug)]
pub struct MaskLevels {
    /// The levels' packing.
    pub geometry: DetectionGeometry,
    /// The zero border written around the map.
    pub padding: (usize, usize),
}

impl GraphOp for MaskLevels {
    fn kind(&self) -> &'static str {
        "mask_levels"
    }

    fn arity(&self) -> RangeInclusive<usize> {
        2..=2
    }

    fn output_shape(&self, inputs: &[[usize; 4]]) -> Result<[usize; 4]> {
        let [n, c, h, w] = inputs[0];
        Ok([n, c, h + 2 * self.padding.0, w + 2 * self.padding.1])
    }

    /// NCHW and channels-last (the kernel's `CHANNELS_LAST` variant), f32 and f16.
    fn supports(&self, _layout: MemoryFormat, _precision: Precision) -> bool {
        true
    }

    fn lower(&self, _ctx: &GpuContext, _target: &Target) -> Result<Box<dyn GpuOp>> {
        self.lowered()
    }
}

impl PlainOp for MaskLevels {
    fn prepare(&self, ctx: &GpuContext, inputs: &[&Tensor], out: &Tensor) -> Result<Vec<Dispatch>> {
        let (regions, _) = self.geometry.packed(picture_size(inputs[1].shape()))?;
        Ok(vec![levels::prepare_mask(
            ctx,
            inputs[0],
            &regions,
            self.padding,
            out,
        )?])
    }
}
