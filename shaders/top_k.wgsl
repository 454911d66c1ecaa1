// Per-level top-k of detection scores, with torchvision's RetinaNet/FCOS postprocess semantics:
// per (image, level) segment, the candidates are the elements whose score is strictly above
// the threshold; at most k of them are kept, those with the largest scores (ties at the k-th
// score: any of them).
//
// A score is sigmoid(logit), or sqrt(sigmoid(logit) * sigmoid(centerness)) for FCOS. It lies
// in [0, 1], so its f32 bits, read as a u32 "key", order like the scores; NaN keys lie above
// +inf's and are no candidates. The k-th largest key is found by a radix select over the keys'
// bits in three passes of 11, 11 and 10 bits; each pass is a histogram of the digit of the
// candidates whose higher bits match the prefix found so far, then a scan of it from the top.
// Nothing is read back: the launches are
//   reset                           zero the scratch, mark every output slot unused
//   (histogram, scan) x 3 passes    find the cut: the k-th largest key
//   compact                         write the keys above the cut, then ties up to k
// and every (image, level) segment is handled by the same launches.
//
// Bindings:
//   0  logits      [N, A*C, Hs, Ws]  the levels' class logits, stacked in one map
//   1  centerness  [N, A, Hs, Ws]    FCOS's centerness logits (a placeholder otherwise)
//                                    (both NCHW, or both channels-last: CHANNELS_LAST)
//   2  out         [N, L, K, 2]      per slot: the score's bits, the flat index
//   3  hist        [N*L, BINS]       the current pass's histogram per segment
//   4  state       [N*L, STATE]      the selection's state per segment (see below)
//   5  params      TopKParams
//
// Grids, workgroups linearised as workgroup_id.y * num_workgroups.x + workgroup_id.x:
//   reset: one invocation per word of the largest of hist, state and out;
//   histogram, compact: `blocks` workgroups per segment, striding over its elements;
//   scan: one workgroup per segment.

struct TopKParams {
    batch: u32,
    levels: u32,
    anchors: u32,
    classes: u32,
    map_height: u32,
    map_width: u32,
    k: u32,
    // The smallest key strictly above the threshold (0 for a negative threshold).
    min_key: u32,
    // Workgroups per segment in the histogram and compact launches.
    blocks: u32,
    // Which radix pass the histogram and scan launches do: 0, 1 or 2.
    radix_pass: u32,
    with_centerness: u32,
    // Channels-last: the padded channel counts of the logits and the centerness (0 for NCHW).
    logits_cl: u32,
    centerness_cl: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
    // Per level: (y0, x0, height, width) of its rectangle in the stacked map.
    regions: array<vec4<u32>, 8>,
}

// The layout of the logits and the centerness, a constant per pipeline so that the other
// layout's index arithmetic is compiled out.
override CHANNELS_LAST: bool = false;

// Mirrored by WG, BINS and STATE_WORDS in src/kernels/top_k.rs.
const WG: u32 = 256u;
const BINS: u32 = 2048u;
const BINS_PER_THREAD: u32 = 8u; // BINS / WG
const STATE: u32 = 8u;

// The words of a segment's state. PREFIX holds the key bits decided so far (after the last
// pass: the cut itself); RANK the rank of the cut among the keys that match PREFIX, 1 for the
// largest; ABOVE the number of candidates whose key is above every key matching PREFIX; ALL is
// 1 where at most k candidates exist, so that every one of them is kept. ABOVE_SLOTS and
// TIE_SLOTS count the slots handed out by the compaction to keys above the cut and equal to it.
const PREFIX: u32 = 0u;
const RANK: u32 = 1u;
const ABOVE: u32 = 2u;
const ALL: u32 = 3u;
const ABOVE_SLOTS: u32 = 4u;
const TIE_SLOTS: u32 = 5u;

// The key of +inf: larger ones are NaN (negative scores cannot occur, and would lie above too).
const MAX_KEY: u32 = 0x7f800000u;
// A key no candidate has.
const NO_KEY: u32 = 0xffffffffu;
// An unused slot: score -1.0, index 0xffffffff.
const UNUSED_SCORE: u32 = 0xbf800000u;
const UNUSED_INDEX: u32 = 0xffffffffu;

@group(0) @binding(0) var<storage, read> logits: array<act>;
@group(0) @binding(1) var<storage, read> centerness: array<act>;
@group(0) @binding(2) var<storage, read_write> out: array<u32>;
@group(0) @binding(3) var<storage, read_write> hist: array<atomic<u32>>;
@group(0) @binding(4) var<storage, read_write> state: array<atomic<u32>>;
@group(0) @binding(5) var<uniform> p: TopKParams;

fn group_index(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.y * nwg.x + wid.x;
}

// Decided on the bits: a driver allowed to assume no NaN may fold a float test away.
fn is_nan(v: f32) -> bool {
    return (bitcast<u32>(v) & 0x7fffffffu) > MAX_KEY;
}

fn sigmoid(x: f32) -> f32 {
    return 1.0 / (1.0 + exp(-x));
}

