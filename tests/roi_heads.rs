//! Faster R-CNN's second stage, torchvision's `RoIHeads` (boxes), against torchvision's eval
//! output (tests/fixtures/make_roi_heads_fixtures.py): v1's `TwoMLPHead` at torchvision's
//! defaults and with 10 detections per picture, v2's `FastRCNNConvFCHead` (batch norm folded)
//! with other thresholds; a batch of two 75x101 pictures resized to 130x175, P2..P5 of 64
//! channels, 300 proposal slots per picture, some empty. The weights load by torchvision's
//! names, the widths and classes from the shapes.
//!
//! The rule: every torchvision detection is matched by one of ours of the same label with an
//! IoU of at least 0.99, each coordinate within 1e-3 of the picture's longer side and the score
//! within 1e-4; only detections scoring within 1e-3 of the threshold may go unmatched, on
//! either side. With f16 activations: each matched coordinate within 1e-2 of the longer side
//! and the score within 1e-2; unmatched, besides detections within 1e-2 of the threshold, at
//! most 3% of the detections on either side (where two boxes of one label overlap above the NMS
//! threshold and score within f16's rounding of each other, NMS may keep either).
//!
//! The CPU twins (RoIAlign, linear layers, softmax, candidates, batched NMS) are held to the
//! same rule for v1, so that the reference states torchvision's semantics too.

mod common;

use std::path::Path;

use common::gpu;
use common::matching::{compare, Expected, Tolerance};
use fpn_wgpu::graph::ops::detect::{DetectionGeometry, ResizeRule};
use fpn_wgpu::model::roi_heads::{BoxHeadKind, RoiHeads, RoiHeadsConfig, RoiHeadsOptions};
use fpn_wgpu::reference::{self, CandidateRule};
use fpn_wgpu::tensor_file::{read_tensors, HostTensor, TensorMap};
use fpn_wgpu::weights::is_ignored;
use fpn_wgpu::{Detections, Error, GpuContext, Precision, Tensor};

const CHANNELS: usize = 64;

/// One picture's detections in its `[D, 6]` records, read as the detector reads them.
fn detections(records: &[f32]) -> Detections {
    let rows = HostTensor::new(vec![1, 1, records.len() / 6, 6], records.to_vec()).unwrap();
    Detections::from_rows(&rows).unwrap().remove(0)
}

/// The fixture, `num_batches_tracked` left out as every loader of the crate does.
fn fixture() -> TensorMap {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/roi_heads_tv.safetensors");
    read_tensors(&path, is_ignored).unwrap()
}

/// The state_dict of variant `kind` (`v1`, `v2`) as torchvision saves it.
fn state_dict(t: &TensorMap, kind: &str) -> TensorMap {
    let prefix = format!("{kind}.roi_heads.");
    t.iter()
        .filter_map(|(n, v)| {
            n.strip_prefix(&prefix)
                .map(|rest| (format!("roi_heads.{rest}"), v.clone()))
        })
        .collect()
}

/// The fixture's inputs: levels, proposal records, the pictures' shape, the resize rule.
struct Inputs {
    levels: Vec<(Vec<f32>, [usize; 4])>,
    proposals: Vec<f32>,
    rois: usize,
    pictures: [usize; 4],
    resize: ResizeRule,
    image: (usize, usize),
}

fn inputs(t: &TensorMap) -> Inputs {
    let levels: Vec<(Vec<f32>, [usize; 4])> = (0..4)
        .map(|l| {
            let h = &t[&format!("level{l}")];
            (h.data.clone(), h.shape.clone().try_into().unwrap())
        })
        .collect();
    let p = &t["proposals"];
    let [n, _, rois, _]: [usize; 4] = p.shape.clone().try_into().unwrap();
    let size = &t["picture_size"].data;
    let image = &t["image_size"].data;
    let resize = &t["resize"].data;
    let resize = ResizeRule {
        min_size: resize[0] as usize,
        max_size: resize[1] as usize,
        size_divisible: 32,
    };
    let picture = (size[0] as usize, size[1] as usize);
    let image = (image[0] as usize, image[1] as usize);
    // The crate's resize agrees with torchvision's transform on this picture.
    let geometry = DetectionGeometry {
        resize,
        levels: vec![2, 3, 4, 5],
    };
    assert_eq!(geometry.resized(picture).unwrap(), image);
    let sizes: Vec<(usize, usize)> = levels.iter().map(|(_, s)| (s[2], s[3])).collect();
    assert_eq!(geometry.level_sizes(picture).unwrap(), sizes);
    Inputs {
        levels,
        proposals: p.data.clone(),
        rois,
        pictures: [n, 3, picture.0, picture.1],
        resize,
        image,
    }
}

