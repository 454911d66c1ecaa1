//! # fpn-wgpu
//!
//! A Feature Pyramid Network (FPN) forward pass that runs entirely on the GPU, as WGSL compute
//! shaders dispatched through wgpu: Vulkan, Metal, DX12, GL and software adapters.
//!
//! The building blocks:
//! - [`GpuContext`]: adapter choice, device limits, pipeline cache;
//! - [`Tensor`]: an NCHW storage buffer with its shape, float32 or (see [`Precision`]) float16;
//! - [`kernels`]: conv2d (with a fused affine / residual / ReLU epilogue), batch norm, max pool,
//!   upsample-and-add, ReLU and add, and the detectors' (resize, packed levels, top-k, box
//!   decoding, batched NMS), each with a `prepare` for recording (and most with a function
//!   that runs at once);
//! - [`reference`](mod@reference): the same ops as plain CPU loops, the oracle of the tests;
//! - [`graph`]: the model as a graph of ops, its rewrite passes, memory plan and executor;
//! - [`model`]: the ResNet backbone and the FPN under the names of kuangliu's `fpn.py`,
//!   torchvision's `resnet_fpn_backbone` (and timm's `features_only` ResNets), detectron2 and
//!   mmdetection, whole detection checkpoints included, reading PyTorch `state_dict` names
//!   through [`weights`]; [`Checkpoint`] recognises a file's layout;
//!   [`Detector`] runs torchvision's RetinaNet from the pictures to boxes, scores and labels,
//!   post-processing included, in one submit;
//! - [`image_input`], [`visualize`] and [`detection_output`]: pictures in (decoded,
//!   ImageNet-normalised for the FPN, 0..1 for the detectors) and out (per-level energy maps, an
//!   overview; COCO results and boxes drawn);
//! - `image_set` and `extract`: datasets of pictures (folders, lists, shards) and the pipelined
//!   loop that runs a network over them, an FPN or a detector (not on wasm32).
//!
//! ```no_run
//! use fpn_wgpu::{Fpn, GpuContext, Tensor};
//! # fn main() -> fpn_wgpu::Result<()> {
//! let ctx = GpuContext::new()?;
//! let fpn = Fpn::from_safetensors(&ctx, "fpn.safetensors".as_ref())?;
//! let image = Tensor::from_slice(&ctx, [1, 3, 224, 224], &vec![0.0; 3 * 224 * 224])?;
//! let pyramid = fpn.forward(&image)?;
//! let p2: Vec<f32> = pyramid.get("p2").unwrap().download(&ctx)?;
//! # let _ = p2; Ok(()) }
//! ```

#![warn(missing_docs)]

pub mod atomic_file;
pub mod detection_output;
pub mod error;
#[cfg(not(target_arch = "wasm32"))]
pub mod extract;
pub mod gpu;
pub mod graph;
pub mod image_input;
#[cfg(not(target_arch = "wasm32"))]
pub mod image_set;
pub mod jpeg;
pub mod kernels;
pub mod model;
mod pickle;
pub mod precision;
#[cfg(not(target_arch = "wasm32"))]
pub mod readback;
pub mod reference;
pub mod rng;
mod signal;
pub mod tensor;
pub mod tensor_file;
mod torch_file;
pub mod visualize;
pub mod weights;

pub use error::{Error, Result};
pub use gpu::{AdapterSummary, Dispatch, GpuContext};
pub use graph::executor::LayoutChoice;
pub use graph::tune::Tuning;
pub use model::{
    Checkpoint, Detections, Detector, DetectorOptions, Fpn, FpnConfig, FpnOptions, Fusion, Layout,
    Masks, Pyramid,
};
pub use precision::Precision;
pub use tensor::Tensor;
