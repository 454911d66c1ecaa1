// out = upsample(x, to the size of y) + y, with PyTorch's index arithmetic:
//   bilinear_add: mode='bilinear', align_corners=False (half-pixel centres, source clamped
//                 at zero, second tap clamped at the border), any size ratio;
//   nearest_add:  mode='nearest' (source index floor(dst * in/out), clamped).
// Scales are in/out computed in f32 on the host, as PyTorch does. Either layout (all three
// tensors in the same one). Needs common.wgsl and resample.wgsl before it (the upsampling is
// the one of the convolutions' upsampled residual).
//
// Bindings:
//   0  resample_src  [N, C, IH, IW]   the coarser map
//   1  y             [N, C, OH, OW]   the lateral map; sets the output size
//   2  out           [N, C, OH, OW]
//   3  params        UpsampleAddParams
//
// Grid: one invocation per element of the output's storage, workgroups linearised over x and y.

struct UpsampleAddParams {
    len: u32,
    // The coarse map's size, named as resample.wgsl's `upsampled` reads it.
    res_height: u32,
    res_width: u32,
    out_height: u32,
    out_width: u32,
    res_scale_h: f32,
    res_scale_w: f32,
    // 0 for NCHW, the padded channel count for channels-last.
    channels_last: u32,
}

override WG: u32 = 256u;
// The layout, a constant per pipeline so that the other layout's index arithmetic is compiled
// out; params.channels_last then holds the padded channel count.
override CHANNELS_LAST: bool = false;

@group(0) @binding(0) var<storage, read> resample_src: array<act>;
@group(0) @binding(1) var<storage, read> y: array<act>;
@group(0) @binding(2) var<storage, read_write> out: array<act>;
@group(0) @binding(3) var<uniform> p: UpsampleAddParams;

fn upsample_add(i: u32, bilinear: bool) {
    if (i >= p.len) {
        return;
    }
    let cl = p.channels_last;
    // The coarse plane's start and pixel step, and the output pixel, in either layout.
    var base: u32;
    var step = 1u;
    var pix: u32;
    if (!CHANNELS_LAST) {
        let out_plane = p.out_height * p.out_width;
        base = i / out_plane * p.res_height * p.res_width;
        pix = i % out_plane;
    } else {
        let all = i / cl;
        let n = all / (p.out_height * p.out_width);
        base = n * p.res_height * p.res_width * cl + i % cl;
        step = cl;
        pix = all % (p.out_height * p.out_width);
    }
    let up = upsampled(base, step, pix / p.out_width, pix % p.out_width, bilinear);
    out[i] = act(up + f32(y[i]));
}

@compute @workgroup_size(WG)
fn bilinear_add(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    upsample_add((wid.y * nwg.x + wid.x) * WG + lid, true);
}

@compute @workgroup_size(WG)
fn nearest_add(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    upsample_add((wid.y * nwg.x + wid.x) * WG + lid, false);
}
