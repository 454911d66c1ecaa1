//! The group norm over packed levels against its CPU twin on random data: per image, group and
//! level statistics, the affine and ReLU, zeros between the levels and in the border it may
//! write around the map, two launches whatever the batch and the levels; and the inputs it
//! refuses.

mod common;

use common::{assert_close, assert_storage_written, gpu, poisoned, LAYOUTS};
use fpn_wgpu::kernels::group_norm::{self, GroupNormWeights, LAUNCHES};
use fpn_wgpu::kernels::levels::{pack, LevelRegion};
use fpn_wgpu::reference;
use fpn_wgpu::rng::SplitMix64;
use fpn_wgpu::tensor::MemoryFormat;
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

/// One random case: a packed map of `levels` pyramid levels below `top`, values around
/// `offset` (a large offset against a spread of 1 is what a one-pass variance gets wrong).
struct Case {
    n: usize,
    c: usize,
    groups: usize,
    top: (usize, usize),
    levels: usize,
    offset: f32,
    relu: bool,
    /// The zero border (rows, columns) written around the map.
    padding: (usize, usize),
}

fn check(case: &Case, layout: MemoryFormat, rng: &mut SplitMix64) -> f64 {
    let ctx = gpu();
    let sizes: Vec<_> = (0..case.levels)
        .map(|l| (case.top.0.div_ceil(1 << l), case.top.1.div_ceil(1 << l)))
        .collect();
    let (regions, (h, w)) = pack(&sizes);
    let shape = [case.n, case.c, h, w];
    let x: Vec<f32> = rng
        .vec(numel(shape), -1.0, 1.0)
        .into_iter()
        .map(|v| v + case.offset)
        .collect();
    let weight = rng.vec(case.c, 0.5, 1.5);
    let bias = rng.vec(case.c, -0.5, 0.5);
    let gn = GroupNormWeights::new(ctx, &weight, &bias, case.groups, 1e-5).unwrap();
    let xt = Tensor::from_slice_with(ctx, shape, &x, Precision::F32, layout).unwrap();
    let (py, px) = case.padding;
    let out_shape = [case.n, case.c, h + 2 * py, w + 2 * px];
    let out = poisoned(ctx, out_shape, layout);
    let launches =
        group_norm::prepare(ctx, &xt, &regions, &gn, case.relu, case.padding, &out).unwrap();
    assert_eq!(launches.len(), LAUNCHES, "launches for {shape:?}");
    ctx.run(&launches.iter().collect::<Vec<_>>()).unwrap();
    assert_storage_written(ctx, &out, &format!("group norm {shape:?} ({layout:?})"));
    let got = out.download(ctx).unwrap();
    let rects: Vec<_> = regions.iter().map(rect).collect();
    let normed = reference::group_norm_levels(
        &x,
        shape,
        &rects,
        case.groups,
        &weight,
        &bias,
        1e-5,
        case.relu,
    );
    let (want, _) = reference::pad2d(&normed, shape, case.padding);
    // Between the levels and in the border: exactly zero, whatever was there.
    let (oh, ow) = (out_shape[2], out_shape[3]);
    for (i, &g) in got.iter().enumerate() {
        let (y, xx) = ((i % (oh * ow)) / ow, i % ow);
        let inside = rects.iter().any(|&(y0, x0, rh, rw)| {
            (y0 + py..y0 + py + rh).contains(&y) && (x0 + px..x0 + px + rw).contains(&xx)
        });
        assert!(
            inside || g == 0.0,
            "element {i} lies outside the levels but is {g}"
        );
    }
    let name = format!(
        "group norm {shape:?} ({layout:?}), {} groups, levels {sizes:?}, offset {}, relu {}, padding {:?}",
        case.groups, case.offset, case.relu, case.padding
    );
    assert_close(&name, &got, &want, 1e-5)
}

