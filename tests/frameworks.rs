//! detectron2, mmdetection, timm and torchvision-v2 checkpoints under their own names, against
//! the frameworks' own outputs. The fixtures (`tests/fixtures/make_framework_fixtures.py`) hold
//! an input and the levels each framework's modules compute (detectron2's and mmdetection's
//! rebuilt in plain torch from their sources, timm's and torchvision's themselves) for the
//! crate's seeded random weights, written by `fpn random-weights` with the flags in the
//! fixture's metadata and loaded there with a strict `load_state_dict`. Here the same weights are
//! written again, dressed as the framework saves a whole model (prefixes, head tensors,
//! `pixel_mean`), and loaded with nothing but the settings the names cannot show.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::{f16_gpu, fpn_command, gpu, max_rel_error};
use fpn_wgpu::model::checkpoint::LoadOptions;
use fpn_wgpu::model::{ExtraLevels, ExtraSource, Layout, PixelNorm, ResNetStyle};
use fpn_wgpu::tensor_file::{read_tensors, write_tensors, HostTensor, TensorMap};
use fpn_wgpu::weights::VarStore;
use fpn_wgpu::{Checkpoint, Fpn, FpnConfig, FpnOptions, Precision, Tensor};

const PARITY_TOL: f64 = 1e-4;
const F16_TOL: f64 = 1e-2;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(format!("fw_{name}.safetensors"))
}

fn metadata(path: &Path) -> BTreeMap<String, String> {
    let bytes = std::fs::read(path).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let meta = meta.metadata().clone().expect("fixture metadata");
    meta.into_iter().collect()
}

/// A tensor no loader reads: a head's weight, only its name matters.
fn head_tensor() -> HostTensor {
    HostTensor {
        shape: vec![2, 3],
        data: vec![0.25; 6],
    }
}

/// How a case's weights are dressed and loaded.
struct Case {
    name: &'static str,
    /// A prefix put before every name (a whole model's `backbone.`).
    prefix: &'static str,
    /// Tensors added beside the weights: a head's, `pixel_mean`.
    extra: Vec<(&'static str, HostTensor)>,
    /// The settings passed to the loader.
    options: LoadOptions,
    /// Phrases the loader's notes must hold (what it inferred, and from what).
    notes: &'static [&'static str],
}

/// Writes the case's weights with `fpn random-weights`, returning them and the network
/// description the command printed.
fn random_weights(meta: &BTreeMap<String, String>, dir: &Path) -> (TensorMap, String) {
    let path = dir.join("weights.safetensors");
    let out = fpn_command()
        .args(["random-weights", "--seed", &meta["seed"], "--output"])
        .arg(&path)
        .args(meta["random_weights"].split_whitespace())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    // "wrote N tensors (DESCRIPTION; seed S) to PATH"
    let description = said
        .split_once('(')
        .and_then(|(_, rest)| rest.rsplit_once("; seed"))
        .map(|(d, _)| d.to_string())
        .unwrap_or_else(|| panic!("no network description in {said:?}"));
    (read_tensors(&path, |_| false).unwrap(), description)
}

