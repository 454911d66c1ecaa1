//! The small RetinaNet the detection CLI tests run: seeded random weights on a backbone of one
//! bottleneck per layer, 3 classes, small pictures, and a threshold the random scores pass
//! often enough.

use std::path::{Path, PathBuf};

use fpn_wgpu::model::{DetectorConfig, ExtraLevels, ExtraSource};
use fpn_wgpu::tensor_file::write_tensors;
use fpn_wgpu::{Detector, DetectorOptions, FpnConfig};

pub const CLASSES: usize = 3;
pub const SEED: u64 = 5;

pub fn small_config() -> DetectorConfig {
    let mut backbone = FpnConfig::torchvision([1, 1, 1, 1]);
    backbone.returned = [false, false, true, true, true];
    backbone.extra = ExtraLevels::p6p7(ExtraSource::Output);
    DetectorConfig {
        backbone,
        ..DetectorConfig::retinanet_resnet50(CLASSES)
    }
}

/// Small pictures, a threshold the random weights pass often enough.
pub fn small_options() -> DetectorOptions {
    DetectorOptions {
        min_size: 64,
        max_size: 96,
        score_thresh: 0.6,
        ..DetectorOptions::default()
    }
}

/// [`small_options`] as `fpn detect` flags.
pub const OPTION_FLAGS: [&str; 6] = [
    "--min-size",
    "64",
    "--max-size",
    "96",
    "--score-thresh",
    "0.6",
];

/// Writes the small detector's state_dict under `dir`; returns its path.
pub fn weights(dir: &Path) -> PathBuf {
    let path = dir.join("retinanet.safetensors");
    let dict = Detector::random_state_dict(small_config(), SEED).unwrap();
    write_tensors(&path, dict.iter().map(|(n, t)| (n.as_str(), t))).unwrap();
    path
}
