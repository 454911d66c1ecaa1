//! Detectors on the FPN, from pictures to boxes, scores and labels in one GPU graph and one
//! submit; only the final rows are read back. One-stage: torchvision's RetinaNet v1 and v2 and
//! FCOS; two-stage: Faster R-CNN v1 and v2, Mask R-CNN v1 and v2.
//!
//! The one-stage graph: torchvision's transform (normalise, resize, pad), the backbone and FPN,
//! the levels packed into one map, each head layer run once over it, the per-level top-k of the
//! class scores, anchors and box decoding, batched NMS, the boxes scaled back to the pictures.
//!
//! The two-stage graph: the same transform, the backbone and FPN with the max-pool P6
//! (torchvision's `pool`), the region proposal network on P2..P6 ([`RegionProposalNetwork`]),
//! then the RoI heads on P2..P5 with those proposals ([`RoiHeads`]): pooling, box head,
//! predictor, softmax, decoding, batched NMS, the boxes scaled back to the pictures. The
//! proposals never leave the GPU. Mask R-CNN then runs its mask branch ([`MaskHeads`]) on the
//! kept boxes in the same graph and pastes each detection's mask into its picture; of the
//! pasted masks `[N D, 1, H, W]` only each picture's first K rows (its K detections) are read
//! back.
//!
//! Activations are laid out as the FPN's are ([`DetectorOptions::layout`]): in f16 where
//! cooperative matrices run, channels-last with every convolution on them; the selections,
//! boxes and rows of the post-processing are NCHW f32 records whatever the activations are.
//! The two-stage graphs' box candidates and linear layers have NCHW kernels only, so those
//! graphs stay NCHW.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use crate::error::{Error, Result};
use crate::gpu::GpuContext;
use crate::graph::executor::{Executor, ExecutorOptions, LayoutChoice};
use crate::graph::ops::detect::{
    AnchorSpec, BatchedNms, BoxCoding, DecodeBoxes, DetectionGeometry, DetectionTransform,
    LabelSource, Normalize, ResizeRule, ScoreMode, StackLevels, TopKScores, MAX_CANDIDATES,
};
use crate::graph::{Graph, Value};
use crate::model::checkpoint::Checkpoint;
use crate::model::config::{ExtraLevels, ExtraSource, FpnConfig, Layout};
use crate::model::fcos_head::FcosHead;
use crate::model::fpn::{Fpn, FpnOptions};
use crate::model::head_tower::TowerStyle;
use crate::model::mask_heads::{rename_mask_fcn, MaskHeads, MaskHeadsConfig};
use crate::model::retinanet_head::RetinaNetHead;
use crate::model::roi_heads::{BoxHeadKind, RoiHeads, RoiHeadsConfig, RoiHeadsOptions};
use crate::model::rpn::{rename_v1_conv, RegionProposalNetwork, RpnConfig, RpnOptions};
use crate::model::{DETECTIONS, MASKS, PYRAMID_CHANNELS};
use crate::precision::Precision;
use crate::tensor::Tensor;
use crate::tensor_file::{read_tensors, HostTensor, TensorMap};
use crate::weights::{is_ignored, VarBuilder, VarStore};

/// The detectors this crate runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DetectorKind {
    /// torchvision's `retinanet_resnet50_fpn` (v1): P3..P7 with P6 from P5, heads of four
    /// 3x3 convs without norm, nine anchors per location.
    RetinaNet,
    /// torchvision's `retinanet_resnet50_fpn_v2`: P6 from C5, every hidden head layer a conv
    /// without bias, `GroupNorm(32)` and ReLU; anchors, box coding and post-processing as v1.
    RetinaNetV2,
    /// torchvision's `fcos_resnet50_fpn`: P6 from P5, heads of conv + `GroupNorm(32)` + ReLU,
    /// one anchor per location (sides 8..128), boxes as distances to the sides scaled by the
    /// anchor's size, scores `sqrt(sigmoid(class) * sigmoid(centerness))`.
    Fcos,
    /// torchvision's `fasterrcnn_resnet50_fpn` (v1): C2..C5 and the max-pool P6, an RPN head
    /// of one 3x3 conv, the `TwoMLPHead` box head and softmax class scores.
    FasterRcnn,
    /// torchvision's `fasterrcnn_resnet50_fpn_v2`: batch norm in the FPN's convs, an RPN head
    /// of two 3x3 convs, the `FastRCNNConvFCHead` box head (four 3x3 convs with batch norm,
    /// one linear layer).
    FasterRcnnV2,
    /// torchvision's `maskrcnn_resnet50_fpn` (v1): Faster R-CNN v1 and the mask branch
    /// (`MaskRCNNHeads` of four 3x3 convs with biases, `MaskRCNNPredictor`), each detection's
    /// mask pasted into its picture.
    MaskRcnn,
    /// torchvision's `maskrcnn_resnet50_fpn_v2`: Faster R-CNN v2 and the mask branch with
    /// batch norm after each of its convs.
    MaskRcnnV2,
}

impl DetectorKind {
    /// Every kind, in the order [`DetectorKind::name`]s are listed.
    pub const ALL: [DetectorKind; 7] = [
        DetectorKind::RetinaNet,
        DetectorKind::RetinaNetV2,
        DetectorKind::Fcos,
        DetectorKind::FasterRcnn,
        DetectorKind::FasterRcnnV2,
        DetectorKind::MaskRcnn,
        DetectorKind::MaskRcnnV2,
    ];

