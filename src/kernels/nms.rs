//! Batched non-maximum suppression (`shaders/nms_sort.wgsl`, `nms_mask.wgsl`,
//! `nms_sweep.wgsl`): for every image of a batch at once, torchvision's
//! `batched_nms(boxes, scores, labels, iou_thresh)[:detections_per_img]`, with the kept boxes
//! scaled on the way out.
//!
//! The candidates are an f32 tensor `[N, 1, M, 6]`: per image, M records of x1, y1, x2, y2,
//! score and the label's u32 bits (`f32::from_bits(label)`). A record whose score is not >= 0
//! (negative or NaN) is an empty slot; empty slots may be anywhere. The candidates are visited
//! by score, descending (equal scores by slot); one is kept unless an already kept one with
//! the same label has an IoU above `iou_thresh` with it. The output `[N, 1, D, 6]` holds the
//! first D kept records in that order, boxes multiplied by `output_scale` (the IoUs use the
//! boxes as given), then empty records: boxes 0, score -1, label `0xffff_ffff`.
//!
//! Everything runs on the GPU, as torchvision's CUDA kernel has it: a bitonic sort of each
//! image's (score, slot) keys, a bit mask of which sorted candidate suppresses which, computed
//! in parallel, and a sweep of one workgroup per image. The launches cover every image at
//! once; how many there are depends on M only ([`launch_count`]).

use crate::error::{Error, Result};
use crate::gpu::{grid_2d, Dispatch, GpuContext};
use crate::kernels::box_decode::RECORD;
use crate::kernels::{check_io, check_nchw, check_output_shape, pipeline, ShaderSource};
use crate::precision::Precision;
use crate::tensor::{check_shape, Tensor};

const OP: &str = "nms";

/// A stage's module: the shared part, then the stage.
macro_rules! nms_shader {
    ($file:literal) => {
        ShaderSource {
            name: $file,
            parts: &["nms_common.wgsl", $file],
            source: concat!(
                include_str!("../../shaders/nms_common.wgsl"),
                include_str!(concat!("../../shaders/", $file))
            ),
            params: &[("NmsParams", std::mem::size_of::<NmsParams>())],
            enables: "",
            // The labels are u32 bits in the records' sixth word, which f16 cannot carry.
            precisions: &[Precision::F32],
        }
    };
}

/// The sort: keys, then blocks sorted and merged in workgroup memory, and global steps.
pub const SORT_SHADER: ShaderSource = nms_shader!("nms_sort.wgsl");
/// The suppression mask.
pub const MASK_SHADER: ShaderSource = nms_shader!("nms_mask.wgsl");
/// The sweep that keeps candidates and writes the output.
pub const SWEEP_SHADER: ShaderSource = nms_shader!("nms_sweep.wgsl");

/// Candidates per image at most: the sweep's removed set is one bit per candidate in 8 KiB of
/// workgroup memory (`MAX_WORDS` in `nms_sweep.wgsl`).
pub const MAX_CANDIDATES: usize = 2048 * 32;

/// Invocations per workgroup of every stage (`WG` in `nms_common.wgsl`).
const WG: u32 = 256;
/// Keys a workgroup sorts in workgroup memory (`SORT_BLOCK` in `nms_sort.wgsl`).
const SORT_BLOCK: usize = 1024;
/// Rows and columns of a block of the mask (`MASK_ROWS`, `MASK_COLS` in `nms_mask.wgsl`).
const MASK_ROWS: usize = 64;
const MASK_COLS: usize = 128;

/// Mirrors `NmsParams` in `nms_common.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct NmsParams {
    pub images: u32,
    pub candidates: u32,
    pub padded: u32,
    pub words: u32,
    pub block: u32,
    pub row_blocks: u32,
    pub col_blocks: u32,
    pub max_detections: u32,
    pub iou_thresh: f32,
    pub scale_x: f32,
    pub scale_y: f32,
    pub k: u32,
    pub k_last: u32,
    pub j: u32,
    pub _pad: [u32; 2],
}

/// What the suppression keeps and how it writes it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NmsOptions {
    /// A candidate is dropped when a kept one of its label overlaps it by an IoU strictly
    /// above this; finite (torchvision's detectors use 0.5).
    pub iou_thresh: f32,
    /// Records kept per image at most, D (torchvision's `detections_per_img`); at least 1.
    pub max_detections: usize,
    /// (sx, sy): the kept boxes' x coordinates are multiplied by sx and y coordinates by sy
    /// on output, to map them back to the original picture.
    pub output_scale: [f32; 2],
}

