//! Bad input is an error that names the problem, never a panic or a wgpu validation failure.

mod common;

use common::{gpu, small_binding_context};
use fpn_wgpu::kernels::avg_pool2d::{self, AvgPool2dOptions};
use fpn_wgpu::kernels::batch_norm::{self, BatchNormWeights};
use fpn_wgpu::kernels::conv2d::{self, Conv2dOptions, Conv2dWeights};
use fpn_wgpu::kernels::elementwise;
use fpn_wgpu::kernels::max_pool2d::{self, MaxPool2dOptions};
use fpn_wgpu::kernels::upsample_add::{self, UpsampleMode};
use fpn_wgpu::{Error, Tensor};

/// Asserts the result is an error whose message contains every one of `words`.
fn expect_err<T: std::fmt::Debug>(r: fpn_wgpu::Result<T>, words: &[&str]) -> Error {
    let e = r.expect_err("expected an error");
    let msg = e.to_string();
    for w in words {
        assert!(msg.contains(w), "error {msg:?} should mention {w:?}");
    }
    e
}

fn zeros(shape: [usize; 4]) -> Tensor {
    Tensor::from_slice(gpu(), shape, &vec![0.0; shape.iter().product()]).unwrap()
}

fn conv_weights(shape: [usize; 4]) -> Conv2dWeights {
    Conv2dWeights::new(gpu(), shape, &vec![0.1; shape.iter().product()], None, None).unwrap()
}

#[test]
fn tensors_reject_zero_sizes_wrong_lengths_and_huge_shapes() {
    let ctx = gpu();
    expect_err(
        Tensor::from_slice(ctx, [1, 0, 3, 3], &[]),
        &["zero dimension", "[1, 0, 3, 3]"],
    );
    expect_err(
        Tensor::from_slice(ctx, [1, 1, 2, 2], &[1.0; 3]),
        &["4 elements", "has 3"],
    );
    let e = expect_err(
        Tensor::empty(ctx, [1, 1024, 1024, 1024]),
        &["max_buffer_size", "[1, 1024, 1024, 1024]"],
    );
    assert!(matches!(e, Error::LimitExceeded { .. }));
    // Overflowing usize arithmetic is still a clean error.
    expect_err(
        Tensor::empty(ctx, [usize::MAX, 2, 2, 2]),
        &["max_buffer_size"],
    );
}

#[test]
fn conv2d_rejects_bad_shapes_and_parameters() {
    let ctx = gpu();
    let x = zeros([1, 3, 5, 5]);
    let w = conv_weights([8, 4, 3, 3]);
    expect_err(
        conv2d::conv2d(ctx, &x, &w, None, &Conv2dOptions::new(1, 1)),
        &["3 channels", "expect 4"],
    );
    let w7 = conv_weights([8, 3, 7, 7]);
    expect_err(
        conv2d::conv2d(ctx, &x, &w7, None, &Conv2dOptions::new(1, 0)),
        &["7x7 kernel", "padded input 5x5"],
    );
    let w3 = conv_weights([8, 3, 3, 3]);
    expect_err(
        conv2d::conv2d(ctx, &x, &w3, None, &Conv2dOptions::new(0, 1)),
        &["stride"],
    );
    let wrong_residual = zeros([1, 8, 4, 4]);
    expect_err(
        conv2d::conv2d(
            ctx,
            &x,
            &w3,
            Some(&wrong_residual),
            &Conv2dOptions::new(1, 1),
        ),
        &["residual", "[1, 8, 4, 4]", "[1, 8, 5, 5]"],
    );
    let wrong_out = zeros([1, 8, 3, 3]);
    expect_err(
        conv2d::prepare(ctx, &x, &w3, None, &wrong_out, &Conv2dOptions::new(1, 1)),
        &["output tensor", "[1, 8, 5, 5]"],
    );
    // In place: the output aliases the input.
    let sq = zeros([1, 3, 5, 5]);
    let w33 = conv_weights([3, 3, 3, 3]);
    expect_err(
        conv2d::prepare(ctx, &sq, &w33, None, &sq, &Conv2dOptions::new(1, 1)),
        &["shares a buffer"],
    );
}

