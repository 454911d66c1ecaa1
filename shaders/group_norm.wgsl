// Group norm over the levels of a packed map (see levels.wgsl). torchvision runs a detection
// head level by level, so each level has its own statistics: per image n, group g and level l,
// the mean and biased variance of the group's channels over the level's region alone. Then
// out = (x - mean) / sqrt(var + eps) * gamma[c] + beta[c], ReLU when asked, inside the regions,
// and zero outside them (what mask_levels does after an unnormalised layer: the next 3x3
// convolution must see each level with zero padding around it), optionally inside a zero
// border of pad_y rows and pad_x columns: the padded input of that convolution, without a
// padding launch of its own.
//
// Entry points:
//   group_norm_stats  one workgroup per (image, group, level): the mean, then the mean of the
//                     centred squares (two passes over the region, so that a mean large against
//                     the spread does not cancel the variance). Values are summed less a pivot,
//                     the segment's first value, and the mean is kept as pivot + delta: near
//                     the data, x - pivot is exact, so a mean far from zero loses nothing to
//                     the rounding of the sums or of the mean itself.
//   group_norm_apply  one invocation per element: the normalisation, or zero outside the regions
//
// Bindings:
//   0  x       [N, C, HS, WS]
//   1  affine  [2][C]            gamma, then beta
//   2  stats   [N, G, L] vec4    (pivot, delta, 1 / sqrt(var + eps), 0): the mean is
//                                pivot + delta; written by the first launch
//   3  out     [N, C, HS + 2 pad_y, WS + 2 pad_x]
//   4  params  GroupNormParams
//
// Either layout (both tensors in the same one): channels-last, the statistics walk each pixel's
// channels of the group in turn, and the padding channels of the output are written as zeros.
//
// Grids: group_norm_stats one workgroup per (n, g, l) in that order; group_norm_apply one
// invocation per element of the output's storage. Both linearise workgroups over x and y.
// Needs layout.wgsl and level_regions.wgsl before it.

struct GroupNormParams {
    // Elements of the output.
    len: u32,
    batch: u32,
    channels: u32,
    groups: u32,
    // The input map's size; the output's is 2 pad_y rows and 2 pad_x columns more.
    height: u32,
    width: u32,
    count: u32,
    relu: u32,
    eps: f32,
    segments: u32,
    pad_y: u32,
    pad_x: u32,
    // Channels-last: the padded channel count of both tensors; 0 for NCHW.
    cl: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
    // (y0, x0, height, width) of each level, in the packed map.
    regions: array<vec4<u32>, 8>,
}

override WG: u32 = 256u;
// The layout, a constant per pipeline so that the other layout's index arithmetic is compiled
// out.
override CHANNELS_LAST: bool = false;
// Workgroup size of the statistics launch; a power of two for the tree reduction.
const STATS_WG: u32 = 256u;

@group(0) @binding(0) var<storage, read> x: array<act>;
@group(0) @binding(1) var<storage, read> affine: array<f32>;
@group(0) @binding(2) var<storage, read_write> stats: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> out: array<act>;
@group(0) @binding(4) var<uniform> p: GroupNormParams;

var<workgroup> partial: array<f32, STATS_WG>;

// The sum over the workgroup of every invocation's `v`, in every invocation.
fn workgroup_sum(v: f32, lid: u32) -> f32 {
    partial[lid] = v;
    workgroupBarrier();
    for (var half = STATS_WG / 2u; half > 0u; half /= 2u) {
        if (lid < half) {
            partial[lid] += partial[lid + half];
        }
        workgroupBarrier();
    }
    let total = partial[0];
    // Nobody may overwrite partial[0] before everyone has read it.
    workgroupBarrier();
    return total;
}

