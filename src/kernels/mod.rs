//! GPU kernels: one module per WGSL file in `shaders/`, each with its `#[repr(C)]` params
//! struct, its shape checks, a `prepare` that builds a [`Dispatch`] (for the executor, which
//! records many launches into one pass) and a function that runs the op at once; and the
//! [`template`] expander of the kernels generated per tile shape.

pub mod avg_pool2d;
pub mod batch_norm;
pub mod box_candidates;
pub mod box_decode;
pub mod compact_records;
pub mod conv2d;
pub mod conv_transpose2d;
pub mod convert;
pub mod elementwise;
pub mod group_norm;
pub mod indirect_grid;
pub mod levels;
pub mod linear;
pub mod masks;
pub mod max_pool2d;
pub mod nms;
pub mod pad2d;
pub mod resize;
pub mod roi_align;
pub mod softmax;
pub mod template;
pub mod top_k;
pub mod upsample_add;

use crate::error::{Error, Result};
use crate::gpu::{grid_2d, BatchGrid, Dispatch, GpuContext};
use crate::precision::Precision;
use crate::tensor::{MemoryFormat, Tensor};

/// A WGSL module compiled into the crate: one kernel file, preceded by the shared snippets it
/// uses.
#[derive(Debug)]
pub struct ShaderSource {
    /// The kernel's file name under `shaders/`.
    pub name: &'static str,
    /// The files under `shaders/` the module is made of, in order (snippets, then the kernel).
    pub parts: &'static [&'static str],
    /// The WGSL text: the parts concatenated.
    pub source: &'static str,
    /// Extension directives the module needs beyond its precision's (`enable ...;` lines).
    pub enables: &'static str,
    /// The precisions the kernel is written for.
    pub precisions: &'static [Precision],
    /// Each params struct in the file with the byte size of its Rust twin, so a test can check
    /// that both sides agree.
    pub params: &'static [(&'static str, usize)],
}

impl ShaderSource {
    /// The module for tensors stored in `precision`: the directives, the alias that defines
    /// `act`, then the source.
    pub fn module(&self, precision: Precision) -> String {
        format!(
            "{}{}{}{}",
            precision.wgsl_enable(),
            self.enables,
            precision.wgsl_alias(),
            self.source
        )
    }
}

/// Every shader the crate uses.
pub const SHADERS: &[&ShaderSource] = &[
    &conv2d::direct::SHADER,
    &conv2d::grouped::SHADER,
    &conv2d::rows::SHADER,
    &conv2d::coop::SHADER,
    &batch_norm::SHADER,
    &max_pool2d::SHADER,
    &avg_pool2d::SHADER,
    &pad2d::SHADER,
    &upsample_add::SHADER,
    &elementwise::SHADER,
    &convert::SHADER,
    &resize::SHADER,
    &levels::SHADER,
    &group_norm::SHADER,
    &box_decode::SHADER,
    &box_candidates::SHADER,
    &top_k::SHADER,
    &roi_align::SHADER,
    &linear::SHADER,
    &linear::coop::SHADER,
    &softmax::SHADER,
    &nms::SORT_SHADER,
    &nms::MASK_SHADER,
    &nms::SWEEP_SHADER,
    &conv_transpose2d::SHADER,
    &masks::SHADER,
    &compact_records::SHADER,
    &indirect_grid::SHADER,
];

/// Every template of generated entry points the crate expands (each appended to one of
/// [`SHADERS`]).
pub const TEMPLATES: &[&template::ShaderTemplate] = &[
    &conv2d::rows::ENTRY,
    &conv2d::coop::tile::ENTRY,
    &conv2d::coop::staged::ENTRY,
    &linear::coop::ENTRY,
];