fn check(case: Case) {
    let ctx = gpu();
    let path = fixture(case.name);
    let meta = metadata(&path);
    let expected = read_tensors(&path, |_| false).unwrap();
    let input = &expected["input"];
    let x = Tensor::from_slice(ctx, input.nchw("input").unwrap(), &input.data).unwrap();
    let scratch = common::scratch("frameworks");
    let (dict, description) = random_weights(&meta, scratch.path());

    let (from, to) = meta["rename"].split_once('=').unwrap_or(("", ""));
    let mut whole = TensorMap::new();
    for (k, t) in dict {
        let k = match k.strip_prefix(from) {
            Some(rest) if !from.is_empty() => format!("{to}{rest}"),
            _ => k,
        };
        whole.insert(format!("{}{k}", case.prefix), t);
    }
    for (k, t) in case.extra {
        whole.insert(k.to_string(), t);
    }
    let file = scratch.path().join("checkpoint.safetensors");
    write_tensors(&file, whole.iter().map(|(n, t)| (n.as_str(), t))).unwrap();

    let checkpoint = Checkpoint::open_with(&file, case.options).unwrap();
    let notes = checkpoint.notes().join("\n");
    eprintln!("{}: {}\n{notes}", case.name, meta["settings"]);
    for phrase in case.notes {
        assert!(
            notes.contains(phrase),
            "{}: `{phrase}` not in\n{notes}",
            case.name
        );
    }
    let config = checkpoint.config();
    assert_eq!(
        config.describe(),
        description,
        "{}: the network recognised from the names",
        case.name
    );
    let fpn = Fpn::with_options(ctx, checkpoint.store(), config, FpnOptions::default()).unwrap();
    let levels = fpn.forward(&x).unwrap().download(ctx).unwrap();
    let names: Vec<&str> = levels.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.join(","), meta["levels"], "{}: levels", case.name);
    for (level, t) in &levels {
        let want = &expected[level];
        assert_eq!(t.shape, want.shape, "{} {level} shape", case.name);
        let err = max_rel_error(&t.data, &want.data);
        eprintln!(
            "{} {level} {:?}: max relative error {err:.2e}",
            case.name, t.shape
        );
        assert!(err <= PARITY_TOL, "{} {level}: {err:e}", case.name);
    }
    if let Some(ctx) = f16_gpu() {
        let options = FpnOptions::default().with_precision(Precision::F16);
        let half = Fpn::with_options(ctx, checkpoint.store(), config, options).unwrap();
        for (level, t) in half.forward(&x).unwrap().download(ctx).unwrap() {
            let err = max_rel_error(&t.data, &expected[&level].data);
            eprintln!("{} f16 {level}: max relative error {err:.2e}", case.name);
            assert!(err <= F16_TOL, "{} f16 {level}: {err:e}", case.name);
        }
    }
}

fn pixels(mean: [f32; 3], std: [f32; 3]) -> Vec<(&'static str, HostTensor)> {
    vec![
        (
            "pixel_mean",
            HostTensor::new(vec![3, 1, 1], mean.to_vec()).unwrap(),
        ),
        (
            "pixel_std",
            HostTensor::new(vec![3, 1, 1], std.to_vec()).unwrap(),
        ),
    ]
}

#[test]
fn detectron2_faster_rcnn_with_the_stride_in_the_1x1_convs_and_the_max_pool_p6() {
    let mut extra = pixels([103.53, 116.28, 123.675], [1.0, 1.0, 1.0]);
    extra.push(("proposal_generator.rpn_head.conv.weight", head_tensor()));
    extra.push(("roi_heads.box_predictor.cls_score.weight", head_tensor()));
    check(Case {
        name: "d2_pool",
        prefix: "backbone.",
        extra,
        options: LoadOptions::default(),
        notes: &["detectron2", "STRIDE_IN_1X1", "LastLevelMaxPool", "BGR"],
    });
}

#[test]
fn detectron2_retinanet_of_basic_blocks_with_p6_from_res5() {
    let mut extra = pixels([103.53, 116.28, 123.675], [57.375, 57.12, 58.395]);
    extra.push(("head.cls_score.weight", head_tensor()));
    check(Case {
        name: "d2_retinanet_basic",
        prefix: "backbone.",
        extra,
        options: LoadOptions::default(),
        notes: &["detectron2", "pixel_std say: BGR values in 0..255, minus [103.53, 116.28, 123.675], over [57.375, 57.12, 58.395]"],
    });
}

#[test]
fn detectron2_with_torchvision_strides_and_batch_norm_in_the_fpn() {
    // The FPN backbone module's own state_dict, as `model.backbone.state_dict()` saves it.
    check(Case {
        name: "d2_pytorch_norm",
        prefix: "",
        extra: Vec::new(),
        options: LoadOptions {
            resnet_style: Some(ResNetStyle::Pytorch),
            ..LoadOptions::default()
        },
        notes: &[
            "ResNet style pytorch, as asked",
            "no pixel_mean / pixel_std in the file",
            "--pixel-mean",
        ],
    });
}