    /// The name the command line takes, as torchvision's builders have it (less
    /// `_resnet50_fpn`): `retinanet`, `retinanet_v2`, `fcos`, `fasterrcnn`, `fasterrcnn_v2`,
    /// `maskrcnn`, `maskrcnn_v2`.
    pub fn name(self) -> &'static str {
        match self {
            DetectorKind::RetinaNet => "retinanet",
            DetectorKind::RetinaNetV2 => "retinanet_v2",
            DetectorKind::Fcos => "fcos",
            DetectorKind::FasterRcnn => "fasterrcnn",
            DetectorKind::FasterRcnnV2 => "fasterrcnn_v2",
            DetectorKind::MaskRcnn => "maskrcnn",
            DetectorKind::MaskRcnnV2 => "maskrcnn_v2",
        }
    }

    /// Whether the detector has a second stage (region proposals, then RoI heads).
    pub fn is_two_stage(self) -> bool {
        !matches!(
            self,
            DetectorKind::RetinaNet | DetectorKind::RetinaNetV2 | DetectorKind::Fcos
        )
    }

    /// Whether the detector gives each detection a mask (Mask R-CNN).
    pub fn has_masks(self) -> bool {
        matches!(self, DetectorKind::MaskRcnn | DetectorKind::MaskRcnnV2)
    }

    /// Whether a two-stage detector is torchvision's v2 of it: batch norm in the FPN's convs,
    /// two RPN convs, the conv box head (and Mask R-CNN's mask convs with batch norm).
    fn is_two_stage_v2(self) -> bool {
        matches!(self, DetectorKind::FasterRcnnV2 | DetectorKind::MaskRcnnV2)
    }

    /// The anchors of each level (a two-stage detector's are its RPN's).
    pub fn anchors(self) -> AnchorSpec {
        match self {
            DetectorKind::RetinaNet | DetectorKind::RetinaNetV2 => AnchorSpec::retinanet(),
            DetectorKind::Fcos => AnchorSpec::fcos(),
            _ => AnchorSpec::rpn(),
        }
    }

    /// How a one-stage head's regressions become boxes (a two-stage detector's RPN codes its
    /// proposals as RetinaNet does; its RoI heads use the weights (10, 10, 5, 5)).
    pub fn box_coding(self) -> BoxCoding {
        match self {
            DetectorKind::Fcos => BoxCoding::Linear,
            _ => BoxCoding::retinanet(),
        }
    }

    /// How a one-stage head's class logits become scores (a two-stage detector ranks its
    /// proposals by the objectness's sigmoid and scores its boxes by a softmax).
    pub fn score_mode(self) -> ScoreMode {
        match self {
            DetectorKind::Fcos => ScoreMode::SigmoidWithCenterness,
            _ => ScoreMode::Sigmoid,
        }
    }

    /// Where a one-stage detector's P6 comes from in torchvision's model of this kind (the
    /// two-stage ones have no P7 and take P6 by a max pool: see [`DetectorKind::extra_levels`]).
    pub fn p6_source(self) -> ExtraSource {
        match self {
            DetectorKind::RetinaNetV2 => ExtraSource::Input,
            _ => ExtraSource::Output,
        }
    }

    /// The levels torchvision's FPN of this kind adds above C5: P6 and P7 for the one-stage
    /// detectors, the max-pool P6 (`pool`) for the two-stage ones.
    pub fn extra_levels(self) -> ExtraLevels {
        if self.is_two_stage() {
            ExtraLevels::MaxPool(1)
        } else {
            ExtraLevels::p6p7(self.p6_source())
        }
    }

    /// The backbone stages torchvision's FPN of this kind reads: C3..C5 for the one-stage
    /// detectors, C2..C5 for the two-stage ones.
    pub fn returned(self) -> [bool; 5] {
        if self.is_two_stage() {
            [false, true, true, true, true]
        } else {
            [false, false, true, true, true]
        }
    }
}

impl fmt::Display for DetectorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DetectorKind::RetinaNet => "RetinaNet",
            DetectorKind::RetinaNetV2 => "RetinaNet v2",
            DetectorKind::Fcos => "FCOS",
            DetectorKind::FasterRcnn => "Faster R-CNN",
            DetectorKind::FasterRcnnV2 => "Faster R-CNN v2",
            DetectorKind::MaskRcnn => "Mask R-CNN",
            DetectorKind::MaskRcnnV2 => "Mask R-CNN v2",
        })
    }
}

impl FromStr for DetectorKind {
    type Err = Error;

    /// Parses a [`DetectorKind::name`].
    fn from_str(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = Self::ALL.iter().map(|k| k.name()).collect();
                Error::invalid(
                    "DetectorKind",
                    format!(
                        "unknown detector `{s}`; the ones available are {}",
                        names.join(", ")
                    ),
                )
            })
    }
}

/// torchvision's box head width (`TwoMLPHead`'s and v2's linear layers): 1024.
pub const REPRESENTATION_SIZE: usize = 1024;

/// The channels of Mask R-CNN's `conv5_mask` (torchvision's `dim_reduced`): 256.
pub const MASK_DIM_REDUCED: usize = 256;

/// A detector's structure: its kind, backbone and FPN, and classes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DetectorConfig {
    /// Which detector.
    pub kind: DetectorKind,
    /// The backbone and FPN.
    pub backbone: FpnConfig,
    /// Classes of the classification head (torchvision's `num_classes`, background included
    /// where the model has one: 91 for COCO).
    pub num_classes: usize,
    /// Two-stage detectors: the width of the box head's linear layers (v1's `fc6` and `fc7`,
    /// v2's one linear layer after its four convs of the pyramid's width), torchvision's
    /// `representation_size`, [`REPRESENTATION_SIZE`]. One-stage detectors have no box head
    /// and leave it at that.
    pub representation: usize,
}

impl DetectorConfig {
    /// torchvision's ResNet-50 detector of `kind` with `num_classes` classes: for the one-stage
    /// kinds the backbone returns C3..C5 and the FPN adds P6 and P7, P6 from where `kind` takes
    /// it; for Faster and Mask R-CNN it returns C2..C5 and adds the max-pool P6, v2 with batch
    /// norm in the FPN's convs.
    pub fn resnet50(kind: DetectorKind, num_classes: usize) -> Self {
        let mut backbone = FpnConfig::torchvision([3, 4, 6, 3]);
        backbone.returned = kind.returned();
        backbone.extra = kind.extra_levels();
        backbone.fpn_norm = kind.is_two_stage_v2();
        DetectorConfig {
            kind,
            backbone,
            num_classes,
            representation: REPRESENTATION_SIZE,
        }
    }

    /// torchvision's `fasterrcnn_resnet50_fpn` with `num_classes` classes.
    pub fn fasterrcnn_resnet50(num_classes: usize) -> Self {
        Self::resnet50(DetectorKind::FasterRcnn, num_classes)
    }

    /// torchvision's `fasterrcnn_resnet50_fpn_v2` with `num_classes` classes.
    pub fn fasterrcnn_resnet50_v2(num_classes: usize) -> Self {
        Self::resnet50(DetectorKind::FasterRcnnV2, num_classes)
    }

