//! The batched NMS kernel against its CPU reference: clusters of heavily overlapping boxes in
//! several labels (suppression within a label, none across), empty slots scattered, zero-area
//! boxes, batches whose images differ, M from 1 to about 5000 (powers of two and not), caps
//! below and above the number kept; the launches recorded again; and every refused input.

mod common;

use common::gpu;
use fpn_wgpu::kernels::nms::{self, NmsOptions};
use fpn_wgpu::reference;
use fpn_wgpu::rng::SplitMix64;
use fpn_wgpu::{Error, GpuContext, Precision, Tensor};

type Record = [f32; 6];

/// Labels, some of them NaN patterns as f32, to check that the bits travel untouched.
const LABELS: [u32; 5] = [0, 1, 7, 0x7fc0_0001, 0xffff_fffe];

/// One image of `m` slots: boxes in clusters (each cluster mostly of one label, a share of
/// other labels on the same spot), a share `absent` of empty slots (negative, -inf or NaN
/// scores), a few zero-area boxes and some exact duplicates of them. Scores are distinct.
fn image(rng: &mut SplitMix64, m: usize, absent: f32) -> Vec<Record> {
    let clusters: Vec<([f32; 4], u32)> = (0..m / 16 + 1)
        .map(|_| {
            let (cx, cy) = (rng.uniform(0.0, 800.0), rng.uniform(0.0, 600.0));
            let (w, h) = (rng.uniform(8.0, 200.0), rng.uniform(8.0, 200.0));
            let label = LABELS[rng.next_u64() as usize % LABELS.len()];
            ([cx, cy, w, h], label)
        })
        .collect();
    // Distinct scores in (0, 1): a random permutation of 1..=m over m + 1.
    let mut ranks: Vec<usize> = (1..=m).collect();
    for i in (1..m).rev() {
        ranks.swap(i, rng.next_u64() as usize % (i + 1));
    }
    let mut records: Vec<Record> = Vec::with_capacity(m);
    for &rank in &ranks {
        let ([cx, cy, w, h], cluster_label) = clusters[rng.next_u64() as usize % clusters.len()];
        let label = if rng.next_f32() < 0.75 {
            cluster_label
        } else {
            LABELS[rng.next_u64() as usize % LABELS.len()]
        };
        let (w, h) = (w * rng.uniform(0.8, 1.25), h * rng.uniform(0.8, 1.25));
        let cx = cx + w * rng.uniform(-0.15, 0.15);
        let cy = cy + h * rng.uniform(-0.15, 0.15);
        let mut b = [cx - w / 2.0, cy - h / 2.0, cx + w / 2.0, cy + h / 2.0];
        let shape = rng.next_f32();
        if shape < 0.02 {
            b[2] = b[0];
        } else if shape < 0.04 {
            b[3] = b[1];
        } else if shape < 0.05 && !records.is_empty() {
            // A zero-area box on top of an earlier slot's.
            let other = records[rng.next_u64() as usize % records.len()];
            b = [other[0], other[1], other[0], other[3]];
        }
        let score = if rng.next_f32() < absent {
            [-1.0, -0.25, f32::NEG_INFINITY, f32::NAN][rng.next_u64() as usize % 4]
        } else {
            rank as f32 / (m + 1) as f32
        };
        records.push([b[0], b[1], b[2], b[3], score, f32::from_bits(label)]);
    }
    records
}

/// Runs the kernel on `images` (each of the same length) and returns each image's output.
fn run(ctx: &GpuContext, images: &[Vec<Record>], opts: &NmsOptions) -> Vec<Vec<Record>> {
    let m = images[0].len();
    let flat: Vec<f32> = images.iter().flatten().flatten().copied().collect();
    let candidates = Tensor::from_slice(ctx, [images.len(), 1, m, 6], &flat).unwrap();
    let out = nms::batched_nms(ctx, &candidates, opts).unwrap();
    assert_eq!(out.shape(), [images.len(), 1, opts.max_detections, 6]);
    split_batch(&out.download(ctx).unwrap(), images.len())
}