#[test]
fn mmdetection_faster_rcnn_with_five_outputs_by_default() {
    check(Case {
        name: "mm_faster",
        prefix: "",
        extra: vec![
            ("rpn_head.rpn_conv.weight", head_tensor()),
            ("roi_head.bbox_head.fc_cls.weight", head_tensor()),
        ],
        options: LoadOptions::default(),
        notes: &["mmdetection", "num_outs=5", "style='pytorch'"],
    });
}

#[test]
fn mmdetection_retinanet_extra_convs_on_the_input_read_from_the_shapes() {
    check(Case {
        name: "mm_retinanet_caffe",
        prefix: "",
        extra: vec![("bbox_head.retina_cls.weight", head_tensor())],
        options: LoadOptions {
            resnet_style: Some(ResNetStyle::Caffe),
            ..LoadOptions::default()
        },
        notes: &[
            "add_extra_convs='on_input'",
            "relu_before_extra_convs=false",
        ],
    });
}

#[test]
fn mmdetection_fcos_neck_settings_come_from_its_head() {
    check(Case {
        name: "mm_fcos",
        prefix: "",
        extra: vec![
            ("bbox_head.conv_centerness.weight", head_tensor()),
            ("bbox_head.conv_cls.weight", head_tensor()),
        ],
        // FCOS configs train caffe-style and pytorch-style backbones alike: the style is asked.
        options: LoadOptions {
            resnet_style: Some(ResNetStyle::Caffe),
            ..LoadOptions::default()
        },
        notes: &[
            "add_extra_convs='on_output', as mmdetection's FCOS configs set it",
            "relu_before_extra_convs=true, as mmdetection's FCOS configs set it",
            "ResNet style caffe, as asked",
            "BGR values in 0..255, minus [102.9801, 115.9465, 122.7717]",
        ],
    });
}

#[test]
fn mmdetection_resnet_v1d_with_a_normed_neck_and_extra_convs_on_the_lateral() {
    check(Case {
        name: "mm_v1d_lateral",
        prefix: "",
        extra: Vec::new(),
        options: LoadOptions {
            add_extra_convs: Some(ExtraSource::Lateral),
            ..LoadOptions::default()
        },
        notes: &["add_extra_convs='on_lateral', as asked"],
    });
}

#[test]
fn timm_resnet26d_feeding_its_stem_to_the_fpn() {
    check(Case {
        name: "timm_resnet26d_stem",
        prefix: "",
        extra: Vec::new(),
        options: LoadOptions::default(),
        notes: &["C1, stride 2"],
    });
}

#[test]
fn timm_feature_getter_keeps_the_resnet_one_module_down() {
    check(Case {
        name: "timm_getter_resnet18",
        prefix: "",
        extra: Vec::new(),
        options: LoadOptions::default(),
        notes: &["`body.model.`", "C1, stride 2"],
    });
}

#[test]
fn torchvision_v2_batch_norm_in_the_fpn_and_a_128_channel_pyramid() {
    check(Case {
        name: "tv_v2_norm_w128",
        prefix: "backbone.",
        extra: vec![
            ("rpn.head.conv.0.0.weight", head_tensor()),
            ("roi_heads.box_head.0.0.weight", head_tensor()),
        ],
        options: LoadOptions::default(),
        notes: &[
            "whole torchvision detection model",
            "2 head tensors are left out",
        ],
    });
}

fn recognise(dict: TensorMap, options: LoadOptions) -> fpn_wgpu::Result<Checkpoint> {
    Checkpoint::from_store_with(VarStore::from_tensors("dict", dict), options)
}

fn refused(dict: TensorMap, options: LoadOptions) -> String {
    match recognise(dict, options) {
        Ok(c) => match Fpn::graph(c.store(), c.config()) {
            Ok(_) => panic!("loaded as {}", c.config().describe()),
            Err(e) => e.to_string(),
        },
        Err(e) => e.to_string(),
    }
}

fn layout_dict(layout: Layout, edit: impl FnOnce(&mut FpnConfig)) -> TensorMap {
    let mut config = FpnConfig::torchvision([1, 1, 1, 1]).with_layout(layout);
    edit(&mut config);
    Fpn::random_state_dict(config, 5).unwrap()
}

