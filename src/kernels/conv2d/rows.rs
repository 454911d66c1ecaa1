//! The row-tiled direct convolution: `shaders/conv2d_rows.wgsl` plus an entry point expanded
//! from `shaders/conv2d_rows.tmpl.wgsl`, unrolled for one kernel size, stride and channel tile
//! (see the WGSL files for why).

use crate::kernels::conv2d::Conv2dParams;
use crate::kernels::template::ShaderTemplate;
use crate::kernels::ShaderSource;
use crate::precision::Precision;

/// The module without its generated entry point (checked by naga in the tests like every file).
pub const SHADER: ShaderSource = ShaderSource {
    name: "conv2d_rows.wgsl",
    parts: &[
        "common.wgsl",
        "resample.wgsl",
        "conv2d_epilogue.wgsl",
        "conv2d_nchw.wgsl",
        "conv2d_rows.wgsl",
    ],
    source: concat!(
        include_str!("../../../shaders/common.wgsl"),
        include_str!("../../../shaders/resample.wgsl"),
        include_str!("../../../shaders/conv2d_epilogue.wgsl"),
        include_str!("../../../shaders/conv2d_nchw.wgsl"),
        include_str!("../../../shaders/conv2d_rows.wgsl")
    ),
    params: &[("Conv2dParams", std::mem::size_of::<Conv2dParams>())],
    enables: "",
    precisions: &Precision::ALL,
};

/// The entry point's template.
pub const ENTRY: ShaderTemplate = ShaderTemplate {
    name: "conv2d_rows.tmpl.wgsl",
    source: include_str!("../../../shaders/conv2d_rows.tmpl.wgsl"),
};

/// One specialisation of the row kernel (the strategy picks it: see
/// [`super::strategy::ConvChoice::Rows`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RowTile {
    /// Kernel (height, width).
    pub kernel: (usize, usize),
    /// Stride (vertical, horizontal).
    pub stride: (usize, usize),
    /// Output channels per invocation, a multiple of 4.
    pub couts: usize,
    /// Consecutive output pixels of one row per invocation, a power of two.
    pub pixels: usize,
}

impl RowTile {
    /// A short name for the pipeline cache and labels, e.g. `conv2d_rows_k3x3_s1x1_m16_p16`.
    pub fn key(&self) -> String {
        format!(
            "conv2d_rows_k{}x{}_s{}x{}_m{}_p{}",
            self.kernel.0, self.kernel.1, self.stride.0, self.stride.1, self.couts, self.pixels
        )
    }

    /// Input values one kernel row of an invocation's pixels spans.
    fn span(&self) -> usize {
        (self.pixels - 1) * self.stride.1 + self.kernel.1
    }

    /// The pipeline-cache name of the module for tensors in `precision`, with the split-K entry
    /// point or the whole-sum one.
    pub fn module_key(&self, precision: Precision, split_k: bool) -> String {
        let kind = if split_k { "_partial" } else { "" };
        format!("{}{kind}:{precision}", self.key())
    }

    /// The whole module for tensors in `precision`: the static part and the generated entry
    /// point, `conv2d_rows_partial` with `split_k` and `conv2d_rows` without. Separate modules:
    /// every network runs the second, and parsing both every time it is built doubled the
    /// time to a first forward on llvmpipe.
    pub fn module_source(&self, precision: Precision, split_k: bool) -> String {
        let mut s = SHADER.module(precision);
        s.push('\n');
        s.push_str(&self.entry_source(split_k));
        s
    }

    /// The entry point `conv2d_rows` or, with `split_k`, `conv2d_rows_partial` (the raw sums
    /// of a part of the input channels), unrolled over kernel columns, pixels and channels:
    /// `shaders/conv2d_rows.tmpl.wgsl` expanded for this tile.
    pub fn entry_source(&self, split_k: bool) -> String {
        let (kh, kw) = self.kernel;
        let (sh, sw) = self.stride;
        let span = self.span();
        debug_assert!(self.pixels.is_power_of_two() && self.couts.is_multiple_of(4));
        ENTRY.expand(&[
            ("PARTIAL", split_k.into()),
            ("KH", kh.into()),
            ("KW", kw.into()),
            ("SH", sh.into()),
            ("SW", sw.into()),
            ("M4", (self.couts / 4).into()),
            ("PIXELS", self.pixels.into()),
            ("LEVELS", self.pixels.trailing_zeros().into()),
            ("SPAN", span.into()),
            // Aligned vec4s covering `span` values that start anywhere within the first one.
            ("LOADS", (span + 3).div_ceil(4).into()),
        ])
    }
}
