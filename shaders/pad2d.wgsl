// Zero padding: out[n, c, y, x] = x[n, c, y - pad_h, x - pad_w] inside the input, 0 outside.
// Lets the convolutions that follow run without bounds checks per tap. Either layout (both
// tensors in the same one); needs layout.wgsl before it.
//
// Bindings:
//   0  x       [N, C, H, W]
//   1  out     [N, C, H + 2 * pad_h, W + 2 * pad_w]
//   2  params  Pad2dParams
//
// Grid: one invocation per element of the output's storage, workgroups linearised over x and y.

struct Pad2dParams {
    len: u32,
    in_height: u32,
    in_width: u32,
    pad_h: u32,
    pad_w: u32,
    channels: u32,
    channels_last: u32,
    _pad0: u32,
}

override WG: u32 = 256u;
// The layout, a constant per pipeline so that the other layout's index arithmetic is compiled
// out; params.channels_last then holds the padded channel count.
override CHANNELS_LAST: bool = false;

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
    let out_h = p.in_height + 2u * p.pad_h;
    let out_w = p.in_width + 2u * p.pad_w;
    // NCHW takes the channel and image together (one division fewer: llvmpipe scalarises
    // integer division, which doubled this kernel's time through the general path).
    var src: u32;
    var y: i32;
    var xx: i32;
    if (!CHANNELS_LAST) {
        let out_plane = out_h * out_w;
        let r = i % out_plane;
        y = i32(r / out_w) - i32(p.pad_h);
        xx = i32(r % out_w) - i32(p.pad_w);
        src = (i / out_plane * p.in_height + u32(max(y, 0))) * p.in_width + u32(max(xx, 0));
    } else {
        var pos = position(i, p.channels, out_h, out_w, p.channels_last);
        y = i32(pos.y) - i32(p.pad_h);
        xx = i32(pos.x) - i32(p.pad_w);
        pos.y = u32(max(y, 0));
        pos.x = u32(max(xx, 0));
        src = storage_index(pos, p.channels, p.in_height, p.in_width, p.channels_last);
    }
    let inside = y >= 0 && y < i32(p.in_height) && xx >= 0 && xx < i32(p.in_width);
    out[i] = select(act(0.0), x[select(0u, src, inside)], inside);
}
