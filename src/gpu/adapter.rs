//! What the crate reports about adapters, which backends `WGPU_BACKEND` asks for, and which
//! adapters the crate can run on and prefers.

use crate::error::{Error, Result};

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

/// The names `WGPU_BACKEND` takes, as wgpu reads them (any case, comma-separated), with the
/// backend each names. wgpu's testing backend `noop` is left out: it runs nothing.
const BACKEND_NAMES: &[(&str, wgpu::Backends)] = &[
    ("vulkan", wgpu::Backends::VULKAN),
    ("vk", wgpu::Backends::VULKAN),
    ("metal", wgpu::Backends::METAL),
    ("mtl", wgpu::Backends::METAL),
    ("dx12", wgpu::Backends::DX12),
    ("d3d12", wgpu::Backends::DX12),
    ("gl", wgpu::Backends::GL),
    ("gles", wgpu::Backends::GL),
    ("opengl", wgpu::Backends::GL),
    ("webgpu", wgpu::Backends::BROWSER_WEBGPU),
];

/// The main name of each backend in `backends`, for messages: `vulkan and gl`.
fn backend_names(backends: wgpu::Backends) -> String {
    let mut names: Vec<&str> = Vec::new();
    for &(name, b) in BACKEND_NAMES {
        if backends.contains(b) && !names.iter().any(|n| BACKEND_NAMES.contains(&(n, b))) {
            names.push(name);
        }
    }
    match names.split_last() {
        None => "none".to_string(),
        Some((last, [])) => last.to_string(),
        Some((last, rest)) => format!("{} and {last}", rest.join(", ")),
    }
}

/// The backends this build of wgpu has on this platform (Vulkan and GL on Linux, Metal on
/// macOS, DX12, Vulkan and GL on Windows, WebGPU in a browser).
pub fn platform_backends() -> wgpu::Backends {
    wgpu::Instance::enabled_backend_features() - wgpu::Backends::NOOP
}

/// The backends `WGPU_BACKEND` asks for; see [`requested_backends`].
pub fn backends_from_env() -> Result<wgpu::Backends> {
    requested_backends(
        std::env::var("WGPU_BACKEND").ok().as_deref(),
        platform_backends(),
    )
}

/// The backends a `WGPU_BACKEND` of `value` asks for, among the `available` ones. Read as wgpu
/// reads it (a comma-separated list of names, any case), but where wgpu would warn in a log
/// and then find no adapter, this says what is wrong:
/// - unset, or set to nothing (as a template with an unset variable writes it): every
///   available backend;
/// - a name that is no backend's: an error listing the names;
/// - only backends this platform lacks (Metal on Linux): an error naming those it has.
///
/// Names of missing backends beside one that exists are left out with a warning.
pub fn requested_backends(
    value: Option<&str>,
    available: wgpu::Backends,
) -> Result<wgpu::Backends> {
    let Some(value) = value.filter(|v| !v.trim().is_empty()) else {
        return Ok(available);
    };
    let error = |problem: String| Error::Backend {
        value: value.to_string(),
        problem,
    };
    let mut asked = wgpu::Backends::empty();
    for name in value.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let lower = name.to_lowercase();
        let Some(&(_, backend)) = BACKEND_NAMES.iter().find(|(n, _)| *n == lower) else {
            let names: Vec<String> = BACKEND_NAMES.iter().map(|(n, _)| n.to_string()).collect();
            return Err(error(format!(
                "names no backend: `{name}` is none of {} (any case, comma-separated); this \
                 build on {} has {}; or unset WGPU_BACKEND to search them all",
                names.join(", "),
                std::env::consts::OS,
                backend_names(available)
            )));
        };
        asked |= backend;
    }
    if asked.is_empty() {
        return Ok(available); // only separators: set to nothing, as good as unset
    }
    let missing = asked - available;
    if asked & available == wgpu::Backends::empty() {
        return Err(error(format!(
            "asks for {}, which wgpu does not have on {}: set WGPU_BACKEND to {} (what this \
             build has here), or unset it to search them all",
            backend_names(missing),
            std::env::consts::OS,
            backend_names(available).replace(" and ", " or ")
        )));
    }
    if !missing.is_empty() {
        log::warn!(
            "WGPU_BACKEND={value:?}: wgpu has no {} on {}; searching {}",
            backend_names(missing),
            std::env::consts::OS,
            backend_names(asked & available)
        );
    }
    Ok(asked & available)
}

