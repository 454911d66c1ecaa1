//! The NCHW convolution kernels: direct (`shaders/conv2d.wgsl`, any kernel and stride), the
//! row-tiled kernels generated per kernel size ([`super::rows`]) and Winograd F(2x2, 3x3).

use super::rows::RowTile;
use super::{
    check_nchw_tensors, residual_binding, Conv2dOptions, Conv2dParams, Conv2dWeights,
    ConvAlgorithm, Partials, ResidualMode,
};
use crate::error::{Error, Result};
use crate::gpu::{grid_2d, Dispatch, GpuContext};
use crate::kernels::{pipeline, ShaderSource};
use crate::precision::Precision;
use crate::tensor::Tensor;

/// The WGSL source.
pub const SHADER: ShaderSource = ShaderSource {
    name: "conv2d.wgsl",
    parts: &[
        "common.wgsl",
        "resample.wgsl",
        "conv2d_epilogue.wgsl",
        "conv2d_nchw.wgsl",
        "conv2d.wgsl",
    ],
    source: concat!(
        include_str!("../../../shaders/common.wgsl"),
        include_str!("../../../shaders/resample.wgsl"),
        include_str!("../../../shaders/conv2d_epilogue.wgsl"),
        include_str!("../../../shaders/conv2d_nchw.wgsl"),
        include_str!("../../../shaders/conv2d.wgsl")
    ),
    params: &[("Conv2dParams", std::mem::size_of::<Conv2dParams>())],
    enables: "",
    precisions: &Precision::ALL,
};

/// Output channels per invocation of `conv2d.wgsl` (WGSL `COUT_TILE`).
pub const COUT_TILE: usize = 8;
/// Pixels per invocation (WGSL `PIX_TILE`).
pub const PIX_TILE: usize = 8;
/// Invocations per workgroup (WGSL `WG_PIX * WG_CO`).
pub const WG_SIZE: u32 = 64;

/// Channel tiles a workgroup spans on a CPU adapter when the layer has that many.
///
/// llvmpipe runs a workgroup's invocations one SIMD batch after another on one thread, so the
/// batches that share pixels reuse the input from that core's cache: measured on lavapipe, 8
/// channel tiles by 8 pixel lanes against 64 pixel lanes took a 1x1 256->256 conv at 150x225
/// from 9.8 to 16.4 GFLOP/s, 2048->256 at 19x29 from 13.7 to 24.1, a 3x3 256->256 from 25.5 to
/// 27.5; 64-channel layers (4 tiles) did best with 16 x 4 (3x3 64->64: 19.2 -> 24.1).
pub const CPU_CHANNEL_LANES: usize = 8;

/// The workgroup's shape, (invocations along pixels, along channel tiles), for `pixel_lanes`
/// invocations' worth of pixels and `channel_tiles` channel tiles on an adapter of
/// `device_type`. On a CPU adapter up to [`CPU_CHANNEL_LANES`] lanes go along channel tiles
/// (see there); on a GPU all go along pixels. Either way a map too small to fill the pixel lanes
/// gets only as many as it needs (at least 8, one SIMD width of a CPU adapter) and the rest go
/// along channel tiles, so that the deep layers do not leave most invocations idle.
pub fn workgroup_shape(
    pixel_lanes: usize,
    channel_tiles: usize,
    device_type: wgpu::DeviceType,
) -> (u32, u32) {
    let channel_lanes = match device_type {
        wgpu::DeviceType::Cpu => {
            // The largest power of two not above the tile count: no lane without a tile.
            let pow2 = 1usize << channel_tiles.max(1).ilog2();
            pow2.min(CPU_CHANNEL_LANES)
        }
        _ => 1,
    };
    let most_pixels = (WG_SIZE as usize / channel_lanes).max(8);
    let pix_lanes = pixel_lanes.next_power_of_two().clamp(8, most_pixels) as u32;
    (pix_lanes, WG_SIZE / pix_lanes)
}

