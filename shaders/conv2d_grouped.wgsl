// Grouped 2-D convolution (groups > 1, depthwise included) with zero padding handled per tap.
// Needs common.wgsl, resample.wgsl, conv2d_epilogue.wgsl (the fused epilogue, bindings 2-4) and
// conv2d_nchw.wgsl (parameters, binding 5) before it. Output channel co sees only the
// cin / groups input channels of its group, co / (cout / groups), so each sum is
// cin / groups * KH * KW long, not cin * KH * KW.
//
// Entry points (the Rust wrapper picks one per convolution):
//   conv2d_grouped4   4 output channels per invocation; needs cout / groups a multiple of 4
//                     (ResNeXt's 3x3s), so that the 4 share their group and every input value
//                     loaded feeds 4 multiply-adds
//   conv2d_grouped1   1 output channel per invocation, any cout / groups (depthwise)
// Both take the upsampled-residual epilogue when the pipeline sets the UPSAMPLE override.
//
// Weights are the direct kernels' [K][cout_pad] with K = (ci * KH + ky) * KW + kx for ci
// within the group: a channel tile's weights for one tap are one aligned vec4.
//
// Grid: x = pixel tiles of WG_PIX * PIX_TILE, y = groups of WG_CO channel tiles, z = batch.
// An invocation's pixels are WG_PIX apart so that neighbouring invocations read neighbouring
// addresses; with WG_CO = 1 the channel tile, and so every weight address, is uniform across
// the workgroup.

// Pixels per invocation. Must match the Rust wrapper's PIX_TILE.
const PIX_TILE: u32 = 4u;

override WG_PIX: u32 = 64u;
override WG_CO: u32 = 1u;

@group(0) @binding(0) var<storage, read> x: array<act>;
@group(0) @binding(1) var<storage, read> weights: array<vec4<act>>;

// Where an invocation's receptive fields start, and which input channels its group owns.
struct Fields {
    live: bool,
    n: u32,
    pix: array<u32, PIX_TILE>,
    iy0: array<i32, PIX_TILE>,
    ix0: array<i32, PIX_TILE>,
    // First input channel of the group and the group's channel count.
    ci0: u32,
    cin_g: u32,
}

fn fields(wid: vec3<u32>, lid: vec3<u32>, co_base: u32) -> Fields {
    var f: Fields;
    f.n = wid.z;
    let plane = p.out_height * p.out_width;
    let base = wid.x * WG_PIX * PIX_TILE + lid.x;
    f.live = base < plane && co_base < p.out_channels;
    for (var j = 0u; j < PIX_TILE; j++) {
        f.pix[j] = base + j * WG_PIX;
        let q = min(f.pix[j], plane - 1u);
        f.iy0[j] = i32((q / p.out_width) * p.stride_h) - i32(p.pad_h);
        f.ix0[j] = i32((q % p.out_width) * p.stride_w) - i32(p.pad_w);
    }
    f.cin_g = p.in_channels / p.groups;
    f.ci0 = co_base / (p.out_channels / p.groups) * f.cin_g;
    return f;
}

// The input value a pixel's tap reads, zero outside the map.
fn tap(x_base: u32, iy: i32, ix: i32) -> f32 {
    let inside = iy >= 0 && iy < i32(p.in_height) && ix >= 0 && ix < i32(p.in_width);
    let idx = select(0u, x_base + u32(iy) * p.in_width + u32(ix), inside);
    return select(0.0, f32(x[idx]), inside);
}

@compute @workgroup_size(WG_PIX, WG_CO, 1)
fn conv2d_grouped4(@builtin(workgroup_id) wid: vec3<u32>,
                   @builtin(local_invocation_id) lid: vec3<u32>) {
    // `% WG_CO` folds to 0 when WG_CO is 1 (see the grid note above).
    let co_base = (wid.y * WG_CO + lid.y % WG_CO) * 4u;
    let f = fields(wid, lid, co_base);
    if (!f.live) {
        return;
    }
    let in_plane = p.in_height * p.in_width;
    var acc: array<vec4<f32>, PIX_TILE>;
    var w_idx = co_base / 4u;
    for (var c = 0u; c < f.cin_g; c++) {
        let x_base = (f.n * p.in_channels + f.ci0 + c) * in_plane;
        for (var ky = 0u; ky < p.kernel_h; ky++) {
            for (var kx = 0u; kx < p.kernel_w; kx++) {
                let wv = vec4<f32>(weights[w_idx]);
                w_idx += p.cout_vec4;
                for (var j = 0u; j < PIX_TILE; j++) {
                    let v = tap(x_base, f.iy0[j] + i32(ky), f.ix0[j] + i32(kx));
                    acc[j] = fma(wv, vec4(v), acc[j]);
                }
            }
        }
    }
    let plane = p.out_height * p.out_width;
    for (var c = 0u; c < 4u; c++) {
        let co = co_base + c;
        if (co >= p.out_channels) {
            return;
        }
        for (var j = 0u; j < PIX_TILE; j++) {
            if (f.pix[j] < plane) {
                store_output(f.n, co, f.pix[j], acc[j][c], UPSAMPLE);
            }
        }
    }
}

@compute @workgroup_size(WG_PIX, WG_CO, 1)
fn conv2d_grouped1(@builtin(workgroup_id) wid: vec3<u32>,
                   @builtin(local_invocation_id) lid: vec3<u32>) {
    let co = wid.y * WG_CO + lid.y % WG_CO;
    let f = fields(wid, lid, co);
    if (!f.live) {
        return;
    }
    let in_plane = p.in_height * p.in_width;
    var acc: array<f32, PIX_TILE>;
    // The channel's weight for each tap is one lane of the vec4 holding it.
    let lane = co % 4u;
    var w_idx = co / 4u;
    for (var c = 0u; c < f.cin_g; c++) {
        let x_base = (f.n * p.in_channels + f.ci0 + c) * in_plane;
        for (var ky = 0u; ky < p.kernel_h; ky++) {
            for (var kx = 0u; kx < p.kernel_w; kx++) {
                let wv = f32(weights[w_idx][lane]);
                w_idx += p.cout_vec4;
                for (var j = 0u; j < PIX_TILE; j++) {
                    let v = tap(x_base, f.iy0[j] + i32(ky), f.ix0[j] + i32(kx));
                    acc[j] = fma(wv, v, acc[j]);
                }
            }
        }
    }
    let plane = p.out_height * p.out_width;
    for (var j = 0u; j < PIX_TILE; j++) {
        if (f.pix[j] < plane) {
            store_output(f.n, co, f.pix[j], acc[j], UPSAMPLE);
        }
    }
}
