//! The launches of a cooperative-matrix convolution, and the sizes and layouts they read and
//! write: the weights' layout, the k steps, the grids, the bytes of the input read and of the
//! split-K partial sums.

use super::choice::{CoopBlock, CoopChoice, BLOCK_COUT_ALIGN};
use super::device::{staged_block, support};
use super::shader::{padded_cin, CoopConvParams};
use super::staged::staged_fits;
use super::tile::{CoopTile, TILES};
use crate::error::{Error, Result};
use crate::gpu::{grid_2d, Dispatch, GpuContext};
use crate::kernels::conv2d::{
    check_tensors, epilogue_flags, residual_binding, Conv2dOptions, Conv2dWeights, Partials,
    ResidualMode, WeightLayout,
};
use crate::kernels::ELEMENTWISE_WG;
use crate::precision::Precision;
use crate::tensor::{MemoryFormat, Tensor};

/// Reorders OIHW weights to `[tap][Cin'][Cout']` (tap = ky * KW + kx; Cin' the channels-last
/// padding of the input channels, Cout' the output channels padded to [`BLOCK_COUT_ALIGN`]), zeros in
/// the padding.
pub(in crate::kernels::conv2d) fn to_tap_major(shape: [usize; 4], weight: &[f32]) -> Vec<f32> {
    let [cout, cin, kh, kw] = shape;
    let (cin_pad, cout_pad) = (padded_cin(cin), cout.next_multiple_of(BLOCK_COUT_ALIGN));
    let mut out = vec![0.0f32; kh * kw * cin_pad * cout_pad];
    for co in 0..cout {
        for ci in 0..cin {
            for tap in 0..kh * kw {
                out[(tap * cin_pad + ci) * cout_pad + co] = weight[(co * cin + ci) * kh * kw + tap];
            }
        }
    }
    out
}

/// The k steps of a convolution with weights of `shape` in direct-load blocks: taps times
/// input-channel chunks of the matrix side.
pub fn steps(shape: [usize; 4], side: u32) -> usize {
    let [_, cin, kh, kw] = shape;
    kh * kw * padded_cin(cin) / side.max(1) as usize
}

/// S-pixel segments per output row and per image.
fn segments(out_shape: [usize; 4], side: u32) -> (usize, usize) {
    let per_row = out_shape[3].div_ceil(side.max(1) as usize);
    (per_row, per_row * out_shape[2])
}

/// The grid of a direct-load launch: (segment blocks, channel blocks, batch x splits).
fn grid(out_shape: [usize; 4], tile: CoopTile, split: usize, side: u32) -> [usize; 3] {
    let (_, total) = segments(out_shape, side);
    let channel_blocks = padded_cin(out_shape[1]).div_ceil((tile.n_tiles * side as usize).max(1));
    [
        total.div_ceil(tile.m_tiles.max(1)),
        channel_blocks,
        out_shape[0] * split,
    ]
}

/// Bytes of the input's binding the launch reads, from the tensor's start: the last tile of
/// each row runs past the row's end, and the last row's past the tensor's end.
pub fn input_bytes_read(
    x_shape: [usize; 4],
    w_shape: [usize; 4],
    stride: (usize, usize),
    side: u32,
) -> u64 {
    let [n, cin, h, w] = x_shape;
    let [_, _, kh, kw] = w_shape;
    let (kh, kw, side) = (kh.max(1), kw.max(1), side.max(1));
    // Saturating: the shapes are checked before any launch, this only sizes buffers.
    let oh = h.saturating_sub(kh) / stride.0.max(1) + 1;
    let ow = w.saturating_sub(kw) / stride.1.max(1) + 1;
    let (per_row, _) = segments([n, 0, oh, ow], side);
    // The last element read: image n - 1, the last output row's last tap row, the last pixel
    // of its last segment under the last tap column, the last channel.
    let row = n.saturating_sub(1) * h + oh.saturating_sub(1) * stride.0 + kh - 1;
    let col = (per_row * side as usize - 1) * stride.1 + kw - 1;
    let end = ((row * w + col) * padded_cin(cin) + padded_cin(cin)) as u64;
    end.max(MemoryFormat::ChannelsLast.storage_len(x_shape) as u64) * Precision::F16.bytes()
}

/// Bytes of the f32 partial sums of a split-K launch (0 without split-K).
pub fn partial_bytes(out_shape: [usize; 4], cout_pad: usize, choice: CoopChoice, side: u32) -> u64 {
    let CoopBlock::Direct(tile) = choice.block else {
        return 0;
    };
    if choice.split <= 1 {
        return 0;
    }
    let [grid_x, _, _] = grid(out_shape, tile, choice.split, side);
    let slots = grid_x * tile.m_tiles * side as usize;
    (choice.split * out_shape[0] * slots * cout_pad * 4) as u64
}

