//! The per-level top-k selection against its CPU reference on random stacked pyramids: batches
//! of 2, five levels packed beside and below a big one, odd sizes, RetinaNet's 9 anchors by 3
//! classes and FCOS's 1 by 80 with centerness, far more candidates than k and fewer, none at
//! all, ties, NaN logits, and huge logits outside the levels that must be ignored.

mod common;

use std::collections::HashMap;

use common::gpu;
use fpn_wgpu::kernels::top_k::{self, LevelRegion, ScoreMode, TopKOptions, UNUSED_INDEX};
use fpn_wgpu::reference;
use fpn_wgpu::rng::SplitMix64;
use fpn_wgpu::tensor::MemoryFormat;
use fpn_wgpu::{Error, GpuContext, Precision, Tensor};

/// How far a GPU score may be from the reference's, and how close to the k-th score (or to the
/// threshold) an element must be for the two selections to disagree about it.
const SCORE_TOL: f32 = 1e-6;

/// The logit every element outside the levels holds: a score of 1, above everything inside.
const OUTSIDE: f32 = 40.0;

/// A level's (y0, x0, height, width) in the stacked map.
type Region = (usize, usize, usize, usize);

/// One random case.
struct Case {
    name: &'static str,
    batch: usize,
    map: (usize, usize),
    /// (y0, x0, height, width) per level.
    levels: Vec<Region>,
    anchors: usize,
    classes: usize,
    k: usize,
    thresh: f32,
    centerness: bool,
    /// Logits are uniform in this range...
    logits: (f32, f32),
    /// ...rounded to multiples of this where it is not 0 (few distinct scores: many ties).
    quantum: f32,
    /// The share of the levels' logits that are NaN.
    nan_share: f32,
}

/// Five levels packed like a pyramid: the big one at the left, the others stacked to its right.
fn pyramid(h: usize, w: usize) -> ((usize, usize), Vec<Region>) {
    let mut levels = vec![(0, 0, h, w)];
    let (mut y, mut lh, mut lw) = (0, h, w);
    for _ in 0..4 {
        lh = lh.div_ceil(2);
        lw = lw.div_ceil(2);
        levels.push((y, w, lh, lw));
        y += lh;
    }
    ((h.max(y), w + w.div_ceil(2)), levels)
}

fn cases() -> Vec<Case> {
    let (map, levels) = pyramid(32, 40);
    let (odd_map, odd_levels) = pyramid(25, 19);
    vec![
        // Level 0 has about 21k candidates for k = 1000; levels 3 and 4 fewer than k.
        Case {
            name: "retinanet pyramid, batch 2, k 1000",
            batch: 2,
            map,
            levels: levels.clone(),
            anchors: 9,
            classes: 3,
            k: 1000,
            thresh: 0.05,
            centerness: false,
            logits: (-6.0, 2.0),
            quantum: 0.0,
            nan_share: 0.0,
        },
        Case {
            name: "retinanet pyramid, odd sizes, k 7, NaN logits",
            batch: 1,
            map: (odd_map.0 + 1, odd_map.1 + 2),
            levels: odd_levels.clone(),
            anchors: 9,
            classes: 3,
            k: 7,
            thresh: 0.05,
            centerness: false,
            logits: (-6.0, 2.0),
            quantum: 0.0,
            nan_share: 0.01,
        },
        Case {
            name: "fcos pyramid with centerness, batch 2",
            batch: 2,
            map: odd_map,
            levels: odd_levels.clone(),
            anchors: 1,
            classes: 80,
            k: 100,
            thresh: 0.05,
            centerness: true,
            logits: (-8.0, 1.0),
            quantum: 0.0,
            nan_share: 0.002,
        },
        Case {
            name: "fewer candidates than k",
            batch: 2,
            map: (9, 13),
            levels: vec![(0, 0, 9, 7), (0, 7, 5, 6), (5, 7, 3, 3)],
            anchors: 3,
            classes: 5,
            k: 1000,
            thresh: 0.9,
            centerness: false,
            logits: (-4.0, 3.0),
            quantum: 0.0,
            nan_share: 0.0,
        },
        Case {
            name: "no candidates",
            batch: 1,
            map: (11, 8),
            levels: vec![(1, 1, 6, 6), (7, 0, 4, 3)],
            anchors: 9,
            classes: 3,
            k: 10,
            thresh: 0.5,
            centerness: false,
            logits: (-10.0, -5.0),
            quantum: 0.0,
            nan_share: 0.0,
        },
        Case {
            name: "many ties at the k-th score",
            batch: 2,
            map,
            levels,
            anchors: 9,
            classes: 3,
            k: 50,
            thresh: 0.05,
            centerness: false,
            logits: (-4.0, 4.0),
            quantum: 1.0,
            nan_share: 0.0,
        },
        // Scores of exactly 0 (logits far below) pass a negative threshold, as in torchvision.
        Case {
            name: "negative threshold, centerness, k 1",
            batch: 1,
            map: (7, 9),
            levels: vec![(0, 0, 7, 5), (0, 5, 4, 4), (4, 5, 2, 2)],
            anchors: 2,
            classes: 4,
            k: 1,
            thresh: -0.5,
            centerness: true,
            logits: (-200.0, -100.0),
            quantum: 0.0,
            nan_share: 0.0,
        },
    ]
}

