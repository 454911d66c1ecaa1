// Multi-scale RoIAlign: torchvision's MultiScaleRoIAlign (ops/poolers.py) over pyramid levels
// given as separate maps. Each proposal goes to a level by the FPN paper's LevelMapper,
//   level = clamp(floor(canonical_level + log2(sqrt(area) / canonical_scale) + eps), k_min, k_max)
// and is pooled from level (level - k_min) by torchvision's CPU roi_align with aligned=False:
// the box times the level's spatial scale, its width and height at least 1, S x S bins, each
// the mean of sampling^2 bilinear samples; a sample outside [-1, H] x [-1, W] counts 0, one in
// [-1, 0) is moved to 0, one past the last row or column reads that row or column. The
// arithmetic is the CPU kernel's, step by step, in f32.
//
// Bindings:
//   0..4  level0..level4  [N, C, h_l, w_l]   the levels, finest first (unused ones bound to
//                                            level 0); stored as `act`, sampled in f32
//   5     proposals       [N, 1, R, 6]       f32 records x1, y1, x2, y2, score, label bits in
//                                            the picture's pixels; score not >= 0: empty slot.
//                                            With rows_in_record, word 5 holds the record's row
//                                            in the records it was compacted from instead,
//                                            which says its picture (as torchvision's rois
//                                            [K, 5] carry theirs)
//   6     out             [N*R, C, S, S]     `act`; empty slots, boxes of negative or NaN area
//                                            and boxes mapped to no level are zero (with one
//                                            level, every box is pooled from it, as in
//                                            torchvision, which maps none then)
//   7     params          RoiAlignParams
//
// The levels and the output are NCHW, or all channels-last (the CHANNELS_LAST override; the
// output's padding channels are written as zeros); the proposals are NCHW f32 records.
// Needs layout.wgsl before it.
//
// Grid: one invocation per output element, workgroups linearised over x and y.

struct RoiAlignParams {
    len: u32,
    // Slots per image (R).
    rois: u32,
    channels: u32,
    // Bins per side (S).
    size: u32,
    // Samples per bin side.
    sampling: u32,
    // Levels bound.
    count: u32,
    // The LevelMapper's range: torchvision's -log2 of the first and last level's scale.
    k_min: i32,
    k_max: i32,
    canonical_scale: f32,
    canonical_level: f32,
    eps: f32,
    // Channels-last: the padded channel count of the levels and the output; 0 for NCHW.
    cl: u32,
    // 1: word 5 of each record holds its row in the records it was compacted from (records
    // compacted across a batch), whose picture is that row / rois; 0: record k's is k / rois.
    rows_in_record: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
    // (height, width, spatial scale as f32 bits, 0) per level.
    levels: array<vec4<u32>, 5>,
}

override WG: u32 = 256u;
// The layout of the levels and the output, a constant per pipeline.
override CHANNELS_LAST: bool = false;

@group(0) @binding(0) var<storage, read> level0: array<act>;
@group(0) @binding(1) var<storage, read> level1: array<act>;
@group(0) @binding(2) var<storage, read> level2: array<act>;
@group(0) @binding(3) var<storage, read> level3: array<act>;
@group(0) @binding(4) var<storage, read> level4: array<act>;
@group(0) @binding(5) var<storage, read> proposals: array<f32>;
@group(0) @binding(6) var<storage, read_write> out: array<act>;
@group(0) @binding(7) var<uniform> p: RoiAlignParams;

fn fetch(level: u32, i: u32) -> f32 {
    switch level {
        case 0u: { return f32(level0[i]); }
        case 1u: { return f32(level1[i]); }
        case 2u: { return f32(level2[i]); }
        case 3u: { return f32(level3[i]); }
        default: { return f32(level4[i]); }
    }
}

// The index among the bound levels of the box (x1, y1, x2, y2), or p.count for none: a box of
// negative or NaN area (torchvision's NaN level matches no level), or one whose clamped level
// falls outside the levels bound.
fn map_level(b: vec4<f32>) -> u32 {
    let area = (b.z - b.x) * (b.w - b.y);
    if (!(area >= 0.0)) {
        return p.count;
    }
    let ratio = sqrt(area) / p.canonical_scale;
    var k: i32;
    if (ratio == 0.0) {
        // log2(0) = -inf: the clamp takes it to k_min.
        k = p.k_min;
    } else if (ratio > 3.0e38) {
        k = p.k_max;
    } else {
        let t = floor(p.canonical_level + log2(ratio) + p.eps);
        // torch.clamp(min, max): max wins when min > max.
        k = i32(min(max(t, f32(p.k_min)), f32(p.k_max)));
    }
    let l = k - p.k_min;
    if (l < 0 || l >= i32(p.count)) {
        return p.count;
    }
    return u32(l);
}

