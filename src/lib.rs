//! # fpn-wgpu
//!
//! A Feature Pyramid Network (FPN) forward pass that runs entirely on the GPU, as WGSL compute
//! shaders dispatched through wgpu: Vulkan, Metal, DX12, GL and software adapters.
//!
//! The building blocks:
//! - [`GpuContext`]: adapter choice, device limits, pipeline cache;
//! - [`Tensor`]: an NCHW float32 storage buffer with its shape;
//! - [`kernels`]: conv2d (with a fused affine / residual / ReLU epilogue), batch norm, max pool,
//!   upsample-and-add, ReLU and add, each with a `prepare` for recording and a function that
//!   runs at once;
//! - [`reference`]: the same ops as plain CPU loops, the oracle of the tests.

pub mod error;
pub mod gpu;
pub mod kernels;
pub mod reference;
pub mod rng;
pub mod tensor;

pub use error::{Error, Result};
pub use gpu::{AdapterSummary, Dispatch, GpuContext};
pub use tensor::Tensor;
