//! Bad input to the model, the weight loader and the CLI: each is an error that names the
//! problem (and, for the CLI, a non-zero exit with one line), never a panic.

mod common;

use std::path::{Path, PathBuf};

use common::gpu;
use fpn_wgpu::tensor_file::{write_tensors, HostTensor, TensorMap};
use fpn_wgpu::weights::VarStore;
use fpn_wgpu::{Fpn, FpnConfig, Fusion, Tensor};

fn tiny_dict() -> TensorMap {
    Fpn::random_state_dict(FpnConfig::with_blocks([1, 1, 1, 1]), 5).unwrap()
}

fn save(dir: &Path, dict: &TensorMap, name: &str) -> PathBuf {
    let path = dir.join(name);
    write_tensors(&path, dict.iter().map(|(n, t)| (n.as_str(), t))).unwrap();
    path
}

fn err_of<T>(r: fpn_wgpu::Result<T>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn wrong_channel_count_is_an_error() {
    let ctx = gpu();
    let fpn = Fpn::random(ctx, FpnConfig::with_blocks([1, 1, 1, 1]), 0).unwrap();
    let x = Tensor::from_slice(ctx, [1, 4, 16, 16], &vec![0.0; 4 * 256]).unwrap();
    let msg = err_of(fpn.forward(&x));
    assert!(
        msg.contains("4 channels") && msg.contains("[N, 3, H, W]"),
        "{msg}"
    );
}

#[test]
fn missing_unexpected_and_misshaped_tensors_are_all_listed_at_once() {
    let scratch = common::scratch("errors");
    let dir = scratch.path();
    let mut dict = tiny_dict();
    dict.remove("layer2.0.bn2.running_var").unwrap();
    dict.remove("smooth1.bias").unwrap();
    dict.insert(
        "layer1.0.conv1.weight".into(),
        HostTensor::new(vec![64, 64, 3, 3], vec![0.0; 64 * 64 * 9]).unwrap(),
    );
    dict.insert(
        "head.extra.weight".into(),
        HostTensor::new(vec![2], vec![0.0; 2]).unwrap(),
    );
    let path = save(dir, &dict, "broken.safetensors");
    let msg = err_of(Fpn::from_safetensors(gpu(), &path));
    for needle in [
        "missing tensor `layer2.0.bn2.running_var`: expected shape [128]",
        "missing tensor `smooth1.bias`: expected shape [256]",
        "tensor `layer1.0.conv1.weight` has shape [64, 64, 3, 3]; expected [64, 64, 1, 1]",
        "unexpected tensor `head.extra.weight` with shape [2]",
    ] {
        assert!(msg.contains(needle), "{needle:?} not in:\n{msg}");
    }
}

#[test]
fn block_counts_come_from_the_names_and_a_foreign_file_is_refused() {
    let scratch = common::scratch("errors");
    let dir = scratch.path();
    let path = save(dir, &tiny_dict(), "tiny.safetensors");
    let fpn = Fpn::from_safetensors(gpu(), &path).unwrap();
    assert_eq!(fpn.config().blocks, [1, 1, 1, 1]);

    let mut other = TensorMap::new();
    other.insert(
        "classifier.weight".into(),
        HostTensor::new(vec![2, 2], vec![0.0; 4]).unwrap(),
    );
    let path = save(dir, &other, "foreign.safetensors");
    let msg = err_of(Fpn::from_safetensors(gpu(), &path));
    assert!(
        msg.contains("no known layout") && msg.contains("`classifier.*` (1)"),
        "{msg}"
    );
}

#[test]
fn corrupt_truncated_and_wrongly_typed_files_are_errors() {
    let scratch = common::scratch("errors");
    let dir = scratch.path();
    let good = save(dir, &tiny_dict(), "good.safetensors");
    let bytes = std::fs::read(&good).unwrap();

    let truncated = dir.join("truncated.safetensors");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let msg = err_of(Fpn::from_safetensors(gpu(), &truncated));
    assert!(
        msg.contains("truncated.safetensors") && msg.contains("not a valid safetensors"),
        "{msg}"
    );

    let garbage = dir.join("garbage.safetensors");
    std::fs::write(&garbage, b"\xff\xff\xff\xff\xff\xff\xff\x7fnot json at all").unwrap();
    assert!(err_of(Fpn::from_safetensors(gpu(), &garbage)).contains("not a valid safetensors"));

    let msg = err_of(Fpn::from_safetensors(
        gpu(),
        Path::new("/nonexistent/w.safetensors"),
    ));
    assert!(msg.contains("cannot read"), "{msg}");

    // An integer tensor where a weight is expected (counters are the one exception).
    let ints = dir.join("ints.safetensors");
    let data = [0u8; 16];
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::I32, vec![4], &data).unwrap();
    safetensors::serialize_to_file([("conv1.weight", view)], None, &ints).unwrap();
    let msg = err_of(VarStore::from_file(&ints));
    assert!(msg.contains("conv1.weight") && msg.contains("I32"), "{msg}");
}

