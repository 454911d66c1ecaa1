// What the NCHW convolution kernels (conv2d.wgsl, conv2d_grouped.wgsl, conv2d_rows.wgsl) share:
// the parameters and the store through the epilogue (which also stores channels-last, for the
// general kernel of conv2d.wgsl). Needs common.wgsl, resample.wgsl and
// conv2d_epilogue.wgsl before it.
//
// `act` (the alias the Rust side declares before the module) is the storage type of the input,
// the weights, the residual and the output; sums are f32 whatever it is.
//
// Bindings:
//   0  x            the input, NCHW, declared by each kernel
//   1  weights      [K][cout_pad], declared by each   direct: K = (ci * KH + ky) * KW + kx
//                                                     (ci within the group when grouped);
//                   kernel (vec4s or scalars)         Winograd: K = ci * 16 + position; output
//                                                     channels contiguous, zero padded
//   2  affine       [2][cout_pad]                     scale, then shift
//   3  resample_src [N, Cout, RH, RW]                 the residual, read only when a residual
//                                                     flag is set (RH x RW = OH x OW for
//                                                     FLAG_RESIDUAL)
//   4  out          [N, Cout, OH, OW]
//   5  params       Conv2dParams

struct Conv2dParams {
    in_channels: u32,
    in_height: u32,
    in_width: u32,
    out_channels: u32,
    out_height: u32,
    out_width: u32,
    cout_vec4: u32,
    kernel_h: u32,
    kernel_w: u32,
    stride_h: u32,
    stride_w: u32,
    pad_h: u32,
    pad_w: u32,
    flags: u32,
    res_height: u32,
    res_width: u32,
    res_scale_h: f32,
    res_scale_w: f32,
    // Split-K parts over the input channels (row kernel; 1 elsewhere) and the batch size.
    splits: u32,
    batch: u32,
    // Channel groups (the grouped kernel; 1 elsewhere).
    groups: u32,
    // Channels-last (the general kernel only): the input's and the output's padded channel
    // counts; 0 for NCHW.
    in_cl: u32,
    out_cl: u32,
    _pad0: u32,
}

@group(0) @binding(5) var<uniform> p: Conv2dParams;

// Whether the tensors are channels-last ([N][H][W][cl]; the general kernel only). A constant
// per pipeline, so the NCHW pipelines keep their index arithmetic as it was.
override CHANNELS_LAST: bool = false;

// Applies the epilogue to the raw sum `a` of output channel `co`, pixel `pix`, and stores it.
// `upsample` is a constant at each call site (UPSAMPLE, or false for Winograd).
fn store_output(n: u32, co: u32, pix: u32, a: f32, upsample: bool) {
    let plane = p.out_height * p.out_width;
    var idx = (n * p.out_channels + co) * plane + pix;
    var coarse = (n * p.out_channels + co) * p.res_height * p.res_width;
    var step = 1u;
    if (CHANNELS_LAST) {
        // The residual, as it is or coarse, has the output's channels and so its padding.
        idx = (n * plane + pix) * p.out_cl + co;
        coarse = n * p.res_height * p.res_width * p.out_cl + co;
        step = p.out_cl;
    }
    let v = epilogue_value(a, co, p.cout_vec4 * 4u, idx, coarse, step, pix / p.out_width,
                           pix % p.out_width, upsample);
    out[idx] = act(v);
}
