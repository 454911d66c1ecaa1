//! `fpn detect`: a detector (RetinaNet v1 or v2, FCOS, Faster R-CNN v1 or v2, Mask R-CNN v1 or
//! v2) on a picture, a folder or list of pictures (`detect_images.rs`) or a tensor file, boxes
//! (and masks) out.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{ArgGroup, Args};
use fpn_wgpu::detection_output::{coco_results, draw_detections, COCO_CATEGORIES};
use fpn_wgpu::image_input::{load_image_with, ImageOptions};
use fpn_wgpu::model::{DetectorConfig, DetectorKind, RpnOptions};
use fpn_wgpu::tensor_file::read_tensors;
use fpn_wgpu::visualize::save_png;
use fpn_wgpu::{Detections, Detector, DetectorOptions, GpuContext, Precision, Tensor};
use safetensors::tensor::{Dtype, TensorView};

use crate::folder::FolderArgs;
use crate::progress::Progress;

/// The `detect` command's flags.
#[derive(Args)]
#[command(group(ArgGroup::new("source").required(true).args(["image", "images", "input"])))]
#[command(group(ArgGroup::new("picture_source").args(["image", "images"])))]
pub struct DetectArgs {
    /// A whole torchvision RetinaNet (v1 or v2) or FCOS state_dict (`backbone.` and `head.`),
    /// or Faster R-CNN or Mask R-CNN (v1 or v2: `backbone.`, `rpn.` and `roi_heads.`, with
    /// `roi_heads.mask_*` for Mask R-CNN), as safetensors or a PyTorch .pth; the kind of
    /// detector, the backbone and the number of classes are read from it. Mask R-CNN's masks
    /// go to the outputs too: as COCO RLE `segmentation`s (the pixels above 0.5) in the JSON
    /// results, laid over the drawn pictures, and as `masks.{i}` with --output. Without it: seeded random weights
    /// of a ResNet-50 RetinaNet with --num-classes classes (boxes of no meaning, for trying
    /// the pipeline).
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Classes of the random-weight detector (without --weights).
    #[arg(long, default_value_t = 91, conflicts_with = "weights")]
    num_classes: usize,
    /// A JPEG or PNG picture; RGB in 0..1 goes in, as torchvision's detectors take it.
    #[arg(long, requires = "out")]
    image: Option<PathBuf>,
    /// A folder (every .jpg, .jpeg and .png under it, recursively, in sorted order) or a text
    /// file listing pictures, one path per line. Each picture's COCO results go to
    /// OUT/REL.json, REL being its path relative to the folder (for a list: the deepest folder
    /// its pictures share), with the picture's position in the sorted list as image_id; all of
    /// them to OUT/detections.json (OUT/detections.K-of-N.json with --shard K/N).
    #[arg(long, requires = "out")]
    images: Option<PathBuf>,
    /// With --image: the folder for detections.json (COCO results) and detections.png (the
    /// boxes, and Mask R-CNN's masks, drawn on the picture). With
    /// --images: the folder the outputs go to (made if missing).
    #[arg(long, requires = "picture_source")]
    out: Option<PathBuf>,
    /// With --images: also draw each picture's boxes (and Mask R-CNN's masks), OUT/REL.png.
    #[arg(long, requires = "images")]
    pictures: bool,
    #[command(flatten)]
    folder: FolderArgs,
    /// A safetensors file holding `input`, [N, 3, H, W] float32 RGB in 0..1.
    #[arg(long, requires = "output")]
    input: Option<PathBuf>,
    /// With --input: the safetensors file for `boxes.{i}` [K, 4] float32 (x1, y1, x2, y2 in
    /// input pixels), `scores.{i}` `[K]` float32 and `labels.{i}` `[K]` int64, per picture i;
    /// Mask R-CNN adds `masks.{i}` [K, 1, H, W] float32, each detection's probabilities in the
    /// picture's pixels, as torchvision returns them.
    #[arg(long, requires = "input")]
    output: Option<PathBuf>,
    /// A text file of class names, one per line, label 0 first (91-class models get COCO's).
    #[arg(long)]
    labels: Option<PathBuf>,
    /// The shorter side pictures are resized to.
    #[arg(long, default_value_t = 800)]
    min_size: usize,
    /// The most the longer side may be after resizing.
    #[arg(long, default_value_t = 1333)]
    max_size: usize,
    /// Candidates scoring at most this are dropped [default: the detector's, as torchvision
    /// has it: RetinaNet 0.05, FCOS 0.2, Faster and Mask R-CNN 0.05 (box_score_thresh)].
    #[arg(long)]
    score_thresh: Option<f32>,
    /// IoU above which a box of a class is dropped for a better one of its class [default:
    /// RetinaNet 0.5, FCOS 0.6, Faster and Mask R-CNN 0.5 (box_nms_thresh)].
    #[arg(long)]
    nms_thresh: Option<f32>,
    /// The most detections kept per picture [default: RetinaNet 300, FCOS 100, Faster and Mask
    /// R-CNN 100 (box_detections_per_img)]. Mask R-CNN pastes a mask at the picture's size for
    /// each of these slots on the GPU: lower it for large pictures on small GPUs.
    #[arg(long)]
    detections_per_img: Option<usize>,
    /// One-stage detectors: the best candidates kept per level before NMS [default: 1000].
    #[arg(long)]
    topk_candidates: Option<usize>,
    /// Faster and Mask R-CNN: the best proposals kept per picture and level before the RPN's NMS
    /// (rpn_pre_nms_top_n_test) [default: 1000].
    #[arg(long)]
    rpn_pre_nms_top_n: Option<usize>,
    /// Faster and Mask R-CNN: the best proposals kept per picture after the RPN's NMS
    /// (rpn_post_nms_top_n_test) [default: 1000].
    #[arg(long)]
    rpn_post_nms_top_n: Option<usize>,
    /// Faster and Mask R-CNN: IoU above which a proposal is dropped for a better one of its level
    /// (rpn_nms_thresh) [default: 0.7].
    #[arg(long)]
    rpn_nms_thresh: Option<f32>,
    /// Storage of the backbone's, FPN's and heads' weights and activations: f32 (PyTorch
    /// parity) or f16 (half the memory; needs an adapter with shader-f16, see `fpn info`).
    /// Scores and boxes are f32 either way.
    #[arg(long, default_value = "f32")]
    precision: Precision,
    /// No progress or timings on stderr (errors still go there).
    #[arg(long, short)]
    quiet: bool,
}

