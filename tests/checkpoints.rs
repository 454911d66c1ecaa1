//! How checkpoints are recognised from their names and shapes, as users save them: through
//! PyTorch wrappers, with some backbone layers left out, from the whole ResNet family, and with
//! a readable refusal for what cannot be placed. These need no GPU: recognition reads names.

mod common;

use fpn_wgpu::tensor_file::TensorMap;
use fpn_wgpu::weights::VarStore;
use fpn_wgpu::{Checkpoint, Fpn, FpnConfig};

fn recognise(dict: TensorMap) -> fpn_wgpu::Result<Checkpoint> {
    Checkpoint::from_store(VarStore::from_tensors("dict", dict))
}

/// The error building the network of `checkpoint` gives, which `why` says it must.
fn refusal(checkpoint: &Checkpoint, why: &str) -> String {
    match Fpn::graph(checkpoint.store(), checkpoint.config()) {
        Ok(_) => panic!("{why}"),
        Err(e) => e.to_string(),
    }
}

fn prefixed(dict: &TensorMap, prefix: &str) -> TensorMap {
    dict.iter()
        .map(|(n, t)| (format!("{prefix}{n}"), t.clone()))
        .collect()
}

#[test]
fn wrapper_prefixes_alone_or_nested_are_taken_off_either_layout() {
    let seed = FpnConfig::with_blocks([1, 2, 1, 1]);
    let torchvision = FpnConfig::torchvision([1, 1, 2, 1]);
    for config in [seed, torchvision] {
        let dict = Fpn::random_state_dict(config, 7).unwrap();
        for wrapper in [
            "module.",
            "_orig_mod.",
            "_orig_mod.module.",
            "module._orig_mod.",
            "module.module.",
        ] {
            let checkpoint = recognise(prefixed(&dict, wrapper)).unwrap();
            assert_eq!(checkpoint.config(), config, "{wrapper}");
            assert_eq!(checkpoint.unwrapped_prefix(), wrapper);
            let names: Vec<&str> = checkpoint.store().names();
            let want: Vec<&str> = dict.keys().map(String::as_str).collect();
            assert_eq!(names, want, "{wrapper}: the names after unwrapping");
            assert_eq!(checkpoint.ignored(), 0);
        }
    }
    // A DistributedDataParallel-trained detection model: `module.backbone.` beside the heads.
    let dict = Fpn::random_state_dict(torchvision, 7).unwrap();
    let mut whole = prefixed(&dict, "module.backbone.");
    let head = dict["fpn.layer_blocks.0.0.bias"].clone();
    whole.insert("module.rpn.head.conv.0.0.bias".into(), head.clone());
    let whole = prefixed(&whole, "_orig_mod.");
    let checkpoint = recognise(whole).unwrap();
    assert_eq!(checkpoint.config(), torchvision);
    assert_eq!(checkpoint.unwrapped_prefix(), "_orig_mod.module.");
    assert_eq!(checkpoint.ignored(), 1);

    // Not a wrapper when only some names carry it: the model's own attribute called `module`.
    let mut partial = dict.clone();
    partial.insert("module.extra.weight".into(), head);
    let checkpoint = recognise(partial).unwrap();
    assert_eq!(checkpoint.unwrapped_prefix(), "");
}

/// torchvision's layout with `returned` saying which of layer1..4 feed the pyramid.
fn torchvision(blocks: [usize; 4], returned: [bool; 4]) -> FpnConfig {
    let [a, b, c, d] = returned;
    FpnConfig {
        returned: [false, a, b, c, d],
        ..FpnConfig::torchvision(blocks)
    }
}

#[test]
fn the_returned_layers_decide_which_layers_exist() {
    // resnet_fpn_backbone(returned_layers=[1, 2, 3]) saves no layer4; [2, 3] no layer4 either,
    // but layer1 (it feeds layer2).
    for (returned, depth) in [
        ([true, true, true, false], 3),
        ([false, true, true, false], 3),
    ] {
        let config = torchvision([2, 1, 1, 1], returned).trimmed();
        assert_eq!(config.blocks, [2, 1, 1, 0]);
        assert_eq!(config.depth(), depth);
        let dict = Fpn::random_state_dict(config, 1).unwrap();
        assert!(dict.keys().any(|n| n.starts_with("body.layer1.")));
        assert!(
            !dict.keys().any(|n| n.starts_with("body.layer4.")),
            "no layer4 tensors are written for returned layers {returned:?}"
        );
        let found = recognise(dict).unwrap().config();
        assert_eq!(found, config);
        let graph = Fpn::graph(&VarStore::random(0), found).unwrap();
        let names: Vec<&str> = graph.outputs().iter().map(|(n, _)| n.as_str()).collect();
        let want: &[&str] = if returned[0] {
            &["p2", "p3", "p4", "p5"]
        } else {
            &["p3", "p4", "p5"]
        };
        assert_eq!(
            names, want,
            "the returned levels and the pool level above them"
        );
    }
    // A file whose layer4 is there although nothing reads it is not what torchvision saves.
    let mut dict = Fpn::random_state_dict(torchvision([1, 1, 1, 1], [true; 4]), 1).unwrap();
    dict.retain(|n, _| {
        !n.starts_with("fpn.inner_blocks.3") && !n.starts_with("fpn.layer_blocks.3")
    });
    let checkpoint = recognise(dict).unwrap();
    let msg = refusal(&checkpoint, "layer4 without a returned level is refused");
    assert!(msg.contains("unexpected tensor `body.layer4.0."), "{msg}");
}

