//! f16 storage: every kernel against the CPU reference run on the same f16-rounded data, the
//! conversions in and out, the executor's memory, and the errors for mixed precisions. The
//! whole network's f16 parity with PyTorch is checked beside the f32 one (`parity.rs`,
//! `torchvision.rs`).
//!
//! A kernel that reads f16 and sums in f32 differs from the f64 reference on the same rounded
//! inputs only by the rounding of its output to f16 (2^-11 of the value) and f32 summation
//! order, hence the tolerance.

mod common;

use common::{assert_close, f16_gpu};
use fpn_wgpu::kernels::batch_norm::{self, BatchNormWeights};
use fpn_wgpu::kernels::conv2d::{
    self, coop, Conv2dOptions, Conv2dWeights, CoopChoice, ResidualMode, WeightLayout,
};
use fpn_wgpu::kernels::convert;
use fpn_wgpu::kernels::elementwise;
use fpn_wgpu::kernels::max_pool2d::{self, MaxPool2dOptions};
use fpn_wgpu::kernels::pad2d;
use fpn_wgpu::kernels::upsample_add::{self, UpsampleMode};
use fpn_wgpu::reference;
use fpn_wgpu::rng::SplitMix64;
use fpn_wgpu::tensor::MemoryFormat;
use fpn_wgpu::{Error, Fpn, FpnConfig, FpnOptions, Precision, Tensor};

const F16: Precision = Precision::F16;
/// The output's rounding to f16 (4.9e-4 of the value) plus f32 summation over long sums.
const F16_TOL: f64 = 1e-3;

fn numel(s: [usize; 4]) -> usize {
    s.iter().product()
}

/// Random values already rounded to f16, so that the reference sees what the GPU reads.
fn rounded(rng: &mut SplitMix64, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    rng.vec(n, lo, hi)
        .into_iter()
        .map(|v| F16.round(v))
        .collect()
}

#[test]
fn f16_tensors_round_trip_and_convert_on_the_gpu() {
    let Some(ctx) = f16_gpu() else { return };
    let mut rng = SplitMix64::new(3);
    // Odd lengths: bindings of f16 tensors are padded to whole words.
    for shape in [[1, 1, 1, 1], [1, 3, 5, 7], [2, 3, 1, 1]] {
        let x = rng.vec(numel(shape), -70000.0, 70000.0);
        let half = Tensor::from_slice_as(ctx, shape, &x, F16).unwrap();
        assert_eq!(half.precision(), F16);
        assert_eq!(half.byte_size(), numel(shape) as u64 * 2);
        let want: Vec<f32> = x.iter().map(|&v| F16.round(v)).collect();
        assert_eq!(half.download(ctx).unwrap(), want, "{shape:?} upload");
        // GPU conversion both ways: f32 -> f16 rounds as the host does (inf beyond 65504).
        let single = Tensor::from_slice(ctx, shape, &x).unwrap();
        let on_gpu = convert::convert(ctx, &single, F16).unwrap();
        assert_eq!(on_gpu.download(ctx).unwrap(), want, "{shape:?} to f16");
        let back = convert::convert(ctx, &on_gpu, Precision::F32).unwrap();
        assert_eq!(back.precision(), Precision::F32);
        assert_eq!(back.download(ctx).unwrap(), want, "{shape:?} to f32");
    }
}

