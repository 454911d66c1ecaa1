//! The detectors (RetinaNet v1 and v2, FCOS, Faster R-CNN v1 and v2) end to end against
//! torchvision's eval output (fixtures made by `tests/fixtures/make_detection_fixtures.py` and
//! `make_faster_rcnn_fixtures.py` on the crate's seeded random weights).
//!
//! The rule: every torchvision detection is matched by one of ours of the same label with an
//! IoU of at least 0.99, each coordinate within 1e-3 of the picture's longer side and the score
//! within 1e-4; only detections scoring within 1e-3 of the threshold may go unmatched, on
//! either side. With f16 activations: each matched coordinate within 1e-2 of the longer side
//! and the score within 1e-2; unmatched, besides detections within 1e-2 of the threshold, at
//! most 3% of the detections on either side: where two boxes of one label overlap above the NMS
//! threshold and score within f16's rounding of each other, NMS may keep either, and what the
//! kept one suppresses changes in turn. Faster R-CNN in f16 may leave 12% unmatched: the
//! rounding also changes a few of the RPN's proposals, and with them the detections pooled from
//! them.

mod common;

use std::path::Path;

use common::gpu;
use common::matching::{compare, Expected, Tolerance};
use common::two_stage;
use fpn_wgpu::graph::executor::Granularity;
use fpn_wgpu::kernels::conv2d::coop;
use fpn_wgpu::model::RpnOptions;
use fpn_wgpu::model::{
    DetectorConfig, DetectorKind, ExtraLevels, ExtraSource, REPRESENTATION_SIZE,
};
use fpn_wgpu::tensor::MemoryFormat;
use fpn_wgpu::tensor_file::{read_tensors, TensorMap};
use fpn_wgpu::{
    Detections, Detector, DetectorOptions, FpnConfig, GpuContext, LayoutChoice, Precision, Tensor,
};

fn check_fixture(name: &str, kind: DetectorKind) {
    check_fixture_in(gpu(), name, kind, Precision::F32, LayoutChoice::Auto);
}

/// The fixture with f16 weights and activations, where the adapter has them.
fn check_fixture_f16(name: &str, kind: DetectorKind) {
    match common::f16_gpu() {
        Some(ctx) => {
            check_fixture_in(ctx, name, kind, Precision::F16, LayoutChoice::Auto);
        }
        None => eprintln!("{name}: no shader-f16 on this adapter; the f16 detector is not run"),
    }
}

/// Runs the fixture's detector as `precision` and `layout` say and checks it against
/// torchvision's detections; returns the detector and its detections.
fn check_fixture_in(
    ctx: &GpuContext,
    name: &str,
    kind: DetectorKind,
    precision: Precision,
    layout: LayoutChoice,
) -> (Detector, Vec<Detections>) {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/{name}.safetensors"));
    let fixture = read_tensors(&path, |_| false).unwrap();
    let o = &fixture["options"].data;
    let (seed, classes) = (o[0] as u64, o[1] as usize);
    let options = DetectorOptions {
        min_size: o[2] as usize,
        max_size: o[3] as usize,
        score_thresh: o[4],
        nms_thresh: o[5],
        detections_per_img: o[6] as usize,
        topk_candidates: o[7] as usize,
        precision,
        layout,
        ..DetectorOptions::for_kind(kind)
    };
    let mut backbone = FpnConfig::torchvision([1, 1, 1, 1]);
    backbone.returned = [false, false, true, true, true];
    backbone.extra = ExtraLevels::p6p7(kind.p6_source());
    let config = DetectorConfig {
        kind,
        backbone,
        num_classes: classes,
        representation: REPRESENTATION_SIZE,
    };
    let detector = Detector::random(ctx, config, seed, options).unwrap();
    let got = check_detections(ctx, name, &fixture, &detector);
    (detector, got)
}

