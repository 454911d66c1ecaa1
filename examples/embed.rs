//! Embedding: run the FPN on the wgpu `Device` and `Queue` your application already owns (a
//! renderer's, a game engine's) and keep the pyramid on the GPU for your own shaders.
//!
//! ```sh
//! cargo run --release --example embed
//! ```
//!
//! The example creates a device the way an application would, lends it to the library with
//! `GpuContext::from_device`, runs the FPN, then binds the P5 level directly in a compute shader
//! of its own (a per-channel mean), without a round trip through the CPU.

#[cfg(not(target_arch = "wasm32"))]
fn main() -> anyhow::Result<()> {
    pollster::block_on(native::run())
}

// A browser application would do the same from its event loop with the async calls.
#[cfg(target_arch = "wasm32")]
fn main() {}

#[cfg(not(target_arch = "wasm32"))]
mod native {
    use anyhow::{Context, Result};
    use fpn_wgpu::rng::SplitMix64;
    use fpn_wgpu::{Fpn, FpnConfig, GpuContext, Tensor};
    use wgpu::util::DeviceExt;

    /// The application's own kernel: the mean of each channel of an NCHW map (batch 1).
    const CHANNEL_MEAN: &str = r#"
struct Dims { channels: u32, plane: u32, _pad0: u32, _pad1: u32 }
@group(0) @binding(0) var<storage, read> level: array<f32>;
@group(0) @binding(1) var<storage, read_write> means: array<f32>;
@group(0) @binding(2) var<uniform> dims: Dims;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    let c = id.x;
    if (c >= dims.channels) { return; }
    var sum = 0.0;
    for (var i = 0u; i < dims.plane; i++) { sum += level[c * dims.plane + i]; }
    means[c] = sum / f32(dims.plane);
}
"#;

    pub async fn run() -> Result<()> {
        env_logger::init();

        // 1. The application's device, created as it would be anyway.
        let instance =
            wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let adapter = instance
            .request_adapter(&wgpu::RequestAdapterOptions::default())
            .await
            .context("no GPU adapter (on headless Linux: apt-get install mesa-vulkan-drivers)")?;
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                required_limits: adapter.limits(),
                ..Default::default()
            })
            .await?;
        println!("application device on {}", adapter.get_info().name);

        // 2. The library borrows it (wgpu handles are cheap clones of the same device).
        let ctx = GpuContext::from_device(device.clone(), queue.clone());
        let fpn = Fpn::random(&ctx, FpnConfig::seed(), 0)?;
        let shape = [1, 3, 224, 224];
        let image = Tensor::from_slice(
            &ctx,
            shape,
            &SplitMix64::new(2).vec(3 * 224 * 224, -1.0, 1.0),
        )?;
        let pyramid = fpn.forward(&image)?; // submitted; nothing waits here
        let p5 = pyramid.get("p5").context("the pyramid has p5")?;
        let [_, channels, h, w] = p5.shape();

        // 3. The application's own shader reads P5 in place: same device, same queue, so the
        //    queue orders it after the forward.
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("channel mean"),
            source: wgpu::ShaderSource::Wgsl(CHANNEL_MEAN.into()),
        });
        let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some("channel mean"),
            layout: None,
            module: &module,
            entry_point: Some("main"),
            compilation_options: Default::default(),
            cache: None,
        });
        let means = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("means"),
            size: channels as u64 * 4,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        let dims = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("dims"),
            contents: bytemuck::cast_slice(&[channels as u32, (h * w) as u32, 0, 0]),
            usage: wgpu::BufferUsages::UNIFORM,
        });
        let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("channel mean"),
            layout: &pipeline.get_bind_group_layout(0),
            entries: &[
                wgpu::BindGroupEntry {
                    binding: 0,
                    resource: p5.buffer().as_entire_binding(),
                },
                wgpu::BindGroupEntry {
                    binding: 1,
                    resource: means.as_entire_binding(),
                },
                wgpu::BindGroupEntry {
                    binding: 2,
                    resource: dims.as_entire_binding(),
                },
            ],
        });
        let mut encoder = device.create_command_encoder(&Default::default());
        {
            let mut pass = encoder.begin_compute_pass(&Default::default());
            pass.set_pipeline(&pipeline);
            pass.set_bind_group(0, &bind_group, &[]);
            pass.dispatch_workgroups((channels as u32).div_ceil(64), 1, 1);
        }
        queue.submit([encoder.finish()]);

        // 4. Read both back only to show that they agree.
        let means = Tensor::from_buffer(means, [1, channels, 1, 1])?
            .download_async(&ctx)
            .await?;
        let p5_host = p5.download_async(&ctx).await?;
        let worst = (0..channels)
            .map(|c| {
                let plane = &p5_host[c * h * w..(c + 1) * h * w];
                let cpu = plane.iter().map(|&v| v as f64).sum::<f64>() / plane.len() as f64;
                (cpu - means[c] as f64).abs()
            })
            .fold(0.0f64, f64::max);
        println!("P5 {:?}: first channel means {:?}", p5.shape(), &means[..4]);
        println!("largest difference from the CPU mean of the downloaded P5: {worst:.2e}");
        anyhow::ensure!(
            worst < 1e-3,
            "the application's shader disagrees with the CPU"
        );
        Ok(())
    }
}
