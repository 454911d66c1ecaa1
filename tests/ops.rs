//! Every GPU kernel against its CPU reference on random data and awkward shapes: odd sizes, 1x1
//! spatial, batch > 1, channel counts that are not multiples of 4/8/16, stride 2 on odd inputs,
//! and every epilogue combination.

mod common;

use common::{assert_close, gpu};
use fpn_wgpu::kernels::avg_pool2d::{self, AvgPool2dOptions};
use fpn_wgpu::kernels::batch_norm::{self, BatchNormWeights};
use fpn_wgpu::kernels::conv2d::{self, Conv2dOptions, Conv2dWeights};
use fpn_wgpu::kernels::elementwise;
use fpn_wgpu::kernels::max_pool2d::{self, MaxPool2dOptions};
use fpn_wgpu::kernels::upsample_add::{self, UpsampleMode};
use fpn_wgpu::reference;
use fpn_wgpu::rng::SplitMix64;
use fpn_wgpu::tensor::MemoryFormat;
use fpn_wgpu::{Precision, Tensor};

const CONV_TOL: f64 = 1e-4;
const EXACT_TOL: f64 = 1e-5;

fn numel(s: [usize; 4]) -> usize {
    s.iter().product()
}

/// One convolution case: input shape, (cout, kernel), stride, padding.
struct ConvCase {
    input: [usize; 4],
    cout: usize,
    kernel: (usize, usize),
    stride: usize,
    padding: usize,
}

const fn case(input: [usize; 4], cout: usize, k: usize, stride: usize, padding: usize) -> ConvCase {
    ConvCase {
        input,
        cout,
        kernel: (k, k),
        stride,
        padding,
    }
}

const CONV_CASES: &[ConvCase] = &[
    case([1, 3, 17, 23], 5, 3, 1, 1),
    case([2, 5, 9, 11], 67, 3, 2, 1),
    case([1, 67, 13, 7], 3, 1, 1, 0),
    case([3, 8, 1, 1], 16, 1, 1, 0),
    case([2, 3, 1, 1], 5, 3, 1, 1),
    case([1, 3, 31, 29], 64, 7, 2, 3),
    case([2, 16, 15, 15], 24, 1, 2, 0),
    case([1, 4, 8, 8], 9, 3, 1, 0),
    case([1, 67, 21, 19], 67, 3, 1, 1),
    case([2, 32, 33, 35], 40, 1, 1, 0),
    case([1, 6, 5, 4], 7, 5, 3, 2),
    case([1, 130, 6, 10], 70, 3, 2, 1),
    // No padding: the bounds-free entry point, any kernel and stride.
    case([1, 3, 37, 41], 16, 7, 2, 0),
    case([2, 9, 15, 13], 11, 3, 2, 0),
    case([1, 5, 3, 3], 4, 3, 1, 0),
];

#[test]
fn conv2d_matches_reference_with_every_epilogue() {
    let ctx = gpu();
    let mut rng = SplitMix64::new(7);
    let mut worst: f64 = 0.0;
    let mut count = 0;
    for (i, c) in CONV_CASES.iter().enumerate() {
        let cin = c.input[1];
        let w_shape = [c.cout, cin, c.kernel.0, c.kernel.1];
        let x = rng.vec(numel(c.input), -1.0, 1.0);
        // He-like scale keeps outputs O(1) whatever the fan-in.
        let fan_in = (cin * c.kernel.0 * c.kernel.1) as f32;
        let bound = (3.0 / fan_in).sqrt();
        let w = rng.vec(numel(w_shape), -bound, bound);
        let bias = rng.vec(c.cout, -0.5, 0.5);
        let scale = rng.vec(c.cout, 0.5, 1.5);
        let shift = rng.vec(c.cout, -0.5, 0.5);
        let base = Conv2dOptions::new(c.stride, c.padding);
        let out_shape = conv2d::output_shape(c.input, w_shape, &base).unwrap();
        let residual = rng.vec(numel(out_shape), -1.0, 1.0);
        let xt = Tensor::from_slice(ctx, c.input, &x).unwrap();
        let rt = Tensor::from_slice(ctx, out_shape, &residual).unwrap();
        // Each epilogue variant: (bias, affine, residual, relu).
        for variant in 0..6 {
            let (use_bias, use_affine, use_res, relu) = match variant {
                0 => (false, false, false, false),
                1 => (true, false, false, false),
                2 => (false, true, false, true),
                3 => (true, true, true, true),
                4 => (false, true, true, false),
                _ => (true, false, false, true),
            };
            let opts = base.with_relu(relu);
            let bias_ref = use_bias.then_some(bias.as_slice());
            let affine_ref = use_affine.then_some((scale.as_slice(), shift.as_slice()));
            let weights = Conv2dWeights::new(ctx, w_shape, &w, bias_ref, affine_ref).unwrap();
            let got = conv2d::conv2d(ctx, &xt, &weights, use_res.then_some(&rt), &opts)
                .unwrap()
                .download(ctx)
                .unwrap();
            let (want, shape) = reference::conv2d(
                &x,
                c.input,
                &w,
                w_shape,
                bias_ref,
                affine_ref,
                use_res.then_some(residual.as_slice()),
                &common::conv_spec(&opts),
            );
            assert_eq!(shape, out_shape);
            let name = format!(
                "conv case {i} {:?} k{:?} s{} p{} cout {} variant {variant}",
                c.input, c.kernel, c.stride, c.padding, c.cout
            );
            worst = worst.max(assert_close(&name, &got, &want, CONV_TOL));
            count += 1;
        }
    }
    eprintln!("conv2d: {count} cases, worst max relative error {worst:e}");
}

/// A grouped convolution case: (input, cout, groups, kernel, stride, padding).
type GroupedCase = ([usize; 4], usize, usize, usize, usize, usize);

/// Grouped convolutions (ResNeXt's 3x3s) run as the block-diagonal dense convolution
/// `dense_from_grouped` builds: on every kernel the plan picks for f32, against the reference's
/// own grouped convolution, on random shapes (depthwise included).
#[test]
fn grouped_conv2d_as_block_diagonal_weights_matches_reference() {
    let ctx = gpu();
    let mut rng = SplitMix64::new(16);
    let cases: &[GroupedCase] = &[
        ([1, 8, 9, 11], 8, 2, 3, 1, 1),
        ([2, 12, 7, 5], 24, 4, 3, 2, 1),
        ([1, 6, 10, 10], 6, 6, 3, 1, 1),
        ([1, 64, 6, 7], 64, 32, 3, 2, 1),
        ([1, 9, 13, 8], 15, 3, 1, 1, 0),
    ];
    for (i, &(input, cout, groups, k, stride, padding)) in cases.iter().enumerate() {
        let cin = input[1];
        let grouped = [cout, cin / groups, k, k];
        let bound = (3.0 / (cin / groups * k * k) as f32).sqrt();
        let w = rng.vec(numel(grouped), -bound, bound);
        let x = rng.vec(numel(input), -1.0, 1.0);
        let dense = conv2d::dense_from_grouped(&w, grouped, groups).unwrap();
        let weights = Conv2dWeights::new(ctx, [cout, cin, k, k], &dense, None, None).unwrap();
        let opts = Conv2dOptions::new(stride, padding);
        let xt = Tensor::from_slice(ctx, input, &x).unwrap();
        let got = conv2d::conv2d(ctx, &xt, &weights, None, &opts)
            .unwrap()
            .download(ctx)
            .unwrap();
        let (want, _) = reference::grouped_conv2d(&x, input, &w, grouped, groups, stride, padding);
        let name = format!("grouped case {i} {input:?} cout {cout} groups {groups} k{k} s{stride}");
        assert_close(&name, &got, &want, CONV_TOL);
    }
    // Weights that do not split into the groups are an error, not a panic.
    let e = conv2d::dense_from_grouped(&[0.0; 10], [5, 2, 1, 1], 2).unwrap_err();
    assert!(e.to_string().contains("multiple of the groups"), "{e}");
}

