//! `fpn detect --images`: a detector over a folder of pictures. Each picture's COCO results
//! are the library's detections; shards partition the pictures and their ids; a rerun skips
//! what is done and still writes the results of every picture; broken pictures are reported;
//! outputs kept under the pictures are not taken for pictures.

mod common;

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use common::dataset::{files, make_dataset, names, picture};
use common::detector::{small_config, small_options, weights, OPTION_FLAGS, SEED};
use common::{fpn_command, gpu};
use fpn_wgpu::detection_output::{coco_results, draw_detections, CocoResult};
use fpn_wgpu::image_input::{load_image_with, ImageOptions};
use fpn_wgpu::{Detector, Tensor};
use image::ImageFormat;

/// Held by whatever runs the detector: one at a time. On lavapipe with more processes than
/// cores, a process's first detector forward now and then keeps only a few of its detections
/// (seen in `Detector::detect` alone, as in the folder mode); these tests are about the
/// folder mode, and compare outputs byte for byte.
static DETECTOR_RUNS: Mutex<()> = Mutex::new(());

fn one_at_a_time() -> MutexGuard<'static, ()> {
    DETECTOR_RUNS.lock().unwrap_or_else(|p| p.into_inner())
}

/// `fpn detect --images SOURCE --out OUT` with the small detector; the exit code and stderr.
fn detect_folder(weights: &Path, source: &Path, out: &Path, extra: &[&str]) -> (i32, String) {
    let _turn = one_at_a_time();
    let output = fpn_command()
        .arg("detect")
        .arg("--weights")
        .arg(weights)
        .arg("--images")
        .arg(source)
        .arg("--out")
        .arg(out)
        .args(OPTION_FLAGS)
        .args(extra)
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A COCO results file.
fn results(path: &Path) -> Vec<CocoResult> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_slice(&bytes).unwrap()
}

/// The ids of a results file, each once, in order of appearance.
fn ids(results: &[CocoResult]) -> Vec<u64> {
    let mut ids: Vec<u64> = results.iter().map(|r| r.image_id).collect();
    ids.dedup();
    ids
}

