//! A `state_dict` with its layout recognised from the names: the seed's `fpn.py`, torchvision's
//! `resnet_fpn_backbone`, or a whole torchvision detection model whose `backbone.` is taken and
//! whose heads are ignored. Names saved through a wrapper (`module.` from DataParallel or
//! DistributedDataParallel, `_orig_mod.` from `torch.compile`, nested in any order) are
//! unwrapped first.

use std::collections::BTreeMap;
use std::path::Path;

use crate::error::{Error, Result};
use crate::model::config::{Block, ExtraLevels, FpnConfig, P6Source};
use crate::model::PYRAMID_CHANNELS;
use crate::weights::{infer_block_counts, VarStore};

/// Weights plus the configuration their names and shapes describe.
pub struct Checkpoint {
    store: VarStore,
    config: FpnConfig,
    ignored: usize,
    unwrapped: String,
}

/// Prefixes PyTorch wrappers put in front of every name of the model they wrap: `module.`
/// (`nn.DataParallel`, `DistributedDataParallel`) and `_orig_mod.` (`torch.compile`).
pub const WRAPPER_PREFIXES: &[&str] = &["module.", "_orig_mod."];

/// The wrapper prefixes in front of every name, outermost first, however deeply nested
/// (`_orig_mod.module.` for a compiled DataParallel model). Empty when some name has none: a
/// wrapper prefixes all of its model's names, so a partial match is a model's own attribute.
fn wrapper_prefix(names: &[String]) -> String {
    let mut prefix = String::new();
    if names.is_empty() {
        return prefix;
    }
    'outer: loop {
        for w in WRAPPER_PREFIXES {
            let p = format!("{prefix}{w}");
            // A name must keep something after the prefix to still be a name.
            if names.iter().all(|n| n.len() > p.len() && n.starts_with(&p)) {
                prefix = p;
                continue 'outer;
            }
        }
        return prefix;
    }
}

impl Checkpoint {
    /// Reads a `state_dict` (safetensors, a PyTorch `.pth`/`.pt` or a detectron2 `.pkl`; see
    /// [`VarStore::from_file`]) and recognises its layout.
    pub fn open(path: &Path) -> Result<Self> {
        Self::from_store(VarStore::from_file(path)?)
    }

    /// Recognises the layout of weights already loaded.
    pub fn from_store(store: VarStore) -> Result<Self> {
        let names: Vec<String> = store.names().iter().map(|n| n.to_string()).collect();
        let unwrapped = wrapper_prefix(&names);
        if !unwrapped.is_empty() {
            log::info!(
                "{}: every name starts with the wrapper prefix `{unwrapped}`; taking it off",
                store.origin()
            );
            let store = store
                .map_names(&format!("wrapper prefix `{unwrapped}` taken off"), |n| {
                    n.strip_prefix(unwrapped.as_str()).map(str::to_string)
                })?;
            let mut checkpoint = Self::from_store(store)?;
            checkpoint.unwrapped = format!("{unwrapped}{}", checkpoint.unwrapped);
            return Ok(checkpoint);
        }
        let under = |p: &str| names.iter().filter(|n| n.starts_with(p)).count();
        if under("backbone.body.") > 0 || under("backbone.fpn.") > 0 {
            let ignored = names.len() - under("backbone.");
            let store = store.map_names("the `backbone.` of a detection model", |n| {
                n.strip_prefix("backbone.").map(current_torchvision_name)
            })?;
            return Self::torchvision(store, ignored);
        }
        if under("body.") > 0 || under("fpn.") > 0 {
            let store =
                store.map_names("torchvision layout", |n| Some(current_torchvision_name(n)))?;
            return Self::torchvision(store, 0);
        }
        if under("toplayer.") > 0 || under("latlayer") > 0 {
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            let config = backbone(
                &store,
                "",
                FpnConfig::with_blocks(infer_block_counts(&names)?),
            );
            return Ok(Checkpoint {
                store,
                config,
                ignored: 0,
                unwrapped: String::new(),
            });
        }
        Err(neither_layout(&store.origin(), &names))
    }

