// The fused epilogue of every convolution kernel, NCHW (conv2d_nchw.wgsl) and channels-last
// (conv2d_coop.wgsl):
//   out = relu?( acc * scale[co] + shift[co] + residual? )
// A bias is folded into `shift` on the host; a batch norm into `scale` and `shift`. The residual
// is either a tensor of the output's shape or a coarser map upsampled to the output's size (the
// FPN's top-down merge). Needs common.wgsl and resample.wgsl before it, and a uniform `p` with
// the fields `flags` (FLAG_* below, which src/kernels/conv2d/mod.rs mirrors), `out_height`,
// `out_width` and the coarse map's `res_height`, `res_width`, `res_scale_h` and `res_scale_w`
// (both convolution params structs have them).
//
// Bindings (the same in every convolution kernel):
//   2  affine        [2][cout_pad]  scale, then shift
//   3  resample_src  the residual, read only when a residual flag is set
//   4  out           the output

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

// The epilogue of the raw sum `acc` of output channel `co` at output pixel (oy, ox), before it
// is stored in the caller's layout. The shifts start at `affine[cout_pad]`; `same` is the
// element's index in a residual of the output's shape; `coarse` and `step` are where the
// channel's plane of a coarse residual starts and the step between its pixels. `upsample` is a
// constant at each call site.
fn epilogue_value(acc: f32, co: u32, cout_pad: u32, same: u32, coarse: u32, step: u32, oy: u32,
                  ox: u32, upsample: bool) -> f32 {
    var v = acc * affine[co] + affine[cout_pad + co];
    if ((p.flags & FLAG_RESIDUAL) != 0u) {
        v += f32(resample_src[same]);
    } else if (upsample && (p.flags & (FLAG_UPSAMPLE_BILINEAR | FLAG_UPSAMPLE_NEAREST)) != 0u) {
        v += upsampled(coarse, step, oy, ox, (p.flags & FLAG_UPSAMPLE_BILINEAR) != 0u);
    }
    if ((p.flags & FLAG_RELU) != 0u) {
        v = relu_keep_nan(v);
    }
    return v;
}
