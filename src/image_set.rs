//! The pictures of a dataset: every JPEG and PNG under a folder, or every path in a list file,
//! in sorted order, and the shard of them one worker of many takes.

use std::path::{Component, Path, PathBuf};
use std::str::FromStr;

use crate::error::{Error, Result};

/// File name extensions taken from a folder (compared without regard to case).
pub const IMAGE_EXTENSIONS: [&str; 3] = ["jpg", "jpeg", "png"];

/// One picture of a set: where it is, and its path relative to the set's root, which names
/// its outputs.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ImageEntry {
    /// Relative to the set's root (the folder, or the list's common ancestor); the sort key.
    pub relative: PathBuf,
    /// The path to open.
    pub path: PathBuf,
}

impl AsRef<Path> for ImageEntry {
    /// The path to open.
    fn as_ref(&self) -> &Path {
        &self.path
    }
}

/// Pictures in sorted order, without repeats.
#[derive(Clone, Debug, Default)]
pub struct ImageSet {
    entries: Vec<ImageEntry>,
}

/// Worker `index` of `count`: it takes the pictures at positions `index`, `index + count`, ...
/// of the sorted set, so that `count` workers with no word between them cover it exactly once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    /// 0-based; less than `count`.
    pub index: usize,
    /// At least 1.
    pub count: usize,
}

impl FromStr for Shard {
    type Err = Error;

    /// Parses `K/N` with `0 <= K < N` (Slurm's `$SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT`
    /// for an array numbered from 0, or Kubernetes' `$JOB_COMPLETION_INDEX/<completions>`).
    fn from_str(s: &str) -> Result<Self> {
        let bad = |why: &str| {
            Error::invalid(
                "shard",
                format!(
                    "`{s}` {why}; write K/N with 0 <= K < N, e.g. 0/4 for the first of 4 workers"
                ),
            )
        };
        let (k, n) = s
            .split_once('/')
            .ok_or_else(|| bad("is not of the form K/N"))?;
        let k: usize = k.trim().parse().map_err(|_| bad("has no whole number K"))?;
        let n: usize = n.trim().parse().map_err(|_| bad("has no whole number N"))?;
        if n == 0 {
            return Err(bad("asks for 0 shards"));
        }
        if k >= n {
            return Err(bad("has K >= N (shards are numbered from 0)"));
        }
        Ok(Shard { index: k, count: n })
    }
}

impl Shard {
    /// Whether the picture at `position` of the sorted set is this worker's.
    pub fn takes(&self, position: usize) -> bool {
        position % self.count == self.index
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

fn file_error(path: &Path, message: impl Into<String>) -> Error {
    Error::File {
        path: path.display().to_string(),
        message: message.into(),
    }
}

/// Whether the name ends in one of [`IMAGE_EXTENSIONS`].
fn is_image_name(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| e.eq_ignore_ascii_case(x)))
}

impl ImageSet {
    /// Every file under `dir` (recursively, following links) whose name ends in `.jpg`,
    /// `.jpeg` or `.png`, whatever the case. Hidden files and folders (names starting with a
    /// dot) are left out. An unreadable folder inside is an error, not a silent gap.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            return Err(file_error(
                dir,
                "is not a folder; --images takes a folder of pictures or a text file listing them",
            ));
        }
        let mut entries = Vec::new();
        let walk = walkdir::WalkDir::new(dir)
            .follow_links(true)
            .into_iter()
            .filter_entry(|e| e.depth() == 0 || !e.file_name().to_string_lossy().starts_with('.'));
        for item in walk {
            let item = item.map_err(|e| {
                let at = e.path().unwrap_or(dir).to_path_buf();
                file_error(&at, format!("cannot list it: {e}"))
            })?;
            if item.file_type().is_file() && is_image_name(item.path()) {
                let relative = item
                    .path()
                    .strip_prefix(dir)
                    .unwrap_or(item.path())
                    .to_path_buf();
                entries.push(ImageEntry {
                    relative,
                    path: item.into_path(),
                });
            }
        }
        Ok(Self::from_entries(entries))
    }

    /// The paths in the text file `list`, one per line; blank lines and lines starting with
    /// `#` are skipped. A relative path is taken from the list's own folder. Outputs are named
    /// by each path relative to the deepest folder all of them share, so they never land
    /// outside the output folder.
    pub fn from_list(list: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(list)
            .map_err(|e| file_error(list, format!("cannot read the list of pictures: {e}")))?;
        let list = std::path::absolute(list)
            .map_err(|e| file_error(list, format!("cannot resolve its folder: {e}")))?;
        let base = list.parent().unwrap_or(Path::new("/"));
        let paths: Vec<PathBuf> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| lexical_normal(&base.join(l)))
            .collect();
        let root = common_ancestor(&paths);
        let entries = paths
            .into_iter()
            .map(|path| ImageEntry {
                relative: path.strip_prefix(&root).unwrap_or(&path).to_path_buf(),
                path,
            })
            .collect();
        Ok(Self::from_entries(entries))
    }

    /// A folder, or a list when `source` is a file.
    pub fn open(source: &Path) -> Result<Self> {
        if source.is_file() {
            Self::from_list(source)
        } else {
            Self::from_dir(source)
        }
    }

    /// A set of the given entries, sorted by their relative paths, repeats dropped.
    pub fn from_entries(mut entries: Vec<ImageEntry>) -> Self {
        entries.sort();
        entries.dedup_by(|a, b| a.relative == b.relative);
        ImageSet { entries }
    }

    /// The part of the set `shard` takes.
    pub fn shard(self, shard: Shard) -> Self {
        let entries = self
            .entries
            .into_iter()
            .enumerate()
            .filter(|(i, _)| shard.takes(*i))
            .map(|(_, e)| e)
            .collect();
        ImageSet { entries }
    }

    /// The pictures, in order.
    pub fn entries(&self) -> &[ImageEntry] {
        &self.entries
    }

    /// How many pictures the set holds.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the set holds none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The pictures, in order.
    pub fn into_entries(self) -> Vec<ImageEntry> {
        self.entries
    }
}

