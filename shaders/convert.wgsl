// Conversion between f32 tensors (the library's boundary) and `act`, the storage type of a
// network run in another precision: its input goes in through `to_act`, its outputs come out
// through `to_f32`. f32 -> f16 rounds to nearest even; values beyond f16's range become
// infinities, as PyTorch's `.half()` makes them.
//
// Bindings (each entry point uses two of them and the params):
//   0  src_f32  [len]   to_act's input
//   1  dst_act  [len]   to_act's output
//   2  src_act  [len]   to_f32's input
//   3  dst_f32  [len]   to_f32's output
//   4  params   ConvertParams
//
// Grid: one invocation per element, workgroups linearised over x and y.

struct ConvertParams {
    len: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

override WG: u32 = 256u;

@group(0) @binding(0) var<storage, read> src_f32: array<f32>;
@group(0) @binding(1) var<storage, read_write> dst_act: array<act>;
@group(0) @binding(2) var<storage, read> src_act: array<act>;
@group(0) @binding(3) var<storage, read_write> dst_f32: array<f32>;
@group(0) @binding(4) var<uniform> p: ConvertParams;

@compute @workgroup_size(WG)
fn to_act(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    let i = (wid.y * nwg.x + wid.x) * WG + lid;
    if (i >= p.len) {
        return;
    }
    dst_act[i] = act(src_f32[i]);
}

@compute @workgroup_size(WG)
fn to_f32(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    let i = (wid.y * nwg.x + wid.x) * WG + lid;
    if (i >= p.len) {
        return;
    }
    dst_f32[i] = f32(src_act[i]);
}