/// Uniform random values in the levels' rectangles, `OUTSIDE` elsewhere.
fn stacked(
    rng: &mut SplitMix64,
    shape: [usize; 4],
    levels: &[Region],
    (lo, hi): (f32, f32),
    quantum: f32,
    nan_share: f32,
) -> Vec<f32> {
    let [n, c, h, w] = shape;
    let mut data = vec![OUTSIDE; n * c * h * w];
    for plane in 0..n * c {
        for &(y0, x0, lh, lw) in levels {
            for y in y0..y0 + lh {
                for x in x0..x0 + lw {
                    let mut v = rng.uniform(lo, hi);
                    if quantum > 0.0 {
                        v = (v / quantum).round() * quantum;
                    }
                    if rng.next_f32() < nan_share {
                        v = f32::NAN;
                    }
                    data[(plane * h + y) * w + x] = v;
                }
            }
        }
    }
    data
}

fn regions(levels: &[Region]) -> Vec<LevelRegion> {
    levels
        .iter()
        .map(|&(y0, x0, height, width)| LevelRegion {
            y0: y0 as u32,
            x0: x0 as u32,
            height: height as u32,
            width: width as u32,
        })
        .collect()
}

/// A case's inputs on the host and the GPU.
struct Inputs {
    shape: [usize; 4],
    logits: Vec<f32>,
    centerness: Option<Vec<f32>>,
    logits_gpu: Tensor,
    centerness_gpu: Option<Tensor>,
}

fn inputs(ctx: &GpuContext, rng: &mut SplitMix64, c: &Case) -> Inputs {
    let shape = [c.batch, c.anchors * c.classes, c.map.0, c.map.1];
    let logits = stacked(rng, shape, &c.levels, c.logits, c.quantum, c.nan_share);
    let centerness = c.centerness.then(|| {
        let ctr_shape = [c.batch, c.anchors, c.map.0, c.map.1];
        stacked(rng, ctr_shape, &c.levels, (-3.0, 3.0), 0.0, c.nan_share)
    });
    let logits_gpu = Tensor::from_slice(ctx, shape, &logits).unwrap();
    let centerness_gpu = centerness
        .as_ref()
        .map(|v| Tensor::from_slice(ctx, [c.batch, c.anchors, c.map.0, c.map.1], v).unwrap());
    Inputs {
        shape,
        logits,
        centerness,
        logits_gpu,
        centerness_gpu,
    }
}

fn options(c: &Case) -> TopKOptions {
    TopKOptions {
        anchors: c.anchors,
        classes: c.classes,
        k: c.k,
        score_thresh: c.thresh,
        mode: if c.centerness {
            ScoreMode::SigmoidWithCenterness
        } else {
            ScoreMode::Sigmoid
        },
    }
}

/// Checks the raw output: per segment, the used slots come first and the others hold exactly
/// score -1 and index 0xffffffff. Returns the selection per image and level.
fn decode(values: &[f32], shape: [usize; 4], case: &str) -> Vec<Vec<Vec<(f32, u32)>>> {
    let [n, levels, k, _] = shape;
    assert_eq!(values.len(), n * levels * k * 2, "{case}: output length");
    for (seg, slots) in values.chunks_exact(2 * k).enumerate() {
        let used = slots
            .chunks_exact(2)
            .take_while(|s| s[1].to_bits() != UNUSED_INDEX)
            .count();
        for s in slots.chunks_exact(2).skip(used) {
            assert_eq!(
                (s[0].to_bits(), s[1].to_bits()),
                ((-1.0f32).to_bits(), UNUSED_INDEX),
                "{case}: segment {seg}: a used slot after an unused one, or a bad unused slot"
            );
        }
    }
    top_k::unpack(values, shape).unwrap()
}

