//! The whole network against PyTorch. The fixtures (`tests/fixtures/make_fixtures.py`) hold an
//! input and PyTorch's P2..P5 for the crate's seeded random weights; the test writes those
//! weights as a safetensors state_dict, loads them through the file loader, runs the network fused
//! and unfused, in f32 and (where the adapter has shader-f16) f16, and compares every level.

mod common;

use std::path::{Path, PathBuf};

use common::{f16_gpu, gpu, max_rel_error};
use fpn_wgpu::graph::executor::Algorithms;
use fpn_wgpu::tensor_file::{read_tensors, write_tensors};
use fpn_wgpu::weights::{infer_block_counts, VarStore};
use fpn_wgpu::{Fpn, FpnConfig, FpnOptions, Fusion, Precision, Tensor};

const PARITY_TOL: f64 = 1e-4;
/// f16 storage against PyTorch's float32, per level.
const F16_TOL: f64 = 1e-2;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// The case's block counts and seed, from the fixture's safetensors metadata.
fn case_metadata(path: &Path) -> ([usize; 4], u64) {
    let bytes = std::fs::read(path).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let meta = meta.metadata().as_ref().expect("fixture metadata");
    let blocks: Vec<usize> = meta["blocks"]
        .split(',')
        .map(|b| b.parse().unwrap())
        .collect();
    (blocks.try_into().unwrap(), meta["seed"].parse().unwrap())
}

fn check_case(name: &str) {
    let ctx = gpu();
    let path = fixture(&format!("{name}.safetensors"));
    let (blocks, seed) = case_metadata(&path);
    let expected = read_tensors(&path, |_| false).unwrap();

    // The weights go through a real safetensors file, named as PyTorch names them.
    let scratch = common::scratch("parity");
    let dir = scratch.path();
    let wpath = dir.join(format!("{name}-weights.safetensors"));
    let dict = Fpn::random_state_dict(FpnConfig::with_blocks(blocks), seed).unwrap();
    write_tensors(&wpath, dict.iter().map(|(n, t)| (n.as_str(), t))).unwrap();

    let input = &expected["input"];
    let x = Tensor::from_slice(ctx, input.nchw("input").unwrap(), &input.data).unwrap();
    let fused = Fpn::from_safetensors(ctx, &wpath).unwrap();
    assert_eq!(
        fused.config().blocks,
        blocks,
        "block counts inferred from the names"
    );
    assert!(
        !fused.passes_applied().is_empty(),
        "the passes changed the graph"
    );
    let store = VarStore::from_file(&wpath).unwrap();
    let config = FpnConfig::with_blocks(infer_block_counts(&store.names()).unwrap());
    let unfused = Fpn::new(ctx, &store, config, Fusion::Unfused).unwrap();
    assert!(
        unfused.executor().node_count() > fused.executor().node_count(),
        "fusion removes nodes"
    );

    let winograd =
        Fpn::with_algorithms(ctx, &store, config, Fusion::Fused, Algorithms::Winograd).unwrap();
    let mut results = Vec::new();
    for (label, fpn) in [
        ("fused", &fused),
        ("unfused", &unfused),
        ("fused winograd", &winograd),
    ] {
        let pyramid = fpn.forward(&x).unwrap();
        assert_eq!(pyramid.levels().len(), 4);
        // Both forms of reading back: blocking for the fused run, async for the unfused one.
        let host = match label {
            "fused" => pyramid.download(ctx).unwrap(),
            _ => pollster::block_on(pyramid.download_async(ctx)).unwrap(),
        };
        let mut levels = Vec::new();
        for (level, t) in host {
            let want = &expected[&level];
            assert_eq!(t.shape, want.shape, "{name} {label} {level} shape");
            let got = t.data;
            let err = max_rel_error(&got, &want.data);
            eprintln!(
                "{name} {label} {level} {:?}: max relative error {err:.2e}",
                t.shape
            );
            assert!(
                err <= PARITY_TOL,
                "{name} {label} {level}: {err:e} > {PARITY_TOL:e}"
            );
            levels.push(got);
        }
        results.push(levels);
    }
    // The variants differ only in rounding order.
    for other in &results[1..] {
        for (f, u) in results[0].iter().zip(other) {
            let err = max_rel_error(f, u);
            assert!(
                err <= 1e-5,
                "{name}: the fused run and a variant disagree by {err:e}"
            );
        }
    }

    let Some(ctx) = f16_gpu() else { return };
    for fusion in [Fusion::Fused, Fusion::Unfused] {
        let options = FpnOptions::default()
            .with_fusion(fusion)
            .with_precision(Precision::F16);
        let half = Fpn::with_options(ctx, &store, config, options).unwrap();
        for (i, (level, t)) in half
            .forward(&x)
            .unwrap()
            .download(ctx)
            .unwrap()
            .into_iter()
            .enumerate()
        {
            let want = &expected[&level];
            assert_eq!(t.shape, want.shape, "{name} f16 {fusion:?} {level} shape");
            let err = max_rel_error(&t.data, &want.data);
            let vs_f32 = max_rel_error(&t.data, &results[0][i]);
            eprintln!(
                "{name} f16 {fusion:?} {level}: max relative error {err:.2e} (against our f32: {vs_f32:.2e})"
            );
            assert!(
                err <= F16_TOL && vs_f32 <= F16_TOL,
                "{name} f16 {fusion:?} {level}: {err:e} against PyTorch, {vs_f32:e} against f32"
            );
        }
    }
}

