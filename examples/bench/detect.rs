//! `bench --detect`: a detector (RetinaNet by default, `--detector` for another kind) from the
//! pictures to the boxes (and Mask R-CNN's masks), with the GPU time of its backbone and FPN,
//! its heads (two-stage: its RPN, RoIAlign and box head, and Mask R-CNN's mask head) and its
//! post-processing, its launches, memory and the bytes read back.

use std::time::Instant;

use anyhow::Result;
use fpn_wgpu::graph::executor::{Granularity, Plan};
use fpn_wgpu::model::{DetectorConfig, DetectorKind};
use fpn_wgpu::rng::SplitMix64;
use fpn_wgpu::{Detector, DetectorOptions, GpuContext, LayoutChoice, Precision, Tensor};

/// The part of the detector a stage of its graph belongs to.
fn part(stage: &str) -> &'static str {
    match stage {
        "heads" | "classification head" | "regression head" => "heads",
        "rpn head" | "rpn proposals" => "RPN",
        "roi heads" => "RoIAlign and box head",
        "mask head" => "mask head",
        "postprocess" => "post-processing",
        _ => "backbone and FPN",
    }
}

const PARTS: [&str; 6] = [
    "backbone and FPN",
    "heads",
    "RPN",
    "RoIAlign and box head",
    "mask head",
    "post-processing",
];

/// What `bench --detect` runs.
pub struct Run {
    pub kind: DetectorKind,
    /// torchvision's `min_size` and `max_size`.
    pub sizes: (usize, usize),
    pub batch: usize,
    /// The pictures' (height, width).
    pub size: (usize, usize),
    pub iters: usize,
    pub precision: Precision,
    pub layout: LayoutChoice,
    /// Report the plan's launches and stop.
    pub plan_only: bool,
    /// The detections' score threshold, if not the kind's default.
    pub score_thresh: Option<f32>,
}

/// Launches per part of the detector, its convolution launches, and how many launches of
/// convolutions and linear layers run on cooperative matrices.
fn launches(plan: &Plan) -> ([usize; PARTS.len()], usize, usize) {
    let mut parts = [0; PARTS.len()];
    for (label, range) in plan.groups(Granularity::Stages) {
        let p = PARTS.iter().position(|&p| p == part(&label)).unwrap_or(0);
        parts[p] += range.len();
    }
    let kernels = plan.kernels();
    let convs = kernels
        .iter()
        .filter(|(_, k)| k.starts_with("conv2d"))
        .count();
    let coop = kernels
        .iter()
        .filter(|(_, k)| k.starts_with("conv2d_coop") || k.starts_with("linear_coop"))
        .count();
    (parts, convs, coop)
}

/// The GPU memory a forward of `plan` holds: the executor's pooled activation buffers (the
/// split-K scratch among them), the weights, and the output tensors the results are copied into
/// (f32: the rows, and Mask R-CNN's pasted masks of every detection slot).
fn print_memory(plan: &Plan, detector: &Detector) {
    let mib = |bytes: u64| bytes as f64 / (1u64 << 20) as f64;
    let weights = detector.executor().weight_bytes();
    let outputs: u64 = plan
        .output_shapes()
        .iter()
        .map(|(_, shape)| shape.iter().product::<usize>() as u64 * 4)
        .sum();
    println!(
        "memory: activations {:.1} MiB in {} buffers (liveness lower bound {:.1} MiB), weights {:.1} MiB, outputs {:.1} MiB; peak {:.1} MiB",
        mib(plan.activation_bytes()),
        plan.buffer_count(),
        mib(plan.activation_lower_bound()),
        mib(weights),
        mib(outputs),
        mib(plan.activation_bytes() + weights + outputs)
    );
}