/// The reference for a grouped convolution with the epilogue: the reference's grouped
/// convolution, then `(acc + bias) * scale + shift`, the residual (as it is, or upsampled from a
/// coarser map) and ReLU, each by the reference's own ops.
#[allow(clippy::too_many_arguments)]
fn grouped_reference(
    x: &[f32],
    input: [usize; 4],
    w: &[f32],
    w_shape: [usize; 4],
    opts: &Conv2dOptions,
    bias: Option<&[f32]>,
    affine: Option<(&[f32], &[f32])>,
    residual: Option<(&[f32], [usize; 4])>,
) -> Vec<f32> {
    use fpn_wgpu::kernels::conv2d::ResidualMode;
    let (conv, out_shape) = reference::grouped_conv2d(
        x,
        input,
        w,
        w_shape,
        opts.groups,
        opts.stride.0,
        opts.padding.0,
    );
    let [_, cout, oh, ow] = out_shape;
    let mut out: Vec<f32> = conv
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let co = i / (oh * ow) % cout;
            let mut v = v as f64 + bias.map_or(0.0, |b| b[co] as f64);
            if let Some((scale, shift)) = affine {
                v = v * scale[co] as f64 + shift[co] as f64;
            }
            v as f32
        })
        .collect();
    if let Some((r, r_shape)) = residual {
        out = match opts.residual {
            ResidualMode::Same => out.iter().zip(r).map(|(a, b)| a + b).collect(),
            ResidualMode::Upsampled(mode) => {
                reference::upsample_add(r, r_shape, &out, out_shape, common::resize(mode))
            }
        };
    }
    if opts.relu {
        out = reference::relu(&out);
    }
    out
}

/// The grouped kernel against the reference on random shapes: depthwise (one input channel per
/// group, with one or two outputs each), 3, 4 and 8 input channels per group, 1x1 to 5x5
/// kernels, strides 1 and 2, padding, batches of 2, output channels that are not a multiple of
/// 16, and every epilogue (bias, affine, ReLU, a residual as it is or upsampled both ways), in
/// f32 and (where the adapter has it) f16.
#[test]
fn grouped_conv2d_matches_reference() {
    use fpn_wgpu::kernels::conv2d::{
        strategy, ConvChoice, ConvProblem, DeviceProfile, ResidualMode,
    };
    use fpn_wgpu::Precision;
    let ctx = gpu();
    let profile = DeviceProfile::of(ctx);
    let mut rng = SplitMix64::new(21);
    let cases: &[GroupedCase] = &[
        ([1, 8, 9, 11], 8, 8, 3, 1, 1),
        ([2, 12, 7, 5], 24, 4, 3, 2, 1),
        ([1, 64, 10, 9], 64, 16, 3, 1, 1),
        ([2, 64, 11, 13], 128, 8, 3, 2, 1),
        ([1, 6, 10, 10], 12, 6, 3, 1, 0),
        ([1, 9, 13, 8], 15, 3, 1, 1, 0),
        ([1, 32, 7, 6], 36, 4, 5, 2, 2),
        ([2, 40, 6, 7], 40, 10, 3, 1, 1),
        ([1, 96, 5, 5], 96, 96, 3, 2, 1),
    ];
    let residuals = [
        None,
        Some(ResidualMode::Same),
        Some(ResidualMode::Upsampled(UpsampleMode::Bilinear)),
        Some(ResidualMode::Upsampled(UpsampleMode::Nearest)),
    ];
    let f16 = common::f16_gpu().map(|_| Precision::F16);
    let mut worst = [0.0f64; 2];
    for (i, &(input, cout, groups, k, stride, padding)) in cases.iter().enumerate() {
        let w_shape = [cout, input[1] / groups, k, k];
        let bound = (3.0 / (w_shape[1] * k * k) as f32).sqrt();
        let base = Conv2dOptions::new(stride, padding).with_groups(groups);
        let out_shape = conv2d::output_shape(input, w_shape, &base).unwrap();
        for (e, residual) in residuals.into_iter().enumerate() {
            for precision in std::iter::once(Precision::F32).chain(f16) {
                // f16 tensors hold f16 values: the reference sees the same rounded inputs.
                let mut draw = |n, lo, hi| -> Vec<f32> {
                    rng.vec(n, lo, hi)
                        .into_iter()
                        .map(|v| precision.round(v))
                        .collect()
                };
                let x = draw(numel(input), -1.0, 1.0);
                let w = draw(numel(w_shape), -bound, bound);
                let bias = draw(cout, -0.5, 0.5);
                let scale = draw(cout, 0.5, 1.5);
                let shift = draw(cout, -0.5, 0.5);
                let res_shape = match residual {
                    Some(ResidualMode::Upsampled(_)) => [
                        out_shape[0],
                        cout,
                        out_shape[2].div_ceil(2),
                        out_shape[3].div_ceil(2),
                    ],
                    _ => out_shape,
                };
                let r = draw(numel(res_shape), -1.0, 1.0);
                // Odd epilogues take bias and affine, even ones neither; ReLU on every other
                // case.
                let with_affine = e % 2 == 1;
                let mut opts = base.with_relu((i + e) % 2 == 0);
                if let Some(mode) = residual {
                    opts = opts.with_residual(mode);
                }
                let weights = Conv2dWeights::with_precision(
                    ctx,
                    w_shape,
                    &w,
                    with_affine.then_some(bias.as_slice()),
                    with_affine.then_some((scale.as_slice(), shift.as_slice())),
                    conv2d::WeightLayout::KMajor,
                    precision,
                )
                .unwrap();
                let xt = Tensor::from_slice_as(ctx, input, &x, precision).unwrap();
                let rt = Tensor::from_slice_as(ctx, res_shape, &r, precision).unwrap();
                let res = residual.map(|_| &rt);
                let problem = ConvProblem::of(&xt, &weights, res, &opts);
                assert!(matches!(
                    strategy::choose(&problem, &profile).unwrap(),
                    ConvChoice::Grouped { .. }
                ));
                let out = Tensor::empty_as(ctx, out_shape, precision).unwrap();
                let launches = conv2d::prepare(ctx, &xt, &weights, res, &out, &opts).unwrap();
                let entry = if (cout / groups) % 4 == 0 {
                    "conv2d_grouped4"
                } else {
                    "conv2d_grouped1"
                };
                assert_eq!(launches.len(), 1);
                assert_eq!(launches[0].label(), entry);
                ctx.run(&launches.iter().collect::<Vec<_>>()).unwrap();
                let got = out.download(ctx).unwrap();
                let want = grouped_reference(
                    &x,
                    input,
                    &w,
                    w_shape,
                    &opts,
                    with_affine.then_some(bias.as_slice()),
                    with_affine.then_some((scale.as_slice(), shift.as_slice())),
                    residual.map(|_| (r.as_slice(), res_shape)),
                );
                let (slot, tol) = match precision {
                    Precision::F32 => (0, EXACT_TOL),
                    Precision::F16 => (1, 1e-3),
                };
                let name = format!(
                    "grouped case {i} {input:?} cout {cout} groups {groups} k{k} s{stride} \
                     p{padding} {residual:?} affine {with_affine} relu {} {precision}",
                    opts.relu
                );
                worst[slot] = worst[slot].max(assert_close(&name, &got, &want, tol));
            }
        }
    }
    eprintln!(
        "grouped conv2d: worst max relative error f32 {:e}, f16 {:e}",
        worst[0], worst[1]
    );
}

