// Mask R-CNN's mask post-processing, as torchvision's roi_heads.py computes it after the mask
// predictor: maskrcnn_inference (the sigmoid of each detection's own class channel) and
// paste_masks_in_image (each MxM probability map padded by one pixel, its box expanded by
// (M + 2) / M and truncated to integers, the padded map resized bilinearly to the box and
// placed into a picture of zeros, clipped to it).
//
// The detections are the records the crate's NMS writes (f32 [N, 1, D, 6]: x1, y1, x2, y2,
// score, label bits; a score that is not >= 0 marks an empty slot), boxes in the original
// picture's pixels. Row k of the masks belongs to record k (image k / D, slot k % D).
//
// Entry points (one invocation per output element, workgroups linearised over x and y):
//   select_masks   bindings 0 logits [K, C, M, M] `act`, 1 detections, 2 out [K, 1, M, M] f32,
//                  3 SelectParams. Empty slots and labels >= C give zeros.
//   paste_masks    bindings 4 masks [K, 1, M, M] f32, 1 detections, 5 out [K, 1, H, W] f32,
//                  6 PasteParams. Empty slots, boxes with a coordinate (after the expansion)
//                  beyond +-2^24 or not finite, and boxes wholly outside the picture give
//                  zeros. With rows_in_record, mask k goes to the output row word 5 of record
//                  k names rather than to row k, and empty records write nothing.

struct SelectParams {
    len: u32,
    classes: u32,
    // M * M.
    plane: u32,
    _pad: u32,
}

struct PasteParams {
    len: u32,
    height: u32,
    width: u32,
    // M: the side of the masks before padding.
    size: u32,
    // expand_masks' scale (M + 2) / M, rounded to f32 as PyTorch rounds the Python float it
    // multiplies an f32 tensor by.
    scale: f32,
    // Always 0: XORed into the expanded half-sizes' bits so that the compiler cannot fuse
    // their product into the following add (see expanded_box).
    zero: u32,
    // 1: word 5 of each record is the output row of its mask (records compacted from the
    // [N, 1, D, 6] detections: their row there); 0: row k for record k.
    rows_in_record: u32,
    _pad1: u32,
}

override WG: u32 = 256u;

@group(0) @binding(0) var<storage, read> logits: array<act>;
@group(0) @binding(1) var<storage, read> detections: array<f32>;
@group(0) @binding(2) var<storage, read_write> selected: array<f32>;
@group(0) @binding(3) var<uniform> sp: SelectParams;
@group(0) @binding(4) var<storage, read> masks: array<f32>;
@group(0) @binding(5) var<storage, read_write> pasted: array<f32>;
@group(0) @binding(6) var<uniform> pp: PasteParams;

@compute @workgroup_size(WG)
fn select_masks(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let i = (wid.y * nwg.x + wid.x) * WG + lid;
    if (i >= sp.len) {
        return;
    }
    let k = i / sp.plane;
    let pix = i % sp.plane;
    let score = detections[k * 6u + 4u];
    let label = bitcast<u32>(detections[k * 6u + 5u]);
    if (!(score >= 0.0) || label >= sp.classes) {
        selected[i] = 0.0;
        return;
    }
    let v = f32(logits[(k * sp.classes + label) * sp.plane + pix]);
    selected[i] = 1.0 / (1.0 + exp(-v));
}

// An f32 product the compiler must round before it is used: a product fused into the add
// that follows it (an FMA, which Vulkan and GL allow unless told otherwise) would round once
// where PyTorch rounds twice, and move the expanded box's truncation to an integer across a
// whole pixel when it lands close to one.
fn rounded_product(a: f32, b: f32) -> f32 {
    return bitcast<f32>(bitcast<u32>(a * b) ^ pp.zero);
}

// torchvision's expand_boxes in f32, truncated toward zero as `.to(torch.int64)` does:
// (x1, y1, x2, y2). `ok` is false where a coordinate is not finite or beyond +-2^24, where
// pixel indices stop being exact in f32.
struct IntBox {
    b: vec4<i32>,
    ok: bool,
}

