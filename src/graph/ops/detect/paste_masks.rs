//! Mask R-CNN's masks pasted into the pictures, torchvision's `paste_masks_in_image` (see
//! [`crate::kernels::masks`]).

use std::ops::RangeInclusive;

use super::geometry::picture_size;
use crate::error::{Error, Result};
use crate::gpu::{Dispatch, GpuContext};
use crate::graph::ops::{GpuOp, GraphOp, PlainOp, Target};
use crate::kernels::masks;
use crate::precision::Precision;
use crate::tensor::{MemoryFormat, Tensor};

/// The masks in the pictures `[N*D, 1, H, W]` (f32 probabilities); inputs `[masks, detections,
/// pictures]`: the selected probabilities `[N*D, 1, M, M]` (f32, as [`super::SelectMasks`]
/// writes them), the detection records `[N, 1, D, 6]` with boxes in the pictures' pixels, and
/// the pictures `[N, c, H, W]`, whose shape alone is read. Empty slots give zeros (with
/// `rows_in_record`, they write nothing: their rows are no detection's).
///
/// The output is large (100 detections of an 800x1333 picture: 427 MB); a device that cannot
/// bind it refuses the launch with an error naming its limit.
#[derive(Clone, Copy, Debug, Default)]
pub struct PasteMasks {
    /// Whether word 5 of each detection record is the output row of its mask (records
    /// compacted by [`super::CompactRecords`] with `source_row`: each mask goes back to its
    /// detection's slot) rather than its label, mask `k` then going to row `k`.
    pub rows_in_record: bool,
}

impl GraphOp for PasteMasks {
    fn kind(&self) -> &'static str {
        "paste_masks"
    }

    fn arity(&self) -> RangeInclusive<usize> {
        3..=3
    }

    fn output_shape(&self, inputs: &[[usize; 4]]) -> Result<[usize; 4]> {
        let (detections, pictures) = (inputs[1], inputs[2]);
        if pictures[0] != detections[0] {
            return Err(Error::invalid(
                "paste_masks",
                format!(
                    "{} pictures but detections {detections:?} of {} images; give the pictures the detections were made on",
                    pictures[0], detections[0]
                ),
            ));
        }
        masks::paste_output_shape(inputs[0], detections, picture_size(pictures))
    }

    /// NCHW; masks and output are f32 whatever the activations are.
    fn supports(&self, layout: MemoryFormat, _precision: Precision) -> bool {
        layout == MemoryFormat::Nchw
    }

    fn output_precision(&self, _graph: Precision) -> Precision {
        Precision::F32
    }

    fn lower(&self, _ctx: &GpuContext, _target: &Target) -> Result<Box<dyn GpuOp>> {
        self.lowered()
    }
}

impl PlainOp for PasteMasks {
    fn prepare(&self, ctx: &GpuContext, inputs: &[&Tensor], out: &Tensor) -> Result<Vec<Dispatch>> {
        let shapes: Vec<[usize; 4]> = inputs.iter().map(|t| t.shape()).collect();
        let shape = GraphOp::output_shape(self, &shapes)?;
        if out.shape() != shape {
            return Err(Error::invalid(
                "paste_masks",
                format!(
                    "the output tensor has shape {:?}; the pictures {:?} take {shape:?}",
                    out.shape(),
                    shapes[2]
                ),
            ));
        }
        Ok(vec![masks::prepare_paste(
            ctx,
            inputs[0],
            inputs[1],
            out,
            self.rows_in_record,
        )?])
    }
}
