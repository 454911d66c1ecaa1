//! Plain CPU implementations of every GPU op: simple loops, f64 accumulation. They are the oracle
//! the kernel tests compare against, and a readable statement of each op's semantics.
//!
//! Tensors are `(data, [n, c, h, w])` in row-major NCHW order. The module shares no code and no
//! types with the kernels it checks: its own small specs say what to compute.

/// Stride, zero padding and the closing ReLU of a convolution.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConvSpec {
    /// (vertical, horizontal) stride, each at least 1.
    pub stride: (usize, usize),
    /// (vertical, horizontal) zero padding on each side.
    pub padding: (usize, usize),
    /// ReLU after everything else.
    pub relu: bool,
}

/// The window of a max pooling: size, stride and padding, each (vertical, horizontal).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolSpec {
    /// Window size.
    pub kernel: (usize, usize),
    /// Stride.
    pub stride: (usize, usize),
    /// Padding on each side (never wins the max).
    pub padding: (usize, usize),
}

/// How [`upsample_add`] resizes: PyTorch's `F.interpolate` modes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resize {
    /// `mode='bilinear', align_corners=False`.
    Bilinear,
    /// `mode='nearest'`.
    Nearest,
}

/// `relu?((conv(x, weight) + bias) * scale + shift + residual)`, with `weight` in OIHW layout.
#[allow(clippy::too_many_arguments)]
pub fn conv2d(
    x: &[f32],
    x_shape: [usize; 4],
    weight: &[f32],
    w_shape: [usize; 4],
    bias: Option<&[f32]>,
    affine: Option<(&[f32], &[f32])>,
    residual: Option<&[f32]>,
    opts: &ConvSpec,
) -> (Vec<f32>, [usize; 4]) {
    let [n, cin, h, w] = x_shape;
    let [cout, _, kh, kw] = w_shape;
    let (sh, sw) = opts.stride;
    let (ph, pw) = opts.padding;
    let oh = (h + 2 * ph - kh) / sh + 1;
    let ow = (w + 2 * pw - kw) / sw + 1;
    let mut out = vec![0.0f32; n * cout * oh * ow];
    for b in 0..n {
        for co in 0..cout {
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut acc = 0.0f64;
                    for ci in 0..cin {
                        for ky in 0..kh {
                            let iy = (oy * sh + ky) as isize - ph as isize;
                            if iy < 0 || iy >= h as isize {
                                continue;
                            }
                            for kx in 0..kw {
                                let ix = (ox * sw + kx) as isize - pw as isize;
                                if ix < 0 || ix >= w as isize {
                                    continue;
                                }
                                let xv = x[((b * cin + ci) * h + iy as usize) * w + ix as usize];
                                let wv = weight[((co * cin + ci) * kh + ky) * kw + kx];
                                acc += xv as f64 * wv as f64;
                            }
                        }
                    }
                    if let Some(bias) = bias {
                        acc += bias[co] as f64;
                    }
                    if let Some((scale, shift)) = affine {
                        acc = acc * scale[co] as f64 + shift[co] as f64;
                    }
                    let idx = ((b * cout + co) * oh + oy) * ow + ox;
                    if let Some(r) = residual {
                        acc += r[idx] as f64;
                    }
                    if opts.relu && acc < 0.0 {
                        acc = 0.0;
                    }
                    out[idx] = acc as f32;
                }
            }
        }
    }
    (out, [n, cout, oh, ow])
}

/// PyTorch's grouped convolution (`groups` > 1, no bias or epilogue): `weight` is
/// `[cout, cin / groups, kh, kw]`, and output channel `co` sees only the input channels of its
/// group, `co / (cout / groups)`.
pub fn grouped_conv2d(
    x: &[f32],
    x_shape: [usize; 4],
    weight: &[f32],
    w_shape: [usize; 4],
    groups: usize,
    stride: usize,
    padding: usize,
) -> (Vec<f32>, [usize; 4]) {
    let [n, cin, h, w] = x_shape;
    let [cout, cin_g, kh, kw] = w_shape;
    assert_eq!(cin, cin_g * groups, "input channels against groups");
    let cout_g = cout / groups;
    let oh = (h + 2 * padding - kh) / stride + 1;
    let ow = (w + 2 * padding - kw) / stride + 1;
    let mut out = vec![0.0f32; n * cout * oh * ow];
    for b in 0..n {
        for co in 0..cout {
            let g = co / cout_g;
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut acc = 0.0f64;
                    for j in 0..cin_g {
                        let ci = g * cin_g + j;
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let iy = (oy * stride + ky) as isize - padding as isize;
                                let ix = (ox * stride + kx) as isize - padding as isize;
                                if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                    continue;
                                }
                                let xv = x[((b * cin + ci) * h + iy as usize) * w + ix as usize];
                                let wv = weight[((co * cin_g + j) * kh + ky) * kw + kx];
                                acc += xv as f64 * wv as f64;
                            }
                        }
                    }
                    out[((b * cout + co) * oh + oy) * ow + ox] = acc as f32;
                }
            }
        }
    }
    (out, [n, cout, oh, ow])
}

