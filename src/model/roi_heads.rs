//! torchvision's `RoIHeads` in eval mode, the box part of Faster R-CNN's second stage: from the
//! FPN levels P2..P5 and the proposals to the final boxes, scores and labels, all on the GPU.
//!
//! `MultiScaleRoIAlign` 7x7 (sampling ratio 2) of every proposal, the box head (v1's
//! `TwoMLPHead`: fc6 and fc7 with ReLU; v2's `FastRCNNConvFCHead`: 3x3 convs with batch norm,
//! folded into them, and ReLU, then linear layers with ReLU), the `FastRCNNPredictor`
//! (`cls_score`, `bbox_pred`), the softmax of the class logits, then `postprocess_detections`:
//! per proposal and class but the background, decoding with weights (10, 10, 5, 5), clipping,
//! the score threshold and the small-box filter ([`BoxCandidates`]), `batched_nms` per class
//! and the best `box_detections_per_img` ([`BatchedNms`]), boxes scaled back to the pictures
//! ([`ScaleToPictures`]; the boxes in the resized picture stay available to the mask branch).
//!
//! The weights are read under torchvision's names (`roi_heads.box_head.fc6.weight`,
//! `roi_heads.box_head.0.0.weight`, `roi_heads.box_predictor.cls_score.weight`, ...); the head's
//! kind, its widths and the number of classes come from the names and shapes
//! ([`RoiHeadsConfig::recognise`]).
//!
//! [`RoiHeads::record`] adds the heads to a detector's graph, after the ops that make the
//! levels and the proposals: [`Detector`](crate::Detector) runs Faster R-CNN so, from the
//! pictures on. [`RoiHeads::lower`] runs the same graph on levels and proposals the caller
//! gives ([`GpuRoiHeads::forward`]), for tests of the heads alone.

use crate::error::{Error, Result};
use crate::gpu::{Dispatch, GpuContext};
use crate::graph::indirect::{size_by_rows, NodeLaunches};
use crate::graph::ops::detect::{
    BatchedNms, BoxCandidates, DetectionGeometry, MultiScaleRoiAlign, ResizeRule, ScaleToPictures,
};
use crate::graph::ops::{GpuOp, Input, Launch, Softmax, Target};
use crate::graph::passes;
use crate::graph::{at_node, Graph, Value};
use crate::kernels::convert;
use crate::kernels::roi_align::MAX_LEVELS;
use crate::model::layers::{relu, BatchNorm2d, Conv2d, Linear};
use crate::precision::Precision;
use crate::tensor::{MemoryFormat, Tensor};
use crate::tensor_file::TensorMap;
use crate::weights::{is_ignored, VarBuilder, VarStore};

/// Bins per side of the box head's pooling (torchvision's `MultiScaleRoIAlign(..., 7, 2)`).
pub const POOLED_SIZE: usize = 7;

const OP: &str = "RoiHeads";

/// The box head between the pooling and the predictor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BoxHeadKind {
    /// v1's `TwoMLPHead`: `fc6` (flattened features to `representation`) and `fc7`, each with
    /// a ReLU (torchvision: 1024).
    TwoMlp {
        /// Output features of `fc6` and `fc7`.
        representation: usize,
    },
    /// v2's `FastRCNNConvFCHead`: one `Conv2dNormActivation` (3x3 conv without bias,
    /// `BatchNorm2d`, ReLU) per entry of `convs`, then the flattened features through one
    /// `nn.Linear` + ReLU per entry of `fcs` (torchvision: four convs of 256, one linear of
    /// 1024).
    ConvFc {
        /// Output channels of each conv, in order.
        convs: Vec<usize>,
        /// Output features of each linear layer, in order.
        fcs: Vec<usize>,
    },
}

/// The structure of the heads: their input width, box head and classes.
#[derive(Clone, Debug, PartialEq)]
pub struct RoiHeadsConfig {
    /// Channels of the pyramid levels (the FPN's `out_channels`, 256 for torchvision's).
    pub in_channels: usize,
    /// The box head.
    pub box_head: BoxHeadKind,
    /// Classes of the predictor, background included (torchvision's `num_classes`, 91 for
    /// COCO).
    pub num_classes: usize,
    /// The batch norm epsilon of v2's convs (`nn.BatchNorm2d`'s default 1e-5).
    pub bn_eps: f32,
}

