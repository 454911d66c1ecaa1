//! `fpn`: run the FPN on pictures or on tensors stored as safetensors, from the command line.
//!
//! Exit status: 0 on success, 1 on a runtime error (one line on stderr saying why), 2 on a usage
//! error.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{ArgGroup, Args, Parser, Subcommand};
use fpn_wgpu::image_input::{load_image_with, ExifOrientation, ImageOptions, PixelScale};
use fpn_wgpu::model::checkpoint::LoadOptions;
use fpn_wgpu::model::{
    DetectorConfig, DetectorKind, ExtraLevels, ExtraSource, Layout, ResNetStyle, Stem,
};
use fpn_wgpu::tensor_file::{read_file, read_tensors, write_tensors, HostTensor};
use fpn_wgpu::visualize::{energy_picture, overview, save_png};
use fpn_wgpu::weights::VarStore;
use fpn_wgpu::{
    Checkpoint, Detector, Fpn, FpnConfig, FpnOptions, Fusion, GpuContext, Precision, Tensor,
};

#[derive(Parser)]
#[command(
    name = "fpn",
    version,
    about = "Feature Pyramid Network forward passes on the GPU (wgpu)",
    after_help = "Environment: WGPU_BACKEND (vulkan, metal, dx12, gl) and WGPU_ADAPTER_NAME \
                  (a substring of the adapter's name) choose the GPU; RUST_LOG=info logs more."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Which network, when no weights file says it.
#[derive(Args, Clone)]
struct NetworkArgs {
    /// Layout: seed (fpn.py: P2..P5, bilinear; the default), torchvision (resnet_fpn_backbone:
    /// P2..P6, nearest; timm's features_only ResNets), detectron2 or mmdetection. With
    /// --weights, only checked against the file's.
    #[arg(long)]
    layout: Option<String>,
    /// Backbone preset: seed (2 bottlenecks per layer), resnet18, resnet34, resnet50, resnet101,
    /// resnet152, resnext50_32x4d, resnext101_32x8d, resnext101_64x4d, wide_resnet50_2,
    /// wide_resnet101_2.
    #[arg(long, default_value = "seed", conflicts_with = "blocks")]
    preset: String,
    /// Block counts of layer1..layer4, e.g. 1,1,1,1 (bottlenecks, instead of a preset).
    #[arg(long, value_parser = parse_counts::<4>)]
    blocks: Option<[usize; 4]>,
    /// Extra levels above the backbone's: none, pool (Faster R-CNN's P6), pool:N (N max pools),
    /// p6p7 (RetinaNet, P6 from P5), p6p7-c5 (RetinaNet v2, P6 from C5), or mmdetection's N
    /// extra convs as convs:N:SOURCE, SOURCE one of on_input, on_lateral, on_output, with
    /// :relu added for relu_before_extra_convs (convs:2:on_output:relu).
    #[arg(long)]
    extra: Option<String>,
    /// The backbone layers feeding the pyramid, e.g. 2,3,4 for RetinaNet; 0 is the stem's
    /// output (timm's out_indices 0, torchvision layout only).
    #[arg(long, value_delimiter = ',')]
    returned_layers: Option<Vec<usize>>,
    /// Where the bottlenecks' stride sits: pytorch (the 3x3 conv) or caffe (the first 1x1 conv:
    /// detectron2's STRIDE_IN_1X1, its default, and mmdetection's style='caffe'). With
    /// --weights, the file's names cannot show it: this overrides the framework's default.
    #[arg(long)]
    resnet_style: Option<ResNetStyle>,
    /// The stem: plain (7x7 conv), deep (ResNet-D's three 3x3 convs, 32-32-64) or deep-tiered
    /// (24-32-64).
    #[arg(long)]
    stem: Option<Stem>,
    /// Average-pool shortcuts (ResNet-D, timm's and mmdetection's avg_down).
    #[arg(long)]
    avg_down: bool,
    /// Batch norm inside every FPN conv (torchvision's v2 detectors; detectron2's and
    /// mmdetection's norm settings), folded into the convs.
    #[arg(long)]
    fpn_norm: bool,
    /// Channels of every pyramid level.
    #[arg(long, default_value_t = fpn_wgpu::model::PYRAMID_CHANNELS)]
    pyramid_channels: usize,
    /// Channels of the input image: 3 (RGB) or 1 (grayscale; `run --image` converts the picture).
    #[arg(long, default_value_t = 3)]
    in_channels: usize,
    /// Block type, overriding the preset's: basic (ResNet-18/34) or bottleneck.
    #[arg(long)]
    block: Option<String>,
    /// Groups of the bottlenecks' 3x3 convs, overriding the preset's (ResNeXt: 32 or 64).
    #[arg(long)]
    groups: Option<usize>,
    /// Channels per group of layer1's 3x3 conv, overriding the preset's (64 for ResNet, 128 for
    /// Wide ResNet, 4 or 8 for ResNeXt).
    #[arg(long)]
    width_per_group: Option<usize>,
}

