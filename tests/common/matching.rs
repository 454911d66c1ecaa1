//! The rule by which a detector's detections match torchvision's (see `tests/detection.rs`).

use fpn_wgpu::tensor_file::TensorMap;
use fpn_wgpu::{Detections, Precision};

/// torchvision's detections of one picture.
pub struct Expected {
    pub boxes: Vec<[f32; 4]>,
    pub scores: Vec<f32>,
    pub labels: Vec<i64>,
}

impl Expected {
    /// Picture `i`'s detections in a detection fixture: `boxes.{i}`, `scores.{i}`, `labels.{i}`.
    pub fn from_fixture(fixture: &TensorMap, i: usize) -> Self {
        Expected {
            boxes: fixture[&format!("boxes.{i}")]
                .data
                .chunks_exact(4)
                .map(|b| [b[0], b[1], b[2], b[3]])
                .collect(),
            scores: fixture[&format!("scores.{i}")].data.clone(),
            labels: fixture[&format!("labels.{i}")]
                .data
                .iter()
                .map(|&l| l as i64)
                .collect(),
        }
    }
}

pub fn iou(a: [f32; 4], b: [f32; 4]) -> f32 {
    let area = |r: [f32; 4]| (r[2] - r[0]) * (r[3] - r[1]);
    let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = w * h;
    inter / (area(a) + area(b) - inter)
}

/// The largest coordinate difference.
pub fn distance(a: [f32; 4], b: [f32; 4]) -> f32 {
    (0..4).map(|k| (a[k] - b[k]).abs()).fold(0.0, f32::max)
}

/// How close a detection must be to torchvision's, by the precision of the activations.
#[derive(Clone, Copy)]
pub struct Tolerance {
    /// Each coordinate, as a fraction of the picture's longer side.
    pub coordinate: f32,
    pub score: f32,
    /// Detections scoring this close to the threshold may go unmatched.
    pub near_threshold: f32,
    /// The IoU a match needs; `None`: the coordinates alone decide (f16 moves small boxes
    /// by more than an IoU bound allows).
    pub iou: Option<f32>,
    /// The share of each side's detections that may go unmatched away from the threshold.
    pub unmatched: f32,
}

impl Tolerance {
    pub fn of(precision: Precision) -> Self {
        match precision {
            Precision::F32 => Tolerance {
                coordinate: 1e-3,
                score: 1e-4,
                near_threshold: 1e-3,
                iou: Some(0.99),
                unmatched: 0.0,
            },
            Precision::F16 => Tolerance {
                coordinate: 1e-2,
                score: 1e-2,
                near_threshold: 1e-2,
                iou: None,
                unmatched: 0.03,
            },
        }
    }
}

/// IoU at least the tolerance's; for boxes of no area (clipped flat at the picture's border),
/// where IoU is 0/0, or without an IoU bound, the coordinates within the box tolerance.
pub fn same_box(a: [f32; 4], b: [f32; 4], longer: f32, tol: Tolerance) -> bool {
    let flat = |r: [f32; 4]| (r[2] - r[0]) * (r[3] - r[1]) == 0.0;
    match tol.iou {
        Some(bound) if !(flat(a) && flat(b)) => iou(a, b) >= bound,
        _ => distance(a, b) <= tol.coordinate * longer,
    }
}

/// How one picture's detections compare: the pairs matched, the worst errors among them.
pub struct Matched {
    /// (torchvision's index, ours) per match.
    pub pairs: Vec<(usize, usize)>,
    /// The largest coordinate difference of a match, in pixels.
    pub worst_box: f32,
    /// The largest score difference of a match.
    pub worst_score: f32,
}

/// Checks the rule for one picture; returns the matches.
pub fn compare(
    case: &str,
    got: &Detections,
    want: &Expected,
    longer: f32,
    thresh: f32,
    tol: Tolerance,
) -> Matched {
    let near_thresh = |s: f32| (s - thresh).abs() <= tol.near_threshold;
    let mut used = vec![false; got.len()];
    let (mut worst_box, mut worst_score) = (0.0f32, 0.0f32);
    let mut pairs = Vec::new();
    let mut unmatched_theirs = 0;
    for (j, (&b, (&s, &l))) in want
        .boxes
        .iter()
        .zip(want.scores.iter().zip(&want.labels))
        .enumerate()
    {
        let best = (0..got.len())
            .filter(|&i| !used[i] && got.labels[i] == l)
            .min_by(|&x, &y| distance(got.boxes[x], b).total_cmp(&distance(got.boxes[y], b)));
        let Some(i) = best.filter(|&i| same_box(got.boxes[i], b, longer, tol)) else {
            if !near_thresh(s) {
                eprintln!("{case}: torchvision's detection {j} (label {l}, score {s}, box {b:?}) has no match");
                unmatched_theirs += 1;
            }
            continue;
        };
        used[i] = true;
        pairs.push((j, i));
        let box_err = (0..4)
            .map(|k| (got.boxes[i][k] - b[k]).abs())
            .fold(0.0, f32::max);
        let score_err = (got.scores[i] - s).abs();
        assert!(
            box_err <= tol.coordinate * longer,
            "{case}: detection {j}'s box {:?} is {box_err} from torchvision's {b:?}",
            got.boxes[i]
        );
        assert!(
            score_err <= tol.score,
            "{case}: detection {j}'s score {} is {score_err} from torchvision's {s}",
            got.scores[i]
        );
        worst_box = worst_box.max(box_err);
        worst_score = worst_score.max(score_err);
    }
    let mut unmatched_ours = 0;
    for (i, &u) in used.iter().enumerate() {
        if !u && !near_thresh(got.scores[i]) {
            eprintln!(
                "{case}: our detection {i} (label {}, score {}, box {:?}) is not torchvision's",
                got.labels[i], got.scores[i], got.boxes[i]
            );
            unmatched_ours += 1;
        }
    }
    let allowed = |n: usize| (tol.unmatched * n as f32).floor() as usize;
    assert!(
        unmatched_theirs <= allowed(want.scores.len()) && unmatched_ours <= allowed(got.len()),
        "{case}: {unmatched_theirs} of torchvision's {} and {unmatched_ours} of our {} detections unmatched",
        want.scores.len(),
        got.len()
    );
    Matched {
        pairs,
        worst_box,
        worst_score,
    }
}