impl Default for NmsOptions {
    /// IoU 0.5 (torchvision's RetinaNet), 100 detections (its FCOS and Faster R-CNN; RetinaNet
    /// keeps 300), boxes as they are.
    fn default() -> Self {
        NmsOptions {
            iou_thresh: 0.5,
            max_detections: 100,
            output_scale: [1.0, 1.0],
        }
    }
}

/// The sizes a launch is planned from.
#[derive(Clone, Copy, Debug)]
struct Plan {
    /// M rounded up to a power of two: the length of each image's sort.
    padded: usize,
    /// Keys per workgroup of the sort.
    block: usize,
    /// Mask words per row, ceil(M / 32).
    words: usize,
}

impl Plan {
    fn new(candidates: usize) -> Plan {
        let padded = candidates.max(1).next_power_of_two();
        Plan {
            padded,
            block: padded.min(SORT_BLOCK),
            words: candidates.div_ceil(32),
        }
    }

    /// The stages k of the bitonic network that do not fit in one block, each with its
    /// global steps j (k/2 down to the block size).
    fn global_stages(self) -> impl Iterator<Item = (usize, Vec<usize>)> {
        let block = self.block;
        std::iter::successors(Some(2 * block), |k| Some(k * 2))
            .take_while(move |&k| k <= self.padded)
            .map(move |k| {
                let steps = std::iter::successors(Some(k / 2), |j| Some(j / 2))
                    .take_while(|&j| j >= block)
                    .collect();
                (k, steps)
            })
    }
}

/// How many launches [`prepare`] returns for M candidates per image (whatever the batch):
/// with `d = log2(P / 1024)` for P = M rounded up to a power of two (d = 0 when P <= 1024),
/// `3 + d (d + 3) / 2`: the sort (one launch, plus d + 1 per stage beyond its blocks), the
/// mask and the sweep. M <= 1024: 3; M = 2000: 5; M = 5000: 12; M = 10000: 17; M = 65536: 30.
pub fn launch_count(candidates: usize) -> usize {
    let sort: usize = 1 + Plan::new(candidates)
        .global_stages()
        .map(|(_, steps)| steps.len() + 1)
        .sum::<usize>();
    sort + 2
}

/// The output shape for `candidates` of shape `[N, 1, M, 6]`: `[N, 1, D, 6]`.
pub fn output_shape(candidates: [usize; 4], opts: &NmsOptions) -> [usize; 4] {
    [candidates[0], 1, opts.max_detections, RECORD]
}