/// Returns the context's cached pipeline for a shader entry point in `precision` and its
/// override constants, compiling it on first use.
pub(crate) fn pipeline(
    ctx: &GpuContext,
    shader: &ShaderSource,
    precision: Precision,
    entry: &'static str,
    constants: &[(&'static str, u32)],
) -> Result<wgpu::ComputePipeline> {
    ctx.check_precision(entry, precision)?;
    ctx.pipeline_from(
        &format!("{}:{precision}", shader.name),
        || shader.module(precision),
        entry,
        constants,
    )
}

/// Workgroup size of the one-invocation-per-element kernels (the WGSL `override WG`).
pub const ELEMENTWISE_WG: u32 = 256;

/// Builds a launch of an element-wise kernel (`override WG`, one invocation per element, grid
/// linearised as `workgroup_id.y * num_workgroups.x + workgroup_id.x`). `buffers` pairs each
/// storage binding index with its resource; the params uniform goes at `params_binding`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn elementwise_dispatch<P: bytemuck::Pod>(
    ctx: &GpuContext,
    shader: &ShaderSource,
    precision: Precision,
    entry: &'static str,
    len: usize,
    params: &P,
    buffers: &[(u32, wgpu::BindingResource<'_>)],
    params_binding: u32,
) -> Result<Dispatch> {
    layout_dispatch(
        ctx,
        shader,
        (precision, MemoryFormat::Nchw),
        entry,
        len,
        params,
        buffers,
        params_binding,
    )
}

/// [`elementwise_dispatch`] for a kernel written for either layout: the pipeline's
/// `CHANNELS_LAST` override constant says which, so that the other layout's index arithmetic
/// is compiled out (on llvmpipe, where integer division is scalarised, a layout branch on a
/// uniform made the padding kernel 1.7x slower).
#[allow(clippy::too_many_arguments)]
pub(crate) fn layout_dispatch<P: bytemuck::Pod>(
    ctx: &GpuContext,
    shader: &ShaderSource,
    (precision, layout): (Precision, MemoryFormat),
    entry: &'static str,
    len: usize,
    params: &P,
    buffers: &[(u32, wgpu::BindingResource<'_>)],
    params_binding: u32,
) -> Result<Dispatch> {
    let mut constants = vec![("WG", ELEMENTWISE_WG)];
    if layout == MemoryFormat::ChannelsLast {
        constants.push(("CHANNELS_LAST", 1));
    }
    let pipeline = pipeline(ctx, shader, precision, entry, &constants)?;
    let groups = (len as u64).div_ceil(ELEMENTWISE_WG as u64);
    let max = ctx.limits().max_compute_workgroups_per_dimension;
    let groups = u32::try_from(groups).unwrap_or(u32::MAX);
    let workgroups = grid_2d(groups, max);
    ctx.check_grid(entry, workgroups)?;
    let uniform = ctx.uniform(params);
    let mut entries = buffers.to_vec();
    entries.push((params_binding, uniform.binding()));
    let bind_group = ctx.bind_group(entry, &pipeline, &entries);
    Ok(Dispatch::new(entry, pipeline, bind_group, workgroups))
}

/// `launch`, a [`layout_dispatch`] over every element of `out`, marked as following `out`'s
/// batch: its first rows alone are computed by a grid cut down to their elements.
pub(crate) fn follows_batch(launch: Dispatch, out: &Tensor) -> Dispatch {
    let per_row = out.storage_len() / out.shape()[0].max(1);
    launch.with_batch(BatchGrid::Flat {
        items_per_row: u32::try_from(per_row).unwrap_or(u32::MAX),
        items_per_group: ELEMENTWISE_WG,
    })
}

/// Checks that two tensors have the same shape.
pub(crate) fn check_same_shape(
    op: &'static str,
    a: &Tensor,
    what_a: &str,
    b: &Tensor,
    what_b: &str,
) -> Result<()> {
    if a.shape() != b.shape() {
        return Err(Error::invalid(
            op,
            format!(
                "{what_a} has shape {:?} but {what_b} has shape {:?}; they must match",
                a.shape(),
                b.shape()
            ),
        ));
    }
    Ok(())
}

/// Checks that the output does not share a buffer with an input (wgpu forbids binding one
/// buffer as both read-only and read-write in a dispatch) and that all of them have one
/// precision (a kernel is compiled for one storage type) and one layout.
pub(crate) fn check_io(op: &'static str, out: &Tensor, inputs: &[&Tensor]) -> Result<()> {
    if let Some(t) = inputs
        .iter()
        .find(|t| t.memory_format() != out.memory_format())
    {
        return Err(Error::invalid(
            op,
            format!(
                "an input is stored {:?} but the output {:?}; every tensor of an op must have one layout (convert with kernels::convert::convert_to)",
                t.memory_format(),
                out.memory_format()
            ),
        ));
    }
    if let Some(t) = inputs.iter().find(|t| t.precision() != out.precision()) {
        return Err(Error::invalid(
            op,
            format!(
                "an input is {} but the output is {}; every tensor of an op must have one precision (convert with kernels::convert)",
                t.precision(),
                out.precision()
            ),
        ));
    }
    if inputs.iter().any(|t| t.buffer() == out.buffer()) {
        return Err(Error::invalid(
            op,
            "the output shares a buffer with an input; in-place ops are not supported, give the output its own tensor",
        ));
    }
    Ok(())
}

/// Checks that a kernel written for NCHW tensors is given one.
pub(crate) fn check_nchw(op: &'static str, t: &Tensor) -> Result<()> {
    if t.memory_format() != MemoryFormat::Nchw {
        return Err(Error::invalid(
            op,
            format!(
                "this kernel takes NCHW tensors but was given a {:?} one; convert it with kernels::convert::convert_to",
                t.memory_format()
            ),
        ));
    }
    Ok(())
}

/// Checks that the output tensor has the shape the op produces.
pub(crate) fn check_output_shape(
    op: &'static str,
    out: &Tensor,
    expected: [usize; 4],
) -> Result<()> {
    if out.shape() != expected {
        return Err(Error::invalid(
            op,
            format!(
                "the output tensor has shape {:?}; this op produces {expected:?}",
                out.shape()
            ),
        ));
    }
    Ok(())
}