/// torchvision's detections of `run`, per picture, and its options.
fn expected(t: &TensorMap, run: &str, n: usize) -> (Vec<Expected>, RoiHeadsOptions) {
    let o = &t[&format!("{run}.options")].data;
    let options = RoiHeadsOptions {
        box_score_thresh: o[0],
        box_nms_thresh: o[1],
        box_detections_per_img: o[2] as usize,
    };
    let dets = (0..n)
        .map(|i| {
            let boxes = &t[&format!("{run}.boxes{i}")].data;
            Expected {
                boxes: boxes.chunks(4).map(|b| [b[0], b[1], b[2], b[3]]).collect(),
                scores: t[&format!("{run}.scores{i}")].data.clone(),
                labels: t[&format!("{run}.labels{i}")]
                    .data
                    .iter()
                    .map(|&l| l as i64)
                    .collect(),
            }
        })
        .collect();
    (dets, options)
}

/// Runs `run` (weights of `kind`) on `ctx` in `precision` and checks it against torchvision.
fn check_run(ctx: &GpuContext, t: &TensorMap, run: &str, kind: &str, precision: Precision) {
    let inp = inputs(t);
    let n = inp.pictures[0];
    let (want, options) = expected(t, run, n);
    let heads = RoiHeads::from_tensors(
        "roi_heads_tv.safetensors",
        &state_dict(t, kind),
        CHANNELS,
        options,
    )
    .unwrap();
    let gpu_heads = heads.lower(ctx, 4, inp.resize, precision).unwrap();
    // v2's batch norms are folded into its convs, and the ReLUs fused, as in the FPN.
    let folded = gpu_heads.passes_applied().contains(&"fold_batch_norm");
    assert_eq!(folded, kind == "v2", "{:?}", gpu_heads.passes_applied());
    if kind == "v2" {
        assert!(gpu_heads.passes_applied().contains(&"fuse_relu"));
    }
    let levels: Vec<Tensor> = inp
        .levels
        .iter()
        .map(|(d, s)| Tensor::from_slice(ctx, *s, d).unwrap())
        .collect();
    let level_refs: Vec<&Tensor> = levels.iter().collect();
    let proposals = Tensor::from_slice(ctx, [n, 1, inp.rois, 6], &inp.proposals).unwrap();
    let out = gpu_heads
        .forward(&level_refs, &proposals, inp.pictures)
        .unwrap();
    let d = options.box_detections_per_img;
    assert_eq!(out.detections.shape(), [n, 1, d, 6]);
    let records = out.detections.download(ctx).unwrap();
    let longer = inp.pictures[2].max(inp.pictures[3]) as f32;
    let tol = Tolerance::of(precision);
    for (i, want) in want.iter().enumerate() {
        let got = detections(&records[i * d * 6..(i + 1) * d * 6]);
        let case = format!("{run} ({precision}) picture {i}");
        let m = compare(&case, &got, want, longer, options.box_score_thresh, tol);
        let (matched, box_err, score_err) = (m.pairs.len(), m.worst_box, m.worst_score);
        eprintln!(
            "{case}: {matched} of torchvision's {} detections matched (ours {}), max box error {box_err:.2e} px ({:.2e} of the longer side), max score error {score_err:.2e}",
            want.scores.len(),
            got.len(),
            box_err / longer
        );
    }
}

#[test]
fn v1_matches_torchvision() {
    let t = fixture();
    for run in ["v1", "v1cap10"] {
        check_run(gpu(), &t, run, "v1", Precision::F32);
    }
}