#[test]
fn refusals_name_the_framework_the_file_looks_like_and_the_cause() {
    let d2 = layout_dict(Layout::Detectron2, |_| {});
    let mut no_fpn = d2.clone();
    no_fpn.retain(|n, _| n.starts_with("bottom_up."));
    let msg = refused(no_fpn, LoadOptions::default());
    assert!(
        msg.contains("looks like a detectron2 checkpoint, but there is no FPN"),
        "{msg}"
    );

    // GroupNorm in the FPN: a weight and bias, no running statistics.
    let mut gn = layout_dict(Layout::Detectron2, |c| c.fpn_norm = true);
    gn.retain(|n, _| !(n.starts_with("fpn_") && n.contains(".norm.running_")));
    let msg = refused(gn, LoadOptions::default());
    assert!(
        msg.contains("GroupNorm") && msg.contains("detectron2"),
        "{msg}"
    );

    let mm = layout_dict(Layout::MmDetection, |c| c.fpn_norm = true);
    let gn: TensorMap = mm
        .iter()
        .filter(|(n, _)| !n.contains(".bn.running_"))
        .map(|(n, t)| (n.replace(".bn.", ".gn."), t.clone()))
        .collect();
    let msg = refused(gn, LoadOptions::default());
    assert!(
        msg.contains("looks like an mmdetection checkpoint, but") && msg.contains("GroupNorm"),
        "{msg}"
    );

    // Extra convs make num_outs countable: asking for another is a contradiction.
    let convs = layout_dict(Layout::MmDetection, |c| {
        c.extra = "convs:2:on_output".parse().unwrap()
    });
    let asked = LoadOptions {
        num_outs: Some(5),
        ..LoadOptions::default()
    };
    let msg = refused(convs, asked);
    assert!(
        msg.contains("num_outs 5 was asked") && msg.contains("num_outs 6"),
        "{msg}"
    );

    // A stem level outside the torchvision layout is not a network any framework saves.
    let mut config = FpnConfig::torchvision([1, 1, 1, 1]).with_layout(Layout::Detectron2);
    config.returned[0] = true;
    let msg = config.validate().unwrap_err().to_string();
    assert!(msg.contains("C1") && msg.contains("torchvision"), "{msg}");
}

#[test]
fn a_classifier_and_stages_the_neck_does_not_read_are_left_out() {
    // timm's FeatureGetterNet with prune=False keeps the classifier.
    let mut timm = layout_dict(Layout::Torchvision, |c| c.returned = [true; 5]);
    timm = timm
        .into_iter()
        .map(|(n, t)| (n.replacen("body.", "body.model.", 1), t))
        .collect();
    timm.insert("body.model.fc.weight".into(), head_tensor());
    timm.insert("body.model.fc.bias".into(), head_tensor());
    let checkpoint = recognise(timm, LoadOptions::default()).unwrap();
    assert_eq!(checkpoint.ignored(), 2);
    assert!(checkpoint.notes().join(" ").contains("`body.fc.*`"));
    assert_eq!(checkpoint.config().returned, [true; 5]);
    Fpn::graph(checkpoint.store(), checkpoint.config()).unwrap();

    // An mmdetection neck over C2..C4 of a backbone that still has layer4.
    let mut mm = layout_dict(Layout::MmDetection, |_| {});
    mm.retain(|n, _| {
        !n.starts_with("neck.lateral_convs.3.") && !n.starts_with("neck.fpn_convs.3.")
    });
    let layer4 = mm
        .keys()
        .filter(|n| n.starts_with("backbone.layer4."))
        .count();
    assert!(layer4 > 0);
    let checkpoint = recognise(mm, LoadOptions::default()).unwrap();
    assert_eq!(checkpoint.ignored(), layer4);
    assert!(checkpoint
        .notes()
        .join(" ")
        .contains("`backbone.layer4.*` left out"));
    let config = checkpoint.config();
    assert_eq!(config.returned, [false, true, true, true, false]);
    assert_eq!(
        config.extra,
        ExtraLevels::MaxPool(2),
        "num_outs 5 over 3 levels"
    );
    let graph = Fpn::graph(checkpoint.store(), config).unwrap();
    let names: Vec<&str> = graph.outputs().iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["p2", "p3", "p4", "p5", "p6"]);
}

