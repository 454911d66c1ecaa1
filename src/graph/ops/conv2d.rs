//! 2-D convolution with its fused epilogue, `relu?(conv(x) * scale + shift + residual?)`: the
//! op the network spends nearly all its time in. Which kernel runs it, with which block and
//! split, is decided by the convolution strategy in `kernels::conv2d::strategy`; this file
//! carries the op's attributes, its shape rule, and what the planner asks of it (the preset,
//! the candidates to tune, their cache key, scratch and read-ahead).

use std::ops::RangeInclusive;
use std::sync::Arc;

use super::{Conv2dOptions, ConvChoice, GpuOp, GraphOp, Launch, Target};
use crate::error::Result;
use crate::gpu::{Dispatch, GpuContext};
use crate::kernels::conv2d::strategy::{self, ConvProblem, DeviceProfile};
use crate::kernels::conv2d::{self, Conv2dWeights};
use crate::precision::Precision;
use crate::tensor::{numel, MemoryFormat, Tensor};

/// A convolution's weights in host memory: OIHW kernel, optional bias, optional per-channel
/// affine applied after the bias (where a batch norm is folded).
#[derive(Clone, Debug)]
pub struct HostConv {
    /// [out channels, in channels / groups, kernel height, kernel width] (the groups are in the
    /// op's [`Conv2dOptions`]).
    pub shape: [usize; 4],
    /// The kernel, OIHW row-major.
    pub weight: Vec<f32>,
    /// One bias per output channel, added before the affine.
    pub bias: Option<Vec<f32>>,
    /// Per output channel (scale, shift), applied after the bias: a folded batch norm.
    pub affine: Option<(Vec<f32>, Vec<f32>)>,
}

/// `relu?(conv(x) * scale + shift + residual?)`; inputs `[x]` or `[x, residual]`, the residual
/// added as `opts.residual` says (as it is, or upsampled).
#[derive(Clone, Debug)]
pub struct Conv2d {
    /// Kernel, bias and epilogue affine.
    pub weights: Arc<HostConv>,
    /// Stride, padding, groups, ReLU and residual mode.
    pub opts: Conv2dOptions,
}

/// The shape a convolution by weights of `w_shape` writes for `inputs` (`[x]` or
/// `[x, residual]`), the residual checked against it.
fn output_shape(
    w_shape: [usize; 4],
    opts: &Conv2dOptions,
    inputs: &[[usize; 4]],
) -> Result<[usize; 4]> {
    if let Some(&r) = inputs.get(1) {
        let out = conv2d::conv_shape(inputs[0], w_shape, opts)?;
        conv2d::check_residual_shape(out, r, opts.residual)?;
    }
    conv2d::output_shape(inputs[0], w_shape, opts)
}

impl GraphOp for Conv2d {
    fn kind(&self) -> &'static str {
        "conv2d"
    }

    fn arity(&self) -> RangeInclusive<usize> {
        1..=2
    }

    fn output_shape(&self, inputs: &[[usize; 4]]) -> Result<[usize; 4]> {
        output_shape(self.weights.shape, &self.opts, inputs)
    }

    /// Every layout and precision for NCHW. Channels-last values are read by the
    /// cooperative-matrix kernels (or the portable direct kernel where they do not run), which
    /// take padded inputs: a dense convolution must have had its padding made explicit; a
    /// grouped one gets it made explicit when it is made dense.
    fn supports(&self, layout: MemoryFormat, _precision: Precision) -> bool {
        layout == MemoryFormat::Nchw || self.opts.padding == (0, 0) || self.opts.groups > 1
    }

    fn lower(&self, ctx: &GpuContext, target: &Target) -> Result<Box<dyn GpuOp>> {
        let w = &self.weights;
        let affine = w.affine.as_ref().map(|(s, t)| (s.as_slice(), t.as_slice()));
        let problem = ConvProblem::layer(w.shape, &self.opts, target.precision, target.layout)
            .with_winograd(target.winograd)
            .with_cooperative(target.cooperative);
        let weights = Conv2dWeights::with_precision(
            ctx,
            w.shape,
            &w.weight,
            w.bias.as_deref(),
            affine,
            strategy::weight_layout(&problem),
            target.precision,
        )?;
        Ok(Box::new(GpuConv2d {
            weights,
            opts: self.opts,
            problem,
        }))
    }
}

/// A convolution with its weights on the GPU, laid out for the kernel family its target runs.
pub struct GpuConv2d {
    weights: Conv2dWeights,
    opts: Conv2dOptions,
    /// The layer as the strategy sees it, before its input is known.
    problem: ConvProblem,
}

impl GpuConv2d {
    /// The problem for `inputs` (the shapes of `[x]` or `[x, residual]`).
    pub fn problem(&self, inputs: &[[usize; 4]]) -> ConvProblem {
        self.problem.with_input(inputs[0], inputs.len() > 1)
    }

    /// The configuration the strategy presets for `inputs` on `profile`'s device.
    pub fn preset(&self, profile: &DeviceProfile, inputs: &[[usize; 4]]) -> Result<ConvChoice> {
        strategy::choose(&self.problem(inputs), profile)
    }

    /// The configurations worth timing (the preset first).
    pub fn candidates(
        &self,
        profile: &DeviceProfile,
        inputs: &[[usize; 4]],
    ) -> Result<Vec<ConvChoice>> {
        strategy::candidates(&self.problem(inputs), profile)
    }

    /// The tuning cache's key for `inputs` on `profile`'s device.
    pub fn tune_key(&self, profile: &DeviceProfile, inputs: &[[usize; 4]]) -> String {
        strategy::tune_key(&self.problem(inputs), profile)
    }

    /// Bytes of split-K partial sums `choice` needs for `inputs`.
    pub fn scratch_bytes(
        &self,
        profile: &DeviceProfile,
        inputs: &[[usize; 4]],
        choice: ConvChoice,
    ) -> Result<u64> {
        choice.scratch_bytes(&self.problem(inputs), profile)
    }

    /// Bytes `choice` reads from the start of the input: the cooperative-matrix kernels' last
    /// tiles read past a value's end, which the planner leaves room for.
    pub fn bytes_read(
        &self,
        profile: &DeviceProfile,
        inputs: &[[usize; 4]],
        choice: ConvChoice,
    ) -> u64 {
        choice.input_bytes_read(&self.problem(inputs), profile)
    }
}

impl GpuOp for GpuConv2d {
    fn output_shape(&self, inputs: &[[usize; 4]]) -> Result<[usize; 4]> {
        output_shape(self.weights.shape(), &self.opts, inputs)
    }

    fn prepare(
        &self,
        ctx: &GpuContext,
        inputs: &[&Tensor],
        out: &Tensor,
        launch: Launch<'_>,
    ) -> Result<Vec<Dispatch>> {
        conv2d::prepare_with(
            ctx,
            inputs[0],
            &self.weights,
            inputs.get(1).copied(),
            out,
            &self.opts,
            launch.choice,
            launch.scratch,
        )
    }

    fn weight_bytes(&self) -> u64 {
        self.weights.byte_size()
    }

    fn flops(&self, out: [usize; 4]) -> u64 {
        let [_, cin, kh, kw] = self.weights.shape();
        2 * (numel(out) * cin * kh * kw) as u64
    }

    fn as_conv(&self) -> Option<&GpuConv2d> {
        Some(self)
    }
}
