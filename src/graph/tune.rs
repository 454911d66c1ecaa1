//! Tuning at plan time: for each convolution of a plan, a few kernel configurations (block,
//! split-K) are timed with timestamp queries on the user's own device and the fastest is kept,
//! remembered in a cache file per adapter, driver, shape and precision so that a later process
//! starts with it.
//!
//! [`Tuning`] says how much of that happens: the presets of
//! [`strategy`](crate::kernels::conv2d::strategy) alone (deterministic), the cache's choices where
//! it has them, or timing what the cache lacks. Adapters without timestamp queries (GL,
//! browsers) always get the presets.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::error::{Error, Result};
use crate::gpu::{Dispatch, GpuContext};
use crate::kernels::conv2d::ConvChoice;

/// `off`, `cache` or `full`: overrides [`Tuning::Auto`] (the default of
/// `FpnOptions`).
pub const TUNE_ENV: &str = "FPN_TUNE";

/// The tuning cache file to use instead of `fpn-wgpu/tuning.json` in the platform's cache
/// directory.
pub const TUNE_CACHE_ENV: &str = "FPN_TUNE_CACHE";

/// Wall time a plan may spend on tuning (building candidate pipelines, timing them) before the
/// rest of its convolutions keep their presets: the first forward at 1x3x600x900 on a GPU must
/// stay within 1.5 s of today's.
pub const TUNE_BUDGET_S: f64 = 1.0;

/// How the executor picks each convolution's kernel configuration.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Tuning {
    /// [`TUNE_ENV`] if set; otherwise [`Tuning::Full`] on GPUs with timestamp queries and
    /// [`Tuning::Off`] on CPU adapters (where timing a candidate takes as long as a forward).
    #[default]
    Auto,
    /// The presets: deterministic, nothing read or written.
    Off,
    /// The cache's choices where it has them, presets for the rest; nothing timed.
    Cache,
    /// The cache's choices where it has them; the rest timed on the device (within
    /// [`TUNE_BUDGET_S`]) and added to the cache.
    Full,
}

impl std::str::FromStr for Tuning {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Tuning::Auto),
            "off" | "0" => Ok(Tuning::Off),
            "cache" => Ok(Tuning::Cache),
            "full" | "1" => Ok(Tuning::Full),
            other => Err(format!(
                "unknown tuning mode {other:?}: use off, cache, full or auto"
            )),
        }
    }
}

impl Tuning {
    /// What this mode means on `ctx`'s device: `Auto` resolved, and `Off` where the device
    /// cannot time kernels.
    pub fn resolve(self, ctx: &GpuContext) -> Tuning {
        // Tuning waits for the GPU, which a browser's event loop cannot.
        if cfg!(target_arch = "wasm32") {
            return Tuning::Off;
        }
        let mode = match self {
            Tuning::Auto => match std::env::var(TUNE_ENV) {
                Ok(v) => match v.parse::<Tuning>() {
                    Ok(Tuning::Auto) | Err(_) => {
                        log::warn!(
                            "{TUNE_ENV}={v:?} is not off, cache or full; tuning as by default"
                        );
                        Self::default_for(ctx)
                    }
                    Ok(mode) => mode,
                },
                Err(_) => Self::default_for(ctx),
            },
            mode => mode,
        };
        if mode == Tuning::Full && !ctx.supports_timestamps() {
            return Tuning::Cache;
        }
        mode
    }

    fn default_for(ctx: &GpuContext) -> Tuning {
        if ctx.adapter().device_type == wgpu::DeviceType::Cpu || !ctx.supports_timestamps() {
            Tuning::Off
        } else {
            Tuning::Full
        }
    }
}

/// Where a convolution's configuration came from, as reports show it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The selection's preset.
    Preset,
    /// The tuning cache.
    Cache,
    /// Timed on this device in this process.
    Tuned,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Source::Preset => "preset",
            Source::Cache => "from the tuning cache",
            Source::Tuned => "tuned",
        })
    }
}

/// The cache file's first field, so that another program's JSON is not taken for one.
const FORMAT: &str = "fpn-wgpu tuning cache";
/// Bumped whenever the kernels change what a cached choice means.
const VERSION: u32 = 2;

/// The tuning cache: choices' codes ([`ConvChoice::code`]) by the key of their convolution
/// ([`crate::kernels::conv2d::strategy::tune_key`]), kept in a JSON file.
#[derive(Debug, Default)]
pub(crate) struct TuneCache {
    path: Option<PathBuf>,
    entries: BTreeMap<String, String>,
}

/// The cache file to use: [`TUNE_CACHE_ENV`], else the platform's cache directory.
pub fn cache_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(TUNE_CACHE_ENV) {
        return Some(PathBuf::from(p));
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        dirs::cache_dir().map(|d| d.join("fpn-wgpu").join("tuning.json"))
    }
    #[cfg(target_arch = "wasm32")]
    {
        None
    }
}

impl TuneCache {
    /// Reads the cache at [`cache_path`]. A missing file is an empty cache; an unreadable,
    /// corrupt or foreign one is ignored with a warning (and replaced when the cache is saved).
    pub(crate) fn load() -> Self {
        let path = cache_path();
        let entries = path.as_ref().map(read_entries).unwrap_or_default();
        TuneCache { path, entries }
    }