#[test]
fn f16_convolutions_match_the_reference() {
    let Some(ctx) = f16_gpu() else { return };
    let mut rng = SplitMix64::new(17);
    let mut worst: f64 = 0.0;
    // (input, cout, kernel, stride, padding, algorithm): the row kernel (no padding), the
    // bounds-checked one (padding), a pointwise conv, Winograd.
    let cases = [
        ([1, 3, 17, 23], 5, 3, 1, 1, WeightLayout::KMajor),
        ([2, 5, 9, 11], 67, 3, 2, 1, WeightLayout::KMajor),
        ([1, 67, 13, 7], 3, 1, 1, 0, WeightLayout::KMajor),
        ([1, 9, 15, 13], 20, 3, 2, 0, WeightLayout::KMajor),
        ([1, 3, 37, 41], 16, 7, 2, 0, WeightLayout::KMajor),
        ([1, 16, 13, 7], 9, 3, 1, 1, WeightLayout::Winograd),
    ];
    for (i, &(input, cout, k, stride, pad, algorithm)) in cases.iter().enumerate() {
        let w_shape = [cout, input[1], k, k];
        let x = rounded(&mut rng, numel(input), -1.0, 1.0);
        let bound = (3.0 / (input[1] * k * k) as f32).sqrt();
        let w = rounded(&mut rng, numel(w_shape), -bound, bound);
        let bias = rng.vec(cout, -0.5, 0.5);
        let opts = Conv2dOptions::new(stride, pad);
        let out_shape = conv2d::output_shape(input, w_shape, &opts).unwrap();
        let residual = rounded(&mut rng, numel(out_shape), -1.0, 1.0);
        let weights =
            Conv2dWeights::with_precision(ctx, w_shape, &w, Some(&bias), None, algorithm, F16)
                .unwrap();
        assert_eq!(weights.precision(), F16);
        let xt = Tensor::from_slice_as(ctx, input, &x, F16).unwrap();
        let rt = Tensor::from_slice_as(ctx, out_shape, &residual, F16).unwrap();
        for (use_res, relu) in [(false, false), (true, true)] {
            let opts = opts.with_relu(relu);
            let got = conv2d::conv2d(ctx, &xt, &weights, use_res.then_some(&rt), &opts).unwrap();
            assert_eq!(got.precision(), F16);
            let res_ref = use_res.then_some(residual.as_slice());
            let (want, _) = reference::conv2d(
                &x,
                input,
                &w,
                w_shape,
                Some(&bias),
                None,
                res_ref,
                &common::conv_spec(&opts),
            );
            let name = format!(
                "f16 conv {i} {input:?} k{k} s{stride} p{pad} {algorithm:?} residual {use_res}"
            );
            // Winograd's transformed weights are rounded to f16 too: a little more error.
            let tol = match algorithm {
                WeightLayout::Winograd => 3.0 * F16_TOL,
                _ => F16_TOL,
            };
            let got = got.download(ctx).unwrap();
            worst = worst.max(assert_close(&name, &got, &want, tol));
        }
    }
    // The FPN's lateral merge: a 1x1 conv with an upsampled coarse map in its epilogue.
    let (input, cout, coarse_shape) = ([2, 8, 25, 33], 5, [2, 5, 13, 17]);
    let w_shape = [cout, input[1], 1, 1];
    let x = rounded(&mut rng, numel(input), -1.0, 1.0);
    let w = rounded(&mut rng, numel(w_shape), -0.5, 0.5);
    let coarse = rounded(&mut rng, numel(coarse_shape), -1.0, 1.0);
    let weights =
        Conv2dWeights::with_precision(ctx, w_shape, &w, None, None, WeightLayout::KMajor, F16)
            .unwrap();
    let xt = Tensor::from_slice_as(ctx, input, &x, F16).unwrap();
    let ct = Tensor::from_slice_as(ctx, coarse_shape, &coarse, F16).unwrap();
    for mode in [UpsampleMode::Bilinear, UpsampleMode::Nearest] {
        let opts = Conv2dOptions::new(1, 0).with_residual(ResidualMode::Upsampled(mode));
        let got = conv2d::conv2d(ctx, &xt, &weights, Some(&ct), &opts)
            .unwrap()
            .download(ctx)
            .unwrap();
        let plain = Conv2dOptions::new(1, 0);
        let (lateral, shape) = reference::conv2d(
            &x,
            input,
            &w,
            w_shape,
            None,
            None,
            None,
            &common::conv_spec(&plain),
        );
        let want =
            reference::upsample_add(&coarse, coarse_shape, &lateral, shape, common::resize(mode));
        worst = worst.max(assert_close(
            &format!("f16 upsampled residual {mode:?}"),
            &got,
            &want,
            F16_TOL,
        ));
    }
    eprintln!("f16 conv2d: worst max relative error {worst:e}");
}

