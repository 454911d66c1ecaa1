//! The grouped convolution kernel (`groups` > 1, depthwise included) in NCHW:
//! `shaders/conv2d_grouped.wgsl`. Each output channel sums over its own group's
//! `cin / groups` input channels only, so a grouped convolution costs `1 / groups` of the
//! multiply-adds (and weight bytes) of the dense block-diagonal convolution it equals.

use super::direct::grid_for;
use super::strategy::Workgroup;
use super::{
    check_nchw_tensors, residual_binding, Conv2dOptions, Conv2dParams, Conv2dWeights, ResidualMode,
};
use crate::error::{Error, Result};
use crate::gpu::{BatchGrid, Dispatch, GpuContext};
use crate::kernels::{pipeline, ShaderSource};
use crate::precision::Precision;
use crate::tensor::Tensor;

/// The WGSL source.
pub const SHADER: ShaderSource = ShaderSource {
    name: "conv2d_grouped.wgsl",
    parts: &[
        "common.wgsl",
        "resample.wgsl",
        "conv2d_epilogue.wgsl",
        "conv2d_nchw.wgsl",
        "conv2d_grouped.wgsl",
    ],
    source: concat!(
        include_str!("../../../shaders/common.wgsl"),
        include_str!("../../../shaders/resample.wgsl"),
        include_str!("../../../shaders/conv2d_epilogue.wgsl"),
        include_str!("../../../shaders/conv2d_nchw.wgsl"),
        include_str!("../../../shaders/conv2d_grouped.wgsl")
    ),
    params: &[("Conv2dParams", std::mem::size_of::<Conv2dParams>())],
    enables: "",
    precisions: &Precision::ALL,
};

/// Pixels per invocation (WGSL `PIX_TILE`).
pub const PIX_TILE: usize = 4;

/// The entry point whose invocations compute `couts` output channels each (4 or 1).
fn entry(couts: usize) -> Result<&'static str> {
    match couts {
        4 => Ok("conv2d_grouped4"),
        1 => Ok("conv2d_grouped1"),
        _ => Err(Error::invalid(
            "conv2d",
            format!(
                "the grouped kernel computes 4 or 1 output channels an invocation, not {couts}"
            ),
        )),
    }
}

/// Builds the launch computing `out = relu?(grouped_conv(x) * scale + shift + residual?)` for
/// weights `[cout, cin / groups, kh, kw]` laid out as [`super::WeightLayout::KMajor`], with
/// `couts` output channels per invocation (which must divide a group's) in workgroups of
/// `workgroup`.
#[allow(clippy::too_many_arguments)]
pub(super) fn prepare(
    ctx: &GpuContext,
    x: &Tensor,
    weights: &Conv2dWeights,
    residual: Option<&Tensor>,
    out: &Tensor,
    opts: &Conv2dOptions,
    couts: usize,
    workgroup: Workgroup,
) -> Result<Vec<Dispatch>> {
    const OP: &str = "conv2d";
    let shape = check_nchw_tensors(
        ctx,
        x,
        weights,
        residual,
        out,
        opts,
        "the grouped kernel writes",
        false,
    )?;
    let precision = x.precision();
    let [n, cout, oh, ow] = shape;
    let [_, cin, h, w] = x.shape();
    let entry = entry(couts)?;
    if !(cout / opts.groups).is_multiple_of(couts) {
        return Err(Error::invalid(
            OP,
            format!(
                "{couts} output channels an invocation do not divide the {} of a group",
                cout / opts.groups
            ),
        ));
    }
    let upsample = residual.is_some() && matches!(opts.residual, ResidualMode::Upsampled(_));
    let lanes = (oh * ow).div_ceil(PIX_TILE);
    let channel_tiles = cout / couts;
    let (wg_pix, wg_co) = workgroup;
    let mut constants = vec![("WG_PIX", wg_pix), ("WG_CO", wg_co)];
    if upsample {
        constants.push(("UPSAMPLE", 1));
    }
    let pipeline = pipeline(ctx, &SHADER, precision, entry, &constants)?;
    let grid = grid_for(lanes, channel_tiles, n, (wg_pix, wg_co));
    ctx.check_grid(OP, grid)?;
    let params = Conv2dParams::new(opts, weights, residual, shape, [cin, h, w], (oh, ow), 1);
    let uniform = ctx.uniform(&params);
    let residual = residual_binding(ctx, residual);
    let bind_group = ctx.bind_group(
        entry,
        &pipeline,
        &[
            (0, x.binding()),
            (1, weights.weights.as_entire_binding()),
            (2, weights.affine.as_entire_binding()),
            (3, residual),
            (4, out.binding()),
            (5, uniform.binding()),
        ],
    );
    Ok(vec![
        Dispatch::new(entry, pipeline, bind_group, grid).with_batch(BatchGrid::Z { per_row: 1 })
    ])
}
