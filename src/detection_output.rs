//! What `fpn detect` writes: COCO results (JSON), with Mask R-CNN's masks as COCO's compressed
//! run-length encoding, and the boxes (and masks) drawn on the picture.

use image::{Rgb, RgbImage};
use serde::{Deserialize, Serialize};

use crate::model::{Detections, Masks};

/// The probability above which a mask's pixel is the object's, as torchvision's and COCO's
/// evaluation binarise Mask R-CNN's masks.
pub const MASK_THRESHOLD: f32 = 0.5;

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
    /// Mask R-CNN: the mask above [`MASK_THRESHOLD`], as COCO's compressed RLE.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segmentation: Option<Rle>,
}

/// A binary mask as COCO's compressed run-length encoding (pycocotools' `mask.encode`, with
/// `counts` as a string): `size` [H, W], `counts` the lengths of alternating runs of 0s and 1s
/// over the pixels in column-major order (down each column, left to right), starting with 0s,
/// each written as pycocotools' `rleToString` does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rle {
    /// Height and width.
    pub size: [usize; 2],
    /// The runs, LEB128-like in 6-bit characters from `0` (48), each run after the third
    /// written as its difference from the run two before.
    pub counts: String,
}

impl Rle {
    /// Encodes the `height` x `width` mask whose pixel `(x, y)` is set where `set(y * width +
    /// x)` (row-major indices, as [`Masks`] stores them).
    pub fn encode(height: usize, width: usize, set: impl Fn(usize) -> bool) -> Rle {
        let mut runs: Vec<i64> = Vec::new();
        let (mut current, mut length) = (false, 0i64);
        for x in 0..width {
            for y in 0..height {
                let v = set(y * width + x);
                if v != current {
                    runs.push(length);
                    current = v;
                    length = 0;
                }
                length += 1;
            }
        }
        runs.push(length);
        let mut counts = String::new();
        for (i, &run) in runs.iter().enumerate() {
            let mut x = if i > 2 { run - runs[i - 2] } else { run };
            loop {
                let mut c = (x & 0x1f) as u8;
                // Arithmetic shift: a negative difference ends in -1, not 0.
                x >>= 5;
                let more = if c & 0x10 != 0 { x != -1 } else { x != 0 };
                if more {
                    c |= 0x20;
                }
                counts.push(char::from(c + 48));
                if !more {
                    break;
                }
            }
        }
        Rle {
            size: [height, width],
            counts,
        }
    }

