//! The FPN's configuration: weight layout, backbone depth, batch norm epsilon, upsampling mode,
//! which backbone levels feed the pyramid and the extra levels above it.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};
use crate::kernels::upsample_add::UpsampleMode;

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
    /// Bottleneck blocks in `layer1`..`layer4`.
    pub blocks: [usize; 4],
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
    pub const PRESETS: &'static [&'static str] = &["seed", "resnet50", "resnet101", "resnet152"];

    /// The seed network: [2, 2, 2, 2] blocks, bilinear upsampling.
    pub fn seed() -> Self {
        Self::with_blocks([2, 2, 2, 2])
    }

    /// The seed layout with the given block counts.
    pub fn with_blocks(blocks: [usize; 4]) -> Self {
        FpnConfig {
            layout: Layout::Seed,
            blocks,
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

    /// The same block counts in another layout, with that layout's defaults for the rest.
    pub fn with_layout(self, layout: Layout) -> Self {
        match layout {
            Layout::Seed => FpnConfig {
                bn_eps: self.bn_eps,
                ..Self::with_blocks(self.blocks)
            },
            Layout::Torchvision => FpnConfig {
                bn_eps: self.bn_eps,
                ..Self::torchvision(self.blocks)
            },
        }
    }

    /// A named preset in the seed layout: `seed` `[2, 2, 2, 2]`, `resnet50` `[3, 4, 6, 3]`,
    /// `resnet101` `[3, 4, 23, 3]`, `resnet152` `[3, 8, 36, 3]`. See [`FpnConfig::with_layout`]
    /// for torchvision's.
    pub fn preset(name: &str) -> Result<Self> {
        let blocks = match name {
            "seed" => [2, 2, 2, 2],
            "resnet50" => [3, 4, 6, 3],
            "resnet101" => [3, 4, 23, 3],
            "resnet152" => [3, 8, 36, 3],
            _ => {
                return Err(Error::invalid(
                    "FpnConfig::preset",
                    format!("unknown preset `{name}`; choose one of {:?}", Self::PRESETS),
                ))
            }
        };
        Ok(Self::with_blocks(blocks))
    }

    /// The backbone levels that feed the pyramid, as indices 0..4 of C2..C5, finest first.
    pub fn returned_levels(&self) -> Vec<usize> {
        (0..4).filter(|&l| self.returned[l]).collect()
    }

    /// Checks that the settings describe a network this crate can build.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::invalid("FpnConfig", msg));
        if self.blocks.contains(&0) {
            return bad(format!(
                "block counts {:?} must all be at least 1",
                self.blocks
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