/// Runs `detector` on the fixture's pictures and checks its detections against torchvision's
/// by the rule for its precision; returns its detections.
fn check_detections(
    ctx: &GpuContext,
    name: &str,
    fixture: &TensorMap,
    detector: &Detector,
) -> Vec<Detections> {
    let (options, precision) = (detector.options(), detector.options().precision);
    let pictures = &fixture["pictures"];
    let shape: [usize; 4] = pictures.shape.clone().try_into().unwrap();
    let input = Tensor::from_slice(ctx, shape, &pictures.data).unwrap();
    let got = detector.detect(&input).unwrap();
    assert_eq!(got.len(), shape[0]);
    let longer = shape[2].max(shape[3]) as f32;
    for (i, det) in got.iter().enumerate() {
        let want = Expected::from_fixture(fixture, i);
        let case = format!(
            "{name} picture {i} ({precision}, {:?})",
            detector.executor().memory_format()
        );
        let mut tol = Tolerance::of(precision);
        if precision == Precision::F16 && detector.config().kind.is_two_stage() {
            // f16 moves the RPN's objectness by about 1e-3, where a thousand proposals lie
            // that close to each other: its NMS keeps a few other proposals, and each changed
            // proposal changes the detections pooled from it. Measured: at most 8 of 90.
            tol.unmatched = 0.12;
        }
        let m = compare(&case, det, &want, longer, options.score_thresh, tol);
        let (matched, box_err, score_err) = (m.pairs.len(), m.worst_box, m.worst_score);
        eprintln!(
            "{case}: {matched} of torchvision's {} detections matched ({} ours); worst box error {box_err:.2e} px, worst score error {score_err:.2e}",
            want.scores.len(),
            det.len()
        );
        assert!(matched > 0, "{case}: nothing to compare");
    }
    got
}

#[test]
fn retinanet_matches_torchvision_on_a_batch_of_two_pictures_smaller_than_min_size() {
    check_fixture("det_retinanet_batch2_70x90", DetectorKind::RetinaNet);
}

#[test]
fn retinanet_matches_torchvision_on_an_odd_picture_scaled_down() {
    check_fixture("det_retinanet_150x113", DetectorKind::RetinaNet);
}

#[test]
fn retinanet_v2_matches_torchvision_on_a_batch_of_two_pictures_smaller_than_min_size() {
    check_fixture("det_retinanet_v2_batch2_70x90", DetectorKind::RetinaNetV2);
}

#[test]
fn fcos_matches_torchvision_on_an_odd_picture_scaled_up() {
    check_fixture("det_fcos_150x113", DetectorKind::Fcos);
}

/// A Faster R-CNN fixture of `tests/fixtures/make_faster_rcnn_fixtures.py`, its weights drawn
/// again from the seed, run end to end by the detector in `precision`.
fn check_faster_rcnn_in(ctx: &GpuContext, name: &str, kind: DetectorKind, precision: Precision) {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/{name}.safetensors"));
    let fixture = read_tensors(&path, |_| false).unwrap();
    let detector = two_stage::detector(ctx, &fixture, kind, precision);
    check_detections(ctx, name, &fixture, &detector);
}

#[test]
fn faster_rcnn_matches_torchvision_on_a_batch_of_two_pictures_smaller_than_min_size() {
    check_faster_rcnn_in(
        gpu(),
        "frcnn_v1_batch2_69x91",
        DetectorKind::FasterRcnn,
        Precision::F32,
    );
}

#[test]
fn faster_rcnn_v2_matches_torchvision_on_a_batch_of_two_odd_pictures_scaled_down() {
    check_faster_rcnn_in(
        gpu(),
        "frcnn_v2_batch2_131x97",
        DetectorKind::FasterRcnnV2,
        Precision::F32,
    );
}

#[test]
fn faster_rcnn_matches_torchvision_with_f16_activations() {
    let Some(ctx) = common::f16_gpu() else {
        eprintln!("no shader-f16 on this adapter; the f16 Faster R-CNN is not run");
        return;
    };
    check_faster_rcnn_in(
        ctx,
        "frcnn_v1_batch2_69x91",
        DetectorKind::FasterRcnn,
        Precision::F16,
    );
    check_faster_rcnn_in(
        ctx,
        "frcnn_v2_batch2_131x97",
        DetectorKind::FasterRcnnV2,
        Precision::F16,
    );
}

