//! The FPN's configuration: weight layout, the ResNet backbone (depth, block type, width,
//! groups, input channels), batch norm epsilon, upsampling mode, which backbone levels feed the
//! pyramid and the extra levels above it.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};
use crate::graph::ops::UpsampleMode;
pub use crate::model::extra_levels::{ExtraLevels, ExtraSource};
pub use crate::model::resnet_variants::{Block, ResNetStyle, Stem, STEM_CHANNELS};
use crate::model::PYRAMID_CHANNELS;

/// Which family of checkpoints the network's names and structure follow.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Layout {
    /// kuangliu's `fpn.py`: `conv1`, `layer1..4` with `shortcut`, `toplayer`, `latlayer1..3`,
    /// `smooth1..3`; bilinear top-down path, P5 not smoothed; P2..P5.
    #[default]
    Seed,
    /// torchvision's `BackboneWithFPN` (`resnet_fpn_backbone`, the backbone of Faster/Mask R-CNN
    /// and RetinaNet): `body.*` with `downsample`, `fpn.inner_blocks.*`, `fpn.layer_blocks.*`;
    /// nearest top-down path, a 3x3 output conv on every level, plus extra levels. timm's
    /// `features_only` ResNets (deep stems, average-pool shortcuts, the stem as a level) sit
    /// under `body.` with the same names.
    Torchvision,
    /// detectron2's `FPN` backbone (`build_resnet_fpn_backbone`): `bottom_up.stem.conv1`,
    /// `bottom_up.res2..5` with `shortcut` and `.norm` batch norms, `fpn_lateral{k}`,
    /// `fpn_output{k}`, `top_block.p6/p7`; nearest top-down path.
    Detectron2,
    /// mmdetection's `ResNet` backbone and `FPN` neck: `backbone.conv1` (or the deep stem
    /// `backbone.stem.*`), `backbone.layer1..4`, `neck.lateral_convs.{i}.conv`,
    /// `neck.fpn_convs.{i}.conv` (the extra convs after the outputs); nearest top-down path.
    MmDetection,
}

impl Layout {
    /// The names [`Layout::from_str`] accepts.
    pub const NAMES: &'static [&'static str] =
        &["seed", "torchvision", "detectron2", "mmdetection"];
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Layout::Seed => "seed",
            Layout::Torchvision => "torchvision",
            Layout::Detectron2 => "detectron2",
            Layout::MmDetection => "mmdetection",
        })
    }
}

impl FromStr for Layout {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "seed" => Ok(Layout::Seed),
            "torchvision" => Ok(Layout::Torchvision),
            "detectron2" => Ok(Layout::Detectron2),
            "mmdetection" => Ok(Layout::MmDetection),
            _ => Err(Error::invalid(
                "Layout",
                format!("unknown layout `{s}`; choose one of {:?}", Layout::NAMES),
            )),
        }
    }
}

/// The widest stem conv or pyramid a file's shapes may describe: far past any framework's
/// (256 pyramid channels, 128 stem channels), so that a broken file is reported instead of
/// sizing a network of terabytes.
pub const MAX_WIDTH: usize = 4096;

/// The most extra levels above the backbone's.
pub const MAX_EXTRA_LEVELS: usize = 8;

/// What varies between the FPN variants this crate runs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FpnConfig {
    /// The names and head structure.
    pub layout: Layout,
    /// Residual blocks in `layer1`..`layer4`. Layers past the deepest returned one are not
    /// built outside the seed layout (torchvision drops them too), and their counts are
    /// ignored; a checkpoint that lacks them reads as 0.
    pub blocks: [usize; 4],
    /// The block type of every layer.
    pub block: Block,
    /// Groups of the bottlenecks' 3x3 convs (ResNeXt's cardinality; 1 for ResNet).
    pub groups: usize,
    /// Channels per group of a `layer1` bottleneck's 3x3 conv, torchvision's `width_per_group`:
    /// 64 for ResNet, 128 for Wide ResNet, 4 or 8 for ResNeXt. A layer's bottleneck width is its
    /// base width (64, 128, 256, 512) times `width_per_group / 64` times `groups`.
    pub width_per_group: usize,
    /// Which conv of a bottleneck carries the stride.
    pub style: ResNetStyle,
    /// The stem before the max pool.
    pub stem: Stem,
    /// Projection shortcuts that average-pool (kernel and stride the block's stride, ceil mode,
    /// padding not counted) before a stride-1 1x1 conv: ResNet-D's, timm's and mmdetection's
    /// `avg_down`.
    pub avg_down: bool,
    /// Channels of the input image: 3 (RGB) unless the first conv says otherwise.
    pub in_channels: usize,
    /// Batch norm epsilon: PyTorch's default 1e-5; torchvision's COCO Faster R-CNN weights were
    /// trained with frozen batch norm of epsilon 0.
    pub bn_eps: f32,
    /// How the top-down path resizes a coarser level to the next finer one.
    pub upsample: UpsampleMode,
    /// Which backbone stages feed the pyramid, by index: 0 the stem's output (C1, stride 2,
    /// before the max pool; timm's `out_indices` 0), 1..=4 `layer1..4` (C2..C5, torchvision's
    /// `returned_layers`). C2..C5 except for RetinaNet, which starts at C3.
    pub returned: [bool; 5],
    /// Levels above the coarsest one.
    pub extra: ExtraLevels,
    /// Batch norm inside every FPN conv, folded into it (torchvision's v2 detectors,
    /// detectron2's and mmdetection's `norm` settings); the convs then have no bias.
    pub fpn_norm: bool,
    /// Channels of every pyramid level (torchvision's `out_channels`; 256 in every shipped
    /// detector).
    pub pyramid_channels: usize,
}

