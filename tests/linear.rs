//! The fully connected layer and the channel softmax against their CPU references: odd rows,
//! features and outputs (K below, across and far past the kernel's 16-wide steps, N and M
//! across its 64-wide blocks), flattened `[M, C, H, W]` inputs, with and without bias and
//! ReLU, f32 and f16; softmax rows of logits large enough to overflow an exponential without
//! the maximum subtracted, and a NaN row; a grid split under a narrow workgroup limit; both
//! ops in a graph; bad input refused with errors.

mod common;

use common::{assert_close, gpu};
use fpn_wgpu::graph::executor::Executor;
use fpn_wgpu::graph::ops::{GraphOp, HostLinear, Linear, Softmax};
use fpn_wgpu::graph::Graph;
use fpn_wgpu::kernels::conv2d::coop;
use fpn_wgpu::kernels::linear::{self, coop::BLOCKS, LinearKernel, LinearWeights};
use fpn_wgpu::kernels::softmax;
use fpn_wgpu::reference;
use fpn_wgpu::rng::SplitMix64;
use fpn_wgpu::{Error, GpuContext, Precision, Tensor};
use std::sync::Arc;

/// One layer: the input `[M, C, H, W]`, the output features, bias and ReLU.
struct Case {
    input: [usize; 4],
    outputs: usize,
    bias: bool,
    relu: bool,
}

const fn case(input: [usize; 4], outputs: usize, bias: bool, relu: bool) -> Case {
    Case {
        input,
        outputs,
        bias,
        relu,
    }
}

/// From one row, one feature and one output up to torchvision's fc6 width (K = 256*7*7).
const CASES: &[Case] = &[
    case([1, 1, 1, 1], 1, true, false),
    case([37, 13, 1, 1], 29, true, true),
    case([65, 7, 3, 5], 67, false, false),
    case([3, 17, 7, 7], 5, true, true),
    case([130, 100, 1, 1], 130, true, false),
    case([64, 16, 1, 1], 64, false, true),
    case([201, 1027, 1, 1], 129, true, true),
    case([9, 256, 7, 7], 70, true, true),
];

/// Random layer values: inputs in [-1, 1), weights and biases scaled as nn.Linear's
/// initialisation (1 / sqrt(K)), so that outputs are of order 1 at every K.
fn layer(rng: &mut SplitMix64, c: &Case, precision: Precision) -> (Vec<f32>, HostLinear) {
    let k: usize = c.input[1..].iter().product();
    let round = |v: Vec<f32>| -> Vec<f32> { v.into_iter().map(|x| precision.round(x)).collect() };
    let bound = 1.0 / (k as f32).sqrt();
    let x = round(rng.vec(c.input.iter().product(), -1.0, 1.0));
    let weight = round(rng.vec(c.outputs * k, -bound, bound));
    let bias = c.bias.then(|| round(rng.vec(c.outputs, -0.5, 0.5)));
    let host = HostLinear {
        out_features: c.outputs,
        in_features: k,
        weight,
        bias,
    };
    (x, host)
}

fn run_linear(
    ctx: &GpuContext,
    x: &[f32],
    c: &Case,
    w: &HostLinear,
    precision: Precision,
) -> Vec<f32> {
    let xt = Tensor::from_slice_as(ctx, c.input, x, precision).unwrap();
    let weights = LinearWeights::new(
        ctx,
        [w.out_features, w.in_features],
        &w.weight,
        w.bias.as_deref(),
        precision,
    )
    .unwrap();
    let out = linear::linear(ctx, &xt, &weights, c.relu).unwrap();
    assert_eq!(out.shape(), [c.input[0], c.outputs, 1, 1]);
    assert_eq!(out.precision(), precision);
    out.download(ctx).unwrap()
}

fn want_linear(x: &[f32], c: &Case, w: &HostLinear) -> Vec<f32> {
    reference::linear(
        x,
        c.input[0],
        &w.weight,
        w.out_features,
        w.bias.as_deref(),
        c.relu,
    )
}

