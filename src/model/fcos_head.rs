//! torchvision's FCOS head: a classification branch (four hidden layers of conv +
//! `GroupNorm(32)` + ReLU, then `cls_logits`) and a regression branch whose hidden layers feed
//! both the box distances (`bbox_reg`, then ReLU: distances are never negative) and the
//! centerness (`bbox_ctrness`), run over the pyramid levels packed into one map.

use crate::graph::ops::detect::DetectionGeometry;
use crate::graph::{Graph, Value};
use crate::model::head_tower::{Tower, TowerStyle};
use crate::model::layers::{relu, Conv2d};
use crate::model::PYRAMID_CHANNELS;
use crate::weights::{Init, VarBuilder};

/// What the FCOS head gives, each over the packed map.
#[derive(Clone, Copy, Debug)]
pub struct FcosOutputs {
    /// Class logits `[N, A*C, HS, WS]`.
    pub logits: Value,
    /// Distances to the box's sides, after ReLU, `[N, A*4, HS, WS]`.
    pub regression: Value,
    /// Centerness logits `[N, A, HS, WS]`.
    pub centerness: Value,
}

/// The FCOS head, weights under `head.`.
pub struct FcosHead {
    classification: Tower,
    cls_logits: Conv2d,
    regression: Tower,
    bbox_reg: Conv2d,
    bbox_ctrness: Conv2d,
}

impl FcosHead {
    /// Reads `classification_head.{conv, cls_logits}` and `regression_head.{conv, bbox_reg,
    /// bbox_ctrness}` under `vb` for `anchors` anchors per location (torchvision: 1) and
    /// `classes` classes.
    pub fn new(vb: &VarBuilder, anchors: usize, classes: usize) -> Self {
        let c = PYRAMID_CHANNELS;
        let cls = vb.pp("classification_head");
        let reg = vb.pp("regression_head");
        FcosHead {
            classification: Tower::new(&cls, TowerStyle::ConvNormRelu),
            cls_logits: Conv2d::new(&cls.pp("cls_logits"), c, anchors * classes, 3, 1, 1, true),
            regression: Tower::new(&reg, TowerStyle::ConvNormRelu),
            bbox_reg: Conv2d::with_bias_init(
                &reg.pp("bbox_reg"),
                c,
                anchors * 4,
                3,
                1,
                1,
                Some(Init::DistanceBias),
            ),
            bbox_ctrness: Conv2d::new(&reg.pp("bbox_ctrness"), c, anchors, 3, 1, 1, true),
        }
    }

    /// Records both branches on the packed levels.
    pub fn forward(
        &self,
        g: &mut Graph,
        packed: Value,
        pictures: Value,
        geometry: &DetectionGeometry,
    ) -> FcosOutputs {
        g.set_stage("classification head");
        let x = self.classification.forward(g, packed, pictures, geometry);
        let logits = self.cls_logits.forward(g, x);
        g.set_stage("regression head");
        let x = self.regression.forward(g, packed, pictures, geometry);
        let distances = self.bbox_reg.forward(g, x);
        let regression = relu(g, distances);
        let centerness = self.bbox_ctrness.forward(g, x);
        FcosOutputs {
            logits,
            regression,
            centerness,
        }
    }
}
