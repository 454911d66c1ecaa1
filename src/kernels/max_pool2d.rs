//! 2-D max pooling (`shaders/max_pool2d.wgsl`).

use crate::error::{Error, Result};
use crate::gpu::{Dispatch, GpuContext};
use crate::kernels::{check_io, check_output_shape, layout_dispatch, ShaderSource};
use crate::precision::Precision;
use crate::tensor::{check_shape_in, Tensor};

/// The WGSL source.
pub const SHADER: ShaderSource = ShaderSource {
    name: "max_pool2d.wgsl",
    parts: &["layout.wgsl", "max_pool2d.wgsl"],
    source: concat!(
        include_str!("../../shaders/layout.wgsl"),
        include_str!("../../shaders/max_pool2d.wgsl")
    ),
    params: &[("MaxPool2dParams", std::mem::size_of::<MaxPool2dParams>())],
    enables: "",
    precisions: &Precision::ALL,
};

/// Mirrors `MaxPool2dParams` in the WGSL.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct MaxPool2dParams {
    pub len: u32,
    pub in_height: u32,
    pub in_width: u32,
    pub out_height: u32,
    pub out_width: u32,
    pub kernel_h: u32,
    pub kernel_w: u32,
    pub stride_h: u32,
    pub stride_w: u32,
    pub pad_h: u32,
    pub pad_w: u32,
    pub channels: u32,
    pub channels_last: u32,
    pub _pad: [u32; 3],
}

/// Kernel, stride and padding, as (vertical, horizontal) pairs; floor mode, no dilation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaxPool2dOptions {
    /// Window size.
    pub kernel: (usize, usize),
    /// Step between windows.
    pub stride: (usize, usize),
    /// Implicit -infinity padding of each side.
    pub padding: (usize, usize),
}

impl MaxPool2dOptions {
    /// Square kernel, stride and padding.
    pub fn new(kernel: usize, stride: usize, padding: usize) -> Self {
        MaxPool2dOptions {
            kernel: (kernel, kernel),
            stride: (stride, stride),
            padding: (padding, padding),
        }
    }
}

/// The output shape, with PyTorch's rules: padding at most half the kernel, floor division.
pub fn output_shape(input: [usize; 4], opts: &MaxPool2dOptions) -> Result<[usize; 4]> {
    const OP: &str = "max_pool2d";
    let [n, c, h, w] = input;
    let (kh, kw) = opts.kernel;
    let (sh, sw) = opts.stride;
    let (ph, pw) = opts.padding;
    if kh == 0 || kw == 0 || sh == 0 || sw == 0 {
        return Err(Error::invalid(
            OP,
            format!(
                "kernel {:?} and stride {:?} must be at least 1",
                opts.kernel, opts.stride
            ),
        ));
    }
    if 2 * ph > kh || 2 * pw > kw {
        return Err(Error::invalid(
            OP,
            format!(
                "padding {:?} must be at most half the kernel {:?}",
                opts.padding, opts.kernel
            ),
        ));
    }
    if h + 2 * ph < kh || w + 2 * pw < kw {
        return Err(Error::invalid(
            OP,
            format!(
                "the {kh}x{kw} window is larger than the padded input {}x{}",
                h + 2 * ph,
                w + 2 * pw
            ),
        ));
    }
    Ok([n, c, (h + 2 * ph - kh) / sh + 1, (w + 2 * pw - kw) / sw + 1])
}

/// Builds the launch computing `out = max_pool2d(x)`.
pub fn prepare(
    ctx: &GpuContext,
    x: &Tensor,
    out: &Tensor,
    opts: &MaxPool2dOptions,
) -> Result<Dispatch> {
    const OP: &str = "max_pool2d";
    check_shape_in(ctx, OP, "the input", x.shape(), x.memory_format())?;
    let shape = output_shape(x.shape(), opts)?;
    check_output_shape(OP, out, shape)?;
    check_io(OP, out, &[x])?;
    let [_, c, h, w] = x.shape();
    let params = MaxPool2dParams {
        len: out.storage_len() as u32,
        in_height: h as u32,
        in_width: w as u32,
        out_height: shape[2] as u32,
        out_width: shape[3] as u32,
        kernel_h: opts.kernel.0 as u32,
        kernel_w: opts.kernel.1 as u32,
        stride_h: opts.stride.0 as u32,
        stride_w: opts.stride.1 as u32,
        pad_h: opts.padding.0 as u32,
        pad_w: opts.padding.1 as u32,
        channels: c as u32,
        channels_last: x.memory_format().wgsl_flag(c),
        _pad: [0; 3],
    };
    layout_dispatch(
        ctx,
        &SHADER,
        (out.precision(), out.memory_format()),
        "max_pool2d",
        out.storage_len(),
        &params,
        &[(0, x.binding()), (1, out.binding())],
        2,
    )
}

/// Runs a max pooling now and returns its output (downloading it waits for the GPU).
pub fn max_pool2d(ctx: &GpuContext, x: &Tensor, opts: &MaxPool2dOptions) -> Result<Tensor> {
    let out = Tensor::empty_with(
        ctx,
        output_shape(x.shape(), opts)?,
        x.precision(),
        x.memory_format(),
    )?;
    ctx.submit(&[&prepare(ctx, x, &out, opts)?])?;
    Ok(out)
}
