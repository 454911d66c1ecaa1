//! The one-stage detectors' own kernels against their CPU twins on random data, in both
//! layouts: the detection transform (normalise, resize, pad), packing levels into one map and
//! masking it, anchors and box decoding; and the crate's anchors against torchvision's.

mod common;

use std::path::Path;

use common::{assert_close, assert_storage_written, gpu, poisoned, LAYOUTS};
use fpn_wgpu::graph::ops::detect::{AnchorSpec, DetectionGeometry, ResizeRule};
use fpn_wgpu::kernels::box_decode::{self, BoxCoding, DecodeSpec};
use fpn_wgpu::kernels::levels::{self, pack, LevelRegion};
use fpn_wgpu::kernels::resize::{self, Normalize};
use fpn_wgpu::reference::{self, AnchorLevel};
use fpn_wgpu::rng::SplitMix64;
use fpn_wgpu::tensor::MemoryFormat;
use fpn_wgpu::tensor_file::read_tensors;
use fpn_wgpu::{Precision, Tensor};

fn numel(s: [usize; 4]) -> usize {
    s.iter().product()
}

fn rect(r: &LevelRegion) -> reference::Rect {
    (
        r.y0 as usize,
        r.x0 as usize,
        r.height as usize,
        r.width as usize,
    )
}

#[test]
fn normalize_resize_matches_reference_up_down_and_at_size() {
    let ctx = gpu();
    let mut rng = SplitMix64::new(31);
    // (input, resized, padded): upscaled, downscaled, unchanged, one axis each way, batch 2.
    let cases = [
        ([2, 3, 70, 90], (128, 164), (128, 192)),
        ([1, 3, 150, 113], (127, 96), (128, 96)),
        ([1, 3, 32, 48], (32, 48), (32, 64)),
        ([1, 3, 17, 40], (35, 20), (64, 32)),
        ([1, 1, 9, 7], (1, 1), (32, 32)),
    ];
    let norm = Normalize::IMAGENET;
    for (shape, size, padded) in cases {
        let x = rng.vec(numel(shape), 0.0, 1.0);
        let (want, _) = reference::normalize_resize(&x, shape, &norm.mean, &norm.std, size, padded);
        // NCHW, and channels-last as a detector on cooperative matrices stores its pictures.
        for layout in LAYOUTS {
            let xt = Tensor::from_slice_with(ctx, shape, &x, Precision::F32, layout).unwrap();
            let out = poisoned(ctx, [shape[0], shape[1], padded.0, padded.1], layout);
            let d = resize::prepare(ctx, &xt, size, &norm, &out).unwrap();
            ctx.run(&[&d]).unwrap();
            let what = format!("resize {shape:?} to {size:?} ({layout:?})");
            assert_storage_written(ctx, &out, &what);
            assert_close(&what, &out.download(ctx).unwrap(), &want, 1e-6);
        }
    }
}

#[test]
fn detection_geometry_follows_torchvision_sizes() {
    let g = DetectionGeometry {
        resize: ResizeRule::default(),
        levels: vec![3, 4, 5, 6, 7],
    };
    // 480x640: scale min(800/480, 1333/640) = 1.667 -> 800x1066, padded 800x1088.
    assert_eq!(g.resized((480, 640)).unwrap(), (800, 1066));
    assert_eq!(g.padded((480, 640)).unwrap(), (800, 1088));
    assert_eq!(
        g.level_sizes((480, 640)).unwrap(),
        vec![(100, 136), (50, 68), (25, 34), (13, 17), (7, 9)]
    );
    // torchvision's strides are integer divisions: 800 // 13 = 61, 800 // 7 = 114.
    assert_eq!(
        g.strides((480, 640)).unwrap(),
        vec![(8, 8), (16, 16), (32, 32), (61, 64), (114, 120)]
    );
    // A very long picture is bounded by max_size.
    assert_eq!(g.resized((100, 1000)).unwrap(), (133, 1333));
    assert!(g.resized((0, 10)).is_err());
    let thin = DetectionGeometry {
        resize: ResizeRule {
            min_size: 8,
            max_size: 10,
            size_divisible: 32,
        },
        levels: vec![3],
    };
    assert!(
        thin.resized((1, 1000)).is_err(),
        "a picture resized to no rows is refused"
    );
}

