// The second stage's candidates: torchvision's RoIHeads.postprocess_detections up to its NMS.
// For each proposal and each class but the background (0), the class's regression decoded
// against the proposal (BoxCoder with weights, the log-size deltas capped), clipped to the
// resized picture; kept when its score is strictly above the threshold and both sides are at
// least min_size (remove_small_boxes). The arithmetic is PyTorch's, step by step, in f32.
//
// Bindings:
//   0  proposals   [N, 1, R, 6]       x1, y1, x2, y2, score, label bits; score not >= 0: empty
//   1  regression  [N*R, 4C, 1, 1]    bbox_pred's output (stored as `act`; decoded in f32)
//   2  scores      [N*R, C, 1, 1]     f32 class probabilities (the softmax of cls_score)
//   3  out         [N, 1, R*K, 6]     x1, y1, x2, y2, score, label bits; score -1: empty
//   4  params      CandidateParams
//
// Proposal r of image n owns the K output slots from (n*R + r)*K: its kept classes in class
// order, then empty records. Across slots that is torchvision's order of the candidates
// (proposal, then class), which the NMS keeps among equal scores. K is at most C - 1 and at
// least the number of classes whose probability can exceed the threshold at all (see
// kernels::box_candidates::per_proposal); a class beyond K would be dropped.
// Grid: one invocation per proposal, workgroups linearised over x and y.

struct CandidateParams {
    // N * R.
    rois: u32,
    classes: u32,
    // K: output slots per proposal.
    per_roi: u32,
    _pad0: u32,
    // (wx, wy, ww, wh).
    weights: vec4<f32>,
    // Boxes are clipped to [0, clip_width] x [0, clip_height].
    clip_height: f32,
    clip_width: f32,
    // The most a log-size delta may be (torchvision: log(1000 / 16)).
    xform_clip: f32,
    // Kept: scores strictly above this.
    score_thresh: f32,
    // Kept: boxes whose sides are both at least this.
    min_size: f32,
    _pad1: u32,
    _pad2: u32,
    _pad3: u32,
}

override WG: u32 = 256u;

@group(0) @binding(0) var<storage, read> proposals: array<f32>;
@group(0) @binding(1) var<storage, read> regression: array<act>;
@group(0) @binding(2) var<storage, read> scores: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<uniform> p: CandidateParams;

// Decided on the bits: a driver may fold a NaN comparison away.
fn is_nan(v: f32) -> bool {
    return (bitcast<u32>(v) & 0x7fffffffu) > 0x7f800000u;
}

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
fn box_candidates(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
    let roi = (wid.y * nwg.x + wid.x) * WG + lid;
    if (roi >= p.rois) {
        return;
    }
    let first = roi * p.per_roi;
    var count = 0u;
    let rec = roi * 6u;
    // An empty proposal slot (score negative or NaN) has no candidates.
    if (proposals[rec + 4u] >= 0.0) {
        let box = vec4<f32>(proposals[rec], proposals[rec + 1u], proposals[rec + 2u],
                            proposals[rec + 3u]);
        let width = box.z - box.x;
        let height = box.w - box.y;
        let ctr_x = box.x + 0.5 * width;
        let ctr_y = box.y + 0.5 * height;
        let hi = vec4<f32>(p.clip_width, p.clip_height, p.clip_width, p.clip_height);
        for (var c = 1u; c < p.classes && count < p.per_roi; c++) {
            let score = scores[roi * p.classes + c];
            if (!(score > p.score_thresh)) {
                continue;
            }
            let base = (roi * p.classes + c) * 4u;
            let code = vec4<f32>(f32(regression[base]), f32(regression[base + 1u]),
                                 f32(regression[base + 2u]), f32(regression[base + 3u]));
            // A NaN in the regression makes a NaN box in PyTorch (its clamp keeps NaN), which
            // remove_small_boxes drops; WGSL's min() need not keep it, so it is dropped here.
            if (is_nan(code.x) || is_nan(code.y) || is_nan(code.z) || is_nan(code.w)) {
                continue;
            }
            let dx = code.x / p.weights.x;
            let dy = code.y / p.weights.y;
            let dw = min(code.z / p.weights.z, p.xform_clip);
            let dh = min(code.w / p.weights.w, p.xform_clip);
            let pred_ctr_x = dx * width + ctr_x;
            let pred_ctr_y = dy * height + ctr_y;
            let half_w = 0.5 * (exp(dw) * width);
            let half_h = 0.5 * (exp(dh) * height);
            let decoded = vec4<f32>(pred_ctr_x - half_w, pred_ctr_y - half_h,
                                    pred_ctr_x + half_w, pred_ctr_y + half_h);
            // PyTorch's clamp keeps a NaN, whose side then fails remove_small_boxes; WGSL's
            // clamp need not keep it, so a NaN coordinate is dropped here.
            if (is_nan(decoded.x) || is_nan(decoded.y) || is_nan(decoded.z) || is_nan(decoded.w)) {
                continue;
            }
            let b = clamp(decoded, vec4<f32>(0.0), hi);
            if (!(b.z - b.x >= p.min_size && b.w - b.y >= p.min_size)) {
                continue;
            }
            write(first + count, b, score, c);
            count += 1u;
        }
    }
    for (var k = count; k < p.per_roi; k++) {
        write(first + k, vec4<f32>(0.0), -1.0, 0xffffffffu);
    }
}