/// Grouped convolutions take the grouped kernel and only it: the preset and the only tuning
/// candidate, never Winograd or cooperative-matrix weights; the other kernels refuse them, the
/// grouped kernel refuses dense ones, and groups that do not divide the channels are an error
/// that says so.
#[test]
fn grouped_convolutions_run_only_on_the_grouped_kernel() {
    use fpn_wgpu::kernels::conv2d::{
        strategy, ConvChoice, ConvProblem, DeviceProfile, WeightLayout,
    };
    use fpn_wgpu::tensor::MemoryFormat;
    use fpn_wgpu::Precision;
    let ctx = gpu();
    let profile = DeviceProfile::of(ctx);
    let input = [1, 64, 12, 12];
    let w_shape = [64, 2, 3, 3];
    let opts = Conv2dOptions::new(1, 0).with_groups(32);
    let layer = |w_shape, opts: &Conv2dOptions, precision, layout, winograd| {
        ConvProblem::layer(w_shape, opts, precision, layout).with_winograd(winograd)
    };
    for (precision, layout, winograd) in [
        (Precision::F32, MemoryFormat::Nchw, true),
        (Precision::F16, MemoryFormat::ChannelsLast, true),
        (Precision::F16, MemoryFormat::ChannelsLast, false),
    ] {
        assert_eq!(
            strategy::weight_layout(&layer(w_shape, &opts, precision, layout, winograd)),
            WeightLayout::KMajor
        );
    }
    // The same layer dense would take Winograd: the groups are what rule it out.
    assert_eq!(
        strategy::weight_layout(&layer(
            [64, 64, 3, 3],
            &Conv2dOptions::new(1, 0),
            Precision::F32,
            MemoryFormat::Nchw,
            true
        )),
        WeightLayout::Winograd
    );
    let w = vec![0.1f32; numel(w_shape)];
    let weights = Conv2dWeights::new(ctx, w_shape, &w, None, None).unwrap();
    let problem =
        layer(w_shape, &opts, Precision::F32, MemoryFormat::Nchw, false).with_input(input, false);
    let grouped = strategy::choose(&problem, &profile).unwrap();
    assert!(matches!(grouped, ConvChoice::Grouped { .. }), "{grouped:?}");
    assert_eq!(
        strategy::candidates(&problem, &profile).unwrap(),
        vec![grouped]
    );
    assert_eq!(
        ConvChoice::from_code("grouped", &problem, &profile),
        Some(grouped)
    );
    assert_eq!(grouped.code(), "grouped");
    let xt = Tensor::from_slice(ctx, input, &vec![1.0; numel(input)]).unwrap();
    let out_shape = conv2d::output_shape(input, w_shape, &opts).unwrap();
    assert_eq!(out_shape, [1, 64, 10, 10]);
    let out = Tensor::empty(ctx, out_shape).unwrap();
    let dense_problem = ConvProblem {
        groups: 1,
        weight: [64, 64, 3, 3],
        ..problem
    };
    for split in [1, 2] {
        let rows = strategy::rows(&dense_problem, &profile, split).unwrap();
        let e = conv2d::prepare_with(ctx, &xt, &weights, None, &out, &opts, Some(rows), None)
            .unwrap_err();
        assert!(e.to_string().contains("ConvChoice::Grouped"), "{e}");
    }
    // Every output sums 2 channels x 9 taps of 1.0 x 0.1.
    let got = conv2d::conv2d(ctx, &xt, &weights, None, &opts)
        .unwrap()
        .download(ctx)
        .unwrap();
    assert!(
        got.iter().all(|&v| (v - 1.8).abs() < 1e-5),
        "{:?}",
        &got[..4]
    );
    let dense =
        Conv2dWeights::new(ctx, [64, 64, 3, 3], &vec![0.0; 64 * 64 * 9], None, None).unwrap();
    let dense_opts = Conv2dOptions::new(1, 0);
    let e = conv2d::prepare_with(
        ctx,
        &xt,
        &dense,
        None,
        &out,
        &dense_opts,
        Some(grouped),
        None,
    )
    .unwrap_err();
    assert!(e.to_string().contains("ConvChoice::Grouped"), "{e}");
    let winograd =
        Conv2dWeights::with_layout(ctx, w_shape, &w, None, None, WeightLayout::Winograd).unwrap();
    let e = conv2d::conv2d(ctx, &xt, &winograd, None, &opts).unwrap_err();
    assert!(e.to_string().contains("WeightLayout::KMajor"), "{e}");
    // Groups that do not divide the channels, and weights of the wrong group width.
    for (groups, w_shape, needle) in [
        (5, [64, 2, 3, 3], "divide"),
        (0, [64, 2, 3, 3], "at least 1"),
        (32, [64, 4, 3, 3], "[cout, cin / groups, kh, kw]"),
        (3, [64, 21, 3, 3], "divide"),
    ] {
        let opts = opts.with_groups(groups);
        let e = conv2d::output_shape(input, w_shape, &opts).unwrap_err();
        assert!(e.to_string().contains(needle), "groups {groups}: {e}");
    }
}

/// Split-K on the row kernel: the input channels in 2, 3 or 7 parts (evenly and not, more parts
/// than some layers have channels for), their partial sums reduced before every epilogue,
/// against the reference; the launches name their split.
#[test]
fn split_k_row_convolutions_match_the_reference() {
    // The adapter's own context (CPU tiles), and one made from a device the caller owns, whose
    // adapter type is unknown (GPU tiles: 8 pixels by 8 channels).
    let own = common::small_binding_context(64 << 20);
    for ctx in [gpu(), &own] {
        split_k_cases(ctx);
    }
}

