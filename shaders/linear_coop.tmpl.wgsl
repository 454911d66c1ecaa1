// The entry point of the cooperative-matrix linear layer (linear_coop.wgsl, which explains the
// blocks), a template for one block and matrix side that src/kernels/linear/coop.rs expands
// (the markers are described in src/kernels/template.rs) and appends to linear_coop.wgsl.
// Values: SIDE x SIDE matrices, blocks of MT x NT of them, unrolled into named variables.

// Generated: blocks of {{MT}}x{{NT}} {{SIDE}}x{{SIDE}} matrices.
const S: u32 = {{SIDE}}u;
// One accumulator at a time on its way to the output.
var<workgroup> c_tile: array<f32, {{SIDE * SIDE}}>;

@compute @workgroup_size(SG)
fn linear_coop(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lane: u32) {
    let block = wid.y * nwg.x + wid.x;
    // Uniform across the workgroup (one subgroup), so the matrix operations below stay in
    // uniform control flow.
    if (block >= p.blocks) {
        return;
    }
    let row0 = block / p.blocks_n * {{MT * SIDE}}u;
    let col0 = block % p.blocks_n * {{NT * SIDE}}u;
    // Each tile's first row (column), and where it is loaded from: moved back to end on the
    // last row (column) if it would run past it.
{{#for i in 0..MT}}
    let r{{i}} = row0 + {{i * SIDE}}u;
    let ro{{i}} = min(r{{i}}, p.rows - S);
    let a_base{{i}} = ro{{i}} * p.inputs;
{{/for}}
{{#for j in 0..NT}}
    let n{{j}} = col0 + {{j * SIDE}}u;
    let no{{j}} = min(n{{j}}, p.outputs - S);
    let b_base{{j}} = no{{j}} * p.inputs;
{{/for}}
{{#for i in 0..MT}}
{{#for j in 0..NT}}
    var c{{i}}_{{j}} = coop_mat{{SIDE}}x{{SIDE}}<f32, C>();
{{/for}}
{{/for}}
    let ld = p.inputs;
    for (var k0 = 0u; k0 < p.inputs; k0 += S) {
        // Every index and stride bound to a `let` first: naga 30's SPIR-V writer panicked on
        // expressions written inline in a cooperative load's pointer.
{{#for i in 0..MT}}
        let ai{{i}} = a_base{{i}} + k0;
        let a{{i}} = coopLoadT<coop_mat{{SIDE}}x{{SIDE}}<act, A>>(&x[ai{{i}}], ld);
{{/for}}
{{#for j in 0..NT}}
        let bi{{j}} = b_base{{j}} + k0;
        let b{{j}} = coopLoad<coop_mat{{SIDE}}x{{SIDE}}<act, B>>(&w[bi{{j}}], ld);
{{/for}}
{{#for i in 0..MT}}
{{#for j in 0..NT}}
        c{{i}}_{{j}} = coopMultiplyAdd(a{{i}}, b{{j}}, c{{i}}_{{j}});
{{/for}}
{{/for}}
    }
    let tile_origin = 0u;
{{#for i in 0..MT}}
{{#for j in 0..NT}}
    coopStoreT(c{{i}}_{{j}}, &c_tile[tile_origin], S);
    workgroupBarrier();
    for (var e = lane; e < S * S; e += SG) {
        let row = ro{{i}} + e / S;
        let col = no{{j}} + e % S;
        if (row >= r{{i}} && row < p.rows && col >= n{{j}} && col < p.outputs) {
            store_output(row, col, c_tile[e]);
        }
    }
    workgroupBarrier();
{{/for}}
{{/for}}
}
