//! Error scopes around GPU work, so that validation and out-of-memory errors come back as
//! [`Error::Gpu`] instead of wgpu's default panic.

use crate::error::{Error, Result};
use crate::signal::ready_now;

/// Validation and out-of-memory error scopes around one piece of work; wgpu's default would be
/// a panic in the uncaptured-error handler.
pub(crate) struct ErrorScopes {
    /// Empty in a browser: its scopes resolve only on a later turn of the event loop, after
    /// the work has gone on, so an error there is left to the uncaptured-error handler, which
    /// logs it, rather than caught by a scope whose answer nobody would read.
    guards: Vec<wgpu::ErrorScopeGuard>,
}

impl ErrorScopes {
    pub(crate) fn push(device: &wgpu::Device) -> Self {
        let filters: &[wgpu::ErrorFilter] = if cfg!(target_arch = "wasm32") {
            &[]
        } else {
            &[
                wgpu::ErrorFilter::Validation,
                wgpu::ErrorFilter::OutOfMemory,
            ]
        };
        ErrorScopes {
            guards: filters
                .iter()
                .map(|f| device.push_error_scope(*f))
                .collect(),
        }
    }

    /// Pops the scopes (innermost first) and turns a captured error into [`Error::Gpu`]; the
    /// out-of-memory one wins, as the likelier cause of a validation error after it.
    pub(crate) fn check(self, op: &'static str) -> Result<()> {
        let mut found = None;
        for guard in self.guards.into_iter().rev() {
            if let Some(e) = ready_now(guard.pop()).flatten() {
                found = Some(e);
            }
        }
        match found {
            Some(e) => Err(Error::Gpu {
                op,
                message: e.to_string(),
            }),
            None => Ok(()),
        }
    }
}
