//! The convolution strategy, the one place that decides how a convolution runs.
//!
//! A [`ConvProblem`] (shapes, stride, padding, groups, epilogue, precision, layout) and a
//! [`DeviceProfile`] (CPU or GPU, cooperative matrices, workgroup memory, the grid that fills
//! the GPU) go in; one [`ConvChoice`] comes out of [`choose`], naming the kernel with its block,
//! split and workgroup shape. Everything else follows from problem, profile and choice: the
//! layout the weights are made in ([`weight_layout`], [`ConvChoice::weight_layout`]), the
//! tuner's [`candidates`], the tuning cache's [`tune_key`] and [`ConvChoice::code`], the
//! split-K scratch ([`ConvChoice::scratch_bytes`]) and the read past the input
//! ([`ConvChoice::input_bytes_read`]). The kernels carry out a choice and choose nothing.

mod choice;
mod preset;
mod problem;
mod profile;
#[cfg(test)]
mod tests;

pub use choice::{ConvChoice, Workgroup};
pub use preset::{
    candidates, choose, for_unaligned_input, rows, weight_layout, CPU_CHANNEL_LANES,
    MAX_ROWS_SPLIT, SMALL_GRID, STAGED_MIN_SUBGROUPS,
};
pub use problem::ConvProblem;
pub use profile::{DeviceProfile, GPU_TARGET_WORKGROUPS};

use crate::kernels::conv2d::ResidualMode;

/// The tuning cache's key for `problem` on `profile`: everything that changes which of its
/// candidates is fastest.
pub fn tune_key(problem: &ConvProblem, profile: &DeviceProfile) -> String {
    let residual = match problem.residual {
        ResidualMode::Same => "same",
        ResidualMode::Upsampled(_) => "upsampled",
    };
    format!(
        "{}|{}|{:?}|{:?}|x{:?}|w{:?}|s{:?}|p{:?}|g{}|{residual}",
        profile.device,
        problem.precision,
        problem.layout,
        weight_layout(problem),
        problem.input,
        problem.weight,
        problem.stride,
        problem.padding,
        problem.groups,
    )
}