/// Builds the launch of an NCHW kernel computing `out = relu?(conv(x) * scale + shift + residual?)`.
#[allow(clippy::too_many_arguments)]
pub(super) fn prepare(
    ctx: &GpuContext,
    x: &Tensor,
    weights: &Conv2dWeights,
    residual: Option<&Tensor>,
    out: &Tensor,
    opts: &Conv2dOptions,
    split: usize,
    partials: Option<&wgpu::Buffer>,
) -> Result<Vec<Dispatch>> {
    const OP: &str = "conv2d";
    let shape = check_nchw_tensors(
        ctx,
        x,
        weights,
        residual,
        out,
        opts,
        "the NCHW kernels write",
    )?;
    let precision = x.precision();
    let [n, cout, oh, ow] = shape;
    let [_, cin, kh, kw] = weights.shape;
    let upsample = residual.is_some() && matches!(opts.residual, ResidualMode::Upsampled(_));
    let [_, _, h, w] = x.shape();
    // What the kernel sees: a pointwise conv with the plain epilogue runs on the flattened
    // plane (one long row), which fills the row tiles however narrow the map.
    let pointwise = kh == 1 && kw == 1 && opts.stride == (1, 1) && opts.padding == (0, 0);
    let (in_h, in_w, out_h, out_w) = if pointwise && !upsample {
        (1, h * w, 1, oh * ow)
    } else {
        (h, w, oh, ow)
    };
    let device_type = ctx.adapter().device_type;
    let mut constants = Vec::new();
    if upsample {
        constants.push(("UPSAMPLE", 1));
    }
    // The row kernel reads the input as whole vec4s; a tensor that cannot be bound so (a
    // caller's buffer ending mid-vec4) takes the general kernel.
    // Split-K runs on the row kernel only; the others take the whole sum.
    let mut splits = 1;
    let mut row_tile = None;
    let (pipeline, label, grid, x_binding) = match (weights.algorithm, x.vec4_binding()) {
        (ConvAlgorithm::Winograd, _) => {
            if opts.stride != (1, 1) || upsample {
                return Err(Error::invalid(
                    OP,
                    format!(
                        "Winograd weights run with stride 1 and no upsampled residual (stride {:?}); \
                         build the weights with ConvAlgorithm::Direct",
                        opts.stride
                    ),
                ));
            }
            let lanes = oh.div_ceil(2) * ow.div_ceil(2);
            let (wg_pix, wg_co) = workgroup_shape(lanes, cout.div_ceil(COUT_TILE), device_type);
            constants.extend([("WG_PIX", wg_pix), ("WG_CO", wg_co)]);
            let pipeline = pipeline(ctx, &SHADER, precision, "conv2d_winograd", &constants)?;
            let grid = grid_for(lanes, cout.div_ceil(COUT_TILE), n, (wg_pix, wg_co));
            (pipeline, "conv2d_winograd", grid, x.binding())
        }
        (ConvAlgorithm::CooperativeMatrix, _) => {
            return Err(Error::invalid(
                OP,
                "cooperative-matrix weights run through conv2d::prepare, which hands them to the channels-last kernel",
            ))
        }
        (ConvAlgorithm::Direct, Some(vec4_input)) if opts.padding == (0, 0) => {
            let tile = RowTile::choose((kh, kw), opts.stride, out_w, device_type);
            let lanes = out_h * out_w.div_ceil(tile.pixels);
            let (wg_pix, wg_co) = workgroup_shape(lanes, cout.div_ceil(tile.couts), device_type);
            constants.extend([("WG_PIX", wg_pix), ("WG_CO", wg_co)]);
            ctx.check_precision(OP, precision)?;
            splits = split.clamp(1, cin);
            row_tile = Some((tile, constants.clone()));
            let split_k = splits > 1;
            let entry = if split_k {
                "conv2d_rows_partial"
            } else {
                "conv2d_rows"
            };
            let pipeline = ctx.pipeline_from(
                &tile.module_key(precision, split_k),
                || tile.module_source(precision, split_k),
                entry,
                &constants,
            )?;
            let grid = grid_for(lanes, cout.div_ceil(tile.couts), n * splits, (wg_pix, wg_co));
            (pipeline, entry, grid, vec4_input)
        }
        (ConvAlgorithm::Direct, _) => {
            let lanes = (oh * ow).div_ceil(PIX_TILE);
            let (wg_pix, wg_co) = workgroup_shape(lanes, cout.div_ceil(COUT_TILE), device_type);
            constants.extend([("WG_PIX", wg_pix), ("WG_CO", wg_co)]);
            let pipeline = pipeline(ctx, &SHADER, precision, "conv2d", &constants)?;
            let grid = grid_for(lanes, cout.div_ceil(COUT_TILE), n, (wg_pix, wg_co));
            (pipeline, "conv2d", grid, x.binding())
        }
    };
    ctx.check_grid(OP, grid)?;
    let params = Conv2dParams::new(
        opts,
        weights,
        residual,
        shape,
        [cin, in_h, in_w],
        (out_h, out_w),
        splits,
    );
    let uniform = ctx.uniform("conv2d params", &params);
    let residual = residual_binding(ctx, residual);
    if let (true, Some((tile, constants))) = (splits > 1, row_tile) {
        let bytes = partial_bytes(shape, splits);
        let partials = Partials::new(ctx, partials, bytes, &format!("split {splits}"))?;
        let partials_binding = || partials.binding(bytes);
        let conv_group = ctx.bind_group(
            "conv2d_rows_partial",
            &pipeline,
            &[
                (0, x_binding),
                (1, weights.weights.as_entire_binding()),
                (5, uniform.binding()),
                (6, partials_binding()),
            ],
        );
        let reduce_constants: Vec<_> = constants
            .into_iter()
            .filter(|(k, _)| *k == "UPSAMPLE")
            .collect();
        let reduce = ctx.pipeline_from(
            &tile.module_key(precision, true),
            || tile.module_source(precision, true),
            "conv2d_rows_reduce",
            &reduce_constants,
        )?;
        let reduce_group = ctx.bind_group(
            "conv2d_rows_reduce",
            &reduce,
            &[
                (2, weights.affine.as_entire_binding()),
                (3, residual),
                (4, out.binding()),
                (5, uniform.binding()),
                (6, partials_binding()),
            ],
        );
        let len = (n * cout * oh * ow) as u64;
        let groups = u32::try_from(len.div_ceil(REDUCE_WG)).unwrap_or(u32::MAX);
        let reduce_grid = grid_2d(groups, ctx.limits().max_compute_workgroups_per_dimension);
        ctx.check_grid(OP, reduce_grid)?;
        let config = format!("split {splits}");
        return Ok(vec![
            Dispatch::new(label, pipeline, conv_group, grid).with_config(config.clone()),
            Dispatch::new("conv2d_rows_reduce", reduce, reduce_group, reduce_grid)
                .with_config(config),
        ]);
    }
    let bind_group = ctx.bind_group(
        "conv2d",
        &pipeline,
        &[
            (0, x_binding),
            (1, weights.weights.as_entire_binding()),
            (2, weights.affine.as_entire_binding()),
            (3, residual),
            (4, out.binding()),
            (5, uniform.binding()),
        ],
    );
    Ok(vec![Dispatch::new(label, pipeline, bind_group, grid)])
}

