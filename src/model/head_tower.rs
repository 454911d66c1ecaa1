//! The hidden layers of a one-stage detector's head branch ("tower"): four 3x3 convolutions of
//! the pyramid's channels, each followed by ReLU, with or without a group norm between, run
//! over the levels packed into one map so that each layer is one launch for all levels.

use std::sync::Arc;

use crate::graph::ops::detect::{DetectionGeometry, GroupNormLevels, HostGroupNorm, MaskLevels};
use crate::graph::{Graph, Value};
use crate::model::layers::{relu, Conv2d};
use crate::model::PYRAMID_CHANNELS;
use crate::weights::{Init, VarBuilder};

/// Hidden layers of each branch.
pub const HEAD_DEPTH: usize = 4;

/// Groups of the heads' group norms (torchvision: `partial(nn.GroupNorm, 32)`).
pub const HEAD_NORM_GROUPS: usize = 32;

/// `nn.GroupNorm`'s default epsilon.
pub const HEAD_NORM_EPS: f32 = 1e-5;

/// How a branch's hidden layers are built and named in torchvision's `state_dict`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TowerStyle {
    /// RetinaNet v1 (`Conv2dNormActivation` without norm): `conv.{i}.0` with bias, ReLU.
    Plain,
    /// RetinaNet v2 (`Conv2dNormActivation` with `GroupNorm(32)`): `conv.{i}.0` without bias
    /// (the norm makes it redundant), `conv.{i}.1` the norm, ReLU.
    NormActivation,
    /// FCOS (a flat `nn.Sequential`): `conv.{3i}` with bias, `conv.{3i+1}` `GroupNorm(32)`,
    /// `conv.{3i+2}` the ReLU.
    ConvNormRelu,
}

/// One hidden layer: the convolution and, for the normalised styles, the norm's parameters.
struct Layer {
    conv: Conv2d,
    norm: Option<(String, Arc<HostGroupNorm>)>,
}

/// A branch's hidden layers.
pub struct Tower {
    layers: Vec<Layer>,
}

/// Reads `nn.GroupNorm`'s `weight` and `bias` under `vb`.
fn group_norm(vb: &VarBuilder) -> (String, Arc<HostGroupNorm>) {
    let c = [PYRAMID_CHANNELS];
    let weights = HostGroupNorm {
        weight: vb.get("weight", &c, Init::BnWeight),
        bias: vb.get("bias", &c, Init::BnBias),
    };
    (vb.prefix().to_string(), Arc::new(weights))
}

impl Tower {
    /// Reads the hidden layers under `vb` (a branch's prefix, e.g. `head.classification_head`)
    /// as `style` names them.
    pub fn new(vb: &VarBuilder, style: TowerStyle) -> Self {
        let c = PYRAMID_CHANNELS;
        let conv = vb.pp("conv");
        let layers = (0..HEAD_DEPTH)
            .map(|i| match style {
                TowerStyle::Plain => Layer {
                    conv: Conv2d::new(&conv.pp(i).pp(0), c, c, 3, 1, 1, true),
                    norm: None,
                },
                TowerStyle::NormActivation => Layer {
                    conv: Conv2d::new(&conv.pp(i).pp(0), c, c, 3, 1, 1, false),
                    norm: Some(group_norm(&conv.pp(i).pp(1))),
                },
                TowerStyle::ConvNormRelu => Layer {
                    conv: Conv2d::new(&conv.pp(3 * i), c, c, 3, 1, 1, true),
                    norm: Some(group_norm(&conv.pp(3 * i + 1))),
                },
            })
            .collect();
        Tower { layers }
    }

    /// Records the hidden layers on the packed levels `packed`; the result is zero between the
    /// levels, so that the next 3x3 convolution sees each level with zero padding around it.
    pub fn forward(
        &self,
        g: &mut Graph,
        packed: Value,
        pictures: Value,
        geometry: &DetectionGeometry,
    ) -> Value {
        let mut x = packed;
        for layer in &self.layers {
            let y = layer.conv.forward(g, x);
            x = match &layer.norm {
                // The norm's statistics are each level's own, and it writes zeros between the
                // levels itself, with the ReLU fused.
                Some((name, weights)) => g.push(
                    name.as_str(),
                    GroupNormLevels {
                        geometry: geometry.clone(),
                        groups: HEAD_NORM_GROUPS,
                        eps: HEAD_NORM_EPS,
                        relu: true,
                        padding: (0, 0),
                        weights: weights.clone(),
                    },
                    &[y, pictures],
                ),
                None => {
                    let y = relu(g, y);
                    // The bias and ReLU leave values between the levels: zero them.
                    g.push(
                        "mask_levels",
                        MaskLevels {
                            geometry: geometry.clone(),
                            padding: (0, 0),
                        },
                        &[y, pictures],
                    )
                }
            };
        }
        x
    }
}
