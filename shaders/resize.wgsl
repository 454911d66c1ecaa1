// torchvision's detection transform of a batch of pictures, as GeneralizedRCNNTransform runs it
// in eval: normalise each channel ((v - mean) / std), resize with F.interpolate(mode='bilinear',
// align_corners=False) to out_height x out_width, and pad with zeros on the bottom and right
// to padded_height x padded_width (a multiple of 32). Each of the four taps is normalised
// before it is weighted, in the order PyTorch computes them, in f32 whatever `act` stores.
// Either layout (both tensors in the same one; channels-last padding channels are written as
// zeros). Needs common.wgsl and layout.wgsl before it.
//
// Bindings:
//   0  x       [N, C, in_height, in_width]
//   1  out     [N, C, padded_height, padded_width]
//   2  params  ResizeParams
//
// Grid: one invocation per output element, workgroups linearised over x and y.

struct ResizeParams {
    len: u32,
    channels: u32,
    in_height: u32,
    in_width: u32,
    out_height: u32,
    out_width: u32,
    padded_height: u32,
    padded_width: u32,
    // in / out, divided in f32 as PyTorch does.
    scale_h: f32,
    scale_w: f32,
    // Channels-last: the padded channel count of both tensors; 0 for NCHW.
    cl: u32,
    _pad0: u32,
    // Per channel (at most 4), as vec4s for the uniform layout.
    mean: vec4<f32>,
    stddev: vec4<f32>,
}

override WG: u32 = 256u;
// The layout, a constant per pipeline so that the other layout's index arithmetic is compiled
// out.
override CHANNELS_LAST: bool = false;

@group(0) @binding(0) var<storage, read> x: array<act>;
@group(0) @binding(1) var<storage, read_write> out: array<act>;
@group(0) @binding(2) var<uniform> p: ResizeParams;

// Pixel (y, xx) of the channel whose plane starts at `base`, `step` apart (1 for NCHW, the
// padded channel count for channels-last), normalised.
fn tap(base: u32, step: u32, y: u32, xx: u32, mean: f32, stddev: f32) -> f32 {
    return (f32(x[base + (y * p.in_width + xx) * step]) - mean) / stddev;
}

@compute @workgroup_size(WG)
fn normalize_resize(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_index) lid: u32) {
    let i = (wid.y * nwg.x + wid.x) * WG + lid;
    if (i >= p.len) {
        return;
    }
    var oy: u32;
    var ox: u32;
    var c: u32;
    var base: u32;
    var step = 1u;
    if (CHANNELS_LAST) {
        let pos = position(i, p.channels, p.padded_height, p.padded_width, p.cl);
        oy = pos.y;
        ox = pos.x;
        c = pos.c;
        step = p.cl;
        base = pos.n * p.in_height * p.in_width * p.cl + pos.c;
    } else {
        let plane = p.padded_height * p.padded_width;
        let nc = i / plane;
        oy = i % plane / p.padded_width;
        ox = i % p.padded_width;
        c = nc % p.channels;
        base = nc * p.in_height * p.in_width;
    }
    // The padding (and channels-last, the padding channels) hold zeros.
    if (oy >= p.out_height || ox >= p.out_width || c >= p.channels) {
        out[i] = act(0.0);
        return;
    }
    let mean = p.mean[c];
    let stddev = p.stddev[c];
    let h = linear_taps(oy, p.in_height, p.scale_h);
    let w = linear_taps(ox, p.in_width, p.scale_w);
    let top = w.l0 * tap(base, step, h.i0, w.i0, mean, stddev)
        + w.l1 * tap(base, step, h.i0, w.i1, mean, stddev);
    let bottom = w.l0 * tap(base, step, h.i1, w.i0, mean, stddev)
        + w.l1 * tap(base, step, h.i1, w.i1, mean, stddev);
    out[i] = act(h.l0 * top + h.l1 * bottom);
}
