//! Precision and layout conversion (`shaders/convert.wgsl`): how f32 NCHW tensors enter and
//! leave a network that stores its activations in f16 or channels-last.

use crate::error::{Error, Result};
use crate::gpu::{Dispatch, GpuContext};
use crate::kernels::{check_same_shape, elementwise_dispatch, ShaderSource};
use crate::precision::Precision;
use crate::tensor::{check_shape_in, MemoryFormat, Tensor};

/// The WGSL source.
pub const SHADER: ShaderSource = ShaderSource {
    name: "convert.wgsl",
    parts: &["layout.wgsl", "convert.wgsl"],
    source: concat!(
        include_str!("../../shaders/layout.wgsl"),
        include_str!("../../shaders/convert.wgsl")
    ),
    params: &[("ConvertParams", std::mem::size_of::<ConvertParams>())],
    enables: "",
    precisions: &Precision::ALL,
};

/// Mirrors `ConvertParams` in the WGSL.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct ConvertParams {
    pub len: u32,
    pub channels: u32,
    pub height: u32,
    pub width: u32,
    pub src_cl: u32,
    pub dst_cl: u32,
    pub _pad: [u32; 2],
}

/// Builds the launch writing `x` into `out` in `out`'s precision and layout; when the
/// precisions differ one of them must be f32 (the only precisions are f32 and f16).
pub fn prepare(ctx: &GpuContext, x: &Tensor, out: &Tensor) -> Result<Dispatch> {
    const OP: &str = "convert";
    check_shape_in(ctx, OP, "the input", x.shape(), x.memory_format())?;
    check_shape_in(ctx, OP, "the output", out.shape(), out.memory_format())?;
    check_same_shape(OP, out, "the output", x, "the input")?;
    if x.buffer() == out.buffer() {
        return Err(Error::invalid(
            OP,
            "the output shares a buffer with the input; give the output its own tensor",
        ));
    }
    let [_, c, h, w] = x.shape();
    let params = ConvertParams {
        len: out.storage_len() as u32,
        channels: c as u32,
        height: h as u32,
        width: w as u32,
        src_cl: x.memory_format().wgsl_flag(c),
        dst_cl: out.memory_format().wgsl_flag(c),
        _pad: [0; 2],
    };
    let (entry, precision, bindings) = match (x.precision(), out.precision()) {
        (a, b) if a == b && a != Precision::F32 => {
            ("relayout", a, [(2, x.binding()), (1, out.binding())])
        }
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
        out.storage_len(),
        &params,
        &bindings,
        4,
    )
}

/// Converts `x` to `precision` now and returns the new tensor (downloading it waits for the
/// GPU); a tensor already in `precision` is returned as it is.
pub fn convert(ctx: &GpuContext, x: &Tensor, precision: Precision) -> Result<Tensor> {
    convert_to(ctx, x, precision, x.memory_format())
}

/// Converts `x` to `precision` and `layout` now and returns the new tensor; a tensor already
/// stored so is returned as it is.
pub fn convert_to(
    ctx: &GpuContext,
    x: &Tensor,
    precision: Precision,
    layout: MemoryFormat,
) -> Result<Tensor> {
    if x.precision() == precision && x.memory_format() == layout {
        return Ok(x.clone());
    }
    let out = Tensor::empty_with(ctx, x.shape(), precision, layout)?;
    ctx.submit(&[&prepare(ctx, x, &out)?])?;
    Ok(out)
}
