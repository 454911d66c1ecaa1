//! The GPU context: adapter choice, device limits, the pipeline cache and command submission.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use wgpu::util::DeviceExt;

use crate::error::{Error, Result};
use crate::precision::Precision;
use crate::signal::{drive, ready_now, signal};

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
    /// Values other modules keep per context, by type: see [`GpuContext::memo`].
    memos: Mutex<HashMap<TypeId, Arc<dyn Any + Send + Sync>>>,
}

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

/// The adapter's cooperative-matrix configurations, e.g. `16x16x16 f16->f32`.
fn cooperative_matrix_configs(adapter: &wgpu::Adapter) -> Vec<String> {
    if !adapter
        .features()
        .contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX)
    {
        return Vec::new();
    }
    adapter
        .cooperative_matrix_properties()
        .iter()
        .map(|p| {
            format!(
                "{}x{}x{} {:?}->{:?}",
                p.m_size, p.n_size, p.k_size, p.ab_type, p.cr_type
            )
            .to_lowercase()
        })
        .collect()
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct PipelineKey {
    shader: String,
    entry: &'static str,
    constants: Vec<(&'static str, u32)>,
}

/// What the crate reports about the adapter it runs on.
#[derive(Clone, Debug)]
pub struct AdapterSummary {
    /// The driver's name for the device, e.g. `llvmpipe (LLVM 15.0.6, 256 bits)`.
    pub name: String,
    /// Vulkan, Metal, Dx12, Gl or BrowserWebGpu.
    pub backend: wgpu::Backend,
    /// Discrete, integrated, virtual, CPU (software) or other.
    pub device_type: wgpu::DeviceType,
    /// The driver and its version, where the backend reports it.
    pub driver: String,
}

impl std::fmt::Display for AdapterSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Browsers may keep the name to themselves (WebGPU's `description` is often empty).
        let name = match self.name.is_empty() {
            true => "unnamed adapter",
            false => &self.name,
        };
        write!(f, "{name} ({:?}, {:?}", self.backend, self.device_type)?;
        if !self.driver.is_empty() {
            write!(f, ", {}", self.driver)?;
        }
        write!(f, ")")
    }
}

impl AdapterSummary {
    fn from_info(info: &wgpu::AdapterInfo) -> Self {
        let driver = [info.driver.as_str(), info.driver_info.as_str()]
            .iter()
            .filter(|s| !s.is_empty())
            .copied()
            .collect::<Vec<_>>()
            .join(" ");
        AdapterSummary {
            name: info.name.clone(),
            backend: info.backend,
            device_type: info.device_type,
            driver,
        }
    }
}

/// An adapter wgpu can see, with what matters for running the FPN on it.
#[derive(Clone, Debug)]
pub struct AdapterReport {
    /// Name, backend, device type, driver.
    pub summary: AdapterSummary,
    /// The adapter's limits (a context created on it requests exactly these).
    pub limits: wgpu::Limits,
    /// Whether it runs compute shaders at all (some GL contexts do not; see
    /// [`compute_support`]).
    pub compute: bool,
    /// Why it does not, when it does not.
    pub no_compute: Option<String>,
    /// Whether compute passes can write timestamps (per-stage profiles).
    pub timestamps: bool,
    /// Whether shaders may use f16.
    pub shader_f16: bool,
    /// Cooperative matrix configurations (M x N x K, operand -> accumulator types); empty
    /// without the feature.
    pub cooperative_matrix: Vec<String>,
}

/// Every adapter wgpu sees (all backends, whatever `WGPU_BACKEND` says), hardware first.
pub async fn available_adapters() -> Vec<AdapterReport> {
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle());
    let mut adapters = instance.enumerate_adapters(wgpu::Backends::all()).await;
    adapters.sort_by_key(|a| adapter_rank(&a.get_info()));
    adapters
        .iter()
        .map(|a| {
            let features = a.features();
            let no_compute = adapter_compute(a).err();
            AdapterReport {
                summary: AdapterSummary::from_info(&a.get_info()),
                limits: a.limits(),
                compute: no_compute.is_none(),
                no_compute,
                timestamps: features.contains(wgpu::Features::TIMESTAMP_QUERY),
                shader_f16: features.contains(wgpu::Features::SHADER_F16),
                cooperative_matrix: cooperative_matrix_configs(a),
            }
        })
        .collect()
}