#[test]
fn linear_matches_reference_f32() {
    let ctx = gpu();
    let mut rng = SplitMix64::new(11);
    for c in CASES {
        let (x, w) = layer(&mut rng, c, Precision::F32);
        let got = run_linear(ctx, &x, c, &w, Precision::F32);
        let want = want_linear(&x, c, &w);
        // The ReLU cases clip some outputs, so that the ReLU is tested.
        assert_eq!(want.contains(&0.0), c.relu, "{:?}", c.input);
        let name = format!("linear {:?} -> {} (relu {})", c.input, c.outputs, c.relu);
        let err = assert_close(&name, &got, &want, 1e-5);
        eprintln!("{name}: f32 max relative error {err:e}");
    }
}

/// f16 inputs and weights, f32 sums, the output rounded to f16 once: within 1e-3 of the
/// reference on the same rounded values (an f16 rounding is at most 4.9e-4 of the value).
#[test]
fn linear_matches_reference_f16() {
    let Some(ctx) = common::f16_gpu() else {
        return;
    };
    let mut rng = SplitMix64::new(12);
    for c in CASES {
        let (x, w) = layer(&mut rng, c, Precision::F16);
        let got = run_linear(ctx, &x, c, &w, Precision::F16);
        let want = want_linear(&x, c, &w);
        let name = format!("linear {:?} -> {} (relu {})", c.input, c.outputs, c.relu);
        let err = assert_close(&name, &got, &want, 1e-3);
        eprintln!("{name}: f16 max relative error {err:e}");
    }
}

/// A device allowing 8 workgroups per grid dimension: 640 rows by 130 outputs make 10 x 3 =
/// 30 blocks, launched as an 8 x 4 grid.
#[test]
fn linear_splits_its_grid_under_a_narrow_workgroup_limit() {
    let ctx = common::limited_context(|l| l.max_compute_workgroups_per_dimension = 8);
    let c = case([640, 33, 1, 1], 130, true, true);
    let mut rng = SplitMix64::new(13);
    let (x, w) = layer(&mut rng, &c, Precision::F32);
    let got = run_linear(&ctx, &x, &c, &w, Precision::F32);
    let err = assert_close(
        "30 blocks on an 8-wide grid",
        &got,
        &want_linear(&x, &c, &w),
        1e-5,
    );
    eprintln!("30 blocks on an 8-wide grid: max relative error {err:e}");
    // 100 blocks cannot be laid out within 8 x 8: an error naming the limit.
    let big = case([640, 33, 1, 1], 640, false, false);
    let (x, w) = layer(&mut rng, &big, Precision::F32);
    let xt = Tensor::from_slice(&ctx, big.input, &x).unwrap();
    let weights = LinearWeights::new(&ctx, [640, 33], &w.weight, None, Precision::F32).unwrap();
    let e = linear::linear(&ctx, &xt, &weights, false).unwrap_err();
    assert!(
        matches!(e, Error::LimitExceeded { .. }) && e.to_string().contains("workgroup"),
        "{e}"
    );
}

/// Logits of a few units, of hundreds (whose exponentials overflow f32 unless the maximum is
/// subtracted first) and of a constant row; one class, and classes over a 3x5 map.
fn softmax_inputs(rng: &mut SplitMix64, shape: [usize; 4]) -> Vec<f32> {
    let [n, c, h, w] = shape;
    let plane = h * w;
    let mut x = vec![0.0f32; n * c * plane];
    for b in 0..n {
        for p in 0..plane {
            let (lo, hi) = match (b * plane + p) % 4 {
                0 => (-5.0, 5.0),
                1 => (-500.0, 900.0),
                2 => (3.0, 3.0),
                _ => (-30.0, 10.0),
            };
            for ch in 0..c {
                x[(b * c + ch) * plane + p] = if lo == hi { lo } else { rng.uniform(lo, hi) };
            }
        }
    }
    x
}

fn check_softmax(ctx: &GpuContext, precision: Precision) {
    let mut rng = SplitMix64::new(21);
    for shape in [
        [37, 5, 1, 1],
        [1001, 91, 1, 1],
        [3, 1, 1, 1],
        [7, 300, 1, 1],
        [2, 7, 3, 5],
    ] {
        let x: Vec<f32> = softmax_inputs(&mut rng, shape)
            .into_iter()
            .map(|v| precision.round(v))
            .collect();
        let xt = Tensor::from_slice_as(ctx, shape, &x, precision).unwrap();
        let out = softmax::softmax(ctx, &xt).unwrap();
        assert_eq!(out.precision(), Precision::F32);
        let got = out.download(ctx).unwrap();
        let want = reference::softmax_channels(&x, shape);
        let [n, c, h, w] = shape;
        for b in 0..n {
            for p in 0..h * w {
                let sum: f64 = (0..c).map(|ch| got[(b * c + ch) * h * w + p] as f64).sum();
                assert!(
                    (sum - 1.0).abs() < 1e-5,
                    "{shape:?} row {b}/{p} sums to {sum}"
                );
            }
        }
        let name = format!("softmax {shape:?} ({precision})");
        let err = assert_close(&name, &got, &want, 1e-5);
        eprintln!("{name}: max error {err:e}");
    }
}

