//! Benchmarks the FPN forward: wall time per forward (submit to outputs ready), effective
//! GFLOP/s, per-stage GPU time from timestamp queries, and the memory the executor allocated.
//! The last line is one JSON object with the same figures, for scripts.
//!
//! ```sh
//! cargo run --release --example bench -- --height 600 --width 900 --batch 1 --iters 5
//! WGPU_BACKEND=gl cargo run --release --example bench -- --height 224 --width 224
//! cargo run --release --example bench -- --precision f16
//! cargo run --release --example bench -- --height 224 --width 224 --per-op   # one line per launch
//! cargo run --release --example bench -- --floor   # what wgpu and the driver alone cost of encode_ms
//! cargo run --release --example bench -- --suite   # batch 1 and 8, 600x900 and 224x224, f32 and f16
//! cargo run --release --example bench -- --detect --height 800 --width 1333   # RetinaNet
//! cargo run --release --example bench -- --detect --detector fasterrcnn --height 800 --width 1333
//! cargo run --release --example bench -- --detect --precision f16 --layout nchw --plan-only
//! ```
//!
//! `--detect` times a whole detector (ResNet-50, 91 classes, seeded random weights; RetinaNet
//! unless `--detector` names another kind) from the pictures to the boxes instead, with the GPU
//! time of its parts: backbone and FPN, heads (Faster R-CNN: RPN and RoI heads),
//! post-processing (top-k, decoding, NMS); `--layout` chooses how its activations are laid
//! out, and `--plan-only` reports the launches without running them.

#[cfg(not(target_arch = "wasm32"))]
mod detect;
#[cfg(not(target_arch = "wasm32"))]
mod floor;

#[cfg(not(target_arch = "wasm32"))]
fn main() -> anyhow::Result<()> {
    native::main()
}

// Timing a terminal program needs a blocking clock and stdout: not a browser's.
#[cfg(target_arch = "wasm32")]
fn main() {}

#[cfg(not(target_arch = "wasm32"))]
mod native {
    use std::time::Instant;

    use anyhow::Result;
    use clap::Parser;
    use fpn_wgpu::graph::executor::{Algorithms, Granularity};
    use fpn_wgpu::rng::SplitMix64;
    use fpn_wgpu::weights::VarStore;
    use fpn_wgpu::{Fpn, FpnConfig, FpnOptions, Fusion, GpuContext, Precision, Tensor};

    #[derive(Parser, Clone)]
    #[command(about = "Time FPN forwards")]
    struct Args {
        #[arg(long, default_value_t = 600)]
        height: usize,
        #[arg(long, default_value_t = 900)]
        width: usize,
        #[arg(long, default_value_t = 1)]
        batch: usize,
        /// Timed forwards after the warm-up.
        #[arg(long, default_value_t = 5)]
        iters: usize,
        /// Untimed forwards first (the first one also builds the plan).
        #[arg(long, default_value_t = 1)]
        warmup: usize,
        /// Backbone preset: seed, resnet18/34/50/101/152, resnext50_32x4d, resnext101_32x8d,
        /// resnext101_64x4d, wide_resnet50_2 or wide_resnet101_2 (`FpnConfig::PRESETS`).
        #[arg(long, default_value = "seed")]
        preset: String,
        /// Run every op as its own kernel (no batch norm folding, no epilogue fusion).
        #[arg(long)]
        unfused: bool,
        /// Use Winograd F(2x2, 3x3) for the stride-1 3x3 convolutions.
        #[arg(long)]
        winograd: bool,
        /// Storage of weights and activations: f32 or f16 (f32 sums either way).
        #[arg(long, default_value = "f32")]
        precision: Precision,
        /// How convolutions get their kernel configuration: auto (FPN_TUNE, else timed on GPUs
        /// and cached), off (presets), cache or full. The plan time includes the tuning.
        #[arg(long, default_value = "auto")]
        tune: fpn_wgpu::Tuning,
        /// Also time every kernel launch on its own (GPU timestamps) and list them, slowest first.
        #[arg(long)]
        per_op: bool,
        /// Also time recording and submitting as many launches and copies as the forward, of
        /// kernels that do almost nothing: what wgpu and the driver alone cost of `encode_ms`.
        #[arg(long)]
        floor: bool,
        /// Run every combination of batch 1 and 8, 600x900 and 224x224, f32 and f16 (where the
        /// adapter has it), each reported as a single run would be; for GPUs.
        #[arg(long)]
        suite: bool,
        /// Time a detector (ResNet-50, 91 classes, random weights; RetinaNet unless --detector
        /// says otherwise) end to end instead: the pictures are resized as torchvision's
        /// transform does (shorter side --min-size, longer at most --max-size).
        #[arg(long)]
        detect: bool,
        /// With --detect: how the activations are laid out: auto (channels-last on
        /// cooperative matrices where they run), nchw or channels-last.
        #[arg(long, default_value = "auto")]
        layout: fpn_wgpu::LayoutChoice,
        /// With --detect: build the plan and report its launches per part, without running.
        #[arg(long)]
        plan_only: bool,
        /// With --detect: the shorter side pictures are resized to.
        #[arg(long, default_value_t = 800, requires = "detect")]
        min_size: usize,
        /// With --detect: the most the longer side may be after resizing.
        #[arg(long, default_value_t = 1333, requires = "detect")]
        max_size: usize,
        /// With --detect: the kind of detector, retinanet, retinanet_v2, fcos, fasterrcnn,
        /// fasterrcnn_v2, maskrcnn or maskrcnn_v2.
        #[arg(long, default_value = "retinanet", requires = "detect")]
        detector: fpn_wgpu::model::DetectorKind,
        /// With --detect: the score threshold of the detections (torchvision's
        /// `box_score_thresh` or `score_thresh`; its default for the kind when not given).
        /// Higher keeps fewer detections, on which Mask R-CNN's mask branch then runs.
        #[arg(long, requires = "detect")]
        score_thresh: Option<f32>,
    }