/// One recorded kernel launch: a pipeline, its bindings and its grid. Built once, recorded into
/// as many command encoders as needed.
#[derive(Clone, Debug)]
pub struct Dispatch {
    pub(crate) label: &'static str,
    pub(crate) pipeline: wgpu::ComputePipeline,
    pub(crate) bind_group: wgpu::BindGroup,
    pub(crate) workgroups: [u32; 3],
    /// How the kernel was configured for this launch (block, split), for reports; may be empty.
    pub(crate) config: String,
}

impl Dispatch {
    /// A launch of `pipeline` over `workgroups`.
    pub(crate) fn new(
        label: &'static str,
        pipeline: wgpu::ComputePipeline,
        bind_group: wgpu::BindGroup,
        workgroups: [u32; 3],
    ) -> Self {
        Dispatch {
            label,
            pipeline,
            bind_group,
            workgroups,
            config: String::new(),
        }
    }

    /// The same launch, described by `config` in reports.
    pub(crate) fn with_config(self, config: String) -> Self {
        Dispatch { config, ..self }
    }

    /// How the kernel was configured for this launch (e.g. `direct 4x4, split 2, 16x16
    /// matrices; tuned`), or "" where there is nothing to say.
    pub fn config(&self) -> &str {
        &self.config
    }

    /// Records this launch into a compute pass.
    pub fn record(&self, pass: &mut wgpu::ComputePass<'_>) {
        pass.set_pipeline(&self.pipeline);
        pass.set_bind_group(0, &self.bind_group, &[]);
        let [x, y, z] = self.workgroups;
        pass.dispatch_workgroups(x, y, z);
    }

    /// The kernel this launch runs, for reports and errors.
    pub fn label(&self) -> &'static str {
        self.label
    }
}

/// Whether an adapter runs compute shaders, from what it reports: the downlevel flag
/// `COMPUTE_SHADERS` and, on GL, the context's version (its `driver_info`, GL's `GL_VERSION`
/// string). A GL context below 4.3, or below ES 3.1, has no compute shaders in the GLSL wgpu
/// writes for it, even where the driver lists `GL_ARB_compute_shader` and wgpu sets the flag
/// (NVIDIA's 3.3 contexts): such a device fails at its first compute pipeline. The error says
/// why, in a clause.
pub fn compute_support(
    backend: wgpu::Backend,
    flags: wgpu::DownlevelFlags,
    driver_info: &str,
) -> std::result::Result<(), String> {
    if !flags.contains(wgpu::DownlevelFlags::COMPUTE_SHADERS) {
        return Err("its driver reports no compute shaders".to_string());
    }
    if backend != wgpu::Backend::Gl {
        return Ok(());
    }
    let (es, version) = match driver_info.find("ES ") {
        Some(i) => (true, &driver_info[i + 3..]),
        None => (false, driver_info),
    };
    let mut numbers = version
        .split(|c: char| !c.is_ascii_digit())
        .filter(|p| !p.is_empty())
        .map(|p| p.parse::<u32>().ok());
    let (Some(Some(major)), Some(Some(minor))) = (numbers.next(), numbers.next()) else {
        // A version this cannot read: trust the flag.
        return Ok(());
    };
    let (needed, kind) = if es {
        ((3, 1), "GL ES")
    } else {
        ((4, 3), "GL")
    };
    if (major, minor) >= needed {
        return Ok(());
    }
    Err(format!(
        "its context is {kind} {major}.{minor} (`{driver_info}`), and compute shaders need \
         GL 4.3 or GL ES 3.1"
    ))
}

fn adapter_compute(adapter: &wgpu::Adapter) -> std::result::Result<(), String> {
    let info = adapter.get_info();
    compute_support(
        info.backend,
        adapter.get_downlevel_capabilities().flags,
        &info.driver_info,
    )
}

/// Ranks adapters: hardware before software, native backends before GL.
fn adapter_rank(info: &wgpu::AdapterInfo) -> (u8, u8) {
    let device = match info.device_type {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 3,
        wgpu::DeviceType::Cpu => 4,
    };
    let backend = match info.backend {
        wgpu::Backend::Vulkan | wgpu::Backend::Metal | wgpu::Backend::Dx12 => 0,
        wgpu::Backend::BrowserWebGpu => 1,
        _ => 2,
    };
    (device, backend)
}

impl GpuContext {
    /// Picks an adapter and creates a device, blocking the thread. See [`GpuContext::new_async`].
    #[cfg(not(target_arch = "wasm32"))]
    pub fn new() -> Result<Self> {
        pollster::block_on(Self::new_async())
    }

