//! The FPN's configuration: weight layout, the ResNet backbone (depth, block type, width,
//! groups, input channels), batch norm epsilon, upsampling mode, which backbone levels feed the
//! pyramid and the extra levels above it.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};
use crate::graph::ops::UpsampleMode;

/// Which family of checkpoints the network's names and structure follow.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Layout {
    /// kuangliu's `fpn.py`: `conv1`, `layer1..4` with `shortcut`, `toplayer`, `latlayer1..3`,
    /// `smooth1..3`; bilinear top-down path, P5 not smoothed; P2..P5.
    #[default]
    Seed,
    /// torchvision's `BackboneWithFPN` (`resnet_fpn_backbone`, the backbone of Faster/Mask R-CNN
    /// and RetinaNet): `body.*` with `downsample`, `fpn.inner_blocks.*`, `fpn.layer_blocks.*`;
    /// nearest top-down path, a 3x3 output conv on every level, plus extra levels.
    Torchvision,
}

impl Layout {
    /// The names [`Layout::from_str`] accepts.
    pub const NAMES: &'static [&'static str] = &["seed", "torchvision"];
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Layout::Seed => "seed",
            Layout::Torchvision => "torchvision",
        })
    }
}

impl FromStr for Layout {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "seed" => Ok(Layout::Seed),
            "torchvision" => Ok(Layout::Torchvision),
            _ => Err(Error::invalid(
                "Layout",
                format!("unknown layout `{s}`; choose one of {:?}", Layout::NAMES),
            )),
        }
    }
}

/// The residual block the backbone's layers are made of (torchvision's `BasicBlock` or
/// `Bottleneck`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Block {
    /// Two 3x3 convs, output channels equal to the width (ResNet-18 and -34).
    Basic,
    /// 1x1 reduce, 3x3 (grouped in ResNeXt), 1x1 expand to 4x the layer's base width
    /// (ResNet-50 and deeper, ResNeXt, Wide ResNet).
    #[default]
    Bottleneck,
}

impl Block {
    /// Output channels of a block relative to its layer's base width (64, 128, 256, 512).
    pub fn expansion(self) -> usize {
        match self {
            Block::Basic => 1,
            Block::Bottleneck => 4,
        }
    }
}

impl Block {
    /// Every block type.
    pub const ALL: [Block; 2] = [Block::Basic, Block::Bottleneck];
    /// The names [`Block::from_str`] accepts, in the order of [`Block::ALL`].
    pub const NAMES: &'static [&'static str] = &["basic", "bottleneck"];
}

impl FromStr for Block {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Block::ALL
            .into_iter()
            .find(|b| b.to_string() == s)
            .ok_or_else(|| {
                Error::invalid(
                    "Block",
                    format!("unknown block `{s}`; choose one of {:?}", Block::NAMES),
                )
            })
    }
}

impl std::fmt::Display for Block {
    /// The name [`Block::from_str`] takes.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Block::Basic => "basic",
            Block::Bottleneck => "bottleneck",
        })
    }
}

/// Where RetinaNet's P6 conv reads from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum P6Source {
    /// P6 = conv(P5): `p6.weight` has 256 input channels (RetinaNet v1).
    P5,
    /// P6 = conv(C5): `p6.weight` has 2048 input channels (RetinaNet v2).
    C5,
}

/// Levels above the coarsest backbone level (torchvision layout only).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ExtraLevels {
    /// None (the seed network).
    #[default]
    None,
    /// torchvision's `LastLevelMaxPool`: one more level, a max pool of kernel 1 and stride 2 of
    /// the coarsest level (what torchvision calls `pool`; named `p6` here).
    MaxPool,
    /// torchvision's `LastLevelP6P7` (RetinaNet): `p6` = 3x3 stride-2 conv, `p7` = 3x3 stride-2
    /// conv of ReLU(P6); weights `fpn.extra_blocks.p6` / `p7`.
    P6P7(P6Source),
}

