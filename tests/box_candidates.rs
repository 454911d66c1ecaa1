//! The second stage's candidate boxes (`kernels::box_candidates`, the graph op `BoxCandidates`)
//! against their CPU twin on random proposals, regressions and scores: batches of 2, empty and
//! NaN proposal slots, boxes crossing the picture's borders, tiny proposals whose boxes the
//! size filter drops, log-size deltas past the cap, NaN and infinite regressions, f16
//! regressions; proposals where as many classes pass the threshold as a softmax allows, which
//! fills the slots per proposal; a threshold of 0 (every class); scores that are no
//! probabilities; then the candidates through the batched NMS against the twins' chain; and bad input
//! refused with errors.

mod common;

use common::gpu;
use fpn_wgpu::graph::ops::detect::{BoxCandidates, ResizeRule};
use fpn_wgpu::graph::ops::{GraphOp, Launch, Target};
use fpn_wgpu::kernels::box_candidates::{self, per_proposal, CandidateSpec};
use fpn_wgpu::kernels::nms::{self, NmsOptions};
use fpn_wgpu::kernels::softmax;
use fpn_wgpu::reference::{self, CandidateRule};
use fpn_wgpu::rng::SplitMix64;
use fpn_wgpu::tensor::MemoryFormat;
use fpn_wgpu::{GpuContext, Precision, Tensor};

const EMPTY: [f32; 6] = [0.0, 0.0, 0.0, 0.0, -1.0, f32::from_bits(u32::MAX)];

/// One random case.
struct Case {
    name: &'static str,
    batch: usize,
    rois: usize,
    classes: usize,
    /// The resized picture (height, width).
    image: (usize, usize),
    score_thresh: f32,
    /// How far the logits spread: larger, fewer classes per proposal pass.
    logit_scale: f32,
    /// Proposals whose first 21 or 22 foreground classes share one logit far above the
    /// others.
    crowded: bool,
    precision: Precision,
    seed: u64,
}

/// Proposal records `[N, 1, R, 6]`: boxes of every size, some crossing the borders, some tiny,
/// every 7th slot empty and one with a NaN score.
fn proposals(rng: &mut SplitMix64, case: &Case) -> Vec<f32> {
    let (h, w) = (case.image.0 as f32, case.image.1 as f32);
    let mut out = Vec::new();
    for i in 0..case.batch * case.rois {
        let side = match rng.next_u64() % 8 {
            0 => rng.uniform(0.001, 0.05),
            1 | 2 => rng.uniform(0.5, 10.0),
            _ => rng.uniform(10.0, 0.8 * w),
        };
        let bw = side;
        let bh = (side * rng.uniform(0.5, 2.0)).max(0.001);
        let x1 = rng.uniform(-0.2 * bw, w - 0.8 * bw);
        let y1 = rng.uniform(-0.2 * bh, h - 0.8 * bh);
        let mut rec = [
            x1,
            y1,
            x1 + bw,
            y1 + bh,
            rng.uniform(0.0, 1.0),
            f32::from_bits(1),
        ];
        if i % 7 == 3 {
            rec[4] = -1.0;
            rec[5] = f32::from_bits(u32::MAX);
        }
        if i == 5 {
            rec[4] = f32::NAN;
        }
        out.extend_from_slice(&rec);
    }
    out
}

/// Regressions `[N R, 4 C]`: mostly moderate, some log-size deltas past the cap, a few NaN and
/// infinite values; rounded to the case's precision, so that both sides read the same values.
fn regression(rng: &mut SplitMix64, case: &Case) -> Vec<f32> {
    let len = case.batch * case.rois * 4 * case.classes;
    (0..len)
        .map(|i| {
            let v = match rng.next_u64() % 200 {
                0 => 40.0,
                1 => -40.0,
                2 if i % 4 >= 2 => 25.0,
                3 if i > 4000 => f32::NAN,
                4 if i > 4000 => f32::INFINITY,
                _ => rng.uniform(-3.0, 3.0),
            };
            case.precision.round(v)
        })
        .collect()
}

