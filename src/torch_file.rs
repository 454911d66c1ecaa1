//! PyTorch checkpoints and pickled numpy state_dicts, read without Python: `torch.save`'s zip
//! format (PyTorch 1.6 and later), its legacy format (before 1.6, or
//! `_use_new_zipfile_serialization=False`), and plain pickles such as detectron2's model-zoo
//! `.pkl` (a dict of numpy arrays).
//!
//! The pickles are read by [`crate::pickle`], which runs nothing and refuses any type a
//! state_dict is not made of. This module finds the storages each container keeps, the
//! state_dict inside the dicts training code wraps it in (`state_dict`, `model`, ...), and
//! each tensor's values: a strided view (offset, shape, strides) into a storage, which may be
//! shared with other tensors.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::io::Cursor;
use std::path::Path;

use safetensors::Dtype;

use crate::error::{Error, Result};
use crate::pickle::{
    self, element_size, Data, Id, Pickle, PickleError, Storages, TensorView, Value,
};
use crate::tensor_file::{convert, HostTensor, TensorMap};

/// What a weights file is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileFormat {
    /// safetensors.
    Safetensors,
    /// `torch.save`'s zip format (PyTorch 1.6 and later).
    TorchZip,
    /// `torch.save`'s legacy format (before 1.6, or `_use_new_zipfile_serialization=False`).
    TorchLegacy,
    /// A plain pickle, such as detectron2's model-zoo `.pkl` of numpy arrays.
    Pickle,
}

impl fmt::Display for FileFormat {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(match self {
            FileFormat::Safetensors => "a safetensors file",
            FileFormat::TorchZip => "a PyTorch zip checkpoint (torch.save)",
            FileFormat::TorchLegacy => {
                "a PyTorch legacy checkpoint (torch.save before PyTorch 1.6)"
            }
            FileFormat::Pickle => "a pickle (such as a detectron2 model-zoo .pkl)",
        })
    }
}

/// Where checkpoints that wrap their state_dict keep it, in the order they are looked for:
/// mmdetection (`{meta, state_dict}`) and most trainers, detectron2 (`{model, optimizer,
/// ...}` and its model-zoo `.pkl`), PyTorch's tutorials, Detectron's Caffe2 pickles.
pub const STATE_DICT_KEYS: &[&str] = &["state_dict", "model", "model_state_dict", "blobs"];

/// Elements that views larger than their storage (an `expand`, an overlapping `as_strided`)
/// may add, per file. Other tensors are bounded by the file's size; these are not, so a file
/// cannot ask for more memory than this past its own size.
const EXPANDED_ELEMENTS: usize = 1 << 24;

/// The legacy format's first pickle.
const LEGACY_MAGIC: i128 = 0x1950_a86a_20f9_469c_fc6c;
/// The legacy format's protocol version.
const LEGACY_PROTOCOL: i128 = 1001;

/// What to do about a checkpoint the reader refuses.
const SAVE_ADVICE: &str = "if you trust the file, load it in Python and save the state_dict \
    alone: safetensors.torch.save_file(model.state_dict(), \"model.safetensors\") (or \
    torch.save(model.state_dict(), \"model.pth\"))";

fn fail(path: &Path, format: FileFormat, message: impl fmt::Display) -> Error {
    Error::File {
        path: path.display().to_string(),
        message: format!("{format} {message}"),
    }
}

/// How a message goes on about the pickle of a file of `format`.
fn its_pickle(format: FileFormat) -> &'static str {
    match format {
        FileFormat::Pickle => "which",
        _ => "whose pickle",
    }
}