// The index in x of element e of a segment: NCHW, channel first_channel + e / area, then the
// region's pixels row by row (first_channel counts the planes of earlier images too);
// channels-last, in memory order too: pixel e / per_group of the region, then its channel
// first_channel + e % per_group (first_channel within the image, which is n).
fn segment_index(n: u32, first_channel: u32, per_group: u32, r: vec4<u32>, e: u32) -> u32 {
    if (CHANNELS_LAST) {
        let pix = e / per_group;
        let y = r.x + pix / r.w;
        let xx = r.y + pix % r.w;
        return ((n * p.height + y) * p.width + xx) * p.cl + first_channel + e % per_group;
    }
    let area = r.z * r.w;
    let c = first_channel + e / area;
    let pix = e % area;
    return (c * p.height + r.x + pix / r.w) * p.width + r.y + pix % r.w;
}

@compute @workgroup_size(STATS_WG)
fn group_norm_stats(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_index) lid: u32) {
    let s = wid.y * nwg.x + wid.x;
    if (s >= p.segments) {
        return;
    }
    let l = s % p.count;
    let ng = s / p.count;
    let per_group = p.channels / p.groups;
    // NCHW: (n * C + g * C/G), the segment's first channel plane, as n * G + g times C/G.
    // Channels-last: g * C/G, within image n.
    let n = ng / p.groups;
    var first_channel = ng * per_group;
    if (CHANNELS_LAST) {
        first_channel = (ng % p.groups) * per_group;
    }
    let r = p.regions[l];
    let elements = per_group * r.z * r.w;

    // Element 0 is the region's first pixel of the group's first channel in either order.
    let pivot = f32(x[segment_index(n, first_channel, per_group, r, 0u)]);
    var sum = 0.0;
    for (var e = lid; e < elements; e += STATS_WG) {
        sum += f32(x[segment_index(n, first_channel, per_group, r, e)]) - pivot;
    }
    let delta = workgroup_sum(sum, lid) / f32(elements);

    var squares = 0.0;
    for (var e = lid; e < elements; e += STATS_WG) {
        let d = (f32(x[segment_index(n, first_channel, per_group, r, e)]) - pivot) - delta;
        squares += d * d;
    }
    let variance = workgroup_sum(squares, lid) / f32(elements);
    if (lid == 0u) {
        stats[s] = vec4<f32>(pivot, delta, 1.0 / sqrt(variance + p.eps), 0.0);
    }
}

@compute @workgroup_size(WG)
fn group_norm_apply(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_index) lid: u32) {
    let i = (wid.y * nwg.x + wid.x) * WG + lid;
    if (i >= p.len) {
        return;
    }
    let out_width = p.width + 2u * p.pad_x;
    let out_height = p.height + 2u * p.pad_y;
    var n: u32;
    var c: u32;
    var oy: u32;
    var ox: u32;
    if (CHANNELS_LAST) {
        let pos = position(i, p.channels, out_height, out_width, p.cl);
        n = pos.n;
        c = pos.c;
        oy = pos.y;
        ox = pos.x;
    } else {
        let out_plane = out_height * out_width;
        let nc = i / out_plane;
        let pix = i % out_plane;
        n = nc / p.channels;
        c = nc % p.channels;
        oy = pix / out_width;
        ox = pix % out_width;
    }
    // The input pixel under this output pixel; the border wraps to huge values and misses.
    let y = oy - p.pad_y;
    let xx = ox - p.pad_x;
    var l = p.count;
    if (y < p.height && xx < p.width && c < p.channels) {
        l = level_at(y, xx);
    }
    if (l >= p.count) {
        out[i] = act(0.0);
        return;
    }
    let g = c / (p.channels / p.groups);
    let st = stats[(n * p.groups + g) * p.count + l];
    var src = ((n * p.channels + c) * p.height + y) * p.width + xx;
    if (CHANNELS_LAST) {
        src = ((n * p.height + y) * p.width + xx) * p.cl + c;
    }
    let v_in = f32(x[src]);
    var v = ((v_in - st.x) - st.y) * (st.z * affine[c]) + affine[p.channels + c];
    // select, not max: a NaN stays NaN, as PyTorch's ReLU keeps it.
    if (p.relu != 0u) {
        v = select(v, 0.0, v < 0.0);
    }
    out[i] = act(v);
}
