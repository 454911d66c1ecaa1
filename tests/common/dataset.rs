//! Folders of pictures for the folder-mode tests, and what a run left in its output folder.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use image::{ImageFormat, Rgb, RgbImage};

/// A picture that differs with `seed`.
pub fn picture(w: u32, h: u32, seed: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        Rgb([
            ((x * 7 + seed * 31) % 256) as u8,
            ((y * 5 + seed * 17) % 256) as u8,
            ((x * y + seed) % 256) as u8,
        ])
    })
}

/// Writes pictures at the given relative paths (JPEG or PNG by extension) under `dir`.
pub fn make_dataset(dir: &Path, names: &[&str], (w, h): (u32, u32)) {
    for (i, name) in names.iter().enumerate() {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let format = match name.ends_with(".png") {
            true => ImageFormat::Png,
            false => ImageFormat::Jpeg,
        };
        picture(w, h, i as u32)
            .save_with_format(&path, format)
            .unwrap();
    }
}

/// Every file under `dir` (relative path -> bytes).
pub fn files(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                let bytes = std::fs::read(&path).unwrap();
                out.insert(path.strip_prefix(root).unwrap().to_path_buf(), bytes);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// The files' relative paths, as strings.
pub fn names(files: &BTreeMap<PathBuf, Vec<u8>>) -> Vec<String> {
    files.keys().map(|p| p.display().to_string()).collect()
}
