//! `fpn run --images DIR|LIST --out DIR`: the network over a dataset, one output file per
//! picture, resumable, shardable across machines.

use std::path::Path;

use anyhow::{Context, Result};
use fpn_wgpu::image_input::ImageOptions;
use fpn_wgpu::tensor_file::{write_tensors_as, HostTensor};
use fpn_wgpu::visualize::{energy_picture, save_png};
use fpn_wgpu::GpuContext;

use crate::folder::{check_failures, output_path, plan, run_pictures, FolderArgs, Picture};
use crate::{build_network, RunArgs};

/// `run`'s folder mode flags.
pub struct FolderOptions {
    /// Downscaling and EXIF orientation; the channels come from the network.
    pub picture: ImageOptions,
    pub pictures: bool,
    pub folder: FolderArgs,
}

/// The file whose existence marks a picture done.
const MARKER: &str = ".safetensors";

pub fn run(args: &RunArgs, source: &Path, out: &Path, options: &FolderOptions) -> Result<()> {
    let progress = &args.progress;
    let folder = &options.folder;
    let plan = plan(source, out, MARKER, folder, progress)?;
    if plan.todo.is_empty() {
        return Ok(());
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;

    let ctx = GpuContext::new()?;
    progress.say(format_args!("adapter: {}", ctx.adapter()));
    let (fpn, scale) = build_network(&ctx, args)?;
    let picture = ImageOptions {
        channels: fpn.config().in_channels,
        scale,
        ..options.picture
    };
    let ran = run_pictures(&fpn, plan.todo, picture, folder, progress, |p, levels| {
        write_outputs(out, p, &levels, options.pictures, args)
    });
    ran.summarise(progress, plan.done.len(), plan.total, folder.shard);
    check_failures(ran.failed, folder.fail_fast, "")
}

/// Writes one picture's outputs: the energy maps first and the levels last, so that the
/// levels' file (each written whole, under a temporary name first) marks the picture done.
fn write_outputs(
    out: &Path,
    picture: &Picture,
    levels: &[(String, HostTensor)],
    pictures: bool,
    args: &RunArgs,
) -> Result<()> {
    let entry = &picture.entry;
    if pictures {
        for (name, level) in levels {
            let path = output_path(out, entry, &format!(".{name}.png"));
            save_png(&energy_picture(level, 0)?, &path)?;
        }
    }
    // One key: safetensors keeps metadata in a hash map, whose order (with more keys) would
    // differ between runs and break byte-for-byte comparisons of outputs.
    let metadata = [("source".to_string(), entry.relative.display().to_string())].into();
    let path = output_path(out, entry, MARKER);
    write_tensors_as(
        &path,
        levels.iter().map(|(n, t)| (n.as_str(), t)),
        args.precision,
        Some(metadata),
    )?;
    Ok(())
}