/// The message for a pickle the reader could not or would not read.
fn pickle_error(path: &Path, format: FileFormat, e: PickleError) -> Error {
    match e {
        PickleError::Refused(name) => {
            // A class (capitalised, or from a model library) means a pickled object, most
            // often a whole model; anything else is a function the pickle would have called.
            let class = name
                .rsplit('.')
                .next()
                .is_some_and(|n| n.starts_with(|c: char| c.is_ascii_uppercase()));
            let model_code = ["torch.nn.", "torchvision.", "__main__.", "__torch__."]
                .iter()
                .any(|p| name.starts_with(p));
            let what = if class || model_code {
                format!(
                    "`{name}`, a class only Python with its code can rebuild: the file holds an \
                     object, most often a whole model saved with torch.save(model); save \
                     model.state_dict() instead (torch.save(model.state_dict(), \"model.pth\"), \
                     or safetensors.torch.save_file(model.state_dict(), \"model.safetensors\"))"
                )
            } else {
                format!(
                    "`{name}`, which no state_dict holds: refused, and nothing in the file was \
                     run (only tensors, numpy arrays, numbers, text, and dicts, lists and tuples \
                     of them are rebuilt); {SAVE_ADVICE}"
                )
            };
            fail(path, format, format!("{} names {what}", its_pickle(format)))
        }
        PickleError::Malformed(what) => fail(
            path,
            format,
            format!(
                "{} cannot be read: it {what}; the file is damaged or truncated, or holds more \
                 than a state_dict (save it again, or {SAVE_ADVICE})",
                its_pickle(format)
            ),
        ),
    }
}

/// The tensors of a checkpoint, and the entry of the wrapping dict they came from.
pub(crate) struct Parsed {
    pub tensors: TensorMap,
    pub format: FileFormat,
    pub entry: Option<String>,
}

/// Reads a zip checkpoint.
pub(crate) fn parse_zip(bytes: &[u8], path: &Path, skip: &dyn Fn(&str) -> bool) -> Result<Parsed> {
    let format = FileFormat::TorchZip;
    let mut archive = zip::ZipArchive::new(Cursor::new(bytes)).map_err(|e| {
        fail(
            path,
            format,
            format!("that cannot be read as a zip archive ({e}); it is damaged or truncated"),
        )
    })?;
    let names: Vec<String> = archive.file_names().map(str::to_string).collect();
    // `torch.save` puts everything in one folder named after the file: `<name>/data.pkl`.
    let Some(root) = names
        .iter()
        .filter_map(|n| n.strip_suffix("data.pkl"))
        .find(|r| r.is_empty() || (r.ends_with('/') && r.matches('/').count() == 1))
        .map(str::to_string)
    else {
        let mut listed: Vec<&str> = names.iter().map(String::as_str).take(5).collect();
        if names.len() > 5 {
            listed.push("...");
        }
        return Err(Error::File {
            path: path.display().to_string(),
            message: format!(
                "a zip archive without `<name>/data.pkl`, so not a PyTorch checkpoint (it holds \
                 {}); weights are read from safetensors, a PyTorch .pth/.pt (torch.save) or a \
                 detectron2 .pkl",
                listed.join(", ")
            ),
        });
    };
    if names.contains(&format!("{root}constants.pkl"))
        || names.iter().any(|n| n.starts_with(&format!("{root}code/")))
    {
        return Err(Error::File {
            path: path.display().to_string(),
            message: "a TorchScript archive (torch.jit.save), not a checkpoint: its model is \
                      code, which only PyTorch runs; save its weights in Python: \
                      safetensors.torch.save_file(torch.jit.load(path).state_dict(), \
                      \"model.safetensors\")"
                .to_string(),
        });
    }
    let mut entry = |name: &str| stored_entry(&mut archive, bytes, name, path);
    if let Some(order) = entry(&format!("{root}byteorder"))? {
        if order.trim_ascii() != b"little" {
            return Err(fail(
                path,
                format,
                "saved on a big-endian machine, whose storages are not read; load and save it \
                 again on a little-endian one (x86, ARM)",
            ));
        }
    }
    let Some(data_pkl) = entry(&format!("{root}data.pkl"))? else {
        return Err(fail(path, format, "without its data.pkl"));
    };
    let (pickle, _) =
        pickle::parse(data_pkl, Storages::Allowed).map_err(|e| pickle_error(path, format, e))?;
    let mut storages: HashMap<String, &[u8]> = HashMap::new();
    for key in storage_keys(&pickle) {
        let name = format!("{root}data/{key}");
        match entry(&name)? {
            Some(data) => storages.insert(key, data),
            None => {
                return Err(fail(
                    path,
                    format,
                    format!("whose pickle refers to the storage `{key}`, which the archive lacks"),
                ))
            }
        };
    }
    let (state_dict, entry) = find_state_dict(&pickle, path, format)?;
    let tensors = tensors(&pickle, state_dict, &storages, path, format, skip)?;
    Ok(Parsed {
        tensors,
        format,
        entry,
    })
}