impl RoiHeadsConfig {
    /// The heads a `state_dict` holds under `roi_heads.`, for levels of `in_channels`:
    /// `box_head.fc6` means v1's `TwoMLPHead`, `box_head.0.0` v2's `FastRCNNConvFCHead` (its
    /// convs counted from `box_head.{i}.0`, its linear layers from the index after the
    /// flatten); the widths and `num_classes` are read from the shapes. Shapes the names do not
    /// settle are checked when the heads read their tensors ([`VarStore::finish`]).
    pub fn recognise(store: &VarStore, in_channels: usize) -> Result<Self> {
        let origin = store.origin();
        let head = "roi_heads.box_head";
        let fc6 = format!("{head}.fc6.weight");
        let box_head = if let Some(shape) = store.shape_of(&fc6) {
            match *shape {
                [representation, _] if representation > 0 => BoxHeadKind::TwoMlp { representation },
                _ => {
                    return Err(Error::invalid(
                        OP,
                        format!("{origin}: `{fc6}` has shape {shape:?}; a TwoMLPHead's fc6 is [representation, {in_channels} x {POOLED_SIZE} x {POOLED_SIZE}]"),
                    ))
                }
            }
        } else if store.shape_of(&format!("{head}.0.0.weight")).is_some() {
            let mut convs = Vec::new();
            while let Some(shape) = store.shape_of(&format!("{head}.{}.0.weight", convs.len())) {
                match *shape {
                    [cout, _, 3, 3] if cout > 0 => convs.push(cout),
                    _ => {
                        return Err(Error::invalid(
                            OP,
                            format!(
                                "{origin}: `{head}.{}.0.weight` has shape {shape:?}; a FastRCNNConvFCHead's convs are 3x3, [out, in, 3, 3]",
                                convs.len()
                            ),
                        ))
                    }
                }
            }
            // Sequential indices: the convs, the flatten, then each linear layer and its ReLU.
            let mut fcs = Vec::new();
            let fc_name = |j: usize| format!("{head}.{}.weight", convs.len() + 1 + 2 * j);
            while let Some(shape) = store.shape_of(&fc_name(fcs.len())) {
                match *shape {
                    [out, _] if out > 0 => fcs.push(out),
                    _ => {
                        return Err(Error::invalid(
                            OP,
                            format!(
                                "{origin}: `{}` has shape {shape:?}; a FastRCNNConvFCHead's linear layers are [out, in]",
                                fc_name(fcs.len())
                            ),
                        ))
                    }
                }
            }
            BoxHeadKind::ConvFc { convs, fcs }
        } else {
            return Err(Error::invalid(
                OP,
                format!(
                    "{origin} has no box head: neither `{fc6}` (Faster R-CNN v1's TwoMLPHead) nor `{head}.0.0.weight` (v2's FastRCNNConvFCHead); give a Faster R-CNN state_dict with its `roi_heads.*` tensors"
                ),
            ));
        };
        let cls = "roi_heads.box_predictor.cls_score.weight";
        let num_classes = match store.shape_of(cls) {
            Some(&[classes, _]) if classes >= 2 => classes,
            Some(shape) => {
                return Err(Error::invalid(
                    OP,
                    format!(
                        "{origin}: `{cls}` has shape {shape:?}; a FastRCNNPredictor's cls_score is [num_classes >= 2 (background included), representation]"
                    ),
                ))
            }
            None => {
                return Err(Error::invalid(
                    OP,
                    format!("{origin} has a box head but no `{cls}`; the box predictor is missing"),
                ))
            }
        };
        Ok(RoiHeadsConfig {
            in_channels,
            box_head,
            num_classes,
            bn_eps: 1e-5,
        })
    }

