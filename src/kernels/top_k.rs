//! Per-level top-k of detection scores (`shaders/top_k.wgsl`), with the semantics of
//! torchvision's RetinaNet and FCOS `postprocess_detections`: per image and pyramid level, the
//! elements whose score is strictly above `score_thresh` are the candidates; at most `k` of them
//! are kept, those with the largest scores.
//!
//! The levels' class logits come stacked in one map ([`LevelRegion`] says where each level
//! lies). Everything runs on the GPU without a readback, in [`LAUNCHES`] launches whatever the
//! batch and the number of levels: a radix select over the scores' bits finds each segment's
//! k-th largest score, then a compaction writes the selected elements.

use crate::error::{Error, Result};
use crate::gpu::{grid_2d, Dispatch, GpuContext};
use crate::kernels::{check_output_shape, pipeline, ShaderSource};
use crate::precision::Precision;
use crate::tensor::{check_shape, check_shape_in, MemoryFormat, Tensor};

/// The WGSL source.
pub const SHADER: ShaderSource = ShaderSource {
    name: "top_k.wgsl",
    parts: &["top_k.wgsl"],
    source: include_str!("../../shaders/top_k.wgsl"),
    params: &[("TopKParams", std::mem::size_of::<TopKParams>())],
    enables: "",
    precisions: &Precision::ALL,
};

/// The most pyramid levels one launch selects from (the size of the params' region table).
pub const MAX_LEVELS: usize = REGION_SLOTS;

/// The launches [`prepare`] returns: a reset of the scratch and the output, a histogram and a
/// scan for each of the three radix passes, and the compaction.
pub const LAUNCHES: usize = 8;

/// The flat index an unused output slot holds (its score is -1).
pub const UNUSED_INDEX: u32 = u32::MAX;

/// Most elements in a tensor the kernels index (with u32 arithmetic that must not wrap, even a
/// stride past the last element).
const MAX_ELEMENTS: u64 = 1 << 31;

/// Workgroup size of every entry point (the WGSL's `WG`).
const WG: u32 = 256;
/// Histogram bins per segment (the WGSL's `BINS`): the widest digit has 11 bits.
const BINS: u64 = 2048;
/// Words of a segment's selection state (the WGSL's `STATE`).
const STATE_WORDS: u64 = 8;
/// Fewest elements a workgroup of the histogram and compact launches strides over: each
/// clears and flushes a workgroup histogram of `BINS` bins, which many elements amortise.
const MIN_ELEMENTS_PER_GROUP: u64 = 8192;
/// Most workgroups per segment in those launches: enough to fill a large GPU with the biggest
/// level of a single image.
const MAX_GROUPS_PER_SEGMENT: u64 = 1024;

pub use crate::kernels::levels::LevelRegion;
use crate::kernels::levels::{check_regions, region_table, REGION_SLOTS};

/// How a class logit becomes a score.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ScoreMode {
    /// `sigmoid(logit)` (RetinaNet).
    #[default]
    Sigmoid,
    /// `sqrt(sigmoid(logit) * sigmoid(centerness))` (FCOS), with the centerness logit of the
    /// element's anchor at the same place.
    SigmoidWithCenterness,
}

/// What to select: the head's anchors and classes per location, how many elements per level,
/// above which score, and how scores are made.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TopKOptions {
    /// Anchors per location, A: the logits have A * C channels, channel `a * C + c`.
    pub anchors: usize,
    /// Classes, C.
    pub classes: usize,
    /// Most elements kept per image and level, at least 1.
    pub k: usize,
    /// Elements are candidates when their score is strictly above this.
    pub score_thresh: f32,
    /// How a logit becomes a score.
    pub mode: ScoreMode,
}

/// Selected elements per image, per level: (score, flat index within the level) pairs.
pub type Selection = Vec<Vec<Vec<(f32, u32)>>>;

/// Mirrors `TopKParams` in the WGSL.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct TopKParams {
    pub batch: u32,
    pub levels: u32,
    pub anchors: u32,
    pub classes: u32,
    pub map_height: u32,
    pub map_width: u32,
    pub k: u32,
    pub min_key: u32,
    pub blocks: u32,
    pub radix_pass: u32,
    pub with_centerness: u32,
    pub logits_cl: u32,
    pub centerness_cl: u32,
    pub _pad: [u32; 3],
    pub regions: [[u32; 4]; MAX_LEVELS],
}

/// The output's shape for `logits` of `logits_shape`, `levels` levels and `k`:
/// `[N, levels, k, 2]`.
pub fn output_shape(logits_shape: [usize; 4], levels: usize, k: usize) -> [usize; 4] {
    [logits_shape[0], levels, k, 2]
}

