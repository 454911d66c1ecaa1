//! Convolution weights on the GPU: the layouts the kernels read them in, and the upload that
//! lays them out.

use super::{coop, COUT_ALIGN};
use crate::error::{Error, Result};
use crate::gpu::GpuContext;
use crate::precision::Precision;

/// How a convolution's weights are laid out on the GPU: what each [`ConvChoice`](super::ConvChoice) reads (see
/// [`ConvChoice::weight_layout`](super::ConvChoice::weight_layout)), and what [`weight_layout`](super::strategy::weight_layout) says a layer needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WeightLayout {
    /// `[cin * kh * kw][cout']`, any kernel and stride: read by the general direct kernel, the
    /// row kernel ([`ConvChoice::Direct`](super::ConvChoice::Direct), [`ConvChoice::Rows`](super::ConvChoice::Rows)) and the grouped kernel
    /// ([`ConvChoice::Grouped`](super::ConvChoice::Grouped), with `cin / groups` input channels).
    KMajor,
    /// Winograd F(2x2, 3x3), `[cin][16][cout']`: 3x3 kernels with stride 1, 2.25x fewer
    /// multiplies; read by [`ConvChoice::Winograd`](super::ConvChoice::Winograd).
    Winograd,
    /// `[tap][cin'][cout']` in f16 for the cooperative matrices (tensor cores), on devices
    /// [`coop::support`] accepts; read by [`ConvChoice::Coop`](super::ConvChoice::Coop).
    TapMajor,
}

impl WeightLayout {
    /// Output channels the weights are padded to a multiple of: a whole channel tile of every
    /// kernel, or a whole block of the cooperative-matrix one.
    fn cout_align(self) -> usize {
        match self {
            WeightLayout::KMajor | WeightLayout::Winograd => COUT_ALIGN,
            WeightLayout::TapMajor => coop::BLOCK_COUT_ALIGN,
        }
    }

    /// The row length of weights with `cout` output channels in this layout.
    pub fn cout_pad(self, cout: usize) -> usize {
        cout.next_multiple_of(self.cout_align())
    }
}

/// Winograd's G (4x3): U = G g G^T turns a 3x3 kernel into a 4x4 one.
const WINOGRAD_G: [[f64; 3]; 4] = [
    [1.0, 0.0, 0.0],
    [0.5, 0.5, 0.5],
    [0.5, -0.5, 0.5],
    [0.0, 0.0, 1.0],
];

/// Transforms OIHW 3x3 weights to `[Cin][16][cout_pad]` (U = G g G^T per channel pair, in f64),
/// zero padding the output channels to a multiple of [`COUT_ALIGN`].
fn to_winograd(shape: [usize; 4], weight: &[f32]) -> Vec<f32> {
    let [cout, cin, _, _] = shape;
    let cout_pad = cout.next_multiple_of(COUT_ALIGN);
    let mut out = vec![0.0f32; cin * 16 * cout_pad];
    for co in 0..cout {
        for ci in 0..cin {
            let g = &weight[(co * cin + ci) * 9..(co * cin + ci + 1) * 9];
            for r in 0..4 {
                for k in 0..4 {
                    let mut u = 0.0f64;
                    for a in 0..3 {
                        for b in 0..3 {
                            u += WINOGRAD_G[r][a] * g[a * 3 + b] as f64 * WINOGRAD_G[k][b];
                        }
                    }
                    out[(ci * 16 + r * 4 + k) * cout_pad + co] = u as f32;
                }
            }
        }
    }
    out
}

/// Convolution weights on the GPU, laid out for the kernel, with the per-channel affine of the
/// epilogue (`scale`, `shift`; a bias and a folded batch norm both end up there).
#[derive(Debug)]
pub struct Conv2dWeights {
    pub(super) shape: [usize; 4],
    pub(super) layout: WeightLayout,
    pub(super) precision: Precision,
    /// Output channels after padding: the row length of the weights and of the affine.
    pub(super) cout_pad: usize,
    pub(super) weights: wgpu::Buffer,
    pub(super) affine: wgpu::Buffer,
}

/// Reorders OIHW weights to `[K][cout_pad]` (K = input channel x kernel tap), zero padding the
/// output channels to `cout_pad` (so the kernels load them as vec4s).
fn to_k_major(shape: [usize; 4], weight: &[f32], cout_pad: usize) -> Vec<f32> {
    let [cout, cin, kh, kw] = shape;
    let k_len = cin * kh * kw;
    let mut out = vec![0.0f32; k_len * cout_pad];
    for co in 0..cout {
        for k in 0..k_len {
            out[k * cout_pad + co] = weight[co * k_len + k];
        }
    }
    out
}

