//! A property-test loop over the weight loader and the input reader: random bytes and random
//! mutations of valid files (bit flips, truncations, splices, forged header lengths and
//! offsets) must each give a value or an error, never a panic or a hang. The same for PyTorch
//! checkpoints (zip and legacy) and detectron2 pickles, whose pickles go through the
//! restricted pickle reader.
//!
//! CI runs it for a few seconds. For a long run:
//! `FUZZ_SECONDS=600 cargo test --release --test fuzz -- --nocapture`
//! (`FUZZ_SEED` picks another stream; a failure prints the seed and iteration to replay it).

use std::path::Path;
use std::time::{Duration, Instant};

use fpn_wgpu::rng::SplitMix64;
use fpn_wgpu::tensor_file::{parse_tensors, HostTensor, TensorMap};
use fpn_wgpu::weights::{is_ignored, VarStore};
use fpn_wgpu::{Checkpoint, Fpn, FpnConfig};

fn serialize(tensors: &TensorMap) -> Vec<u8> {
    let views: Vec<_> = tensors
        .iter()
        .map(|(n, t)| {
            let view = safetensors::tensor::TensorView::new(
                safetensors::Dtype::F32,
                t.shape.clone(),
                bytemuck::cast_slice(&t.data),
            )
            .unwrap();
            (n.clone(), view)
        })
        .collect();
    safetensors::serialize(views, None).unwrap()
}

/// The weights path as a user hits it: parse, recognise the layout, build the model's graph
/// (every name and shape checked). No GPU is needed for any of it.
fn load_weights(bytes: &[u8]) {
    let Ok(tensors) = parse_tensors(bytes, Path::new("fuzz.safetensors"), is_ignored) else {
        return;
    };
    let Ok(checkpoint) = Checkpoint::from_store(VarStore::from_tensors("fuzz", tensors)) else {
        return;
    };
    let config = checkpoint.config();
    if config.blocks.iter().any(|&b| b > 64) {
        return; // a forged name like layer1.99999 asks for a huge model: valid, just not small
    }
    let _ = Fpn::graph(checkpoint.store(), config);
}

/// The input path of the CLI: parse, find `input`, check it is NCHW.
fn load_input(bytes: &[u8]) {
    if let Ok(t) = parse_tensors(bytes, Path::new("fuzz-input.safetensors"), |_| false) {
        if let Some(x) = t.get("input") {
            let _ = x.nchw("input");
        }
    }
}

fn mutate(rng: &mut SplitMix64, seed: &[u8]) -> Vec<u8> {
    let header_end = 8 + u64::from_le_bytes(seed[..8].try_into().unwrap()) as usize;
    mutate_within(rng, seed, header_end)
}

/// Mutations aimed three times in four before `header_end`.
fn mutate_within(rng: &mut SplitMix64, seed: &[u8], header_end: usize) -> Vec<u8> {
    let mut b = seed.to_vec();
    // Most bugs live in the header: aim there three times in four.
    let pos = |rng: &mut SplitMix64, len: usize| -> usize {
        let limit = if rng.next_f32() < 0.75 {
            header_end.min(len)
        } else {
            len
        };
        (rng.next_u64() as usize) % limit.max(1)
    };
    for _ in 0..1 + rng.next_u64() % 4 {
        if b.is_empty() {
            break;
        }
        match rng.next_u64() % 7 {
            0 => {
                let i = pos(rng, b.len());
                b[i] ^= 1 << (rng.next_u64() % 8);
            }
            1 => {
                let i = pos(rng, b.len());
                b[i] = rng.next_u64() as u8;
            }
            2 => b.truncate(pos(rng, b.len())),
            3 => {
                let i = pos(rng, b.len());
                let junk: Vec<u8> = (0..rng.next_u64() % 16)
                    .map(|_| rng.next_u64() as u8)
                    .collect();
                b.splice(i..i, junk);
            }
            4 if b.len() >= 8 => {
                let forged = match rng.next_u64() % 3 {
                    0 => rng.next_u64(),
                    1 => rng.next_u64() % (b.len() as u64 + 64),
                    _ => u64::MAX - rng.next_u64() % 16,
                };
                b[..8].copy_from_slice(&forged.to_le_bytes());
            }
            4 => b.clear(),
            5 => {
                // Rewrite a digit run in the header: shapes and offsets go out of range.
                let i = pos(rng, header_end.min(b.len()));
                if b[i].is_ascii_digit() {
                    let big = format!("{}", rng.next_u64() >> (rng.next_u64() % 64));
                    b.splice(i..i + 1, big.into_bytes());
                }
            }
            _ => {
                let (a, c) = (pos(rng, b.len()), pos(rng, b.len()));
                let (lo, hi) = (a.min(c), a.max(c));
                let chunk = b[lo..hi].to_vec();
                b.splice(hi..hi, chunk);
            }
        }
    }
    b
}

