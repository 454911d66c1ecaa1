//! A transposed convolution, PyTorch's `ConvTranspose2d` (groups 1), with its bias and an
//! optional ReLU fused (see [`crate::kernels::conv_transpose2d`]): Mask R-CNN's
//! `mask_predictor.conv5_mask`, which upsamples the mask head's 14x14 features to 28x28.

use std::ops::RangeInclusive;
use std::sync::Arc;

use super::{GpuOp, GraphOp, Launch, Target};
use crate::error::Result;
use crate::gpu::{Dispatch, GpuContext};
use crate::kernels::conv_transpose2d::{self, ConvTranspose2dOptions, ConvTranspose2dWeights};
use crate::precision::Precision;
use crate::tensor::{numel, MemoryFormat, Tensor};

/// A transposed convolution's weights in host memory, as `nn.ConvTranspose2d` saves them.
#[derive(Clone, Debug)]
pub struct HostConvTranspose {
    /// `[in channels, out channels, kernel height, kernel width]`: PyTorch's layout.
    pub shape: [usize; 4],
    /// The kernel, row-major in that layout.
    pub weight: Vec<f32>,
    /// One bias per output channel, if the layer has one.
    pub bias: Option<Vec<f32>>,
}

/// `relu?(conv_transpose(x) + bias)`; inputs `[x]` `[N, Cin, H, W]`.
#[derive(Clone, Debug)]
pub struct ConvTranspose2d {
    /// Kernel and bias.
    pub weights: Arc<HostConvTranspose>,
    /// Stride, padding, output padding, dilation, groups and the ReLU.
    pub opts: ConvTranspose2dOptions,
}

impl GraphOp for ConvTranspose2d {
    fn kind(&self) -> &'static str {
        "conv_transpose2d"
    }

    fn arity(&self) -> RangeInclusive<usize> {
        1..=1
    }

    fn output_shape(&self, inputs: &[[usize; 4]]) -> Result<[usize; 4]> {
        conv_transpose2d::output_shape(inputs[0], self.weights.shape, &self.opts)
    }

    /// NCHW in either precision.
    fn supports(&self, layout: MemoryFormat, _precision: Precision) -> bool {
        layout == MemoryFormat::Nchw
    }

    fn lower(&self, ctx: &GpuContext, target: &Target) -> Result<Box<dyn GpuOp>> {
        let w = &self.weights;
        // Refuses unsupported options (groups) before anything is uploaded.
        self.opts.check()?;
        let weights = ConvTranspose2dWeights::new(
            ctx,
            w.shape,
            &w.weight,
            w.bias.as_deref(),
            target.precision,
        )?;
        Ok(Box::new(GpuConvTranspose2d {
            weights,
            opts: self.opts,
        }))
    }
}

/// A transposed convolution with its weights on the GPU.
struct GpuConvTranspose2d {
    weights: ConvTranspose2dWeights,
    opts: ConvTranspose2dOptions,
}

impl GpuOp for GpuConvTranspose2d {
    fn output_shape(&self, inputs: &[[usize; 4]]) -> Result<[usize; 4]> {
        conv_transpose2d::output_shape(inputs[0], self.weights.shape(), &self.opts)
    }

    fn prepare(
        &self,
        ctx: &GpuContext,
        inputs: &[&Tensor],
        out: &Tensor,
        _launch: Launch<'_>,
    ) -> Result<Vec<Dispatch>> {
        Ok(vec![conv_transpose2d::prepare(
            ctx,
            inputs[0],
            &self.weights,
            &self.opts,
            out,
        )?])
    }

    fn weight_bytes(&self) -> u64 {
        self.weights.byte_size()
    }

    /// Every input pixel meets every tap once (fewer where the padding crops the output):
    /// `2 * N * H * W * Cin * Cout * kh * kw` at most, counted from the output as
    /// `out pixels * Cin * taps / stride^2`.
    fn flops(&self, out: [usize; 4]) -> u64 {
        let [cin, _, kh, kw] = self.weights.shape();
        let (sh, sw) = self.opts.stride;
        2 * (numel(out) * cin * kh * kw / (sh * sw)) as u64
    }
}
