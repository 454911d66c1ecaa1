// Convolution as an implicit GEMM on cooperative matrices (tensor cores), channels-last:
// C[pixel][cout] = sum over (tap, ci) of A[pixel][tap, ci] * B[tap, ci][cout], f16 operands and
// f32 accumulators. Needs common.wgsl and resample.wgsl before it, `enable
// wgpu_cooperative_matrix;` and f16.
//
// Tensors are channels-last ([N][H][W][C'], C' a multiple of the matrix side), the input
// already zero padded (the convolution itself has no padding). An S x S tile of A is S
// consecutive output pixels of one output row by S consecutive input channels of one kernel
// tap: in the input's storage that is a row-major matrix with row stride `stride_w * in_cl`,
// so it is loaded straight from storage, with no workgroup memory and no index arithmetic per
// element. B is the weights laid out [tap][in_cl][w_stride], also loaded straight from
// storage. The last tile of a row runs past the row's end: it reads the next row's pixels (or
// the slack the caller leaves after the tensor) and its extra pixels are never stored.
//
// In the direct-load blocks one workgroup is one subgroup (SG lanes, the adapter's fixed
// subgroup size): cooperative matrix operations belong to a subgroup. It holds TM x TN
// accumulators: TM row segments of S pixels by TN x S output channels. Their entry points,
// expanded from conv2d_coop.tmpl.wgsl for one block and matrix side and appended to this file,
// walk the k steps (taps, then S-channel chunks) of their split:
//   conv2d_coop          one split; the accumulators go through workgroup memory to the
//                        epilogue, which writes the output
//   conv2d_coop_partial  split-K: each split stores its f32 partial sums
// and `conv2d_coop_reduce` (below) sums a split-K launch's partials and applies the epilogue.
// `conv2d_coop_staged` (conv2d_coop_staged.tmpl.wgsl, appended instead) is the large-map block:
// 8 subgroups sharing double-buffered tiles in workgroup memory, reading the input and the
// weights as 16-byte words through bindings 7 and 8.
//
// Epilogue: out = relu?(acc * scale[co] + shift[co] + residual?), the residual as it is or
// upsampled from a coarser map: conv2d_epilogue.wgsl. Padding channels (scale and shift
// zero, residual zero) come out as zeros.
//
// Bindings:
//   0  x         [N][in_height][in_width][in_cl]                 conv entries
//   1  weights   [taps][in_cl][w_stride]                         conv entries
//   2  affine    [2][w_stride]  scale, then shift                epilogue
//   3  resample_src  the residual, [N][OH][OW][out_cl], or the   epilogue
//                    coarse map, [N][res_height][res_width][out_cl]
//   4  out       [N][OH + 2 top][OW + 2 left][out_cl]            epilogue
//   5  params    CoopConvParams
//   6  partials  [splits][N][seg_slots * S][w_stride], f32       split-K
//   7  x4        x as 16-byte words                              staged block
//   8  w4        weights as 16-byte words                        staged block
//
// Grid: x = blocks of TM segments (segments: S-pixel pieces of output rows), y = blocks of
// TN x S output channels, z = batch x splits (split-minor). conv2d_coop_reduce: one invocation
// per output element (workgroups linearised over x and y).