    /// Picks an adapter without a window and creates a device with the adapter's own limits.
    ///
    /// `WGPU_BACKEND` (e.g. `vulkan`, `gl`, `metal`, `dx12`) restricts the backends searched and
    /// `WGPU_ADAPTER_NAME` picks the first adapter whose name contains it (case-insensitive).
    /// Otherwise a hardware GPU is preferred over a software one.
    pub async fn new_async() -> Result<Self> {
        let instance =
            wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let backends = wgpu::Backends::from_env().unwrap_or(wgpu::Backends::all());
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
        let mut detail = match std::env::var("WGPU_BACKEND") {
            Ok(b) => format!(" for WGPU_BACKEND={b}"),
            Err(_) => String::new(),
        };
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
            .ok_or(Error::NoAdapter { detail })?;
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
        Ok(Self::build(
            device,
            queue,
            AdapterSummary::from_info(&info),
            cooperative_matrix,
            (info.subgroup_min_size, info.subgroup_max_size),
        ))
    }

    /// Wraps a device and queue that the caller already owns (a renderer's or a game engine's).
    /// The kernels then respect that device's limits, whatever they are. Cooperative matrices
    /// are not used on such a device: its adapter's configurations are not known here.
    pub fn from_device(device: wgpu::Device, queue: wgpu::Queue) -> Self {
        let adapter = AdapterSummary {
            name: "caller-provided device".into(),
            backend: wgpu::Backend::Noop,
            device_type: wgpu::DeviceType::Other,
            driver: String::new(),
        };
        Self::build(device, queue, adapter, Vec::new(), (0, 0))
    }

    fn build(
        device: wgpu::Device,
        queue: wgpu::Queue,
        adapter: AdapterSummary,
        cooperative_matrix: Vec<wgpu::CooperativeMatrixProperties>,
        subgroup_sizes: (u32, u32),
    ) -> Self {
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
    pub(crate) fn uniform<T: bytemuck::Pod>(&self, label: &'static str, params: &T) -> Uniform {
        let bytes = bytemuck::bytes_of(params);
        let align = (self.inner.limits.min_uniform_buffer_offset_alignment as u64).max(16);
        let size = (bytes.len() as u64).next_multiple_of(16);
        let mut arena = self
            .inner
            .uniforms
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let offset = arena.used.next_multiple_of(align);
        let buffer = match &arena.buffer {
            Some(b) if offset + size <= b.size() => b.clone(),
            _ => {
                // A new chunk; the old one lives on in the bind groups that use it.
                let chunk = self.inner.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some(label),
                    size: UNIFORM_CHUNK_BYTES.max(size),
                    usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                });
                arena.buffer = Some(chunk.clone());
                arena.used = 0;
                return self.write_uniform(&mut arena, chunk, 0, size, bytes);
            }
        };
        self.write_uniform(&mut arena, buffer, offset, size, bytes)
    }

    /// Writes `bytes` at `offset` of the arena's chunk `buffer` (ahead of any later submit, so
    /// before every launch that reads them) and takes the slice.
    fn write_uniform(
        &self,
        arena: &mut UniformArena,
        buffer: wgpu::Buffer,
        offset: u64,
        size: u64,
        bytes: &[u8],
    ) -> Uniform {
        let mut padded = bytes.to_vec();
        padded.resize(size as usize, 0);
        self.inner.queue.write_buffer(&buffer, offset, &padded);
        arena.used = offset + size;
        Uniform {
            buffer,
            offset,
            size,
        }
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

/// Bytes of each buffer the launches' parameters are placed in: 256 launches' worth at the
/// common 256-byte offset alignment.
const UNIFORM_CHUNK_BYTES: u64 = 64 * 1024;

/// The chunk launches' parameters are being placed in, and how much of it is used.
#[derive(Default)]
struct UniformArena {
    buffer: Option<wgpu::Buffer>,
    used: u64,
}

/// A launch's parameters: a slice of a shared uniform buffer.
#[derive(Clone, Debug)]
pub(crate) struct Uniform {
    buffer: wgpu::Buffer,
    offset: u64,
    size: u64,
}

impl Uniform {
    /// The binding of the slice.
    pub(crate) fn binding(&self) -> wgpu::BindingResource<'_> {
        wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer: &self.buffer,
            offset: self.offset,
            size: wgpu::BufferSize::new(self.size),
        })
    }
}

