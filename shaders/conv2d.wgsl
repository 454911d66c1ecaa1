// 2-D convolution (groups = 1) with a fused epilogue:
//   out = relu?( acc * scale[co] + shift[co] + residual? )
// A bias is folded into `shift` on the host; a batch norm into `scale` and `shift`. The residual
// is either a tensor of the output's shape or a coarser map upsampled to the output's size (the
// FPN's top-down merge). Needs common.wgsl and resample.wgsl before it.
//
// Entry points (the Rust wrapper picks one per convolution):
//   conv2d               any kernel, stride and zero padding (bounds checked per tap)
//   conv2d_valid         no padding, kernel and stride specialised by override constants: no
//                        bounds checks (the graph pads explicitly before such convs)
//   conv2d_1x1           1x1, stride 1, no padding: a GEMM over channels
//   conv2d_winograd      Winograd F(2x2, 3x3), stride 1, weights pre-transformed on the host
// The direct entry points take the upsampled-residual epilogue when the pipeline sets the
// UPSAMPLE override (kept out of the others: its code alone made a 1x1 conv 1.5x slower on
// llvmpipe).
//
// Bindings (read-only inputs, then the output, then parameters):
//   0  x            [N, Cin, H, W]                    input, NCHW
//   1  weights      [K][cout_pad / 4] vec4            direct: K = (ci * KH + ky) * KW + kx;
//                                                     Winograd: K = ci * 16 + position; output
//                                                     channels contiguous, zero padded
//   2  affine       [2][cout_pad]                     scale, then shift
//   3  resample_src [N, Cout, RH, RW]                 the residual, read only when a residual
//                                                     flag is set (RH x RW = OH x OW for
//                                                     FLAG_RESIDUAL)
//   4  out          [N, Cout, OH, OW]
//   5  params       Conv2dParams
//
// Grid: x = pixel tiles of WG_PIX * PIX_TILE (Winograd: WG_PIX 2x2 tiles), y = groups of WG_CO
// output channel tiles, z = batch. Each invocation owns COUT_TILE output channels by PIX_TILE
// pixels (a register tile: every input value loaded feeds COUT_TILE multiply-adds); its pixels
// are WG_PIX apart so that neighbouring invocations read neighbouring addresses. Small maps use
// a small WG_PIX and put several channel tiles in one workgroup instead.

struct Conv2dParams {
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
    flags: u32,
    res_height: u32,
    res_width: u32,
    res_scale_h: f32,
    res_scale_w: f32,
    _pad0: u32,
    _pad1: u32,
}

const FLAG_RELU: u32 = 1u;
const FLAG_RESIDUAL: u32 = 2u;
const FLAG_UPSAMPLE_BILINEAR: u32 = 4u;
const FLAG_UPSAMPLE_NEAREST: u32 = 8u;
// The register tile: two vec4s of output channels (lo, hi) by PIX_TILE pixels. Must match the
// Rust wrapper's COUT_TILE and PIX_TILE. Kept as named vec4 variables rather than one indexed
// array: llvmpipe then holds them in registers (measured 1.4-1.8x faster).
const COUT_TILE: u32 = 8u;
const PIX_TILE: u32 = 8u;

override WG_PIX: u32 = 64u;
override WG_CO: u32 = 1u;
// The valid entry points' kernel size and stride, specialised per pipeline so the tap loops have
// constant bounds and unroll.
override KERNEL_H: u32 = 3u;
override KERNEL_W: u32 = 3u;
override STRIDE_H: u32 = 1u;
override STRIDE_W: u32 = 1u;
// Whether the pipeline has the upsampled-residual epilogue. A constant per pipeline, so the
// resampling code is gone from the pipelines that do not use it: its presence alone made a 1x1
// conv 1.5x slower on llvmpipe.
override UPSAMPLE: bool = false;

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> weights: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> affine: array<f32>;
@group(0) @binding(3) var<storage, read> resample_src: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
@group(0) @binding(5) var<uniform> p: Conv2dParams;

// One invocation's accumulators: channels co_base..+4 in lo, +4..+8 in hi, for pixels pix.
struct Tile {
    live: bool,
    n: u32,
    co_base: u32,
    pix: array<u32, PIX_TILE>,
    lo: array<vec4<f32>, PIX_TILE>,
    hi: array<vec4<f32>, PIX_TILE>,
}