/// Workgroup size of `conv2d_rows_reduce` (WGSL `REDUCE_WG`).
const REDUCE_WG: u64 = 256;

/// Bytes of the f32 partial sums of a split-K row-kernel launch with output `shape` (0 without
/// split-K).
pub fn partial_bytes(shape: [usize; 4], split: usize) -> u64 {
    if split <= 1 {
        return 0;
    }
    (split * shape.iter().product::<usize>() * 4) as u64
}

/// The grid of a kernel with `lanes` invocations along pixels and `channel_tiles` along output
/// channels, in workgroups of `shape`, for a batch of `n`.
pub(super) fn grid_for(
    lanes: usize,
    channel_tiles: usize,
    n: usize,
    shape: (u32, u32),
) -> [u32; 3] {
    let count = |v: usize| u32::try_from(v).unwrap_or(u32::MAX);
    [
        count(lanes.div_ceil(shape.0 as usize)),
        count(channel_tiles.div_ceil(shape.1 as usize)),
        count(n),
    ]
}

#[cfg(test)]
mod tests {
    use super::{workgroup_shape, CPU_CHANNEL_LANES, WG_SIZE};
    use wgpu::DeviceType::{Cpu, DiscreteGpu};

    #[test]
    fn workgroups_span_channels_on_cpus_and_pixels_on_gpus() {
        // (pixel lanes, channel tiles, device) -> shape
        let cases = [
            (4219, 16, Cpu, (8, 8)),
            (4219, 4, Cpu, (16, 4)),
            (4219, 6, Cpu, (16, 4)),
            (4219, 1, Cpu, (64, 1)),
            (3, 128, Cpu, (8, 8)),
            (4219, 16, DiscreteGpu, (64, 1)),
            (20, 16, DiscreteGpu, (32, 2)),
            (1, 1, DiscreteGpu, (8, 8)),
        ];
        for (pixels, tiles, device, want) in cases {
            let got = workgroup_shape(pixels, tiles, device);
            assert_eq!(got, want, "{pixels} pixel lanes, {tiles} tiles, {device:?}");
            assert_eq!(got.0 * got.1, WG_SIZE);
            assert!(got.0 >= 8 && got.1 as usize <= CPU_CHANNEL_LANES.max(WG_SIZE as usize / 8));
        }
    }
}
