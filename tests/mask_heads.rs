//! Mask R-CNN's second stage, torchvision's `RoIHeads` with its mask branch, against
//! torchvision's eval output (tests/fixtures/make_mask_heads_fixtures.py): the box branch
//! ([`RoiHeads`]) and the mask branch ([`MaskHeads`]) chained in one graph from the levels and
//! the proposals, so that the handoff is tested too (masks pooled at the boxes in the resized
//! picture's pixels, pasted at the boxes scaled to the pictures'). v1 (`MaskRCNNHeads` with
//! biases) and v2 (batch norm, folded); a batch of two 45x61 pictures resized to 83x112, P2..P5
//! of 32 channels, 200 proposal slots per picture, some empty.
//!
//! The rule: the detections as tests/roi_heads.rs matches them (label, IoU, each coordinate
//! within 1e-3 of the picture's longer side, score within 1e-4; f16: 1e-2 of the side and 1e-2
//! of the score), and for every matched detection both its 28x28 probabilities and its mask
//! pasted into the picture within 1e-2 (max absolute difference of the probabilities, the
//! issue's bar) of torchvision's.

mod common;

use std::path::Path;

use common::gpu;
use fpn_wgpu::graph::ops::detect::{DetectionGeometry, ResizeRule};
use fpn_wgpu::model::mask_heads::{MaskHeads, MaskHeadsConfig};
use fpn_wgpu::model::roi_heads::{RoiHeads, RoiHeadsOptions};
use fpn_wgpu::tensor_file::{read_tensors, TensorMap};
use fpn_wgpu::weights::{is_ignored, VarStore};
use fpn_wgpu::{Error, GpuContext, Precision, Tensor};

const CHANNELS: usize = 32;
const MASK: usize = 28;

