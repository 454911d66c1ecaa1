// Transposed 2-D convolution (PyTorch's ConvTranspose2d, groups = 1) with its bias and an
// optional ReLU. Needs common.wgsl before it.
//
//   out[n, co, oy, ox] = bias[co] + sum over ci, ky, kx of x[n, ci, iy, ix] * w[ci, co, ky, kx]
//   where oy = iy * stride_h - pad_h + ky * dil_h (and likewise along x)
//
// Gathered per output pixel, not scattered per input pixel: no two invocations write one
// output, so no atomics and no zeroing pass. Split by phase: the output pixels with
// oy % stride_h = py and ox % stride_w = px (one of stride_h * stride_w phases) are reached
// by the same taps, those ky with (py + pad_h - ky * dil_h) divisible by stride_h, and from
// input rows iy = oy / stride_h + (py + pad_h - ky * dil_h) / stride_h: each phase is an
// ordinary convolution with a fixed sub-kernel, and a workgroup works inside one phase, so its
// taps (and every weight address) are uniform across it.
//
// Mask R-CNN's conv5_mask has kernel = stride = 2, no padding (the ONE_TAP pipeline): each
// phase has exactly one tap, iy = oy / 2 always lies inside the input, so the kernel is four
// 1x1 convolutions (per-phase GEMMs over the 256 input channels) without a tap loop or bounds
// checks. With up to 100 detections x 256 channels x 28x28 outputs (20M outputs, 10 GFLOP),
// the phase's pixels are tiled across the detections as well (a 14x14 phase holds only 196
// pixels, too few to fill a workgroup's tile, and 100 detections of them are plenty), and each
// invocation keeps an 8-channel x 8-pixel register tile, as the direct convolution does: every
// input value loaded feeds 8 multiply-adds and every weight vec4 is a broadcast.
//
// Bindings:
//   0  x        [N, Cin, H, W]                 `act`
//   1  weights  [kh][kw][Cin][cout_pad / 4]    vec4<act>, Cout zero padded to a multiple of 8
//   2  bias     [cout_pad]                     f32 (zeros for a layer without one)
//   3  out      [N, Cout, OH, OW]              `act`
//   4  params   ConvTranspose2dParams
//
// Grid: x = tiles of WG_PIX * PIX_TILE pixels of one phase, over the batch (enough for the
// largest phase, phase 0), y = tiles of COUT_TILE output channels, z = the phase: a grid with
// fewer x tiles covers the first images alone, so the launch can be sized by a count of live
// images (an indirect launch on Mask R-CNN's kept detections). Pixel j of an invocation is
// tile * WG_PIX * PIX_TILE + lane + j * WG_PIX, so that neighbouring lanes read neighbouring
// input columns.

