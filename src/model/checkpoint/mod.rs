//! A `state_dict` with its layout recognised from the names: the seed's `fpn.py`, torchvision's
//! `resnet_fpn_backbone` (timm's `features_only` ResNets under `body.` included), detectron2's
//! and mmdetection's FPNs, or a whole detection model of any of these frameworks, whose heads
//! are left out. Names saved through a wrapper (`module.` from DataParallel or
//! DistributedDataParallel, `_orig_mod.` from `torch.compile`, nested in any order) are
//! unwrapped first. What the names cannot show (where a bottleneck's stride sits, what
//! mmdetection's extra convs read) comes from [`LoadOptions`], else from the framework's
//! defaults, and [`Checkpoint::notes`] says which.

mod detectron2;
mod mmdetection;
mod resnet_shapes;
mod torchvision;

use std::collections::BTreeMap;
use std::path::Path;

use crate::error::{Error, Result};
use crate::image_input::PixelNorm;
use crate::model::config::{ExtraSource, FpnConfig, ResNetStyle};
use crate::weights::{infer_block_counts, VarStore};

/// Settings a checkpoint's names cannot show. `None` leaves each to what the checkpoint's other
/// names imply (a detector head that mmdetection's configs tie to it) or to the framework's
/// default; [`Checkpoint::notes`] says which was used.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// Where the bottlenecks' stride sits (detectron2: caffe by default, its `STRIDE_IN_1X1`;
    /// mmdetection: pytorch by default).
    pub resnet_style: Option<ResNetStyle>,
    /// What mmdetection's first extra conv reads, when its input channels equal the pyramid's
    /// (`on_lateral` and `on_output` look alike); `on_input` shows in the shapes.
    pub add_extra_convs: Option<ExtraSource>,
    /// mmdetection's `relu_before_extra_convs`.
    pub relu_before_extra_convs: Option<bool>,
    /// mmdetection's `num_outs`, when there are no extra convs (the max pools above the
    /// backbone's levels have no weights to count).
    pub num_outs: Option<usize>,
}

/// Weights plus the configuration their names and shapes describe.
pub struct Checkpoint {
    store: VarStore,
    config: FpnConfig,
    ignored: usize,
    unwrapped: String,
    pixels: Option<PixelNorm>,
    notes: Vec<String>,
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
        Self::open_with(path, LoadOptions::default())
    }

    /// [`Checkpoint::open`] with the settings the names cannot show.
    pub fn open_with(path: &Path, options: LoadOptions) -> Result<Self> {
        Self::from_store_with(VarStore::from_file(path)?, options)
    }

    /// Recognises the layout of weights already loaded.
    pub fn from_store(store: VarStore) -> Result<Self> {
        Self::from_store_with(store, LoadOptions::default())
    }

    /// [`Checkpoint::from_store`] with the settings the names cannot show.
    pub fn from_store_with(store: VarStore, options: LoadOptions) -> Result<Self> {
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
            let mut checkpoint = Self::from_store_with(store, options)?;
            checkpoint.unwrapped = format!("{unwrapped}{}", checkpoint.unwrapped);
            return Ok(checkpoint);
        }
        let under = |p: &str| names.iter().filter(|n| n.starts_with(p)).count();
        if under("backbone.bottom_up.") > 0 || under("bottom_up.") > 0 {
            return detectron2::recognise(store, options);
        }
        if under("neck.") > 0 && under("backbone.") > 0 {
            return mmdetection::recognise(store, options);
        }
        if under("backbone.body.") > 0 || under("backbone.fpn.") > 0 {
            let ignored = names.len() - under("backbone.");
            let store = store.map_names("the `backbone.` of a detection model", |n| {
                n.strip_prefix("backbone.").map(torchvision::current_name)
            })?;
            return torchvision::recognise(store, ignored);
        }
        if under("body.") > 0 || under("fpn.") > 0 {
            let store =
                store.map_names("torchvision layout", |n| Some(torchvision::current_name(n)))?;
            return torchvision::recognise(store, 0);
        }
        if under("toplayer.") > 0 || under("latlayer") > 0 {
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            let config = resnet_shapes::read(
                &store,
                "",
                FpnConfig::with_blocks(infer_block_counts(&names)?),
            );
            return Ok(Checkpoint::new(store, config, 0));
        }
        Err(neither_layout(&store.origin(), &names))
    }

    fn new(store: VarStore, config: FpnConfig, ignored: usize) -> Self {
        Checkpoint {
            store,
            config,
            ignored,
            unwrapped: String::new(),
            pixels: None,
            notes: Vec::new(),
        }
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

    /// How pictures should be normalised for this network, when not as torchvision's ImageNet
    /// RGB: detectron2's `pixel_mean` / `pixel_std` (BGR, 0..255), mmdetection's per style.
    pub fn pixels(&self) -> Option<PixelNorm> {
        self.pixels
    }

    /// What was inferred or assumed beyond the names, one sentence each, for progress output:
    /// the framework, settings taken from a detector head's names, defaults used.
    pub fn notes(&self) -> &[String] {
        &self.notes
    }
}

