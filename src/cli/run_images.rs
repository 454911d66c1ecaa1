//! `fpn run --images DIR|LIST --out DIR`: the network over a dataset, one output file per
//! picture, resumable, shardable across machines.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, sync_channel};
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use fpn_wgpu::extract::{extract_images, ExtractOptions};
use fpn_wgpu::image_input::ImageOptions;
use fpn_wgpu::image_set::{ImageEntry, ImageSet, Shard};
use fpn_wgpu::tensor_file::{write_tensors_as, HostTensor};
use fpn_wgpu::visualize::{energy_picture, save_png};
use fpn_wgpu::GpuContext;

use crate::{build_network, RunArgs};

/// The folder mode's own flags.
pub struct FolderOptions {
    /// Downscaling and EXIF orientation; the channels come from the network.
    pub picture: ImageOptions,
    pub pictures: bool,
    pub batch: usize,
    pub shard: Option<Shard>,
    pub overwrite: bool,
    pub fail_fast: bool,
}

/// `OUT/<relative path><suffix>`: the picture's own name is kept whole (so `a.jpg` and
/// `a.png` never share an output).
fn output_path(out: &Path, entry: &ImageEntry, suffix: &str) -> PathBuf {
    let mut name = OsString::from(out.join(&entry.relative));
    name.push(suffix);
    name.into()
}

/// The pictures of `source`, less any inside `out` (a folder of outputs kept under the
/// dataset must not be read back as pictures on the next run).
fn list_pictures(source: &Path, out: &Path) -> Result<ImageSet> {
    let set = ImageSet::open(source)?;
    let (Ok(source), Ok(out)) = (source.canonicalize(), out.canonicalize()) else {
        return Ok(set);
    };
    let Ok(inside) = out.strip_prefix(&source) else {
        return Ok(set);
    };
    let entries = set
        .into_entries()
        .into_iter()
        .filter(|e| !e.relative.starts_with(inside))
        .collect();
    Ok(ImageSet::from_entries(entries))
}

