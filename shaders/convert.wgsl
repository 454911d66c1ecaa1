// Conversion between f32 NCHW tensors (the library's boundary) and the values of a network
// stored in another precision or layout: its input goes in through `to_act`, its outputs come
// out through `to_f32`, and `relayout` changes only the layout. f32 -> f16 rounds to nearest
// even; values beyond f16's range become infinities, as PyTorch's `.half()` makes them. Needs
// layout.wgsl before it.
//
// Bindings (each entry point uses two of them and the params):
//   0  src_f32  to_act's input
//   1  dst_act  to_act's and relayout's output
//   2  src_act  to_f32's and relayout's input
//   3  dst_f32  to_f32's output
//   4  params   ConvertParams
//
// Grid: one invocation per element of the output's storage, workgroups linearised over x and
// y. A channels-last output's padding channels are written as zeros.

struct ConvertParams {
    len: u32,
    channels: u32,
    height: u32,
    width: u32,
    src_cl: u32,
    dst_cl: u32,
    _pad0: u32,
    _pad1: u32,
}

override WG: u32 = 256u;

@group(0) @binding(0) var<storage, read> src_f32: array<f32>;
@group(0) @binding(1) var<storage, read_write> dst_act: array<act>;
@group(0) @binding(2) var<storage, read> src_act: array<act>;
@group(0) @binding(3) var<storage, read_write> dst_f32: array<f32>;
@group(0) @binding(4) var<uniform> p: ConvertParams;

// The source index of output element `i`, or `len` for a padding channel (which reads as zero).
fn source_index(i: u32) -> u32 {
    if (p.src_cl == p.dst_cl) {
        return i;
    }
    let pos = position(i, p.channels, p.height, p.width, p.dst_cl);
    if (pos.c >= p.channels) {
        return 0xffffffffu;
    }
    return storage_index(pos, p.channels, p.height, p.width, p.src_cl);
}

@compute @workgroup_size(WG)
fn to_act(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    let i = (wid.y * nwg.x + wid.x) * WG + lid;
    if (i >= p.len) {
        return;
    }
    let s = source_index(i);
    dst_act[i] = select(act(0.0), act(src_f32[min(s, arrayLength(&src_f32) - 1u)]), s != 0xffffffffu);
}

@compute @workgroup_size(WG)
fn to_f32(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    let i = (wid.y * nwg.x + wid.x) * WG + lid;
    if (i >= p.len) {
        return;
    }
    let s = source_index(i);
    dst_f32[i] = select(0.0, f32(src_act[min(s, arrayLength(&src_act) - 1u)]), s != 0xffffffffu);
}

@compute @workgroup_size(WG)
fn relayout(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let i = (wid.y * nwg.x + wid.x) * WG + lid;
    if (i >= p.len) {
        return;
    }
    let s = source_index(i);
    dst_act[i] = select(act(0.0), src_act[min(s, arrayLength(&src_act) - 1u)], s != 0xffffffffu);
}