    fn mib(bytes: u64) -> f64 {
        bytes as f64 / (1u64 << 20) as f64
    }

    pub fn main() -> Result<()> {
        env_logger::init();
        let args = Args::parse();
        let ctx = GpuContext::new()?;
        if args.detect {
            return crate::detect::run(
                &ctx,
                crate::detect::Run {
                    kind: args.detector,
                    sizes: (args.min_size, args.max_size),
                    batch: args.batch,
                    size: (args.height, args.width),
                    iters: args.iters,
                    precision: args.precision,
                    layout: args.layout,
                    plan_only: args.plan_only,
                    score_thresh: args.score_thresh,
                },
            );
        }
        if !args.suite {
            return run(&ctx, &args);
        }
        let mut precisions = vec![Precision::F32];
        if ctx.supports_f16() {
            precisions.push(Precision::F16);
        } else {
            println!("{}: no shader-f16, the suite runs f32 only", ctx.adapter());
        }
        for precision in precisions {
            for (height, width) in [(600, 900), (224, 224)] {
                for batch in [1, 8] {
                    let one = Args {
                        precision,
                        height,
                        width,
                        batch,
                        ..args.clone()
                    };
                    run(&ctx, &one)?;
                    println!();
                }
            }
        }
        Ok(())
    }

    /// Builds the network, times it and prints the report for one configuration.
    /// The tuning mode the network's executor resolved to on this device.
    fn executor_tuning(fpn: &Fpn) -> fpn_wgpu::Tuning {
        fpn.executor().tuning()
    }

