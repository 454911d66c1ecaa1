//! ReLU and element-wise add (`shaders/elementwise.wgsl`): the unfused forms of what the
//! convolution epilogue does.

use crate::error::Result;
use crate::gpu::{Dispatch, GpuContext};
use crate::kernels::{check_io, check_same_shape, elementwise_dispatch, ShaderSource};
use crate::precision::Precision;
use crate::tensor::{check_shape, Tensor};

/// The WGSL source.
pub const SHADER: ShaderSource = ShaderSource {
    name: "elementwise.wgsl",
    parts: &["common.wgsl", "elementwise.wgsl"],
    source: concat!(
        include_str!("../../shaders/common.wgsl"),
        include_str!("../../shaders/elementwise.wgsl")
    ),
    params: &[(
        "ElementwiseParams",
        std::mem::size_of::<ElementwiseParams>(),
    )],
    enables: "",
    precisions: &Precision::ALL,
};

/// Mirrors `ElementwiseParams` in the WGSL.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct ElementwiseParams {
    pub len: u32,
    pub _pad: [u32; 3],
}

/// Builds the launch computing `out = max(x, 0)` (NaN stays NaN).
pub fn prepare_relu(ctx: &GpuContext, x: &Tensor, out: &Tensor) -> Result<Dispatch> {
    check_shape(ctx, "relu", "the input", x.shape())?;
    check_same_shape("relu", out, "the output", x, "the input")?;
    check_io("relu", out, &[x])?;
    let params = ElementwiseParams {
        len: x.storage_len() as u32,
        _pad: [0; 3],
    };
    elementwise_dispatch(
        ctx,
        &SHADER,
        out.precision(),
        "relu",
        x.storage_len(),
        &params,
        &[(0, x.binding()), (2, out.binding())],
        3,
    )
}

/// Builds the launch computing `out = a + b`.
pub fn prepare_add(ctx: &GpuContext, a: &Tensor, b: &Tensor, out: &Tensor) -> Result<Dispatch> {
    check_shape(ctx, "add", "the first input", a.shape())?;
    check_same_shape("add", b, "the second input", a, "the first input")?;
    check_same_shape("add", out, "the output", a, "the first input")?;
    check_io("add", out, &[a, b])?;
    let params = ElementwiseParams {
        len: a.storage_len() as u32,
        _pad: [0; 3],
    };
    elementwise_dispatch(
        ctx,
        &SHADER,
        out.precision(),
        "add",
        a.storage_len(),
        &params,
        &[(0, a.binding()), (1, b.binding()), (2, out.binding())],
        3,
    )
}

/// Runs ReLU now and returns its output (downloading it waits for the GPU).
pub fn relu(ctx: &GpuContext, x: &Tensor) -> Result<Tensor> {
    let out = Tensor::empty_with(ctx, x.shape(), x.precision(), x.memory_format())?;
    ctx.submit(&[&prepare_relu(ctx, x, &out)?])?;
    Ok(out)
}

/// Runs `a + b` now and returns its output (downloading it waits for the GPU).
pub fn add(ctx: &GpuContext, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let out = Tensor::empty_with(ctx, a.shape(), a.precision(), a.memory_format())?;
    ctx.submit(&[&prepare_add(ctx, a, b, &out)?])?;
    Ok(out)
}
