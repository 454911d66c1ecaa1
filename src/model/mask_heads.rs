//! torchvision's Mask R-CNN mask branch in eval mode, after the box branch ([`RoiHeads`]): from
//! the FPN levels P2..P5 and the kept detections to each detection's mask in its picture, all
//! on the GPU.
//!
//! `MultiScaleRoIAlign` 14x14 (sampling ratio 2) of every detection box, `MaskRCNNHeads` (3x3
//! convs with ReLU; v2: batch norm after each conv, folded into it), `MaskRCNNPredictor`
//! (`conv5_mask`, a 2x2 stride-2 transposed convolution with ReLU, then the 1x1
//! `mask_fcn_logits`), `maskrcnn_inference` (the sigmoid of each detection's class channel,
//! [`SelectMasks`]) and the transform's `paste_masks_in_image` ([`PasteMasks`]).
//!
//! # Which pixels the boxes are in
//! torchvision pools the masks at the detection boxes as `postprocess_detections` leaves them,
//! in the resized picture's pixels; only the transform's `postprocess` then scales the boxes
//! to the original picture (`resize_boxes`: per axis, the f32 ratio original / resized) and
//! pastes the masks at the scaled boxes. So the box branch's NMS keeps the resized boxes
//! ([`RoiHeadsValues::resized_detections`], what the pooling reads) and one small launch scales
//! them with those f32 products ([`ScaleToPictures`], [`RoiHeadsValues::detections`], what the
//! pasting and the output read). Both frames are then exactly torchvision's: scaling the boxes
//! back inside the pooling instead would divide the already scaled boxes, which does not give
//! the resized boxes' bits back, and could move a box across a `LevelMapper` boundary or a
//! pasted edge across a pixel. The one-stage detectors' NMS still scales as it writes.
//!
//! The weights are read under torchvision's names: `roi_heads.mask_head.{i}.0.weight`
//! (`MaskRCNNHeads` as an `nn.Sequential` of `Conv2dNormActivation`; v1's convs have a bias,
//! v2's a batch norm at `mask_head.{i}.1`), the names of checkpoints saved before that
//! (`mask_head.mask_fcn{i+1}.*`, renamed as torchvision's `_load_from_state_dict` does),
//! `roi_heads.mask_predictor.conv5_mask.*` and `roi_heads.mask_predictor.mask_fcn_logits.*`.
//! The widths and `num_classes` come from the shapes ([`MaskHeadsConfig::recognise`]).

use crate::error::{Error, Result};
use crate::gpu::GpuContext;
#[cfg(doc)]
use crate::graph::ops::detect::ScaleToPictures;
use crate::graph::ops::detect::{
    CompactOptions, CompactRecords, MultiScaleRoiAlign, PasteMasks, ResizeRule, SelectMasks,
};
use crate::graph::ops::ConvTranspose2dOptions;
use crate::graph::{Graph, Value};
use crate::model::layers::{relu, BatchNorm2d, Conv2d, ConvTranspose2d};
#[cfg(doc)]
use crate::model::roi_heads::RoiHeadsValues;
use crate::model::roi_heads::{LoweredHeads, RoiHeads};
use crate::precision::Precision;
use crate::tensor::Tensor;
use crate::tensor_file::TensorMap;
use crate::weights::{is_ignored, VarBuilder, VarStore};

/// Bins per side of the mask head's pooling (torchvision's `MultiScaleRoIAlign(..., 14, 2)`).
pub const MASK_POOLED_SIZE: usize = 14;

const OP: &str = "MaskHeads";

/// The structure of the mask branch: its input width, convs, predictor and classes.
#[derive(Clone, Debug, PartialEq)]
pub struct MaskHeadsConfig {
    /// Channels of the pyramid levels (the FPN's `out_channels`, 256 for torchvision's).
    pub in_channels: usize,
    /// Output channels of each 3x3 conv of `MaskRCNNHeads`, in order (torchvision: four of
    /// 256).
    pub layers: Vec<usize>,
    /// Whether each conv is followed by a batch norm (v2) rather than having a bias (v1).
    pub batch_norm: bool,
    /// Output channels of `conv5_mask` (torchvision's `dim_reduced`, 256).
    pub dim_reduced: usize,
    /// Classes of the predictor, background included (91 for COCO).
    pub num_classes: usize,
    /// The batch norm epsilon of v2's convs (`nn.BatchNorm2d`'s default 1e-5).
    pub bn_eps: f32,
}

