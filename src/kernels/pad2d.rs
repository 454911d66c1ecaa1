//! Zero padding as its own op (`shaders/pad2d.wgsl`), so that the convolution after it runs
//! without bounds checks.

use crate::error::Result;
use crate::gpu::{Dispatch, GpuContext};
use crate::kernels::{check_io, check_output_shape, follows_batch, layout_dispatch, ShaderSource};
use crate::precision::Precision;
use crate::tensor::{check_shape_in, Tensor};

/// The WGSL source.
pub const SHADER: ShaderSource = ShaderSource {
    name: "pad2d.wgsl",
    parts: &["layout.wgsl", "pad2d.wgsl"],
    source: concat!(
        include_str!("../../shaders/layout.wgsl"),
        include_str!("../../shaders/pad2d.wgsl")
    ),
    params: &[("Pad2dParams", std::mem::size_of::<Pad2dParams>())],
    enables: "",
    precisions: &Precision::ALL,
};

/// Mirrors `Pad2dParams` in the WGSL.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct Pad2dParams {
    pub len: u32,
    pub in_height: u32,
    pub in_width: u32,
    pub pad_h: u32,
    pub pad_w: u32,
    pub channels: u32,
    pub channels_last: u32,
    pub _pad: u32,
}

/// The shape after padding each side by (vertical, horizontal) `padding`.
pub fn output_shape(input: [usize; 4], padding: (usize, usize)) -> [usize; 4] {
    let [n, c, h, w] = input;
    [n, c, h + 2 * padding.0, w + 2 * padding.1]
}

/// Builds the launch computing `out = pad(x)`.
pub fn prepare(
    ctx: &GpuContext,
    x: &Tensor,
    out: &Tensor,
    padding: (usize, usize),
) -> Result<Dispatch> {
    const OP: &str = "pad2d";
    check_shape_in(ctx, OP, "the input", x.shape(), x.memory_format())?;
    let shape = output_shape(x.shape(), padding);
    check_shape_in(ctx, OP, "the output", shape, out.memory_format())?;
    check_output_shape(OP, out, shape)?;
    check_io(OP, out, &[x])?;
    let [_, c, h, w] = x.shape();
    let params = Pad2dParams {
        len: out.storage_len() as u32,
        in_height: h as u32,
        in_width: w as u32,
        pad_h: padding.0 as u32,
        pad_w: padding.1 as u32,
        channels: c as u32,
        channels_last: x.memory_format().wgsl_flag(c),
        _pad: 0,
    };
    let launch = layout_dispatch(
        ctx,
        &SHADER,
        (out.precision(), out.memory_format()),
        "pad2d",
        out.storage_len(),
        &params,
        &[(0, x.binding()), (1, out.binding())],
        2,
    )?;
    Ok(follows_batch(launch, out))
}

/// Submits a zero padding now and returns its output (downloading it waits for the GPU).
pub fn pad2d(ctx: &GpuContext, x: &Tensor, padding: (usize, usize)) -> Result<Tensor> {
    let out = Tensor::empty_with(
        ctx,
        output_shape(x.shape(), padding),
        x.precision(),
        x.memory_format(),
    )?;
    ctx.submit(&[&prepare(ctx, x, &out, padding)?])?;
    Ok(out)
}