/// Compares one segment's GPU selection with the reference's: the same index sets, except for
/// elements whose score lies within `SCORE_TOL` of the boundary (the k-th score where k were
/// selected, else the threshold); every GPU score within `SCORE_TOL` of the reference's.
/// Returns how many elements were allowed to differ.
fn compare_segment(
    what: &str,
    got: &[(f32, u32)],
    want: &[(f32, u32)],
    all_scores: &HashMap<u32, f32>,
    k: usize,
    thresh: f32,
) -> usize {
    assert!(got.len() <= k, "{what}: {} slots used of {k}", got.len());
    if want.len() == k {
        assert_eq!(got.len(), k, "{what}: the reference selects k");
    }
    let boundary = if want.len() == k {
        want[k - 1].0
    } else {
        thresh
    };
    let got_set: HashMap<u32, f32> = got.iter().map(|&(s, i)| (i, s)).collect();
    assert_eq!(got_set.len(), got.len(), "{what}: an index selected twice");
    let want_set: HashMap<u32, f32> = want.iter().map(|&(s, i)| (i, s)).collect();
    for (&i, &s) in &got_set {
        let Some(&cpu) = all_scores.get(&i) else {
            panic!("{what}: index {i} is no element of the level (or its score is NaN)");
        };
        assert!(
            (s - cpu).abs() <= SCORE_TOL,
            "{what}: index {i} has score {s} on the GPU, {cpu} in the reference"
        );
    }
    let mut differing = 0;
    for (&i, _) in got_set.iter().filter(|(i, _)| !want_set.contains_key(i)) {
        let cpu = all_scores[&i];
        assert!(
            (cpu - boundary).abs() <= SCORE_TOL,
            "{what}: the GPU selected index {i} (score {cpu}), which the reference did not, and it is not at the boundary {boundary}"
        );
        differing += 1;
    }
    for (&i, &cpu) in want_set.iter().filter(|(i, _)| !got_set.contains_key(i)) {
        assert!(
            (cpu - boundary).abs() <= SCORE_TOL,
            "{what}: the reference selected index {i} (score {cpu}), which the GPU did not, and it is not at the boundary {boundary}"
        );
        differing += 1;
    }
    differing
}

/// Checks a downloaded output against the reference for the case's inputs.
fn check_against_reference(case: &Case, inputs: &Inputs, values: &[f32]) {
    let out_shape = top_k::output_shape(inputs.shape, case.levels.len(), case.k);
    let got = decode(values, out_shape, case.name);
    let select = |k: usize, thresh: f32| {
        reference::top_k_scores(
            &inputs.logits,
            inputs.shape,
            inputs.centerness.as_deref(),
            &case.levels,
            case.anchors,
            case.classes,
            k,
            thresh,
            case.centerness,
        )
    };
    let want = select(case.k, case.thresh);
    // Every non-NaN element's score, for the elements the selections disagree about.
    let all = select(usize::MAX, f32::NEG_INFINITY);
    let mut differing = 0;
    let mut selected = 0;
    for n in 0..case.batch {
        for l in 0..case.levels.len() {
            let scores: HashMap<u32, f32> = all[n][l].iter().map(|&(s, i)| (i, s)).collect();
            let what = format!("{}: image {n}, level {l}", case.name);
            differing +=
                compare_segment(&what, &got[n][l], &want[n][l], &scores, case.k, case.thresh);
            selected += want[n][l].len();
        }
    }
    eprintln!(
        "{}: {selected} selected, {differing} at the boundary chosen differently",
        case.name
    );
}

#[test]
fn top_k_matches_reference_on_random_pyramids() {
    let ctx = gpu();
    let mut rng = SplitMix64::new(41);
    for case in cases() {
        let inputs = inputs(ctx, &mut rng, &case);
        let out = top_k::top_k(
            ctx,
            &inputs.logits_gpu,
            inputs.centerness_gpu.as_ref(),
            &regions(&case.levels),
            &options(&case),
        )
        .unwrap_or_else(|e| panic!("{}: {e}", case.name));
        let values = out.download(ctx).unwrap();
        check_against_reference(&case, &inputs, &values);
    }
}

