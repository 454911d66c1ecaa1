//! Files written whole or not at all: the bytes go to a temporary file in the target's folder,
//! which is then renamed over the target. A reader, or a rerun after a crash, sees the old file
//! or the new one, never half of one.

use std::io::Write;
use std::path::Path;

use crate::error::{Error, Result};

/// Writes `bytes` to `path` atomically, creating the folders above it.
pub fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    let io = |what: &str, e: std::io::Error| Error::File {
        path: path.display().to_string(),
        message: format!("cannot {what}: {e}"),
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir).map_err(|e| io("create its folder", e))?;
    write_in(dir, path, bytes).map_err(|e| io("write", e))
}

#[cfg(not(target_arch = "wasm32"))]
fn write_in(dir: &Path, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    // Dot-named, so that a folder walk for pictures passes over one left by a killed process.
    let mut tmp = tempfile::Builder::new()
        .prefix(".fpn-partial-")
        .tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_data()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(target_arch = "wasm32")]
fn write_in(_dir: &Path, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::File::create(path)?.write_all(bytes)
}
