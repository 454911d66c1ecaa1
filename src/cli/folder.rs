//! What `fpn run --images` and `fpn detect --images` share: their flags, the pictures of a
//! folder or list (less the outputs kept under it), the shard and what is already done, and
//! the loop that hands each picture's outputs to writer threads while the GPU runs the next
//! ones, with the progress, the failures and the summary.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, sync_channel};
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{bail, Result};
use clap::Args;
use fpn_wgpu::extract::{extract_images, ExtractOptions, ExtractStats};
use fpn_wgpu::image_input::ImageOptions;
use fpn_wgpu::image_set::{ImageEntry, ImageSet, Shard};
use fpn_wgpu::model::BatchNetwork;
use fpn_wgpu::tensor_file::HostTensor;

use crate::progress::Progress;

/// The folder mode's flags that mean the same in every command.
#[derive(Args, Clone, Copy, Debug)]
pub struct FolderArgs {
    /// With --images: most pictures per forward. Pictures of one size share a forward,
    /// gathered from the next 2N decoded pictures, so mixed sizes still fill batches.
    #[arg(long, default_value_t = 1, requires = "images", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub batch: u32,
    /// With --images: take every N-th picture of the sorted list, starting at K (0-based),
    /// e.g. --shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT.
    #[arg(long, requires = "images")]
    pub shard: Option<Shard>,
    /// With --images: redo pictures whose outputs exist (by default they are skipped, so
    /// that a rerun resumes an interrupted one).
    #[arg(long, requires = "images")]
    pub overwrite: bool,
    /// With --images: stop at the first picture that fails (by default it is reported and
    /// skipped, and the exit status is 1 at the end).
    #[arg(long, requires = "images")]
    pub fail_fast: bool,
}

/// One picture of a run: its position in the whole sorted list, the same in every shard (so
/// that ids derived from it never collide between shards), and where it is.
pub struct Picture {
    /// The position in the whole list, from 0.
    pub id: usize,
    pub entry: ImageEntry,
}

impl AsRef<Path> for Picture {
    fn as_ref(&self) -> &Path {
        &self.entry.path
    }
}