impl NetworkArgs {
    fn config(&self) -> Result<FpnConfig> {
        let layout: Layout = match &self.layout {
            Some(name) => name.parse()?,
            None => Layout::Seed,
        };
        let base = match self.blocks {
            Some(b) => FpnConfig::with_blocks(b),
            None => FpnConfig::preset(&self.preset)?,
        };
        let base = FpnConfig {
            in_channels: self.in_channels,
            block: match &self.block {
                Some(b) => b.parse()?,
                None => base.block,
            },
            groups: self.groups.unwrap_or(base.groups),
            width_per_group: self.width_per_group.unwrap_or(base.width_per_group),
            ..base
        };
        let mut config = base.with_layout(layout);
        if let Some(extra) = &self.extra {
            config.extra = extra.parse::<ExtraLevels>()?;
        }
        if let Some(layers) = &self.returned_layers {
            config.returned = [false; 5];
            for &l in layers {
                if l > 4 {
                    bail!(
                        "--returned-layers: layer {l} does not exist; choose among 0 (the stem), \
                         1, 2, 3, 4"
                    );
                }
                config.returned[l] = true;
            }
        }
        if let Some(style) = self.resnet_style {
            config.style = style;
        }
        if let Some(stem) = self.stem {
            config.stem = stem;
        }
        config.avg_down = self.avg_down;
        config.fpn_norm = self.fpn_norm;
        config.pyramid_channels = self.pyramid_channels;
        config.validate()?;
        Ok(config.trimmed())
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run the network on a picture, a folder or list of pictures, or a tensor file; write the
    /// levels (and pictures of them).
    #[command(group(ArgGroup::new("source").required(true).args(["image", "images", "input"])))]
    #[command(group(ArgGroup::new("picture_source").args(["image", "images"])))]
    Run {
        /// PyTorch state_dict (seed, torchvision/timm, detectron2 or mmdetection layout, or a
        /// whole detection model of those frameworks) as safetensors, a PyTorch .pth/.pt or a
        /// detectron2 .pkl (see `fpn convert`); the architecture is read from its names (see
        /// --resnet-style and the mmdetection flags for what names cannot show). Without it:
        /// seeded random weights of the network given by --layout and --preset.
        #[arg(long, conflicts_with_all = ["preset", "blocks", "extra", "returned_layers", "in_channels", "block", "groups", "width_per_group", "stem", "avg_down", "fpn_norm", "pyramid_channels"])]
        weights: Option<PathBuf>,
        /// A JPEG or PNG picture (any colour type). ImageNet-normalised RGB goes in (gray for a
        /// model whose conv1 takes 1 channel), or what the checkpoint says: detectron2's
        /// pixel_mean / pixel_std, mmdetection's caffe style (BGR minus its means).
        #[arg(long, requires = "out")]
        image: Option<PathBuf>,
        /// A folder (every .jpg, .jpeg and .png under it, recursively, in sorted order) or a
        /// text file listing pictures, one path per line. Each picture's levels go to
        /// OUT/REL.safetensors, REL being the picture's path relative to the folder (for a list:
        /// the deepest folder its pictures share).
        #[arg(long, requires = "out")]
        images: Option<PathBuf>,
        /// With --image or --images: downscale so that the longer side is at most this many
        /// pixels.
        #[arg(long, requires = "picture_source")]
        max_size: Option<u32>,
        /// With --image or --images: keep the pixels in their stored order, ignoring the EXIF
        /// orientation tag (as PIL's Image.open and torchvision's decode_jpeg do). By default the
        /// picture is turned as the tag says, as a viewer displays it.
        #[arg(long, requires = "picture_source")]
        keep_stored_orientation: bool,
        /// With --image: folder for pyramid.safetensors, one PNG per level and overview.png.
        /// With --images: the folder the outputs go to (made if missing).
        #[arg(long, requires = "picture_source")]
        out: Option<PathBuf>,
        /// With --images: also write each level's energy map, OUT/REL.p2.png and so on.
        #[arg(long, requires = "images")]
        pictures: bool,
        #[command(flatten)]
        folder: FolderArgs,
        /// A safetensors file holding one NCHW float tensor named `input` (N x C x H x W, C the
        /// model's input channels: 3 for RGB).
        #[arg(long, requires = "output")]
        input: Option<PathBuf>,
        /// With --input: the safetensors file to write the levels to (float32, by level name).
        #[arg(long, requires = "input")]
        output: Option<PathBuf>,
        /// Batch norm epsilon (default 1e-5; 0 for torchvision's COCO Faster R-CNN weights).
        #[arg(long)]
        bn_eps: Option<f32>,
        #[command(flatten)]
        load: LoadArgs,
        /// Keep batch norm, ReLU and residual adds as separate kernels (for debugging).
        #[arg(long)]
        unfused: bool,
        /// Storage of weights and activations: f32 (PyTorch parity) or f16 (half the memory,
        /// about 1e-3 to 2e-3 relative error; needs an adapter with shader-f16, see `fpn info`).
        /// --image and --input write the levels as float32; --images writes them in this
        /// precision.
        #[arg(long, default_value = "f32")]
        precision: Precision,
        /// No progress or timings on stderr (errors still go there).
        #[arg(long, short)]
        quiet: bool,
        #[command(flatten)]
        network: NetworkArgs,
    },
    /// List the GPU adapters wgpu sees, with the limits that matter for the FPN; with
    /// --kernels, also the kernel each op of the network runs on the adapter that would be used.
    Info {
        /// Plan the network (seeded weights) on the chosen adapter and list each op's kernel.
        #[arg(long)]
        kernels: bool,
        /// With --kernels: the input height to plan for.
        #[arg(long, default_value_t = 224, requires = "kernels")]
        height: usize,
        /// With --kernels: the input width to plan for.
        #[arg(long, default_value_t = 224, requires = "kernels")]
        width: usize,
        /// With --kernels: f32 or f16.
        #[arg(long, default_value = "f32", requires = "kernels")]
        precision: Precision,
        #[command(flatten)]
        network: NetworkArgs,
    },
    /// Print the pyramid's shapes for an input size, without running the network.
    Shapes {
        /// Input height in pixels.
        #[arg(long)]
        height: usize,
        /// Input width in pixels.
        #[arg(long)]
        width: usize,
        /// Images per batch.
        #[arg(long, default_value_t = 1)]
        batch: usize,
        #[command(flatten)]
        network: NetworkArgs,
    },
    /// Run a detector (torchvision's RetinaNet v1 or v2, FCOS, Faster R-CNN v1 or v2, or Mask
    /// R-CNN v1 or v2) on a picture, a folder or list of pictures, or a tensor file: boxes,
    /// scores and labels (and Mask R-CNN's masks), all computed on the GPU.
    Detect(detect::DetectArgs),
    /// Read a weights file and write its state_dict as safetensors (float32), which later runs
    /// read directly: a PyTorch .pth/.pt (torch.save, zip or legacy; the state_dict alone or in
    /// a checkpoint's dict, such as mmdetection's {meta, state_dict} or detectron2's {model,
    /// ...}) or a detectron2 model-zoo .pkl. Files are told apart by content, and read without
    /// running anything in them. num_batches_tracked entries are left out.
    Convert {
        /// The weights file.
        input: PathBuf,
        /// The safetensors file to write (atomically: whole or not at all).
        output: PathBuf,
    },
    /// Write deterministic seeded random weights as a safetensors state_dict.
    RandomWeights {
        /// The seed.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Output file.
        #[arg(long)]
        output: PathBuf,
        /// Write a whole detector's state_dict instead of a backbone and FPN: retinanet,
        /// retinanet_v2 or fcos (`backbone.` and `head.`: torchvision's heads, on the network
        /// the other flags describe, which needs --layout torchvision --returned-layers 2,3,4
        /// and --extra p6p7, or p6p7-c5 as torchvision's retinanet_v2 has it), fasterrcnn,
        /// fasterrcnn_v2, maskrcnn or maskrcnn_v2 (`backbone.`, `rpn.` and `roi_heads.`, Mask
        /// R-CNN's with its mask branch: --returned-layers 1,2,3,4 --extra pool, and
        /// --fpn-norm for v2 as torchvision builds it).
        #[arg(long)]
        detector: Option<String>,
        /// Classes of the detector's head (with --detector).
        #[arg(long, default_value_t = 91, requires = "detector")]
        num_classes: usize,
        /// Faster and Mask R-CNN: the width of the box head's linear layers (torchvision's
        /// representation_size).
        #[arg(long, default_value_t = fpn_wgpu::model::REPRESENTATION_SIZE, requires = "detector")]
        representation_size: usize,
        #[command(flatten)]
        network: NetworkArgs,
    },
}

mod detect;
mod detect_images;
mod folder;
mod progress;
mod run_images;

use folder::FolderArgs;
use progress::Progress;

/// mmdetection neck settings that leave no trace in the weights (with --weights).
#[derive(Args, Clone, Copy)]
struct LoadArgs {
    /// mmdetection weights: what the first extra conv reads, on_input, on_lateral or on_output
    /// (on_input shows in the shapes; the other two look alike). By default taken from the
    /// detector's head where mmdetection's configs tie it, else on_output.
    #[arg(long, requires = "weights")]
    add_extra_convs: Option<ExtraSource>,
    /// mmdetection weights: a ReLU before every extra conv but the first (true or false). By
    /// default taken from the head, else false.
    #[arg(long, requires = "weights")]
    relu_before_extra_convs: Option<bool>,
    /// mmdetection weights without extra convs: how many levels the neck outputs (the ones past
    /// the backbone's are max pools). Default 5, as in mmdetection's configs.
    #[arg(long, requires = "weights")]
    num_outs: Option<usize>,
    /// With --image or --images: the per-channel means pictures are normalised with, on 0..255
    /// values in the network's channel order, e.g. 103.53,116.28,123.675 (detectron2's
    /// MODEL.PIXEL_MEAN, mmdetection's data_preprocessor mean). Default: the checkpoint's.
    #[arg(long, requires = "weights", value_parser = parse_three)]
    pixel_mean: Option<[f32; 3]>,
    /// With --image or --images: the per-channel standard deviations, likewise (1,1,1 for
    /// caffe-style weights).
    #[arg(long, requires = "weights", value_parser = parse_three)]
    pixel_std: Option<[f32; 3]>,
    /// With --image or --images: the channel order the network takes, rgb or bgr (detectron2's
    /// INPUT.FORMAT). Default: the checkpoint's.
    #[arg(long, requires = "weights")]
    input_format: Option<InputFormat>,
}

/// A network's input channel order.
#[derive(Clone, Copy, clap::ValueEnum)]
enum InputFormat {
    Rgb,
    Bgr,
}

/// Parses `a,b,c` into three numbers.
fn parse_three(s: &str) -> Result<[f32; 3], String> {
    let values: Vec<f32> = s
        .split(',')
        .map(|p| p.trim().parse::<f32>().map_err(|e| format!("`{p}`: {e}")))
        .collect::<Result<_, _>>()?;
    values
        .try_into()
        .map_err(|v: Vec<f32>| format!("{} values given; give three, one per channel", v.len()))
}

/// What every `run` needs to build its network and report.
struct RunArgs<'a> {
    weights: Option<&'a Path>,
    load: LoadArgs,
    bn_eps: Option<f32>,
    unfused: bool,
    precision: Precision,
    network: &'a NetworkArgs,
    progress: Progress,
}

