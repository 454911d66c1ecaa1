//! The presets' cases, as problems and device profiles written out by hand.

use super::*;
use crate::kernels::conv2d::coop::{CoopChoice, CoopTile, CooperativeMatrixSupport, StagedBlock};
use crate::kernels::conv2d::direct::WG_SIZE;
use crate::kernels::conv2d::Conv2dOptions;
use crate::precision::Precision;
use crate::tensor::MemoryFormat;

/// An H200: 16x16 matrices, subgroups of 32, the staged block where `staged`.
fn h200(staged: bool) -> DeviceProfile {
    DeviceProfile {
        device: "H200".into(),
        cpu: false,
        matrix: Some(CooperativeMatrixSupport {
            side: 16,
            subgroup_size: 32,
            subgroup_ids: true,
        }),
        staged: staged.then_some(StagedBlock {
            side: 16,
            subgroup: 32,
        }),
        max_workgroup_storage: 228 * 1024,
        max_binding_bytes: 1 << 40,
        target_workgroups: GPU_TARGET_WORKGROUPS,
    }
}

/// lavapipe: a CPU adapter with 8x8 matrices where `matrix`, no staged block.
fn lavapipe(matrix: bool) -> DeviceProfile {
    DeviceProfile {
        device: "llvmpipe".into(),
        cpu: true,
        matrix: matrix.then_some(CooperativeMatrixSupport {
            side: 8,
            subgroup_size: 8,
            subgroup_ids: true,
        }),
        staged: None,
        ..h200(false)
    }
}

/// A convolution of `input` (as the kernel reads it) by `weight` with `stride` and `padding`.
fn problem(
    input: [usize; 4],
    weight: [usize; 4],
    stride: usize,
    padding: usize,
    precision: Precision,
    layout: MemoryFormat,
) -> ConvProblem {
    ConvProblem::layer(
        weight,
        &Conv2dOptions::new(stride, padding),
        precision,
        layout,
    )
    .with_input(input, false)
}

fn coop(input: [usize; 4], weight: [usize; 4], stride: usize) -> ConvProblem {
    problem(
        input,
        weight,
        stride,
        0,
        Precision::F16,
        MemoryFormat::ChannelsLast,
    )
}

fn nchw(input: [usize; 4], weight: [usize; 4], padding: usize) -> ConvProblem {
    problem(
        input,
        weight,
        1,
        padding,
        Precision::F32,
        MemoryFormat::Nchw,
    )
}

/// The choices measured best on an H200 for the seed FPN's convolutions at 1x3x600x900
/// (16x16 matrices).
#[test]
fn gpu_choices_follow_the_measured_ones() {
    let direct = |m, n, split| {
        ConvChoice::Coop(CoopChoice::direct(
            CoopTile {
                m_tiles: m,
                n_tiles: n,
            },
            split,
        ))
    };
    let staged = ConvChoice::Coop(CoopChoice::STAGED);
    // (problem, the device runs the staged block) -> choice
    let cases = [
        // smooth3, 3x3 256->256 at 150x225 (144 k steps)
        (coop([1, 256, 152, 227], [256, 256, 3, 3], 1), true, staged),
        // a 3x3 stride-2 128->128 conv to 75x113 (72 k steps)
        (coop([1, 128, 151, 227], [128, 128, 3, 3], 2), true, staged),
        // the same where the staged block cannot run
        (
            coop([1, 128, 151, 227], [128, 128, 3, 3], 2),
            false,
            direct(4, 4, 2),
        ),
        // layer3 3x3 256->256 at 38x57
        (
            coop([1, 256, 40, 59], [256, 256, 3, 3], 1),
            true,
            direct(4, 4, 4),
        ),
        // layer4 3x3 512->512 at 19x29
        (
            coop([1, 512, 21, 31], [512, 512, 3, 3], 1),
            true,
            direct(2, 4, 4),
        ),
        // layer4 1x1 2048->512 at 19x29 (128 k steps)
        (
            coop([1, 2048, 19, 29], [512, 2048, 1, 1], 1),
            true,
            direct(2, 4, 4),
        ),
        // toplayer 1x1 2048->256 at 19x29
        (
            coop([1, 2048, 19, 29], [256, 2048, 1, 1], 1),
            true,
            direct(2, 4, 8),
        ),
    ];
    for (p, staged, want) in cases {
        let got = choose(&p, &h200(staged)).unwrap();
        assert_eq!(got, want, "{p:?}");
        assert!(candidates(&p, &h200(staged)).unwrap()[0] == got);
        assert_eq!(got.weight_layout(), weight_layout(&p));
    }
}

