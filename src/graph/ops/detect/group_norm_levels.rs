//! Group norm of a head's hidden layer over the packed levels, each level with its own
//! statistics, zero between the levels (see [`crate::kernels::group_norm`]).

use std::ops::RangeInclusive;
use std::sync::Arc;

use super::geometry::{picture_size, DetectionGeometry};
use crate::error::{Error, Result};
use crate::gpu::{Dispatch, GpuContext};
use crate::graph::ops::{GpuOp, GraphOp, Launch, Target};
use crate::kernels::group_norm::{self, GroupNormWeights};
use crate::precision::Precision;
use crate::tensor::{MemoryFormat, Tensor};

/// `nn.GroupNorm`'s affine parameters in host memory.
#[derive(Clone, Debug)]
pub struct HostGroupNorm {
    /// Scale (gamma) per channel.
    pub weight: Vec<f32>,
    /// Shift (beta) per channel.
    pub bias: Vec<f32>,
}

/// `nn.GroupNorm(groups, C, eps)` of each level of a packed map on its own, then ReLU when
/// `relu`, zero outside the levels, within a zero border of `padding` (rows, columns) on each
/// side; inputs `[x, pictures]` (the pictures' shape alone is read: it places the levels). The
/// passes give it the padding of the convolution that reads it.
#[derive(Clone, Debug)]
pub struct GroupNormLevels {
    /// The levels' packing.
    pub geometry: DetectionGeometry,
    /// Groups the channels are split into (torchvision's heads: 32).
    pub groups: usize,
    /// Added to the variance before the square root (PyTorch's default: 1e-5).
    pub eps: f32,
    /// Whether a ReLU follows (every hidden layer of torchvision's heads).
    pub relu: bool,
    /// The zero border written around the map.
    pub padding: (usize, usize),
    /// Gamma and beta.
    pub weights: Arc<HostGroupNorm>,
}

/// The output shape: the input's with the border, whose channels must be the norm's.
fn output_shape(
    channels: usize,
    groups: usize,
    (pad_y, pad_x): (usize, usize),
    x: [usize; 4],
) -> Result<[usize; 4]> {
    if x[1] != channels {
        return Err(Error::invalid(
            "group_norm_levels",
            format!(
                "the input has {} channels (shape {x:?}) but the group norm has {channels}",
                x[1]
            ),
        ));
    }
    if groups == 0 || !channels.is_multiple_of(groups) {
        return Err(Error::invalid(
            "group_norm_levels",
            format!("{channels} channels do not split into {groups} groups"),
        ));
    }
    let [n, c, h, w] = x;
    Ok([n, c, h + 2 * pad_y, w + 2 * pad_x])
}

impl GraphOp for GroupNormLevels {
    fn kind(&self) -> &'static str {
        "group_norm_levels"
    }

    fn arity(&self) -> RangeInclusive<usize> {
        2..=2
    }

    fn output_shape(&self, inputs: &[[usize; 4]]) -> Result<[usize; 4]> {
        output_shape(
            self.weights.weight.len(),
            self.groups,
            self.padding,
            inputs[0],
        )
    }

    /// NCHW and channels-last (the kernel's `CHANNELS_LAST` variant), f32 and f16.
    fn supports(&self, _layout: MemoryFormat, _precision: Precision) -> bool {
        true
    }

    fn lower(&self, ctx: &GpuContext, _target: &Target) -> Result<Box<dyn GpuOp>> {
        let w = &self.weights;
        Ok(Box::new(GpuGroupNormLevels {
            geometry: self.geometry.clone(),
            relu: self.relu,
            padding: self.padding,
            weights: GroupNormWeights::new(ctx, &w.weight, &w.bias, self.groups, self.eps)?,
        }))
    }
}

/// The group norm with its affine parameters on the GPU.
struct GpuGroupNormLevels {
    geometry: DetectionGeometry,
    relu: bool,
    padding: (usize, usize),
    weights: GroupNormWeights,
}

impl GpuOp for GpuGroupNormLevels {
    fn output_shape(&self, inputs: &[[usize; 4]]) -> Result<[usize; 4]> {
        output_shape(
            self.weights.channels(),
            self.weights.groups(),
            self.padding,
            inputs[0],
        )
    }

    fn prepare(
        &self,
        ctx: &GpuContext,
        inputs: &[&Tensor],
        out: &Tensor,
        _launch: Launch<'_>,
    ) -> Result<Vec<Dispatch>> {
        let (regions, _) = self.geometry.packed(picture_size(inputs[1].shape()))?;
        group_norm::prepare(
            ctx,
            inputs[0],
            &regions,
            &self.weights,
            self.relu,
            self.padding,
            out,
        )
    }

    fn weight_bytes(&self) -> u64 {
        self.weights.byte_size()
    }
}