/// Runs `fpn detect`.
pub fn detect(args: &DetectArgs) -> Result<()> {
    let progress = Progress::new(args.quiet);
    match (
        &args.image,
        &args.images,
        &args.out,
        &args.input,
        &args.output,
    ) {
        (Some(image), _, Some(out), _, _) => {
            let built = build(args, &progress)?;
            detect_image(&built, image, out, &progress)
        }
        (_, Some(images), Some(out), _, _) => crate::detect_images::run(
            images,
            out,
            args.pictures,
            &args.folder,
            || build(args, &progress),
            &progress,
        ),
        (_, _, _, Some(input), Some(output)) => {
            let built = build(args, &progress)?;
            detect_tensor(&built, input, output, &progress)
        }
        // clap's groups and `requires` rule the other combinations out.
        _ => bail!("give --image and --out, --images and --out, or --input and --output"),
    }
}

/// A detector ready to run, on its context, and its classes' names where they have any.
pub struct Built {
    pub ctx: GpuContext,
    pub detector: Detector,
    pub names: Option<Vec<String>>,
}

/// The detector the flags describe, on the adapter `GpuContext::new` picks, reported.
fn build(args: &DetectArgs, progress: &Progress) -> Result<Built> {
    // The flags not given take the detector's own defaults, known once its weights are read.
    let options = |config: &DetectorConfig| {
        let defaults = DetectorOptions::for_kind(config.kind);
        DetectorOptions {
            min_size: args.min_size,
            max_size: args.max_size,
            score_thresh: args.score_thresh.unwrap_or(defaults.score_thresh),
            nms_thresh: args.nms_thresh.unwrap_or(defaults.nms_thresh),
            detections_per_img: args
                .detections_per_img
                .unwrap_or(defaults.detections_per_img),
            topk_candidates: args.topk_candidates.unwrap_or(defaults.topk_candidates),
            rpn: RpnOptions {
                rpn_pre_nms_top_n_test: args
                    .rpn_pre_nms_top_n
                    .unwrap_or(defaults.rpn.rpn_pre_nms_top_n_test),
                rpn_post_nms_top_n_test: args
                    .rpn_post_nms_top_n
                    .unwrap_or(defaults.rpn.rpn_post_nms_top_n_test),
                rpn_nms_thresh: args.rpn_nms_thresh.unwrap_or(defaults.rpn.rpn_nms_thresh),
                ..defaults.rpn
            },
            precision: args.precision,
            ..defaults
        }
    };
    let ctx = GpuContext::new()?;
    progress.say(format_args!("adapter: {}", ctx.adapter()));
    let start = Instant::now();
    let detector = match &args.weights {
        Some(path) => Detector::from_safetensors_with(&ctx, path, options)?,
        None => {
            progress.say(format_args!(
                "no --weights: seeded random weights, the boxes mean nothing"
            ));
            let config = DetectorConfig::retinanet_resnet50(args.num_classes);
            Detector::random(&ctx, config, 0, options(&config))?
        }
    };
    check_stage_flags(args, detector.config().kind)?;
    let classes = detector.config().num_classes;
    progress.say(format_args!(
        "{} with {classes} classes ({}), built in {:.2} s",
        detector.config().kind,
        detector.origin(),
        start.elapsed().as_secs_f64()
    ));
    let names = class_names(args.labels.as_deref(), classes)?;
    Ok(Built {
        ctx,
        detector,
        names,
    })
}

