//! The networks: layers that read their weights by PyTorch name, the ResNet backbone, the FPN
//! heads (the seed's, and the one torchvision, detectron2 and mmdetection share under their own
//! names), the detectors, the two-stage detectors' region proposal network and RoI heads, and
//! checkpoint layout detection.

pub mod batch_network;
pub mod checkpoint;
pub mod config;
mod detection_rows;
pub mod detector;
mod extra_levels;
pub mod fcos_head;
pub mod fpn;
pub mod head_tower;
pub mod layers;
pub mod mask_heads;
pub mod naming;
mod pixels;
pub mod pyramid;
pub mod pyramid_head;
pub mod resnet;
mod resnet_variants;
pub mod retinanet_head;
pub mod roi_heads;
pub mod rpn;
pub mod seed_head;

pub use batch_network::{BatchNetwork, DETECTIONS, MASKS};
pub use checkpoint::Checkpoint;
pub use config::{Block, ExtraLevels, ExtraSource, FpnConfig, Layout, ResNetStyle, Stem};
pub use detector::{
    Detections, Detector, DetectorConfig, DetectorKind, DetectorOptions, DetectorOutputs, Masks,
    MASK_DIM_REDUCED, REPRESENTATION_SIZE,
};
pub use fpn::{Fpn, FpnOptions, Fusion, INPUT_CHANNELS, PYRAMID_CHANNELS};
pub use pixels::PixelNorm;
pub use pyramid::Pyramid;
pub use roi_heads::{GpuRoiHeads, RoiHeads, RoiHeadsConfig, RoiHeadsOptions};
pub use rpn::{RegionProposalNetwork, RpnConfig, RpnOptions};
