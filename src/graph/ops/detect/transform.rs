//! torchvision's detection transform on the GPU: the pictures normalised, resized and padded.

use std::ops::RangeInclusive;

use super::geometry::{picture_size, DetectionGeometry};
use crate::error::Result;
use crate::gpu::{Dispatch, GpuContext};
use crate::graph::ops::{GpuOp, GraphOp, PlainOp, Target};
use crate::kernels::resize::{self, Normalize};
use crate::precision::Precision;
use crate::tensor::{MemoryFormat, Tensor};

/// `GeneralizedRCNNTransform` in eval for a batch of same-sized pictures; inputs `[pictures]`
/// (`[N, C, H, W]`, float32, values as the model was trained on: RGB in 0..1 for
/// torchvision's).
#[derive(Clone, Debug)]
pub struct DetectionTransform {
    /// The resize rule (and the levels, unused here).
    pub geometry: DetectionGeometry,
    /// The per-channel normalisation.
    pub normalize: Normalize,
}

impl GraphOp for DetectionTransform {
    fn kind(&self) -> &'static str {
        "detection_transform"
    }

    fn arity(&self) -> RangeInclusive<usize> {
        1..=1
    }

    fn output_shape(&self, inputs: &[[usize; 4]]) -> Result<[usize; 4]> {
        let [n, c, _, _] = inputs[0];
        let (h, w) = self.geometry.padded(picture_size(inputs[0]))?;
        Ok([n, c, h, w])
    }

    /// NCHW and channels-last (the kernel's `CHANNELS_LAST` variant), f32 and f16.
    fn supports(&self, _layout: MemoryFormat, _precision: Precision) -> bool {
        true
    }

    fn lower(&self, _ctx: &GpuContext, _target: &Target) -> Result<Box<dyn GpuOp>> {
        self.lowered()
    }
}

impl PlainOp for DetectionTransform {
    fn prepare(&self, ctx: &GpuContext, inputs: &[&Tensor], out: &Tensor) -> Result<Vec<Dispatch>> {
        let size = self.geometry.resized(picture_size(inputs[0].shape()))?;
        Ok(vec![resize::prepare(
            ctx,
            inputs[0],
            size,
            &self.normalize,
            out,
        )?])
    }
}