#[test]
fn pictures_go_in_as_the_checkpoint_normalises_them() {
    use fpn_wgpu::image_input::{from_picture_with, ImageOptions, PixelScale};
    let picture = image::DynamicImage::ImageRgb8(
        image::RgbImage::from_raw(2, 1, vec![10, 20, 30, 200, 100, 0]).unwrap(),
    );
    let norm = PixelNorm {
        bgr: true,
        mean: [103.53, 116.28, 123.675],
        std: [1.0, 2.0, 4.0],
    };
    let options = ImageOptions {
        scale: PixelScale::Custom(norm),
        ..ImageOptions::default()
    };
    let t = from_picture_with(&picture, &options).unwrap().tensor;
    assert_eq!(t.shape, [1, 3, 1, 2]);
    // Channel 0 is blue, 2 is red.
    let want = [
        30.0 - 103.53,
        0.0 - 103.53,
        (20.0 - 116.28) / 2.0,
        (100.0 - 116.28) / 2.0,
        (10.0 - 123.675) / 4.0,
        (200.0 - 123.675) / 4.0,
    ];
    for (got, want) in t.data.iter().zip(want) {
        assert!((got - want).abs() < 1e-4, "{:?} against {want:?}", t.data);
    }

    // The CLI takes detectron2's from the checkpoint, says so, and the levels are those of the
    // tensor made that way.
    let scratch = common::scratch("frameworks-pixels");
    let dir = scratch.path();
    let mut dict = layout_dict(Layout::Detectron2, |_| {});
    dict = dict
        .into_iter()
        .map(|(n, t)| (format!("backbone.{n}"), t))
        .collect();
    for (k, t) in pixels([103.53, 116.28, 123.675], [57.375, 57.12, 58.395]) {
        dict.insert(k.to_string(), t);
    }
    let weights = dir.join("d2.safetensors");
    write_tensors(&weights, dict.iter().map(|(n, t)| (n.as_str(), t))).unwrap();
    let photo = dir.join("photo.png");
    let rgb = image::RgbImage::from_fn(40, 30, |x, y| {
        image::Rgb([(x * 6) as u8, (y * 8) as u8, 90])
    });
    rgb.save(&photo).unwrap();
    let out = fpn_command()
        .args(["run", "--weights"])
        .arg(&weights)
        .arg("--image")
        .arg(&photo)
        .arg("--out")
        .arg(dir.join("out"))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("pixel_std say: BGR values in 0..255"),
        "{said}"
    );
    let levels = read_tensors(&dir.join("out/pyramid.safetensors"), |_| false).unwrap();

    let checkpoint = recognise(dict, LoadOptions::default()).unwrap();
    let options = ImageOptions {
        scale: PixelScale::Custom(checkpoint.pixels().unwrap()),
        ..ImageOptions::default()
    };
    let input = from_picture_with(&image::DynamicImage::ImageRgb8(rgb), &options)
        .unwrap()
        .tensor;
    let ctx = gpu();
    let fpn = Fpn::new(
        ctx,
        checkpoint.store(),
        checkpoint.config(),
        fpn_wgpu::Fusion::Fused,
    )
    .unwrap();
    let x = Tensor::from_slice(ctx, input.nchw("input").unwrap(), &input.data).unwrap();
    for (name, t) in fpn.forward(&x).unwrap().download(ctx).unwrap() {
        let err = max_rel_error(&levels[&name].data, &t.data);
        assert!(err < 1e-5, "{name}: {err:e}");
    }
}