fn split_k_cases(ctx: &fpn_wgpu::GpuContext) {
    use fpn_wgpu::kernels::conv2d::{strategy, ConvProblem, DeviceProfile, ResidualMode};
    use fpn_wgpu::kernels::upsample_add::UpsampleMode;
    let profile = DeviceProfile::of(ctx);
    let mut rng = SplitMix64::new(13);
    let mut worst: f64 = 0.0;
    let mut count = 0;
    // (input, cout, kernel, stride, residual): a 3x3 on a padded map, a stride-2 1x1, a
    // pointwise conv on a flattened plane with an upsampled residual, a batch of 2.
    let cases = [
        ([1, 48, 13, 17], 24, 3, 1, Some(ResidualMode::Same)),
        ([2, 33, 12, 9], 20, 1, 2, None),
        (
            [1, 64, 7, 11],
            40,
            1,
            1,
            Some(ResidualMode::Upsampled(UpsampleMode::Bilinear)),
        ),
        (
            [1, 5, 6, 6],
            8,
            3,
            1,
            Some(ResidualMode::Upsampled(UpsampleMode::Nearest)),
        ),
    ];
    for (i, (input, cout, k, stride, residual)) in cases.into_iter().enumerate() {
        let w_shape = [cout, input[1], k, k];
        let x = rng.vec(numel(input), -1.0, 1.0);
        let bound = (3.0 / (input[1] * k * k) as f32).sqrt();
        let w = rng.vec(numel(w_shape), -bound, bound);
        let bias = rng.vec(cout, -0.5, 0.5);
        let mut opts = Conv2dOptions::new(stride, 0).with_relu(true);
        let out_shape = conv2d::output_shape(input, w_shape, &opts).unwrap();
        let res_shape = match residual {
            Some(ResidualMode::Upsampled(_)) => [
                out_shape[0],
                cout,
                out_shape[2].div_ceil(2),
                out_shape[3].div_ceil(2),
            ],
            _ => out_shape,
        };
        let r = rng.vec(numel(res_shape), -1.0, 1.0);
        let (conv, _) = reference::conv2d(
            &x,
            input,
            &w,
            w_shape,
            Some(&bias),
            None,
            (residual == Some(ResidualMode::Same)).then_some(r.as_slice()),
            &common::conv_spec(&opts.with_relu(false)),
        );
        let summed = match residual {
            Some(ResidualMode::Upsampled(mode)) => {
                reference::upsample_add(&r, res_shape, &conv, out_shape, common::resize(mode))
            }
            _ => conv,
        };
        let want: Vec<f32> = summed.iter().map(|&v| v.max(0.0)).collect();
        if let Some(mode) = residual {
            opts = opts.with_residual(mode);
        }
        let weights = Conv2dWeights::new(ctx, w_shape, &w, Some(&bias), None).unwrap();
        let xt = Tensor::from_slice(ctx, input, &x).unwrap();
        let rt = Tensor::from_slice(ctx, res_shape, &r).unwrap();
        let res = residual.map(|_| &rt);
        let problem = ConvProblem::of(&xt, &weights, res, &opts);
        for split in [1, 2, 3, 7] {
            let choice = strategy::rows(&problem, &profile, split).unwrap();
            let out = Tensor::empty(ctx, out_shape).unwrap();
            let launches =
                conv2d::prepare_with(ctx, &xt, &weights, res, &out, &opts, Some(choice), None)
                    .unwrap();
            let split_used = split.min(input[1]);
            assert_eq!(launches.len(), if split_used > 1 { 2 } else { 1 });
            if split_used > 1 {
                assert_eq!(launches[0].label(), "conv2d_rows_partial");
                assert_eq!(launches[0].config(), format!("split {split_used}"));
            }
            ctx.run(&launches.iter().collect::<Vec<_>>()).unwrap();
            let got = out.download(ctx).unwrap();
            worst = worst.max(assert_close(
                &format!("split-K case {i}, split {split}"),
                &got,
                &want,
                CONV_TOL,
            ));
            count += 1;
        }
    }
    eprintln!(
        "split-K row convolutions on {}: {count} runs, worst max relative error {worst:e}",
        ctx.adapter()
    );
}

#[test]
fn winograd_conv2d_matches_reference() {
    use fpn_wgpu::kernels::conv2d::WeightLayout;
    let ctx = gpu();
    let mut rng = SplitMix64::new(31);
    let mut worst: f64 = 0.0;
    let mut count = 0;
    // 3x3 stride 1: odd and even sizes, 1x1 maps, padding 0/1/2, awkward channel counts.
    let cases = [
        ([1, 3, 17, 23], 5, 1),
        ([2, 5, 9, 11], 67, 1),
        ([1, 67, 1, 1], 3, 1),
        ([3, 8, 4, 4], 16, 0),
        ([1, 16, 13, 7], 9, 2),
        ([1, 64, 25, 33], 64, 1),
    ];
    for (i, &(input, cout, pad)) in cases.iter().enumerate() {
        let cin = input[1];
        let w_shape = [cout, cin, 3, 3];
        let x = rng.vec(numel(input), -1.0, 1.0);
        let bound = (3.0 / (cin * 9) as f32).sqrt();
        let w = rng.vec(numel(w_shape), -bound, bound);
        let bias = rng.vec(cout, -0.5, 0.5);
        let scale = rng.vec(cout, 0.5, 1.5);
        let shift = rng.vec(cout, -0.5, 0.5);
        let opts = Conv2dOptions::new(1, pad);
        let out_shape = conv2d::output_shape(input, w_shape, &opts).unwrap();
        let residual = rng.vec(numel(out_shape), -1.0, 1.0);
        let xt = Tensor::from_slice(ctx, input, &x).unwrap();
        let rt = Tensor::from_slice(ctx, out_shape, &residual).unwrap();
        let affine = Some((scale.as_slice(), shift.as_slice()));
        let weights = Conv2dWeights::with_layout(
            ctx,
            w_shape,
            &w,
            Some(&bias),
            affine,
            WeightLayout::Winograd,
        )
        .unwrap();
        for (use_res, relu) in [(false, false), (true, true), (false, true)] {
            let opts = opts.with_relu(relu);
            let res = use_res.then_some(&rt);
            let got = conv2d::conv2d(ctx, &xt, &weights, res, &opts)
                .unwrap()
                .download(ctx)
                .unwrap();
            let res_ref = use_res.then_some(residual.as_slice());
            let (want, _) = reference::conv2d(
                &x,
                input,
                &w,
                w_shape,
                Some(&bias),
                affine,
                res_ref,
                &common::conv_spec(&opts),
            );
            let name = format!(
                "winograd case {i} {input:?} cout {cout} pad {pad} residual {use_res} relu {relu}"
            );
            worst = worst.max(assert_close(&name, &got, &want, CONV_TOL));
            count += 1;
        }
    }
    // Winograd weights refuse what they cannot compute, with an error rather than a wrong answer.
    let w = Conv2dWeights::with_layout(
        ctx,
        [4, 3, 3, 3],
        &[0.1; 108],
        None,
        None,
        WeightLayout::Winograd,
    )
    .unwrap();
    let x = Tensor::from_slice(ctx, [1, 3, 8, 8], &[0.5; 192]).unwrap();
    let e = conv2d::conv2d(ctx, &x, &w, None, &Conv2dOptions::new(2, 1)).unwrap_err();
    assert!(e.to_string().contains("stride 1"), "{e}");
    let e = Conv2dWeights::with_layout(
        ctx,
        [4, 3, 1, 1],
        &[0.1; 12],
        None,
        None,
        WeightLayout::Winograd,
    )
    .unwrap_err();
    assert!(e.to_string().contains("3x3"), "{e}");
    eprintln!("conv2d winograd: {count} cases, worst max relative error {worst:e}");
}

