// Fully connected layer, PyTorch's nn.Linear: out[m, n] = relu?(sum_k x[m, k] w[n, k] + bias[n]),
// a GEMM of x [M, K] by the transpose of w [N, K] (nn.Linear's [out, in] layout, as saved). x
// is any NCHW tensor read as M rows of K = C*H*W values, which is torch.flatten(start_dim=1).
// Needs common.wgsl before it.
//
// Bindings:
//   0  x       [M, K]    `act`
//   1  w       [N, K]    `act`
//   2  bias    [N]       f32 (zeros for a layer without one)
//   3  out     [M, N]    `act`
//   4  params  LinearParams
//
// Grid: one workgroup per TILE_M x TILE_N block of outputs, the blocks numbered n-fastest
// (workgroups linearised over x and y so that no dimension passes the device's limit). Blocks
// of one row of x run side by side and share its tiles in the cache.
//
// The workgroup walks K in steps of TILE_K: it copies a TILE_M x TILE_K tile of x and a TILE_N x
// TILE_K tile of w into workgroup memory (f32 whatever `act` is), then each of its 16 x 16
// invocations multiplies 4 rows by 4 columns of them. Every value loaded from memory then feeds
// 64 multiply-adds instead of 1, and every pair of vec4s read from workgroup memory 16. A
// partial last step (K not a multiple of TILE_K) and the blocks past M or N load zeros.
//
// Sizes, for torchvision's box head (M ~ 1000 proposals, K = 256*7*7 = 12544 then 1024, N =
// 1024, then 91 and 364 for the predictor): 64 x 64 blocks give fc6 and fc7 16 x 16 = 256
// workgroups, a few per compute unit of a large GPU, and fc6 784 steps of 16 each; 4 x 4 per
// invocation keeps 16 accumulators in registers (named vec4s: llvmpipe spills an indexed array
// to scratch memory). The tiles take (64 + 64) * 16 * 4 = 8 KiB of workgroup memory, half of
// the 16 KiB every WebGPU device has; TILE_K = 32 would take all of it. 256 invocations is the
// most every WebGPU device allows in one workgroup.

struct LinearParams {
    // M, K, N.
    rows: u32,
    inputs: u32,
    outputs: u32,
    // Blocks along N, and blocks in all.
    tiles_n: u32,
    tiles: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

const TILE_M: u32 = 64u;
const TILE_N: u32 = 64u;
const TILE_K: u32 = 16u;
// Invocations per side of the workgroup: 16 x 16, each 4 x 4 outputs.
const SIDE: u32 = 16u;

override RELU: bool = false;

@group(0) @binding(0) var<storage, read> x: array<act>;
@group(0) @binding(1) var<storage, read> w: array<act>;
@group(0) @binding(2) var<storage, read> bias: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<act>;
@group(0) @binding(4) var<uniform> p: LinearParams;

// [k][row / 4] and [k][column / 4]: an invocation reads its 4 rows and its 4 columns at one k
// as one vec4 each.
var<workgroup> tile_x: array<vec4<f32>, 256>;
var<workgroup> tile_w: array<vec4<f32>, 256>;

// x[row, k], or 0 outside the matrix.
fn load_x(row: u32, k: u32) -> f32 {
    if (row < p.rows && k < p.inputs) {
        return f32(x[row * p.inputs + k]);
    }
    return 0.0;
}

fn load_w(col: u32, k: u32) -> f32 {
    if (col < p.outputs && k < p.inputs) {
        return f32(w[col * p.inputs + k]);
    }
    return 0.0;
}

fn store(row: u32, col: u32, v: f32) {
    if (row < p.rows && col < p.outputs) {
        var y = v + bias[col];
        if (RELU) {
            y = relu_keep_nan(y);
        }
        out[row * p.outputs + col] = act(y);
    }
}

fn store_row(row: u32, col: u32, v: vec4<f32>) {
    store(row, col, v.x);
    store(row, col + 1u, v.y);
    store(row, col + 2u, v.z);
    store(row, col + 3u, v.w);
}

@compute @workgroup_size(256)
fn linear(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    let tile = wid.y * nwg.x + wid.x;
    // Uniform across the workgroup, so the barriers below stay in uniform control flow.
    if (tile >= p.tiles) {
        return;
    }
    let row0 = tile / p.tiles_n * TILE_M;
    let col0 = tile % p.tiles_n * TILE_N;
    // Loading: 16 neighbouring invocations read 16 neighbouring k of one row.
    let load_k = lid % TILE_K;
    let load_r = lid / TILE_K;
    // Computing: rows 4 ty .. 4 ty + 3, columns 4 tx .. 4 tx + 3 of the block.
    let tx = lid % SIDE;
    let ty = lid / SIDE;
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    for (var k0 = 0u; k0 < p.inputs; k0 += TILE_K) {
        let k = k0 + load_k;
        for (var i = 0u; i < 4u; i++) {
            // Rows (columns) load_r + 16 i: element (load_r % 4) of vec4 4 i + load_r / 4.
            let r = load_r + SIDE * i;
            tile_x[load_k * SIDE + r / 4u][r % 4u] = load_x(row0 + r, k);
            tile_w[load_k * SIDE + r / 4u][r % 4u] = load_w(col0 + r, k);
        }
        workgroupBarrier();
        for (var kk = 0u; kk < TILE_K; kk++) {
            let a = tile_x[kk * SIDE + ty];
            let b = tile_w[kk * SIDE + tx];
            acc0 += a.x * b;
            acc1 += a.y * b;
            acc2 += a.z * b;
            acc3 += a.w * b;
        }
        workgroupBarrier();
    }
    let row = row0 + 4u * ty;
    let col = col0 + 4u * tx;
    store_row(row, col, acc0);
    store_row(row + 1u, col, acc1);
    store_row(row + 2u, col, acc2);
    store_row(row + 3u, col, acc3);
}
