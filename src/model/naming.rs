//! How each layout names the tensors of the one network they all describe: the ResNet's stem,
//! layers, blocks and shortcuts, and the FPN's lateral, output and extra convs. The builders
//! ([`crate::model::resnet`], [`crate::model::pyramid_head`]) ask here, so that a layout is
//! names only and the network is built once.
//!
//! Every name is relative to the root of the state_dict the layout reads: a torchvision or
//! timm `BackboneWithFPN` (`body.`, `fpn.`), detectron2's FPN backbone module (`bottom_up.`,
//! `fpn_lateral2`; a whole detectron2 model has it under `backbone.`), or a whole mmdetection
//! detector (`backbone.`, `neck.`).

use crate::model::config::{Layout, Stem};

/// A conv and the batch norm after it, by name.
pub struct ConvNorm {
    /// The conv's prefix (`{conv}.weight`).
    pub conv: String,
    /// The norm's prefix (`{norm}.running_mean`).
    pub norm: String,
}

fn pair(conv: impl Into<String>, norm: impl Into<String>) -> ConvNorm {
    ConvNorm {
        conv: conv.into(),
        norm: norm.into(),
    }
}

/// Where the ResNet's tensors sit under the root.
pub fn backbone_prefix(layout: Layout) -> &'static str {
    match layout {
        Layout::Seed => "",
        Layout::Torchvision => "body",
        Layout::Detectron2 => "bottom_up",
        Layout::MmDetection => "backbone",
    }
}

/// The stem's convs and norms, in order, under [`backbone_prefix`].
pub fn stem(layout: Layout, stem: Stem) -> Vec<ConvNorm> {
    match (layout, stem) {
        (Layout::Detectron2, _) => vec![pair("stem.conv1", "stem.conv1.norm")],
        (_, Stem::Plain) => vec![pair("conv1", "bn1")],
        // mmdetection's deep stem is one Sequential of conv, norm, ReLU three times.
        (Layout::MmDetection, Stem::Deep(_)) => {
            vec![
                pair("stem.0", "stem.1"),
                pair("stem.3", "stem.4"),
                pair("stem.6", "stem.7"),
            ]
        }
        // timm's: `conv1` becomes a Sequential of three convs, the first two followed by their
        // norm and ReLU inside it; the last one's norm stays `bn1`.
        (_, Stem::Deep(_)) => vec![
            pair("conv1.0", "conv1.1"),
            pair("conv1.3", "conv1.4"),
            pair("conv1.6", "bn1"),
        ],
    }
}

/// The layer of stage `stage` (1..=4), under [`backbone_prefix`].
pub fn layer(layout: Layout, stage: usize) -> String {
    match layout {
        Layout::Detectron2 => format!("res{}", stage + 1),
        _ => format!("layer{stage}"),
    }
}

/// A block's `i`-th conv (1-based) and its norm, under the block's prefix.
pub fn block_conv(layout: Layout, i: usize) -> ConvNorm {
    match layout {
        Layout::Detectron2 => pair(format!("conv{i}"), format!("conv{i}.norm")),
        _ => pair(format!("conv{i}"), format!("bn{i}")),
    }
}

/// A block's projection shortcut, under the block's prefix. With `avg_down` the Sequential's
/// first entry is the pool, which has no weights.
pub fn shortcut(layout: Layout, avg_down: bool) -> ConvNorm {
    match (layout, avg_down) {
        (Layout::Seed, _) => pair("shortcut.0", "shortcut.1"),
        (Layout::Detectron2, _) => pair("shortcut", "shortcut.norm"),
        (_, false) => pair("downsample.0", "downsample.1"),
        (_, true) => pair("downsample.1", "downsample.2"),
    }
}

/// The FPN's convs, for the layouts whose FPN is torchvision's network (all but the seed).
pub struct PyramidNames {
    layout: Layout,
    /// How many lateral convs there are: mmdetection numbers its extra convs after them.
    laterals: usize,
}

impl PyramidNames {
    /// The names of an FPN of `laterals` lateral convs in `layout`.
    pub fn new(layout: Layout, laterals: usize) -> Self {
        PyramidNames { layout, laterals }
    }

    /// The `i`-th lateral 1x1 conv (finest first), on stage `stage`, and its norm when the FPN
    /// has one.
    pub fn lateral(&self, i: usize, stage: usize) -> ConvNorm {
        match self.layout {
            Layout::Detectron2 => {
                let conv = format!("fpn_lateral{}", stage + 1);
                pair(conv.clone(), format!("{conv}.norm"))
            }
            Layout::MmDetection => pair(
                format!("neck.lateral_convs.{i}.conv"),
                format!("neck.lateral_convs.{i}.bn"),
            ),
            _ => pair(
                format!("fpn.inner_blocks.{i}.0"),
                format!("fpn.inner_blocks.{i}.1"),
            ),
        }
    }

    /// The `i`-th output 3x3 conv, on stage `stage`'s merged level, and its norm.
    pub fn output(&self, i: usize, stage: usize) -> ConvNorm {
        match self.layout {
            Layout::Detectron2 => {
                let conv = format!("fpn_output{}", stage + 1);
                pair(conv.clone(), format!("{conv}.norm"))
            }
            Layout::MmDetection => pair(
                format!("neck.fpn_convs.{i}.conv"),
                format!("neck.fpn_convs.{i}.bn"),
            ),
            _ => pair(
                format!("fpn.layer_blocks.{i}.0"),
                format!("fpn.layer_blocks.{i}.1"),
            ),
        }
    }

    /// The `j`-th extra conv above the backbone's levels, and its norm (only mmdetection's
    /// extra convs carry the FPN's norm; torchvision's and detectron2's `p6`/`p7` have none).
    pub fn extra(&self, j: usize) -> ConvNorm {
        match self.layout {
            Layout::Detectron2 => pair(format!("top_block.p{}", 6 + j), ""),
            Layout::MmDetection => {
                let i = self.laterals + j;
                pair(
                    format!("neck.fpn_convs.{i}.conv"),
                    format!("neck.fpn_convs.{i}.bn"),
                )
            }
            _ => pair(format!("fpn.extra_blocks.p{}", 6 + j), ""),
        }
    }

    /// Whether the extra convs carry the FPN's norm.
    pub fn extra_has_norm(&self) -> bool {
        self.layout == Layout::MmDetection
    }
}
