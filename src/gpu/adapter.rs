//! What the crate reports about adapters, and which of them it can run on and prefers.

/// The adapter's cooperative-matrix configurations, e.g. `16x16x16 f16->f32`.
pub(super) fn cooperative_matrix_configs(adapter: &wgpu::Adapter) -> Vec<String> {
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
    pub(super) fn from_info(info: &wgpu::AdapterInfo) -> Self {
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

pub(super) fn adapter_compute(adapter: &wgpu::Adapter) -> std::result::Result<(), String> {
    let info = adapter.get_info();
    compute_support(
        info.backend,
        adapter.get_downlevel_capabilities().flags,
        &info.driver_info,
    )
}

/// Ranks adapters: hardware before software, native backends before GL.
pub(super) fn adapter_rank(info: &wgpu::AdapterInfo) -> (u8, u8) {
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

#[cfg(test)]
mod tests {
    use super::compute_support;
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
}
