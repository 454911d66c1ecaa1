// 2-D convolution (groups = 1) with zero padding handled per tap, and Winograd F(2x2, 3x3).
// Needs common.wgsl, resample.wgsl, conv2d_epilogue.wgsl (the fused epilogue, bindings 2-4) and
// conv2d_nchw.wgsl (parameters, binding 5) before it. Convolutions without padding, which is
// every one the graph runs after its explicit-padding pass, use the faster row kernels of
// conv2d_rows.wgsl instead.
//
// Entry points (the Rust wrapper picks one per convolution):
//   conv2d               any kernel, stride and zero padding (bounds checked per tap)
//   conv2d_winograd      Winograd F(2x2, 3x3), stride 1, weights pre-transformed on the host
// conv2d takes the upsampled-residual epilogue when the pipeline sets the UPSAMPLE override,
// and channels-last tensors when it sets CHANNELS_LAST (conv2d_nchw.wgsl): the portable kernel
// of channels-last networks where no cooperative matrices run; it writes the zero padding
// channels too.
//
// Grid: x = pixel tiles of WG_PIX * PIX_TILE (Winograd: WG_PIX 2x2 tiles), y = groups of WG_CO
// output channel tiles, z = batch. Each invocation owns COUT_TILE output channels by PIX_TILE
// pixels (a register tile: every input value loaded feeds COUT_TILE multiply-adds); its pixels
// are WG_PIX apart so that neighbouring invocations read neighbouring addresses. Small maps use
// a small WG_PIX and put several channel tiles in one workgroup instead.

// The register tile: two vec4s of output channels (lo, hi) by PIX_TILE pixels. Must match the
// Rust wrapper's COUT_TILE and PIX_TILE. Kept as named vec4 variables rather than one indexed
// array: llvmpipe then holds them in registers (measured 1.4-1.8x faster).
const COUT_TILE: u32 = 8u;
const PIX_TILE: u32 = 8u;

override WG_PIX: u32 = 64u;
override WG_CO: u32 = 1u;

@group(0) @binding(0) var<storage, read> x: array<act>;
@group(0) @binding(1) var<storage, read> weights: array<vec4<act>>;

// One invocation's accumulators: channels co_base..+4 in lo, +4..+8 in hi, for pixels pix.
struct Tile {
    live: bool,
    n: u32,
    co_base: u32,
    pix: array<u32, PIX_TILE>,
    lo: array<vec4<f32>, PIX_TILE>,
    hi: array<vec4<f32>, PIX_TILE>,
}

// Stores a tile through the epilogue. Channels-last, the padding channels of the tile (from
// out_channels up to p.out_cl) are stored as zeros: whatever reads them next must not meet
// stale values.
fn store_tile(t: Tile, upsample: bool) {
    let plane = p.out_height * p.out_width;
    for (var c = 0u; c < COUT_TILE; c++) {
        let co = t.co_base + c;
        if (co >= p.out_channels) {
            if (CHANNELS_LAST) {
                zero_channels(t.n, co, t.pix);
            }
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
    // Element (ci, iy, ix) of image n is at x_base + (iy * w + ix) * step: NCHW, the
    // channel's plane; channels-last, the pixel's channels (p.in_cl of them, padded).
    var step = 1u;
    if (CHANNELS_LAST) {
        step = p.in_cl;
    }
    for (var ci = 0u; ci < p.in_channels; ci++) {
        var x_base = (n * p.in_channels + ci) * in_plane;
        if (CHANNELS_LAST) {
            x_base = n * in_plane * p.in_cl + ci;
        }
        for (var ky = 0u; ky < p.kernel_h; ky++) {
            for (var kx = 0u; kx < p.kernel_w; kx++) {
                let w_lo = vec4<f32>(weights[w_idx]);
                let w_hi = vec4<f32>(weights[w_idx + 1u]);
                w_idx += p.cout_vec4;
                for (var j = 0u; j < PIX_TILE; j++) {
                    let iy = iy0[j] + i32(ky);
                    let ix = ix0[j] + i32(kx);
                    let inside = iy >= 0 && iy < h && ix >= 0 && ix < w;
                    let idx = select(0u, x_base + u32(iy * w + ix) * step, inside);
                    let v = vec4(select(0.0, f32(x[idx]), inside));
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

// Channels-last: zeros in the padding channels from `first` to the tile's end (and past it up
// to p.out_cl) at the tile's pixels.
fn zero_channels(n: u32, first: u32, pix: array<u32, PIX_TILE>) {
    let plane = p.out_height * p.out_width;
    let end = min(p.out_cl, (first / COUT_TILE + 1u) * COUT_TILE);
    for (var co = first; co < end; co++) {
        for (var j = 0u; j < PIX_TILE; j++) {
            if (pix[j] < plane) {
                out[(n * plane + pix[j]) * p.out_cl + co] = act(0.0);
            }
        }
    }
}

@compute @workgroup_size(WG_PIX, WG_CO)
fn conv2d(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let t = accumulate(wid, lid);
    if (t.live) {
        store_tile(t, UPSAMPLE);
    } else if (CHANNELS_LAST) {
        // A tile wholly in the padding channels (the grid covers p.out_cl of them).
        let s = tile_start(wid, lid);
        if (s.pix[0] < p.out_height * p.out_width && s.co_base < p.out_cl) {
            zero_channels(s.n, s.co_base, s.pix);
        }
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
                d[r][k] = select(0.0, f32(x[x_base + row_off[r] + col[k]]), inside);
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
                let u_lo = vec4<f32>(weights[w_idx + t * p.cout_vec4]);
                let u_hi = vec4<f32>(weights[w_idx + t * p.cout_vec4 + 1u]);
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
