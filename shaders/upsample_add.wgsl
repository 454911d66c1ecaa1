// out = upsample(x, to the size of y) + y, with PyTorch's index arithmetic:
//   bilinear_add: mode='bilinear', align_corners=False (half-pixel centres, source clamped
//                 at zero, second tap clamped at the border), any size ratio;
//   nearest_add:  mode='nearest' (source index floor(dst * in/out), clamped).
// Scales are in/out computed in f32 on the host, as PyTorch does.
//
// Bindings:
//   0  x       [N, C, IH, IW]   the coarser map
//   1  y       [N, C, OH, OW]   the lateral map; sets the output size
//   2  out     [N, C, OH, OW]
//   3  params  UpsampleAddParams
//
// Grid: one invocation per output element, workgroups linearised over x and y.

struct UpsampleAddParams {
    len: u32,
    in_height: u32,
    in_width: u32,
    out_height: u32,
    out_width: u32,
    scale_h: f32,
    scale_w: f32,
    _pad0: u32,
}

override WG: u32 = 256u;

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> y: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@group(0) @binding(3) var<uniform> p: UpsampleAddParams;

struct Taps {
    i0: u32,
    i1: u32,
    l0: f32,
    l1: f32,
}

fn linear_taps(dst: u32, in_size: u32, scale: f32) -> Taps {
    let src = max(scale * (f32(dst) + 0.5) - 0.5, 0.0);
    let i0 = u32(src);
    let l1 = clamp(src - f32(i0), 0.0, 1.0);
    var t: Taps;
    t.i0 = i0;
    t.i1 = select(i0, i0 + 1u, i0 + 1u < in_size);
    t.l0 = 1.0 - l1;
    t.l1 = l1;
    return t;
}

fn nearest_index(dst: u32, in_size: u32, out_size: u32, scale: f32) -> u32 {
    if (in_size == out_size) {
        return dst;
    }
    if (out_size == 2u * in_size) {
        return dst >> 1u;
    }
    return min(u32(floor(f32(dst) * scale)), in_size - 1u);
}

@compute @workgroup_size(WG)
fn bilinear_add(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let i = (wid.y * nwg.x + wid.x) * WG + lid;
    if (i >= p.len) {
        return;
    }
    let out_plane = p.out_height * p.out_width;
    let nc = i / out_plane;
    let r = i % out_plane;
    let h = linear_taps(r / p.out_width, p.in_height, p.scale_h);
    let w = linear_taps(r % p.out_width, p.in_width, p.scale_w);
    let base = nc * p.in_height * p.in_width;
    let row0 = base + h.i0 * p.in_width;
    let row1 = base + h.i1 * p.in_width;
    let top = w.l0 * x[row0 + w.i0] + w.l1 * x[row0 + w.i1];
    let bottom = w.l0 * x[row1 + w.i0] + w.l1 * x[row1 + w.i1];
    out[i] = (h.l0 * top + h.l1 * bottom) + y[i];
}

@compute @workgroup_size(WG)
fn nearest_add(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let i = (wid.y * nwg.x + wid.x) * WG + lid;
    if (i >= p.len) {
        return;
    }
    let out_plane = p.out_height * p.out_width;
    let nc = i / out_plane;
    let r = i % out_plane;
    let sy = nearest_index(r / p.out_width, p.in_height, p.out_height, p.scale_h);
    let sx = nearest_index(r % p.out_width, p.in_width, p.out_width, p.scale_w);
    out[i] = x[nc * p.in_height * p.in_width + sy * p.in_width + sx] + y[i];
}