    /// Mask `i` of `masks` above [`MASK_THRESHOLD`]; `None` past the last.
    pub fn of_mask(masks: &Masks, i: usize) -> Option<Rle> {
        let mask = masks.get(i)?;
        Some(Rle::encode(masks.height, masks.width, |p| {
            mask[p] > MASK_THRESHOLD
        }))
    }
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
                segmentation: det.masks.as_ref().and_then(|m| Rle::of_mask(m, i)),
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

/// How much of a mask's colour covers the picture under it.
const MASK_OPACITY: f32 = 0.45;

/// The picture with each detection's box drawn in its label's colour (2 pixels wide) and its
/// label number on a tag at the top-left corner; the best-scoring boxes drawn last, on top.
/// Mask R-CNN's masks (the pixels above [`MASK_THRESHOLD`]) are laid over the picture in the
/// same colours, semi-transparent, under the boxes.
pub fn draw_detections(picture: &RgbImage, det: &Detections) -> RgbImage {
    let mut canvas = picture.clone();
    if let Some(masks) = &det.masks {
        let (w, h) = canvas.dimensions();
        // Masks of another size than the picture's are not its: they are left out.
        if (masks.height, masks.width) == (h as usize, w as usize) {
            for i in (0..det.len()).rev() {
                let (Some(mask), c) = (masks.get(i), colour(det.labels[i])) else {
                    continue;
                };
                for (p, _) in mask.iter().enumerate().filter(|(_, &v)| v > MASK_THRESHOLD) {
                    let (x, y) = ((p % masks.width) as u32, (p / masks.width) as u32);
                    let under = canvas.get_pixel_mut(x, y);
                    for k in 0..3 {
                        let mixed =
                            under[k] as f32 * (1.0 - MASK_OPACITY) + c[k] as f32 * MASK_OPACITY;
                        under[k] = mixed.round() as u8;
                    }
                }
            }
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Strings pycocotools 2.0.11's `mask.encode` gives for the masks [`pattern`] makes
    /// (height, width, pattern, counts), printed by `tests/fixtures/make_rle_fixtures.py`:
    /// empty and full masks, single pixels, runs longer than one character holds, runs
    /// shorter than the run two before (negative differences).
    const PYCOCOTOOLS: [(usize, usize, u8, &str); 10] = [
        (1, 1, 0, "1"),
        (1, 1, 1, "01"),
        (3, 4, 2, "022OO0002"),
        (2, 3, 5, "3110"),
        (
            40,
            57,
            3,
            "X99m04L4M2N2O0O2O0O2O0000000000000001N101N101N2N3L4Ljn0",
        ),
        (9, 7, 2, "022O10N01100O01O32ON30K10O00010O"),
        (33, 70, 4, "ST1ST1"),
        (14, 12, 5, "771O5KK55KK55KK55L04KK55KK55KK55KK55L04KK55K"),
        (57, 75, 1, "0cU4"),
        (50, 41, 0, "RP2"),
    ];

    /// Pixel (x, y) of pattern `k` of an `h` x `w` mask; the fixture script has the same
    /// formulas.
    fn pattern(h: usize, w: usize, k: u8, y: usize, x: usize) -> bool {
        match k {
            0 => false,
            1 => true,
            2 => (x * 7 + y * 3 + (x * y) % 5) % 11 < 4,
            3 => {
                let r = (h.min(w) / 3) as i64;
                let (dx, dy) = (x as i64 - (w / 3) as i64, y as i64 - (h / 2) as i64);
                dx * dx + dy * dy < r * r
            }
            4 => x >= w / 2,
            _ => (x / 5 + y / 7).is_multiple_of(2) != (x * y).is_multiple_of(13),
        }
    }

    #[test]
    fn rle_matches_pycocotools() {
        for (h, w, k, want) in PYCOCOTOOLS {
            let rle = Rle::encode(h, w, |p| pattern(h, w, k, p / w, p % w));
            assert_eq!(rle.size, [h, w]);
            assert_eq!(rle.counts, want, "{h}x{w} pattern {k}");
        }
    }

    /// A mask above the threshold in detection order, and no segmentation without masks.
    #[test]
    fn coco_results_carry_the_masks_above_one_half() {
        let mut det = Detections {
            boxes: vec![[0.0, 0.0, 2.0, 1.0]; 2],
            scores: vec![0.9, 0.8],
            labels: vec![1, 2],
            masks: None,
        };
        assert_eq!(coco_results(3, &det, None)[0].segmentation, None);
        // Two 2x3 masks, row-major: the first set at (1, 0) and (2, 1), the second nowhere
        // above 0.5 (0.5 itself is not above).
        det.masks = Some(Masks {
            height: 2,
            width: 3,
            data: vec![0.1, 0.7, 0.2, 0.0, 0.4, 0.6, 0.5, 0.5, 0.0, 0.0, 0.0, 0.0],
        });
        let results = coco_results(3, &det, None);
        let want = Rle::encode(2, 3, |p| p == 1 || p == 5);
        // Column-major: 0 0 | 1 0 | 0 1 -> runs 2, 1, 2, 1, the fourth written as its
        // difference from the second (pycocotools gives "2120").
        assert_eq!(want.counts, "2120");
        assert_eq!(results[0].segmentation.as_ref(), Some(&want));
        assert_eq!(
            results[1].segmentation.as_ref().map(|r| r.counts.as_str()),
            Some("6")
        );
        let json = serde_json::to_string(&results[0]).unwrap();
        assert!(
            json.contains(r#""segmentation":{"size":[2,3],"counts":"2120"}"#),
            "{json}"
        );
    }

    /// Mask pixels above one half take a blend of the label's colour, the others and the
    /// pixels of a picture of another size are left alone.
    #[test]
    fn masks_are_laid_over_the_picture_under_the_boxes() {
        let picture = RgbImage::from_pixel(40, 40, Rgb([100, 100, 100]));
        let mut data = vec![0.0; 40 * 40];
        data[30 * 40 + 15] = 0.9;
        data[31 * 40 + 15] = 0.4;
        let det = Detections {
            boxes: vec![[2.0, 20.0, 30.0, 38.0]],
            scores: vec![0.9],
            labels: vec![1],
            masks: Some(Masks {
                height: 40,
                width: 40,
                data,
            }),
        };
        let drawn = draw_detections(&picture, &det);
        let c = colour(1);
        let blend =
            |k: usize| (100.0 * (1.0 - MASK_OPACITY) + c[k] as f32 * MASK_OPACITY).round() as u8;
        assert_eq!(
            *drawn.get_pixel(15, 30),
            Rgb([blend(0), blend(1), blend(2)])
        );
        assert_eq!(*drawn.get_pixel(15, 31), Rgb([100, 100, 100]));
        let elsewhere = RgbImage::from_pixel(41, 40, Rgb([100, 100, 100]));
        assert_eq!(
            *draw_detections(&elsewhere, &det).get_pixel(15, 30),
            Rgb([100, 100, 100])
        );
    }
}
