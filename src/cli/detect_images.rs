//! `fpn detect --images DIR|LIST --out DIR`: a detector over a dataset, resumable and
//! shardable as `fpn run --images`. Each picture's COCO results (with Mask R-CNN's masks as
//! RLE `segmentation`s) go to `OUT/REL.json`, with the
//! picture's position in the whole sorted list as `image_id` (so that shards never share an
//! id), and all of the shard's, pictures done by earlier runs included, to one file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use fpn_wgpu::atomic_file;
use fpn_wgpu::detection_output::{coco_results, draw_detections, CocoResult};
use fpn_wgpu::image_input::{load_image_with, ImageOptions};
use fpn_wgpu::image_set::Shard;
use fpn_wgpu::tensor_file::HostTensor;
use fpn_wgpu::visualize::save_png;
use fpn_wgpu::Detections;

use crate::detect::Built;
use crate::folder::{check_failures, output_path, plan, run_pictures, FolderArgs, Picture};
use crate::progress::{failed, Progress};

/// The file whose existence marks a picture done: its COCO results.
const MARKER: &str = ".json";

/// `OUT/detections.json`, or `OUT/detections.K-of-N.json` for shard K/N. No picture's file can
/// take these names: theirs end in `.jpg.json`, `.png.json` and so on.
fn combined_path(out: &Path, shard: Option<Shard>) -> PathBuf {
    match shard {
        Some(s) => out.join(format!("detections.{}-of-{}.json", s.index, s.count)),
        None => out.join("detections.json"),
    }
}

/// Runs the detector `build` makes (only when some picture is left to run) over the
/// pictures of `source`, writing under `out`; `pictures` also draws each picture's boxes.
pub fn run(
    source: &Path,
    out: &Path,
    pictures: bool,
    folder: &FolderArgs,
    build: impl FnOnce() -> Result<Built>,
    progress: &Progress,
) -> Result<()> {
    let plan = plan(source, out, MARKER, folder, progress)?;
    // Earlier runs' results go into the shard's file too, which is whole only with them.
    let mut results: BTreeMap<usize, Vec<CocoResult>> = BTreeMap::new();
    let mut failures = 0;
    for p in &plan.done {
        match read_results(&output_path(out, &p.entry, MARKER), p.id) {
            Ok(r) => {
                results.insert(p.id, r);
            }
            Err(e) => {
                failures += 1;
                failed(format!("{e:#}"));
            }
        }
    }
    if !(plan.todo.is_empty() || failures > 0 && folder.fail_fast) {
        std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
        let Built {
            detector, names, ..
        } = build()?;
        let picture = ImageOptions::detection();
        let draw = pictures.then_some(&picture);
        let names = names.as_deref();
        let ran = run_pictures(
            &detector,
            plan.todo,
            picture,
            folder,
            progress,
            |p, outputs| write_picture(out, p, &outputs, names, draw),
        );
        ran.summarise(progress, plan.done.len(), plan.total, folder.shard);
        failures += ran.failed;
        results.extend(ran.written.into_iter().map(|(p, r)| (p.id, r)));
    }
    let combined = combined_path(out, folder.shard);
    if failures > 0 {
        // A file lacking pictures would pass for the shard's results: better none. One left
        // by an earlier run goes too, as the pictures' files may now hold other results.
        let removed = match std::fs::remove_file(&combined) {
            Ok(()) => "; the earlier one was removed".to_string(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => format!("; the earlier one could not be removed ({e})"),
        };
        let also = format!(
            "; {} is not written, as it would lack them{removed}: mend or remove them and rerun, \
             which runs only the pictures without results",
            combined.display()
        );
        return check_failures(failures, folder.fail_fast, &also);
    }
    let all: Vec<&CocoResult> = results.values().flatten().collect();
    // Compact: a dataset's results run to millions of entries.
    atomic_file::write(&combined, &serde_json::to_vec(&all)?)?;
    progress.say(format_args!(
        "wrote {}: {} detections in {} pictures",
        combined.display(),
        all.len(),
        results.len()
    ));
    Ok(())
}

/// Writes one picture's outputs, the drawing first and the results last, so that the results'
/// file (written whole under a temporary name, then renamed) marks the picture done.
fn write_picture(
    out: &Path,
    picture: &Picture,
    outputs: &[(String, HostTensor)],
    names: Option<&[String]>,
    draw: Option<&ImageOptions>,
) -> Result<Vec<CocoResult>> {
    // One picture's rows, [1, 1, D, 6] (and Mask R-CNN's kept masks, [1, K, H, W]): one list of
    // detections.
    let found = Detections::from_outputs(outputs)?
        .into_iter()
        .next()
        .unwrap_or_default();
    if let Some(options) = draw {
        // Decoded again rather than kept from the run: only the drawing needs the pixels.
        let input = load_image_with(&picture.entry.path, options)?;
        let path = output_path(out, &picture.entry, ".png");
        save_png(&draw_detections(&input.rgb, &found), &path)?;
    }
    let results = coco_results(picture.id as u64, &found, names);
    let json = serde_json::to_vec_pretty(&results)?;
    atomic_file::write(&output_path(out, &picture.entry, MARKER), &json)?;
    Ok(results)
}

/// The COCO results an earlier run wrote for the picture at position `id`.
fn read_results(path: &Path, id: usize) -> Result<Vec<CocoResult>> {
    let redo = "delete the file, or rerun with --overwrite, to detect again";
    let bytes = std::fs::read(path)
        .with_context(|| format!("{}: cannot read these results; {redo}", path.display()))?;
    let mut results: Vec<CocoResult> = serde_json::from_slice(&bytes).with_context(|| {
        format!(
            "{}: not a list of COCO results as `fpn detect` writes; {redo}",
            path.display()
        )
    })?;
    // The id is the picture's position in the list as it is now: pictures added to the
    // folder since the file was written move it, and the shard's file needs one id per
    // picture.
    for r in &mut results {
        r.image_id = id as u64;
    }
    Ok(results)
}