    /// torchvision's `maskrcnn_resnet50_fpn` with `num_classes` classes.
    pub fn maskrcnn_resnet50(num_classes: usize) -> Self {
        Self::resnet50(DetectorKind::MaskRcnn, num_classes)
    }

    /// torchvision's `maskrcnn_resnet50_fpn_v2` with `num_classes` classes.
    pub fn maskrcnn_resnet50_v2(num_classes: usize) -> Self {
        Self::resnet50(DetectorKind::MaskRcnnV2, num_classes)
    }

    /// Mask R-CNN's mask branch as torchvision's builders make it (four 3x3 convs of the
    /// pyramid's width, `dim_reduced` 256; v2 with batch norm), on this detector's pyramid
    /// and classes; `None` for the other kinds.
    pub fn mask_heads(&self) -> Option<MaskHeadsConfig> {
        self.kind.has_masks().then(|| MaskHeadsConfig {
            in_channels: self.backbone.pyramid_channels,
            layers: vec![self.backbone.pyramid_channels; 4],
            batch_norm: self.kind.is_two_stage_v2(),
            dim_reduced: MASK_DIM_REDUCED,
            num_classes: self.num_classes,
            bn_eps: 1e-5,
        })
    }

    /// A two-stage detector's RPN head: v1 one conv, v2 two, of the pyramid's width.
    fn rpn(&self) -> RpnConfig {
        RpnConfig {
            channels: self.backbone.pyramid_channels,
            conv_depth: if self.kind.is_two_stage_v2() { 2 } else { 1 },
        }
    }

    /// A two-stage detector's RoI heads, as torchvision's builders make them.
    fn roi_heads(&self) -> RoiHeadsConfig {
        let c = self.backbone.pyramid_channels;
        let box_head = if self.kind.is_two_stage_v2() {
            BoxHeadKind::ConvFc {
                convs: vec![c; 4],
                fcs: vec![self.representation],
            }
        } else {
            BoxHeadKind::TwoMlp {
                representation: self.representation,
            }
        };
        RoiHeadsConfig {
            in_channels: c,
            box_head,
            num_classes: self.num_classes,
            bn_eps: 1e-5,
        }
    }

    /// torchvision's `retinanet_resnet50_fpn` with `num_classes` classes.
    pub fn retinanet_resnet50(num_classes: usize) -> Self {
        Self::resnet50(DetectorKind::RetinaNet, num_classes)
    }

    /// torchvision's `retinanet_resnet50_fpn_v2` with `num_classes` classes.
    pub fn retinanet_resnet50_v2(num_classes: usize) -> Self {
        Self::resnet50(DetectorKind::RetinaNetV2, num_classes)
    }

    /// torchvision's `fcos_resnet50_fpn` with `num_classes` classes.
    pub fn fcos_resnet50(num_classes: usize) -> Self {
        Self::resnet50(DetectorKind::Fcos, num_classes)
    }
}

/// How a detector runs, named and defaulted as torchvision's constructor arguments (the
/// defaults in parentheses are RetinaNet's, which [`Default`] gives; FCOS's and Faster and
/// Mask R-CNN's differ: see [`DetectorOptions::for_kind`]).
///
/// For Faster and Mask R-CNN, `score_thresh`, `nms_thresh` and `detections_per_img` are torchvision's
/// `box_score_thresh`, `box_nms_thresh` and `box_detections_per_img` (the RoI heads'), `rpn`
/// holds the proposals' settings and `topk_candidates` is not used; the one-stage detectors
/// do not use `rpn`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DetectorOptions {
    /// The shorter side pictures are resized to (800).
    pub min_size: usize,
    /// The most the longer side may be after resizing (1333).
    pub max_size: usize,
    /// Candidates scoring at most this are dropped (0.05; FCOS 0.2).
    pub score_thresh: f32,
    /// Boxes of one class overlapping a better one by more than this IoU are dropped (0.5;
    /// FCOS 0.6).
    pub nms_thresh: f32,
    /// The most detections kept per picture (300; FCOS and Faster R-CNN 100).
    pub detections_per_img: usize,
    /// The best candidates kept per level before NMS (1000; one-stage detectors only).
    pub topk_candidates: usize,
    /// The region proposal network's settings (two-stage detectors only; torchvision's
    /// `rpn_pre_nms_top_n_test` 1000, `rpn_post_nms_top_n_test` 1000, `rpn_nms_thresh` 0.7,
    /// `rpn_score_thresh` 0).
    pub rpn: RpnOptions,
    /// How the weights and activations of the backbone, FPN and heads are stored (not one of
    /// torchvision's arguments): f32, the default, or f16 where the adapter has it (half the
    /// memory; f32 sums). The post-processing runs on f32 scores and boxes either way.
    pub precision: Precision,
    /// How the activations are laid out (not one of torchvision's arguments): by default
    /// channels-last f16 with every convolution on cooperative matrices where the adapter has
    /// them and they passed their check, NCHW elsewhere, as for the FPN (see
    /// [`LayoutChoice`]). The selections, boxes and rows of the post-processing are NCHW
    /// records either way.
    pub layout: LayoutChoice,
}

impl Default for DetectorOptions {
    /// RetinaNet's defaults (v1 and v2 share them).
    fn default() -> Self {
        Self::for_kind(DetectorKind::RetinaNet)
    }
}

impl DetectorOptions {
    /// torchvision's defaults for a detector of `kind`: its constructor's arguments.
    pub fn for_kind(kind: DetectorKind) -> Self {
        let (score_thresh, nms_thresh, detections_per_img) = match kind {
            DetectorKind::RetinaNet | DetectorKind::RetinaNetV2 => (0.05, 0.5, 300),
            DetectorKind::Fcos => (0.2, 0.6, 100),
            // Mask R-CNN's builders take Faster R-CNN's defaults.
            _ => (0.05, 0.5, 100),
        };
        DetectorOptions {
            min_size: 800,
            max_size: 1333,
            score_thresh,
            nms_thresh,
            detections_per_img,
            topk_candidates: 1000,
            rpn: RpnOptions::default(),
            precision: Precision::F32,
            layout: LayoutChoice::Auto,
        }
    }

    /// The same options with the activations stored in `precision`.
    pub fn with_precision(self, precision: Precision) -> Self {
        DetectorOptions { precision, ..self }
    }