#[test]
fn f16_element_wise_kernels_match_the_reference() {
    let Some(ctx) = f16_gpu() else { return };
    let mut rng = SplitMix64::new(23);
    let shape = [2, 5, 9, 7];
    let n = numel(shape);
    let x = rounded(&mut rng, n, -3.0, 3.0);
    let y = rounded(&mut rng, n, -3.0, 3.0);
    let xt = Tensor::from_slice_as(ctx, shape, &x, F16).unwrap();
    let yt = Tensor::from_slice_as(ctx, shape, &y, F16).unwrap();
    let check = |name: &str, got: Tensor, want: &[f32]| {
        assert_eq!(got.precision(), F16, "{name}");
        let got = got.download(ctx).unwrap();
        assert_close(name, &got, want, F16_TOL);
    };

    check(
        "relu",
        elementwise::relu(ctx, &xt).unwrap(),
        &reference::relu(&x),
    );
    check(
        "add",
        elementwise::add(ctx, &xt, &yt).unwrap(),
        &reference::add(&x, &y),
    );

    let c = shape[1];
    let (mean, var) = (rng.vec(c, -1.0, 1.0), rng.vec(c, 0.1, 2.0));
    let (weight, bias) = (rng.vec(c, 0.5, 1.5), rng.vec(c, -0.5, 0.5));
    let bn = BatchNormWeights::new(ctx, &mean, &var, &weight, &bias, 1e-5).unwrap();
    check(
        "batch norm",
        batch_norm::batch_norm(ctx, &xt, &bn).unwrap(),
        &reference::batch_norm(&x, shape, &mean, &var, &weight, &bias, 1e-5),
    );

    let opts = MaxPool2dOptions::new(3, 2, 1);
    let (want, _) = reference::max_pool2d(&x, shape, &common::pool_spec(&opts));
    check(
        "max pool",
        max_pool2d::max_pool2d(ctx, &xt, &opts).unwrap(),
        &want,
    );

    let (want, _) = reference::pad2d(&x, shape, (1, 2));
    check("pad", pad2d::pad2d(ctx, &xt, (1, 2)).unwrap(), &want);

    let fine = [2, 5, 17, 13];
    let lateral = rounded(&mut rng, numel(fine), -1.0, 1.0);
    let lt = Tensor::from_slice_as(ctx, fine, &lateral, F16).unwrap();
    for mode in [UpsampleMode::Bilinear, UpsampleMode::Nearest] {
        check(
            &format!("upsample add {mode:?}"),
            upsample_add::upsample_add(ctx, &xt, &lt, mode).unwrap(),
            &reference::upsample_add(&x, shape, &lateral, fine, common::resize(mode)),
        );
    }
}

