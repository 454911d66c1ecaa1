//! detectron2's FPN backbone (`build_resnet_fpn_backbone`, `build_retinanet_resnet_fpn_backbone`):
//! a whole `GeneralizedRCNN` or `RetinaNet` state_dict (`backbone.bottom_up.*`,
//! `backbone.fpn_lateral2`, heads, and `pixel_mean` / `pixel_std` in checkpoints saved before
//! they stopped being persistent) or the backbone module's own (`bottom_up.*`).

use super::pyramid_shapes::{p6_source, pyramid_width};
use super::{refuse, resnet_shapes, Checkpoint, LoadOptions};
use crate::error::Result;
use crate::model::config::{Block, ExtraLevels, ExtraSource, FpnConfig, Layout, ResNetStyle};
use crate::model::PixelNorm;
use crate::weights::VarStore;

/// What the file looks like, for refusals.
const FRAMEWORK: &str = "a detectron2 checkpoint";

/// The checkpoint's `pixel_mean` and `pixel_std` (three values each, in the model's channel
/// order), with the order told by the mean: ImageNet's red mean is the largest and its blue the
/// smallest, so a mean that falls from first to last is RGB, one that rises is BGR. A pair
/// that is there but is not three values each is refused rather than ignored.
fn stored_pixels(store: &VarStore) -> Result<Option<PixelNorm>> {
    let (Some(mean), Some(std)) = (store.tensor("pixel_mean"), store.tensor("pixel_std")) else {
        return Ok(None);
    };
    let three = |t: &[f32]| -> Option<[f32; 3]> { t.try_into().ok() };
    let (Some(mean), Some(std)) = (three(&mean.data), three(&std.data)) else {
        return Err(refuse(
            store,
            FRAMEWORK,
            format!(
                "`pixel_mean` has shape {:?} and `pixel_std` {:?}: detectron2 stores three \
                 values each; pass the normalisation with --pixel-mean and --pixel-std",
                mean.shape, std.shape
            ),
        ));
    };
    let pixels = PixelNorm {
        bgr: mean[0] <= mean[2],
        mean,
        std,
    };
    pixels
        .validate()
        .map_err(|e| refuse(store, FRAMEWORK, format!("its {e}")))?;
    Ok(Some(pixels))
}

/// Recognises detectron2's names.
pub fn recognise(store: VarStore, options: LoadOptions) -> Result<Checkpoint> {
    let stored = stored_pixels(&store)?;
    let whole = store
        .names()
        .iter()
        .any(|n| n.starts_with("backbone.bottom_up."));
    let mut notes = vec![if whole {
        "looks like a whole detectron2 model (GeneralizedRCNN or RetinaNet): its `backbone.` is \
         read, the heads left out"
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
        .map_err(|e| refuse(&store, FRAMEWORK, e))?;
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
            return Err(refuse(
                &store,
                FRAMEWORK,
                format!(
                    "`{name}` has shape {shape:?}: it should read res{}'s {} channels; the FPN \
                     was saved with another backbone than the file's, or the file is damaged",
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
            FRAMEWORK,
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
            FRAMEWORK,
            format!(
                "`{norm}` has a weight but no running statistics: a GroupNorm FPN \
                 (MODEL.FPN.NORM \"GN\"), which depends on the picture and cannot fold into the \
                 convs; only batch norm (\"BN\", \"FrozenBN\", \"SyncBN\") or none loads"
            ),
        ));
    }
    config.pyramid_channels = pyramid_width(&lateral, config.pyramid_channels);
    let top = config.returned_stages().last().copied().unwrap_or(4);
    let p6 = "top_block.p6.weight";
    config.extra = match store.shape_of(p6) {
        Some(shape) => {
            // detectron2's RetinaNet builds its LastLevelP6P7 with in_feature "res5".
            let tie = ExtraSource::Input;
            let (source, note) = p6_source(&store, FRAMEWORK, (p6, shape), &config, top, tie)?;
            notes.extend(note);
            ExtraLevels::p6p7(source)
        }
        None => {
            notes.push(
                "no `top_block` weights: P6 is a max pool of P5 (detectron2's LastLevelMaxPool, \
                 as its Faster and Mask R-CNN have it)"
                    .to_string(),
            );
            ExtraLevels::MaxPool(1)
        }
    };
    // detectron2's MSRA ResNets put the stride in the 1x1 convs; its ResNeXt configs take
    // torchvision's weights, with the stride in the 3x3 and torchvision's deviations.
    let resnext = config.groups > 1;
    config.style = match options.resnet_style {
        Some(style) => {
            notes.push(format!("ResNet style {style}, as asked"));
            style
        }
        None if config.block == Block::Basic => ResNetStyle::Caffe,
        None if resnext => {
            notes.push(
                "a ResNeXt: the stride sits in the 3x3 convs, as detectron2's ResNeXt configs \
                 set STRIDE_IN_1X1 False (pass --resnet-style caffe otherwise)"
                    .to_string(),
            );
            ResNetStyle::Pytorch
        }
        None => {
            notes.push(
                "the stride sits in the bottlenecks' first 1x1 conv: detectron2's default \
                 STRIDE_IN_1X1, as its MSRA weights need (pass --resnet-style pytorch for \
                 weights converted from torchvision)"
                    .to_string(),
            );
            ResNetStyle::Caffe
        }
    };
    let pixels = match stored {
        Some(p) => {
            notes.push(format!(
                "pictures go in as the checkpoint's pixel_mean and pixel_std say: {}",
                p.describe()
            ));
            p
        }
        None => {
            let p = if resnext {
                PixelNorm::TORCHVISION_BGR
            } else {
                PixelNorm::CAFFE
            };
            notes.push(format!(
                "no pixel_mean / pixel_std in the file (detectron2 stopped saving them in \
                 2021): pictures go in as its {} configs set them, {} (pass --pixel-mean, \
                 --pixel-std and --input-format to match the config the model was trained with)",
                if resnext { "ResNeXt" } else { "default" },
                p.describe()
            ));
            p
        }
    };
    let mut checkpoint = Checkpoint::new(store, config.trimmed(), ignored);
    checkpoint.pixels = Some(pixels);
    checkpoint.notes = notes;
    Ok(checkpoint)
}