/// What to do when no adapter was found among `backends`, for this platform.
pub(super) fn no_adapter_advice(backends: wgpu::Backends) -> String {
    let install = if cfg!(target_arch = "wasm32") {
        "use a browser with WebGPU enabled".to_string()
    } else if cfg!(target_os = "macos") {
        "Metal comes with macOS; a virtual machine or a CI runner may have no GPU to offer"
            .to_string()
    } else if cfg!(target_os = "windows") {
        "install or update the GPU driver (it brings DX12 and Vulkan)".to_string()
    } else if backends.contains(wgpu::Backends::VULKAN) {
        "install a GPU driver, or on a machine without a GPU Mesa's software Vulkan driver \
         (`apt-get install mesa-vulkan-drivers`)"
            .to_string()
    } else {
        "install a GPU driver, or on a machine without a GPU Mesa's software GL over EGL \
         (`apt-get install libegl-mesa0 libgl1-mesa-dri`)"
            .to_string()
    };
    let all = platform_backends();
    let env = if backends != all {
        format!(
            "; WGPU_BACKEND leaves {} out",
            backend_names(all - backends)
        )
    } else {
        String::new()
    };
    format!(
        "{install}{env}; WGPU_BACKEND and WGPU_ADAPTER_NAME choose among the adapters that exist"
    )
}

/// Every adapter wgpu sees among `backends`, hardware first.
pub async fn available_adapters_in(backends: wgpu::Backends) -> Vec<AdapterReport> {
    let mut descriptor = wgpu::InstanceDescriptor::new_without_display_handle();
    descriptor.backends = backends;
    let instance = wgpu::Instance::new(descriptor);
    let mut adapters = instance.enumerate_adapters(backends).await;
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

/// ` for WGPU_BACKEND=gl` when the variable restricts the search, for messages.
pub(super) fn backend_detail() -> String {
    match std::env::var("WGPU_BACKEND") {
        Ok(b) if !b.trim().is_empty() => format!(" for WGPU_BACKEND={b}"),
        _ => String::new(),
    }
}

/// The adapters of the backends `WGPU_BACKEND` asks for (every backend when it is unset or
/// empty), hardware first; an error when it names none (see [`requested_backends`]) or when
/// there is no adapter at all, saying what to do.
pub async fn requested_adapters() -> Result<Vec<AdapterReport>> {
    let backends = backends_from_env()?;
    let adapters = available_adapters_in(backends).await;
    if adapters.is_empty() {
        return Err(Error::NoAdapter {
            detail: backend_detail(),
            advice: no_adapter_advice(backends),
        });
    }
    Ok(adapters)
}

/// Every adapter wgpu sees on every backend (whatever `WGPU_BACKEND` says), hardware first.
pub async fn available_adapters() -> Vec<AdapterReport> {
    available_adapters_in(platform_backends()).await
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
    use super::{compute_support, no_adapter_advice, requested_backends};
    use wgpu::{Backend, Backends, DownlevelFlags};

    #[test]
    fn wgpu_backend_is_read_strictly_and_its_mistakes_named() {
        let linux = Backends::VULKAN | Backends::GL;
        let ask = |v: Option<&str>| requested_backends(v, linux).map_err(|e| e.to_string());
        // Unset and set-but-empty both mean every backend.
        assert_eq!(ask(None), Ok(linux));
        assert_eq!(ask(Some("")), Ok(linux));
        assert_eq!(ask(Some(" , ")), Ok(linux));
        assert_eq!(ask(Some("Vulkan")), Ok(Backends::VULKAN));
        assert_eq!(ask(Some("vk, GL")), Ok(linux));
        // One that exists beside one that does not: the one that exists.
        assert_eq!(ask(Some("metal,gl")), Ok(Backends::GL));
        let cuda = ask(Some("cuda")).unwrap_err();
        assert!(
            cuda.starts_with(
                "WGPU_BACKEND=\"cuda\" names no backend: `cuda` is none of vulkan, vk, metal"
            ) && cuda.contains("dx12")
                && cuda.contains("gl")
                && cuda.contains("has vulkan and gl"),
            "{cuda}"
        );
        assert!(ask(Some("vulkan,cuda"))
            .unwrap_err()
            .contains("`cuda` is none of"));
        let metal = ask(Some("metal")).unwrap_err();
        assert!(
            metal.contains("asks for metal, which wgpu does not have on")
                && metal.contains("set WGPU_BACKEND to vulkan or gl")
                && !metal.contains("mesa"),
            "{metal}"
        );
        assert!(ask(Some("dx12, metal"))
            .unwrap_err()
            .contains("asks for metal and dx12"));
    }

    #[test]
    fn advice_without_an_adapter_fits_the_backends_searched() {
        if cfg!(target_os = "linux") {
            let all = super::platform_backends();
            let advice = no_adapter_advice(all);
            assert!(advice.contains("mesa-vulkan-drivers"), "{advice}");
            assert!(!advice.contains("leaves"), "{advice}");
            let gl = no_adapter_advice(Backends::GL);
            assert!(
                gl.contains("libegl-mesa0") && !gl.contains("mesa-vulkan-drivers"),
                "{gl}"
            );
            assert!(gl.contains("WGPU_BACKEND leaves vulkan out"), "{gl}");
        }
    }

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