/// Builds the launches of a batched NMS of `candidates` (`[N, 1, M, 6]`) into `out`
/// (`[N, 1, D, 6]`), [`launch_count`] of them, to be recorded in order. Its scratch (the
/// sorted keys, 8 P bytes per image, and the mask, 4 M ceil(M / 32) bytes per image) is
/// created here and rewritten by every recording, so the launches can be recorded any number
/// of times.
pub fn prepare(
    ctx: &GpuContext,
    candidates: &Tensor,
    out: &Tensor,
    opts: &NmsOptions,
) -> Result<Vec<Dispatch>> {
    for (t, what) in [(candidates, "the candidates"), (out, "the output")] {
        if t.precision() != Precision::F32 {
            return Err(Error::invalid(
                OP,
                format!(
                    "{what} tensor is {}; NMS takes f32 tensors only (word 5 of a record holds a label's u32 bits, which f16 cannot carry); convert with kernels::convert::convert",
                    t.precision()
                ),
            ));
        }
        check_nchw(OP, t)?;
    }
    let shape = candidates.shape();
    let [n, channels, m, record] = shape;
    if channels != 1 || record != RECORD {
        return Err(Error::invalid(
            OP,
            format!(
                "the candidates have shape {shape:?}; NMS takes [N, 1, M, 6]: per image, M records of x1, y1, x2, y2, score, label bits"
            ),
        ));
    }
    check_shape(ctx, OP, "the candidates", shape)?;
    check_options(opts)?;
    check_output_shape(OP, out, output_shape(shape, opts))?;
    check_shape(ctx, OP, "the output", out.shape())?;
    check_io(OP, out, &[candidates])?;
    if m > MAX_CANDIDATES {
        return Err(Error::invalid(
            OP,
            format!(
                "the candidates hold {m} records per image; NMS takes at most {MAX_CANDIDATES} (one bit each in workgroup memory): keep the best-scoring ones first (a score threshold or a top-k)"
            ),
        ));
    }
    let plan = Plan::new(m);
    let key_bytes = n as u64 * plan.padded as u64 * 8;
    check_scratch(ctx, "the sorted keys", key_bytes, n, m)?;
    let mask_bytes = n as u64 * m as u64 * plan.words as u64 * 4;
    check_scratch(ctx, "the suppression mask", mask_bytes, n, m)?;
    let keys = ctx.storage_zeroed("nms sorted keys", key_bytes);
    let mask = ctx.storage_zeroed("nms suppression mask", mask_bytes);

    let row_blocks = m.div_ceil(MASK_ROWS);
    let col_blocks = m.div_ceil(MASK_COLS);
    let params = NmsParams {
        images: n as u32,
        candidates: m as u32,
        padded: plan.padded as u32,
        words: plan.words as u32,
        block: plan.block as u32,
        row_blocks: row_blocks as u32,
        col_blocks: col_blocks as u32,
        max_detections: opts.max_detections as u32,
        iou_thresh: opts.iou_thresh,
        scale_x: opts.output_scale[0],
        scale_y: opts.output_scale[1],
        k: 0,
        k_last: 0,
        j: 0,
        _pad: [0; 2],
    };
    let launch = |shader: &ShaderSource,
                  entry: &'static str,
                  params: NmsParams,
                  groups: usize,
                  bindings: &[u32]|
     -> Result<Dispatch> {
        let resource = |b: u32| match b {
            0 => candidates.binding(),
            1 => keys.as_entire_binding(),
            2 => mask.as_entire_binding(),
            _ => out.binding(),
        };
        let pipeline = pipeline(ctx, shader, Precision::F32, entry, &[])?;
        let groups = u32::try_from(groups).unwrap_or(u32::MAX);
        let workgroups = grid_2d(groups, ctx.limits().max_compute_workgroups_per_dimension);
        ctx.check_grid(entry, workgroups)?;
        let uniform = ctx.uniform(&params);
        let mut entries: Vec<_> = bindings.iter().map(|&b| (b, resource(b))).collect();
        entries.push((4, uniform.binding()));
        let bind_group = ctx.bind_group(entry, &pipeline, &entries);
        Ok(Dispatch::new(entry, pipeline, bind_group, workgroups))
    };

    let blocks = n * plan.padded / plan.block;
    let mut dispatches = vec![launch(
        &SORT_SHADER,
        "sort_blocks",
        params,
        blocks,
        &[0, 1],
    )?];
    let pairs = n * plan.padded / 2;
    for (k, steps) in plan.global_stages() {
        for j in steps {
            let step = NmsParams {
                k: k as u32,
                j: j as u32,
                ..params
            };
            let groups = pairs.div_ceil(WG as usize);
            dispatches.push(
                launch(&SORT_SHADER, "sort_step", step, groups, &[1])?
                    .with_config(format!("k {k}, j {j}")),
            );
        }
        let merge = NmsParams {
            k: k as u32,
            ..params
        };
        dispatches.push(
            launch(&SORT_SHADER, "merge_blocks", merge, blocks, &[1])?
                .with_config(format!("k {k}, j < {}", plan.block)),
        );
    }
    let mask_groups = n * row_blocks * col_blocks;
    dispatches.push(launch(
        &MASK_SHADER,
        "nms_mask",
        params,
        mask_groups,
        &[0, 1, 2],
    )?);
    dispatches.push(launch(
        &SWEEP_SHADER,
        "nms_sweep",
        params,
        n,
        &[0, 1, 2, 3],
    )?);
    Ok(dispatches)
}

/// Checks what the options say, apart from any tensor.
fn check_options(opts: &NmsOptions) -> Result<()> {
    if opts.max_detections == 0 {
        return Err(Error::invalid(
            OP,
            "max_detections is 0; keep at least one record per image (torchvision's detectors keep 100)",
        ));
    }
    if !opts.iou_thresh.is_finite() {
        return Err(Error::invalid(
            OP,
            format!(
                "iou_thresh is {}; it must be a finite number (torchvision's detectors use 0.5)",
                opts.iou_thresh
            ),
        ));
    }
    Ok(())
}