/// Validation and out-of-memory error scopes around one piece of work; wgpu's default would be
/// a panic in the uncaptured-error handler.
pub(crate) struct ErrorScopes {
    /// Empty in a browser: its scopes resolve only on a later turn of the event loop, after
    /// the work has gone on, so an error there is left to the uncaptured-error handler, which
    /// logs it, rather than caught by a scope whose answer nobody would read.
    guards: Vec<wgpu::ErrorScopeGuard>,
}

impl ErrorScopes {
    pub(crate) fn push(device: &wgpu::Device) -> Self {
        let filters: &[wgpu::ErrorFilter] = if cfg!(target_arch = "wasm32") {
            &[]
        } else {
            &[
                wgpu::ErrorFilter::Validation,
                wgpu::ErrorFilter::OutOfMemory,
            ]
        };
        ErrorScopes {
            guards: filters
                .iter()
                .map(|f| device.push_error_scope(*f))
                .collect(),
        }
    }

    /// Pops the scopes (innermost first) and turns a captured error into [`Error::Gpu`]; the
    /// out-of-memory one wins, as the likelier cause of a validation error after it.
    pub(crate) fn check(self, op: &'static str) -> Result<()> {
        let mut found = None;
        for guard in self.guards.into_iter().rev() {
            if let Some(e) = ready_now(guard.pop()).flatten() {
                found = Some(e);
            }
        }
        match found {
            Some(e) => Err(Error::Gpu {
                op,
                message: e.to_string(),
            }),
            None => Ok(()),
        }
    }
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

/// Splits `n` workgroups into a 2-D grid that respects the per-dimension limit; shaders
/// linearise with `workgroup_id.y * num_workgroups.x + workgroup_id.x`.
pub(crate) fn grid_2d(n: u32, max_per_dim: u32) -> [u32; 3] {
    if n <= max_per_dim {
        [n.max(1), 1, 1]
    } else {
        let y = n.div_ceil(max_per_dim);
        [n.div_ceil(y), y, 1]
    }
}

#[cfg(test)]
mod tests {
    use super::{compute_support, grid_2d};
    use wgpu::{Backend, DownlevelFlags};

    #[test]
    fn gl_contexts_below_4_3_or_es_3_1_have_no_compute() {
        let compute = DownlevelFlags::COMPUTE_SHADERS;
        // What GL drivers report as GL_VERSION (wgpu's driver_info on GL).
        for (info, runs) in [
            ("3.3.0 NVIDIA 550.54.14", false),
            ("4.2.0 NVIDIA 390.157", false),
            ("4.3.0 NVIDIA 550.54.14", true),
            ("4.6.0 NVIDIA 550.54.14", true),
            ("4.5 (Core Profile) Mesa 22.3.6", true),
            ("3.3 (Core Profile) Mesa 20.0.8", false),
            ("OpenGL ES 3.0 Mesa 22.3.6", false),
            ("OpenGL ES 3.1 Mesa 22.3.6", true),
            ("OpenGL ES 3.2 NVIDIA 550.54.14", true),
            ("OpenGL ES 3.0 (ANGLE 2.1.0)", false),
            ("", true),
        ] {
            let got = compute_support(Backend::Gl, compute, info);
            assert_eq!(got.is_ok(), runs, "{info:?}: {got:?}");
            if let Err(why) = got {
                assert!(
                    why.contains("GL 4.3 or GL ES 3.1") && why.contains(info),
                    "{why}"
                );
            }
        }
        // The version is a GL matter; the flag decides on every backend.
        assert!(compute_support(Backend::Vulkan, compute, "550.54.14").is_ok());
        let none = compute_support(Backend::Vulkan, DownlevelFlags::empty(), "");
        assert!(none.unwrap_err().contains("no compute shaders"));
        assert!(compute_support(Backend::Gl, DownlevelFlags::empty(), "4.6").is_err());
    }

    #[test]
    fn grid_covers_every_workgroup_within_limits() {
        for &(n, max) in &[
            (1, 65535),
            (65535, 65535),
            (65536, 65535),
            (1_000_000, 65535),
            (7, 3),
        ] {
            let [x, y, _] = grid_2d(n, max);
            assert!(x <= max && y <= max, "{n} {max} -> {x}x{y}");
            assert!(x as u64 * y as u64 >= n as u64);
        }
    }
}