#[test]
fn v2_matches_torchvision() {
    check_run(gpu(), &fixture(), "v2", "v2", Precision::F32);
}

#[test]
fn v1_and_v2_match_torchvision_in_f16() {
    let Some(ctx) = common::f16_gpu() else {
        eprintln!("no shader-f16 on this adapter: the f16 heads are not run");
        return;
    };
    let t = fixture();
    for (run, kind) in [("v1", "v1"), ("v2", "v2")] {
        check_run(ctx, &t, run, kind, Precision::F16);
    }
}

/// The CPU twins chained as torchvision's v1 heads: the reference holds torchvision's
/// semantics, not just the GPU's.
#[test]
fn reference_v1_matches_torchvision() {
    let t = fixture();
    let inp = inputs(&t);
    let n = inp.pictures[0];
    let (want, options) = expected(&t, "v1", n);
    let w = |name: &str| &t[&format!("v1.roi_heads.{name}")];
    let layer = |name: &str, x: &[f32], rows: usize, relu: bool| {
        let weight = w(&format!("{name}.weight"));
        let bias = w(&format!("{name}.bias"));
        reference::linear(
            x,
            rows,
            &weight.data,
            weight.shape[0],
            Some(&bias.data),
            relu,
        )
    };
    let levels: Vec<(&[f32], [usize; 4])> = inp.levels.iter().map(|(d, s)| (&d[..], *s)).collect();
    let rows = n * inp.rois;
    let pooled =
        reference::multi_scale_roi_align(&levels, &inp.proposals, inp.rois, inp.image, 7, 2, false);
    let x = layer("box_head.fc6", &pooled, rows, true);
    let x = layer("box_head.fc7", &x, rows, true);
    let logits = layer("box_predictor.cls_score", &x, rows, false);
    let regression = layer("box_predictor.bbox_pred", &x, rows, false);
    let classes = w("box_predictor.cls_score.weight").shape[0];
    let scores = reference::softmax_channels(&logits, [rows, classes, 1, 1]);
    let rule = CandidateRule {
        weights: [10.0, 10.0, 5.0, 5.0],
        xform_clip: (1000.0f64 / 16.0).ln() as f32,
        score_thresh: options.box_score_thresh,
        min_size: 1e-2,
        clip: (inp.image.0 as f32, inp.image.1 as f32),
    };
    let candidates = reference::box_candidates(
        &inp.proposals,
        inp.rois,
        &regression,
        &scores,
        classes,
        &rule,
    );
    let scale = [
        inp.pictures[3] as f32 / inp.image.1 as f32,
        inp.pictures[2] as f32 / inp.image.0 as f32,
    ];
    let longer = inp.pictures[2].max(inp.pictures[3]) as f32;
    for (i, cands) in candidates.iter().enumerate() {
        let kept = reference::batched_nms(
            cands,
            options.box_nms_thresh,
            options.box_detections_per_img,
            scale,
        );
        let got = detections(kept.as_flattened());
        let case = format!("reference v1 picture {i}");
        let m = compare(
            &case,
            &got,
            &want[i],
            longer,
            options.box_score_thresh,
            Tolerance::of(Precision::F32),
        );
        let (matched, box_err, score_err) = (m.pairs.len(), m.worst_box, m.worst_score);
        eprintln!(
            "{case}: {matched} of {} matched from {} candidates, max box error {box_err:.2e} px, max score error {score_err:.2e}",
            want[i].scores.len(),
            cands.len()
        );
    }
}

/// The names say which head it is, the shapes its widths and classes.
#[test]
fn heads_are_recognised_from_names_and_shapes() {
    let t = fixture();
    let store = |kind| fpn_wgpu::weights::VarStore::from_tensors(kind, state_dict(&t, kind));
    let v1 = RoiHeadsConfig::recognise(&store("v1"), CHANNELS).unwrap();
    assert_eq!(v1.box_head, BoxHeadKind::TwoMlp { representation: 16 });
    assert_eq!(v1.num_classes, 31);
    let v2 = RoiHeadsConfig::recognise(&store("v2"), CHANNELS).unwrap();
    assert_eq!(
        v2.box_head,
        BoxHeadKind::ConvFc {
            convs: vec![16; 4],
            fcs: vec![24]
        }
    );
    assert_eq!(v2.num_classes, 31);
}