/// The FPN's small-map float32 convolutions at 1x3x600x900 get split-K on a GPU; the large
/// maps and CPU adapters do not.
#[test]
fn row_kernel_splits_small_maps_on_gpus() {
    let cases = [
        // toplayer 1x1 2048->256 at 19x29
        (nchw([1, 2048, 19, 29], [256, 2048, 1, 1], 0), false, 16),
        // layer4 3x3 512->512 at 19x29
        (nchw([1, 512, 21, 31], [512, 512, 3, 3], 0), false, 8),
        // smooth3 3x3 256->256 at 150x225
        (nchw([1, 256, 152, 227], [256, 256, 3, 3], 0), false, 1),
        // few input channels: every part keeps at least 16
        (nchw([1, 32, 4, 4], [64, 32, 1, 1], 0), false, 2),
        (nchw([1, 16, 4, 4], [64, 16, 1, 1], 0), false, 1),
        (nchw([1, 512, 21, 31], [512, 512, 3, 3], 0), true, 1),
    ];
    for (p, cpu, want) in cases {
        let profile = if cpu { lavapipe(false) } else { h200(true) };
        let got = choose(&p, &profile).unwrap();
        assert!(matches!(got, ConvChoice::Rows { .. }), "{got:?}");
        assert_eq!(got.split(), want, "{p:?}");
    }
}

#[test]
fn cpu_adapters_never_split() {
    let got = choose(&coop([1, 512, 9, 9], [512, 512, 3, 3], 1), &lavapipe(true)).unwrap();
    assert_eq!(got.split(), 1);
}

#[test]
fn workgroups_span_channels_on_cpus_and_pixels_on_gpus() {
    // (output pixels (h, w), output channels -> channel tiles of 8, CPU) -> shape, on the
    // general kernel (padding 1), whose invocations take 8 pixels each.
    let cases = [
        ((150, 225), 128, true, (8, 8)),
        ((150, 225), 32, true, (16, 4)),
        ((150, 225), 48, true, (16, 4)),
        ((150, 225), 8, true, (64, 1)),
        ((4, 5), 1024, true, (8, 8)),
        ((150, 225), 128, false, (64, 1)),
        ((10, 16), 128, false, (32, 2)),
        ((1, 1), 8, false, (8, 8)),
    ];
    for ((h, w), cout, cpu, want) in cases {
        let p = nchw([1, 4, h, w], [cout, 4, 3, 3], 1);
        let profile = if cpu { lavapipe(false) } else { h200(false) };
        let got = choose(&p, &profile).unwrap();
        let ConvChoice::Direct { workgroup } = got else {
            panic!("{p:?}: {got:?}");
        };
        assert_eq!(workgroup, want, "{h}x{w} -> {cout}, cpu {cpu}");
        assert_eq!(workgroup.0 * workgroup.1, WG_SIZE);
        assert!(
            workgroup.0 >= 8 && workgroup.1 as usize <= CPU_CHANNEL_LANES.max(WG_SIZE as usize / 8)
        );
    }
}

/// Every candidate's code names it among the problem's candidates, and the key tells layers
/// apart.
#[test]
fn codes_round_trip_and_keys_differ() {
    for (p, profile) in [
        (coop([1, 512, 21, 31], [512, 512, 3, 3], 1), h200(true)),
        (coop([1, 256, 152, 227], [256, 256, 3, 3], 1), h200(true)),
        (nchw([1, 2048, 19, 29], [256, 2048, 1, 1], 0), h200(false)),
        (nchw([1, 64, 19, 29], [64, 64, 3, 3], 1), lavapipe(false)),
    ] {
        let all = candidates(&p, &profile).unwrap();
        for c in &all {
            assert_eq!(ConvChoice::from_code(&c.code(), &p, &profile), Some(*c));
        }
        let other = ConvProblem {
            padding: (p.padding.0 + 1, p.padding.1),
            ..p
        };
        assert_ne!(tune_key(&p, &profile), tune_key(&other, &profile));
    }
}
