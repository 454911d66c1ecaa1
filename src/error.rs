//! The crate's one error type. Every variant reads as a sentence that tells the user what went
//! wrong and, where there is one, what to do about it.

use thiserror::Error;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in `fpn_wgpu`. Cloneable, so that one failed batch can report
/// its error for each of its pictures.
#[derive(Clone, Debug, Error)]
pub enum Error {
    /// wgpu found no adapter that can run compute shaders.
    #[error("no GPU adapter found{detail}; {advice}")]
    NoAdapter {
        /// Extra context, such as the backend or name filter that was in force.
        detail: String,
        /// What to do, for this platform and the backends searched.
        advice: String,
    },

    /// `WGPU_BACKEND` names no backend, or only backends this platform does not have.
    #[error("WGPU_BACKEND={value:?} {problem}")]
    Backend {
        /// The variable's value.
        value: String,
        /// What is wrong with it and what to set instead.
        problem: String,
    },

    /// The adapter refused to create a device.
    #[error("the adapter `{adapter}` could not create a device: {reason}")]
    RequestDevice {
        /// The adapter's name.
        adapter: String,
        /// Why the device was refused, as wgpu says it.
        reason: String,
    },

    /// A shape or parameter passed to an op is invalid.
    #[error("{op}: {message}")]
    InvalidArgument {
        /// The op or function that rejected the argument.
        op: &'static str,
        /// What is wrong and what is expected.
        message: String,
    },

    /// A tensor or dispatch does not fit the device's limits.
    #[error("{op}: {what} is {value}, above this device's {limit_name} of {limit}; {hint}")]
    LimitExceeded {
        /// The op or function that checked the limit.
        op: &'static str,
        /// What exceeded it, e.g. `the output tensor of [1, 256, 150, 225]`.
        what: String,
        /// Its size, in the limit's unit.
        value: u64,
        /// The wgpu limit, e.g. `max_storage_buffer_binding_size`.
        limit_name: &'static str,
        /// The device's value of that limit.
        limit: u64,
        /// What to do about it.
        hint: String,
    },

    /// The device lacks a feature the request needs (f16 shaders, say).
    #[error("{op}: {message}")]
    Unsupported {
        /// The op or function that needed the feature.
        op: &'static str,
        /// Which feature is missing and what to do instead.
        message: String,
    },

    /// The GPU reported an error (validation, out of memory, device lost).
    #[error("the GPU reported an error during {op}: {message}")]
    Gpu {
        /// What the crate was doing.
        op: &'static str,
        /// wgpu's message.
        message: String,
    },

    /// The GPU device was lost (driver reset, device removed, or destroyed); nothing more can
    /// run on it.
    #[error(
        "the GPU device was lost ({0}); create a new GpuContext (and reload the model) to continue"
    )]
    DeviceLost(String),

    /// Reading a tensor back from the GPU failed.
    #[error("reading a tensor back from the GPU failed: {0}")]
    Readback(String),

    /// A file could not be read, parsed or written: weights, tensors, pictures, the tuning
    /// cache.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: String,
        /// What is wrong with it.
        message: String,
    },

    /// The weights do not match the model: missing, unexpected or mis-shaped tensors.
    #[error("the weights do not match the model:\n{}", .problems.join("\n"))]
    Weights {
        /// One line per offending tensor, with its full dotted name and both shapes.
        problems: Vec<String>,
    },
}

impl Error {
    pub(crate) fn invalid(op: &'static str, message: impl Into<String>) -> Self {
        Error::InvalidArgument {
            op,
            message: message.into(),
        }
    }
}

/// The message a panic carried (`panic!` with a literal, or with a formatted string), if any.
#[cfg(not(target_arch = "wasm32"))]
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> Option<String> {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
}
