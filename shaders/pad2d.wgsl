// Zero padding: out[n, c, y, x] = x[n, c, y - pad_h, x - pad_w] inside the input, 0 outside.
// Lets the convolutions that follow run without bounds checks per tap.
//
// Bindings:
//   0  x       [N, C, H, W]
//   1  out     [N, C, H + 2 * pad_h, W + 2 * pad_w]
//   2  params  Pad2dParams
//
// Grid: one invocation per output element, workgroups linearised over x and y.

struct Pad2dParams {
    len: u32,
    in_height: u32,
    in_width: u32,
    pad_h: u32,
    pad_w: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

override WG: u32 = 256u;

@group(0) @binding(0) var<storage, read> x: array<act>;
@group(0) @binding(1) var<storage, read_write> out: array<act>;
@group(0) @binding(2) var<uniform> p: Pad2dParams;

@compute @workgroup_size(WG)
fn pad2d(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) lid: u32) {
    let i = (wid.y * nwg.x + wid.x) * WG + lid;
    if (i >= p.len) {
        return;
    }
    let out_w = p.in_width + 2u * p.pad_w;
    let out_plane = (p.in_height + 2u * p.pad_h) * out_w;
    let nc = i / out_plane;
    let r = i % out_plane;
    let y = i32(r / out_w) - i32(p.pad_h);
    let xx = i32(r % out_w) - i32(p.pad_w);
    let inside = y >= 0 && y < i32(p.in_height) && xx >= 0 && xx < i32(p.in_width);
    let src = select(0u, (nc * p.in_height + u32(y)) * p.in_width + u32(xx), inside);
    out[i] = select(act(0.0), x[src], inside);
}
