//! The library inside other people's programs: concurrent use, device loss and hostile files
//! give correct results or clean errors, never a panic or a hang.

mod common;

use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use common::{gpu, small_binding_context};
use fpn_wgpu::rng::SplitMix64;
use fpn_wgpu::tensor_file::parse_tensors;
use fpn_wgpu::weights::is_ignored;
use fpn_wgpu::{Fpn, FpnConfig, GpuContext, Tensor};

const SHAPE: [usize; 4] = [1, 3, 32, 40];

fn tiny_fpn(ctx: &GpuContext) -> Fpn {
    Fpn::random(ctx, FpnConfig::with_blocks([1, 1, 1, 1]), 9).unwrap()
}

fn input(seed: u64) -> Vec<f32> {
    SplitMix64::new(seed).vec(SHAPE.iter().product(), -1.0, 1.0)
}

fn run(ctx: &GpuContext, fpn: &Fpn, data: &[f32]) -> Vec<Vec<f32>> {
    let x = Tensor::from_slice(ctx, SHAPE, data).unwrap();
    let levels = fpn.forward(&x).unwrap().download(ctx).unwrap();
    levels.into_iter().map(|(_, t)| t.data).collect()
}

/// Runs `f` on another thread and fails the test if it has not finished within `secs`.
fn within<T: Send + 'static>(secs: u64, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(secs))
        .unwrap_or_else(|_| panic!("did not finish within {secs} s: a hang"))
}

#[test]
fn the_model_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Fpn>();
    assert_send_sync::<GpuContext>();
    assert_send_sync::<Tensor>();
}

#[test]
fn forwards_from_four_threads_match_sequential_ones() {
    let ctx = gpu();
    let fpn = tiny_fpn(ctx);
    let seeds: Vec<u64> = (0..32).collect();
    let sequential: Vec<Vec<Vec<f32>>> = seeds.iter().map(|&s| run(ctx, &fpn, &input(s))).collect();
    let concurrent: Vec<(u64, Vec<Vec<f32>>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..4)
            .map(|t| {
                let fpn = &fpn;
                scope.spawn(move || {
                    (0..8)
                        .map(|i| {
                            let seed = t * 8 + i;
                            (seed, run(ctx, fpn, &input(seed)))
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    assert_eq!(concurrent.len(), 32);
    for (seed, levels) in concurrent {
        assert_eq!(
            levels, sequential[seed as usize],
            "input {seed}: concurrent result differs"
        );
    }
}

#[test]
fn several_forwards_in_flight_before_any_read_back() {
    let ctx = gpu();
    let fpn = tiny_fpn(ctx);
    let inputs: Vec<Tensor> = (100..104)
        .map(|s| Tensor::from_slice(ctx, SHAPE, &input(s)).unwrap())
        .collect();
    let pyramids: Vec<_> = inputs.iter().map(|x| fpn.forward(x).unwrap()).collect();
    for (i, p) in pyramids.iter().enumerate() {
        let got: Vec<Vec<f32>> = p
            .download(ctx)
            .unwrap()
            .into_iter()
            .map(|(_, t)| t.data)
            .collect();
        assert_eq!(got, run(ctx, &fpn, &input(100 + i as u64)), "forward {i}");
    }
}

#[test]
fn after_device_loss_calls_fail_fast_with_device_lost() {
    // A context of its own: the device is destroyed on purpose. wgpu reports a destroyed device
    // lazily, so the first sign may be a failed read-back; from then on every call must fail
    // with DeviceLost at once, and nothing may wait forever.
    let ctx = GpuContext::new().unwrap();
    let fpn = tiny_fpn(&ctx);
    let x = Tensor::from_slice(&ctx, SHAPE, &input(1)).unwrap();
    let pyramid = fpn.forward(&x).unwrap();
    ctx.device().destroy();
    let (download, forward) = within(60, move || {
        (
            pyramid.download(&ctx).map(|_| ()),
            fpn.forward(&x).map(|_| ()),
        )
    });
    let lost = |r: &fpn_wgpu::Result<()>| matches!(r, Err(fpn_wgpu::Error::DeviceLost(_)));
    assert!(lost(&download), "a download after the loss: {download:?}");
    assert!(lost(&forward), "a forward after that: {forward:?}");
}

/// A safetensors image from a raw JSON header and data bytes.
fn raw_file(header: &str, data: &[u8]) -> Vec<u8> {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

fn parse(bytes: &[u8]) -> Result<(), String> {
    parse_tensors(bytes, Path::new("hostile.safetensors"), is_ignored)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[test]
fn hostile_weight_files_are_clean_errors() {
    let data = [0u8; 16];
    let ok = r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#;
    assert_eq!(parse(&raw_file(ok, &data)), Ok(()));

    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "sizes beyond the file",
            raw_file(
                r#"{"a":{"dtype":"F32","shape":[1000000],"data_offsets":[0,4000000]}}"#,
                &data,
            ),
        ),
        (
            "overlapping offsets",
            raw_file(
                r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}}"#,
                &data,
            ),
        ),
        (
            "out-of-range offsets",
            raw_file(
                r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[16,32]}}"#,
                &data,
            ),
        ),
        (
            "shape and offsets disagree",
            raw_file(
                r#"{"a":{"dtype":"F32","shape":[5],"data_offsets":[0,16]}}"#,
                &data,
            ),
        ),
        ("a header of gigabytes", {
            let mut b = (4u64 << 30).to_le_bytes().to_vec();
            b.extend_from_slice(b"{}");
            b
        }),
        ("a header longer than the file", {
            let mut b = 1000u64.to_le_bytes().to_vec();
            b.extend_from_slice(b"{}");
            b
        }),
        (
            "a repeated name",
            raw_file(
                r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#,
                &data,
            ),
        ),
        (
            "a repeated name, other offsets",
            raw_file(
                r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"a":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}}"#,
                &data,
            ),
        ),
        (
            "an integer dtype",
            raw_file(
                r#"{"a":{"dtype":"I32","shape":[4],"data_offsets":[0,16]}}"#,
                &data,
            ),
        ),
        ("not JSON", raw_file("{not json", &data)),
        ("empty", Vec::new()),
        ("seven bytes", vec![1, 2, 3, 4, 5, 6, 7]),
    ];
    for (what, bytes) in cases {
        let result = within(10, move || parse(&bytes));
        let err = result.expect_err(what);
        assert!(err.contains("hostile.safetensors"), "{what}: {err}");
    }
}

