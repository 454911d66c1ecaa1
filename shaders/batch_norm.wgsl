// Inference batch norm over NCHW: out = (x - mean[c]) / sqrt(var[c] + eps) * weight[c] + bias[c].
//
// Bindings:
//   0  x       [N, C, H, W]
//   1  stats   [4][C]          running mean, running var, weight, bias
//   2  out     [N, C, H, W]
//   3  params  BatchNormParams
//
// Grid: one invocation per element, workgroups linearised over x and y.

struct BatchNormParams {
    len: u32,
    channels: u32,
    plane: u32,
    eps: f32,
}

override WG: u32 = 256u;

@group(0) @binding(0) var<storage, read> x: array<act>;
@group(0) @binding(1) var<storage, read> stats: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<act>;
@group(0) @binding(3) var<uniform> p: BatchNormParams;

@compute @workgroup_size(WG)
fn batch_norm(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let i = (wid.y * nwg.x + wid.x) * WG + lid;
    if (i >= p.len) {
        return;
    }
    let c = (i / p.plane) % p.channels;
    let mean = stats[c];
    let variance = stats[p.channels + c];
    let weight = stats[2u * p.channels + c];
    let bias = stats[3u * p.channels + c];
    // Centring first keeps precision when |mean| is large relative to the spread.
    let inv_std = 1.0 / sqrt(variance + p.eps);
    out[i] = act((f32(x[i]) - mean) * (inv_std * weight) + bias);
}