#[test]
fn extra_level_names_round_trip() {
    for name in [
        "none",
        "pool",
        "pool:3",
        "p6p7",
        "p6p7-c5",
        "convs:1:on_lateral",
        "convs:3:on_input:relu",
    ] {
        let extra: ExtraLevels = name.parse().unwrap();
        assert_eq!(extra.to_string(), name);
    }
    assert_eq!(
        "convs:2:on_output:relu".parse::<ExtraLevels>().unwrap(),
        ExtraLevels::p6p7(ExtraSource::Output)
    );
    for bad in [
        "pool:0",
        "convs:2",
        "convs:2:on_top",
        "convs:2:on_input:gelu",
        "p8",
    ] {
        let msg = bad.parse::<ExtraLevels>().unwrap_err().to_string();
        assert!(msg.contains("choose one of"), "{bad}: {msg}");
    }
}

#[test]
fn detect_names_the_framework_whose_heads_do_not_load_yet() {
    use fpn_wgpu::{Detector, DetectorOptions};
    let retina = |c: &mut FpnConfig| {
        c.returned = [false, false, true, true, true];
        c.extra = ExtraLevels::p6p7(ExtraSource::Input);
    };
    let mut d2: TensorMap = layout_dict(Layout::Detectron2, retina)
        .into_iter()
        .map(|(n, t)| (format!("backbone.{n}"), t))
        .collect();
    d2.insert("head.cls_score.weight".into(), head_tensor());
    let mut mm = layout_dict(Layout::MmDetection, |c| {
        retina(c);
        c.extra = "convs:2:on_input".parse().unwrap();
    });
    mm.insert("bbox_head.retina_cls.weight".into(), head_tensor());
    for (framework, dict) in [("detectron2", d2), ("mmdetection", mm)] {
        let msg = match Detector::from_tensors(gpu(), "dict", dict, DetectorOptions::default()) {
            Ok(_) => panic!("a {framework} RetinaNet loaded as torchvision's"),
            Err(e) => e.to_string(),
        };
        assert!(
            msg.contains(&format!("is a {framework} checkpoint")) && msg.contains("fpn run"),
            "{msg}"
        );
    }
}

#[test]
fn mmdetection_heads_tie_the_neck_settings_unless_asked_otherwise() {
    let dict = layout_dict(Layout::MmDetection, |c| {
        c.returned = [false, false, true, true, true];
        c.extra = "convs:2:on_output".parse().unwrap();
    });
    for (marker, relu) in [
        ("bbox_head.atss_cls.weight", false),
        ("bbox_head.gfl_cls.weight", false),
        ("bbox_head.vfnet_cls.weight", true),
        ("bbox_head.tood_cls.weight", false),
        ("bbox_head.conv_centerness.weight", true),
    ] {
        let mut with_head = dict.clone();
        with_head.insert(marker.into(), head_tensor());
        let checkpoint = recognise(with_head.clone(), LoadOptions::default()).unwrap();
        let want = ExtraLevels::Convs {
            count: 2,
            source: ExtraSource::Output,
            relu,
        };
        assert_eq!(checkpoint.config().extra, want, "{marker}");
        assert!(checkpoint.notes()[0].contains(marker), "{marker}");
        // The flags win over the head.
        let asked = LoadOptions {
            add_extra_convs: Some(ExtraSource::Lateral),
            relu_before_extra_convs: Some(!relu),
            ..LoadOptions::default()
        };
        let checkpoint = recognise(with_head, asked).unwrap();
        let want = ExtraLevels::Convs {
            count: 2,
            source: ExtraSource::Lateral,
            relu: !relu,
        };
        assert_eq!(checkpoint.config().extra, want, "{marker}, asked");
    }
    // Without a head: mmdetection's defaults, and the notes name the flags.
    let checkpoint = recognise(dict, LoadOptions::default()).unwrap();
    let notes = checkpoint.notes().join("\n");
    assert!(notes.contains("--add-extra-convs on_lateral"), "{notes}");
    assert!(notes.contains("--relu-before-extra-convs true"), "{notes}");

    // num_outs when there are no extra convs.
    let pools = layout_dict(Layout::MmDetection, |_| {});
    let asked = LoadOptions {
        num_outs: Some(7),
        ..LoadOptions::default()
    };
    let config = recognise(pools.clone(), asked).unwrap().config();
    assert_eq!(config.extra, ExtraLevels::MaxPool(3));
    let asked = LoadOptions {
        num_outs: Some(3),
        ..LoadOptions::default()
    };
    let msg = refused(pools, asked);
    assert!(msg.contains("pass --num-outs 4 or more"), "{msg}");
}