impl MaskHeadsConfig {
    /// The mask branch a `state_dict` holds under `roi_heads.`, for levels of `in_channels`
    /// (old `mask_fcn{i}` names must have been renamed first, as [`MaskHeads::from_tensors`]
    /// does): the convs counted from `mask_head.{i}.0.weight`, batch norm when
    /// `mask_head.0.1.weight` is there, `dim_reduced` from `conv5_mask` and `num_classes` from
    /// `mask_fcn_logits`. Shapes the names do not settle are checked when the heads read their
    /// tensors.
    pub fn recognise(store: &VarStore, in_channels: usize) -> Result<Self> {
        let origin = store.origin();
        let head = "roi_heads.mask_head";
        let mut layers = Vec::new();
        while let Some(shape) = store.shape_of(&format!("{head}.{}.0.weight", layers.len())) {
            match *shape {
                [cout, _, 3, 3] if cout > 0 => layers.push(cout),
                _ => {
                    return Err(Error::invalid(
                        OP,
                        format!(
                            "{origin}: `{head}.{}.0.weight` has shape {shape:?}; MaskRCNNHeads' convs are 3x3, [out, in, 3, 3]",
                            layers.len()
                        ),
                    ))
                }
            }
        }
        if layers.is_empty() {
            return Err(Error::invalid(
                OP,
                format!(
                    "{origin} has no mask head: neither `{head}.0.0.weight` nor `{head}.mask_fcn1.weight`; give a Mask R-CNN state_dict with its `roi_heads.mask_head.*` and `roi_heads.mask_predictor.*` tensors"
                ),
            ));
        }
        let batch_norm = store.shape_of(&format!("{head}.0.1.weight")).is_some();
        let conv5 = "roi_heads.mask_predictor.conv5_mask.weight";
        let dim_reduced = match store.shape_of(conv5) {
            Some(&[_, out, 2, 2]) if out > 0 => out,
            Some(shape) => {
                return Err(Error::invalid(
                    OP,
                    format!(
                        "{origin}: `{conv5}` has shape {shape:?}; MaskRCNNPredictor's conv5_mask is a 2x2 transposed convolution, [in, dim_reduced, 2, 2]"
                    ),
                ))
            }
            None => {
                return Err(Error::invalid(
                    OP,
                    format!("{origin} has a mask head but no `{conv5}`; the mask predictor is missing"),
                ))
            }
        };
        let logits = "roi_heads.mask_predictor.mask_fcn_logits.weight";
        let num_classes = match store.shape_of(logits) {
            Some(&[classes, _, 1, 1]) if classes >= 2 => classes,
            Some(shape) => {
                return Err(Error::invalid(
                    OP,
                    format!(
                        "{origin}: `{logits}` has shape {shape:?}; MaskRCNNPredictor's mask_fcn_logits is a 1x1 conv, [num_classes >= 2 (background included), dim_reduced, 1, 1]"
                    ),
                ))
            }
            None => {
                return Err(Error::invalid(
                    OP,
                    format!("{origin} has a mask head but no `{logits}`; the mask predictor is missing"),
                ))
            }
        };
        Ok(MaskHeadsConfig {
            in_channels,
            layers,
            batch_norm,
            dim_reduced,
            num_classes,
            bn_eps: 1e-5,
        })
    }

    /// torchvision's Mask R-CNN v1 mask branch: four convs of 256 with biases, `dim_reduced`
    /// 256, on 256 channels.
    pub fn mask_rcnn(num_classes: usize) -> Self {
        MaskHeadsConfig {
            in_channels: 256,
            layers: vec![256; 4],
            batch_norm: false,
            dim_reduced: 256,
            num_classes,
            bn_eps: 1e-5,
        }
    }

    /// torchvision's Mask R-CNN v2 mask branch: the same with batch norm after each conv.
    pub fn mask_rcnn_v2(num_classes: usize) -> Self {
        MaskHeadsConfig {
            batch_norm: true,
            ..Self::mask_rcnn(num_classes)
        }
    }

    /// The branch in words, for messages.
    pub fn describe(&self) -> String {
        format!(
            "{}: MaskRCNNHeads {:?}{} on {} channels, dim_reduced {}, {} classes",
            if self.batch_norm { "v2" } else { "v1" },
            self.layers,
            if self.batch_norm {
                " with batch norm"
            } else {
                ""
            },
            self.in_channels,
            self.dim_reduced,
            self.num_classes
        )
    }
}