#[test]
fn retinanet_cell_anchors_are_torchvision_s() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/det_retinanet_batch2_70x90.safetensors");
    let fixture = read_tensors(&path, |_| false).unwrap();
    let want = &fixture["cell_anchors"].data;
    let got: Vec<f32> = AnchorSpec::retinanet().cell_anchors().concat();
    assert_eq!(got.len(), want.len());
    assert_eq!(&got, want, "cell anchors differ from torchvision's");
}

#[test]
fn fcos_cell_anchors_are_torchvision_s() {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/det_fcos_150x113.safetensors");
    let fixture = read_tensors(&path, |_| false).unwrap();
    let want = &fixture["cell_anchors"].data;
    let got: Vec<f32> = AnchorSpec::fcos().cell_anchors().concat();
    assert_eq!(&got, want, "cell anchors differ from torchvision's");
}

/// Random levels of a pyramid (sides halving, rounded up) of `n` x `c`.
fn pyramid(
    rng: &mut SplitMix64,
    n: usize,
    c: usize,
    (h, w): (usize, usize),
    count: usize,
) -> Vec<(Vec<f32>, [usize; 4])> {
    (0..count)
        .map(|l| {
            let shape = [n, c, h.div_ceil(1 << l), w.div_ceil(1 << l)];
            (rng.vec(numel(shape), -1.0, 1.0), shape)
        })
        .collect()
}

#[test]
fn stacked_levels_and_their_mask_match_reference() {
    let ctx = gpu();
    let mut rng = SplitMix64::new(32);
    for (n, c, top, count) in [
        (2, 5, (16, 24), 5),
        (1, 3, (7, 5), 5),
        (1, 4, (9, 13), 3),
        (1, 2, (3, 3), 1),
    ] {
        let levels = pyramid(&mut rng, n, c, top, count);
        let sizes: Vec<_> = levels.iter().map(|(_, s)| (s[2], s[3])).collect();
        let (regions, (h, w)) = pack(&sizes);
        let rects: Vec<_> = regions.iter().map(rect).collect();
        let inputs: Vec<_> = levels.iter().map(|(d, s)| (d.as_slice(), *s)).collect();
        let want = reference::stack_levels(&inputs, &rects, (h, w));
        for layout in LAYOUTS {
            let tensors: Vec<Tensor> = levels
                .iter()
                .map(|(d, s)| Tensor::from_slice_with(ctx, *s, d, Precision::F32, layout).unwrap())
                .collect();
            let refs: Vec<&Tensor> = tensors.iter().collect();
            let out = poisoned(ctx, [n, c, h, w], layout);
            let d = levels::prepare_stack(ctx, &refs, &out).unwrap();
            ctx.run(&[&d]).unwrap();
            let what = format!("packed levels {sizes:?} ({layout:?})");
            assert_storage_written(ctx, &out, &what);
            assert_eq!(out.download(ctx).unwrap(), want, "{what}");
        }
        // Regions never touch: a 3x3 window inside one level sees no other level.
        for (i, a) in rects.iter().enumerate() {
            for b in &rects[i + 1..] {
                let apart =
                    a.0 + a.2 < b.0 || b.0 + b.2 < a.0 || a.1 + a.3 < b.1 || b.1 + b.3 < a.1;
                assert!(apart, "regions {a:?} and {b:?} touch");
            }
        }
        let noisy = rng.vec(numel([n, c, h, w]), -1.0, 1.0);
        let want = reference::mask_levels(&noisy, [n, c, h, w], &rects);
        for layout in LAYOUTS {
            let xt =
                Tensor::from_slice_with(ctx, [n, c, h, w], &noisy, Precision::F32, layout).unwrap();
            // As it is, and inside the zero border a following 3x3 (or 5x3) convolution reads.
            for pad in [(0, 0), (1, 1), (2, 1)] {
                let masked = poisoned(ctx, [n, c, h + 2 * pad.0, w + 2 * pad.1], layout);
                let d = levels::prepare_mask(ctx, &xt, &regions, pad, &masked).unwrap();
                ctx.run(&[&d]).unwrap();
                let (want, _) = reference::pad2d(&want, [n, c, h, w], pad);
                let what = format!("masked map {sizes:?}, padding {pad:?} ({layout:?})");
                assert_storage_written(ctx, &masked, &what);
                assert_eq!(masked.download(ctx).unwrap(), want, "{what}");
            }
        }
    }
}

