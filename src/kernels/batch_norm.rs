//! Inference batch norm as its own kernel (`shaders/batch_norm.wgsl`). The fused path folds
//! batch norm into the preceding convolution's epilogue instead; this kernel is the unfused form.

use crate::error::{Error, Result};
use crate::gpu::{Dispatch, GpuContext};
use crate::kernels::{check_io, check_nchw, check_same_shape, elementwise_dispatch, ShaderSource};
use crate::precision::Precision;
use crate::tensor::{check_shape, Tensor};

/// The WGSL source.
pub const SHADER: ShaderSource = ShaderSource {
    name: "batch_norm.wgsl",
    parts: &["batch_norm.wgsl"],
    source: include_str!("../../shaders/batch_norm.wgsl"),
    params: &[("BatchNormParams", std::mem::size_of::<BatchNormParams>())],
    enables: "",
    precisions: &Precision::ALL,
};

/// Mirrors `BatchNormParams` in the WGSL.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct BatchNormParams {
    pub len: u32,
    pub channels: u32,
    pub plane: u32,
    pub eps: f32,
}

/// A batch norm's running statistics and affine parameters on the GPU.
#[derive(Debug)]
pub struct BatchNormWeights {
    channels: usize,
    eps: f32,
    stats: wgpu::Buffer,
}

impl BatchNormWeights {
    /// Uploads running mean and variance, weight (gamma) and bias (beta), one value per channel.
    pub fn new(
        ctx: &GpuContext,
        mean: &[f32],
        var: &[f32],
        weight: &[f32],
        bias: &[f32],
        eps: f32,
    ) -> Result<Self> {
        let channels = mean.len();
        if channels == 0
            || [var.len(), weight.len(), bias.len()]
                .iter()
                .any(|&l| l != channels)
        {
            return Err(Error::invalid(
                "BatchNormWeights::new",
                format!(
                    "mean, var, weight and bias must have the same non-zero length; got {}, {}, {}, {}",
                    channels,
                    var.len(),
                    weight.len(),
                    bias.len()
                ),
            ));
        }
        if !(eps >= 0.0 && eps.is_finite()) {
            return Err(Error::invalid(
                "BatchNormWeights::new",
                format!("eps is {eps}; it must be finite and not negative"),
            ));
        }
        let stats: Vec<f32> = [mean, var, weight, bias].concat();
        Ok(BatchNormWeights {
            channels,
            eps,
            stats: ctx.storage_from("batch norm stats", &stats),
        })
    }

    /// Number of channels.
    pub fn channels(&self) -> usize {
        self.channels
    }

    /// Bytes on the GPU.
    pub fn byte_size(&self) -> u64 {
        self.stats.size()
    }
}

/// Builds the launch computing `out = batch_norm(x)`.
pub fn prepare(
    ctx: &GpuContext,
    x: &Tensor,
    bn: &BatchNormWeights,
    out: &Tensor,
) -> Result<Dispatch> {
    const OP: &str = "batch_norm";
    check_shape(ctx, OP, "the input", x.shape())?;
    let [_, c, h, w] = x.shape();
    if c != bn.channels {
        return Err(Error::invalid(
            OP,
            format!(
                "the input has {c} channels (shape {:?}) but the batch norm has {}",
                x.shape(),
                bn.channels
            ),
        ));
    }
    check_same_shape(OP, out, "the output", x, "the input")?;
    check_io(OP, out, &[x])?;
    check_nchw(OP, out)?;
    let params = BatchNormParams {
        len: x.numel() as u32,
        channels: c as u32,
        plane: (h * w) as u32,
        eps: bn.eps,
    };
    elementwise_dispatch(
        ctx,
        &SHADER,
        out.precision(),
        "batch_norm",
        x.numel(),
        &params,
        &[
            (0, x.binding()),
            (1, bn.stats.as_entire_binding()),
            (2, out.binding()),
        ],
        3,
    )
}

/// Runs a batch norm now and returns its output (downloading it waits for the GPU).
pub fn batch_norm(ctx: &GpuContext, x: &Tensor, bn: &BatchNormWeights) -> Result<Tensor> {
    let out = Tensor::empty_as(ctx, x.shape(), x.precision())?;
    ctx.submit(&[&prepare(ctx, x, bn, &out)?])?;
    Ok(out)
}