/// Logits `[N R, C]`; the case's softmax on the GPU turns them into the scores.
fn logits(rng: &mut SplitMix64, case: &Case) -> Vec<f32> {
    let c = case.classes;
    let mut x = rng.vec(
        case.batch * case.rois * c,
        -case.logit_scale,
        case.logit_scale,
    );
    if case.crowded {
        for (row, chunk) in x.chunks_mut(c).enumerate() {
            if row % 3 != 0 {
                continue;
            }
            // 21 equal logits: each probability 1/21 = 0.0476, all strictly above the case's
            // 0.0475, whose slots per proposal are floor(1.001 / 0.0475) = 21: every slot
            // filled. 22 of them: each 1/22, below the threshold.
            let k = if row % 2 == 0 { 21 } else { 22 };
            for (j, v) in chunk.iter_mut().enumerate() {
                *v = if (1..=k).contains(&j) { 10.0 } else { -30.0 };
            }
        }
    }
    x
}

fn rule(case: &Case) -> CandidateRule {
    CandidateRule {
        weights: [10.0, 10.0, 5.0, 5.0],
        xform_clip: (1000.0f64 / 16.0).ln() as f32,
        score_thresh: case.score_thresh,
        min_size: 1e-2,
        clip: (case.image.0 as f32, case.image.1 as f32),
    }
}

/// Whether a box has a side within rounding of the size filter's bound, where the GPU's exp
/// and the CPU's may decide differently.
fn at_size_bound(r: &[f32; 6]) -> bool {
    let near = |s: f32| (s - 1e-2).abs() <= 1e-5;
    near(r[2] - r[0]) || near(r[3] - r[1])
}

