//! What `fpn detect` writes: COCO results (JSON) and the boxes drawn on the picture.

use image::{Rgb, RgbImage};
use serde::{Deserialize, Serialize};

use crate::model::Detections;

/// torchvision's COCO category names, indexed by the 91-class models' labels (`N/A` for the
/// ids COCO leaves unused, `__background__` for 0).
pub const COCO_CATEGORIES: [&str; 91] = [
    "__background__",
    "person",
    "bicycle",
    "car",
    "motorcycle",
    "airplane",
    "bus",
    "train",
    "truck",
    "boat",
    "traffic light",
    "fire hydrant",
    "N/A",
    "stop sign",
    "parking meter",
    "bench",
    "bird",
    "cat",
    "dog",
    "horse",
    "sheep",
    "cow",
    "elephant",
    "bear",
    "zebra",
    "giraffe",
    "N/A",
    "backpack",
    "umbrella",
    "N/A",
    "N/A",
    "handbag",
    "tie",
    "suitcase",
    "frisbee",
    "skis",
    "snowboard",
    "sports ball",
    "kite",
    "baseball bat",
    "baseball glove",
    "skateboard",
    "surfboard",
    "tennis racket",
    "bottle",
    "N/A",
    "wine glass",
    "cup",
    "fork",
    "knife",
    "spoon",
    "bowl",
    "banana",
    "apple",
    "sandwich",
    "orange",
    "broccoli",
    "carrot",
    "hot dog",
    "pizza",
    "donut",
    "cake",
    "chair",
    "couch",
    "potted plant",
    "bed",
    "N/A",
    "dining table",
    "N/A",
    "N/A",
    "toilet",
    "N/A",
    "tv",
    "laptop",
    "mouse",
    "remote",
    "keyboard",
    "cell phone",
    "microwave",
    "oven",
    "toaster",
    "sink",
    "refrigerator",
    "N/A",
    "book",
    "clock",
    "vase",
    "scissors",
    "teddy bear",
    "hair drier",
    "toothbrush",
];

/// One detection as a COCO results entry (`bbox` is x, y, width, height in pixels), with the
/// category's name where it is known. Read back as written (a missing name is `None`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CocoResult {
    /// The picture's id.
    pub image_id: u64,
    /// The label.
    pub category_id: i64,
    /// The label's name, where the model's classes have names.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub category_name: Option<String>,
    /// x, y, width, height.
    pub bbox: [f32; 4],
    /// The score.
    pub score: f32,
}

/// The COCO results entries of one picture's detections; `names` gives each label's name.
pub fn coco_results(image_id: u64, det: &Detections, names: Option<&[String]>) -> Vec<CocoResult> {
    (0..det.len())
        .map(|i| {
            let [x1, y1, x2, y2] = det.boxes[i];
            let label = det.labels[i];
            CocoResult {
                image_id,
                category_id: label,
                category_name: names
                    .and_then(|n| usize::try_from(label).ok().and_then(|l| n.get(l)))
                    .cloned(),
                bbox: [x1, y1, x2 - x1, y2 - y1],
                score: det.scores[i],
            }
        })
        .collect()
}

/// A colour per label, bright and far apart for neighbouring labels.
fn colour(label: i64) -> Rgb<u8> {
    let h = (label as f32 * 0.618_034).fract() * 6.0;
    let x = (1.0 - (h % 2.0 - 1.0).abs()) * 255.0;
    let (r, g, b) = match h as u32 {
        0 => (255.0, x, 0.0),
        1 => (x, 255.0, 0.0),
        2 => (0.0, 255.0, x),
        3 => (0.0, x, 255.0),
        4 => (x, 0.0, 255.0),
        _ => (255.0, 0.0, x),
    };
    Rgb([r as u8, g as u8, b as u8])
}

/// 3x5 bitmaps of the digits, one row per 3 bits, top row first.
const DIGITS: [[u8; 5]; 10] = [
    [7, 5, 5, 5, 7],
    [2, 6, 2, 2, 7],
    [7, 1, 7, 4, 7],
    [7, 1, 7, 1, 7],
    [5, 5, 7, 1, 1],
    [7, 4, 7, 1, 7],
    [7, 4, 7, 5, 7],
    [7, 1, 1, 1, 1],
    [7, 5, 7, 5, 7],
    [7, 5, 7, 1, 7],
];
/// Pixels per bitmap dot of the label text.
const DOT: u32 = 2;

fn fill(canvas: &mut RgbImage, x0: i64, y0: i64, w: i64, h: i64, c: Rgb<u8>) {
    let (cw, ch) = (canvas.width() as i64, canvas.height() as i64);
    for y in y0.max(0)..(y0 + h).min(ch) {
        for x in x0.max(0)..(x0 + w).min(cw) {
            canvas.put_pixel(x as u32, y as u32, c);
        }
    }
}

/// The picture with each detection's box drawn in its label's colour (2 pixels wide) and its
/// label number on a tag at the top-left corner; the best-scoring boxes drawn last, on top.
pub fn draw_detections(picture: &RgbImage, det: &Detections) -> RgbImage {
    let mut canvas = picture.clone();
    for i in (0..det.len()).rev() {
        let c = colour(det.labels[i]);
        let [x1, y1, x2, y2] = det.boxes[i].map(|v| v.round() as i64);
        let t = 2;
        fill(&mut canvas, x1, y1, x2 - x1 + 1, t, c);
        fill(&mut canvas, x1, y2 - t + 1, x2 - x1 + 1, t, c);
        fill(&mut canvas, x1, y1, t, y2 - y1 + 1, c);
        fill(&mut canvas, x2 - t + 1, y1, t, y2 - y1 + 1, c);
        let text = det.labels[i].to_string();
        let dot = DOT as i64;
        let tag_w = text.len() as i64 * 4 * dot + dot;
        let tag_h = 7 * dot;
        let ty = (y1 - tag_h).max(0);
        fill(&mut canvas, x1, ty, tag_w, tag_h, c);
        for (k, ch) in text.bytes().enumerate() {
            let Some(bits) = ch.checked_sub(b'0').and_then(|d| DIGITS.get(d as usize)) else {
                continue;
            };
            for (row, &b) in bits.iter().enumerate() {
                for col in 0..3 {
                    if b & (4 >> col) != 0 {
                        let x = x1 + dot + (k as i64 * 4 + col) * dot;
                        let y = ty + dot + row as i64 * dot;
                        fill(&mut canvas, x, y, dot, dot, Rgb([0, 0, 0]));
                    }
                }
            }
        }
    }
    canvas
}