/// Weights of other shapes, missing ones, a file without heads and bad options are errors
/// that say what to do, never panics.
#[test]
fn bad_weights_and_options_are_errors() {
    let t = fixture();
    let options = RoiHeadsOptions::default();
    // Levels of 32 channels: fc6 was made for 64.
    let e = RoiHeads::from_tensors("v1", &state_dict(&t, "v1"), 32, options)
        .err()
        .unwrap();
    let msg = e.to_string();
    assert!(matches!(e, Error::Weights { .. }), "{msg}");
    assert!(msg.contains("roi_heads.box_head.fc6.weight"), "{msg}");
    // A v2 head without its second batch norm's statistics.
    let mut v2 = state_dict(&t, "v2");
    v2.remove("roi_heads.box_head.1.1.running_var");
    let msg = RoiHeads::from_tensors("v2", &v2, CHANNELS, options)
        .err()
        .unwrap()
        .to_string();
    assert!(
        msg.contains("missing tensor `roi_heads.box_head.1.1.running_var`"),
        "{msg}"
    );
    // bbox_pred for another number of classes.
    let mut v1 = state_dict(&t, "v1");
    let bbox = v1
        .get_mut("roi_heads.box_predictor.bbox_pred.weight")
        .unwrap();
    bbox.shape[0] -= 4;
    bbox.data.truncate(bbox.shape.iter().product());
    let msg = RoiHeads::from_tensors("v1", &v1, CHANNELS, options)
        .err()
        .unwrap()
        .to_string();
    assert!(
        msg.contains("roi_heads.box_predictor.bbox_pred.weight"),
        "{msg}"
    );
    // No heads at all.
    let backbone: TensorMap = t
        .iter()
        .filter(|(n, _)| n.starts_with("level"))
        .map(|(n, v)| (n.clone(), v.clone()))
        .collect();
    let msg = RoiHeads::from_tensors("levels", &backbone, CHANNELS, options)
        .err()
        .unwrap()
        .to_string();
    assert!(msg.contains("no box head"), "{msg}");
    // Options torchvision would not take.
    for bad in [
        RoiHeadsOptions {
            box_score_thresh: f32::NAN,
            ..options
        },
        RoiHeadsOptions {
            box_nms_thresh: f32::INFINITY,
            ..options
        },
        RoiHeadsOptions {
            box_detections_per_img: 0,
            ..options
        },
    ] {
        let e = RoiHeads::from_tensors("v1", &state_dict(&t, "v1"), CHANNELS, bad)
            .err()
            .unwrap();
        assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
    }
    // Inputs that do not fit the lowered heads.
    let ctx = gpu();
    let heads = RoiHeads::from_tensors("v1", &state_dict(&t, "v1"), CHANNELS, options).unwrap();
    let inp = inputs(&t);
    let lowered = heads.lower(ctx, 4, inp.resize, Precision::F32).unwrap();
    let levels: Vec<Tensor> = inp
        .levels
        .iter()
        .map(|(d, s)| Tensor::from_slice(ctx, *s, d).unwrap())
        .collect();
    let refs: Vec<&Tensor> = levels.iter().collect();
    let proposals = Tensor::from_slice(ctx, [2, 1, inp.rois, 6], &inp.proposals).unwrap();
    assert!(lowered
        .forward(&refs[..3], &proposals, inp.pictures)
        .is_err());
    let bad = Tensor::from_slice(ctx, [2, 1, inp.rois * 2, 3], &inp.proposals).unwrap();
    assert!(lowered.forward(&refs, &bad, inp.pictures).is_err());
    let mut other = inp.pictures;
    other[0] = 3;
    assert!(lowered.forward(&refs, &proposals, other).is_err());
    assert!(heads.lower(ctx, 0, inp.resize, Precision::F32).is_err());
}