    /// The cached choice for `key`, if any and if it is one of `allowed`.
    pub(crate) fn get(&self, key: &str, allowed: &[ConvChoice]) -> Option<ConvChoice> {
        let code = self.entries.get(key)?;
        allowed.iter().find(|c| c.code() == *code).copied()
    }

    /// Records `choice` for `key` (saved by [`TuneCache::save`]).
    pub(crate) fn insert(&mut self, key: String, choice: ConvChoice) {
        self.entries.insert(key, choice.code());
    }

    /// Writes the cache: merged with what another process may have saved meanwhile, atomically
    /// ([`crate::atomic_file`]: a temporary file of a unique name renamed over the old one), so
    /// that a reader never sees half a file.
    pub(crate) fn save(&self) -> Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let mut entries = read_entries(path);
        entries.extend(self.entries.iter().map(|(k, v)| (k.clone(), v.clone())));
        let json = serde_json::json!({
            "format": FORMAT,
            "version": VERSION,
            "entries": entries,
        });
        crate::atomic_file::write(path, json.to_string().as_bytes()).map_err(|e| match e {
            Error::File { path, message } => Error::File {
                path,
                message: format!(
                    "{message}; the tuning cache was not saved (set {TUNE_CACHE_ENV} to a \
                     writable file, or {TUNE_ENV}=off)"
                ),
            },
            other => other,
        })
    }
}

/// The entries of the cache file at `path`: empty, with a warning, when it is not one.
fn read_entries(path: &PathBuf) -> BTreeMap<String, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return BTreeMap::new(),
        Err(e) => {
            log::warn!("ignoring the tuning cache {}: {e}", path.display());
            return BTreeMap::new();
        }
    };
    let parsed: std::result::Result<serde_json::Value, _> = serde_json::from_str(&text);
    let entries = parsed.ok().and_then(|v| {
        (v.get("format")?.as_str()? == FORMAT && v.get("version")?.as_u64()? == VERSION as u64)
            .then_some(())?;
        let map = v.get("entries")?.as_object()?;
        Some(
            map.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect::<BTreeMap<_, _>>(),
        )
    });
    entries.unwrap_or_else(|| {
        log::warn!(
            "ignoring the tuning cache {}: not an fpn-wgpu tuning cache of version {VERSION} (it is replaced when tuning results are saved)",
            path.display()
        );
        BTreeMap::new()
    })
}

/// Launches of each repetition timed per candidate: the first run of a candidate also pays
/// for cold caches, so the time kept is the whole pass's over the repetitions.
#[cfg(not(target_arch = "wasm32"))]
const REPEATS: usize = 3;

/// The configurations of one convolution shape to time, each with its prepared launches (the
/// preset first).
pub(crate) type Trial = Vec<(ConvChoice, Vec<Dispatch>)>;

/// Times each candidate of `trial` (a compute pass with timestamps around its repeated
/// launches, all in one submit of their own, so that a long trial cannot hold the GPU for the
/// whole plan) and returns the fastest with its seconds per run; `None` without candidates.
#[cfg(not(target_arch = "wasm32"))]
pub(crate) fn time_trial(ctx: &GpuContext, trial: &Trial) -> Result<Option<(ConvChoice, f64)>> {
    if trial.is_empty() {
        return Ok(None);
    }
    let count = 2 * trial.len() as u32;
    let device = ctx.device();
    let scopes = crate::gpu::ErrorScopes::push(device);
    let queries = device.create_query_set(&wgpu::QuerySetDescriptor {
        label: Some("tuning timestamps"),
        ty: wgpu::QueryType::Timestamp,
        count,
    });
    let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
        label: Some("tuning"),
    });
    for (q, (_, launches)) in (0u32..).step_by(2).zip(trial) {
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("tuning candidate"),
            timestamp_writes: Some(wgpu::ComputePassTimestampWrites {
                query_set: &queries,
                beginning_of_pass_write_index: Some(q),
                end_of_pass_write_index: Some(q + 1),
            }),
        });
        for _ in 0..REPEATS {
            for d in launches {
                d.record(&mut pass);
            }
        }
    }
    ctx.queue().submit([encoder.finish()]);
    scopes.check("tuning")?;
    let (ticks, period_s) = pollster::block_on(ctx.read_timestamps(&queries, count))?;
    let mut fastest: Option<(ConvChoice, f64)> = None;
    for (i, (choice, _)) in trial.iter().enumerate() {
        let secs = ticks[2 * i + 1].saturating_sub(ticks[2 * i]) as f64 * period_s / REPEATS as f64;
        // Ties (a timer too coarse to tell) keep the earlier candidate: the preset.
        if fastest.is_none_or(|(_, t)| secs < t) {
            fastest = Some((*choice, secs));
        }
    }
    Ok(fastest)
}

/// Browsers have no blocking wait: tuning is off there ([`Tuning::resolve`]).
#[cfg(target_arch = "wasm32")]
pub(crate) fn time_trial(_ctx: &GpuContext, _trial: &Trial) -> Result<Option<(ConvChoice, f64)>> {
    Ok(None)
}