impl ExtraLevels {
    /// The names [`ExtraLevels::from_str`] accepts.
    pub const NAMES: &'static [&'static str] = &["none", "pool", "p6p7", "p6p7-c5"];
}

impl FromStr for ExtraLevels {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "none" => Ok(ExtraLevels::None),
            "pool" => Ok(ExtraLevels::MaxPool),
            "p6p7" => Ok(ExtraLevels::P6P7(P6Source::P5)),
            "p6p7-c5" => Ok(ExtraLevels::P6P7(P6Source::C5)),
            _ => Err(Error::invalid(
                "ExtraLevels",
                format!(
                    "unknown extra levels `{s}`; choose one of {:?}",
                    ExtraLevels::NAMES
                ),
            )),
        }
    }
}

/// What varies between the FPN variants this crate runs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FpnConfig {
    /// The names and head structure.
    pub layout: Layout,
    /// Residual blocks in `layer1`..`layer4`. Layers past the deepest returned one are not
    /// built in the torchvision layout (torchvision drops them too), and their counts are
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
    /// Channels of the input image: 3 (RGB) unless the first conv says otherwise.
    pub in_channels: usize,
    /// Batch norm epsilon: PyTorch's default 1e-5; torchvision's COCO Faster R-CNN weights were
    /// trained with frozen batch norm of epsilon 0.
    pub bn_eps: f32,
    /// How the top-down path resizes a coarser level to the next finer one.
    pub upsample: UpsampleMode,
    /// Which of C2..C5 feed the pyramid (torchvision's `returned_layers`, 1-based `layer1..4`):
    /// all four except for RetinaNet, which starts at C3.
    pub returned: [bool; 4],
    /// Levels above the coarsest one.
    pub extra: ExtraLevels,
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
            in_channels: 3,
            bn_eps: 1e-5,
            upsample: UpsampleMode::Bilinear,
            returned: [true; 4],
            extra: ExtraLevels::None,
        }
    }

    /// torchvision's `resnet_fpn_backbone` with the given block counts: all four levels, nearest
    /// upsampling, the max-pool P6, frozen batch norm with epsilon 1e-5.
    pub fn torchvision(blocks: [usize; 4]) -> Self {
        FpnConfig {
            layout: Layout::Torchvision,
            upsample: UpsampleMode::Nearest,
            extra: ExtraLevels::MaxPool,
            ..Self::with_blocks(blocks)
        }
    }

    /// The same backbone in another layout, with that layout's defaults for the rest.
    pub fn with_layout(self, layout: Layout) -> Self {
        let base = match layout {
            Layout::Seed => Self::with_blocks(self.blocks),
            Layout::Torchvision => Self::torchvision(self.blocks),
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

    /// The backbone levels that feed the pyramid, as indices 0..4 of C2..C5, finest first.
    pub fn returned_levels(&self) -> Vec<usize> {
        (0..4).filter(|&l| self.returned[l]).collect()
    }

    /// How many of `layer1`..`layer4` are built: all four in the seed layout; up to the deepest
    /// returned one in torchvision's, whose `IntermediateLayerGetter` drops the layers after it.
    pub fn depth(&self) -> usize {
        match self.layout {
            Layout::Seed => 4,
            Layout::Torchvision => self.returned_levels().last().map_or(4, |l| l + 1),
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
            .returned_levels()
            .iter()
            .map(|l| format!("C{}", l + 2))
            .collect();
        format!(
            "the {} layout's {block} ResNet{name} with blocks {:?}, groups {}, width per group \
             {}, {} input channels, {} feeding the pyramid, extra levels {:?}",
            self.layout,
            &self.blocks[..self.depth()],
            self.groups,
            self.width_per_group,
            self.in_channels,
            levels.join("/"),
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
        if self.layout == Layout::Seed
            && (self.returned != [true; 4] || self.extra != ExtraLevels::None)
        {
            return bad(format!(
                "the seed layout always uses C2..C5 and has no extra levels (got returned {:?}, \
                 extra {:?}); use Layout::Torchvision for those",
                self.returned, self.extra
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