fn level_elements(level: u32) -> u32 {
    let r = p.regions[level];
    return r.z * r.w * p.anchors * p.classes;
}

struct Element {
    // The score's bits, or NO_KEY where the element is no candidate.
    key: u32,
    // torchvision's flat index within the level: ((y * width + x) * A + a) * C + c.
    index: u32,
}

// Element e of level `level` of image n, counted in memory order so that neighbouring
// invocations read neighbouring words: NCHW (channel, row, column), channels-last (row,
// column, channel).
fn element(n: u32, level: u32, e: u32) -> Element {
    let r = p.regions[level];
    let y0 = r.x;
    let x0 = r.y;
    let width = r.w;
    let plane = r.z * width;
    let channels = p.anchors * p.classes;
    var ch: u32;
    var pix: u32;
    if (CHANNELS_LAST) {
        pix = e / channels;
        ch = e - pix * channels;
    } else {
        ch = e / plane;
        pix = e - ch * plane;
    }
    let y = pix / width;
    let x = pix - y * width;
    let a = ch / p.classes;
    let c = ch - a * p.classes;
    let map_plane = p.map_height * p.map_width;
    let at = (y0 + y) * p.map_width + x0 + x;
    var el: Element;
    el.index = ((y * width + x) * p.anchors + a) * p.classes + c;
    el.key = NO_KEY;
    var logit_at = (n * channels + ch) * map_plane + at;
    var ctr_at = (n * p.anchors + a) * map_plane + at;
    if (CHANNELS_LAST) {
        logit_at = (n * map_plane + at) * p.logits_cl + ch;
        ctr_at = (n * map_plane + at) * p.centerness_cl + a;
    }
    let logit = f32(logits[logit_at]);
    if (is_nan(logit)) {
        return el;
    }
    var score = sigmoid(logit);
    if (p.with_centerness != 0u) {
        let ctr = f32(centerness[ctr_at]);
        if (is_nan(ctr)) {
            return el;
        }
        score = sqrt(score * sigmoid(ctr));
    }
    let key = bitcast<u32>(score);
    if (key >= p.min_key && key <= MAX_KEY) {
        el.key = key;
    }
    return el;
}

// The lowest bit of the pass's digit: the digits are bits 21..31, 10..20 and 0..9.
fn digit_shift(radix_pass: u32) -> u32 {
    return select(select(0u, 10u, radix_pass == 1u), 21u, radix_pass == 0u);
}

// Whether a key's bits above the pass's digit are the prefix found by the earlier passes.
fn matches_prefix(key: u32, prefix: u32) -> bool {
    if (p.radix_pass == 0u) {
        return true;
    }
    let above = digit_shift(p.radix_pass - 1u);
    return (key >> above) == (prefix >> above);
}

fn digit(key: u32) -> u32 {
    let shift = digit_shift(p.radix_pass);
    // 11 bits in the first two passes, 10 in the last; the first has the sign bit, always 0.
    return (key >> shift) & select(0x7ffu, 0x3ffu, p.radix_pass == 2u);
}

@compute @workgroup_size(WG)
fn top_k_reset(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let i = group_index(wid, nwg) * WG + lid;
    let segments = p.batch * p.levels;
    if (i < segments * BINS) {
        atomicStore(&hist[i], 0u);
    }
    if (i < segments * STATE) {
        atomicStore(&state[i], 0u);
    }
    if (i < segments * p.k * 2u) {
        out[i] = select(UNUSED_INDEX, UNUSED_SCORE, i % 2u == 0u);
    }
}

var<workgroup> local_hist: array<atomic<u32>, BINS>;

// One pass's histogram: each workgroup counts its share of a segment's matching candidates in
// workgroup memory, then adds its non-zero bins to the segment's histogram.
@compute @workgroup_size(WG)
fn top_k_histogram(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_index) lid: u32) {
    let g = group_index(wid, nwg);
    let seg = g / p.blocks;
    if (seg >= p.batch * p.levels) {
        return;
    }
    let block = g % p.blocks;
    for (var b = lid; b < BINS; b += WG) {
        atomicStore(&local_hist[b], 0u);
    }
    workgroupBarrier();
    let n = seg / p.levels;
    let level = seg % p.levels;
    let elements = level_elements(level);
    // A segment with at most k candidates was settled by the first pass.
    let selecting = atomicLoad(&state[seg * STATE + ALL]) == 0u;
    let prefix = atomicLoad(&state[seg * STATE + PREFIX]);
    if (selecting) {
        for (var e = block * WG + lid; e < elements; e += p.blocks * WG) {
            let key = element(n, level, e).key;
            if (key != NO_KEY && matches_prefix(key, prefix)) {
                atomicAdd(&local_hist[digit(key)], 1u);
            }
        }
    }
    workgroupBarrier();
    for (var b = lid; b < BINS; b += WG) {
        let count = atomicLoad(&local_hist[b]);
        if (count != 0u) {
            atomicAdd(&hist[seg * BINS + b], count);
        }
    }
}

var<workgroup> sums: array<u32, WG>;