#[test]
fn zero_block_counts_are_refused() {
    let msg = err_of(Fpn::new(
        gpu(),
        &VarStore::random(0),
        FpnConfig::with_blocks([1, 0, 1, 1]),
        Fusion::Fused,
    ));
    assert!(msg.contains("at least 1"), "{msg}");
}

/// Runs the `fpn` binary (`run` with `--quiet`, so that stderr holds only errors); returns
/// (exit code, stderr).
fn fpn_cli(args: &[&str]) -> (i32, String) {
    let mut command = common::fpn_command();
    command.args(args);
    if args.first() == Some(&"run") {
        command.arg("--quiet");
    }
    let out = command.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn cli_runs_and_reports_bad_input_in_one_line() {
    let scratch = common::scratch("errors");
    let dir = scratch.path();
    let weights = save(dir, &tiny_dict(), "cli-weights.safetensors");
    let w = weights.to_str().unwrap();
    let mut inputs = TensorMap::new();
    inputs.insert(
        "input".into(),
        HostTensor::new(vec![1, 3, 33, 17], vec![0.25; 3 * 33 * 17]).unwrap(),
    );
    let input = save(dir, &inputs, "cli-input.safetensors");
    let output = dir.join("cli-out.safetensors");
    let (code, err) = fpn_cli(&[
        "run",
        "--weights",
        w,
        "--input",
        input.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let levels = fpn_wgpu::tensor_file::read_tensors(&output, |_| false).unwrap();
    assert_eq!(levels.keys().collect::<Vec<_>>(), ["p2", "p3", "p4", "p5"]);
    assert_eq!(levels["p2"].shape, vec![1, 256, 9, 5]);

    // Rank 3 input.
    let mut bad = TensorMap::new();
    bad.insert(
        "input".into(),
        HostTensor::new(vec![3, 8, 8], vec![0.0; 192]).unwrap(),
    );
    let bad_path = save(dir, &bad, "cli-rank3.safetensors");
    let (code, err) = fpn_cli(&[
        "run",
        "--weights",
        w,
        "--input",
        bad_path.to_str().unwrap(),
        "--output",
        "/tmp/x",
    ]);
    assert_eq!(code, 1);
    assert!(
        err.contains("rank 3") && err.trim().lines().count() == 1,
        "{err}"
    );

    // No tensor called `input`.
    let (code, err) = fpn_cli(&["run", "--weights", w, "--input", w, "--output", "/tmp/x"]);
    assert_eq!(code, 1);
    assert!(err.contains("no tensor named `input`"), "{err}");

    // Wrong channel count, zero-sized input, and a weights report flattened to one line.
    let mut four = TensorMap::new();
    four.insert(
        "input".into(),
        HostTensor::new(vec![1, 4, 8, 8], vec![0.0; 256]).unwrap(),
    );
    let four_path = save(dir, &four, "cli-four.safetensors");
    let (code, err) = fpn_cli(&[
        "run",
        "--weights",
        w,
        "--input",
        four_path.to_str().unwrap(),
        "--output",
        "/tmp/x",
    ]);
    assert_eq!(code, 1);
    assert!(
        err.contains("4 channels") && err.trim().lines().count() == 1,
        "{err}"
    );
    let mut zero = TensorMap::new();
    zero.insert(
        "input".into(),
        HostTensor::new(vec![1, 3, 0, 8], vec![]).unwrap(),
    );
    let zero_path = save(dir, &zero, "cli-zero.safetensors");
    let (code, err) = fpn_cli(&[
        "run",
        "--weights",
        w,
        "--input",
        zero_path.to_str().unwrap(),
        "--output",
        "/tmp/x",
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("zero dimension"), "{err}");
    let mut broken = tiny_dict();
    broken.remove("toplayer.weight");
    let broken_path = save(dir, &broken, "cli-broken.safetensors");
    let (code, err) = fpn_cli(&[
        "run",
        "--weights",
        broken_path.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--output",
        "/tmp/x",
    ]);
    assert_eq!(code, 1);
    assert!(
        err.contains("missing tensor `toplayer.weight`") && err.trim().lines().count() == 1,
        "{err}"
    );

    // Shapes without running, and the adapters present.
    let out = common::fpn_command()
        .args(["shapes", "--height", "600", "--width", "900"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    for level in [
        "p2: [1, 256, 150, 225]",
        "p3: [1, 256, 75, 113]",
        "p4: [1, 256, 38, 57]",
        "p5: [1, 256, 19, 29]",
    ] {
        assert!(text.contains(level), "{level} not in {text}");
    }
    let (code, err) = fpn_cli(&["shapes", "--height", "0", "--width", "5"]);
    assert_eq!(code, 1);
    assert!(err.contains("zero dimension"), "{err}");
    let out = common::fpn_command().arg("info").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("max storage binding"));
    // Which kernel each op runs: the row-tiled convolutions on the software adapters.
    let out = common::fpn_command()
        .args([
            "info",
            "--kernels",
            "--blocks",
            "1,1,1,1",
            "--height",
            "40",
            "--width",
            "48",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("layer1.0.conv1") && text.contains("conv2d_rows"),
        "{text}"
    );
    assert!(text.contains("cooperative matrices:"), "{text}");

    // Usage errors exit with 2.
    let (code, _) = fpn_cli(&["run", "--weights", w]);
    assert_eq!(code, 2);
}

/// A GL context below 4.3 has no compute shaders. Mesa can pretend to be one
/// (`MESA_GL_VERSION_OVERRIDE=3.3`, as NVIDIA's GL adapter reports itself): `fpn info` must say
/// so, and asking for GL must be an error naming the cause and the fix.
#[test]
fn gl_contexts_without_compute_are_reported_and_not_chosen() {
    let info = |override_version: bool| {
        let mut command = common::fpn_command();
        if override_version {
            command.env("MESA_GL_VERSION_OVERRIDE", "3.3");
        }
        let out = command
            .arg("info")
            .env_remove("WGPU_BACKEND")
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    if !info(false).contains("(Gl, Cpu") {
        eprintln!(
            "no Mesa GL adapter here: nothing to override, the decision's unit test holds it"
        );
        return;
    }
    let text = info(true);
    assert!(
        text.contains("compute shaders: no (its context is GL 3.3")
            && text.contains("need GL 4.3 or GL ES 3.1; not chosen by default"),
        "{text}"
    );
    let mut command = common::fpn_command();
    let out = command
        .env("MESA_GL_VERSION_OVERRIDE", "3.3")
        .env("WGPU_BACKEND", "gl")
        .args(["info", "--kernels", "--blocks", "1,1,1,1"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("no GPU adapter found for WGPU_BACKEND=gl that runs compute shaders")
            && err.contains("its context is GL 3.3")
            && err.contains("WGPU_BACKEND=vulkan"),
        "{err}"
    );
}

#[test]
fn cli_names_the_wrapper_prefix_it_took_off() {
    let scratch = common::scratch("errors");
    let dir = scratch.path();
    let dict: TensorMap = tiny_dict()
        .into_iter()
        .map(|(n, t)| (format!("_orig_mod.module.{n}"), t))
        .collect();
    let weights = save(dir, &dict, "wrapped.safetensors");
    let mut inputs = TensorMap::new();
    inputs.insert(
        "input".into(),
        HostTensor::new(vec![1, 3, 19, 21], vec![0.5; 3 * 19 * 21]).unwrap(),
    );
    let input = save(dir, &inputs, "wrapped-input.safetensors");
    let output = dir.join("wrapped-out.safetensors");
    let out = common::fpn_command()
        .args(["run", "--weights", weights.to_str().unwrap()])
        .args(["--input", input.to_str().unwrap()])
        .args(["--output", output.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("wrapper prefix `_orig_mod.module.` taken off every name"),
        "{err}"
    );
}