    /// The same options with the activations laid out as `layout` says.
    pub fn with_layout(self, layout: LayoutChoice) -> Self {
        DetectorOptions { layout, ..self }
    }

    /// The RoI heads' settings, torchvision's `box_*` arguments.
    fn roi_heads(&self) -> RoiHeadsOptions {
        RoiHeadsOptions {
            box_score_thresh: self.score_thresh,
            box_nms_thresh: self.nms_thresh,
            box_detections_per_img: self.detections_per_img,
        }
    }

    fn check(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::invalid("DetectorOptions", msg));
        if self.min_size == 0 || self.max_size == 0 {
            return bad(format!(
                "min_size {} and max_size {} must be positive",
                self.min_size, self.max_size
            ));
        }
        if self.detections_per_img == 0 || self.topk_candidates == 0 {
            return bad(format!(
                "detections_per_img {} and topk_candidates {} must be positive",
                self.detections_per_img, self.topk_candidates
            ));
        }
        // Each level's top-k goes to one batched NMS, which takes MAX_CANDIDATES records per
        // picture; checked before any shape is computed from the count.
        if self.topk_candidates > MAX_CANDIDATES {
            return bad(format!(
                "topk_candidates {} must be at most {MAX_CANDIDATES}: every level's candidates go \
                 to one NMS, which takes {MAX_CANDIDATES} per picture (torchvision's default: 1000)",
                self.topk_candidates
            ));
        }
        if !self.score_thresh.is_finite() || !self.nms_thresh.is_finite() {
            return bad(format!(
                "score_thresh {} and nms_thresh {} must be finite",
                self.score_thresh, self.nms_thresh
            ));
        }
        Ok(())
    }
}

/// One picture's detections, best first: boxes (x1, y1, x2, y2) in the picture's pixels, their
/// scores and their class indices, and for Mask R-CNN their masks.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Detections {
    /// (x1, y1, x2, y2) per detection, in input pixels.
    pub boxes: Vec<[f32; 4]>,
    /// Scores in (score_thresh, 1].
    pub scores: Vec<f32>,
    /// Class indices, as torchvision's `labels`.
    pub labels: Vec<i64>,
    /// Mask R-CNN: each detection's mask in the picture, in the detections' order; `None`
    /// for the detectors without masks.
    pub masks: Option<Masks>,
}

impl Detections {
    /// How many detections.
    pub fn len(&self) -> usize {
        self.scores.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.scores.is_empty()
    }
}

/// One picture's Mask R-CNN masks, torchvision's `masks` `[K, 1, H, W]`: per detection, the
/// probability (f32 in 0..1) that each pixel of the picture (H x W, the picture's own size)
/// belongs to the detected object, the class's mask pasted into the detection's box; zero
/// outside the box. torchvision's and COCO's evaluation take the pixels above 0.5 as the
/// object.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Masks {
    /// The picture's height H.
    pub height: usize,
    /// The picture's width W.
    pub width: usize,
    /// `K * H * W` probabilities: detection `i`'s mask is `data[i * H * W..(i + 1) * H * W]`,
    /// row-major (pixel `(x, y)` at `y * W + x`).
    pub data: Vec<f32>,
}

impl Masks {
    /// How many masks (K).
    pub fn len(&self) -> usize {
        self.data
            .len()
            .checked_div(self.height * self.width)
            .unwrap_or(0)
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The shape `[K, 1, H, W]`.
    pub fn shape(&self) -> [usize; 4] {
        [self.len(), 1, self.height, self.width]
    }

    /// Detection `i`'s mask, `H * W` probabilities row-major; `None` past the last.
    pub fn get(&self, i: usize) -> Option<&[f32]> {
        let plane = self.height * self.width;
        self.data.get(i * plane..(i + 1) * plane)
    }
}

/// What a forward leaves on the GPU ([`Detector::forward_outputs`]).
pub struct DetectorOutputs {
    /// The detections `[N, 1, D, 6]`: per slot x1, y1, x2, y2, score, label bits; best first,
    /// empty slots (score -1) after the last.
    pub detections: Tensor,
    /// Mask R-CNN: the masks pasted into the pictures `[N D, 1, H, W]` (f32 probabilities),
    /// row `i D + k` for picture `i`'s detection `k`. Only each picture's first K rows, its K
    /// detections', are written: the others hold whatever the memory held. `None` for the
    /// other detectors.
    pub masks: Option<Tensor>,
}

/// A detector whose weights live on the GPU, ready to run on batches of pictures of any size.
pub struct Detector {
    executor: Executor,
    config: DetectorConfig,
    options: DetectorOptions,
    origin: String,
}

impl Detector {
    /// Loads a whole torchvision detection `state_dict` saved as safetensors (`backbone.` and
    /// `head.`); the detector's kind and the backbone's structure come from its names and
    /// shapes, the classes from the head's.
    pub fn from_safetensors(
        ctx: &GpuContext,
        path: &Path,
        options: DetectorOptions,
    ) -> Result<Self> {
        Self::from_safetensors_with(ctx, path, |_| options)
    }

    /// [`Detector::from_safetensors`] with options chosen once the detector is known (its
    /// kind's defaults, say: [`DetectorOptions::for_kind`]).
    pub fn from_safetensors_with(
        ctx: &GpuContext,
        path: &Path,
        options: impl FnOnce(&DetectorConfig) -> DetectorOptions,
    ) -> Result<Self> {
        let tensors = read_tensors(path, is_ignored)?;
        Self::from_tensors_with(ctx, &path.display().to_string(), tensors, options)
    }

    /// [`Detector::from_safetensors`] on tensors already in memory (a page's fetched file, say);
    /// `origin` names them in errors.
    pub fn from_tensors(
        ctx: &GpuContext,
        origin: &str,
        tensors: TensorMap,
        options: DetectorOptions,
    ) -> Result<Self> {
        Self::from_tensors_with(ctx, origin, tensors, |_| options)
    }