/// The general direct kernel on channels-last tensors (the portable kernel of a channels-last
/// network where no cooperative matrices run): every case and epilogue, the residual as it is
/// and upsampled, f32 and (where the adapter has it) f16, with the padding channels of its
/// output written as zeros.
#[test]
fn conv2d_on_channels_last_tensors_without_cooperative_matrices_matches_reference() {
    use fpn_wgpu::kernels::conv2d::{ResidualMode, WeightLayout};
    let ctx = gpu();
    let cl = MemoryFormat::ChannelsLast;
    let mut precisions = vec![Precision::F32];
    if common::f16_gpu().is_some() {
        precisions.push(Precision::F16);
    }
    let mut rng = SplitMix64::new(71);
    let mut worst: f64 = 0.0;
    for precision in precisions {
        let tol = if precision == Precision::F32 {
            CONV_TOL
        } else {
            1e-2
        };
        let round =
            |v: Vec<f32>| -> Vec<f32> { v.into_iter().map(|x| precision.round(x)).collect() };
        for (i, c) in CONV_CASES.iter().enumerate() {
            let cin = c.input[1];
            let w_shape = [c.cout, cin, c.kernel.0, c.kernel.1];
            let x = round(rng.vec(numel(c.input), -1.0, 1.0));
            let bound = (3.0 / (cin * c.kernel.0 * c.kernel.1) as f32).sqrt();
            let w = round(rng.vec(numel(w_shape), -bound, bound));
            let bias = rng.vec(c.cout, -0.5, 0.5);
            let opts = Conv2dOptions::new(c.stride, c.padding).with_relu(i % 2 == 0);
            let out_shape = conv2d::output_shape(c.input, w_shape, &opts).unwrap();
            let residual = round(rng.vec(numel(out_shape), -1.0, 1.0));
            let weights = Conv2dWeights::with_precision(
                ctx,
                w_shape,
                &w,
                Some(&bias),
                None,
                WeightLayout::KMajor,
                precision,
            )
            .unwrap();
            let xt = Tensor::from_slice_with(ctx, c.input, &x, precision, cl).unwrap();
            let rt = Tensor::from_slice_with(ctx, out_shape, &residual, precision, cl).unwrap();
            let (want, _) = reference::conv2d(
                &x,
                c.input,
                &w,
                w_shape,
                Some(&bias),
                None,
                Some(&residual),
                &common::conv_spec(&opts),
            );
            let name = format!("channels-last conv case {i} {:?} ({precision})", c.input);
            let got = if precision == Precision::F32 {
                let out = common::poisoned(ctx, out_shape, cl);
                let launches = conv2d::prepare(ctx, &xt, &weights, Some(&rt), &out, &opts).unwrap();
                assert!(launches.iter().all(|d| d.label() == "conv2d"), "{name}");
                ctx.run(&launches.iter().collect::<Vec<_>>()).unwrap();
                common::assert_storage_written(ctx, &out, &name);
                out
            } else {
                conv2d::conv2d(ctx, &xt, &weights, Some(&rt), &opts).unwrap()
            };
            assert_eq!(got.memory_format(), cl);
            worst = worst.max(assert_close(&name, &got.download(ctx).unwrap(), &want, tol));
        }
        // The FPN's top-down merge in the epilogue: the coarse map upsampled, channels-last.
        for (input, cout, coarse_hw) in [([1, 16, 7, 9], 12, [4, 5]), ([2, 3, 10, 12], 67, [5, 6])]
        {
            let w_shape = [cout, input[1], 1, 1];
            let x = round(rng.vec(numel(input), -1.0, 1.0));
            let w = round(rng.vec(numel(w_shape), -0.5, 0.5));
            let coarse_shape = [input[0], cout, coarse_hw[0], coarse_hw[1]];
            let coarse = round(rng.vec(numel(coarse_shape), -1.0, 1.0));
            let weights = Conv2dWeights::with_precision(
                ctx,
                w_shape,
                &w,
                None,
                None,
                WeightLayout::KMajor,
                precision,
            )
            .unwrap();
            let xt = Tensor::from_slice_with(ctx, input, &x, precision, cl).unwrap();
            let ct = Tensor::from_slice_with(ctx, coarse_shape, &coarse, precision, cl).unwrap();
            for mode in [UpsampleMode::Bilinear, UpsampleMode::Nearest] {
                let opts = Conv2dOptions::new(1, 0).with_residual(ResidualMode::Upsampled(mode));
                let got = conv2d::conv2d(ctx, &xt, &weights, Some(&ct), &opts).unwrap();
                let (lateral, shape) = reference::conv2d(
                    &x,
                    input,
                    &w,
                    w_shape,
                    None,
                    None,
                    None,
                    &common::conv_spec(&Conv2dOptions::new(1, 0)),
                );
                let want = reference::upsample_add(
                    &coarse,
                    coarse_shape,
                    &lateral,
                    shape,
                    common::resize(mode),
                );
                let name =
                    format!("channels-last upsampled residual {input:?} {mode:?} ({precision})");
                worst = worst.max(assert_close(&name, &got.download(ctx).unwrap(), &want, tol));
            }
        }
    }
    eprintln!("channels-last direct convolutions: worst max relative error {worst:e}");
}

#[test]
fn conv2d_adds_an_upsampled_residual_in_its_epilogue() {
    use fpn_wgpu::kernels::conv2d::ResidualMode;
    let ctx = gpu();
    let mut rng = SplitMix64::new(29);
    let mut worst: f64 = 0.0;
    // (input, cout, coarse size): the FPN's lateral 1x1 convs with 4 -> 7, 13 -> 25, 2x ratios.
    let cases = [
        ([1, 16, 7, 9], 12, [4, 5]),
        ([2, 8, 25, 33], 5, [13, 17]),
        ([1, 3, 10, 12], 67, [5, 6]),
        ([1, 4, 3, 3], 8, [3, 3]),
    ];
    for (i, &(input, cout, [ch, cw])) in cases.iter().enumerate() {
        let w_shape = [cout, input[1], 1, 1];
        let x = rng.vec(numel(input), -1.0, 1.0);
        let w = rng.vec(numel(w_shape), -0.5, 0.5);
        let bias = rng.vec(cout, -0.5, 0.5);
        let coarse_shape = [input[0], cout, ch, cw];
        let coarse = rng.vec(numel(coarse_shape), -1.0, 1.0);
        let weights = Conv2dWeights::new(ctx, w_shape, &w, Some(&bias), None).unwrap();
        let xt = Tensor::from_slice(ctx, input, &x).unwrap();
        let ct = Tensor::from_slice(ctx, coarse_shape, &coarse).unwrap();
        for mode in [UpsampleMode::Bilinear, UpsampleMode::Nearest] {
            for relu in [false, true] {
                let opts = Conv2dOptions::new(1, 0)
                    .with_relu(relu)
                    .with_residual(ResidualMode::Upsampled(mode));
                let got = conv2d::conv2d(ctx, &xt, &weights, Some(&ct), &opts).unwrap();
                let plain = Conv2dOptions::new(1, 0);
                let (lateral, shape) = reference::conv2d(
                    &x,
                    input,
                    &w,
                    w_shape,
                    Some(&bias),
                    None,
                    None,
                    &common::conv_spec(&plain),
                );
                let mut want = reference::upsample_add(
                    &coarse,
                    coarse_shape,
                    &lateral,
                    shape,
                    common::resize(mode),
                );
                if relu {
                    want = reference::relu(&want);
                }
                let got = got.download(ctx).unwrap();
                let name = format!("upsampled residual {i} {mode:?} relu {relu}");
                worst = worst.max(assert_close(&name, &got, &want, CONV_TOL));
            }
        }
    }
    eprintln!(
        "conv2d upsampled residual: {} cases, worst max relative error {worst:e}",
        cases.len() * 4
    );
}

