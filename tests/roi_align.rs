//! Multi-scale RoIAlign against its CPU reference on random pyramids and proposals: batches of
//! 2, odd picture sizes, tiny boxes and boxes far bigger than the picture (every level hit),
//! boxes crossing the borders, degenerate and inverted boxes, empty slots, 7x7 and 14x14 bins,
//! f32 and f16 levels; the `LevelMapper` and the scale inference on hand-computed cases; bad
//! input refused with errors; and, where the fixture is present, torchvision's own output.

mod common;

use common::{assert_close, gpu};
use fpn_wgpu::graph::ops::detect::{MultiScaleRoiAlign, ResizeRule};
use fpn_wgpu::graph::ops::{GraphOp, Launch, Target};
use fpn_wgpu::kernels::roi_align::{self, RoiAlignOptions, RoiLevels};
use fpn_wgpu::reference;
use fpn_wgpu::rng::SplitMix64;
use fpn_wgpu::tensor::MemoryFormat;
use fpn_wgpu::{GpuContext, Precision, Tensor};

/// The FPN levels P2..P5 of a picture resized to `image`, padded to multiples of 32.
fn level_sizes(image: (usize, usize)) -> Vec<(usize, usize)> {
    let (ph, pw) = (image.0.next_multiple_of(32), image.1.next_multiple_of(32));
    (2..=5)
        .map(|l| (ph.div_ceil(1 << l), pw.div_ceil(1 << l)))
        .collect()
}

/// The value before the mapper's floor, in f64: how close a box is to a level boundary.
fn level_value(b: [f32; 4]) -> f64 {
    let area = (b[2] as f64 - b[0] as f64) * (b[3] as f64 - b[1] as f64);
    4.0 + (area.sqrt() / 224.0).log2()
}

/// One random proposal record in a picture of `image` (height, width).
fn random_record(rng: &mut SplitMix64, image: (usize, usize)) -> [f32; 6] {
    let (h, w) = (image.0 as f32, image.1 as f32);
    loop {
        let kind = rng.next_u64() % 10;
        let (side_lo, side_hi) = match kind {
            0 | 1 => (0.05, 8.0),
            2 | 3 => (8.0, 150.0),
            4 | 5 => (100.0, 300.0),
            _ => (300.0, 1200.0),
        };
        let bw = rng.uniform(side_lo, side_hi);
        let bh = (bw * rng.uniform(0.5, 2.0)).max(0.05);
        // Anywhere from well left of the picture to well right of it.
        let x1 = rng.uniform(-0.3 * bw - 20.0, w + 10.0);
        let y1 = rng.uniform(-0.3 * bh - 20.0, h + 10.0);
        let mut b = [x1, y1, x1 + bw, y1 + bh];
        match rng.next_u64() % 16 {
            // A zero-width box: level k_min, width 1.
            0 => b[2] = b[0],
            // Inverted along x only: negative area, no level, zeros.
            1 => b.swap(0, 2),
            // Inverted along both: a positive area, width and height 1.
            2 => {
                b.swap(0, 2);
                b.swap(1, 3);
            }
            _ => {}
        }
        let v = level_value(b);
        // Boxes within 1e-4 of a level boundary could go either way with the GPU's log2.
        if v.is_finite() && (v - v.round()).abs() < 1e-4 {
            continue;
        }
        let label = (rng.next_u64() % 91) as u32;
        return [
            b[0],
            b[1],
            b[2],
            b[3],
            rng.uniform(0.0, 1.0),
            f32::from_bits(label),
        ];
    }
}

/// One random case.
struct Case {
    name: &'static str,
    /// The pictures' size before the resize.
    picture: (usize, usize),
    resize: ResizeRule,
    batch: usize,
    channels: usize,
    rois: usize,
    size: usize,
    precision: Precision,
    /// How the levels and the output are stored.
    layout: MemoryFormat,
    seed: u64,
}