    /// torchvision's Faster R-CNN v1 heads: `TwoMLPHead` of 1024 on 256 channels.
    pub fn faster_rcnn(num_classes: usize) -> Self {
        RoiHeadsConfig {
            in_channels: 256,
            box_head: BoxHeadKind::TwoMlp {
                representation: 1024,
            },
            num_classes,
            bn_eps: 1e-5,
        }
    }

    /// torchvision's Faster R-CNN v2 heads: four convs of 256 and one linear layer of 1024.
    pub fn faster_rcnn_v2(num_classes: usize) -> Self {
        RoiHeadsConfig {
            in_channels: 256,
            box_head: BoxHeadKind::ConvFc {
                convs: vec![256; 4],
                fcs: vec![1024],
            },
            num_classes,
            bn_eps: 1e-5,
        }
    }
}

/// The post-processing settings, named and defaulted as torchvision's `FasterRCNN` arguments.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RoiHeadsOptions {
    /// Detections score strictly above this (0.05).
    pub box_score_thresh: f32,
    /// Detections of one class overlapping a better one by an IoU above this are dropped (0.5).
    pub box_nms_thresh: f32,
    /// Detections kept per picture (100).
    pub box_detections_per_img: usize,
}

impl Default for RoiHeadsOptions {
    fn default() -> Self {
        RoiHeadsOptions {
            box_score_thresh: 0.05,
            box_nms_thresh: 0.5,
            box_detections_per_img: 100,
        }
    }
}

impl RoiHeadsOptions {
    /// Checks the settings.
    pub fn check(&self) -> Result<()> {
        if !self.box_score_thresh.is_finite() || !self.box_nms_thresh.is_finite() {
            return Err(Error::invalid(
                OP,
                format!(
                    "box_score_thresh is {} and box_nms_thresh {}; both must be finite numbers (torchvision: 0.05 and 0.5)",
                    self.box_score_thresh, self.box_nms_thresh
                ),
            ));
        }
        if self.box_detections_per_img == 0 {
            return Err(Error::invalid(
                OP,
                "box_detections_per_img is 0; keep at least one detection per picture (torchvision: 100)",
            ));
        }
        Ok(())
    }
}

/// The box head's layers.
enum BoxHead {
    TwoMlp {
        fc6: Linear,
        fc7: Linear,
    },
    ConvFc {
        convs: Vec<(Conv2d, BatchNorm2d)>,
        fcs: Vec<Linear>,
    },
}

/// The values [`RoiHeads::record`] adds to a graph.
#[derive(Clone, Copy, Debug)]
pub struct RoiHeadsValues {
    /// The class probabilities `[N R, C, 1, 1]` (f32).
    pub scores: Value,
    /// `bbox_pred`'s output `[N R, 4 C, 1, 1]`.
    pub box_regression: Value,
    /// The candidates before NMS `[N, 1, R K, 6]` (see [`BoxCandidates`]).
    pub candidates: Value,
    /// The detections `[N, 1, box_detections_per_img, 6]` as NMS keeps them, boxes in the
    /// resized picture's pixels: where torchvision's mask branch pools them
    /// ([`MaskHeads::record`](crate::model::mask_heads::MaskHeads::record)).
    pub resized_detections: Value,
    /// The detections `[N, 1, box_detections_per_img, 6]`: x1, y1, x2, y2 in the pictures'
    /// pixels, score, label bits (`f32::to_bits`), best first; empty records (score -1) after
    /// the last.
    pub detections: Value,
}

/// torchvision's `RoIHeads` (boxes) with its weights in host memory.
pub struct RoiHeads {
    config: RoiHeadsConfig,
    options: RoiHeadsOptions,
    head: BoxHead,
    cls_score: Linear,
    bbox_pred: Linear,
}

