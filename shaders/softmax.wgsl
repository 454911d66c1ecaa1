// Softmax over the channels, torch.softmax(x, dim=1) of an NCHW tensor: for each image and
// pixel, out[c] = exp(x[c] - max) / sum_c' exp(x[c'] - max), the maximum subtracted first so
// that no exp overflows. A row holding a NaN is NaN throughout, as in PyTorch (decided on the
// bits: a driver may fold a NaN comparison away, and WGSL's max() need not return a NaN).
//
// Bindings:
//   0  x       [N, C, H, W]   `act`: class logits, [R, classes, 1, 1] for a box predictor
//   1  out     [N, C, H, W]   f32: scores are read by post-processing in f32, whatever the
//                             activations are stored in
//   2  params  SoftmaxParams
//
// Grid: one invocation per row (image and pixel), workgroups linearised over x and y. A row is
// a box's class logits, 91 for COCO's classes, over about 1000 proposals: a thousand rows of a
// hundred values, read three times, are too little work to share a row between invocations
// (a workgroup per row would leave most of its invocations idle and add barriers); rows are
// what there are many of.

struct SoftmaxParams {
    // N * H * W.
    rows: u32,
    channels: u32,
    // H * W: the distance between a row's channels.
    plane: u32,
    _pad: u32,
}

override WG: u32 = 256u;

@group(0) @binding(0) var<storage, read> x: array<act>;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<uniform> p: SoftmaxParams;

fn is_nan(v: f32) -> bool {
    return (bitcast<u32>(v) & 0x7fffffffu) > 0x7f800000u;
}

@compute @workgroup_size(WG)
fn softmax(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let row = (wid.y * nwg.x + wid.x) * WG + lid;
    if (row >= p.rows) {
        return;
    }
    let image = row / p.plane;
    let base = image * p.channels * p.plane + row % p.plane;
    var top = f32(x[base]);
    // The row's NaN, if it has one, is what it writes: a NaN made at run time, since WGSL's
    // constant evaluation rejects a NaN constant.
    var nan = false;
    var nan_value = 0.0;
    for (var c = 0u; c < p.channels; c++) {
        let v = f32(x[base + c * p.plane]);
        if (is_nan(v)) {
            nan = true;
            nan_value = v;
        }
        top = max(top, v);
    }
    var sum = 0.0;
    for (var c = 0u; c < p.channels; c++) {
        sum += exp(f32(x[base + c * p.plane]) - top);
    }
    for (var c = 0u; c < p.channels; c++) {
        let i = base + c * p.plane;
        out[i] = select(exp(f32(x[i]) - top) / sum, nan_value, nan);
    }
}