    /// [`Detector::from_tensors`] with options chosen once the detector is known.
    pub fn from_tensors_with(
        ctx: &GpuContext,
        origin: &str,
        tensors: TensorMap,
        options: impl FnOnce(&DetectorConfig) -> DetectorOptions,
    ) -> Result<Self> {
        let mut tensors = tensors;
        // A page's or a caller's map may hold PyTorch's bookkeeping (files read from disk
        // have it dropped already); no layer reads it.
        tensors.retain(|name, _| !is_ignored(name));
        rename_v1_head_layers(&mut tensors, origin);
        rename_v1_conv(&mut tensors, origin);
        rename_mask_fcn(&mut tensors, origin);
        // The backbone's layout is recognised from its own tensors, which the checkpoint
        // reader takes apart; the detector reads every tensor from the whole map.
        let backbone: TensorMap = tensors
            .iter()
            .filter(|(n, _)| n.starts_with("backbone.") || n.starts_with("neck."))
            .map(|(n, t)| (n.clone(), t.clone()))
            .collect();
        let store = VarStore::from_tensors(origin, tensors);
        if backbone.is_empty() {
            // No `backbone.`: say what the file is rather than that its backbone is missing.
            Self::recognise(&store, FpnConfig::torchvision([1; 4]))?;
        }
        let checkpoint = Checkpoint::from_store(VarStore::from_tensors(origin, backbone))?;
        let config = Self::recognise(&store, checkpoint.config())?;
        let options = options(&config);
        Self::new(ctx, &store, config, options)
    }

    /// The kind of detector a head's tensor names say: FCOS has a centerness branch, RetinaNet
    /// v2 a norm as the second module of its first hidden layer.
    fn kind_of(names: &[&str]) -> DetectorKind {
        if names
            .iter()
            .any(|n| n.starts_with("head.regression_head.bbox_ctrness."))
        {
            DetectorKind::Fcos
        } else if names
            .iter()
            .any(|n| n.starts_with("head.classification_head.conv.0.1."))
        {
            DetectorKind::RetinaNetV2
        } else {
            DetectorKind::RetinaNet
        }
    }

    /// The detector a `state_dict`'s head names and shapes describe, on `backbone`.
    fn recognise(store: &VarStore, backbone: FpnConfig) -> Result<DetectorConfig> {
        let origin = store.origin();
        let names = store.names();
        if backbone.layout != Layout::Torchvision {
            return Err(Error::invalid(
                "Detector",
                format!(
                    "{origin} is a {} checkpoint; detectors load with torchvision's head names \
                     only so far (`head.classification_head.*`, `rpn.head.*`, \
                     `roi_heads.box_head.*`). `fpn run --weights` runs its backbone and FPN",
                    backbone.layout
                ),
            ));
        }
        if names
            .iter()
            .any(|n| n.starts_with("rpn.") || n.starts_with("roi_heads."))
        {
            return Self::recognise_two_stage(store, backbone);
        }
        if !names.iter().any(|n| n.starts_with("head.")) {
            return Err(Error::invalid(
                "Detector",
                format!(
                    "{origin} holds a backbone and FPN but no detection head (no `head.`, \
                     `rpn.` or `roi_heads.` tensors); run it with `fpn run`, or give a whole \
                     RetinaNet, FCOS or Faster R-CNN state_dict"
                ),
            ));
        }
        let kind = Self::kind_of(&names);
        let anchors = kind.anchors().per_location();
        let logits = "head.classification_head.cls_logits.weight";
        let classes = match store.shape_of(logits) {
            Some(&[out, PYRAMID_CHANNELS, 3, 3]) if out % anchors == 0 && out > 0 => out / anchors,
            Some(shape) => {
                return Err(Error::invalid(
                    "Detector",
                    format!(
                        "{origin}: `{logits}` has shape {shape:?}; a {kind} head has \
                         [{anchors} anchors x classes, {PYRAMID_CHANNELS}, 3, 3]"
                    ),
                ))
            }
            None => {
                return Err(Error::invalid(
                    "Detector",
                    format!(
                        "{origin} has `head.` tensors but no `{logits}`; it is not a RetinaNet \
                         or FCOS"
                    ),
                ))
            }
        };
        if !backbone.extra.is_p6p7()
            || backbone.returned != [false, false, true, true, true]
            || backbone.pyramid_channels != PYRAMID_CHANNELS
        {
            return Err(Error::invalid(
                "Detector",
                format!(
                    "{origin}: the FPN is {}; {kind} needs C3..C5, P6 and P7 \
                     (LastLevelP6P7) and {PYRAMID_CHANNELS} channels",
                    backbone.describe()
                ),
            ));
        }
        Ok(DetectorConfig {
            kind,
            backbone,
            num_classes: classes,
            representation: REPRESENTATION_SIZE,
        })
    }

    /// The Faster R-CNN a `state_dict`'s `rpn.*` and `roi_heads.*` names and shapes describe,
    /// on `backbone`: v1 or v2 from the box head (`fc6`, or convs at `box_head.0.0`), the
    /// classes and the representation size from the shapes; the RPN head's depth must be the
    /// kind's.
    fn recognise_two_stage(store: &VarStore, backbone: FpnConfig) -> Result<DetectorConfig> {
        let origin = store.origin();
        let names = store.names();
        let bad = |msg: String| Err(Error::invalid("Detector", format!("{origin}: {msg}")));
        let has_masks = names.iter().any(|n| n.starts_with("roi_heads.mask_"));
        let family = if has_masks {
            "Mask R-CNN"
        } else {
            "Faster R-CNN"
        };
        let kind_of_levels = DetectorKind::FasterRcnn;
        if backbone.returned != kind_of_levels.returned()
            || backbone.extra != kind_of_levels.extra_levels()
        {
            return bad(format!(
                "the FPN is {}; {family} needs C2..C5 and the max-pool P6 \
                 (LastLevelMaxPool)",
                backbone.describe()
            ));
        }
        let c = backbone.pyramid_channels;
        let heads = RoiHeadsConfig::recognise(store, c)?;
        let (kind, representation) = match &heads.box_head {
            BoxHeadKind::TwoMlp { representation } => (DetectorKind::FasterRcnn, *representation),
            BoxHeadKind::ConvFc { convs, fcs } => match fcs[..] {
                [r] if convs.len() == 4 && convs.iter().all(|&w| w == c) => {
                    (DetectorKind::FasterRcnnV2, r)
                }
                _ => {
                    return bad(format!(
                        "the box head has convs {convs:?} and linear layers {fcs:?}; {family} \
                         v2's (FastRCNNConvFCHead as torchvision builds it) has four convs of \
                         the pyramid's {c} channels and one linear layer"
                    ))
                }
            },
        };
        let kind = match (has_masks, kind) {
            (false, kind) => kind,
            (true, DetectorKind::FasterRcnn) => DetectorKind::MaskRcnn,
            (true, _) => DetectorKind::MaskRcnnV2,
        };
        let config = DetectorConfig {
            kind,
            backbone,
            num_classes: heads.num_classes,
            representation,
        };
        let depth = (0..)
            .take_while(|i| {
                store
                    .shape_of(&format!("rpn.head.conv.{i}.0.weight"))
                    .is_some()
            })
            .count();
        let want = config.rpn().conv_depth;
        if depth != want {
            return bad(format!(
                "the RPN head has {depth} 3x3 conv(s) (`rpn.head.conv.{{i}}.0.weight`); the \
                 box head is {kind}'s, whose RPN head has {want}"
            ));
        }
        if let Some(want) = config.mask_heads() {
            Self::check_mask_heads(store, &want, kind)?;
        }
        Ok(config)
    }