impl RoiHeads {
    /// Reads the heads `config` describes under `vb`'s `roi_heads.` (the root of a whole
    /// model's `state_dict`). Missing and mis-shaped tensors are reported by the store's
    /// [`VarStore::finish`], which the caller runs once the whole model is read.
    pub fn new(vb: &VarBuilder, config: &RoiHeadsConfig, options: RoiHeadsOptions) -> Result<Self> {
        options.check()?;
        if config.num_classes < 2 || config.in_channels == 0 {
            return Err(Error::invalid(
                OP,
                format!(
                    "{} classes on {} channels; the heads need at least 2 classes (background included) and 1 channel",
                    config.num_classes, config.in_channels
                ),
            ));
        }
        let heads = vb.pp("roi_heads");
        let vb_head = heads.pp("box_head");
        let flat = config.in_channels * POOLED_SIZE * POOLED_SIZE;
        let (head, representation) = match &config.box_head {
            BoxHeadKind::TwoMlp { representation } => {
                let r = *representation;
                let fc6 = Linear::new(&vb_head.pp("fc6"), flat, r, true).with_relu();
                let fc7 = Linear::new(&vb_head.pp("fc7"), r, r, true).with_relu();
                (BoxHead::TwoMlp { fc6, fc7 }, r)
            }
            BoxHeadKind::ConvFc { convs, fcs } => {
                let mut cin = config.in_channels;
                let mut layers = Vec::new();
                for (i, &cout) in convs.iter().enumerate() {
                    let block = vb_head.pp(i);
                    let conv = Conv2d::new(&block.pp(0), cin, cout, 3, 1, 1, false);
                    let bn = BatchNorm2d::new(&block.pp(1), cout, config.bn_eps);
                    layers.push((conv, bn));
                    cin = cout;
                }
                let mut width = cin * POOLED_SIZE * POOLED_SIZE;
                let mut linears = Vec::new();
                for (j, &out) in fcs.iter().enumerate() {
                    let index = convs.len() + 1 + 2 * j;
                    linears.push(Linear::new(&vb_head.pp(index), width, out, true).with_relu());
                    width = out;
                }
                (
                    BoxHead::ConvFc {
                        convs: layers,
                        fcs: linears,
                    },
                    width,
                )
            }
        };
        let predictor = heads.pp("box_predictor");
        let classes = config.num_classes;
        Ok(RoiHeads {
            config: config.clone(),
            options,
            head,
            cls_score: Linear::new(&predictor.pp("cls_score"), representation, classes, true),
            bbox_pred: Linear::new(
                &predictor.pp("bbox_pred"),
                representation,
                4 * classes,
                true,
            ),
        })
    }

    /// The heads of a `state_dict` (a whole Faster or Mask R-CNN's, or its `roi_heads.*` alone;
    /// the mask branch's `roi_heads.mask_*` are left to
    /// [`MaskHeads`](crate::model::mask_heads::MaskHeads)), for
    /// levels of `in_channels`: the `roi_heads.` tensors recognised
    /// ([`RoiHeadsConfig::recognise`]) and read; any of them missing, mis-shaped or left over
    /// is an [`Error::Weights`] naming it. Other tensors are left to the rest of the model.
    pub fn from_tensors(
        origin: &str,
        tensors: &TensorMap,
        in_channels: usize,
        options: RoiHeadsOptions,
    ) -> Result<Self> {
        let heads: TensorMap = tensors
            .iter()
            // The mask branch's tensors are read by `MaskHeads`.
            .filter(|(n, _)| {
                n.starts_with("roi_heads.") && !n.starts_with("roi_heads.mask_") && !is_ignored(n)
            })
            .map(|(n, t)| (n.clone(), t.clone()))
            .collect();
        let store = VarStore::from_tensors(origin, heads);
        let config = RoiHeadsConfig::recognise(&store, in_channels)?;
        let heads = Self::new(&store.root(), &config, options)?;
        store.finish_for(&format!("torchvision's RoIHeads ({})", config.describe()))?;
        Ok(heads)
    }

    /// The structure read.
    pub fn config(&self) -> &RoiHeadsConfig {
        &self.config
    }

    /// The post-processing settings.
    pub fn options(&self) -> RoiHeadsOptions {
        self.options
    }