#[test]
fn tiny_blocks_64x64_matches_pytorch() {
    check_case("tiny_64x64");
}

#[test]
fn odd_size_97x131_matches_pytorch() {
    check_case("odd_97x131");
}

#[test]
fn seed_blocks_batch2_odd_size_matches_pytorch() {
    check_case("seed_batch2_45x61");
}

#[test]
fn nan_and_infinity_in_the_input_propagate_as_in_pytorch() {
    let ctx = gpu();
    let path = fixture("nonfinite_64x64.safetensors");
    let (blocks, seed) = case_metadata(&path);
    let expected = read_tensors(&path, |_| false).unwrap();
    let input = &expected["input"];
    assert!(input.data.iter().any(|v| v.is_nan()) && input.data.iter().any(|v| v.is_infinite()));
    let x = Tensor::from_slice(ctx, input.nchw("input").unwrap(), &input.data).unwrap();
    let store = VarStore::random(seed);
    for fusion in [Fusion::Fused, Fusion::Unfused] {
        let fpn = Fpn::new(ctx, &store, FpnConfig::with_blocks(blocks), fusion).unwrap();
        for (level, t) in fpn.forward(&x).unwrap().download(ctx).unwrap() {
            let want = &expected[&level];
            let nan = |d: &[f32]| d.iter().filter(|v| v.is_nan()).count();
            assert_eq!(
                nan(&t.data),
                nan(&want.data),
                "{level} {fusion:?}: NaN count"
            );
            // max_rel_error is infinite when NaN-ness differs anywhere, element by element.
            let err = max_rel_error(&t.data, &want.data);
            assert!(err <= PARITY_TOL, "{level} {fusion:?}: {err:e}");
        }
    }
}

/// PyTorch's level shapes for tiny inputs and for the seed's 600x900, from `shapes.txt`.
fn pytorch_shapes() -> Vec<([usize; 2], Vec<[usize; 4]>)> {
    std::fs::read_to_string(fixture("shapes.txt"))
        .unwrap()
        .lines()
        .map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let hw = [f[0].parse().unwrap(), f[1].parse().unwrap()];
            let levels = f[2..]
                .iter()
                .map(|s| {
                    let v: Vec<usize> = s.split(',').map(|d| d.parse().unwrap()).collect();
                    v.try_into().unwrap()
                })
                .collect();
            (hw, levels)
        })
        .collect()
}

#[test]
fn pyramid_shapes_match_pytorch_from_600x900_down_to_1x1() {
    let ctx = gpu();
    let fpn = Fpn::random(ctx, FpnConfig::seed(), 0).unwrap();
    let cases = pytorch_shapes();
    assert!(cases.iter().any(|(hw, _)| *hw == [600, 900]));
    for ([h, w], want) in cases {
        let shape = [1, 3, h, w];
        let got: Vec<[usize; 4]> = fpn
            .plan(shape)
            .unwrap()
            .output_shapes()
            .into_iter()
            .map(|(_, s)| s)
            .collect();
        assert_eq!(got, want, "planned shapes for {h}x{w}");
        if h * w <= 33 * 17 {
            // Small enough to run: the levels that come back have those shapes too.
            let x = Tensor::from_slice(ctx, shape, &vec![0.5; 3 * h * w]).unwrap();
            let pyramid = fpn.forward(&x).unwrap();
            let ran: Vec<[usize; 4]> = pyramid.shapes().into_iter().map(|(_, s)| s).collect();
            assert_eq!(ran, want, "shapes of a forward on {h}x{w}");
            for (_, t) in pyramid.levels() {
                assert!(t.download(ctx).unwrap().iter().all(|v| v.is_finite()));
            }
        }
    }
    // The seed's own figures, exactly as its test prints them.
    let seed: Vec<[usize; 4]> = fpn
        .plan([1, 3, 600, 900])
        .unwrap()
        .output_shapes()
        .into_iter()
        .map(|(_, s)| s)
        .collect();
    assert_eq!(
        seed,
        vec![
            [1, 256, 150, 225],
            [1, 256, 75, 113],
            [1, 256, 38, 57],
            [1, 256, 19, 29]
        ]
    );
}

#[test]
fn torch_saved_half_bfloat_and_double_tensors_convert_exactly() {
    let t = read_tensors(
        &fixture("dtypes.safetensors"),
        fpn_wgpu::weights::is_ignored,
    )
    .unwrap();
    assert!(
        !t.contains_key("bn.num_batches_tracked"),
        "counters are skipped"
    );
    for k in ["half", "bfloat", "double"] {
        assert_eq!(
            t[&format!("{k}.weight")],
            t[&format!("expect.{k}")],
            "{k} conversion"
        );
        assert_eq!(t[&format!("{k}.weight")].shape, vec![3, 5]);
    }
}