/// Builds the network `args` describe, and says how pictures should be scaled for it (as its
/// checkpoint says, or ImageNet's normalisation).
fn build_network(ctx: &GpuContext, args: &RunArgs) -> Result<(Fpn, PixelScale)> {
    let fusion = if args.unfused {
        Fusion::Unfused
    } else {
        Fusion::Fused
    };
    let mut scale = PixelScale::ImageNet;
    let (store, mut config, note) = match args.weights {
        Some(path) => {
            let options = LoadOptions {
                resnet_style: args.network.resnet_style,
                add_extra_convs: args.load.add_extra_convs,
                relu_before_extra_convs: args.load.relu_before_extra_convs,
                num_outs: args.load.num_outs,
                pixel_mean: args.load.pixel_mean,
                pixel_std: args.load.pixel_std,
                bgr: args
                    .load
                    .input_format
                    .map(|f| matches!(f, InputFormat::Bgr)),
            };
            let checkpoint = Checkpoint::open_with(path, options)?;
            for note in checkpoint.notes() {
                args.progress.say(format_args!("weights: {note}"));
            }
            if let Some(pixels) = checkpoint.pixels() {
                scale = PixelScale::Custom(pixels);
            }
            let found = checkpoint.config().layout;
            if let Some(asked) = &args.network.layout {
                let asked: Layout = asked.parse()?;
                if asked != found {
                    bail!(
                        "{}: the weights are in the {found} layout, not {asked}; drop --layout",
                        path.display()
                    );
                }
            }
            let mut ignored = match checkpoint.unwrapped_prefix() {
                "" => String::new(),
                p => format!(", wrapper prefix `{p}` taken off every name"),
            };
            if checkpoint.ignored() > 0 {
                let n = checkpoint.ignored();
                ignored.push_str(&format!(", {n} tensors outside the backbone ignored"));
            }
            let config = checkpoint.config();
            let read_as = match checkpoint.store().file_format() {
                Some(format) => format!(" ({format})"),
                None => String::new(),
            };
            (
                checkpoint.into_store(),
                config,
                format!("{}{read_as}{ignored}", path.display()),
            )
        }
        None => (
            VarStore::random(0),
            args.network.config()?,
            "seeded random weights (seed 0)".to_string(),
        ),
    };
    if let Some(eps) = args.bn_eps {
        config.bn_eps = eps;
    }
    let options = FpnOptions::default()
        .with_fusion(fusion)
        .with_precision(args.precision);
    let fpn = Fpn::with_options(ctx, &store, config, options)?;
    args.progress.say(format_args!(
        "network: {note}: {}, batch norm eps {}, {}",
        config.describe(),
        config.bn_eps,
        args.precision
    ));
    Ok((fpn, scale))
}

