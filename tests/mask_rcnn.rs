//! Mask R-CNN v1 and v2 end to end against torchvision's eval output (fixtures made by
//! `tests/fixtures/make_mask_rcnn_fixtures.py` on the crate's seeded random weights): the
//! detections by the rule of `tests/detection.rs` (`common::matching`), and each matched
//! detection's mask, pasted into the picture, within 1e-2 of torchvision's probabilities at
//! every pixel (the fixtures store them as f16, 2^-11 of rounding at most). `check_fixture`
//! takes f16 too (the detections by the rule's f16 tolerances, the masks by the same 1e-2;
//! measured on lavapipe: every detection matched, boxes within 0.11 pixels, masks within
//! 6.2e-4), left out of the tests for the time it takes on a software adapter.
//!
//! Also: checkpoints of both versions are recognised and run as their random twin, mask
//! branches that do not fit the box branch are refused, masks too large for the device are
//! refused with the limit and the fix, and the pipeline over many pictures reads back only
//! the kept detections' masks.

mod common;

use std::path::Path;

use common::gpu;
use common::matching::{compare, Expected, Tolerance};
use common::two_stage;
use fpn_wgpu::extract::{extract, ExtractOptions};
use fpn_wgpu::model::{DetectorKind, RpnOptions, MASKS};
use fpn_wgpu::tensor_file::{read_tensors, HostTensor, TensorMap};
use fpn_wgpu::{Detections, Detector, DetectorOptions, Error, GpuContext, Precision, Tensor};

/// Runs a fixture's Mask R-CNN, its weights drawn again from the seed, in `precision` and
/// checks its detections and masks against torchvision's.
fn check_fixture(ctx: &GpuContext, name: &str, kind: DetectorKind, precision: Precision) {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/{name}.safetensors"));
    let fixture = read_tensors(&path, |_| false).unwrap();
    let detector = two_stage::detector(ctx, &fixture, kind, precision);
    let options = detector.options();
    let pictures = &fixture["pictures"];
    let shape: [usize; 4] = pictures.shape.clone().try_into().unwrap();
    let [_, _, h, w] = shape;
    let input = Tensor::from_slice(ctx, shape, &pictures.data).unwrap();
    let started = std::time::Instant::now();
    let got = detector.detect(&input).unwrap();
    let seconds = started.elapsed().as_secs_f64();
    assert_eq!(got.len(), shape[0]);
    let mut tol = Tolerance::of(precision);
    if precision == Precision::F16 {
        // As for Faster R-CNN (`tests/detection.rs`): the rounding changes a few of the RPN's
        // proposals, and the detections pooled from them.
        tol.unmatched = 0.12;
    }
    let mask_tol = 1e-2;
    for (i, det) in got.iter().enumerate() {
        let want = Expected::from_fixture(&fixture, i);
        let case = format!("{name} picture {i} ({precision})");
        let longer = h.max(w) as f32;
        let m = compare(&case, det, &want, longer, options.score_thresh, tol);
        let masks = det.masks.as_ref().expect("Mask R-CNN gives masks");
        assert_eq!(masks.shape(), [det.len(), 1, h, w], "{case}");
        let theirs = &fixture[&format!("masks.{i}")];
        assert_eq!(theirs.shape, [want.scores.len(), 1, h, w], "{case}");
        let plane = h * w;
        let mut worst_mask = 0.0f32;
        for &(j, k) in &m.pairs {
            let ours = masks.get(k).unwrap();
            let theirs = &theirs.data[j * plane..(j + 1) * plane];
            let err = ours
                .iter()
                .zip(theirs)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(
                err <= mask_tol,
                "{case}: detection {j}'s mask is {err} from torchvision's at its worst pixel"
            );
            worst_mask = worst_mask.max(err);
        }
        eprintln!(
            "{case}: {} of torchvision's {} detections matched ({} ours); worst box error \
             {:.2e} px, worst score error {:.2e}, worst mask error {worst_mask:.2e}; detect \
             {seconds:.2} s",
            m.pairs.len(),
            want.scores.len(),
            det.len(),
            m.worst_box,
            m.worst_score
        );
        assert!(!m.pairs.is_empty(), "{case}: nothing to compare");
    }
}

#[test]
fn mask_rcnn_matches_torchvision_on_a_batch_of_two_pictures_smaller_than_min_size() {
    check_fixture(
        gpu(),
        "mrcnn_v1_batch2_57x75",
        DetectorKind::MaskRcnn,
        Precision::F32,
    );
}

#[test]
fn mask_rcnn_v2_matches_torchvision_on_an_odd_picture_scaled_down() {
    check_fixture(
        gpu(),
        "mrcnn_v2_97x71",
        DetectorKind::MaskRcnnV2,
        Precision::F32,
    );
}

