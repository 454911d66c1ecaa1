//! The detectors' ops, from the picture to the final boxes, all on the GPU: for the one-stage
//! detectors (RetinaNet, FCOS) torchvision's transform, the levels packed for heads that share
//! their weights across levels (and the group norm of their hidden layers, per level), the
//! per-level top-k of scores, anchors and box decoding, and batched NMS; for the two-stage
//! detectors, the same top-k, decoding and NMS making the RPN's proposals (per level, labelled
//! by level, small boxes removed, left in the resized picture), the multi-scale RoIAlign of
//! them, the box predictor's candidate boxes, and Mask R-CNN's mask selection and pasting.
//! Each derives where things lie from the pictures' shape through one [`DetectionGeometry`],
//! so that they agree.
//!
//! Every one-stage op reading an activation, and RoIAlign, takes it NCHW or channels-last (its
//! kernel's `CHANNELS_LAST` pipeline constant). The box candidates, the mask ops and the
//! two-stage heads' `Linear`, `Softmax` and `ConvTranspose2d` are NCHW only for now, so a
//! two-stage detector's graph stays NCHW. The ops whose outputs are records (the top-k's
//! selection, the decoded candidates, NMS's rows) write them NCHW f32 whatever the graph's
//! layout and precision ([`GraphOp::output_layout`](super::GraphOp::output_layout),
//! [`GraphOp::output_precision`](super::GraphOp::output_precision)).

mod anchors;
mod box_candidates;
mod compact_records;
mod decode_boxes;
mod geometry;
mod group_norm_levels;
mod mask_levels;
mod nms;
mod paste_masks;
mod roi_align;
mod select_masks;
mod stack_levels;
mod top_k;
mod transform;

pub use anchors::AnchorSpec;
pub use box_candidates::BoxCandidates;
pub use compact_records::CompactRecords;
pub use decode_boxes::DecodeBoxes;
pub use geometry::{picture_size, DetectionGeometry, ResizeRule};
pub use group_norm_levels::{GroupNormLevels, HostGroupNorm};
pub use mask_levels::MaskLevels;
pub use nms::{BatchedNms, ScaleToPictures};
pub use paste_masks::PasteMasks;
pub use roi_align::MultiScaleRoiAlign;
pub use select_masks::SelectMasks;
pub use stack_levels::StackLevels;
pub use top_k::TopKScores;
pub use transform::DetectionTransform;

pub use crate::kernels::box_candidates::CandidateSpec;
pub use crate::kernels::box_decode::{BoxCoding, LabelSource};
pub use crate::kernels::compact_records::CompactOptions;
pub use crate::kernels::nms::MAX_CANDIDATES;
pub use crate::kernels::resize::Normalize;
pub use crate::kernels::roi_align::RoiAlignOptions;
pub use crate::kernels::top_k::ScoreMode;