#[test]
fn f16_network_halves_memory_and_takes_inputs_of_either_precision() {
    let Some(ctx) = f16_gpu() else { return };
    let config = FpnConfig::with_blocks([1, 1, 1, 1]);
    let single = Fpn::random(ctx, config, 5).unwrap();
    let options = FpnOptions::default().with_precision(F16);
    let half = Fpn::with_options(
        ctx,
        &fpn_wgpu::weights::VarStore::random(5),
        config,
        options,
    )
    .unwrap();
    assert_eq!(half.precision(), F16);

    let shape = [1, 3, 45, 61];
    let ratio = |a: u64, b: u64| a as f64 / b as f64;
    let (p16, p32) = (half.plan(shape).unwrap(), single.plan(shape).unwrap());
    let act = ratio(p16.activation_bytes(), p32.activation_bytes());
    let weights = ratio(
        half.executor().weight_bytes(),
        single.executor().weight_bytes(),
    );
    eprintln!("f16 / f32 bytes: activations {act:.3}, weights {weights:.3}");
    if half.executor().memory_format() == MemoryFormat::Nchw {
        assert!((0.45..=0.56).contains(&act), "activations {act}");
    } else {
        // Channels-last values pad their channels to whole matrix tiles (the 3-channel input
        // to 16) and leave room after each arena for the last tiles' reads, which a map this
        // small feels; a picture-sized one must stay near the lower bound.
        let big = half.plan([1, 3, 224, 320]).unwrap();
        let bound = ratio(big.activation_bytes(), big.activation_lower_bound());
        eprintln!("channels-last: {bound:.3} of the lower bound");
        assert!(act <= 0.7, "activations {act}");
        assert!(bound <= 1.3, "{bound} of the lower bound");
    }
    // The epilogue's scale and shift stay f32.
    assert!((0.5..=0.52).contains(&weights), "weights {weights}");

    let data = SplitMix64::new(9).vec(numel(shape), -1.0, 1.0);
    let rounded_data: Vec<f32> = data.iter().map(|&v| F16.round(v)).collect();
    let x32 = Tensor::from_slice(ctx, shape, &data).unwrap();
    let x16 = Tensor::from_slice_as(ctx, shape, &data, F16).unwrap();
    let x32_rounded = Tensor::from_slice(ctx, shape, &rounded_data).unwrap();
    // An f16 input goes straight into an f16 network; an f32 one is converted on the GPU; both
    // must give the same levels, in f32 tensors.
    let a = half.forward(&x16).unwrap().download(ctx).unwrap();
    let b = half.forward(&x32).unwrap().download(ctx).unwrap();
    for ((name, ta), (_, tb)) in a.iter().zip(&b) {
        assert_eq!(ta.data, tb.data, "{name}: f16 and f32 inputs");
    }
    for (_, t) in half.forward(&x32).unwrap().levels() {
        assert_eq!(t.precision(), Precision::F32);
    }
    // An f32 network takes an f16 input too (converted up, exactly).
    let c = single.forward(&x16).unwrap().download(ctx).unwrap();
    let d = single.forward(&x32_rounded).unwrap().download(ctx).unwrap();
    for ((name, tc), (_, td)) in c.iter().zip(&d) {
        assert_eq!(tc.data, td.data, "{name}: f32 network on an f16 input");
        let f16_level = &a.iter().find(|(n, _)| n == name).unwrap().1;
        assert_close(name, &f16_level.data, &td.data, 1e-2);
    }
}

#[test]
fn mixed_precisions_in_one_op_are_refused_with_the_fix() {
    let Some(ctx) = f16_gpu() else { return };
    let x16 = Tensor::from_slice_as(ctx, [1, 2, 4, 4], &[0.5; 32], F16).unwrap();
    let x32 = Tensor::from_slice(ctx, [1, 2, 4, 4], &[0.5; 32]).unwrap();
    let e = elementwise::add(ctx, &x16, &x32).unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
    assert!(e.to_string().contains("precision"), "{e}");

    let w = Conv2dWeights::new(ctx, [3, 2, 1, 1], &[0.1; 6], None, None).unwrap();
    let e = conv2d::conv2d(ctx, &x16, &w, None, &Conv2dOptions::default()).unwrap_err();
    assert!(e.to_string().contains("with_precision"), "{e}");
}

#[test]
fn precision_names_parse_and_print() {
    for p in Precision::ALL {
        assert_eq!(p.to_string().parse::<Precision>().unwrap(), p);
    }
    assert_eq!("half".parse::<Precision>().unwrap(), F16);
    let e = "f8".parse::<Precision>().unwrap_err();
    assert!(e.contains("f32 or f16"), "{e}");
}

/// Set to `1` where the adapter must have cooperative matrices (CI's Mesa 26 lavapipe stage):
/// the cooperative-matrix tests then fail instead of skipping.
const REQUIRE_COOPERATIVE_MATRIX_ENV: &str = "FPN_REQUIRE_COOPERATIVE_MATRIX";