/// Runs one case through the graph op and checks every proposal's slots against the twin.
/// Returns the candidates (on the GPU and as the twin's records per image) and the most
/// candidates one proposal had.
fn run_case(ctx: &GpuContext, case: &Case) -> (Tensor, Vec<Vec<[f32; 6]>>, usize) {
    let mut rng = SplitMix64::new(case.seed);
    let (n, r, c) = (case.batch, case.rois, case.classes);
    let props = proposals(&mut rng, case);
    let reg = regression(&mut rng, case);
    let lg = logits(&mut rng, case);
    let prop_t = Tensor::from_slice(ctx, [n, 1, r, 6], &props).unwrap();
    let reg_t = Tensor::from_slice_as(ctx, [n * r, 4 * c, 1, 1], &reg, case.precision).unwrap();
    let logits_t = Tensor::from_slice(ctx, [n * r, c, 1, 1], &lg).unwrap();
    let scores_t = softmax::softmax(ctx, &logits_t).unwrap();
    let scores = scores_t.download(ctx).unwrap();

    // The graph op, on pictures whose resize gives the case's image: a rule that keeps them.
    let resize = ResizeRule {
        min_size: case.image.0.min(case.image.1),
        max_size: 10_000,
        size_divisible: 32,
    };
    let op = BoxCandidates::new(resize, case.score_thresh);
    let pictures = Tensor::empty(ctx, [n, 1, case.image.0, case.image.1]).unwrap();
    let inputs = [&prop_t, &reg_t, &scores_t, &pictures];
    let shapes: Vec<[usize; 4]> = inputs.iter().map(|t| t.shape()).collect();
    let shape = GraphOp::output_shape(&op, &shapes).unwrap();
    let k = per_proposal(c, case.score_thresh);
    assert_eq!(shape, [n, 1, r * k, 6], "{}", case.name);
    let target = Target {
        precision: case.precision,
        layout: MemoryFormat::Nchw,
        cooperative: false,
        winograd: false,
    };
    assert!(op.supports(target.layout, target.precision));
    let out = Tensor::empty(ctx, shape).unwrap();
    let launches = op
        .lower(ctx, &target)
        .unwrap()
        .prepare(ctx, &inputs, &out, Launch::default())
        .unwrap();
    ctx.submit(&launches.iter().collect::<Vec<_>>()).unwrap();
    let got = out.download(ctx).unwrap();

    let rule = rule(case);
    let longer = case.image.0.max(case.image.1) as f32;
    let twin = reference::box_candidates(&props, r, &reg, &scores, c, &rule);
    assert_eq!(twin.len(), n);
    let (mut most, mut total, mut worst, mut bound) = (0, 0, 0.0f32, 0);
    let mut concatenated: Vec<Vec<[f32; 6]>> = vec![Vec::new(); n];
    for row in 0..n * r {
        // The twin on this proposal alone: its candidates, in class order.
        let want = reference::box_candidates(
            &props[row * 6..row * 6 + 6],
            1,
            &reg[row * 4 * c..(row + 1) * 4 * c],
            &scores[row * c..(row + 1) * c],
            c,
            &rule,
        )
        .remove(0);
        concatenated[row / r].extend_from_slice(&want);
        let slots: Vec<[f32; 6]> = got[row * k * 6..(row + 1) * k * 6]
            .chunks(6)
            .map(|s| s.try_into().unwrap())
            .collect();
        let kept = slots.iter().take_while(|s| s[4] >= 0.0).count();
        for s in &slots[kept..] {
            assert_eq!(
                s.map(f32::to_bits),
                EMPTY.map(f32::to_bits),
                "{}: proposal {row}: the slots after the kept ones are empty records",
                case.name
            );
        }
        let (mut i, mut j) = (0, 0);
        while i < kept || j < want.len() {
            let (g, w) = (slots.get(i).filter(|_| i < kept), want.get(j));
            match (g, w) {
                (Some(g), Some(w)) if g[5].to_bits() == w[5].to_bits() => {
                    assert_eq!(g[4].to_bits(), w[4].to_bits(), "{}: scores", case.name);
                    for f in 0..4 {
                        // Relative to the picture: x1 = centre - half width cancels, so the
                        // rounding of a large box's exp shows in a small coordinate.
                        let err = (g[f] - w[f]).abs() / longer;
                        worst = worst.max(err);
                        assert!(
                            err <= 1e-5,
                            "{}: proposal {row} class {}: box {g:?}, twin {w:?}",
                            case.name,
                            w[5].to_bits()
                        );
                    }
                    i += 1;
                    j += 1;
                }
                // One side only: a box at the size filter's bound, decided by rounding.
                (Some(g), w)
                    if at_size_bound(g) && w.is_none_or(|w| w[5].to_bits() > g[5].to_bits()) =>
                {
                    bound += 1;
                    i += 1;
                }
                (_, Some(w)) if at_size_bound(w) => {
                    bound += 1;
                    j += 1;
                }
                _ => panic!(
                    "{}: proposal {row}: GPU slots {:?} against the twin's {want:?}",
                    case.name,
                    &slots[..kept]
                ),
            }
        }
        most = most.max(want.len());
        total += want.len();
    }
    // The whole-image twin lists the same candidates in (proposal, class) order.
    assert_eq!(twin, concatenated, "{}", case.name);
    eprintln!(
        "{} ({}): {total} candidates from {} proposal slots, at most {most} per proposal ({k} slots each), {bound} at the size bound; max box error {worst:e} of the longer side",
        case.name,
        case.precision,
        n * r
    );
    (out, twin, most)
}

