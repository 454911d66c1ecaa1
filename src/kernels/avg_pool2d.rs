//! 2-D average pooling (`shaders/avg_pool2d.wgsl`), as ResNet-D's shortcuts use it:
//! `nn.AvgPool2d(k, s, padding=0, ceil_mode=True, count_include_pad=False)`.

use crate::error::{Error, Result};
use crate::gpu::{Dispatch, GpuContext};
use crate::kernels::{check_io, check_output_shape, layout_dispatch, ShaderSource};
use crate::precision::Precision;
use crate::tensor::{check_shape_in, Tensor};

/// The WGSL source.
pub const SHADER: ShaderSource = ShaderSource {
    name: "avg_pool2d.wgsl",
    parts: &["layout.wgsl", "avg_pool2d.wgsl"],
    source: concat!(
        include_str!("../../shaders/layout.wgsl"),
        include_str!("../../shaders/avg_pool2d.wgsl")
    ),
    params: &[("AvgPool2dParams", std::mem::size_of::<AvgPool2dParams>())],
    enables: "",
    precisions: &Precision::ALL,
};

/// Mirrors `AvgPool2dParams` in the WGSL.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct AvgPool2dParams {
    pub len: u32,
    pub in_height: u32,
    pub in_width: u32,
    pub out_height: u32,
    pub out_width: u32,
    pub kernel_h: u32,
    pub kernel_w: u32,
    pub stride_h: u32,
    pub stride_w: u32,
    pub channels: u32,
    pub channels_last: u32,
    pub _pad: u32,
}

/// Kernel and stride, as (vertical, horizontal) pairs. PyTorch's `AvgPool2d` with
/// `padding=0, ceil_mode=True, count_include_pad=False`: the last window may overhang the
/// input, and each output is the mean of the part of its window inside the input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AvgPool2dOptions {
    /// Window size.
    pub kernel: (usize, usize),
    /// Step between windows.
    pub stride: (usize, usize),
}

impl AvgPool2dOptions {
    /// Square kernel and stride.
    pub fn new(kernel: usize, stride: usize) -> Self {
        AvgPool2dOptions {
            kernel: (kernel, kernel),
            stride: (stride, stride),
        }
    }
}

/// Windows along one axis of `size` in ceil mode without padding, as PyTorch's
/// `pooling_output_shape` counts them: `ceil((size - kernel) / stride) + 1`, less the last
/// window if it would start past the input. `None` when there would be none.
fn ceil_mode_len(size: usize, kernel: usize, stride: usize) -> Option<usize> {
    // ceil((size - kernel) / stride) + 1 = floor((size + stride - 1 - kernel) / stride) + 1,
    // at least 1 exactly when size + stride > kernel. u128: no sum overflows.
    let (size, kernel, stride) = (size as u128, kernel as u128, stride as u128);
    if size + stride <= kernel {
        return None;
    }
    let mut out = (size + stride - 1 - kernel) / stride + 1;
    if (out - 1) * stride >= size {
        out -= 1;
    }
    usize::try_from(out).ok()
}

/// The output shape, with PyTorch's ceil-mode rule (padding 0); an error for a kernel or stride
/// of 0 and for a window that leaves no output.
pub fn output_shape(input: [usize; 4], opts: &AvgPool2dOptions) -> Result<[usize; 4]> {
    const OP: &str = "avg_pool2d";
    let [n, c, h, w] = input;
    let (kh, kw) = opts.kernel;
    let (sh, sw) = opts.stride;
    if kh == 0 || kw == 0 || sh == 0 || sw == 0 {
        return Err(Error::invalid(
            OP,
            format!(
                "kernel {:?} and stride {:?} must be at least 1",
                opts.kernel, opts.stride
            ),
        ));
    }
    match (ceil_mode_len(h, kh, sh), ceil_mode_len(w, kw, sw)) {
        (Some(oh), Some(ow)) if oh > 0 && ow > 0 => Ok([n, c, oh, ow]),
        _ => Err(Error::invalid(
            OP,
            format!(
                "the {kh}x{kw} window with stride {:?} leaves no output for the {h}x{w} input (the window may overhang the input by less than the stride)",
                opts.stride
            ),
        )),
    }
}

/// Builds the launch computing `out = avg_pool2d(x)`.
pub fn prepare(
    ctx: &GpuContext,
    x: &Tensor,
    out: &Tensor,
    opts: &AvgPool2dOptions,
) -> Result<Dispatch> {
    const OP: &str = "avg_pool2d";
    check_shape_in(ctx, OP, "the input", x.shape(), x.memory_format())?;
    let shape = output_shape(x.shape(), opts)?;
    check_output_shape(OP, out, shape)?;
    check_io(OP, out, &[x])?;
    let [_, c, h, w] = x.shape();
    // Every window starts inside the input ((out - 1) * stride < size), so a stride above the
    // input size only ever multiplies 0 and a kernel is never used past the input's size:
    // both are clamped to fit u32 without changing any window.
    let fit = |v: usize, size: usize| v.min(size) as u32;
    let params = AvgPool2dParams {
        len: out.storage_len() as u32,
        in_height: h as u32,
        in_width: w as u32,
        out_height: shape[2] as u32,
        out_width: shape[3] as u32,
        kernel_h: fit(opts.kernel.0, h),
        kernel_w: fit(opts.kernel.1, w),
        stride_h: fit(opts.stride.0, h),
        stride_w: fit(opts.stride.1, w),
        channels: c as u32,
        channels_last: x.memory_format().wgsl_flag(c),
        _pad: 0,
    };
    layout_dispatch(
        ctx,
        &SHADER,
        (out.precision(), out.memory_format()),
        "avg_pool2d",
        out.storage_len(),
        &params,
        &[(0, x.binding()), (1, out.binding())],
        2,
    )
}

/// Runs an average pooling now and returns its output (downloading it waits for the GPU).
pub fn avg_pool2d(ctx: &GpuContext, x: &Tensor, opts: &AvgPool2dOptions) -> Result<Tensor> {
    let out = Tensor::empty_with(
        ctx,
        output_shape(x.shape(), opts)?,
        x.precision(),
        x.memory_format(),
    )?;
    ctx.submit(&[&prepare(ctx, x, &out, opts)?])?;
    Ok(out)
}
