// Stage 1 of the batched NMS: sorts each image's candidates by score, descending, into `keys`.
// Needs nms_common.wgsl before it.
//
// A key is (rank, slot), compared as a pair, ascending: the rank orders present candidates by
// score descending (ties by slot, ascending, as a stable sort would leave them) and puts the
// absent ones last, so the present candidates are a prefix of the sorted keys. Each image's
// keys are padded to P, a power of two, with absent keys, and sorted by a bitonic network:
//   sort_blocks   loads the keys and sorts each block of `block` keys in workgroup memory
//                 (every stage with k <= block; the blocks alternate in direction, as the
//                 network wants); the only launch when P <= SORT_BLOCK;
//   sort_step     one global compare-exchange step (k, j) with j >= block, one invocation per
//                 pair;
//   merge_blocks  the remaining steps of stage k (every j < block) in workgroup memory.
// Each image's keys form one network; a grid covers every block of every image.

// 8 KiB of keys: half of WebGPU's smallest workgroup memory, whatever else a driver reserves.
const SORT_BLOCK: u32 = 1024u;

var<workgroup> tile: array<vec2<u32>, SORT_BLOCK>;

// The key of candidate `slot` of image `n`. Present means a score >= 0 (-0 included; NaN is
// absent), decided on the bits so that no fast-math float compare can bend it: for a
// non-negative float the bits order as the values do, so the rank is their complement.
fn sort_key(n: u32, slot: u32) -> vec2<u32> {
    if (slot >= p.candidates) {
        return vec2<u32>(ABSENT, slot);
    }
    let bits = candidate_word(n, slot, 4u);
    let magnitude = bits & 0x7fffffffu;
    // +0 and -0, or a sign bit clear and no NaN (+inf is present).
    if (magnitude == 0u || bits <= 0x7f800000u) {
        return vec2<u32>(0x7fffffffu - magnitude, slot);
    }
    return vec2<u32>(ABSENT, slot);
}

// Whether key a sorts before key b (keys are distinct: slots are).
fn before(a: vec2<u32>, b: vec2<u32>) -> bool {
    return a.x < b.x || (a.x == b.x && a.y < b.y);
}

// The compare-exchange of the pair at distance j whose first index is the q-th such index
// (j a power of two): q with a zero bit inserted at j.
fn pair_start(q: u32, j: u32) -> u32 {
    return ((q & ~(j - 1u)) << 1u) | (q & (j - 1u));
}

// Runs the stages k = k_first, 2 k_first, ..., k_last of the network on the block in `tile`,
// each from j = min(k, len) / 2 down to 1; `start` is the block's first index in its image
// (its bits decide each pair's direction).
fn sort_tile(lid: u32, start: u32, len: u32, k_first: u32, k_last: u32) {
    for (var k = k_first; k <= k_last; k <<= 1u) {
        for (var j = min(k, len) >> 1u; j > 0u; j >>= 1u) {
            for (var q = lid; q < (len >> 1u); q += WG) {
                let i = pair_start(q, j);
                let a = tile[i];
                let b = tile[i + j];
                let ascending = ((start + i) & k) == 0u;
                if (before(b, a) == ascending) {
                    tile[i] = b;
                    tile[i + j] = a;
                }
            }
            workgroupBarrier();
        }
    }
}

@compute @workgroup_size(WG)
fn sort_blocks(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let g = group_index(wid, nwg);
    let per_image = p.padded / p.block;
    if (g >= p.images * per_image) {
        return;
    }
    let n = g / per_image;
    let start = (g % per_image) * p.block;
    for (var e = lid; e < p.block; e += WG) {
        tile[e] = sort_key(n, start + e);
    }
    workgroupBarrier();
    sort_tile(lid, start, p.block, 2u, p.block);
    let base = n * p.padded + start;
    for (var e = lid; e < p.block; e += WG) {
        keys[base + e] = tile[e];
    }
}

@compute @workgroup_size(WG)
fn merge_blocks(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let g = group_index(wid, nwg);
    let per_image = p.padded / p.block;
    if (g >= p.images * per_image) {
        return;
    }
    let start = (g % per_image) * p.block;
    let base = (g / per_image) * p.padded + start;
    for (var e = lid; e < p.block; e += WG) {
        tile[e] = keys[base + e];
    }
    workgroupBarrier();
    sort_tile(lid, start, p.block, p.k, p.k);
    for (var e = lid; e < p.block; e += WG) {
        keys[base + e] = tile[e];
    }
}

@compute @workgroup_size(WG)
fn sort_step(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let t = group_index(wid, nwg) * WG + lid;
    let half = p.padded >> 1u;
    if (t >= p.images * half) {
        return;
    }
    let i = pair_start(t % half, p.j);
    let base = (t / half) * p.padded;
    let a = keys[base + i];
    let b = keys[base + i + p.j];
    let ascending = (i & p.k) == 0u;
    if (before(b, a) == ascending) {
        keys[base + i] = b;
        keys[base + i + p.j] = a;
    }
}
