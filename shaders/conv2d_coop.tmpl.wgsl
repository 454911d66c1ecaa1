// The entry points of the direct-load blocks of the cooperative-matrix convolution
// (conv2d_coop.wgsl, which explains the blocks), a template for one block shape and matrix side
// that src/kernels/conv2d/coop/tile.rs expands (the markers are described in
// src/kernels/template.rs) and appends to conv2d_coop.wgsl:
//   conv2d_coop          one split; the accumulators go through workgroup memory to the epilogue
//   conv2d_coop_partial  split-K: each split stores its f32 partial sums
// Values: SIDE x SIDE matrices, blocks of MT row segments of SIDE pixels by NT x SIDE output
// channels. The matrices of a block are unrolled into named variables.

// Generated: blocks of {{MT}}x{{NT}} {{SIDE}}x{{SIDE}} matrices.
const S: u32 = {{SIDE}}u;
const BN: u32 = {{NT * SIDE}}u;
const BM: u32 = {{MT * SIDE}}u;
var<workgroup> c_block: array<f32, {{MT * NT * SIDE * SIDE}}>;
{{#for partial in 0..2}}
@compute @workgroup_size(SG)
fn conv2d_coop{{#if partial}}_partial{{/if}}(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lane: u32) {
    let n = wid.z / p.splits;
    let split = wid.z % p.splits;
    let seg0 = wid.x * {{MT}}u;
    let n0 = wid.y * BN;
    // Segments past the map's end load the last one again (their results are never stored), so
    // that every load stays inside the tensor and its slack.
{{#for i in 0..MT}}
    let sg{{i}} = min(seg0 + {{i}}u, p.total_segments - 1u);
    let a_base{{i}} = segment_origin(n, sg{{i}} / p.segments, (sg{{i}} % p.segments) * S);
{{/for}}
{{#for i in 0..MT}}
{{#for j in 0..NT}}
    var c{{i}}_{{j}} = coop_mat{{SIDE}}x{{SIDE}}<f32, C>();
{{/for}}
{{/for}}
    let lda = p.stride_w * p.in_cl;
    let ldb = p.w_stride;
    let chunks = p.in_cl / S;
    let t0 = split * p.steps_per_split;
    let t1 = min(t0 + p.steps_per_split, p.steps);
    for (var t = t0; t < t1; t++) {
        let tap = t / chunks;
        let c0 = (t - tap * chunks) * S;
        let ky = tap / p.kernel_w;
        let kx = tap - ky * p.kernel_w;
        let a_off = (ky * p.in_width + kx) * p.in_cl + c0;
        let b_off = (tap * p.in_cl + c0) * ldb + n0;
        // Every index and stride bound to a `let` first: naga 30's SPIR-V writer panicked on
        // expressions written inline in a cooperative load's pointer.
{{#for i in 0..MT}}
        let ai{{i}} = a_base{{i}} + a_off;
        let a{{i}} = coopLoadT<coop_mat{{SIDE}}x{{SIDE}}<act, A>>(&x[ai{{i}}], lda);
{{/for}}
{{#for j in 0..NT}}
        let bi{{j}} = b_off + {{j * SIDE}}u;
        let b{{j}} = coopLoadT<coop_mat{{SIDE}}x{{SIDE}}<act, B>>(&weights[bi{{j}}], ldb);
{{/for}}
{{#for i in 0..MT}}
{{#for j in 0..NT}}
        c{{i}}_{{j}} = coopMultiplyAdd(a{{i}}, b{{j}}, c{{i}}_{{j}});
{{/for}}
{{/for}}
    }
{{#if partial}}
    // Every block has slots of its own in the partials (the grid's segments, not the map's), so
    // the stores need no bounds.
    let img = (split * p.batch + n) * p.part_image;
{{#for i in 0..MT}}
{{#for j in 0..NT}}
    let pi{{i}}_{{j}} = (img + (seg0 + {{i}}u) * S) * ldb + n0 + {{j * SIDE}}u;
    coopStoreT(c{{i}}_{{j}}, &partials[pi{{i}}_{{j}}], ldb);
{{/for}}
{{/for}}
{{#else}}
    // Row-major [BM][BN] in workgroup memory: consecutive lanes then take consecutive channels
    // of a pixel, as the channels-last output stores them.
    let ldc = BN;
{{#for i in 0..MT}}
{{#for j in 0..NT}}
    let ci{{i}}_{{j}} = {{i * SIDE * NT * SIDE + j * SIDE}}u;
    coopStoreT(c{{i}}_{{j}}, &c_block[ci{{i}}_{{j}}], ldc);
{{/for}}
{{/for}}
    workgroupBarrier();
    for (var e = lane; e < BM * BN; e += SG) {
        let m = e / BN;
        let co = n0 + e % BN;
        let seg = seg0 + m / S;
        let ox = (seg % p.segments) * S + m % S;
        if (seg < p.total_segments && ox < p.out_width && co < p.out_cl) {
            epilogue(n, seg / p.segments, ox, co, c_block[e]);
        }
    }
{{/if}}
}
{{/for}}
