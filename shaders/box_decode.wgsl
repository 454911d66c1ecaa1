// Boxes for the candidates a per-level top-k selected: each candidate's anchor (torchvision's
// AnchorGenerator: the level's cell anchors shifted by the integer stride), its regression
// decoded as torchvision's BoxCoder (RetinaNet: centre and log-size deltas) or BoxLinearCoder
// (FCOS: distances to the sides, scaled by the anchor's size), clipped to the resized picture.
// The arithmetic is PyTorch's, step by step, in f32. For the RPN's proposals, boxes smaller than
// min_size after clipping become empty records (torchvision's remove_small_boxes) and the label
// is the level (its batched_nms runs per level).
//
// Bindings:
//   0  selected     [N, L, K, 2]        (score, flat index bits) per slot; score < 0: empty
//   1  regression   [N, A*4, HS, WS]    the regression head's output over the packed levels
//                                       (stored as `act`, NCHW or channels-last as the
//                                       CHANNELS_LAST override says; decoded in f32)
//   2  cell_anchors [L * A] vec4        (x1, y1, x2, y2) of each level's anchors at the origin
//   3  out          [N, 1, L*K, 6]      x1, y1, x2, y2, score, label bits (the class, or the
//                                       level with label_level); score -1: empty
//   4  params       DecodeParams
//
// The flat index of a candidate is torchvision's: ((h * w_l + w) * A + a) * C + c.
// Grid: one invocation per slot, workgroups linearised over x and y.

struct DecodeParams {
    len: u32,
    levels: u32,
    k: u32,
    anchors: u32,
    classes: u32,
    map_height: u32,
    map_width: u32,
    // 0: BoxCoder deltas (dx, dy, dw, dh) over weights; 1: BoxLinearCoder distances.
    linear: u32,
    weights: vec4<f32>,
    // Boxes are clipped to [0, clip_width] x [0, clip_height].
    clip_height: f32,
    clip_width: f32,
    // The most a log-size delta may be (torchvision: log(1000 / 16)).
    xform_clip: f32,
    // With remove_small != 0: boxes narrower or lower than this are dropped.
    min_size: f32,
    remove_small: u32,
    // 0: the label is the class; 1: the level index.
    label_level: u32,
    // Channels-last: the regression's padded channel count; 0 for NCHW.
    cl: u32,
    _pad0: u32,
    // (y0, x0, height, width) of each level in the packed map.
    regions: array<vec4<u32>, 8>,
    // (stride_h, stride_w, 0, 0) of each level, integers as torchvision computes them.
    strides: array<vec4<u32>, 8>,
}

override WG: u32 = 256u;
// The regression's layout, a constant per pipeline.
override CHANNELS_LAST: bool = false;

@group(0) @binding(0) var<storage, read> selected: array<f32>;
@group(0) @binding(1) var<storage, read> regression: array<act>;
@group(0) @binding(2) var<storage, read> cell_anchors: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<uniform> p: DecodeParams;

fn write(slot: u32, b: vec4<f32>, score: f32, label: u32) {
    let o = slot * 6u;
    out[o] = b.x;
    out[o + 1u] = b.y;
    out[o + 2u] = b.z;
    out[o + 3u] = b.w;
    out[o + 4u] = score;
    out[o + 5u] = bitcast<f32>(label);
}

@compute @workgroup_size(WG)
fn decode_boxes(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let slot = (wid.y * nwg.x + wid.x) * WG + lid;
    if (slot >= p.len) {
        return;
    }
    let score = selected[slot * 2u];
    let flat = bitcast<u32>(selected[slot * 2u + 1u]);
    if (!(score >= 0.0)) {
        write(slot, vec4<f32>(0.0), -1.0, 0xffffffffu);
        return;
    }
    let level = slot / p.k % p.levels;
    let n = slot / (p.k * p.levels);
    let r = p.regions[level];
    let label = flat % p.classes;
    let anchor = flat / p.classes;
    let a = anchor % p.anchors;
    let cell = anchor / p.anchors;
    let h = cell / r.w;
    let w = cell % r.w;
    let stride = p.strides[level];
    // Integer shifts, added to the float cell anchor: torchvision's order.
    let shift = vec4<f32>(f32(w * stride.y), f32(h * stride.x), f32(w * stride.y), f32(h * stride.x));
    let box = shift + cell_anchors[level * p.anchors + a];
    let plane = p.map_height * p.map_width;
    let at = (r.x + h) * p.map_width + r.y + w;
    // The anchor's four codes are a plane apart in NCHW, neighbours in channels-last.
    var base = (n * p.anchors * 4u + a * 4u) * plane + at;
    var step = plane;
    if (CHANNELS_LAST) {
        base = (n * plane + at) * p.cl + a * 4u;
        step = 1u;
    }
    let code = vec4<f32>(f32(regression[base]), f32(regression[base + step]),
                         f32(regression[base + 2u * step]), f32(regression[base + 3u * step]));
    var decoded: vec4<f32>;
    if (p.linear == 0u) {
        let width = box.z - box.x;
        let height = box.w - box.y;
        let ctr_x = box.x + 0.5 * width;
        let ctr_y = box.y + 0.5 * height;
        let dx = code.x / p.weights.x;
        let dy = code.y / p.weights.y;
        let dw = min(code.z / p.weights.z, p.xform_clip);
        let dh = min(code.w / p.weights.w, p.xform_clip);
        let pred_ctr_x = dx * width + ctr_x;
        let pred_ctr_y = dy * height + ctr_y;
        let half_w = 0.5 * (exp(dw) * width);
        let half_h = 0.5 * (exp(dh) * height);
        decoded = vec4<f32>(pred_ctr_x - half_w, pred_ctr_y - half_h,
                            pred_ctr_x + half_w, pred_ctr_y + half_h);
    } else {
        let ctr_x = (box.x + box.z) / 2.0;
        let ctr_y = (box.y + box.w) / 2.0;
        let size = vec4<f32>(box.z - box.x, box.w - box.y, box.z - box.x, box.w - box.y);
        let d = code * size;
        decoded = vec4<f32>(ctr_x - d.x, ctr_y - d.y, ctr_x + d.z, ctr_y + d.w);
    }
    let lo = vec4<f32>(0.0);
    let hi = vec4<f32>(p.clip_width, p.clip_height, p.clip_width, p.clip_height);
    let clipped = clamp(decoded, lo, hi);
    // torchvision keeps a box when both sides are >= min_size, which a NaN side is not. clamp
    // may turn NaN into a bound, so NaN is tested before it, on the bits (a driver allowed to
    // assume no NaN may fold a float test away).
    let nan = any((bitcast<vec4<u32>>(decoded) & vec4<u32>(0x7fffffffu)) > vec4<u32>(0x7f800000u));
    if (p.remove_small != 0u && (nan
        || !(clipped.z - clipped.x >= p.min_size && clipped.w - clipped.y >= p.min_size))) {
        write(slot, vec4<f32>(0.0), -1.0, 0xffffffffu);
        return;
    }
    write(slot, clipped, score, select(label, level, p.label_level != 0u));
}
