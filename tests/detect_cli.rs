//! `fpn detect` and the Detector's handling of bad input: tensor files in and out, a picture to
//! COCO results and a drawing, the checkpoints it refuses and the pictures it must not choke on.

mod common;

use common::detector::{small_config, small_options, weights, CLASSES, OPTION_FLAGS, SEED};
use common::{fpn_command, gpu, scratch};
use fpn_wgpu::detection_output::{coco_results, draw_detections, CocoResult};
use fpn_wgpu::image_input::{load_image_with, ImageOptions};
use fpn_wgpu::model::{DetectorConfig, DetectorKind, RpnOptions};
use fpn_wgpu::tensor_file::{read_tensors, write_tensors, HostTensor};
use fpn_wgpu::{Detector, DetectorOptions, Fpn, Tensor};
use safetensors::{Dtype, SafeTensors};

fn fpn(args: &[&str]) -> (bool, String) {
    let out = fpn_command().args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn pictures(n: usize, h: usize, w: usize) -> HostTensor {
    let data = fpn_wgpu::rng::SplitMix64::new(9).vec(n * 3 * h * w, 0.0, 1.0);
    HostTensor::new(vec![n, 3, h, w], data).unwrap()
}

#[test]
fn detect_writes_the_library_s_detections_to_a_tensor_file() {
    let dir = scratch("detect-tensor");
    let weights = weights(dir.path());
    let input = dir.path().join("in.safetensors");
    let x = pictures(2, 45, 61);
    write_tensors(&input, [("input", &x)]).unwrap();
    let output = dir.path().join("out.safetensors");
    let mut args = vec!["detect", "--weights", weights.to_str().unwrap(), "--input"];
    args.extend([
        input.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
    ]);
    args.extend(OPTION_FLAGS);
    let (ok, err) = fpn(&args);
    assert!(ok, "{err}");

    let ctx = gpu();
    let detector = Detector::random(ctx, small_config(), SEED, small_options()).unwrap();
    let want = detector
        .detect(&Tensor::from_slice(ctx, [2, 3, 45, 61], &x.data).unwrap())
        .unwrap();
    let bytes = std::fs::read(&output).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    let mut total = 0;
    for (i, det) in want.iter().enumerate() {
        let k = det.len();
        total += k;
        let boxes = file.tensor(&format!("boxes.{i}")).unwrap();
        assert_eq!((boxes.dtype(), boxes.shape()), (Dtype::F32, &[k, 4][..]));
        let got: Vec<f32> = bytemuck::pod_collect_to_vec(boxes.data());
        assert_eq!(got, det.boxes.concat());
        let scores = file.tensor(&format!("scores.{i}")).unwrap();
        assert_eq!(scores.dtype(), Dtype::F32);
        assert_eq!(
            bytemuck::pod_collect_to_vec::<u8, f32>(scores.data()),
            det.scores
        );
        let labels = file.tensor(&format!("labels.{i}")).unwrap();
        assert_eq!((labels.dtype(), labels.shape()), (Dtype::I64, &[k][..]));
        assert_eq!(
            bytemuck::pod_collect_to_vec::<u8, i64>(labels.data()),
            det.labels
        );
        assert!(det.labels.iter().all(|&l| (0..CLASSES as i64).contains(&l)));
        assert!(det.scores.windows(2).all(|s| s[0] >= s[1]), "best first");
        for b in &det.boxes {
            assert!(
                b[0] >= 0.0 && b[2] <= 61.0 && b[1] >= 0.0 && b[3] <= 45.0,
                "{b:?} inside the picture"
            );
        }
    }
    assert!(total > 0, "the threshold lets some detections through");

    // f16 activations, where the adapter has them: the same pictures, boxes close to f32's.
    if common::f16_gpu().is_some() {
        let half = dir.path().join("half.safetensors");
        let at = args
            .iter()
            .position(|a| *a == output.to_str().unwrap())
            .unwrap();
        args[at] = half.to_str().unwrap();
        args.extend(["--precision", "f16"]);
        let (ok, err) = fpn(&args);
        assert!(ok, "{err}");
        let bytes = std::fs::read(&half).unwrap();
        let file = SafeTensors::deserialize(&bytes).unwrap();
        for (i, det) in want.iter().enumerate() {
            let scores: Vec<f32> =
                bytemuck::pod_collect_to_vec(file.tensor(&format!("scores.{i}")).unwrap().data());
            let close = scores
                .iter()
                .zip(&det.scores)
                .filter(|(a, b)| (*a - *b).abs() <= 1e-2)
                .count();
            assert!(
                close * 10 >= det.len() * 9,
                "picture {i}: f16 scores {scores:?}, f32 {:?}",
                det.scores
            );
        }
    }
}

/// The thresholds not given on the command line are the detector's own: FCOS's 0.2, 0.6 and
/// 100 detections, not RetinaNet's.
#[test]
fn detect_takes_the_detector_s_defaults_for_flags_not_given() {
    let dir = scratch("detect-defaults");
    let config = DetectorConfig {
        kind: DetectorKind::Fcos,
        ..small_config()
    };
    let weights = dir.path().join("fcos.safetensors");
    let dict = Detector::random_state_dict(config, SEED).unwrap();
    write_tensors(&weights, dict.iter().map(|(n, t)| (n.as_str(), t))).unwrap();
    let input = dir.path().join("in.safetensors");
    let x = pictures(1, 45, 61);
    write_tensors(&input, [("input", &x)]).unwrap();
    let output = dir.path().join("out.safetensors");
    let (ok, err) = fpn(&[
        "detect",
        "--weights",
        weights.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
        "--min-size",
        "64",
        "--max-size",
        "96",
    ]);
    assert!(ok, "{err}");
    assert!(err.contains("FCOS"), "{err}");

    let ctx = gpu();
    let options = DetectorOptions {
        min_size: 64,
        max_size: 96,
        ..DetectorOptions::for_kind(DetectorKind::Fcos)
    };
    let detector = Detector::random(ctx, config, SEED, options).unwrap();
    let want = detector
        .detect(&Tensor::from_slice(ctx, [1, 3, 45, 61], &x.data).unwrap())
        .unwrap();
    // FCOS's cap is reached, so RetinaNet's 300 would have given more.
    assert_eq!(want[0].len(), 100, "FCOS keeps at most 100 detections");
    let got = read_tensors(&output, |n| n.starts_with("labels.")).unwrap();
    assert_eq!(got["scores.0"].data, want[0].scores);
    assert_eq!(got["boxes.0"].data, want[0].boxes.concat());
}

#[test]
fn detect_draws_a_picture_s_boxes_and_writes_coco_results() {
    let dir = scratch("detect-image");
    let weights = weights(dir.path());
    let picture = image::RgbImage::from_fn(83, 57, |x, y| {
        image::Rgb([(x * 3) as u8, (y * 4) as u8, ((x + y) * 2) as u8])
    });
    let path = dir.path().join("photo.png");
    picture.save(&path).unwrap();
    let out = dir.path().join("out");
    let mut args = vec!["detect", "--weights", weights.to_str().unwrap(), "--image"];
    args.extend([path.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    args.extend(OPTION_FLAGS);
    let (ok, err) = fpn(&args);
    assert!(ok, "{err}");
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("detections.json")).unwrap()).unwrap();
    let rows = json.as_array().unwrap();
    assert!(!rows.is_empty());
    for r in rows {
        let bbox: Vec<f64> = r["bbox"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!(bbox.len(), 4);
        assert!(
            bbox[2] >= 0.0
                && bbox[3] >= 0.0
                && bbox[0] + bbox[2] <= 83.01
                && bbox[1] + bbox[3] <= 57.01
        );
        assert!(r["score"].as_f64().unwrap() > 0.6);
        assert!(r["category_id"].as_i64().unwrap() < CLASSES as i64);
        assert_eq!(r["image_id"].as_i64(), Some(0));
        assert!(
            r.get("category_name").is_none(),
            "3 classes have no names without --labels"
        );
    }
    let drawn = image::open(out.join("detections.png")).unwrap().to_rgb8();
    assert_eq!(drawn.dimensions(), picture.dimensions());
    assert_ne!(drawn, picture, "boxes are drawn");

    // Names from --labels.
    let labels = dir.path().join("labels.txt");
    std::fs::write(&labels, "background\ncircle\nsquare\n").unwrap();
    args.extend(["--labels", labels.to_str().unwrap()]);
    let (ok, err) = fpn(&args);
    assert!(ok, "{err}");
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("detections.json")).unwrap()).unwrap();
    for r in json.as_array().unwrap() {
        let name = r["category_name"].as_str().unwrap();
        assert!(["background", "circle", "square"].contains(&name));
    }
}