/// The smallest score bits strictly above `thresh` (a score is never negative, so its bits
/// order like its value; see the WGSL).
fn min_key(thresh: f32) -> u32 {
    if thresh < 0.0 {
        0
    } else {
        // abs: -0.0 is the threshold 0, whose bits are those of +0.0. +inf gives a key above
        // every finite score's.
        thresh.abs().to_bits().saturating_add(1)
    }
}

/// Checks that `t` is a tensor of `precision` and `layout`: the logits' (either precision and
/// layout; the scores are computed in f32), or NCHW f32 for the output.
fn check_stored(
    op: &'static str,
    what: &str,
    t: &Tensor,
    precision: Precision,
    layout: MemoryFormat,
) -> Result<()> {
    if t.memory_format() != layout {
        return Err(Error::invalid(
            op,
            format!(
                "got {what} stored {:?}; it must be {layout:?} here (the logits and the centerness share one layout, the output is NCHW; convert with kernels::convert::convert_to)",
                t.memory_format()
            ),
        ));
    }
    if t.precision() != precision {
        return Err(Error::invalid(
            op,
            format!(
                "got {what} stored as {}; it must be {precision} here (the logits and the centerness share one precision, the output is f32; convert with kernels::convert::convert)",
                t.precision()
            ),
        ));
    }
    Ok(())
}

fn check_indexable(op: &'static str, what: &str, t: &Tensor) -> Result<()> {
    if t.numel() as u64 > MAX_ELEMENTS {
        return Err(Error::invalid(
            op,
            format!(
                "{what} {:?} holds {} elements; at most {MAX_ELEMENTS} are supported (select from fewer images per call)",
                t.shape(),
                t.numel()
            ),
        ));
    }
    Ok(())
}

/// Checks the options and the levels against the logits' shape; returns the regions as the
/// params' table and the largest level's element count.
fn check_levels(
    op: &'static str,
    shape: [usize; 4],
    levels: &[LevelRegion],
    opts: &TopKOptions,
) -> Result<([[u32; 4]; MAX_LEVELS], u64)> {
    let [_, _, map_h, map_w] = shape;
    check_regions(op, levels, (map_h, map_w))?;
    let mut largest = 0u64;
    for (l, r) in levels.iter().enumerate() {
        let elements = r.height as u64 * r.width as u64 * (opts.anchors * opts.classes) as u64;
        if elements > MAX_ELEMENTS {
            return Err(Error::invalid(
                op,
                format!("level {l} holds {elements} scores; at most {MAX_ELEMENTS} are supported (the flat index is a u32)"),
            ));
        }
        largest = largest.max(elements);
    }
    Ok((region_table(levels), largest))
}

/// What [`check_inputs`] found.
struct Checked<'a> {
    centerness: Option<&'a Tensor>,
    regions: [[u32; 4]; MAX_LEVELS],
    largest: u64,
}

/// Checks everything but the output.
fn check_inputs<'a>(
    ctx: &GpuContext,
    logits: &Tensor,
    centerness: Option<&'a Tensor>,
    levels: &[LevelRegion],
    opts: &TopKOptions,
) -> Result<Checked<'a>> {
    const OP: &str = "top_k";
    if opts.k == 0 || opts.k > u32::MAX as usize {
        return Err(Error::invalid(
            OP,
            format!("k is {}; it must be at least 1 (and fit a u32)", opts.k),
        ));
    }
    if opts.anchors == 0 || opts.classes == 0 {
        return Err(Error::invalid(
            OP,
            format!(
                "{} anchors and {} classes were given; both must be at least 1",
                opts.anchors, opts.classes
            ),
        ));
    }
    if opts.score_thresh.is_nan() {
        return Err(Error::invalid(
            OP,
            "the score threshold is NaN; give a number (torchvision's default is 0.05)",
        ));
    }
    check_shape_in(
        ctx,
        OP,
        "the logits",
        logits.shape(),
        logits.memory_format(),
    )?;
    check_indexable(OP, "the logits", logits)?;
    let shape = logits.shape();
    let [n, channels, map_h, map_w] = shape;
    let ac = opts.anchors.checked_mul(opts.classes);
    if ac != Some(channels) {
        return Err(Error::invalid(
            OP,
            format!(
                "the logits {shape:?} have {channels} channels but {} anchors x {} classes need {}; channel a * C + c holds anchor a's logit of class c",
                opts.anchors,
                opts.classes,
                ac.map_or("more than usize holds".to_string(), |v| v.to_string())
            ),
        ));
    }
    let centerness = match (opts.mode, centerness) {
        (ScoreMode::Sigmoid, None) => None,
        (ScoreMode::SigmoidWithCenterness, Some(c)) => Some(c),
        (ScoreMode::Sigmoid, Some(_)) => {
            return Err(Error::invalid(
                OP,
                "a centerness tensor was given but the mode is ScoreMode::Sigmoid; use ScoreMode::SigmoidWithCenterness to weigh scores by it, or pass None",
            ))
        }
        (ScoreMode::SigmoidWithCenterness, None) => {
            return Err(Error::invalid(
                OP,
                "ScoreMode::SigmoidWithCenterness needs the centerness logits [N, A, Hs, Ws]; pass them, or use ScoreMode::Sigmoid",
            ))
        }
    };
    if let Some(c) = centerness {
        check_stored(
            OP,
            "the centerness",
            c,
            logits.precision(),
            logits.memory_format(),
        )?;
        check_shape_in(ctx, OP, "the centerness", c.shape(), c.memory_format())?;
        check_indexable(OP, "the centerness", c)?;
        let want = [n, opts.anchors, map_h, map_w];
        if c.shape() != want {
            return Err(Error::invalid(
                OP,
                format!(
                    "the centerness has shape {:?}; with logits {shape:?} and {} anchors it must be {want:?}",
                    c.shape(),
                    opts.anchors
                ),
            ));
        }
    }
    let (regions, largest) = check_levels(OP, shape, levels, opts)?;
    Ok(Checked {
        centerness,
        regions,
        largest,
    })
}