/// Checks that a scratch buffer of `bytes` can be bound on this device and indexed in u32
/// words.
fn check_scratch(ctx: &GpuContext, what: &str, bytes: u64, n: usize, m: usize) -> Result<()> {
    let limit = ctx.max_binding_bytes().min(4 * u32::MAX as u64);
    if bytes > limit {
        return Err(Error::LimitExceeded {
            op: OP,
            what: format!("the byte size of {what} for a batch of {n} with {m} candidates per image"),
            value: bytes,
            limit_name: "max_storage_buffer_binding_size",
            limit,
            hint: "the mask grows as N M^2 / 8 bytes: give fewer candidates per image (a score threshold or a top-k first) or run the images in smaller batches".into(),
        });
    }
    Ok(())
}

/// Runs a batched NMS now and returns its output `[N, 1, D, 6]` (downloading it waits for the
/// GPU).
pub fn batched_nms(ctx: &GpuContext, candidates: &Tensor, opts: &NmsOptions) -> Result<Tensor> {
    // Before the output is made: D = 0 would be a zero-sized tensor.
    check_options(opts)?;
    let out = Tensor::empty(ctx, output_shape(candidates.shape(), opts))?;
    let dispatches = prepare(ctx, candidates, &out, opts)?;
    ctx.submit(&dispatches.iter().collect::<Vec<_>>())?;
    Ok(out)
}

/// Builds the launch writing `out` = `records` (`[N, 1, D, 6]`, f32, as [`prepare`] writes
/// them) with their boxes' x coordinates multiplied by `scale[0]` and y coordinates by
/// `scale[1]`, the same f32 products [`NmsOptions::output_scale`] makes; scores and labels are
/// copied bit for bit, empty records stay empty. For records kept in the resized picture's
/// pixels that are also wanted in the original picture's.
pub fn prepare_scale_records(
    ctx: &GpuContext,
    records: &Tensor,
    out: &Tensor,
    scale: [f32; 2],
) -> Result<Dispatch> {
    const OP: &str = "scale_records";
    for (t, what) in [(records, "the records"), (out, "the output")] {
        if t.precision() != Precision::F32 {
            return Err(Error::invalid(
                OP,
                format!(
                    "{what} tensor is {}; records are f32 (word 5 holds a label's u32 bits, which f16 cannot carry)",
                    t.precision()
                ),
            ));
        }
        check_nchw(OP, t)?;
    }
    let shape = records.shape();
    let [n, channels, d, record] = shape;
    if channels != 1 || record != RECORD {
        return Err(Error::invalid(
            OP,
            format!(
                "the records have shape {shape:?}; expected [N, 1, D, 6]: per image, D records of x1, y1, x2, y2, score, label bits"
            ),
        ));
    }
    if !scale.iter().all(|s| s.is_finite()) {
        return Err(Error::invalid(
            OP,
            format!("the scale is {scale:?}; it must be finite"),
        ));
    }
    check_shape(ctx, OP, "the records", shape)?;
    check_output_shape(OP, out, shape)?;
    check_io(OP, out, &[records])?;
    let words = n * d * RECORD;
    let params = NmsParams {
        images: n as u32,
        candidates: d as u32,
        padded: 0,
        words: 0,
        block: 0,
        row_blocks: 0,
        col_blocks: 0,
        max_detections: d as u32,
        iou_thresh: 0.0,
        scale_x: scale[0],
        scale_y: scale[1],
        k: 0,
        k_last: 0,
        j: 0,
        _pad: [0; 2],
    };
    let pipeline = pipeline(ctx, &SWEEP_SHADER, Precision::F32, OP, &[])?;
    let groups = u32::try_from(words.div_ceil(WG as usize)).unwrap_or(u32::MAX);
    let workgroups = grid_2d(groups, ctx.limits().max_compute_workgroups_per_dimension);
    ctx.check_grid(OP, workgroups)?;
    let uniform = ctx.uniform(&params);
    let entries = [
        (0, records.binding()),
        (3, out.binding()),
        (4, uniform.binding()),
    ];
    let bind_group = ctx.bind_group(OP, &pipeline, &entries);
    Ok(Dispatch::new(OP, pipeline, bind_group, workgroups))
}