/// The outcome of one case: the largest error and how many boxes each level got.
fn run_case(ctx: &GpuContext, case: &Case) -> (f64, [usize; 4]) {
    let mut rng = SplitMix64::new(case.seed);
    let op = MultiScaleRoiAlign::new(case.resize, case.size);
    let geometry = fpn_wgpu::graph::ops::detect::DetectionGeometry {
        resize: case.resize,
        levels: vec![2, 3, 4, 5],
    };
    let image = geometry.resized(case.picture).unwrap();
    let sizes = geometry.level_sizes(case.picture).unwrap();
    assert_eq!(sizes, level_sizes(image), "{}", case.name);
    let (n, c) = (case.batch, case.channels);
    let levels: Vec<(Vec<f32>, [usize; 4])> = sizes
        .iter()
        .map(|&(h, w)| {
            let shape = [n, c, h, w];
            let data: Vec<f32> = rng
                .vec(n * c * h * w, -1.0, 1.0)
                .into_iter()
                .map(|v| case.precision.round(v))
                .collect();
            (data, shape)
        })
        .collect();
    let mut proposals = Vec::with_capacity(n * case.rois * 6);
    for _ in 0..n * case.rois {
        let mut rec = random_record(&mut rng, image);
        if rng.next_u64().is_multiple_of(7) {
            // An empty slot, as NMS leaves it: boxes kept, score -1.
            rec[4] = -1.0;
            rec[5] = f32::from_bits(u32::MAX);
        }
        proposals.extend_from_slice(&rec);
    }
    let mut hits = [0usize; 4];
    for rec in proposals.chunks(6) {
        if rec[4] >= 0.0 {
            if let Some(l) = reference::roi_level([rec[0], rec[1], rec[2], rec[3]], 2, 5) {
                hits[l as usize] += 1;
            }
        }
    }

    let level_tensors: Vec<Tensor> = levels
        .iter()
        .map(|(d, s)| Tensor::from_slice_with(ctx, *s, d, case.precision, case.layout).unwrap())
        .collect();
    let prop = Tensor::from_slice(ctx, [n, 1, case.rois, 6], &proposals).unwrap();
    let pictures = Tensor::empty(ctx, [n, 3, case.picture.0, case.picture.1]).unwrap();
    let mut inputs: Vec<&Tensor> = level_tensors.iter().collect();
    inputs.push(&prop);
    inputs.push(&pictures);
    let shapes: Vec<[usize; 4]> = inputs.iter().map(|t| t.shape()).collect();
    let shape = GraphOp::output_shape(&op, &shapes).unwrap();
    assert_eq!(shape, [n * case.rois, c, case.size, case.size]);
    let target = Target {
        precision: case.precision,
        layout: case.layout,
        cooperative: false,
        winograd: false,
    };
    assert!(op.supports(target.layout, target.precision));
    // The output is pooled maps, laid out as the levels are.
    assert_eq!(op.output_layout(case.layout), case.layout);
    let gpu_op = op.lower(ctx, &target).unwrap();
    let out = Tensor::empty_with(ctx, shape, case.precision, case.layout).unwrap();
    let launches = gpu_op
        .prepare(ctx, &inputs, &out, Launch::default())
        .unwrap();
    ctx.submit(&launches.iter().collect::<Vec<_>>()).unwrap();
    let got = out.download(ctx).unwrap();

    let refs: Vec<(&[f32], [usize; 4])> = levels.iter().map(|(d, s)| (&d[..], *s)).collect();
    let want: Vec<f32> =
        reference::multi_scale_roi_align(&refs, &proposals, case.rois, image, case.size, 2, false)
            .into_iter()
            .map(|v| case.precision.round(v))
            .collect();
    // Empty slots and boxes of no level are exact zeros.
    let per_roi = c * case.size * case.size;
    for (roi, rec) in proposals.chunks(6).enumerate() {
        let b = [rec[0], rec[1], rec[2], rec[3]];
        if rec[4].is_nan() || rec[4] < 0.0 || reference::roi_level(b, 2, 5).is_none() {
            assert!(
                got[roi * per_roi..(roi + 1) * per_roi]
                    .iter()
                    .all(|&v| v == 0.0),
                "{}: slot {roi} ({rec:?}) must be zeros",
                case.name
            );
        }
    }
    let tol = match case.precision {
        Precision::F32 => 1e-5,
        _ => 2e-3,
    };
    // The worst box first, for a readable failure.
    for roi in 0..n * case.rois {
        let r = roi * per_roi..(roi + 1) * per_roi;
        let err = common::max_rel_error(&got[r.clone()], &want[r.clone()]);
        let scale = want[r.clone()].iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let abs = err * scale as f64;
        assert!(
            abs <= tol,
            "{}: slot {roi} {:?} differs by {abs:e}",
            case.name,
            &proposals[roi * 6..roi * 6 + 6]
        );
    }
    let err = assert_close(case.name, &got, &want, tol);
    (err, hits)
}