/// Inference batch norm: `(x - mean) / sqrt(var + eps) * weight + bias` per channel.
pub fn batch_norm(
    x: &[f32],
    shape: [usize; 4],
    mean: &[f32],
    var: &[f32],
    weight: &[f32],
    bias: &[f32],
    eps: f32,
) -> Vec<f32> {
    let [_, c, h, w] = shape;
    let plane = h * w;
    x.iter()
        .enumerate()
        .map(|(i, &v)| {
            let ch = (i / plane) % c;
            let inv_std = 1.0 / (var[ch] as f64 + eps as f64).sqrt();
            ((v as f64 - mean[ch] as f64) * inv_std * weight[ch] as f64 + bias[ch] as f64) as f32
        })
        .collect()
}

/// Max pooling in floor mode; padding never wins and NaN propagates, as in PyTorch.
pub fn max_pool2d(x: &[f32], shape: [usize; 4], opts: &PoolSpec) -> (Vec<f32>, [usize; 4]) {
    let [n, c, h, w] = shape;
    let (kh, kw) = opts.kernel;
    let (sh, sw) = opts.stride;
    let (ph, pw) = opts.padding;
    let oh = (h + 2 * ph - kh) / sh + 1;
    let ow = (w + 2 * pw - kw) / sw + 1;
    let mut out = Vec::with_capacity(n * c * oh * ow);
    for plane in 0..n * c {
        for oy in 0..oh {
            for ox in 0..ow {
                let mut m = f32::NEG_INFINITY;
                for ky in 0..kh {
                    let iy = (oy * sh + ky) as isize - ph as isize;
                    for kx in 0..kw {
                        let ix = (ox * sw + kx) as isize - pw as isize;
                        if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                            continue;
                        }
                        let v = x[(plane * h + iy as usize) * w + ix as usize];
                        if v > m || v.is_nan() {
                            m = v;
                        }
                    }
                }
                out.push(m);
            }
        }
    }
    (out, [n, c, oh, ow])
}

/// Source taps and weights of PyTorch's linear interpolation with `align_corners=False`.
/// The index arithmetic is f32, as PyTorch's, so the taps agree exactly.
fn linear_taps(dst: usize, in_size: usize, out_size: usize) -> (usize, usize, f64, f64) {
    let scale = in_size as f32 / out_size as f32;
    let src = (scale * (dst as f32 + 0.5) - 0.5).max(0.0);
    let i0 = src as usize;
    let l1 = (src - i0 as f32).clamp(0.0, 1.0) as f64;
    let i1 = if i0 + 1 < in_size { i0 + 1 } else { i0 };
    (i0, i1, 1.0 - l1, l1)
}

/// PyTorch's `mode='nearest'` source index.
fn nearest_index(dst: usize, in_size: usize, out_size: usize) -> usize {
    if in_size == out_size {
        dst
    } else if out_size == 2 * in_size {
        dst / 2
    } else {
        let scale = in_size as f32 / out_size as f32;
        ((dst as f32 * scale).floor() as usize).min(in_size - 1)
    }
}

/// `upsample(x, to the size of y) + y`.
pub fn upsample_add(
    x: &[f32],
    x_shape: [usize; 4],
    y: &[f32],
    y_shape: [usize; 4],
    mode: Resize,
) -> Vec<f32> {
    let [_, _, ih, iw] = x_shape;
    let [n, c, oh, ow] = y_shape;
    let mut out = Vec::with_capacity(y.len());
    for plane in 0..n * c {
        let src = &x[plane * ih * iw..(plane + 1) * ih * iw];
        for oy in 0..oh {
            for ox in 0..ow {
                let up = match mode {
                    Resize::Bilinear => {
                        let (y0, y1, ly0, ly1) = linear_taps(oy, ih, oh);
                        let (x0, x1, lx0, lx1) = linear_taps(ox, iw, ow);
                        let at = |yy: usize, xx: usize| src[yy * iw + xx] as f64;
                        ly0 * (lx0 * at(y0, x0) + lx1 * at(y0, x1))
                            + ly1 * (lx0 * at(y1, x0) + lx1 * at(y1, x1))
                    }
                    Resize::Nearest => {
                        src[nearest_index(oy, ih, oh) * iw + nearest_index(ox, iw, ow)] as f64
                    }
                };
                out.push((up + y[(plane * oh + oy) * ow + ox] as f64) as f32);
            }
        }
    }
    out
}

/// Zero padding of each side by (vertical, horizontal) `padding`.
pub fn pad2d(x: &[f32], shape: [usize; 4], padding: (usize, usize)) -> (Vec<f32>, [usize; 4]) {
    let [n, c, h, w] = shape;
    let (ph, pw) = padding;
    let (oh, ow) = (h + 2 * ph, w + 2 * pw);
    let mut out = vec![0.0f32; n * c * oh * ow];
    for plane in 0..n * c {
        for y in 0..h {
            for xx in 0..w {
                out[(plane * oh + y + ph) * ow + xx + pw] = x[(plane * h + y) * w + xx];
            }
        }
    }
    (out, [n, c, oh, ow])
}

/// `max(x, 0)`, keeping NaN.
pub fn relu(x: &[f32]) -> Vec<f32> {
    x.iter().map(|&v| if v < 0.0 { 0.0 } else { v }).collect()
}

/// `a + b`.
pub fn add(a: &[f32], b: &[f32]) -> Vec<f32> {
    a.iter().zip(b).map(|(&x, &y)| x + y).collect()
}