#[test]
fn the_resnet_family_and_the_input_channels_are_read_from_names_and_shapes() {
    use fpn_wgpu::model::Block;
    let variants = [
        (Block::Basic, 1, 64),
        (Block::Bottleneck, 1, 64),
        (Block::Bottleneck, 1, 128),
        (Block::Bottleneck, 32, 4),
        (Block::Bottleneck, 32, 8),
        (Block::Bottleneck, 64, 4),
    ];
    for (block, groups, width_per_group) in variants {
        for in_channels in [1, 3] {
            for base in [
                FpnConfig::with_blocks([1, 2, 1, 1]),
                torchvision([1, 1, 2, 1], [true; 4]),
            ] {
                let config = FpnConfig {
                    block,
                    groups,
                    width_per_group,
                    in_channels,
                    ..base
                };
                let dict = Fpn::random_state_dict(config, 2).unwrap();
                let prefix = if base.layout == fpn_wgpu::Layout::Seed {
                    ""
                } else {
                    "body."
                };
                assert_eq!(
                    dict[&format!("{prefix}conv1.weight")].shape,
                    [64, in_channels, 7, 7]
                );
                assert_eq!(recognise(dict).unwrap().config(), config);
            }
        }
    }
    // Every preset is named in descriptions the way torchvision names it.
    for name in &FpnConfig::PRESETS[1..] {
        let config = FpnConfig::preset(name).unwrap();
        assert_eq!(config.backbone_name(), Some(*name));
        assert!(config.describe().contains(name));
    }
}

#[test]
fn a_network_the_loader_cannot_place_is_refused_with_a_short_summary() {
    // A ResNet-50 FPN whose layer3 and layer4 were widened after the fact: the guess from
    // layer1 (a plain ResNet-50) leaves dozens of tensors mis-shaped.
    let config = torchvision([3, 4, 6, 3], [true; 4]);
    let wide = FpnConfig {
        width_per_group: 128,
        ..config
    };
    let plain = Fpn::random_state_dict(config, 4).unwrap();
    let mut dict = Fpn::random_state_dict(wide, 4).unwrap();
    dict.retain(|n, _| !n.starts_with("body.layer1.") && !n.starts_with("body.layer2."));
    for (n, t) in plain {
        if n.starts_with("body.layer1.") || n.starts_with("body.layer2.") {
            dict.insert(n, t);
        }
    }
    let checkpoint = recognise(dict).unwrap();
    let msg = refusal(&checkpoint, "a mixed network cannot be placed");
    assert!(msg.len() < 2000, "{} bytes:\n{msg}", msg.len());
    for needle in [
        "tensors disagree with the torchvision layout's bottleneck ResNet (resnet50) with blocks \
         [3, 4, 6, 3], groups 1, width per group 64",
        "(0 missing, 99 mis-shaped, 0 unexpected, of 281 the network reads)",
        "tensor `body.layer3.0.bn1.bias` has shape [512]; expected [256]",
        "... and 91 more",
        "build with an explicit FpnConfig",
    ] {
        assert!(msg.contains(needle), "{needle:?} not in:\n{msg}");
    }
    // The heading, the file, the summary, 8 tensors, the count of the rest, what to do.
    assert_eq!(msg.lines().count(), 3 + 8 + 2, "{msg}");
}

#[test]
fn shapes_that_would_size_a_huge_network_are_refused_not_allocated() {
    // The same bytes under other shapes: layer1's bottleneck 4096 wide in 4096 groups would
    // make layer4's grouped 3x3 a dense 32768 x 32768 x 9 weight (38 GB).
    let mut dict = Fpn::random_state_dict(torchvision([1, 1, 1, 1], [true; 4]), 8).unwrap();
    for (name, shape) in [
        ("body.layer1.0.conv1.weight", vec![4096, 1, 1, 1]),
        ("body.layer1.0.conv2.weight", vec![4096, 1, 3, 3]),
    ] {
        let t = dict.get_mut(name).unwrap();
        assert_eq!(t.data.len(), shape.iter().product::<usize>());
        t.shape = shape;
    }
    let checkpoint = recognise(dict).unwrap();
    assert_eq!(
        checkpoint.config().groups,
        1,
        "an implausible width is not believed"
    );
    let msg = refusal(
        &checkpoint,
        "the reshaped tensors disagree with the network",
    );
    assert!(
        msg.contains("tensor `body.layer1.0.conv1.weight` has shape [4096, 1, 1, 1]"),
        "{msg}"
    );
}

#[test]
fn cli_random_weights_write_what_torchvision_saves() {
    // resnet_fpn_backbone('resnet18', returned_layers=[1, 2, 3]) saves 87 tensors (checked
    // against torchvision by tests/fixtures/make_torchvision_fixtures.py), none of layer4.
    let scratch = common::scratch("checkpoints");
    let path = scratch.path().join("resnet18-returned-1-2-3.safetensors");
    let out = common::fpn_command()
        .args([
            "random-weights",
            "--layout",
            "torchvision",
            "--preset",
            "resnet18",
        ])
        .args([
            "--returned-layers",
            "1,2,3",
            "--output",
            path.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dict = fpn_wgpu::tensor_file::read_tensors(&path, |_| false).unwrap();
    assert_eq!(dict.len(), 87);
    assert!(!dict.keys().any(|n| n.starts_with("body.layer4.")));
    assert_eq!(dict["fpn.inner_blocks.2.0.weight"].shape, [256, 256, 1, 1]);
    let config = recognise(dict).unwrap().config();
    assert_eq!(config.backbone_name(), Some("resnet18"));
    assert_eq!(config.blocks, [2, 2, 2, 0]);
}