// Applies the epilogue to the raw sum `a` of output channel `co`, pixel `pix`, and stores it.
// `upsample` is a constant at each call site (UPSAMPLE, or false for Winograd).
fn store_output(n: u32, co: u32, pix: u32, a: f32, upsample: bool) {
    let plane = p.out_height * p.out_width;
    var v = a * affine[co] + affine[p.cout_vec4 * 4u + co];
    let idx = (n * p.out_channels + co) * plane + pix;
    if ((p.flags & FLAG_RESIDUAL) != 0u) {
        v += resample_src[idx];
    } else if (upsample && (p.flags & (FLAG_UPSAMPLE_BILINEAR | FLAG_UPSAMPLE_NEAREST)) != 0u) {
        let res_base = (n * p.out_channels + co) * p.res_height * p.res_width;
        v += resample(res_base, p.res_height, p.res_width, p.out_height, p.out_width,
                      p.res_scale_h, p.res_scale_w, pix / p.out_width, pix % p.out_width,
                      (p.flags & FLAG_UPSAMPLE_BILINEAR) != 0u);
    }
    if ((p.flags & FLAG_RELU) != 0u) {
        v = relu_keep_nan(v);
    }
    out[idx] = v;
}

// Stores a tile through the epilogue.
fn store_tile(t: Tile, upsample: bool) {
    let plane = p.out_height * p.out_width;
    for (var c = 0u; c < COUT_TILE; c++) {
        let co = t.co_base + c;
        if (co >= p.out_channels) {
            return;
        }
        for (var j = 0u; j < PIX_TILE; j++) {
            if (t.pix[j] < plane) {
                var a: f32;
                if (c < 4u) {
                    a = t.lo[j][c];
                } else {
                    a = t.hi[j][c - 4u];
                }
                store_output(t.n, co, t.pix[j], a, upsample);
            }
        }
    }
}

fn tile_pixels(tile: u32, lane: u32) -> array<u32, PIX_TILE> {
    let base = tile * WG_PIX * PIX_TILE + lane;
    var pix: array<u32, PIX_TILE>;
    for (var j = 0u; j < PIX_TILE; j++) {
        pix[j] = base + j * WG_PIX;
    }
    return pix;
}

// The tile an invocation owns, before accumulating: its image, first output channel and pixels,
// and whether any of them exist. `% WG_CO` folds to 0 when WG_CO is 1, which tells the compiler
// the channel tile (and so every weight address) is uniform across the workgroup: a broadcast,
// not a gather.
fn tile_start(wid: vec3<u32>, lid: vec3<u32>) -> Tile {
    var t: Tile;
    t.n = wid.z;
    t.co_base = (wid.y * WG_CO + lid.y % WG_CO) * COUT_TILE;
    t.pix = tile_pixels(wid.x, lid.x);
    t.live = t.pix[0] < p.out_height * p.out_width && t.co_base < p.out_channels;
    return t;
}

// General case: any kernel size, stride and zero padding.
fn accumulate(wid: vec3<u32>, lid: vec3<u32>) -> Tile {
    var t = tile_start(wid, lid);
    if (!t.live) {
        return t;
    }
    let n = t.n;
    let pix = t.pix;
    let plane = p.out_height * p.out_width;
    let co_tile = t.co_base / COUT_TILE;
    // Top-left input coordinate of each pixel's receptive field.
    var iy0: array<i32, PIX_TILE>;
    var ix0: array<i32, PIX_TILE>;
    for (var j = 0u; j < PIX_TILE; j++) {
        let q = min(pix[j], plane - 1u);
        iy0[j] = i32((q / p.out_width) * p.stride_h) - i32(p.pad_h);
        ix0[j] = i32((q % p.out_width) * p.stride_w) - i32(p.pad_w);
    }
    var acc_lo: array<vec4<f32>, PIX_TILE>;
    var acc_hi: array<vec4<f32>, PIX_TILE>;
    let h = i32(p.in_height);
    let w = i32(p.in_width);
    let in_plane = p.in_height * p.in_width;
    var w_idx = co_tile * 2u;
    for (var ci = 0u; ci < p.in_channels; ci++) {
        let x_base = (n * p.in_channels + ci) * in_plane;
        for (var ky = 0u; ky < p.kernel_h; ky++) {
            for (var kx = 0u; kx < p.kernel_w; kx++) {
                let w_lo = weights[w_idx];
                let w_hi = weights[w_idx + 1u];
                w_idx += p.cout_vec4;
                for (var j = 0u; j < PIX_TILE; j++) {
                    let iy = iy0[j] + i32(ky);
                    let ix = ix0[j] + i32(kx);
                    let inside = iy >= 0 && iy < h && ix >= 0 && ix < w;
                    let idx = select(0u, x_base + u32(iy * w + ix), inside);
                    let v = vec4(select(0.0, x[idx], inside));
                    acc_lo[j] = fma(w_lo, v, acc_lo[j]);
                    acc_hi[j] = fma(w_hi, v, acc_hi[j]);
                }
            }
        }
    }
    t.lo = acc_lo;
    t.hi = acc_hi;
    return t;
}

