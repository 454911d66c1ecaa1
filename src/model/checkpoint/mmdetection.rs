//! mmdetection's detectors with a ResNet backbone and an `FPN` neck: `backbone.*` and `neck.*`
//! of a whole model's state_dict, its heads left out. The neck's settings that leave no trace in
//! the weights are read from the head where mmdetection's shipped configs tie them to it.

use super::{assign_stages, pyramid_width, resnet_shapes, weights_error, Checkpoint, LoadOptions};
use crate::error::Result;
use crate::image_input::PixelNorm;
use crate::model::config::{Block, ExtraLevels, ExtraSource, FpnConfig, Layout, ResNetStyle};
use crate::weights::VarStore;

/// mmdetection's normalisation for caffe-style backbones: BGR in 0..255 minus the caffe means,
/// no scaling. (The pytorch style's is torchvision's ImageNet normalisation.)
const CAFFE_PIXELS: PixelNorm = PixelNorm {
    bgr: true,
    mean: [103.530, 116.280, 123.675],
    std: [1.0, 1.0, 1.0],
};

/// What a dense head's names tie the neck to in mmdetection's configs.
struct HeadConvention {
    /// The detector, for messages.
    name: &'static str,
    /// A tensor only this head has.
    marker: &'static str,
    /// `add_extra_convs` where the shapes cannot show it.
    source: ExtraSource,
    /// `relu_before_extra_convs`.
    relu: bool,
    /// Whether its configs train plain ResNets in the caffe style.
    caffe: bool,
}

/// The heads whose configs (`configs/<name>/*_r50*_fpn*.py`) all set the neck alike.
const HEADS: &[HeadConvention] = &[
    HeadConvention {
        name: "RetinaNet",
        marker: "bbox_head.retina_cls.weight",
        source: ExtraSource::Input,
        relu: false,
        caffe: false,
    },
    HeadConvention {
        name: "FCOS",
        marker: "bbox_head.conv_centerness.weight",
        source: ExtraSource::Output,
        relu: true,
        caffe: true,
    },
    HeadConvention {
        name: "ATSS",
        marker: "bbox_head.atss_cls.weight",
        source: ExtraSource::Output,
        relu: false,
        caffe: false,
    },
    HeadConvention {
        name: "GFL",
        marker: "bbox_head.gfl_cls.weight",
        source: ExtraSource::Output,
        relu: false,
        caffe: false,
    },
    HeadConvention {
        name: "VFNet",
        marker: "bbox_head.vfnet_cls.weight",
        source: ExtraSource::Output,
        relu: true,
        caffe: false,
    },
    HeadConvention {
        name: "TOOD",
        marker: "bbox_head.tood_cls.weight",
        source: ExtraSource::Output,
        relu: false,
        caffe: false,
    },
];

/// mmdetection's `num_outs` in every shipped FPN config.
const NUM_OUTS: usize = 5;

/// A refusal that says what the file looked like.
fn refuse(store: &VarStore, problem: String) -> crate::error::Error {
    weights_error(
        store,
        format!("looks like an mmdetection checkpoint, but {problem}"),
    )
}

