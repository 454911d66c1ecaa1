//! torchvision's RetinaNet head (v1: four 3x3 conv + ReLU layers per branch, no norm), run over
//! the pyramid levels packed into one map so that each layer is one launch for all levels.

use crate::graph::ops::detect::{DetectionGeometry, MaskLevels};
use crate::graph::{Graph, Value};
use crate::model::layers::{relu, Conv2d};
use crate::model::PYRAMID_CHANNELS;
use crate::weights::VarBuilder;

/// Hidden layers of each branch.
pub const HEAD_DEPTH: usize = 4;

/// One branch: the hidden convolutions, then the prediction convolution.
struct Branch {
    hidden: Vec<Conv2d>,
    predict: Conv2d,
}

impl Branch {
    fn new(vb: &VarBuilder, predict: &str, outputs: usize) -> Self {
        let c = PYRAMID_CHANNELS;
        Branch {
            hidden: (0..HEAD_DEPTH)
                .map(|i| Conv2d::new(&vb.pp("conv").pp(i).pp(0), c, c, 3, 1, 1, true))
                .collect(),
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
        let mut x = packed;
        for conv in &self.hidden {
            let y = conv.forward(g, x);
            let y = relu(g, y);
            // The bias and ReLU leave values between the levels: zero them, so that the next
            // layer sees each level with zero padding around it.
            x = g.push(
                "mask_levels",
                MaskLevels {
                    geometry: geometry.clone(),
                    padding: (0, 0),
                },
                &[y, pictures],
            );
        }
        self.predict.forward(g, x)
    }
}

/// The classification and regression branches, weights under `head.`.
pub struct RetinaNetHead {
    classification: Branch,
    regression: Branch,
}

impl RetinaNetHead {
    /// Reads `classification_head.{conv.i.0, cls_logits}` and `regression_head.{conv.i.0,
    /// bbox_reg}` under `vb` for `anchors` anchors per location and `classes` classes.
    pub fn new(vb: &VarBuilder, anchors: usize, classes: usize) -> Self {
        RetinaNetHead {
            classification: Branch::new(
                &vb.pp("classification_head"),
                "cls_logits",
                anchors * classes,
            ),
            regression: Branch::new(&vb.pp("regression_head"), "bbox_reg", anchors * 4),
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
