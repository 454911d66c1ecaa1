//! Runs many forwards back to back and checks that memory stays flat: the process's resident
//! memory and the executor's allocations must not grow after the warm-up. Prints the figures at
//! checkpoints and exits non-zero on growth.
//!
//! ```sh
//! cargo run --release --example soak -- --forwards 1000
//! ```

#[cfg(not(target_arch = "wasm32"))]
fn main() -> anyhow::Result<()> {
    native::main()
}

// Resident memory comes from the operating system; there is none to ask in a browser.
#[cfg(target_arch = "wasm32")]
fn main() {}

#[cfg(not(target_arch = "wasm32"))]
mod native {
    use std::time::Instant;

    use anyhow::{bail, Result};
    use clap::Parser;
    use fpn_wgpu::rng::SplitMix64;
    use fpn_wgpu::{Fpn, FpnConfig, GpuContext, Tensor};

    #[derive(Parser)]
    #[command(about = "Check that memory stays flat over many forwards")]
    struct Args {
        #[arg(long, default_value_t = 1000)]
        forwards: usize,
        /// Forwards before the baseline is taken.
        #[arg(long, default_value_t = 50)]
        warmup: usize,
        #[arg(long, default_value_t = 64)]
        size: usize,
        /// Allowed growth of resident memory after the warm-up, in percent.
        #[arg(long, default_value_t = 5.0)]
        tolerance: f64,
    }

    /// Resident set size in KiB, from /proc (Linux); None elsewhere.
    fn rss_kib() -> Option<u64> {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    pub fn main() -> Result<()> {
        env_logger::init();
        let args = Args::parse();
        let ctx = GpuContext::new()?;
        let fpn = Fpn::random(&ctx, FpnConfig::with_blocks([1, 1, 1, 1]), 0)?;
        let shape = [1, 3, args.size, args.size];
        let mut rng = SplitMix64::new(5);
        println!("adapter: {}", ctx.adapter());
        println!(
            "{} forwards of {shape:?}, baseline after {}",
            args.forwards, args.warmup
        );
        let start = Instant::now();
        let mut baseline = None;
        let mut worst_growth = 0.0f64;
        for i in 1..=args.forwards {
            // A new input each time, read back in full: the work a real caller does.
            let x = Tensor::from_slice(&ctx, shape, &rng.vec(shape.iter().product(), -1.0, 1.0))?;
            fpn.forward(&x)?.download(&ctx)?;
            if i == args.warmup {
                baseline = rss_kib();
            }
            if i % 100 == 0 || i == args.warmup || i == args.forwards {
                let plan = fpn.plan(shape)?;
                let rss = rss_kib();
                let growth = match (baseline, rss) {
                    (Some(b), Some(r)) if i >= args.warmup => {
                        100.0 * (r as f64 - b as f64) / b as f64
                    }
                    _ => 0.0,
                };
                worst_growth = worst_growth.max(growth);
                println!(
                    "forward {i:>5}: resident {:>8} KiB ({growth:+.2} % from baseline), plan activations {} B, weights {} B, {:.1} s",
                    rss.map_or("?".into(), |r| r.to_string()),
                    plan.activation_bytes(),
                    fpn.executor().weight_bytes(),
                    start.elapsed().as_secs_f64()
                );
            }
        }
        println!(
            "worst growth after warm-up: {worst_growth:+.2} % (allowed {:.1} %)",
            args.tolerance
        );
        if worst_growth > args.tolerance {
            bail!("resident memory grew {worst_growth:.2} % after the warm-up");
        }
        Ok(())
    }
}
