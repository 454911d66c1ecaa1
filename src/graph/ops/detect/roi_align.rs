//! Multi-scale RoIAlign of the two-stage detectors' proposals (see
//! [`crate::kernels::roi_align`]).
//!
//! The op takes the pyramid levels as separate inputs, not the packed map the shared-weight
//! heads read: the box and mask heads pool from the FPN's own outputs P2..P5, so there is no
//! packing launch and no packed copy to keep alive until the heads run, and each level binds
//! as it is (five level bindings, the proposals and the output: 7 storage buffers, within
//! wgpu's default limit of 8 per stage). The scales are not attributes: they are inferred from
//! the levels' heights against the resized picture's, as torchvision's `MultiScaleRoIAlign`
//! infers them on its first call (see [`RoiLevels::infer`]), for every picture shape.

use std::ops::RangeInclusive;

use super::geometry::{picture_size, DetectionGeometry, ResizeRule};
use crate::error::{Error, Result};
use crate::gpu::{Dispatch, GpuContext};
use crate::graph::ops::{GpuOp, GraphOp, PlainOp, Target};
use crate::kernels::roi_align::{self, RoiAlignOptions, RoiLevels, MAX_LEVELS};
use crate::precision::Precision;
use crate::tensor::{MemoryFormat, Tensor};

/// The proposals' features `[N*R, C, S, S]`, torchvision's `MultiScaleRoIAlign(featmap_names,
/// S, sampling_ratio)`; inputs `[level..., proposals, pictures]`: the levels `[N, C, h_l,
/// w_l]` finest first (1 to 5; P2..P5 for torchvision's detectors), the proposal records
/// `[N, 1, R, 6]` in the resized picture's pixels (f32, as the box decoding and NMS write
/// them; an empty slot, score -1, gives zeros), and the pictures, whose shape alone is read
/// (their resized size gives the levels' scales). The output is stored as the levels are.
#[derive(Clone, Debug)]
pub struct MultiScaleRoiAlign {
    /// How the pictures were resized: the resized size is what the scales are inferred
    /// against.
    pub resize: ResizeRule,
    /// Bins per side, sampling ratio and the `LevelMapper`'s canonical box.
    pub options: RoiAlignOptions,
}

impl MultiScaleRoiAlign {
    /// torchvision's detectors' pooling: `output_size` bins per side (7 for boxes, 14 for
    /// masks), sampling ratio 2, canonical scale 224 at level 4.
    pub fn new(resize: ResizeRule, output_size: usize) -> Self {
        MultiScaleRoiAlign {
            resize,
            options: RoiAlignOptions::new(output_size),
        }
    }

    /// The levels' scales and the mapper's range for levels of `shapes` and pictures of
    /// shape `pictures`.
    fn levels(&self, shapes: &[[usize; 4]], pictures: [usize; 4]) -> Result<RoiLevels> {
        let geometry = DetectionGeometry {
            resize: self.resize,
            levels: Vec::new(),
        };
        let image = geometry.resized(picture_size(pictures))?;
        let sizes: Vec<(usize, usize)> = shapes.iter().map(|s| (s[2], s[3])).collect();
        RoiLevels::infer(&sizes, image)
    }
}

impl GraphOp for MultiScaleRoiAlign {
    fn kind(&self) -> &'static str {
        "roi_align"
    }

    fn arity(&self) -> RangeInclusive<usize> {
        3..=MAX_LEVELS + 2
    }

    fn output_shape(&self, inputs: &[[usize; 4]]) -> Result<[usize; 4]> {
        if inputs.len() < 3 {
            return Err(Error::invalid(
                "roi_align",
                format!(
                    "{} inputs; it takes the levels, the proposals and the pictures",
                    inputs.len()
                ),
            ));
        }
        let levels = &inputs[..inputs.len() - 2];
        let proposals = inputs[inputs.len() - 2];
        let pictures = inputs[inputs.len() - 1];
        let [n, c, _, _] = levels[0];
        for (l, shape) in levels.iter().enumerate() {
            if shape[..2] != [n, c] {
                return Err(Error::invalid(
                    "roi_align",
                    format!(
                        "level {l} has shape {shape:?} but level 0 has {:?}; every level must have the same batch and channels",
                        levels[0]
                    ),
                ));
            }
        }
        if pictures[0] != n {
            return Err(Error::invalid(
                "roi_align",
                format!("{} pictures but levels of a batch of {n}", pictures[0]),
            ));
        }
        self.levels(levels, pictures)?;
        roi_align::output_shape(levels[0], proposals, &self.options)
    }

    /// Levels NCHW or channels-last (the kernel's `CHANNELS_LAST` variant), f32 or f16; the
    /// proposals are f32 whatever the activations are.
    fn supports(&self, _layout: MemoryFormat, _precision: Precision) -> bool {
        true
    }

    fn lower(&self, _ctx: &GpuContext, _target: &Target) -> Result<Box<dyn GpuOp>> {
        self.lowered()
    }
}

impl PlainOp for MultiScaleRoiAlign {
    fn prepare(&self, ctx: &GpuContext, inputs: &[&Tensor], out: &Tensor) -> Result<Vec<Dispatch>> {
        if inputs.len() < 3 {
            return Err(Error::invalid(
                "roi_align",
                "it takes the levels, the proposals and the pictures",
            ));
        }
        let (levels, rest) = inputs.split_at(inputs.len() - 2);
        let shapes: Vec<[usize; 4]> = levels.iter().map(|t| t.shape()).collect();
        let spec = self.levels(&shapes, rest[1].shape())?;
        Ok(vec![roi_align::prepare(
            ctx,
            levels,
            rest[0],
            &spec,
            &self.options,
            out,
        )?])
    }
}