/// Runs the network on `input` and downloads the levels, reporting the time.
fn forward(
    ctx: &GpuContext,
    fpn: &Fpn,
    input: &HostTensor,
    progress: &Progress,
) -> Result<Vec<(String, HostTensor)>> {
    let shape = input.nchw("input")?;
    let started = Instant::now();
    let x = Tensor::from_slice(ctx, shape, &input.data)?;
    let levels = fpn.forward(&x)?.download(ctx)?;
    progress.say(format_args!(
        "forward on {shape:?}: {:.2} s (the first run of a size also builds its plan)",
        started.elapsed().as_secs_f64()
    ));
    for (name, t) in &levels {
        progress.say(format_args!("{name}: {:?}", t.shape));
    }
    Ok(levels)
}

fn run_tensor(args: &RunArgs, input: &Path, output: &Path) -> Result<()> {
    let tensors = read_tensors(input, |_| false)?;
    let Some(x) = tensors.get("input") else {
        bail!(
            "{}: no tensor named `input` (found: {:?})",
            input.display(),
            tensors.keys().collect::<Vec<_>>()
        );
    };
    x.nchw("input")
        .with_context(|| input.display().to_string())?;
    let ctx = GpuContext::new()?;
    args.progress
        .say(format_args!("adapter: {}", ctx.adapter()));
    let (fpn, _) = build_network(&ctx, args)?;
    let levels = forward(&ctx, &fpn, x, &args.progress)?;
    write_tensors(output, levels.iter().map(|(n, t)| (n.as_str(), t)))?;
    args.progress
        .say(format_args!("wrote {}", output.display()));
    Ok(())
}