#[test]
fn each_picture_s_results_are_the_library_s_detections() {
    let scratch = common::scratch("detect-folder");
    let dir = scratch.path();
    let weights = weights(dir);
    let (source, out) = (dir.join("pictures"), dir.join("out"));
    // Sorted: a/deeper/y.png, a/x.png, b.jpg, c.png; two sizes.
    let pictures = [
        ("b.jpg", (83, 57)),
        ("a/x.png", (60, 90)),
        ("a/deeper/y.png", (83, 57)),
        ("c.png", (83, 57)),
    ];
    for (i, (name, (w, h))) in pictures.iter().enumerate() {
        let path = source.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let format = match name.ends_with(".png") {
            true => ImageFormat::Png,
            false => ImageFormat::Jpeg,
        };
        picture(*w, *h, i as u32 + 3)
            .save_with_format(&path, format)
            .unwrap();
    }
    let (code, stderr) = detect_folder(&weights, &source, &out, &["--pictures"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("4 pictures in"), "{stderr}");
    assert!(stderr.contains("done: 4 written, 0 failed"), "{stderr}");
    let sorted = ["a/deeper/y.png", "a/x.png", "b.jpg", "c.png"];
    let mut expected: Vec<String> = sorted
        .iter()
        .flat_map(|p| [format!("{p}.json"), format!("{p}.png")])
        .collect();
    expected.push("detections.json".into());
    expected.sort();
    let written = files(&out);
    assert_eq!(names(&written), expected);

    // The same pictures through the library, one at a time, loaded as 0..1 RGB.
    let ctx = gpu();
    let turn = one_at_a_time();
    let detector = Detector::random(ctx, small_config(), SEED, small_options()).unwrap();
    let mut all = Vec::new();
    for (id, name) in sorted.iter().enumerate() {
        let input = load_image_with(&source.join(name), &ImageOptions::detection()).unwrap();
        let shape = input.tensor.nchw("input").unwrap();
        let x = Tensor::from_slice(ctx, shape, &input.tensor.data).unwrap();
        let found = detector.detect(&x).unwrap().remove(0);
        let want = coco_results(id as u64, &found, None);
        let file = format!("{name}.json");
        assert_eq!(
            written[Path::new(&file)],
            serde_json::to_vec_pretty(&want).unwrap(),
            "{file}"
        );
        let drawn = image::open(out.join(format!("{name}.png")))
            .unwrap()
            .to_rgb8();
        assert!(drawn == draw_detections(&input.rgb, &found), "{name}.png");
        all.extend(want);
    }
    drop(turn);
    assert!(
        !all.is_empty(),
        "the threshold lets some detections through"
    );
    assert_eq!(results(&out.join("detections.json")), all);
    assert!(
        stderr.contains(&format!("{} detections in 4 pictures", all.len())),
        "{stderr}"
    );

    // Batches of pictures of one size give the same results as one picture at a time.
    let batched = dir.join("batched");
    let (code, stderr) = detect_folder(&weights, &source, &batched, &["--batch", "3"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("in 2 forwards"), "{stderr}");
    let batched = files(&batched);
    for name in sorted {
        let file = format!("{name}.json");
        assert!(
            batched[Path::new(&file)] == written[Path::new(&file)],
            "{file}"
        );
    }
}

#[test]
fn shards_partition_the_pictures_and_their_ids() {
    let scratch = common::scratch("detect-shards");
    let dir = scratch.path();
    let weights = weights(dir);
    let source = dir.join("pictures");
    let names_in = [
        "a/1.png", "a/2.jpg", "b/3.png", "4.png", "5.jpg", "6.png", "7.png",
    ];
    make_dataset(&source, &names_in, (70, 52));
    let whole = dir.join("whole");
    let (code, stderr) = detect_folder(&weights, &source, &whole, &["--batch", "2"]);
    assert_eq!(code, 0, "{stderr}");
    let whole_files = files(&whole);
    let whole_results = results(&whole.join("detections.json"));
    assert!(!whole_results.is_empty());

    let mut pictures = Vec::new();
    let mut union = Vec::new();
    for k in 0..3 {
        let out = dir.join(format!("shard{k}"));
        let shard = format!("{k}/3");
        let (code, stderr) = detect_folder(&weights, &source, &out, &["--shard", &shard]);
        assert_eq!(code, 0, "{stderr}");
        let combined = format!("detections.{k}-of-3.json");
        let part = files(&out);
        assert!(
            part.contains_key(Path::new(&combined)),
            "{:?}",
            names(&part)
        );
        assert!(!part.contains_key(Path::new("detections.json")));
        // The shard's file is its pictures' files in order, with the ids K, K+3, ...
        let mut want = Vec::new();
        for (name, _) in part.iter().filter(|(n, _)| *n != Path::new(&combined)) {
            pictures.push(name.clone());
            let picture = results(&out.join(name));
            assert!(
                ids(&picture).iter().all(|&id| id % 3 == k as u64),
                "{name:?}"
            );
            want.push(picture);
        }
        want.sort_by_key(|r| r.first().map(|r| r.image_id));
        let shard_results = results(&out.join(&combined));
        assert_eq!(shard_results, want.concat());
        union.extend(shard_results);
    }
    // Every picture in one shard, its file as one run wrote it.
    pictures.sort();
    let mut expected: Vec<String> = names_in.iter().map(|n| format!("{n}.json")).collect();
    expected.sort();
    assert_eq!(
        pictures
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>(),
        expected
    );
    for k in 0..3 {
        for (name, bytes) in files(&dir.join(format!("shard{k}"))) {
            if !name.to_string_lossy().starts_with("detections.") {
                assert!(whole_files[&name] == bytes, "{}", name.display());
            }
        }
    }
    union.sort_by_key(|r| r.image_id);
    assert_eq!(union, whole_results);
}

#[test]
fn a_rerun_skips_what_is_done_and_still_writes_every_picture_s_results() {
    let scratch = common::scratch("detect-resume");
    let dir = scratch.path();
    let weights = weights(dir);
    let (source, out) = (dir.join("pictures"), dir.join("out"));
    let names_in = ["1.png", "2.png", "3.png", "4.png", "5.png", "6.png"];
    make_dataset(&source, &names_in, (64, 64));
    let (code, stderr) = detect_folder(&weights, &source, &out, &[]);
    assert_eq!(code, 0, "{stderr}");
    let first = files(&out);
    let combined = out.join("detections.json");

    // Two pictures lost, the combined file never written, and one done picture's file
    // changed: the rerun runs the two, and reads the others back, ids set to their places.
    std::fs::remove_file(out.join("2.png.json")).unwrap();
    std::fs::remove_file(out.join("5.png.json")).unwrap();
    std::fs::remove_file(&combined).unwrap();
    let planted = CocoResult {
        image_id: 99,
        category_id: 2,
        category_name: None,
        bbox: [1.0, 2.0, 3.0, 4.0],
        score: 0.75,
        segmentation: None,
    };
    let planted_file = out.join("3.png.json");
    std::fs::write(&planted_file, serde_json::to_vec(&[&planted]).unwrap()).unwrap();
    let (code, stderr) = detect_folder(&weights, &source, &out, &[]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("4 already done") && stderr.contains("2 to run"),
        "{stderr}"
    );
    assert!(stderr.contains("done: 2 written"), "{stderr}");
    let again = files(&out);
    for name in ["2.png.json", "5.png.json"] {
        assert!(again[Path::new(name)] == first[Path::new(name)], "{name}");
    }
    let got = results(&combined);
    let mut want = Vec::new();
    for (id, name) in names_in.iter().enumerate() {
        match *name {
            "3.png" => want.push(CocoResult {
                image_id: id as u64,
                ..planted.clone()
            }),
            _ => want.extend(results(&out.join(format!("{name}.json")))),
        }
    }
    assert_eq!(got, want);

    // A file that is not results: reported, and no combined file that would lack it.
    std::fs::write(&planted_file, "not json").unwrap();
    let (code, stderr) = detect_folder(&weights, &source, &out, &["--quiet"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("3.png.json") && stderr.contains("--overwrite"),
        "{stderr}"
    );
    assert!(
        stderr.contains("detections.json is not written"),
        "{stderr}"
    );
    assert!(!combined.exists(), "the earlier combined file is removed");

    // --overwrite redoes every picture: what one run wrote.
    let (code, stderr) = detect_folder(&weights, &source, &out, &["--overwrite"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("done: 6 written"), "{stderr}");
    let redone = files(&out);
    let differ: Vec<_> = redone
        .iter()
        .filter(|(n, b)| first.get(*n) != Some(*b))
        .map(|(n, b)| (n.clone(), b.len(), first.get(n).map(|f| f.len())))
        .collect();
    assert!(
        redone == first,
        "the redone outputs differ from the first run's: {differ:?}"
    );

    // Nothing left to do: quiet, nothing run, and the combined file written again.
    std::fs::remove_file(&combined).unwrap();
    let (code, stderr) = detect_folder(&weights, &source, &out, &["-q"]);
    assert_eq!((code, stderr.as_str()), (0, ""));
    assert!(files(&out) == first);
}

#[test]
fn a_broken_picture_is_reported_and_stops_the_run_with_fail_fast() {
    let scratch = common::scratch("detect-broken");
    let dir = scratch.path();
    let weights = weights(dir);
    let (source, out) = (dir.join("pictures"), dir.join("out"));
    make_dataset(&source, &["1.jpg", "2.jpg", "4.png", "5.png"], (48, 64));
    std::fs::write(source.join("3.jpg"), b"\xff\xd8\xff\xe0 not really a jpeg").unwrap();
    let (code, stderr) = detect_folder(&weights, &source, &out, &["--batch", "2"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("failed: ") && stderr.contains("3.jpg"),
        "{stderr}"
    );
    assert!(stderr.contains("done: 4 written, 1 failed"), "{stderr}");
    assert!(stderr.contains("fpn: error: 1 picture failed"), "{stderr}");
    assert_eq!(
        names(&files(&out)),
        ["1.jpg.json", "2.jpg.json", "4.png.json", "5.png.json"]
    );

    // --fail-fast stops at the broken one: what came before it is written, nothing after.
    let fast = dir.join("fast");
    let (code, stderr) = detect_folder(&weights, &source, &fast, &["--fail-fast"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("--fail-fast"), "{stderr}");
    assert_eq!(names(&files(&fast)), ["1.jpg.json", "2.jpg.json"]);

    // Mended, the picture runs alone and the combined file holds all five, ids 0..5.
    picture(48, 64, 9).save(source.join("3.jpg")).unwrap();
    let (code, stderr) = detect_folder(&weights, &source, &out, &[]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("4 already done"), "{stderr}");
    let mut want = Vec::new();
    for name in ["1.jpg", "2.jpg", "3.jpg", "4.png", "5.png"] {
        want.extend(results(&out.join(format!("{name}.json"))));
    }
    let got = results(&out.join("detections.json"));
    assert_eq!(got, want);
    assert!(ids(&got).iter().all(|&id| id < 5));
}

#[test]
fn outputs_under_the_pictures_are_not_taken_for_pictures() {
    let scratch = common::scratch("detect-inside");
    let dir = scratch.path();
    let weights = weights(dir);
    let source = dir.join("pictures");
    let out = source.join("detected");
    make_dataset(&source, &["1.png", "2.jpg", "sub/3.png"], (56, 40));
    let (code, stderr) = detect_folder(&weights, &source, &out, &["--pictures"]);
    assert_eq!(code, 0, "{stderr}");
    // The drawings are PNGs under the folder; the rerun still sees three pictures, all done.
    assert!(out.join("sub/3.png.png").exists());
    let before = files(&out);
    let (code, stderr) = detect_folder(&weights, &source, &out, &["--pictures"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("3 pictures in") && stderr.contains("3 already done"),
        "{stderr}"
    );
    assert!(before == files(&out));
}
