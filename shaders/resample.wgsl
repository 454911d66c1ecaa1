// Resampling of a plane of the storage array `resample_src`, which the including kernel declares
// (WGSL cannot pass a storage array to a function). Needs common.wgsl before it.

// The value at (oy, ox) of the in_h x in_w plane at `src_base`, resized to out_h x out_w:
// bilinear when `bilinear`, nearest otherwise. Pixel (y, x) of the plane is at
// `src_base + (y * in_w + x) * step`: step 1 for NCHW, the padded channel count for
// channels-last.
fn resample(src_base: u32, step: u32, in_h: u32, in_w: u32, out_h: u32, out_w: u32,
            scale_h: f32, scale_w: f32, oy: u32, ox: u32, bilinear: bool) -> f32 {
    if (bilinear) {
        let h = linear_taps(oy, in_h, scale_h);
        let w = linear_taps(ox, in_w, scale_w);
        let row0 = h.i0 * in_w;
        let row1 = h.i1 * in_w;
        let top = w.l0 * f32(resample_src[src_base + (row0 + w.i0) * step])
            + w.l1 * f32(resample_src[src_base + (row0 + w.i1) * step]);
        let bottom = w.l0 * f32(resample_src[src_base + (row1 + w.i0) * step])
            + w.l1 * f32(resample_src[src_base + (row1 + w.i1) * step]);
        return h.l0 * top + h.l1 * bottom;
    }
    let sy = nearest_index(oy, in_h, out_h, scale_h);
    let sx = nearest_index(ox, in_w, out_w, scale_w);
    return f32(resample_src[src_base + (sy * in_w + sx) * step]);
}

// `resample` from the coarse map to the output, with the sizes and scales in the including
// kernel's params `p` (res_height x res_width to out_height x out_width): the upsampled residual
// of the convolutions' epilogue and the upsampling of upsample_add.wgsl.
fn upsampled(src_base: u32, step: u32, oy: u32, ox: u32, bilinear: bool) -> f32 {
    return resample(src_base, step, p.res_height, p.res_width, p.out_height, p.out_width,
                    p.res_scale_h, p.res_scale_w, oy, ox, bilinear);
}
