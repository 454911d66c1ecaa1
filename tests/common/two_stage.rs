//! The two-stage fixtures' detectors (`tests/fixtures/make_faster_rcnn_fixtures.py`,
//! `make_mask_rcnn_fixtures.py`): torchvision's Faster and Mask R-CNN on a small backbone, their
//! weights drawn again from the seed and their options from the fixture's `options` row.

use fpn_wgpu::model::{DetectorConfig, DetectorKind, RpnOptions};
use fpn_wgpu::tensor_file::TensorMap;
use fpn_wgpu::{Detector, DetectorOptions, FpnConfig, GpuContext, Precision};

/// A Faster or Mask R-CNN of `kind` on one bottleneck per ResNet layer (v2 with batch norm in
/// the FPN's convs, as torchvision builds it).
pub fn config(kind: DetectorKind, classes: usize, representation: usize) -> DetectorConfig {
    let mut backbone = FpnConfig::torchvision([1, 1, 1, 1]);
    backbone.returned = kind.returned();
    backbone.extra = kind.extra_levels();
    backbone.fpn_norm = matches!(kind, DetectorKind::FasterRcnnV2 | DetectorKind::MaskRcnnV2);
    DetectorConfig {
        backbone,
        representation,
        ..DetectorConfig::resnet50(kind, classes)
    }
}

/// The fixture's detector in `precision`: its `options` row holds the seed, the classes, the
/// representation size, min_size, max_size, box_score_thresh, box_nms_thresh,
/// box_detections_per_img and the RPN's pre- and post-NMS top-n and NMS threshold.
pub fn detector(
    ctx: &GpuContext,
    fixture: &TensorMap,
    kind: DetectorKind,
    precision: Precision,
) -> Detector {
    let o = &fixture["options"].data;
    let options = DetectorOptions {
        min_size: o[3] as usize,
        max_size: o[4] as usize,
        score_thresh: o[5],
        nms_thresh: o[6],
        detections_per_img: o[7] as usize,
        rpn: RpnOptions {
            rpn_pre_nms_top_n_test: o[8] as usize,
            rpn_post_nms_top_n_test: o[9] as usize,
            rpn_nms_thresh: o[10],
            ..RpnOptions::default()
        },
        precision,
        ..DetectorOptions::for_kind(kind)
    };
    let config = config(kind, o[1] as usize, o[2] as usize);
    Detector::random(ctx, config, o[0] as u64, options).unwrap()
}
