// 2-D average pooling with PyTorch's AvgPool2d(padding=0, ceil_mode=True,
// count_include_pad=False): each window is clipped to the input (the last one may overhang it
// in ceil mode) and the output is the mean of the elements inside, summed in f32. Either
// layout (both tensors in the same one); needs layout.wgsl before it.
//
// Bindings:
//   0  x       [N, C, H, W]
//   1  out     [N, C, OH, OW]
//   2  params  AvgPool2dParams
//
// Grid: one invocation per element of the output's storage, workgroups linearised over x and y.

struct AvgPool2dParams {
    len: u32,
    in_height: u32,
    in_width: u32,
    out_height: u32,
    out_width: u32,
    // Kernel and stride, clamped by the Rust side to the input's size (which changes no
    // window): every window starts inside the input.
    kernel_h: u32,
    kernel_w: u32,
    stride_h: u32,
    stride_w: u32,
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
@group(0) @binding(2) var<uniform> p: AvgPool2dParams;

@compute @workgroup_size(WG)
fn avg_pool2d(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let i = (wid.y * nwg.x + wid.x) * WG + lid;
    if (i >= p.len) {
        return;
    }
    // The input element of (y, x) is at `base + (y * in_width + x) * step`, as in
    // max_pool2d.wgsl. In channels-last storage the padding channels read zeros and write 0.
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
    // The window clipped to the input; it starts inside, so it is never empty.
    let y_start = oy * p.stride_h;
    let x_start = ox * p.stride_w;
    let y_end = y_start + min(p.kernel_h, p.in_height - y_start);
    let x_end = x_start + min(p.kernel_w, p.in_width - x_start);
    var sum = 0.0;
    for (var y = y_start; y < y_end; y++) {
        for (var xx = x_start; xx < x_end; xx++) {
            sum += f32(x[base + (y * p.in_width + xx) * step]);
        }
    }
    // count_include_pad=False: the divisor is the number of elements summed.
    let count = (y_end - y_start) * (x_end - x_start);
    out[i] = act(sum / f32(count));
}
