//! The FPN's configuration: backbone depth, batch norm epsilon, upsampling mode.

use crate::error::{Error, Result};
use crate::kernels::upsample_add::UpsampleMode;

/// What varies between FPN variants of the seed layout.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FpnConfig {
    /// Bottleneck blocks in `layer1`..`layer4`.
    pub blocks: [usize; 4],
    /// Batch norm epsilon (PyTorch's default 1e-5).
    pub bn_eps: f32,
    /// How the top-down path resizes a coarser level to the next finer one.
    pub upsample: UpsampleMode,
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

    /// The given block counts with the seed's other settings.
    pub fn with_blocks(blocks: [usize; 4]) -> Self {
        FpnConfig {
            blocks,
            bn_eps: 1e-5,
            upsample: UpsampleMode::Bilinear,
        }
    }

    /// A named preset: `seed` [2,2,2,2], `resnet50` [3,4,6,3], `resnet101` [3,4,23,3],
    /// `resnet152` [3,8,36,3].
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

    /// Checks that every layer has at least one block.
    pub fn validate(&self) -> Result<()> {
        if self.blocks.contains(&0) {
            return Err(Error::invalid(
                "FpnConfig",
                format!("block counts {:?} must all be at least 1", self.blocks),
            ));
        }
        if !(self.bn_eps >= 0.0 && self.bn_eps.is_finite()) {
            return Err(Error::invalid(
                "FpnConfig",
                format!(
                    "bn_eps is {}; it must be finite and not negative",
                    self.bn_eps
                ),
            ));
        }
        Ok(())
    }
}
