//! Compaction of detection records across a batch (`shaders/compact_records.wgsl`): each
//! picture's non-empty records, in order, moved to the first rows, the rest left empty. What
//! lets Mask R-CNN's mask branch run on the kept detections alone: its launches are sized by
//! the count of live rows ([`crate::kernels::indirect_grid`]) instead of by `N * D` slots,
//! as torchvision's mask branch runs on its list of kept detections.
//!
//! The records are f32 `[N, 1, D, 6]` (x1, y1, x2, y2, score, the label's u32 bits; a score
//! that is not >= 0 marks an empty slot), as NMS writes them. Picture `n`'s `K_n` kept records
//! land at rows `K_0 + ... + K_{n-1}` onwards; with [`CompactOptions::source_row`] word 5 of
//! each becomes the record's row in the input (`n * D + j` for slot `j`), which says its
//! picture (as torchvision's `rois` `[K, 5]` carry theirs) to the pooling that reads the
//! pictures' levels, and where its mask goes back to in `[N D, ...]` slots to the pasting.

use crate::error::{Error, Result};
use crate::gpu::{Dispatch, GpuContext};
use crate::kernels::box_decode::check_records;
use crate::kernels::{check_nchw, check_output_shape, pipeline, ShaderSource};
use crate::precision::Precision;
use crate::tensor::{check_shape, Tensor};

const OP: &str = "compact_records";

/// The WGSL source.
pub const SHADER: ShaderSource = ShaderSource {
    name: "compact_records.wgsl",
    parts: &["compact_records.wgsl"],
    source: include_str!("../../shaders/compact_records.wgsl"),
    params: &[("CompactParams", std::mem::size_of::<CompactParams>())],
    enables: "",
    precisions: &[Precision::F32],
};

/// Mirrors `CompactParams` in the WGSL.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
struct CompactParams {
    pictures: u32,
    slots: u32,
    source_row: u32,
    _pad: u32,
}

/// What word 5 of a compacted record holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CompactOptions {
    /// The record's row in the input records, `n * D + j` for picture `n`'s slot `j` (as u32
    /// bits), instead of the label.
    pub source_row: bool,
}

/// Checks `records` is a `[N, 1, D, 6]` shape and returns it: the output's shape too.
pub fn output_shape(records: [usize; 4]) -> Result<[usize; 4]> {
    check_records(OP, records).map(|_| records)
}

/// Builds the launch compacting `records` into `out` (both f32 `[N, 1, D, 6]`).
pub fn prepare(
    ctx: &GpuContext,
    records: &Tensor,
    out: &Tensor,
    opts: CompactOptions,
) -> Result<Dispatch> {
    let shape = output_shape(records.shape())?;
    check_nchw(OP, records)?;
    check_shape(ctx, OP, "the records", shape)?;
    check_output_shape(OP, out, shape)?;
    if records.precision() != Precision::F32 || out.precision() != Precision::F32 {
        return Err(Error::invalid(
            OP,
            "the records and the output must be float32 (word 5 holds u32 bits)",
        ));
    }
    if records.buffer() == out.buffer() {
        return Err(Error::invalid(
            OP,
            "the output shares a buffer with the records; give the output its own tensor",
        ));
    }
    let [n, _, d, _] = shape;
    let params = CompactParams {
        pictures: n as u32,
        slots: d as u32,
        source_row: opts.source_row as u32,
        _pad: 0,
    };
    let pipeline = pipeline(ctx, &SHADER, Precision::F32, OP, &[])?;
    let uniform = ctx.uniform(&params);
    let bind_group = ctx.bind_group(
        OP,
        &pipeline,
        &[
            (0, records.binding()),
            (1, out.binding()),
            (2, uniform.binding()),
        ],
    );
    Ok(Dispatch::new(OP, pipeline, bind_group, [1, 1, 1]))
}

/// Compacts `records` now and returns the compacted records.
pub fn compact_records(ctx: &GpuContext, records: &Tensor, opts: CompactOptions) -> Result<Tensor> {
    let out = Tensor::empty(ctx, output_shape(records.shape())?)?;
    ctx.submit(&[&prepare(ctx, records, &out, opts)?])?;
    Ok(out)
}
