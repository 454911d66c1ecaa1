//! The GPU context: adapter choice, device limits, the pipeline cache and command submission.
//! The adapters' reports, launches, launch parameters and error scopes have files of their own.

mod adapter;
mod dispatch;
mod error_scopes;
mod uniform;

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use wgpu::util::DeviceExt;

use self::adapter::{adapter_compute, adapter_rank, backend_detail, no_adapter_advice};
pub use self::adapter::{
    available_adapters, available_adapters_in, backends_from_env, compute_support,
    platform_backends, requested_adapters, requested_backends, AdapterReport, AdapterSummary,
};
pub(crate) use self::dispatch::{grid_2d, IndirectGrid};
pub use self::dispatch::{BatchGrid, Dispatch};
pub(crate) use self::error_scopes::ErrorScopes;
pub(crate) use self::uniform::Uniform;
use self::uniform::UniformArena;
use crate::error::{Error, Result};
use crate::precision::Precision;
use crate::signal::{drive, signal};

/// A wgpu device and queue plus what the kernels need to use them: limits, cached pipelines.
///
/// Build one with [`GpuContext::new`] (pick an adapter) or [`GpuContext::from_device`] (share the
/// device your renderer already owns). Cloning is cheap and shares everything. A device this
/// crate creates on wgpu's GL backend lives until the process exits (see `keep_until_exit`).
#[derive(Clone)]
pub struct GpuContext {
    inner: Arc<Inner>,
}

struct Inner {
    device: wgpu::Device,
    queue: wgpu::Queue,
    adapter: AdapterSummary,
    limits: wgpu::Limits,
    pipelines: Mutex<HashMap<PipelineKey, wgpu::ComputePipeline>>,
    modules: Mutex<HashMap<String, wgpu::ShaderModule>>,
    /// Bound in place of an optional input that an op does not use; wgpu rejects empty bindings.
    placeholder: wgpu::Buffer,
    /// Where launches' parameters live: slices of a few shared buffers rather than a buffer
    /// each, so that a forward's submit tracks a handful of buffers instead of one per launch.
    uniforms: Mutex<UniformArena>,
    /// Set by wgpu's device-lost callback: later calls fail at once instead of waiting.
    lost: Arc<Mutex<Option<String>>>,
    /// The adapter's cooperative-matrix configurations, where the device was created with
    /// them (empty otherwise).
    cooperative_matrix: Vec<wgpu::CooperativeMatrixProperties>,
    /// The adapter's (smallest, largest) subgroup size.
    subgroup_sizes: (u32, u32),
    /// Whether launches may read their grid from a buffer (`dispatch_workgroups_indirect`).
    indirect: bool,
    /// Values other modules keep per context, by type: see [`GpuContext::memo`].
    memos: Mutex<HashMap<TypeId, Arc<dyn Any + Send + Sync>>>,
}

/// Set to `0` to record every launch at its full grid, never sized on the GPU by a count
/// (`dispatch_workgroups_indirect`), for comparisons and for drivers that mishandle it.
pub const INDIRECT_DISPATCH_ENV: &str = "FPN_INDIRECT_DISPATCH";

/// Set to `0` to create devices without cooperative matrices (wgpu has them as an experimental
/// feature), so that f16 networks use the portable kernels.
pub const COOPERATIVE_MATRIX_ENV: &str = "FPN_COOPERATIVE_MATRIX";

