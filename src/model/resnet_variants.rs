//! The variants of the ResNet family the frameworks train: the block type, where a
//! bottleneck's stride sits, and the stem.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

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

/// Where a bottleneck's stride sits (ResNet v1 against v1.5). The names cannot tell them apart.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ResNetStyle {
    /// On the 3x3 conv: torchvision, timm, and mmdetection's default `style='pytorch'`.
    #[default]
    Pytorch,
    /// On the first 1x1 conv: detectron2's `STRIDE_IN_1X1` (its default, and its MSRA weights)
    /// and mmdetection's `style='caffe'`.
    Caffe,
}

impl ResNetStyle {
    /// The names [`ResNetStyle::from_str`] accepts.
    pub const NAMES: &'static [&'static str] = &["pytorch", "caffe"];
}

impl fmt::Display for ResNetStyle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ResNetStyle::Pytorch => "pytorch",
            ResNetStyle::Caffe => "caffe",
        })
    }
}

impl FromStr for ResNetStyle {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "pytorch" => Ok(ResNetStyle::Pytorch),
            "caffe" => Ok(ResNetStyle::Caffe),
            _ => Err(Error::invalid(
                "ResNetStyle",
                format!(
                    "unknown ResNet style `{s}`; choose one of {:?} (caffe puts the stride on \
                     the bottleneck's first 1x1 conv)",
                    ResNetStyle::NAMES
                ),
            )),
        }
    }
}

/// The backbone's stem, before the 3x3 stride-2 max pool.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Stem {
    /// One 7x7 stride-2 conv to [`STEM_CHANNELS`], with batch norm and ReLU.
    #[default]
    Plain,
    /// Three 3x3 convs (the first of stride 2) of the given output widths, each with batch
    /// norm and ReLU: ResNet-C/D's deep stem (timm's `stem_type='deep'`, 32-32-64, or
    /// `'deep_tiered'`, 24-32-64, and 64-64-128 in its `resnet*s`; mmdetection's `deep_stem`,
    /// half, half and all of `stem_channels`).
    Deep([usize; 3]),
}

/// Output channels of the plain stem, and of the deep stems the names `deep` and
/// `deep-tiered` give.
pub const STEM_CHANNELS: usize = 64;

impl Stem {
    /// The names [`Stem::from_str`] accepts.
    pub const NAMES: &'static [&'static str] = &["plain", "deep", "deep-tiered", "deep:A-B-C"];

    /// Channels of the stem's output, `layer1`'s input.
    pub fn channels(self) -> usize {
        match self {
            Stem::Plain => STEM_CHANNELS,
            Stem::Deep([_, _, c]) => c,
        }
    }
}

impl fmt::Display for Stem {
    /// The name [`Stem::from_str`] takes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stem::Plain => f.write_str("plain"),
            Stem::Deep([32, 32, STEM_CHANNELS]) => f.write_str("deep"),
            Stem::Deep([24, 32, STEM_CHANNELS]) => f.write_str("deep-tiered"),
            Stem::Deep([a, b, c]) => write!(f, "deep:{a}-{b}-{c}"),
        }
    }
}

impl FromStr for Stem {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            Error::invalid(
                "Stem",
                format!("unknown stem `{s}`; choose one of {:?}", Stem::NAMES),
            )
        };
        match s {
            "plain" => Ok(Stem::Plain),
            "deep" => Ok(Stem::Deep([32, 32, STEM_CHANNELS])),
            "deep-tiered" => Ok(Stem::Deep([24, 32, STEM_CHANNELS])),
            _ => {
                let widths: Vec<usize> = s
                    .strip_prefix("deep:")
                    .ok_or_else(bad)?
                    .split('-')
                    .map(|w| w.parse().map_err(|_| bad()))
                    .collect::<Result<_>>()?;
                let widths: [usize; 3] = widths.try_into().map_err(|_| bad())?;
                Ok(Stem::Deep(widths))
            }
        }
    }
}