#[test]
fn batch_norm_matches_reference() {
    let ctx = gpu();
    let mut rng = SplitMix64::new(11);
    let mut worst: f64 = 0.0;
    let shapes = [[1, 3, 5, 7], [2, 67, 9, 1], [3, 5, 1, 1], [1, 64, 33, 17]];
    for (i, &shape) in shapes.iter().enumerate() {
        let c = shape[1];
        let x = rng.vec(numel(shape), -3.0, 3.0);
        let mean = rng.vec(c, -1.0, 1.0);
        let var = rng.vec(c, 0.1, 2.0);
        let weight = rng.vec(c, 0.5, 1.5);
        let bias = rng.vec(c, -0.5, 0.5);
        let bn = BatchNormWeights::new(ctx, &mean, &var, &weight, &bias, 1e-5).unwrap();
        let xt = Tensor::from_slice(ctx, shape, &x).unwrap();
        let got = batch_norm::batch_norm(ctx, &xt, &bn)
            .unwrap()
            .download(ctx)
            .unwrap();
        let want = reference::batch_norm(&x, shape, &mean, &var, &weight, &bias, 1e-5);
        worst = worst.max(assert_close(
            &format!("batch norm {i} {shape:?}"),
            &got,
            &want,
            EXACT_TOL,
        ));
    }
    eprintln!(
        "batch_norm: {} cases, worst max relative error {worst:e}",
        shapes.len()
    );
}

#[test]
fn max_pool2d_matches_reference() {
    let ctx = gpu();
    let mut rng = SplitMix64::new(13);
    let mut worst: f64 = 0.0;
    let cases = [
        ([1, 3, 17, 23], MaxPool2dOptions::new(3, 2, 1)),
        ([2, 5, 8, 8], MaxPool2dOptions::new(3, 2, 1)),
        ([1, 67, 1, 1], MaxPool2dOptions::new(1, 2, 0)),
        ([2, 3, 9, 13], MaxPool2dOptions::new(1, 2, 0)),
        ([1, 4, 7, 6], MaxPool2dOptions::new(2, 2, 0)),
        ([1, 2, 1, 1], MaxPool2dOptions::new(3, 2, 1)),
        (
            [1, 3, 10, 9],
            MaxPool2dOptions {
                kernel: (3, 2),
                stride: (1, 2),
                padding: (1, 1),
            },
        ),
    ];
    for (i, (shape, opts)) in cases.iter().enumerate() {
        // All-negative inputs: a padded zero winning the max would show at once. One NaN
        // must win its windows, as in PyTorch.
        let mut x = rng.vec(numel(*shape), -5.0, -0.1);
        x[numel(*shape) / 2] = f32::NAN;
        let xt = Tensor::from_slice(ctx, *shape, &x).unwrap();
        let got = max_pool2d::max_pool2d(ctx, &xt, opts).unwrap();
        let (want, want_shape) = reference::max_pool2d(&x, *shape, &common::pool_spec(opts));
        assert_eq!(got.shape(), want_shape, "max pool case {i}");
        let got = got.download(ctx).unwrap();
        worst = worst.max(assert_close(
            &format!("max pool {i} {shape:?} {opts:?}"),
            &got,
            &want,
            EXACT_TOL,
        ));
    }
    eprintln!(
        "max_pool2d: {} cases, worst max relative error {worst:e}",
        cases.len()
    );
}

/// Input shapes and options of the average pooling tests: ResNet-D's 2x2 stride-2 shortcut pool
/// on odd and even sizes (the odd ones end in a clipped window), the 1x1 stride-1 identity,
/// overlapping and overhanging windows, a kernel smaller than the stride (where the last
/// ceil-mode window is dropped), windows larger than the input and unequal sides.
fn avg_pool_cases() -> Vec<([usize; 4], AvgPool2dOptions)> {
    vec![
        ([1, 3, 17, 23], AvgPool2dOptions::new(2, 2)),
        ([2, 5, 8, 8], AvgPool2dOptions::new(2, 2)),
        ([2, 67, 15, 10], AvgPool2dOptions::new(2, 2)),
        ([3, 4, 1, 1], AvgPool2dOptions::new(2, 2)),
        ([2, 3, 9, 13], AvgPool2dOptions::new(1, 1)),
        ([1, 4, 7, 6], AvgPool2dOptions::new(3, 2)),
        ([2, 6, 12, 11], AvgPool2dOptions::new(3, 2)),
        ([1, 3, 6, 5], AvgPool2dOptions::new(2, 1)),
        ([1, 3, 8, 9], AvgPool2dOptions::new(1, 2)),
        ([2, 2, 5, 9], AvgPool2dOptions::new(1, 3)),
        ([1, 2, 2, 3], AvgPool2dOptions::new(3, 2)),
        (
            [2, 3, 10, 11],
            AvgPool2dOptions {
                kernel: (3, 2),
                stride: (1, 3),
            },
        ),
    ]
}

#[test]
fn avg_pool2d_output_shape_follows_pytorch_ceil_mode() {
    // (size, kernel, stride, PyTorch's output size): ceil((size - kernel) / stride) + 1, less
    // one where the last window would start past the input.
    let sizes = [
        (7, 2, 2, 4),
        (8, 2, 2, 4),
        (25, 2, 2, 13),
        (1, 2, 2, 1),
        (5, 1, 1, 5),
        (6, 3, 2, 3),
        (5, 3, 2, 2),
        (2, 3, 2, 1),
        (8, 1, 2, 4),
        (9, 1, 2, 5),
        (5, 1, 3, 2),
        (4, 1, 3, 2),
    ];
    for (size, k, s, want) in sizes {
        let shape = [2, 3, size, size];
        let got = avg_pool2d::output_shape(shape, &AvgPool2dOptions::new(k, s)).unwrap();
        assert_eq!(
            got,
            [2, 3, want, want],
            "size {size}, kernel {k}, stride {s}"
        );
        let x = vec![0.0; numel(shape)];
        let (_, reference_shape) = reference::avg_pool2d(&x, shape, (k, k), (s, s));
        assert_eq!(got, reference_shape, "size {size}, kernel {k}, stride {s}");
    }
    // Each side by its own kernel and stride.
    let opts = AvgPool2dOptions {
        kernel: (2, 1),
        stride: (2, 3),
    };
    assert_eq!(
        avg_pool2d::output_shape([1, 4, 7, 5], &opts).unwrap(),
        [1, 4, 4, 2]
    );
    // A window that overhangs the input by the stride or more leaves no output: PyTorch's
    // "output size is too small".
    for (size, k, s) in [(1, 3, 2), (1, 3, 1), (2, 5, 3)] {
        let opts = AvgPool2dOptions::new(k, s);
        assert!(avg_pool2d::output_shape([1, 1, size, size], &opts).is_err());
        assert!(avg_pool2d::output_shape([1, 1, 9, size], &opts).is_err());
    }
}