    /// Records the heads into `g`: `levels` the pyramid levels `[N, C, h, w]` finest first
    /// (P2..P5), `proposals` the records `[N, 1, R, 6]` in the resized picture's pixels (f32,
    /// empty slots allowed), `pictures` the detector's input `[N, 3, H, W]` (its shape alone is
    /// read), pictures resized by `resize`.
    pub fn record(
        &self,
        g: &mut Graph,
        resize: ResizeRule,
        levels: &[Value],
        proposals: Value,
        pictures: Value,
    ) -> RoiHeadsValues {
        g.set_stage("roi heads");
        let mut pool_inputs = levels.to_vec();
        pool_inputs.extend([proposals, pictures]);
        let mut x = g.push(
            "roi_heads.box_roi_pool",
            MultiScaleRoiAlign::new(resize, POOLED_SIZE),
            &pool_inputs,
        );
        match &self.head {
            BoxHead::TwoMlp { fc6, fc7 } => {
                x = fc6.forward(g, x);
                x = fc7.forward(g, x);
            }
            BoxHead::ConvFc { convs, fcs } => {
                for (conv, bn) in convs {
                    x = conv.forward(g, x);
                    x = bn.forward(g, x);
                    x = relu(g, x);
                }
                for fc in fcs {
                    x = fc.forward(g, x);
                }
            }
        }
        let logits = self.cls_score.forward(g, x);
        let box_regression = self.bbox_pred.forward(g, x);
        let scores = g.push("roi_heads.softmax", Softmax, &[logits]);
        g.set_stage("postprocess");
        let candidates = g.push(
            "roi_heads.candidates",
            BoxCandidates::new(resize, self.options.box_score_thresh),
            &[proposals, box_regression, scores, pictures],
        );
        // NMS keeps the resized picture's pixels, which the mask branch pools at; a launch of
        // its own scales them (the same f32 products NMS would make) for the output.
        let resized_detections = g.push(
            "roi_heads.nms",
            BatchedNms {
                geometry: DetectionGeometry {
                    resize,
                    levels: vec![2, 3, 4, 5],
                },
                iou_thresh: self.options.box_nms_thresh,
                detections: self.options.box_detections_per_img,
                scale_to_pictures: false,
            },
            &[candidates, pictures],
        );
        let detections = g.push(
            "roi_heads.detections",
            ScaleToPictures { resize },
            &[resized_detections, pictures],
        );
        RoiHeadsValues {
            scores,
            box_regression,
            candidates,
            resized_detections,
            detections,
        }
    }

    /// The heads on `ctx` for `levels` pyramid levels (4 for torchvision's P2..P5) of pictures
    /// resized by `resize`, weights and values stored in `precision`: the graph
    /// [`RoiHeads::record`] builds, batch norm folded into the convs and ReLUs fused, with its
    /// weights uploaded.
    pub fn lower(
        &self,
        ctx: &GpuContext,
        levels: usize,
        resize: ResizeRule,
        precision: Precision,
    ) -> Result<GpuRoiHeads> {
        let heads = LoweredHeads::build(
            ctx,
            levels,
            precision,
            |g, level_values, proposals, pictures| {
                let values = self.record(g, resize, level_values, proposals, pictures);
                g.output("scores", values.scores);
                g.output("box_regression", values.box_regression);
                g.output("candidates", values.candidates);
                g.output("detections", values.detections);
            },
        )?;
        Ok(GpuRoiHeads { heads })
    }
}

impl RoiHeadsConfig {
    /// The box head in words, for messages.
    pub fn describe(&self) -> String {
        match &self.box_head {
            BoxHeadKind::TwoMlp { representation } => format!(
                "v1: TwoMLPHead of {representation} on {} channels, {} classes",
                self.in_channels, self.num_classes
            ),
            BoxHeadKind::ConvFc { convs, fcs } => format!(
                "v2: FastRCNNConvFCHead, convs {convs:?}, linear layers {fcs:?} on {} channels, {} classes",
                self.in_channels, self.num_classes
            ),
        }
    }
}

/// A lowered node of [`LoweredHeads`].
struct LoweredNode {
    name: String,
    /// A value the caller gives (the pictures, a level, the proposals).
    input: bool,
    op: Box<dyn GpuOp>,
    inputs: Vec<usize>,
    /// The records whose live rows size the node's launches.
    rows: Option<usize>,
    precision: Precision,
}

