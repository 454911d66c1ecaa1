//! `bench --floor`: the part of `encode_ms` that is wgpu's and the driver's. The same number of
//! launches and buffer copies as a forward, each launch with a fused convolution's six bindings
//! over activation buffers in rotation (so that the same barriers are needed), one command
//! encoder, one compute pass and one submit, but kernels that do almost nothing. Whatever that
//! costs, no change to this crate's own recording can take away.
//!
//! Timed twice: right after the previous submission finished (the CPU's caches as the recording
//! left them), and after first writing as many bytes of CPU memory as the forward's weights and
//! activations. The second is what a CPU adapter (lavapipe, llvmpipe) recording a forward
//! faces, having just run the previous one on the same cores; a GPU leaves the CPU's caches
//! alone.

use std::num::NonZeroU64;
use std::time::Instant;

use anyhow::Result;
use fpn_wgpu::GpuContext;

/// The activation buffers the launches rotate over, as the executor's pooled buffers.
const ARENAS: usize = 3;
/// Elements each launch reads and writes (one workgroup's worth).
const ELEMENTS: u64 = 64;

/// The median CPU time, in seconds, to record and submit `launches` launches and `copies`
/// copies: warm, and after writing `footprint` bytes of CPU memory.
pub fn run(
    ctx: &GpuContext,
    launches: usize,
    copies: usize,
    footprint: u64,
    iters: usize,
) -> Result<(f64, f64)> {
    let device = ctx.device();
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some("encode floor"),
        source: wgpu::ShaderSource::Wgsl(include_str!("floor.wgsl").into()),
    });
    let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some("encode floor"),
        layout: None,
        module: &module,
        entry_point: Some("main"),
        compilation_options: Default::default(),
        cache: None,
    });
    let bytes = ELEMENTS * 4;
    let buffer = |usage| {
        device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("encode floor"),
            size: bytes,
            usage,
            mapped_at_creation: false,
        })
    };
    let storage =
        wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST;
    let arenas: Vec<_> = (0..ARENAS).map(|_| buffer(storage)).collect();
    let input = buffer(storage);
    let outputs: Vec<_> = (1..copies).map(|_| buffer(storage)).collect();
    let layout = pipeline.get_bind_group_layout(0);
    let bind_groups: Vec<_> = (0..launches)
        .map(|i| {
            // Each launch has weights and parameters of its own, as each convolution does.
            let weights = buffer(storage);
            let affine = buffer(storage);
            let count = device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("encode floor"),
                size: 16,
                usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            ctx.queue()
                .write_buffer(&count, 0, bytemuck::cast_slice(&[ELEMENTS as u32, 0, 0, 0]));
            let (src, dst) = (&arenas[i % ARENAS], &arenas[(i + 1) % ARENAS]);
            let bindings = [src, &weights, &affine, src, dst, &count];
            let entries: Vec<_> = bindings
                .iter()
                .enumerate()
                .map(|(k, b)| wgpu::BindGroupEntry {
                    binding: k as u32,
                    resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                        buffer: b,
                        offset: 0,
                        size: NonZeroU64::new(b.size()),
                    }),
                })
                .collect();
            device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some("encode floor"),
                layout: &layout,
                entries: &entries,
            })
        })
        .collect();

    let record = || {
        let start = Instant::now();
        let mut encoder = device.create_command_encoder(&Default::default());
        encoder.copy_buffer_to_buffer(&input, 0, &arenas[0], 0, bytes);
        {
            let mut pass = encoder.begin_compute_pass(&Default::default());
            for bind_group in &bind_groups {
                pass.set_pipeline(&pipeline);
                pass.set_bind_group(0, bind_group, &[]);
                pass.dispatch_workgroups(1, 1, 1);
            }
        }
        for output in &outputs {
            encoder.copy_buffer_to_buffer(&arenas[launches % ARENAS], 0, output, 0, bytes);
        }
        ctx.queue().submit([encoder.finish()]);
        start.elapsed().as_secs_f64()
    };
    let mut footprint_bytes = vec![0u8; footprint as usize];
    let mut warm = Vec::with_capacity(iters);
    let mut flushed = Vec::with_capacity(iters);
    // One untimed round first: pipelines and the driver's pools are made on first use.
    for round in 0..=iters {
        let t = record();
        pollster::block_on(ctx.work_done())?;
        if round > 0 {
            warm.push(t);
        }
        // A cache line a write is enough to evict what the recording had cached.
        for (i, b) in footprint_bytes.iter_mut().enumerate().step_by(64) {
            *b = b.wrapping_add(i as u8);
        }
        std::hint::black_box(&footprint_bytes);
        let t = record();
        pollster::block_on(ctx.work_done())?;
        if round > 0 {
            flushed.push(t);
        }
    }
    Ok((median(warm), median(flushed)))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