/// The mask branch runs on the kept detections alone, as torchvision's does: after the
/// detections are compacted, one small launch writes the grids of every launch of the branch
/// from their count, and those launches are recorded indirect. (The fixtures above check the
/// masks this gives, on a batch of two.)
#[test]
fn the_mask_branch_is_sized_on_the_gpu_by_the_kept_detections() {
    let ctx = gpu();
    // lavapipe and llvmpipe's GL both execute indirect launches.
    assert!(
        ctx.supports_indirect_dispatch(),
        "this adapter does not execute indirect launches, or FPN_INDIRECT_DISPATCH=0 is set"
    );
    for kind in [DetectorKind::MaskRcnn, DetectorKind::MaskRcnnV2] {
        let config = two_stage::config(kind, 9, 32);
        let detector = Detector::random(ctx, config, 3, small_options(kind)).unwrap();
        let plan = detector.executor().plan([2, 3, 50, 70]).unwrap();
        let kernels = plan.kernels();
        let indirect: Vec<bool> = plan.dispatches().iter().map(|d| d.is_indirect()).collect();
        let grid = kernels
            .iter()
            .position(|(_, k)| *k == "indirect_grid")
            .expect("a grid launch");
        assert_eq!(
            kernels
                .iter()
                .filter(|(_, k)| *k == "indirect_grid")
                .count(),
            1
        );
        assert!(!indirect[..=grid].contains(&true), "{kind}: {kernels:?}");
        let sized: Vec<(&str, &str)> = kernels[grid + 1..].to_vec();
        assert!(indirect[grid + 1..].iter().all(|&i| i), "{kind}: {sized:?}");
        // The pooling, the convs, the transposed conv, the predictor, the selection and the
        // pasting.
        assert!(sized.len() >= 9, "{kind}: {sized:?}");
        assert_eq!(sized.first().map(|k| k.0), Some("roi_heads.mask_roi_pool"));
        assert_eq!(sized.last().map(|k| k.0), Some("transform.paste_masks"));
        eprintln!(
            "{kind}: {} launches sized by the kept detections",
            sized.len()
        );
    }
}

/// Small pictures, few proposals and few detection slots.
fn small_options(kind: DetectorKind) -> DetectorOptions {
    DetectorOptions {
        min_size: 64,
        max_size: 96,
        detections_per_img: 8,
        rpn: RpnOptions {
            rpn_pre_nms_top_n_test: 100,
            rpn_post_nms_top_n_test: 50,
            ..RpnOptions::default()
        },
        ..DetectorOptions::for_kind(kind)
    }
}

/// Mask R-CNN state_dicts of both versions, as `random_state_dict` writes them under
/// torchvision's names, are recognised (kind, classes, representation size), and v1 runs as
/// its random twin, masks included; v1's mask convs under their names before torchvision's v2 of
/// `MaskRCNNHeads` (`mask_head.mask_fcn{i}`) load, as torchvision renames them. The pipeline
/// over many pictures (`extract`, `fpn detect --images`) gives the same masks, reading back
/// only the kept detections'.
#[test]
fn mask_rcnn_checkpoints_are_recognised_and_run_as_their_random_twin() {
    let ctx = gpu();
    let shape = [1, 3, 50, 70];
    let data = fpn_wgpu::rng::SplitMix64::new(4).vec(shape.iter().product(), 0.0, 1.0);
    let input = Tensor::from_slice(ctx, shape, &data).unwrap();
    for (kind, classes, representation) in [
        (DetectorKind::MaskRcnn, 3, 32),
        (DetectorKind::MaskRcnnV2, 4, 24),
    ] {
        let config = two_stage::config(kind, classes, representation);
        let mut dict = Detector::random_state_dict(config, 9).unwrap();
        assert!(dict.contains_key("roi_heads.mask_predictor.mask_fcn_logits.weight"));
        if kind == DetectorKind::MaskRcnn {
            for i in 0..4 {
                for t in ["weight", "bias"] {
                    let v = dict
                        .remove(&format!("roi_heads.mask_head.{i}.0.{t}"))
                        .unwrap();
                    dict.insert(format!("roi_heads.mask_head.mask_fcn{}.{t}", i + 1), v);
                }
            }
        }
        let loaded =
            Detector::from_tensors_with(ctx, "a state_dict", dict, |c| small_options(c.kind))
                .unwrap();
        assert_eq!(loaded.config(), &config, "{kind}");
        if kind == DetectorKind::MaskRcnnV2 {
            // Read by the same names as v1, less the renaming; its forward is the parity
            // test's, and a software adapter spends seconds on each.
            continue;
        }
        let random = Detector::random(ctx, config, 9, small_options(kind)).unwrap();
        let (got, want) = (
            loaded.detect(&input).unwrap(),
            random.detect(&input).unwrap(),
        );
        assert!(want.iter().any(|d| !d.is_empty()), "{kind}: no detections");
        let masks = want[0].masks.as_ref().unwrap();
        assert_eq!(masks.shape(), [want[0].len(), 1, 50, 70], "{kind}");
        assert!(masks.data.iter().any(|&p| p > 0.0), "{kind}: empty masks");
        assert_eq!(got, want, "{kind}");

        // The pipeline over many pictures reads back the picture's K masks (K its
        // detections), not every slot's, and they are `detect`'s.
        let picture = HostTensor::new(shape.to_vec(), data.clone()).unwrap();
        let load = move |_: &usize| Ok(picture.clone());
        for done in extract(&random, vec![0], load, ExtractOptions::default()) {
            let outputs = done.result.unwrap();
            let read = &outputs.iter().find(|(n, _)| n == MASKS).unwrap().1;
            assert_eq!(read.shape, [1, want[0].len(), 50, 70], "{kind}");
            let found = Detections::from_outputs(&outputs).unwrap();
            assert_eq!(found, want, "{kind}");
        }
    }
}

