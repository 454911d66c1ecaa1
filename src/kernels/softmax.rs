//! Softmax over the channels (`shaders/softmax.wgsl`): `torch.softmax(x, dim=1)` of an NCHW
//! tensor, a box predictor's `[R, classes, 1, 1]` class logits turned into scores. The maximum
//! of each row is subtracted before the exponentials, as PyTorch does, so that no logit
//! overflows them; a row holding a NaN is NaN throughout.
//!
//! The input is stored as the activations are (f32 or f16); the output is always f32, since the
//! scores go on to post-processing (thresholds, top-k, NMS), which reads f32.

use crate::error::{Error, Result};
use crate::gpu::{Dispatch, GpuContext};
use crate::kernels::{check_nchw, check_output_shape, elementwise_dispatch, ShaderSource};
use crate::precision::Precision;
use crate::tensor::{check_shape, Tensor};

const OP: &str = "softmax";

/// The WGSL source.
pub const SHADER: ShaderSource = ShaderSource {
    name: "softmax.wgsl",
    parts: &["softmax.wgsl"],
    source: include_str!("../../shaders/softmax.wgsl"),
    params: &[("SoftmaxParams", std::mem::size_of::<SoftmaxParams>())],
    enables: "",
    precisions: &Precision::ALL,
};

/// Mirrors `SoftmaxParams` in the WGSL.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct SoftmaxParams {
    rows: u32,
    channels: u32,
    plane: u32,
    _pad: u32,
}

/// Builds the launch writing `out` (f32, the shape of `x`) = the softmax of `x` over its
/// channels.
pub fn prepare(ctx: &GpuContext, x: &Tensor, out: &Tensor) -> Result<Dispatch> {
    check_nchw(OP, x)?;
    check_nchw(OP, out)?;
    check_shape(ctx, OP, "the input", x.shape())?;
    check_output_shape(OP, out, x.shape())?;
    if out.precision() != Precision::F32 {
        return Err(Error::invalid(
            OP,
            format!(
                "the output is {}; the scores are written in f32 whatever the input is stored in",
                out.precision()
            ),
        ));
    }
    if x.buffer() == out.buffer() {
        return Err(Error::invalid(
            OP,
            "the output shares a buffer with the input; in-place ops are not supported, give the output its own tensor",
        ));
    }
    if u32::try_from(x.numel()).is_err() {
        return Err(Error::invalid(
            OP,
            format!(
                "the input {:?} has more than 2^32 values; run it in smaller batches",
                x.shape()
            ),
        ));
    }
    let [n, c, h, w] = x.shape();
    let rows = n * h * w;
    let params = SoftmaxParams {
        rows: rows as u32,
        channels: c as u32,
        plane: (h * w) as u32,
        _pad: 0,
    };
    elementwise_dispatch(
        ctx,
        &SHADER,
        x.precision(),
        OP,
        rows,
        &params,
        &[(0, x.binding()), (1, out.binding())],
        2,
    )
}

/// Runs the softmax of `x` over its channels now and returns it, in f32.
pub fn softmax(ctx: &GpuContext, x: &Tensor) -> Result<Tensor> {
    let out = Tensor::empty_as(ctx, x.shape(), Precision::F32)?;
    ctx.submit(&[&prepare(ctx, x, &out)?])?;
    Ok(out)
}