/// A batch's output values as records, per image.
fn split_batch(values: &[f32], batch: usize) -> Vec<Vec<Record>> {
    let records: Vec<Record> = values
        .chunks_exact(6)
        .map(|r| r.try_into().unwrap())
        .collect();
    records
        .chunks(records.len() / batch)
        .map(|c| c.to_vec())
        .collect()
}

/// The reference's output for each image.
fn want(images: &[Vec<Record>], opts: &NmsOptions) -> Vec<Vec<Record>> {
    images
        .iter()
        .map(|im| {
            reference::batched_nms(im, opts.iou_thresh, opts.max_detections, opts.output_scale)
        })
        .collect()
}

/// Records kept (not empty) in a reference output.
fn kept(records: &[Record]) -> usize {
    records.iter().filter(|r| r[4] >= 0.0).count()
}

/// Record by record: labels exact, boxes and scores within 1e-6 relative.
fn assert_records(case: &str, got: &[Vec<Record>], want: &[Vec<Record>]) {
    assert_eq!(got.len(), want.len(), "{case}: images");
    for (n, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g.len(), w.len(), "{case}: image {n}: records");
        for (k, (gr, wr)) in g.iter().zip(w).enumerate() {
            let close = (0..5).all(|f| (gr[f] - wr[f]).abs() <= 1e-6 * wr[f].abs());
            assert!(
                close && gr[5].to_bits() == wr[5].to_bits(),
                "{case}: image {n}, record {k}: got {gr:?} (label {:#x}), want {wr:?} (label {:#x})",
                gr[5].to_bits(),
                wr[5].to_bits()
            );
        }
    }
}

/// (images, M, D, IoU threshold, share of empty slots, seed)
const CASES: &[(usize, usize, usize, f32, f32, u64)] = &[
    (1, 1, 1, 0.5, 0.0, 1),
    (2, 1, 3, 0.5, 0.5, 2),
    (2, 7, 5, 0.5, 0.3, 3),
    (3, 7, 10, 0.3, 0.2, 4),
    (3, 64, 100, 0.5, 0.1, 5),
    (2, 100, 20, 0.7, 0.2, 6),
    (3, 1000, 100, 0.5, 0.15, 7),
    (2, 1024, 1024, 0.5, 0.0, 8),
    // Beyond one sort block: global steps and merges.
    (2, 1025, 300, 0.5, 0.1, 9),
    (3, 2500, 2500, 0.6, 0.3, 10),
];

#[test]
fn nms_matches_reference_on_clustered_boxes() {
    let ctx = gpu();
    let mut capped = 0;
    for &(batch, m, d, iou_thresh, absent, seed) in CASES {
        let mut rng = SplitMix64::new(seed);
        let images: Vec<Vec<Record>> = (0..batch).map(|_| image(&mut rng, m, absent)).collect();
        let opts = NmsOptions {
            iou_thresh,
            max_detections: d,
            output_scale: [1.5, 0.75],
        };
        let want = want(&images, &opts);
        let uncapped = want_uncapped(&images, iou_thresh);
        capped += uncapped.iter().filter(|&&k| k > d).count();
        let got = run(ctx, &images, &opts);
        assert_records(&format!("{batch}x{m}, D {d}"), &got, &want);
    }
    // The cases exercise the cap, not only the end of the candidates.
    assert!(capped >= 3, "only {capped} images reach their cap");
}

/// How many records each image keeps without a cap.
fn want_uncapped(images: &[Vec<Record>], iou_thresh: f32) -> Vec<usize> {
    images
        .iter()
        .map(|im| {
            kept(&reference::batched_nms(
                im,
                iou_thresh,
                im.len(),
                [1.0, 1.0],
            ))
        })
        .collect()
}

#[test]
fn nms_matches_reference_on_5000_candidates() {
    let ctx = gpu();
    let mut rng = SplitMix64::new(5000);
    let images: Vec<Vec<Record>> = (0..2).map(|_| image(&mut rng, 4999, 0.2)).collect();
    let uncapped = want_uncapped(&images, 0.5);
    for d in [100, 5000] {
        let opts = NmsOptions {
            iou_thresh: 0.5,
            max_detections: d,
            output_scale: [0.5, 2.0],
        };
        let got = run(ctx, &images, &opts);
        assert_records(&format!("2x4999, D {d}"), &got, &want(&images, &opts));
    }
    // Suppression happened, and the cap of 100 cut the list short.
    for &k in &uncapped {
        assert!(k > 100 && k < 4000, "{k} kept of 4999");
    }
}

