//! Convolution on cooperative matrices (tensor cores), f16 and channels-last:
//! `shaders/conv2d_coop.wgsl` plus the entry points generated here for one block shape and one
//! matrix side.
//!
//! wgpu exposes cooperative matrices as an experimental feature. The kernel runs where the
//! adapter offers square f16 -> f32 matrices of a side it is written for (16 or 8) with a fixed
//! subgroup size, and only after [`verified`] has checked it against the direct kernel on the
//! device itself.

use std::fmt::Write;

use super::coop_staged::StagedBlock;
use super::{
    check_tensors, epilogue_flags, residual_binding, Conv2dOptions, Conv2dWeights, ConvAlgorithm,
    Partials, ResidualMode,
};
use crate::error::{Error, Result};
use crate::gpu::{grid_2d, CooperativeMatrixSupport, Dispatch, GpuContext};
use crate::kernels::{ShaderSource, ELEMENTWISE_WG};
use crate::precision::Precision;
use crate::tensor::{MemoryFormat, Tensor};

/// The module without its generated entry points.
pub const SHADER: ShaderSource = ShaderSource {
    name: "conv2d_coop.wgsl",
    parts: &["common.wgsl", "resample.wgsl", "conv2d_coop.wgsl"],
    source: concat!(
        include_str!("../../../shaders/common.wgsl"),
        include_str!("../../../shaders/resample.wgsl"),
        include_str!("../../../shaders/conv2d_coop.wgsl")
    ),
    params: &[("CoopConvParams", std::mem::size_of::<CoopConvParams>())],
    enables: "enable wgpu_cooperative_matrix;\n",
    precisions: &[Precision::F16],
};

/// Output channels of the weights (and of the affine) are zero padded to a multiple of this:
/// the widest block, the staged one's 128.
pub const BLOCK_COUT_ALIGN: usize = 128;

/// Mirrors `CoopConvParams` in the WGSL.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct CoopConvParams {
    pub in_height: u32,
    pub in_width: u32,
    pub in_cl: u32,
    pub out_height: u32,
    pub out_width: u32,
    pub out_cl: u32,
    pub w_stride: u32,
    pub kernel_w: u32,
    pub stride_h: u32,
    pub stride_w: u32,
    pub segments: u32,
    pub total_segments: u32,
    pub part_image: u32,
    pub steps: u32,
    pub steps_per_split: u32,
    pub splits: u32,
    pub batch: u32,
    pub flags: u32,
    pub res_height: u32,
    pub res_width: u32,
    pub res_scale_h: f32,
    pub res_scale_w: f32,
    pub len: u32,
    pub part_row: u32,
    pub out_rows: u32,
    pub out_pitch: u32,
    pub out_top: u32,
    pub out_left: u32,
    pub out_channels: u32,
    pub _pad: [u32; 3],
}

/// A block shape: `m_tiles` row segments of `side` pixels by `n_tiles * side` output channels
/// per subgroup.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CoopTile {
    /// Pixel segments (matrix rows of A) per block.
    pub m_tiles: usize,
    /// Output-channel tiles (matrix columns of B) per block.
    pub n_tiles: usize,
}

/// The block shapes the kernel is generated for, largest first. 4x4 ran a plain GEMM at 74-78
/// TFLOP/s on an H100 against 49-59 for 2x4; 2x4 wins on maps too small to fill the GPU with
/// 4x4 blocks (measured on an H200: layer4's convs at 19x29).
pub const TILES: [CoopTile; 3] = [
    CoopTile {
        m_tiles: 4,
        n_tiles: 4,
    },
    CoopTile {
        m_tiles: 2,
        n_tiles: 4,
    },
    CoopTile {
        m_tiles: 2,
        n_tiles: 2,
    },
];

/// The largest split-K factor the selection picks.
pub const MAX_SPLIT: usize = 8;

/// Which kernel computes a block of the output.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CoopBlock {
    /// One subgroup per block, matrices loaded straight from storage; any split-K.
    Direct(CoopTile),
    /// Eight subgroups per block, staged in double-buffered workgroup memory
    /// ([`super::coop_staged`]); no split-K.
    Staged,
}

/// How one convolution runs on cooperative matrices: the block and the split-K factor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CoopChoice {
    /// The kernel and block.
    pub block: CoopBlock,
    /// Parts the k steps are split into (1: no split-K). Each part stores f32 partial sums,
    /// which a second launch adds up before the epilogue.
    pub split: usize,
}

impl CoopChoice {
    /// A direct-load block with split-K factor `split`.
    pub fn direct(tile: CoopTile, split: usize) -> Self {
        CoopChoice {
            block: CoopBlock::Direct(tile),
            split,
        }
    }