#[test]
fn detect_refuses_a_backbone_only_checkpoint_and_points_to_run() {
    let dir = scratch("detect-backbone");
    let path = dir.path().join("fpn.safetensors");
    let dict = Fpn::random_state_dict(small_config().backbone, 1).unwrap();
    write_tensors(&path, dict.iter().map(|(n, t)| (n.as_str(), t))).unwrap();
    let x = dir.path().join("in.safetensors");
    write_tensors(&x, [("input", &pictures(1, 32, 32))]).unwrap();
    let out = dir.path().join("out.safetensors");
    let (ok, err) = fpn(&[
        "detect",
        "--weights",
        path.to_str().unwrap(),
        "--input",
        x.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(
        err.contains("no detection head") && err.contains("fpn run"),
        "{err}"
    );
    assert!(!out.exists());
}

#[test]
fn a_head_that_does_not_fit_names_the_tensor() {
    let dir = scratch("detect-head");
    let mut dict = Detector::random_state_dict(small_config(), SEED).unwrap();
    // A regression conv of the wrong width.
    let name = "head.regression_head.conv.2.0.weight";
    dict.insert(
        name.to_string(),
        HostTensor::new(vec![256, 128, 3, 3], vec![0.0; 256 * 128 * 9]).unwrap(),
    );
    let path = dir.path().join("bad.safetensors");
    write_tensors(&path, dict.iter().map(|(n, t)| (n.as_str(), t))).unwrap();
    let e = Detector::from_safetensors(gpu(), &path, small_options())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains(name), "{e}");
    // Class logits that are not a whole number of classes per anchor.
    let mut dict = Detector::random_state_dict(small_config(), SEED).unwrap();
    let name = "head.classification_head.cls_logits.weight";
    dict.insert(
        name.to_string(),
        HostTensor::new(vec![10, 256, 3, 3], vec![0.0; 10 * 256 * 9]).unwrap(),
    );
    write_tensors(&path, dict.iter().map(|(n, t)| (n.as_str(), t))).unwrap();
    let e = Detector::from_safetensors(gpu(), &path, small_options())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains(name) && e.contains("anchors"), "{e}");
}

