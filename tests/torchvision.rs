//! torchvision's layout against torchvision itself. The fixtures
//! (`tests/fixtures/make_torchvision_fixtures.py`) hold an input and the levels torchvision's
//! `BackboneWithFPN` computes for the crate's seeded random weights; the test writes those weights
//! as a safetensors state_dict, lets the loader recognise the layout, and compares every level.
//! It also loads the same weights as a whole detection checkpoint (under `backbone.`, beside head
//! tensors, with pre-v2 FPN names) and expects the very same levels.

mod common;

use std::path::{Path, PathBuf};

use common::{f16_gpu, gpu, max_rel_error};
use fpn_wgpu::model::{ExtraLevels, Layout};
use fpn_wgpu::tensor_file::{read_tensors, write_tensors, HostTensor, TensorMap};
use fpn_wgpu::weights::VarStore;
use fpn_wgpu::{Checkpoint, Fpn, FpnConfig, FpnOptions, Fusion, Precision, Tensor};

const PARITY_TOL: f64 = 1e-4;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(format!("{name}.safetensors"))
}

/// The case's network and weight seed, from the fixture's safetensors metadata.
fn case_config(path: &Path) -> (FpnConfig, u64) {
    let bytes = std::fs::read(path).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let meta = meta.metadata().as_ref().expect("fixture metadata");
    let list =
        |key: &str| -> Vec<usize> { meta[key].split(',').map(|b| b.parse().unwrap()).collect() };
    assert_eq!(meta["layout"], "torchvision");
    let mut config = FpnConfig::torchvision(list("blocks").try_into().unwrap());
    config.returned = [false; 5];
    for l in list("returned") {
        config.returned[l] = true;
    }
    config.extra = meta["extra"].parse::<ExtraLevels>().unwrap();
    config.bn_eps = meta["bn_eps"].parse().unwrap();
    config.block = meta["block"].parse().unwrap();
    config.groups = meta["groups"].parse().unwrap();
    config.width_per_group = meta["width_per_group"].parse().unwrap();
    config.in_channels = meta["in_channels"].parse().unwrap();
    (config, meta["seed"].parse().unwrap())
}

fn save(path: &Path, dict: &TensorMap) {
    write_tensors(path, dict.iter().map(|(n, t)| (n.as_str(), t))).unwrap();
}

/// Loads `path` as a checkpoint, checks the recognised network against `want` (all but the
/// epsilon, which no name records), runs it and returns the levels.
fn run_checkpoint(
    path: &Path,
    want: FpnConfig,
    fusion: Fusion,
    x: &Tensor,
) -> Vec<(String, HostTensor)> {
    let ctx = gpu();
    let checkpoint = Checkpoint::open(path).unwrap();
    let found = checkpoint.config();
    assert_eq!(
        FpnConfig {
            bn_eps: want.bn_eps,
            ..found
        },
        want,
        "the network recognised from {}",
        path.display()
    );
    let config = FpnConfig {
        bn_eps: want.bn_eps,
        ..found
    };
    let fpn = Fpn::new(ctx, checkpoint.store(), config, fusion).unwrap();
    fpn.forward(x).unwrap().download(ctx).unwrap()
}