#[test]
fn caffe_style_pictures_and_detectron2_resnext_defaults() {
    // mmdetection's caffe style normalises BGR minus the caffe means; RetinaNet's keep them.
    let mut retina = layout_dict(Layout::MmDetection, |c| {
        c.returned = [false, false, true, true, true];
        c.extra = "convs:2:on_input".parse().unwrap();
    });
    retina.insert("bbox_head.retina_cls.weight".into(), head_tensor());
    let caffe = LoadOptions {
        resnet_style: Some(ResNetStyle::Caffe),
        ..LoadOptions::default()
    };
    let checkpoint = recognise(retina.clone(), caffe).unwrap();
    assert_eq!(checkpoint.pixels(), Some(PixelNorm::CAFFE));
    assert_eq!(
        recognise(retina, LoadOptions::default()).unwrap().pixels(),
        None
    );

    // detectron2's ResNeXt configs take torchvision's weights: stride in the 3x3, ImageNet's
    // deviations in BGR.
    let resnext = layout_dict(Layout::Detectron2, |c| {
        c.groups = 32;
        c.width_per_group = 4;
    });
    let checkpoint = recognise(resnext, LoadOptions::default()).unwrap();
    assert_eq!(checkpoint.config().style, ResNetStyle::Pytorch);
    assert_eq!(checkpoint.config().groups, 32);
    assert_eq!(checkpoint.pixels(), Some(PixelNorm::TORCHVISION_BGR));
    assert!(checkpoint.notes().join(" ").contains("ResNeXt"));

    // The pixels as asked, over what the checkpoint says.
    let asked = LoadOptions {
        pixel_std: Some([2.0, 2.0, 2.0]),
        bgr: Some(false),
        ..LoadOptions::default()
    };
    let d2 = layout_dict(Layout::Detectron2, |_| {});
    let pixels = recognise(d2.clone(), asked).unwrap().pixels().unwrap();
    assert_eq!(
        pixels,
        PixelNorm {
            bgr: false,
            mean: PixelNorm::CAFFE.mean,
            std: [2.0, 2.0, 2.0]
        }
    );
    let zero = LoadOptions {
        pixel_std: Some([1.0, 0.0, 1.0]),
        ..LoadOptions::default()
    };
    let msg = recognise(d2, zero).err().unwrap().to_string();
    assert!(msg.contains("positive"), "{msg}");
}

#[test]
fn any_pyramid_width_in_every_layout_and_no_huge_one() {
    for layout in [Layout::Torchvision, Layout::Detectron2, Layout::MmDetection] {
        let mut config = FpnConfig::torchvision([1, 1, 1, 1]).with_layout(layout);
        config.pyramid_channels = 96;
        config.fpn_norm = layout != Layout::Detectron2;
        let dict = Fpn::random_state_dict(config, 3).unwrap();
        let found = recognise(dict, LoadOptions::default()).unwrap().config();
        assert_eq!(found.describe(), config.describe(), "{layout}");
    }
    // A lateral 8192 wide would have the walk expect (and zero-fill) 8192 x 8192 x 9 output
    // convs: the width is not believed, and the walk reports the tensor.
    let mut dict = layout_dict(Layout::Torchvision, |_| {});
    let lateral = "fpn.inner_blocks.0.0.weight";
    dict.insert(
        lateral.into(),
        HostTensor::new(vec![8192, 256, 1, 1], vec![0.0; 8192 * 256]).unwrap(),
    );
    let checkpoint = recognise(dict, LoadOptions::default()).unwrap();
    assert_eq!(checkpoint.config().pyramid_channels, 256);
    let msg = refused_graph(&checkpoint);
    assert!(
        msg.contains(&format!("`{lateral}` has shape [8192, 256, 1, 1]")),
        "{msg}"
    );
}

fn refused_graph(checkpoint: &Checkpoint) -> String {
    match Fpn::graph(checkpoint.store(), checkpoint.config()) {
        Ok(_) => panic!("built"),
        Err(e) => e.to_string(),
    }
}
