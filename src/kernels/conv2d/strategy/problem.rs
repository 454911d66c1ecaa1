//! What a convolution is, as the strategy reasons about it: shapes, stride, padding, groups,
//! the epilogue's residual, precision and layout. Plain data, so that the presets can be tested
//! without a device.

use crate::error::Result;
use crate::kernels::conv2d::{
    conv_shape, Conv2dOptions, Conv2dWeights, ResidualMode, WeightLayout,
};
use crate::precision::Precision;
use crate::tensor::{MemoryFormat, Tensor};

/// One convolution to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvProblem {
    /// The input's shape as the kernel reads it (`[n, cin, h, w]`; already padded for the
    /// channels-last kernels, which take explicit padding). `[0; 4]` while it is not known: the
    /// weight layout ([`super::weight_layout`]) does not depend on it.
    pub input: [usize; 4],
    /// `[cout, cin / groups, kh, kw]`.
    pub weight: [usize; 4],
    /// (vertical, horizontal) stride.
    pub stride: (usize, usize),
    /// (vertical, horizontal) zero padding the kernel adds itself.
    pub padding: (usize, usize),
    /// Groups the channels split into.
    pub groups: usize,
    /// How the epilogue adds a residual (the options' mode, whether or not one is given:
    /// Winograd weights are never made for a layer whose residual is upsampled).
    pub residual: ResidualMode,
    /// Whether a residual is given.
    pub residual_given: bool,
    /// The precision of the tensors and the weights.
    pub precision: Precision,
    /// The layout of the input and output.
    pub layout: MemoryFormat,
    /// Whether Winograd F(2x2, 3x3) is wanted where the layer allows it.
    pub winograd: bool,
    /// Whether a channels-last f16 layer runs on cooperative matrices (where the device has
    /// them and they passed their check) or on the portable direct kernel.
    pub cooperative: bool,
}

impl ConvProblem {
    /// The layer of weights `weight` run with `opts` on tensors of `precision` and `layout`,
    /// before its input is known: no residual given, no Winograd, on cooperative matrices
    /// where the tensors are channels-last f16 (see [`ConvProblem::with_cooperative`]).
    pub fn layer(
        weight: [usize; 4],
        opts: &Conv2dOptions,
        precision: Precision,
        layout: MemoryFormat,
    ) -> Self {
        ConvProblem {
            input: [0; 4],
            weight,
            stride: opts.stride,
            padding: opts.padding,
            groups: opts.groups,
            residual: opts.residual,
            residual_given: false,
            precision,
            layout,
            winograd: false,
            cooperative: layout == MemoryFormat::ChannelsLast && precision == Precision::F16,
        }
    }

    /// The convolution of `x` by `weights` with `opts`, and `residual` if given; Winograd or
    /// cooperative matrices where the weights are laid out for them.
    pub fn of(
        x: &Tensor,
        weights: &Conv2dWeights,
        residual: Option<&Tensor>,
        opts: &Conv2dOptions,
    ) -> Self {
        ConvProblem::layer(weights.shape(), opts, x.precision(), x.memory_format())
            .with_input(x.shape(), residual.is_some())
            .with_winograd(weights.layout() == WeightLayout::Winograd)
            .with_cooperative(weights.layout() == WeightLayout::TapMajor)
    }

    /// The same layer on an input of `input` shape, with a residual or without.
    pub fn with_input(self, input: [usize; 4], residual_given: bool) -> Self {
        ConvProblem {
            input,
            residual_given,
            ..self
        }
    }

    /// The same layer with Winograd wanted or not.
    pub fn with_winograd(self, winograd: bool) -> Self {
        ConvProblem { winograd, ..self }
    }

    /// The same layer on cooperative matrices or not: a channels-last f16 layer runs on them
    /// only where the device has them, and on the portable direct kernel elsewhere.
    pub fn with_cooperative(self, cooperative: bool) -> Self {
        ConvProblem {
            cooperative: cooperative
                && self.layout == MemoryFormat::ChannelsLast
                && self.precision == Precision::F16,
            ..self
        }
    }

    /// The options the problem was made from (ReLU and output halo aside, which no choice
    /// depends on).
    pub fn options(&self) -> Conv2dOptions {
        Conv2dOptions {
            stride: self.stride,
            padding: self.padding,
            residual: self.residual,
            groups: self.groups,
            ..Conv2dOptions::default()
        }
    }

    /// The convolution's output shape without a halo, or an error naming what does not fit.
    pub fn output(&self) -> Result<[usize; 4]> {
        conv_shape(self.input, self.weight, &self.options())
    }

    /// Whether the epilogue reads an upsampled residual.
    pub fn upsamples(&self) -> bool {
        self.residual_given && matches!(self.residual, ResidualMode::Upsampled(_))
    }

    /// Whether the NCHW kernels see each plane as one long row: a pointwise convolution with
    /// the plain epilogue, which then fills the row tiles however narrow the map. The strategy
    /// tiles the row so and the launch indexes it so; both ask here.
    pub fn flattens_plane(&self) -> bool {
        let [_, _, kh, kw] = self.weight;
        (kh, kw) == (1, 1) && self.stride == (1, 1) && self.padding == (0, 0) && !self.upsamples()
    }
}