/// A second stage's graph lowered to run on levels and proposals the caller gives, for the
/// standalone heads ([`GpuRoiHeads`], and Mask R-CNN's box and mask branches together): the
/// executor takes one input, the pictures, where these take the pyramid and the proposals.
pub(crate) struct LoweredHeads {
    ctx: GpuContext,
    nodes: Vec<LoweredNode>,
    outputs: Vec<(String, Value)>,
    levels: usize,
    precision: Precision,
    passes_applied: Vec<&'static str>,
}

impl LoweredHeads {
    /// The graph `record` builds on inputs (pictures, `levels` levels, proposals) and whose
    /// outputs it names, batch norm folded and ReLUs fused, lowered on `ctx` in `precision`.
    pub(crate) fn build(
        ctx: &GpuContext,
        levels: usize,
        precision: Precision,
        record: impl FnOnce(&mut Graph, &[Value], Value, Value),
    ) -> Result<Self> {
        ctx.check_precision(OP, precision)?;
        if levels == 0 || levels > MAX_LEVELS {
            return Err(Error::invalid(
                OP,
                format!("{levels} levels; the pooling takes 1 to {MAX_LEVELS} (P2..P5: 4)"),
            ));
        }
        let mut g = Graph::new();
        let pictures = g.input();
        let level_values: Vec<Value> = (0..levels)
            .map(|l| g.push(format!("level {l}"), Input, &[]))
            .collect();
        let proposals = g.push("proposals", Input, &[]);
        record(&mut g, &level_values, proposals, pictures);
        g.check_wiring()?;
        let passes_applied = passes::optimize(&mut g);
        let target = Target {
            precision,
            layout: MemoryFormat::Nchw,
            cooperative: false,
            winograd: false,
        };
        let mut nodes = Vec::with_capacity(g.nodes().len());
        for node in g.nodes() {
            let op = node
                .op
                .lower(ctx, &target)
                .map_err(|e| at_node(&node.name, e))?;
            nodes.push(LoweredNode {
                name: node.name.clone(),
                input: node.op.is::<Input>(),
                op,
                inputs: node.inputs.clone(),
                rows: node.rows,
                precision: node.op.output_precision(precision),
            });
        }
        Ok(LoweredHeads {
            ctx: ctx.clone(),
            nodes,
            outputs: g.outputs().to_vec(),
            levels,
            precision,
            passes_applied,
        })
    }

    /// The graph passes that changed the graph when it was lowered, in the order they did.
    pub(crate) fn passes_applied(&self) -> &[&'static str] {
        &self.passes_applied
    }