fn cases(precision: Precision) -> Vec<Case> {
    vec![
        Case {
            name: "batch 2, 57 proposals, 7 classes",
            batch: 2,
            rois: 57,
            classes: 7,
            image: (150, 202),
            score_thresh: 0.05,
            logit_scale: 3.0,
            crowded: false,
            precision,
            seed: 1,
        },
        Case {
            name: "batch 1, 300 proposals, 91 classes, crowded",
            batch: 1,
            rois: 300,
            classes: 91,
            image: (253, 150),
            score_thresh: 0.0475,
            logit_scale: 4.0,
            crowded: true,
            precision,
            seed: 2,
        },
        Case {
            name: "batch 2, 40 proposals, 12 classes, threshold 0",
            batch: 2,
            rois: 40,
            classes: 12,
            image: (97, 131),
            score_thresh: 0.0,
            logit_scale: 2.0,
            crowded: false,
            precision,
            seed: 3,
        },
    ]
}

#[test]
fn candidates_match_reference() {
    let ctx = gpu();
    for case in cases(Precision::F32) {
        let (_, _, most) = run_case(ctx, &case);
        if case.crowded {
            let k = per_proposal(case.classes, case.score_thresh);
            assert_eq!(most, k, "{}: crowded proposals fill their slots", case.name);
        }
    }
}

#[test]
fn candidates_match_reference_f16_regression() {
    let Some(ctx) = common::f16_gpu() else {
        eprintln!("no shader-f16 on this adapter: the f16 path is refused");
        return;
    };
    for case in cases(Precision::F16) {
        run_case(ctx, &case);
    }
}

/// The candidates through the batched NMS (IoU 0.5, 100 kept, boxes scaled on the way out)
/// against the twins chained; returns the detections kept.
fn check_nms(ctx: &GpuContext, case: &Case, candidates: &Tensor, twin: &[Vec<[f32; 6]>]) -> usize {
    let opts = NmsOptions {
        iou_thresh: 0.5,
        max_detections: 100,
        output_scale: [0.5, 0.75],
    };
    let out = nms::batched_nms(ctx, candidates, &opts).unwrap();
    let got = out.download(ctx).unwrap();
    let longer = case.image.0.max(case.image.1) as f32;
    let mut kept = 0;
    for (i, records) in twin.iter().enumerate() {
        let want = reference::batched_nms(records, opts.iou_thresh, 100, opts.output_scale);
        let got = &got[i * 600..(i + 1) * 600];
        for (j, (g, w)) in got.chunks(6).zip(&want).enumerate() {
            assert_eq!(g[5].to_bits(), w[5].to_bits(), "{}: record {j}", case.name);
            assert_eq!(g[4].to_bits(), w[4].to_bits(), "{}: record {j}", case.name);
            for f in 0..4 {
                assert!(
                    (g[f] - w[f]).abs() <= 1e-5 * longer,
                    "{}: record {j}: {g:?} against {w:?}",
                    case.name
                );
            }
        }
        kept += want.iter().filter(|r| r[4] >= 0.0).count();
    }
    eprintln!("{}: {kept} detections after NMS", case.name);
    kept
}

#[test]
fn candidates_then_nms_match_reference() {
    let ctx = gpu();
    for case in cases(Precision::F32) {
        let (candidates, twin, _) = run_case(ctx, &case);
        assert!(
            check_nms(ctx, &case, &candidates, &twin) > 0,
            "{}",
            case.name
        );
    }
}

/// torchvision's COCO sizes: 1000 proposals of 91 classes per picture, two pictures. The
/// 90,000 (proposal, class) pairs of a picture take 20 slots per proposal at the threshold
/// 0.05, 20,000 candidates, which the NMS takes whole.
#[test]
fn coco_sized_batch_goes_through_nms() {
    let ctx = gpu();
    let case = Case {
        name: "batch 2, 1000 proposals, 91 classes",
        batch: 2,
        rois: 1000,
        classes: 91,
        image: (800, 1216),
        score_thresh: 0.05,
        logit_scale: 5.0,
        crowded: false,
        precision: Precision::F32,
        seed: 4,
    };
    let (candidates, twin, _) = run_case(ctx, &case);
    assert_eq!(candidates.shape(), [2, 1, 20_000, 6]);
    check_nms(ctx, &case, &candidates, &twin);
}

