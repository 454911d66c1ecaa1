//! Many pictures in one process: the library's pipelined loop (`extract`) and the command
//! line's folder mode (`fpn run --images`): nested folders, list files, broken pictures, a run
//! killed partway and resumed, shards, and quiet runs.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::dataset::{files, make_dataset, names};
use common::{assert_close, gpu};
use fpn_wgpu::extract::{extract, ExtractOptions};
use fpn_wgpu::image_input::load_image;
use fpn_wgpu::tensor_file::{read_tensors, write_tensors_as, HostTensor};
use fpn_wgpu::{Error, Fpn, FpnConfig, Precision, Tensor};

/// The small network every CLI run here uses (seeded random weights).
const NETWORK: [&str; 2] = ["--blocks", "1,1,1,1"];

/// Runs [`folder_command`]; returns the exit code and stderr.
fn run_folder(source: &Path, out: &Path, extra: &[&str]) -> (i32, String) {
    let output = folder_command(source, out, extra).output().unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// `fpn run --images SOURCE --out OUT` on the small network, in the tests' controlled
/// environment.
fn folder_command(source: &Path, out: &Path, extra: &[&str]) -> Command {
    let mut command = common::fpn_command();
    command
        .args(["run", "--images"])
        .arg(source)
        .arg("--out")
        .arg(out)
        .args(NETWORK)
        .args(extra);
    command
}

#[test]
fn a_nested_folder_gives_one_file_per_picture_matching_a_single_forward() {
    let scratch = common::scratch("folder-nested");
    let dir = scratch.path();
    let (source, out) = (dir.join("pictures"), dir.join("out"));
    make_dataset(
        &source,
        &["b.jpg", "a/x.png", "a/deeper/y.JPG", "a/deeper/z.jpeg"],
        (48, 40),
    );
    std::fs::write(source.join("notes.txt"), "not a picture").unwrap();
    std::fs::write(source.join(".hidden.jpg"), "left out").unwrap();
    let (code, stderr) = run_folder(&source, &out, &["--pictures"]);
    assert_eq!(code, 0, "{stderr}");
    let written = files(&out);
    let mut expected: Vec<String> = ["b.jpg", "a/x.png", "a/deeper/y.JPG", "a/deeper/z.jpeg"]
        .iter()
        .flat_map(|p| {
            let mut v = vec![format!("{p}.safetensors")];
            v.extend(["p2", "p3", "p4", "p5"].map(|l| format!("{p}.{l}.png")));
            v
        })
        .collect();
    expected.sort();
    assert_eq!(names(&written), expected);
    assert!(stderr.contains("4 pictures in"), "{stderr}");
    assert!(stderr.contains("done: 4 written, 0 failed"), "{stderr}");

    // The same picture through the library, one forward: the same levels.
    let ctx = gpu();
    let fpn = Fpn::random(ctx, FpnConfig::with_blocks([1, 1, 1, 1]), 0).unwrap();
    let input = load_image(&source.join("a/x.png"), None).unwrap().tensor;
    let x = Tensor::from_slice(ctx, [1, 3, 40, 48], &input.data).unwrap();
    let want = fpn.forward(&x).unwrap().download(ctx).unwrap();
    let got = read_tensors(&out.join("a/x.png.safetensors"), |_| false).unwrap();
    assert_eq!(got.len(), want.len());
    for (name, level) in &want {
        assert_eq!(got[name].shape, level.shape, "{name}");
        assert_close(name, &got[name].data, &level.data, 1e-5);
    }
}

#[test]
fn a_list_file_names_outputs_from_the_folder_its_pictures_share() {
    let scratch = common::scratch("folder-list");
    let dir = scratch.path();
    let source = dir.join("data");
    make_dataset(
        &source,
        &["cats/1.png", "dogs/2.jpg", "dogs/3.png"],
        (40, 32),
    );
    // Relative to the list's folder; a comment, a blank line and a repeat are passed over.
    let list = dir.join("list.txt");
    std::fs::write(
        &list,
        "# picked by hand\ndata/dogs/3.png\n\ndata/cats/1.png\n./data/cats/../cats/1.png\n",
    )
    .unwrap();
    let out = dir.join("out");
    let (code, stderr) = run_folder(&list, &out, &[]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        names(&files(&out)),
        ["cats/1.png.safetensors", "dogs/3.png.safetensors"]
    );
    // A listed file that is missing is a failure of that picture alone.
    std::fs::write(&list, "data/dogs/2.jpg\ndata/dogs/missing.png\n").unwrap();
    let (code, stderr) = run_folder(&list, &dir.join("out2"), &["--quiet"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("missing.png"), "{stderr}");
    assert_eq!(names(&files(&dir.join("out2"))), ["2.jpg.safetensors"]);
}

#[test]
fn a_broken_picture_is_reported_and_the_others_are_written() {
    let scratch = common::scratch("folder-broken");
    let dir = scratch.path();
    let (source, out) = (dir.join("pictures"), dir.join("out"));
    make_dataset(&source, &["1.jpg", "2.jpg", "4.png", "5.png"], (40, 40));
    std::fs::write(source.join("3.jpg"), b"\xff\xd8\xff\xe0 not really a jpeg").unwrap();
    let (code, stderr) = run_folder(&source, &out, &["--batch", "2"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("failed: ") && stderr.contains("3.jpg"),
        "{stderr}"
    );
    assert!(stderr.contains("done: 4 written, 1 failed"), "{stderr}");
    assert!(stderr.contains("fpn: error: 1 picture failed"), "{stderr}");
    assert_eq!(
        names(&files(&out)),
        [
            "1.jpg.safetensors",
            "2.jpg.safetensors",
            "4.png.safetensors",
            "5.png.safetensors"
        ]
    );

    // --fail-fast stops at the broken one: what came before it is written, nothing after.
    let fast = dir.join("fast");
    let (code, stderr) = run_folder(&source, &fast, &["--fail-fast"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("--fail-fast"), "{stderr}");
    assert_eq!(
        names(&files(&fast)),
        ["1.jpg.safetensors", "2.jpg.safetensors"]
    );
}

#[test]
fn a_killed_run_leaves_whole_files_and_a_rerun_completes_it() {
    let scratch = common::scratch("folder-resume");
    let dir = scratch.path();
    let (source, out) = (dir.join("pictures"), dir.join("out"));
    let names_in: Vec<String> = (0..24).map(|i| format!("{i:02}.png")).collect();
    make_dataset(
        &source,
        &names_in.iter().map(String::as_str).collect::<Vec<_>>(),
        (64, 64),
    );
    // Killed, the run cannot remove the runtime folder it would make for itself in a bare
    // environment; this one is inside the test's own folder.
    let runtime = dir.join("runtime");
    std::fs::create_dir_all(&runtime).unwrap();
    let mut child = folder_command(&source, &out, &["--quiet"])
        .env("XDG_RUNTIME_DIR", &runtime)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let count = |out: &Path| -> usize {
        std::fs::read_dir(out).map_or(0, |d| {
            d.filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".safetensors"))
            })
            .count()
        })
    };
    let deadline = Instant::now() + Duration::from_secs(300);
    while count(&out) < 3 {
        assert!(Instant::now() < deadline, "no outputs after 300 s");
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before it could be interrupted"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let partial = files(&out);
    let finished: Vec<&PathBuf> = partial
        .keys()
        .filter(|p| !p.to_string_lossy().starts_with('.'))
        .collect();
    assert!(
        finished.len() >= 3 && finished.len() < names_in.len(),
        "{} outputs after the kill",
        finished.len()
    );
    // Whatever has its final name is whole.
    for name in &finished {
        let tensors = read_tensors(&out.join(name), |_| false).unwrap();
        assert_eq!(tensors.len(), 4, "{}", name.display());
    }

    let (code, stderr) = run_folder(&source, &out, &[]);
    assert_eq!(code, 0, "{stderr}");
    let skipped = format!("{} already done", finished.len());
    assert!(
        stderr.contains(&skipped),
        "expected `{skipped}` in {stderr}"
    );
    let resumed = files(&out);
    // What the killed run finished was not written again.
    for name in &finished {
        assert_eq!(resumed[*name], partial[*name]);
    }
    let fresh = dir.join("fresh");
    let (code, stderr) = run_folder(&source, &fresh, &[]);
    assert_eq!(code, 0, "{stderr}");
    let whole: BTreeMap<PathBuf, Vec<u8>> = resumed
        .into_iter()
        .filter(|(p, _)| !p.to_string_lossy().starts_with('.'))
        .collect();
    assert!(
        whole == files(&fresh),
        "the resumed run differs from a fresh one"
    );

    // --overwrite redoes them all.
    let (code, stderr) = run_folder(&source, &out, &["--overwrite"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains(&format!("done: {} written", names_in.len())),
        "{stderr}"
    );
}

#[test]
fn three_shards_together_equal_one_run_byte_for_byte() {
    let scratch = common::scratch("folder-shards");
    let dir = scratch.path();
    let source = dir.join("pictures");
    let names_in = [
        "a/1.png",
        "a/2.jpg",
        "b/3.png",
        "b/c/4.jpg",
        "5.png",
        "6.jpg",
        "7.png",
    ];
    make_dataset(&source, &names_in, (40, 48));
    let whole = dir.join("whole");
    let (code, stderr) = run_folder(&source, &whole, &["--batch", "3"]);
    assert_eq!(code, 0, "{stderr}");
    let mut union = BTreeMap::new();
    let mut sizes = Vec::new();
    for k in 0..3 {
        let out = dir.join(format!("shard{k}"));
        let (code, stderr) = run_folder(&source, &out, &["--shard", &format!("{k}/3")]);
        assert_eq!(code, 0, "{stderr}");
        let part = files(&out);
        sizes.push(part.len());
        for (name, bytes) in part {
            assert!(
                union.insert(name, bytes).is_none(),
                "two shards wrote one file"
            );
        }
    }
    assert_eq!(sizes, [3, 2, 2]);
    assert!(
        union == files(&whole),
        "the shards' union differs from one run"
    );
    let (code, stderr) = run_folder(&source, &dir.join("bad"), &["--shard", "3/3"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("0 <= K < N"), "{stderr}");
}

#[test]
fn quiet_runs_print_nothing_even_with_nothing_left_to_do() {
    let scratch = common::scratch("folder-quiet");
    let dir = scratch.path();
    let (source, out) = (dir.join("pictures"), dir.join("out"));
    make_dataset(&source, &["1.png", "2.png"], (32, 32));
    let (code, stderr) = run_folder(&source, &out, &["--quiet"]);
    assert_eq!((code, stderr.as_str()), (0, ""));
    // A rerun with everything done is quiet too, and writes nothing.
    let before = files(&out);
    let (code, stderr) = run_folder(&source, &out, &["-q"]);
    assert_eq!((code, stderr.as_str()), (0, ""));
    assert!(before == files(&out));
    // An empty folder is an error that says what was looked for.
    std::fs::create_dir_all(dir.join("empty")).unwrap();
    let (code, stderr) = run_folder(&dir.join("empty"), &out, &["--quiet"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("no pictures found"), "{stderr}");
}

#[test]
fn float16_files_hold_the_levels_rounded_to_half_precision() {
    let scratch = common::scratch("folder-f16");
    let dir = scratch.path();
    let level =
        HostTensor::new(vec![1, 2, 1, 3], vec![0.1, -2.5, 65504.0, 1e-3, 3.0, -0.0]).unwrap();
    let path = dir.join("levels.safetensors");
    write_tensors_as(&path, [("p2", &level)], Precision::F16, None).unwrap();
    let back = read_tensors(&path, |_| false).unwrap();
    let want: Vec<f32> = level
        .data
        .iter()
        .map(|v| half::f16::from_f32(*v).to_f32())
        .collect();
    assert_eq!(back["p2"].data, want);
    assert_eq!(back["p2"].shape, level.shape);
    // 6 values of 2 bytes after the header.
    let bytes = std::fs::read(&path).unwrap();
    let header = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    assert_eq!(bytes.len() - 8 - header, 12);
}

#[test]
fn the_library_loop_keeps_order_batches_by_size_and_reports_failures() {
    let ctx = gpu();
    let fpn = Fpn::random(ctx, FpnConfig::with_blocks([1, 1, 1, 1]), 0).unwrap();
    // Two sizes alternate, so batches of 3 are gathered across the input; item 4 fails to
    // load, item 6 panics, and the last picture is 1x1.
    const SIZES: [(usize, usize); 9] = [
        (32, 40),
        (40, 32),
        (32, 40),
        (40, 32),
        (0, 0),
        (32, 40),
        (0, 0),
        (40, 32),
        (1, 1),
    ];
    let input = |i: usize| -> HostTensor {
        let (h, w) = SIZES[i];
        let data = (0..3 * h * w)
            .map(|j| ((j * 37 + i * 11) % 101) as f32 / 50.0 - 1.0)
            .collect();
        HostTensor::new(vec![1, 3, h, w], data).unwrap()
    };
    let load = move |&i: &usize| -> fpn_wgpu::Result<HostTensor> {
        match i {
            4 => Err(Error::File {
                path: "four".into(),
                message: "unreadable".into(),
            }),
            6 => panic!("decoder bug"),
            _ => Ok(input(i)),
        }
    };
    let options = ExtractOptions {
        batch: 3,
        decoders: 3,
    };
    let mut run = extract(&fpn, (0..SIZES.len()).collect(), load, options);
    let mut order = Vec::new();
    for done in run.by_ref() {
        order.push(done.item);
        match done.item {
            4 => assert!(done.result.unwrap_err().to_string().contains("unreadable")),
            6 => {
                let e = done.result.unwrap_err().to_string();
                assert!(e.contains("decoder bug"), "{e}");
            }
            i => {
                let levels = done.result.unwrap();
                let x = input(i);
                let x = Tensor::from_slice(ctx, x.nchw("x").unwrap(), &x.data).unwrap();
                let want = fpn.forward(&x).unwrap().download(ctx).unwrap();
                assert_eq!(levels.len(), want.len());
                for ((name, got), (_, want)) in levels.iter().zip(&want) {
                    assert_eq!(got.shape, want.shape, "{i} {name}");
                    assert_close(&format!("item {i} {name}"), &got.data, &want.data, 1e-5);
                }
            }
        }
    }
    assert_eq!(order, (0..SIZES.len()).collect::<Vec<_>>());
    let stats = run.stats();
    assert_eq!((stats.done, stats.failed), (7, 2));
    // [0, 2, 5], [1, 3, 7], [8]: each batch starts at the oldest picture not yet run and
    // takes the next ones of its size, past failures and other sizes.
    assert_eq!(stats.forwards, 3);
    if ctx.supports_timestamps() {
        let busy = stats.gpu_busy().unwrap();
        assert!(busy > 0.0 && busy <= 1.0, "{busy}");
    }

    // Nothing reaches the GPU: every item still comes back, in order, with its error.
    let unreadable = |&i: &usize| -> fpn_wgpu::Result<HostTensor> {
        Err(Error::File {
            path: format!("{i}"),
            message: "unreadable".into(),
        })
    };
    let mut run = extract(&fpn, (0..5).collect(), unreadable, options);
    let order: Vec<usize> = run
        .by_ref()
        .map(|done| {
            assert!(done.result.is_err());
            done.item
        })
        .collect();
    assert_eq!(order, [0, 1, 2, 3, 4]);
    assert_eq!((run.stats().failed, run.stats().forwards), (5, 0));
}

#[test]
fn pictures_are_turned_upright_and_made_gray_for_a_one_channel_network() {
    let scratch = common::scratch("folder-gray");
    let dir = scratch.path();
    let (source, out) = (dir.join("pictures"), dir.join("out"));
    std::fs::create_dir_all(&source).unwrap();
    // Stored 32 wide and 16 high; its EXIF says to turn it upright, 16 wide and 32 high.
    common::jpeg_with_orientation_6(&source.join("phone.jpg"));
    let shape = |out: &Path| {
        read_tensors(&out.join("phone.jpg.safetensors"), |_| false).unwrap()["p2"]
            .shape
            .clone()
    };
    let (code, stderr) = run_folder(&source, &out, &["--in-channels", "1"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(shape(&out), [1, 256, 8, 4]);
    let stored = dir.join("stored");
    let (code, stderr) = run_folder(&source, &stored, &["--keep-stored-orientation"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(shape(&stored), [1, 256, 4, 8]);
}