/// The absolute `path` with `.` dropped and each `..` taking back the folder before it (none
/// above the root), without touching the file system: links are not resolved, and a missing
/// file keeps a name to be reported by.
fn lexical_normal(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::CurDir => {}
            Component::ParentDir => {
                if matches!(out.components().next_back(), Some(Component::Normal(_))) {
                    out.pop();
                }
            }
            other => out.push(other),
        }
    }
    out
}

/// The deepest folder that holds every path (of a file, so a path itself never counts).
fn common_ancestor(paths: &[PathBuf]) -> PathBuf {
    let Some(first) = paths.first() else {
        return PathBuf::new();
    };
    let mut root: Vec<Component> = first.parent().map_or(vec![], |p| p.components().collect());
    for path in &paths[1..] {
        let parent: Vec<Component> = path.parent().map_or(vec![], |p| p.components().collect());
        let same = root.iter().zip(&parent).take_while(|(a, b)| a == b).count();
        root.truncate(same);
    }
    root.iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_parse_and_refuse() {
        assert_eq!(
            "2/5".parse::<Shard>().unwrap(),
            Shard { index: 2, count: 5 }
        );
        for bad in ["5/5", "1/0", "a/2", "3", "-1/2", "1/2/3"] {
            assert!(bad.parse::<Shard>().is_err(), "{bad}");
        }
    }

    #[test]
    fn shards_cover_the_set_once() {
        let entries: Vec<ImageEntry> = (0..10)
            .map(|i| ImageEntry {
                relative: format!("{i:02}.png").into(),
                path: format!("/d/{i:02}.png").into(),
            })
            .collect();
        let set = ImageSet::from_entries(entries.clone());
        let mut union: Vec<ImageEntry> = (0..3)
            .flat_map(|k| {
                set.clone()
                    .shard(Shard { index: k, count: 3 })
                    .into_entries()
            })
            .collect();
        union.sort();
        assert_eq!(union, entries);
        let first = set.shard(Shard { index: 0, count: 3 });
        let names: Vec<_> = first.entries().iter().map(|e| e.relative.clone()).collect();
        assert_eq!(
            names,
            ["00.png", "03.png", "06.png", "09.png"].map(PathBuf::from)
        );
    }

    #[test]
    fn list_names_are_relative_to_the_common_folder() {
        let paths = ["/data/a/x.jpg", "/data/b/c/y.png", "/data/a/../b/z.png"]
            .map(|p| lexical_normal(Path::new(p)));
        assert_eq!(paths[2], PathBuf::from("/data/b/z.png"));
        assert_eq!(common_ancestor(&paths), PathBuf::from("/data"));
        let far = [
            lexical_normal(Path::new("/lists/../../up/p.png")),
            lexical_normal(Path::new("/lists/q.png")),
        ];
        assert_eq!(far[0], PathBuf::from("/up/p.png"));
        assert_eq!(common_ancestor(&far), PathBuf::from("/"));
    }
}