/// The backbone stage each lateral conv reads (`laterals`: its weight's name and shape, finest
/// first), from its input channels: stages in increasing order, among `candidates`. The stem
/// and a basic-block `layer1` both have 64 channels; the stem is taken only where nothing else
/// fits (timm's `out_indices` 0..4 give five laterals).
pub(super) fn assign_stages(
    store: &VarStore,
    laterals: &[(String, Vec<usize>)],
    config: &FpnConfig,
    candidates: &[usize],
) -> Result<Vec<usize>> {
    fn search(
        cins: &[usize],
        config: &FpnConfig,
        candidates: &[usize],
        after: Option<usize>,
    ) -> Option<Vec<usize>> {
        let Some((&cin, rest)) = cins.split_first() else {
            return Some(Vec::new());
        };
        let mut order: Vec<usize> = candidates.iter().copied().filter(|&s| s > 0).collect();
        order.extend(candidates.iter().copied().filter(|&s| s == 0));
        order.into_iter().find_map(|s| {
            if after.is_some_and(|a| s <= a) || config.stage_channels(s) != cin {
                return None;
            }
            let mut tail = search(rest, config, candidates, Some(s))?;
            tail.insert(0, s);
            Some(tail)
        })
    }
    let cins: Vec<usize> = laterals
        .iter()
        .map(|(_, shape)| shape.get(1).copied().unwrap_or(0))
        .collect();
    search(&cins, config, candidates, None).ok_or_else(|| {
        let channels: Vec<String> = candidates
            .iter()
            .map(|&s| format!("C{} {}", s + 1, config.stage_channels(s)))
            .collect();
        let shapes: Vec<String> = laterals
            .iter()
            .map(|(name, shape)| format!("`{name}` {shape:?}"))
            .collect();
        weights_error(
            store,
            format!(
                "the lateral convs' input channels match no backbone levels taken from fine to                  coarse: {} against the {} backbone's levels ({})",
                shapes.join(", "),
                config.block,
                channels.join(", ")
            ),
        )
    })
}

/// The pyramid's width, from a lateral conv's weight shape (`default` when it has none).
pub(super) fn pyramid_width(lateral: &[usize], default: usize) -> usize {
    lateral
        .first()
        .copied()
        .filter(|&c| c > 0)
        .unwrap_or(default)
}

/// What RetinaNet's P6 conv `name` (of shape `shape`) reads, from its input channels: P5
/// (the pyramid's width) or the coarsest backbone level.
pub(super) fn p6_source(
    store: &VarStore,
    name: &str,
    shape: &[usize],
    config: &FpnConfig,
    top: usize,
) -> Result<ExtraSource> {
    let cin = shape.get(1).copied().unwrap_or(0);
    let c_top = config.stage_channels(top);
    if cin == config.pyramid_channels {
        Ok(ExtraSource::Output)
    } else if cin == c_top {
        Ok(ExtraSource::Input)
    } else {
        Err(weights_error(
            store,
            format!(
                "`{name}` has shape {shape:?}: RetinaNet's P6 reads P{} ({} channels) or C{}                  ({c_top} channels)",
                top + 1,
                config.pyramid_channels,
                top + 1
            ),
        ))
    }
}

pub(super) fn weights_error(store: &VarStore, problem: String) -> Error {
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
         `layer1.0.conv1.weight` and `toplayer.weight`; a torchvision one (resnet_fpn_backbone, \
         or a timm features_only ResNet with torchvision's FPN) has `body.conv1.weight` and \
         `fpn.inner_blocks.0.0.weight`, or the same under `backbone.` in a whole Faster/Mask \
         R-CNN or RetinaNet checkpoint; a detectron2 one has `backbone.bottom_up.stem.conv1.weight` \
         and `backbone.fpn_lateral2.weight`; an mmdetection one has `backbone.conv1.weight` and \
         `neck.lateral_convs.0.conv.weight`; any of these may also sit under the wrapper \
         prefixes `module.` and `_orig_mod.`."
            .to_string(),
        format!("found {found}"),
    ];
    if groups.contains_key("backbone")
        && !groups.contains_key("neck")
        && names.iter().any(|n| n.starts_with("backbone.layer1."))
    {
        problems.push(
            "this looks like an mmdetection checkpoint without an FPN neck (`backbone.layer1.*` \
             but no `neck.*`): only detectors with an FPN neck load"
                .to_string(),
        );
    }
    if classifier {
        problems.push(
            "this looks like a ResNet classifier without FPN weights: export the FPN model's \
             state_dict instead"
                .to_string(),
        );
    }
    Error::Weights { problems }
}