fn run_image(args: &RunArgs, image: &Path, options: ImageOptions, out: &Path) -> Result<()> {
    let ctx = GpuContext::new()?;
    args.progress
        .say(format_args!("adapter: {}", ctx.adapter()));
    // The network first: its first conv says how many channels the picture becomes.
    let (fpn, scale) = build_network(&ctx, args)?;
    let options = ImageOptions {
        channels: fpn.config().in_channels,
        scale,
        ..options
    };
    let picture = load_image_with(image, &options)?;
    let (w, h) = picture.original_size;
    let orientation = match picture.orientation {
        (image::metadata::Orientation::NoTransforms, _) => String::new(),
        (tag, true) => format!(
            ", EXIF orientation {tag:?} applied (--keep-stored-orientation keeps the stored pixels)"
        ),
        (tag, false) => format!(", EXIF orientation {tag:?} ignored: stored pixels kept"),
    };
    let gray = match options.channels {
        1 => ", converted to gray",
        _ => "",
    };
    args.progress.say(format_args!(
        "image {}: {w}x{h}{orientation}{gray}, network input {:?}",
        image.display(),
        picture.tensor.shape
    ));
    let levels = forward(&ctx, &fpn, &picture.tensor, &args.progress)?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let tensors_path = out.join("pyramid.safetensors");
    write_tensors(&tensors_path, levels.iter().map(|(n, t)| (n.as_str(), t)))?;
    let mut pictures = Vec::with_capacity(levels.len());
    for (name, level) in &levels {
        let p = energy_picture(level, 0)?;
        save_png(&p, &out.join(format!("{name}.png")))?;
        pictures.push(p);
    }
    let overview_path = out.join("overview.png");
    save_png(&overview(&picture.rgb, &pictures), &overview_path)?;
    let names: Vec<&str> = levels.iter().map(|(n, _)| n.as_str()).collect();
    args.progress.say(format_args!(
        "wrote {}, {} energy maps ({}) and {}",
        tensors_path.display(),
        names.len(),
        names.join(", "),
        overview_path.display()
    ));
    Ok(())
}