/// Builds the [`LAUNCHES`] launches that select, for every image n and level l, the at most
/// `k` candidates with the largest scores, into `out` of shape `[N, L, k, 2]`.
///
/// `logits` is `[N, A*C, Hs, Ws]`, every level's logits stacked in one map (what lies outside
/// the levels' regions is never read); `centerness` is `[N, A, Hs, Ws]`, given exactly when
/// `opts.mode` is [`ScoreMode::SigmoidWithCenterness`]. The logits and centerness are NCHW or
/// channels-last, f32 or f16 (one precision and layout); the output NCHW f32.
///
/// Slot s of segment (n, l) holds two 32-bit words: the score (an f32) and the element's flat
/// index within its level, `((h * width + w) * A + a) * C + c` (torchvision's order), stored as
/// the u32's bits (read it with `f32::to_bits`). Unused slots hold the score -1 and the index
/// [`UNUSED_INDEX`]. The selected elements fill the first slots **in no particular order**:
/// sort them by score where order matters. Where several elements tie at the k-th score, which
/// of them are kept is unspecified. NaN scores are never candidates.
///
/// The scratch (histograms, per-segment state) is made here, once, and cleared by the first
/// launch: the launches may be recorded any number of times.
pub fn prepare(
    ctx: &GpuContext,
    logits: &Tensor,
    centerness: Option<&Tensor>,
    levels: &[LevelRegion],
    opts: &TopKOptions,
    out: &Tensor,
) -> Result<Vec<Dispatch>> {
    const OP: &str = "top_k";
    let Checked {
        centerness,
        regions,
        largest,
    } = check_inputs(ctx, logits, centerness, levels, opts)?;
    let shape = logits.shape();
    let [n, _, map_h, map_w] = shape;
    check_stored(OP, "the output", out, Precision::F32, MemoryFormat::Nchw)?;
    check_output_shape(OP, out, output_shape(shape, levels.len(), opts.k))?;
    check_shape(ctx, OP, "the output", out.shape())?;
    check_indexable(OP, "the output", out)?;
    if out.buffer() == logits.buffer() || centerness.is_some_and(|c| c.buffer() == out.buffer()) {
        return Err(Error::invalid(
            OP,
            "the output shares a buffer with an input; give the output its own tensor",
        ));
    }

    let segments = (n * levels.len()) as u64;
    let hist_bytes = segments * BINS * 4;
    let state_bytes = segments * STATE_WORDS * 4;
    ctx.check_binding_size(OP, "the histograms", hist_bytes)?;
    let blocks = largest
        .div_ceil(MIN_ELEMENTS_PER_GROUP)
        .clamp(1, MAX_GROUPS_PER_SEGMENT);
    let max = ctx.limits().max_compute_workgroups_per_dimension;
    let grid = |what: &'static str, groups: u64| -> Result<[u32; 3]> {
        let groups = u32::try_from(groups).map_err(|_| {
            Error::invalid(
                OP,
                format!(
                    "{what} needs {groups} workgroups, more than a u32 counts; use a smaller batch"
                ),
            )
        })?;
        let g = grid_2d(groups, max);
        ctx.check_grid(what, g)?;
        Ok(g)
    };
    let reset_words = (segments * BINS).max(out.numel() as u64);
    let reset_grid = grid("top_k_reset", reset_words.div_ceil(WG as u64))?;
    let sweep_grid = grid("top_k_histogram", segments * blocks)?;
    let scan_grid = grid("top_k_scan", segments)?;

    let hist = ctx.storage_zeroed("top_k histograms", hist_bytes);
    let state = ctx.storage_zeroed("top_k selection state", state_bytes);
    let params = |radix_pass: u32| TopKParams {
        batch: n as u32,
        levels: levels.len() as u32,
        anchors: opts.anchors as u32,
        classes: opts.classes as u32,
        map_height: map_h as u32,
        map_width: map_w as u32,
        k: opts.k as u32,
        min_key: min_key(opts.score_thresh),
        blocks: blocks as u32,
        radix_pass,
        with_centerness: centerness.is_some() as u32,
        logits_cl: logits
            .memory_format()
            .wgsl_flag(opts.anchors * opts.classes),
        centerness_cl: logits.memory_format().wgsl_flag(opts.anchors),
        _pad: [0; 3],
        regions,
    };
    let uniforms: Vec<_> = (0..3).map(|pass| ctx.uniform(&params(pass))).collect();
    let centerness_binding = match centerness {
        Some(c) => c.binding(),
        None => ctx.placeholder().as_entire_binding(),
    };
    let constants: &[(&str, u32)] = match logits.memory_format() {
        MemoryFormat::Nchw => &[],
        MemoryFormat::ChannelsLast => &[("CHANNELS_LAST", 1)],
    };
    let launch = |entry: &'static str,
                  workgroups: [u32; 3],
                  pass: usize,
                  buffers: &[(u32, wgpu::BindingResource<'_>)]|
     -> Result<Dispatch> {
        let pipeline = pipeline(ctx, &SHADER, logits.precision(), entry, constants)?;
        let mut entries = buffers.to_vec();
        entries.push((5, uniforms[pass].binding()));
        let bind_group = ctx.bind_group(entry, &pipeline, &entries);
        Ok(Dispatch::new(entry, pipeline, bind_group, workgroups))
    };
    let mut dispatches = Vec::with_capacity(LAUNCHES);
    dispatches.push(launch(
        "top_k_reset",
        reset_grid,
        0,
        &[
            (2, out.binding()),
            (3, hist.as_entire_binding()),
            (4, state.as_entire_binding()),
        ],
    )?);
    for pass in 0..3 {
        dispatches.push(launch(
            "top_k_histogram",
            sweep_grid,
            pass,
            &[
                (0, logits.binding()),
                (1, centerness_binding.clone()),
                (3, hist.as_entire_binding()),
                (4, state.as_entire_binding()),
            ],
        )?);
        dispatches.push(launch(
            "top_k_scan",
            scan_grid,
            pass,
            &[
                (3, hist.as_entire_binding()),
                (4, state.as_entire_binding()),
            ],
        )?);
    }
    dispatches.push(launch(
        "top_k_compact",
        sweep_grid,
        0,
        &[
            (0, logits.binding()),
            (1, centerness_binding),
            (2, out.binding()),
            (4, state.as_entire_binding()),
        ],
    )?);
    Ok(dispatches)
}

/// Runs the selection now and returns its output, `[N, L, k, 2]` (downloading it waits for the
/// GPU; [`unpack`] reads it).
pub fn top_k(
    ctx: &GpuContext,
    logits: &Tensor,
    centerness: Option<&Tensor>,
    levels: &[LevelRegion],
    opts: &TopKOptions,
) -> Result<Tensor> {
    check_inputs(ctx, logits, centerness, levels, opts)?;
    let out = Tensor::empty(ctx, output_shape(logits.shape(), levels.len(), opts.k))?;
    let dispatches = prepare(ctx, logits, centerness, levels, opts, &out)?;
    ctx.submit(&dispatches.iter().collect::<Vec<_>>())?;
    Ok(out)
}

/// The selection in a downloaded output of `shape` (`[N, L, k, 2]`): per image, per level,
/// the (score, flat index) pairs of the used slots, in slot order (unsorted).
pub fn unpack(values: &[f32], shape: [usize; 4]) -> Result<Selection> {
    let [n, levels, k, two] = shape;
    let len = n
        .checked_mul(levels)
        .and_then(|v| v.checked_mul(k))
        .and_then(|v| v.checked_mul(2));
    if n == 0 || levels == 0 || k == 0 || two != 2 || len != Some(values.len()) {
        return Err(Error::invalid(
            "top_k::unpack",
            format!(
                "{} values do not make an output of shape {shape:?}; the output is [N, L, k, 2]",
                values.len()
            ),
        ));
    }
    let segments = values.chunks_exact(2 * k).map(|slots| {
        slots
            .chunks_exact(2)
            .map(|s| (s[0], s[1].to_bits()))
            .filter(|&(_, index)| index != UNUSED_INDEX)
            .collect::<Vec<_>>()
    });
    let segments: Vec<_> = segments.collect();
    Ok(segments.chunks(levels).map(|l| l.to_vec()).collect())
}
