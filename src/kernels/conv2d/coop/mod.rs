//! Convolution on cooperative matrices (tensor cores), f16 and channels-last:
//! `shaders/conv2d_coop.wgsl` plus entry points expanded from templates for one block shape and
//! one matrix side.
//!
//! wgpu exposes cooperative matrices as an experimental feature. The kernel runs where the
//! adapter offers square f16 -> f32 matrices of a side it is written for (16 or 8) with a fixed
//! subgroup size, and only after [`verified`] has checked it against the direct kernel on the
//! device itself.
//!
//! The parts, each importing only those listed before it: [`shader`] (the static module and its
//! parameters), [`tile`] (the direct-load blocks), [`staged`] (the large-map block), [`choice`]
//! (what runs a convolution), [`device`] (what this device runs) and [`launch`] (the launches).

pub mod choice;
pub mod device;
pub mod launch;
pub mod shader;
pub mod staged;
pub mod tile;

pub use choice::{CoopBlock, CoopChoice, BLOCK_COUT_ALIGN, MAX_SPLIT};
pub use device::{offered, staged_block, support, verified, CooperativeMatrixSupport, SIDES};
pub(super) use launch::to_tap_major;
pub use launch::{input_bytes_read, partial_bytes, prepare, steps};
pub use shader::SHADER;
pub use staged::{staged_fits, StagedBlock};
pub use tile::{CoopTile, TILES};