#[test]
fn every_kind_matches_torchvision_with_f16_activations() {
    check_fixture_f16("det_retinanet_batch2_70x90", DetectorKind::RetinaNet);
    check_fixture_f16("det_retinanet_150x113", DetectorKind::RetinaNet);
    check_fixture_f16("det_retinanet_v2_batch2_70x90", DetectorKind::RetinaNetV2);
    check_fixture_f16("det_fcos_150x113", DetectorKind::Fcos);
}

/// Fixtures with the activations channels-last, each against torchvision's detections by the
/// rule above: a fixture of each kind in f16 (on cooperative matrices where `coop::verified`
/// holds, else the portable direct kernel), a batch and an odd picture in f32 (the portable
/// kernel: cooperative matrices take f16; RetinaNet v2 adds only group norm, whose
/// channels-last kernel `tests/group_norm.rs` checks). The NCHW runs are the tests above.
#[test]
fn every_kind_matches_torchvision_channels_last() {
    let fixtures = [
        ("det_retinanet_batch2_70x90", DetectorKind::RetinaNet),
        ("det_retinanet_v2_batch2_70x90", DetectorKind::RetinaNetV2),
        ("det_fcos_150x113", DetectorKind::Fcos),
    ];
    // Its own context: the portable kernel's f32 forwards are long on llvmpipe over GL (see
    // common::own_gpu).
    let ctx = &common::own_gpu();
    let mut precisions = vec![Precision::F32];
    if ctx.supports_f16() {
        precisions.push(Precision::F16);
    } else {
        // common::f16_gpu checks that such an adapter refuses f16 with the reason.
        assert!(common::f16_gpu().is_none());
        eprintln!("no shader-f16 on this adapter; the f16 detectors are not run");
    }
    for precision in precisions {
        let coop = precision == Precision::F16 && coop::verified(ctx);
        for (name, kind) in fixtures {
            if precision == Precision::F32 && kind == DetectorKind::RetinaNetV2 {
                continue;
            }
            let (cl, _) = check_fixture_in(ctx, name, kind, precision, LayoutChoice::ChannelsLast);
            let ex = cl.executor();
            assert_eq!(ex.memory_format(), MemoryFormat::ChannelsLast, "{name}");
            assert_eq!(ex.cooperative(), coop, "{name} ({precision})");
        }
    }
}

/// With f16 activations and the default layout, a detector runs channels-last with every
/// convolution on cooperative matrices where `coop::verified` holds (as the FPN does), NCHW on
/// the direct kernels elsewhere; its rows come back as NCHW f32 records either way.
#[test]
fn f16_detectors_run_every_convolution_on_cooperative_matrices_where_verified() {
    let Some(ctx) = common::f16_gpu() else {
        eprintln!("no shader-f16 on this adapter; the f16 detectors are not run");
        return;
    };
    let verified = coop::verified(ctx);
    // The two-stage graphs' linear layers and box candidates have NCHW kernels only.
    for kind in DetectorKind::ALL.into_iter().filter(|k| !k.is_two_stage()) {
        let mut backbone = FpnConfig::torchvision([1, 1, 1, 1]);
        backbone.returned = [false, false, true, true, true];
        backbone.extra = ExtraLevels::p6p7(kind.p6_source());
        let config = DetectorConfig {
            kind,
            backbone,
            num_classes: 3,
            representation: REPRESENTATION_SIZE,
        };
        let options = DetectorOptions {
            min_size: 64,
            max_size: 96,
            ..DetectorOptions::for_kind(kind).with_precision(Precision::F16)
        };
        let detector = Detector::random(ctx, config, 3, options).unwrap();
        let ex = detector.executor();
        let want = if verified {
            MemoryFormat::ChannelsLast
        } else {
            MemoryFormat::Nchw
        };
        assert_eq!(ex.memory_format(), want, "{kind}");
        assert_eq!(ex.cooperative(), verified, "{kind}");
        let plan = ex.plan([2, 3, 50, 70]).unwrap();
        let convs: Vec<&str> = plan
            .kernels()
            .into_iter()
            .map(|(_, k)| k)
            .filter(|k| k.starts_with("conv2d"))
            .collect();
        assert!(!convs.is_empty());
        for k in &convs {
            assert_eq!(k.starts_with("conv2d_coop"), verified, "{kind}: {convs:?}");
        }
        let x = Tensor::from_slice(ctx, [2, 3, 50, 70], &vec![0.4; 2 * 3 * 50 * 70]).unwrap();
        let rows = detector.forward(&x).unwrap();
        assert_eq!(rows.memory_format(), MemoryFormat::Nchw);
        assert_eq!(rows.precision(), Precision::F32);
        eprintln!(
            "{kind} f16: {:?}, {} launches, {} convolutions on {}",
            ex.memory_format(),
            plan.dispatches().len(),
            convs.len(),
            if verified {
                "cooperative matrices"
            } else {
                "the direct kernels"
            }
        );
    }
}