/// Refuses the flags of the other family of detectors than `kind`'s: they would change
/// nothing, and a run that silently ignores a setting reads as if it had applied it.
fn check_stage_flags(args: &DetectArgs, kind: DetectorKind) -> Result<()> {
    let (given, family): (Vec<&str>, &str) = if kind.is_two_stage() {
        let given = [("--topk-candidates", args.topk_candidates.is_some())];
        (
            given.iter().filter(|g| g.1).map(|g| g.0).collect(),
            "one-stage",
        )
    } else {
        let given = [
            ("--rpn-pre-nms-top-n", args.rpn_pre_nms_top_n.is_some()),
            ("--rpn-post-nms-top-n", args.rpn_post_nms_top_n.is_some()),
            ("--rpn-nms-thresh", args.rpn_nms_thresh.is_some()),
        ];
        (
            given.iter().filter(|g| g.1).map(|g| g.0).collect(),
            "two-stage",
        )
    };
    if !given.is_empty() {
        bail!(
            "{} set{} the {family} detectors only, and the weights are a {kind}; leave {} out",
            given.join(", "),
            if given.len() == 1 { "s" } else { "" },
            if given.len() == 1 { "it" } else { "them" }
        );
    }
    Ok(())
}

/// The class names of `--labels`, or COCO's for a 91-class model, or none.
fn class_names(path: Option<&Path>, classes: usize) -> Result<Option<Vec<String>>> {
    match path {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading the labels file {}", path.display()))?;
            let names: Vec<String> = text.lines().map(|l| l.trim().to_string()).collect();
            if names.len() < classes {
                bail!(
                    "{}: {} names for a model of {classes} classes; give one per line, label 0 first",
                    path.display(),
                    names.len()
                );
            }
            Ok(Some(names))
        }
        None if classes == COCO_CATEGORIES.len() => Ok(Some(
            COCO_CATEGORIES.iter().map(|s| s.to_string()).collect(),
        )),
        None => Ok(None),
    }
}