fn load_error(dict: TensorMap, kind: DetectorKind) -> String {
    match Detector::from_tensors(gpu(), "a state_dict", dict, small_options(kind)) {
        Ok(_) => panic!("a state_dict that does not fit was loaded"),
        Err(e) => e.to_string(),
    }
}

/// Mask branches that do not fit the box branch are refused with what they hold: another
/// number of classes, the other version's convs, a missing predictor tensor.
#[test]
fn mask_rcnn_checkpoints_that_do_not_fit_are_refused_with_what_they_hold() {
    let v1 =
        Detector::random_state_dict(two_stage::config(DetectorKind::MaskRcnn, 3, 32), 1).unwrap();
    let v2 =
        Detector::random_state_dict(two_stage::config(DetectorKind::MaskRcnnV2, 3, 32), 1).unwrap();
    let other =
        Detector::random_state_dict(two_stage::config(DetectorKind::MaskRcnn, 5, 32), 1).unwrap();
    let mask_branch = |dict: &TensorMap| -> TensorMap {
        dict.iter()
            .filter(|(n, _)| n.starts_with("roi_heads.mask_"))
            .map(|(n, t)| (n.clone(), t.clone()))
            .collect()
    };
    let without_masks = |dict: &TensorMap| -> TensorMap {
        dict.iter()
            .filter(|(n, _)| !n.starts_with("roi_heads.mask_"))
            .map(|(n, t)| (n.clone(), t.clone()))
            .collect()
    };

    let mut classes = without_masks(&v1);
    classes.extend(mask_branch(&other));
    let e = load_error(classes, DetectorKind::MaskRcnn);
    assert!(
        e.contains("mask predictor has 5 classes") && e.contains("box predictor 3"),
        "{e}"
    );

    let mut mixed = without_masks(&v1);
    mixed.extend(mask_branch(&v2));
    let e = load_error(mixed, DetectorKind::MaskRcnn);
    assert!(
        e.contains("batch norm") && e.contains("Mask R-CNN's"),
        "{e}"
    );

    let mut missing = v2.clone();
    missing.remove("roi_heads.mask_predictor.conv5_mask.weight");
    let e = load_error(missing, DetectorKind::MaskRcnnV2);
    assert!(e.contains("conv5_mask"), "{e}");
}

/// Pictures whose pasted masks (every detection slot's, at the picture's size) do not fit one
/// binding are refused before anything runs, with the limit and the flag to change.
#[test]
fn masks_larger_than_the_device_binds_are_an_error_naming_the_limit_and_the_fix() {
    let ctx = gpu();
    let config = two_stage::config(DetectorKind::MaskRcnn, 3, 32);
    let options = DetectorOptions {
        detections_per_img: 100,
        ..small_options(DetectorKind::MaskRcnn)
    };
    let detector = Detector::random(ctx, config, 9, options).unwrap();
    let limits = ctx.device().limits();
    let limit = limits
        .max_storage_buffer_binding_size
        .min(limits.max_buffer_size);
    // The smallest square picture whose masks pass the limit.
    let per_pixel = 4 * options.detections_per_img as u64;
    let side = ((limit / per_pixel) as f64).sqrt() as usize + 1;
    let input = Tensor::empty(ctx, [1, 3, side, side]).unwrap();
    let e = match detector.detect(&input) {
        Ok(_) => panic!("masks of {side}x{side} pictures passed the device's {limit} bytes"),
        Err(e) => e,
    };
    assert!(matches!(e, Error::LimitExceeded { .. }), "{e}");
    let e = e.to_string();
    assert!(
        e.contains(&limit.to_string()) && e.contains("--detections-per-img"),
        "{e}"
    );
}
