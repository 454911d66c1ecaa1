// 2-D convolution (groups = 1) with a fused epilogue:
//   out = relu?( acc * scale[co] + shift[co] + residual? )
// A bias is folded into `shift` on the host; a batch norm into `scale` and `shift`.
//
// Bindings (read-only inputs, then the output, then parameters):
//   0  x         [N, Cin, H, W]                       input, NCHW
//   1  weights   [K][cout_pad / 4] vec4               K = (ci * KH + ky) * KW + kx, output
//                                                     channels contiguous, zero padded
//   2  affine    [2][cout_pad]                        scale, then shift
//   3  residual  [N, Cout, OH, OW]                    read only when FLAG_RESIDUAL is set
//   4  out       [N, Cout, OH, OW]
//   5  params    Conv2dParams
//
// Grid: x = pixel tiles of WG_PIX * PIX_TILE, y = output channel tiles of COUT_TILE, z = batch. Each invocation owns COUT_TILE output channels by
// PIX_TILE pixels; its pixels are WG_PIX apart so that neighbouring invocations read
// neighbouring addresses.

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
    _pad0: u32,
    _pad1: u32,
}

const FLAG_RELU: u32 = 1u;
const FLAG_RESIDUAL: u32 = 2u;
// Must match the Rust wrapper's COUT_TILE and PIX_TILE.
const COUT_TILE: u32 = 8u;
const PIX_TILE: u32 = 8u;

override WG_PIX: u32 = 64u;

// ReLU that keeps NaN, decided on the bits: GL drivers may rewrite a float comparison such as
// `v < 0.0 ? 0.0 : v` into max(v, 0.0), which turns NaN into 0 where PyTorch keeps it.
fn relu_keep_nan(v: f32) -> f32 {
    let bits = bitcast<u32>(v);
    // Negative and finite or -inf: sign set, magnitude at most that of infinity.
    return select(v, 0.0, bits > 0x80000000u && bits <= 0xff800000u);
}

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> weights: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> affine: array<f32>;
@group(0) @binding(3) var<storage, read> residual: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
@group(0) @binding(5) var<uniform> p: Conv2dParams;

fn store_tile(n: u32, co_base: u32, pix: array<u32, PIX_TILE>, acc_lo: array<vec4<f32>, PIX_TILE>,
              acc_hi: array<vec4<f32>, PIX_TILE>) {
    let plane = p.out_height * p.out_width;
    let cout_pad = p.cout_vec4 * 4u;
    for (var c = 0u; c < COUT_TILE; c++) {
        let co = co_base + c;
        if (co >= p.out_channels) {
            return;
        }
        let scale = affine[co];
        let shift = affine[cout_pad + co];
        let row = (n * p.out_channels + co) * plane;
        for (var j = 0u; j < PIX_TILE; j++) {
            if (pix[j] >= plane) {
                continue;
            }
            var a: f32;
            if (c < 4u) {
                a = acc_lo[j][c];
            } else {
                a = acc_hi[j][c - 4u];
            }
            var v = a * scale + shift;
            let idx = row + pix[j];
            if ((p.flags & FLAG_RESIDUAL) != 0u) {
                v += residual[idx];
            }
            if ((p.flags & FLAG_RELU) != 0u) {
                v = relu_keep_nan(v);
            }
            out[idx] = v;
        }
    }
}

fn tile_pixels(tile: u32, lid: u32) -> array<u32, PIX_TILE> {
    let base = tile * WG_PIX * PIX_TILE + lid;
    var pix: array<u32, PIX_TILE>;
    for (var j = 0u; j < PIX_TILE; j++) {
        pix[j] = base + j * WG_PIX;
    }
    return pix;
}

// General case: any kernel size, stride and zero padding.
@compute @workgroup_size(WG_PIX)
fn conv2d(@builtin(workgroup_id) wid: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    let n = wid.z;
    let co_tile = wid.y;
    let plane = p.out_height * p.out_width;
    let pix = tile_pixels(wid.x, lid);
    if (pix[0] >= plane) {
        return;
    }
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
    let khw = p.kernel_h * p.kernel_w;
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
                    let v = select(0.0, x[idx], inside);
                    acc_lo[j] = fma(w_lo, vec4(v), acc_lo[j]);
                    acc_hi[j] = fma(w_hi, vec4(v), acc_hi[j]);
                }
            }
        }
    }
    store_tile(n, co_tile * COUT_TILE, pix, acc_lo, acc_hi);
}

// 1x1 kernel, stride 1, no padding: a GEMM over channels, with no bounds checks per tap.
@compute @workgroup_size(WG_PIX)
fn conv2d_1x1(@builtin(workgroup_id) wid: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let n = wid.z;
    let co_tile = wid.y;
    let plane = p.out_height * p.out_width;
    let pix = tile_pixels(wid.x, lid);
    if (pix[0] >= plane) {
        return;
    }
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
            let v = x[x_base + q[j]];
            acc_lo[j] = fma(w_lo, vec4(v), acc_lo[j]);
            acc_hi[j] = fma(w_hi, vec4(v), acc_hi[j]);
        }
        x_base += plane;
    }
    store_tile(n, co_tile * COUT_TILE, pix, acc_lo, acc_hi);
}