#[test]
fn nms_keeps_by_label_and_zero_area_boxes() {
    let ctx = gpu();
    let label = |l: u32| f32::from_bits(l);
    let records: Vec<Record> = vec![
        // IoU 0.81 with slot 1, same label: suppressed by it.
        [0.0, 0.0, 10.0, 9.0, 0.5, label(3)],
        [0.0, 0.0, 10.0, 10.0, 0.9, label(3)],
        // The same box in another label: kept.
        [0.0, 0.0, 10.0, 9.0, 0.8, label(4)],
        // An empty slot on top of everything.
        [0.0, 0.0, 10.0, 10.0, -1.0, label(3)],
        // Two identical zero-area boxes: IoU 0/0 suppresses nothing.
        [20.0, 20.0, 20.0, 30.0, 0.7, label(3)],
        [20.0, 20.0, 20.0, 30.0, 0.6, label(3)],
        // Equal scores, apart: both kept, in slot order.
        [50.0, 50.0, 60.0, 60.0, 0.3, label(5)],
        [70.0, 70.0, 80.0, 80.0, 0.3, label(5)],
    ];
    let opts = NmsOptions {
        iou_thresh: 0.8,
        max_detections: 8,
        output_scale: [2.0, 1.0],
    };
    let expected: Vec<Record> = [1, 2, 4, 5, 6, 7]
        .iter()
        .map(|&i| {
            let r: Record = records[i];
            [r[0] * 2.0, r[1], r[2] * 2.0, r[3], r[4], r[5]]
        })
        .chain(std::iter::repeat_n(
            [0.0, 0.0, 0.0, 0.0, -1.0, label(u32::MAX)],
            2,
        ))
        .collect();
    let want = want(std::slice::from_ref(&records), &opts);
    assert_records("the reference", &want, std::slice::from_ref(&expected));
    let got = run(ctx, std::slice::from_ref(&records), &opts);
    assert_records("the kernel", &got, std::slice::from_ref(&expected));
}

#[test]
fn nms_launches_can_be_recorded_again() {
    let ctx = gpu();
    let mut rng = SplitMix64::new(77);
    let (batch, m) = (3, 1500);
    let first: Vec<Vec<Record>> = (0..batch).map(|_| image(&mut rng, m, 0.05)).collect();
    // Fewer present candidates the second time: nothing of the first run may leak through.
    let second: Vec<Vec<Record>> = (0..batch).map(|_| image(&mut rng, m, 0.6)).collect();
    let opts = NmsOptions {
        iou_thresh: 0.5,
        max_detections: 400,
        output_scale: [1.0, 1.0],
    };
    let upload = |images: &[Vec<Record>]| -> Vec<f32> {
        images.iter().flatten().flatten().copied().collect()
    };
    let candidates = Tensor::from_slice(ctx, [batch, 1, m, 6], &upload(&first)).unwrap();
    let out = Tensor::empty(ctx, [batch, 1, 400, 6]).unwrap();
    let dispatches = nms::prepare(ctx, &candidates, &out, &opts).unwrap();
    assert_eq!(dispatches.len(), nms::launch_count(m));
    let all: Vec<_> = dispatches.iter().collect();
    ctx.submit(&all).unwrap();
    let once = out.download(ctx).unwrap();
    assert_records("first", &split_batch(&once, batch), &want(&first, &opts));
    // Twice in one pass.
    ctx.submit(&[all.clone(), all.clone()].concat()).unwrap();
    assert_eq!(bits(&out.download(ctx).unwrap()), bits(&once));
    ctx.queue().write_buffer(
        candidates.buffer(),
        0,
        bytemuck::cast_slice(&upload(&second)),
    );
    ctx.submit(&all).unwrap();
    let got = split_batch(&out.download(ctx).unwrap(), batch);
    assert_records("second", &got, &want(&second, &opts));
}

fn bits(values: &[f32]) -> Vec<u32> {
    values.iter().map(|v| v.to_bits()).collect()
}