#[test]
fn softmax_matches_reference() {
    check_softmax(gpu(), Precision::F32);
}

#[test]
fn softmax_matches_reference_from_f16() {
    if let Some(ctx) = common::f16_gpu() {
        check_softmax(ctx, Precision::F16);
    }
}

/// A NaN logit makes its whole row NaN, as in PyTorch; other rows are untouched.
#[test]
fn softmax_spreads_a_nan_over_its_row_only() {
    let ctx = gpu();
    let mut x = vec![0.5f32, -1.0, 2.0, 0.0, 1.0, f32::NAN, 3.0, -2.0];
    x.extend_from_slice(&[f32::NAN; 4]);
    let shape = [3, 4, 1, 1];
    let xt = Tensor::from_slice(ctx, shape, &x).unwrap();
    let got = softmax::softmax(ctx, &xt).unwrap().download(ctx).unwrap();
    let want = reference::softmax_channels(&x, shape);
    assert!(want[..4].iter().all(|v| v.is_finite()));
    assert!(want[4..].iter().all(|v| v.is_nan()));
    assert_close("softmax with NaN rows", &got, &want, 1e-6);
}

/// Linear (ReLU) then Linear then Softmax as graph ops, run by the executor in f32 and f16: the
/// scores come out f32 either way.
#[test]
fn linear_and_softmax_run_in_a_graph() {
    let ctx = gpu();
    let mut rng = SplitMix64::new(31);
    let first = case([23, 6, 3, 3], 19, true, true);
    let (x, w1) = layer(&mut rng, &first, Precision::F32);
    let second = case([23, 19, 1, 1], 7, true, false);
    let (_, w2) = layer(&mut rng, &second, Precision::F32);
    let (w1, w2) = (Arc::new(w1), Arc::new(w2));
    let hidden = want_linear(&x, &first, &w1);
    let logits = want_linear(&hidden, &second, &w2);
    let want = reference::softmax_channels(&logits, [23, 7, 1, 1]);

    for precision in Precision::ALL {
        if precision == Precision::F16 && common::f16_gpu().is_none() {
            continue;
        }
        let mut g = Graph::new();
        let input = g.input();
        let h = g.push(
            "fc1",
            Linear {
                weights: w1.clone(),
                relu: true,
            },
            &[input],
        );
        let l = g.push(
            "fc2",
            Linear {
                weights: w2.clone(),
                relu: false,
            },
            &[h],
        );
        let s = g.push("scores", Softmax, &[l]);
        g.output("logits", l);
        g.output("scores", s);
        assert_eq!(g.shapes(first.input).unwrap()[s], [23, 7, 1, 1]);
        let ex = Executor::with_options(
            ctx,
            g,
            fpn_wgpu::graph::executor::Algorithms::Direct,
            precision,
        )
        .unwrap();
        let xt = Tensor::from_slice(ctx, first.input, &x).unwrap();
        let outputs = ex.forward(&xt).unwrap();
        let scores = &outputs.iter().find(|(n, _)| n == "scores").unwrap().1;
        assert_eq!(scores.precision(), Precision::F32);
        let got = scores.download(ctx).unwrap();
        let logits_got = outputs
            .iter()
            .find(|(n, _)| n == "logits")
            .unwrap()
            .1
            .download(ctx)
            .unwrap();
        // f16: the input, weights and hidden values each rounded once (measured 5e-4 on
        // lavapipe).
        let tol = if precision == Precision::F32 {
            1e-5
        } else {
            2e-3
        };
        let e_logits = assert_close(
            &format!("graph logits ({precision})"),
            &logits_got,
            &logits,
            tol,
        );
        let e_scores = assert_close(&format!("graph scores ({precision})"), &got, &want, tol);
        eprintln!(
            "graph ({precision}): logits max relative error {e_logits:e}, scores {e_scores:e}"
        );
    }
}