fn cases(precision: Precision, layout: MemoryFormat) -> Vec<Case> {
    let small = ResizeRule {
        min_size: 150,
        max_size: 400,
        size_divisible: 32,
    };
    vec![
        // 75x101 resized to 150x202, padded to 160x224: P2 40x56 ... P5 5x7.
        Case {
            name: "batch 2, 150x202, 7x7",
            picture: (75, 101),
            resize: small,
            batch: 2,
            channels: 5,
            rois: 61,
            size: 7,
            precision,
            layout,
            seed: 1,
        },
        // 97x131 as it is, padded to 128x160: P2 32x40 ... P5 4x5; an odd number of channels.
        Case {
            name: "batch 2, 97x131, 14x14",
            picture: (97, 131),
            resize: ResizeRule {
                min_size: 97,
                max_size: 1000,
                size_divisible: 32,
            },
            batch: 2,
            channels: 3,
            rois: 47,
            size: 14,
            precision,
            layout,
            seed: 2,
        },
        // A portrait picture with odd sides: 113x67 to 253x150, padded 256x160.
        Case {
            name: "batch 1, 253x150, 7x7",
            picture: (113, 67),
            resize: small,
            batch: 1,
            channels: 4,
            rois: 80,
            size: 7,
            precision,
            layout,
            seed: 3,
        },
    ]
}

fn run_cases(ctx: &GpuContext, precision: Precision) {
    for case in [MemoryFormat::Nchw, MemoryFormat::ChannelsLast]
        .into_iter()
        .flat_map(|layout| cases(precision, layout))
    {
        let (err, hits) = run_case(ctx, &case);
        eprintln!(
            "{} ({precision}, {:?}): max relative error {err:e}, boxes per level P2..P5 {hits:?}",
            case.name, case.layout
        );
        assert!(
            hits.iter().all(|&h| h > 0),
            "{}: every level must be hit: {hits:?}",
            case.name
        );
    }
}

#[test]
fn roi_align_matches_reference_f32() {
    run_cases(gpu(), Precision::F32);
}

#[test]
fn roi_align_matches_reference_f16() {
    let Some(ctx) = common::f16_gpu() else {
        eprintln!("no shader-f16 on this adapter: the f16 path is refused");
        return;
    };
    run_cases(ctx, Precision::F16);
}

/// The `LevelMapper` and the scale inference on cases computed by hand.
#[test]
fn level_mapper_and_scales_match_hand_computed_cases() {
    // (box, level index from P2 with k 2..=5, or None): floor(4 + log2(sqrt(area) / 224) +
    // 1e-6), clamped.
    let cases: [([f32; 4], Option<i64>); 12] = [
        ([0.0, 0.0, 224.0, 224.0], Some(2)),   // log2(1) = 0: level 4
        ([0.0, 0.0, 112.0, 112.0], Some(1)),   // -1: level 3
        ([0.0, 0.0, 111.0, 111.0], Some(0)),   // 2.987: level 2
        ([0.0, 0.0, 448.0, 448.0], Some(3)),   // 5
        ([0.0, 0.0, 447.0, 447.0], Some(2)),   // 4.997: level 4
        ([8.0, 8.0, 1008.0, 1008.0], Some(3)), // 6.16: clamped to 5
        ([5.0, 5.0, 6.0, 6.0], Some(0)),       // -3.8: clamped to 2
        ([0.0, 0.0, 224.0, 56.0], Some(1)),    // sqrt 112: level 3
        ([50.0, 10.0, 50.0, 60.0], Some(0)),   // area 0: log2(0) = -inf, clamped to 2
        ([100.0, 10.0, 50.0, 60.0], None),     // negative area: NaN, no level
        ([100.0, 100.0, 50.0, 60.0], Some(0)), // inverted both ways: area 2000, level 1 -> 2
        ([0.0, 0.0, 300.0, 700.0], Some(3)),   // sqrt 458.3: 5.03
    ];
    for (b, want) in cases {
        assert_eq!(reference::roi_level(b, 2, 5), want, "{b:?}");
    }
    // torch.clamp with min > max gives max: everything lands on k_max - k_min.
    assert_eq!(reference::roi_level([0.0, 0.0, 10.0, 10.0], 5, 3), Some(-2));

    // 800x1216 (a 4:3 picture at min_size 800... padded as it is): P2..P5 of 200 to 25 rows.
    let sizes = level_sizes((800, 1216));
    let want = RoiLevels {
        scales: vec![0.25, 0.125, 0.0625, 0.03125],
        k_min: 2,
        k_max: 5,
    };
    assert_eq!(RoiLevels::infer(&sizes, (800, 1216)).unwrap(), want);
    assert_eq!(RoiLevels::from_strides(&[2, 3, 4, 5]), want);
    // 40x1333 padded to 64x1344: 16, 8, 4 and 2 rows against 40 give ratios 0.4, 0.2, 0.1
    // and 0.05, whose log2 (-1.32, -2.32, -3.32, -4.32) round to -1..-4: torchvision pools
    // such a picture's boxes with scales 1/2..1/16 and levels 1..4.
    let sizes = level_sizes((40, 1333));
    assert_eq!(sizes.iter().map(|s| s.0).collect::<Vec<_>>(), [16, 8, 4, 2]);
    let odd = RoiLevels::infer(&sizes, (40, 1333)).unwrap();
    assert_eq!(
        odd,
        RoiLevels {
            scales: vec![0.5, 0.25, 0.125, 0.0625],
            k_min: 1,
            k_max: 4
        }
    );
    for (image, sizes) in [
        ((800, 1216), level_sizes((800, 1216))),
        ((40, 1333), level_sizes((40, 1333))),
        ((150, 202), level_sizes((150, 202))),
    ] {
        let heights: Vec<usize> = sizes.iter().map(|s| s.0).collect();
        let (scales, k_min, k_max) = reference::roi_scales(&heights, image.0);
        let spec = RoiLevels::infer(&sizes, image).unwrap();
        assert_eq!(
            (spec.scales, spec.k_min, spec.k_max),
            (scales, k_min, k_max)
        );
    }
}

