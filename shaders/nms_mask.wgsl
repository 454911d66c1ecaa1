// Stage 2 of the batched NMS: the suppression mask. Needs nms_common.wgsl before it, and the
// keys sorted by nms_sort.wgsl.
//
// Bit j of row i (sorted positions, j > i) is set when both candidates are present, have the
// same label and IoU(i, j) > iou_thresh, the IoU computed as torchvision's nms kernel does:
//   inter = max(0, min(x2) - max(x1)) * max(0, min(y2) - max(y1)),
//   iou = inter / (area_i + area_j - inter), area = (x2 - x1) * (y2 - y1).
//
// Grid: per image, blocks of MASK_ROWS rows by MASK_COLS columns (MASK_WORDS words of a row);
// invocation (r, w) of a block computes word w of row r. Blocks wholly below the diagonal
// (every column before every row) hold no bit the sweep reads and return at once, as do
// blocks of absent rows. Every word the sweep reads (row i present, columns from i's word on)
// is written by every launch, so nothing needs clearing between forwards.

const MASK_ROWS: u32 = 64u;
const MASK_WORDS: u32 = 4u;
const MASK_COLS: u32 = 128u;

// A block's boxes: (x1, y1, x2, y2), area, and (label, present).
var<workgroup> row_box: array<vec4<f32>, MASK_ROWS>;
var<workgroup> row_area: array<f32, MASK_ROWS>;
var<workgroup> row_tag: array<vec2<u32>, MASK_ROWS>;
var<workgroup> col_box: array<vec4<f32>, MASK_COLS>;
var<workgroup> col_area: array<f32, MASK_COLS>;
var<workgroup> col_tag: array<vec2<u32>, MASK_COLS>;

// The box, area and (label, present) of sorted candidate `i` of image `n`.
struct SortedBox {
    box: vec4<f32>,
    area: f32,
    tag: vec2<u32>,
}

fn sorted_box(n: u32, i: u32) -> SortedBox {
    var s: SortedBox;
    s.tag = vec2<u32>(0u, 0u);
    if (i >= p.candidates) {
        return s;
    }
    let key = keys[n * p.padded + i];
    if (key.x == ABSENT) {
        return s;
    }
    s.box = vec4<f32>(
        bitcast<f32>(candidate_word(n, key.y, 0u)),
        bitcast<f32>(candidate_word(n, key.y, 1u)),
        bitcast<f32>(candidate_word(n, key.y, 2u)),
        bitcast<f32>(candidate_word(n, key.y, 3u)),
    );
    s.area = (s.box.z - s.box.x) * (s.box.w - s.box.y);
    s.tag = vec2<u32>(candidate_word(n, key.y, 5u), 1u);
    return s;
}

// Whether IoU(a, b) > iou_thresh. WGSL leaves a division by zero indeterminate, so a zero union
// is decided as IEEE division does: 0/0 is NaN (no suppression), x/0 with x > 0 is +inf
// (suppression: the threshold is finite).
fn suppresses(a: vec4<f32>, area_a: f32, b: vec4<f32>, area_b: f32) -> bool {
    let w = max(min(a.z, b.z) - max(a.x, b.x), 0.0);
    let h = max(min(a.w, b.w) - max(a.y, b.y), 0.0);
    let inter = w * h;
    let area_union = area_a + area_b - inter;
    if (area_union == 0.0) {
        return inter > 0.0;
    }
    return inter / area_union > p.iou_thresh;
}

@compute @workgroup_size(WG)
fn nms_mask(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let g = group_index(wid, nwg);
    let per_image = p.row_blocks * p.col_blocks;
    if (g >= p.images * per_image) {
        return;
    }
    let n = g / per_image;
    let row0 = (g % per_image) / p.col_blocks * MASK_ROWS;
    let col_block = g % p.col_blocks;
    let col0 = col_block * MASK_COLS;
    if (col0 + MASK_COLS <= row0) {
        return;
    }
    if (lid < MASK_ROWS) {
        let s = sorted_box(n, row0 + lid);
        row_box[lid] = s.box;
        row_area[lid] = s.area;
        row_tag[lid] = s.tag;
    } else if (lid < MASK_ROWS + MASK_COLS) {
        let c = lid - MASK_ROWS;
        let s = sorted_box(n, col0 + c);
        col_box[c] = s.box;
        col_area[c] = s.area;
        col_tag[c] = s.tag;
    }
    // Present candidates come first: an absent first row means a block of absent rows.
    if (workgroupUniformLoad(&row_tag[0]).y == 0u) {
        return;
    }
    let r = lid / MASK_WORDS;
    let i = row0 + r;
    let w = col_block * MASK_WORDS + lid % MASK_WORDS;
    if (i >= p.candidates || w >= p.words) {
        return;
    }
    let tag = row_tag[r];
    var bits = 0u;
    if (tag.y != 0u) {
        let a = row_box[r];
        let area_a = row_area[r];
        let c0 = (lid % MASK_WORDS) * 32u;
        for (var b = 0u; b < 32u; b++) {
            let c = c0 + b;
            let other = col_tag[c];
            if (col0 + c > i && other.y != 0u && other.x == tag.x
                && suppresses(a, area_a, col_box[c], col_area[c])) {
                bits |= 1u << b;
            }
        }
    }
    mask[(n * p.candidates + i) * p.words + w] = bits;
}
