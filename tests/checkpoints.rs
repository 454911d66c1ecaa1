//! How checkpoints are recognised from their names and shapes, as users save them: through
//! PyTorch wrappers, with some backbone layers left out, from the whole ResNet family, and with
//! a readable refusal for what cannot be placed. These need no GPU: recognition reads names.

use fpn_wgpu::tensor_file::TensorMap;
use fpn_wgpu::weights::VarStore;
use fpn_wgpu::{Checkpoint, Fpn, FpnConfig};

fn recognise(dict: TensorMap) -> fpn_wgpu::Result<Checkpoint> {
    Checkpoint::from_store(VarStore::from_tensors("dict", dict))
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