impl Conv2dWeights {
    /// Uploads OIHW `weight` of `shape` = [out channels, in channels, kernel h, kernel w], an
    /// optional bias, and an optional per-output-channel affine `(scale, shift)` applied after
    /// the bias: `out = (conv + bias) * scale + shift`.
    pub fn new(
        ctx: &GpuContext,
        shape: [usize; 4],
        weight: &[f32],
        bias: Option<&[f32]>,
        affine: Option<(&[f32], &[f32])>,
    ) -> Result<Self> {
        Self::with_layout(ctx, shape, weight, bias, affine, WeightLayout::KMajor)
    }

    /// Like [`Conv2dWeights::new`], with the weights laid out as `layout`. Winograd needs a
    /// 3x3 kernel, and the convolutions run with these weights must have stride 1.
    pub fn with_layout(
        ctx: &GpuContext,
        shape: [usize; 4],
        weight: &[f32],
        bias: Option<&[f32]>,
        affine: Option<(&[f32], &[f32])>,
        layout: WeightLayout,
    ) -> Result<Self> {
        Self::with_precision(ctx, shape, weight, bias, affine, layout, Precision::F32)
    }

    /// Like [`Conv2dWeights::with_layout`], with the kernel stored in `precision` (for
    /// inputs and outputs of that precision). The epilogue's scale and shift stay f32.
    pub fn with_precision(
        ctx: &GpuContext,
        shape: [usize; 4],
        weight: &[f32],
        bias: Option<&[f32]>,
        affine: Option<(&[f32], &[f32])>,
        layout: WeightLayout,
        precision: Precision,
    ) -> Result<Self> {
        const OP: &str = "Conv2dWeights::new";
        ctx.check_precision(OP, precision)?;
        if shape.contains(&0) {
            return Err(Error::invalid(
                OP,
                format!("weight shape {shape:?} has a zero dimension"),
            ));
        }
        let numel: usize = shape.iter().product();
        if weight.len() != numel {
            return Err(Error::invalid(
                OP,
                format!(
                    "weight shape {shape:?} holds {numel} values but {} were given",
                    weight.len()
                ),
            ));
        }
        let cout = shape[0];
        let check_len = |what: &str, v: &[f32]| -> Result<()> {
            if v.len() != cout {
                return Err(Error::invalid(
                    OP,
                    format!(
                        "{what} has {} values but there are {cout} output channels",
                        v.len()
                    ),
                ));
            }
            Ok(())
        };
        if layout == WeightLayout::TapMajor
            && (precision != Precision::F16 || coop::support(ctx).is_none())
        {
            return Err(Error::Unsupported {
                op: OP,
                message: format!(
                    "cooperative-matrix weights need f16 (asked: {precision}) and a device with 16x16x16 or 8x8x8 f16 -> f32 cooperative matrices (this one: {}); use WeightLayout::KMajor",
                    if coop::offered(ctx).is_some() { "yes, but too little workgroup memory" } else { "no" }
                ),
            });
        }
        let cout_pad = layout.cout_pad(cout);
        let mut scale_shift = vec![0.0f32; 2 * cout_pad];
        scale_shift[..cout].fill(1.0);
        if let Some(b) = bias {
            check_len("the bias", b)?;
            scale_shift[cout_pad..cout_pad + cout].copy_from_slice(b);
        }
        if let Some((scale, shift)) = affine {
            check_len("the scale", scale)?;
            check_len("the shift", shift)?;
            for co in 0..cout {
                let b = scale_shift[cout_pad + co];
                scale_shift[co] = scale[co];
                scale_shift[cout_pad + co] = b * scale[co] + shift[co];
            }
        }
        let packed = match layout {
            WeightLayout::KMajor => to_k_major(shape, weight, cout_pad),
            WeightLayout::TapMajor => coop::to_tap_major(shape, weight),
            WeightLayout::Winograd if shape[2..] == [3, 3] => to_winograd(shape, weight),
            WeightLayout::Winograd => {
                return Err(Error::invalid(
                    OP,
                    format!(
                        "Winograd F(2x2, 3x3) needs a 3x3 kernel; the weights have shape {shape:?}"
                    ),
                ))
            }
        };
        let packed = precision.encode(&packed);
        ctx.check_binding_size(OP, "the weights", packed.len() as u64)?;
        Ok(Conv2dWeights {
            shape,
            layout,
            precision,
            cout_pad,
            weights: ctx.storage_from("conv2d weights", &packed),
            affine: ctx.storage_from("conv2d affine", &scale_shift),
        })
    }

    /// [out channels, in channels, kernel h, kernel w].
    pub fn shape(&self) -> [usize; 4] {
        self.shape
    }

    /// How the kernel is stored (the precision of the tensors it convolves).
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// How the weights are laid out (which kernels read them).
    pub fn layout(&self) -> WeightLayout {
        self.layout
    }

    /// Output channels after padding: the row length of the weights and of the affine.
    pub fn cout_pad(&self) -> usize {
        self.cout_pad
    }

    /// Bytes the weights occupy on the GPU (after padding).
    pub fn byte_size(&self) -> u64 {
        self.weights.size() + self.affine.size()
    }
}