// No padding, any kernel and stride: every tap lies inside the input, so there are no bounds
// checks (the graph pads explicitly before such convs; measured ~1.4x faster than the general
// entry on llvmpipe, where a second, checked loop in the same kernel made both slower).
fn accumulate_valid(wid: vec3<u32>, lid: vec3<u32>) -> Tile {
    var t = tile_start(wid, lid);
    if (!t.live) {
        return t;
    }
    let n = t.n;
    let pix = t.pix;
    let plane = p.out_height * p.out_width;
    let co_tile = t.co_base / COUT_TILE;
    // Offset of each pixel's receptive field in an input plane.
    var base: array<u32, PIX_TILE>;
    for (var j = 0u; j < PIX_TILE; j++) {
        let q = min(pix[j], plane - 1u);
        base[j] = (q / p.out_width) * STRIDE_H * p.in_width + (q % p.out_width) * STRIDE_W;
    }
    var acc_lo: array<vec4<f32>, PIX_TILE>;
    var acc_hi: array<vec4<f32>, PIX_TILE>;
    let in_plane = p.in_height * p.in_width;
    var w_idx = co_tile * 2u;
    for (var ci = 0u; ci < p.in_channels; ci++) {
        let x_base = (n * p.in_channels + ci) * in_plane;
        for (var ky = 0u; ky < KERNEL_H; ky++) {
            let row = x_base + ky * p.in_width;
            for (var kx = 0u; kx < KERNEL_W; kx++) {
                let w_lo = weights[w_idx];
                let w_hi = weights[w_idx + 1u];
                w_idx += p.cout_vec4;
                for (var j = 0u; j < PIX_TILE; j++) {
                    let v = vec4(x[row + kx + base[j]]);
                    acc_lo[j] = fma(w_lo, v, acc_lo[j]);
                    acc_hi[j] = fma(w_hi, v, acc_hi[j]);
                }
            }
        }
    }
    t.lo = acc_lo;
    t.hi = acc_hi;
    return t;
}

// 1x1 kernel, stride 1, no padding: a GEMM over channels, with no bounds checks per tap.
fn accumulate_1x1(wid: vec3<u32>, lid: vec3<u32>) -> Tile {
    var t = tile_start(wid, lid);
    if (!t.live) {
        return t;
    }
    let n = t.n;
    let pix = t.pix;
    let plane = p.out_height * p.out_width;
    let co_tile = t.co_base / COUT_TILE;
    var q: array<u32, PIX_TILE>;
    for (var j = 0u; j < PIX_TILE; j++) {
        q[j] = min(pix[j], plane - 1u);
    }
    var acc_lo: array<vec4<f32>, PIX_TILE>;
    var acc_hi: array<vec4<f32>, PIX_TILE>;
    var w_idx = co_tile * 2u;
    var x_base = n * p.in_channels * plane;
    for (var ci = 0u; ci < p.in_channels; ci++) {
        let w_lo = weights[w_idx];
        let w_hi = weights[w_idx + 1u];
        w_idx += p.cout_vec4;
        for (var j = 0u; j < PIX_TILE; j++) {
            let v = vec4(x[x_base + q[j]]);
            acc_lo[j] = fma(w_lo, v, acc_lo[j]);
            acc_hi[j] = fma(w_hi, v, acc_hi[j]);
        }
        x_base += plane;
    }
    t.lo = acc_lo;
    t.hi = acc_hi;
    return t;
}

@compute @workgroup_size(WG_PIX, WG_CO)
fn conv2d(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let t = accumulate(wid, lid);
    if (t.live) {
        store_tile(t, UPSAMPLE);
    }
}

@compute @workgroup_size(WG_PIX, WG_CO)
fn conv2d_valid(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let t = accumulate_valid(wid, lid);
    if (t.live) {
        store_tile(t, UPSAMPLE);
    }
}

@compute @workgroup_size(WG_PIX, WG_CO)
fn conv2d_1x1(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let t = accumulate_1x1(wid, lid);
    if (t.live) {
        store_tile(t, UPSAMPLE);
    }
}