    /// Runs the graph in one submit, not waiting for the GPU: `levels` `[N, C, h_l, w_l]`
    /// finest first (converted to the heads' precision if stored otherwise), `proposals` f32
    /// records `[N, 1, R, 6]`, for `N` pictures of shape `pictures`; returns its outputs.
    pub(crate) fn run(
        &self,
        levels: &[&Tensor],
        proposals: &Tensor,
        pictures: [usize; 4],
    ) -> Result<HeadsOutputs> {
        self.ctx.check_alive()?;
        if levels.len() != self.levels {
            return Err(Error::invalid(
                OP,
                format!(
                    "{} levels given; these heads were lowered for {}",
                    levels.len(),
                    self.levels
                ),
            ));
        }
        if proposals.precision() != Precision::F32 {
            return Err(Error::invalid(
                OP,
                "the proposals must be a float32 tensor of records (word 5 holds a label's u32 bits)",
            ));
        }
        let [n, _, h, w] = pictures;
        // Only the pictures' shape is read: one channel stands in for them.
        let stand_in = Tensor::empty(&self.ctx, [n, 1, h, w])?;
        let mut given = vec![stand_in];
        for level in levels {
            given.push(convert::convert(&self.ctx, level, self.precision)?);
        }
        given.push(proposals.clone());
        let mut given = given.into_iter();
        let mut values: Vec<Tensor> = Vec::with_capacity(self.nodes.len());
        for node in &self.nodes {
            if node.input {
                let Some(t) = given.next() else {
                    return Err(Error::invalid(OP, "more graph inputs than values given"));
                };
                values.push(t);
                continue;
            }
            let shapes: Vec<[usize; 4]> = node.inputs.iter().map(|&i| values[i].shape()).collect();
            let shape = node
                .op
                .output_shape(&shapes)
                .map_err(|e| at_node(&node.name, e))?;
            values.push(Tensor::empty_as(&self.ctx, shape, node.precision)?);
        }
        let mut prepared = Vec::with_capacity(self.nodes.len());
        for (i, node) in self.nodes.iter().enumerate() {
            let launches = if node.input {
                Vec::new()
            } else {
                let inputs: Vec<&Tensor> = node.inputs.iter().map(|&v| &values[v]).collect();
                node.op
                    .prepare(&self.ctx, &inputs, &values[i], Launch::default())
                    .map_err(|e| at_node(&node.name, e))?
            };
            prepared.push(NodeLaunches {
                name: &node.name,
                launches,
                out: &values[i],
                rows: node.rows.map(|v| (v, &values[v])),
            });
        }
        let grids = size_by_rows(&self.ctx, &mut prepared)?;
        let mut dispatches: Vec<&Dispatch> = Vec::new();
        for (node, grid) in prepared.iter().zip(&grids) {
            dispatches.extend(grid);
            dispatches.extend(&node.launches);
        }
        self.ctx.submit(&dispatches)?;
        Ok(HeadsOutputs(
            self.outputs
                .iter()
                .map(|(name, v)| (name.clone(), values[*v].clone()))
                .collect(),
        ))
    }
}

/// The named outputs of one [`LoweredHeads::run`].
pub(crate) struct HeadsOutputs(Vec<(String, Tensor)>);

impl HeadsOutputs {
    /// The output `name`.
    pub(crate) fn get(&self, name: &str) -> Result<Tensor> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t.clone())
            .ok_or_else(|| Error::invalid(OP, format!("no output `{name}`")))
    }
}

/// The outputs of [`GpuRoiHeads::forward`], on the GPU.
pub struct RoiHeadsOutput {
    /// The class probabilities `[N R, C, 1, 1]` (f32).
    pub scores: Tensor,
    /// `bbox_pred`'s output `[N R, 4 C, 1, 1]`, stored in the heads' precision.
    pub box_regression: Tensor,
    /// The candidates before NMS `[N, 1, R K, 6]`.
    pub candidates: Tensor,
    /// The detections `[N, 1, D, 6]`: boxes in the pictures' pixels, score, label bits; best
    /// first, empty records (score -1) after the last.
    pub detections: Tensor,
}

/// [`RoiHeads`] on a device, run on levels and proposals the caller gives.
pub struct GpuRoiHeads {
    heads: LoweredHeads,
}

impl GpuRoiHeads {
    /// The graph passes that changed the heads' graph when they were lowered, in the order
    /// they did (v2's batch norms: `fold_batch_norm`, then `fuse_relu`).
    pub fn passes_applied(&self) -> &[&'static str] {
        self.heads.passes_applied()
    }

    /// Runs the heads in one submit, not waiting for the GPU: `levels` `[N, C, h_l, w_l]`
    /// finest first (converted to the heads' precision if stored otherwise), `proposals` f32
    /// records `[N, 1, R, 6]` in the resized picture's pixels (empty slots, score -1, have no
    /// detections), for `N` pictures of shape `pictures` `[N, 3, H, W]` before the resize.
    pub fn forward(
        &self,
        levels: &[&Tensor],
        proposals: &Tensor,
        pictures: [usize; 4],
    ) -> Result<RoiHeadsOutput> {
        let out = self.heads.run(levels, proposals, pictures)?;
        Ok(RoiHeadsOutput {
            scores: out.get("scores")?,
            box_regression: out.get("box_regression")?,
            candidates: out.get("candidates")?,
            detections: out.get("detections")?,
        })
    }
}