/// Whether a device on `adapter` is created with cooperative matrices: the adapter offers them
/// and f16, and [`COOPERATIVE_MATRIX_ENV`] does not turn them off. Which of its configurations
/// a kernel can use is the kernel's business, not the context's.
fn wants_cooperative_matrix(adapter: &wgpu::Adapter) -> bool {
    let needed = wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX | wgpu::Features::SHADER_F16;
    adapter.features().contains(needed)
        && !std::env::var(COOPERATIVE_MATRIX_ENV).is_ok_and(|v| v == "0")
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct PipelineKey {
    shader: String,
    entry: &'static str,
    constants: Vec<(&'static str, u32)>,
}

impl GpuContext {
    /// Picks an adapter and creates a device, blocking the thread. See [`GpuContext::new_async`].
    #[cfg(not(target_arch = "wasm32"))]
    pub fn new() -> Result<Self> {
        pollster::block_on(Self::new_async())
    }

    /// Picks an adapter without a window and creates a device with the adapter's own limits.
    ///
    /// `WGPU_BACKEND` (e.g. `vulkan`, `gl`, `metal`, `dx12`; see [`requested_backends`])
    /// restricts the backends searched and `WGPU_ADAPTER_NAME` picks the first adapter whose
    /// name contains it (case-insensitive). Otherwise a hardware GPU is preferred over a
    /// software one.
    pub async fn new_async() -> Result<Self> {
        let backends = backends_from_env()?;
        // wgpu's other variables (validation, GL and DX12 options) still apply; the backends
        // are those read above, so that an empty WGPU_BACKEND means every backend.
        let mut descriptor = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
        descriptor.backends = backends;
        let instance = wgpu::Instance::new(descriptor);
        let mut adapters = instance.enumerate_adapters(backends).await;
        let mut left_out = Vec::new();
        adapters.retain(|a| match adapter_compute(a) {
            Ok(()) => true,
            Err(why) => {
                let info = a.get_info();
                left_out.push(format!("`{}` ({:?}): {why}", info.name, info.backend));
                false
            }
        });
        let mut detail = backend_detail();
        if !left_out.is_empty() {
            detail.push_str(&format!(
                " that runs compute shaders (left out: {}; pick another backend, e.g. \
                 WGPU_BACKEND=vulkan)",
                left_out.join("; ")
            ));
        }
        if let Ok(wanted) = std::env::var("WGPU_ADAPTER_NAME") {
            let wanted_lc = wanted.to_lowercase();
            let names: Vec<String> = adapters.iter().map(|a| a.get_info().name).collect();
            adapters.retain(|a| a.get_info().name.to_lowercase().contains(&wanted_lc));
            detail.push_str(&format!(
                " whose name contains WGPU_ADAPTER_NAME={wanted:?} (adapters present: {names:?})"
            ));
        }
        let adapter = adapters
            .into_iter()
            .min_by_key(|a| adapter_rank(&a.get_info()))
            .ok_or_else(|| Error::NoAdapter {
                detail,
                advice: no_adapter_advice(backends),
            })?;
        Self::from_adapter(&adapter).await
    }

    /// Creates a device on the given adapter, requesting the adapter's real limits (storage
    /// buffer binding size, buffer size, workgroup storage) instead of wgpu's conservative
    /// defaults.
    pub async fn from_adapter(adapter: &wgpu::Adapter) -> Result<Self> {
        let info = adapter.get_info();
        adapter_compute(adapter).map_err(|why| Error::Unsupported {
            op: "GpuContext::from_adapter",
            message: format!(
                "the adapter `{}` ({:?}) cannot run compute shaders: {why}; choose another \
                 adapter or backend (WGPU_BACKEND=vulkan, say)",
                info.name, info.backend
            ),
        })?;
        let limits = adapter.limits();
        // Timestamps give the per-stage profile and f16 the half-precision path where the
        // adapter has them; the default float32 path needs neither.
        let mut features =
            adapter.features() & (wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::SHADER_F16);
        let cooperative = wants_cooperative_matrix(adapter);
        let experimental = if cooperative {
            // Subgroup ids too, which blocks of several subgroups need.
            features |= wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX
                | (adapter.features() & wgpu::Features::SUBGROUP);
            // SAFETY: wgpu asks the caller to accept that its experimental features may still
            // have bugs. The only use is the f16 convolution kernel, which is checked against
            // the portable kernel on this device before any network uses it
            // (`conv2d::coop::verified`); FPN_COOPERATIVE_MATRIX=0 leaves it off.
            unsafe { wgpu::ExperimentalFeatures::enabled() }
        } else {
            wgpu::ExperimentalFeatures::disabled()
        };
        let cooperative_matrix = if cooperative {
            adapter.cooperative_matrix_properties()
        } else {
            Vec::new()
        };
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("fpn-wgpu"),
                required_features: features,
                required_limits: limits,
                experimental_features: experimental,
                memory_hints: wgpu::MemoryHints::Performance,
                trace: wgpu::Trace::Off,
            })
            .await
            .map_err(|e| Error::RequestDevice {
                adapter: info.name.clone(),
                reason: e.to_string(),
            })?;
        let indirect = adapter
            .get_downlevel_capabilities()
            .flags
            .contains(wgpu::DownlevelFlags::INDIRECT_EXECUTION);
        Ok(Self::build(
            device,
            queue,
            AdapterSummary::from_info(&info),
            cooperative_matrix,
            (info.subgroup_min_size, info.subgroup_max_size),
            indirect,
        ))
    }

    /// Wraps a device and queue that the caller already owns (a renderer's or a game engine's).
    /// The kernels then respect that device's limits, whatever they are. Cooperative matrices
    /// and indirect launches are not used on such a device: its adapter's configurations and
    /// downlevel capabilities are not known here.
    pub fn from_device(device: wgpu::Device, queue: wgpu::Queue) -> Self {
        let adapter = AdapterSummary {
            name: "caller-provided device".into(),
            backend: wgpu::Backend::Noop,
            device_type: wgpu::DeviceType::Other,
            driver: String::new(),
        };
        Self::build(device, queue, adapter, Vec::new(), (0, 0), false)
    }

    fn build(
        device: wgpu::Device,
        queue: wgpu::Queue,
        adapter: AdapterSummary,
        cooperative_matrix: Vec<wgpu::CooperativeMatrixProperties>,
        subgroup_sizes: (u32, u32),
        indirect: bool,
    ) -> Self {
        let indirect =
            indirect && std::env::var(INDIRECT_DISPATCH_ENV).map_or(true, |v| v.trim() != "0");
        #[cfg(not(target_arch = "wasm32"))]
        if adapter.backend == wgpu::Backend::Gl {
            keep_until_exit(&device);
        }
        // wgpu's default handler panics; a library must not take its host down. Errors of our
        // own submissions are captured by error scopes; anything else is logged.
        device.on_uncaptured_error(Arc::new(|e: wgpu::Error| {
            log::error!("uncaptured wgpu error: {e}");
        }));
        let lost = Arc::new(Mutex::new(None));
        let lost_flag = lost.clone();
        device.set_device_lost_callback(move |reason, message| {
            log::error!("the GPU device was lost ({reason:?}): {message}");
            *lost_flag.lock().unwrap_or_else(|p| p.into_inner()) =
                Some(format!("{reason:?}: {message}"));
        });
        let limits = device.limits();
        let placeholder = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("placeholder"),
            size: 16,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        GpuContext {
            inner: Arc::new(Inner {
                uniforms: Mutex::new(UniformArena::default()),
                device,
                queue,
                adapter,
                limits,
                pipelines: Mutex::new(HashMap::new()),
                modules: Mutex::new(HashMap::new()),
                placeholder,
                lost,
                cooperative_matrix,
                subgroup_sizes,
                indirect,
                memos: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// An error if the device has been lost: every later call fails with it at once.
    pub fn check_alive(&self) -> Result<()> {
        // wgpu reports a loss (a destroyed device, say) from its maintenance step, which only a
        // poll runs; a non-blocking one is cheap next to the work about to be recorded.
        let polled = self.inner.device.poll(wgpu::PollType::Poll);
        if let Some(why) = &*self.inner.lost.lock().unwrap_or_else(|p| p.into_inner()) {
            return Err(Error::DeviceLost(why.clone()));
        }
        polled
            .map(|_| ())
            .map_err(|e| Error::DeviceLost(e.to_string()))
    }

    /// Records that the device is unusable (wgpu may report a loss late, or not at all, for a
    /// destroyed device); every later call fails with [`Error::DeviceLost`]. Returns that
    /// error, with the first reason recorded.
    pub(crate) fn mark_lost(&self, why: String) -> Error {
        let mut lost = self.inner.lost.lock().unwrap_or_else(|p| p.into_inner());
        Error::DeviceLost(lost.get_or_insert(why).clone())
    }

    /// The wgpu device.
    pub fn device(&self) -> &wgpu::Device {
        &self.inner.device
    }

    /// The wgpu queue.
    pub fn queue(&self) -> &wgpu::Queue {
        &self.inner.queue
    }

    /// The adapter this context runs on.
    pub fn adapter(&self) -> &AdapterSummary {
        &self.inner.adapter
    }

    /// The limits the device was created with.
    pub fn limits(&self) -> &wgpu::Limits {
        &self.inner.limits
    }

    /// Whether launches can be sized on the GPU (`dispatch_workgroups_indirect`): the adapter
    /// executes indirect launches and [`INDIRECT_DISPATCH_ENV`] does not turn them off.
    pub fn supports_indirect_dispatch(&self) -> bool {
        self.inner.indirect
    }

    /// A buffer of `words` u32 zeros that kernels write launch grids into and indirect
    /// launches read them from.
    pub(crate) fn indirect_buffer(&self, label: &str, words: usize) -> wgpu::Buffer {
        self.inner.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: (words.max(4) * 4) as u64,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::INDIRECT
                | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        })
    }

    /// Whether compute passes can write GPU timestamps (for per-stage profiles).
    pub fn supports_timestamps(&self) -> bool {
        self.inner
            .device
            .features()
            .contains(wgpu::Features::TIMESTAMP_QUERY)
    }

    /// Whether shaders may store and compute f16 ([`Precision::F16`] tensors and networks).
    pub fn supports_f16(&self) -> bool {
        self.inner
            .device
            .features()
            .contains(wgpu::Features::SHADER_F16)
    }

    /// An error unless tensors of `precision` can be used on this device.
    pub(crate) fn check_precision(&self, op: &'static str, precision: Precision) -> Result<()> {
        if precision == Precision::F16 && !self.supports_f16() {
            return Err(Error::Unsupported {
                op,
                message: format!(
                    "f16 storage needs the SHADER_F16 feature, which the device on {:?} does not have (`fpn info` lists shader-f16 per adapter); use Precision::F32 (--precision f32) or an adapter that has it",
                    self.inner.adapter.name
                ),
            });
        }
        Ok(())
    }

    /// The cooperative-matrix configurations (tensor cores) of the adapter, where the device
    /// was created with them; empty otherwise. [`crate::kernels::conv2d::coop`] says which of
    /// them its kernels use.
    pub fn cooperative_matrix_properties(&self) -> &[wgpu::CooperativeMatrixProperties] {
        &self.inner.cooperative_matrix
    }

    /// The adapter's (smallest, largest) subgroup size; (0, 0) where it is not known (a
    /// caller's device).
    pub fn subgroup_sizes(&self) -> (u32, u32) {
        self.inner.subgroup_sizes
    }

    /// The value of type `T` this context keeps, made with `T::default()` on first use: lets a
    /// module remember something per device (the result of a check run on it, say) without the
    /// context knowing what.
    pub fn memo<T: Any + Send + Sync + Default>(&self) -> Arc<T> {
        let mut memos = self.inner.memos.lock().unwrap_or_else(|p| p.into_inner());
        let slot = memos
            .entry(TypeId::of::<T>())
            .or_insert_with(|| Arc::new(T::default()));
        // The entry was made for this type id, so it holds a T.
        slot.clone()
            .downcast::<T>()
            .unwrap_or_else(|_| Arc::new(T::default()))
    }

    /// The largest byte size a single storage binding (one tensor an op reads or writes) may
    /// have on this device.
    pub fn max_binding_bytes(&self) -> u64 {
        self.inner
            .limits
            .max_storage_buffer_binding_size
            .min(self.inner.limits.max_buffer_size)
    }

    pub(crate) fn placeholder(&self) -> &wgpu::Buffer {
        &self.inner.placeholder
    }

    /// Checks that a tensor of `bytes` can be bound by a kernel on this device.
    pub(crate) fn check_binding_size(
        &self,
        op: &'static str,
        what: &str,
        bytes: u64,
    ) -> Result<()> {
        check_limit(
            op,
            what,
            bytes,
            "max_storage_buffer_binding_size",
            self.max_binding_bytes(),
        )
    }

    /// Checks that a buffer of `bytes` can be created on this device.
    pub(crate) fn check_buffer_size(&self, op: &'static str, what: &str, bytes: u64) -> Result<()> {
        check_limit(
            op,
            what,
            bytes,
            "max_buffer_size",
            self.inner.limits.max_buffer_size,
        )
    }

    /// Checks a dispatch grid against the device's per-dimension workgroup limit.
    pub(crate) fn check_grid(&self, op: &'static str, grid: [u32; 3]) -> Result<()> {
        let limit = self.inner.limits.max_compute_workgroups_per_dimension;
        for (axis, &n) in ["x", "y", "z"].iter().zip(grid.iter()) {
            if n > limit {
                return Err(Error::LimitExceeded {
                    op,
                    what: format!("the workgroup count along {axis}"),
                    value: n as u64,
                    limit_name: "max_compute_workgroups_per_dimension",
                    limit: limit as u64,
                    hint: "use a smaller input (height, width or batch)".into(),
                });
            }
        }
        Ok(())
    }

    /// Returns the cached pipeline for an entry point of a WGSL module and its override
    /// constants, compiling it on first use: `name` identifies the module (it must change
    /// whenever the source would), `source` makes it on first use.
    pub(crate) fn pipeline_from(
        &self,
        name: &str,
        source: impl FnOnce() -> String,
        entry: &'static str,
        constants: &[(&'static str, u32)],
    ) -> Result<wgpu::ComputePipeline> {
        self.check_alive()?;
        let key = PipelineKey {
            shader: name.to_string(),
            entry,
            constants: constants.to_vec(),
        };
        let mut pipelines = self
            .inner
            .pipelines
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(p) = pipelines.get(&key) {
            return Ok(p.clone());
        }
        let device = &self.inner.device;
        let scopes = ErrorScopes::push(device);
        let module = {
            let mut modules = self.inner.modules.lock().unwrap_or_else(|p| p.into_inner());
            modules
                .entry(name.to_string())
                .or_insert_with(|| {
                    device.create_shader_module(wgpu::ShaderModuleDescriptor {
                        label: Some(name),
                        source: wgpu::ShaderSource::Wgsl(source().into()),
                    })
                })
                .clone()
        };
        let constants_f64: Vec<(&str, f64)> =
            constants.iter().map(|&(k, v)| (k, v as f64)).collect();
        let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(entry),
            layout: None,
            module: &module,
            entry_point: Some(entry),
            compilation_options: wgpu::PipelineCompilationOptions {
                constants: &constants_f64,
                zero_initialize_workgroup_memory: false,
            },
            cache: None,
        });
        scopes.check("pipeline creation").map_err(|e| match e {
            Error::Gpu { op, message } => Error::Gpu {
                op,
                message: format!("{name}:{entry}: {message}"),
            },
            other => other,
        })?;
        pipelines.insert(key, pipeline.clone());
        Ok(pipeline)
    }

    /// Resolves the first `count` timestamps of `queries` (written by work already submitted)
    /// and reads them back: the ticks, and the seconds a tick lasts.
    pub(crate) async fn read_timestamps(
        &self,
        queries: &wgpu::QuerySet,
        count: u32,
    ) -> Result<(Vec<u64>, f64)> {
        let device = &self.inner.device;
        let bytes = count as u64 * 8;
        let resolve = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("timestamps"),
            size: bytes,
            usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        let readback = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("timestamps readback"),
            size: bytes,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("timestamps"),
        });
        encoder.resolve_query_set(queries, 0..count, &resolve, 0);
        encoder.copy_buffer_to_buffer(&resolve, 0, &readback, 0, bytes);
        self.inner.queue.submit([encoder.finish()]);
        let (tx, rx) = signal();
        let on_stall = tx.clone();
        readback.map_async(wgpu::MapMode::Read, .., move |r| {
            tx.send(r.map_err(|e| Error::Readback(e.to_string())))
        });
        drive(device, on_stall);
        rx.await?;
        let ticks: Vec<u64> = {
            let view = readback
                .get_mapped_range(..)
                .map_err(|e| Error::Readback(e.to_string()))?;
            bytemuck::pod_collect_to_vec(&view)
        };
        readback.unmap();
        Ok((ticks, self.inner.queue.get_timestamp_period() as f64 * 1e-9))
    }

    /// Creates a storage buffer of `bytes` zeros (for scratch space kernels write and read).
    pub(crate) fn storage_zeroed(&self, label: &str, bytes: u64) -> wgpu::Buffer {
        self.inner.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: bytes.next_multiple_of(4),
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        })
    }

    /// A launch's parameters as a uniform slice of a shared buffer.
    pub(crate) fn uniform<T: bytemuck::Pod>(&self, params: &T) -> Uniform {
        let align = (self.inner.limits.min_uniform_buffer_offset_alignment as u64).max(16);
        self.inner
            .uniforms
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .place(
                &self.inner.device,
                &self.inner.queue,
                align,
                bytemuck::bytes_of(params),
            )
    }

    pub(crate) fn storage_from<T: bytemuck::Pod>(&self, label: &str, data: &[T]) -> wgpu::Buffer {
        // wgpu rejects zero-sized bindings; an empty vector still gets one element of room.
        let bytes = bytemuck::cast_slice(data);
        let contents: &[u8] = if bytes.is_empty() { &[0u8; 16] } else { bytes };
        self.inner
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents,
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
            })
    }

    /// Builds a bind group for `pipeline` from (binding index, buffer binding) pairs.
    pub(crate) fn bind_group(
        &self,
        label: &'static str,
        pipeline: &wgpu::ComputePipeline,
        entries: &[(u32, wgpu::BindingResource<'_>)],
    ) -> wgpu::BindGroup {
        let entries: Vec<wgpu::BindGroupEntry<'_>> = entries
            .iter()
            .map(|(binding, resource)| wgpu::BindGroupEntry {
                binding: *binding,
                resource: resource.clone(),
            })
            .collect();
        self.inner
            .device
            .create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some(label),
                layout: &pipeline.get_bind_group_layout(0),
                entries: &entries,
            })
    }

    /// Records the dispatches into one compute pass and submits them, without waiting for the
    /// GPU; returns any validation or out-of-memory error the recording raised. Reading a
    /// result back (e.g. [`crate::Tensor::download`]) waits for it.
    pub fn submit(&self, dispatches: &[&Dispatch]) -> Result<()> {
        self.check_alive()?;
        let device = &self.inner.device;
        let scopes = ErrorScopes::push(device);
        let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("fpn-wgpu ops"),
        });
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("fpn-wgpu ops"),
                timestamp_writes: None,
            });
            for d in dispatches {
                d.record(&mut pass);
            }
        }
        self.inner.queue.submit([encoder.finish()]);
        scopes.check(dispatches.first().map(|d| d.label).unwrap_or("submit"))
    }

    /// [`GpuContext::submit`], then waits for the GPU to finish, blocking the thread; see
    /// [`GpuContext::run_async`].
    #[cfg(not(target_arch = "wasm32"))]
    pub fn run(&self, dispatches: &[&Dispatch]) -> Result<()> {
        pollster::block_on(self.run_async(dispatches))
    }

    /// [`GpuContext::submit`], then resolves when the GPU has finished.
    pub async fn run_async(&self, dispatches: &[&Dispatch]) -> Result<()> {
        self.submit(dispatches)?;
        self.work_done().await
    }

    /// Resolves when all work submitted so far has finished, without blocking the thread; an
    /// error if the device is lost meanwhile.
    pub async fn work_done(&self) -> Result<()> {
        self.check_alive()?;
        let (tx, rx) = signal::<Result<()>>();
        let on_stall = tx.clone();
        // Register before driving: the wait must cover the callback.
        self.inner
            .queue
            .on_submitted_work_done(move || tx.send(Ok(())));
        drive(&self.inner.device, on_stall);
        rx.await?;
        self.check_alive()
    }
}

/// Keeps a GL device (and with it wgpu's EGL display) alive until the process exits. Tearing
/// it down unloads Mesa's driver while a handler the driver registered still waits to run at
/// exit: about one process in twenty then died with SIGSEGV after `main` returned, when several
/// ran at once on llvmpipe (none in 200 runs with the device kept). Rust never drops statics.
/// Native only: a browser's WebGL has no driver to unload (and its devices are not `Send`).
#[cfg(not(target_arch = "wasm32"))]
fn keep_until_exit(device: &wgpu::Device) {
    static KEPT: Mutex<Vec<wgpu::Device>> = Mutex::new(Vec::new());
    KEPT.lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(device.clone());
}

/// An error when `bytes` of `what` exceed the wgpu limit `limit_name`.
fn check_limit(
    op: &'static str,
    what: &str,
    bytes: u64,
    limit_name: &'static str,
    limit: u64,
) -> Result<()> {
    if bytes > limit {
        return Err(Error::LimitExceeded {
            op,
            what: format!("the byte size of {what}"),
            value: bytes,
            limit_name,
            limit,
            hint: "use a smaller input (height, width or batch)".into(),
        });
    }
    Ok(())
}