/// Logits and centerness stored channels-last (a detector's on cooperative matrices: their
/// channels padded to 16), f32 and f16 where the adapter has it: the selection is that of
/// their values, as for NCHW ones.
#[test]
fn top_k_reads_channels_last_logits() {
    let ctx = gpu();
    let mut precisions = vec![Precision::F32];
    if common::f16_gpu().is_some() {
        precisions.push(Precision::F16);
    }
    let mut rng = SplitMix64::new(47);
    for precision in precisions {
        for case in cases().into_iter().filter(|c| c.map.0 * c.map.1 < 100_000) {
            let mut inputs = inputs(ctx, &mut rng, &case);
            let round = |v: &mut Vec<f32>| v.iter_mut().for_each(|x| *x = precision.round(*x));
            round(&mut inputs.logits);
            if let Some(c) = inputs.centerness.as_mut() {
                round(c);
            }
            let upload = |v: &[f32], shape| {
                Tensor::from_slice_with(ctx, shape, v, precision, MemoryFormat::ChannelsLast)
                    .unwrap()
            };
            inputs.logits_gpu = upload(&inputs.logits, inputs.shape);
            inputs.centerness_gpu = inputs
                .centerness
                .as_ref()
                .map(|c| upload(c, [case.batch, case.anchors, case.map.0, case.map.1]));
            let out = top_k::top_k(
                ctx,
                &inputs.logits_gpu,
                inputs.centerness_gpu.as_ref(),
                &regions(&case.levels),
                &options(&case),
            )
            .unwrap_or_else(|e| panic!("{} ({precision}, channels-last): {e}", case.name));
            assert_eq!(out.memory_format(), MemoryFormat::Nchw);
            let values = out.download(ctx).unwrap();
            check_against_reference(&case, &inputs, &values);
        }
    }
    // The logits and the centerness share one layout.
    let logits = Tensor::empty_with(
        ctx,
        [1, 6, 8, 8],
        Precision::F32,
        MemoryFormat::ChannelsLast,
    )
    .unwrap();
    let centerness = Tensor::empty(ctx, [1, 2, 8, 8]).unwrap();
    let level = [LevelRegion {
        y0: 0,
        x0: 0,
        height: 8,
        width: 8,
    }];
    let opts = TopKOptions {
        anchors: 2,
        classes: 3,
        k: 4,
        score_thresh: 0.05,
        mode: ScoreMode::SigmoidWithCenterness,
    };
    let e = top_k::top_k(ctx, &logits, Some(&centerness), &level, &opts)
        .unwrap_err()
        .to_string();
    assert!(e.contains("layout"), "{e}");
}

/// Logits stored as f16 (a detector whose activations are): the selection is that of their
/// values, read exactly and scored in f32.
#[test]
fn top_k_reads_f16_logits() {
    let Some(ctx) = common::f16_gpu() else {
        eprintln!(
            "no shader-f16 on this adapter: the f16 path is refused (top_k_refuses_bad_input)"
        );
        return;
    };
    let mut rng = SplitMix64::new(43);
    for case in cases().into_iter().filter(|c| c.map.0 * c.map.1 < 100_000) {
        let mut inputs = inputs(ctx, &mut rng, &case);
        let round = |v: &mut Vec<f32>| {
            v.iter_mut()
                .for_each(|x| *x = half::f16::from_f32(*x).to_f32())
        };
        round(&mut inputs.logits);
        if let Some(c) = inputs.centerness.as_mut() {
            round(c);
        }
        let half = |v: &[f32], shape| Tensor::from_slice_as(ctx, shape, v, Precision::F16).unwrap();
        inputs.logits_gpu = half(&inputs.logits, inputs.shape);
        inputs.centerness_gpu = inputs
            .centerness
            .as_ref()
            .map(|c| half(c, [case.batch, case.anchors, case.map.0, case.map.1]));
        let out = top_k::top_k(
            ctx,
            &inputs.logits_gpu,
            inputs.centerness_gpu.as_ref(),
            &regions(&case.levels),
            &options(&case),
        )
        .unwrap_or_else(|e| panic!("{} (f16): {e}", case.name));
        let values = out.download(ctx).unwrap();
        check_against_reference(&case, &inputs, &values);
    }
}