/// The wrong number of features, wrong weight and bias lengths, a mismatched output, mixed
/// precisions: errors, before any launch.
#[test]
fn linear_and_softmax_refuse_bad_input() {
    let ctx = gpu();
    let invalid = |e: Error| {
        assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
        e.to_string()
    };
    let weights =
        LinearWeights::new(ctx, [5, 12], &[0.1; 60], Some(&[0.0; 5]), Precision::F32).unwrap();
    // Any [M, C, H, W] of C*H*W = 12 features fits.
    let good = Tensor::empty(ctx, [4, 3, 2, 2]).unwrap();
    assert!(linear::linear(ctx, &good, &weights, true).is_ok());
    assert!(linear::linear(
        ctx,
        &Tensor::empty(ctx, [4, 1, 4, 3]).unwrap(),
        &weights,
        true
    )
    .is_ok());
    for shape in [[4, 13, 1, 1], [4, 3, 2, 3], [4, 12, 1, 2]] {
        let x = Tensor::empty(ctx, shape).unwrap();
        let msg = invalid(linear::linear(ctx, &x, &weights, false).unwrap_err());
        assert!(msg.contains("12") && msg.contains("features"), "{msg}");
        let out = Tensor::empty(ctx, [4, 5, 1, 1]).unwrap();
        invalid(
            linear::prepare(ctx, &x, &weights, false, &out)
                .map(|_| ())
                .unwrap_err(),
        );
    }
    // The wrong output shape; the output in the input's buffer is refused by check_io.
    let out = Tensor::empty(ctx, [4, 6, 1, 1]).unwrap();
    let msg = invalid(
        linear::prepare(ctx, &good, &weights, false, &out)
            .map(|_| ())
            .unwrap_err(),
    );
    assert!(msg.contains("output"), "{msg}");
    // Weights of the wrong length, a bias of the wrong length, a zero dimension.
    invalid(LinearWeights::new(ctx, [5, 12], &[0.1; 59], None, Precision::F32).unwrap_err());
    invalid(
        LinearWeights::new(ctx, [5, 12], &[0.1; 60], Some(&[0.0; 4]), Precision::F32).unwrap_err(),
    );
    invalid(LinearWeights::new(ctx, [0, 12], &[], None, Precision::F32).unwrap_err());

    // The graph op: the same check on shapes alone, and through the executor, at run time.
    let op = Linear {
        weights: Arc::new(HostLinear {
            out_features: 5,
            in_features: 12,
            weight: vec![0.1; 60],
            bias: None,
        }),
        relu: false,
    };
    assert_eq!(op.output_shape(&[[7, 3, 2, 2]]).unwrap(), [7, 5, 1, 1]);
    invalid(op.output_shape(&[[7, 12, 2, 2]]).unwrap_err());
    let mut g = Graph::new();
    let input = g.input();
    let y = g.push("fc", op, &[input]);
    g.output("y", y);
    let ex = Executor::new(ctx, g).unwrap();
    let e = ex
        .forward(&Tensor::empty(ctx, [7, 13, 1, 1]).unwrap())
        .map(|_| ())
        .unwrap_err();
    assert!(e.to_string().contains("features"), "{e}");
    // Host weights that do not hold out * in values: an error when the graph is lowered.
    let mut g = Graph::new();
    let input = g.input();
    let bad = Linear {
        weights: Arc::new(HostLinear {
            out_features: 5,
            in_features: 12,
            weight: vec![0.1; 12],
            bias: None,
        }),
        relu: false,
    };
    let y = g.push("fc", bad, &[input]);
    g.output("y", y);
    assert!(Executor::new(ctx, g).is_err());

    // Softmax: an f16 output, another shape, the input's own buffer.
    let x = Tensor::empty(ctx, [4, 5, 1, 1]).unwrap();
    let msg = invalid(
        softmax::prepare(ctx, &x, &Tensor::empty(ctx, [4, 6, 1, 1]).unwrap())
            .map(|_| ())
            .unwrap_err(),
    );
    assert!(msg.contains("output"), "{msg}");
    invalid(softmax::prepare(ctx, &x, &x).map(|_| ()).unwrap_err());
    if ctx.supports_f16() {
        let o16 = Tensor::empty_as(ctx, [4, 5, 1, 1], Precision::F16).unwrap();
        let msg = invalid(softmax::prepare(ctx, &x, &o16).map(|_| ()).unwrap_err());
        assert!(msg.contains("f32"), "{msg}");
        // f16 input for f32 weights.
        let x16 = Tensor::empty_as(ctx, [4, 12, 1, 1], Precision::F16).unwrap();
        let msg = invalid(linear::linear(ctx, &x16, &weights, false).unwrap_err());
        assert!(msg.contains("precision"), "{msg}");
    }
}

