//! The pyramid levels a detection head runs on, packed into one map (see
//! [`crate::kernels::levels`]).

use std::ops::RangeInclusive;

use super::geometry::{picture_size, DetectionGeometry};
use crate::error::{Error, Result};
use crate::gpu::{Dispatch, GpuContext};
use crate::graph::ops::{GpuOp, GraphOp, PlainOp, Target};
use crate::kernels::levels::{self, MAX_LEVELS};
use crate::precision::Precision;
use crate::tensor::{MemoryFormat, Tensor};

/// The levels packed into one map; inputs `[level..., pictures]`: the levels finest first (as
/// many as the geometry has), then the pictures, whose shape alone is read (to check that the
/// levels have the sizes every other detection op assumes).
#[derive(Clone, Debug)]
pub struct StackLevels {
    /// The levels' sizes and packing.
    pub geometry: DetectionGeometry,
}

impl GraphOp for StackLevels {
    fn kind(&self) -> &'static str {
        "stack_levels"
    }

    fn arity(&self) -> RangeInclusive<usize> {
        let n = self.geometry.levels.len() + 1;
        n..=n
    }

    fn output_shape(&self, inputs: &[[usize; 4]]) -> Result<[usize; 4]> {
        let (levels, picture) = inputs.split_at(inputs.len() - 1);
        if levels.len() > MAX_LEVELS {
            return Err(Error::invalid(
                "stack_levels",
                format!(
                    "{} levels; at most {MAX_LEVELS} can be packed",
                    levels.len()
                ),
            ));
        }
        let size = picture_size(picture[0]);
        let expected = self.geometry.level_sizes(size)?;
        let [n, c, _, _] = levels[0];
        for (l, (shape, want)) in levels.iter().zip(&expected).enumerate() {
            if shape[..2] != [n, c] || (shape[2], shape[3]) != *want {
                return Err(Error::invalid(
                    "stack_levels",
                    format!(
                        "level {l} has shape {shape:?}; a {}x{} picture padded as the detector \
                         does gives [{n}, {c}, {}, {}] there",
                        size.0, size.1, want.0, want.1
                    ),
                ));
            }
        }
        let (_, (h, w)) = self.geometry.packed(size)?;
        Ok([n, c, h, w])
    }

    /// NCHW and channels-last (the kernel's `CHANNELS_LAST` variant), f32 and f16.
    fn supports(&self, _layout: MemoryFormat, _precision: Precision) -> bool {
        true
    }

    fn lower(&self, _ctx: &GpuContext, _target: &Target) -> Result<Box<dyn GpuOp>> {
        self.lowered()
    }
}

impl PlainOp for StackLevels {
    fn prepare(&self, ctx: &GpuContext, inputs: &[&Tensor], out: &Tensor) -> Result<Vec<Dispatch>> {
        let levels = &inputs[..inputs.len() - 1];
        Ok(vec![levels::prepare_stack(ctx, levels, out)?])
    }
}
