// Element-wise ops over flat tensors: relu(x) and x + y.
//
// Bindings:
//   0  x       [len]
//   1  y       [len]   add only
//   2  out     [len]
//   3  params  ElementwiseParams
//
// Grid: one invocation per element, workgroups linearised over x and y. Needs common.wgsl
// before it.

struct ElementwiseParams {
    len: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

override WG: u32 = 256u;

@group(0) @binding(0) var<storage, read> x: array<act>;
@group(0) @binding(1) var<storage, read> y: array<act>;
@group(0) @binding(2) var<storage, read_write> out: array<act>;
@group(0) @binding(3) var<uniform> p: ElementwiseParams;

@compute @workgroup_size(WG)
fn relu(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = (wid.y * nwg.x + wid.x) * WG + lid;
    if (i >= p.len) {
        return;
    }
    out[i] = act(relu_keep_nan(f32(x[i])));
}

@compute @workgroup_size(WG)
fn add(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
       @builtin(local_invocation_index) lid: u32) {
    let i = (wid.y * nwg.x + wid.x) * WG + lid;
    if (i >= p.len) {
        return;
    }
    out[i] = act(f32(x[i]) + f32(y[i]));
}