    /// The staged block.
    pub const STAGED: CoopChoice = CoopChoice {
        block: CoopBlock::Staged,
        split: 1,
    };
}

impl std::fmt::Display for CoopChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.block {
            CoopBlock::Direct(t) => write!(
                f,
                "direct {}x{}, split {}",
                t.m_tiles, t.n_tiles, self.split
            ),
            CoopBlock::Staged => write!(f, "staged, split {}", self.split),
        }
    }
}

impl CoopTile {
    /// Workgroup memory of the single-split entry point: the block's f32 accumulators.
    pub fn workgroup_bytes(&self, side: u32) -> u32 {
        (self.m_tiles * self.n_tiles) as u32 * side * side * 4
    }

    /// A name for the pipeline cache and labels, e.g. `conv2d_coop_16_4x4`.
    pub fn key(&self, side: u32) -> String {
        format!("conv2d_coop_{side}_{}x{}", self.m_tiles, self.n_tiles)
    }

    /// The whole module (f16): the static part and the generated entry points.
    pub fn module_source(&self, side: u32) -> String {
        let mut s = SHADER.module(Precision::F16);
        s.push('\n');
        s.push_str(&self.entry_source(side));
        s
    }

    /// The entry points `conv2d_coop` and `conv2d_coop_partial` for this block and matrix side.
    pub fn entry_source(&self, side: u32) -> String {
        let (mt, nt) = (self.m_tiles, self.n_tiles);
        let mat = format!("coop_mat{side}x{side}");
        let mut s = String::new();
        let w = &mut s;
        // `writeln!` into a String cannot fail.
        let _ = writeln!(
            w,
            "// Generated: blocks of {mt}x{nt} {side}x{side} matrices."
        );
        let _ = writeln!(w, "const S: u32 = {side}u;");
        let _ = writeln!(w, "const BN: u32 = {}u;", nt * side as usize);
        let _ = writeln!(w, "const BM: u32 = {}u;", mt * side as usize);
        let _ = writeln!(
            w,
            "var<workgroup> c_block: array<f32, {}>;",
            mt * nt * (side * side) as usize
        );
        for entry in ["conv2d_coop", "conv2d_coop_partial"] {
            let partial = entry == "conv2d_coop_partial";
            let _ = writeln!(w, "@compute @workgroup_size(SG)");
            let _ = writeln!(w, "fn {entry}(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lane: u32) {{");
            let _ = writeln!(w, "    let n = wid.z / p.splits;");
            let _ = writeln!(w, "    let split = wid.z % p.splits;");
            let _ = writeln!(w, "    let seg0 = wid.x * {mt}u;");
            let _ = writeln!(w, "    let n0 = wid.y * BN;");
            // Segments past the map's end load the last one again (their results are never
            // stored), so that every load stays inside the tensor and its slack.
            for i in 0..mt {
                let _ = writeln!(
                    w,
                    "    let sg{i} = min(seg0 + {i}u, p.total_segments - 1u);"
                );
                let _ = writeln!(w, "    let a_base{i} = segment_origin(n, sg{i} / p.segments, (sg{i} % p.segments) * S);");
            }
            for i in 0..mt {
                for j in 0..nt {
                    let _ = writeln!(w, "    var c{i}_{j} = {mat}<f32, C>();");
                }
            }
            let _ = writeln!(w, "    let lda = p.stride_w * p.in_cl;");
            let _ = writeln!(w, "    let ldb = p.w_stride;");
            let _ = writeln!(w, "    let chunks = p.in_cl / S;");
            let _ = writeln!(w, "    let t0 = split * p.steps_per_split;");
            let _ = writeln!(w, "    let t1 = min(t0 + p.steps_per_split, p.steps);");
            let _ = writeln!(w, "    for (var t = t0; t < t1; t++) {{");
            let _ = writeln!(w, "        let tap = t / chunks;");
            let _ = writeln!(w, "        let c0 = (t - tap * chunks) * S;");
            let _ = writeln!(w, "        let ky = tap / p.kernel_w;");
            let _ = writeln!(w, "        let kx = tap - ky * p.kernel_w;");
            let _ = writeln!(
                w,
                "        let a_off = (ky * p.in_width + kx) * p.in_cl + c0;"
            );
            let _ = writeln!(w, "        let b_off = (tap * p.in_cl + c0) * ldb + n0;");
            // Every index and stride bound to a `let` first: naga 30's SPIR-V writer panicked on
            // expressions written inline in a cooperative load's pointer.
            for i in 0..mt {
                let _ = writeln!(w, "        let ai{i} = a_base{i} + a_off;");
                let _ = writeln!(
                    w,
                    "        let a{i} = coopLoadT<{mat}<act, A>>(&x[ai{i}], lda);"
                );
            }
            for j in 0..nt {
                let _ = writeln!(w, "        let bi{j} = b_off + {}u;", j * side as usize);
                let _ = writeln!(
                    w,
                    "        let b{j} = coopLoadT<{mat}<act, B>>(&weights[bi{j}], ldb);"
                );
            }
            for i in 0..mt {
                for j in 0..nt {
                    let _ = writeln!(
                        w,
                        "        c{i}_{j} = coopMultiplyAdd(a{i}, b{j}, c{i}_{j});"
                    );
                }
            }
            let _ = writeln!(w, "    }}");
            if partial {
                // Every block has slots of its own in the partials (the grid's segments, not
                // the map's), so the stores need no bounds.
                let _ = writeln!(w, "    let img = (split * p.batch + n) * p.part_image;");
                for i in 0..mt {
                    for j in 0..nt {
                        let _ = writeln!(
                            w,
                            "    let pi{i}_{j} = (img + (seg0 + {i}u) * S) * ldb + n0 + {}u;",
                            j * side as usize
                        );
                        let _ = writeln!(w, "    coopStoreT(c{i}_{j}, &partials[pi{i}_{j}], ldb);");
                    }
                }
            } else {
                // Row-major [BM][BN] in workgroup memory: consecutive lanes then take
                // consecutive channels of a pixel, as the channels-last output stores them.
                let _ = writeln!(w, "    let ldc = BN;");
                for i in 0..mt {
                    for j in 0..nt {
                        let _ = writeln!(
                            w,
                            "    let ci{i}_{j} = {}u;",
                            i * side as usize * nt * side as usize + j * side as usize
                        );
                        let _ = writeln!(w, "    coopStoreT(c{i}_{j}, &c_block[ci{i}_{j}], ldc);");
                    }
                }
                let _ = writeln!(w, "    workgroupBarrier();");
                let _ = writeln!(w, "    for (var e = lane; e < BM * BN; e += SG) {{");
                let _ = writeln!(w, "        let m = e / BN;");
                let _ = writeln!(w, "        let co = n0 + e % BN;");
                let _ = writeln!(w, "        let seg = seg0 + m / S;");
                let _ = writeln!(w, "        let ox = (seg % p.segments) * S + m % S;");
                let _ = writeln!(
                    w,
                    "        if (seg < p.total_segments && ox < p.out_width && co < p.out_cl) {{"
                );
                let _ = writeln!(
                    w,
                    "            epilogue(n, seg / p.segments, ox, co, c_block[e]);"
                );
                let _ = writeln!(w, "        }}");
                let _ = writeln!(w, "    }}");
            }
            let _ = writeln!(w, "}}");
        }
        s
    }
}

