//! Inference batch norm. Fused graphs fold it into the preceding convolution's affine epilogue
//! (see `passes::fold_batch_norm`); unfused ones run it as a kernel of its own, NCHW only.

use std::ops::RangeInclusive;
use std::sync::Arc;

use super::{GpuOp, GraphOp, Launch, Target};
use crate::error::{Error, Result};
use crate::gpu::{Dispatch, GpuContext};
use crate::kernels::batch_norm::{self, BatchNormWeights};
use crate::precision::Precision;
use crate::tensor::{MemoryFormat, Tensor};

/// An inference batch norm's parameters in host memory.
#[derive(Clone, Debug)]
pub struct HostBatchNorm {
    /// Running mean per channel.
    pub mean: Vec<f32>,
    /// Running variance per channel.
    pub var: Vec<f32>,
    /// Scale (gamma) per channel.
    pub weight: Vec<f32>,
    /// Shift (beta) per channel.
    pub bias: Vec<f32>,
    /// Added to the variance before the square root.
    pub eps: f32,
}

/// Inference batch norm; inputs `[x]`.
#[derive(Clone, Debug)]
pub struct BatchNorm(pub Arc<HostBatchNorm>);

/// The output shape of a batch norm of `channels` channels: its input's, whose channels must
/// agree.
fn output_shape(channels: usize, x: [usize; 4]) -> Result<[usize; 4]> {
    if x[1] != channels {
        return Err(Error::invalid(
            "batch_norm",
            format!(
                "the input has {} channels but the batch norm has {channels}",
                x[1]
            ),
        ));
    }
    Ok(x)
}

impl GraphOp for BatchNorm {
    fn kind(&self) -> &'static str {
        "batch_norm"
    }

    fn arity(&self) -> RangeInclusive<usize> {
        1..=1
    }

    fn output_shape(&self, inputs: &[[usize; 4]]) -> Result<[usize; 4]> {
        output_shape(self.0.mean.len(), inputs[0])
    }

    /// Its kernel reads NCHW tensors only.
    fn supports(&self, layout: MemoryFormat, _precision: Precision) -> bool {
        layout == MemoryFormat::Nchw
    }

    fn lower(&self, ctx: &GpuContext, _target: &Target) -> Result<Box<dyn GpuOp>> {
        let bn = &self.0;
        let weights = BatchNormWeights::new(ctx, &bn.mean, &bn.var, &bn.weight, &bn.bias, bn.eps)?;
        Ok(Box::new(GpuBatchNorm(weights)))
    }
}

/// A batch norm with its statistics on the GPU.
struct GpuBatchNorm(BatchNormWeights);

impl GpuOp for GpuBatchNorm {
    fn output_shape(&self, inputs: &[[usize; 4]]) -> Result<[usize; 4]> {
        output_shape(self.0.channels(), inputs[0])
    }

    fn prepare(
        &self,
        ctx: &GpuContext,
        inputs: &[&Tensor],
        out: &Tensor,
        _launch: Launch<'_>,
    ) -> Result<Vec<Dispatch>> {
        Ok(vec![batch_norm::prepare(ctx, inputs[0], &self.0, out)?])
    }

    fn weight_bytes(&self) -> u64 {
        self.0.byte_size()
    }
}
