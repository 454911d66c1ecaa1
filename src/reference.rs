//! Plain CPU implementations of every GPU op: simple loops, f64 accumulation (f32 where the op
//! is defined by its f32 arithmetic: RoIAlign, computed in torchvision's order). They are the
//! oracle the kernel tests compare against, and a readable statement of each op's semantics.
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

/// Average pooling as PyTorch's `AvgPool2d(kernel, stride, padding=0, ceil_mode=True,
/// count_include_pad=False)`: windows start at every multiple of the stride that lies inside
/// the input and overhangs its end by less than the stride; each output is the mean of the
/// window's elements inside the input.
pub fn avg_pool2d(
    x: &[f32],
    shape: [usize; 4],
    kernel: (usize, usize),
    stride: (usize, usize),
) -> (Vec<f32>, [usize; 4]) {
    let [n, c, h, w] = shape;
    // The window starts along one axis of `size`.
    let starts = |size: usize, k: usize, s: usize| -> Vec<usize> {
        (0..)
            .map(|j| j * s)
            .take_while(|&start| start < size && start + k < size + s)
            .collect()
    };
    let ys = starts(h, kernel.0, stride.0);
    let xs = starts(w, kernel.1, stride.1);
    let mut out = Vec::with_capacity(n * c * ys.len() * xs.len());
    for plane in 0..n * c {
        for &y0 in &ys {
            for &x0 in &xs {
                let (y1, x1) = ((y0 + kernel.0).min(h), (x0 + kernel.1).min(w));
                let mut sum = 0.0f64;
                for iy in y0..y1 {
                    for ix in x0..x1 {
                        sum += x[(plane * h + iy) * w + ix] as f64;
                    }
                }
                out.push((sum / ((y1 - y0) * (x1 - x0)) as f64) as f32);
            }
        }
    }
    (out, [n, c, ys.len(), xs.len()])
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

/// torchvision's detection transform of pictures `[n, c, h, w]`: each channel normalised,
/// `(v - mean) / std`, resized bilinearly (`align_corners=False`) to `size` (height, width),
/// zero-padded on the bottom and right to `padded`.
pub fn normalize_resize(
    x: &[f32],
    shape: [usize; 4],
    mean: &[f32],
    std: &[f32],
    size: (usize, usize),
    padded: (usize, usize),
) -> (Vec<f32>, [usize; 4]) {
    let [n, c, h, w] = shape;
    let (oh, ow) = size;
    let (ph, pw) = padded;
    let mut out = vec![0.0f32; n * c * ph * pw];
    for plane in 0..n * c {
        let ch = plane % c;
        let at =
            |yy: usize, xx: usize| ((x[(plane * h + yy) * w + xx] - mean[ch]) / std[ch]) as f64;
        for oy in 0..oh {
            let (y0, y1, ly0, ly1) = linear_taps(oy, h, oh);
            for ox in 0..ow {
                let (x0, x1, lx0, lx1) = linear_taps(ox, w, ow);
                let v = ly0 * (lx0 * at(y0, x0) + lx1 * at(y0, x1))
                    + ly1 * (lx0 * at(y1, x0) + lx1 * at(y1, x1));
                out[(plane * ph + oy) * pw + ox] = v as f32;
            }
        }
    }
    (out, [n, c, ph, pw])
}

/// A rectangle of a packed level map: (first row, first column, rows, columns).
pub type Rect = (usize, usize, usize, usize);

/// Levels `[n, c, h_l, w_l]` copied into the rectangles `rects` of an `[n, c, height, width]`
/// map of zeros.
pub fn stack_levels(
    levels: &[(&[f32], [usize; 4])],
    rects: &[Rect],
    (height, width): (usize, usize),
) -> Vec<f32> {
    let [n, c, _, _] = levels[0].1;
    let mut out = vec![0.0f32; n * c * height * width];
    for ((data, [_, _, h, w]), &(y0, x0, _, _)) in levels.iter().zip(rects) {
        for plane in 0..n * c {
            for y in 0..*h {
                for xx in 0..*w {
                    out[(plane * height + y0 + y) * width + x0 + xx] =
                        data[(plane * h + y) * w + xx];
                }
            }
        }
    }
    out
}

/// `x` `[n, c, height, width]` with everything outside the rectangles set to zero.
pub fn mask_levels(x: &[f32], shape: [usize; 4], rects: &[Rect]) -> Vec<f32> {
    let [_, _, height, width] = shape;
    let inside = |y: usize, xx: usize| {
        rects
            .iter()
            .any(|&(y0, x0, h, w)| y >= y0 && y < y0 + h && xx >= x0 && xx < x0 + w)
    };
    x.iter()
        .enumerate()
        .map(|(i, &v)| {
            let pix = i % (height * width);
            if inside(pix / width, pix % width) {
                v
            } else {
                0.0
            }
        })
        .collect()
}

/// `nn.GroupNorm(groups, c, eps)` applied to each level of a packed map `[n, c, height, width]`
/// on its own, as a detection head run level by level computes it: per image, group of
/// `c / groups` channels and rectangle, the mean and biased variance over the rectangle,
/// `(x - mean) / sqrt(var + eps) * weight[ch] + bias[ch]`, then `max(., 0)` when `relu` (NaN
/// kept); zero outside every rectangle.
#[allow(clippy::too_many_arguments)]
pub fn group_norm_levels(
    x: &[f32],
    shape: [usize; 4],
    rects: &[Rect],
    groups: usize,
    weight: &[f32],
    bias: &[f32],
    eps: f32,
    relu: bool,
) -> Vec<f32> {
    let [n, c, height, width] = shape;
    let per_group = c / groups;
    let at = |b: usize, ch: usize, y: usize, xx: usize| ((b * c + ch) * height + y) * width + xx;
    let mut out = vec![0.0f32; x.len()];
    for b in 0..n {
        for g in 0..groups {
            let channels = g * per_group..(g + 1) * per_group;
            for &(y0, x0, h, w) in rects {
                let cells = || {
                    channels.clone().flat_map(move |ch| {
                        (y0..y0 + h).flat_map(move |y| (x0..x0 + w).map(move |xx| (ch, y, xx)))
                    })
                };
                let count = (per_group * h * w) as f64;
                let mean = cells()
                    .map(|(ch, y, xx)| x[at(b, ch, y, xx)] as f64)
                    .sum::<f64>()
                    / count;
                let var = cells()
                    .map(|(ch, y, xx)| (x[at(b, ch, y, xx)] as f64 - mean).powi(2))
                    .sum::<f64>()
                    / count;
                let inv_std = 1.0 / (var + eps as f64).sqrt();
                for (ch, y, xx) in cells() {
                    let i = at(b, ch, y, xx);
                    let v = (x[i] as f64 - mean) * inv_std * weight[ch] as f64 + bias[ch] as f64;
                    out[i] = if relu && v < 0.0 { 0.0 } else { v as f32 };
                }
            }
        }
    }
    out
}

/// One level's anchors and geometry for [`decode_boxes`].
#[derive(Clone, Debug)]
pub struct AnchorLevel {
    /// Where the level lies in the packed regression map.
    pub rect: Rect,
    /// (vertical, horizontal) stride in pixels of the padded picture.
    pub stride: (usize, usize),
    /// The anchors (x1, y1, x2, y2) of the cell at the origin.
    pub cell_anchors: Vec<[f32; 4]>,
}

/// A decoded candidate: (x1, y1, x2, y2), score, label.
pub type Candidate = ([f32; 4], f32, u32);

/// The boxes of selected candidates `(score, flat index)` of one image and level, as
/// torchvision decodes them: anchor `a` of cell (h, w) is the cell anchor shifted by
/// `(w * stride_w, h * stride_h)`; the flat index is `((h * w_l + w) * A + a) * C + c`;
/// `linear` picks `BoxLinearCoder` (FCOS) over `BoxCoder` with `weights` and `xform_clip`;
/// boxes are clipped to `clip` (height, width).
#[allow(clippy::too_many_arguments)]
pub fn decode_boxes(
    selected: &[(f32, u32)],
    regression: &[f32],
    map_shape: [usize; 4],
    image: usize,
    level: &AnchorLevel,
    classes: usize,
    linear: bool,
    weights: [f32; 4],
    xform_clip: f32,
    clip: (f32, f32),
) -> Vec<Candidate> {
    let [_, channels, height, width] = map_shape;
    let anchors = level.cell_anchors.len();
    let (y0, x0, _, w_l) = level.rect;
    selected
        .iter()
        .map(|&(score, flat)| {
            let flat = flat as usize;
            let label = flat % classes;
            let anchor = flat / classes;
            let (a, cell) = (anchor % anchors, anchor / anchors);
            let (h, w) = (cell / w_l, cell % w_l);
            let base = level.cell_anchors[a];
            let sx = (w * level.stride.1) as f32;
            let sy = (h * level.stride.0) as f32;
            let anchor_box = [base[0] + sx, base[1] + sy, base[2] + sx, base[3] + sy];
            let code: Vec<f32> = (0..4)
                .map(|k| {
                    regression[((image * channels + a * 4 + k) * height + y0 + h) * width + x0 + w]
                })
                .collect();
            let b = if linear {
                let cx = (anchor_box[0] + anchor_box[2]) / 2.0;
                let cy = (anchor_box[1] + anchor_box[3]) / 2.0;
                let bw = anchor_box[2] - anchor_box[0];
                let bh = anchor_box[3] - anchor_box[1];
                [
                    cx - code[0] * bw,
                    cy - code[1] * bh,
                    cx + code[2] * bw,
                    cy + code[3] * bh,
                ]
            } else {
                let bw = anchor_box[2] - anchor_box[0];
                let bh = anchor_box[3] - anchor_box[1];
                let cx = anchor_box[0] + 0.5 * bw;
                let cy = anchor_box[1] + 0.5 * bh;
                let dw = (code[2] / weights[2]).min(xform_clip);
                let dh = (code[3] / weights[3]).min(xform_clip);
                let px = code[0] / weights[0] * bw + cx;
                let py = code[1] / weights[1] * bh + cy;
                let hw = 0.5 * (dw.exp() * bw);
                let hh = 0.5 * (dh.exp() * bh);
                [px - hw, py - hh, px + hw, py + hh]
            };
            let (ch, cw) = clip;
            (
                [
                    b[0].clamp(0.0, cw),
                    b[1].clamp(0.0, ch),
                    b[2].clamp(0.0, cw),
                    b[3].clamp(0.0, ch),
                ],
                score,
                label as u32,
            )
        })
        .collect()
}

/// The RPN's proposals of one image and level from its selected `(score, flat index)` pairs
/// (one class): [`decode_boxes`] with `BoxCoder` `weights` and `xform_clip`, then
/// torchvision's `remove_small_boxes(boxes, min_size)` (a box is kept when both sides are at
/// least `min_size`; NaN sides are not), the level index `level_index` as the label. `None`
/// where a box was removed: the GPU writes an empty record in its slot.
#[allow(clippy::too_many_arguments)]
pub fn decode_proposals(
    selected: &[(f32, u32)],
    regression: &[f32],
    map_shape: [usize; 4],
    image: usize,
    level: &AnchorLevel,
    level_index: u32,
    weights: [f32; 4],
    xform_clip: f32,
    clip: (f32, f32),
    min_size: f32,
) -> Vec<Option<Candidate>> {
    let decoded = decode_boxes(
        selected, regression, map_shape, image, level, 1, false, weights, xform_clip, clip,
    );
    // decode_boxes clamps, and f32::clamp keeps NaN: a NaN box fails both comparisons.
    decoded
        .into_iter()
        .map(|(b, score, _)| {
            let keep = b[2] - b[0] >= min_size && b[3] - b[1] >= min_size;
            keep.then_some((b, score, level_index))
        })
        .collect()
}

/// torchvision's `batched_nms(boxes, scores, labels, iou_thresh)[:max_detections]` on one
/// image's records `[x1, y1, x2, y2, score, f32::from_bits(label)]`, returned as exactly
/// `max_detections` records: the kept ones by score, descending, with x coordinates times
/// `output_scale[0]` and y coordinates times `output_scale[1]`, then empty records (boxes 0,
/// score -1, label bits `0xffff_ffff`). A record whose score is not >= 0 is an empty slot and
/// takes no part. Equal scores keep their slots' order. A record is kept unless a kept one
/// with the same label has an IoU (computed in f32 as torchvision's nms kernel does, on the
/// unscaled boxes) strictly above `iou_thresh` with it.
pub fn batched_nms(
    records: &[[f32; 6]],
    iou_thresh: f32,
    max_detections: usize,
    output_scale: [f32; 2],
) -> Vec<[f32; 6]> {
    let mut order: Vec<usize> = (0..records.len())
        .filter(|&i| records[i][4] >= 0.0)
        .collect();
    // A stable sort: equal scores (-0 and +0 included) stay in slot order.
    order.sort_by(|&a, &b| {
        records[b][4]
            .partial_cmp(&records[a][4])
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    let area = |r: &[f32; 6]| (r[2] - r[0]) * (r[3] - r[1]);
    let iou = |a: &[f32; 6], b: &[f32; 6]| {
        let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
        let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
        let inter = w * h;
        inter / (area(a) + area(b) - inter)
    };
    let mut kept: Vec<&[f32; 6]> = Vec::new();
    for &i in &order {
        if kept.len() == max_detections {
            break;
        }
        let r = &records[i];
        let suppressed = kept
            .iter()
            .any(|k| k[5].to_bits() == r[5].to_bits() && iou(k, r) > iou_thresh);
        if !suppressed {
            kept.push(r);
        }
    }
    let [sx, sy] = output_scale;
    let mut out: Vec<[f32; 6]> = kept
        .iter()
        .map(|r| [r[0] * sx, r[1] * sy, r[2] * sx, r[3] * sy, r[4], r[5]])
        .collect();
    out.resize(
        max_detections,
        [0.0, 0.0, 0.0, 0.0, -1.0, f32::from_bits(u32::MAX)],
    );
    out
}

/// Records `[x1, y1, x2, y2, score, label bits]` with their x coordinates times `scale[0]` and
/// y coordinates times `scale[1]` (torchvision's `resize_boxes` with ratios original / resized),
/// scores and labels as they are: the CPU twin of `kernels::nms::prepare_scale_records`.
pub fn scale_records(records: &[[f32; 6]], scale: [f32; 2]) -> Vec<[f32; 6]> {
    let [sx, sy] = scale;
    records
        .iter()
        .map(|r| [r[0] * sx, r[1] * sy, r[2] * sx, r[3] * sy, r[4], r[5]])
        .collect()
}

/// Per-level top-k of detection scores, as torchvision's RetinaNet and FCOS
/// `postprocess_detections` select them.
///
/// `logits` is `[N, A*C, Hs, Ws]` (`shape`) with every level's logits stacked in one map;
/// `regions` are the levels' `(y0, x0, height, width)` in it. An element's score is
/// `sigmoid(logit)`, or with `sigmoid_with_centerness` `sqrt(sigmoid(logit) * sigmoid(ctr))`
/// where `ctr` is the centerness logit `[N, A, Hs, Ws]` of its anchor at the same place
/// (`centerness` must then be given; this panics otherwise). The candidates are the elements
/// whose score is strictly above `score_thresh` (a NaN score never is); per image and level the
/// result holds at most `k` of them as (score, flat index) pairs, by descending score (ties:
/// lower index first). The flat index is torchvision's: `((h * width + w) * A + a) * C + c`,
/// with (h, w) counted within the level.
#[allow(clippy::too_many_arguments)]
pub fn top_k_scores(
    logits: &[f32],
    shape: [usize; 4],
    centerness: Option<&[f32]>,
    regions: &[(usize, usize, usize, usize)],
    anchors: usize,
    classes: usize,
    k: usize,
    score_thresh: f32,
    sigmoid_with_centerness: bool,
) -> Vec<Vec<Vec<(f32, u32)>>> {
    let [n, _, map_h, map_w] = shape;
    let sigmoid = |x: f32| 1.0 / (1.0 + (-(x as f64)).exp());
    let mut out = Vec::with_capacity(n);
    for b in 0..n {
        let mut per_level = Vec::with_capacity(regions.len());
        for &(y0, x0, height, width) in regions {
            let mut candidates = Vec::new();
            for y in 0..height {
                for x in 0..width {
                    for a in 0..anchors {
                        for c in 0..classes {
                            let plane = b * anchors * classes + a * classes + c;
                            let logit = logits[(plane * map_h + y0 + y) * map_w + x0 + x];
                            let mut score = sigmoid(logit);
                            if sigmoid_with_centerness {
                                let ctr = centerness.expect("centerness logits for FCOS scores")
                                    [((b * anchors + a) * map_h + y0 + y) * map_w + x0 + x];
                                score = (score * sigmoid(ctr)).sqrt();
                            }
                            let score = score as f32;
                            if score > score_thresh {
                                let index = ((y * width + x) * anchors + a) * classes + c;
                                candidates.push((score, index as u32));
                            }
                        }
                    }
                }
            }
            // Stable: equal scores stay in index order.
            candidates.sort_by(|p, q| q.0.total_cmp(&p.0));
            candidates.truncate(k);
            per_level.push(candidates);
        }
        out.push(per_level);
    }
    out
}

/// torchvision's `LevelMapper(k_min, k_max)` (canonical scale 224, level 4, eps 1e-6) for one
/// box (x1, y1, x2, y2), as torchvision 0.29 computes it in f32: `floor(4 + log2(sqrt(area) /
/// 224) + 1e-6)` clamped to `[k_min, k_max]` (to `k_max` when the two cross, as
/// `torch.clamp`), less `k_min`. `None` where torchvision's level is NaN (negative or NaN
/// area), which matches no level.
pub fn roi_level(b: [f32; 4], k_min: i32, k_max: i32) -> Option<i64> {
    let area = (b[2] - b[0]) * (b[3] - b[1]);
    let s = area.sqrt();
    let t = (4.0f32 + (s / 224.0f32).log2() + 1e-6f32).floor();
    if t.is_nan() {
        return None;
    }
    let t = t.max(k_min as f32).min(k_max as f32);
    Some(t as i64 - k_min as i64)
}

/// torchvision's `_setup_scales`: each level's scale `2^round(log2(h_l / h))` from its height
/// against the picture's `image.0` (the ratio rounded to f32, the logarithm's rounding ties to
/// even), then `(scales, k_min, k_max)` with `k = -log2(scale)` of the first and last level.
pub fn roi_scales(level_heights: &[usize], image_height: usize) -> (Vec<f32>, i32, i32) {
    let scales: Vec<f32> = level_heights
        .iter()
        .map(|&h| {
            let approx = (h as f64 / image_height as f64) as f32;
            2f64.powf(approx.log2().round_ties_even() as f64) as f32
        })
        .collect();
    let k = |s: f32| -(s.log2()) as i32;
    let (k_min, k_max) = (k(scales[0]), k(scales[scales.len() - 1]));
    (scales, k_min, k_max)
}

/// torchvision's CPU `roi_align(x, [[image, *b]], size, scale, sampling, aligned=False)` for
/// one box of one image of `x` `[N, C, H, W]`: `[C, size, size]`, in f32 in the CPU kernel's
/// order (interpolation weights precomputed per sample, each bin the sum of its samples'
/// `w1 v1 + w2 v2 + w3 v3 + w4 v4` divided by `sampling^2`).
pub fn roi_align(
    x: &[f32],
    shape: [usize; 4],
    image: usize,
    b: [f32; 4],
    scale: f32,
    size: usize,
    sampling: usize,
) -> Vec<f32> {
    let [_, channels, height, width] = shape;
    let start_w = b[0] * scale;
    let start_h = b[1] * scale;
    let end_w = b[2] * scale;
    let end_h = b[3] * scale;
    let roi_w = (end_w - start_w).max(1.0);
    let roi_h = (end_h - start_h).max(1.0);
    let bin_h = roi_h / size as f32;
    let bin_w = roi_w / size as f32;
    // Per sample, bin-major: four positions in the plane and their weights.
    let mut pre: Vec<([usize; 4], [f32; 4])> = Vec::new();
    for ph in 0..size {
        for pw in 0..size {
            for iy in 0..sampling {
                let yy = start_h + ph as f32 * bin_h + (iy as f32 + 0.5) * bin_h / sampling as f32;
                for ix in 0..sampling {
                    let xx =
                        start_w + pw as f32 * bin_w + (ix as f32 + 0.5) * bin_w / sampling as f32;
                    let (mut y, mut x) = (yy, xx);
                    if !(y >= -1.0 && y <= height as f32 && x >= -1.0 && x <= width as f32) {
                        pre.push(([0; 4], [0.0; 4]));
                        continue;
                    }
                    if y <= 0.0 {
                        y = 0.0;
                    }
                    if x <= 0.0 {
                        x = 0.0;
                    }
                    let mut y_low = y as usize;
                    let mut x_low = x as usize;
                    let y_high;
                    let x_high;
                    if y_low >= height - 1 {
                        y_low = height - 1;
                        y_high = y_low;
                        y = y_low as f32;
                    } else {
                        y_high = y_low + 1;
                    }
                    if x_low >= width - 1 {
                        x_low = width - 1;
                        x_high = x_low;
                        x = x_low as f32;
                    } else {
                        x_high = x_low + 1;
                    }
                    let ly = y - y_low as f32;
                    let lx = x - x_low as f32;
                    let hy = 1.0 - ly;
                    let hx = 1.0 - lx;
                    pre.push((
                        [
                            y_low * width + x_low,
                            y_low * width + x_high,
                            y_high * width + x_low,
                            y_high * width + x_high,
                        ],
                        [hy * hx, hy * lx, ly * hx, ly * lx],
                    ));
                }
            }
        }
    }
    let count = (sampling * sampling) as f32;
    let mut out = vec![0.0f32; channels * size * size];
    for c in 0..channels {
        let plane = &x[(image * channels + c) * height * width..][..height * width];
        for bin in 0..size * size {
            let mut acc = 0.0f32;
            for (pos, w) in &pre[bin * sampling * sampling..][..sampling * sampling] {
                acc += w[0] * plane[pos[0]]
                    + w[1] * plane[pos[1]]
                    + w[2] * plane[pos[2]]
                    + w[3] * plane[pos[3]];
            }
            out[c * size * size + bin] = acc / count;
        }
    }
    out
}

/// torchvision's `MultiScaleRoIAlign(names, size, sampling)(levels, boxes, [image] * N)` on
/// proposal records `[N, 1, R, 6]` (x1, y1, x2, y2, score, label bits): `[N*R, C, size,
/// size]`, each box pooled from the level [`roi_level`] gives it with the scale
/// [`roi_scales`] infers from the levels' heights against `image` (height, width); zeros for
/// an empty slot (score not >= 0) and for a box mapped to no level. With one level, every box
/// is pooled from it: torchvision calls `roi_align` on it without mapping. With
/// `rows_in_record`, word 5 of each record is its row in the records it was compacted from,
/// not the label: its picture is that row / `rois`, not `k / rois`.
pub fn multi_scale_roi_align(
    levels: &[(&[f32], [usize; 4])],
    proposals: &[f32],
    rois: usize,
    image: (usize, usize),
    size: usize,
    sampling: usize,
    rows_in_record: bool,
) -> Vec<f32> {
    let heights: Vec<usize> = levels.iter().map(|(_, s)| s[2]).collect();
    let (scales, k_min, k_max) = roi_scales(&heights, image.0);
    let [n, channels, _, _] = levels[0].1;
    let per_roi = channels * size * size;
    let mut out = vec![0.0f32; n * rois * per_roi];
    for roi in 0..n * rois {
        let rec = &proposals[roi * 6..roi * 6 + 6];
        if rec[4].is_nan() || rec[4] < 0.0 {
            continue;
        }
        let b = [rec[0], rec[1], rec[2], rec[3]];
        // torchvision maps no box when there is one level: it pools all from it.
        let mapped = if levels.len() == 1 {
            Some(0)
        } else {
            roi_level(b, k_min, k_max)
        };
        let Some(level) = mapped else {
            continue;
        };
        if level < 0 || level as usize >= levels.len() {
            continue;
        }
        let (x, shape) = levels[level as usize];
        let row = if rows_in_record {
            rec[5].to_bits() as usize
        } else {
            roi
        };
        let picture = row / rois;
        let pooled = roi_align(x, shape, picture, b, scales[level as usize], size, sampling);
        out[roi * per_roi..(roi + 1) * per_roi].copy_from_slice(&pooled);
    }
    out
}

/// PyTorch's `F.linear(torch.flatten(x, 1), weight, bias)`, then a ReLU when `relu`: `x` is
/// `rows` rows of `in_features` values (an NCHW tensor's images, flattened in C, H, W order),
/// `weight` `[out_features, in_features]` row-major; the result is `rows` rows of
/// `out_features`, summed in f64.
pub fn linear(
    x: &[f32],
    rows: usize,
    weight: &[f32],
    out_features: usize,
    bias: Option<&[f32]>,
    relu: bool,
) -> Vec<f32> {
    let in_features = weight.len() / out_features;
    assert_eq!(
        x.len(),
        rows * in_features,
        "input against the weight's columns"
    );
    let mut out = Vec::with_capacity(rows * out_features);
    for row in x.chunks(in_features) {
        for (o, w) in weight.chunks(in_features).enumerate() {
            let mut acc: f64 = row.iter().zip(w).map(|(&a, &b)| a as f64 * b as f64).sum();
            if let Some(b) = bias {
                acc += b[o] as f64;
            }
            // NaN stays NaN, as in PyTorch's ReLU.
            if relu && acc < 0.0 {
                acc = 0.0;
            }
            out.push(acc as f32);
        }
    }
    out
}

/// `torch.softmax(x, dim=1)` of `x` `[N, C, H, W]`: for each image and pixel, `exp(x_c - max)
/// / sum exp(x_c' - max)` over the channels, in f64; a row holding a NaN is NaN throughout.
pub fn softmax_channels(x: &[f32], shape: [usize; 4]) -> Vec<f32> {
    let [n, c, h, w] = shape;
    let plane = h * w;
    let mut out = vec![0.0f32; x.len()];
    for b in 0..n {
        for p in 0..plane {
            let at = |ch: usize| (b * c + ch) * plane + p;
            let row: Vec<f64> = (0..c).map(|ch| x[at(ch)] as f64).collect();
            let top = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let exps: Vec<f64> = row.iter().map(|v| (v - top).exp()).collect();
            let sum: f64 = exps.iter().sum();
            let nan = row.iter().any(|v| v.is_nan());
            for (ch, e) in exps.iter().enumerate() {
                out[at(ch)] = if nan { f32::NAN } else { (e / sum) as f32 };
            }
        }
    }
    out
}

/// The settings of [`box_candidates`]: torchvision's `RoIHeads` box coder and filters.
#[derive(Clone, Copy, Debug)]
pub struct CandidateRule {
    /// `BoxCoder` weights (wx, wy, ww, wh).
    pub weights: [f32; 4],
    /// The cap on the log-size deltas.
    pub xform_clip: f32,
    /// Candidates score strictly above this.
    pub score_thresh: f32,
    /// Candidates have both sides at least this.
    pub min_size: f32,
    /// The resized picture's (height, width), which the boxes are clipped to.
    pub clip: (f32, f32),
}

/// torchvision's `RoIHeads.postprocess_detections` up to its `batched_nms`, per image: the
/// records `[x1, y1, x2, y2, score, f32::from_bits(class)]` of every (proposal, class >= 1)
/// pair in that order whose score is strictly above the threshold and whose clipped box has
/// both sides at least `min_size`. `proposals` are `n * rois` records of 6 (an empty slot,
/// score not >= 0, is no proposal), `regression` `[n * rois, 4 C]`, `scores` `[n * rois, C]`,
/// each row flat. Decoding is `BoxCoder.decode_single` in f32, step by step.
pub fn box_candidates(
    proposals: &[f32],
    rois: usize,
    regression: &[f32],
    scores: &[f32],
    classes: usize,
    rule: &CandidateRule,
) -> Vec<Vec<[f32; 6]>> {
    let images = proposals.len() / 6 / rois.max(1);
    let [wx, wy, ww, wh] = rule.weights;
    (0..images)
        .map(|n| {
            let mut out = Vec::new();
            for r in 0..rois {
                let row = n * rois + r;
                let p = &proposals[row * 6..row * 6 + 6];
                if p[4].is_nan() || p[4] < 0.0 {
                    continue;
                }
                let widths = p[2] - p[0];
                let heights = p[3] - p[1];
                let ctr_x = p[0] + 0.5 * widths;
                let ctr_y = p[1] + 0.5 * heights;
                for c in 1..classes {
                    let score = scores[row * classes + c];
                    let code = &regression[(row * classes + c) * 4..(row * classes + c + 1) * 4];
                    let dx = code[0] / wx;
                    let dy = code[1] / wy;
                    // torch.clamp(max=) keeps a NaN, where f32::min would drop it.
                    let cap = |d: f32| {
                        if d > rule.xform_clip {
                            rule.xform_clip
                        } else {
                            d
                        }
                    };
                    let dw = cap(code[2] / ww);
                    let dh = cap(code[3] / wh);
                    let pred_ctr_x = dx * widths + ctr_x;
                    let pred_ctr_y = dy * heights + ctr_y;
                    let pred_w = dw.exp() * widths;
                    let pred_h = dh.exp() * heights;
                    let b = [
                        pred_ctr_x - 0.5 * pred_w,
                        pred_ctr_y - 0.5 * pred_h,
                        pred_ctr_x + 0.5 * pred_w,
                        pred_ctr_y + 0.5 * pred_h,
                    ];
                    // torch.clamp keeps NaN; f32::clamp does too.
                    let (h, w) = rule.clip;
                    let b = [
                        b[0].clamp(0.0, w),
                        b[1].clamp(0.0, h),
                        b[2].clamp(0.0, w),
                        b[3].clamp(0.0, h),
                    ];
                    let big = b[2] - b[0] >= rule.min_size && b[3] - b[1] >= rule.min_size;
                    if score > rule.score_thresh && big {
                        out.push([b[0], b[1], b[2], b[3], score, f32::from_bits(c as u32)]);
                    }
                }
            }
            out
        })
        .collect()
}

/// Stride, padding, output padding, dilation and the closing ReLU of a transposed convolution
/// (PyTorch's `ConvTranspose2d` arguments, groups 1), each (vertical, horizontal).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvTransposeSpec {
    /// Stride, each at least 1.
    pub stride: (usize, usize),
    /// Rows and columns taken off each side of the output.
    pub padding: (usize, usize),
    /// Rows and columns added at the bottom and right.
    pub output_padding: (usize, usize),
    /// Kernel dilation, each at least 1.
    pub dilation: (usize, usize),
    /// ReLU after the bias.
    pub relu: bool,
}

/// PyTorch's `ConvTranspose2d` (groups 1) with `weight` `[cin, cout, kh, kw]`, then a ReLU when
/// `spec.relu`: every input pixel scattered through every tap into the output of size
/// `(h - 1) * stride - 2 * padding + dilation * (k - 1) + output_padding + 1`, summed in f64.
pub fn conv_transpose2d(
    x: &[f32],
    x_shape: [usize; 4],
    weight: &[f32],
    w_shape: [usize; 4],
    bias: Option<&[f32]>,
    spec: &ConvTransposeSpec,
) -> (Vec<f32>, [usize; 4]) {
    let [n, cin, h, w] = x_shape;
    let [wcin, cout, kh, kw] = w_shape;
    assert_eq!(cin, wcin, "input channels against the weight's");
    let (sh, sw) = spec.stride;
    let (ph, pw) = spec.padding;
    let (dh, dw) = spec.dilation;
    let oh = (h - 1) * sh + dh * (kh - 1) + spec.output_padding.0 + 1 - 2 * ph;
    let ow = (w - 1) * sw + dw * (kw - 1) + spec.output_padding.1 + 1 - 2 * pw;
    let mut acc = vec![0.0f64; n * cout * oh * ow];
    for b in 0..n {
        for ci in 0..cin {
            for iy in 0..h {
                for ix in 0..w {
                    let v = x[((b * cin + ci) * h + iy) * w + ix] as f64;
                    for co in 0..cout {
                        for ky in 0..kh {
                            // Output row before the padding is taken off.
                            let oy = (iy * sh + ky * dh) as isize - ph as isize;
                            if oy < 0 || oy >= oh as isize {
                                continue;
                            }
                            for kx in 0..kw {
                                let ox = (ix * sw + kx * dw) as isize - pw as isize;
                                if ox < 0 || ox >= ow as isize {
                                    continue;
                                }
                                let wv = weight[((ci * cout + co) * kh + ky) * kw + kx] as f64;
                                acc[((b * cout + co) * oh + oy as usize) * ow + ox as usize] +=
                                    v * wv;
                            }
                        }
                    }
                }
            }
        }
    }
    let plane = oh * ow;
    let out = acc
        .iter()
        .enumerate()
        .map(|(i, &a)| {
            let co = i / plane % cout;
            let mut v = a + bias.map_or(0.0, |b| b[co] as f64);
            // NaN stays NaN, as in PyTorch's ReLU.
            if spec.relu && v < 0.0 {
                v = 0.0;
            }
            v as f32
        })
        .collect();
    (out, [n, cout, oh, ow])
}

/// torchvision's `maskrcnn_inference` on logits `[K, C, M, M]` and `K` detection records
/// `[x1, y1, x2, y2, score, f32::from_bits(label)]`: per record, `sigmoid` of the logits'
/// channel `label`, `[K, 1, M, M]`, in f64. A record whose score is not >= 0 (an empty slot)
/// or whose label is not below C gives zeros.
pub fn select_masks(logits: &[f32], shape: [usize; 4], records: &[f32]) -> Vec<f32> {
    let [k, c, m, _] = shape;
    assert_eq!(records.len(), k * 6, "one record per row of logits");
    let plane = m * m;
    let mut out = vec![0.0f32; k * plane];
    for (row, rec) in records.chunks(6).enumerate() {
        let label = rec[5].to_bits() as usize;
        if rec[4].is_nan() || rec[4] < 0.0 || label >= c {
            continue;
        }
        let from = &logits[(row * c + label) * plane..(row * c + label + 1) * plane];
        for (o, &v) in out[row * plane..(row + 1) * plane].iter_mut().zip(from) {
            *o = (1.0 / (1.0 + (-(v as f64)).exp())) as f32;
        }
    }
    out
}

/// PyTorch's `F.interpolate(x, size=(oh, ow), mode='bilinear', align_corners=False)` of one
/// `ih x iw` plane in f32, as its CPU kernel computes it: scale `in / out` in f32, source index
/// `max(scale * (dst + 0.5) - 0.5, 0)`, first tap at most the last index, each row's taps
/// weighed along x, then the rows along y.
fn resize_bilinear_f32(x: &[f32], (ih, iw): (usize, usize), (oh, ow): (usize, usize)) -> Vec<f32> {
    let taps = |dst: usize, in_size: usize, out_size: usize| {
        let scale = in_size as f32 / out_size as f32;
        let src = (scale * (dst as f32 + 0.5) - 0.5).max(0.0);
        let i0 = (src.floor() as usize).min(in_size - 1);
        let l1 = (src - i0 as f32).clamp(0.0, 1.0);
        let i1 = if i0 < in_size - 1 { i0 + 1 } else { i0 };
        (i0, i1, 1.0 - l1, l1)
    };
    let columns: Vec<_> = (0..ow).map(|ox| taps(ox, iw, ow)).collect();
    let mut out = Vec::with_capacity(oh * ow);
    for oy in 0..oh {
        let (y0, y1, wy0, wy1) = taps(oy, ih, oh);
        for &(x0, x1, wx0, wx1) in &columns {
            let top = x[y0 * iw + x0] * wx0 + x[y0 * iw + x1] * wx1;
            let bottom = x[y1 * iw + x0] * wx0 + x[y1 * iw + x1] * wx1;
            out.push(top * wy0 + bottom * wy1);
        }
    }
    out
}

/// torchvision's `paste_masks_in_image(masks, boxes, (height, width), padding=1)` of `K` masks
/// `[K, 1, M, M]` and `K` detection records, `[K, 1, height, width]`, following its code:
/// each mask padded with one pixel of zeros, its box expanded about the centre by
/// `(M + 2) / M` (that scale rounded to f32, the arithmetic in f32) and truncated toward zero
/// to integers, the padded mask resized bilinearly (in f32, as PyTorch) to
/// `w = max(x2 - x1 + 1, 1)` by `h = max(y2 - y1 + 1, 1)`, and the part of it inside the
/// picture copied to `[max(y1, 0), min(y2 + 1, height))` x `[max(x1, 0), min(x2 + 1, width))`.
///
/// Empty slots (score not >= 0) give zeros; so do boxes wholly outside the picture (where
/// torchvision's slicing wraps negative ends around or fails) and boxes whose expanded
/// coordinates are not finite or beyond +-2^24. The resized mask is made in full, so the
/// boxes must be of sizes a test can afford. With `rows_in_record`, record `k`'s mask goes to
/// the output row in its word 5 (compacted records) rather than to row `k`; rows no non-empty
/// record names stay zeros.
pub fn paste_masks(
    masks: &[f32],
    m: usize,
    records: &[f32],
    (height, width): (usize, usize),
    rows_in_record: bool,
) -> Vec<f32> {
    let k = records.len() / 6;
    assert_eq!(masks.len(), k * m * m, "one mask per record");
    let side = m + 2;
    let scale = ((m + 2) as f64 / m as f64) as f32;
    let mut out = vec![0.0f32; k * height * width];
    for (row, rec) in records.chunks(6).enumerate() {
        if rec[4].is_nan() || rec[4] < 0.0 {
            continue;
        }
        // expand_boxes, in f32.
        let w_half = (rec[2] - rec[0]) * 0.5 * scale;
        let h_half = (rec[3] - rec[1]) * 0.5 * scale;
        let x_c = (rec[2] + rec[0]) * 0.5;
        let y_c = (rec[3] + rec[1]) * 0.5;
        let expanded = [x_c - w_half, y_c - h_half, x_c + w_half, y_c + h_half];
        if !expanded.iter().all(|v| v.abs() <= 16_777_216.0) {
            continue;
        }
        let [bx1, by1, bx2, by2] = expanded.map(|v| v.trunc() as i64);
        let w = (bx2 - bx1 + 1).max(1) as usize;
        let h = (by2 - by1 + 1).max(1) as usize;
        let x0 = bx1.max(0);
        let x1 = (bx2 + 1).min(width as i64);
        let y0 = by1.max(0);
        let y1 = (by2 + 1).min(height as i64);
        if x0 >= x1 || y0 >= y1 {
            continue;
        }
        let mut padded = vec![0.0f32; side * side];
        for y in 0..m {
            let src = &masks[(row * m + y) * m..(row * m + y + 1) * m];
            padded[(y + 1) * side + 1..(y + 1) * side + 1 + m].copy_from_slice(src);
        }
        let resized = resize_bilinear_f32(&padded, (side, side), (h, w));
        let to_row = if rows_in_record {
            rec[5].to_bits() as usize
        } else {
            row
        };
        let picture = &mut out[to_row * height * width..(to_row + 1) * height * width];
        for y in y0..y1 {
            let from = (y - by1) as usize * w;
            let to = y as usize * width;
            for x in x0..x1 {
                picture[to + x as usize] = resized[from + (x - bx1) as usize];
            }
        }
    }
    out
}

/// Detection records `[N, 1, D, 6]` compacted across the batch: the records whose score is
/// `>= 0`, picture by picture and in order, in the first rows, the rest empty (zeros, score
/// -1). With `source_row`, word 5 of each holds the record's row in `records` (`n * D + j`)
/// as u32 bits instead of the label.
pub fn compact_records(records: &[f32], source_row: bool) -> Vec<f32> {
    let mut out = Vec::with_capacity(records.len());
    for (row, rec) in records.chunks_exact(6).enumerate() {
        if rec[4] >= 0.0 {
            out.extend_from_slice(&rec[..5]);
            out.push(if source_row {
                f32::from_bits(row as u32)
            } else {
                rec[5]
            });
        }
    }
    while out.len() < records.len() {
        out.extend_from_slice(&[0.0, 0.0, 0.0, 0.0, -1.0, 0.0]);
    }
    out
}

/// The grid `dispatch_workgroups_indirect` reads for a launch of full grid `full` when
/// `records` (compacted, `[rows, 6]`) hold `live` records with a score `>= 0`: `kind` 0 puts
/// `live * per_row` workgroups along z, 1 `ceil(live * per_row / per_group)` along x, 2 that
/// many laid out over x and y with at most `max_per_dim` per dimension (x as even as y allows).
pub fn indirect_grid(
    records: &[f32],
    kind: u32,
    full: [u32; 3],
    (per_row, per_group): (u32, u32),
    max_per_dim: u32,
) -> [u32; 3] {
    let live = records.chunks_exact(6).filter(|r| r[4] >= 0.0).count() as u64;
    let groups = (live * per_row as u64).div_ceil(per_group.max(1) as u64) as u32;
    match kind {
        0 => [full[0], full[1], live as u32 * per_row],
        1 => [groups, full[1], full[2]],
        _ if groups == 0 => [0, 1, 1],
        _ => {
            let y = groups.div_ceil(max_per_dim);
            [groups.div_ceil(y), y, 1]
        }
    }
}
