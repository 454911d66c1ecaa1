// Direct convolution without padding (the graph pads explicitly first) in row tiles: each
// invocation computes 8 consecutive output pixels of one row for M output channels. Needs
// common.wgsl, resample.wgsl, conv2d_epilogue.wgsl and conv2d_nchw.wgsl before it.
//
// The entry point `conv2d_rows` is conv2d_rows.tmpl.wgsl, expanded by the Rust wrapper
// (src/kernels/conv2d/rows.rs) and appended to this file, unrolled for one kernel size, stride
// and M: on llvmpipe every loop or array index left to run time costs 2-4x (measured), and
// every storage load is a loop over the SIMD lanes, so the input is read as vec4s. Per input
// channel and kernel row, an invocation loads the (8 - 1) * stride + kernel width values its
// pixels need as a few aligned vec4s and picks its window out of them with selects (the
// window's start is not a multiple of four in general); each value then feeds M multiply-adds
// per tap. Measured on a 3x3 256->256 conv at 150x225 on llvmpipe: 26 GFLOP/s against 16-18
// for the best one-value-per-load tile.
//
// A pointwise conv with the plain epilogue runs on the flattened plane: one row of H * W pixels.
//
// Split-K: with p.splits > 1 the input channels are split into that many parts; the template's
// entry `conv2d_rows_partial` stores each part's raw sums in `partials` ([splits][N][Cout][OH *
// OW], f32) and `conv2d_rows_reduce` below adds them up and applies the epilogue. Small maps
// need it to fill a GPU: without it a layer4 conv at 19x29 runs a few dozen workgroups.
//
// Grid: x = row tiles (output rows x ceil(OW / 8)) over WG_PIX lanes, y = groups of WG_CO
// channel tiles of M, z = batch x splits (split-minor). conv2d_rows_reduce: one invocation per
// output element, workgroups of REDUCE_WG linearised over x and y.

override WG_PIX: u32 = 64u;
override WG_CO: u32 = 1u;

@group(0) @binding(0) var<storage, read> x: array<vec4<act>>;
@group(0) @binding(1) var<storage, read> weights: array<vec4<act>>;

@group(0) @binding(6) var<storage, read_write> partials: array<f32>;

const REDUCE_WG: u32 = 256u;

@compute @workgroup_size(REDUCE_WG)
fn conv2d_rows_reduce(@builtin(workgroup_id) wid: vec3<u32>,
                      @builtin(num_workgroups) nwg: vec3<u32>,
                      @builtin(local_invocation_index) lid: u32) {
    let plane = p.out_height * p.out_width;
    let per_image = p.out_channels * plane;
    let i = (wid.y * nwg.x + wid.x) * REDUCE_WG + lid;
    if (i >= p.batch * per_image) {
        return;
    }
    let n = i / per_image;
    let r = i % per_image;
    var sum = 0.0;
    for (var s = 0u; s < p.splits; s++) {
        sum += partials[(s * p.batch + n) * per_image + r];
    }
    store_output(n, r / plane, r % plane, sum, UPSAMPLE);
}