#[test]
fn conv_weights_reject_wrong_lengths() {
    let ctx = gpu();
    expect_err(
        Conv2dWeights::new(ctx, [4, 3, 3, 3], &[0.0; 10], None, None),
        &["108 values", "10"],
    );
    expect_err(
        Conv2dWeights::new(ctx, [4, 3, 1, 1], &[0.0; 12], Some(&[0.0; 3]), None),
        &["bias", "4 output channels"],
    );
    expect_err(
        Conv2dWeights::new(
            ctx,
            [4, 3, 1, 1],
            &[0.0; 12],
            None,
            Some((&[1.0; 4], &[0.0; 5])),
        ),
        &["shift", "5 values"],
    );
    expect_err(
        Conv2dWeights::new(ctx, [0, 3, 1, 1], &[], None, None),
        &["zero dimension"],
    );
}

#[test]
fn other_ops_reject_mismatched_shapes() {
    let ctx = gpu();
    let x = zeros([1, 3, 5, 5]);
    let bn = BatchNormWeights::new(ctx, &[0.0; 4], &[1.0; 4], &[1.0; 4], &[0.0; 4], 1e-5).unwrap();
    expect_err(
        batch_norm::batch_norm(ctx, &x, &bn),
        &["3 channels", "batch norm has 4"],
    );
    expect_err(
        BatchNormWeights::new(ctx, &[0.0; 4], &[1.0; 3], &[1.0; 4], &[0.0; 4], 1e-5),
        &["same non-zero length"],
    );
    expect_err(
        BatchNormWeights::new(ctx, &[0.0; 1], &[1.0; 1], &[1.0; 1], &[0.0; 1], -1.0),
        &["eps"],
    );
    expect_err(
        max_pool2d::max_pool2d(ctx, &x, &MaxPool2dOptions::new(3, 2, 2)),
        &["at most half"],
    );
    expect_err(
        max_pool2d::max_pool2d(ctx, &x, &MaxPool2dOptions::new(7, 1, 0)),
        &["larger than the padded input"],
    );
    expect_err(
        max_pool2d::max_pool2d(ctx, &x, &MaxPool2dOptions::new(3, 0, 1)),
        &["at least 1"],
    );
    let lateral = zeros([1, 4, 9, 9]);
    expect_err(
        upsample_add::upsample_add(ctx, &x, &lateral, UpsampleMode::Bilinear),
        &["batch and channels"],
    );
    let other = zeros([1, 3, 4, 5]);
    expect_err(
        elementwise::add(ctx, &x, &other),
        &["[1, 3, 4, 5]", "must match"],
    );
}

#[test]
fn avg_pool2d_rejects_bad_options_and_tensors() {
    let ctx = gpu();
    let x = zeros([1, 3, 5, 5]);
    for opts in [
        AvgPool2dOptions::new(0, 2),
        AvgPool2dOptions::new(2, 0),
        AvgPool2dOptions {
            kernel: (2, 0),
            stride: (2, 2),
        },
        AvgPool2dOptions {
            kernel: (2, 2),
            stride: (1, 0),
        },
    ] {
        let e = expect_err(avg_pool2d::avg_pool2d(ctx, &x, &opts), &["at least 1"]);
        assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
    }
    // A window that overhangs by the stride or more (PyTorch: "output size is too small"),
    // with sizes whose sums would overflow.
    for opts in [
        AvgPool2dOptions::new(7, 2),
        AvgPool2dOptions::new(usize::MAX, 1),
        AvgPool2dOptions::new(usize::MAX, usize::MAX - 6),
    ] {
        expect_err(
            avg_pool2d::avg_pool2d(ctx, &x, &opts),
            &["leaves no output"],
        );
    }
    // A huge stride is one window per side, and so is a huge kernel that overhangs by less
    // than the stride: the mean of the whole map.
    for opts in [
        AvgPool2dOptions::new(5, usize::MAX),
        AvgPool2dOptions::new(usize::MAX, usize::MAX),
    ] {
        let ramp: Vec<f32> = (0..75).map(|v| v as f32).collect();
        let ramp = Tensor::from_slice(ctx, [1, 3, 5, 5], &ramp).unwrap();
        let pooled = avg_pool2d::avg_pool2d(ctx, &ramp, &opts).unwrap();
        assert_eq!(pooled.shape(), [1, 3, 1, 1], "{opts:?}");
        assert_eq!(
            pooled.download(ctx).unwrap(),
            [12.0, 37.0, 62.0],
            "{opts:?}"
        );
    }
    let opts = AvgPool2dOptions::new(2, 2);
    expect_err(
        avg_pool2d::prepare(ctx, &x, &zeros([1, 3, 2, 2]), &opts),
        &["[1, 3, 2, 2]", "[1, 3, 3, 3]"],
    );
    expect_err(avg_pool2d::prepare(ctx, &x, &x, &opts), &["has shape"]);
    let out = zeros([1, 3, 3, 3]);
    avg_pool2d::prepare(ctx, &x, &out, &opts).unwrap();
    expect_err(
        avg_pool2d::prepare(ctx, &out, &out, &AvgPool2dOptions::new(1, 1)),
        &["shares a buffer"],
    );
    // In a graph, a bad option is the node's error.
    let mut g = fpn_wgpu::graph::Graph::new();
    let input = g.input();
    let y = g.push(
        "shortcut.pool",
        fpn_wgpu::graph::ops::AvgPool2d(AvgPool2dOptions::new(2, 0)),
        &[input],
    );
    g.output("pooled", y);
    let r = fpn_wgpu::graph::executor::Executor::new(ctx, g).and_then(|ex| ex.forward(&x));
    expect_err(r, &["at least 1"]);
}