    fn torchvision(store: VarStore, ignored: usize) -> Result<Self> {
        let body: Vec<&str> = store
            .names()
            .into_iter()
            .filter_map(|n| n.strip_prefix("body."))
            .collect();
        let blocks = infer_block_counts(&body).map_err(|_| {
            weights_error(
                &store,
                "torchvision layout without a complete ResNet under `body.` (expected names such \
                 as `body.layer1.0.conv1.weight` for layer1..layer4)"
                    .to_string(),
            )
        })?;
        let mut config = backbone(&store, "body.", FpnConfig::torchvision(blocks));
        config.returned = [false; 4];
        let present = blocks.iter().filter(|&&b| b > 0).count();
        let mut previous: Option<usize> = None;
        for i in 0.. {
            let name = format!("fpn.inner_blocks.{i}.0.weight");
            let Some(shape) = store.shape_of(&name) else {
                break;
            };
            let cin = shape.get(1).copied().unwrap_or(0);
            let Some(level) = (0..present).find(|&l| config.level_channels(l) == cin) else {
                let channels: Vec<usize> = (0..present).map(|l| config.level_channels(l)).collect();
                return Err(weights_error(
                    &store,
                    format!(
                        "`{name}` has shape {shape:?}: its input channels should be those of one \
                         of the backbone's levels C2..C{} ({channels:?}, from the {} blocks \
                         under `body.`)",
                        present + 1,
                        config.block,
                    ),
                ));
            };
            if previous.is_some_and(|p| p >= level) {
                return Err(weights_error(
                    &store,
                    format!(
                        "`{name}` reads C{} after C{}: inner_blocks must go from fine to coarse",
                        level + 2,
                        previous.unwrap_or(0) + 2
                    ),
                ));
            }
            config.returned[level] = true;
            previous = Some(level);
        }
        let Some(top) = previous else {
            return Err(weights_error(
                &store,
                "torchvision layout without its FPN: no `fpn.inner_blocks.0.0.weight` (a plain \
                 backbone has nothing to build the pyramid from)"
                    .to_string(),
            ));
        };
        if let Some(shape) = store.shape_of("fpn.extra_blocks.p6.weight") {
            let cin = shape.get(1).copied().unwrap_or(0);
            let c_top = config.level_channels(top);
            config.extra = if cin == PYRAMID_CHANNELS {
                ExtraLevels::P6P7(P6Source::P5)
            } else if cin == c_top {
                ExtraLevels::P6P7(P6Source::C5)
            } else {
                return Err(weights_error(
                    &store,
                    format!(
                        "`fpn.extra_blocks.p6.weight` has shape {shape:?}: RetinaNet's P6 reads \
                         P5 ({PYRAMID_CHANNELS} channels) or C{} ({c_top} channels)",
                        top + 2
                    ),
                ));
            };
        }
        // torchvision keeps the layers up to the deepest returned one; a count read past it
        // is a layer the file should not have, reported as unexpected tensors when built.
        config.blocks = blocks;
        let config = FpnConfig {
            blocks: config.trimmed().blocks,
            ..config
        };
        Ok(Checkpoint {
            store,
            config,
            ignored,
            unwrapped: String::new(),
        })
    }

    /// The configuration the checkpoint describes (batch norm epsilon 1e-5; change it for
    /// weights trained with another, e.g. 0 for torchvision's COCO Faster R-CNN).
    pub fn config(&self) -> FpnConfig {
        self.config
    }

    /// The weights, renamed to the layout's canonical names.
    pub fn store(&self) -> &VarStore {
        &self.store
    }

    /// The weights, to build the network from (see [`crate::model::Fpn::new`]).
    pub fn into_store(self) -> VarStore {
        self.store
    }