/// Runs the detector on `pictures`, reporting the time and the counts.
fn run(detector: &Detector, pictures: &Tensor, progress: &Progress) -> Result<Vec<Detections>> {
    let start = Instant::now();
    let found = detector.detect(pictures)?;
    progress.say(format_args!(
        "detected in {:.3} s (the first run of a size builds its plan): {:?} per picture",
        start.elapsed().as_secs_f64(),
        found.iter().map(Detections::len).collect::<Vec<_>>()
    ));
    Ok(found)
}

fn detect_image(built: &Built, image: &Path, out: &Path, progress: &Progress) -> Result<()> {
    let Built {
        ctx,
        detector,
        names,
    } = built;
    let picture = load_image_with(image, &ImageOptions::detection())?;
    let (w, h) = picture.rgb.dimensions();
    let tensor = Tensor::from_slice(ctx, picture.tensor.nchw("input")?, &picture.tensor.data)?;
    progress.say(format_args!("image {}: {w}x{h}", image.display()));
    let found = run(detector, &tensor, progress)?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let results = coco_results(0, &found[0], names.as_deref());
    let json = serde_json::to_vec_pretty(&results)?;
    fpn_wgpu::atomic_file::write(&out.join("detections.json"), &json)?;
    save_png(
        &draw_detections(&picture.rgb, &found[0]),
        &out.join("detections.png"),
    )?;
    progress.say(format_args!(
        "wrote {} detections to {} and {}",
        found[0].len(),
        out.join("detections.json").display(),
        out.join("detections.png").display()
    ));
    Ok(())
}

fn detect_tensor(built: &Built, input: &Path, output: &Path, progress: &Progress) -> Result<()> {
    let Built { ctx, detector, .. } = built;
    let tensors = read_tensors(input, |_| false)?;
    let Some(x) = tensors.get("input") else {
        bail!(
            "{}: no tensor named `input` (found: {:?}); it must hold [N, 3, H, W] float32 RGB in 0..1",
            input.display(),
            tensors.keys().collect::<Vec<_>>()
        );
    };
    let shape = x
        .nchw("input")
        .with_context(|| input.display().to_string())?;
    let pictures = Tensor::from_slice(ctx, shape, &x.data)?;
    let found = run(detector, &pictures, progress)?;
    write_detections(output, &found)?;
    progress.say(format_args!("wrote {}", output.display()));
    Ok(())
}

/// Writes `boxes.{i}`, `scores.{i}` (float32) and `labels.{i}` (int64) per picture, and
/// Mask R-CNN's `masks.{i}` (float32 [K, 1, H, W]), atomically.
fn write_detections(path: &Path, found: &[Detections]) -> Result<()> {
    let mut buffers: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (i, d) in found.iter().enumerate() {
        let k = d.len();
        buffers.push((
            format!("boxes.{i}"),
            Dtype::F32,
            vec![k, 4],
            bytemuck::cast_slice(&d.boxes.concat()).to_vec(),
        ));
        buffers.push((
            format!("scores.{i}"),
            Dtype::F32,
            vec![k],
            bytemuck::cast_slice(&d.scores).to_vec(),
        ));
        buffers.push((
            format!("labels.{i}"),
            Dtype::I64,
            vec![k],
            bytemuck::cast_slice(&d.labels).to_vec(),
        ));
        if let Some(masks) = &d.masks {
            buffers.push((
                format!("masks.{i}"),
                Dtype::F32,
                masks.shape().to_vec(),
                bytemuck::cast_slice(&masks.data).to_vec(),
            ));
        }
    }
    let views: Vec<(String, TensorView<'_>)> = buffers
        .iter()
        .map(|(n, t, s, b)| Ok((n.clone(), TensorView::new(*t, s.clone(), b)?)))
        .collect::<Result<_>>()?;
    let bytes = safetensors::serialize(views, None::<HashMap<String, String>>)?;
    fpn_wgpu::atomic_file::write(path, &bytes)?;
    Ok(())
}
