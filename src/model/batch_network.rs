//! A network as a pipeline over many pictures sees it (`extract`): a batch in, named tensors
//! out, each with the batch as its first dimension, on one GPU context. The FPN's outputs are
//! its levels; a detector's, its `detections` rows.

use crate::error::Result;
use crate::gpu::GpuContext;
use crate::model::{Detections, Detector, Fpn};
use crate::tensor::Tensor;
use crate::tensor_file::HostTensor;

/// The name of a [`Detector`]'s detection rows.
pub const DETECTIONS: &str = "detections";

/// The name of a Mask R-CNN [`Detector`]'s masks pasted into the pictures.
pub const MASKS: &str = "masks";

/// A network that maps an `[N, C, H, W]` batch to named `[N, ...]` tensors.
pub trait BatchNetwork {
    /// The context the network runs on, which inputs are uploaded to.
    fn context(&self) -> &GpuContext;

    /// Submits a forward on `input` and returns its outputs, still on the GPU, by name, in an
    /// order that does not change between forwards; the first dimension of each is `N`.
    fn forward_batch(&self, input: &Tensor) -> Result<Vec<(String, Tensor)>>;

    /// Whether output `name` is read back in part, after the others: of each image, only the
    /// leading channels [`BatchNetwork::channels_needed`] says. None is, by default.
    fn read_in_part(&self, _name: &str) -> bool {
        false
    }

    /// How many leading channels of one image's output `name` (one that is
    /// [read in part](BatchNetwork::read_in_part)) the host needs, from that image's other
    /// outputs, already read back (each `[1, ...]`). All of them, by default.
    fn channels_needed(&self, _name: &str, _others: &[(String, HostTensor)]) -> Result<usize> {
        Ok(usize::MAX)
    }
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

    /// `detections`, `[N, 1, D, 6]` ([`Detector::forward`]), and for Mask R-CNN `masks`
    /// seen as `[N, D, H, W]` (the `[N D, 1, H, W]` of [`Detector::forward_outputs`], one
    /// picture's D slots per batch entry: channel `k` is slot `k`'s mask), read back in part
    /// (a picture's first K channels, K its detections); the input is RGB in 0..1.
    fn forward_batch(&self, input: &Tensor) -> Result<Vec<(String, Tensor)>> {
        let out = self.forward_outputs(input)?;
        let [n, _, d, _] = out.detections.shape();
        let mut outputs = vec![(DETECTIONS.to_string(), out.detections)];
        if let Some(masks) = out.masks {
            let [_, _, h, w] = masks.shape();
            outputs.push((MASKS.to_string(), masks.reshape([n, d, h, w])?));
        }
        Ok(outputs)
    }

    /// The masks: a picture's detections fill its first slots, and only their masks are read.
    fn read_in_part(&self, name: &str) -> bool {
        name == MASKS
    }

    /// The picture's detections, from its rows: its masks are its first K slots
    /// (`Detections::mask_slots`).
    fn channels_needed(&self, name: &str, others: &[(String, HostTensor)]) -> Result<usize> {
        if name != MASKS {
            return Ok(usize::MAX);
        }
        let found = Detections::from_outputs(others)?;
        Ok(found.first().map_or(0, Detections::len))
    }
}
