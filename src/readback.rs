//! Reading tensors back without draining the queue: the copy is submitted now and waited for
//! later, by its own submission, so the GPU can run the next forward meanwhile. An optional
//! span of GPU timestamps measures how long the work before the copy ran.

use std::sync::mpsc;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::gpu::GpuContext;
use crate::tensor::Tensor;

/// How long a wait for one read-back may last before the device is taken for hung.
const WAIT_LIMIT: Duration = Duration::from_secs(600);

/// A GPU timestamp written when the queue reaches it; [`Readback::start`] writes the second
/// one and reads both back with the tensors.
pub struct GpuSpan {
    queries: wgpu::QuerySet,
}

impl GpuSpan {
    /// Submits the first timestamp, or returns `None` when the device has no timestamp
    /// queries.
    pub fn begin(ctx: &GpuContext) -> Option<Self> {
        if !ctx.supports_timestamps() {
            return None;
        }
        let queries = ctx.device().create_query_set(&wgpu::QuerySetDescriptor {
            label: Some("span"),
            ty: wgpu::QueryType::Timestamp,
            count: 2,
        });
        mark(ctx, &queries, 0);
        Some(GpuSpan { queries })
    }
}

/// Submits an empty compute pass whose start writes timestamp `index`: a pass boundary is the
/// one place every adapter with timestamp queries can write one.
fn mark(ctx: &GpuContext, queries: &wgpu::QuerySet, index: u32) {
    let mut encoder = ctx
        .device()
        .create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("span mark"),
        });
    encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
        label: Some("span mark"),
        timestamp_writes: Some(wgpu::ComputePassTimestampWrites {
            query_set: queries,
            beginning_of_pass_write_index: Some(index),
            end_of_pass_write_index: None,
        }),
    });
    ctx.queue().submit([encoder.finish()]);
}

/// What a finished [`Readback`] gives.
pub struct Readout {
    /// Per tensor, in the order given: one NCHW f32 vector per image of its batch.
    pub images: Vec<Vec<Vec<f32>>>,
    /// The span's GPU seconds, when there was a span.
    pub gpu_seconds: Option<f64>,
}

/// Tensors being copied to host-visible memory.
pub struct Readback {
    staging: wgpu::Buffer,
    /// Each tensor and where its bytes start in `staging`.
    parts: Vec<(Tensor, u64)>,
    /// Where the span's two ticks start in `staging`, when there is a span.
    span_at: Option<u64>,
    submission: wgpu::SubmissionIndex,
    mapped: mpsc::Receiver<std::result::Result<(), wgpu::BufferAsyncError>>,
}

impl Readback {
    /// Submits copies of `tensors` (after the work already submitted that writes them) into
    /// one host-visible buffer, ending `span` first when one is given.
    pub fn start(ctx: &GpuContext, tensors: &[Tensor], span: Option<GpuSpan>) -> Result<Self> {
        ctx.check_alive()?;
        let device = ctx.device();
        let mut parts = Vec::with_capacity(tensors.len());
        let mut size = 0u64;
        for t in tensors {
            parts.push((t.clone(), size));
            size += t.word_size().next_multiple_of(wgpu::COPY_BUFFER_ALIGNMENT);
        }
        let span_at = span.as_ref().map(|_| size);
        if span.is_some() {
            size += 16;
        }
        let staging = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size: size.max(wgpu::COPY_BUFFER_ALIGNMENT),
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        if let Some(span) = &span {
            mark(ctx, &span.queries, 1);
        }
        let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("readback"),
        });
        for (t, at) in &parts {
            encoder.copy_buffer_to_buffer(t.buffer(), t.offset(), &staging, *at, t.word_size());
        }
        if let (Some(span), Some(at)) = (&span, span_at) {
            let resolve = device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("span resolve"),
                size: 16,
                usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            });
            encoder.resolve_query_set(&span.queries, 0..2, &resolve, 0);
            encoder.copy_buffer_to_buffer(&resolve, 0, &staging, at, 16);
        }
        let submission = ctx.queue().submit([encoder.finish()]);
        let (tx, mapped) = mpsc::channel();
        staging.map_async(wgpu::MapMode::Read, .., move |r| {
            let _ = tx.send(r);
        });
        Ok(Readback {
            staging,
            parts,
            span_at,
            submission,
            mapped,
        })
    }

    /// Blocks until the copy is done and returns the values.
    pub fn wait(self, ctx: &GpuContext) -> Result<Readout> {
        let polled = ctx.device().poll(wgpu::PollType::Wait {
            submission_index: Some(self.submission.clone()),
            timeout: Some(WAIT_LIMIT),
        });
        if let Err(e) = polled {
            return Err(ctx.mark_lost(format!("waiting for a read-back failed: {e}")));
        }
        // The wait has run the callbacks of the finished submission; a map still pending is
        // one the device will never answer.
        match self.mapped.try_recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(ctx.mark_lost(format!("a read-back failed: {e}"))),
            Err(_) => {
                return Err(Error::Readback(
                    "the GPU finished the copy without mapping its buffer; the device may have been lost".into(),
                ))
            }
        }
        let view = self
            .staging
            .get_mapped_range(..)
            .map_err(|e| Error::Readback(e.to_string()))?;
        let images = self
            .parts
            .iter()
            .map(|(t, at)| {
                let at = *at as usize;
                t.host_images(&view[at..at + t.byte_size() as usize])
            })
            .collect();
        let gpu_seconds = self.span_at.map(|at| {
            let at = at as usize;
            let ticks: [u64; 2] = bytemuck::pod_read_unaligned(&view[at..at + 16]);
            ticks[1].saturating_sub(ticks[0]) as f64
                * ctx.queue().get_timestamp_period() as f64
                * 1e-9
        });
        drop(view);
        self.staging.unmap();
        Ok(Readout {
            images,
            gpu_seconds,
        })
    }
}