/// The GPU's level choice on the hand-computed cases: every level holds one constant, so each
/// box's output is its level's constant (or zero where it has none).
#[test]
fn gpu_maps_boxes_to_the_hand_computed_levels() {
    let ctx = gpu();
    let image = (1024, 1024);
    let sizes = level_sizes(image);
    let levels: Vec<Tensor> = sizes
        .iter()
        .enumerate()
        .map(|(l, &(h, w))| {
            Tensor::from_slice(ctx, [1, 2, h, w], &vec![10.0 * (l + 1) as f32; 2 * h * w]).unwrap()
        })
        .collect();
    // (box, P-level or 0 for zeros), boxes inside the picture.
    let cases: [([f32; 4], usize); 11] = [
        ([8.0, 8.0, 232.0, 232.0], 4),
        ([8.0, 8.0, 120.0, 120.0], 3),
        ([8.0, 8.0, 119.0, 119.0], 2),
        ([8.0, 8.0, 456.0, 456.0], 5),
        ([8.0, 8.0, 455.0, 455.0], 4),
        ([8.0, 8.0, 1008.0, 1008.0], 5),
        ([5.0, 5.0, 6.0, 6.0], 2),
        ([8.0, 8.0, 232.0, 64.0], 3),
        ([50.0, 10.0, 50.0, 60.0], 2),
        ([100.0, 10.0, 50.0, 60.0], 0),
        ([100.0, 100.0, 50.0, 60.0], 2),
    ];
    let mut records: Vec<f32> = cases
        .iter()
        .flat_map(|(b, _)| [b[0], b[1], b[2], b[3], 0.5, f32::from_bits(1)])
        .collect();
    // NaN and infinite coordinates: a NaN level (no level), and an infinite area (P5) whose
    // samples are all NaN and so outside the level: zeros either way, as in torchvision.
    records.extend_from_slice(&[f32::NAN, 8.0, 232.0, 232.0, 0.5, f32::from_bits(1)]);
    records.extend_from_slice(&[8.0, 8.0, f32::INFINITY, 232.0, 0.5, f32::from_bits(1)]);
    assert_eq!(
        reference::roi_level([f32::NAN, 8.0, 232.0, 232.0], 2, 5),
        None
    );
    assert_eq!(
        reference::roi_level([8.0, 8.0, f32::INFINITY, 232.0], 2, 5),
        Some(3)
    );
    // An empty slot over a box that would have a level.
    records.extend_from_slice(&[8.0, 8.0, 232.0, 232.0, -1.0, f32::from_bits(u32::MAX)]);
    let rois = cases.len() + 3;
    let proposals = Tensor::from_slice(ctx, [1, 1, rois, 6], &records).unwrap();
    let refs: Vec<&Tensor> = levels.iter().collect();
    let out =
        roi_align::multi_scale_roi_align(ctx, &refs, &proposals, image, &RoiAlignOptions::new(7))
            .unwrap();
    assert_eq!(out.shape(), [rois, 2, 7, 7]);
    let got = out.download(ctx).unwrap();
    for (i, (b, level)) in cases.iter().enumerate() {
        let want = if *level == 0 {
            0.0
        } else {
            10.0 * (*level - 1) as f32
        };
        for &v in &got[i * 98..(i + 1) * 98] {
            assert!(
                (v - want).abs() <= 1e-4 * want.max(1.0),
                "box {b:?}: {v}, expected {want} (level P{level})"
            );
        }
    }
    assert!(got[cases.len() * 98..].iter().all(|&v| v == 0.0));
}

