//! `fpn`: run the FPN on tensors stored as safetensors, from the command line.
//!
//! Exit status: 0 on success, 1 on a runtime error (one line on stderr saying why), 2 on a usage
//! error.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use fpn_wgpu::tensor_file::{read_tensors, write_tensors};
use fpn_wgpu::{Fpn, FpnConfig, Fusion, GpuContext, Tensor};

#[derive(Parser)]
#[command(
    name = "fpn",
    version,
    about = "Feature Pyramid Network forward passes on the GPU (wgpu)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the network on the tensor `input` of a safetensors file; write p2..p5.
    Run {
        /// PyTorch state_dict as safetensors; the architecture is read from its names.
        #[arg(long)]
        weights: PathBuf,
        /// safetensors file holding one NCHW float tensor named `input` (N x 3 x H x W).
        #[arg(long)]
        input: PathBuf,
        /// Where to write the levels, as float32 tensors `p2`, `p3`, `p4`, `p5`.
        #[arg(long)]
        output: PathBuf,
        /// Keep batch norm, ReLU and residual adds as separate kernels (for debugging).
        #[arg(long)]
        unfused: bool,
    },
    /// List the GPU adapters wgpu sees, with the limits that matter for the FPN.
    Info,
    /// Print the pyramid's shapes for an input size, without running the network.
    Shapes {
        #[arg(long)]
        height: usize,
        #[arg(long)]
        width: usize,
        #[arg(long, default_value_t = 1)]
        batch: usize,
        /// Backbone preset: seed, resnet50, resnet101, resnet152 (the shapes are the same).
        #[arg(long, default_value = "seed")]
        preset: String,
    },
    /// Write the deterministic seeded random weights as a safetensors state_dict.
    RandomWeights {
        /// Backbone preset: seed, resnet50, resnet101, resnet152.
        #[arg(long, default_value = "seed", conflicts_with = "blocks")]
        preset: String,
        /// Block counts of layer1..layer4, e.g. 1,1,1,1.
        #[arg(long, value_parser = parse_blocks)]
        blocks: Option<[usize; 4]>,
        /// The seed.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Output file.
        #[arg(long)]
        output: PathBuf,
    },
}

fn run(weights: &Path, input: &Path, output: &Path, unfused: bool) -> Result<()> {
    let tensors = read_tensors(input, |_| false)?;
    let Some(x) = tensors.get("input") else {
        bail!(
            "{}: no tensor named `input` (found: {:?})",
            input.display(),
            tensors.keys().collect::<Vec<_>>()
        );
    };
    let shape = x
        .nchw("input")
        .with_context(|| input.display().to_string())?;
    let ctx = GpuContext::new()?;
    let fpn = if unfused {
        let store = fpn_wgpu::weights::VarStore::from_file(weights)?;
        let config = FpnConfig::with_blocks(fpn_wgpu::weights::infer_block_counts(&store.names())?);
        Fpn::new(&ctx, &store, config, Fusion::Unfused)?
    } else {
        Fpn::from_safetensors(&ctx, weights)?
    };
    let t = Tensor::from_slice(&ctx, shape, &x.data)?;
    let levels = fpn.forward(&t)?.download(&ctx)?;
    write_tensors(output, levels.iter().map(|(n, t)| (n.as_str(), t)))?;
    for (name, t) in &levels {
        eprintln!("{name}: {:?}", t.shape);
    }
    Ok(())
}

/// Parses `a,b,c,d` into four block counts.
fn parse_blocks(s: &str) -> Result<[usize; 4], String> {
    let parts: Vec<usize> = s
        .split(',')
        .map(|p| p.trim().parse::<usize>().map_err(|e| format!("`{p}`: {e}")))
        .collect::<Result<_, _>>()?;
    <[usize; 4]>::try_from(parts)
        .map_err(|p| format!("expected 4 comma-separated counts, got {}", p.len()))
}

fn random_weights(
    preset: &str,
    blocks: Option<[usize; 4]>,
    seed: u64,
    output: &Path,
) -> Result<()> {
    let config = match blocks {
        Some(b) => FpnConfig::with_blocks(b),
        None => FpnConfig::preset(preset)?,
    };
    let dict = Fpn::random_state_dict(config, seed)?;
    write_tensors(output, dict.iter().map(|(n, t)| (n.as_str(), t)))?;
    eprintln!(
        "wrote {} tensors ({:?} blocks, seed {seed}) to {}",
        dict.len(),
        config.blocks,
        output.display()
    );
    Ok(())
}

fn info() -> Result<()> {
    let adapters = pollster::block_on(fpn_wgpu::gpu::available_adapters());
    if adapters.is_empty() {
        bail!(
            "{}",
            fpn_wgpu::Error::NoAdapter {
                detail: String::new()
            }
        );
    }
    for (i, a) in adapters.iter().enumerate() {
        let l = &a.limits;
        println!("{i}: {}", a.summary);
        println!(
            "   compute shaders: {}, timestamps: {}, shader-f16: {}",
            a.compute, a.timestamps, a.shader_f16
        );
        println!(
            "   max storage binding {} MiB, max buffer {} MiB, workgroup storage {} KiB, \
             workgroups per dimension {}, invocations per workgroup {}",
            l.max_storage_buffer_binding_size >> 20,
            l.max_buffer_size >> 20,
            l.max_compute_workgroup_storage_size >> 10,
            l.max_compute_workgroups_per_dimension,
            l.max_compute_invocations_per_workgroup
        );
    }
    println!("WGPU_BACKEND and WGPU_ADAPTER_NAME choose among these; by default the first that runs compute.");
    Ok(())
}

fn shapes(height: usize, width: usize, batch: usize, preset: &str) -> Result<()> {
    let config = FpnConfig::preset(preset)?;
    let graph = Fpn::graph(&fpn_wgpu::weights::VarStore::random(0), config)?;
    let values = graph.shapes([batch, 3, height, width])?;
    println!("input [{batch}, 3, {height}, {width}]");
    for (name, v) in graph.outputs() {
        println!("{name}: {:?}", values[*v]);
    }
    Ok(())
}

fn main() -> ExitCode {
    env_logger::init();
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Run {
            weights,
            input,
            output,
            unfused,
        } => run(weights, input, output, *unfused),
        Command::Info => info(),
        Command::Shapes {
            height,
            width,
            batch,
            preset,
        } => shapes(*height, *width, *batch, preset),
        Command::RandomWeights {
            preset,
            blocks,
            seed,
            output,
        } => random_weights(preset, *blocks, *seed, output),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the chain of causes joined, newlines (a weights report) flattened.
            let msg = format!("{e:#}").replace('\n', " ");
            eprintln!("fpn: error: {msg}");
            ExitCode::from(1)
        }
    }
}
