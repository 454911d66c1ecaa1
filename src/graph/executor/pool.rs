//! The output tensors a plan hands out, reused once their holders drop them, and the staging
//! tensor for inputs stored otherwise than the plan's input value.
//!
//! A set of outputs is shared with its holders through a lease (an `Arc` each tensor clone
//! carries): when the pool's own share is the only one left, every tensor of the set has been
//! dropped and the set, with the conversion launches built for it, serves the next forward.

use std::sync::{Arc, Mutex, MutexGuard};

use crate::error::Result;
use crate::gpu::{Dispatch, GpuContext};
use crate::kernels::convert;
use crate::precision::Precision;
use crate::tensor::{MemoryFormat, Tensor};

/// The storage of the caller's tensors: f32 NCHW.
pub(super) const BOUNDARY: (Precision, MemoryFormat) = (Precision::F32, MemoryFormat::Nchw);

/// How a tensor is stored.
pub(super) fn stored_as(t: &Tensor) -> (Precision, MemoryFormat) {
    (t.precision(), t.memory_format())
}

/// Output sets a plan keeps for reuse; beyond it a set still held by the caller is forgotten
/// (its tensors live on with their holders), so a caller keeping every forward's outputs does
/// not make the pool grow.
const POOL_SETS: usize = 4;

/// One forward's outputs and the launches that convert the plan's values into them.
pub(super) struct OutputSet {
    lease: Arc<()>,
    /// The outputs by name, without the lease (the pool's own copies).
    pub tensors: Vec<(String, Tensor)>,
    /// The conversions of values stored otherwise than [`BOUNDARY`].
    pub convert: Vec<Dispatch>,
}

impl OutputSet {
    /// A share of the set's lease, for a tensor handed out.
    pub fn lease(&self) -> Arc<()> {
        self.lease.clone()
    }
}

/// A staging tensor of the caller's storage for inputs stored otherwise than the plan's input
/// value, with the launch converting it into that value.
pub(super) struct InputStage {
    /// A tensor of the caller's storage that the input is copied into.
    pub tensor: Tensor,
    /// Its conversion into the plan's input value.
    pub convert: Dispatch,
}

/// The output sets and input stages of one plan.
#[derive(Default)]
pub(crate) struct OutputPool {
    sets: Mutex<Vec<OutputSet>>,
    input: Mutex<Option<InputStage>>,
}

impl OutputPool {
    /// The output sets, held while a forward records from one.
    pub(super) fn sets(&self) -> MutexGuard<'_, Vec<OutputSet>> {
        self.sets.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The input stage, held while a forward records from it.
    pub(super) fn input_stages(&self) -> MutexGuard<'_, Option<InputStage>> {
        self.input.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The index in `sets` of a set of outputs no caller holds, made if there is none, for a
    /// plan whose `outputs` name its `values`.
    pub(super) fn take(
        ctx: &GpuContext,
        outputs: &[(String, usize)],
        values: &[Tensor],
        sets: &mut Vec<OutputSet>,
    ) -> Result<usize> {
        // The pool's own lease is the only one left once the caller dropped every tensor.
        let free = |s: &OutputSet| Arc::strong_count(&s.lease) == 1;
        if let Some(i) = sets.iter().position(free) {
            // One free set is kept beside the one taken, for a caller that alternates; more
            // would only hold memory. The others free come after `i`, the first.
            let extra: Vec<usize> = (i + 1..sets.len())
                .filter(|&k| free(&sets[k]))
                .skip(1)
                .collect();
            for k in extra.into_iter().rev() {
                sets.remove(k);
            }
            return Ok(i);
        }
        let set = Self::make(ctx, outputs, values)?;
        if sets.len() >= POOL_SETS {
            sets.remove(0);
        }
        sets.push(set);
        Ok(sets.len() - 1)
    }

    fn make(ctx: &GpuContext, outputs: &[(String, usize)], values: &[Tensor]) -> Result<OutputSet> {
        let tensors: Vec<(String, Tensor)> = outputs
            .iter()
            .map(|(name, v)| Ok((name.clone(), Tensor::empty(ctx, values[*v].shape())?)))
            .collect::<Result<_>>()?;
        // Values of another storage than the caller's tensors go through conversion kernels.
        let convert = outputs
            .iter()
            .zip(&tensors)
            .filter(|((_, v), _)| stored_as(&values[*v]) != BOUNDARY)
            .map(|((_, v), (_, t))| convert::prepare(ctx, &values[*v], t))
            .collect::<Result<_>>()?;
        Ok(OutputSet {
            lease: Arc::new(()),
            tensors,
            convert,
        })
    }

    /// The staging tensor and conversion for an input stored as `input` is, made on first use
    /// (and again when a caller switches to another storage).
    pub(super) fn input_stage<'a>(
        ctx: &GpuContext,
        value: &Tensor,
        input: &Tensor,
        stage: &'a mut Option<InputStage>,
    ) -> Result<&'a InputStage> {
        if stage
            .as_ref()
            .is_some_and(|s| stored_as(&s.tensor) == stored_as(input))
        {
            // Returned from the check itself, the borrow would outlive the insert below
            // (a limit of today's borrow checker).
            return Ok(stage.as_ref().expect("checked just above"));
        }
        let tensor =
            Tensor::empty_with(ctx, input.shape(), input.precision(), input.memory_format())?;
        let convert = convert::prepare(ctx, &tensor, value)?;
        Ok(stage.insert(InputStage { tensor, convert }))
    }
}
