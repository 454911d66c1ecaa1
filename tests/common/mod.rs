//! Helpers shared by the GPU tests.
#![allow(dead_code)]

pub mod dataset;
pub mod detector;
pub mod matching;
pub mod two_stage;

use std::sync::OnceLock;

use fpn_wgpu::GpuContext;

/// The GPU context of a test: the binary's one context, but over GL one per test thread. Every
/// GPU test needs an adapter and none is skipped: without one this panics with the error,
/// which names the fix.
///
/// Why GL differs: wgpu's GL backend holds its adapter's lock while a submit's work runs, and
/// a thread waiting on that lock panics after 6 s, so tests sharing a GL context fail whenever
/// another test's forward runs long (the detectors' on llvmpipe do). Contexts of their own
/// have locks of their own.
pub fn gpu() -> &'static GpuContext {
    static CTX: OnceLock<GpuContext> = OnceLock::new();
    let shared = CTX.get_or_init(|| {
        let ctx = GpuContext::new().unwrap_or_else(|e| panic!("GPU tests need an adapter: {e}"));
        eprintln!("testing on {}", ctx.adapter());
        ctx
    });
    if shared.adapter().backend != wgpu::Backend::Gl {
        return shared;
    }
    thread_local! {
        // Leaked: a test thread's context lives as long as the tests that borrow it.
        static OWN: &'static GpuContext = Box::leak(Box::new(own_gpu()));
    }
    OWN.with(|ctx| *ctx)
}

/// A context of the test's own, as [`gpu`] makes it, for a test that must not share one on
/// any backend.
pub fn own_gpu() -> GpuContext {
    GpuContext::new().unwrap_or_else(|e| panic!("GPU tests need an adapter: {e}"))
}

/// The `fpn` binary in a controlled environment, so that no test depends on the caller's: no
/// `XDG_RUNTIME_DIR` (the bare environment of containers, CI runners and root over ssh, where
/// Mesa's libwayland probe would print errors unless the binary deals with it) and no
/// `RUST_LOG` (whose log lines would mix with the output the tests read). The backend and
/// adapter choices (`WGPU_BACKEND`, `WGPU_ADAPTER_NAME`) and the driver's variables are kept:
/// the child runs on the adapter the tests run on.
pub fn fpn_command() -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_fpn"));
    command.env_remove("XDG_RUNTIME_DIR").env_remove("RUST_LOG");
    command
}

/// A folder of one test's own under the system's temporary folder, named `fpn-wgpu-NAME-*`.
/// It is removed when the guard drops, at the end of the test whether it passed or panicked,
/// so that test runs leave nothing behind.
pub fn scratch(name: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("fpn-wgpu-{name}-"))
        .tempdir()
        .expect("a scratch folder under the system's temporary folder")
}

/// max |a - b| / max |b|: the error relative to the reference's scale, which is what matters
/// for a tensor of activations (a per-element ratio explodes near zero crossings).
pub fn max_rel_error(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len(), "length mismatch");
    let scale = want
        .iter()
        .fold(0.0f64, |m, &v| m.max((v as f64).abs()))
        .max(1e-30);
    let mut worst = 0.0f64;
    for (&g, &w) in got.iter().zip(want) {
        if g.is_nan() != w.is_nan() {
            return f64::INFINITY;
        }
        if !w.is_nan() {
            worst = worst.max((g as f64 - w as f64).abs());
        }
    }
    worst / scale
}

/// Asserts `max_rel_error(got, want) <= tol`, naming the case; returns the error.
pub fn assert_close(case: &str, got: &[f32], want: &[f32], tol: f64) -> f64 {
    let err = max_rel_error(got, want);
    assert!(
        err <= tol,
        "{case}: max relative error {err:e} exceeds {tol:e}"
    );
    err
}

/// A context on a device the test creates itself (as an embedding application would), with
/// storage bindings limited to `binding` bytes.
pub fn small_binding_context(binding: u64) -> GpuContext {
    limited_context(|limits| limits.max_storage_buffer_binding_size = binding)
}

/// A context on a device the test creates itself, with the adapter's limits as `narrow`
/// changes them.
pub fn limited_context(narrow: impl FnOnce(&mut wgpu::Limits)) -> GpuContext {
    let (device, queue) = pollster::block_on(async {
        let instance =
            wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let adapter = instance
            .request_adapter(&wgpu::RequestAdapterOptions::default())
            .await
            .unwrap();
        let mut limits = adapter.limits();
        narrow(&mut limits);
        adapter
            .request_device(&wgpu::DeviceDescriptor {
                required_limits: limits,
                ..Default::default()
            })
            .await
            .unwrap()
    });
    GpuContext::from_device(device, queue)
}

