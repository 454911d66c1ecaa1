//! Anchors and box decoding for the candidates a per-level top-k selected
//! (`shaders/box_decode.wgsl`): torchvision's `AnchorGenerator` shifts, `BoxCoder` or
//! `BoxLinearCoder` decoding and `clip_boxes_to_image`, in one launch for every image and level;
//! for the RPN's proposals also `remove_small_boxes` and the level as the label.

use crate::error::{Error, Result};
use crate::gpu::{Dispatch, GpuContext};
use crate::kernels::levels::{check_regions, region_table, LevelRegion, REGION_SLOTS};
use crate::kernels::{check_nchw, check_output_shape, layout_dispatch, ShaderSource};
use crate::precision::Precision;
use crate::tensor::{check_shape, check_shape_in, Tensor};

/// The WGSL source.
pub const SHADER: ShaderSource = ShaderSource {
    name: "box_decode.wgsl",
    parts: &["box_decode.wgsl"],
    source: include_str!("../../shaders/box_decode.wgsl"),
    params: &[("DecodeParams", std::mem::size_of::<DecodeParams>())],
    enables: "",
    precisions: &Precision::ALL,
};

/// Words of one candidate record: x1, y1, x2, y2, score, label (u32 bits).
pub const RECORD: usize = 6;

/// Checks that `detections` is `[N, 1, D, 6]`, the records NMS writes and the ops after it
/// read, and returns `(N, D)`.
pub(crate) fn check_records(op: &'static str, detections: [usize; 4]) -> Result<(usize, usize)> {
    let [n, one, d, record] = detections;
    if one != 1 || record != RECORD || n == 0 || d == 0 {
        return Err(Error::invalid(
            op,
            format!(
                "the detections have shape {detections:?}; expected [N, 1, D, {RECORD}] (D records of x1, y1, x2, y2, score, label per image, as NMS writes them)"
            ),
        ));
    }
    Ok((n, d))
}

/// How a regression is turned into a box.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum BoxCoding {
    /// torchvision's `BoxCoder`: centre offsets and log-size deltas, each divided by its
    /// weight, the log-size deltas capped at `xform_clip` (RetinaNet: weights 1, cap
    /// `ln(1000 / 16)`).
    Deltas {
        /// (wx, wy, ww, wh).
        weights: [f32; 4],
        /// The most a log-size delta may be.
        xform_clip: f32,
    },
    /// torchvision's `BoxLinearCoder` with `normalize_by_size` (FCOS): distances from the
    /// anchor's centre to the four sides, in units of the anchor's size.
    Linear,
}

impl BoxCoding {
    /// RetinaNet's coding: weights (1, 1, 1, 1), log-size deltas capped at `ln(1000 / 16)`.
    pub fn retinanet() -> Self {
        BoxCoding::Deltas {
            weights: [1.0; 4],
            xform_clip: (1000.0f64 / 16.0).ln() as f32,
        }
    }
}

/// What a decoded record's label word holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LabelSource {
    /// The candidate's class (the one-stage detectors: NMS runs per class).
    #[default]
    Class,
    /// The index of the level the candidate was selected on (torchvision's RPN, whose
    /// `batched_nms` takes the level as the class, so that NMS runs per level).
    Level,
}

/// Everything the decoding needs besides the tensors.
#[derive(Clone, Debug)]
pub struct DecodeSpec {
    /// Where each level lies in the packed regression map.
    pub regions: Vec<LevelRegion>,
    /// (stride_h, stride_w) of each level: the padded picture's size over the level's, in
    /// integers, as torchvision's `AnchorGenerator` computes them.
    pub strides: Vec<(u32, u32)>,
    /// Each level's cell anchors (x1, y1, x2, y2) at the origin, `anchors` per level.
    pub cell_anchors: Vec<[f32; 4]>,
    /// Anchors per location.
    pub anchors: usize,
    /// Classes of the classification head.
    pub classes: usize,
    /// Boxes are clipped to this (height, width): the resized picture, before padding.
    pub clip: (f32, f32),
    /// How regressions become boxes.
    pub coding: BoxCoding,
    /// torchvision's `remove_small_boxes(boxes, min_size)` after clipping: a box narrower or
    /// lower than this (or NaN) becomes an empty record. `None`: boxes are kept whatever their
    /// size (the one-stage detectors); the RPN's is `Some(1e-3)`.
    pub min_size: Option<f32>,
    /// What the label word holds.
    pub labels: LabelSource,
}