/// One level: torchvision pools every box from it without the mapper, boxes of negative area
/// included (which several levels would leave zero).
#[test]
fn single_level_pools_every_box() {
    let ctx = gpu();
    let mut rng = SplitMix64::new(9);
    let image = (97, 131);
    let shape = [2, 3, 16, 17];
    let x = rng.vec(2 * 3 * 16 * 17, -1.0, 1.0);
    let rois = 40;
    let mut records = Vec::new();
    for i in 0..2 * rois {
        let mut rec = random_record(&mut rng, image);
        if i % 9 == 0 {
            rec[4] = -1.0;
        }
        records.extend_from_slice(&rec);
    }
    // A box of negative area: pooled all the same.
    records[6..10].copy_from_slice(&[60.0, 10.0, 20.0, 70.0]);
    records[10] = 0.5;
    let xt = Tensor::from_slice(ctx, shape, &x).unwrap();
    let proposals = Tensor::from_slice(ctx, [2, 1, rois, 6], &records).unwrap();
    let opts = RoiAlignOptions::new(7);
    let out = roi_align::multi_scale_roi_align(ctx, &[&xt], &proposals, image, &opts).unwrap();
    let got = out.download(ctx).unwrap();
    let want = reference::multi_scale_roi_align(&[(&x, shape)], &records, rois, image, 7, 2, false);
    assert!(want[3 * 49..2 * 3 * 49].iter().any(|&v| v != 0.0));
    let err = assert_close("one level", &got, &want, 1e-5);
    eprintln!("one level, {} slots: max relative error {err:e}", 2 * rois);
}

/// Records compacted across a batch (Mask R-CNN's kept detections) carry the row they came
/// from, which says their picture: each is pooled from its own picture's map, as it was in its
/// slot.
#[test]
fn compacted_records_are_pooled_from_their_own_pictures() {
    let ctx = gpu();
    let mut rng = SplitMix64::new(13);
    let image = (97, 131);
    let (n, rois) = (3, 11);
    let shape = [n, 2, 16, 17];
    let x = rng.vec(n * 2 * 16 * 17, -1.0, 1.0);
    let mut records = Vec::new();
    for i in 0..n * rois {
        let mut rec = random_record(&mut rng, image);
        if i % 4 == 1 || i < rois {
            // The first picture has no detection left: the others' move to its rows.
            rec[4] = -1.0;
        }
        records.extend_from_slice(&rec);
    }
    let compacted = reference::compact_records(&records, true);
    let xt = Tensor::from_slice(ctx, shape, &x).unwrap();
    let opts = RoiAlignOptions {
        rows_in_record: true,
        ..RoiAlignOptions::new(7)
    };
    let pooled = |records: &[f32], opts: &RoiAlignOptions| {
        let t = Tensor::from_slice(ctx, [n, 1, rois, 6], records).unwrap();
        roi_align::multi_scale_roi_align(ctx, &[&xt], &t, image, opts)
            .unwrap()
            .download(ctx)
            .unwrap()
    };
    let got = pooled(&compacted, &opts);
    let want =
        reference::multi_scale_roi_align(&[(&x, shape)], &compacted, rois, image, 7, 2, true);
    let err = assert_close("compacted records", &got, &want, 1e-5);
    let in_slots = pooled(&records, &RoiAlignOptions::new(7));
    let per_roi = 2 * 49;
    let mut live = 0;
    for (r, rec) in compacted.chunks(6).enumerate() {
        if rec[4] < 0.0 {
            assert!(got[r * per_roi..(r + 1) * per_roi]
                .iter()
                .all(|&v| v == 0.0));
            continue;
        }
        let slot = rec[5].to_bits() as usize;
        assert!(slot >= rois, "the first picture's slots are empty");
        assert_eq!(
            got[r * per_roi..(r + 1) * per_roi],
            in_slots[slot * per_roi..(slot + 1) * per_roi],
            "record {r} from slot {slot}"
        );
        live += 1;
    }
    assert!(live > rois, "{live} live records");
    eprintln!("{live} compacted records: max relative error {err:e}, as pooled in their slots");
}