impl Default for FpnConfig {
    fn default() -> Self {
        Self::seed()
    }
}

impl FpnConfig {
    /// The names [`FpnConfig::preset`] accepts.
    pub const PRESETS: &'static [&'static str] = &[
        "seed",
        "resnet18",
        "resnet34",
        "resnet50",
        "resnet101",
        "resnet152",
        "resnext50_32x4d",
        "resnext101_32x8d",
        "resnext101_64x4d",
        "wide_resnet50_2",
        "wide_resnet101_2",
    ];

    /// The seed network: [2, 2, 2, 2] blocks, bilinear upsampling.
    pub fn seed() -> Self {
        Self::with_blocks([2, 2, 2, 2])
    }

    /// The seed layout with the given block counts.
    pub fn with_blocks(blocks: [usize; 4]) -> Self {
        FpnConfig {
            layout: Layout::Seed,
            blocks,
            block: Block::Bottleneck,
            groups: 1,
            width_per_group: 64,
            style: ResNetStyle::Pytorch,
            stem: Stem::Plain,
            avg_down: false,
            in_channels: 3,
            bn_eps: 1e-5,
            upsample: UpsampleMode::Bilinear,
            returned: [false, true, true, true, true],
            extra: ExtraLevels::None,
            fpn_norm: false,
            pyramid_channels: PYRAMID_CHANNELS,
        }
    }

    /// torchvision's `resnet_fpn_backbone` with the given block counts: all four levels, nearest
    /// upsampling, the max-pool P6, frozen batch norm with epsilon 1e-5.
    pub fn torchvision(blocks: [usize; 4]) -> Self {
        FpnConfig {
            layout: Layout::Torchvision,
            upsample: UpsampleMode::Nearest,
            extra: ExtraLevels::MaxPool(1),
            ..Self::with_blocks(blocks)
        }
    }

    /// The same backbone in another layout, with that layout's defaults for the rest: for
    /// detectron2, its `build_resnet_fpn_backbone` (the stride in the 1x1 convs, the max-pool
    /// P6); for mmdetection, its Faster R-CNN neck (`num_outs=5`: one max pool above C5).
    pub fn with_layout(self, layout: Layout) -> Self {
        let base = match layout {
            Layout::Seed => Self::with_blocks(self.blocks),
            Layout::Torchvision | Layout::MmDetection => FpnConfig {
                layout,
                ..Self::torchvision(self.blocks)
            },
            Layout::Detectron2 => FpnConfig {
                layout,
                style: ResNetStyle::Caffe,
                ..Self::torchvision(self.blocks)
            },
        };
        FpnConfig {
            bn_eps: self.bn_eps,
            block: self.block,
            groups: self.groups,
            width_per_group: self.width_per_group,
            in_channels: self.in_channels,
            ..base
        }
    }

    /// A named backbone (torchvision's names) in the seed layout: `seed` (bottlenecks
    /// `[2, 2, 2, 2]`), `resnet18`, `resnet34`, `resnet50`, `resnet101`, `resnet152`,
    /// `resnext50_32x4d`, `resnext101_32x8d`, `resnext101_64x4d`, `wide_resnet50_2`,
    /// `wide_resnet101_2`. See [`FpnConfig::with_layout`] for torchvision's layout.
    pub fn preset(name: &str) -> Result<Self> {
        let (blocks, block, groups, width_per_group) = match name {
            "seed" => ([2, 2, 2, 2], Block::Bottleneck, 1, 64),
            "resnet18" => ([2, 2, 2, 2], Block::Basic, 1, 64),
            "resnet34" => ([3, 4, 6, 3], Block::Basic, 1, 64),
            "resnet50" => ([3, 4, 6, 3], Block::Bottleneck, 1, 64),
            "resnet101" => ([3, 4, 23, 3], Block::Bottleneck, 1, 64),
            "resnet152" => ([3, 8, 36, 3], Block::Bottleneck, 1, 64),
            "resnext50_32x4d" => ([3, 4, 6, 3], Block::Bottleneck, 32, 4),
            "resnext101_32x8d" => ([3, 4, 23, 3], Block::Bottleneck, 32, 8),
            "resnext101_64x4d" => ([3, 4, 23, 3], Block::Bottleneck, 64, 4),
            "wide_resnet50_2" => ([3, 4, 6, 3], Block::Bottleneck, 1, 128),
            "wide_resnet101_2" => ([3, 4, 23, 3], Block::Bottleneck, 1, 128),
            _ => {
                return Err(Error::invalid(
                    "FpnConfig::preset",
                    format!("unknown preset `{name}`; choose one of {:?}", Self::PRESETS),
                ))
            }
        };
        Ok(FpnConfig {
            block,
            groups,
            width_per_group,
            ..Self::with_blocks(blocks)
        })
    }

    /// The backbone stages that feed the pyramid (0 the stem, 1..=4 `layer1..4`; see
    /// [`FpnConfig::returned`]), finest first. Stage `s` gives the pyramid level `p{s + 1}`, of
    /// stride `2^(s + 1)`.
    pub fn returned_stages(&self) -> Vec<usize> {
        (0..5).filter(|&s| self.returned[s]).collect()
    }

    /// How many of `layer1`..`layer4` are built: all four in the seed layout; up to the deepest
    /// returned one in the others (torchvision's `IntermediateLayerGetter` drops the layers
    /// after it, and so do detectron2's `out_features`).
    pub fn depth(&self) -> usize {
        match self.layout {
            Layout::Seed => 4,
            _ => self.returned_stages().last().copied().unwrap_or(4),
        }
    }

    /// Channels of stage `stage`'s output: the stem's for 0, those of C2..C5 for 1..=4.
    pub fn stage_channels(&self, stage: usize) -> usize {
        match stage {
            0 => self.stem.channels(),
            s => self.level_channels(s - 1),
        }
    }

    /// Channels of C2..C5 (`level` 0..4): the layer's base width (64, 128, 256, 512) times the
    /// block's expansion.
    pub fn level_channels(&self, level: usize) -> usize {
        (64 << level) * self.block.expansion()
    }

    /// Channels inside the bottlenecks of `layer{level + 1}` (the 3x3 conv's input and output);
    /// the base width for basic blocks.
    pub fn block_width(&self, level: usize) -> usize {
        match self.block {
            Block::Basic => 64 << level,
            Block::Bottleneck => (64 << level) * self.width_per_group / 64 * self.groups,
        }
    }

    /// The same configuration with the counts of layers that are not built set to 0, as a
    /// checkpoint without them reads.
    pub fn trimmed(self) -> Self {
        let mut blocks = self.blocks;
        for b in blocks.iter_mut().skip(self.depth()) {
            *b = 0;
        }
        FpnConfig { blocks, ..self }
    }

    /// torchvision's name for the backbone (`resnet50`, `resnext50_32x4d`, ...), when the block
    /// type, counts, groups and width are one of [`FpnConfig::PRESETS`].
    pub fn backbone_name(&self) -> Option<&'static str> {
        let depth = self.depth();
        Self::PRESETS[1..].iter().copied().find(|name| {
            Self::preset(name).is_ok_and(|p| {
                p.block == self.block
                    && p.groups == self.groups
                    && p.width_per_group == self.width_per_group
                    && p.blocks[..depth] == self.blocks[..depth]
            })
        })
    }

    /// The network in words, for messages: layout, backbone (its torchvision name where it has
    /// one), block counts, groups, width, input channels and the pyramid's levels.
    pub fn describe(&self) -> String {
        let block = match self.block {
            Block::Basic => "basic-block",
            Block::Bottleneck => "bottleneck",
        };
        let name = self
            .backbone_name()
            .map_or(String::new(), |n| format!(" ({n})"));
        let levels: Vec<String> = self
            .returned_stages()
            .iter()
            .map(|s| format!("C{}", s + 1))
            .collect();
        let mut variants = Vec::new();
        if self.style == ResNetStyle::Caffe && self.block == Block::Bottleneck {
            variants.push("the stride in the 1x1 convs (caffe style)".to_string());
        }
        if self.stem != Stem::Plain {
            variants.push(format!("a {} stem", self.stem));
        }
        if self.avg_down {
            variants.push("average-pool shortcuts".to_string());
        }
        if self.fpn_norm {
            variants.push("batch norm in the FPN convs".to_string());
        }
        let variants = if variants.is_empty() {
            String::new()
        } else {
            format!(", {}", variants.join(", "))
        };
        format!(
            "the {} layout's {block} ResNet{name} with blocks {:?}, groups {}, width per group \
             {}, {} input channels{variants}, {} feeding a pyramid of {} channels, extra levels \
             {}",
            self.layout,
            &self.blocks[..self.depth()],
            self.groups,
            self.width_per_group,
            self.in_channels,
            levels.join("/"),
            self.pyramid_channels,
            self.extra
        )
    }

    /// Checks that the settings describe a network this crate can build.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::invalid("FpnConfig", msg));
        if self.blocks[..self.depth()].contains(&0) {
            return bad(format!(
                "block counts {:?} must all be at least 1 for the {} layers built",
                self.blocks,
                self.depth()
            ));
        }
        if self.in_channels == 0 || self.groups == 0 || self.width_per_group == 0 {
            return bad(format!(
                "in_channels {}, groups {} and width_per_group {} must all be at least 1",
                self.in_channels, self.groups, self.width_per_group
            ));
        }
        if self.block == Block::Basic && (self.groups, self.width_per_group) != (1, 64) {
            return bad(format!(
                "basic blocks have groups 1 and width_per_group 64 (got {} and {}), as in \
                 torchvision; use Block::Bottleneck for ResNeXt and Wide ResNet",
                self.groups, self.width_per_group
            ));
        }

        if !(self.bn_eps >= 0.0 && self.bn_eps.is_finite()) {
            return bad(format!(
                "bn_eps is {}; it must be finite and not negative",
                self.bn_eps
            ));
        }
        if !self.returned.contains(&true) {
            return bad(
                "no backbone level feeds the pyramid: set at least one of `returned`".into(),
            );
        }
        if !(1..=MAX_WIDTH).contains(&self.pyramid_channels) {
            return bad(format!(
                "pyramid_channels is {}; it must be 1 to {MAX_WIDTH}",
                self.pyramid_channels
            ));
        }
        if let Stem::Deep(widths) = self.stem {
            if widths.iter().any(|w| !(1..=MAX_WIDTH).contains(w)) {
                return bad(format!(
                    "the deep stem's widths {widths:?} must each be 1 to {MAX_WIDTH}"
                ));
            }
        }
        if self.extra.count() > MAX_EXTRA_LEVELS {
            return bad(format!(
                "{} extra levels asked; at most {MAX_EXTRA_LEVELS} (each halves the coarsest \
                 level, which is 1x1 long before)",
                self.extra.count()
            ));
        }
        let layout = self.layout;
        if layout == Layout::Seed
            && (self.returned != [false, true, true, true, true]
                || self.extra != ExtraLevels::None
                || self.stem != Stem::Plain
                || self.avg_down
                || self.fpn_norm
                || self.pyramid_channels != PYRAMID_CHANNELS)
        {
            return bad(format!(
                "the seed layout is fpn.py's network: C2..C5, no extra levels, the plain stem, \
                 conv shortcuts, no FPN norm, {PYRAMID_CHANNELS} channels (got {}); use \
                 Layout::Torchvision for the others",
                self.describe()
            ));
        }
        if self.returned[0] && layout != Layout::Torchvision {
            return bad(format!(
                "the stem's output (C1) feeds the pyramid only in the torchvision layout (timm's \
                 out_indices 0); the {layout} layout's FPN starts at C2"
            ));
        }
        if layout == Layout::Detectron2 && (self.stem != Stem::Plain || self.avg_down) {
            return bad(
                "detectron2's ResNet has the plain stem and conv shortcuts; deep stems and \
                 average-pool shortcuts load in the torchvision (timm) and mmdetection layouts"
                    .into(),
            );
        }
        let extra_ok = match layout {
            Layout::Seed | Layout::MmDetection => true,
            Layout::Torchvision | Layout::Detectron2 => {
                matches!(self.extra, ExtraLevels::None | ExtraLevels::MaxPool(1))
                    || self.extra.is_p6p7()
            }
        };
        if !extra_ok {
            return bad(format!(
                "the {layout} layout's extra levels are none, pool (LastLevelMaxPool), p6p7 or \
                 p6p7-c5 (LastLevelP6P7), not {}; more max pools or other extra convs are \
                 mmdetection's",
                self.extra
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_names_round_trip() {
        let names: Vec<String> = Block::ALL.iter().map(Block::to_string).collect();
        assert_eq!(names, Block::NAMES);
        for block in Block::ALL {
            assert_eq!(block.to_string().parse::<Block>().unwrap(), block);
        }
        assert!("wide".parse::<Block>().is_err());
    }
}