/// Set to `1` where the adapter must have cooperative matrices (CI's Mesa 26 lavapipe stage):
/// the cooperative-matrix test then fails instead of skipping.
const REQUIRE_COOPERATIVE_MATRIX_ENV: &str = "FPN_REQUIRE_COOPERATIVE_MATRIX";

/// In f16 on a device whose cooperative matrices passed their check, the layers at least one
/// matrix wide each way with K in whole matrices run on them: rows and outputs not multiples of
/// the matrix side or of any block (the last tiles moved back), a row count of one matrix
/// exactly, blocks past the grid's end, every block size, ReLU and no bias, torchvision's fc6
/// width; each against the reference within f16's bound. The others stay on the tiled GEMM.
#[test]
fn linear_runs_on_cooperative_matrices_where_verified() {
    let required = std::env::var(REQUIRE_COOPERATIVE_MATRIX_ENV).is_ok_and(|v| v == "1");
    let Some(ctx) = common::f16_gpu() else {
        assert!(
            !required,
            "{REQUIRE_COOPERATIVE_MATRIX_ENV}=1 but the adapter has no f16"
        );
        return;
    };
    if !coop::verified(ctx) {
        assert!(
            !required,
            "{REQUIRE_COOPERATIVE_MATRIX_ENV}=1 but {} has no verified cooperative matrices",
            ctx.adapter()
        );
        eprintln!(
            "SKIPPED: {} has no verified cooperative matrices; CI runs this test on Mesa 26 lavapipe",
            ctx.adapter()
        );
        return;
    }
    let side = coop::support(ctx).unwrap().side as usize;
    let cases = [
        case([side, 2 * side, 1, 1], side, true, false),
        case([37, 13 * side, 1, 1], 29, true, true),
        case([3 * side + 5, side, 2, 2], 9 * side + 3, false, true),
        case([203, 64, 7, 7], 91, true, false),
        // 2x4 and 4x4 blocks: the smallest with at least 256 blocks, whatever the side.
        case([75 * side, 4 * side, 1, 1], 37 * side + 3, true, true),
        case([130 * side, 16 * side, 1, 1], 45 * side + 1, false, false),
        case([130, 256, 7, 7], 96, true, true),
    ];
    let mut rng = SplitMix64::new(13);
    let mut blocks = std::collections::HashSet::new();
    for c in &cases {
        let rows = c.input[0];
        let k: usize = c.input[1..].iter().product();
        let kernel = LinearKernel::choose(ctx, Precision::F16, rows, [c.outputs, k]);
        let LinearKernel::Cooperative { block, .. } = kernel else {
            panic!("{:?} -> {}: {kernel:?}", c.input, c.outputs);
        };
        blocks.insert(block);
        let (x, w) = layer(&mut rng, c, Precision::F16);
        let got = run_linear(ctx, &x, c, &w, Precision::F16);
        let want = want_linear(&x, c, &w);
        let name = format!(
            "linear {:?} -> {} (relu {}) on {block:?}",
            c.input, c.outputs, c.relu
        );
        let err = assert_close(&name, &got, &want, 1e-3);
        eprintln!("{name}: f16 max relative error {err:e}");
    }
    assert_eq!(blocks.len(), BLOCKS.len(), "{blocks:?}");
    for (rows, shape) in [
        (side - 1, [64, 64]),
        (64, [side - 1, 64]),
        (64, [64, side + 1]),
    ] {
        assert_eq!(
            LinearKernel::choose(ctx, Precision::F16, rows, shape),
            LinearKernel::Tiled,
            "{rows} rows, {shape:?}"
        );
    }
    assert_eq!(
        LinearKernel::choose(ctx, Precision::F32, 64, [64, 64]),
        LinearKernel::Tiled
    );
}