/// Wrong shapes, mismatched levels, a zero output size and the like are errors, before any
/// launch is built.
#[test]
fn roi_align_refuses_bad_input() {
    let ctx = gpu();
    let levels: Vec<Tensor> = [(16, 20), (8, 10), (4, 5), (2, 3)]
        .iter()
        .map(|&(h, w)| Tensor::empty(ctx, [2, 4, h, w]).unwrap())
        .collect();
    let refs: Vec<&Tensor> = levels.iter().collect();
    let proposals = Tensor::empty(ctx, [2, 1, 5, 6]).unwrap();
    let spec = RoiLevels::from_strides(&[2, 3, 4, 5]);
    let opts = RoiAlignOptions::new(7);
    let out = Tensor::empty(ctx, [10, 4, 7, 7]).unwrap();
    assert!(roi_align::prepare(ctx, &refs, &proposals, &spec, &opts, &out).is_ok());
    let err = |e: fpn_wgpu::Error| {
        assert!(matches!(e, fpn_wgpu::Error::InvalidArgument { .. }), "{e}");
        e.to_string()
    };

    // Records of 5 words, proposals not [N, 1, R, 6], another batch.
    for shape in [[2, 1, 5, 5], [2, 5, 1, 6], [1, 1, 10, 6]] {
        let p = Tensor::empty(ctx, shape).unwrap();
        let e = roi_align::prepare(ctx, &refs, &p, &spec, &opts, &out).unwrap_err();
        assert!(err(e).contains("proposals"));
    }
    // A level with other channels.
    let other = Tensor::empty(ctx, [2, 3, 2, 3]).unwrap();
    let mixed = [refs[0], refs[1], refs[2], &other];
    let e = roi_align::prepare(ctx, &mixed, &proposals, &spec, &opts, &out).unwrap_err();
    assert!(err(e).contains("channels"));
    // S = 0, sampling ratio 0.
    let zero = RoiAlignOptions::new(0);
    let e = roi_align::prepare(ctx, &refs, &proposals, &spec, &zero, &out).unwrap_err();
    assert!(err(e).contains("output size"));
    let adaptive = RoiAlignOptions {
        sampling_ratio: 0,
        ..opts
    };
    let e = roi_align::prepare(ctx, &refs, &proposals, &spec, &adaptive, &out).unwrap_err();
    assert!(err(e).contains("sampling"));
    // The wrong output shape, or the output in the proposals' buffer.
    let wrong = Tensor::empty(ctx, [10, 4, 14, 14]).unwrap();
    let e = roi_align::prepare(ctx, &refs, &proposals, &spec, &opts, &wrong).unwrap_err();
    assert!(err(e).contains("output"));
    // Scales for other levels; no levels; six levels.
    let three = RoiLevels::from_strides(&[2, 3, 4]);
    let e = roi_align::prepare(ctx, &refs, &proposals, &three, &opts, &out).unwrap_err();
    assert!(err(e).contains("scales"));
    let e = roi_align::prepare(ctx, &[], &proposals, &spec, &opts, &out).unwrap_err();
    err(e);
    let six = [refs[0], refs[1], refs[2], refs[3], refs[3], refs[3]];
    let e = roi_align::prepare(ctx, &six, &proposals, &spec, &opts, &out).unwrap_err();
    err(e);
    // f16 proposals, f16 output for f32 levels.
    if ctx.supports_f16() {
        let p16 = Tensor::empty_as(ctx, [2, 1, 5, 6], Precision::F16).unwrap();
        let e = roi_align::prepare(ctx, &refs, &p16, &spec, &opts, &out).unwrap_err();
        assert!(err(e).contains("float32"));
        let o16 = Tensor::empty_as(ctx, [10, 4, 7, 7], Precision::F16).unwrap();
        let e = roi_align::prepare(ctx, &refs, &proposals, &spec, &opts, &o16).unwrap_err();
        err(e);
    }
    // A picture of no pixels, a level of no rows.
    assert!(RoiLevels::infer(&[(4, 4)], (0, 4)).is_err());
    assert!(RoiLevels::infer(&[], (4, 4)).is_err());

    // The graph op: the same checks on shapes alone.
    let op = MultiScaleRoiAlign::new(ResizeRule::default(), 7);
    let pictures = [2, 3, 600, 800];
    let good = [
        [2, 4, 200, 264],
        [2, 4, 100, 132],
        [2, 4, 50, 66],
        [2, 4, 25, 33],
        [2, 1, 5, 6],
        pictures,
    ];
    assert_eq!(op.output_shape(&good).unwrap(), [10, 4, 7, 7]);
    let mut bad = good;
    bad[4] = [2, 1, 5, 4];
    err(op.output_shape(&bad).unwrap_err());
    let mut bad = good;
    bad[4] = [2, 5, 6, 1];
    err(op.output_shape(&bad).unwrap_err());
    let mut bad = good;
    bad[2] = [2, 5, 50, 66];
    assert!(err(op.output_shape(&bad).unwrap_err()).contains("channels"));
    let mut bad = good;
    bad[5] = [1, 3, 600, 800];
    err(op.output_shape(&bad).unwrap_err());
    err(op.output_shape(&good[4..]).unwrap_err());
    let zero = MultiScaleRoiAlign::new(ResizeRule::default(), 0);
    assert!(err(zero.output_shape(&good).unwrap_err()).contains("output size"));
}