#[test]
fn a_batch_too_large_for_one_binding_runs_in_chunks() {
    // 16 MiB bindings: the weights fit, one 160x160 image's largest tensor (1.6 MB) fits, a batch
    // of 12 (19.7 MB) does not.
    let ctx = small_binding_context(16 << 20);
    let fpn = tiny_fpn(&ctx);
    let shape = [12, 3, 160, 160];
    assert!(
        fpn.executor().check_limits(shape).is_err(),
        "the test needs a batch that does not fit"
    );
    let per_image = 3 * 160 * 160;
    let data = SplitMix64::new(4).vec(12 * per_image, -1.0, 1.0);
    let x = Tensor::from_slice(&ctx, shape, &data).unwrap();
    let batch = fpn.forward(&x).unwrap().download(&ctx).unwrap();
    // Images on both sides of the chunk boundary equal their own single-image forwards, to
    // float rounding: on a GPU (this context's adapter type is unknown, so it counts as one) a
    // batch's small maps may split their sums differently (split-K) than one image's.
    for i in [0, 9, 10, 11] {
        let one = Tensor::from_slice(
            &ctx,
            [1, 3, 160, 160],
            &data[i * per_image..(i + 1) * per_image],
        )
        .unwrap();
        let single = fpn.forward(&one).unwrap().download(&ctx).unwrap();
        for ((name, b), (_, s)) in batch.iter().zip(&single) {
            assert_eq!(b.shape[0], 12);
            let n = s.data.len();
            let err = common::max_rel_error(&b.data[i * n..(i + 1) * n], &s.data);
            assert!(err <= 1e-5, "image {i}, level {name}: {err:e}");
        }
    }
}

#[test]
fn a_single_image_too_large_names_the_limit_and_the_largest_size_that_fits() {
    let ctx = small_binding_context(16 << 20);
    let fpn = tiny_fpn(&ctx);
    let x = Tensor::from_slice(&ctx, [1, 3, 600, 900], &vec![0.0; 3 * 600 * 900]).unwrap();
    let msg = fpn.forward(&x).unwrap_err().to_string();
    assert!(
        msg.contains("max_storage_buffer_binding_size") && msg.contains("16777216"),
        "{msg}"
    );
    assert!(
        msg.contains("largest input of this aspect ratio that fits is"),
        "{msg}"
    );
    // The size it names does run.
    let hint = msg.rsplit("fits is ").next().unwrap();
    let (h, w) = hint.trim().split_once('x').unwrap();
    let (h, w): (usize, usize) = (h.parse().unwrap(), w.parse().unwrap());
    assert!(h < 600 && w < 900 && h > 100);
    let ok = Tensor::from_slice(&ctx, [1, 3, h, w], &vec![0.0; 3 * h * w]).unwrap();
    fpn.forward(&ok).unwrap().download(&ctx).unwrap();
}