struct ConvTranspose2dParams {
    in_channels: u32,
    in_height: u32,
    in_width: u32,
    out_channels: u32,
    out_height: u32,
    out_width: u32,
    cout_vec4: u32,
    kernel_h: u32,
    kernel_w: u32,
    stride_h: u32,
    stride_w: u32,
    pad_h: u32,
    pad_w: u32,
    dil_h: u32,
    dil_w: u32,
    batch: u32,
    relu: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

const COUT_TILE: u32 = 8u;
const PIX_TILE: u32 = 8u;

override WG_PIX: u32 = 64u;
// kernel = stride, no padding, dilation 1, no output padding: one tap per phase, always inside.
override ONE_TAP: bool = false;

@group(0) @binding(0) var<storage, read> x: array<act>;
@group(0) @binding(1) var<storage, read> weights: array<vec4<act>>;
@group(0) @binding(2) var<storage, read> bias: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<act>;
@group(0) @binding(4) var<uniform> p: ConvTranspose2dParams;

// Rows (or columns) of phase `r` of an output side `size` with stride `s`: ceil((size - r) / s).
fn phase_len(size: u32, r: u32, s: u32) -> u32 {
    return select(0u, (size - r + s - 1u) / s, r < size);
}

@compute @workgroup_size(WG_PIX)
fn conv_transpose2d(@builtin(workgroup_id) wid: vec3<u32>,
                    @builtin(local_invocation_index) lane: u32) {
    let phase = wid.z;
    let tile = wid.x;
    let py = phase / p.stride_w;
    let px = phase % p.stride_w;
    let co_base = wid.y * COUT_TILE;
    let rows = phase_len(p.out_height, py, p.stride_h);
    let cols = phase_len(p.out_width, px, p.stride_w);
    let per_image = rows * cols;
    let count = per_image * p.batch;
    let first = tile * WG_PIX * PIX_TILE + lane;
    if (first >= count || co_base >= p.out_channels) {
        return;
    }
    let in_plane = p.in_height * p.in_width;
    let image_stride = p.in_channels * in_plane;

    // Each pixel's image and its row and column in the phase's grid.
    var image: array<u32, PIX_TILE>;
    var jy: array<i32, PIX_TILE>;
    var jx: array<i32, PIX_TILE>;
    var live: array<bool, PIX_TILE>;
    for (var j = 0u; j < PIX_TILE; j++) {
        let q = first + j * WG_PIX;
        live[j] = q < count;
        let qq = min(q, count - 1u);
        image[j] = qq / per_image;
        let r = qq % per_image;
        jy[j] = i32(r / cols);
        jx[j] = i32(r % cols);
    }

    var lo: array<vec4<f32>, PIX_TILE>;
    var hi: array<vec4<f32>, PIX_TILE>;
    if (ONE_TAP) {
        // The phase's one tap: (ky, kx) = (py, px), input pixel (jy, jx).
        var w_idx = ((py * p.kernel_w + px) * p.in_channels) * p.cout_vec4 + co_base / 4u;
        var x_idx: array<u32, PIX_TILE>;
        for (var j = 0u; j < PIX_TILE; j++) {
            x_idx[j] = image[j] * image_stride + u32(jy[j]) * p.in_width + u32(jx[j]);
        }
        for (var ci = 0u; ci < p.in_channels; ci++) {
            let w_lo = vec4<f32>(weights[w_idx]);
            let w_hi = vec4<f32>(weights[w_idx + 1u]);
            w_idx += p.cout_vec4;
            for (var j = 0u; j < PIX_TILE; j++) {
                let v = vec4(f32(x[x_idx[j] + ci * in_plane]));
                lo[j] += v * w_lo;
                hi[j] += v * w_hi;
            }
        }
    } else {
        let h = i32(p.in_height);
        let w = i32(p.in_width);
        // Tap ky reaches this phase when py + pad_h - ky * dil_h is a multiple of the stride,
        // from input row jy + (py + pad_h - ky * dil_h) / stride_h. That difference may be
        // negative, and GLSL leaves % and / of negative integers undefined: it is offset by
        // cy strides (cy * stride_h > ky * dil_h for every tap) to stay unsigned.
        let cy = p.kernel_h * p.dil_h / p.stride_h + 1u;
        let cx = p.kernel_w * p.dil_w / p.stride_w + 1u;
        for (var ky = 0u; ky < p.kernel_h; ky++) {
            let ty = py + p.pad_h + cy * p.stride_h - ky * p.dil_h;
            if (ty % p.stride_h != 0u) {
                continue;
            }
            let dy = i32(ty / p.stride_h) - i32(cy);
            for (var kx = 0u; kx < p.kernel_w; kx++) {
                let tx = px + p.pad_w + cx * p.stride_w - kx * p.dil_w;
                if (tx % p.stride_w != 0u) {
                    continue;
                }
                let dx = i32(tx / p.stride_w) - i32(cx);
                var w_idx = ((ky * p.kernel_w + kx) * p.in_channels) * p.cout_vec4 + co_base / 4u;
                for (var ci = 0u; ci < p.in_channels; ci++) {
                    let w_lo = vec4<f32>(weights[w_idx]);
                    let w_hi = vec4<f32>(weights[w_idx + 1u]);
                    w_idx += p.cout_vec4;
                    for (var j = 0u; j < PIX_TILE; j++) {
                        let iy = jy[j] + dy;
                        let ix = jx[j] + dx;
                        let inside = iy >= 0 && iy < h && ix >= 0 && ix < w;
                        let idx = select(0u, image[j] * image_stride + ci * in_plane
                            + u32(iy * w + ix), inside);
                        let v = vec4(select(0.0, f32(x[idx]), inside));
                        lo[j] += v * w_lo;
                        hi[j] += v * w_hi;
                    }
                }
            }
        }
    }

    let out_plane = p.out_height * p.out_width;
    for (var j = 0u; j < PIX_TILE; j++) {
        if (!live[j]) {
            continue;
        }
        let oy = py + p.stride_h * u32(jy[j]);
        let ox = px + p.stride_w * u32(jx[j]);
        let base = image[j] * p.out_channels * out_plane + oy * p.out_width + ox;
        for (var c = 0u; c < COUT_TILE; c++) {
            let co = co_base + c;
            if (co >= p.out_channels) {
                break;
            }
            var a: f32;
            if (c < 4u) {
                a = lo[j][c];
            } else {
                a = hi[j][c - 4u];
            }
            a += bias[co];
            if (p.relu != 0u) {
                a = relu_keep_nan(a);
            }
            out[base + co * out_plane] = act(a);
        }
    }
}