/// torchvision's `MultiScaleRoIAlign(['0', '1', '2', '3'], S, 2)` on random levels and boxes
/// (tests/fixtures/make_roi_align_fixtures.py): the kernel and the reference both match it.
#[test]
fn roi_align_matches_torchvision() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/roi_align_tv.safetensors");
    let t = fpn_wgpu::tensor_file::read_tensors(&path, |_| false).unwrap();
    let ctx = gpu();
    let image_hw = &t["image_size"].data;
    let image = (image_hw[0] as usize, image_hw[1] as usize);
    let boxes = &t["boxes"];
    let [n, r] = [boxes.shape[0], boxes.shape[1]];
    let levels: Vec<(Vec<f32>, [usize; 4])> = (0..4)
        .map(|l| {
            let h = &t[&format!("level{l}")];
            let s = [h.shape[0], h.shape[1], h.shape[2], h.shape[3]];
            (h.data.clone(), s)
        })
        .collect();
    let records: Vec<f32> = boxes
        .data
        .chunks(4)
        .flat_map(|b| [b[0], b[1], b[2], b[3], 0.5, f32::from_bits(1)])
        .collect();
    let tensors: Vec<Tensor> = levels
        .iter()
        .map(|(d, s)| Tensor::from_slice(ctx, *s, d).unwrap())
        .collect();
    let refs: Vec<&Tensor> = tensors.iter().collect();
    let proposals = Tensor::from_slice(ctx, [n, 1, r, 6], &records).unwrap();
    let host: Vec<(&[f32], [usize; 4])> = levels.iter().map(|(d, s)| (&d[..], *s)).collect();
    for size in [7, 14] {
        let want = &t[&format!("out{size}")];
        let out = roi_align::multi_scale_roi_align(
            ctx,
            &refs,
            &proposals,
            image,
            &RoiAlignOptions::new(size),
        )
        .unwrap();
        assert_eq!(out.shape().to_vec(), want.shape);
        let got = out.download(ctx).unwrap();
        let e_gpu = assert_close(
            &format!("GPU vs torchvision, {size}x{size}"),
            &got,
            &want.data,
            1e-5,
        );
        let twin = reference::multi_scale_roi_align(&host, &records, r, image, size, 2, false);
        let e_cpu = assert_close(
            &format!("reference vs torchvision, {size}x{size}"),
            &twin,
            &want.data,
            1e-6,
        );
        eprintln!(
            "torchvision {size}x{size}: {} boxes, GPU max relative error {e_gpu:e}, reference {e_cpu:e}",
            n * r
        );
    }
}