#[test]
fn nms_launch_count_follows_the_candidates() {
    for (m, count) in [
        (1, 3),
        (7, 3),
        (1024, 3),
        (1025, 5),
        (2000, 5),
        (5000, 12),
        (10_000, 17),
        (65_536, 30),
    ] {
        assert_eq!(nms::launch_count(m), count, "M = {m}");
    }
    let ctx = gpu();
    for m in [1, 1024, 1025, 4097] {
        let candidates = Tensor::empty(ctx, [2, 1, m, 6]).unwrap();
        let out = Tensor::empty(ctx, [2, 1, 10, 6]).unwrap();
        let opts = NmsOptions {
            max_detections: 10,
            ..NmsOptions::default()
        };
        let dispatches = nms::prepare(ctx, &candidates, &out, &opts).unwrap();
        assert_eq!(dispatches.len(), nms::launch_count(m), "M = {m}");
    }
}

/// An InvalidArgument or LimitExceeded error whose message names `what`.
fn assert_refused(result: fpn_wgpu::Result<Vec<fpn_wgpu::Dispatch>>, what: &str) {
    let e = result
        .err()
        .unwrap_or_else(|| panic!("accepted, expected an error about {what}"));
    assert!(
        matches!(
            e,
            Error::InvalidArgument { .. } | Error::LimitExceeded { .. }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains(what), "{e}");
}

#[test]
fn nms_refuses_bad_input() {
    let ctx = gpu();
    let opts = NmsOptions {
        max_detections: 4,
        ..NmsOptions::default()
    };
    let good = Tensor::empty(ctx, [2, 1, 9, 6]).unwrap();
    let out = Tensor::empty(ctx, [2, 1, 4, 6]).unwrap();
    assert!(nms::prepare(ctx, &good, &out, &opts).is_ok());
    for shape in [[2, 1, 9, 5], [2, 2, 9, 6], [2, 9, 1, 6]] {
        let bad = Tensor::empty(ctx, shape).unwrap();
        assert_refused(nms::prepare(ctx, &bad, &out, &opts), "[N, 1, M, 6]");
    }
    for shape in [[2, 1, 5, 6], [1, 1, 4, 6], [2, 1, 4, 5]] {
        let bad_out = Tensor::empty(ctx, shape).unwrap();
        assert_refused(nms::prepare(ctx, &good, &bad_out, &opts), "[2, 1, 4, 6]");
    }
    let zero = NmsOptions {
        max_detections: 0,
        ..opts
    };
    assert_refused(nms::prepare(ctx, &good, &out, &zero), "max_detections is 0");
    let e = nms::batched_nms(ctx, &good, &zero).unwrap_err();
    assert!(e.to_string().contains("max_detections is 0"), "{e}");
    for iou_thresh in [f32::NAN, f32::INFINITY] {
        let nan = NmsOptions { iou_thresh, ..opts };
        assert_refused(nms::prepare(ctx, &good, &out, &nan), "finite");
    }
    assert_refused(nms::prepare(ctx, &good, &good, &opts), "[2, 1, 4, 6]");
    let same = Tensor::empty(ctx, [2, 1, 4, 6]).unwrap();
    let aliased = Tensor::from_buffer(same.buffer().clone(), [2, 1, 4, 6]).unwrap();
    assert_refused(nms::prepare(ctx, &aliased, &same, &opts), "shares a buffer");
    let too_many = Tensor::empty(ctx, [1, 1, nms::MAX_CANDIDATES + 1, 6]).unwrap();
    let one_out = Tensor::empty(ctx, [1, 1, 4, 6]).unwrap();
    assert_refused(
        nms::prepare(ctx, &too_many, &one_out, &opts),
        "at most 65536",
    );
    if let Some(ctx16) = common::f16_gpu() {
        let half = Tensor::empty_as(ctx16, [2, 1, 9, 6], Precision::F16).unwrap();
        assert_refused(nms::prepare(ctx16, &half, &out, &opts), "f32 tensors only");
        let half_out = Tensor::empty_as(ctx16, [2, 1, 4, 6], Precision::F16).unwrap();
        assert_refused(
            nms::prepare(ctx16, &good, &half_out, &opts),
            "f32 tensors only",
        );
    }
}

#[test]
fn nms_refuses_a_mask_larger_than_a_binding() {
    // 1 MiB bindings: 2000 candidates need a 504 000-byte mask, 3000 one of 1 128 000 bytes.
    let ctx = common::small_binding_context(1 << 20);
    let opts = NmsOptions::default();
    let out = Tensor::empty(&ctx, [1, 1, 100, 6]).unwrap();
    let fits = Tensor::empty(&ctx, [1, 1, 2000, 6]).unwrap();
    assert!(nms::prepare(&ctx, &fits, &out, &opts).is_ok());
    let big = Tensor::empty(&ctx, [1, 1, 3000, 6]).unwrap();
    let e = nms::prepare(&ctx, &big, &out, &opts).unwrap_err();
    assert!(
        matches!(
            e,
            Error::LimitExceeded {
                limit_name: "max_storage_buffer_binding_size",
                ..
            }
        ),
        "{e:?}"
    );
    assert!(
        e.to_string().contains("suppression mask") && e.to_string().contains("fewer candidates"),
        "{e}"
    );
}

/// NMS keeping the resized boxes, then the scaling launch, gives the bits NMS gives when it
/// scales as it writes (what lets Mask R-CNN pool at the first and paste at the second), and
/// the CPU twin's; labels whose bits are NaNs or denormals as f32 and empty records travel
/// untouched. Bad records and scales are refused.
#[test]
fn scaled_records_match_nms_scaling() {
    let ctx = gpu();
    let mut rng = SplitMix64::new(31);
    let (batch, m) = (2, 700);
    let images: Vec<Vec<Record>> = (0..batch).map(|_| image(&mut rng, m, 0.2)).collect();
    // torchvision's ratios for a 45x61 picture resized to 83x112: original / resized in f32.
    let scale = [61.0f32 / 112.0, 45.0f32 / 83.0];
    let keep = NmsOptions {
        iou_thresh: 0.5,
        max_detections: 600,
        output_scale: [1.0, 1.0],
    };
    let resized = run(ctx, &images, &keep);
    let flat: Vec<f32> = resized.iter().flatten().flatten().copied().collect();
    let records = Tensor::from_slice(ctx, [batch, 1, 600, 6], &flat).unwrap();
    let out = Tensor::empty(ctx, [batch, 1, 600, 6]).unwrap();
    let launch = nms::prepare_scale_records(ctx, &records, &out, scale).unwrap();
    ctx.submit(&[&launch]).unwrap();
    let got = out.download(ctx).unwrap();
    let scaled = run(
        ctx,
        &images,
        &NmsOptions {
            output_scale: scale,
            ..keep
        },
    );
    let direct: Vec<f32> = scaled.iter().flatten().flatten().copied().collect();
    assert_eq!(bits(&got), bits(&direct));
    let twin: Vec<f32> = resized
        .iter()
        .flat_map(|im| reference::scale_records(im, scale))
        .flatten()
        .collect();
    assert_eq!(bits(&got), bits(&twin));
    assert!(kept(&resized[0]) > 10 && kept(&resized[0]) < 600);

    let refused = |records: &Tensor, out: &Tensor, scale: [f32; 2]| {
        let e = nms::prepare_scale_records(ctx, records, out, scale)
            .err()
            .unwrap();
        assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
    };
    refused(&records, &out, [f32::NAN, 1.0]);
    let five = Tensor::empty(ctx, [batch, 1, 180, 5]).unwrap();
    refused(&five, &five.clone(), scale);
    let other = Tensor::empty(ctx, [batch, 1, 599, 6]).unwrap();
    refused(&records, &other, scale);
    refused(&records, &records.clone(), scale);
    if let Some(ctx16) = common::f16_gpu() {
        let half = Tensor::from_slice_as(ctx16, [batch, 1, 600, 6], &flat, Precision::F16).unwrap();
        let out16 = Tensor::empty(ctx16, [batch, 1, 600, 6]).unwrap();
        assert!(nms::prepare_scale_records(ctx16, &half, &out16, scale).is_err());
    }
}
