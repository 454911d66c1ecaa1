// Pyramid levels packed into one map ("stacked levels"), so that a detection head whose weights
// are shared across levels runs each of its layers once over all of them. Level l occupies the
// rectangle regions[l] = (y0, x0, height, width) of an N x C x HS x WS map; the regions are
// apart by at least one row or column, and everything outside them is zero, so a 3x3
// convolution with zero padding 1 over the map gives, inside each region, that level's own
// output.
//
// Entry points:
//   stack_levels  out = the levels (bindings 0..4, as many as regions) placed in their regions
//   mask_levels   out = x inside the regions, zero outside (after each layer of a head: the
//                 convolution's bias and ReLU leave values outside the regions), optionally
//                 inside a zero border of pad_y rows and pad_x columns: the padded input of
//                 the next 3x3 convolution, without a padding launch of its own
//
// Bindings:
//   0..4  level0..level4  [N, C, h_l, w_l]   stack_levels (unused ones bound to level 0)
//   5     x               [N, C, HS, WS]      mask_levels
//   6     out             [N, C, HS + 2 pad_y, WS + 2 pad_x]   (pad 0 for stack_levels)
//   7     params          LevelsParams
//
// Either layout (every tensor in the same one; channels-last padding channels are written as
// zeros).
//
// Grid: one invocation per element of the output's storage, workgroups linearised over x and y.
// Needs layout.wgsl and level_regions.wgsl before it.

struct LevelsParams {
    len: u32,
    // The output's size.
    height: u32,
    width: u32,
    count: u32,
    // mask_levels: the input's size and the border around it in the output.
    in_height: u32,
    in_width: u32,
    pad_y: u32,
    pad_x: u32,
    // The channels, and channels-last their padded count (0 for NCHW).
    channels: u32,
    cl: u32,
    _pad0: u32,
    _pad1: u32,
    // (y0, x0, height, width) of each level, in the packed map.
    regions: array<vec4<u32>, 8>,
}

override WG: u32 = 256u;
// The layout, a constant per pipeline so that the other layout's index arithmetic is compiled
// out.
override CHANNELS_LAST: bool = false;

@group(0) @binding(0) var<storage, read> level0: array<act>;
@group(0) @binding(1) var<storage, read> level1: array<act>;
@group(0) @binding(2) var<storage, read> level2: array<act>;
@group(0) @binding(3) var<storage, read> level3: array<act>;
@group(0) @binding(4) var<storage, read> level4: array<act>;
@group(0) @binding(5) var<storage, read> x: array<act>;
@group(0) @binding(6) var<storage, read_write> out: array<act>;
@group(0) @binding(7) var<uniform> p: LevelsParams;

// The level whose region holds (y, xx) and the pixel's index in that level's plane; level
// p.count when it lies in none.
fn locate(y: u32, xx: u32) -> vec2<u32> {
    let l = level_at(y, xx);
    if (l >= p.count) {
        return vec2<u32>(p.count, 0u);
    }
    let r = p.regions[l];
    return vec2<u32>(l, (y - r.x) * r.w + (xx - r.y));
}

fn element(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.y * nwg.x + wid.x) * WG + lid;
}

// The output element i: its image n, channel c (channels-last, possibly a padding one), and
// the pixel (y, xx) of the output map; `nc` is n * channels + c for NCHW.
struct At {
    n: u32,
    c: u32,
    nc: u32,
    y: u32,
    xx: u32,
}

fn output_position(i: u32) -> At {
    var at: At;
    if (CHANNELS_LAST) {
        let pos = position(i, p.channels, p.height, p.width, p.cl);
        at.n = pos.n;
        at.c = pos.c;
        at.y = pos.y;
        at.xx = pos.x;
    } else {
        let plane = p.height * p.width;
        at.nc = i / plane;
        let pix = i % plane;
        at.y = pix / p.width;
        at.xx = pix % p.width;
    }
    return at;
}

@compute @workgroup_size(WG)
fn stack_levels(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let i = element(wid, nwg, lid);
    if (i >= p.len) {
        return;
    }
    let o = output_position(i);
    let at = locate(o.y, o.xx);
    var v = act(0.0);
    if (at.x < p.count && (!CHANNELS_LAST || o.c < p.channels)) {
        let r = p.regions[at.x];
        var src = o.nc * r.z * r.w + at.y;
        if (CHANNELS_LAST) {
            src = (o.n * r.z * r.w + at.y) * p.cl + o.c;
        }
        switch at.x {
            case 0u: { v = level0[src]; }
            case 1u: { v = level1[src]; }
            case 2u: { v = level2[src]; }
            case 3u: { v = level3[src]; }
            default: { v = level4[src]; }
        }
    }
    out[i] = v;
}

@compute @workgroup_size(WG)
fn mask_levels(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let i = element(wid, nwg, lid);
    if (i >= p.len) {
        return;
    }
    let o = output_position(i);
    // The input pixel under this output pixel; the border wraps to huge values and misses.
    let y = o.y - p.pad_y;
    let xx = o.xx - p.pad_x;
    var v = act(0.0);
    if (y < p.in_height && xx < p.in_width && locate(y, xx).x < p.count
            && (!CHANNELS_LAST || o.c < p.channels)) {
        var src = (o.nc * p.in_height + y) * p.in_width + xx;
        if (CHANNELS_LAST) {
            src = ((o.n * p.in_height + y) * p.in_width + xx) * p.cl + o.c;
        }
        v = x[src];
    }
    out[i] = v;
}