#[test]
fn levels_refuse_bad_input() {
    let ctx = gpu();
    let a = Tensor::empty(ctx, [1, 4, 8, 8]).unwrap();
    let b = Tensor::empty(ctx, [1, 5, 4, 4]).unwrap();
    let out = Tensor::empty(ctx, [1, 4, 13, 8]).unwrap();
    let e = levels::prepare_stack(ctx, &[&a, &b], &out)
        .unwrap_err()
        .to_string();
    assert!(e.contains("same batch and channels"), "{e}");
    let wrong = Tensor::empty(ctx, [1, 4, 12, 8]).unwrap();
    assert!(levels::prepare_stack(ctx, &[&a], &wrong).is_err());
    let outside = LevelRegion {
        y0: 4,
        x0: 0,
        height: 8,
        width: 8,
    };
    let e = levels::prepare_mask(ctx, &a, &[outside], (0, 0), &wrong)
        .unwrap_err()
        .to_string();
    assert!(e.contains("shape") || e.contains("inside"), "{e}");
    let m = Tensor::empty(ctx, [1, 4, 8, 8]).unwrap();
    let e = levels::prepare_mask(ctx, &a, &[outside], (0, 0), &m)
        .unwrap_err()
        .to_string();
    assert!(e.contains("does not lie inside"), "{e}");
    // One layout for the levels and the packed map.
    let cl = Tensor::empty_with(
        ctx,
        [1, 4, 8, 8],
        Precision::F32,
        MemoryFormat::ChannelsLast,
    )
    .unwrap();
    let e = levels::prepare_stack(ctx, &[&cl], &m)
        .unwrap_err()
        .to_string();
    assert!(e.contains("layout"), "{e}");
}

