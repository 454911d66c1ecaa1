//! torchvision's `BackboneWithFPN` (`body.`, `fpn.`), and timm's `features_only` ResNets under
//! the same names: the ResNet may sit one module further down (`body.model.` from timm's
//! `FeatureGetterNet`), have ResNet-D's deep stem and average-pool shortcuts, and feed its stem
//! to the FPN (timm's `out_indices` starting at 0).

use super::pyramid_shapes::{assign_stages, p6_source, pyramid_width};
use super::{refuse, resnet_shapes, Checkpoint};
use crate::error::Result;
use crate::model::config::{ExtraLevels, ExtraSource, FpnConfig, Layout};
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

/// What the file looks like, for refusals.
const FRAMEWORK: &str = "a torchvision BackboneWithFPN (`body.`, `fpn.`)";

/// The lateral convs' weights, by name and shape, finest first.
fn laterals(store: &VarStore) -> Vec<(String, Vec<usize>)> {
    (0..)
        .map(|i| format!("fpn.inner_blocks.{i}.0.weight"))
        .map_while(|name| Some((store.shape_of(&name)?.to_vec(), name)))
        .map(|(shape, name)| (name, shape))
        .collect()
}

/// Why `body.` holds no ResNet, naming where a `layer1` sits if one does.
fn incomplete_body(store: &VarStore) -> String {
    let found: std::collections::BTreeSet<String> = store
        .names()
        .iter()
        .filter_map(|n| {
            let (inner, _) = n.strip_prefix("body.")?.split_once("layer1.")?;
            Some(format!("`body.{inner}`"))
        })
        .collect();
    let hint = match found.len() {
        0 => String::new(),
        _ => format!(
            "; layer1 sits under {}",
            found.into_iter().collect::<Vec<_>>().join(", ")
        ),
    };
    format!(
        "without a complete ResNet under `body.` (expected names such as \
         `body.layer1.0.conv1.weight` for layer1..layer4){hint}"
    )
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
    let blocks = resnet_shapes::block_counts(&store, Layout::Torchvision, "body.")
        .map_err(|_| refuse(&store, FRAMEWORK, incomplete_body(&store)))?;
    let mut config = resnet_shapes::read(&store, "body.", FpnConfig::torchvision(blocks));
    let present = blocks.iter().filter(|&&b| b > 0).count();
    let cins = laterals(&store);
    if cins.is_empty() {
        return Err(refuse(
            &store,
            FRAMEWORK,
            "without its FPN: no `fpn.inner_blocks.0.0.weight` (a plain backbone has nothing to \
             build the pyramid from; export the model with its FPN)"
                .to_string(),
        ));
    }
    let candidates: Vec<usize> = (0..=present).collect();
    let (stages, note) = assign_stages(&store, FRAMEWORK, &cins, &config, &candidates)?;
    notes.extend(note);
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
    let p6 = "fpn.extra_blocks.p6.weight";
    if let Some(shape) = store.shape_of(p6) {
        // torchvision's LastLevelP6P7 reads P5 when its input channels equal its output's.
        let tie = ExtraSource::Output;
        let (source, note) = p6_source(&store, FRAMEWORK, (p6, shape), &config, top, tie)?;
        notes.extend(note);
        config.extra = ExtraLevels::p6p7(source);
    }
    // torchvision keeps the layers up to the deepest returned one; a count read past it
    // is a layer the file should not have, reported as unexpected tensors when built.
    let config = config.trimmed();
    let mut checkpoint = Checkpoint::new(store, config, ignored);
    checkpoint.notes = notes;
    Ok(checkpoint)
}