#[test]
fn a_caller_owned_device_with_small_limits_is_respected() {
    // Embedding: the caller creates the device (here with a 1 MiB binding limit) and hands it in.
    let ctx = small_binding_context(1 << 20);
    assert_eq!(ctx.max_binding_bytes(), 1 << 20);
    // Such a tensor can exist (to be copied or downloaded), but no op binds it.
    let big = Tensor::empty(&ctx, [1, 64, 64, 65]).unwrap();
    let e = expect_err(
        elementwise::relu(&ctx, &big),
        &["max_storage_buffer_binding_size", "1048576"],
    );
    assert!(matches!(e, Error::LimitExceeded { .. }));
    // Within the limit it works, on the caller's device.
    let x = Tensor::from_slice(&ctx, [1, 1, 2, 2], &[-1.0, 2.0, -3.0, 4.0]).unwrap();
    let y = elementwise::relu(&ctx, &x).unwrap().download(&ctx).unwrap();
    assert_eq!(y, vec![0.0, 2.0, 0.0, 4.0]);
}

/// A kernel configuration given from outside the strategy is checked against the convolution:
/// a row tile unrolled for another kernel size, a workgroup of the wrong size or a tile the
/// kernel cannot compute is an error, never a division by zero or a kernel of another shape.
#[test]
fn a_convolution_refuses_a_choice_its_kernels_cannot_carry_out() {
    use fpn_wgpu::kernels::conv2d::rows::RowTile;
    use fpn_wgpu::kernels::conv2d::ConvChoice;
    let ctx = gpu();
    let x = zeros([1, 8, 9, 9]);
    let w = conv_weights([8, 8, 3, 3]);
    let opts = Conv2dOptions::new(1, 0);
    let tile = |kernel, couts, pixels| RowTile {
        kernel,
        stride: (1, 1),
        couts,
        pixels,
    };
    let rows = |tile, workgroup| ConvChoice::Rows {
        tile,
        split: 1,
        workgroup,
    };
    let run = |c| conv2d::conv2d_with(ctx, &x, &w, None, &opts, Some(c));
    expect_err(
        run(rows(tile((1, 1), 8, 8), (8, 8))),
        &["unrolled for a 1x1 kernel", "3x3"],
    );
    expect_err(
        run(rows(tile((3, 3), 6, 8), (8, 8))),
        &["multiple of 4", "6"],
    );
    expect_err(run(rows(tile((3, 3), 8, 0), (8, 8))), &["power of two"]);
    expect_err(
        run(rows(tile((3, 3), 8, 8), (0, 64))),
        &["workgroup of 0x64"],
    );
    expect_err(
        run(ConvChoice::Direct { workgroup: (8, 4) }),
        &["8x4", "64"],
    );
    // The strategy's own choice runs.
    assert!(run(rows(tile((3, 3), 8, 8), (8, 8))).is_ok());
}