#[test]
fn group_norm_over_levels_matches_reference() {
    let mut rng = SplitMix64::new(41);
    let cases = [
        // A head's shape on a small picture: 256 channels in 32 groups, five levels, batch 2.
        Case {
            n: 2,
            c: 256,
            groups: 32,
            top: (16, 20),
            levels: 5,
            offset: 0.0,
            relu: true,
            padding: (1, 1),
        },
        // Three pictures, one group, no ReLU.
        Case {
            n: 3,
            c: 6,
            groups: 1,
            top: (9, 13),
            levels: 3,
            offset: 0.5,
            relu: false,
            padding: (0, 0),
        },
        // One channel per group; levels down to a single pixel (whose variance is 0).
        Case {
            n: 1,
            c: 8,
            groups: 8,
            top: (7, 5),
            levels: 5,
            offset: -0.3,
            relu: true,
            padding: (2, 1),
        },
        // A mean far from zero against a spread of 1.
        Case {
            n: 1,
            c: 16,
            groups: 4,
            top: (24, 17),
            levels: 4,
            offset: 300.0,
            relu: false,
            padding: (1, 1),
        },
        // A level of more elements than a workgroup has invocations many times over.
        Case {
            n: 1,
            c: 16,
            groups: 2,
            top: (96, 136),
            levels: 2,
            offset: 2.0,
            relu: true,
            padding: (0, 0),
        },
        // One level filling the map.
        Case {
            n: 2,
            c: 4,
            groups: 2,
            top: (5, 3),
            levels: 1,
            offset: 0.0,
            relu: false,
            padding: (1, 3),
        },
    ];
    // NCHW, and channels-last as a head on cooperative matrices stores its values (the
    // statistics then walk each pixel's channels of the group in turn).
    for layout in LAYOUTS {
        for case in &cases {
            let err = check(case, layout, &mut rng);
            eprintln!(
                "n {} c {} groups {} top {:?} levels {} ({layout:?}): max relative error {err:.2e}",
                case.n, case.c, case.groups, case.top, case.levels
            );
        }
    }
}

#[test]
fn group_norm_refuses_bad_input() {
    let ctx = gpu();
    let ones = vec![1.0; 12];
    let e = GroupNormWeights::new(ctx, &ones, &ones, 5, 1e-5)
        .unwrap_err()
        .to_string();
    assert!(e.contains("do not split into 5 groups"), "{e}");
    let e = GroupNormWeights::new(ctx, &ones, &ones[..4], 4, 1e-5)
        .unwrap_err()
        .to_string();
    assert!(e.contains("same non-zero length"), "{e}");
    let e = GroupNormWeights::new(ctx, &ones, &ones, 4, f32::NAN)
        .unwrap_err()
        .to_string();
    assert!(e.contains("eps"), "{e}");

    let gn = GroupNormWeights::new(ctx, &ones, &ones, 4, 1e-5).unwrap();
    let whole = LevelRegion {
        y0: 0,
        x0: 0,
        height: 8,
        width: 8,
    };
    let x = Tensor::empty(ctx, [1, 12, 8, 8]).unwrap();
    let out = Tensor::empty(ctx, [1, 12, 8, 8]).unwrap();
    let other = Tensor::empty(ctx, [1, 8, 8, 8]).unwrap();
    let out8 = Tensor::empty(ctx, [1, 8, 8, 8]).unwrap();
    let e = group_norm::prepare(ctx, &other, &[whole], &gn, false, (0, 0), &out8)
        .unwrap_err()
        .to_string();
    assert!(e.contains("has 12"), "{e}");
    let outside = LevelRegion { y0: 4, ..whole };
    let e = group_norm::prepare(ctx, &x, &[outside], &gn, false, (0, 0), &out)
        .unwrap_err()
        .to_string();
    assert!(e.contains("does not lie inside"), "{e}");
    let e = group_norm::prepare(ctx, &x, &[], &gn, false, (0, 0), &out)
        .unwrap_err()
        .to_string();
    assert!(e.contains("0 levels"), "{e}");
    let e = group_norm::prepare(ctx, &x, &[whole], &gn, false, (0, 0), &x)
        .unwrap_err()
        .to_string();
    assert!(e.contains("in-place"), "{e}");
    let half = Tensor::empty_as(ctx, [1, 12, 8, 8], Precision::F16);
    if let Ok(half) = half {
        let e = group_norm::prepare(ctx, &half, &[whole], &gn, false, (0, 0), &out)
            .unwrap_err()
            .to_string();
        assert!(e.contains("one precision"), "{e}");
    }
    let small = Tensor::empty(ctx, [1, 12, 8, 7]).unwrap();
    let e = group_norm::prepare(ctx, &x, &[whole], &gn, false, (0, 0), &small)
        .unwrap_err()
        .to_string();
    assert!(e.contains("shape"), "{e}");
    // A border needs an output that much larger.
    let e = group_norm::prepare(ctx, &x, &[whole], &gn, false, (1, 1), &out)
        .unwrap_err()
        .to_string();
    assert!(e.contains("[1, 12, 10, 10]"), "{e}");
}