/// The cooperative matrices this kernel can use on the device: the context's support, where
/// the smallest block's workgroup memory fits.
pub fn support(ctx: &GpuContext) -> Option<CooperativeMatrixSupport> {
    let support = ctx.cooperative_matrix()?;
    let smallest = TILES[TILES.len() - 1];
    (smallest.workgroup_bytes(support.side) <= ctx.limits().max_compute_workgroup_storage_size)
        .then_some(support)
}

/// The staged block on this device, where it can run: the device reports subgroup ids, the
/// block's workgroup memory fits and its loads divide evenly among the invocations.
pub fn staged_block(ctx: &GpuContext) -> Option<StagedBlock> {
    let support = support(ctx)?;
    let block = StagedBlock {
        side: support.side as usize,
        subgroup: support.subgroup_size as usize,
    };
    let limits = ctx.limits();
    (support.subgroup_ids
        && block.loads_evenly()
        && block.workgroup_bytes() <= limits.max_compute_workgroup_storage_size
        && block.invocations() as u32 <= limits.max_compute_invocations_per_workgroup)
        .then_some(block)
}

/// Whether the staged block can compute a convolution with weights of `w_shape`: whole k
/// steps of input channels, and output channels that fill at least one block.
pub fn staged_fits(block: StagedBlock, w_shape: [usize; 4]) -> bool {
    padded_cin(w_shape[1]).is_multiple_of(block.step_channels())
        && w_shape[0] >= block.block_channels()
}