/// Checks what the kernel needs of its tensors beyond every convolution's checks: f16,
/// channels-last, weights laid out for it, an input already padded.
fn check_coop_tensors(
    ctx: &GpuContext,
    x: &Tensor,
    weights: &Conv2dWeights,
    residual: Option<&Tensor>,
    out: &Tensor,
    opts: &Conv2dOptions,
) -> Result<[usize; 4]> {
    const OP: &str = "conv2d";
    let shape = check_tensors(ctx, x, weights, residual, out, opts)?;
    if weights.layout != WeightLayout::TapMajor {
        return Err(Error::invalid(
            OP,
            format!(
                "the weights are laid out as {:?}; build them with WeightLayout::TapMajor (or run them through conv2d::prepare)",
                weights.layout
            ),
        ));
    }
    if x.memory_format() != MemoryFormat::ChannelsLast || x.precision() != Precision::F16 {
        return Err(Error::invalid(
            OP,
            format!(
                "cooperative-matrix convolutions take f16 channels-last tensors; the input is {} {:?} (convert it with kernels::convert::convert_to)",
                x.precision(),
                x.memory_format()
            ),
        ));
    }
    if opts.padding != (0, 0) {
        return Err(Error::invalid(
            OP,
            format!(
                "cooperative-matrix convolutions read a zero-padded input; pad it first (kernels::pad2d) and pass padding (0, 0), not {:?} (conv2d::conv2d does both)",
                opts.padding
            ),
        ));
    }
    Ok(shape)
}