pub fn run(ctx: &GpuContext, run: Run) -> Result<()> {
    let Run {
        kind,
        sizes: (min_size, max_size),
        batch,
        size: (height, width),
        iters,
        precision,
        layout,
        plan_only,
        score_thresh,
    } = run;
    let defaults = DetectorOptions::for_kind(kind);
    let options = DetectorOptions {
        min_size,
        max_size,
        precision,
        layout,
        score_thresh: score_thresh.unwrap_or(defaults.score_thresh),
        ..defaults
    };
    let detector = Detector::random(ctx, DetectorConfig::resnet50(kind, 91), 0, options)?;
    let shape = [batch, 3, height, width];
    if plan_only {
        let plan = detector.executor().plan(shape)?;
        let (parts, convs, coop) = launches(&plan);
        println!("adapter: {}", ctx.adapter());
        println!(
            "detector: {kind} ResNet-50 FPN, 91 classes, {precision}, {:?} (asked: {layout:?}); pictures {shape:?}",
            detector.executor().memory_format()
        );
        let per_part: Vec<String> = PARTS
            .iter()
            .zip(parts)
            .filter(|(_, n)| *n > 0)
            .map(|(name, n)| format!("{name} {n}"))
            .collect();
        println!(
            "plan: {} launches: {}; {convs} convolution launches; {coop} convolution and linear launches on cooperative matrices",
            plan.dispatches().len(),
            per_part.join(", ")
        );
        print_memory(&plan, &detector);
        return Ok(());
    }
    let pictures = Tensor::from_slice(
        ctx,
        shape,
        &SplitMix64::new(1).vec(shape.iter().product(), 0.0, 1.0),
    )?;
    let plan_start = Instant::now();
    let plan = detector.executor().plan(shape)?;
    let plan_s = plan_start.elapsed().as_secs_f64();
    let first = detector.detect(&pictures)?;
    // What `detect` reads back: the rows, and each picture's kept masks only.
    let masks: usize = first
        .iter()
        .filter_map(|d| d.masks.as_ref())
        .map(|m| m.data.len() * 4)
        .sum();
    let read_back = batch * options.detections_per_img * 6 * 4 + masks;
    let mut times = Vec::new();
    let mut encode = Vec::new();
    for _ in 0..iters.max(1) {
        // The CPU's part alone: recording every launch and submitting.
        let t = Instant::now();
        detector.forward_outputs(&pictures)?;
        encode.push(t.elapsed().as_secs_f64());
        pollster::block_on(ctx.work_done())?;
        // What a caller waits for: `detect`, from the submit to the detections on the host.
        let t = Instant::now();
        detector.detect(&pictures)?;
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    encode.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    let encode_ms = encode[encode.len() / 2] * 1e3;
    let groups = plan.groups(Granularity::Stages);
    let (_, stages) = pollster::block_on(
        detector
            .executor()
            .profile_async(&pictures, Granularity::Stages),
    )?;

    println!("adapter: {}", ctx.adapter());
    println!(
        "detector: {kind} ResNet-50 FPN, 91 classes, seeded random weights, {precision}, {:?}; pictures {shape:?}, min_size {}, max_size {}",
        detector.executor().memory_format(),
        options.min_size,
        options.max_size
    );
    let (_, convs, coop) = launches(&plan);
    let indirect = plan.dispatches().iter().filter(|d| d.is_indirect()).count();
    println!(
        "plan: {plan_s:.3} s, {} launches ({convs} convolution launches; {coop} convolution and linear launches on cooperative matrices; {indirect} sized on the GPU by the kept detections); detections per picture: {:?} (score threshold {})",
        plan.dispatches().len(),
        first.iter().map(|d| d.len()).collect::<Vec<_>>(),
        options.score_thresh
    );
    println!("CPU time to record and submit a forward: median {encode_ms:.3} ms");
    println!(
        "pictures to boxes: median {median:.4} s over {} runs (submit to detections read back)",
        times.len()
    );
    println!(
        "read back per forward: {read_back} bytes (the detection rows{})",
        if masks > 0 {
            format!(", and {masks} bytes of the kept masks")
        } else {
            String::new()
        }
    );
    print_memory(&plan, &detector);
    let mut parts = [(0.0f64, 0usize); PARTS.len()];
    for (label, range) in &groups {
        let p = PARTS.iter().position(|&p| p == part(label)).unwrap_or(0);
        parts[p].1 += range.len();
    }
    match &stages {
        Some(stages) => {
            let total: f64 = stages.iter().map(|(_, t)| t).sum();
            println!("GPU time per stage (one profiled forward):");
            for (name, t) in stages {
                println!(
                    "  {name:<20} {:>9.1} ms  {:>5.1} %",
                    t * 1e3,
                    100.0 * t / total
                );
                let p = PARTS.iter().position(|&p| p == part(name)).unwrap_or(0);
                parts[p].0 += t;
            }
            println!("GPU time per part:");
            for (name, (t, launches)) in PARTS.iter().zip(parts) {
                if launches == 0 {
                    continue;
                }
                println!(
                    "  {name:<20} {:>9.1} ms  {:>5.1} %  {launches} launches",
                    t * 1e3,
                    100.0 * t / total
                );
            }
        }
        None => {
            println!("GPU time per stage: this adapter has no timestamp queries");
            for (name, (_, launches)) in PARTS.iter().zip(parts) {
                if launches == 0 {
                    continue;
                }
                println!("  {name:<20} {launches} launches");
            }
        }
    }
    Ok(())
}
