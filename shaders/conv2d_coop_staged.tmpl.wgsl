// The staged block of the cooperative-matrix convolution, entry point `conv2d_coop_staged`: a
// template for one matrix side and subgroup size that src/kernels/conv2d/coop/staged.rs expands
// (the markers are described in src/kernels/template.rs) and appends to conv2d_coop.wgsl, which
// holds the bindings and the epilogue.
//
// GM x GN subgroups share a block of SBM pixels by SBN output channels, each subgroup TM x TN
// SIDE x SIDE matrices of it. Per k step (KC channels of one tap) the workgroup loads the next
// step's A and B blocks into registers with 16-byte loads (each of the WGS invocations PER_A and
// PER_B of them) while it multiplies the current pair of workgroup buffers, then stores them into
// the other pair: one barrier per step. Workgroup-memory rows are LDA and LDB elements long,
// padded so that the rows a cooperative load reads start in different banks; A_BUF and B_BUF are
// one buffer's elements.

// Generated: the staged {{SBM}}x{{SBN}} block, {{GM}}x{{GN}} subgroups of {{TM}}x{{TN}} {{SIDE}}x{{SIDE}} matrices.
const SS: u32 = {{SIDE}}u;
const KC: u32 = {{KC}}u;
const SBM: u32 = {{SBM}}u;
const SBN: u32 = {{SBN}}u;
const LDA: u32 = {{LDA}}u;
const LDB: u32 = {{LDB}}u;
const A_BUF: u32 = {{A_BUF}}u;
const B_BUF: u32 = {{B_BUF}}u;
const WGS: u32 = {{WGS}}u;
const A_ROW_CHUNKS: u32 = {{KC / 8}}u;
const B_ROW_CHUNKS: u32 = {{SBN / 8}}u;
var<workgroup> a_s: array<act, {{2 * A_BUF}}>;
var<workgroup> b_s: array<act, {{2 * B_BUF}}>;
var<workgroup> c_s: array<f32, {{GM * GN * SIDE * SIDE}}>;
// The input and the weights again, as 16-byte words for the block loads.
@group(0) @binding(7) var<storage, read> x4: array<vec4<u32>>;
@group(0) @binding(8) var<storage, read> w4: array<vec4<u32>>;

// Eight f16 from one 16-byte word into workgroup memory (naga takes no bitcast to vec2<f16>;
// unpack2x16float is exact).
fn stage_a(at: u32, v: vec4<u32>) {
    let h0 = unpack2x16float(v.x);
    a_s[at + 0u] = act(h0.x);
    a_s[at + 1u] = act(h0.y);
    let h1 = unpack2x16float(v.y);
    a_s[at + 2u] = act(h1.x);
    a_s[at + 3u] = act(h1.y);
    let h2 = unpack2x16float(v.z);
    a_s[at + 4u] = act(h2.x);
    a_s[at + 5u] = act(h2.y);
    let h3 = unpack2x16float(v.w);
    a_s[at + 6u] = act(h3.x);
    a_s[at + 7u] = act(h3.y);
}

fn stage_b(at: u32, v: vec4<u32>) {
    let h0 = unpack2x16float(v.x);
    b_s[at + 0u] = act(h0.x);
    b_s[at + 1u] = act(h0.y);
    let h1 = unpack2x16float(v.y);
    b_s[at + 2u] = act(h1.x);
    b_s[at + 3u] = act(h1.y);
    let h2 = unpack2x16float(v.z);
    b_s[at + 4u] = act(h2.x);
    b_s[at + 5u] = act(h2.y);
    let h3 = unpack2x16float(v.w);
    b_s[at + 6u] = act(h3.x);
    b_s[at + 7u] = act(h3.y);
}