#[test]
fn tiny_huge_and_wrong_pictures_get_detections_or_errors_never_panics() {
    let ctx = gpu();
    let detector = Detector::random(ctx, small_config(), SEED, small_options()).unwrap();
    // A single pixel is resized up to min_size; a long thin strip to max_size.
    for shape in [[1, 3, 1, 1], [1, 3, 8, 300], [2, 3, 97, 13]] {
        let x = Tensor::from_slice(ctx, shape, &vec![0.5; shape.iter().product()]).unwrap();
        let found = detector.detect(&x).unwrap();
        assert_eq!(found.len(), shape[0]);
    }
    // A strip too thin to keep a row after resizing.
    let x = Tensor::from_slice(ctx, [1, 3, 1, 1000], &vec![0.5; 3000]).unwrap();
    let e = detector.detect(&x).unwrap_err().to_string();
    assert!(e.contains("aspect ratio"), "{e}");
    // One channel, for an RGB detector.
    let x = Tensor::from_slice(ctx, [1, 1, 32, 32], &vec![0.5; 1024]).unwrap();
    let e = detector.detect(&x).unwrap_err().to_string();
    assert!(e.contains("channels"), "{e}");
}

/// A Faster R-CNN written by `fpn random-weights --detector fasterrcnn` runs through `fpn
/// detect` as through the library, the RPN's flags mapped to torchvision's options, in the
/// tensor and the picture mode; the flags of the other family of detectors are refused.
#[test]
fn detect_runs_a_faster_rcnn_and_refuses_the_other_family_s_flags() {
    let dir = scratch("detect-frcnn");
    let weights = dir.path().join("frcnn.safetensors");
    let w = weights.to_str().unwrap();
    let (ok, err) = fpn(&[
        "random-weights",
        "--layout",
        "torchvision",
        "--blocks",
        "1,1,1,1",
        "--detector",
        "fasterrcnn",
        "--num-classes",
        "3",
        "--representation-size",
        "32",
        "--seed",
        "4",
        "--output",
        w,
    ]);
    assert!(ok, "{err}");
    let input = dir.path().join("in.safetensors");
    let x = pictures(2, 45, 61);
    write_tensors(&input, [("input", &x)]).unwrap();
    let output = dir.path().join("out.safetensors");
    let flags = [
        "--min-size",
        "64",
        "--max-size",
        "96",
        "--rpn-pre-nms-top-n",
        "150",
        "--rpn-post-nms-top-n",
        "80",
        "--rpn-nms-thresh",
        "0.6",
        "--detections-per-img",
        "20",
    ];
    let mut args = vec!["detect", "--weights", w, "--input", input.to_str().unwrap()];
    args.extend(["--output", output.to_str().unwrap()]);
    args.extend(flags);
    let (ok, err) = fpn(&args);
    assert!(ok, "{err}");
    assert!(err.contains("Faster R-CNN with 3 classes"), "{err}");

    let ctx = gpu();
    let options = DetectorOptions {
        min_size: 64,
        max_size: 96,
        detections_per_img: 20,
        rpn: RpnOptions {
            rpn_pre_nms_top_n_test: 150,
            rpn_post_nms_top_n_test: 80,
            rpn_nms_thresh: 0.6,
            ..RpnOptions::default()
        },
        ..DetectorOptions::for_kind(DetectorKind::FasterRcnn)
    };
    let detector = Detector::from_safetensors(ctx, &weights, options).unwrap();
    assert_eq!(detector.config().kind, DetectorKind::FasterRcnn);
    let want = detector
        .detect(&Tensor::from_slice(ctx, [2, 3, 45, 61], &x.data).unwrap())
        .unwrap();
    let bytes = std::fs::read(&output).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    let read = |name: String| file.tensor(&name).unwrap().data().to_vec();
    for (i, det) in want.iter().enumerate() {
        assert!(
            !det.is_empty() && det.len() <= 20,
            "picture {i}: {}",
            det.len()
        );
        let boxes: Vec<f32> = bytemuck::pod_collect_to_vec(&read(format!("boxes.{i}")));
        let scores: Vec<f32> = bytemuck::pod_collect_to_vec(&read(format!("scores.{i}")));
        let labels: Vec<i64> = bytemuck::pod_collect_to_vec(&read(format!("labels.{i}")));
        assert_eq!(boxes, det.boxes.concat());
        assert_eq!(scores, det.scores);
        assert_eq!(labels, det.labels);
        assert!(
            det.labels.iter().all(|&l| (1..3).contains(&l)),
            "no background"
        );
    }

    let picture = image::RgbImage::from_fn(61, 45, |x, y| {
        image::Rgb([(x * 4) as u8, (y * 5) as u8, ((x + y) * 2) as u8])
    });
    let path = dir.path().join("photo.png");
    picture.save(&path).unwrap();
    let out = dir.path().join("out");
    let mut args = vec!["detect", "--weights", w, "--image", path.to_str().unwrap()];
    args.extend(["--out", out.to_str().unwrap()]);
    args.extend(flags);
    let (ok, err) = fpn(&args);
    assert!(ok, "{err}");
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("detections.json")).unwrap()).unwrap();
    let rows = json.as_array().unwrap();
    assert!(!rows.is_empty() && rows.len() <= 20, "{}", rows.len());
    assert!(out.join("detections.png").exists());

    let mut args = vec!["detect", "--weights", w, "--input", input.to_str().unwrap()];
    args.extend([
        "--output",
        output.to_str().unwrap(),
        "--topk-candidates",
        "10",
    ]);
    let (ok, err) = fpn(&args);
    assert!(!ok);
    assert!(
        err.contains("--topk-candidates") && err.contains("one-stage"),
        "{err}"
    );

    let retinanet = common::detector::weights(dir.path());
    let mut args = vec!["detect", "--weights", retinanet.to_str().unwrap()];
    args.extend(["--input", input.to_str().unwrap()]);
    args.extend([
        "--output",
        output.to_str().unwrap(),
        "--rpn-nms-thresh",
        "0.5",
    ]);
    let (ok, err) = fpn(&args);
    assert!(!ok);
    assert!(
        err.contains("--rpn-nms-thresh") && err.contains("two-stage"),
        "{err}"
    );
}

