//! 2-D convolution with a fused epilogue (`shaders/conv2d.wgsl`).

use crate::error::{Error, Result};
use crate::gpu::{Dispatch, GpuContext};
use crate::kernels::{check_distinct, ShaderSource};
use crate::tensor::{check_shape, Tensor};

/// The WGSL source.
pub const SHADER: ShaderSource = ShaderSource {
    name: "conv2d.wgsl",
    source: include_str!("../../shaders/conv2d.wgsl"),
    params: &[("Conv2dParams", std::mem::size_of::<Conv2dParams>())],
};

/// Output channels per invocation (WGSL `COUT_TILE`); weights are padded to a multiple of it.
pub const COUT_TILE: usize = 8;
/// Pixels per invocation (WGSL `PIX_TILE`).
pub const PIX_TILE: usize = 8;
/// Invocations per workgroup, all along pixels (WGSL `override WG_PIX`).
pub const WG_PIX: u32 = 64;

const FLAG_RELU: u32 = 1;
const FLAG_RESIDUAL: u32 = 2;

/// Mirrors `Conv2dParams` in the WGSL.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Conv2dParams {
    pub in_channels: u32,
    pub in_height: u32,
    pub in_width: u32,
    pub out_channels: u32,
    pub out_height: u32,
    pub out_width: u32,
    pub cout_vec4: u32,
    pub kernel_h: u32,
    pub kernel_w: u32,
    pub stride_h: u32,
    pub stride_w: u32,
    pub pad_h: u32,
    pub pad_w: u32,
    pub flags: u32,
    pub _pad0: u32,
    pub _pad1: u32,
}

/// Stride, zero padding and the ReLU of the epilogue. The kernel size comes from the weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dOptions {
    /// (vertical, horizontal) stride, each at least 1.
    pub stride: (usize, usize),
    /// (vertical, horizontal) zero padding on each side.
    pub padding: (usize, usize),
    /// Apply ReLU after the affine epilogue and the residual add.
    pub relu: bool,
}

impl Default for Conv2dOptions {
    fn default() -> Self {
        Conv2dOptions {
            stride: (1, 1),
            padding: (0, 0),
            relu: false,
        }
    }
}

impl Conv2dOptions {
    /// Square stride and padding, no ReLU.
    pub fn new(stride: usize, padding: usize) -> Self {
        Conv2dOptions {
            stride: (stride, stride),
            padding: (padding, padding),
            relu: false,
        }
    }

    /// The same options with ReLU on or off.
    pub fn with_relu(self, relu: bool) -> Self {
        Conv2dOptions { relu, ..self }
    }
}

/// Convolution weights on the GPU, laid out for the kernel, with the per-channel affine of the
/// epilogue (`scale`, `shift`; a bias and a folded batch norm both end up there).
#[derive(Debug)]
pub struct Conv2dWeights {
    shape: [usize; 4],
    weights: wgpu::Buffer,
    affine: wgpu::Buffer,
}

/// Reorders OIHW weights to `[K][cout_pad]` (K = input channel x kernel tap), zero padding the
/// output channels to a multiple of [`COUT_TILE`] so the kernel loads them as vec4s.
fn to_k_major(shape: [usize; 4], weight: &[f32]) -> Vec<f32> {
    let [cout, cin, kh, kw] = shape;
    let k_len = cin * kh * kw;
    let cout_pad = cout.next_multiple_of(COUT_TILE);
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
        const OP: &str = "Conv2dWeights::new";
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
        let cout_pad = cout.next_multiple_of(COUT_TILE);
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
        let packed = to_k_major(shape, weight);
        ctx.check_binding_size(OP, "the weights", packed.len() as u64 * 4)?;
        Ok(Conv2dWeights {
            shape,
            weights: ctx.storage_from("conv2d weights", &packed),
            affine: ctx.storage_from("conv2d affine", &scale_shift),
        })
    }

    /// [out channels, in channels, kernel h, kernel w].
    pub fn shape(&self) -> [usize; 4] {
        self.shape
    }

    /// Bytes the weights occupy on the GPU (after padding).
    pub fn byte_size(&self) -> u64 {
        self.weights.size() + self.affine.size()
    }
}