/// With f16 activations, the two-stage detectors stay NCHW, but their box head's linear layers
/// run on cooperative matrices where `coop::verified` holds (each at least one matrix wide,
/// which nine classes make the predictor), on the tiled GEMM elsewhere.
#[test]
fn two_stage_detectors_run_their_linear_layers_on_cooperative_matrices_where_verified() {
    let Some(ctx) = common::f16_gpu() else {
        eprintln!("no shader-f16 on this adapter; the f16 detectors are not run");
        return;
    };
    let verified = coop::verified(ctx);
    for kind in [DetectorKind::FasterRcnn, DetectorKind::FasterRcnnV2] {
        let options = DetectorOptions {
            min_size: 64,
            max_size: 96,
            ..DetectorOptions::for_kind(kind).with_precision(Precision::F16)
        };
        let detector = Detector::random(ctx, two_stage::config(kind, 9, 32), 3, options).unwrap();
        assert_eq!(detector.executor().memory_format(), MemoryFormat::Nchw);
        let plan = detector.executor().plan([1, 3, 50, 70]).unwrap();
        let linear: Vec<&str> = plan
            .kernels()
            .into_iter()
            .map(|(_, k)| k)
            .filter(|k| k.starts_with("linear"))
            .collect();
        assert!(linear.len() >= 3, "{kind}: {linear:?}");
        for k in &linear {
            assert_eq!(*k == "linear_coop", verified, "{kind}: {linear:?}");
        }
        eprintln!("{kind} f16: linear layers on {linear:?}");
    }
}

/// A checkpoint of each kind, written by `random_state_dict`, is recognised from its names and
/// shapes (kind, classes, where P6 comes from) and runs exactly as the random detector does.
#[test]
fn checkpoints_of_every_kind_are_recognised_and_run_as_their_random_twin() {
    let ctx = gpu();
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/det_retinanet_v2_batch2_70x90.safetensors");
    let fixture = read_tensors(&path, |_| false).unwrap();
    let pictures = &fixture["pictures"];
    let shape: [usize; 4] = pictures.shape.clone().try_into().unwrap();
    let input = Tensor::from_slice(ctx, shape, &pictures.data).unwrap();
    for (kind, classes) in [
        (DetectorKind::RetinaNet, 2),
        (DetectorKind::RetinaNetV2, 4),
        (DetectorKind::Fcos, 3),
    ] {
        let mut backbone = FpnConfig::torchvision([1, 1, 1, 1]);
        backbone.returned = [false, false, true, true, true];
        backbone.extra = ExtraLevels::p6p7(kind.p6_source());
        let config = DetectorConfig {
            kind,
            backbone,
            num_classes: classes,
            representation: REPRESENTATION_SIZE,
        };
        let options = DetectorOptions {
            min_size: 64,
            max_size: 96,
            ..DetectorOptions::for_kind(kind)
        };
        let dict = Detector::random_state_dict(config, 7).unwrap();
        let loaded = Detector::from_tensors_with(ctx, "a state_dict", dict, |c| DetectorOptions {
            min_size: 64,
            max_size: 96,
            ..DetectorOptions::for_kind(c.kind)
        })
        .unwrap();
        assert_eq!(loaded.config(), &config, "{kind}");
        assert_eq!(loaded.options(), &options, "{kind}");
        let random = Detector::random(ctx, config, 7, options).unwrap();
        let (got, want) = (
            loaded.detect(&input).unwrap(),
            random.detect(&input).unwrap(),
        );
        assert!(want.iter().any(|d| !d.is_empty()), "{kind}: no detections");
        assert_eq!(got, want, "{kind}");
    }
}

