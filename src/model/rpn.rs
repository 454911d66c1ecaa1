//! The region proposal network of torchvision's Faster and Mask R-CNN (`RegionProposalNetwork`
//! in eval mode, with its `RPNHead`), recorded into a graph so that the proposals never leave
//! the GPU.
//!
//! From the FPN's P2..P6 (P6 is torchvision's `pool` level, a stride-2 max pool of P5):
//! - the levels packed into one map, and the head run once over it (its weights are shared by
//!   every level): v1 one 3x3 conv + ReLU, v2 two, then the 1x1 objectness logits (one per
//!   anchor) and box deltas (four per anchor);
//! - per picture and level the `rpn_pre_nms_top_n_test` best objectness scores (the top-k
//!   kernel with one class; the logits are ranked by their sigmoid, which orders them alike);
//! - their anchors (sizes 32..512 on P2..P6, ratios 0.5, 1, 2) decoded with `BoxCoder((1, 1, 1,
//!   1))`, clipped to the resized picture, boxes with a side under 1e-3 removed, the level as
//!   the label;
//! - `batched_nms` per level at `rpn_nms_thresh`, the best `rpn_post_nms_top_n_test` kept.
//!
//! The output is the NMS record layout `[N, 1, R, 6]` (x1, y1, x2, y2 in the resized picture's
//! pixels, the sigmoid score, the level's bits; score -1 marks an empty slot), which
//! [`MultiScaleRoiAlign`](crate::graph::ops::detect::MultiScaleRoiAlign) reads as it is.
//!
//! torchvision ranks logits before the sigmoid; here the sigmoid's f32 values are ranked.
//! They order alike except where two logits round to one score (logits above about 16.6 all
//! give 1.0): there the pre-NMS cut and NMS's order between them may differ from torchvision's,
//! as any two equal scores may.

use crate::error::{Error, Result};
use crate::graph::ops::detect::{
    AnchorSpec, BatchedNms, BoxCoding, DecodeBoxes, DetectionGeometry, LabelSource, MaskLevels,
    ResizeRule, ScoreMode, StackLevels, TopKScores, MAX_CANDIDATES,
};
use crate::graph::{Graph, Value};
use crate::model::layers::{relu, Conv2d};
use crate::model::PYRAMID_CHANNELS;
use crate::tensor_file::TensorMap;
use crate::weights::{VarBuilder, VarStore};

/// The pyramid levels the RPN runs on, as powers of two: P2..P6.
pub const RPN_LEVELS: [u32; 5] = [2, 3, 4, 5, 6];

/// torchvision's `RegionProposalNetwork.min_size`: proposals with a side shorter than this,
/// in pixels, are removed (a constant there, not an argument).
pub const RPN_MIN_SIZE: f32 = 1e-3;

/// How the RPN selects its proposals, named and defaulted as torchvision's `FasterRCNN`
/// arguments (eval mode).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RpnOptions {
    /// The best proposals kept per picture and level before NMS (1000).
    pub rpn_pre_nms_top_n_test: usize,
    /// The best proposals kept per picture after NMS (1000).
    pub rpn_post_nms_top_n_test: usize,
    /// Proposals of one level overlapping a better one by more than this IoU are dropped (0.7).
    pub rpn_nms_thresh: f32,
    /// Proposals scoring below this are dropped (0.0: none; torchvision keeps scores `>=` it).
    pub rpn_score_thresh: f32,
}

impl Default for RpnOptions {
    /// torchvision's defaults.
    fn default() -> Self {
        RpnOptions {
            rpn_pre_nms_top_n_test: 1000,
            rpn_post_nms_top_n_test: 1000,
            rpn_nms_thresh: 0.7,
            rpn_score_thresh: 0.0,
        }
    }
}

