// 2-D max pooling with PyTorch semantics (floor mode): padded positions never win the max,
// and a NaN in the window propagates. Either layout (both tensors in the same one); needs
// layout.wgsl before it.
//
// Bindings:
//   0  x       [N, C, H, W]
//   1  out     [N, C, OH, OW]
//   2  params  MaxPool2dParams
//
// Grid: one invocation per element of the output's storage, workgroups linearised over x and y.

struct MaxPool2dParams {
    len: u32,
    in_height: u32,
    in_width: u32,
    out_height: u32,
    out_width: u32,
    kernel_h: u32,
    kernel_w: u32,
    stride_h: u32,
    stride_w: u32,
    pad_h: u32,
    pad_w: u32,
    channels: u32,
    channels_last: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

override WG: u32 = 256u;
// The layout, a constant per pipeline so that the other layout's index arithmetic is compiled
// out; params.channels_last then holds the padded channel count.
override CHANNELS_LAST: bool = false;

@group(0) @binding(0) var<storage, read> x: array<act>;
@group(0) @binding(1) var<storage, read_write> out: array<act>;
@group(0) @binding(2) var<uniform> p: MaxPool2dParams;

@compute @workgroup_size(WG)
fn max_pool2d(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let i = (wid.y * nwg.x + wid.x) * WG + lid;
    if (i >= p.len) {
        return;
    }
    // The input element of (y, x) is at `base + (y * in_width + x) * step`: NCHW takes the
    // channel and image together, one division fewer than the general path (llvmpipe
    // scalarises integer division).
    var base: u32;
    var step = 1u;
    var oy: u32;
    var ox: u32;
    if (!CHANNELS_LAST) {
        let out_plane = p.out_height * p.out_width;
        let r = i % out_plane;
        oy = r / p.out_width;
        ox = r % p.out_width;
        base = i / out_plane * p.in_height * p.in_width;
    } else {
        let pos = position(i, p.channels, p.out_height, p.out_width, p.channels_last);
        oy = pos.y;
        ox = pos.x;
        step = p.channels_last;
        base = pos.n * p.in_height * p.in_width * step + pos.c;
    }
    // Clip the window to the input: padding contributes nothing.
    let y0 = i32(oy * p.stride_h) - i32(p.pad_h);
    let x0 = i32(ox * p.stride_w) - i32(p.pad_w);
    let y_start = u32(max(y0, 0));
    let x_start = u32(max(x0, 0));
    let y_end = u32(min(y0 + i32(p.kernel_h), i32(p.in_height)));
    let x_end = u32(min(x0 + i32(p.kernel_w), i32(p.in_width)));
    // -inf, made at run time: WGSL's constant evaluation (Tint's, in browsers) rejects an
    // infinite constant.
    var neg_inf_bits = 0xff800000u;
    var m = bitcast<f32>(neg_inf_bits);
    for (var y = y_start; y < y_end; y++) {
        for (var xx = x_start; xx < x_end; xx++) {
            let v = f32(x[base + (y * p.in_width + xx) * step]);
            // PyTorch lets a NaN win the max. The NaN test looks at the bits: `v != v` may be
            // folded away by drivers that assume no NaNs.
            let is_nan = (bitcast<u32>(v) & 0x7fffffffu) > 0x7f800000u;
            if (v > m || is_nan) {
                m = v;
            }
        }
    }
    out[i] = act(m);
}