#[test]
fn each_kind_has_torchvision_s_defaults() {
    let fcos = DetectorOptions::for_kind(DetectorKind::Fcos);
    assert_eq!(
        (
            fcos.score_thresh,
            fcos.nms_thresh,
            fcos.detections_per_img,
            fcos.topk_candidates
        ),
        (0.2, 0.6, 100, 1000)
    );
    for kind in [DetectorKind::RetinaNet, DetectorKind::RetinaNetV2] {
        assert_eq!(DetectorOptions::for_kind(kind), DetectorOptions::default());
    }
    // FasterRCNN's constructor: box_score_thresh, box_nms_thresh, box_detections_per_img and
    // the RPN's test-time settings; MaskRCNN's passes them on.
    for kind in [
        DetectorKind::FasterRcnn,
        DetectorKind::FasterRcnnV2,
        DetectorKind::MaskRcnn,
        DetectorKind::MaskRcnnV2,
    ] {
        let o = DetectorOptions::for_kind(kind);
        assert_eq!(
            (o.min_size, o.max_size, o.score_thresh, o.nms_thresh),
            (800, 1333, 0.05, 0.5)
        );
        assert_eq!(o.detections_per_img, 100);
        let rpn = o.rpn;
        assert_eq!(
            (
                rpn.rpn_pre_nms_top_n_test,
                rpn.rpn_post_nms_top_n_test,
                rpn.rpn_nms_thresh,
                rpn.rpn_score_thresh
            ),
            (1000, 1000, 0.7, 0.0)
        );
        assert!(kind.is_two_stage());
    }
    for kind in DetectorKind::ALL {
        assert_eq!(kind.name().parse::<DetectorKind>().unwrap(), kind);
    }
    let e = "yolo".parse::<DetectorKind>().unwrap_err().to_string();
    assert!(
        e.contains("retinanet_v2")
            && e.contains("fcos")
            && e.contains("fasterrcnn_v2")
            && e.contains("maskrcnn_v2"),
        "{e}"
    );
}

/// The normalised heads (RetinaNet v2, FCOS) run each layer once over all five levels: per
/// branch, the convolutions, the group norm's two launches per hidden layer (which zero the
/// gaps between the levels and write the next convolution's zero border) and the first
/// layer's padding; whatever the batch.
#[test]
fn normalised_heads_run_each_layer_once_over_all_levels() {
    for kind in [DetectorKind::RetinaNetV2, DetectorKind::Fcos] {
        let mut backbone = FpnConfig::torchvision([1, 1, 1, 1]);
        backbone.returned = [false, false, true, true, true];
        backbone.extra = ExtraLevels::p6p7(kind.p6_source());
        let config = DetectorConfig {
            kind,
            backbone,
            num_classes: 3,
            representation: REPRESENTATION_SIZE,
        };
        let options = DetectorOptions {
            min_size: 64,
            max_size: 96,
            ..DetectorOptions::for_kind(kind)
        };
        let detector = Detector::random(gpu(), config, 3, options).unwrap();
        for batch in [1, 3] {
            let plan = detector.executor().plan([batch, 3, 50, 70]).unwrap();
            let groups = plan.groups(Granularity::Stages);
            for head in ["classification head", "regression head"] {
                let (_, range) = groups.iter().find(|(stage, _)| stage == head).unwrap();
                let kinds: Vec<&str> = plan.dispatches()[range.clone()]
                    .iter()
                    .map(|d| d.label())
                    .collect();
                let count = |k: &str| kinds.iter().filter(|&&x| x.starts_with(k)).count();
                // FCOS's regression branch ends in two convolutions: distances and centerness.
                let convs = if kind == DetectorKind::Fcos && head == "regression head" {
                    6
                } else {
                    5
                };
                assert_eq!(
                    (
                        kinds.len(),
                        count("conv2d"),
                        count("group_norm_stats"),
                        count("group_norm_apply"),
                        count("pad2d")
                    ),
                    (convs + 9, convs, 4, 4, 1),
                    "{kind} {head}, batch {batch}: {kinds:?}"
                );
            }
        }
    }
}