// Finds the bin of the pass's histogram that holds the key of the wanted rank, counting from
// the top, and narrows the segment's state to it. Clears the histogram for the next pass.
@compute @workgroup_size(WG)
fn top_k_scan(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let seg = group_index(wid, nwg);
    if (seg >= p.batch * p.levels) {
        return;
    }
    let base = seg * STATE;
    // The segment's state as the previous pass left it, read before any invocation may
    // narrow it below: the one that finds the bin rewrites RANK while the others still decide.
    let all = atomicLoad(&state[base + ALL]);
    let rank = atomicLoad(&state[base + RANK]);
    // Invocation lid holds BINS_PER_THREAD bins, the first from the top.
    let top = BINS - 1u - lid * BINS_PER_THREAD;
    var counts: array<u32, BINS_PER_THREAD>;
    var mine = 0u;
    for (var j = 0u; j < BINS_PER_THREAD; j++) {
        let at = seg * BINS + top - j;
        counts[j] = atomicLoad(&hist[at]);
        atomicStore(&hist[at], 0u);
        mine += counts[j];
    }
    // Inclusive prefix sums over the invocations, in descending key order.
    sums[lid] = mine;
    workgroupBarrier();
    for (var offset = 1u; offset < WG; offset *= 2u) {
        var v = sums[lid];
        if (lid >= offset) {
            v += sums[lid - offset];
        }
        workgroupBarrier();
        sums[lid] = v;
        workgroupBarrier();
    }
    let through = sums[lid];
    let total = sums[WG - 1u];
    if (all != 0u) {
        return;
    }
    if (p.radix_pass == 0u && total <= p.k) {
        if (lid == 0u) {
            atomicStore(&state[base + ALL], 1u);
        }
        return;
    }
    let wanted = select(rank, p.k, p.radix_pass == 0u);
    var before = through - mine;
    // One invocation holds the bin where the count from the top reaches the wanted rank. (If
    // the passes ever counted differently, no invocation does and the compaction's caps keep
    // every write inside the segment's slots.)
    if (before < wanted && wanted <= through) {
        for (var j = 0u; j < BINS_PER_THREAD; j++) {
            if (before + counts[j] >= wanted) {
                let bin = top - j;
                let prefix = atomicLoad(&state[base + PREFIX]);
                atomicStore(&state[base + PREFIX], prefix | (bin << digit_shift(p.radix_pass)));
                atomicStore(&state[base + ABOVE], atomicLoad(&state[base + ABOVE]) + before);
                atomicStore(&state[base + RANK], wanted - before);
                break;
            }
            before += counts[j];
        }
    }
}

var<workgroup> chunk_count: array<atomic<u32>, 2>;
var<workgroup> chunk_base: array<u32, 2>;

// Writes the selected candidates: those above the cut (fewer than k) take slots from the
// front, those equal to it the slots after them, up to k. Slots are reserved a chunk of WG
// elements at a time, one global atomic per kind and chunk.
@compute @workgroup_size(WG)
fn top_k_compact(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let g = group_index(wid, nwg);
    let seg = g / p.blocks;
    if (seg >= p.batch * p.levels) {
        return;
    }
    let block = g % p.blocks;
    let n = seg / p.levels;
    let level = seg % p.levels;
    let elements = level_elements(level);
    let base = seg * STATE;
    let take_all = atomicLoad(&state[base + ALL]) != 0u;
    let cut = atomicLoad(&state[base + PREFIX]);
    let above = atomicLoad(&state[base + ABOVE]);
    let slots = seg * p.k * 2u;
    // Workgroup memory starts with whatever the last kernel on this unit left there (the
    // pipelines are made without zero initialisation): the counters must start at zero, or
    // every slot of the segment lands past k.
    if (lid < 2u) {
        atomicStore(&chunk_count[lid], 0u);
    }
    workgroupBarrier();
    for (var start = block * WG; start < elements; start += p.blocks * WG) {
        let e = start + lid;
        // 0: above the cut, 1: equal to it, 2: not selected.
        var kind = 2u;
        var el: Element;
        if (e < elements) {
            el = element(n, level, e);
            if (el.key != NO_KEY) {
                if (take_all || el.key > cut) {
                    kind = 0u;
                } else if (el.key == cut) {
                    kind = 1u;
                }
            }
        }
        var slot = 0u;
        if (kind < 2u) {
            slot = atomicAdd(&chunk_count[kind], 1u);
        }
        workgroupBarrier();
        if (lid < 2u) {
            let count = atomicExchange(&chunk_count[lid], 0u);
            var first = 0u;
            if (count != 0u) {
                first = atomicAdd(&state[base + ABOVE_SLOTS + lid], count);
            }
            chunk_base[lid] = first;
        }
        workgroupBarrier();
        if (kind < 2u) {
            slot += chunk_base[kind];
            if (kind == 1u) {
                slot += above;
            }
            if (slot < p.k) {
                out[slots + 2u * slot] = el.key;
                out[slots + 2u * slot + 1u] = el.index;
            }
        }
        // chunk_base is rewritten by the next chunk.
        workgroupBarrier();
    }
}
