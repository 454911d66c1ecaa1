//! Detection records compacted across a batch (see [`crate::kernels::compact_records`]): the
//! list of kept detections that Mask R-CNN's mask branch runs on.

use std::ops::RangeInclusive;

use crate::error::Result;
use crate::gpu::{Dispatch, GpuContext};
use crate::graph::ops::{GpuOp, GraphOp, PlainOp, Target};
use crate::kernels::compact_records::{self, CompactOptions};
use crate::precision::Precision;
use crate::tensor::{MemoryFormat, Tensor};

/// f32 records `[N, 1, D, 6]` with every picture's non-empty records first, in picture order
/// (picture `n`'s `K_n` from row `K_0 + ... + K_{n-1}`), the rest empty (score -1); input: the
/// records `[N, 1, D, 6]` as NMS writes them. Word 5 keeps the label, or holds the record's
/// row in the input with [`CompactOptions::source_row`] (for [`super::MultiScaleRoiAlign`] and
/// [`super::PasteMasks`] with `rows_in_record`). A graph sizes the launches after it by its live rows with
/// [`Graph::set_rows`](crate::graph::Graph::set_rows).
#[derive(Clone, Copy, Debug, Default)]
pub struct CompactRecords(pub CompactOptions);

impl GraphOp for CompactRecords {
    fn kind(&self) -> &'static str {
        "compact_records"
    }

    fn arity(&self) -> RangeInclusive<usize> {
        1..=1
    }

    fn output_shape(&self, inputs: &[[usize; 4]]) -> Result<[usize; 4]> {
        compact_records::output_shape(inputs[0])
    }

    fn supports(&self, _layout: MemoryFormat, _precision: Precision) -> bool {
        true
    }

    fn output_precision(&self, _graph: Precision) -> Precision {
        Precision::F32
    }

    fn output_layout(&self, _graph: MemoryFormat) -> MemoryFormat {
        MemoryFormat::Nchw
    }

    fn lower(&self, _ctx: &GpuContext, _target: &Target) -> Result<Box<dyn GpuOp>> {
        self.lowered()
    }
}

impl PlainOp for CompactRecords {
    fn prepare(&self, ctx: &GpuContext, inputs: &[&Tensor], out: &Tensor) -> Result<Vec<Dispatch>> {
        Ok(vec![compact_records::prepare(ctx, inputs[0], out, self.0)?])
    }
}
