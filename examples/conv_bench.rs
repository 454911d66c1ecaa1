//! Times one convolution, as the network's plan would run it on this adapter: for tuning a
//! kernel or a tile policy on one layer shape. Prints the kernel, the median GPU-side time per
//! launch (two launches per submit, submit to done) and GFLOP/s.
//!
//! ```sh
//! cargo run --release --example conv_bench -- --cin 256 --cout 256 --height 150 --width 225 --kernel 3 --padding 1
//! WGPU_BACKEND=gl cargo run --release --example conv_bench -- --cin 64 --cout 256 --kernel 1
//! cargo run --release --example conv_bench -- --cin 128 --cout 128 --height 56 --width 56 --padding 1 --groups 32
//! ```

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
    use fpn_wgpu::kernels::conv2d::{self, Conv2dOptions, Conv2dWeights, WeightLayout};
    use fpn_wgpu::kernels::pad2d;
    use fpn_wgpu::rng::SplitMix64;
    use fpn_wgpu::{GpuContext, Precision, Tensor};

    #[derive(Parser)]
    #[command(about = "Time one convolution")]
    struct Args {
        #[arg(long, default_value_t = 256)]
        cin: usize,
        #[arg(long, default_value_t = 256)]
        cout: usize,
        #[arg(long, default_value_t = 150)]
        height: usize,
        #[arg(long, default_value_t = 225)]
        width: usize,
        /// Square kernel size.
        #[arg(long, default_value_t = 3)]
        kernel: usize,
        #[arg(long, default_value_t = 1)]
        stride: usize,
        /// Zero padding, applied as the network does it: a separate pad, then an unpadded conv
        /// (only the conv is timed).
        #[arg(long, default_value_t = 0)]
        padding: usize,
        /// Channel groups (ResNeXt's 3x3s: 32 or 64); both channel counts must be multiples.
        #[arg(long, default_value_t = 1)]
        groups: usize,
        /// With --groups: run the block-diagonal dense convolution the groups equal instead of
        /// the grouped kernel (GFLOP/s still count the grouped work, so the times compare).
        #[arg(long)]
        dense: bool,
        #[arg(long, default_value = "f32")]
        precision: Precision,
        /// Timed submits after one warm-up.
        #[arg(long, default_value_t = 5)]
        iters: usize,
    }

    pub fn main() -> Result<()> {
        let args = Args::parse();
        let ctx = GpuContext::new()?;
        let mut rng = SplitMix64::new(1);
        let (k, p) = (args.kernel, args.precision);
        let x_shape = [1, args.cin, args.height, args.width];
        let x = Tensor::from_slice_as(
            &ctx,
            x_shape,
            &rng.vec(x_shape.iter().product(), -1.0, 1.0),
            p,
        )?;
        let x = match args.padding {
            0 => x,
            pad => pad2d::pad2d(&ctx, &x, (pad, pad))?,
        };
        let groups = args.groups.max(1);
        let grouped_shape = [args.cout, args.cin / groups, k, k];
        let mut w = rng.vec(grouped_shape.iter().product(), -0.1, 0.1);
        let mut opts = Conv2dOptions::new(args.stride, 0).with_groups(groups);
        let mut w_shape = grouped_shape;
        if args.dense && groups > 1 {
            w = conv2d::dense_from_grouped(&w, grouped_shape, groups)?;
            w_shape = [args.cout, args.cin, k, k];
            opts = opts.with_groups(1);
        }
        let weights =
            Conv2dWeights::with_precision(&ctx, w_shape, &w, None, None, WeightLayout::KMajor, p)?;
        let shape = conv2d::output_shape(x.shape(), w_shape, &opts)?;
        let out = Tensor::empty_as(&ctx, shape, p)?;
        let launches = conv2d::prepare(&ctx, &x, &weights, None, &out, &opts)?;
        // Twice per timed run, so that the time covers whole back-to-back launches.
        let twice: Vec<_> = launches.iter().chain(&launches).collect();
        let flops = 2.0 * (shape[2] * shape[3] * args.cout * args.cin / groups * k * k) as f64;
        let mut times = Vec::new();
        for i in 0..=args.iters.max(1) {
            let t = Instant::now();
            ctx.run(&twice)?;
            if i > 0 {
                times.push(t.elapsed().as_secs_f64() / 2.0);
            }
        }
        times.sort_by(f64::total_cmp);
        let median = times[times.len() / 2];
        println!("adapter: {}", ctx.adapter());
        println!(
            "{} -> {} channels in {groups} groups, {}x{} -> {}x{}, kernel {k}, stride {}, {p}: {}, median {:.2} ms, {:.1} GFLOP/s",
            args.cin,
            args.cout,
            x.shape()[2],
            x.shape()[3],
            shape[2],
            shape[3],
            args.stride,
            launches.iter().map(|l| l.label()).collect::<Vec<_>>().join(" + "),
            median * 1e3,
            flops / median * 1e-9
        );
        Ok(())
    }
}
