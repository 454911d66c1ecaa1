// Compaction of detection records across a batch: the non-empty records of every picture, in
// picture order and in their order within it, moved to the first rows, so that the launches
// that follow (Mask R-CNN's mask branch) can be sized by their count instead of by the
// pictures' capacity. torchvision's mask branch works on the kept detections alone, as a
// list; this is that list on the GPU.
//
// Bindings:
//   0  records  [N, 1, D, 6]  f32 x1, y1, x2, y2, score, label bits; a score that is not >= 0
//                             marks an empty slot
//   1  out      [N, 1, D, 6]  f32: row r < live is the r-th non-empty record; word 5 keeps the
//                             label, or with source_row holds the record's row in `records`
//                             (picture n's slot j: n * D + j) as u32 bits, which says its
//                             picture, as torchvision's rois [K, 5] carry theirs, and where its
//                             results go back to; rows from live on are empty (zeros, score -1)
//   2  params   CompactParams
//
// Grid: one workgroup. An invocation per picture finds where the picture's records go by
// counting the non-empty records of the pictures before it, and moves them: N^2 D / 2 reads
// in all, a few thousand per invocation for the batches a detector runs (16 pictures of 100
// slots: at most 1,500), against a prefix sum's barriers and workgroup arrays sized for the
// largest batch.

struct CompactParams {
    pictures: u32,
    slots: u32,
    source_row: u32,
    _pad: u32,
}

override WG: u32 = 256u;

// The records are moved as u32 words, as the NMS moves them, so that word 5's integers (as
// f32, subnormal numbers) travel untouched whatever a compiler does with floats.
@group(0) @binding(0) var<storage, read> records: array<u32>;
@group(0) @binding(1) var<storage, read_write> out: array<u32>;
@group(0) @binding(2) var<uniform> p: CompactParams;

var<workgroup> live: atomic<u32>;

fn kept(row: u32) -> bool {
    return bitcast<f32>(records[row * 6u + 4u]) >= 0.0;
}

@compute @workgroup_size(WG)
fn compact_records(@builtin(local_invocation_index) lid: u32) {
    // Pipelines are built without zeroing workgroup memory.
    if (lid == 0u) {
        atomicStore(&live, 0u);
    }
    workgroupBarrier();
    for (var n = lid; n < p.pictures; n += WG) {
        var row = 0u;
        for (var i = 0u; i < n * p.slots; i++) {
            row += u32(kept(i));
        }
        let first = n * p.slots;
        for (var j = 0u; j < p.slots; j++) {
            let src = first + j;
            if (!kept(src)) {
                continue;
            }
            for (var w = 0u; w < 5u; w++) {
                out[row * 6u + w] = records[src * 6u + w];
            }
            out[row * 6u + 5u] = select(records[src * 6u + 5u], src, p.source_row != 0u);
            row += 1u;
            atomicAdd(&live, 1u);
        }
    }
    workgroupBarrier();
    let total = atomicLoad(&live);
    for (var r = total + lid; r < p.pictures * p.slots; r += WG) {
        for (var w = 0u; w < 6u; w++) {
            out[r * 6u + w] = 0u;
        }
        out[r * 6u + 4u] = bitcast<u32>(-1.0);
    }
}
