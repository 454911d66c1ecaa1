//! Recording and submitting a forward: copy (or convert) the input in, every launch of the
//! plan, copy (or convert) the outputs out, one command encoder and one submit. Nothing is
//! created per forward in steady state: the outputs and any input conversion come from the
//! plan's [`OutputPool`].

use super::planning::Plan;
use super::pool::{stored_as, OutputPool, BOUNDARY};
use crate::error::Result;
use crate::gpu::{Dispatch, ErrorScopes, GpuContext};
use crate::tensor::Tensor;

/// A label and the range of a plan's dispatches timed together.
pub(super) type TimedGroup = (String, std::ops::Range<usize>);

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
    // Held while recording, so that no other forward takes the same set; a forward is short.
    let mut sets = plan.pool.sets();
    let index = OutputPool::take(ctx, &plan.outputs, &plan.values, &mut sets)?;
    let set = &sets[index];
    let mut stage = plan.pool.input_stages();
    let input_value = &plan.values[0];
    let convert_in = (stored_as(input) != stored_as(input_value))
        .then(|| OutputPool::input_stage(ctx, input_value, input, &mut stage))
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
        .map(|(name, t)| (name.clone(), t.clone().with_lease(set.lease())))
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