// One sample's bilinear interpolation of the channel of a level whose pixel (y, x) is at
// base + (y * width + x) * step (step 1 for NCHW, the padded channel count for channels-last),
// as torchvision's pre_calc_for_bilinear_interpolate weighs it: w1 v1 + w2 v2 + w3 v3 + w4 v4.
fn sample(level: u32, base: u32, step: u32, height: u32, width: u32, y_in: f32,
          x_in: f32) -> f32 {
    let h = f32(height);
    let w = f32(width);
    if (!(y_in >= -1.0 && y_in <= h && x_in >= -1.0 && x_in <= w)) {
        return 0.0;
    }
    var y = max(y_in, 0.0);
    var x = max(x_in, 0.0);
    var y_low = u32(y);
    var x_low = u32(x);
    var y_high: u32;
    var x_high: u32;
    if (y_low >= height - 1u) {
        y_low = height - 1u;
        y_high = y_low;
        y = f32(y_low);
    } else {
        y_high = y_low + 1u;
    }
    if (x_low >= width - 1u) {
        x_low = width - 1u;
        x_high = x_low;
        x = f32(x_low);
    } else {
        x_high = x_low + 1u;
    }
    let ly = y - f32(y_low);
    let lx = x - f32(x_low);
    let hy = 1.0 - ly;
    let hx = 1.0 - lx;
    let v1 = fetch(level, base + (y_low * width + x_low) * step);
    let v2 = fetch(level, base + (y_low * width + x_high) * step);
    let v3 = fetch(level, base + (y_high * width + x_low) * step);
    let v4 = fetch(level, base + (y_high * width + x_high) * step);
    return hy * hx * v1 + hy * lx * v2 + ly * hx * v3 + ly * lx * v4;
}

@compute @workgroup_size(WG)
fn roi_align(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let i = (wid.y * nwg.x + wid.x) * WG + lid;
    if (i >= p.len) {
        return;
    }
    let s = p.size;
    var pw: u32;
    var ph: u32;
    var c: u32;
    var roi: u32;
    if (CHANNELS_LAST) {
        let pos = position(i, p.channels, s, s, p.cl);
        pw = pos.x;
        ph = pos.y;
        c = pos.c;
        roi = pos.n;
        // The padding channels hold zeros.
        if (c >= p.channels) {
            out[i] = act(0.0);
            return;
        }
    } else {
        pw = i % s;
        ph = i / s % s;
        c = i / (s * s) % p.channels;
        roi = i / (s * s * p.channels);
    }
    let r = roi * 6u;
    let image = select(roi, bitcast<u32>(proposals[r + 5u]), p.rows_in_record != 0u) / p.rois;
    // A record naming a row beyond the batch's (rows_in_record) is pooled from no picture.
    let images = p.len / (s * s * select(p.channels, p.cl, CHANNELS_LAST)) / p.rois;
    let b = vec4<f32>(proposals[r], proposals[r + 1u], proposals[r + 2u], proposals[r + 3u]);
    let score = proposals[r + 4u];
    var level = p.count;
    if (score >= 0.0 && image < images) {
        // One level: torchvision pools every box from it, without the mapper.
        level = select(map_level(b), 0u, p.count == 1u);
    }
    if (level >= p.count) {
        out[i] = act(0.0);
        return;
    }
    let shape = p.levels[level];
    let height = shape.x;
    let width = shape.y;
    let scale = bitcast<f32>(shape.z);
    let start_w = b.x * scale;
    let start_h = b.y * scale;
    let end_w = b.z * scale;
    let end_h = b.w * scale;
    // aligned=False: malformed boxes are taken as 1x1.
    let roi_width = max(end_w - start_w, 1.0);
    let roi_height = max(end_h - start_h, 1.0);
    let bin_h = roi_height / f32(s);
    let bin_w = roi_width / f32(s);
    let grid = f32(p.sampling);
    var base = (image * p.channels + c) * height * width;
    var step = 1u;
    if (CHANNELS_LAST) {
        base = image * height * width * p.cl + c;
        step = p.cl;
    }
    var acc = 0.0;
    for (var iy = 0u; iy < p.sampling; iy++) {
        let y = start_h + f32(ph) * bin_h + (f32(iy) + 0.5) * bin_h / grid;
        for (var ix = 0u; ix < p.sampling; ix++) {
            let x = start_w + f32(pw) * bin_w + (f32(ix) + 0.5) * bin_w / grid;
            acc += sample(level, base, step, height, width, y, x);
        }
    }
    out[i] = act(acc / (grid * grid));
}
