//! Runs the FPN on one input and prints the adapter and the shape of each pyramid level.
//!
//! ```sh
//! cargo run --release --example pyramid                       # 1x3x600x900, seed network
//! cargo run --release --example pyramid -- --height 97 --width 131 --batch 2
//! cargo run --release --example pyramid -- --weights fpn.safetensors
//! ```
//!
//! Without `--weights` the network has deterministic random weights: the shapes and timings are
//! real, the features are not meaningful.

#[cfg(not(target_arch = "wasm32"))]
fn main() -> anyhow::Result<()> {
    native::main()
}

// A terminal program: in a browser, use the library's async API (`GpuContext::new_async`,
// `Pyramid::download_async`) from the page's event loop instead.
#[cfg(target_arch = "wasm32")]
fn main() {}

#[cfg(not(target_arch = "wasm32"))]
mod native {
    use std::path::PathBuf;
    use std::time::Instant;

    use anyhow::Result;
    use clap::Parser;
    use fpn_wgpu::rng::SplitMix64;
    use fpn_wgpu::{Fpn, FpnConfig, GpuContext, Tensor};

    #[derive(Parser)]
    #[command(about = "Run the FPN once and print the pyramid shapes")]
    struct Args {
        /// Input height in pixels.
        #[arg(long, default_value_t = 600)]
        height: usize,
        /// Input width in pixels.
        #[arg(long, default_value_t = 900)]
        width: usize,
        /// Images per batch.
        #[arg(long, default_value_t = 1)]
        batch: usize,
        /// A PyTorch state_dict saved as safetensors; the network is read from its names.
        #[arg(long)]
        weights: Option<PathBuf>,
        /// Without --weights: the backbone preset (seed, resnet18, resnet50, resnext50_32x4d, ...).
        #[arg(long, default_value = "seed")]
        preset: String,
    }

    pub fn main() -> Result<()> {
        env_logger::init();
        let args = Args::parse();
        let ctx = GpuContext::new()?;
        println!("adapter: {}", ctx.adapter());

        let fpn = match &args.weights {
            Some(path) => Fpn::from_safetensors(&ctx, path)?,
            None => Fpn::random(&ctx, FpnConfig::preset(&args.preset)?, 0)?,
        };
        println!("weights: {} ({})", fpn.origin(), fpn.config().describe());

        let shape = [
            args.batch,
            fpn.config().in_channels,
            args.height,
            args.width,
        ];
        let data = SplitMix64::new(1).vec(shape.iter().product(), -1.0, 1.0);
        let input = Tensor::from_slice(&ctx, shape, &data)?;

        let start = Instant::now();
        let pyramid = fpn.forward(&input)?;
        // Reading the levels back waits for the whole forward.
        pyramid.download(&ctx)?;
        let elapsed = start.elapsed();

        println!("input {shape:?}");
        for (name, shape) in pyramid.shapes() {
            println!("{name}: {shape:?}");
        }
        let plan = fpn.plan(shape)?;
        println!(
            "first forward (plan + run): {:.3} s; activations {:.1} MiB in {} buffers (lower bound {:.1} MiB); weights {:.1} MiB",
            elapsed.as_secs_f64(),
            plan.activation_bytes() as f64 / (1 << 20) as f64,
            plan.buffer_count(),
            plan.activation_lower_bound() as f64 / (1 << 20) as f64,
            fpn.executor().weight_bytes() as f64 / (1 << 20) as f64,
        );
        Ok(())
    }
}