/// The context when its device can run the cooperative-matrix kernel; `None` (with a note)
/// where it cannot, unless [`REQUIRE_COOPERATIVE_MATRIX_ENV`] says it must.
fn coop_gpu() -> Option<&'static fpn_wgpu::GpuContext> {
    let required = std::env::var(REQUIRE_COOPERATIVE_MATRIX_ENV).is_ok_and(|v| v == "1");
    let ctx = match f16_gpu() {
        Some(ctx) => ctx,
        None if required => panic!("{REQUIRE_COOPERATIVE_MATRIX_ENV}=1 but the adapter has no f16"),
        None => return None,
    };
    if coop::support(ctx).is_none() {
        assert!(
            !required,
            "{REQUIRE_COOPERATIVE_MATRIX_ENV}=1 but {} shows no cooperative matrices the kernel can use",
            ctx.adapter()
        );
        eprintln!(
            "SKIPPED: {} has no cooperative matrices (wgpu's EXPERIMENTAL_COOPERATIVE_MATRIX with 16x16x16 or 8x8x8 f16 -> f32 and a fixed subgroup size); CI runs this test on Mesa 26 lavapipe",
            ctx.adapter()
        );
        return None;
    }
    Some(ctx)
}

/// Cooperative matrices (tensor cores): every convolution shape class, with every block the
/// kernel is generated for and split-K factors that divide the k steps evenly and unevenly,
/// against the CPU reference; the kernel must have passed its own check on the device.
#[test]
fn cooperative_matrix_convolutions_match_the_reference_for_every_block_and_split() {
    let Some(ctx) = coop_gpu() else { return };
    assert!(
        coop::verified(ctx),
        "the kernel failed its check on this device (see the log)"
    );
    let side = coop::support(ctx).unwrap().side;
    let cl = MemoryFormat::ChannelsLast;
    let mut rng = SplitMix64::new(41);
    let mut worst: f64 = 0.0;
    let mut runs = 0;
    let mut staged_runs = 0;
    // The network's shape classes and the block edges: 7x7/2 stem on 3 channels, 3x3 pad 1
    // (stride 1 and 2), 1x1, channel counts off the matrix and block grids, rows narrower
    // than a segment, a batch of 2; each with a residual as it is or upsampled.
    let cases = [
        ([1, 3, 37, 41], 64, 7, 2, 3, ResidualMode::Same),
        ([2, 20, 9, 11], 70, 3, 1, 1, ResidualMode::Same),
        ([1, 64, 30, 34], 64, 3, 2, 1, ResidualMode::Same),
        (
            [1, 130, 13, 7],
            256,
            1,
            1,
            0,
            ResidualMode::Upsampled(UpsampleMode::Bilinear),
        ),
        (
            [2, 33, 13, 17],
            19,
            1,
            2,
            0,
            ResidualMode::Upsampled(UpsampleMode::Nearest),
        ),
        // Wide enough for the staged block (whole k steps of input channels, a whole block of
        // output channels), a map that is not a whole number of blocks, both residual kinds.
        ([2, 64, 19, 23], 130, 3, 1, 1, ResidualMode::Same),
        (
            [1, 128, 9, 30],
            256,
            1,
            1,
            0,
            ResidualMode::Upsampled(UpsampleMode::Bilinear),
        ),
    ];
    for (i, &(input, cout, k, stride, pad, residual_mode)) in cases.iter().enumerate() {
        let w_shape = [cout, input[1], k, k];
        let x = rounded(&mut rng, numel(input), -1.0, 1.0);
        let bound = (3.0 / (input[1] * k * k) as f32).sqrt();
        let w = rounded(&mut rng, numel(w_shape), -bound, bound);
        let bias = rng.vec(cout, -0.5, 0.5);
        let opts = Conv2dOptions::new(stride, pad)
            .with_relu(true)
            .with_residual(residual_mode);
        let out_shape = conv2d::output_shape(input, w_shape, &opts).unwrap();
        let res_shape = match residual_mode {
            ResidualMode::Same => out_shape,
            ResidualMode::Upsampled(_) => [
                out_shape[0],
                cout,
                out_shape[2].div_ceil(2),
                out_shape[3].div_ceil(2),
            ],
        };
        let residual = rounded(&mut rng, numel(res_shape), -1.0, 1.0);
        let (want, _) = match residual_mode {
            ResidualMode::Same => reference::conv2d(
                &x,
                input,
                &w,
                w_shape,
                Some(&bias),
                None,
                Some(&residual),
                &common::conv_spec(&opts),
            ),
            ResidualMode::Upsampled(mode) => {
                // ReLU comes after the add: the reference conv runs without it.
                let plain = opts.with_relu(false);
                let (conv, shape) = reference::conv2d(
                    &x,
                    input,
                    &w,
                    w_shape,
                    Some(&bias),
                    None,
                    None,
                    &common::conv_spec(&plain),
                );
                let up = reference::upsample_add(
                    &residual,
                    res_shape,
                    &conv,
                    shape,
                    common::resize(mode),
                );
                let relu = up.into_iter().map(|v| v.max(0.0)).collect();
                (relu, shape)
            }
        };
        let weights = Conv2dWeights::with_precision(
            ctx,
            w_shape,
            &w,
            Some(&bias),
            None,
            WeightLayout::TapMajor,
            F16,
        )
        .unwrap();
        let xt = Tensor::from_slice_with(ctx, input, &x, F16, cl).unwrap();
        let rt = Tensor::from_slice_with(ctx, res_shape, &residual, F16, cl).unwrap();
        let steps = coop::steps(w_shape, side);
        let mut choices: Vec<CoopChoice> = coop::TILES
            .iter()
            .flat_map(|&tile| [1, 2, 3, steps].map(|split| CoopChoice::direct(tile, split)))
            .collect();
        let staged = coop::staged_block(ctx).filter(|&b| coop::staged_fits(b, w_shape));
        if staged.is_some() {
            choices.push(CoopChoice::STAGED);
            staged_runs += 1;
        }
        for choice in choices {
            let got =
                conv2d::conv2d_with(ctx, &xt, &weights, Some(&rt), &opts, Some(choice.into()))
                    .unwrap();
            assert_eq!(got.memory_format(), cl);
            let got = got.download(ctx).unwrap();
            worst = worst.max(assert_close(
                &format!("coop conv {i}, {choice}"),
                &got,
                &want,
                F16_TOL,
            ));
            runs += 1;
        }
        // The output written inside a zero halo, as the next convolution's padded input: the
        // halo must be zeros even where the buffer held something else.
        let halo = opts.with_out_padding((1, 1));
        let (want_padded, padded_shape) = reference::pad2d(&want, out_shape, (1, 1));
        let mut halo_choices = vec![
            CoopChoice::direct(coop::TILES[0], 1),
            CoopChoice::direct(coop::TILES[1], 2),
        ];
        if staged.is_some() {
            halo_choices.push(CoopChoice::STAGED);
        }
        for choice in halo_choices {
            let out = Tensor::from_slice_with(
                ctx,
                padded_shape,
                &vec![7.0; numel(padded_shape)],
                F16,
                cl,
            )
            .unwrap();
            conv2d::conv2d_into(
                ctx,
                &xt,
                &weights,
                Some(&rt),
                &out,
                &halo,
                Some(choice.into()),
            )
            .unwrap();
            worst = worst.max(assert_close(
                &format!("coop conv {i} into a halo, {choice}"),
                &out.download(ctx).unwrap(),
                &want_padded,
                F16_TOL,
            ));
            runs += 1;
        }
    }
    eprintln!(
        "cooperative-matrix conv2d ({side}x{side} matrices): {runs} runs ({staged_runs} staged), worst max relative error {worst:e}"
    );
    // The staged block runs wherever the device reports subgroup ids (lavapipe 26 and NVIDIA
    // do), at least on the cases made wide enough for it.
    if coop::support(ctx).unwrap().subgroup_ids {
        assert!(staged_runs >= 2, "the staged block ran on the wide cases");
    }
}