    /// Checks that the mask branch of a `state_dict` is the one torchvision builds for `kind`
    /// with the box branch's classes (`want`): the predictors' classes agree, v2's convs have
    /// batch norm and v1's biases, and the widths are the builders'.
    fn check_mask_heads(
        store: &VarStore,
        want: &MaskHeadsConfig,
        kind: DetectorKind,
    ) -> Result<()> {
        let origin = store.origin();
        let bad = |msg: String| Err(Error::invalid("Detector", format!("{origin}: {msg}")));
        let got = MaskHeadsConfig::recognise(store, want.in_channels)?;
        if got.num_classes != want.num_classes {
            return bad(format!(
                "the mask predictor has {} classes \
                 (`roi_heads.mask_predictor.mask_fcn_logits.weight`) but the box predictor {} \
                 (`roi_heads.box_predictor.cls_score.weight`); a Mask R-CNN's two branches \
                 share their classes: give both from one model",
                got.num_classes, want.num_classes
            ));
        }
        if got.batch_norm != want.batch_norm {
            let (has, needs) = if got.batch_norm {
                (
                    "batch norm (`roi_heads.mask_head.0.1.*`)",
                    "biases and no norm",
                )
            } else {
                ("biases and no norm", "batch norm after each conv")
            };
            return bad(format!(
                "the mask head's convs have {has} but the box head is {kind}'s, whose mask \
                 head has {needs}; give both branches of one model"
            ));
        }
        if got.layers != want.layers || got.dim_reduced != want.dim_reduced {
            return bad(format!(
                "the mask head has convs {:?} and conv5_mask {} channels wide; {kind}'s, as \
                 torchvision builds it, has four convs of the pyramid's {} channels and \
                 conv5_mask {} wide",
                got.layers, got.dim_reduced, want.in_channels, want.dim_reduced
            ));
        }
        Ok(())
    }

    /// Deterministic seeded random weights, for tests, demos and benchmarks.
    pub fn random(
        ctx: &GpuContext,
        config: DetectorConfig,
        seed: u64,
        options: DetectorOptions,
    ) -> Result<Self> {
        Self::new(ctx, &VarStore::random(seed), config, options)
    }

    /// The seeded random weights [`Detector::random`] uses, as a torchvision `state_dict`.
    pub fn random_state_dict(config: DetectorConfig, seed: u64) -> Result<TensorMap> {
        let store = VarStore::random_recording(seed);
        Self::graph(&store, config, &DetectorOptions::default())?;
        Ok(store.into_recorded().unwrap_or_default())
    }

    /// Builds the detector's graph from `store` and uploads its weights.
    pub fn new(
        ctx: &GpuContext,
        store: &VarStore,
        config: DetectorConfig,
        options: DetectorOptions,
    ) -> Result<Self> {
        let graph = Self::graph(store, config, &options)?;
        let fpn = FpnOptions::default();
        let executor = Executor::build(
            ctx,
            graph,
            ExecutorOptions {
                fusion: fpn.fusion,
                algorithms: fpn.algorithms,
                precision: options.precision,
                tuning: fpn.tuning,
                layout: options.layout,
            },
        )?;
        Ok(Detector {
            executor,
            config,
            options,
            origin: store.origin(),
        })
    }

    /// torchvision's `GeneralizedRCNNTransform` resize for `options`.
    fn resize(options: &DetectorOptions) -> ResizeRule {
        ResizeRule {
            min_size: options.min_size,
            max_size: options.max_size,
            size_divisible: 32,
        }
    }

    /// The geometry of a one-stage detector's levels for `options`.
    fn geometry(options: &DetectorOptions) -> DetectionGeometry {
        DetectionGeometry {
            resize: Self::resize(options),
            levels: vec![3, 4, 5, 6, 7],
        }
    }

    /// The unoptimised graph: pictures in, `detections` `[N, 1, detections_per_img, 6]` out,
    /// and for Mask R-CNN `masks` `[N detections_per_img, 1, H, W]`.
    pub fn graph(
        store: &VarStore,
        config: DetectorConfig,
        options: &DetectorOptions,
    ) -> Result<Graph> {
        options.check()?;
        if config.kind.is_two_stage() {
            return Self::two_stage_graph(store, config, options);
        }
        let geometry = Self::geometry(options);
        let kind = config.kind;
        let anchors = kind.anchors();
        let a = anchors.per_location();
        let vb = store.root();
        let mut g = Graph::new();
        let pictures = g.input();
        g.set_stage("transform");
        let x = g.push(
            "transform",
            DetectionTransform {
                geometry: geometry.clone(),
                normalize: Normalize::IMAGENET,
            },
            &[pictures],
        );
        let levels = Fpn::levels(&vb.pp("backbone"), config.backbone, &mut g, x)?;
        let head = Head::new(&vb.pp("head"), kind, a, config.num_classes);
        store.finish_for(&format!(
            "{kind} ({} classes) on {}",
            config.num_classes,
            config.backbone.describe()
        ))?;
        if levels.len() != geometry.levels.len() {
            return Err(Error::invalid(
                "Detector",
                format!(
                    "the FPN gives {} levels; {kind} runs on P3..P7",
                    levels.len()
                ),
            ));
        }
        g.set_stage("heads");
        let mut stack_inputs: Vec<_> = levels.iter().map(|(_, v)| *v).collect();
        stack_inputs.push(pictures);
        let packed = g.push(
            "stack_levels",
            StackLevels {
                geometry: geometry.clone(),
            },
            &stack_inputs,
        );
        let (logits, regression, centerness) = head.forward(&mut g, packed, pictures, &geometry);
        g.set_stage("postprocess");
        let mut scored = vec![logits];
        scored.extend(centerness);
        scored.push(pictures);
        let selected = g.push(
            "top_k",
            TopKScores {
                geometry: geometry.clone(),
                anchors: a,
                classes: config.num_classes,
                k: options.topk_candidates,
                score_thresh: options.score_thresh,
                mode: kind.score_mode(),
            },
            &scored,
        );
        let candidates = g.push(
            "decode_boxes",
            DecodeBoxes {
                geometry: geometry.clone(),
                anchors,
                classes: config.num_classes,
                coding: kind.box_coding(),
                min_size: None,
                labels: LabelSource::Class,
            },
            &[selected, regression, pictures],
        );
        let detections = g.push(
            "nms",
            BatchedNms {
                geometry,
                iou_thresh: options.nms_thresh,
                detections: options.detections_per_img,
                scale_to_pictures: true,
            },
            &[candidates, pictures],
        );
        g.output("detections", detections);
        Ok(g)
    }

