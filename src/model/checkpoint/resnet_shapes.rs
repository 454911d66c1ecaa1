//! What a ResNet's names and shapes say of it, in any layout: block counts, block type, groups
//! and width, input channels, the stem, and average-pool shortcuts. A shape that says nothing
//! sensible leaves the default, and the walk then reports the tensors that disagree with it.

use crate::model::config::{Block, FpnConfig, Layout, Stem, MAX_WIDTH};
use crate::model::naming;
use crate::weights::VarStore;

/// The widest `layer1` bottleneck read from a file's shapes: 4 times that of the widest in
/// torchvision's family (resnext101_32x8d, 256).
const MAX_BOTTLENECK_WIDTH: usize = 1024;

/// The number of blocks in each of the four layers under `prefix` (ending in `.`, or empty),
/// named as `layout` names them (`layer3.5.conv1.weight`, or detectron2's `res4.5.conv1.weight`,
/// means layer 3 has at least 6 blocks). Layers after the last one present count 0; the first
/// must be there and none may be skipped; the problem otherwise.
pub fn block_counts(
    store: &VarStore,
    layout: Layout,
    prefix: &str,
) -> std::result::Result<[usize; 4], String> {
    let mut counts = [0usize; 4];
    for name in store.names() {
        let Some(rest) = name.strip_prefix(prefix) else {
            continue;
        };
        for (l, count) in counts.iter_mut().enumerate() {
            let layer = naming::layer(layout, l + 1);
            let Some(block) = rest
                .strip_prefix(layer.as_str())
                .and_then(|r| r.strip_prefix('.'))
                .and_then(|r| r.split('.').next())
                .and_then(|b| b.parse::<usize>().ok())
            else {
                continue;
            };
            *count = (*count).max(block + 1);
        }
    }
    let present = counts.iter().rposition(|&c| c > 0).map_or(0, |l| l + 1);
    if let Some(missing) = counts[..present.max(1)].iter().position(|&c| c == 0) {
        return Err(format!(
            "there are no tensors named `{prefix}{}.<block>.*`: the ResNet under `{prefix}` is \
             incomplete (expected names such as `{prefix}{}.0.conv1.weight`)",
            naming::layer(layout, missing + 1),
            naming::layer(layout, 1),
        ));
    }
    Ok(counts)
}

/// The backbone `base` (its layout and block counts set) with what the names and shapes under
/// `prefix` say of it: the stem (a deep one has its first conv inside a Sequential), the input
/// channels (from the first conv), the block type (a `conv3` in the first block means
/// bottlenecks), the bottleneck width and groups (from the first block's `conv1` and grouped
/// `conv2`), and average-pool shortcuts (the shortcut's conv one place down its Sequential).
pub fn read(store: &VarStore, prefix: &str, base: FpnConfig) -> FpnConfig {
    let shape = |name: &str| store.shape_of(&format!("{prefix}{name}"));
    let weight = |name: &str| shape(&format!("{name}.weight"));
    let mut config = base;
    // A layout without a deep stem names its plain one the same way.
    if let [first, second, third] = naming::stem(config.layout, Stem::Deep([0; 3])).as_slice() {
        if let (Some(&[a, ..]), Some(&[b, ..]), Some(&[c, ..])) = (
            weight(&first.conv),
            weight(&second.conv),
            weight(&third.conv),
        ) {
            // Widths past any framework's are a broken file, left to the walk to report
            // rather than sized from.
            if [a, b, c].iter().all(|&w| w <= MAX_WIDTH) {
                config.stem = Stem::Deep([a, b, c]);
            }
        }
    }
    let stem = naming::stem(config.layout, config.stem);
    if let Some(&[_, cin, _, _]) = weight(&stem[0].conv) {
        config.in_channels = cin;
    }
    let first = format!("{}.0.", naming::layer(config.layout, 1));
    let conv = |i: usize| {
        weight(&format!(
            "{first}{}",
            naming::block_conv(config.layout, i).conv
        ))
    };
    config.block = if conv(3).is_some() || conv(1).is_none() {
        Block::Bottleneck
    } else {
        Block::Basic
    };
    if config.block == Block::Bottleneck {
        if let (Some(&[width, ..]), Some(&[w2, per_group, 3, 3])) = (conv(1), conv(2)) {
            // The deepest layer is 8 times as wide and the tensors the walk expects grow with
            // its square: a width far past the family's (at most 256) is a broken file, left
            // to the walk to report rather than sized from.
            let plausible = width <= MAX_BOTTLENECK_WIDTH;
            if plausible && width == w2 && per_group > 0 && width % per_group == 0 {
                config.groups = width / per_group;
                config.width_per_group = per_group;
            }
        }
    }
    let avg = naming::shortcut(config.layout, true);
    let plain = naming::shortcut(config.layout, false);
    if avg.conv != plain.conv {
        let suffix = format!(".{}.running_mean", avg.norm);
        config.avg_down = store
            .names()
            .iter()
            .any(|n| n.starts_with(prefix) && n.ends_with(&suffix));
    }
    config
}