/// An f16 network on a device with cooperative matrices stores its values channels-last, runs
/// every convolution on them, and agrees with the same network run in f32.
#[test]
fn f16_networks_run_their_convolutions_on_cooperative_matrices() {
    let Some(ctx) = coop_gpu() else { return };
    let config = FpnConfig::with_blocks([1, 1, 1, 1]);
    let weights = fpn_wgpu::weights::VarStore::random(2);
    let fpn16 = Fpn::with_options(
        ctx,
        &weights,
        config,
        FpnOptions::default().with_precision(F16),
    )
    .unwrap();
    let shape = [2, 3, 61, 83];
    let plan = fpn16.plan(shape).unwrap();
    let launches = plan.launches();
    let convs: Vec<_> = launches
        .iter()
        .filter(|(_, k, _)| k.starts_with("conv2d"))
        .collect();
    assert!(!convs.is_empty());
    for (node, kernel, config) in &convs {
        assert!(
            kernel.starts_with("conv2d_coop") && !config.is_empty(),
            "{node} runs {kernel}"
        );
    }
    let fpn32 = Fpn::with_options(ctx, &weights, config, FpnOptions::default()).unwrap();
    // The bottleneck's 3x3 convs read inputs their producers wrote inside a zero halo: fewer
    // padding launches than the NCHW plan has.
    let pads = |launches: Vec<(&str, &str, &str)>| {
        launches.iter().filter(|(_, k, _)| *k == "pad2d").count()
    };
    let (pads16, pads32) = (
        pads(plan.launches()),
        pads(fpn32.plan(shape).unwrap().launches()),
    );
    assert!(
        pads16 + 4 <= pads32,
        "{pads16} padding launches against {pads32}"
    );
    let mut rng = SplitMix64::new(8);
    let x = Tensor::from_slice(ctx, shape, &rng.vec(numel(shape), -1.0, 1.0)).unwrap();
    let got = fpn16.forward(&x).unwrap();
    let want = fpn32.forward(&x).unwrap();
    for ((name, g), (_, w)) in got.levels().iter().zip(want.levels()) {
        assert_eq!(g.shape(), w.shape(), "{name}");
        let err = common::max_rel_error(&g.download(ctx).unwrap(), &w.download(ctx).unwrap());
        assert!(
            err <= 1e-2,
            "{name}: f16 on cooperative matrices vs f32: {err:e}"
        );
        eprintln!("{name}: f16 (cooperative matrices) vs f32: {err:.1e}");
    }
}

