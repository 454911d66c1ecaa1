//! The ops a [`Graph`](super::Graph) is made of: one type per op, each in a file of its own
//! that holds everything about it — its attributes and host weights, how many inputs it takes,
//! its output shape, the layouts and precisions it has kernels for, and its lowering: the
//! weights it uploads and how its launches are prepared.
//!
//! # Why a trait and not one enum
//! Nodes hold their op as an `Arc<dyn `[`GraphOp`]`>`. The set of ops is open: a detector adds
//! a dozen (group norm, RoIAlign, NMS, ...), and with a trait each costs one new file here and
//! one `mod` line, where an enum would need an arm in every match of shape inference, lowering
//! and the executor. The few places that must know a particular op — the passes that rewrite
//! convolutions, the planner that configures them — ask for it by type
//! (`node.op::<Conv2d>()`, through `dyn GraphOp`'s `downcast`), as tract's optimisers do.
//!
//! # Adding an op
//! 1. A file here with the op's type (attributes, host weights) implementing [`GraphOp`]
//!    (with [`GraphOp::output_precision`] and [`GraphOp::output_layout`] where its output is a
//!    record rather than a map of the graph's storage), and
//!    its lowered form implementing [`GpuOp`] (the launches, through the kernel in
//!    `src/kernels/` that computes it); an op without weights implements [`PlainOp`] instead
//!    and is its own lowered form.
//! 2. A `mod` line and a `pub use` below.
//! 3. The kernel itself: `shaders/NAME.wgsl`, `src/kernels/NAME.rs`, its CPU twin in
//!    `src/reference.rs` and a randomized test against it in `tests/ops.rs`.

mod add;
mod avg_pool2d;
mod batch_norm;
mod conv2d;
mod conv_transpose2d;
pub mod detect;
mod input;
mod linear;
mod max_pool2d;
mod pad2d;
mod relu;
mod softmax;
mod upsample_add;

use std::any::Any;
use std::fmt::Debug;
use std::ops::RangeInclusive;

pub use add::Add;
pub use avg_pool2d::AvgPool2d;
pub use batch_norm::{BatchNorm, HostBatchNorm};
pub use conv2d::{Conv2d, GpuConv2d, HostConv};
pub use conv_transpose2d::{ConvTranspose2d, HostConvTranspose};
pub use input::Input;
pub use linear::{HostLinear, Linear};
pub use max_pool2d::MaxPool2d;
pub use pad2d::Pad2d;
pub use relu::Relu;
pub use softmax::Softmax;
pub use upsample_add::UpsampleAdd;

// The option types the ops carry, so that models build graphs from `graph::ops` alone.
pub use crate::kernels::avg_pool2d::AvgPool2dOptions;
pub use crate::kernels::conv2d::{Conv2dOptions, ConvChoice, ResidualMode};
pub use crate::kernels::conv_transpose2d::ConvTranspose2dOptions;
pub use crate::kernels::max_pool2d::MaxPool2dOptions;
pub use crate::kernels::upsample_add::UpsampleMode;

use crate::error::Result;
use crate::gpu::{Dispatch, GpuContext};
use crate::precision::Precision;
use crate::tensor::{MemoryFormat, Tensor};

/// What an op is, independent of any device: the graph's view of it.
pub trait GraphOp: Debug + Send + Sync + AsAny {
    /// A short name for reports and errors (`conv2d`).
    fn kind(&self) -> &'static str;

    /// How many inputs the op takes.
    fn arity(&self) -> RangeInclusive<usize>;

    /// The output shape for inputs of `inputs` shapes (as many as [`GraphOp::arity`] allows),
    /// or an error saying which input does not fit.
    fn output_shape(&self, inputs: &[[usize; 4]]) -> Result<[usize; 4]>;

    /// Whether the op has kernels for values stored in `layout` and `precision`.
    fn supports(&self, layout: MemoryFormat, precision: Precision) -> bool;

    /// How the op's output is stored in a graph whose values are stored in `graph`: the
    /// graph's own precision, but for ops whose results need f32 whatever the activations are
    /// stored in (scores, boxes and indices of the detectors' post-processing).
    fn output_precision(&self, graph: Precision) -> Precision {
        graph
    }

    /// How the op's output is laid out in a graph whose values are stored in `graph`: the
    /// graph's own layout, but for ops whose outputs are records rather than maps (the
    /// detectors' selections, boxes and NMS rows), which are NCHW whatever the activations
    /// are, so that the ops reading them and the caller see one record layout.
    fn output_layout(&self, graph: MemoryFormat) -> MemoryFormat {
        graph
    }

