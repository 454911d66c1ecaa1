//! The levels an FPN adds above the backbone's coarsest one: none, max pools, or stride-2
//! convs (RetinaNet's `LastLevelP6P7`, mmdetection's `add_extra_convs`), and what the first of
//! those convs reads.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

/// What the first extra conv above the backbone's levels reads (mmdetection's
/// `add_extra_convs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExtraSource {
    /// The coarsest backbone level feeding the pyramid, C5 (`'on_input'`; torchvision's and
    /// detectron2's P6 from C5, RetinaNet v2's and detectron2 RetinaNet's).
    Input,
    /// The coarsest lateral conv's output (`'on_lateral'`).
    Lateral,
    /// The coarsest pyramid level, P5 (`'on_output'`; torchvision's RetinaNet v1).
    Output,
}

impl ExtraSource {
    /// mmdetection's name for it.
    pub fn name(self) -> &'static str {
        match self {
            ExtraSource::Input => "on_input",
            ExtraSource::Lateral => "on_lateral",
            ExtraSource::Output => "on_output",
        }
    }
}

impl FromStr for ExtraSource {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        [
            ExtraSource::Input,
            ExtraSource::Lateral,
            ExtraSource::Output,
        ]
        .into_iter()
        .find(|e| e.name() == s || e.name().replace('_', "-") == s)
        .ok_or_else(|| {
            Error::invalid(
                "ExtraSource",
                format!("unknown source `{s}`; choose on_input, on_lateral or on_output"),
            )
        })
    }
}

/// Levels above the coarsest backbone level.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ExtraLevels {
    /// None (the seed network).
    #[default]
    None,
    /// This many max pools of kernel 1 and stride 2, each of the level before: torchvision's
    /// and detectron2's `LastLevelMaxPool` (one, what torchvision calls `pool`), mmdetection's
    /// `num_outs` past the backbone's levels without extra convs.
    MaxPool(usize),
    /// This many 3x3 stride-2 convs, the first reading `source`, each next one the level
    /// before it, through a ReLU when `relu` (mmdetection's `relu_before_extra_convs`).
    /// torchvision's and detectron2's `LastLevelP6P7` are two convs with the ReLU.
    Convs {
        /// How many levels the convs add.
        count: usize,
        /// What the first conv reads.
        source: ExtraSource,
        /// A ReLU before every conv but the first.
        relu: bool,
    },
}

impl ExtraLevels {
    /// Examples of the names [`ExtraLevels::from_str`] accepts.
    pub const NAMES: &'static [&'static str] = &[
        "none",
        "pool",
        "pool:N",
        "p6p7",
        "p6p7-c5",
        "convs:N:on_input|on_lateral|on_output[:relu]",
    ];

    /// RetinaNet's `LastLevelP6P7`: P6 a conv of `source`, P7 a conv of ReLU(P6).
    pub const fn p6p7(source: ExtraSource) -> Self {
        ExtraLevels::Convs {
            count: 2,
            source,
            relu: true,
        }
    }

    /// Whether these are a `LastLevelP6P7`, P6 from C5 or from P5 (torchvision's and
    /// detectron2's, and what the detectors' heads read).
    pub fn is_p6p7(&self) -> bool {
        [ExtraSource::Input, ExtraSource::Output]
            .iter()
            .any(|&s| *self == Self::p6p7(s))
    }

    /// How many levels they add.
    pub fn count(&self) -> usize {
        match *self {
            ExtraLevels::None => 0,
            ExtraLevels::MaxPool(n) | ExtraLevels::Convs { count: n, .. } => n,
        }
    }
}

impl fmt::Display for ExtraLevels {
    /// The name [`ExtraLevels::from_str`] takes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ExtraLevels::None => f.write_str("none"),
            ExtraLevels::MaxPool(1) => f.write_str("pool"),
            ExtraLevels::MaxPool(n) => write!(f, "pool:{n}"),
            e if e == Self::p6p7(ExtraSource::Output) => f.write_str("p6p7"),
            e if e == Self::p6p7(ExtraSource::Input) => f.write_str("p6p7-c5"),
            ExtraLevels::Convs {
                count,
                source,
                relu,
            } => {
                write!(f, "convs:{count}:{}", source.name())?;
                if relu {
                    f.write_str(":relu")?;
                }
                Ok(())
            }
        }
    }
}

impl FromStr for ExtraLevels {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            Error::invalid(
                "ExtraLevels",
                format!(
                    "unknown extra levels `{s}`; choose one of {:?}",
                    ExtraLevels::NAMES
                ),
            )
        };
        let count = |n: &str| n.parse::<usize>().ok().filter(|&n| n > 0).ok_or_else(bad);
        let parts: Vec<&str> = s.split(':').collect();
        match parts.as_slice() {
            ["none"] => Ok(ExtraLevels::None),
            ["pool"] => Ok(ExtraLevels::MaxPool(1)),
            ["pool", n] => Ok(ExtraLevels::MaxPool(count(n)?)),
            ["p6p7"] => Ok(Self::p6p7(ExtraSource::Output)),
            ["p6p7-c5"] => Ok(Self::p6p7(ExtraSource::Input)),
            ["convs", n, source, rest @ ..] if rest.is_empty() || rest == ["relu"] => {
                Ok(ExtraLevels::Convs {
                    count: count(n)?,
                    source: source.parse().map_err(|_| bad())?,
                    relu: !rest.is_empty(),
                })
            }
            _ => Err(bad()),
        }
    }
}