/// The launches computing `out = relu?(conv(x) * scale + shift + residual?)` with `choice`: one,
/// or two with split-K (the partial sums, then their reduction with the epilogue).
/// `partials` is the buffer for the partial sums, at least [`partial_bytes`] long; `None`
/// allocates one.
#[allow(clippy::too_many_arguments)]
pub fn prepare(
    ctx: &GpuContext,
    x: &Tensor,
    weights: &Conv2dWeights,
    residual: Option<&Tensor>,
    out: &Tensor,
    opts: &Conv2dOptions,
    choice: CoopChoice,
    partials: Option<&wgpu::Buffer>,
) -> Result<Vec<Dispatch>> {
    const OP: &str = "conv2d";
    let Some(support) = support(ctx) else {
        return Err(Error::Unsupported {
            op: OP,
            message: "this device has no cooperative matrices the kernel can use; use WeightLayout::KMajor".into(),
        });
    };
    let side = support.side;
    let shape = check_coop_tensors(ctx, x, weights, residual, out, opts)?;
    let [n, cout, oh, ow] = shape;
    let [_, cin, _, kw] = weights.shape;
    let [_, _, h, w] = x.shape();
    if opts.out_padding.0 > oh || opts.out_padding.1 > ow {
        return Err(Error::invalid(
            OP,
            format!(
                "an output halo of {:?} is wider than the {oh}x{ow} map that writes it; pad the output with kernels::pad2d",
                opts.out_padding
            ),
        ));
    }
    // The block's k steps and grid, and what of the input it reads.
    let (steps, split, tile, grid, read) = match choice.block {
        CoopBlock::Direct(tile) if TILES.contains(&tile) && choice.split > 0 => {
            let steps = steps(weights.shape, side);
            let split = choice.split.min(steps);
            let grid = grid(shape, tile, split, side);
            let read = input_bytes_read(x.shape(), weights.shape, opts.stride, side);
            (steps, split, Some(tile), grid, read)
        }
        CoopBlock::Staged if choice.split == 1 => {
            let block = staged_block(ctx).filter(|&b| staged_fits(b, weights.shape));
            let Some(block) = block else {
                return Err(Error::invalid(
                    OP,
                    format!(
                        "the staged block cannot run weights of shape {:?} on this device (it needs subgroup ids, input channels in whole steps and a whole block of output channels); use CoopChoice::direct",
                        weights.shape
                    ),
                ));
            };
            let steps = kw * weights.shape[2] * padded_cin(cin) / block.step_channels();
            let grid = [
                (oh * ow).div_ceil(block.block_pixels()),
                weights.cout_pad.div_ceil(block.block_channels()),
                n,
            ];
            (steps, 1, None, grid, x.byte_size())
        }
        _ => {
            return Err(Error::invalid(
                OP,
                format!("{choice} is not a block the kernel is generated for (coop::TILES with a split of at least 1, or the staged block with split 1)"),
            ))
        }
    };
    let steps_per_split = steps.div_ceil(split);
    let max_binding = ctx.max_binding_bytes();
    if x.bytes_to_end() < read || read > max_binding {
        return Err(Error::invalid(
            OP,
            format!(
                "the cooperative-matrix kernel reads {read} bytes from the input's start (its last tiles run past the tensor's end) but only {} can be bound; allocate the input with room after it (conv2d::conv2d does)",
                x.bytes_to_end().min(max_binding)
            ),
        ));
    }
    let upsample = residual.is_some() && matches!(opts.residual, ResidualMode::Upsampled(_));
    let (flags, res_height, res_width) = epilogue_flags(opts, residual, oh, ow);
    let (per_row, total) = segments(shape, side);
    let count = |v: usize| u32::try_from(v).unwrap_or(u32::MAX);
    let part_image = grid[0] * tile.map_or(0, |t| t.m_tiles) * side as usize;
    let grid = [count(grid[0]), count(grid[1]), count(grid[2])];
    ctx.check_grid(OP, grid)?;
    let out_cl = MemoryFormat::ChannelsLast.pixel_stride(cout);
    let len = n * oh * ow * out_cl;
    let params = CoopConvParams {
        in_height: h as u32,
        in_width: w as u32,
        in_cl: padded_cin(cin) as u32,
        out_height: oh as u32,
        out_width: ow as u32,
        out_cl: out_cl as u32,
        w_stride: weights.cout_pad as u32,
        kernel_w: kw as u32,
        stride_h: opts.stride.0 as u32,
        stride_w: opts.stride.1 as u32,
        segments: per_row as u32,
        total_segments: total as u32,
        part_image: part_image as u32,
        steps: steps as u32,
        steps_per_split: steps_per_split as u32,
        splits: split as u32,
        batch: n as u32,
        flags,
        res_height: res_height as u32,
        res_width: res_width as u32,
        // In f32, as PyTorch computes its resize scales (see upsample_add).
        res_scale_h: res_height as f32 / oh as f32,
        res_scale_w: res_width as f32 / ow as f32,
        len: len as u32,
        part_row: (per_row * side as usize) as u32,
        out_rows: (oh + 2 * opts.out_padding.0) as u32,
        out_pitch: (ow + 2 * opts.out_padding.1) as u32,
        out_top: opts.out_padding.0 as u32,
        out_left: opts.out_padding.1 as u32,
        out_channels: cout as u32,
        _pad: [0; 3],
    };
    let uniform = ctx.uniform(&params);
    let mut constants = vec![("SG", support.subgroup_size)];
    if upsample {
        constants.push(("UPSAMPLE", 1));
    }
    let residual_binding = residual_binding(ctx, residual);
    // What runs: the split clamped to the k steps.
    let choice = CoopChoice { split, ..choice };
    let config = format!("{choice}, {side}x{side} matrices");
    let Some(tile) = tile else {
        // The staged block: already checked to exist on this device.
        let block = staged_block(ctx).ok_or_else(|| Error::invalid(OP, "no staged block"))?;
        let p = ctx.pipeline_from(
            &block.key(),
            || block.module_source(),
            "conv2d_coop_staged",
            &constants,
        )?;
        let bind_group = ctx.bind_group(
            "conv2d_coop_staged",
            &p,
            &[
                (2, weights.affine.as_entire_binding()),
                (3, residual_binding),
                (4, out.binding()),
                (5, uniform.binding()),
                (7, x.binding()),
                (8, weights.weights.as_entire_binding()),
            ],
        );
        return Ok(vec![Dispatch::new(
            "conv2d_coop_staged",
            p,
            bind_group,
            grid,
        )
        .with_config(config)]);
    };
    let module = tile.key(side);
    let pipeline = |entry: &'static str, constants: &[(&'static str, u32)]| {
        ctx.pipeline_from(&module, || tile.module_source(side), entry, constants)
    };
    let x_binding = x.binding_to_end(read);
    if split == 1 {
        let p = pipeline("conv2d_coop", &constants)?;
        let bind_group = ctx.bind_group(
            "conv2d_coop",
            &p,
            &[
                (0, x_binding),
                (1, weights.weights.as_entire_binding()),
                (2, weights.affine.as_entire_binding()),
                (3, residual_binding),
                (4, out.binding()),
                (5, uniform.binding()),
            ],
        );
        return Ok(vec![
            Dispatch::new("conv2d_coop", p, bind_group, grid).with_config(config)
        ]);
    }
    let bytes = partial_bytes(shape, weights.cout_pad, choice, side);
    let partials = Partials::new(ctx, partials, bytes, &format!("{choice}"))?;
    let partials_binding = || partials.binding(bytes);
    let conv = pipeline("conv2d_coop_partial", &[("SG", support.subgroup_size)])?;
    let conv_group = ctx.bind_group(
        "conv2d_coop_partial",
        &conv,
        &[
            (0, x_binding),
            (1, weights.weights.as_entire_binding()),
            (5, uniform.binding()),
            (6, partials_binding()),
        ],
    );
    let mut reduce_constants = vec![("WG", ELEMENTWISE_WG)];
    if upsample {
        reduce_constants.push(("UPSAMPLE", 1));
    }
    let reduce = pipeline("conv2d_coop_reduce", &reduce_constants)?;
    let reduce_group = ctx.bind_group(
        "conv2d_coop_reduce",
        &reduce,
        &[
            (2, weights.affine.as_entire_binding()),
            (3, residual_binding),
            (4, out.binding()),
            (5, uniform.binding()),
            (6, partials_binding()),
        ],
    );
    let groups = u32::try_from((len as u64).div_ceil(ELEMENTWISE_WG as u64)).unwrap_or(u32::MAX);
    let reduce_grid = grid_2d(groups, ctx.limits().max_compute_workgroups_per_dimension);
    ctx.check_grid(OP, reduce_grid)?;
    Ok(vec![
        Dispatch::new("conv2d_coop_partial", conv, conv_group, grid).with_config(config.clone()),
        Dispatch::new("conv2d_coop_reduce", reduce, reduce_group, reduce_grid).with_config(config),
    ])
}
