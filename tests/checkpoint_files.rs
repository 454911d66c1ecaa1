//! Weights files as PyTorch users have them, read without Python: `torch.save`'s zip and legacy
//! formats, state_dicts wrapped in a checkpoint's dict, and detectron2's numpy pickles; what is
//! refused and how it is said; `fpn convert`. The fixtures come from
//! `tests/fixtures/make_checkpoint_files.py`, which also wrote `small.safetensors`, the tensors
//! every file must read back as.

mod common;

use std::path::{Path, PathBuf};

use common::{fpn_command, gpu, scratch};
use fpn_wgpu::tensor_file::{
    parse_file, read_file, read_tensors, write_tensors, FileFormat, TensorMap,
};
use fpn_wgpu::weights::{is_ignored, VarStore};
use fpn_wgpu::{Fpn, FpnConfig, Tensor};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/checkpoint_files")
        .join(name)
}

/// The tensors the script saved, as its safetensors copy holds them (numpy has no bfloat16,
/// so the pickles of numpy arrays lack that one).
fn expected(numpy: bool) -> TensorMap {
    let mut t = read_tensors(&fixture("small.safetensors"), is_ignored).unwrap();
    assert_eq!(
        t.len(),
        10,
        "small.safetensors: 11 tensors, num_batches_tracked left out"
    );
    if numpy {
        t.remove("bf16.weight").unwrap();
    }
    t
}

fn error_reading(path: &Path) -> String {
    match read_file(path, is_ignored) {
        Ok(f) => panic!("{} read as {:?}", path.display(), f.format),
        Err(e) => e.to_string(),
    }
}

#[test]
fn every_format_reads_back_exactly_the_tensors_saved() {
    use FileFormat::*;
    for (name, format, entry, numpy) in [
        ("small_zip.pth", TorchZip, None, false),
        ("small_legacy.pth", TorchLegacy, None, false),
        ("small_mmdet.pth", TorchZip, Some("state_dict"), false),
        ("small_d2_model.pth", TorchLegacy, Some("model"), false),
        (
            "small_tutorial.pth",
            TorchZip,
            Some("model_state_dict"),
            false,
        ),
        ("net_and_epoch.pth", TorchZip, Some("net"), false),
        ("small_d2.pkl", Pickle, Some("model"), true),
        ("small_d2_py2.pkl", Pickle, Some("model"), true),
        ("small_d2_p5.pkl", Pickle, Some("model"), true),
    ] {
        let file = read_file(&fixture(name), is_ignored).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(file.format, format, "{name}");
        assert_eq!(file.entry.as_deref(), entry, "{name}");
        // Exact: float16, bfloat16 and float64 convert the same from every format, and the
        // transposed tensor, the two views at offsets 0 and 17 of one storage, the
        // Fortran-ordered and the big-endian arrays come out in row-major order.
        assert_eq!(file.tensors, expected(numpy), "{name}");
    }
}

#[test]
fn an_integer_tensor_not_skipped_is_named_as_in_safetensors() {
    let from_safetensors = read_tensors(&fixture("small.safetensors"), |_| false)
        .unwrap_err()
        .to_string();
    for name in ["small_zip.pth", "small_legacy.pth", "small_mmdet.pth"] {
        let msg = read_tensors(&fixture(name), |_| false)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("tensor `bn.num_batches_tracked` has dtype I64; only float32"),
            "{msg}"
        );
        let tail = |m: &str| m.split_once(": ").map(|(_, t)| t.to_string());
        assert_eq!(tail(&msg), tail(&from_safetensors));
    }
}

#[test]
fn files_are_told_apart_by_content_not_by_name() {
    let dir = scratch("checkpoint-files");
    for (from, to, described) in [
        (
            "small_zip.pth",
            "weights.safetensors",
            Some("a PyTorch zip checkpoint (torch.save)"),
        ),
        (
            "small_d2.pkl",
            "model_final.pth",
            Some("a pickle (such as a detectron2 model-zoo .pkl), its `model` entry"),
        ),
        (
            "small_legacy.pth",
            "weights",
            Some("a PyTorch legacy checkpoint"),
        ),
        ("small.safetensors", "small.pth", None),
    ] {
        let path = dir.path().join(to);
        std::fs::copy(fixture(from), &path).unwrap();
        let store = VarStore::from_file(&path).unwrap();
        let names: Vec<&str> = store.names();
        let numpy = from.ends_with(".pkl");
        let want = expected(numpy);
        assert_eq!(names, want.keys().map(String::as_str).collect::<Vec<_>>());
        match described {
            Some(d) => assert!(store.file_format().unwrap().starts_with(d), "{from}"),
            None => assert_eq!(store.file_format(), None),
        }
        if numpy {
            assert!(store.origin().ends_with("model_final.pth's `model` entry"));
        }
    }
}