/// Channels-last tensors round-trip through uploads, downloads and the conversion kernels,
/// their padding channels hold zeros, and the layout-aware kernels agree with NCHW.
#[test]
fn channels_last_tensors_convert_pad_and_pool_like_nchw() {
    let Some(ctx) = f16_gpu() else { return };
    let cl = MemoryFormat::ChannelsLast;
    let mut rng = SplitMix64::new(5);
    for shape in [[1, 3, 5, 7], [2, 17, 4, 3], [1, 32, 2, 2]] {
        let x = rounded(&mut rng, numel(shape), -4.0, 4.0);
        let nchw = Tensor::from_slice_as(ctx, shape, &x, F16).unwrap();
        let single = Tensor::from_slice(ctx, shape, &x).unwrap();
        for (what, t) in [
            (
                "upload",
                Tensor::from_slice_with(ctx, shape, &x, F16, cl).unwrap(),
            ),
            (
                "f32 -> f16",
                convert::convert_to(ctx, &single, F16, cl).unwrap(),
            ),
            (
                "relayout",
                convert::convert_to(ctx, &nchw, F16, cl).unwrap(),
            ),
        ] {
            assert_eq!(t.memory_format(), cl);
            assert_eq!(t.download(ctx).unwrap(), x, "{shape:?} {what}");
            // The padding channels hold zeros: the raw storage sums to the values' sum.
            let back = convert::convert_to(ctx, &t, Precision::F32, MemoryFormat::Nchw).unwrap();
            assert_eq!(back.download(ctx).unwrap(), x, "{shape:?} {what} back");
        }
        let t = Tensor::from_slice_with(ctx, shape, &x, F16, cl).unwrap();
        let padded = pad2d::pad2d(ctx, &t, (1, 2)).unwrap();
        assert_eq!(padded.memory_format(), cl);
        let want = pad2d::pad2d(ctx, &nchw, (1, 2)).unwrap();
        assert_eq!(padded.download(ctx).unwrap(), want.download(ctx).unwrap());
        let opts = MaxPool2dOptions::new(3, 2, 1);
        let pooled = max_pool2d::max_pool2d(ctx, &t, &opts).unwrap();
        let want = max_pool2d::max_pool2d(ctx, &nchw, &opts).unwrap();
        assert_eq!(pooled.download(ctx).unwrap(), want.download(ctx).unwrap());
        let relu = elementwise::relu(ctx, &t).unwrap();
        let want = elementwise::relu(ctx, &nchw).unwrap();
        assert_eq!(relu.download(ctx).unwrap(), want.download(ctx).unwrap());
        let fine = [shape[0], shape[1], 2 * shape[2] + 1, 2 * shape[3]];
        let y = rounded(&mut rng, numel(fine), -1.0, 1.0);
        let y_nchw = Tensor::from_slice_as(ctx, fine, &y, F16).unwrap();
        let y_cl = Tensor::from_slice_with(ctx, fine, &y, F16, cl).unwrap();
        for mode in [UpsampleMode::Bilinear, UpsampleMode::Nearest] {
            let got = upsample_add::upsample_add(ctx, &t, &y_cl, mode).unwrap();
            assert_eq!(got.memory_format(), cl);
            let want = upsample_add::upsample_add(ctx, &nchw, &y_nchw, mode).unwrap();
            assert_eq!(
                got.download(ctx).unwrap(),
                want.download(ctx).unwrap(),
                "{mode:?}"
            );
        }
    }
    // Weights for the NCHW kernels run on channels-last tensors too: on the general direct
    // kernel, the portable one of channels-last networks without cooperative matrices.
    let data: Vec<f32> = (0..36).map(|i| F16.round(i as f32 / 36.0)).collect();
    let t = Tensor::from_slice_with(ctx, [1, 4, 3, 3], &data, F16, cl).unwrap();
    let t_nchw = Tensor::from_slice_as(ctx, [1, 4, 3, 3], &data, F16).unwrap();
    let w = Conv2dWeights::with_precision(
        ctx,
        [4, 4, 1, 1],
        &[0.1; 16],
        None,
        None,
        WeightLayout::KMajor,
        F16,
    )
    .unwrap();
    let got = conv2d::conv2d(ctx, &t, &w, None, &Conv2dOptions::default()).unwrap();
    assert_eq!(got.memory_format(), cl);
    let want = conv2d::conv2d(ctx, &t_nchw, &w, None, &Conv2dOptions::default()).unwrap();
    assert_eq!(got.download(ctx).unwrap(), want.download(ctx).unwrap());
    // NCHW-only kernels refuse channels-last tensors with a way out.
    let bn = BatchNormWeights::new(ctx, &[0.0; 4], &[1.0; 4], &[1.0; 4], &[0.0; 4], 1e-5).unwrap();
    let out = Tensor::empty_with(ctx, [1, 4, 3, 3], F16, cl).unwrap();
    let e = batch_norm::prepare(ctx, &t, &bn, &out).unwrap_err();
    assert!(e.to_string().contains("NCHW"), "{e}");
}

#[test]
fn cooperative_matrix_weights_are_refused_where_they_cannot_run() {
    let ctx = common::gpu();
    if coop::support(ctx).is_some() {
        return;
    }
    let e = Conv2dWeights::with_precision(
        ctx,
        [4, 3, 1, 1],
        &[0.1; 12],
        None,
        None,
        WeightLayout::TapMajor,
        Precision::F32,
    )
    .unwrap_err();
    assert!(matches!(e, Error::Unsupported { .. }), "{e}");
    assert!(e.to_string().contains("WeightLayout::KMajor"), "{e}");
}
