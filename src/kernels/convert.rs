//! Precision conversion (`shaders/convert.wgsl`): how f32 tensors enter and leave a network that
//! stores its activations in f16.

use crate::error::{Error, Result};
use crate::gpu::{Dispatch, GpuContext};
use crate::kernels::{check_same_shape, elementwise_dispatch, ShaderSource};
use crate::precision::Precision;
use crate::tensor::{check_shape, Tensor};

/// The WGSL source.
pub const SHADER: ShaderSource = ShaderSource {
    name: "convert.wgsl",
    parts: &["convert.wgsl"],
    source: include_str!("../../shaders/convert.wgsl"),
    params: &[("ConvertParams", std::mem::size_of::<ConvertParams>())],
    enables: "",
    precisions: &Precision::ALL,
};

/// Mirrors `ConvertParams` in the WGSL.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct ConvertParams {
    pub len: u32,
    pub _pad: [u32; 3],
}

/// Builds the launch writing `x` into `out` in `out`'s precision; one of the two must be f32
/// (the only precisions are f32 and f16).
pub fn prepare(ctx: &GpuContext, x: &Tensor, out: &Tensor) -> Result<Dispatch> {
    const OP: &str = "convert";
    check_shape(ctx, OP, "the input", x.shape())?;
    check_same_shape(OP, out, "the output", x, "the input")?;
    if x.buffer() == out.buffer() {
        return Err(Error::invalid(
            OP,
            "the output shares a buffer with the input; give the output its own tensor",
        ));
    }
    let params = ConvertParams {
        len: x.numel() as u32,
        _pad: [0; 3],
    };
    let (entry, precision, bindings) = match (x.precision(), out.precision()) {
        (Precision::F32, p) => ("to_act", p, [(0, x.binding()), (1, out.binding())]),
        (p, Precision::F32) => ("to_f32", p, [(2, x.binding()), (3, out.binding())]),
        (a, b) => {
            return Err(Error::invalid(
                OP,
                format!("cannot convert {a} to {b} directly; go through f32"),
            ))
        }
    };
    elementwise_dispatch(
        ctx,
        &SHADER,
        precision,
        entry,
        x.numel(),
        &params,
        &bindings,
        4,
    )
}

/// Converts `x` to `precision` now and returns the new tensor (downloading it waits for the
/// GPU); a tensor already in `precision` is returned as it is.
pub fn convert(ctx: &GpuContext, x: &Tensor, precision: Precision) -> Result<Tensor> {
    if x.precision() == precision {
        return Ok(x.clone());
    }
    let out = Tensor::empty_as(ctx, x.shape(), precision)?;
    ctx.submit(&[&prepare(ctx, x, &out)?])?;
    Ok(out)
}