/// Parses `a,b,...` into N counts.
fn parse_counts<const N: usize>(s: &str) -> Result<[usize; N], String> {
    let parts: Vec<usize> = s
        .split(',')
        .map(|p| p.trim().parse::<usize>().map_err(|e| format!("`{p}`: {e}")))
        .collect::<Result<_, _>>()?;
    <[usize; N]>::try_from(parts)
        .map_err(|p| format!("expected {N} comma-separated counts, got {}", p.len()))
}

fn random_weights(
    network: &NetworkArgs,
    detector: Option<&str>,
    (num_classes, representation): (usize, usize),
    seed: u64,
    output: &Path,
) -> Result<()> {
    let config = network.config()?;
    let dict = match detector {
        None => Fpn::random_state_dict(config, seed)?,
        Some(name) => Detector::random_state_dict(
            DetectorConfig {
                backbone: config,
                representation,
                ..DetectorConfig::resnet50(name.parse::<DetectorKind>()?, num_classes)
            },
            seed,
        )?,
    };
    write_tensors(output, dict.iter().map(|(n, t)| (n.as_str(), t)))?;
    eprintln!(
        "wrote {} tensors ({}; seed {seed}) to {}",
        dict.len(),
        config.describe(),
        output.display()
    );
    Ok(())
}