/// The values [`MaskHeads::record`] adds to a graph, each of `N D` rows. The branch runs on
/// the kept detections of the batch alone, as torchvision's runs on its list of them: row `r`
/// of `kept`, `logits` and `probabilities` is the `r`-th kept detection in picture order
/// (picture `n`'s `K_n` from row `K_0 + ... + K_{n-1}`), and the pasted masks go back to their
/// detections' slots (`masks` row `n D + j` for picture `n`'s detection `j`). Rows beyond
/// those are not computed where the device launches indirectly (see [`Graph::set_rows`]);
/// read the kept detections' rows only.
#[derive(Clone, Copy, Debug)]
pub struct MaskHeadsValues {
    /// The kept detections `[N, 1, D, 6]` in the pictures' pixels, compacted; empty records
    /// (score -1) after the last.
    pub kept: Value,
    /// `mask_fcn_logits`' output `[N D, num_classes, 28, 28]`, row `r` for `kept`'s record `r`.
    pub logits: Value,
    /// The probabilities of each detection's class `[N D, 1, 28, 28]` (f32), row `r` for
    /// `kept`'s record `r`: torchvision's `masks` before the transform's `postprocess`.
    pub probabilities: Value,
    /// The masks pasted into the pictures `[N D, 1, H, W]` (f32 probabilities), row `n D + j`
    /// for picture `n`'s detection `j`: torchvision's final `masks`.
    pub masks: Value,
}

/// torchvision's Mask R-CNN mask branch with its weights in host memory.
pub struct MaskHeads {
    config: MaskHeadsConfig,
    convs: Vec<(Conv2d, Option<BatchNorm2d>)>,
    conv5_mask: ConvTranspose2d,
    mask_fcn_logits: Conv2d,
}

impl MaskHeads {
    /// Reads the branch `config` describes under `vb`'s `roi_heads.` (the root of a whole
    /// model's `state_dict`). Missing and mis-shaped tensors are reported by the store's
    /// [`VarStore::finish`], which the caller runs once the whole model is read.
    pub fn new(vb: &VarBuilder, config: &MaskHeadsConfig) -> Result<Self> {
        if config.num_classes < 2
            || config.in_channels == 0
            || config.dim_reduced == 0
            || config.layers.is_empty()
            || config.layers.contains(&0)
        {
            return Err(Error::invalid(
                OP,
                format!(
                    "{}; the mask branch needs at least 2 classes (background included), one conv and no zero width",
                    config.describe()
                ),
            ));
        }
        let heads = vb.pp("roi_heads");
        let head = heads.pp("mask_head");
        let mut cin = config.in_channels;
        let mut convs = Vec::with_capacity(config.layers.len());
        for (i, &cout) in config.layers.iter().enumerate() {
            let block = head.pp(i);
            // Conv2dNormActivation: a bias only without a norm; torchvision's mask_dilation 1.
            let conv = Conv2d::new(&block.pp(0), cin, cout, 3, 1, 1, !config.batch_norm);
            let bn = config
                .batch_norm
                .then(|| BatchNorm2d::new(&block.pp(1), cout, config.bn_eps));
            convs.push((conv, bn));
            cin = cout;
        }
        let predictor = heads.pp("mask_predictor");
        Ok(MaskHeads {
            config: config.clone(),
            convs,
            conv5_mask: ConvTranspose2d::new(
                &predictor.pp("conv5_mask"),
                cin,
                config.dim_reduced,
                2,
                true,
                ConvTranspose2dOptions::mask_upsample(),
            ),
            mask_fcn_logits: Conv2d::new(
                &predictor.pp("mask_fcn_logits"),
                config.dim_reduced,
                config.num_classes,
                1,
                1,
                0,
                true,
            ),
        })
    }

