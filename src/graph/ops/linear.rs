//! A fully connected layer, PyTorch's `nn.Linear`, with its ReLU fused (see
//! [`crate::kernels::linear`]): the box head's `fc6`, `fc7` and predictor of the two-stage
//! detectors.

use std::ops::RangeInclusive;
use std::sync::Arc;

use super::{GpuOp, GraphOp, Launch, Target};
use crate::error::Result;
use crate::gpu::{Dispatch, GpuContext};
use crate::kernels::linear::{self, LinearWeights};
use crate::precision::Precision;
use crate::tensor::{MemoryFormat, Tensor};

/// A linear layer's weights in host memory, as `nn.Linear` saves them.
#[derive(Clone, Debug)]
pub struct HostLinear {
    /// Output features (`weight`'s rows).
    pub out_features: usize,
    /// Input features (`weight`'s columns): `C*H*W` of the input.
    pub in_features: usize,
    /// `[out_features, in_features]`, row-major.
    pub weight: Vec<f32>,
    /// One value per output feature, if the layer has a bias.
    pub bias: Option<Vec<f32>>,
}

/// `relu?(flatten(x) Wᵀ + b)`; inputs `[x]` `[M, C, H, W]` with `C*H*W = in_features`, read as
/// `torch.flatten(x, start_dim=1)` does; output `[M, out_features, 1, 1]`.
#[derive(Clone, Debug)]
pub struct Linear {
    /// Weight and bias.
    pub weights: Arc<HostLinear>,
    /// A ReLU after the bias (`TwoMLPHead`'s `F.relu(fc6(x))`).
    pub relu: bool,
}

impl GraphOp for Linear {
    fn kind(&self) -> &'static str {
        "linear"
    }

    fn arity(&self) -> RangeInclusive<usize> {
        1..=1
    }

    fn output_shape(&self, inputs: &[[usize; 4]]) -> Result<[usize; 4]> {
        let w = &self.weights;
        linear::output_shape(inputs[0], [w.out_features, w.in_features])
    }

    /// NCHW in either precision: the flattening is NCHW's order.
    fn supports(&self, layout: MemoryFormat, _precision: Precision) -> bool {
        layout == MemoryFormat::Nchw
    }

    fn lower(&self, ctx: &GpuContext, target: &Target) -> Result<Box<dyn GpuOp>> {
        let w = &self.weights;
        let weights = LinearWeights::new(
            ctx,
            [w.out_features, w.in_features],
            &w.weight,
            w.bias.as_deref(),
            target.precision,
        )?;
        Ok(Box::new(GpuLinear {
            weights,
            relu: self.relu,
        }))
    }
}

/// A linear layer with its weights on the GPU.
struct GpuLinear {
    weights: LinearWeights,
    relu: bool,
}

impl GpuOp for GpuLinear {
    fn output_shape(&self, inputs: &[[usize; 4]]) -> Result<[usize; 4]> {
        linear::output_shape(inputs[0], self.weights.shape())
    }

    fn prepare(
        &self,
        ctx: &GpuContext,
        inputs: &[&Tensor],
        out: &Tensor,
        _launch: Launch<'_>,
    ) -> Result<Vec<Dispatch>> {
        Ok(vec![linear::prepare(
            ctx,
            inputs[0],
            &self.weights,
            self.relu,
            out,
        )?])
    }

    fn weight_bytes(&self) -> u64 {
        self.weights.byte_size()
    }

    fn flops(&self, out: [usize; 4]) -> u64 {
        let [n, k] = self.weights.shape();
        2 * (out[0] * n * k) as u64
    }
}