impl RpnOptions {
    fn check(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::invalid("RpnOptions", msg));
        if self.rpn_pre_nms_top_n_test == 0 || self.rpn_post_nms_top_n_test == 0 {
            return bad(format!(
                "rpn_pre_nms_top_n_test {} and rpn_post_nms_top_n_test {} must be at least 1 \
                 (torchvision's defaults: 1000 and 1000)",
                self.rpn_pre_nms_top_n_test, self.rpn_post_nms_top_n_test
            ));
        }
        // Every level's top-n goes to one batched NMS, which takes MAX_CANDIDATES records per
        // picture; checked here, before any shape is computed from these counts.
        let levels = RPN_LEVELS.len();
        let most = MAX_CANDIDATES / levels;
        if self.rpn_pre_nms_top_n_test > most || self.rpn_post_nms_top_n_test > MAX_CANDIDATES {
            return bad(format!(
                "rpn_pre_nms_top_n_test {} and rpn_post_nms_top_n_test {} must be at most {most} \
                 and {MAX_CANDIDATES}: the {levels} levels' candidates go to one NMS, which \
                 takes {MAX_CANDIDATES} per picture (torchvision's defaults: 1000 and 1000)",
                self.rpn_pre_nms_top_n_test, self.rpn_post_nms_top_n_test
            ));
        }
        if !self.rpn_nms_thresh.is_finite() || self.rpn_score_thresh.is_nan() {
            return bad(format!(
                "rpn_nms_thresh {} must be finite and rpn_score_thresh {} a number (torchvision's \
                 defaults: 0.7 and 0.0)",
                self.rpn_nms_thresh, self.rpn_score_thresh
            ));
        }
        Ok(())
    }

    /// The top-k's threshold, which keeps scores strictly above it, for torchvision's `scores
    /// >= rpn_score_thresh`: the largest f32 below the threshold.
    fn strict_score_thresh(&self) -> f32 {
        let t = self.rpn_score_thresh;
        if t <= 0.0 {
            // Every score (a sigmoid, never negative) passes; any negative threshold says so.
            -1.0
        } else {
            f32::from_bits(t.to_bits() - 1)
        }
    }
}

/// The RPN head's structure: its width and how many 3x3 convs it has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RpnConfig {
    /// Channels of the pyramid levels (torchvision: 256).
    pub channels: usize,
    /// 3x3 conv + ReLU layers before the predictions: 1 in v1 (`fasterrcnn_resnet50_fpn`), 2
    /// in v2 (`fasterrcnn_resnet50_fpn_v2`, `RPNHead(conv_depth=2)`).
    pub conv_depth: usize,
}

impl RpnConfig {
    /// `fasterrcnn_resnet50_fpn`'s head: one conv of 256 channels.
    pub fn v1() -> Self {
        RpnConfig {
            channels: PYRAMID_CHANNELS,
            conv_depth: 1,
        }
    }

    /// `fasterrcnn_resnet50_fpn_v2`'s head: two convs of 256 channels.
    pub fn v2() -> Self {
        RpnConfig {
            conv_depth: 2,
            ..Self::v1()
        }
    }

    /// The head a `state_dict`'s `rpn.head.*` names and shapes describe: the convs
    /// `rpn.head.conv.{i}.0` present from 0 up, the width from the first one's weight (or the
    /// logits' where it is missing, so that the error names the missing tensor).
    fn of(tensors: &TensorMap) -> Self {
        let conv = |i: usize| format!("rpn.head.conv.{i}.0.weight");
        let conv_depth = (0..)
            .take_while(|&i| tensors.contains_key(&conv(i)))
            .count();
        let channels = [conv(0), "rpn.head.cls_logits.weight".to_string()]
            .iter()
            .find_map(|name| match tensors.get(name).map(|t| t.shape.as_slice()) {
                Some(&[_, c, _, _]) if c > 0 => Some(c),
                _ => None,
            })
            .unwrap_or(PYRAMID_CHANNELS);
        RpnConfig {
            channels,
            conv_depth: conv_depth.max(1),
        }
    }

    fn describe(&self) -> String {
        format!(
            "torchvision's RPN head ({} 3x3 conv{} of {} channels, 3 anchors per location)",
            self.conv_depth,
            if self.conv_depth == 1 { "" } else { "s" },
            self.channels
        )
    }
}

/// torchvision's `RPNHead`: the 3x3 convs with ReLU, then `cls_logits` (A channels) and
/// `bbox_pred` (4A), weights under `rpn.head.`.
pub struct RpnHead {
    convs: Vec<Conv2d>,
    cls_logits: Conv2d,
    bbox_pred: Conv2d,
}