    /// The mask branch of a `state_dict` (a whole Mask R-CNN's, or its `roi_heads.*` alone),
    /// for levels of `in_channels`: the `roi_heads.mask_head.*` and `roi_heads.mask_predictor.*`
    /// tensors recognised ([`MaskHeadsConfig::recognise`]) and read; any of them missing,
    /// mis-shaped or left over is an [`Error::Weights`] naming it. The box branch's tensors are
    /// left to [`RoiHeads::from_tensors`], the rest to the rest of the model.
    pub fn from_tensors(origin: &str, tensors: &TensorMap, in_channels: usize) -> Result<Self> {
        let mut heads: TensorMap = tensors
            .iter()
            .filter(|(n, _)| {
                (n.starts_with("roi_heads.mask_head.")
                    || n.starts_with("roi_heads.mask_predictor."))
                    && !is_ignored(n)
            })
            .map(|(n, t)| (n.clone(), t.clone()))
            .collect();
        rename_mask_fcn(&mut heads, origin);
        let store = VarStore::from_tensors(origin, heads);
        let config = MaskHeadsConfig::recognise(&store, in_channels)?;
        let heads = Self::new(&store.root(), &config)?;
        store.finish_for(&format!(
            "torchvision's Mask R-CNN mask branch ({})",
            config.describe()
        ))?;
        Ok(heads)
    }

    /// The structure read.
    pub fn config(&self) -> &MaskHeadsConfig {
        &self.config
    }

    /// Records the branch into `g`: `levels` the pyramid levels `[N, C, h, w]` finest first
    /// (P2..P5), `resized_detections` the box branch's kept records `[N, 1, D, 6]` in the
    /// resized picture's pixels (where the masks are pooled), `detections` the same records in
    /// the pictures' pixels (where they are pasted), `pictures` the detector's input
    /// `[N, 3, H, W]` (its shape alone is read), pictures resized by `resize`. Both records come
    /// from [`RoiHeads::record`].
    pub fn record(
        &self,
        g: &mut Graph,
        resize: ResizeRule,
        levels: &[Value],
        resized_detections: Value,
        detections: Value,
        pictures: Value,
    ) -> MaskHeadsValues {
        g.set_stage("mask head");
        // The kept detections first, so that the branch's launches are sized by their count
        // rather than by the N D slots. The records the pooling and the pasting read carry
        // each detection's slot (its picture, and where its mask goes back to); the selection
        // reads the labels.
        let from_slots = CompactRecords(CompactOptions { source_row: true });
        let rois = g.push("roi_heads.mask_rois", from_slots, &[resized_detections]);
        let kept = g.push(
            "roi_heads.mask_detections",
            CompactRecords(CompactOptions::default()),
            &[detections],
        );
        let placed = g.push("transform.mask_boxes", from_slots, &[detections]);
        g.set_rows(Some(kept));
        let mut pool_inputs = levels.to_vec();
        pool_inputs.extend([rois, pictures]);
        let mut pool = MultiScaleRoiAlign::new(resize, MASK_POOLED_SIZE);
        pool.options.rows_in_record = true;
        let mut x = g.push("roi_heads.mask_roi_pool", pool, &pool_inputs);
        for (conv, bn) in &self.convs {
            x = conv.forward(g, x);
            if let Some(bn) = bn {
                x = bn.forward(g, x);
            }
            x = relu(g, x);
        }
        x = self.conv5_mask.forward(g, x);
        let logits = self.mask_fcn_logits.forward(g, x);
        let probabilities = g.push("roi_heads.mask_probs", SelectMasks, &[logits, kept]);
        g.set_stage("postprocess");
        let masks = g.push(
            "transform.paste_masks",
            PasteMasks {
                rows_in_record: true,
            },
            &[probabilities, placed, pictures],
        );
        g.set_rows(None);
        MaskHeadsValues {
            kept,
            logits,
            probabilities,
            masks,
        }
    }

    /// The box branch `boxes` and this mask branch on `ctx`, chained as in Mask R-CNN, for
    /// `levels` pyramid levels (4 for P2..P5) of pictures resized by `resize`, weights and
    /// values stored in `precision`: batch norm folded into the convs and ReLUs fused, weights
    /// uploaded. The two branches must agree on the levels' channels and the classes.
    pub fn lower(
        &self,
        ctx: &GpuContext,
        boxes: &RoiHeads,
        levels: usize,
        resize: ResizeRule,
        precision: Precision,
    ) -> Result<GpuMaskRcnnHeads> {
        let b = boxes.config();
        if b.in_channels != self.config.in_channels || b.num_classes != self.config.num_classes {
            return Err(Error::invalid(
                OP,
                format!(
                    "the box branch reads {} channels for {} classes but the mask branch {} for {}; give both branches of one model",
                    b.in_channels, b.num_classes, self.config.in_channels, self.config.num_classes
                ),
            ));
        }
        let heads = LoweredHeads::build(
            ctx,
            levels,
            precision,
            |g, level_values, proposals, pictures| {
                let box_values = boxes.record(g, resize, level_values, proposals, pictures);
                let mask_values = self.record(
                    g,
                    resize,
                    level_values,
                    box_values.resized_detections,
                    box_values.detections,
                    pictures,
                );
                g.output("detections", box_values.detections);
                g.output("probabilities", mask_values.probabilities);
                g.output("masks", mask_values.masks);
            },
        )?;
        Ok(GpuMaskRcnnHeads { heads })
    }
}