// Winograd F(2x2, 3x3) for 3x3 kernels with stride 1 (any padding): each invocation computes a
// 2x2 output tile for COUT_TILE channels with 16 multiply-adds per channel pair where direct
// convolution needs 36. Per input channel: the 4x4 input patch d, V = B^T d B, then for each of
// the 16 positions M += U * V with U = G g G^T precomputed on the host and stored at
// weights[(ci * 16 + t) * cout_vec4 + channel vec4]; finally Y = A^T M A.
// Grid: x = 2x2 tiles of WG_PIX per workgroup, y and z as the other entry points.
@compute @workgroup_size(WG_PIX, WG_CO)
fn conv2d_winograd(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let n = wid.z;
    let co_tile = wid.y * WG_CO + lid.y % WG_CO;
    let tiles_w = (p.out_width + 1u) / 2u;
    let tiles = tiles_w * ((p.out_height + 1u) / 2u);
    let tile = wid.x * WG_PIX + lid.x;
    if (tile >= tiles || co_tile * COUT_TILE >= p.out_channels) {
        return;
    }
    let oy = (tile / tiles_w) * 2u;
    let ox = (tile % tiles_w) * 2u;
    // Rows and columns of the 4x4 input patch, and which of them lie inside the input.
    var row_off: array<u32, 4>;
    var row_in: array<bool, 4>;
    var col: array<u32, 4>;
    var col_in: array<bool, 4>;
    for (var r = 0u; r < 4u; r++) {
        let iy = i32(oy + r) - i32(p.pad_h);
        row_in[r] = iy >= 0 && iy < i32(p.in_height);
        row_off[r] = select(0u, u32(iy) * p.in_width, row_in[r]);
        let ix = i32(ox + r) - i32(p.pad_w);
        col_in[r] = ix >= 0 && ix < i32(p.in_width);
        col[r] = select(0u, u32(ix), col_in[r]);
    }
    var m_lo: array<vec4<f32>, 16>;
    var m_hi: array<vec4<f32>, 16>;
    let in_plane = p.in_height * p.in_width;
    var w_idx = co_tile * 2u;
    for (var ci = 0u; ci < p.in_channels; ci++) {
        let x_base = (n * p.in_channels + ci) * in_plane;
        var d: array<vec4<f32>, 4>; // rows of the patch
        for (var r = 0u; r < 4u; r++) {
            for (var k = 0u; k < 4u; k++) {
                let inside = row_in[r] && col_in[k];
                d[r][k] = select(0.0, x[x_base + row_off[r] + col[k]], inside);
            }
        }
        // B^T d (rows), then the same across columns.
        var b: array<vec4<f32>, 4>;
        b[0] = d[0] - d[2];
        b[1] = d[1] + d[2];
        b[2] = d[2] - d[1];
        b[3] = d[1] - d[3];
        for (var r = 0u; r < 4u; r++) {
            let q = b[r];
            let v = vec4(q.x - q.z, q.y + q.z, q.z - q.y, q.y - q.w);
            for (var k = 0u; k < 4u; k++) {
                let t = r * 4u + k;
                let u_lo = weights[w_idx + t * p.cout_vec4];
                let u_hi = weights[w_idx + t * p.cout_vec4 + 1u];
                m_lo[t] = fma(u_lo, vec4(v[k]), m_lo[t]);
                m_hi[t] = fma(u_hi, vec4(v[k]), m_hi[t]);
            }
        }
        w_idx += 16u * p.cout_vec4;
    }
    // Y = A^T M A, four channels at a time; then the epilogue for each of the 2x2 pixels.
    let plane = p.out_height * p.out_width;
    for (var half = 0u; half < 2u; half++) {
        var m: array<vec4<f32>, 16>;
        if (half == 0u) {
            m = m_lo;
        } else {
            m = m_hi;
        }
        var y: array<vec4<f32>, 4>; // y[row * 2 + col], channels in the vec4
        for (var k = 0u; k < 4u; k++) {
            let c0 = m[k] + m[4u + k] + m[8u + k];
            let c1 = m[4u + k] - m[8u + k] - m[12u + k];
            if (k == 0u) {
                y[0] = c0;
                y[2] = c1;
            } else if (k == 1u) {
                y[0] += c0;
                y[1] = c0;
                y[2] += c1;
                y[3] = c1;
            } else if (k == 2u) {
                y[0] += c0;
                y[1] -= c0;
                y[2] += c1;
                y[3] -= c1;
            } else {
                y[1] -= c0;
                y[3] -= c1;
            }
        }
        for (var c = 0u; c < 4u; c++) {
            let co = co_tile * COUT_TILE + half * 4u + c;
            if (co >= p.out_channels) {
                break;
            }
            for (var r = 0u; r < 2u; r++) {
                for (var k = 0u; k < 2u; k++) {
                    if (oy + r < p.out_height && ox + k < p.out_width) {
                        store_output(n, co, (oy + r) * p.out_width + ox + k, y[r * 2u + k][c], false);
                    }
                }
            }
        }
    }
}