/// Scores summing to more than 1 (no softmax) can pass the threshold in more classes than a
/// proposal has slots: the first ones in class order are kept, as documented.
#[test]
fn scores_that_are_no_probabilities_keep_the_first_classes() {
    let ctx = gpu();
    let (r, c) = (3, 8);
    let spec = CandidateSpec {
        score_thresh: 0.5,
        ..CandidateSpec::faster_rcnn((100.0, 100.0))
    };
    let k = per_proposal(c, spec.score_thresh);
    assert_eq!(k, 2);
    let records: Vec<f32> = (0..r)
        .flat_map(|i| {
            let x = 10.0 * i as f32;
            [x, x, x + 20.0, x + 30.0, 0.9, f32::from_bits(1)]
        })
        .collect();
    let prop = Tensor::from_slice(ctx, [1, 1, r, 6], &records).unwrap();
    let reg = Tensor::from_slice(ctx, [r, 4 * c, 1, 1], &vec![0.0; r * 4 * c]).unwrap();
    let scores = Tensor::from_slice(ctx, [r, c, 1, 1], &vec![0.9; r * c]).unwrap();
    let out = box_candidates::box_candidates(ctx, &prop, &reg, &scores, &spec).unwrap();
    assert_eq!(out.shape(), [1, 1, r * k, 6]);
    let got = out.download(ctx).unwrap();
    for (slot, rec) in got.chunks(6).enumerate() {
        let (i, class) = (slot / k, slot % k + 1);
        let x = 10.0 * i as f32;
        // A zero regression decodes to the proposal itself.
        assert_eq!(rec[..5], [x, x, x + 20.0, x + 30.0, 0.9], "slot {slot}");
        assert_eq!(rec[5].to_bits(), class as u32, "slot {slot}");
    }
}

#[test]
fn slots_per_proposal_follow_the_threshold() {
    // floor(1.001 / t), at most C - 1, at least 1.
    assert_eq!(per_proposal(91, 0.05), 20);
    assert_eq!(per_proposal(91, 0.08), 12);
    assert_eq!(per_proposal(91, 0.5), 2);
    assert_eq!(per_proposal(91, 1.0), 1);
    assert_eq!(per_proposal(91, 2.0), 1);
    assert_eq!(per_proposal(91, 0.0), 90);
    assert_eq!(per_proposal(91, -1.0), 90);
    assert_eq!(per_proposal(91, 1e-30), 90);
    assert_eq!(per_proposal(7, 0.05), 6);
    // 1000 proposals of COCO's classes at torchvision's threshold: within the NMS's reach.
    assert!(1000 * per_proposal(91, 0.05) <= nms::MAX_CANDIDATES);
}

