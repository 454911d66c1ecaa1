//! out = upsample(x, to the size of y) + y (`shaders/upsample_add.wgsl`): the FPN top-down merge.

use crate::error::{Error, Result};
use crate::gpu::{Dispatch, GpuContext};
use crate::kernels::{check_io, check_same_shape, layout_dispatch, ShaderSource};
use crate::precision::Precision;
use crate::tensor::{check_shape, Tensor};

/// The WGSL source.
pub const SHADER: ShaderSource = ShaderSource {
    name: "upsample_add.wgsl",
    parts: &["common.wgsl", "resample.wgsl", "upsample_add.wgsl"],
    source: concat!(
        include_str!("../../shaders/common.wgsl"),
        include_str!("../../shaders/resample.wgsl"),
        include_str!("../../shaders/upsample_add.wgsl")
    ),
    params: &[(
        "UpsampleAddParams",
        std::mem::size_of::<UpsampleAddParams>(),
    )],
    enables: "",
    precisions: &Precision::ALL,
};

/// Mirrors `UpsampleAddParams` in the WGSL.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct UpsampleAddParams {
    pub len: u32,
    pub res_height: u32,
    pub res_width: u32,
    pub out_height: u32,
    pub out_width: u32,
    pub res_scale_h: f32,
    pub res_scale_w: f32,
    pub channels_last: u32,
}

/// How the coarser map is resized, with PyTorch's `F.interpolate(x, size=...)` semantics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum UpsampleMode {
    /// `mode='bilinear', align_corners=False` (the seed FPN).
    #[default]
    Bilinear,
    /// `mode='nearest'` (torchvision's FPN).
    Nearest,
}

/// Builds the launch computing `out = upsample(x, size of y) + y`.
pub fn prepare(
    ctx: &GpuContext,
    x: &Tensor,
    y: &Tensor,
    out: &Tensor,
    mode: UpsampleMode,
) -> Result<Dispatch> {
    const OP: &str = "upsample_add";
    check_shape(ctx, OP, "the coarse input", x.shape())?;
    check_shape(ctx, OP, "the lateral input", y.shape())?;
    let [n, c, ih, iw] = x.shape();
    let [yn, yc, oh, ow] = y.shape();
    if (n, c) != (yn, yc) {
        return Err(Error::invalid(
            OP,
            format!(
                "the coarse input {:?} and the lateral input {:?} must agree in batch and channels",
                x.shape(),
                y.shape()
            ),
        ));
    }
    check_same_shape(OP, out, "the output", y, "the lateral input")?;
    check_io(OP, out, &[x, y])?;
    let params = UpsampleAddParams {
        len: out.storage_len() as u32,
        res_height: ih as u32,
        res_width: iw as u32,
        out_height: oh as u32,
        out_width: ow as u32,
        // PyTorch divides in f32: the same rounding here keeps nearest indices identical.
        res_scale_h: ih as f32 / oh as f32,
        res_scale_w: iw as f32 / ow as f32,
        channels_last: out.memory_format().wgsl_flag(c),
    };
    let entry = match mode {
        UpsampleMode::Bilinear => "bilinear_add",
        UpsampleMode::Nearest => "nearest_add",
    };
    layout_dispatch(
        ctx,
        &SHADER,
        (out.precision(), out.memory_format()),
        entry,
        out.storage_len(),
        &params,
        &[(0, x.binding()), (1, y.binding()), (2, out.binding())],
        3,
    )
}

/// Runs an upsample-and-add now and returns its output (downloading it waits for the GPU).
pub fn upsample_add(
    ctx: &GpuContext,
    x: &Tensor,
    y: &Tensor,
    mode: UpsampleMode,
) -> Result<Tensor> {
    let out = Tensor::empty_with(ctx, y.shape(), y.precision(), y.memory_format())?;
    ctx.submit(&[&prepare(ctx, x, y, &out, mode)?])?;
    Ok(out)
}
