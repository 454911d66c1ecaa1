// The entry point of the row kernel (conv2d_rows.wgsl, which explains the tiling), a template
// for one kernel size, stride and tile that src/kernels/conv2d/rows.rs expands (the markers are
// described in src/kernels/template.rs) and appends to conv2d_rows.wgsl:
//   conv2d_rows          the whole sum over the input channels, through the epilogue
//   conv2d_rows_partial  (PARTIAL) the raw sums of one split of the input channels
// Values: KH x KW kernel, SH x SW stride, M4 vec4s of output channels by PIXELS pixels per
// invocation (LEVELS = log2 PIXELS), SPAN input values per kernel row of those pixels, read as
// LOADS aligned vec4s.
//
// Kernel columns, pixels and channels are unrolled into named variables; kernel rows stay a loop:
// unrolling them too multiplies the code (and the shader compile time, seconds on llvmpipe for a
// 7x7 kernel) for no measured gain.

// Generated: kernel {{KH}}x{{KW}}, stride {{SH}}x{{SW}}, {{4 * M4}} output channels by {{PIXELS}} pixels.
@compute @workgroup_size(WG_PIX, WG_CO)
fn conv2d_rows{{#if PARTIAL}}_partial{{/if}}(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
{{#if PARTIAL}}
    let n = wid.z / p.splits;
    // This launch's part of the input channels.
    let split = wid.z % p.splits;
    let part = (p.in_channels + p.splits - 1u) / p.splits;
    let ci0 = min(split * part, p.in_channels);
    let ci1 = min(ci0 + part, p.in_channels);
{{#else}}
    // The whole sum, with the loop bounds llvmpipe sees as uniform: bounds derived from the
    // workgroup id made the unsplit kernel 3-15% slower there.
    let n = wid.z;
    let ci0 = 0u;
    let ci1 = p.in_channels;
{{/if}}
    let blocks = (p.out_width + {{PIXELS - 1}}u) / {{PIXELS}}u;
    let lanes = blocks * p.out_height;
    let gid = wid.x * WG_PIX + lid.x;
    // `% WG_CO` folds to 0 when WG_CO is 1: the channel tile is then uniform.
    let co_tile = wid.y * WG_CO + lid.y % WG_CO;
    let co_base = co_tile * {{4 * M4}}u;
    let live = gid < lanes && co_base < p.out_channels;
    // Dead lanes compute on a clamped position and store nothing.
    let g = min(gid, lanes - 1u);
    let oy = g / blocks;
    let ox0 = (g % blocks) * {{PIXELS}}u;
{{#for m in 0..M4}}
{{#for j in 0..PIXELS}}
    var a{{m}}_{{j}} = vec4<f32>(0.0);
{{/for}}
{{/for}}
    let in_plane = p.in_height * p.in_width;
    var xb = (n * p.in_channels + ci0) * in_plane + oy * {{SH}}u * p.in_width + ox0 * {{SW}}u;
    var wi = ci0 * {{KH * KW}}u * p.cout_vec4 + co_tile * {{M4}}u;
    for (var ci = ci0; ci < ci1; ci++) {
        for (var ky = 0u; ky < {{KH}}u; ky++) {
            let e = xb + ky * p.in_width;
            let s = e & 3u;
            let a = e >> 2u;
{{#for q in 0..LOADS}}
            let q{{q}} = vec4<f32>(x[a + {{q}}u]);
{{/for}}
            // v_i = element e + i: component s + i of the loaded run, picked with selects.
{{#for i in 0..SPAN}}
            let v{{i}} = select(select(q{{i / 4}}[{{i % 4}}], q{{(i + 1) / 4}}[{{(i + 1) % 4}}], s == 1u), select(q{{(i + 2) / 4}}[{{(i + 2) % 4}}], q{{(i + 3) / 4}}[{{(i + 3) % 4}}], s == 3u), s >= 2u);
{{/for}}
{{#for kx in 0..KW}}
{{#for m in 0..M4}}
            let w{{kx}}_{{m}} = vec4<f32>(weights[wi + {{m}}u]);
{{#for j in 0..PIXELS}}
            a{{m}}_{{j}} = fma(w{{kx}}_{{m}}, vec4(v{{j * SW + kx}}), a{{m}}_{{j}});
{{/for}}
{{/for}}
            wi += p.cout_vec4;
{{/for}}
        }
        xb += in_plane;
    }
    if (!live) {
        return;
    }
    let row = oy * p.out_width + ox0;
    // The epilogue loops over the pixels; each pixel's accumulators are picked from the named
    // variables with a balanced tree of selects on the bits of the loop index (level l picks
    // between pairs of level l - 1 on bit l - 1), and the channels are unrolled. Indexing an
    // array of the accumulators instead (the former epilogue) compiles, on lavapipe, to per-lane
    // scratch memory: a 1x1 64->256 conv at 150x225 ran at 7.8 GFLOP/s that way and 18.1 this
    // way (GL: 19.1 and 19.6; 3x3 256->256: 27.6 -> 30.9 on Vulkan, 32.6 -> 34.2 on GL).
    // Unrolling the pixels as well was slower (15.5) and made the shaders several times larger:
    // a cold compile of the op tests' kernels took 50-60 s instead of 9 on llvmpipe, long enough
    // for wgpu's GL backend to give up on its context lock in other threads.
    for (var j = 0u; j < {{PIXELS}}u; j++) {
        if (ox0 + j >= p.out_width) {
            break;
        }
{{#for m in 0..M4}}
{{#for k in 0..PIXELS}}
        let t{{m}}_0_{{k}} = a{{m}}_{{k}};
{{/for}}
{{#for l in 1..LEVELS + 1}}
{{#for k in 0..PIXELS >> l}}
        let t{{m}}_{{l}}_{{k}} = select(t{{m}}_{{l - 1}}_{{2 * k}}, t{{m}}_{{l - 1}}_{{2 * k + 1}}, (j & {{1 << (l - 1)}}u) != 0u);
{{/for}}
{{/for}}
        let v{{m}} = t{{m}}_{{LEVELS}}_0;
{{#for c in 0..4}}
        if (co_base + {{4 * m + c}}u < p.out_channels) {
{{#if PARTIAL}}
            partials[((split * p.batch + n) * p.out_channels + co_base + {{4 * m + c}}u) * p.out_height * p.out_width + row + j] = v{{m}}[{{c}}];
{{#else}}
            store_output(n, co_base + {{4 * m + c}}u, row + j, v{{m}}[{{c}}], UPSAMPLE);
{{/if}}
        }
{{/for}}
{{/for}}
    }
}