#[test]
fn box_decoding_matches_reference_on_every_level_and_both_codings() {
    let ctx = gpu();
    let mut rng = SplitMix64::new(33);
    let geometry = DetectionGeometry {
        resize: ResizeRule {
            min_size: 128,
            max_size: 200,
            size_divisible: 32,
        },
        levels: vec![3, 4, 5, 6, 7],
    };
    let picture = (70, 90);
    let (regions, (mh, mw)) = geometry.packed(picture).unwrap();
    let strides = geometry.strides(picture).unwrap();
    let (rh, rw) = geometry.resized(picture).unwrap();
    for (coding, anchors, classes) in [
        (BoxCoding::retinanet(), AnchorSpec::retinanet(), 3),
        (
            BoxCoding::Deltas {
                weights: [10.0, 10.0, 5.0, 5.0],
                xform_clip: 1.5,
            },
            AnchorSpec::retinanet(),
            4,
        ),
        (BoxCoding::Linear, AnchorSpec::fcos(), 7),
    ] {
        let n = 2;
        let a = anchors.per_location();
        let k = 40;
        let levels = regions.len();
        let reg_shape = [n, a * 4, mh, mw];
        // Large deltas too, so that the log-size cap and the clipping both act.
        let regression = rng.vec(numel(reg_shape), -3.0, 3.0);
        let mut selected = vec![-1.0f32; n * levels * k * 2];
        let mut per_segment = vec![Vec::new(); n * levels];
        for seg in 0..n * levels {
            let r = regions[seg % levels];
            let elements = (r.height * r.width) as usize * a * classes;
            for s in 0..k {
                // Some slots empty, as the top-k leaves them.
                if rng.next_f32() < 0.2 {
                    let o = (seg * k + s) * 2;
                    selected[o + 1] = f32::from_bits(u32::MAX);
                    continue;
                }
                let flat = (rng.next_u64() % elements as u64) as u32;
                let score = rng.uniform(0.05, 1.0);
                let o = (seg * k + s) * 2;
                selected[o] = score;
                selected[o + 1] = f32::from_bits(flat);
                per_segment[seg].push((s, score, flat));
            }
        }
        let spec = DecodeSpec {
            regions: regions.clone(),
            strides: strides.clone(),
            cell_anchors: anchors.cell_anchors(),
            anchors: a,
            classes,
            clip: (rh as f32, rw as f32),
            coding,
            min_size: None,
            labels: Default::default(),
        };
        let sel = Tensor::from_slice(ctx, [n, levels, k, 2], &selected).unwrap();
        // The regression as the activations are stored: NCHW, or channels-last (its 36 or
        // 4 channels padded); the selection and the boxes are NCHW records either way.
        let outputs: Vec<Vec<f32>> = LAYOUTS
            .iter()
            .map(|&layout| {
                let reg =
                    Tensor::from_slice_with(ctx, reg_shape, &regression, Precision::F32, layout)
                        .unwrap();
                let out = Tensor::empty(ctx, [n, 1, levels * k, 6]).unwrap();
                let d = box_decode::prepare(ctx, &sel, &reg, &spec, &out).unwrap();
                ctx.run(&[&d]).unwrap();
                out.download(ctx).unwrap()
            })
            .collect();
        // The same arithmetic on the same values: bit for bit (an empty slot's label bits
        // read as a NaN, so the bits are compared).
        let differ = outputs[0]
            .iter()
            .zip(&outputs[1])
            .filter(|(a, b)| a.to_bits() != b.to_bits())
            .count();
        assert_eq!(differ, 0, "{coding:?}: channels-last regression");
        let got = &outputs[1];
        let cells = anchors.cell_anchors();
        let (linear, weights, xform_clip) = match coding {
            BoxCoding::Deltas {
                weights,
                xform_clip,
            } => (false, weights, xform_clip),
            BoxCoding::Linear => (true, [1.0; 4], 0.0),
        };
        let mut checked = 0;
        for seg in 0..n * levels {
            let (image, l) = (seg / levels, seg % levels);
            let level = AnchorLevel {
                rect: rect(&regions[l]),
                stride: (strides[l].0 as usize, strides[l].1 as usize),
                cell_anchors: cells[l * a..(l + 1) * a].to_vec(),
            };
            let pairs: Vec<_> = per_segment[seg].iter().map(|&(_, s, f)| (s, f)).collect();
            let want = reference::decode_boxes(
                &pairs,
                &regression,
                reg_shape,
                image,
                &level,
                classes,
                linear,
                weights,
                xform_clip,
                (rh as f32, rw as f32),
            );
            for (&(slot, _, _), (wb, ws, wl)) in per_segment[seg].iter().zip(&want) {
                let r = &got[(seg * k + slot) * 6..(seg * k + slot + 1) * 6];
                assert_close(
                    &format!("{coding:?} level {l} slot {slot}"),
                    &r[..4],
                    wb,
                    1e-5,
                );
                assert_eq!((r[4], r[5].to_bits()), (*ws, *wl));
                checked += 1;
            }
            for s in 0..k {
                if !per_segment[seg].iter().any(|&(slot, _, _)| slot == s) {
                    assert_eq!(
                        got[(seg * k + s) * 6 + 4],
                        -1.0,
                        "empty slot {s} stays empty"
                    );
                }
            }
        }
        assert!(checked > 100);
    }
}
