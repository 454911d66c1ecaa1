//! The static part of the cooperative-matrix module (`shaders/conv2d_coop.wgsl`: bindings,
//! epilogue, split-K reduction) and its parameters, which the direct-load blocks ([`super::tile`])
//! and the staged block ([`super::staged`]) both append their entry points to.

use crate::kernels::ShaderSource;
use crate::precision::Precision;
use crate::tensor::MemoryFormat;

/// The module without its generated entry points.
pub const SHADER: ShaderSource = ShaderSource {
    name: "conv2d_coop.wgsl",
    parts: &[
        "common.wgsl",
        "resample.wgsl",
        "conv2d_epilogue.wgsl",
        "conv2d_coop.wgsl",
    ],
    source: concat!(
        include_str!("../../../../shaders/common.wgsl"),
        include_str!("../../../../shaders/resample.wgsl"),
        include_str!("../../../../shaders/conv2d_epilogue.wgsl"),
        include_str!("../../../../shaders/conv2d_coop.wgsl")
    ),
    params: &[("CoopConvParams", std::mem::size_of::<CoopConvParams>())],
    enables: "enable wgpu_cooperative_matrix;\n",
    precisions: &[Precision::F16],
};

/// Mirrors `CoopConvParams` in the WGSL.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct CoopConvParams {
    pub in_height: u32,
    pub in_width: u32,
    pub in_cl: u32,
    pub out_height: u32,
    pub out_width: u32,
    pub out_cl: u32,
    pub w_stride: u32,
    pub kernel_w: u32,
    pub stride_h: u32,
    pub stride_w: u32,
    pub segments: u32,
    pub total_segments: u32,
    pub part_image: u32,
    pub steps: u32,
    pub steps_per_split: u32,
    pub splits: u32,
    pub batch: u32,
    pub flags: u32,
    pub res_height: u32,
    pub res_width: u32,
    pub res_scale_h: f32,
    pub res_scale_w: f32,
    pub len: u32,
    pub part_row: u32,
    pub out_rows: u32,
    pub out_pitch: u32,
    pub out_top: u32,
    pub out_left: u32,
    pub out_channels: u32,
    pub _pad: [u32; 3],
}

/// Input channels padded as a channels-last tensor stores them.
pub(super) fn padded_cin(cin: usize) -> usize {
    MemoryFormat::ChannelsLast.pixel_stride(cin)
}
