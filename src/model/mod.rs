//! The networks: layers that read their weights by PyTorch name, the ResNet backbone, the FPN.

pub mod config;
pub mod fpn;
pub mod layers;
pub mod resnet;

pub use config::FpnConfig;
pub use fpn::{Fpn, Fusion, Pyramid};
