//! Recording and submitting a forward: copy (or convert) the input in, every launch of the
//! plan, copy (or convert) the outputs out, one command encoder and one submit.
//!
//! Nothing is created per forward in steady state. Output tensors come from a pool per plan:
//! a set handed out is reused once every tensor of it has been dropped (their buffers are
//! shared with a lease the pool watches), with the conversion launches built for it. An input
//! of another precision or layout than the plan's goes through a staging tensor that is
//! converted by a launch built once.

use std::sync::{Arc, Mutex};

use super::planning::Plan;
use crate::error::Result;
use crate::gpu::{Dispatch, ErrorScopes, GpuContext};
use crate::kernels::convert;
use crate::precision::Precision;
use crate::tensor::{MemoryFormat, Tensor};

/// A label and the range of a plan's dispatches timed together.
pub(super) type TimedGroup = (String, std::ops::Range<usize>);

/// Output sets a plan keeps for reuse; beyond it a set still held by the caller is forgotten
/// (its tensors live on with their holders), so a caller keeping every forward's outputs does
/// not make the pool grow.
const POOL_SETS: usize = 4;

/// The storage of the caller's tensors: f32 NCHW.
const BOUNDARY: (Precision, MemoryFormat) = (Precision::F32, MemoryFormat::Nchw);

fn stored_as(t: &Tensor) -> (Precision, MemoryFormat) {
    (t.precision(), t.memory_format())
}

/// One forward's outputs and the launches that convert the plan's values into them.
struct OutputSet {
    lease: Arc<()>,
    tensors: Vec<(String, Tensor)>,
    convert: Vec<Dispatch>,
}

/// A staging tensor of the caller's storage for inputs stored otherwise than the plan's input
/// value, with the launch converting it into that value.
struct InputStage {
    tensor: Tensor,
    convert: Dispatch,
}

/// The output sets and input stages of one plan.
#[derive(Default)]
pub(crate) struct OutputPool {
    sets: Mutex<Vec<OutputSet>>,
    input: Mutex<Option<InputStage>>,
}

impl OutputPool {
    /// The index in `sets` of a set of outputs no caller holds, made if there is none.
    fn take(ctx: &GpuContext, plan: &Plan, sets: &mut Vec<OutputSet>) -> Result<usize> {
        // The pool's own lease is the only one left once the caller dropped every tensor.
        if let Some(i) = sets.iter().position(|s| Arc::strong_count(&s.lease) == 1) {
            return Ok(i);
        }
        let set = Self::make(ctx, plan)?;
        if sets.len() >= POOL_SETS {
            sets.remove(0);
        }
        sets.push(set);
        Ok(sets.len() - 1)
    }

    fn make(ctx: &GpuContext, plan: &Plan) -> Result<OutputSet> {
        let tensors: Vec<(String, Tensor)> = plan
            .outputs
            .iter()
            .map(|(name, v)| Ok((name.clone(), Tensor::empty(ctx, plan.values[*v].shape())?)))
            .collect::<Result<_>>()?;
        // Values of another storage than the caller's tensors go through conversion kernels.
        let convert = plan
            .outputs
            .iter()
            .zip(&tensors)
            .filter(|((_, v), _)| stored_as(&plan.values[*v]) != BOUNDARY)
            .map(|((_, v), (_, t))| convert::prepare(ctx, &plan.values[*v], t))
            .collect::<Result<_>>()?;
        Ok(OutputSet {
            lease: Arc::new(()),
            tensors,
            convert,
        })
    }

    /// The staging tensor and conversion for an input stored as `input` is, made on first use
    /// (and again when a caller switches to another storage).
    fn input_stage<'a>(
        ctx: &GpuContext,
        plan: &Plan,
        input: &Tensor,
        stage: &'a mut Option<InputStage>,
    ) -> Result<&'a InputStage> {
        if stage
            .as_ref()
            .is_some_and(|s| stored_as(&s.tensor) == stored_as(input))
        {
            return Ok(stage.as_ref().expect("checked just above"));
        }
        let tensor =
            Tensor::empty_with(ctx, input.shape(), input.precision(), input.memory_format())?;
        let convert = convert::prepare(ctx, &tensor, &plan.values[0])?;
        Ok(stage.insert(InputStage { tensor, convert }))
    }
}

/// Records and submits one forward of `plan` on `input`: every dispatch in one compute pass, or
/// one pass per group with timestamps around each when `timestamps` is given. Returns the
/// outputs, by name, as f32 NCHW tensors.
pub(super) fn submit(
    ctx: &GpuContext,
    plan: &Plan,
    input: &Tensor,
    timestamps: Option<(&wgpu::QuerySet, &[TimedGroup])>,
) -> Result<Vec<(String, Tensor)>> {
    let device = ctx.device();
    let scopes = ErrorScopes::push(device);
    // Held while recording: the sets and the stage are only read, and a forward is short.
    let mut sets = plan.pool.sets.lock().unwrap_or_else(|p| p.into_inner());
    let index = OutputPool::take(ctx, plan, &mut sets)?;
    let set = &sets[index];
    let mut stage = plan.pool.input.lock().unwrap_or_else(|p| p.into_inner());
    let input_value = &plan.values[0];
    let convert_in = (stored_as(input) != stored_as(input_value))
        .then(|| OutputPool::input_stage(ctx, plan, input, &mut stage))
        .transpose()?;
    let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
        label: Some("forward"),
    });
    // Conversions run in passes of their own so that stage timestamps measure the network.
    let copy_target = convert_in.map_or(input_value, |s| &s.tensor);
    encoder.copy_buffer_to_buffer(
        input.buffer(),
        input.offset(),
        copy_target.buffer(),
        copy_target.offset(),
        input.word_size(),
    );
    if let Some(s) = convert_in {
        record_pass(&mut encoder, "convert input", [&s.convert]);
    }
    match timestamps {
        None => record_pass(&mut encoder, "forward", &plan.dispatches),
        Some((query_set, groups)) => {
            for (i, (label, range)) in groups.iter().enumerate() {
                let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some(label),
                    timestamp_writes: Some(wgpu::ComputePassTimestampWrites {
                        query_set,
                        beginning_of_pass_write_index: Some(2 * i as u32),
                        end_of_pass_write_index: Some(2 * i as u32 + 1),
                    }),
                });
                for d in &plan.dispatches[range.clone()] {
                    d.record(&mut pass);
                }
            }
        }
    }
    if !set.convert.is_empty() {
        record_pass(&mut encoder, "convert outputs", &set.convert);
    }
    for ((_, v), (_, t)) in plan.outputs.iter().zip(&set.tensors) {
        let value = &plan.values[*v];
        if stored_as(value) != BOUNDARY {
            continue;
        }
        encoder.copy_buffer_to_buffer(value.buffer(), value.offset(), t.buffer(), 0, t.byte_size());
    }
    ctx.queue().submit([encoder.finish()]);
    scopes.check("forward")?;
    Ok(set
        .tensors
        .iter()
        .map(|(name, t)| (name.clone(), t.clone().with_lease(set.lease.clone())))
        .collect())
}

/// Records `dispatches` into a compute pass of their own.
pub(super) fn record_pass<'a>(
    encoder: &mut wgpu::CommandEncoder,
    label: &str,
    dispatches: impl IntoIterator<Item = &'a Dispatch>,
) {
    let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
        label: Some(label),
        timestamp_writes: None,
    });
    for d in dispatches {
        d.record(&mut pass);
    }
}