/// The bytes of the zip entry `name` (`None` if there is none): for a stored entry, the
/// file's own bytes, sliced rather than copied.
fn stored_entry<'a>(
    archive: &mut zip::ZipArchive<Cursor<&'a [u8]>>,
    bytes: &'a [u8],
    name: &str,
    path: &Path,
) -> Result<Option<&'a [u8]>> {
    let format = FileFormat::TorchZip;
    let file = match archive.by_name(name) {
        Ok(file) => file,
        Err(zip::result::ZipError::FileNotFound) => return Ok(None),
        Err(e) => {
            return Err(fail(
                path,
                format,
                format!("whose entry `{name}` cannot be read: {e}"),
            ))
        }
    };
    if file.compression() != zip::CompressionMethod::Stored {
        return Err(fail(
            path,
            format,
            format!(
                "whose entry `{name}` is compressed ({}), which torch.save never does: the \
                 archive was repacked; load and save it again with torch.save",
                file.compression()
            ),
        ));
    }
    let start = usize::try_from(file.data_start()).unwrap_or(usize::MAX);
    let size = usize::try_from(file.size()).unwrap_or(usize::MAX);
    let Some(data) = start
        .checked_add(size)
        .and_then(|end| bytes.get(start..end))
    else {
        return Err(fail(
            path,
            format,
            format!("whose entry `{name}` runs past the end of the file"),
        ));
    };
    // torch.save with CRC computation off stores 0.
    if file.crc32() != 0 && crc32fast::hash(data) != file.crc32() {
        return Err(fail(
            path,
            format,
            format!("whose entry `{name}` is damaged (its CRC-32 does not match)"),
        ));
    }
    Ok(Some(data))
}

