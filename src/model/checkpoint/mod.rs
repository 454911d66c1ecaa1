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
mod pyramid_shapes;
mod resnet_shapes;
mod torchvision;

use std::collections::BTreeMap;
use std::path::Path;

use crate::error::{Error, Result};
use crate::model::config::{ExtraSource, FpnConfig, Layout, ResNetStyle};
use crate::model::PixelNorm;
use crate::weights::{infer_block_counts, VarStore};

/// Settings a checkpoint's names cannot show. `None` leaves each to what the checkpoint's other
/// names imply (a detector head that mmdetection's configs tie to it) or to the framework's
/// default; [`Checkpoint::notes`] says which was used.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LoadOptions {
    /// Where the bottlenecks' stride sits (detectron2: caffe by default, its `STRIDE_IN_1X1`,
    /// pytorch for ResNeXt as its configs have it; the others: pytorch).
    pub resnet_style: Option<ResNetStyle>,
    /// The per-channel means the network's pictures are normalised with, on 0..255 values in
    /// its channel order (detectron2's `MODEL.PIXEL_MEAN`, mmdetection's
    /// `data_preprocessor.mean`).
    pub pixel_mean: Option<[f32; 3]>,
    /// The per-channel standard deviations, likewise.
    pub pixel_std: Option<[f32; 3]>,
    /// Whether the network takes BGR (detectron2's `INPUT.FORMAT`, mmdetection's
    /// `bgr_to_rgb=False`).
    pub bgr: Option<bool>,
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
        let mut checkpoint = Self::recognise(store, options)?;
        checkpoint.apply(options)?;
        Ok(checkpoint)
    }

    /// The options the layout's own recognition did not take: the ResNet style elsewhere than
    /// detectron2 and mmdetection, the pixels, and a note for those that do not apply.
    fn apply(&mut self, options: LoadOptions) -> Result<()> {
        let layout = self.config.layout;
        let framework_reads_style = matches!(layout, Layout::Detectron2 | Layout::MmDetection);
        if let (Some(style), false) = (options.resnet_style, framework_reads_style) {
            self.config.style = style;
            self.notes.push(format!("ResNet style {style}, as asked"));
        }
        if layout != Layout::MmDetection {
            let neck = [
                options.add_extra_convs.map(|_| "add_extra_convs"),
                options
                    .relu_before_extra_convs
                    .map(|_| "relu_before_extra_convs"),
                options.num_outs.map(|_| "num_outs"),
            ];
            for name in neck.into_iter().flatten() {
                self.notes.push(format!(
                    "{name} ignored: it is a setting of mmdetection's neck, and this is a \
                     {layout} checkpoint"
                ));
            }
        }
        if options.pixel_mean.is_some() || options.pixel_std.is_some() || options.bgr.is_some() {
            let base = self.pixels.unwrap_or(PixelNorm::IMAGENET_RGB);
            let pixels = PixelNorm {
                bgr: options.bgr.unwrap_or(base.bgr),
                mean: options.pixel_mean.unwrap_or(base.mean),
                std: options.pixel_std.unwrap_or(base.std),
            };
            pixels
                .validate()
                .map_err(|e| Error::invalid("LoadOptions", e))?;
            self.notes
                .push(format!("pictures go in as asked: {}", pixels.describe()));
            self.pixels = Some(pixels);
        }
        Ok(())
    }

    /// Recognises the layout from the names; the options that layout's names cannot show are
    /// taken where they apply.
    fn recognise(store: VarStore, options: LoadOptions) -> Result<Self> {
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
            let mut checkpoint = Self::recognise(store, options)?;
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

/// A refusal that leads with what the file looked like (`framework`: "a detectron2
/// checkpoint"), then the cause.
pub(super) fn refuse(store: &VarStore, framework: &str, problem: String) -> Error {
    weights_error(store, format!("looks like {framework}, but {problem}"))
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