fn convert(input: &Path, output: &Path) -> Result<()> {
    let file = read_file(input, fpn_wgpu::weights::is_ignored)?;
    let tensors = &file.tensors;
    write_tensors(output, tensors.iter().map(|(n, t)| (n.as_str(), t)))?;
    eprintln!(
        "wrote {} tensors, read from {} ({}), to {} as float32",
        tensors.len(),
        input.display(),
        file.describe(),
        output.display()
    );
    Ok(())
}

fn info() -> Result<()> {
    let adapters = pollster::block_on(fpn_wgpu::gpu::requested_adapters())?;
    for (i, a) in adapters.iter().enumerate() {
        let l = &a.limits;
        println!("{i}: {}", a.summary);
        let compute = match &a.no_compute {
            None => "yes".to_string(),
            Some(why) => format!("no ({why}; not chosen by default)"),
        };
        println!(
            "   compute shaders: {}, timestamps: {}, shader-f16: {}, cooperative matrices: {}",
            compute,
            a.timestamps,
            a.shader_f16,
            match a.cooperative_matrix.is_empty() {
                true => "none".to_string(),
                false => a.cooperative_matrix.join(", "),
            }
        );
        println!(
            "   max storage binding {} MiB, max buffer {} MiB, workgroup storage {} KiB, \
             workgroups per dimension {}, invocations per workgroup {}",
            l.max_storage_buffer_binding_size >> 20,
            l.max_buffer_size >> 20,
            l.max_compute_workgroup_storage_size >> 10,
            l.max_compute_workgroups_per_dimension,
            l.max_compute_invocations_per_workgroup
        );
    }
    match std::env::var("WGPU_BACKEND") {
        Ok(b) if !b.trim().is_empty() => println!(
            "These are the adapters of WGPU_BACKEND={b}; unset it to list every backend's. \
             WGPU_ADAPTER_NAME chooses among them; by default the first that runs compute."
        ),
        _ => println!(
            "WGPU_BACKEND and WGPU_ADAPTER_NAME choose among these; by default the first that \
             runs compute."
        ),
    }
    Ok(())
}

/// Plans the network for `shape` on the adapter `GpuContext::new` picks and prints the kernel
/// of every launch, then how many launches each kernel has.
fn kernel_report(network: &NetworkArgs, shape: [usize; 4], precision: Precision) -> Result<()> {
    let ctx = GpuContext::new()?;
    let options = FpnOptions::default().with_precision(precision);
    let fpn = Fpn::with_options(&ctx, &VarStore::random(0), network.config()?, options)?;
    let plan = fpn.plan(shape)?;
    println!(
        "\nkernels on {} for {shape:?} in {precision}, values stored {:?}:",
        ctx.adapter(),
        fpn.executor().memory_format()
    );
    let mut counts: Vec<(&str, usize)> = Vec::new();
    for (node, kernel, config) in plan.launches() {
        println!("   {node:<28} {kernel:<20} {config}");
        match counts.iter_mut().find(|(k, _)| *k == kernel) {
            Some((_, c)) => *c += 1,
            None => counts.push((kernel, 1)),
        }
    }
    let summary: Vec<String> = counts.iter().map(|(k, c)| format!("{k} x{c}")).collect();
    println!(
        "   {} launches: {}",
        plan.dispatches().len(),
        summary.join(", ")
    );
    match fpn_wgpu::kernels::conv2d::coop::offered(&ctx) {
        Some(c) => println!(
            "   cooperative matrices: yes ({0}x{0}x{0} f16 -> f32, subgroup size {1}); used by f16 networks when their check passes",
            c.side, c.subgroup_size
        ),
        None => println!("   cooperative matrices: not on this device"),
    }
    Ok(())
}