/// The output shape of a convolution, or an error naming the offending value.
pub fn output_shape(
    input: [usize; 4],
    weight: [usize; 4],
    opts: &Conv2dOptions,
) -> Result<[usize; 4]> {
    const OP: &str = "conv2d";
    let [n, c, h, w] = input;
    let [cout, cin, kh, kw] = weight;
    if c != cin {
        return Err(Error::invalid(
            OP,
            format!("the input has {c} channels (shape {input:?}) but the weights expect {cin}"),
        ));
    }
    if opts.stride.0 == 0 || opts.stride.1 == 0 {
        return Err(Error::invalid(
            OP,
            format!("stride {:?} must be at least 1", opts.stride),
        ));
    }
    let (ph, pw) = opts.padding;
    if h + 2 * ph < kh || w + 2 * pw < kw {
        return Err(Error::invalid(
            OP,
            format!(
                "the {kh}x{kw} kernel is larger than the padded input {}x{} (input {h}x{w}, padding {ph}x{pw})",
                h + 2 * ph,
                w + 2 * pw
            ),
        ));
    }
    let oh = (h + 2 * ph - kh) / opts.stride.0 + 1;
    let ow = (w + 2 * pw - kw) / opts.stride.1 + 1;
    Ok([n, cout, oh, ow])
}

/// Builds the launch computing `out = relu?(conv(x) * scale + shift + residual?)`.
pub fn prepare(
    ctx: &GpuContext,
    x: &Tensor,
    weights: &Conv2dWeights,
    residual: Option<&Tensor>,
    out: &Tensor,
    opts: &Conv2dOptions,
) -> Result<Dispatch> {
    const OP: &str = "conv2d";
    let shape = output_shape(x.shape(), weights.shape, opts)?;
    check_shape(ctx, OP, "the input", x.shape())?;
    check_shape(ctx, OP, "the output", shape)?;
    if out.shape() != shape {
        return Err(Error::invalid(
            OP,
            format!(
                "the output tensor has shape {:?}; this convolution produces {shape:?}",
                out.shape()
            ),
        ));
    }
    if let Some(r) = residual {
        if r.shape() != shape {
            return Err(Error::invalid(
                OP,
                format!(
                    "the residual has shape {:?}; it must match the output {shape:?}",
                    r.shape()
                ),
            ));
        }
    }
    let mut inputs = vec![x];
    inputs.extend(residual);
    check_distinct(OP, out, &inputs)?;
    let [n, cout, oh, ow] = shape;
    let [_, cin, kh, kw] = weights.shape;
    let pointwise = kh == 1 && kw == 1 && opts.stride == (1, 1) && opts.padding == (0, 0);
    let entry = if pointwise { "conv2d_1x1" } else { "conv2d" };
    let pipeline = ctx.pipeline(&SHADER, entry, &[("WG_PIX", WG_PIX)])?;
    let pixels_per_group = WG_PIX as usize * PIX_TILE;
    let grid = [
        u32::try_from((oh * ow).div_ceil(pixels_per_group)).unwrap_or(u32::MAX),
        u32::try_from(cout.div_ceil(COUT_TILE)).unwrap_or(u32::MAX),
        u32::try_from(n).unwrap_or(u32::MAX),
    ];
    ctx.check_grid(OP, grid)?;
    let mut flags = 0;
    if opts.relu {
        flags |= FLAG_RELU;
    }
    if residual.is_some() {
        flags |= FLAG_RESIDUAL;
    }
    let [_, _, h, w] = x.shape();
    let params = Conv2dParams {
        in_channels: cin as u32,
        in_height: h as u32,
        in_width: w as u32,
        out_channels: cout as u32,
        out_height: oh as u32,
        out_width: ow as u32,
        cout_vec4: (cout.next_multiple_of(COUT_TILE) / 4) as u32,
        kernel_h: kh as u32,
        kernel_w: kw as u32,
        stride_h: opts.stride.0 as u32,
        stride_w: opts.stride.1 as u32,
        pad_h: opts.padding.0 as u32,
        pad_w: opts.padding.1 as u32,
        flags,
        _pad0: 0,
        _pad1: 0,
    };
    let uniform = ctx.uniform("conv2d params", &params);
    let residual = match residual {
        Some(r) => r.binding(),
        None => ctx.placeholder().as_entire_binding(),
    };
    let bind_group = ctx.bind_group(
        "conv2d",
        &pipeline,
        &[
            (0, x.binding()),
            (1, weights.weights.as_entire_binding()),
            (2, weights.affine.as_entire_binding()),
            (3, residual),
            (4, out.binding()),
            (5, uniform.as_entire_binding()),
        ],
    );
    Ok(Dispatch {
        label: entry,
        pipeline,
        bind_group,
        workgroups: grid,
    })
}

/// Submits a convolution now and returns its output (downloading it waits for the GPU).
pub fn conv2d(
    ctx: &GpuContext,
    x: &Tensor,
    weights: &Conv2dWeights,
    residual: Option<&Tensor>,
    opts: &Conv2dOptions,
) -> Result<Tensor> {
    let out = Tensor::empty(ctx, output_shape(x.shape(), weights.shape, opts)?)?;
    let d = prepare(ctx, x, weights, residual, &out, opts)?;
    ctx.submit(&[&d])?;
    Ok(out)
}