impl RpnHead {
    /// Reads `conv.{i}.0`, `cls_logits` and `bbox_pred` under `vb` (`rpn.head`) for `anchors`
    /// anchors per location.
    pub fn new(vb: &VarBuilder, config: RpnConfig, anchors: usize) -> Self {
        let c = config.channels;
        let convs = (0..config.conv_depth)
            .map(|i| Conv2d::new(&vb.pp("conv").pp(i).pp(0), c, c, 3, 1, 1, true))
            .collect();
        RpnHead {
            convs,
            cls_logits: Conv2d::new(&vb.pp("cls_logits"), c, anchors, 1, 1, 0, true),
            bbox_pred: Conv2d::new(&vb.pp("bbox_pred"), c, anchors * 4, 1, 1, 0, true),
        }
    }

    /// Records the head on the packed levels; returns (objectness logits, box deltas), each
    /// over the packed map.
    pub fn forward(
        &self,
        g: &mut Graph,
        packed: Value,
        pictures: Value,
        geometry: &DetectionGeometry,
    ) -> (Value, Value) {
        let mut x = packed;
        for (i, conv) in self.convs.iter().enumerate() {
            let y = conv.forward(g, x);
            x = relu(g, y);
            // The next 3x3 conv must see each level with zeros around it, which the bias and
            // ReLU have overwritten between the levels; the 1x1 predictions need no zeros.
            if i + 1 < self.convs.len() {
                x = g.push(
                    "rpn.head.mask_levels",
                    MaskLevels {
                        geometry: geometry.clone(),
                        padding: (0, 0),
                    },
                    &[x, pictures],
                );
            }
        }
        (self.cls_logits.forward(g, x), self.bbox_pred.forward(g, x))
    }
}

/// torchvision's `RegionProposalNetwork` in eval mode, its head's weights read; recorded into
/// a graph by [`RegionProposalNetwork::forward`].
pub struct RegionProposalNetwork {
    head: RpnHead,
    config: RpnConfig,
    options: RpnOptions,
}

impl RegionProposalNetwork {
    /// Reads the head under `vb` (the model's root: the names are `rpn.head.*`) as `config`
    /// says. Missing or mis-shaped tensors are recorded in `vb`'s store, which reports them
    /// when its walk is finished ([`VarStore::finish_for`]).
    pub fn new(vb: &VarBuilder, config: RpnConfig, options: RpnOptions) -> Result<Self> {
        options.check()?;
        let anchors = AnchorSpec::rpn().per_location();
        Ok(RegionProposalNetwork {
            head: RpnHead::new(&vb.pp("rpn").pp("head"), config, anchors),
            config,
            options,
        })
    }

    /// Reads the RPN of a torchvision Faster or Mask R-CNN `state_dict` (v1 or v2, the head's
    /// structure from its names and shapes); other tensors than `rpn.*` are left for the rest
    /// of the model. Heads saved before torchvision's v2 of `RPNHead` (`rpn.head.conv.weight`)
    /// are read as torchvision does, as `rpn.head.conv.0.0`. An error names every missing,
    /// mis-shaped or unexpected `rpn.*` tensor; `origin` names the tensors in it.
    pub fn from_tensors(origin: &str, tensors: &TensorMap, options: RpnOptions) -> Result<Self> {
        let mut rpn: TensorMap = tensors
            .iter()
            .filter(|(name, _)| name.starts_with("rpn."))
            .map(|(name, t)| (name.clone(), t.clone()))
            .collect();
        if rpn.is_empty() {
            return Err(Error::invalid(
                "RegionProposalNetwork",
                format!(
                    "{origin} has no `rpn.` tensors; give the state_dict of a torchvision Faster \
                     or Mask R-CNN (`rpn.head.conv.0.0.weight`, `rpn.head.cls_logits.weight`, ...)"
                ),
            ));
        }
        rename_v1_conv(&mut rpn, origin);
        let config = RpnConfig::of(&rpn);
        let store = VarStore::from_tensors(origin, rpn);
        let network = Self::new(&store.root(), config, options)?;
        store.finish_for(&config.describe())?;
        Ok(network)
    }

    /// Deterministic seeded random weights, for tests and benchmarks.
    pub fn random(seed: u64, config: RpnConfig, options: RpnOptions) -> Result<Self> {
        Self::new(&VarStore::random(seed).root(), config, options)
    }