    /// Faster and Mask R-CNN's graph: the transform, the backbone and FPN (P2..P6), the RPN on
    /// all five levels, the RoI heads on P2..P5 with its proposals; Mask R-CNN's mask branch
    /// on P2..P5 with the kept boxes.
    fn two_stage_graph(
        store: &VarStore,
        config: DetectorConfig,
        options: &DetectorOptions,
    ) -> Result<Graph> {
        let kind = config.kind;
        let resize = Self::resize(options);
        let geometry = RegionProposalNetwork::geometry(resize);
        let vb = store.root();
        let mut g = Graph::new();
        let pictures = g.input();
        g.set_stage("transform");
        let x = g.push(
            "transform",
            DetectionTransform {
                geometry: geometry.clone(),
                normalize: Normalize::IMAGENET,
            },
            &[pictures],
        );
        let levels = Fpn::levels(&vb.pp("backbone"), config.backbone, &mut g, x)?;
        let rpn = RegionProposalNetwork::new(&vb, config.rpn(), options.rpn)?;
        let roi_heads = config.roi_heads();
        let heads = RoiHeads::new(&vb, &roi_heads, options.roi_heads())?;
        let mask_config = config.mask_heads();
        let masks = mask_config
            .as_ref()
            .map(|m| MaskHeads::new(&vb, m))
            .transpose()?;
        let mask_words = mask_config
            .map(|m| format!("; mask branch {}", m.describe()))
            .unwrap_or_default();
        store.finish_for(&format!(
            "{kind} ({}{mask_words}) on {}",
            roi_heads.describe(),
            config.backbone.describe()
        ))?;
        let levels: Vec<Value> = levels.iter().map(|(_, v)| *v).collect();
        if levels.len() != geometry.levels.len() {
            return Err(Error::invalid(
                "Detector",
                format!(
                    "the FPN gives {} levels; {kind} runs on P2..P6",
                    levels.len()
                ),
            ));
        }
        let proposals = rpn.forward(&mut g, &levels, pictures, &geometry)?;
        // The RoI heads pool from P2..P5: torchvision's `MultiScaleRoIAlign(["0", "1", "2",
        // "3"])` leaves out `pool`.
        let heads = heads.record(&mut g, resize, &levels[..4], proposals, pictures);
        g.output(DETECTIONS, heads.detections);
        if let Some(masks) = masks {
            // The mask branch pools at the boxes in the resized picture's pixels and pastes
            // at the boxes in the pictures', each as torchvision has them.
            let masks = masks.record(
                &mut g,
                resize,
                &levels[..4],
                heads.resized_detections,
                heads.detections,
                pictures,
            );
            g.output(MASKS, masks.masks);
        }
        Ok(g)
    }

    /// The detector's structure.
    pub fn config(&self) -> &DetectorConfig {
        &self.config
    }

    /// The options it runs with.
    pub fn options(&self) -> &DetectorOptions {
        &self.options
    }

    /// Where the weights came from.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The executor, for memory and launch reports.
    pub fn executor(&self) -> &Executor {
        &self.executor
    }

    /// Submits a forward on `pictures` (`[N, 3, H, W]` float32 RGB in 0..1, torchvision's
    /// detection input) and returns the detections tensor `[N, 1, D, 6]` still on the GPU:
    /// per slot x1, y1, x2, y2, score, label bits; score -1 marks an empty slot. Mask R-CNN's
    /// masks are computed and let go: [`Detector::forward_outputs`] keeps them.
    ///
    /// Mask R-CNN pastes every slot's mask at the pictures' size; pictures whose masks do not
    /// fit the device are an [`Error::LimitExceeded`] naming the limit, before anything runs.
    pub fn forward(&self, pictures: &Tensor) -> Result<Tensor> {
        Ok(self.forward_outputs(pictures)?.detections)
    }

    /// [`Detector::forward`] with every output: the detections and, for Mask R-CNN, the
    /// masks pasted into the pictures, still on the GPU.
    pub fn forward_outputs(&self, pictures: &Tensor) -> Result<DetectorOutputs> {
        let [_, c, _, _] = pictures.shape();
        if c != self.config.backbone.in_channels {
            return Err(Error::invalid(
                "Detector::forward",
                format!(
                    "the pictures have {c} channels (shape {:?}); this detector takes [N, {}, H, W]",
                    pictures.shape(),
                    self.config.backbone.in_channels
                ),
            ));
        }
        self.check_masks(pictures.shape())?;
        let mut outputs = self.executor.forward(pictures)?.into_iter();
        let detections = outputs
            .next()
            .map(|(_, t)| t)
            .ok_or_else(|| Error::invalid("Detector::forward", "the graph gave no detections"))?;
        Ok(DetectorOutputs {
            detections,
            masks: outputs.next().map(|(_, t)| t),
        })
    }

