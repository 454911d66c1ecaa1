// `bench --floor`: a launch with the bindings of a fused convolution (input, weights, affine,
// residual, output, parameters) and almost no work, so that recording and submitting it costs
// what wgpu and the driver charge per launch and nothing else.

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> weights: array<f32>;
@group(0) @binding(2) var<storage, read> affine: array<f32>;
@group(0) @binding(3) var<storage, read> residual: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
@group(0) @binding(5) var<uniform> count: vec4<u32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    let i = id.x;
    if i < count.x {
        out[i] = x[i] * weights[i] + affine[i] + residual[i];
    }
}