struct CoopConvParams {
    in_height: u32,
    in_width: u32,
    in_cl: u32,
    out_height: u32,
    out_width: u32,
    out_cl: u32,
    w_stride: u32,
    kernel_w: u32,
    stride_h: u32,
    stride_w: u32,
    // S-pixel segments per output row, and per image.
    segments: u32,
    total_segments: u32,
    // Pixels per image in the partials: the grid's segment slots times S.
    part_image: u32,
    steps: u32,
    steps_per_split: u32,
    splits: u32,
    batch: u32,
    flags: u32,
    res_height: u32,
    res_width: u32,
    res_scale_h: f32,
    res_scale_w: f32,
    len: u32,
    // Pixels per row in the partials: the segments times S.
    part_row: u32,
    // The output tensor's rows and row length, and where the convolution's pixels start in it:
    // a zero halo of out_top rows and out_left columns surrounds them (zero for no halo).
    out_rows: u32,
    out_pitch: u32,
    out_top: u32,
    out_left: u32,
    // Real output channels; the ones up to out_cl are padding.
    out_channels: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

override SG: u32 = 32u;
override WG: u32 = 256u;

@group(0) @binding(0) var<storage, read> x: array<act>;
@group(0) @binding(1) var<storage, read> weights: array<act>;
@group(0) @binding(5) var<uniform> p: CoopConvParams;
@group(0) @binding(6) var<storage, read_write> partials: array<f32>;

// The element index of input pixel (row * stride_h, col * stride_w) of image n, channel 0:
// where the A tiles of an output segment starting at (row, col) begin for tap (0, 0).
fn segment_origin(n: u32, row: u32, col: u32) -> u32 {
    return ((n * p.in_height + row * p.stride_h) * p.in_width + col * p.stride_w) * p.in_cl;
}

// The output element of channel `co` at (oy, ox) of image n, in the tensor with the halo, where
// oy and ox may reach into the halo (down to -out_top, -out_left).
fn out_index(n: u32, oy: i32, ox: i32, co: u32) -> u32 {
    let row = u32(i32(n * p.out_rows + p.out_top) + oy);
    return (row * p.out_pitch + u32(i32(p.out_left) + ox)) * p.out_cl + co;
}

// Zeros the halo cells that pixel (oy, ox) is the nearest to: the pixels of the first and last
// out_top rows and out_left columns write the halo out_top rows or out_left columns beyond them,
// corners included, so that one launch leaves the whole tensor written. That covers the halo
// when the map has at least out_top rows and out_left columns (every map, for a halo of 1).
fn write_halo(n: u32, oy: u32, ox: u32, co: u32) {
    let top = i32(p.out_top);
    let left = i32(p.out_left);
    let y = i32(oy);
    let x = i32(ox);
    let up = y < top;
    let down = y >= i32(p.out_height) - top;
    let west = x < left;
    let east = x >= i32(p.out_width) - left;
    if (up) {
        out[out_index(n, y - top, x, co)] = act(0.0);
    }
    if (down) {
        out[out_index(n, y + top, x, co)] = act(0.0);
    }
    if (west) {
        out[out_index(n, y, x - left, co)] = act(0.0);
    }
    if (east) {
        out[out_index(n, y, x + left, co)] = act(0.0);
    }
    if (up && west) {
        out[out_index(n, y - top, x - left, co)] = act(0.0);
    }
    if (up && east) {
        out[out_index(n, y - top, x + left, co)] = act(0.0);
    }
    if (down && west) {
        out[out_index(n, y + top, x - left, co)] = act(0.0);
    }
    if (down && east) {
        out[out_index(n, y + top, x + left, co)] = act(0.0);
    }
}

// Applies the epilogue to the raw sum `acc` of output channel `co` at (n, oy, ox) and stores it.
fn epilogue(n: u32, oy: u32, ox: u32, co: u32, acc: f32) {
    // Padding channels are zeros whatever the sum (an infinity in the window times their zero
    // weights is NaN, which the next convolution would spread to every channel), with nothing
    // added.
    var v = 0.0;
    if (co < p.out_channels) {
        let pix = (n * p.out_height + oy) * p.out_width + ox;
        let coarse = n * p.res_height * p.res_width * p.out_cl + co;
        v = epilogue_value(acc, co, p.w_stride, pix * p.out_cl + co, coarse, p.out_cl, oy, ox,
                           UPSAMPLE);
    }
    out[out_index(n, i32(oy), i32(ox), co)] = act(v);
    if (p.out_top + p.out_left != 0u) {
        write_halo(n, oy, ox, co);
    }
}

@compute @workgroup_size(WG)
fn conv2d_coop_reduce(@builtin(workgroup_id) wid: vec3<u32>,
                      @builtin(num_workgroups) nwg: vec3<u32>,
                      @builtin(local_invocation_index) lid: u32) {
    let i = (wid.y * nwg.x + wid.x) * WG + lid;
    if (i >= p.len) {
        return;
    }
    let co = i % p.out_cl;
    let pix = i / p.out_cl;
    let ox = pix % p.out_width;
    let oy = (pix / p.out_width) % p.out_height;
    let n = pix / p.out_width / p.out_height;
    var sum = 0.0;
    for (var s = 0u; s < p.splits; s++) {
        let at = ((s * p.batch + n) * p.part_image + oy * p.part_row + ox) * p.w_stride + co;
        sum += partials[at];
    }
    epilogue(n, oy, ox, co, sum);
}