/// The context for f16 tests, or `None` on an adapter without shader-f16 (wgpu's GL backend),
/// after checking that f16 is refused there with an error that says why. lavapipe has
/// shader-f16, so the f16 tests always run in CI's Vulkan pass: this asserts that they do.
pub fn f16_gpu() -> Option<&'static GpuContext> {
    let ctx = gpu();
    if ctx.supports_f16() {
        return Some(ctx);
    }
    let adapter = ctx.adapter();
    assert!(
        !(adapter.backend == wgpu::Backend::Vulkan && adapter.device_type == wgpu::DeviceType::Cpu),
        "lavapipe has shader-f16, so the context must have been created with it"
    );
    let e = fpn_wgpu::Tensor::empty_as(ctx, [1, 1, 1, 1], fpn_wgpu::Precision::F16).unwrap_err();
    assert!(
        matches!(e, fpn_wgpu::Error::Unsupported { .. }) && e.to_string().contains("SHADER_F16"),
        "{e}"
    );
    eprintln!("{adapter}: no shader-f16; checked that f16 is refused ({e}) and ran no f16 kernels");
    None
}

/// The reference's spec of the convolution `opts` describes (the residual is passed apart).
pub fn conv_spec(opts: &fpn_wgpu::kernels::conv2d::Conv2dOptions) -> fpn_wgpu::reference::ConvSpec {
    fpn_wgpu::reference::ConvSpec {
        stride: opts.stride,
        padding: opts.padding,
        relu: opts.relu,
    }
}

/// The reference's spec of the pooling `opts` describes.
pub fn pool_spec(
    opts: &fpn_wgpu::kernels::max_pool2d::MaxPool2dOptions,
) -> fpn_wgpu::reference::PoolSpec {
    fpn_wgpu::reference::PoolSpec {
        kernel: opts.kernel,
        stride: opts.stride,
        padding: opts.padding,
    }
}

/// The reference's name for an upsampling mode.
pub fn resize(mode: fpn_wgpu::kernels::upsample_add::UpsampleMode) -> fpn_wgpu::reference::Resize {
    match mode {
        fpn_wgpu::kernels::upsample_add::UpsampleMode::Bilinear => {
            fpn_wgpu::reference::Resize::Bilinear
        }
        fpn_wgpu::kernels::upsample_add::UpsampleMode::Nearest => {
            fpn_wgpu::reference::Resize::Nearest
        }
    }
}

/// A JPEG whose EXIF says Orientation 6 (stored turned left: a phone held upright), 32 wide and
/// 16 high as stored, with a different colour in each corner.
pub fn jpeg_with_orientation_6(path: &std::path::Path) -> image::RgbImage {
    let stored = image::RgbImage::from_fn(32, 16, |x, y| {
        image::Rgb([
            if x < 16 { 230 } else { 20 },
            if y < 8 { 230 } else { 20 },
            120,
        ])
    });
    // TIFF, big endian: one IFD entry, tag 0x0112 (Orientation), SHORT, count 1, value 6.
    let exif = [
        b"MM\0\x2a\0\0\0\x08".as_slice(),
        &[0, 1, 0x01, 0x12, 0, 3, 0, 0, 0, 1, 0, 6, 0, 0, 0, 0, 0, 0],
    ]
    .concat();
    let mut bytes = Vec::new();
    let mut encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 95);
    image::ImageEncoder::set_exif_metadata(&mut encoder, exif).unwrap();
    image::ImageEncoder::write_image(
        encoder,
        stored.as_raw(),
        32,
        16,
        image::ExtendedColorType::Rgb8,
    )
    .unwrap();
    std::fs::write(path, bytes).unwrap();
    stored
}

/// Both layouts, for the kernels that take either.
pub const LAYOUTS: [fpn_wgpu::tensor::MemoryFormat; 2] = [
    fpn_wgpu::tensor::MemoryFormat::Nchw,
    fpn_wgpu::tensor::MemoryFormat::ChannelsLast,
];

/// An f32 tensor of `shape` in `layout` whose whole storage (padding channels too) holds NaN,
/// so that whatever a kernel leaves unwritten shows in its output.
pub fn poisoned(
    ctx: &GpuContext,
    shape: [usize; 4],
    layout: fpn_wgpu::tensor::MemoryFormat,
) -> fpn_wgpu::Tensor {
    let t = fpn_wgpu::Tensor::empty_with(ctx, shape, fpn_wgpu::Precision::F32, layout).unwrap();
    let nan = vec![f32::NAN; t.storage_len()];
    ctx.queue()
        .write_buffer(t.buffer(), t.offset(), bytemuck::cast_slice(&nan));
    t
}

/// Checks that an f32 tensor's storage holds no NaN (see [`poisoned`]) and, channels-last,
/// zeros in its padding channels.
pub fn assert_storage_written(ctx: &GpuContext, t: &fpn_wgpu::Tensor, what: &str) {
    assert_eq!(t.precision(), fpn_wgpu::Precision::F32, "{what}");
    let len = t.storage_len();
    let raw = fpn_wgpu::Tensor::from_buffer(t.buffer().clone(), [1, 1, 1, len])
        .unwrap()
        .download(ctx)
        .unwrap();
    let [_, c, _, _] = t.shape();
    let stride = t.memory_format().pixel_stride(c);
    for (i, v) in raw.iter().enumerate() {
        let padding =
            t.memory_format() == fpn_wgpu::tensor::MemoryFormat::ChannelsLast && i % stride >= c;
        assert!(
            !v.is_nan(),
            "{what}: storage element {i} was left unwritten"
        );
        if padding {
            assert_eq!(*v, 0.0, "{what}: padding channel at storage element {i}");
        }
    }
}