#[test]
fn avg_pool2d_matches_reference() {
    let ctx = gpu();
    let mut rng = SplitMix64::new(19);
    let mut worst: f64 = 0.0;
    let cases = avg_pool_cases();
    for (i, (shape, opts)) in cases.iter().enumerate() {
        // Values far from zero: a divisor that counted out-of-bounds positions would show
        // as a mean pulled towards 0.
        let x = rng.vec(numel(*shape), 1.0, 3.0);
        let xt = Tensor::from_slice(ctx, *shape, &x).unwrap();
        let got = avg_pool2d::avg_pool2d(ctx, &xt, opts).unwrap();
        let (want, want_shape) = reference::avg_pool2d(&x, *shape, opts.kernel, opts.stride);
        assert_eq!(got.shape(), want_shape, "avg pool case {i}");
        let got = got.download(ctx).unwrap();
        if opts.kernel == (1, 1) && opts.stride == (1, 1) {
            assert_eq!(got, x, "avg pool case {i}: 1x1 stride 1 is the identity");
        }
        worst = worst.max(assert_close(
            &format!("avg pool {i} {shape:?} {opts:?}"),
            &got,
            &want,
            EXACT_TOL,
        ));
    }
    eprintln!(
        "avg_pool2d: {} cases, worst max relative error {worst:e}",
        cases.len()
    );
}

#[test]
fn avg_pool2d_matches_reference_in_f16_and_channels_last() {
    let ctx = gpu();
    let f16 = common::f16_gpu().is_some();
    let mut rng = SplitMix64::new(23);
    let mut worst: f64 = 0.0;
    let mut count = 0;
    for (i, (shape, opts)) in avg_pool_cases().iter().enumerate() {
        for layout in [MemoryFormat::Nchw, MemoryFormat::ChannelsLast] {
            for precision in [Precision::F32, Precision::F16] {
                if (precision, layout) == (Precision::F32, MemoryFormat::Nchw)
                    || (precision == Precision::F16 && !f16)
                {
                    continue;
                }
                // Values representable in the storage type, so that only the pooling's own
                // rounding differs from the reference.
                let x: Vec<f32> = rng
                    .vec(numel(*shape), -4.0, 4.0)
                    .into_iter()
                    .map(|v| precision.round(v))
                    .collect();
                let xt = Tensor::from_slice_with(ctx, *shape, &x, precision, layout).unwrap();
                let got = avg_pool2d::avg_pool2d(ctx, &xt, opts).unwrap();
                assert_eq!(got.memory_format(), layout);
                assert_eq!(got.precision(), precision);
                let (want, want_shape) =
                    reference::avg_pool2d(&x, *shape, opts.kernel, opts.stride);
                assert_eq!(got.shape(), want_shape, "avg pool case {i}");
                // f16 output: half an ulp of 2^-11, relative to each value and so to the scale.
                let tol = if precision == Precision::F16 {
                    1e-3
                } else {
                    EXACT_TOL
                };
                worst = worst.max(assert_close(
                    &format!("avg pool {i} {shape:?} {opts:?} {precision} {layout:?}"),
                    &got.download(ctx).unwrap(),
                    &want,
                    tol,
                ));
                count += 1;
            }
        }
    }
    eprintln!("avg_pool2d f16 / channels-last: {count} cases, worst max relative error {worst:e}");
}

#[test]
fn avg_pool2d_runs_in_a_graph() {
    use fpn_wgpu::graph::executor::{Algorithms, Executor};
    use fpn_wgpu::graph::ops::AvgPool2d;
    use fpn_wgpu::graph::Graph;

    let ctx = gpu();
    let mut rng = SplitMix64::new(29);
    let shape = [2, 5, 13, 10];
    let graph = || {
        let mut g = Graph::new();
        let x = g.input();
        let y = g.push("down", AvgPool2d(AvgPool2dOptions::new(2, 2)), &[x]);
        let z = g.push("same", AvgPool2d(AvgPool2dOptions::new(1, 1)), &[y]);
        g.output("pooled", z);
        g
    };
    let x: Vec<f32> = rng
        .vec(numel(shape), -2.0, 2.0)
        .into_iter()
        .map(|v| Precision::F16.round(v))
        .collect();
    let (want, want_shape) = reference::avg_pool2d(&x, shape, (2, 2), (2, 2));
    assert_eq!(want_shape, [2, 5, 7, 5]);
    let xt = Tensor::from_slice(ctx, shape, &x).unwrap();
    let ex = Executor::new(ctx, graph()).unwrap();
    let out = ex.forward(&xt).unwrap();
    assert_eq!(out[0].1.shape(), want_shape);
    assert_close(
        "graph avg pool",
        &out[0].1.download(ctx).unwrap(),
        &want,
        EXACT_TOL,
    );
    let Some(ctx) = common::f16_gpu() else { return };
    let half = Executor::with_options(ctx, graph(), Algorithms::Direct, Precision::F16).unwrap();
    let out = half.forward(&xt).unwrap();
    assert_eq!(out[0].1.shape(), want_shape);
    assert_close(
        "f16 graph avg pool",
        &out[0].1.download(ctx).unwrap(),
        &want,
        1e-3,
    );
}

#[test]
fn upsample_add_matches_reference_for_both_modes() {
    let ctx = gpu();
    let mut rng = SplitMix64::new(17);
    let mut worst: f64 = 0.0;
    // (coarse shape, lateral shape): 4 -> 7 and 13 -> 25 ratios, exact 2x, same size, 1x1,
    // upsampling from 1x1, and a downsampling ratio.
    let cases = [
        ([1, 3, 4, 13], [1, 3, 7, 25]),
        ([2, 5, 13, 4], [2, 5, 25, 7]),
        ([1, 67, 10, 12], [1, 67, 20, 24]),
        ([1, 3, 6, 6], [1, 3, 6, 6]),
        ([3, 2, 1, 1], [3, 2, 5, 3]),
        ([1, 4, 1, 1], [1, 4, 1, 1]),
        ([1, 2, 7, 9], [1, 2, 4, 5]),
        ([2, 3, 19, 29], [2, 3, 38, 57]),
    ];
    let mut count = 0;
    for (i, &(xs, ys)) in cases.iter().enumerate() {
        let x = rng.vec(numel(xs), -2.0, 2.0);
        let y = rng.vec(numel(ys), -2.0, 2.0);
        let xt = Tensor::from_slice(ctx, xs, &x).unwrap();
        let yt = Tensor::from_slice(ctx, ys, &y).unwrap();
        for mode in [UpsampleMode::Bilinear, UpsampleMode::Nearest] {
            let got = upsample_add::upsample_add(ctx, &xt, &yt, mode)
                .unwrap()
                .download(ctx)
                .unwrap();
            let want = reference::upsample_add(&x, xs, &y, ys, common::resize(mode));
            let name = format!("upsample_add {i} {xs:?} -> {ys:?} {mode:?}");
            worst = worst.max(assert_close(&name, &got, &want, EXACT_TOL));
            count += 1;
        }
    }
    eprintln!("upsample_add: {count} cases, worst max relative error {worst:e}");
}

