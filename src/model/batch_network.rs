//! A network as a pipeline over many pictures sees it (`extract`): a batch in, named tensors
//! out, each with the batch as its first dimension, on one GPU context. The FPN's outputs are
//! its levels; a detector's, its `detections` rows.

use crate::error::Result;
use crate::gpu::GpuContext;
use crate::model::{Detector, Fpn};
use crate::tensor::Tensor;

/// The name of a [`Detector`]'s one output.
pub const DETECTIONS: &str = "detections";

/// A network that maps an `[N, C, H, W]` batch to named `[N, ...]` tensors.
pub trait BatchNetwork {
    /// The context the network runs on, which inputs are uploaded to.
    fn context(&self) -> &GpuContext;

    /// Submits a forward on `input` and returns its outputs, still on the GPU, by name, in an
    /// order that does not change between forwards; the first dimension of each is `N`.
    fn forward_batch(&self, input: &Tensor) -> Result<Vec<(String, Tensor)>>;
}

impl BatchNetwork for Fpn {
    fn context(&self) -> &GpuContext {
        self.executor().context()
    }

    /// The levels, finest first (`p2`.. or `p3`..), `[N, 256, h, w]`.
    fn forward_batch(&self, input: &Tensor) -> Result<Vec<(String, Tensor)>> {
        Ok(self.forward(input)?.levels)
    }
}

impl BatchNetwork for Detector {
    fn context(&self) -> &GpuContext {
        self.executor().context()
    }

    /// `detections`, `[N, 1, D, 6]` ([`Detector::forward`]); the input is RGB in 0..1.
    fn forward_batch(&self, input: &Tensor) -> Result<Vec<(String, Tensor)>> {
        Ok(vec![(DETECTIONS.to_string(), self.forward(input)?)])
    }
}