/// Renames `mask_head.mask_fcn{i}.{weight,bias}` (checkpoints saved before torchvision made
/// `MaskRCNNHeads` a sequence of `Conv2dNormActivation`, its COCO v1 weights among them) to
/// `mask_head.{i-1}.0.*`, as torchvision's `_load_from_state_dict` does, unless the new name
/// is there too (the old one is then reported as unexpected).
pub(crate) fn rename_mask_fcn(tensors: &mut TensorMap, origin: &str) {
    let prefix = "roi_heads.mask_head.mask_fcn";
    let old: Vec<String> = tensors
        .keys()
        .filter(|n| n.starts_with(prefix))
        .cloned()
        .collect();
    let mut renamed = false;
    for name in old {
        let rest = &name[prefix.len()..];
        let Some((index, kind)) = rest.split_once('.') else {
            continue;
        };
        let Ok(i) = index.parse::<usize>() else {
            continue;
        };
        if i == 0 || !matches!(kind, "weight" | "bias") {
            continue;
        }
        let new = format!("roi_heads.mask_head.{}.0.{kind}", i - 1);
        if !tensors.contains_key(&new) {
            if let Some(v) = tensors.remove(&name) {
                tensors.insert(new, v);
                renamed = true;
            }
        }
    }
    if renamed {
        log::info!(
            "{origin}: `roi_heads.mask_head.mask_fcn{{i}}.*` are the names of a mask head saved \
             before torchvision's version 2 of it; read as `roi_heads.mask_head.{{i-1}}.0.*`, as \
             torchvision does"
        );
    }
}

/// The outputs of [`GpuMaskRcnnHeads::forward`], on the GPU.
pub struct MaskRcnnOutput {
    /// The detections `[N, 1, D, 6]`: boxes in the pictures' pixels, score, label bits; best
    /// first, empty records (score -1) after the last.
    pub detections: Tensor,
    /// Each kept detection's class probabilities at 28x28 `[N D, 1, 28, 28]` (f32), row `r`
    /// for the `r`-th kept detection of the batch in picture order (see [`MaskHeadsValues`]):
    /// only the first `K_0 + ... + K_{N-1}` rows hold masks.
    pub probabilities: Tensor,
    /// The masks pasted into the pictures `[N D, 1, H, W]` (f32), row `n D + j` for picture
    /// `n`'s detection `j`; only the first `K_n` of each picture's `D` rows hold masks.
    pub masks: Tensor,
}

/// Mask R-CNN's second stage (boxes, then masks) on a device, run on levels and proposals the
/// caller gives.
pub struct GpuMaskRcnnHeads {
    heads: LoweredHeads,
}

impl GpuMaskRcnnHeads {
    /// The graph passes that changed the graph when it was lowered, in the order they did.
    pub fn passes_applied(&self) -> &[&'static str] {
        self.heads.passes_applied()
    }

    /// Runs both branches in one submit, not waiting for the GPU: `levels` `[N, C, h_l, w_l]`
    /// finest first (converted to the heads' precision if stored otherwise), `proposals` f32
    /// records `[N, 1, R, 6]` in the resized picture's pixels (empty slots, score -1, have no
    /// detections), for `N` pictures of shape `pictures` `[N, 3, H, W]` before the resize.
    pub fn forward(
        &self,
        levels: &[&Tensor],
        proposals: &Tensor,
        pictures: [usize; 4],
    ) -> Result<MaskRcnnOutput> {
        let out = self.heads.run(levels, proposals, pictures)?;
        Ok(MaskRcnnOutput {
            detections: out.get("detections")?,
            probabilities: out.get("probabilities")?,
            masks: out.get("masks")?,
        })
    }
}