#[test]
fn top_k_selects_nothing_where_no_score_passes() {
    let ctx = gpu();
    let mut rng = SplitMix64::new(5);
    let case = cases()
        .into_iter()
        .find(|c| c.name == "no candidates")
        .unwrap();
    let inputs = inputs(ctx, &mut rng, &case);
    let out = top_k::top_k(
        ctx,
        &inputs.logits_gpu,
        None,
        &regions(&case.levels),
        &options(&case),
    )
    .unwrap();
    let values = out.download(ctx).unwrap();
    for slot in values.chunks_exact(2) {
        assert_eq!(slot[0], -1.0);
        assert_eq!(slot[1].to_bits(), UNUSED_INDEX);
    }
}

/// The launches are prepared once and recorded again and again: the scratch is cleared by the
/// first launch of each recording, so two recordings in one pass, a later submit, and a submit
/// after new logits were written into the same tensor all give the reference's selection.
#[test]
fn top_k_recorded_twice_gives_the_same_selection() {
    let ctx = gpu();
    let mut rng = SplitMix64::new(77);
    let all = cases();
    for case in [&all[0], &all[2], &all[5]] {
        let inputs = inputs(ctx, &mut rng, case);
        let shape = top_k::output_shape(inputs.shape, case.levels.len(), case.k);
        let out = Tensor::empty(ctx, shape).unwrap();
        let dispatches = top_k::prepare(
            ctx,
            &inputs.logits_gpu,
            inputs.centerness_gpu.as_ref(),
            &regions(&case.levels),
            &options(case),
            &out,
        )
        .unwrap();
        assert_eq!(dispatches.len(), top_k::LAUNCHES);
        let twice: Vec<_> = dispatches.iter().chain(&dispatches).collect();
        ctx.submit(&twice).unwrap();
        let first = out.download(ctx).unwrap();
        check_against_reference(case, &inputs, &first);
        ctx.submit(&dispatches.iter().collect::<Vec<_>>()).unwrap();
        let again = out.download(ctx).unwrap();
        check_against_reference(case, &inputs, &again);

        // New logits in the same tensor, the same launches.
        let mut fresh = inputs;
        fresh.logits = stacked(
            &mut rng,
            fresh.shape,
            &case.levels,
            case.logits,
            case.quantum,
            case.nan_share,
        );
        ctx.queue().write_buffer(
            fresh.logits_gpu.buffer(),
            0,
            bytemuck::cast_slice(&fresh.logits),
        );
        ctx.submit(&dispatches.iter().collect::<Vec<_>>()).unwrap();
        let values = out.download(ctx).unwrap();
        check_against_reference(case, &fresh, &values);
    }
}

fn invalid_message(result: fpn_wgpu::Result<Vec<fpn_wgpu::Dispatch>>) -> String {
    match result {
        Err(e @ Error::InvalidArgument { .. }) => e.to_string(),
        Err(e) => panic!("expected an invalid-argument error, got {e}"),
        Ok(_) => panic!("expected an error"),
    }
}