fn expanded_box(b: vec4<f32>) -> IntBox {
    let w_half = rounded_product((b.z - b.x) * 0.5, pp.scale);
    let h_half = rounded_product((b.w - b.y) * 0.5, pp.scale);
    let x_c = (b.z + b.x) * 0.5;
    let y_c = (b.w + b.y) * 0.5;
    let e = vec4<f32>(x_c - w_half, y_c - h_half, x_c + w_half, y_c + h_half);
    var r: IntBox;
    let limit = 16777216.0;
    r.ok = all(abs(e) <= vec4(limit));
    r.b = select(vec4<i32>(0), vec4<i32>(e), r.ok);
    return r;
}

// The padded mask's value at (y, x), side m + 2: zero on the one-pixel border.
fn padded(base: u32, m: u32, y: u32, x: u32) -> f32 {
    if (y == 0u || x == 0u || y > m || x > m) {
        return 0.0;
    }
    return masks[base + (y - 1u) * m + (x - 1u)];
}

// PyTorch's bilinear source index (align_corners=False) of output index `dst` for a side
// `in_size` resized to `out_size`: the scale in/out in f32, the source clamped at 0, the first
// tap at most the last index, the weight of the second clamped to [0, 1].
struct Tap {
    i0: u32,
    i1: u32,
    l0: f32,
    l1: f32,
}

fn tap(dst: u32, in_size: u32, out_size: u32) -> Tap {
    let scale = f32(in_size) / f32(out_size);
    let src = max(scale * (f32(dst) + 0.5) - 0.5, 0.0);
    let i0 = min(u32(floor(src)), in_size - 1u);
    var t: Tap;
    t.i0 = i0;
    t.i1 = select(i0, i0 + 1u, i0 < in_size - 1u);
    t.l1 = min(max(src - f32(i0), 0.0), 1.0);
    t.l0 = 1.0 - t.l1;
    return t;
}

@compute @workgroup_size(WG)
fn paste_masks(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let i = (wid.y * nwg.x + wid.x) * WG + lid;
    if (i >= pp.len) {
        return;
    }
    let picture = pp.height * pp.width;
    let k = i / picture;
    let pix = i % picture;
    let py = i32(pix / pp.width);
    let px = i32(pix % pp.width);
    let r = k * 6u;
    // Where the mask goes: its record's row, or the row word 5 names (compacted records,
    // whose empty ones name none: they write nothing).
    let row = select(k, bitcast<u32>(detections[r + 5u]), pp.rows_in_record != 0u);
    let o = row * picture + pix;
    if (!(detections[r + 4u] >= 0.0)) {
        if (pp.rows_in_record == 0u) {
            pasted[o] = 0.0;
        }
        return;
    }
    // A row beyond the output is no detection's: nothing to write.
    if (row >= pp.len / picture) {
        return;
    }
    let e = expanded_box(vec4<f32>(detections[r], detections[r + 1u], detections[r + 2u],
                                   detections[r + 3u]));
    // paste_mask_in_image: the resized mask is w x h (at least 1 each) with its top-left
    // corner at (x1, y1); the picture takes its part inside [max(x1, 0), min(x2 + 1, W)).
    let b = e.b;
    let x0 = max(b.x, 0);
    let x1 = min(b.z + 1, i32(pp.width));
    let y0 = max(b.y, 0);
    let y1 = min(b.w + 1, i32(pp.height));
    if (!e.ok || px < x0 || px >= x1 || py < y0 || py >= y1) {
        pasted[o] = 0.0;
        return;
    }
    let w = u32(max(b.z - b.x + 1, 1));
    let h = u32(max(b.w - b.y + 1, 1));
    let side = pp.size + 2u;
    let ty = tap(u32(py - b.y), side, h);
    let tx = tap(u32(px - b.x), side, w);
    let base = k * pp.size * pp.size;
    let m = pp.size;
    // PyTorch's order: each row's taps weighed along x, then the rows along y.
    let top = padded(base, m, ty.i0, tx.i0) * tx.l0 + padded(base, m, ty.i0, tx.i1) * tx.l1;
    let bottom = padded(base, m, ty.i1, tx.i0) * tx.l0 + padded(base, m, ty.i1, tx.i1) * tx.l1;
    pasted[o] = top * ty.l0 + bottom * ty.l1;
}