/// Each head layer is one launch over all five levels: per branch, 5 convolutions, the 4 masks
/// that zero the gaps between the levels (writing the next convolution's zero border too) and
/// the first layer's padding; whatever the batch.
#[test]
fn heads_run_each_layer_once_over_all_levels() {
    let mut backbone = FpnConfig::torchvision([1, 1, 1, 1]);
    backbone.returned = [false, false, true, true, true];
    backbone.extra = ExtraLevels::p6p7(ExtraSource::Output);
    let config = DetectorConfig {
        backbone,
        ..DetectorConfig::retinanet_resnet50(4)
    };
    let options = DetectorOptions {
        min_size: 64,
        max_size: 96,
        ..DetectorOptions::default()
    };
    let detector = Detector::random(gpu(), config, 3, options).unwrap();
    assert!(detector
        .executor()
        .passes_applied()
        .contains(&"pad_into_mask"));
    for batch in [1, 3] {
        let plan = detector.executor().plan([batch, 3, 50, 70]).unwrap();
        let groups = plan.groups(Granularity::Stages);
        for head in ["classification head", "regression head"] {
            let (_, range) = groups.iter().find(|(stage, _)| stage == head).unwrap();
            let kinds: Vec<&str> = plan.dispatches()[range.clone()]
                .iter()
                .map(|d| d.label())
                .collect();
            let count = |k: &str| kinds.iter().filter(|&&x| x.starts_with(k)).count();
            assert_eq!(
                (
                    kinds.len(),
                    count("conv2d"),
                    count("mask_levels"),
                    count("pad2d")
                ),
                (10, 5, 4, 1),
                "{head}, batch {batch}: {kinds:?}"
            );
        }
    }
}

/// A RetinaNet state_dict whose head layers carry the names of torchvision before its v2 of
/// the head (`conv.{2i}.weight` for `conv.{i}.0.weight`) loads, as torchvision's own loader
/// renames them, and runs as the same weights under today's names.
#[test]
fn retinanet_heads_saved_under_old_names_load() {
    let ctx = gpu();
    let mut backbone = FpnConfig::torchvision([1, 1, 1, 1]);
    backbone.returned = [false, false, true, true, true];
    backbone.extra = ExtraLevels::p6p7(ExtraSource::Output);
    let config = DetectorConfig {
        backbone,
        ..DetectorConfig::retinanet_resnet50(3)
    };
    let options = DetectorOptions {
        min_size: 64,
        max_size: 96,
        score_thresh: 0.6,
        ..DetectorOptions::default()
    };
    let dict = Detector::random_state_dict(config, 11).unwrap();
    let old: fpn_wgpu::tensor_file::TensorMap = dict
        .into_iter()
        .map(|(name, t)| {
            let mut renamed = name.clone();
            for branch in ["classification_head", "regression_head"] {
                for i in 0..4 {
                    for kind in ["weight", "bias"] {
                        if name == format!("head.{branch}.conv.{i}.0.{kind}") {
                            renamed = format!("head.{branch}.conv.{}.{kind}", 2 * i);
                        }
                    }
                }
            }
            (renamed, t)
        })
        .collect();
    assert!(old.contains_key("head.regression_head.conv.6.bias"));
    let loaded = Detector::from_tensors(ctx, "an old state_dict", old, options).unwrap();
    let twin = Detector::random(ctx, config, 11, options).unwrap();
    let x = Tensor::from_slice(ctx, [1, 3, 50, 70], &vec![0.4; 3 * 50 * 70]).unwrap();
    let (a, b) = (loaded.detect(&x).unwrap(), twin.detect(&x).unwrap());
    assert!(!b[0].is_empty());
    assert_eq!(a, b);
}

/// Faster R-CNN options for small pictures and few proposals.
fn small_faster_rcnn_options(kind: DetectorKind) -> DetectorOptions {
    DetectorOptions {
        min_size: 64,
        max_size: 96,
        rpn: RpnOptions {
            rpn_pre_nms_top_n_test: 200,
            rpn_post_nms_top_n_test: 100,
            ..RpnOptions::default()
        },
        ..DetectorOptions::for_kind(kind)
    }
}

fn load_error(dict: TensorMap, kind: DetectorKind) -> String {
    match Detector::from_tensors(gpu(), "a state_dict", dict, small_faster_rcnn_options(kind)) {
        Ok(_) => panic!("a state_dict that does not fit was loaded"),
        Err(e) => e.to_string(),
    }
}