    /// Refuses pictures whose pasted masks do not fit this device, before anything is
    /// allocated: every detection slot's mask is pasted at the picture's size, so one
    /// picture's take `detections_per_img * H * W * 4` bytes in one binding, and the batch's
    /// one buffer.
    fn check_masks(&self, [n, _, h, w]: [usize; 4]) -> Result<()> {
        if !self.config.kind.has_masks() {
            return Ok(());
        }
        let d = self.options.detections_per_img as u64;
        let per_mask = 4 * h as u64 * w as u64;
        let limits = self.executor.context().limits();
        let (binding_name, binding) =
            if limits.max_storage_buffer_binding_size <= limits.max_buffer_size {
                (
                    "max_storage_buffer_binding_size",
                    limits.max_storage_buffer_binding_size,
                )
            } else {
                ("max_buffer_size", limits.max_buffer_size)
            };
        let picture = per_mask.saturating_mul(d);
        if picture > binding {
            let fits = binding / per_mask.max(1);
            let fewer = if fits > 0 {
                format!(
                    "lower detections_per_img (`fpn detect --detections-per-img`) to at most \
                     {fits}, or "
                )
            } else {
                String::new()
            };
            return Err(Error::LimitExceeded {
                op: "Detector",
                what: format!(
                    "the byte size of one picture's pasted masks [{d}, 1, {h}, {w}] \
                     (detections_per_img {d} masks of {h}x{w} f32 probabilities)"
                ),
                value: picture,
                limit_name: binding_name,
                limit: binding,
                hint: format!(
                    "{fewer}give smaller pictures: Mask R-CNN pastes every detection slot's mask \
                     at the picture's own size"
                ),
            });
        }
        let batch = picture.saturating_mul(n as u64);
        if batch > limits.max_buffer_size {
            return Err(Error::LimitExceeded {
                op: "Detector",
                what: format!(
                    "the byte size of the batch's pasted masks [{}, 1, {h}, {w}]",
                    n as u64 * d
                ),
                value: batch,
                limit_name: "max_buffer_size",
                limit: limits.max_buffer_size,
                hint: format!(
                    "give at most {} pictures of this size at once (`fpn detect --batch`), \
                     fewer detections per picture or smaller pictures",
                    (limits.max_buffer_size / picture.max(1)).max(1)
                ),
            });
        }
        Ok(())
    }

    /// Runs the detector on `pictures` (`[N, 3, H, W]` float32 RGB in 0..1) and returns each
    /// picture's detections, blocking the thread; see [`Detector::detect_async`].
    #[cfg(not(target_arch = "wasm32"))]
    pub fn detect(&self, pictures: &Tensor) -> Result<Vec<Detections>> {
        pollster::block_on(self.detect_async(pictures))
    }

    /// [`Detector::detect`] without blocking the thread: only the final rows, at most
    /// `detections_per_img` per picture, are read back, and for Mask R-CNN each picture's
    /// first K masks, K its detections, not the empty slots'.
    pub async fn detect_async(&self, pictures: &Tensor) -> Result<Vec<Detections>> {
        let ctx = self.executor.context();
        let out = self.forward_outputs(pictures)?;
        let rows = out.detections.download_async(ctx).await?;
        let mut found =
            Detections::from_rows(&HostTensor::new(out.detections.shape().to_vec(), rows)?)?;
        if let Some(masks) = &out.masks {
            let [_, _, h, w] = masks.shape();
            let ranges = Detections::mask_slots(&found, out.detections.shape()[2]);
            let read = masks.download_rows_async(ctx, &ranges).await?;
            for (det, data) in found.iter_mut().zip(read) {
                det.masks = Some(Masks {
                    height: h,
                    width: w,
                    data,
                });
            }
        }
        Ok(found)
    }
}

/// A detector's head, as its kind builds it.
enum Head {
    RetinaNet(RetinaNetHead),
    Fcos(FcosHead),
}

impl Head {
    fn new(vb: &VarBuilder, kind: DetectorKind, anchors: usize, classes: usize) -> Self {
        match kind {
            DetectorKind::RetinaNetV2 => Head::RetinaNet(RetinaNetHead::new(
                vb,
                TowerStyle::NormActivation,
                anchors,
                classes,
            )),
            DetectorKind::Fcos => Head::Fcos(FcosHead::new(vb, anchors, classes)),
            // The two-stage kinds have no one-stage head: `Detector::graph` builds theirs
            // before it comes here.
            _ => Head::RetinaNet(RetinaNetHead::new(vb, TowerStyle::Plain, anchors, classes)),
        }
    }

    /// Records the head; returns (class logits, box regression, centerness logits where the
    /// head has them), each over the packed map.
    fn forward(
        &self,
        g: &mut Graph,
        packed: Value,
        pictures: Value,
        geometry: &DetectionGeometry,
    ) -> (Value, Value, Option<Value>) {
        match self {
            Head::RetinaNet(head) => {
                let (logits, regression) = head.forward(g, packed, pictures, geometry);
                (logits, regression, None)
            }
            Head::Fcos(head) => {
                let out = head.forward(g, packed, pictures, geometry);
                (out.logits, out.regression, Some(out.centerness))
            }
        }
    }
}

/// RetinaNet heads saved before torchvision's v2 of them name their hidden convolutions
/// `conv.{2i}` (a Sequential of conv, ReLU, ...) where today's say `conv.{i}.0`; torchvision's
/// own loader renames them (`_v1_to_v2_weights`), and so does this, for a head that has the
/// old names only. FCOS's `conv.{3i}` heads carry a group norm at `conv.1` and are left alone.
fn rename_v1_head_layers(tensors: &mut TensorMap, origin: &str) {
    for branch in ["head.classification_head.", "head.regression_head."] {
        let old = |i: usize, t: &str| format!("{branch}conv.{}.{t}", 2 * i);
        let new = |i: usize, t: &str| format!("{branch}conv.{i}.0.{t}");
        let has_old =
            tensors.contains_key(&old(0, "weight")) && tensors.contains_key(&old(1, "weight"));
        let has_new = tensors
            .keys()
            .any(|n| n.starts_with(&format!("{branch}conv.0.0.")));
        let normalised = tensors.contains_key(&format!("{branch}conv.1.weight"));
        if !has_old || has_new || normalised {
            continue;
        }
        for i in 0..4 {
            for t in ["weight", "bias"] {
                if let Some(v) = tensors.remove(&old(i, t)) {
                    tensors.insert(new(i, t), v);
                }
            }
        }
        log::info!(
            "{origin}: `{branch}conv.{{0,2,4,6}}` are the names of a RetinaNet head saved before \
             torchvision's v2 of it; read as `conv.{{i}}.0`, as torchvision does"
        );
    }
}