pub fn run(args: &RunArgs, source: &Path, out: &Path, options: &FolderOptions) -> Result<()> {
    let progress = &args.progress;
    let all = list_pictures(source, out)?;
    let listed = all.len();
    let set = match options.shard {
        Some(shard) => all.shard(shard),
        None => all,
    };
    let mut shard_note = String::new();
    if let Some(shard) = options.shard {
        shard_note = format!(", shard {shard} takes {}", set.len());
    }
    let total = set.len();
    let (todo, done): (Vec<ImageEntry>, Vec<ImageEntry>) = set
        .into_entries()
        .into_iter()
        .partition(|e| options.overwrite || !output_path(out, e, ".safetensors").exists());
    progress.say(format_args!(
        "{listed} pictures in {}{shard_note}; {} already done (their outputs exist{}), {} to run",
        source.display(),
        done.len(),
        match options.overwrite {
            true => "; --overwrite redoes them",
            false => "; --overwrite to redo them",
        },
        todo.len()
    ));
    if listed == 0 {
        bail!(
            "{}: no pictures found (looked for .jpg, .jpeg and .png files, recursively, or a list \
             of paths); check the path",
            source.display()
        );
    }
    if todo.is_empty() {
        return Ok(());
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;

    let ctx = GpuContext::new()?;
    progress.say(format_args!("adapter: {}", ctx.adapter()));
    let fpn = build_network(&ctx, args)?;
    let started = Instant::now();
    let extract_options = ExtractOptions {
        batch: options.batch,
        ..ExtractOptions::default()
    };
    let mut counter = progress.counter(todo.len() as u64);
    let mut failed = 0usize;
    let mut written = 0usize;
    let mut report = |entry: &ImageEntry, outcome: Result<()>| {
        match outcome {
            Ok(()) => written += 1,
            Err(e) => {
                failed += 1;
                let path = entry.path.display().to_string();
                let why = format!("{e:#}").replace('\n', " ");
                counter.fail(match why.contains(&path) {
                    true => why,
                    false => format!("{path}: {why}"),
                });
            }
        }
        counter.tick();
    };
    let picture = ImageOptions {
        channels: fpn.config().in_channels,
        ..options.picture
    };
    let mut run = extract_images(&fpn, todo, picture, extract_options);
    // Files are written on threads of their own, so that the loop feeding the GPU only hands
    // results over: on a fast GPU, encoding and writing a batch's files takes longer than
    // its forward.
    let writers = std::thread::available_parallelism()
        .map_or(1, |n| n.get() / 2)
        .clamp(1, 4);
    let (jobs, queue) = sync_channel::<(ImageEntry, Vec<(String, HostTensor)>)>(2 * writers);
    let queue = Mutex::new(queue);
    let (finished, results) = channel();
    std::thread::scope(|scope| {
        for _ in 0..writers {
            let (queue, finished) = (&queue, finished.clone());
            scope.spawn(move || loop {
                let job = queue.lock().map(|q| q.recv());
                let Ok(Ok((entry, levels))) = job else {
                    return;
                };
                let outcome = write_outputs(out, &entry, &levels, options.pictures, args);
                if finished.send((entry, outcome)).is_err() {
                    return;
                }
            });
        }
        drop(finished);
        let mut stop = false;
        for picture in run.by_ref() {
            match picture.result {
                Ok(levels) => {
                    // The writers end only when `jobs` is dropped, so this cannot fail.
                    let _ = jobs.send((picture.item, levels));
                }
                Err(e) => {
                    report(&picture.item, Err(e.into()));
                    stop = options.fail_fast;
                }
            }
            for (entry, outcome) in results.try_iter() {
                stop |= outcome.is_err() && options.fail_fast;
                report(&entry, outcome);
            }
            if stop {
                break;
            }
        }
        drop(jobs);
        for (entry, outcome) in results {
            report(&entry, outcome);
        }
    });
    let stats = run.stats();
    let rate = counter.rate();
    counter.finish();
    let wall = started.elapsed().as_secs_f64();
    let busy = match stats.gpu_busy() {
        Some(b) => format!("GPU busy {:.0}% of the time", 100.0 * b),
        None => "GPU busy time not measured (the adapter has no timestamp queries)".into(),
    };
    progress.say(format_args!(
        "done: {written} written, {failed} failed, {} skipped as done, of {total}{}; \
         {rate:.2} images/s over {wall:.2} s in {} forwards; {busy}",
        done.len(),
        match options.shard {
            Some(s) => format!(" in shard {s}"),
            None => String::new(),
        },
        stats.forwards,
    ));
    if failed > 0 {
        let stopped = match options.fail_fast {
            true => "; stopped there (--fail-fast)",
            false => " (each named above); the others were written",
        };
        let pictures = match failed {
            1 => "1 picture",
            _ => &format!("{failed} pictures"),
        };
        bail!("{pictures} failed{stopped}");
    }
    Ok(())
}

/// Writes one picture's outputs: the energy maps first and the levels last, so that the
/// levels' file (each written whole, under a temporary name first) marks the picture done.
fn write_outputs(
    out: &Path,
    entry: &ImageEntry,
    levels: &[(String, HostTensor)],
    pictures: bool,
    args: &RunArgs,
) -> Result<()> {
    if pictures {
        for (name, level) in levels {
            let path = output_path(out, entry, &format!(".{name}.png"));
            save_png(&energy_picture(level, 0)?, &path)?;
        }
    }
    // One key: safetensors keeps metadata in a hash map, whose order (with more keys) would
    // differ between runs and break byte-for-byte comparisons of outputs.
    let metadata = [("source".to_string(), entry.relative.display().to_string())].into();
    let path = output_path(out, entry, ".safetensors");
    write_tensors_as(
        &path,
        levels.iter().map(|(n, t)| (n.as_str(), t)),
        args.precision,
        Some(metadata),
    )?;
    Ok(())
}
