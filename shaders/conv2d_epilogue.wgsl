// What every convolution kernel shares: the parameters, the bindings other than the input and
// the weights (whose types differ between kernels), and the fused epilogue
//   out = relu?( acc * scale[co] + shift[co] + residual? )
// A bias is folded into `shift` on the host; a batch norm into `scale` and `shift`. The residual
// is either a tensor of the output's shape or a coarser map upsampled to the output's size (the
// FPN's top-down merge). Needs common.wgsl and resample.wgsl before it.
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
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

const FLAG_RELU: u32 = 1u;
const FLAG_RESIDUAL: u32 = 2u;
const FLAG_UPSAMPLE_BILINEAR: u32 = 4u;
const FLAG_UPSAMPLE_NEAREST: u32 = 8u;

// Whether the pipeline has the upsampled-residual epilogue. A constant per pipeline, so the
// resampling code is gone from the pipelines that do not use it: its presence alone made a 1x1
// conv 1.5x slower on llvmpipe.
override UPSAMPLE: bool = false;

@group(0) @binding(2) var<storage, read> affine: array<f32>;
@group(0) @binding(3) var<storage, read> resample_src: array<act>;
@group(0) @binding(4) var<storage, read_write> out: array<act>;
@group(0) @binding(5) var<uniform> p: Conv2dParams;

// Applies the epilogue to the raw sum `a` of output channel `co`, pixel `pix`, and stores it.
// `upsample` is a constant at each call site (UPSAMPLE, or false for Winograd).
fn store_output(n: u32, co: u32, pix: u32, a: f32, upsample: bool) {
    let plane = p.out_height * p.out_width;
    var v = a * affine[co] + affine[p.cout_vec4 * 4u + co];
    let idx = (n * p.out_channels + co) * plane + pix;
    if ((p.flags & FLAG_RESIDUAL) != 0u) {
        v += f32(resample_src[idx]);
    } else if (upsample && (p.flags & (FLAG_UPSAMPLE_BILINEAR | FLAG_UPSAMPLE_NEAREST)) != 0u) {
        let res_base = (n * p.out_channels + co) * p.res_height * p.res_width;
        v += resample(res_base, 1u, p.res_height, p.res_width, p.out_height, p.out_width,
                      p.res_scale_h, p.res_scale_w, pix / p.out_width, pix % p.out_width,
                      (p.flags & FLAG_UPSAMPLE_BILINEAR) != 0u);
    }
    if ((p.flags & FLAG_RELU) != 0u) {
        v = relu_keep_nan(v);
    }
    out[idx] = act(v);
}