fn check_case(name: &str) {
    let ctx = gpu();
    let path = fixture(name);
    let (config, seed) = case_config(&path);
    let expected = read_tensors(&path, |_| false).unwrap();
    let input = &expected["input"];
    let x = Tensor::from_slice(ctx, input.nchw("input").unwrap(), &input.data).unwrap();

    let dict = Fpn::random_state_dict(config, seed).unwrap();
    let scratch = common::scratch("torchvision");
    let dir = scratch.path();
    let plain = dir.join(format!("{name}-backbone.safetensors"));
    save(&plain, &dict);

    let mut want_names: Vec<&String> = expected.keys().filter(|k| *k != "input").collect();
    want_names.sort_by_key(|n| n[1..].parse::<usize>().unwrap());
    let mut reference = None;
    for fusion in [Fusion::Fused, Fusion::Unfused] {
        let levels = run_checkpoint(&plain, config, fusion, &x);
        let names: Vec<&String> = levels.iter().map(|(n, _)| n).collect();
        assert_eq!(names, want_names, "{name}: level names, finest first");
        for (level, t) in &levels {
            let want = &expected[level];
            assert_eq!(t.shape, want.shape, "{name} {fusion:?} {level} shape");
            let err = max_rel_error(&t.data, &want.data);
            eprintln!(
                "{name} {fusion:?} {level} {:?}: max relative error {err:.2e}",
                t.shape
            );
            assert!(err <= PARITY_TOL, "{name} {fusion:?} {level}: {err:e}");
        }
        reference.get_or_insert(levels);
    }
    if let Some(ctx) = f16_gpu() {
        let store = VarStore::from_file(&plain).unwrap();
        let options = FpnOptions::default().with_precision(Precision::F16);
        let half = Fpn::with_options(ctx, &store, config, options).unwrap();
        for (level, t) in half.forward(&x).unwrap().download(ctx).unwrap() {
            let err = max_rel_error(&t.data, &expected[&level].data);
            eprintln!("{name} f16 {level}: max relative error {err:.2e}");
            assert!(err <= 1e-2, "{name} f16 {level}: {err:e}");
        }
    }

    // The same weights inside a whole detection model: prefixed, beside heads, old FPN names.
    let mut whole = TensorMap::new();
    for (k, t) in &dict {
        let legacy = legacy_name(k);
        whole.insert(format!("backbone.{legacy}"), t.clone());
    }
    let head = HostTensor {
        shape: vec![4, 256, 3, 3],
        data: vec![0.5; 4 * 256 * 9],
    };
    whole.insert("rpn.head.conv.0.0.weight".into(), head.clone());
    whole.insert("roi_heads.box_predictor.cls_score.weight".into(), head);
    let detection = dir.join(format!("{name}-detection.safetensors"));
    save(&detection, &whole);
    let checkpoint = Checkpoint::open(&detection).unwrap();
    assert_eq!(checkpoint.ignored(), 2, "the head tensors are left out");
    assert_eq!(checkpoint.config().layout, Layout::Torchvision);
    let levels = run_checkpoint(&detection, config, Fusion::Fused, &x);
    assert_eq!(
        levels,
        reference.unwrap(),
        "{name}: a whole detection checkpoint gives the backbone's levels"
    );
}

/// torchvision's FPN names before version 2: `fpn.inner_blocks.0.weight` for
/// `fpn.inner_blocks.0.0.weight`.
fn legacy_name(name: &str) -> String {
    for block in ["fpn.inner_blocks.", "fpn.layer_blocks."] {
        if let Some(rest) = name.strip_prefix(block) {
            return format!("{block}{}", rest.replacen(".0.", ".", 1));
        }
    }
    name.to_string()
}

#[test]
fn faster_rcnn_backbone_with_pool_level_and_eps_0_matches_torchvision() {
    check_case("tv_pool_81x119");
}

#[test]
fn retinanet_backbone_p3_to_p7_batch2_matches_torchvision() {
    check_case("tv_retinanet_batch2_70x90");
}

#[test]
fn retinanet_v2_p6_from_c5_with_identity_blocks_matches_torchvision() {
    check_case("tv_p6c5_64x96");
}

#[test]
fn returned_layers_1_2_3_without_layer4_give_p2_to_p4_and_pool_as_torchvision() {
    check_case("tv_returned123_45x61");
}

#[test]
fn resnet18_34_basic_blocks_match_torchvision() {
    check_case("tv_basic_40x52");
}

#[test]
fn wide_resnet_bottlenecks_match_torchvision() {
    check_case("tv_wide_33x47");
}

#[test]
fn resnext_grouped_bottlenecks_match_torchvision() {
    let name = "tv_resnext_32x4d_37x41";
    check_case(name);
    // The grouped 3x3s ran as grouped convolutions, at 1/32 of the dense block-diagonal ones'
    // multiply-adds, not expanded.
    let (config, seed) = case_config(&fixture(name));
    let fpn = Fpn::random(gpu(), config, seed).unwrap();
    let plan = fpn.plan([1, 3, 37, 41]).unwrap();
    let kernels = plan.kernels();
    let grouped: Vec<_> = kernels
        .iter()
        .filter(|(node, _)| node.ends_with(".conv2"))
        .collect();
    assert_eq!(grouped.len(), config.blocks.iter().sum::<usize>());
    for (node, kernel) in &grouped {
        assert_eq!(*kernel, "conv2d_grouped4", "{node}");
    }
    assert!(kernels
        .iter()
        .all(|(node, kernel)| kernel.starts_with("conv2d_grouped") == node.ends_with(".conv2")));
}

#[test]
fn one_channel_input_from_conv1_matches_torchvision() {
    check_case("tv_gray_34x30");
}

#[test]
fn seed_and_torchvision_random_weights_are_recognised_by_their_names() {
    for config in [
        FpnConfig::with_blocks([1, 2, 1, 1]),
        FpnConfig::torchvision([1, 1, 2, 1]),
        FpnConfig {
            returned: [false, false, true, true, true],
            extra: "p6p7".parse().unwrap(),
            ..FpnConfig::torchvision([1, 1, 1, 1])
        },
    ] {
        let dict = Fpn::random_state_dict(config, 3).unwrap();
        let found = Checkpoint::from_store(VarStore::from_tensors("dict", dict))
            .unwrap()
            .config();
        assert_eq!(found, config);
    }
}
