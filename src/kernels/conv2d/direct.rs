//! The NCHW convolution kernels: direct (`shaders/conv2d.wgsl`, any kernel and stride; it
//! also indexes channels-last tensors, for channels-last networks where no cooperative
//! matrices run), the row-tiled kernels generated per kernel size ([`super::rows`]) and
//! Winograd F(2x2, 3x3).

use super::{
    check_nchw_tensors, residual_binding, Conv2dOptions, Conv2dParams, Conv2dWeights, ConvChoice,
    ConvProblem, Partials, ResidualMode,
};
use crate::error::{Error, Result};
use crate::gpu::{grid_2d, BatchGrid, Dispatch, GpuContext};
use crate::kernels::{pipeline, ShaderSource};
use crate::precision::Precision;
use crate::tensor::{MemoryFormat, Tensor};

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

/// Builds the launches of an NCHW kernel as `choice` says (the general direct kernel, the row
/// kernel or Winograd) computing `out = relu?(conv(x) * scale + shift + residual?)`.
#[allow(clippy::too_many_arguments)]
pub(super) fn prepare(
    ctx: &GpuContext,
    x: &Tensor,
    weights: &Conv2dWeights,
    residual: Option<&Tensor>,
    out: &Tensor,
    opts: &Conv2dOptions,
    choice: ConvChoice,
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
        // The general kernel indexes channels-last tensors too (the portable kernel of a
        // channels-last network without cooperative matrices); the others NCHW only.
        matches!(choice, ConvChoice::Direct { .. }),
    )?;
    let channels_last = x.memory_format() == MemoryFormat::ChannelsLast;
    let precision = x.precision();
    let [n, cout, oh, ow] = shape;
    let cin = weights.shape[1];
    let upsample = residual.is_some() && matches!(opts.residual, ResidualMode::Upsampled(_));
    let [_, _, h, w] = x.shape();
    // What the kernel sees: one long row per plane where the strategy tiled it so.
    let flat = ConvProblem::of(x, weights, residual, opts).flattens_plane();
    let (in_h, in_w, out_h, out_w) = if flat {
        (1, h * w, 1, oh * ow)
    } else {
        (h, w, oh, ow)
    };
    let mut constants = Vec::new();
    if upsample {
        constants.push(("UPSAMPLE", 1));
    }
    let mut splits = 1;
    let mut row_tile = None;
    let (pipeline, label, grid, x_binding) = match choice {
        ConvChoice::Winograd { workgroup } => {
            if opts.stride != (1, 1) || upsample {
                return Err(Error::invalid(
                    OP,
                    format!(
                        "Winograd weights run with stride 1 and no upsampled residual (stride {:?}); \
                         build the weights with WeightLayout::KMajor",
                        opts.stride
                    ),
                ));
            }
            let lanes = oh.div_ceil(2) * ow.div_ceil(2);
            constants.extend([("WG_PIX", workgroup.0), ("WG_CO", workgroup.1)]);
            let pipeline = pipeline(ctx, &SHADER, precision, "conv2d_winograd", &constants)?;
            let grid = grid_for(lanes, cout.div_ceil(COUT_TILE), n, workgroup);
            (pipeline, "conv2d_winograd", grid, x.binding())
        }
        ConvChoice::Rows {
            tile,
            split,
            workgroup,
        } => {
            // conv2d::prepare_with gives the row kernel only inputs it can read as vec4s.
            let vec4_input = x.vec4_binding().ok_or_else(|| {
                Error::invalid(OP, "the row kernel reads its input as whole vec4s")
            })?;
            if opts.padding != (0, 0) || split == 0 || split > cin {
                return Err(Error::invalid(
                    OP,
                    format!(
                        "the row kernel runs without padding (here {:?}) and splits the {cin} \
                         input channels into 1 to {cin} parts (here {split}); use \
                         conv2d::strategy::rows",
                        opts.padding
                    ),
                ));
            }
            let lanes = out_h * out_w.div_ceil(tile.pixels);
            constants.extend([("WG_PIX", workgroup.0), ("WG_CO", workgroup.1)]);
            ctx.check_precision(OP, precision)?;
            splits = split;
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
            let grid = grid_for(lanes, cout.div_ceil(tile.couts), n * splits, workgroup);
            (pipeline, entry, grid, vec4_input)
        }
        ConvChoice::Direct { workgroup } => {
            let lanes = (oh * ow).div_ceil(PIX_TILE);
            constants.extend([("WG_PIX", workgroup.0), ("WG_CO", workgroup.1)]);
            // Channels-last, the padding channels are written too (as zeros): the channel
            // tiles cover the padded count, a multiple of COUT_TILE.
            let channel_tiles = if channels_last {
                constants.push(("CHANNELS_LAST", 1));
                MemoryFormat::ChannelsLast.pixel_stride(cout) / COUT_TILE
            } else {
                cout.div_ceil(COUT_TILE)
            };
            let pipeline = pipeline(ctx, &SHADER, precision, "conv2d", &constants)?;
            let grid = grid_for(lanes, channel_tiles, n, workgroup);
            (pipeline, "conv2d", grid, x.binding())
        }
        ConvChoice::Grouped { .. } | ConvChoice::Coop(_) => {
            return Err(Error::invalid(
                OP,
                format!("{choice} is not an NCHW dense kernel; run it through conv2d::prepare"),
            ))
        }
    };
    ctx.check_grid(OP, grid)?;
    let mut params = Conv2dParams::new(
        opts,
        weights,
        residual,
        shape,
        [cin, in_h, in_w],
        (out_h, out_w),
        splits,
    );
    params.in_cl = x.memory_format().wgsl_flag(cin);
    params.out_cl = out.memory_format().wgsl_flag(cout);
    let uniform = ctx.uniform(&params);
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
        let per_image = u32::try_from(cout * oh * ow).unwrap_or(u32::MAX);
        return Ok(vec![
            Dispatch::new(label, pipeline, conv_group, grid)
                .with_config(config.clone())
                .with_batch(BatchGrid::Z {
                    per_row: splits as u32,
                }),
            Dispatch::new("conv2d_rows_reduce", reduce, reduce_group, reduce_grid)
                .with_config(config)
                .with_batch(BatchGrid::Flat {
                    items_per_row: per_image,
                    items_per_group: REDUCE_WG as u32,
                }),
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
    // Every kernel here has one image per z (times the split-K parts).
    Ok(vec![
        Dispatch::new(label, pipeline, bind_group, grid).with_batch(BatchGrid::Z { per_row: 1 })
    ])
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