/// Recognises mmdetection's names.
pub fn recognise(store: VarStore, options: LoadOptions) -> Result<Checkpoint> {
    let head = HEADS.iter().find(|h| store.shape_of(h.marker).is_some());
    let mut notes = vec![match head {
        Some(h) => format!(
            "looks like an mmdetection {} (`backbone.`, `neck.`, `{}`): the heads are left out",
            h.name, h.marker
        ),
        None => "looks like an mmdetection model (`backbone.`, `neck.`): any heads are left out"
            .to_string(),
    }];
    let total = store.names().len();
    let store = store.map_names("the `backbone.` and `neck.` of an mmdetection model", |n| {
        (n.starts_with("backbone.") || n.starts_with("neck.")).then(|| n.to_string())
    })?;
    let ignored = total - store.names().len();
    let blocks = resnet_shapes::block_counts(&store, Layout::MmDetection, "backbone.")
        .map_err(|e| refuse(&store, e))?;
    let base = FpnConfig {
        layout: Layout::MmDetection,
        ..FpnConfig::torchvision(blocks)
    };
    let mut config = resnet_shapes::read(&store, "backbone.", base);
    let mut laterals = Vec::new();
    while let Some(shape) = store.shape_of(&format!(
        "neck.lateral_convs.{}.conv.weight",
        laterals.len()
    )) {
        let name = format!("neck.lateral_convs.{}.conv.weight", laterals.len());
        laterals.push((name, shape.to_vec()));
    }
    if laterals.is_empty() {
        return Err(refuse(
            &store,
            "its neck is not an FPN: no `neck.lateral_convs.0.conv.weight`".to_string(),
        ));
    }
    let present = blocks.iter().filter(|&&b| b > 0).count();
    let candidates: Vec<usize> = (1..=present).collect();
    let stages = assign_stages(&store, &laterals, &config, &candidates)?;
    config.returned = [false; 5];
    for &s in &stages {
        config.returned[s] = true;
    }
    // mmdetection builds all of the backbone's stages whatever the neck reads; the ones past
    // its deepest input compute nothing the pyramid uses.
    let top = stages[stages.len() - 1];
    let unused: Vec<String> = (top + 1..=4)
        .map(|s| format!("backbone.layer{s}."))
        .collect();
    let (store, ignored) = if unused.is_empty()
        || !store
            .names()
            .iter()
            .any(|n| unused.iter().any(|u| n.starts_with(u.as_str())))
    {
        (store, ignored)
    } else {
        notes.push(format!(
            "the neck reads nothing past C{}: {} left out",
            top + 1,
            unused
                .iter()
                .map(|u| format!("`{u}*`"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        let before = store.names().len();
        let store = store.map_names("stages the neck does not read left out", |n| {
            (!unused.iter().any(|u| n.starts_with(u.as_str()))).then(|| n.to_string())
        })?;
        let dropped = before - store.names().len();
        (store, ignored + dropped)
    };
    config.fpn_norm = store
        .shape_of("neck.lateral_convs.0.bn.running_var")
        .is_some();
    if store.shape_of("neck.lateral_convs.0.gn.weight").is_some() {
        return Err(refuse(
            &store,
            "the neck's convs carry GroupNorm (`neck.lateral_convs.0.gn`), which depends on the \
             picture and cannot fold into the convs; only batch norm (`.bn`) or none loads"
                .to_string(),
        ));
    }
    config.pyramid_channels = pyramid_width(&laterals[0].1, config.pyramid_channels);
    let mut outputs = 0;
    while store
        .shape_of(&format!("neck.fpn_convs.{outputs}.conv.weight"))
        .is_some()
    {
        outputs += 1;
    }
    let n = laterals.len();
    let from_head = |what: &str| match head {
        Some(h) => format!("{what}, as mmdetection's {} configs set it", h.name),
        None => format!("{what}, mmdetection's default"),
    };
    config.extra = if outputs > n {
        let count = outputs - n;
        let first = format!("neck.fpn_convs.{n}.conv.weight");
        let cin = store
            .shape_of(&first)
            .and_then(|s| s.get(1).copied())
            .unwrap_or(0);
        let source = match options.add_extra_convs {
            Some(source) => {
                notes.push(format!("add_extra_convs='{}', as asked", source.name()));
                source
            }
            None if cin != config.pyramid_channels => {
                notes.push(format!(
                    "add_extra_convs='on_input': `{first}` reads {cin} channels, the backbone's"
                ));
                ExtraSource::Input
            }
            None => {
                let (source, why) = match head {
                    Some(h) if h.source != ExtraSource::Input => (h.source, from_head("")),
                    _ => (
                        ExtraSource::Output,
                        "; on_lateral and on_output look alike in the weights, pass \
                         --add-extra-convs on_lateral if the config says so"
                            .to_string(),
                    ),
                };
                notes.push(format!("add_extra_convs='{}'{why}", source.name()));
                source
            }
        };
        let relu = match options.relu_before_extra_convs {
            Some(relu) => {
                notes.push(format!("relu_before_extra_convs={relu}, as asked"));
                relu
            }
            None => {
                let relu = head.is_some_and(|h| h.relu);
                let what = format!("relu_before_extra_convs={relu}");
                notes.push(from_head(&what));
                relu
            }
        };
        if let Some(outs) = options.num_outs.filter(|&o| o != outputs) {
            return Err(refuse(
                &store,
                format!(
                    "num_outs {outs} was asked, but the neck has {n} lateral and {outputs} \
                     output convs: num_outs {outputs}"
                ),
            ));
        }
        ExtraLevels::Convs {
            count,
            source,
            relu,
        }
    } else {
        let outs = match options.num_outs {
            Some(outs) => {
                notes.push(format!("num_outs={outs}, as asked"));
                outs
            }
            None => {
                notes.push(format!(
                    "no extra convs: num_outs={NUM_OUTS} as in mmdetection's shipped configs, \
                     the levels past the backbone's being max pools (pass --num-outs otherwise)"
                ));
                NUM_OUTS
            }
        };
        if outs < n {
            return Err(refuse(
                &store,
                format!("num_outs {outs} is fewer than the neck's {n} levels"),
            ));
        }
        match outs - n {
            0 => ExtraLevels::None,
            pools => ExtraLevels::MaxPool(pools),
        }
    };
    config.style = match options.resnet_style {
        Some(style) => {
            notes.push(format!("ResNet style {style}, as asked"));
            style
        }
        None => match head {
            Some(h) if h.caffe && config.groups == 1 && config.block == Block::Bottleneck => {
                notes.push(from_head("style='caffe'"));
                ResNetStyle::Caffe
            }
            _ => {
                notes.push(
                    "style='pytorch', mmdetection's default (pass --resnet-style caffe for a \
                     caffe-style backbone)"
                        .to_string(),
                );
                ResNetStyle::Pytorch
            }
        },
    };
    let pixels = match config.style {
        ResNetStyle::Caffe => {
            notes.push(format!(
                "pictures go in as mmdetection's caffe style takes them: BGR values in 0..255 \
                 minus {:?}",
                CAFFE_PIXELS.mean
            ));
            Some(CAFFE_PIXELS)
        }
        ResNetStyle::Pytorch => None,
    };
    let config = FpnConfig {
        blocks: config.trimmed().blocks,
        ..config
    };
    let mut checkpoint = Checkpoint::new(store, config, ignored);
    checkpoint.pixels = pixels;
    checkpoint.notes = notes;
    Ok(checkpoint)
}