/// Mirrors `DecodeParams` in the WGSL.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct DecodeParams {
    len: u32,
    levels: u32,
    k: u32,
    anchors: u32,
    classes: u32,
    map_height: u32,
    map_width: u32,
    linear: u32,
    weights: [f32; 4],
    clip_height: f32,
    clip_width: f32,
    xform_clip: f32,
    min_size: f32,
    remove_small: u32,
    label_level: u32,
    cl: u32,
    _pad: u32,
    regions: [[u32; 4]; REGION_SLOTS],
    strides: [[u32; 4]; REGION_SLOTS],
}

/// Builds the launch writing `out` `[N, 1, L*K, 6]` from the top-k output `selected`
/// `[N, L, K, 2]` and the packed regression map `regression` `[N, A*4, HS, WS]` (NCHW or
/// channels-last, f32 or f16; the selection and the output are NCHW f32).
pub fn prepare(
    ctx: &GpuContext,
    selected: &Tensor,
    regression: &Tensor,
    spec: &DecodeSpec,
    out: &Tensor,
) -> Result<Dispatch> {
    const OP: &str = "decode_boxes";
    // The selection and the boxes are NCHW records; the regression is laid out as the
    // activations are.
    for t in [selected, out] {
        check_nchw(OP, t)?;
        check_shape(ctx, OP, "a tensor", t.shape())?;
    }
    check_shape_in(
        ctx,
        OP,
        "the regression",
        regression.shape(),
        regression.memory_format(),
    )?;
    // The regression may be stored as the activations are; the selection and the boxes are
    // f32, whatever they are.
    if selected.precision() != Precision::F32 || out.precision() != Precision::F32 {
        return Err(Error::invalid(
            OP,
            "the selection and the output must be float32 tensors (the regression may be f16)",
        ));
    }
    let [n, levels, k, two] = selected.shape();
    let [rn, rc, mh, mw] = regression.shape();
    let a = spec.anchors;
    if two != 2 || levels != spec.regions.len() || levels != spec.strides.len() {
        return Err(Error::invalid(
            OP,
            format!(
                "the selection has shape {:?}; expected [N, {}, K, 2] (one row of K per level)",
                selected.shape(),
                spec.regions.len()
            ),
        ));
    }
    if rn != n || rc != a * 4 {
        return Err(Error::invalid(
            OP,
            format!(
                "the regression map has shape {:?}; expected [{n}, {} (4 per anchor), H, W]",
                regression.shape(),
                a * 4
            ),
        ));
    }
    if spec.cell_anchors.len() != levels * a || spec.classes == 0 || a == 0 {
        return Err(Error::invalid(
            OP,
            format!(
                "{} cell anchors given for {levels} levels of {a} anchors and {} classes",
                spec.cell_anchors.len(),
                spec.classes
            ),
        ));
    }
    check_regions(OP, &spec.regions, (mh, mw))?;
    if spec.min_size.is_some_and(|m| !m.is_finite()) {
        return Err(Error::invalid(
            OP,
            format!(
                "min_size is {:?}; give a finite size in pixels (torchvision's RPN: 1e-3) or None",
                spec.min_size
            ),
        ));
    }
    check_output_shape(OP, out, [n, 1, levels * k, RECORD])?;
    let (weights, xform_clip, linear) = match spec.coding {
        BoxCoding::Deltas {
            weights,
            xform_clip,
        } => (weights, xform_clip, 0),
        BoxCoding::Linear => ([1.0; 4], 0.0, 1),
    };
    let mut strides = [[0; 4]; REGION_SLOTS];
    for (slot, &(h, w)) in strides.iter_mut().zip(&spec.strides) {
        *slot = [h, w, 0, 0];
    }
    let params = DecodeParams {
        len: (n * levels * k) as u32,
        levels: levels as u32,
        k: k as u32,
        anchors: a as u32,
        classes: spec.classes as u32,
        map_height: mh as u32,
        map_width: mw as u32,
        linear,
        weights,
        clip_height: spec.clip.0,
        clip_width: spec.clip.1,
        xform_clip,
        min_size: spec.min_size.unwrap_or(0.0),
        remove_small: spec.min_size.is_some() as u32,
        label_level: (spec.labels == LabelSource::Level) as u32,
        cl: regression.memory_format().wgsl_flag(rc),
        _pad: 0,
        regions: region_table(&spec.regions),
        strides,
    };
    let anchors = ctx.storage_from("cell anchors", &spec.cell_anchors);
    layout_dispatch(
        ctx,
        &SHADER,
        (regression.precision(), regression.memory_format()),
        OP,
        n * levels * k,
        &params,
        &[
            (0, selected.binding()),
            (1, regression.binding()),
            (2, anchors.as_entire_binding()),
            (3, out.binding()),
        ],
        4,
    )
}