/// Faster R-CNN state_dicts of both versions, as `random_state_dict` writes them under
/// torchvision's names, are recognised (kind, classes, representation size, the FPN's norm) and
/// run as their random twin; v1's RPN conv under its name before torchvision's v2 of
/// `RPNHead` (`rpn.head.conv.weight`) loads, as torchvision renames it.
#[test]
fn faster_rcnn_checkpoints_are_recognised_and_run_as_their_random_twin() {
    let ctx = gpu();
    let shape = [1, 3, 50, 70];
    let data = fpn_wgpu::rng::SplitMix64::new(4).vec(shape.iter().product(), 0.0, 1.0);
    let input = Tensor::from_slice(ctx, shape, &data).unwrap();
    for (kind, classes, representation) in [
        (DetectorKind::FasterRcnn, 3, 32),
        (DetectorKind::FasterRcnnV2, 4, 24),
    ] {
        let config = two_stage::config(kind, classes, representation);
        let mut dict = Detector::random_state_dict(config, 9).unwrap();
        if kind == DetectorKind::FasterRcnn {
            for t in ["weight", "bias"] {
                let v = dict.remove(&format!("rpn.head.conv.0.0.{t}")).unwrap();
                dict.insert(format!("rpn.head.conv.{t}"), v);
            }
        }
        let loaded = Detector::from_tensors_with(ctx, "a state_dict", dict, |c| {
            small_faster_rcnn_options(c.kind)
        })
        .unwrap();
        assert_eq!(loaded.config(), &config, "{kind}");
        let options = small_faster_rcnn_options(kind);
        assert_eq!(loaded.options(), &options, "{kind}");
        let random = Detector::random(ctx, config, 9, options).unwrap();
        let (got, want) = (
            loaded.detect(&input).unwrap(),
            random.detect(&input).unwrap(),
        );
        assert!(want.iter().any(|d| !d.is_empty()), "{kind}: no detections");
        assert_eq!(got, want, "{kind}");
    }
}

/// Two-stage state_dicts the detector cannot run are refused with what they hold: an RPN head
/// of the other version than the box head, a mask head with no conv (Mask R-CNN's own
/// refusals are in `tests/mask_rcnn.rs`), a missing predictor tensor, a v2 box head of other
/// widths than torchvision builds.
#[test]
fn faster_rcnn_checkpoints_that_do_not_fit_are_refused_with_what_they_hold() {
    let v1 =
        Detector::random_state_dict(two_stage::config(DetectorKind::FasterRcnn, 3, 32), 1).unwrap();
    let v2 = Detector::random_state_dict(two_stage::config(DetectorKind::FasterRcnnV2, 3, 32), 1)
        .unwrap();

    let mut mixed = v1.clone();
    mixed.retain(|n, _| !n.starts_with("rpn."));
    mixed.extend(
        v2.iter()
            .filter(|(n, _)| n.starts_with("rpn."))
            .map(|(n, t)| (n.clone(), t.clone())),
    );
    let e = load_error(mixed, DetectorKind::FasterRcnn);
    assert!(
        e.contains("RPN head has 2") && e.contains("Faster R-CNN"),
        "{e}"
    );

    let mut mask = v1.clone();
    let t = mask["roi_heads.box_predictor.cls_score.bias"].clone();
    mask.insert("roi_heads.mask_head.mask_fcn1.0.bias".into(), t);
    let e = load_error(mask, DetectorKind::FasterRcnn);
    assert!(e.contains("Mask R-CNN"), "{e}");

    let mut missing = v1.clone();
    missing.remove("roi_heads.box_predictor.bbox_pred.weight");
    let e = load_error(missing, DetectorKind::FasterRcnn);
    assert!(
        e.contains("roi_heads.box_predictor.bbox_pred.weight"),
        "{e}"
    );

    let mut narrow = v2.clone();
    narrow.retain(|n, _| !n.starts_with("roi_heads.box_head.3."));
    let e = load_error(narrow, DetectorKind::FasterRcnnV2);
    assert!(e.contains("four convs"), "{e}");
}