@compute @workgroup_size(WGS)
fn conv2d_coop_staged(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32, @builtin(subgroup_id) sg: u32, @builtin(subgroup_invocation_id) lane: u32) {
    let n = wid.z;
    let m0 = wid.x * SBM;
    let n0 = wid.y * SBN;
    let plane = p.out_height * p.out_width;
    // Each invocation's chunks keep their rows from step to step: their storage origins are
    // computed once. Pixels past the map's end load the last one again (never stored).
{{#for k in 0..PER_A}}
    let ca{{k}} = lid + {{k * WGS}}u;
    let pix{{k}} = min(m0 + ca{{k}} / A_ROW_CHUNKS, plane - 1u);
    let pa{{k}} = segment_origin(n, pix{{k}} / p.out_width, pix{{k}} % p.out_width) + (ca{{k}} % A_ROW_CHUNKS) * 8u;
    let sa{{k}} = (ca{{k}} / A_ROW_CHUNKS) * LDA + (ca{{k}} % A_ROW_CHUNKS) * 8u;
{{/for}}
{{#for k in 0..PER_B}}
    let cb{{k}} = lid + {{k * WGS}}u;
    let pb{{k}} = (cb{{k}} / B_ROW_CHUNKS) * p.w_stride + n0 + (cb{{k}} % B_ROW_CHUNKS) * 8u;
    let sb{{k}} = (cb{{k}} / B_ROW_CHUNKS) * LDB + (cb{{k}} % B_ROW_CHUNKS) * 8u;
{{/for}}
    let sm = sg / {{GN}}u;
    let sn = sg % {{GN}}u;
{{#for i in 0..TM}}
{{#for j in 0..TN}}
    var c{{i}}_{{j}} = coop_mat{{SIDE}}x{{SIDE}}<f32, C>();
{{/for}}
{{/for}}
    let kchunks = p.in_cl / KC;
    let lda = LDA;
    let ldb = LDB;
{{#for k in 0..PER_A}}
    var ra{{k}}: vec4<u32>;
{{/for}}
{{#for k in 0..PER_B}}
    var rb{{k}}: vec4<u32>;
{{/for}}
    // Step t's loads into registers, t -> (tap, first channel): step 0 here, step t + 1 in the
    // loop while it multiplies step t.
    if (p.steps > 0u) {
        {
            let tap = 0u / kchunks;
            let c0 = (0u - tap * kchunks) * KC;
            let ky = tap / p.kernel_w;
            let a_off = (ky * p.in_width + tap - ky * p.kernel_w) * p.in_cl + c0;
            let b_off = (tap * p.in_cl + c0) * p.w_stride;
{{#for k in 0..PER_A}}
            ra{{k}} = x4[(pa{{k}} + a_off) / 8u];
{{/for}}
{{#for k in 0..PER_B}}
            rb{{k}} = w4[(pb{{k}} + b_off) / 8u];
{{/for}}
        }
{{#for k in 0..PER_A}}
        stage_a(0u * A_BUF + sa{{k}}, ra{{k}});
{{/for}}
{{#for k in 0..PER_B}}
        stage_b(0u * B_BUF + sb{{k}}, rb{{k}});
{{/for}}
    }
    workgroupBarrier();
    for (var t = 0u; t < p.steps; t++) {
        let cur = t & 1u;
        let more = t + 1u < p.steps;
        if (more) {
            let tap = (t + 1u) / kchunks;
            let c0 = ((t + 1u) - tap * kchunks) * KC;
            let ky = tap / p.kernel_w;
            let a_off = (ky * p.in_width + tap - ky * p.kernel_w) * p.in_cl + c0;
            let b_off = (tap * p.in_cl + c0) * p.w_stride;
{{#for k in 0..PER_A}}
            ra{{k}} = x4[(pa{{k}} + a_off) / 8u];
{{/for}}
{{#for k in 0..PER_B}}
            rb{{k}} = w4[(pb{{k}} + b_off) / 8u];
{{/for}}
        }
{{#for kk in 0..KC / SIDE}}
{{#for i in 0..TM}}
        let ai{{kk}}_{{i}} = cur * A_BUF + (sm * {{TM * SIDE}}u + {{i * SIDE}}u) * LDA + {{kk * SIDE}}u;
        let a{{kk}}_{{i}} = coopLoadT<coop_mat{{SIDE}}x{{SIDE}}<act, A>>(&a_s[ai{{kk}}_{{i}}], lda);
{{/for}}
{{#for j in 0..TN}}
        let bi{{kk}}_{{j}} = cur * B_BUF + {{kk * SIDE}}u * LDB + sn * {{TN * SIDE}}u + {{j * SIDE}}u;
        let b{{kk}}_{{j}} = coopLoadT<coop_mat{{SIDE}}x{{SIDE}}<act, B>>(&b_s[bi{{kk}}_{{j}}], ldb);
{{/for}}
{{#for i in 0..TM}}
{{#for j in 0..TN}}
        c{{i}}_{{j}} = coopMultiplyAdd(a{{kk}}_{{i}}, b{{kk}}_{{j}}, c{{i}}_{{j}});
{{/for}}
{{/for}}
{{/for}}
        if (more) {
            let next = 1u - cur;
{{#for k in 0..PER_A}}
            stage_a(next * A_BUF + sa{{k}}, ra{{k}});
{{/for}}
{{#for k in 0..PER_B}}
            stage_b(next * B_BUF + sb{{k}}, rb{{k}});
{{/for}}
        }
        workgroupBarrier();
    }
    // The epilogue, one tile at a time through this subgroup's f32 tile in workgroup memory:
    // row-major, so consecutive lanes take consecutive channels of a pixel.
    let cs = sg * SS * SS;
    let ldc = SS;
{{#for i in 0..TM}}
{{#for j in 0..TN}}
    coopStoreT(c{{i}}_{{j}}, &c_s[cs], ldc);
    workgroupBarrier();
    for (var e = lane; e < SS * SS; e += SG) {
        let pix = m0 + sm * {{TM * SIDE}}u + {{i * SIDE}}u + e / SS;
        let co = n0 + sn * {{TN * SIDE}}u + {{j * SIDE}}u + e % SS;
        if (pix < plane && co < p.out_cl) {
            epilogue(n, pix / p.out_width, pix % p.out_width, co, c_s[cs + e]);
        }
    }
    workgroupBarrier();
{{/for}}
{{/for}}
}