/// Every storage key the pickle's tensors refer to.
fn storage_keys(pickle: &Pickle) -> Vec<String> {
    let mut keys: Vec<String> = pickle
        .values
        .iter()
        .filter_map(|v| match v {
            Value::Tensor(TensorView {
                data: Data::Storage { key, .. },
                ..
            }) => Some(key.clone()),
            _ => None,
        })
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

/// Reads a file that starts with a pickle: the legacy format (whose first pickle is its magic
/// number) or a plain pickle.
pub(crate) fn parse_pickles(
    bytes: &[u8],
    path: &Path,
    skip: &dyn Fn(&str) -> bool,
) -> Result<Parsed> {
    let (first, mut pos) = pickle::parse(bytes, Storages::Refused).map_err(|e| {
        // A plain pickle is one pickle; name it as such.
        pickle_error(path, FileFormat::Pickle, e)
    })?;
    if first.get(first.root) != &Value::Int(LEGACY_MAGIC) {
        let format = FileFormat::Pickle;
        let (state_dict, entry) = find_state_dict(&first, path, format)?;
        let tensors = tensors(&first, state_dict, &HashMap::new(), path, format, skip)?;
        return Ok(Parsed {
            tensors,
            format,
            entry,
        });
    }
    let format = FileFormat::TorchLegacy;
    let mut next = |storages: Storages| -> Result<Pickle> {
        let rest = bytes.get(pos..).unwrap_or_default();
        let (p, used) = pickle::parse(rest, storages).map_err(|e| pickle_error(path, format, e))?;
        pos += used;
        Ok(p)
    };
    let protocol = next(Storages::Refused)?;
    if protocol.get(protocol.root) != &Value::Int(LEGACY_PROTOCOL) {
        return Err(fail(
            path,
            format,
            format!(
                "of protocol {:?}; only {LEGACY_PROTOCOL} exists",
                protocol.get(protocol.root)
            ),
        ));
    }
    let sys_info = next(Storages::Refused)?;
    if let Some(little) = sys_info.lookup(sys_info.root, "little_endian") {
        if sys_info.get(little) == &Value::Bool(false) {
            return Err(fail(
                path,
                format,
                "saved on a big-endian machine, whose storages are not read; load and save it \
                 again on a little-endian one (x86, ARM)",
            ));
        }
    }
    let main = next(Storages::Allowed)?;
    let keys = next(Storages::Refused)?;
    let Value::List(key_ids) = keys.get(keys.root) else {
        return Err(fail(path, format, "whose storage key list is not a list"));
    };
    // Each storage's element type, from the persistent ids that named it.
    let mut dtypes: HashMap<String, Dtype> = HashMap::new();
    for v in &main.values {
        if let Value::Storage(s) = v {
            if let Some(other) = dtypes.insert(s.key.clone(), s.dtype) {
                if other != s.dtype {
                    return Err(fail(
                        path,
                        format,
                        format!("whose storage `{}` is named with two element types", s.key),
                    ));
                }
            }
        }
    }
    // Then each storage: its element count (int64) and its bytes, in the key list's order.
    let mut storages: HashMap<String, &[u8]> = HashMap::new();
    for &id in key_ids {
        let Some(key) = keys.text(id).map(Cow::into_owned) else {
            return Err(fail(
                path,
                format,
                "whose storage key list holds something not text",
            ));
        };
        let Some(dtype) = dtypes.get(&key) else {
            return Err(fail(
                path,
                format,
                format!("whose storage `{key}` is listed but never named by the pickle"),
            ));
        };
        let truncated = || {
            fail(
                path,
                format,
                format!("that ends inside storage `{key}`: the file is truncated"),
            )
        };
        let count = bytes
            .get(pos..pos + 8)
            .and_then(|b| b.try_into().ok())
            .map(i64::from_le_bytes)
            .ok_or_else(truncated)?;
        pos += 8;
        let len = usize::try_from(count)
            .ok()
            .and_then(|n| n.checked_mul(element_size(*dtype)))
            .ok_or_else(truncated)?;
        let data = pos
            .checked_add(len)
            .and_then(|end| bytes.get(pos..end))
            .ok_or_else(truncated)?;
        pos += len;
        storages.insert(key, data);
    }
    let (state_dict, entry) = find_state_dict(&main, path, format)?;
    let tensors = tensors(&main, state_dict, &storages, path, format, skip)?;
    Ok(Parsed {
        tensors,
        format,
        entry,
    })
}

/// Whether `id` is a dict of tensors by name (a state_dict).
fn is_state_dict(pickle: &Pickle, id: Id) -> bool {
    pickle.dict(id).is_some_and(|items| {
        items
            .iter()
            .all(|&(k, v)| pickle.text(k).is_some() && matches!(pickle.get(v), Value::Tensor(_)))
    })
}

/// The state_dict: the pickle itself, or the entry of the dict it is wrapped in (the first of
/// [`STATE_DICT_KEYS`] that holds one, else the only entry that does). The entry's key is
/// returned with it.
fn find_state_dict(
    pickle: &Pickle,
    path: &Path,
    format: FileFormat,
) -> Result<(Id, Option<String>)> {
    let root = pickle.root;
    if is_state_dict(pickle, root) {
        return Ok((root, None));
    }
    let Some(items) = pickle.dict(root) else {
        return Err(fail(
            path,
            format,
            format!(
                "that holds {}, not a state_dict (a dict of tensors by name); {SAVE_ADVICE}",
                pickle.describe(root)
            ),
        ));
    };
    let full = |id: Id| is_state_dict(pickle, id) && pickle.dict(id).is_some_and(|d| !d.is_empty());
    let chosen = STATE_DICT_KEYS
        .iter()
        .find_map(|key| {
            pickle
                .lookup(root, key)
                .filter(|&v| full(v))
                .map(|v| (v, key.to_string()))
        })
        .or_else(|| {
            let mut candidates = items.iter().filter(|&&(_, v)| full(v));
            match (candidates.next(), candidates.next()) {
                (Some(&(k, v)), None) => pickle.text(k).map(|k| (v, k.into_owned())),
                _ => None,
            }
        });
    if let Some((id, key)) = chosen {
        log::info!(
            "{}: the state_dict is the `{key}` entry of {format}; its other entries are left out",
            path.display()
        );
        return Ok((id, Some(key)));
    }
    let mut listed: Vec<String> = items
        .iter()
        .take(8)
        .map(|&(k, v)| {
            let key = pickle
                .text(k)
                .map_or_else(|| "?".to_string(), Cow::into_owned);
            format!("`{key}`: {}", pickle.describe(v))
        })
        .collect();
    if items.len() > 8 {
        listed.push(format!("and {} more", items.len() - 8));
    }
    Err(fail(
        path,
        format,
        format!(
            "that holds a dict ({}) and no state_dict: no entry is a dict of tensors by name \
             (looked for under {}); {SAVE_ADVICE}",
            listed.join(", "),
            STATE_DICT_KEYS
                .iter()
                .map(|k| format!("`{k}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    ))
}

/// The tensors of the state_dict `dict`, converted to float32; those `skip` names are left
/// out unread.
fn tensors(
    pickle: &Pickle,
    dict: Id,
    storages: &HashMap<String, &[u8]>,
    path: &Path,
    format: FileFormat,
    skip: &dyn Fn(&str) -> bool,
) -> Result<TensorMap> {
    let mut out = TensorMap::new();
    let mut expanded_left = EXPANDED_ELEMENTS;
    for &(k, v) in pickle.dict(dict).unwrap_or_default() {
        let (Some(name), Value::Tensor(view)) = (pickle.text(k), pickle.get(v)) else {
            continue; // checked by is_state_dict
        };
        if skip(&name) {
            continue;
        }
        let data: &[u8] = match &view.data {
            Data::Storage { key, .. } => storages.get(key).copied().ok_or_else(|| {
                fail(
                    path,
                    format,
                    format!("whose tensor `{name}` is in storage `{key}`, which the file lacks"),
                )
            })?,
            Data::Inline(id) => match pickle.get(*id) {
                Value::Bytes(b) => b,
                _ => &[],
            },
        };
        let bytes = gather(view, data, &mut expanded_left)
            .map_err(|e| fail(path, format, format!("whose tensor `{name}` {e}")))?;
        let values = convert(path, &name, view.dtype, &bytes)?;
        out.insert(
            name.into_owned(),
            HostTensor {
                shape: view.shape.clone(),
                data: values,
            },
        );
    }
    Ok(out)
}

/// The elements of a strided view, contiguous and little-endian. `expanded_left` is what is
/// left of [`EXPANDED_ELEMENTS`].
fn gather(
    view: &TensorView,
    storage: &[u8],
    expanded_left: &mut usize,
) -> std::result::Result<Vec<u8>, String> {
    let size = element_size(view.dtype);
    let available = storage.len() / size;
    let base = match &view.data {
        Data::Storage { base, .. } => *base,
        Data::Inline(_) => 0,
    };
    let numel = view
        .shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or_else(|| format!("has shape {:?}, too many elements", view.shape))?;
    if numel == 0 {
        return Ok(Vec::new());
    }
    let start = base
        .checked_add(view.offset)
        .ok_or("starts past any storage")?;
    let last = view
        .shape
        .iter()
        .zip(&view.strides)
        .try_fold(start, |acc, (&d, &s)| {
            acc.checked_add((d - 1).checked_mul(s)?)
        })
        .ok_or("reaches past any storage")?;
    if last >= available {
        return Err(format!(
            "(shape {:?}, strides {:?}, offset {start}) reaches element {last} of a storage of \
             {available}",
            view.shape, view.strides
        ));
    }
    if numel > available {
        // An expanded or overlapping view: more elements than its storage holds.
        if numel - available > *expanded_left {
            return Err(format!(
                "is a view of {numel} elements over a storage of {available} (an expand): more \
                 than this reader materialises; save it .contiguous()"
            ));
        }
        *expanded_left -= numel - available;
    }
    let mut out = Vec::with_capacity(numel * size);
    let rank = view.shape.len();
    let contiguous = (0..rank).all(|i| {
        view.shape[i] == 1 || view.strides[i] == view.shape[i + 1..].iter().product::<usize>()
    });
    if contiguous {
        out.extend_from_slice(&storage[start * size..(start + numel) * size]);
    } else {
        // An odometer over the indices, last dimension fastest. Every offset it reaches was
        // bounded by `last` above; a dimension of size 1 never moves, so its stride (which
        // `last` does not bound) is left out.
        let strides: Vec<usize> = (0..rank)
            .map(|d| {
                if view.shape[d] == 1 {
                    0
                } else {
                    view.strides[d]
                }
            })
            .collect();
        let mut index = vec![0usize; rank];
        let mut at = start;
        for _ in 0..numel {
            out.extend_from_slice(&storage[at * size..(at + 1) * size]);
            for d in (0..rank).rev() {
                index[d] += 1;
                at += strides[d];
                if index[d] < view.shape[d] {
                    break;
                }
                at -= strides[d] * view.shape[d];
                index[d] = 0;
            }
        }
    }
    if view.big_endian {
        for element in out.chunks_exact_mut(size) {
            element.reverse();
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(shape: Vec<usize>, strides: Vec<usize>, offset: usize) -> TensorView {
        TensorView {
            data: Data::Inline(0),
            dtype: Dtype::U8,
            big_endian: false,
            offset,
            shape,
            strides,
        }
    }

    #[test]
    fn strided_views_gather_their_elements_in_order() {
        let storage: Vec<u8> = (0..24).collect();
        let mut budget = EXPANDED_ELEMENTS;
        // A transpose of a 3x4 matrix, from offset 1.
        let t = gather(&view(vec![4, 3], vec![1, 4], 1), &storage, &mut budget).unwrap();
        assert_eq!(t, [1, 5, 9, 2, 6, 10, 3, 7, 11, 4, 8, 12]);
        // Contiguous, with a size-1 dimension of any stride.
        let c = gather(
            &view(vec![2, 1, 3], vec![3, 99, 1], 5),
            &storage,
            &mut budget,
        )
        .unwrap();
        assert_eq!(c, [5, 6, 7, 8, 9, 10]);
        // Not contiguous, with a size-1 dimension of a stride no storage could hold.
        let n = gather(
            &view(vec![2, 1, 2], vec![1, usize::MAX, 4], 0),
            &storage,
            &mut budget,
        );
        assert_eq!(n.unwrap(), [0, 4, 1, 5]);
        // An expand: stride 0.
        let e = gather(&view(vec![3, 2], vec![0, 1], 0), &storage[..2], &mut budget).unwrap();
        assert_eq!(e, [0, 1, 0, 1, 0, 1]);
        assert_eq!(budget, EXPANDED_ELEMENTS - 4);
        // Past the end, and too large an expand.
        assert!(gather(&view(vec![4, 6], vec![6, 1], 1), &storage, &mut budget).is_err());
        let mut small = 3;
        assert!(gather(&view(vec![3, 2], vec![0, 1], 0), &storage[..2], &mut small).is_err());
        // Empty.
        assert!(
            gather(&view(vec![0, 5], vec![5, 1], 999), &storage, &mut budget)
                .unwrap()
                .is_empty()
        );
    }
}