    fn run(ctx: &GpuContext, args: &Args) -> Result<()> {
        let fusion = if args.unfused {
            Fusion::Unfused
        } else {
            Fusion::Fused
        };
        let config = FpnConfig::preset(&args.preset)?;
        let algorithms = if args.winograd {
            Algorithms::Winograd
        } else {
            Algorithms::Direct
        };
        let options = FpnOptions {
            fusion,
            algorithms,
            precision: args.precision,
            tuning: args.tune,
            ..FpnOptions::default()
        };
        let fpn = Fpn::with_options(ctx, &VarStore::random(0), config, options)?;
        let shape = [args.batch, 3, args.height, args.width];
        let input = Tensor::from_slice(
            ctx,
            shape,
            &SplitMix64::new(1).vec(shape.iter().product(), -1.0, 1.0),
        )?;

        let plan_start = Instant::now();
        let plan = fpn.plan(shape)?;
        let plan_s = plan_start.elapsed().as_secs_f64();
        let mut first_s = None;
        for _ in 0..args.warmup {
            let t = Instant::now();
            fpn.forward(&input)?;
            pollster::block_on(ctx.work_done())?;
            first_s.get_or_insert(plan_s + t.elapsed().as_secs_f64());
        }
        let mut times = Vec::with_capacity(args.iters);
        // The CPU's part of a forward: recording every launch and submitting (forward returns
        // without waiting for the GPU).
        let mut encode = Vec::with_capacity(args.iters);
        for _ in 0..args.iters.max(1) {
            let t = Instant::now();
            fpn.forward(&input)?;
            encode.push(t.elapsed().as_secs_f64());
            pollster::block_on(ctx.work_done())?;
            times.push(t.elapsed().as_secs_f64());
        }
        times.sort_by(f64::total_cmp);
        encode.sort_by(f64::total_cmp);
        let encode_ms = encode[encode.len() / 2] * 1e3;
        let median = times[times.len() / 2];
        let (min, max) = (times[0], times[times.len() - 1]);
        let gflop = plan.conv_flops() as f64 * 1e-9;
        let executor = fpn.executor();
        let (_, stages) = pollster::block_on(executor.profile_async(&input, Granularity::Stages))?;

        println!("adapter: {}", ctx.adapter());
        println!(
            "network: {} {:?}, {}, {:?} convolutions, {}, input {shape:?}",
            args.preset,
            config.blocks,
            if args.unfused { "unfused" } else { "fused" },
            algorithms,
            args.precision
        );
        println!(
            "plan: {:.3} s (tuning: {:?}), {} dispatches; first forward (plan, pipelines and one forward): {}",
            plan_s,
            executor_tuning(&fpn),
            plan.dispatches().len(),
            first_s.map_or("not run (--warmup 0)".to_string(), |t| format!("{t:.3} s"))
        );
        println!("CPU time to record and submit a forward: median {encode_ms:.3} ms");
        let floor = if args.floor {
            let footprint = plan.activation_bytes() + fpn.executor().weight_bytes();
            // The input copied in, each level copied out (converted, in f16).
            let copies = 1 + fpn.executor().output_shapes(shape)?.len();
            let iters = args.iters.max(20);
            let (warm, flushed) =
                crate::floor::run(ctx, plan.dispatches().len(), copies, footprint, iters)?;
            println!(
                "the same {} launches and {copies} copies of kernels that do almost nothing \
                 (wgpu and the driver alone): median {:.3} ms right after the last, {:.3} ms \
                 after writing {:.0} MiB of CPU memory (the forward's weights and activations), \
                 over {iters}",
                plan.dispatches().len(),
                warm * 1e3,
                flushed * 1e3,
                mib(footprint)
            );
            Some((warm, flushed))
        } else {
            None
        };
        println!(
            "forward: median {median:.4} s, min {min:.4} s, max {max:.4} s over {} runs",
            times.len()
        );
        println!(
            "work: {gflop:.1} GFLOP (direct convolution), {:.1} effective GFLOP/s",
            gflop / median
        );
        match &stages {
            Some(stages) => {
                let total: f64 = stages.iter().map(|(_, t)| t).sum();
                println!("GPU time per stage (one profiled forward):");
                for (name, t) in stages {
                    println!(
                        "  {name:<10} {:>9.1} ms  {:>5.1} %",
                        t * 1e3,
                        100.0 * t / total
                    );
                }
            }
            None => println!("GPU time per stage: this adapter has no timestamp queries"),
        }
        if args.per_op {
            match pollster::block_on(executor.profile_async(&input, Granularity::Ops))?.1 {
                Some(ops) => {
                    let mut rows: Vec<(&(String, f64), u64)> = ops
                        .iter()
                        .zip(plan.dispatch_flops().iter().copied())
                        .collect();
                    rows.sort_by(|a, b| b.0 .1.total_cmp(&a.0 .1));
                    println!("GPU time per launch (one profiled forward, slowest first):");
                    for ((label, t), flops) in rows {
                        let rate = match flops {
                            0 => String::new(),
                            f => format!("{:>6.1} GFLOP/s", f as f64 * 1e-9 / t),
                        };
                        println!("  {label:<40} {:>9.2} ms  {rate}", t * 1e3);
                    }
                }
                None => println!("GPU time per launch: this adapter has no timestamp queries"),
            }
        }
        println!(
            "memory: activations {:.1} MiB in {} buffers (liveness lower bound {:.1} MiB, ratio {:.2}), weights {:.1} MiB",
            mib(plan.activation_bytes()),
            plan.buffer_count(),
            mib(plan.activation_lower_bound()),
            plan.activation_bytes() as f64 / plan.activation_lower_bound() as f64,
            mib(fpn.executor().weight_bytes()),
        );

        let stages_json = stages
            .map(|s| {
                let items: Vec<String> = s
                    .iter()
                    .map(|(n, t)| format!("\"{n}\":{:.3}", t * 1e3))
                    .collect();
                format!("{{{}}}", items.join(","))
            })
            .unwrap_or_else(|| "null".into());
        println!(
            "{{\"adapter\":{:?},\"backend\":\"{:?}\",\"preset\":{:?},\"fused\":{},\"algorithms\":\"{:?}\",\"precision\":\"{}\",\"input\":{:?},\"tuning\":\"{:?}\",\"plan_s\":{plan_s:.4},\"first_forward_s\":{},\"encode_ms\":{encode_ms:.4},\"encode_floor_ms\":{},\"runs\":{},\"median_s\":{median:.5},\"min_s\":{min:.5},\"max_s\":{max:.5},\"gflop\":{gflop:.3},\"effective_gflops\":{:.2},\"stages_ms\":{stages_json},\"activation_bytes\":{},\"activation_lower_bound_bytes\":{},\"weight_bytes\":{}}}",
            ctx.adapter().name,
            ctx.adapter().backend,
            args.preset,
            !args.unfused,
            algorithms,
            args.precision,
            shape,
            executor_tuning(&fpn),
            first_s.map_or("null".to_string(), |t| format!("{t:.4}")),
            floor.map_or("null".to_string(), |(w, f)| format!(
                "{{\"warm\":{:.4},\"flushed\":{:.4}}}",
                w * 1e3,
                f * 1e3
            )),
            times.len(),
            gflop / median,
            plan.activation_bytes(),
            plan.activation_lower_bound(),
            fpn.executor().weight_bytes(),
        );
        Ok(())
    }
}