    /// Uploads the op's weights for `target` and returns the op as the executor runs it (an
    /// op without weights returns itself: see [`PlainOp`]).
    fn lower(&self, ctx: &GpuContext, target: &Target) -> Result<Box<dyn GpuOp>>;
}

/// Any `'static` type as [`Any`]: what `dyn GraphOp`'s `downcast` needs, for every op
/// without a method of its own.
pub trait AsAny: Any {
    /// `self` as [`Any`].
    fn as_any(&self) -> &dyn Any;
}

impl<T: Any> AsAny for T {
    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl dyn GraphOp {
    /// The op as its concrete type, if it is a `T`.
    pub fn downcast<T: GraphOp>(&self) -> Option<&T> {
        AsAny::as_any(self).downcast_ref()
    }

    /// Whether the op is a `T`.
    pub fn is<T: GraphOp>(&self) -> bool {
        AsAny::as_any(self).is::<T>()
    }
}

/// How a graph is lowered onto a device: the storage of its values and its kernel families.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target {
    /// How weights and values are stored.
    pub precision: Precision,
    /// How the values are stored: channels-last where the convolutions run on cooperative
    /// matrices (or where the caller asked for it), NCHW otherwise. Ops whose outputs are
    /// records store those as [`GraphOp::output_layout`] says.
    pub layout: MemoryFormat,
    /// Whether the channels-last f16 convolutions run on cooperative matrices (the device has
    /// them and they passed their check there); the portable direct kernel otherwise.
    pub cooperative: bool,
    /// Winograd F(2x2, 3x3) for the stride-1 3x3 convolutions that allow it.
    pub winograd: bool,
}

/// What a launch is prepared with besides its tensors: the configuration the planner chose
/// for ops that have several (the convolutions), and the plan's shared scratch buffer.
#[derive(Clone, Copy, Debug, Default)]
pub struct Launch<'a> {
    /// The kernel configuration; `None`: the op's preset for the device.
    pub choice: Option<ConvChoice>,
    /// Scratch for split-K partial sums, sized by the planner for every choice it may make.
    pub scratch: Option<&'a wgpu::Buffer>,
}

/// An op with its weights on the GPU, as the executor plans and records it; `Send` and `Sync`
/// wherever wgpu's objects are (everywhere but in a browser).
pub trait GpuOp: wgpu::WasmNotSendSync {
    /// As [`GraphOp::output_shape`]: the executor keeps no host weights, so its lowered ops
    /// answer for their shapes.
    fn output_shape(&self, inputs: &[[usize; 4]]) -> Result<[usize; 4]>;

    /// The launches computing `out` from `inputs` (empty for the graph input).
    fn prepare(
        &self,
        ctx: &GpuContext,
        inputs: &[&Tensor],
        out: &Tensor,
        launch: Launch<'_>,
    ) -> Result<Vec<Dispatch>>;

    /// Bytes of weights on the GPU.
    fn weight_bytes(&self) -> u64 {
        0
    }

    /// Floating-point operations of one launch writing `out` (2 per multiply-add), counted for
    /// the convolutions, which do nearly all of the work; 0 for the other ops.
    fn flops(&self, _out: [usize; 4]) -> u64 {
        0
    }

    /// The op as a convolution, whose kernel configuration the planner chooses and tunes.
    fn as_conv(&self) -> Option<&GpuConv2d> {
        None
    }
}

/// An op without weights, which runs as it is: its lowered form is a copy of itself, and its
/// launches need only its attributes.
pub trait PlainOp: GraphOp + Clone {
    /// The launches computing `out` from `inputs`.
    fn prepare(&self, ctx: &GpuContext, inputs: &[&Tensor], out: &Tensor) -> Result<Vec<Dispatch>>;

    /// The lowered op: a copy of this one. What [`GraphOp::lower`] returns for a plain op.
    fn lowered(&self) -> Result<Box<dyn GpuOp>> {
        Ok(Box::new(self.clone()))
    }
}

impl<T: PlainOp> GpuOp for T {
    fn output_shape(&self, inputs: &[[usize; 4]]) -> Result<[usize; 4]> {
        GraphOp::output_shape(self, inputs)
    }

    fn prepare(
        &self,
        ctx: &GpuContext,
        inputs: &[&Tensor],
        out: &Tensor,
        _launch: Launch<'_>,
    ) -> Result<Vec<Dispatch>> {
        PlainOp::prepare(self, ctx, inputs, out)
    }
}
