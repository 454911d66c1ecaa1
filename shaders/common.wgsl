// Helpers shared by several kernels. The Rust side prepends this file to the kernel files that
// use it (their ShaderSource lists the parts), so those are not valid modules on their own.

// ReLU that keeps NaN, decided on the bits: GL drivers may rewrite a float comparison such as
// `v < 0.0 ? 0.0 : v` into max(v, 0.0), which turns NaN into 0 where PyTorch keeps it.
fn relu_keep_nan(v: f32) -> f32 {
    let bits = bitcast<u32>(v);
    // Negative and finite or -inf: sign set, magnitude at most that of infinity.
    return select(v, 0.0, bits > 0x80000000u && bits <= 0xff800000u);
}

// Source taps of PyTorch's linear interpolation with align_corners=False: half-pixel centres,
// the source clamped at zero, the second tap clamped at the border. `scale` is in/out in f32.
struct Taps {
    i0: u32,
    i1: u32,
    l0: f32,
    l1: f32,
}

fn linear_taps(dst: u32, in_size: u32, scale: f32) -> Taps {
    let src = max(scale * (f32(dst) + 0.5) - 0.5, 0.0);
    let i0 = u32(src);
    let l1 = clamp(src - f32(i0), 0.0, 1.0);
    var t: Taps;
    t.i0 = i0;
    t.i1 = select(i0, i0 + 1u, i0 + 1u < in_size);
    t.l0 = 1.0 - l1;
    t.l1 = l1;
    return t;
}

// PyTorch's mode='nearest' source index: exact for equal sizes and 2x, else floor(dst * scale).
fn nearest_index(dst: u32, in_size: u32, out_size: u32, scale: f32) -> u32 {
    if (in_size == out_size) {
        return dst;
    }
    if (out_size == 2u * in_size) {
        return dst >> 1u;
    }
    return min(u32(floor(f32(dst) * scale)), in_size - 1u);
}