    /// The wrapper prefixes taken off every name (`module.`, `_orig_mod.module.`, ...), or an
    /// empty string when the names were not wrapped.
    pub fn unwrapped_prefix(&self) -> &str {
        &self.unwrapped
    }

    /// How many tensors outside the backbone (a detection model's heads) were left out.
    pub fn ignored(&self) -> usize {
        self.ignored
    }
}

/// The widest `layer1` bottleneck read from a file's shapes: 4 times that of the widest in
/// torchvision's family (resnext101_32x8d, 256).
const MAX_BOTTLENECK_WIDTH: usize = 1024;

/// The backbone `base` with what the names and shapes under `prefix` say of it: the block type
/// (a `conv3` in the first block means bottlenecks), the bottleneck width and groups (from the
/// first block's `conv1` and grouped `conv2`), and the input channels (from `conv1`). A shape
/// that says nothing sensible leaves the default, and the walk then reports the tensors that
/// disagree with it.
fn backbone(store: &VarStore, prefix: &str, base: FpnConfig) -> FpnConfig {
    let shape = |name: &str| store.shape_of(&format!("{prefix}{name}"));
    let mut config = base;
    if let Some(&[_, cin, _, _]) = shape("conv1.weight") {
        config.in_channels = cin;
    }
    let bottleneck = shape("layer1.0.conv3.weight").is_some();
    config.block = if bottleneck || shape("layer1.0.conv1.weight").is_none() {
        Block::Bottleneck
    } else {
        Block::Basic
    };
    if config.block == Block::Bottleneck {
        if let (Some(&[width, ..]), Some(&[w2, per_group, 3, 3])) = (
            shape("layer1.0.conv1.weight"),
            shape("layer1.0.conv2.weight"),
        ) {
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
    config
}

/// torchvision's FPN before version 2 named its convs `inner_blocks.{i}.weight`; since then
/// they sit inside a `Conv2dNormActivation` as `inner_blocks.{i}.0.weight`. Old names are mapped
/// to new ones, as torchvision's own loader does.
fn current_torchvision_name(name: &str) -> String {
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

fn weights_error(store: &VarStore, problem: String) -> Error {
    Error::Weights {
        problems: vec![format!("in {}:", store.origin()), problem],
    }
}

/// What was found, grouped by first name component, for a checkpoint of neither layout.
fn neither_layout(origin: &str, names: &[String]) -> Error {
    let mut groups: BTreeMap<&str, usize> = BTreeMap::new();
    for n in names {
        *groups.entry(n.split('.').next().unwrap_or(n)).or_default() += 1;
    }
    let found = if names.is_empty() {
        "no tensors at all".to_string()
    } else {
        let mut listed: Vec<String> = groups
            .iter()
            .take(8)
            .map(|(g, c)| format!("`{g}.*` ({c})"))
            .collect();
        if groups.len() > 8 {
            listed.push(format!("and {} more groups", groups.len() - 8));
        }
        format!("{} tensors: {}", names.len(), listed.join(", "))
    };
    let classifier = groups.contains_key("layer1") && groups.contains_key("conv1");
    let mut problems = vec![
        format!("in {origin}:"),
        "the names match no known layout. A seed FPN state_dict has `conv1.weight`, \
         `layer1.0.conv1.weight` and `toplayer.weight`; a torchvision one (resnet_fpn_backbone) \
         has `body.conv1.weight` and `fpn.inner_blocks.0.0.weight`, or the same under \
         `backbone.` in a whole Faster/Mask R-CNN or RetinaNet checkpoint; any of these may also \
         sit under the wrapper prefixes `module.` and `_orig_mod.`."
            .to_string(),
        format!("found {found}"),
    ];
    if classifier {
        problems.push(
            "this looks like a ResNet classifier without FPN weights: export the FPN model's \
             state_dict instead"
                .to_string(),
        );
    }
    Error::Weights { problems }
}