/// `OUT/<relative path><suffix>`: the picture's own name is kept whole (so `a.jpg` and
/// `a.png` never share an output).
pub fn output_path(out: &Path, entry: &ImageEntry, suffix: &str) -> PathBuf {
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

/// The shard's pictures, in order: those to run and those already done.
pub struct Plan {
    pub todo: Vec<Picture>,
    pub done: Vec<Picture>,
    /// Pictures in the shard (all of them without one).
    pub total: usize,
}

/// Lists `source`, keeps the shard's pictures and sets aside those whose `OUT/REL<marker>`
/// exists (unless `--overwrite`), saying what it found; no pictures at all is an error.
pub fn plan(
    source: &Path,
    out: &Path,
    marker: &str,
    folder: &FolderArgs,
    progress: &Progress,
) -> Result<Plan> {
    let all = list_pictures(source, out)?;
    let listed = all.len();
    let pictures: Vec<Picture> = all
        .into_entries()
        .into_iter()
        .enumerate()
        .filter(|(id, _)| folder.shard.is_none_or(|s| s.takes(*id)))
        .map(|(id, entry)| Picture { id, entry })
        .collect();
    let total = pictures.len();
    let shard_note = match folder.shard {
        Some(shard) => format!(", shard {shard} takes {total}"),
        None => String::new(),
    };
    let (todo, done): (Vec<Picture>, Vec<Picture>) = pictures
        .into_iter()
        .partition(|p| folder.overwrite || !output_path(out, &p.entry, marker).exists());
    progress.say(format_args!(
        "{listed} pictures in {}{shard_note}; {} already done (their outputs exist{}), {} to run",
        source.display(),
        done.len(),
        match folder.overwrite {
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
    Ok(Plan { todo, done, total })
}

/// What [`run_pictures`] did.
pub struct Ran<T> {
    /// The pictures written, in order, with what their writer returned.
    pub written: Vec<(Picture, T)>,
    /// Pictures that failed: decoding, the GPU, or writing.
    pub failed: usize,
    /// The forwards and the GPU's busy time.
    pub stats: ExtractStats,
    /// Pictures per second, failures included.
    pub rate: f64,
    /// From the loop's start to the last file written.
    pub wall_seconds: f64,
}

/// Runs `network` over `todo` (each picture loaded as `picture` says) and hands each
/// picture's outputs to `write` on threads of its own, reporting progress and failures; stops
/// at the first failure with `--fail-fast`.
pub fn run_pictures<T: Send>(
    network: &dyn BatchNetwork,
    todo: Vec<Picture>,
    picture: ImageOptions,
    folder: &FolderArgs,
    progress: &Progress,
    write: impl Fn(&Picture, Vec<(String, HostTensor)>) -> Result<T> + Sync,
) -> Ran<T> {
    let started = Instant::now();
    let extract_options = ExtractOptions {
        batch: folder.batch as usize,
        ..ExtractOptions::default()
    };
    let mut counter = progress.counter(todo.len() as u64);
    let mut written = Vec::new();
    let mut failed = 0usize;
    let mut report = |picture: Picture, outcome: Result<T>| {
        match outcome {
            Ok(value) => written.push((picture, value)),
            Err(e) => {
                failed += 1;
                counter.fail(failure_line(&picture.entry.path, &e));
            }
        }
        counter.tick();
    };
    let mut run = extract_images(network, todo, picture, extract_options);
    // Files are written on threads of their own, so that the loop feeding the GPU only hands
    // results over: on a fast GPU, encoding and writing a batch's files takes longer than
    // its forward.
    let writers = std::thread::available_parallelism()
        .map_or(1, |n| n.get() / 2)
        .clamp(1, 4);
    let (jobs, queue) = sync_channel::<(Picture, Vec<(String, HostTensor)>)>(2 * writers);
    let queue = Mutex::new(queue);
    let (finished, results) = channel();
    let write = &write;
    std::thread::scope(|scope| {
        for _ in 0..writers {
            let (queue, finished) = (&queue, finished.clone());
            scope.spawn(move || loop {
                let job = queue.lock().map(|q| q.recv());
                let Ok(Ok((picture, outputs))) = job else {
                    return;
                };
                let outcome = write(&picture, outputs);
                if finished.send((picture, outcome)).is_err() {
                    return;
                }
            });
        }
        drop(finished);
        let mut stop = false;
        for done in run.by_ref() {
            match done.result {
                Ok(outputs) => {
                    // The writers end only when `jobs` is dropped, so this cannot fail.
                    let _ = jobs.send((done.item, outputs));
                }
                Err(e) => {
                    report(done.item, Err(e.into()));
                    stop = folder.fail_fast;
                }
            }
            for (picture, outcome) in results.try_iter() {
                stop |= outcome.is_err() && folder.fail_fast;
                report(picture, outcome);
            }
            if stop {
                break;
            }
        }
        drop(jobs);
        for (picture, outcome) in results {
            report(picture, outcome);
        }
    });
    let rate = counter.rate();
    counter.finish();
    // Writers finish in any order; callers read the results in the pictures' order.
    written.sort_by_key(|(p, _)| p.id);
    Ran {
        written,
        failed,
        stats: run.stats(),
        rate,
        wall_seconds: started.elapsed().as_secs_f64(),
    }
}

/// `PATH: why`, on one line, the path said once.
fn failure_line(path: &Path, e: &anyhow::Error) -> String {
    let path = path.display().to_string();
    let why = format!("{e:#}").replace('\n', " ");
    match why.contains(&path) {
        true => why,
        false => format!("{path}: {why}"),
    }
}

impl<T> Ran<T> {
    /// The closing line: what was written, failed and skipped, the rate and the GPU's share.
    pub fn summarise(
        &self,
        progress: &Progress,
        skipped: usize,
        total: usize,
        shard: Option<Shard>,
    ) {
        let busy = match self.stats.gpu_busy() {
            Some(b) => format!("GPU busy {:.0}% of the time", 100.0 * b),
            None => "GPU busy time not measured (the adapter has no timestamp queries)".into(),
        };
        progress.say(format_args!(
            "done: {} written, {} failed, {skipped} skipped as done, of {total}{}; \
             {:.2} images/s over {:.2} s in {} forwards; {busy}",
            self.written.len(),
            self.failed,
            match shard {
                Some(s) => format!(" in shard {s}"),
                None => String::new(),
            },
            self.rate,
            self.wall_seconds,
            self.stats.forwards,
        ));
    }
}

/// The run's error when pictures failed: how many, and whether it went on past them; `also`
/// adds what else that left undone.
pub fn check_failures(failed: usize, fail_fast: bool, also: &str) -> Result<()> {
    if failed == 0 {
        return Ok(());
    }
    let stopped = match fail_fast {
        true => "; stopped there (--fail-fast)",
        false => " (each named above); the others were written",
    };
    let pictures = match failed {
        1 => "1 picture",
        _ => &format!("{failed} pictures"),
    };
    bail!("{pictures} failed{stopped}{also}");
}