#[test]
fn loaders_survive_random_and_mutated_files() {
    let seconds: u64 = std::env::var("FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4);
    let stream: u64 = std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let weights =
        serialize(&Fpn::random_state_dict(FpnConfig::with_blocks([1, 1, 1, 1]), 3).unwrap());
    // A small file with the model's names and the wrong shapes: the mis-shape path, fast.
    let mut small = TensorMap::new();
    for name in [
        "conv1.weight",
        "layer1.0.conv1.weight",
        "layer4.0.bn3.running_var",
        "smooth1.bias",
    ] {
        small.insert(
            name.into(),
            HostTensor::new(vec![2, 2], vec![0.5; 4]).unwrap(),
        );
    }
    let small = serialize(&small);
    // The same for torchvision's names, inside a detection checkpoint; the FPN convs' input
    // channels decide the levels, so those are shaped for real.
    let mut small_tv = TensorMap::new();
    for (name, shape) in [
        ("backbone.body.conv1.weight", vec![2, 2]),
        ("backbone.body.layer1.0.downsample.1.bias", vec![2, 2]),
        ("backbone.body.layer4.0.conv3.weight", vec![2, 2]),
        ("backbone.fpn.inner_blocks.0.0.weight", vec![1, 256, 1, 1]),
        ("backbone.fpn.inner_blocks.1.weight", vec![1, 512, 1, 1]),
        ("backbone.fpn.extra_blocks.p6.weight", vec![1, 256, 1, 1]),
        ("rpn.head.conv.0.0.weight", vec![2, 2]),
    ] {
        let n = shape.iter().product();
        small_tv.insert(name.into(), HostTensor::new(shape, vec![0.5; n]).unwrap());
    }
    let small_tv = serialize(&small_tv);
    let mut input = TensorMap::new();
    input.insert(
        "input".into(),
        HostTensor::new(vec![1, 3, 8, 8], vec![0.25; 192]).unwrap(),
    );
    let input = serialize(&input);

    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut iterations = 0u64;
    while Instant::now() < deadline {
        let case_seed = stream.wrapping_mul(0x9E37_79B9).wrapping_add(iterations);
        let mut rng = SplitMix64::new(case_seed);
        let kind = rng.next_u64() % 8;
        let bytes = match kind {
            0 => (0..rng.next_u64() % 256)
                .map(|_| rng.next_u64() as u8)
                .collect(),
            1 => mutate(&mut rng, &weights),
            2..=3 => mutate(&mut rng, &small),
            4 => mutate(&mut rng, &small_tv),
            _ => mutate(&mut rng, &input),
        };
        let result = std::panic::catch_unwind(|| {
            load_weights(&bytes);
            load_input(&bytes);
        });
        assert!(
            result.is_ok(),
            "panic at iteration {iterations} (FUZZ_SEED={stream}, case seed {case_seed}, kind {kind}, {} bytes)",
            bytes.len()
        );
        iterations += 1;
    }
    eprintln!("fuzz: {iterations} cases in {seconds} s without a panic (FUZZ_SEED={stream})");
    assert!(iterations > 0);
}

fn checkpoint_fixture(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/checkpoint_files")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Sets every CRC-32 of a zip archive to 0, which the reader takes as no CRC (`torch.save`
/// with CRC computation off), so that mutations reach the pickle rather than the CRC check.
fn without_crcs(mut bytes: Vec<u8>) -> Vec<u8> {
    for i in 0..bytes.len().saturating_sub(20) {
        match &bytes[i..i + 4] {
            b"PK\x03\x04" => bytes[i + 14..i + 18].fill(0),
            b"PK\x01\x02" => bytes[i + 16..i + 20].fill(0),
            _ => {}
        }
    }
    bytes
}

#[test]
fn checkpoint_readers_survive_random_and_mutated_files() {
    let seconds: u64 = std::env::var("FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4);
    let stream: u64 = std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    // Each seed with where its pickle is: the whole file but for zip archives, whose
    // `data.pkl` is their first entry.
    let mut seeds: Vec<(&str, Vec<u8>)> = Vec::new();
    for name in [
        "small_zip.pth",
        "small_mmdet.pth",
        "whole_model.pth",
        "evil_zip.pth",
    ] {
        let bytes = checkpoint_fixture(name);
        seeds.push((name, without_crcs(bytes.clone())));
        seeds.push((name, bytes));
    }
    for name in [
        "small_legacy.pth",
        "small_d2_model.pth",
        "small_d2.pkl",
        "small_d2_py2.pkl",
        "small_d2_p5.pkl",
        "evil.pkl",
    ] {
        seeds.push((name, checkpoint_fixture(name)));
    }
    for (name, bytes) in &seeds {
        // Every seed is read (or, for the refused ones, refused) as it is.
        let read = parse_tensors(bytes, Path::new(name), is_ignored);
        assert_eq!(
            read.is_ok(),
            !name.contains("evil") && !name.contains("whole"),
            "{name}"
        );
    }
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut iterations = 0u64;
    while Instant::now() < deadline {
        let case_seed = stream.wrapping_mul(0x9E37_79B9).wrapping_add(iterations);
        let mut rng = SplitMix64::new(case_seed);
        let pick = (rng.next_u64() % (seeds.len() as u64 + 1)) as usize;
        let bytes = match seeds.get(pick) {
            // A pickle header and random bytes.
            None => {
                let mut b = vec![0x80, 2 + (rng.next_u64() % 4) as u8];
                b.extend((0..rng.next_u64() % 256).map(|_| rng.next_u64() as u8));
                b
            }
            Some((_, seed)) => {
                let pickle_end = if seed.starts_with(b"PK") {
                    seed.len().min(2048)
                } else {
                    seed.len()
                };
                mutate_within(&mut rng, seed, pickle_end)
            }
        };
        let result = std::panic::catch_unwind(|| {
            load_weights(&bytes);
            let _ = parse_tensors(&bytes, Path::new("fuzz.pth"), |_| false);
        });
        assert!(
            result.is_ok(),
            "panic at iteration {iterations} (FUZZ_SEED={stream}, case seed {case_seed}, seed file {pick}, {} bytes)",
            bytes.len()
        );
        iterations += 1;
    }
    eprintln!(
        "fuzz: {iterations} checkpoint cases in {seconds} s without a panic (FUZZ_SEED={stream})"
    );
    assert!(iterations > 0);
}
