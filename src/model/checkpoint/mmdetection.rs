//! mmdetection's detectors with a ResNet backbone and an `FPN` neck: `backbone.*` and `neck.*`
//! of a whole model's state_dict, its heads left out. The neck's settings that leave no trace in
//! the weights are read from the head where mmdetection's shipped configs tie them to it.

use super::pyramid_shapes::{assign_stages, pyramid_width};
use super::{refuse, resnet_shapes, Checkpoint, LoadOptions};
use crate::error::Result;
use crate::model::config::{ExtraLevels, ExtraSource, FpnConfig, Layout, ResNetStyle};
use crate::model::PixelNorm;
use crate::weights::VarStore;

/// What the file looks like, for refusals.
const FRAMEWORK: &str = "an mmdetection checkpoint";

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
    /// The means its caffe-style configs normalise with, where they are not
    /// [`PixelNorm::CAFFE`]'s.
    caffe_mean: Option<[f32; 3]>,
}

/// The heads whose configs (`configs/<name>/*_r50*_fpn*.py`) all set the neck alike.
const HEADS: &[HeadConvention] = &[
    HeadConvention {
        name: "RetinaNet",
        marker: "bbox_head.retina_cls.weight",
        source: ExtraSource::Input,
        relu: false,
        caffe_mean: None,
    },
    HeadConvention {
        name: "FCOS",
        marker: "bbox_head.conv_centerness.weight",
        source: ExtraSource::Output,
        relu: true,
        // Detectron's means, which its caffe-style FCOS configs keep.
        caffe_mean: Some([102.9801, 115.9465, 122.7717]),
    },
    HeadConvention {
        name: "ATSS",
        marker: "bbox_head.atss_cls.weight",
        source: ExtraSource::Output,
        relu: false,
        caffe_mean: None,
    },
    HeadConvention {
        name: "GFL",
        marker: "bbox_head.gfl_cls.weight",
        source: ExtraSource::Output,
        relu: false,
        caffe_mean: None,
    },
    HeadConvention {
        name: "VFNet",
        marker: "bbox_head.vfnet_cls.weight",
        source: ExtraSource::Output,
        relu: true,
        caffe_mean: None,
    },
    HeadConvention {
        name: "TOOD",
        marker: "bbox_head.tood_cls.weight",
        source: ExtraSource::Output,
        relu: false,
        caffe_mean: None,
    },
];

/// mmdetection's `num_outs` in every shipped FPN config.
const NUM_OUTS: usize = 5;

/// The lateral convs' weights, by name and shape, finest first.
fn laterals(store: &VarStore) -> Vec<(String, Vec<usize>)> {
    (0..)
        .map(|i| format!("neck.lateral_convs.{i}.conv.weight"))
        .map_while(|name| Some((store.shape_of(&name)?.to_vec(), name)))
        .map(|(shape, name)| (name, shape))
        .collect()
}

/// How many output convs (`neck.fpn_convs.{i}`) the neck has, the extra ones included.
fn outputs(store: &VarStore) -> usize {
    (0..)
        .take_while(|i| {
            store
                .shape_of(&format!("neck.fpn_convs.{i}.conv.weight"))
                .is_some()
        })
        .count()
}

