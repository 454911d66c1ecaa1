//! torchvision's RetinaNet head: a classification and a regression branch of four hidden 3x3
//! layers each (v1: conv + ReLU; v2: conv + `GroupNorm(32)` + ReLU), then the prediction
//! convolution, run over the pyramid levels packed into one map so that each layer is one
//! launch for all levels.

use crate::graph::ops::detect::DetectionGeometry;
use crate::graph::{Graph, Value};
use crate::model::head_tower::{Tower, TowerStyle};
use crate::model::layers::Conv2d;
use crate::model::PYRAMID_CHANNELS;
use crate::weights::VarBuilder;

/// One branch: the hidden layers, then the prediction convolution.
struct Branch {
    tower: Tower,
    predict: Conv2d,
}

impl Branch {
    fn new(vb: &VarBuilder, style: TowerStyle, predict: &str, outputs: usize) -> Self {
        let c = PYRAMID_CHANNELS;
        Branch {
            tower: Tower::new(vb, style),
            predict: Conv2d::new(&vb.pp(predict), c, outputs, 3, 1, 1, true),
        }
    }

    fn forward(
        &self,
        g: &mut Graph,
        packed: Value,
        pictures: Value,
        geometry: &DetectionGeometry,
    ) -> Value {
        let x = self.tower.forward(g, packed, pictures, geometry);
        self.predict.forward(g, x)
    }
}

/// The classification and regression branches, weights under `head.`.
pub struct RetinaNetHead {
    classification: Branch,
    regression: Branch,
}

impl RetinaNetHead {
    /// Reads `classification_head.{conv, cls_logits}` and `regression_head.{conv, bbox_reg}`
    /// under `vb` for `anchors` anchors per location and `classes` classes, the hidden layers
    /// as `style` names them ([`TowerStyle::Plain`] for v1, [`TowerStyle::NormActivation`]
    /// for v2).
    pub fn new(vb: &VarBuilder, style: TowerStyle, anchors: usize, classes: usize) -> Self {
        RetinaNetHead {
            classification: Branch::new(
                &vb.pp("classification_head"),
                style,
                "cls_logits",
                anchors * classes,
            ),
            regression: Branch::new(&vb.pp("regression_head"), style, "bbox_reg", anchors * 4),
        }
    }

    /// Records both branches on the packed levels; returns (class logits, box regression),
    /// each over the packed map.
    pub fn forward(
        &self,
        g: &mut Graph,
        packed: Value,
        pictures: Value,
        geometry: &DetectionGeometry,
    ) -> (Value, Value) {
        g.set_stage("classification head");
        let logits = self.classification.forward(g, packed, pictures, geometry);
        g.set_stage("regression head");
        let regression = self.regression.forward(g, packed, pictures, geometry);
        (logits, regression)
    }
}