#[test]
fn relu_and_add_match_reference_and_keep_nan() {
    let ctx = gpu();
    let mut rng = SplitMix64::new(19);
    for shape in [[1, 1, 1, 1], [2, 3, 5, 7], [1, 67, 13, 1], [4, 256, 17, 9]] {
        let mut a = rng.vec(numel(shape), -1.0, 1.0);
        a[0] = f32::NAN;
        let b = rng.vec(numel(shape), -1.0, 1.0);
        let at = Tensor::from_slice(ctx, shape, &a).unwrap();
        let bt = Tensor::from_slice(ctx, shape, &b).unwrap();
        let r = elementwise::relu(ctx, &at).unwrap().download(ctx).unwrap();
        assert_close(&format!("relu {shape:?}"), &r, &reference::relu(&a), 0.0);
        assert!(r[0].is_nan(), "relu must keep NaN");
        let s = elementwise::add(ctx, &at, &bt)
            .unwrap()
            .download(ctx)
            .unwrap();
        assert_close(&format!("add {shape:?}"), &s, &reference::add(&a, &b), 0.0);
    }
}

#[test]
fn pad2d_matches_reference() {
    use fpn_wgpu::kernels::pad2d;
    let ctx = gpu();
    let mut rng = SplitMix64::new(37);
    for (shape, padding) in [
        ([1, 3, 5, 7], (1, 1)),
        ([2, 67, 1, 1], (3, 3)),
        ([1, 2, 4, 9], (0, 2)),
        ([1, 1, 6, 6], (0, 0)),
    ] {
        let x = rng.vec(numel(shape), -1.0, 1.0);
        let xt = Tensor::from_slice(ctx, shape, &x).unwrap();
        let got = pad2d::pad2d(ctx, &xt, padding).unwrap();
        let (want, want_shape) = reference::pad2d(&x, shape, padding);
        assert_eq!(got.shape(), want_shape);
        assert_close(
            &format!("pad2d {shape:?} {padding:?}"),
            &got.download(ctx).unwrap(),
            &want,
            0.0,
        );
    }
}

#[test]
fn tensor_round_trips_through_the_gpu() {
    let ctx = gpu();
    let data: Vec<f32> = (0..2 * 3 * 5 * 7).map(|i| i as f32 * 0.5 - 3.0).collect();
    let t = Tensor::from_slice(ctx, [2, 3, 5, 7], &data).unwrap();
    assert_eq!(t.shape(), [2, 3, 5, 7]);
    assert_eq!(t.download(ctx).unwrap(), data);
}

#[test]
fn async_forms_do_not_block_and_agree_with_blocking_ones() {
    use std::future::Future;
    use std::task::{Context, Poll, Waker};

    let ctx = pollster::block_on(fpn_wgpu::GpuContext::new_async()).unwrap();
    let mut rng = SplitMix64::new(23);
    let shape = [1, 64, 96, 96];
    let x = Tensor::from_slice(&ctx, shape, &rng.vec(64 * 96 * 96, -1.0, 1.0)).unwrap();
    let w = Conv2dWeights::new(
        &ctx,
        [64, 64, 3, 3],
        &rng.vec(64 * 64 * 9, -0.1, 0.1),
        None,
        None,
    )
    .unwrap();
    let opts = Conv2dOptions::new(1, 1);
    let out = Tensor::empty(&ctx, shape).unwrap();
    let d = conv2d::prepare(&ctx, &x, &w, None, &out, &opts)
        .unwrap()
        .remove(0);
    pollster::block_on(ctx.run_async(&[&d])).unwrap();
    let blocking = out.download(&ctx).unwrap();

    // Queue the same convolution again (hundreds of millions of FLOPs) and ask for the result.
    // A download that waited for the GPU would be ready at its first poll, every time. One that
    // does not is pending there, unless the GPU got there first: llvmpipe over GL runs a
    // dispatch inside `submit`, and the thread that drives the device can then answer before
    // the first poll, most likely when other tests load the machine. So each try must agree
    // with the blocking result, and one of up to 20 must find the result not yet there.
    let mut pending_seen = false;
    for _ in 0..20 {
        let again = Tensor::empty(&ctx, shape).unwrap();
        let d = conv2d::prepare(&ctx, &x, &w, None, &again, &opts)
            .unwrap()
            .remove(0);
        let mut encoder = ctx.device().create_command_encoder(&Default::default());
        {
            let mut pass = encoder.begin_compute_pass(&Default::default());
            for _ in 0..4 {
                d.record(&mut pass);
            }
        }
        ctx.queue().submit([encoder.finish()]);
        let mut fut = std::pin::pin!(again.download_async(&ctx));
        let first = fut.as_mut().poll(&mut Context::from_waker(Waker::noop()));
        let values = match first {
            Poll::Pending => {
                pending_seen = true;
                pollster::block_on(fut).unwrap()
            }
            Poll::Ready(values) => values.unwrap(),
        };
        assert_eq!(values, blocking);
        if pending_seen {
            break;
        }
    }
    assert!(
        pending_seen,
        "download_async was ready at its first poll in all 20 tries: it waits for the GPU"
    );
}

/// The row kernel reads its input as vec4s whose alignment shifts with every row, channel and
/// image: every width from 1 to 13 (each start offset modulo 4 and partial row tiles), both
/// strides, pointwise convs on odd planes, a channel count that is not a multiple of the tile,
/// and an input in a caller's buffer too short for whole vec4s (the general kernel then runs).
#[test]
fn row_kernel_matches_reference_at_every_alignment() {
    let ctx = gpu();
    let mut rng = SplitMix64::new(21);
    let mut worst: f64 = 0.0;
    let mut count = 0;
    // Every start within a vec4 and every partial tile of 8 and of 16 pixels.
    for width in (1..=13).chain([16, 17, 23, 31, 33, 40]) {
        for (k, stride) in [(1, 1), (1, 2), (3, 1), (3, 2)] {
            if width < k {
                continue;
            }
            let input = [2, 5, 3 + width % 3, width];
            let w_shape = [20, 5, k, k];
            let x = rng.vec(numel(input), -1.0, 1.0);
            let w = rng.vec(numel(w_shape), -0.5, 0.5);
            let bias = rng.vec(20, -0.5, 0.5);
            let opts = Conv2dOptions::new(stride, 0).with_relu(true);
            let weights = Conv2dWeights::new(ctx, w_shape, &w, Some(&bias), None).unwrap();
            let (want, shape) = reference::conv2d(
                &x,
                input,
                &w,
                w_shape,
                Some(&bias),
                None,
                None,
                &common::conv_spec(&opts),
            );
            // Exactly sized buffer: no room for a last partial vec4, so no vec4 binding.
            let exact = ctx.device().create_buffer(&wgpu::BufferDescriptor {
                label: None,
                size: (numel(input) * 4) as u64,
                usage: Tensor::usage(),
                mapped_at_creation: false,
            });
            ctx.queue()
                .write_buffer(&exact, 0, bytemuck::cast_slice(&x));
            for xt in [
                Tensor::from_slice(ctx, input, &x).unwrap(),
                Tensor::from_buffer(exact.clone(), input).unwrap(),
            ] {
                let got = conv2d::conv2d(ctx, &xt, &weights, None, &opts).unwrap();
                assert_eq!(got.shape(), shape);
                let name = format!("row kernel {input:?} k{k} s{stride}");
                worst = worst.max(assert_close(
                    &name,
                    &got.download(ctx).unwrap(),
                    &want,
                    CONV_TOL,
                ));
                count += 1;
            }
        }
    }
    eprintln!("row kernel: {count} cases, worst max relative error {worst:e}");
}
