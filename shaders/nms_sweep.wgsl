// Stage 3 of the batched NMS: the greedy sweep and the output. Needs nms_common.wgsl before it,
// the sorted keys (nms_sort.wgsl) and the mask (nms_mask.wgsl).
//
// One workgroup per image walks the sorted candidates 32 at a time (one word of the removed
// set): invocation 0 decides the word's candidates in order (kept unless removed, a kept one
// removing those after it in the word through the mask's diagonal word, and writing its record
// at once), then the workgroup ORs the kept rows' later words into the removed set, each
// invocation its own words. That is a handful of barriers per 32 candidates rather than per
// candidate. The walk ends at the first absent candidate, at M, or once D are kept; the rest of
// the output is then filled with empty records: boxes 0, score -1, label 0xffffffff.
//
// Output records hold the boxes scaled by (scale_x, scale_y); the IoUs used the unscaled ones.

// The removed set of up to 65536 candidates (8 KiB).
const MAX_WORDS: u32 = 2048u;
// The bits of -1.0, the score of an empty record.
const EMPTY_SCORE: u32 = 0xbf800000u;

var<workgroup> removed: array<u32, MAX_WORDS>;
// Written by invocation 0 for the rest: the kept candidates of the current word, how many
// records are written, and whether the walk is over.
var<workgroup> word_kept: u32;
var<workgroup> kept_count: u32;
var<workgroup> finished: u32;

// Writes sorted candidate `slot` of image `n` as output record `k`.
fn write_record(n: u32, k: u32, slot: u32) {
    let dst = (n * p.max_detections + k) * RECORD;
    let scale = vec4<f32>(p.scale_x, p.scale_y, p.scale_x, p.scale_y);
    for (var f = 0u; f < 4u; f++) {
        out[dst + f] = bitcast<u32>(bitcast<f32>(candidate_word(n, slot, f)) * scale[f]);
    }
    out[dst + 4u] = candidate_word(n, slot, 4u);
    out[dst + 5u] = candidate_word(n, slot, 5u);
}

// Invocation 0's part: decides the candidates of word `c` in order.
fn decide_word(n: u32, c: u32) {
    var gone = removed[c];
    var kept = 0u;
    var count = kept_count;
    var done = 0u;
    for (var b = 0u; b < 32u; b++) {
        let i = c * 32u + b;
        if (i >= p.candidates) {
            done = 1u;
            break;
        }
        let key = keys[n * p.padded + i];
        if (key.x == ABSENT) {
            done = 1u;
            break;
        }
        if ((gone & (1u << b)) != 0u) {
            continue;
        }
        kept |= 1u << b;
        gone |= mask[(n * p.candidates + i) * p.words + c];
        write_record(n, count, key.y);
        count += 1u;
        if (count == p.max_detections) {
            done = 1u;
            break;
        }
    }
    word_kept = kept;
    kept_count = count;
    finished = done;
}

@compute @workgroup_size(WG)
fn nms_sweep(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let n = group_index(wid, nwg);
    if (n >= p.images) {
        return;
    }
    for (var w = lid; w < p.words; w += WG) {
        removed[w] = 0u;
    }
    if (lid == 0u) {
        kept_count = 0u;
        finished = 0u;
    }
    workgroupBarrier();
    for (var c = 0u; c < p.words; c++) {
        if (lid == 0u) {
            decide_word(n, c);
        }
        if (workgroupUniformLoad(&finished) != 0u) {
            break;
        }
        let kept = word_kept;
        for (var w = c + 1u + lid; w < p.words; w += WG) {
            var gone = removed[w];
            var rows = kept;
            while (rows != 0u) {
                let i = c * 32u + firstTrailingBit(rows);
                rows &= rows - 1u;
                gone |= mask[(n * p.candidates + i) * p.words + w];
            }
            removed[w] = gone;
        }
        workgroupBarrier();
    }
    let count = workgroupUniformLoad(&kept_count);
    for (var k = count + lid; k < p.max_detections; k += WG) {
        let dst = (n * p.max_detections + k) * RECORD;
        out[dst] = 0u;
        out[dst + 1u] = 0u;
        out[dst + 2u] = 0u;
        out[dst + 3u] = 0u;
        out[dst + 4u] = EMPTY_SCORE;
        out[dst + 5u] = ABSENT;
    }
}

// Records already kept, in the resized picture's pixels, scaled to the pictures' as
// write_record scales them: the same f32 product per coordinate, the score and label words
// copied bit for bit (a label's bits are a denormal or a NaN as an f32, which arithmetic could
// flush or quieten). For a detector whose kept boxes are read in both frames (Mask R-CNN pools
// its masks at the resized boxes and pastes them at the scaled ones).
//   bindings 0 the records [N, M, 6] as the candidates, 3 out [N, M, 6], 4 p (images, candidates
//   = M, scale_x, scale_y); one invocation per word.
@compute @workgroup_size(WG)
fn scale_records(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let i = group_index(wid, nwg) * WG + lid;
    if (i >= p.images * p.candidates * RECORD) {
        return;
    }
    let f = i % RECORD;
    if (f < 4u) {
        let scale = select(p.scale_y, p.scale_x, f % 2u == 0u);
        out[i] = bitcast<u32>(bitcast<f32>(candidates[i]) * scale);
    } else {
        out[i] = candidates[i];
    }
}