#[test]
fn top_k_refuses_bad_input() {
    let ctx = gpu();
    let shape = [2, 27, 12, 20];
    let logits = Tensor::empty(ctx, shape).unwrap();
    let ctr = Tensor::empty(ctx, [2, 9, 12, 20]).unwrap();
    let levels = regions(&[(0, 0, 12, 12), (0, 12, 6, 6), (6, 12, 3, 3)]);
    let opts = TopKOptions {
        anchors: 9,
        classes: 3,
        k: 10,
        score_thresh: 0.05,
        mode: ScoreMode::Sigmoid,
    };
    let out = Tensor::empty(ctx, top_k::output_shape(shape, 3, 10)).unwrap();
    // The good call works.
    top_k::prepare(ctx, &logits, None, &levels, &opts, &out).unwrap();
    let fcos = TopKOptions {
        mode: ScoreMode::SigmoidWithCenterness,
        ..opts
    };
    top_k::prepare(ctx, &logits, Some(&ctr), &levels, &fcos, &out).unwrap();

    let expect = |result, needle: &str| {
        let message = invalid_message(result);
        assert!(message.contains(needle), "{message:?} lacks {needle:?}");
    };
    let bad_channels = TopKOptions { classes: 4, ..opts };
    expect(
        top_k::prepare(ctx, &logits, None, &levels, &bad_channels, &out),
        "27 channels but 9 anchors x 4 classes need 36",
    );
    let outside = regions(&[(0, 0, 12, 12), (0, 12, 6, 9)]);
    let out2 = Tensor::empty(ctx, top_k::output_shape(shape, 2, 10)).unwrap();
    expect(
        top_k::prepare(ctx, &logits, None, &outside, &opts, &out2),
        "level 1 covers rows 0..6 and columns 12..21, outside the 12x20 map",
    );
    let empty_level = regions(&[(0, 0, 0, 4)]);
    let out1 = Tensor::empty(ctx, top_k::output_shape(shape, 1, 10)).unwrap();
    expect(
        top_k::prepare(ctx, &logits, None, &empty_level, &opts, &out1),
        "level 0 is 0x4",
    );
    expect(
        top_k::prepare(ctx, &logits, None, &[], &opts, &out1),
        "0 levels were given",
    );
    let nine = vec![levels[2]; 9];
    expect(
        top_k::prepare(ctx, &logits, None, &nine, &opts, &out1),
        "9 levels were given; between 1 and 8",
    );
    expect(
        top_k::prepare(
            ctx,
            &logits,
            None,
            &levels,
            &TopKOptions { k: 0, ..opts },
            &out,
        ),
        "k is 0",
    );
    expect(
        top_k::prepare(
            ctx,
            &logits,
            None,
            &levels,
            &TopKOptions {
                score_thresh: f32::NAN,
                ..opts
            },
            &out,
        ),
        "threshold is NaN",
    );
    let wrong_out = Tensor::empty(ctx, [2, 3, 11, 2]).unwrap();
    expect(
        top_k::prepare(ctx, &logits, None, &levels, &opts, &wrong_out),
        "this op produces [2, 3, 10, 2]",
    );
    expect(
        top_k::prepare(ctx, &logits, Some(&ctr), &levels, &opts, &out),
        "the mode is ScoreMode::Sigmoid",
    );
    expect(
        top_k::prepare(ctx, &logits, None, &levels, &fcos, &out),
        "needs the centerness logits",
    );
    let bad_ctr = Tensor::empty(ctx, [2, 3, 12, 20]).unwrap();
    expect(
        top_k::prepare(ctx, &logits, Some(&bad_ctr), &levels, &fcos, &out),
        "it must be [2, 9, 12, 20]",
    );
    // The run-now form refuses before it allocates.
    let e = top_k::top_k(ctx, &logits, None, &levels, &TopKOptions { k: 0, ..opts }).unwrap_err();
    assert!(e.to_string().contains("k is 0"), "{e}");

    if let Some(ctx16) = common::f16_gpu() {
        let half = Tensor::empty_as(ctx16, shape, Precision::F16).unwrap();
        let half_ctr = Tensor::empty_as(ctx16, [2, 9, 12, 20], Precision::F16).unwrap();
        let ctr = Tensor::empty(ctx16, [2, 9, 12, 20]).unwrap();
        expect(
            top_k::prepare(ctx16, &half, Some(&ctr), &levels, &fcos, &out),
            "the centerness stored as f32",
        );
        expect(
            top_k::prepare(ctx16, &logits, Some(&half_ctr), &levels, &fcos, &out),
            "the centerness stored as f16",
        );
        let half_out =
            Tensor::empty_as(ctx16, top_k::output_shape(shape, 3, 10), Precision::F16).unwrap();
        expect(
            top_k::prepare(ctx16, &logits, None, &levels, &opts, &half_out),
            "the output stored as f16",
        );
    }
}

#[test]
fn top_k_unpack_checks_the_shape() {
    assert!(top_k::unpack(&[0.0; 8], [1, 1, 4, 2]).is_ok());
    assert!(top_k::unpack(&[0.0; 8], [1, 1, 3, 2]).is_err());
    assert!(top_k::unpack(&[], [1, 1, 0, 2]).is_err());
}

/// A context whose device allows only 16 workgroups per grid dimension, so that every launch
/// of a modest case is cut into a 2-D grid with spare workgroups.
fn narrow_grid_context() -> GpuContext {
    common::limited_context(|limits| limits.max_compute_workgroups_per_dimension = 16)
}

#[test]
fn top_k_cuts_its_grids_within_the_device_limit() {
    let ctx = narrow_grid_context();
    let mut rng = SplitMix64::new(9);
    // Level 0 has 34560 elements: 5 workgroups per segment, 50 for the 10 segments.
    let case = cases().swap_remove(0);
    let inputs = inputs(&ctx, &mut rng, &case);
    let out = top_k::top_k(
        &ctx,
        &inputs.logits_gpu,
        None,
        &regions(&case.levels),
        &options(&case),
    )
    .unwrap();
    let values = out.download(&ctx).unwrap();
    check_against_reference(&case, &inputs, &values);
}