    /// The head's structure.
    pub fn config(&self) -> RpnConfig {
        self.config
    }

    /// The options it selects proposals with.
    pub fn options(&self) -> RpnOptions {
        self.options
    }

    /// The geometry the RPN's ops share: pictures resized and padded by `resize`, levels
    /// P2..P6.
    pub fn geometry(resize: ResizeRule) -> DetectionGeometry {
        DetectionGeometry {
            resize,
            levels: RPN_LEVELS.to_vec(),
        }
    }

    /// Records the RPN on `levels` (P2..P6, `[N, C, h, w]` each: torchvision's FPN outputs
    /// `0`..`3` and `pool` for the padded batch) of `pictures` (the detector's input, whose
    /// shape alone is read); returns the proposals `[N, 1, rpn_post_nms_top_n_test, 6]`, best
    /// first, in the resized picture's pixels, labelled by level.
    pub fn forward(
        &self,
        g: &mut Graph,
        levels: &[Value],
        pictures: Value,
        geometry: &DetectionGeometry,
    ) -> Result<Value> {
        if levels.len() != RPN_LEVELS.len() || geometry.levels != RPN_LEVELS {
            return Err(Error::invalid(
                "RegionProposalNetwork",
                format!(
                    "{} levels on pyramid levels {:?} were given; the RPN runs on P2..P6 (five \
                     levels, {RPN_LEVELS:?}), the anchors sized 32..512 on them",
                    levels.len(),
                    geometry.levels
                ),
            ));
        }
        let anchors = AnchorSpec::rpn();
        let o = self.options;
        g.set_stage("rpn head");
        let mut inputs = levels.to_vec();
        inputs.push(pictures);
        let packed = g.push(
            "rpn.stack_levels",
            StackLevels {
                geometry: geometry.clone(),
            },
            &inputs,
        );
        let (logits, deltas) = self.head.forward(g, packed, pictures, geometry);
        g.set_stage("rpn proposals");
        let selected = g.push(
            "rpn.top_k",
            TopKScores {
                geometry: geometry.clone(),
                anchors: anchors.per_location(),
                classes: 1,
                k: o.rpn_pre_nms_top_n_test,
                score_thresh: o.strict_score_thresh(),
                mode: ScoreMode::Sigmoid,
            },
            &[logits, pictures],
        );
        let candidates = g.push(
            "rpn.decode_boxes",
            DecodeBoxes {
                geometry: geometry.clone(),
                anchors,
                classes: 1,
                // torchvision's RPN BoxCoder: weights (1, 1, 1, 1), deltas capped at
                // ln(1000 / 16), as RetinaNet's.
                coding: BoxCoding::retinanet(),
                min_size: Some(RPN_MIN_SIZE),
                labels: LabelSource::Level,
            },
            &[selected, deltas, pictures],
        );
        Ok(g.push(
            "rpn.nms",
            BatchedNms {
                geometry: geometry.clone(),
                iou_thresh: o.rpn_nms_thresh,
                detections: o.rpn_post_nms_top_n_test,
                scale_to_pictures: false,
            },
            &[candidates, pictures],
        ))
    }
}

/// `RPNHead` before torchvision's version 2 of it named its one conv `conv`; torchvision's
/// `_load_from_state_dict` renames `conv.{weight,bias}` to `conv.0.0.*`, and so does this,
/// unless the new names are there too (then the old ones are reported as unexpected).
pub(crate) fn rename_v1_conv(tensors: &mut TensorMap, origin: &str) {
    let mut renamed = false;
    for t in ["weight", "bias"] {
        let (old, new) = (
            format!("rpn.head.conv.{t}"),
            format!("rpn.head.conv.0.0.{t}"),
        );
        if !tensors.contains_key(&new) {
            if let Some(v) = tensors.remove(&old) {
                tensors.insert(new, v);
                renamed = true;
            }
        }
    }
    if renamed {
        log::info!(
            "{origin}: `rpn.head.conv.*` is the name of an RPN head saved before torchvision's \
             version 2 of it; read as `rpn.head.conv.0.0.*`, as torchvision does"
        );
    }
}