/// Whether convolutions of an f16 network run on cooperative matrices on this device: it can
/// run the kernel and the kernel agreed with the direct one on test convolutions run there
/// (checked once per context; a disagreement or an error is logged and the direct kernels are
/// used instead).
pub fn verified(ctx: &GpuContext) -> bool {
    support(ctx).is_some() && ctx.cooperative_matrix_verified(self_check)
}

/// Input channels padded as a channels-last tensor stores them.
fn padded_cin(cin: usize) -> usize {
    MemoryFormat::ChannelsLast.pixel_stride(cin)
}

/// Reorders OIHW weights to `[tap][Cin'][Cout']` (tap = ky * KW + kx; Cin' the channels-last
/// padding of the input channels, Cout' the output channels padded to [`BLOCK_COUT_ALIGN`]), zeros in
/// the padding.
pub(super) fn to_tap_major(shape: [usize; 4], weight: &[f32]) -> Vec<f32> {
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
    if weights.algorithm != ConvAlgorithm::CooperativeMatrix {
        return Err(Error::invalid(
            OP,
            format!(
                "the weights are laid out for {:?}; build them with ConvAlgorithm::CooperativeMatrix (or run them through conv2d::prepare)",
                weights.algorithm
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
            message: "this device has no cooperative matrices the kernel can use; use ConvAlgorithm::Direct".into(),
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
    let uniform = ctx.uniform("conv2d_coop params", &params);
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
                (5, uniform.as_entire_binding()),
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
                (5, uniform.as_entire_binding()),
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
            (5, uniform.as_entire_binding()),
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
            (5, uniform.as_entire_binding()),
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

/// Runs a convolution with awkward sizes (channels not a multiple of the matrix side or the
/// block, a partial pixel block, padding, stride 1 and 2, every epilogue input, with and
/// without split-K) on both kernels; Ok with the largest difference relative to the largest
/// value.
#[cfg(not(target_arch = "wasm32"))]
fn self_check(ctx: &GpuContext) -> Result<f64> {
    use super::{conv2d_with, output_shape, ConvAlgorithm};
    use crate::rng::SplitMix64;

    let f16 = Precision::F16;
    let mut rng = SplitMix64::new(11);
    let mut worst = 0.0f64;
    // Split 0 stands for the staged block, checked where the device can run it.
    let staged = staged_block(ctx).is_some();
    for (input, cout, k, stride, pad, split) in [
        ([2, 20, 9, 11], 70, 3, 1, 1, 1),
        ([1, 33, 13, 17], 19, 1, 2, 0, 2),
        ([1, 64, 11, 13], 130, 3, 1, 1, 0),
    ] {
        if split == 0 && !staged {
            continue;
        }
        let w_shape = [cout, input[1], k, k];
        let w = rng.vec(w_shape.iter().product(), -0.2, 0.2);
        let bias = rng.vec(cout, -0.5, 0.5);
        let x = rng.vec(input.iter().product(), -1.0, 1.0);
        let opts = Conv2dOptions::new(stride, pad).with_relu(true);
        let out_shape = output_shape(input, w_shape, &opts)?;
        let residual = rng.vec(out_shape.iter().product(), -1.0, 1.0);
        let run = |algorithm, layout| -> Result<Vec<f32>> {
            let weights =
                Conv2dWeights::with_precision(ctx, w_shape, &w, Some(&bias), None, algorithm, f16)?;
            let x = Tensor::from_slice_with(ctx, input, &x, f16, layout)?;
            let r = Tensor::from_slice_with(ctx, out_shape, &residual, f16, layout)?;
            let choice = match split {
                0 => CoopChoice::STAGED,
                s => CoopChoice::direct(TILES[0], s),
            };
            let choice = (algorithm == ConvAlgorithm::CooperativeMatrix).then(|| choice.into());
            conv2d_with(ctx, &x, &weights, Some(&r), &opts, choice)?.download(ctx)
        };
        let want = run(ConvAlgorithm::Direct, MemoryFormat::Nchw)?;
        let got = run(ConvAlgorithm::CooperativeMatrix, MemoryFormat::ChannelsLast)?;
        let scale = want
            .iter()
            .fold(0.0f64, |m, &v| m.max((v as f64).abs()))
            .max(1e-30);
        for (g, w) in got.iter().zip(&want) {
            let d = (*g as f64 - *w as f64).abs() / scale;
            // NaN compares false: count it as a failure.
            worst = if d.is_nan() {
                f64::INFINITY
            } else {
                worst.max(d)
            };
        }
    }
    Ok(worst)
}

/// Browsers have no cooperative matrices: the check never runs there.
#[cfg(target_arch = "wasm32")]
fn self_check(_ctx: &GpuContext) -> Result<f64> {
    Ok(f64::INFINITY)
}