fn fixture() -> TensorMap {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mask_heads_tv.safetensors");
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

struct Inputs {
    levels: Vec<Tensor>,
    proposals: Tensor,
    pictures: [usize; 4],
    resize: ResizeRule,
}

fn inputs(ctx: &GpuContext, t: &TensorMap) -> Inputs {
    let levels: Vec<Tensor> = (0..4)
        .map(|l| {
            let h = &t[&format!("level{l}")];
            Tensor::from_slice(ctx, h.shape.clone().try_into().unwrap(), &h.data).unwrap()
        })
        .collect();
    let p = &t["proposals"];
    let proposals = Tensor::from_slice(ctx, p.shape.clone().try_into().unwrap(), &p.data).unwrap();
    let size = &t["picture_size"].data;
    let image = &t["image_size"].data;
    let r = &t["resize"].data;
    let resize = ResizeRule {
        min_size: r[0] as usize,
        max_size: r[1] as usize,
        size_divisible: 32,
    };
    let picture = (size[0] as usize, size[1] as usize);
    // The crate's resize agrees with torchvision's transform on this picture.
    let geometry = DetectionGeometry {
        resize,
        levels: vec![2, 3, 4, 5],
    };
    assert_eq!(
        geometry.resized(picture).unwrap(),
        (image[0] as usize, image[1] as usize)
    );
    Inputs {
        levels,
        proposals,
        pictures: [p.shape[0], 3, picture.0, picture.1],
        resize,
    }
}

/// One detection: box, score, label, and where its masks are.
struct Det {
    b: [f32; 4],
    score: f32,
    label: u32,
    row: usize,
}

fn iou(a: [f32; 4], b: [f32; 4]) -> f32 {
    let area = |r: [f32; 4]| (r[2] - r[0]) * (r[3] - r[1]);
    let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = w * h;
    inter / (area(a) + area(b) - inter)
}

fn distance(a: [f32; 4], b: [f32; 4]) -> f32 {
    (0..4).map(|k| (a[k] - b[k]).abs()).fold(0.0, f32::max)
}

fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

struct Worst {
    boxes: f32,
    score: f32,
    probs: f32,
    masks: f32,
    matched: usize,
}

/// Checks `kind` in `precision` against torchvision and returns the worst differences.
fn check(ctx: &GpuContext, t: &TensorMap, kind: &str, precision: Precision) -> Worst {
    let inp = inputs(ctx, t);
    let o = &t[&format!("{kind}.options")].data;
    let options = RoiHeadsOptions {
        box_score_thresh: o[0],
        box_nms_thresh: o[1],
        box_detections_per_img: o[2] as usize,
    };
    let state = state_dict(t, kind);
    let boxes = RoiHeads::from_tensors(kind, &state, CHANNELS, options).unwrap();
    let masks = MaskHeads::from_tensors(kind, &state, CHANNELS).unwrap();
    let lowered = masks.lower(ctx, &boxes, 4, inp.resize, precision).unwrap();
    // v2's batch norms are folded into their convs; every conv's ReLU is fused.
    let passes = lowered.passes_applied();
    assert_eq!(
        passes.contains(&"fold_batch_norm"),
        kind == "v2",
        "{passes:?}"
    );
    assert!(passes.contains(&"fuse_relu"), "{passes:?}");
    let refs: Vec<&Tensor> = inp.levels.iter().collect();
    let out = lowered
        .forward(&refs, &inp.proposals, inp.pictures)
        .unwrap();
    let [n, _, h, w] = inp.pictures;
    let d = options.box_detections_per_img;
    assert_eq!(out.detections.shape(), [n, 1, d, 6]);
    assert_eq!(out.probabilities.shape(), [n * d, 1, MASK, MASK]);
    assert_eq!(out.masks.shape(), [n * d, 1, h, w]);
    let records = out.detections.download(ctx).unwrap();
    let probs = out.probabilities.download(ctx).unwrap();
    let pasted = out.masks.download(ctx).unwrap();
    let plane = h * w;
    let longer = h.max(w) as f32;
    let (coordinate, score_tol, near) = match precision {
        Precision::F32 => (1e-3, 1e-4, 1e-3),
        Precision::F16 => (1e-2, 1e-2, 1e-2),
    };
    let mut worst = Worst {
        boxes: 0.0,
        score: 0.0,
        probs: 0.0,
        masks: 0.0,
        matched: 0,
    };
    // The 28x28 probabilities are in the kept detections' order across the batch; the pasted
    // masks in their detections' slots. Rows beyond the kept detections are not computed.
    let mut first_kept = 0;
    for i in 0..n {
        let ours: Vec<Det> = (0..d)
            .map(|k| (k, &records[(i * d + k) * 6..(i * d + k + 1) * 6]))
            .filter(|(_, r)| r[4] >= 0.0)
            .map(|(k, r)| Det {
                b: [r[0], r[1], r[2], r[3]],
                score: r[4],
                label: r[5].to_bits(),
                row: i * d + k,
            })
            .collect();
        // The NMS writes a picture's kept records first.
        assert!(ours.iter().enumerate().all(|(k, o)| o.row == i * d + k));
        let tb = &t[&format!("{kind}.boxes{i}")].data;
        let ts = &t[&format!("{kind}.scores{i}")].data;
        let tl = &t[&format!("{kind}.labels{i}")].data;
        let tp = &t[&format!("{kind}.probs{i}")].data;
        let tm = &t[&format!("{kind}.masks{i}")].data;
        let mut used = vec![false; ours.len()];
        let case = format!("{kind} ({precision}) picture {i}");
        for j in 0..ts.len() {
            let b = [tb[4 * j], tb[4 * j + 1], tb[4 * j + 2], tb[4 * j + 3]];
            let label = tl[j] as u32;
            let best = (0..ours.len())
                .filter(|&k| !used[k] && ours[k].label == label)
                .min_by(|&x, &y| distance(ours[x].b, b).total_cmp(&distance(ours[y].b, b)));
            let same = |k: usize| match precision {
                Precision::F32 => iou(ours[k].b, b) >= 0.99,
                Precision::F16 => distance(ours[k].b, b) <= coordinate * longer,
            };
            let Some(k) = best.filter(|&k| same(k)) else {
                assert!(
                    (ts[j] - options.box_score_thresh).abs() <= near,
                    "{case}: torchvision's detection {j} (label {label}, score {}, box {b:?}) has no match",
                    ts[j]
                );
                continue;
            };
            used[k] = true;
            let o = &ours[k];
            let box_err = distance(o.b, b);
            let score_err = (o.score - ts[j]).abs();
            assert!(
                box_err <= coordinate * longer,
                "{case}: detection {j}'s box {:?} is {box_err} px from {b:?}",
                o.b
            );
            assert!(
                score_err <= score_tol,
                "{case}: detection {j}'s score is {score_err} from {}",
                ts[j]
            );
            let kept = first_kept + k;
            let p = max_abs(
                &probs[kept * MASK * MASK..(kept + 1) * MASK * MASK],
                &tp[j * MASK * MASK..(j + 1) * MASK * MASK],
            );
            let m = max_abs(
                &pasted[o.row * plane..(o.row + 1) * plane],
                &tm[j * plane..(j + 1) * plane],
            );
            assert!(
                p <= 1e-2,
                "{case}: detection {j}'s 28x28 probabilities are {p} from torchvision's"
            );
            assert!(
                m <= 1e-2,
                "{case}: detection {j}'s pasted mask is {m} from torchvision's"
            );
            worst.boxes = worst.boxes.max(box_err);
            worst.score = worst.score.max(score_err);
            worst.probs = worst.probs.max(p);
            worst.masks = worst.masks.max(m);
            worst.matched += 1;
        }
        first_kept += ours.len();
        for (k, &u) in used.iter().enumerate() {
            assert!(
                u || (ours[k].score - options.box_score_thresh).abs() <= near,
                "{case}: our detection (label {}, score {}, box {:?}) is not torchvision's",
                ours[k].label,
                ours[k].score,
                ours[k].b
            );
        }
    }
    eprintln!(
        "{kind} ({precision}): {} detections matched, max box error {:.2e} px, max score error {:.2e}, max probability difference {:.2e} at 28x28 and {:.2e} pasted",
        worst.matched, worst.boxes, worst.score, worst.probs, worst.masks
    );
    assert!(worst.matched >= 20);
    worst
}

#[test]
fn v1_matches_torchvision() {
    check(gpu(), &fixture(), "v1", Precision::F32);
}

#[test]
fn v2_matches_torchvision() {
    check(gpu(), &fixture(), "v2", Precision::F32);
}

#[test]
fn v1_and_v2_match_torchvision_in_f16() {
    let Some(ctx) = common::f16_gpu() else {
        eprintln!("no shader-f16 on this adapter: the f16 heads are not run");
        return;
    };
    let t = fixture();
    for kind in ["v1", "v2"] {
        check(ctx, &t, kind, Precision::F16);
    }
}

/// The names say which branch it is, the shapes its widths and classes; the names of mask
/// heads saved before torchvision's version 2 of them (`mask_fcn1..4`) load too.
#[test]
fn heads_are_recognised_from_names_and_shapes() {
    let t = fixture();
    let store = |kind| VarStore::from_tensors(kind, state_dict(&t, kind));
    let v1 = MaskHeadsConfig::recognise(&store("v1"), CHANNELS).unwrap();
    assert_eq!(
        v1,
        MaskHeadsConfig {
            in_channels: CHANNELS,
            layers: vec![32; 4],
            batch_norm: false,
            dim_reduced: 24,
            num_classes: 11,
            bn_eps: 1e-5,
        }
    );
    let v2 = MaskHeadsConfig::recognise(&store("v2"), CHANNELS).unwrap();
    assert!(v2.batch_norm);
    assert_eq!(
        (v2.layers.len(), v2.dim_reduced, v2.num_classes),
        (4, 24, 11)
    );
    // Old names.
    let old: TensorMap = state_dict(&t, "v1")
        .into_iter()
        .map(|(n, v)| {
            let renamed = (0..4).fold(n.clone(), |n, i| {
                n.replace(
                    &format!("roi_heads.mask_head.{i}.0."),
                    &format!("roi_heads.mask_head.mask_fcn{}.", i + 1),
                )
            });
            (renamed, v)
        })
        .collect();
    assert!(old.contains_key("roi_heads.mask_head.mask_fcn4.bias"));
    let heads = MaskHeads::from_tensors("old names", &old, CHANNELS).unwrap();
    assert_eq!(heads.config(), &v1);
}

/// Weights of other shapes, missing ones, a file without a mask branch and branches of two
/// models are errors naming what is wrong, never panics.
#[test]
fn bad_weights_are_errors() {
    let t = fixture();
    // Levels of 64 channels: the first conv was made for 32.
    let e = MaskHeads::from_tensors("v1", &state_dict(&t, "v1"), 64)
        .err()
        .unwrap();
    let msg = e.to_string();
    assert!(matches!(e, Error::Weights { .. }), "{msg}");
    assert!(msg.contains("roi_heads.mask_head.0.0.weight"), "{msg}");
    // A v2 head without its third batch norm's statistics.
    let mut v2 = state_dict(&t, "v2");
    v2.remove("roi_heads.mask_head.2.1.running_var");
    let msg = MaskHeads::from_tensors("v2", &v2, CHANNELS)
        .err()
        .unwrap()
        .to_string();
    assert!(
        msg.contains("missing tensor `roi_heads.mask_head.2.1.running_var`"),
        "{msg}"
    );
    // conv5_mask's bias for another width.
    let mut v1 = state_dict(&t, "v1");
    let bias = v1
        .get_mut("roi_heads.mask_predictor.conv5_mask.bias")
        .unwrap();
    bias.shape[0] -= 1;
    bias.data.pop();
    let e = MaskHeads::from_tensors("v1", &v1, CHANNELS).err().unwrap();
    assert!(matches!(e, Error::Weights { .. }), "{e}");
    assert!(
        e.to_string()
            .contains("roi_heads.mask_predictor.conv5_mask.bias"),
        "{e}"
    );
    // A 3x3 logits layer.
    let mut v1 = state_dict(&t, "v1");
    let logits = v1
        .get_mut("roi_heads.mask_predictor.mask_fcn_logits.weight")
        .unwrap();
    logits.shape = vec![11, 8, 3, 3];
    let msg = MaskHeads::from_tensors("v1", &v1, CHANNELS)
        .err()
        .unwrap()
        .to_string();
    assert!(msg.contains("mask_fcn_logits.weight"), "{msg}");
    // No predictor, then no mask branch at all (a Faster R-CNN).
    let mut v1 = state_dict(&t, "v1");
    v1.remove("roi_heads.mask_predictor.conv5_mask.weight");
    let msg = MaskHeads::from_tensors("v1", &v1, CHANNELS)
        .err()
        .unwrap()
        .to_string();
    assert!(msg.contains("conv5_mask.weight"), "{msg}");
    let boxes_only: TensorMap = state_dict(&t, "v1")
        .into_iter()
        .filter(|(n, _)| !n.starts_with("roi_heads.mask_"))
        .collect();
    let msg = MaskHeads::from_tensors("faster", &boxes_only, CHANNELS)
        .err()
        .unwrap()
        .to_string();
    assert!(msg.contains("no mask head"), "{msg}");
    // The box branch of a model of other classes.
    let ctx = gpu();
    let masks = MaskHeads::from_tensors("v1", &state_dict(&t, "v1"), CHANNELS).unwrap();
    let mut other = state_dict(&t, "v1");
    for name in ["cls_score", "bbox_pred"] {
        for kind in ["weight", "bias"] {
            let t = other
                .get_mut(&format!("roi_heads.box_predictor.{name}.{kind}"))
                .unwrap();
            let per_class = if name == "cls_score" { 1 } else { 4 };
            let row: usize = t.shape[1..].iter().product();
            t.shape[0] -= per_class;
            t.data.truncate(t.shape[0] * row);
        }
    }
    let boxes =
        RoiHeads::from_tensors("other", &other, CHANNELS, RoiHeadsOptions::default()).unwrap();
    let inp = inputs(ctx, &t);
    let e = masks
        .lower(ctx, &boxes, 4, inp.resize, Precision::F32)
        .err()
        .unwrap();
    assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
    // Inputs that do not fit the lowered heads.
    let boxes = RoiHeads::from_tensors(
        "v1",
        &state_dict(&t, "v1"),
        CHANNELS,
        RoiHeadsOptions::default(),
    )
    .unwrap();
    let lowered = masks
        .lower(ctx, &boxes, 4, inp.resize, Precision::F32)
        .unwrap();
    let refs: Vec<&Tensor> = inp.levels.iter().collect();
    assert!(lowered
        .forward(&refs[..3], &inp.proposals, inp.pictures)
        .is_err());
    let mut three = inp.pictures;
    three[0] = 3;
    assert!(lowered.forward(&refs, &inp.proposals, three).is_err());
    assert!(masks
        .lower(ctx, &boxes, 0, inp.resize, Precision::F32)
        .is_err());
}