fn shapes(height: usize, width: usize, batch: usize, network: &NetworkArgs) -> Result<()> {
    let config = network.config()?;
    let graph = Fpn::graph(&VarStore::random(0), config)?;
    let c = config.in_channels;
    let values = graph.shapes([batch, c, height, width])?;
    println!(
        "input [{batch}, {c}, {height}, {width}] ({} layout)",
        config.layout
    );
    for (name, v) in graph.outputs() {
        println!("{name}: {:?}", values[*v]);
    }
    Ok(())
}

/// Mesa's drivers reach libwayland while wgpu probes the adapters, and libwayland prints
/// "error: XDG_RUNTIME_DIR is invalid or not set in the environment." when the variable is
/// missing (containers, CI, ssh sessions). A command-line tool has no display server to find
/// either way; pointing the variable at an empty directory of its own keeps the probe quiet.
/// Returns that directory, to remove at exit.
#[cfg(unix)]
fn quiet_display_probe() -> Option<std::path::PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    if std::env::var_os("XDG_RUNTIME_DIR").is_some() {
        return None;
    }
    let dir = std::env::temp_dir().join(format!("fpn-runtime-{}", std::process::id()));
    std::fs::DirBuilder::new().mode(0o700).create(&dir).ok()?;
    // Still one thread: nothing reads the environment concurrently.
    std::env::set_var("XDG_RUNTIME_DIR", &dir);
    Some(dir)
}

#[cfg(not(unix))]
fn quiet_display_probe() -> Option<std::path::PathBuf> {
    None
}

fn main() -> ExitCode {
    let runtime_dir = quiet_display_probe();
    let code = run_command();
    if let Some(dir) = runtime_dir {
        let _ = std::fs::remove_dir_all(dir);
    }
    code
}

fn run_command() -> ExitCode {
    env_logger::init();
    // Not Cli::parse: it exits the process, past the cleanup in main.
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2));
        }
    };
    let result = match &cli.command {
        Command::Run {
            weights,
            image,
            images,
            max_size,
            keep_stored_orientation,
            out,
            pictures,
            folder,
            input,
            output,
            bn_eps,
            load,
            unfused,
            precision,
            quiet,
            network,
        } => {
            let args = RunArgs {
                weights: weights.as_deref(),
                load: *load,
                bn_eps: *bn_eps,
                unfused: *unfused,
                precision: *precision,
                network,
                progress: Progress::new(*quiet),
            };
            let picture_options = ImageOptions {
                max_size: *max_size,
                orientation: match keep_stored_orientation {
                    true => ExifOrientation::Ignore,
                    false => ExifOrientation::Apply,
                },
                ..ImageOptions::default()
            };
            match (image, images, out, input, output) {
                (Some(image), _, Some(out), _, _) => run_image(&args, image, picture_options, out),
                (_, Some(images), Some(out), _, _) => run_images::run(
                    &args,
                    images,
                    out,
                    &run_images::FolderOptions {
                        picture: picture_options,
                        pictures: *pictures,
                        folder: *folder,
                    },
                ),
                (_, _, _, Some(input), Some(output)) => run_tensor(&args, input, output),
                // clap's groups and `requires` rule the other combinations out.
                _ => Err(anyhow::anyhow!(
                    "give --image and --out, --images and --out, or --input and --output"
                )),
            }
        }
        Command::Info {
            kernels,
            height,
            width,
            precision,
            network,
        } => info().and_then(|()| match kernels {
            true => kernel_report(
                network,
                [1, network.in_channels, *height, *width],
                *precision,
            ),
            false => Ok(()),
        }),
        Command::Shapes {
            height,
            width,
            batch,
            network,
        } => shapes(*height, *width, *batch, network),
        Command::Detect(args) => detect::detect(args),
        Command::Convert { input, output } => convert(input, output),
        Command::RandomWeights {
            seed,
            output,
            detector,
            num_classes,
            representation_size,
            network,
        } => random_weights(
            network,
            detector.as_deref(),
            (*num_classes, *representation_size),
            *seed,
            output,
        ),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the chain of causes joined, newlines (a weights report) flattened.
            let msg = format!("{e:#}").replace('\n', " ");
            eprintln!("fpn: error: {msg}");
            ExitCode::from(1)
        }
    }
}
