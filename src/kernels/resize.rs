//! Normalise, resize and zero-pad a batch of pictures (`shaders/resize.wgsl`): torchvision's
//! detection transform (`GeneralizedRCNNTransform` in eval) in one launch.

use crate::error::{Error, Result};
use crate::gpu::{Dispatch, GpuContext};
use crate::kernels::{check_io, check_output_shape, layout_dispatch, ShaderSource};
use crate::precision::Precision;
use crate::tensor::{check_shape_in, Tensor};

/// The WGSL source.
pub const SHADER: ShaderSource = ShaderSource {
    name: "resize.wgsl",
    parts: &["common.wgsl", "layout.wgsl", "resize.wgsl"],
    source: concat!(
        include_str!("../../shaders/common.wgsl"),
        include_str!("../../shaders/layout.wgsl"),
        include_str!("../../shaders/resize.wgsl")
    ),
    params: &[("ResizeParams", std::mem::size_of::<ResizeParams>())],
    enables: "",
    precisions: &Precision::ALL,
};

/// Most channels the per-channel normalisation has room for.
pub const MAX_CHANNELS: usize = 4;

/// Mirrors `ResizeParams` in the WGSL.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct ResizeParams {
    len: u32,
    channels: u32,
    in_height: u32,
    in_width: u32,
    out_height: u32,
    out_width: u32,
    padded_height: u32,
    padded_width: u32,
    scale_h: f32,
    scale_w: f32,
    cl: u32,
    _pad: u32,
    mean: [f32; 4],
    stddev: [f32; 4],
}

/// Per-channel normalisation `(v - mean) / std`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Normalize {
    /// Subtracted from each channel.
    pub mean: [f32; MAX_CHANNELS],
    /// Each channel is divided by it.
    pub std: [f32; MAX_CHANNELS],
}

impl Normalize {
    /// ImageNet's statistics, which torchvision's detectors normalise RGB pictures in 0..1 with.
    pub const IMAGENET: Normalize = Normalize {
        mean: [0.485, 0.456, 0.406, 0.0],
        std: [0.229, 0.224, 0.225, 1.0],
    };
}

/// Builds the launch writing `out` `[N, C, PH, PW]`: `x` `[N, C, H, W]` normalised, resized
/// bilinearly (`align_corners=False`) to `size` (height, width) and zero-padded to PH x PW.
/// Both tensors NCHW or both channels-last (whose padding channels come out zero), of one
/// precision.
pub fn prepare(
    ctx: &GpuContext,
    x: &Tensor,
    size: (usize, usize),
    norm: &Normalize,
    out: &Tensor,
) -> Result<Dispatch> {
    const OP: &str = "normalize_resize";
    check_shape_in(ctx, OP, "the pictures", x.shape(), x.memory_format())?;
    check_shape_in(ctx, OP, "the output", out.shape(), out.memory_format())?;
    let [n, c, h, w] = x.shape();
    let [_, _, ph, pw] = out.shape();
    if c > MAX_CHANNELS {
        return Err(Error::invalid(
            OP,
            format!("the pictures have {c} channels; at most {MAX_CHANNELS} can be normalised"),
        ));
    }
    if size.0 == 0 || size.1 == 0 || size.0 > ph || size.1 > pw {
        return Err(Error::invalid(
            OP,
            format!(
                "cannot resize to {size:?} within an output of {ph}x{pw}; the size must be non-zero and fit"
            ),
        ));
    }
    check_output_shape(OP, out, [n, c, ph, pw])?;
    check_io(OP, out, &[x])?;
    let params = ResizeParams {
        len: out.storage_len() as u32,
        channels: c as u32,
        in_height: h as u32,
        in_width: w as u32,
        out_height: size.0 as u32,
        out_width: size.1 as u32,
        padded_height: ph as u32,
        padded_width: pw as u32,
        // PyTorch divides in f32 (`area_pixel_compute_scale`).
        scale_h: h as f32 / size.0 as f32,
        scale_w: w as f32 / size.1 as f32,
        cl: x.memory_format().wgsl_flag(c),
        _pad: 0,
        mean: norm.mean,
        stddev: norm.std,
    };
    layout_dispatch(
        ctx,
        &SHADER,
        (out.precision(), out.memory_format()),
        OP,
        out.storage_len(),
        &params,
        &[(0, x.binding()), (1, out.binding())],
        2,
    )
}
