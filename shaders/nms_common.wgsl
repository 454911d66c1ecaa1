// What the three stages of the batched non-maximum suppression share (nms_sort.wgsl,
// nms_mask.wgsl, nms_sweep.wgsl): the parameters, the bindings and the sort keys.
//
// A candidate is a record of 6 words: x1, y1, x2, y2, score (f32) and the label (u32 bits). The
// tensors are bound as words, not floats, so that the labels (any u32, NaN patterns included)
// and the scores travel bit for bit.
//
// Bindings (each entry point declares only those it uses):
//   0  candidates  [N, M, 6] words
//   1  keys        [N, P] (rank, slot) pairs, P = M rounded up to a power of two
//   2  mask        [N, M, W] words, W = ceil(M / 32): bit j of row i says that sorted
//                  candidate i suppresses sorted candidate j (only j > i is ever set or read)
//   3  out         [N, D, 6] words
//   4  p           NmsParams

struct NmsParams {
    images: u32,
    // M, P and W above.
    candidates: u32,
    padded: u32,
    words: u32,
    // Keys per workgroup of the sort: min(P, SORT_BLOCK).
    block: u32,
    // The mask's grid per image: blocks of MASK_ROWS rows by MASK_COLS columns.
    row_blocks: u32,
    col_blocks: u32,
    // D: records kept per image at most.
    max_detections: u32,
    iou_thresh: f32,
    scale_x: f32,
    scale_y: f32,
    // The bitonic network's stage of a sort launch: the size k of the sequences being merged
    // and the distance j of the compared pairs (a global step), or the first and last k of a
    // workgroup's sort (k_last is only read by the first launch).
    k: u32,
    k_last: u32,
    j: u32,
    _pad0: u32,
    _pad1: u32,
}

const WG: u32 = 256u;
const RECORD: u32 = 6u;
// The rank of an absent candidate: after every present one.
const ABSENT: u32 = 0xffffffffu;

@group(0) @binding(0) var<storage, read> candidates: array<u32>;
@group(0) @binding(1) var<storage, read_write> keys: array<vec2<u32>>;
@group(0) @binding(2) var<storage, read_write> mask: array<u32>;
@group(0) @binding(3) var<storage, read_write> out: array<u32>;
@group(0) @binding(4) var<uniform> p: NmsParams;

// The word `field` of candidate `slot` of image `n`.
fn candidate_word(n: u32, slot: u32, field: u32) -> u32 {
    return candidates[(n * p.candidates + slot) * RECORD + field];
}

// The workgroup's index in a grid linearised over x and y.
fn group_index(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.y * nwg.x + wid.x;
}
