// Fully connected layer on cooperative matrices (tensor cores): out[m, n] = relu?(sum_k x[m, k]
// w[n, k] + bias[n]), the GEMM of linear.wgsl with f16 operands and f32 sums. Needs common.wgsl
// before it, `enable wgpu_cooperative_matrix;` and f16; its entry point, linear_coop, is
// linear_coop.tmpl.wgsl expanded for one block and matrix side and appended to this file.
//
// Bindings: those of linear.wgsl.
//   0  x       [M, K]    f16
//   1  w       [N, K]    f16, nn.Linear's [out, in]
//   2  bias    [N]       f32
//   3  out     [M, N]    f16
//   4  params  LinearCoopParams
//
// One workgroup is one subgroup (SG lanes, the adapter's fixed subgroup size), holding MT x NT
// accumulators of S x S: a block of MT S rows by NT S columns of the output. An S x S tile of
// x is a row-major matrix of stride K, and one of w read as B = wᵀ a column-major one of stride
// K, so both load straight from storage, S values of K per step (K a multiple of S). A tile
// that would run past the last row (column) is moved back to end on it instead, M and N being
// at least S: every load stays inside the tensors, and the rows (columns) it then shares with
// the tile before it are stored by that tile only.
//
// Grid: one workgroup per block, numbered N-fastest and linearised over x and y.

struct LinearCoopParams {
    // M, K, N.
    rows: u32,
    inputs: u32,
    outputs: u32,
    // Blocks along N, and blocks in all.
    blocks_n: u32,
    blocks: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

override SG: u32 = 32u;
override RELU: bool = false;

@group(0) @binding(0) var<storage, read> x: array<act>;
@group(0) @binding(1) var<storage, read> w: array<act>;
@group(0) @binding(2) var<storage, read> bias: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<act>;
@group(0) @binding(4) var<uniform> p: LinearCoopParams;

// The sum of output (row, col), bias and ReLU applied, stored.
fn store_output(row: u32, col: u32, sum: f32) {
    var y = sum + bias[col];
    if (RELU) {
        y = relu_keep_nan(y);
    }
    out[row * p.outputs + col] = act(y);
}
