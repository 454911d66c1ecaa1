//! detectron2's FPN backbone (`build_resnet_fpn_backbone`, `build_retinanet_resnet_fpn_backbone`):
//! a whole `GeneralizedRCNN` or `RetinaNet` state_dict (`backbone.bottom_up.*`,
//! `backbone.fpn_lateral2`, `pixel_mean`, heads) or the backbone module's own (`bottom_up.*`).

use super::{p6_source, pyramid_width, resnet_shapes, weights_error, Checkpoint, LoadOptions};
use crate::error::Result;
use crate::image_input::PixelNorm;
use crate::model::config::{ExtraLevels, FpnConfig, Layout, ResNetStyle};
use crate::weights::VarStore;

/// detectron2's default `MODEL.PIXEL_MEAN` and `PIXEL_STD`, in its default BGR order: what its
/// MSRA (caffe) weights take.
const DEFAULT_PIXELS: PixelNorm = PixelNorm {
    bgr: true,
    mean: [103.530, 116.280, 123.675],
    std: [1.0, 1.0, 1.0],
};

/// The checkpoint's `pixel_mean` and `pixel_std` (three values each, in the model's channel
/// order), with the order told by the mean: ImageNet's red mean is the largest and its blue the
/// smallest, so a mean that falls from first to last is RGB, one that rises is BGR.
fn stored_pixels(store: &VarStore) -> Option<PixelNorm> {
    let three =
        |name: &str| -> Option<[f32; 3]> { store.tensor(name)?.data.as_slice().try_into().ok() };
    let (mean, std) = (three("pixel_mean")?, three("pixel_std")?);
    Some(PixelNorm {
        bgr: mean[0] <= mean[2],
        mean,
        std,
    })
}

/// A refusal that says what the file looked like.
fn refuse(store: &VarStore, problem: String) -> crate::error::Error {
    weights_error(
        store,
        format!("looks like a detectron2 checkpoint, but {problem}"),
    )
}

/// Recognises detectron2's names.
pub fn recognise(store: VarStore, options: LoadOptions) -> Result<Checkpoint> {
    let stored = stored_pixels(&store);
    let whole = store
        .names()
        .iter()
        .any(|n| n.starts_with("backbone.bottom_up."));
    let mut notes = vec![if whole {
        "looks like a whole detectron2 model (GeneralizedRCNN or RetinaNet): its `backbone.` \
         is read, the heads left out"
            .to_string()
    } else {
        "looks like detectron2's FPN backbone (`bottom_up.`, `fpn_lateral*`)".to_string()
    }];
    let (store, ignored) = if whole {
        let total = store.names().len();
        let store = store.map_names("the `backbone.` of a detectron2 model", |n| {
            n.strip_prefix("backbone.").map(str::to_string)
        })?;
        let kept = store.names().len();
        (store, total - kept)
    } else {
        (store, 0)
    };
    let blocks = resnet_shapes::block_counts(&store, Layout::Detectron2, "bottom_up.")
        .map_err(|e| refuse(&store, e))?;
    let base = FpnConfig {
        layout: Layout::Detectron2,
        ..FpnConfig::torchvision(blocks)
    };
    let mut config = resnet_shapes::read(&store, "bottom_up.", base);
    let present = blocks.iter().filter(|&&b| b > 0).count();
    config.returned = [false; 5];
    let mut first_lateral = None;
    for stage in 1..=present {
        let name = format!("fpn_lateral{}.weight", stage + 1);
        let Some(shape) = store.shape_of(&name) else {
            continue;
        };
        let cin = shape.get(1).copied().unwrap_or(0);
        if cin != config.stage_channels(stage) {
            return Err(weights_error(
                &store,
                format!(
                    "`{name}` has shape {shape:?}: it should read res{}'s {} channels",
                    stage + 1,
                    config.stage_channels(stage)
                ),
            ));
        }
        config.returned[stage] = true;
        first_lateral.get_or_insert((stage, shape.to_vec()));
    }
    let Some((first, lateral)) = first_lateral else {
        return Err(refuse(
            &store,
            "there is no FPN: no `fpn_lateral{2..5}.weight` (a bare ResNet, a C4 or DC5 model, \
             has nothing to build the pyramid from; only FPN models load)"
                .to_string(),
        ));
    };
    let norm = format!("fpn_lateral{}.norm", first + 1);
    config.fpn_norm = store.shape_of(&format!("{norm}.running_var")).is_some();
    if !config.fpn_norm && store.shape_of(&format!("{norm}.weight")).is_some() {
        return Err(refuse(
            &store,
            format!(
                "`{norm}` has a weight but no running statistics: a GroupNorm FPN \
                 (MODEL.FPN.NORM \"GN\"), which depends on the picture and cannot fold into the \
                 convs; only batch norm (\"BN\", \"FrozenBN\", \"SyncBN\") or none loads"
            ),
        ));
    }
    config.pyramid_channels = pyramid_width(&lateral, config.pyramid_channels);
    let top = config.returned_stages().last().copied().unwrap_or(4);
    config.extra = match store.shape_of("top_block.p6.weight") {
        Some(shape) => ExtraLevels::p6p7(p6_source(
            &store,
            "top_block.p6.weight",
            shape,
            &config,
            top,
        )?),
        None => {
            notes.push(
                "no `top_block` weights: P6 is a max pool of P5 (detectron2's LastLevelMaxPool, \
                 as its Faster and Mask R-CNN have it)"
                    .to_string(),
            );
            ExtraLevels::MaxPool(1)
        }
    };
    config.style = match options.resnet_style {
        Some(style) => {
            notes.push(format!("ResNet style {style}, as asked"));
            style
        }
        None => {
            if config.block == crate::model::Block::Bottleneck {
                notes.push(
                    "the stride sits in the bottlenecks' first 1x1 conv: detectron2's default \
                     STRIDE_IN_1X1, as its MSRA weights need; pass --resnet-style pytorch for \
                     weights converted from torchvision"
                        .to_string(),
                );
            }
            ResNetStyle::Caffe
        }
    };
    let pixels = match stored {
        Some(p) => {
            notes.push(format!(
                "pictures go in as {} values in 0..255, minus the checkpoint's pixel_mean {:?}, \
                 over its pixel_std {:?}",
                if p.bgr { "BGR" } else { "RGB" },
                p.mean,
                p.std
            ));
            p
        }
        None => {
            notes.push(format!(
                "no pixel_mean / pixel_std in the file: pictures go in as detectron2's defaults \
                 take them, BGR values in 0..255 minus {:?}",
                DEFAULT_PIXELS.mean
            ));
            DEFAULT_PIXELS
        }
    };
    let config = FpnConfig {
        blocks: config.trimmed().blocks,
        ..config
    };
    let mut checkpoint = Checkpoint::new(store, config, ignored);
    checkpoint.pixels = Some(pixels);
    checkpoint.notes = notes;
    Ok(checkpoint)
}