/// The store without the backbone stages past `top`, which mmdetection builds whatever the
/// neck reads, and how many tensors that left out.
fn without_stages_after(
    store: VarStore,
    top: usize,
    notes: &mut Vec<String>,
) -> Result<(VarStore, usize)> {
    let unused: Vec<String> = (top + 1..=4)
        .map(|s| format!("backbone.layer{s}."))
        .collect();
    let is_unused = |n: &str| unused.iter().any(|u| n.starts_with(u.as_str()));
    let before = store.names().len();
    if !store.names().iter().any(|n| is_unused(n)) {
        return Ok((store, 0));
    }
    let listed: Vec<String> = unused.iter().map(|u| format!("`{u}*`")).collect();
    notes.push(format!(
        "the neck reads nothing past C{}: {} left out",
        top + 1,
        listed.join(", ")
    ));
    let store = store.map_names("stages the neck does not read left out", |n| {
        (!is_unused(n)).then(|| n.to_string())
    })?;
    let dropped = before - store.names().len();
    Ok((store, dropped))
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
    let mut ignored = total - store.names().len();
    let blocks = resnet_shapes::block_counts(&store, Layout::MmDetection, "backbone.")
        .map_err(|e| refuse(&store, FRAMEWORK, e))?;
    let base = FpnConfig {
        layout: Layout::MmDetection,
        ..FpnConfig::torchvision(blocks)
    };
    let mut config = resnet_shapes::read(&store, "backbone.", base);
    let laterals = laterals(&store);
    if laterals.is_empty() {
        return Err(refuse(
            &store,
            FRAMEWORK,
            "its neck is not an FPN: no `neck.lateral_convs.0.conv.weight` (only detectors with \
             an FPN neck load)"
                .to_string(),
        ));
    }
    let present = blocks.iter().filter(|&&b| b > 0).count();
    let candidates: Vec<usize> = (1..=present).collect();
    let (stages, note) = assign_stages(&store, FRAMEWORK, &laterals, &config, &candidates)?;
    notes.extend(note);
    config.returned = [false; 5];
    for &s in &stages {
        config.returned[s] = true;
    }
    let top = stages[stages.len() - 1];
    let (store, dropped) = without_stages_after(store, top, &mut notes)?;
    ignored += dropped;
    config.fpn_norm = store
        .shape_of("neck.lateral_convs.0.bn.running_var")
        .is_some();
    if store.shape_of("neck.lateral_convs.0.gn.weight").is_some() {
        return Err(refuse(
            &store,
            FRAMEWORK,
            "the neck's convs carry GroupNorm (`neck.lateral_convs.0.gn`), which depends on the \
             picture and cannot fold into the convs; only batch norm (`.bn`) or none loads"
                .to_string(),
        ));
    }
    config.pyramid_channels = pyramid_width(&laterals[0].1, config.pyramid_channels);
    let outputs = outputs(&store);
    let n = laterals.len();
    let from_head = |what: String| match head {
        Some(h) => format!("{what}, as mmdetection's {} configs set it", h.name),
        None => what,
    };
    config.extra = if outputs > n {
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
                let source = match head {
                    Some(h) if h.source != ExtraSource::Input => h.source,
                    _ => ExtraSource::Output,
                };
                let what = format!("add_extra_convs='{}'", source.name());
                notes.push(match head {
                    Some(h) if h.source == source => from_head(what),
                    _ => format!(
                        "{what}: on_lateral and on_output look alike in the weights (pass \
                         --add-extra-convs on_lateral if the config says so)"
                    ),
                });
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
                notes.push(match head {
                    Some(_) => from_head(what),
                    None => format!(
                        "{what}, mmdetection's default (pass --relu-before-extra-convs true if \
                         the config sets it)"
                    ),
                });
                relu
            }
        };
        if let Some(outs) = options.num_outs.filter(|&o| o != outputs) {
            return Err(refuse(
                &store,
                FRAMEWORK,
                format!(
                    "num_outs {outs} was asked, and the neck has {n} lateral and {outputs} \
                     output convs, so num_outs {outputs}: drop --num-outs"
                ),
            ));
        }
        ExtraLevels::Convs {
            count: outputs - n,
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
                FRAMEWORK,
                format!(
                    "num_outs {outs} is fewer than the neck's {n} levels: pass --num-outs {n} \
                     or more"
                ),
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
        None => {
            notes.push(
                "style='pytorch', mmdetection's default (pass --resnet-style caffe for a \
                 `*-caffe` config's backbone)"
                    .to_string(),
            );
            ResNetStyle::Pytorch
        }
    };
    let pixels = match config.style {
        ResNetStyle::Caffe => {
            let mean = head
                .and_then(|h| h.caffe_mean)
                .unwrap_or(PixelNorm::CAFFE.mean);
            let pixels = PixelNorm {
                mean,
                ..PixelNorm::CAFFE
            };
            notes.push(format!(
                "pictures go in as mmdetection's caffe-style configs take them: {}",
                pixels.describe()
            ));
            Some(pixels)
        }
        ResNetStyle::Pytorch => None,
    };
    let mut checkpoint = Checkpoint::new(store, config.trimmed(), ignored);
    checkpoint.pixels = pixels;
    checkpoint.notes = notes;
    Ok(checkpoint)
}
