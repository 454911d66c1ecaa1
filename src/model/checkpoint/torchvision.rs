//! torchvision's `BackboneWithFPN` (`body.`, `fpn.`), and timm's `features_only` ResNets under
//! the same names: the ResNet may sit one module further down (`body.model.` from timm's
//! `FeatureGetterNet`), have ResNet-D's deep stem and average-pool shortcuts, and feed its stem
//! to the FPN (timm's `out_indices` starting at 0).

use super::{assign_stages, pyramid_width, resnet_shapes, weights_error, Checkpoint};
use crate::error::Result;
use crate::model::config::{ExtraLevels, FpnConfig, Layout};
use crate::weights::VarStore;

/// torchvision's FPN before version 2 named its convs `inner_blocks.{i}.weight`; since then
/// they sit inside a `Conv2dNormActivation` as `inner_blocks.{i}.0.weight`. Old names are mapped
/// to new ones, as torchvision's own loader does.
pub fn current_name(name: &str) -> String {
    for block in ["fpn.inner_blocks.", "fpn.layer_blocks."] {
        if let Some(rest) = name.strip_prefix(block) {
            if let Some((index, param)) = rest.split_once('.') {
                if index.parse::<usize>().is_ok() && (param == "weight" || param == "bias") {
                    return format!("{block}{index}.0.{param}");
                }
            }
        }
    }
    name.to_string()
}

/// The module path between `body.` and the ResNet, when a wrapper put one there: timm's
/// `FeatureGetterNet` keeps the net as `body.model.`. Found as the prefix of the one
/// `layer1.0.conv1.weight` under `body.`.
fn inner_prefix(store: &VarStore) -> Option<String> {
    let found: Vec<&str> = store
        .names()
        .into_iter()
        .filter_map(|n| {
            n.strip_prefix("body.")?
                .strip_suffix("layer1.0.conv1.weight")
        })
        .collect();
    match found.as_slice() {
        [inner] if !inner.is_empty() && inner.ends_with('.') => Some(inner.to_string()),
        _ => None,
    }
}

/// Recognises a torchvision-named FPN whose names are already current (`ignored` tensors were
/// left out before).
pub fn recognise(store: VarStore, ignored: usize) -> Result<Checkpoint> {
    let mut notes = Vec::new();
    if ignored > 0 {
        notes.push(format!(
            "looks like a whole torchvision detection model: its `backbone.` is read, {ignored} \
             head tensors are left out"
        ));
    }
    let store = match inner_prefix(&store) {
        Some(inner) => {
            let from = format!("body.{inner}");
            notes.push(format!(
                "the ResNet sits under `{from}` (a feature wrapper such as timm's \
                 FeatureGetterNet); read as `body.`"
            ));
            store.map_names(&format!("`{from}` read as `body.`"), |n| {
                Some(match n.strip_prefix(from.as_str()) {
                    Some(rest) => format!("body.{rest}"),
                    None => n.to_string(),
                })
            })?
        }
        None => store,
    };
    // A feature wrapper that was not pruned (timm's `prune=False`) keeps the classifier.
    let classifier = store
        .names()
        .iter()
        .filter(|n| n.starts_with("body.fc."))
        .count();
    let (store, ignored) = if classifier > 0 {
        notes.push(format!(
            "the classifier `body.fc.*` ({classifier} tensors) is left out: the FPN does not read it"
        ));
        let store = store.map_names("classifier left out", |n| {
            (!n.starts_with("body.fc.")).then(|| n.to_string())
        })?;
        (store, ignored + classifier)
    } else {
        (store, ignored)
    };
    let blocks =
        resnet_shapes::block_counts(&store, Layout::Torchvision, "body.").map_err(|_| {
            let found: Vec<String> = store
                .names()
                .iter()
                .filter_map(|n| {
                    n.strip_prefix("body.")?
                        .split_once(".layer1.")
                        .map(|(p, _)| format!("`body.{p}.`"))
                })
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect();
            let hint = match found.as_slice() {
                [] => String::new(),
                some => format!("; found layer1 under {}", some.join(", ")),
            };
            weights_error(
                &store,
                format!(
                    "looks like a torchvision BackboneWithFPN (`body.`, `fpn.`), but without a \
                 complete ResNet under `body.` (expected names such as \
                 `body.layer1.0.conv1.weight` for layer1..layer4){hint}"
                ),
            )
        })?;
    let mut config = resnet_shapes::read(&store, "body.", FpnConfig::torchvision(blocks));
    let present = blocks.iter().filter(|&&b| b > 0).count();
    let mut cins = Vec::new();
    while let Some(shape) = store.shape_of(&format!("fpn.inner_blocks.{}.0.weight", cins.len())) {
        cins.push((
            format!("fpn.inner_blocks.{}.0.weight", cins.len()),
            shape.to_vec(),
        ));
    }
    if cins.is_empty() {
        return Err(weights_error(
            &store,
            "looks like a torchvision BackboneWithFPN, but without its FPN: no \
             `fpn.inner_blocks.0.0.weight` (a plain backbone has nothing to build the pyramid \
             from)"
                .to_string(),
        ));
    }
    let candidates: Vec<usize> = (0..=present).collect();
    let stages = assign_stages(&store, &cins, &config, &candidates)?;
    config.returned = [false; 5];
    for &s in &stages {
        config.returned[s] = true;
    }
    if config.returned[0] {
        notes.push(
            "the stem's output (C1, stride 2) feeds the pyramid as P1, as timm's out_indices \
             starting at 0 give it"
                .to_string(),
        );
    }
    config.fpn_norm = store.shape_of("fpn.inner_blocks.0.1.running_var").is_some();
    config.pyramid_channels = pyramid_width(&cins[0].1, config.pyramid_channels);
    let top = stages[stages.len() - 1];
    if let Some(shape) = store.shape_of("fpn.extra_blocks.p6.weight") {
        let source = super::p6_source(&store, "fpn.extra_blocks.p6.weight", shape, &config, top)?;
        config.extra = ExtraLevels::p6p7(source);
    }
    // torchvision keeps the layers up to the deepest returned one; a count read past it
    // is a layer the file should not have, reported as unexpected tensors when built.
    let config = FpnConfig {
        blocks: config.trimmed().blocks,
        ..config
    };
    let mut checkpoint = Checkpoint::new(store, config, ignored);
    checkpoint.notes = notes;
    Ok(checkpoint)
}