/// A Mask R-CNN from `fpn random-weights --detector maskrcnn`: its masks are the library's in
/// every output, `masks.{i}` [K, 1, H, W] of the tensor mode, the RLE `segmentation`s of the
/// picture and folder modes' COCO results, and the masks laid over the drawn pictures.
#[test]
fn detect_writes_a_mask_rcnn_s_masks_in_every_output() {
    let dir = scratch("detect-mrcnn");
    let weights = dir.path().join("mrcnn.safetensors");
    let w = weights.to_str().unwrap();
    let (ok, err) = fpn(&[
        "random-weights",
        "--layout",
        "torchvision",
        "--blocks",
        "1,1,1,1",
        "--returned-layers",
        "1,2,3,4",
        "--extra",
        "pool",
        "--detector",
        "maskrcnn",
        "--num-classes",
        "3",
        "--representation-size",
        "32",
        "--seed",
        "4",
        "--output",
        w,
    ]);
    assert!(ok, "{err}");
    let flags = [
        "--min-size",
        "64",
        "--max-size",
        "96",
        "--rpn-pre-nms-top-n",
        "100",
        "--rpn-post-nms-top-n",
        "50",
        "--detections-per-img",
        "6",
    ];
    let ctx = gpu();
    let options = DetectorOptions {
        min_size: 64,
        max_size: 96,
        detections_per_img: 6,
        rpn: RpnOptions {
            rpn_pre_nms_top_n_test: 100,
            rpn_post_nms_top_n_test: 50,
            ..RpnOptions::default()
        },
        ..DetectorOptions::for_kind(DetectorKind::MaskRcnn)
    };
    let detector = Detector::from_safetensors(ctx, &weights, options).unwrap();
    assert_eq!(detector.config().kind, DetectorKind::MaskRcnn);

    // Tensor mode.
    let input = dir.path().join("in.safetensors");
    let x = pictures(2, 45, 61);
    write_tensors(&input, [("input", &x)]).unwrap();
    let output = dir.path().join("out.safetensors");
    let mut args = vec!["detect", "--weights", w, "--input", input.to_str().unwrap()];
    args.extend(["--output", output.to_str().unwrap()]);
    args.extend(flags);
    let (ok, err) = fpn(&args);
    assert!(ok, "{err}");
    assert!(err.contains("Mask R-CNN with 3 classes"), "{err}");
    let want = detector
        .detect(&Tensor::from_slice(ctx, [2, 3, 45, 61], &x.data).unwrap())
        .unwrap();
    let bytes = std::fs::read(&output).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    for (i, det) in want.iter().enumerate() {
        assert!(!det.is_empty(), "picture {i}: no detections");
        let masks = det.masks.as_ref().unwrap();
        let t = file.tensor(&format!("masks.{i}")).unwrap();
        assert_eq!(
            (t.dtype(), t.shape()),
            (Dtype::F32, &[det.len(), 1, 45, 61][..])
        );
        let got: Vec<f32> = bytemuck::pod_collect_to_vec(t.data());
        assert_eq!(got, masks.data, "picture {i}");
        let boxes: Vec<f32> =
            bytemuck::pod_collect_to_vec(file.tensor(&format!("boxes.{i}")).unwrap().data());
        assert_eq!(boxes, det.boxes.concat());
    }

    // Picture mode.
    let picture = image::RgbImage::from_fn(61, 45, |x, y| {
        image::Rgb([(x * 4) as u8, (y * 5) as u8, ((x + y) * 2) as u8])
    });
    let path = dir.path().join("photo.png");
    picture.save(&path).unwrap();
    let out = dir.path().join("out");
    let mut args = vec!["detect", "--weights", w, "--image", path.to_str().unwrap()];
    args.extend(["--out", out.to_str().unwrap()]);
    args.extend(flags);
    let (ok, err) = fpn(&args);
    assert!(ok, "{err}");
    let loaded = load_image_with(&path, &ImageOptions::detection()).unwrap();
    let tensor = Tensor::from_slice(
        ctx,
        loaded.tensor.nchw("input").unwrap(),
        &loaded.tensor.data,
    )
    .unwrap();
    let found = detector.detect(&tensor).unwrap().remove(0);
    assert!(!found.is_empty());
    let results: Vec<CocoResult> =
        serde_json::from_slice(&std::fs::read(out.join("detections.json")).unwrap()).unwrap();
    assert_eq!(results, coco_results(0, &found, None));
    assert!(results.iter().all(|r| r.segmentation.is_some()));
    let drawn = image::open(out.join("detections.png")).unwrap().to_rgb8();
    assert_eq!(drawn, draw_detections(&loaded.rgb, &found));

    // Folder mode.
    let folder = dir.path().join("pictures");
    std::fs::create_dir_all(&folder).unwrap();
    picture.save(folder.join("a.png")).unwrap();
    let folder_out = dir.path().join("folder-out");
    let mut args = vec![
        "detect",
        "--weights",
        w,
        "--images",
        folder.to_str().unwrap(),
    ];
    args.extend(["--out", folder_out.to_str().unwrap(), "--pictures"]);
    args.extend(flags);
    let (ok, err) = fpn(&args);
    assert!(ok, "{err}");
    let results: Vec<CocoResult> =
        serde_json::from_slice(&std::fs::read(folder_out.join("a.png.json")).unwrap()).unwrap();
    assert_eq!(results, coco_results(0, &found, None));
    let drawn = image::open(folder_out.join("a.png.png")).unwrap().to_rgb8();
    assert_eq!(drawn, draw_detections(&loaded.rgb, &found));
}