/// One level of 9.2M scores: more than the most workgroups a segment gets, so each strides
/// over many chunks.
#[test]
fn top_k_selects_from_a_huge_level() {
    let ctx = gpu();
    let mut rng = SplitMix64::new(3);
    let case = Case {
        name: "one huge level",
        batch: 1,
        map: (321, 320),
        levels: vec![(0, 0, 320, 320)],
        anchors: 9,
        classes: 10,
        k: 1000,
        thresh: 0.05,
        centerness: false,
        logits: (-8.0, 1.0),
        quantum: 0.0,
        nan_share: 0.0,
    };
    let inputs = inputs(ctx, &mut rng, &case);
    let start = std::time::Instant::now();
    let out = top_k::top_k(
        ctx,
        &inputs.logits_gpu,
        None,
        &regions(&case.levels),
        &options(&case),
    )
    .unwrap();
    let values = out.download(ctx).unwrap();
    eprintln!("{}: {:?} on the GPU", case.name, start.elapsed());
    check_against_reference(&case, &inputs, &values);
}

/// The compaction's counters live in workgroup memory, which the pipelines do not zero: a
/// kernel run just before it that leaves junk there must not change the selection. (Where
/// workgroup memory is reused from one launch to the next, as on discrete GPUs, this catches
/// counters left uninitialised; on llvmpipe the memory comes from the heap and the junk does
/// not reach it, but a detector's graph did, now and then.)
#[test]
fn selection_ignores_what_earlier_kernels_left_in_workgroup_memory() {
    let ctx = gpu();
    let device = ctx.device();
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some("junk"),
        source: wgpu::ShaderSource::Wgsl(
            "var<workgroup> junk: array<u32, 4096>;\n\
             @group(0) @binding(0) var<storage, read_write> sink: array<u32>;\n\
             @compute @workgroup_size(256)\n\
             fn main(@builtin(local_invocation_index) lid: u32) {\n\
                 for (var i = lid; i < 4096u; i += 256u) { junk[i] = 0x7fffffffu - i; }\n\
                 workgroupBarrier();\n\
                 if (lid == 0u) { sink[0] = junk[lid + 7u]; }\n\
             }"
            .into(),
        ),
    });
    let junk = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some("junk"),
        layout: None,
        module: &module,
        entry_point: Some("main"),
        compilation_options: wgpu::PipelineCompilationOptions {
            constants: &[],
            zero_initialize_workgroup_memory: false,
        },
        cache: None,
    });
    let sink = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("junk"),
        size: 16,
        usage: wgpu::BufferUsages::STORAGE,
        mapped_at_creation: false,
    });
    let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some("junk"),
        layout: &junk.get_bind_group_layout(0),
        entries: &[wgpu::BindGroupEntry {
            binding: 0,
            resource: sink.as_entire_binding(),
        }],
    });
    // Every element a candidate, fewer than k: all of them are kept.
    let (h, w) = (12, 8);
    let logits = Tensor::from_slice(ctx, [1, 3, h, w], &vec![1.0; 3 * h * w]).unwrap();
    let region = LevelRegion {
        y0: 0,
        x0: 0,
        height: h as u32,
        width: w as u32,
    };
    let opts = TopKOptions {
        anchors: 1,
        classes: 3,
        k: 1000,
        score_thresh: 0.2,
        mode: ScoreMode::Sigmoid,
    };
    let out = Tensor::empty(ctx, top_k::output_shape(logits.shape(), 1, opts.k)).unwrap();
    let launches = top_k::prepare(ctx, &logits, None, &[region], &opts, &out).unwrap();
    for round in 0..20 {
        let mut encoder = device.create_command_encoder(&Default::default());
        {
            let mut pass = encoder.begin_compute_pass(&Default::default());
            pass.set_pipeline(&junk);
            pass.set_bind_group(0, &bind_group, &[]);
            pass.dispatch_workgroups(256, 1, 1);
            for d in &launches {
                d.record(&mut pass);
            }
        }
        ctx.queue().submit([encoder.finish()]);
        let got = out.download(ctx).unwrap();
        let kept = got.chunks(2).filter(|s| s[0] >= 0.0).count();
        assert_eq!(kept, 3 * h * w, "round {round}");
    }
}