/// Shapes that do not fit, f16 scores or records, bad settings: errors, before any launch.
#[test]
fn bad_input_is_refused() {
    let ctx = gpu();
    let (n, r, c) = (2, 5, 4);
    let prop = Tensor::empty(ctx, [n, 1, r, 6]).unwrap();
    let reg = Tensor::empty(ctx, [n * r, 4 * c, 1, 1]).unwrap();
    let scores = Tensor::empty(ctx, [n * r, c, 1, 1]).unwrap();
    let spec = CandidateSpec::faster_rcnn((100.0, 120.0));
    let k = per_proposal(c, spec.score_thresh);
    let out = Tensor::empty(ctx, [n, 1, r * k, 6]).unwrap();
    assert!(box_candidates::prepare(ctx, &prop, &reg, &scores, &spec, &out).is_ok());
    let refused = |e: fpn_wgpu::Error| {
        assert!(matches!(e, fpn_wgpu::Error::InvalidArgument { .. }), "{e}");
        e.to_string()
    };
    let cases = [
        (
            [n, 1, r, 5],
            [n * r, 4 * c, 1, 1],
            [n * r, c, 1, 1],
            "proposals",
        ),
        (
            [n, 2, r, 6],
            [n * r, 4 * c, 1, 1],
            [n * r, c, 1, 1],
            "proposals",
        ),
        (
            [n, 1, r, 6],
            [n * r, 4 * c, 1, 1],
            [n * r + 1, c, 1, 1],
            "scores",
        ),
        (
            [n, 1, r, 6],
            [n * r, 4 * c, 1, 1],
            [n * r, 1, 1, 1],
            "scores",
        ),
        (
            [n, 1, r, 6],
            [n * r, 4 * c + 4, 1, 1],
            [n * r, c, 1, 1],
            "regression",
        ),
        (
            [n, 1, r, 6],
            [n * r, 4 * c, 2, 1],
            [n * r, c, 1, 1],
            "regression",
        ),
    ];
    for (p, g, s, what) in cases {
        let msg = refused(box_candidates::check_shapes(p, g, s).unwrap_err());
        assert!(msg.contains(what), "{msg}");
    }
    // The wrong output, or the output in an input's buffer.
    let wrong = Tensor::empty(ctx, [n, 1, r * c, 6]).unwrap();
    let msg =
        refused(box_candidates::prepare(ctx, &prop, &reg, &scores, &spec, &wrong).unwrap_err());
    assert!(msg.contains("output"), "{msg}");
    // Settings that are no numbers.
    for bad in [
        CandidateSpec {
            score_thresh: f32::NAN,
            ..spec
        },
        CandidateSpec {
            min_size: f32::INFINITY,
            ..spec
        },
        CandidateSpec {
            weights: [10.0, 0.0, 5.0, 5.0],
            ..spec
        },
    ] {
        refused(box_candidates::prepare(ctx, &prop, &reg, &scores, &bad, &out).unwrap_err());
    }
    if ctx.supports_f16() {
        let s16 = Tensor::empty_as(ctx, [n * r, c, 1, 1], Precision::F16).unwrap();
        let msg =
            refused(box_candidates::prepare(ctx, &prop, &reg, &s16, &spec, &out).unwrap_err());
        assert!(msg.contains("float32"), "{msg}");
        let p16 = Tensor::empty_as(ctx, [n, 1, r, 6], Precision::F16).unwrap();
        refused(box_candidates::prepare(ctx, &p16, &reg, &scores, &spec, &out).unwrap_err());
    }
    // The graph op: the same checks on shapes, and pictures of another batch.
    let op = BoxCandidates::new(ResizeRule::default(), 0.05);
    let good = [
        [n, 1, r, 6],
        [n * r, 4 * c, 1, 1],
        [n * r, c, 1, 1],
        [n, 3, 600, 800],
    ];
    assert_eq!(op.output_shape(&good).unwrap(), [n, 1, r * k, 6]);
    let mut bad = good;
    bad[3][0] = 3;
    refused(op.output_shape(&bad).unwrap_err());
    let mut bad = good;
    bad[1] = [n * r, 4 * c, 1, 2];
    refused(op.output_shape(&bad).unwrap_err());
    refused(op.output_shape(&good[..3]).unwrap_err());
    let nan = BoxCandidates::new(ResizeRule::default(), f32::NAN);
    refused(nan.output_shape(&good).unwrap_err());
    // COCO's 91 classes at an evaluation threshold: 1000 proposals of 90 slots are more
    // candidates than the NMS takes, said in the flags a user can change.
    let coco = [
        [1, 1, 1000, 6],
        [1000, 4 * 91, 1, 1],
        [1000, 91, 1, 1],
        [1, 3, 600, 800],
    ];
    let low = BoxCandidates::new(ResizeRule::default(), 0.001);
    let msg = refused(low.output_shape(&coco).unwrap_err());
    assert!(
        msg.contains("--score-thresh") && msg.contains("--rpn-post-nms-top-n"),
        "{msg}"
    );
    let usual = BoxCandidates::new(ResizeRule::default(), 0.05);
    assert_eq!(usual.output_shape(&coco).unwrap(), [1, 1, 20_000, 6]);
}