#[test]
fn a_malicious_pickle_is_refused_by_name_without_running_it() {
    let dir = scratch("checkpoint-files");
    // Its os.system would write this file in the working folder.
    let marker = Path::new("evil_ran.txt");
    for (name, lead) in [
        (
            "evil_zip.pth",
            "a PyTorch zip checkpoint (torch.save) whose pickle names",
        ),
        (
            "evil.pkl",
            "a pickle (such as a detectron2 model-zoo .pkl) which names",
        ),
    ] {
        let msg = error_reading(&fixture(name));
        assert!(msg.contains(&format!("{lead} `posix.system`")), "{msg}");
        assert!(msg.contains("nothing in the file was run"), "{msg}");
        assert!(!msg.contains("valid safetensors"), "{msg}");
        // Through the CLI too, in one line.
        let out = dir.path().join("out.safetensors");
        let run = fpn_command()
            .arg("convert")
            .arg(fixture(name))
            .arg(&out)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert_eq!(run.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("`posix.system`"), "{stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
        assert!(!out.exists());
    }
    assert!(!marker.exists());
}

#[test]
fn files_that_hold_no_state_dict_say_what_they_hold() {
    let msg = error_reading(&fixture("whole_model.pth"));
    assert!(
        msg.contains("names `torch.nn.modules.container.Sequential`, a class only Python")
            && msg.contains("a whole model saved with torch.save(model)")
            && msg.contains("model.state_dict()"),
        "{msg}"
    );
    let msg = error_reading(&fixture("torchscript.pt"));
    assert!(
        msg.contains("a TorchScript archive (torch.jit.save), not a checkpoint"),
        "{msg}"
    );
    let msg = error_reading(&fixture("two_nets.pth"));
    assert!(
        msg.contains("no state_dict")
            && msg.contains("`student`: a dict of 2 entries, 2 of them tensors")
            && msg.contains("`teacher`"),
        "{msg}"
    );

    let dir = scratch("checkpoint-files");
    let write = |name: &str, bytes: &[u8]| {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    };
    let png = write("w.pth", b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR");
    assert!(error_reading(&png).contains("w.pth: not a checkpoint: it is a PNG picture"));
    let empty = write("empty.pkl", b"");
    assert!(error_reading(&empty).contains("not a checkpoint: the file is empty"));
    let garbage = write("g.safetensors", b"\xff\xff\xff\xff\xff\xff\xff\x7fnot json");
    assert!(error_reading(&garbage).contains("not a valid safetensors file"));

    // A zip archive of something else.
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    zip.start_file("notes.txt", zip::write::SimpleFileOptions::default())
        .unwrap();
    std::io::Write::write_all(&mut zip, b"hello").unwrap();
    let other = write("other.pth", &zip.finish().unwrap().into_inner());
    let msg = error_reading(&other);
    assert!(
        msg.contains("a zip archive without `<name>/data.pkl`, so not a PyTorch checkpoint (it holds notes.txt)"),
        "{msg}"
    );
}

#[test]
fn damaged_files_are_named_for_what_they_are() {
    let dir = scratch("checkpoint-files");
    for (name, what) in [
        ("small_zip.pth", "a PyTorch zip checkpoint"),
        ("small_legacy.pth", "a PyTorch legacy checkpoint"),
        ("small_d2.pkl", "a pickle"),
    ] {
        let bytes = std::fs::read(fixture(name)).unwrap();
        for cut in [bytes.len() / 2, bytes.len() - 9] {
            let path = dir.path().join(name);
            std::fs::write(&path, &bytes[..cut]).unwrap();
            let msg = error_reading(&path);
            assert!(msg.contains(what), "{name} cut at {cut}: {msg}");
            assert!(!msg.contains("valid safetensors"), "{msg}");
        }
    }
    // A zip whose storage changed after it was written: its CRC-32 says so.
    let mut bytes = std::fs::read(fixture("small_zip.pth")).unwrap();
    let conv = find(&bytes, b"archive/data/0").unwrap();
    // The local header of data/0: 30 bytes, the name, the extra field, then the data.
    let header = conv - 30;
    let extra = u16::from_le_bytes([bytes[header + 28], bytes[header + 29]]) as usize;
    bytes[conv + "archive/data/0".len() + extra] ^= 1;
    let path = dir.path().join("flipped.pth");
    std::fs::write(&path, &bytes).unwrap();
    let msg = error_reading(&path);
    assert!(
        msg.contains("`archive/data/0` is damaged (its CRC-32 does not match)"),
        "{msg}"
    );
    // torch.save with CRC computation off writes 0, which is read as no CRC.
    zero_crcs(&mut bytes);
    std::fs::write(&path, &bytes).unwrap();
    assert!(read_file(&path, is_ignored).is_ok());
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Sets every CRC-32 of a zip archive to 0, as `torch.save` with CRC computation off writes.
fn zero_crcs(bytes: &mut [u8]) {
    for i in 0..bytes.len().saturating_sub(20) {
        match &bytes[i..i + 4] {
            b"PK\x03\x04" => bytes[i + 14..i + 18].fill(0),
            b"PK\x01\x02" => bytes[i + 16..i + 20].fill(0),
            _ => {}
        }
    }
}

/// The seeded random torchvision FPN of `make_checkpoint_files.py`: `fpn random-weights
/// --layout torchvision --blocks 1,1,1,1 --seed 21`.
fn fpn_weights() -> (FpnConfig, TensorMap) {
    let config = FpnConfig::torchvision([1, 1, 1, 1]);
    (config, Fpn::random_state_dict(config, 21).unwrap())
}

/// Those weights as torch.save wrote them in the legacy format: the committed head (magic
/// number, protocol, system info, the state_dict's pickle, the storage keys), then each
/// storage as its element count and its float32 bytes, in the committed order. The fixture
/// script checked that this is byte for byte torch's file.
fn legacy_fpn_file(dict: &TensorMap) -> Vec<u8> {
    let mut bytes = std::fs::read(fixture("fpn_legacy_head.bin")).unwrap();
    let order = std::fs::read_to_string(fixture("fpn_legacy_storages.txt")).unwrap();
    for name in order.lines() {
        let t = &dict[name];
        bytes.extend((t.data.len() as i64).to_le_bytes());
        bytes.extend(t.data.iter().flat_map(|v| v.to_le_bytes()));
    }
    bytes
}

#[test]
fn a_torch_saved_fpn_reads_back_as_its_seeded_weights() {
    let (_, dict) = fpn_weights();
    let bytes = legacy_fpn_file(&dict);
    let file = parse_file(&bytes, Path::new("fpn.pth"), is_ignored).unwrap();
    assert_eq!(file.format, FileFormat::TorchLegacy);
    assert_eq!(file.tensors, dict);
}

#[test]
fn an_fpn_from_a_pth_gives_the_levels_it_gives_from_safetensors() {
    let ctx = gpu();
    let dir = scratch("checkpoint-files");
    let (config, dict) = fpn_weights();
    let st = dir.path().join("fpn.safetensors");
    write_tensors(&st, dict.iter().map(|(n, t)| (n.as_str(), t))).unwrap();
    let pth = dir.path().join("fpn.pth");
    std::fs::write(&pth, legacy_fpn_file(&dict)).unwrap();

    let shape = [1, 3, 40, 48];
    let mut rng = fpn_wgpu::rng::SplitMix64::new(25);
    let input = rng.vec(shape.iter().product(), -1.0, 1.0);
    let levels = |path: &Path| {
        let fpn = Fpn::from_safetensors(ctx, path).unwrap();
        assert_eq!(*fpn.config(), config);
        let x = Tensor::from_slice(ctx, shape, &input).unwrap();
        fpn.forward(&x).unwrap().download(ctx).unwrap()
    };
    let want = levels(&st);
    let got = levels(&pth);
    assert_eq!(got.len(), 5);
    for ((name, g), (_, w)) in got.iter().zip(&want) {
        assert_eq!(g, w, "level {name}");
    }

    // The command line's --weights takes the .pth as well.
    let mut x = TensorMap::new();
    x.insert(
        "input".into(),
        fpn_wgpu::tensor_file::HostTensor::new(shape.to_vec(), input.clone()).unwrap(),
    );
    let xin = dir.path().join("x.safetensors");
    write_tensors(&xin, x.iter().map(|(n, t)| (n.as_str(), t))).unwrap();
    let out = dir.path().join("levels.safetensors");
    let run = fpn_command()
        .args(["run", "--quiet", "--weights"])
        .arg(&pth)
        .arg("--input")
        .arg(&xin)
        .arg("--output")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let written = read_tensors(&out, |_| false).unwrap();
    for (name, w) in &want {
        assert_eq!(&written[name], w, "fpn run level {name}");
    }
}

#[test]
fn fpn_convert_writes_the_state_dict_as_safetensors() {
    let dir = scratch("checkpoint-files");
    for (name, numpy) in [("small_mmdet.pth", false), ("small_d2_py2.pkl", true)] {
        let out = dir.path().join("sub").join(format!("{name}.safetensors"));
        let run = fpn_command()
            .arg("convert")
            .arg(fixture(name))
            .arg(&out)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(run.status.success(), "{stderr}");
        let entry = if numpy { "model" } else { "state_dict" };
        let count = expected(numpy).len();
        assert!(
            stderr.contains(&format!("wrote {count} tensors"))
                && stderr.contains(&format!("its `{entry}` entry")),
            "{stderr}"
        );
        let file = read_file(&out, |_| false).unwrap();
        assert_eq!(file.format, FileFormat::Safetensors);
        assert_eq!(file.tensors, expected(numpy));
    }
    // Nothing but the output is left in its folder.
    let left: Vec<_> = std::fs::read_dir(dir.path().join("sub"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left.len(), 2, "{left:?}");
}
