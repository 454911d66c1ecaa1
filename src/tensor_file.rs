//! Named host tensors in files: reading weights from safetensors, PyTorch checkpoints (`.pth`,
//! `.pt`) and detectron2 pickles (`.pkl`), told apart by their content, with dtype conversion;
//! writing safetensors as float32 or float16.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use safetensors::{Dtype, SafeTensors};

use crate::error::{Error, Result};
use crate::precision::Precision;
pub use crate::torch_file::{FileFormat, STATE_DICT_KEYS};

/// A tensor in host memory: its shape and float32 data in row-major order.
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    /// The dimensions, outermost first.
    pub shape: Vec<usize>,
    /// The values; as many as the shape's product.
    pub data: Vec<f32>,
}

impl HostTensor {
    /// A tensor of `shape` holding `data`; the lengths must agree.
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Result<Self> {
        let n: usize = shape.iter().product();
        if n != data.len() {
            return Err(Error::invalid(
                "HostTensor::new",
                format!(
                    "shape {shape:?} holds {n} values but {} were given",
                    data.len()
                ),
            ));
        }
        Ok(HostTensor { shape, data })
    }

    /// The shape as NCHW, or an error naming the tensor when it is not rank 4.
    pub fn nchw(&self, name: &str) -> Result<[usize; 4]> {
        <[usize; 4]>::try_from(self.shape.as_slice()).map_err(|_| {
            Error::invalid(
                "tensor file",
                format!(
                    "tensor `{name}` has shape {:?} (rank {}); an NCHW tensor of rank 4 is needed",
                    self.shape,
                    self.shape.len()
                ),
            )
        })
    }
}

/// Tensors by name, in name order.
pub type TensorMap = BTreeMap<String, HostTensor>;

fn file_error(path: &Path, message: impl Into<String>) -> Error {
    Error::File {
        path: path.display().to_string(),
        message: message.into(),
    }
}

/// Converts one stored tensor to f32, or returns `None` for a dtype that holds no weights.
fn to_f32(dtype: Dtype, bytes: &[u8]) -> Option<Vec<f32>> {
    // Stored little-endian; the chunks are exact, so the conversions cannot fail.
    let le = |n: usize| bytes.chunks_exact(n);
    Some(match dtype {
        Dtype::F32 => le(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Dtype::F64 => le(8)
            .map(|b| f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32)
            .collect(),
        Dtype::F16 => le(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::BF16 => le(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        _ => return None,
    })
}

/// Converts the stored tensor `name` to float32, or says which dtype it has that holds no
/// weights.
pub(crate) fn convert(path: &Path, name: &str, dtype: Dtype, bytes: &[u8]) -> Result<Vec<f32>> {
    to_f32(dtype, bytes).ok_or_else(|| {
        file_error(
            path,
            format!(
                "tensor `{name}` has dtype {dtype:?}; only float32, float16, bfloat16 and \
                 float64 are supported"
            ),
        )
    })
}

/// The first name that appears twice among the header's top-level keys, if any. JSON allows
/// repeated keys; a map keeps one of them, so they are counted before any map is built.
fn repeated_name(header: &[u8]) -> Option<String> {
    struct Keys(Option<String>);
    impl<'de> serde::Deserialize<'de> for Keys {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct Visitor;
            impl<'de> serde::de::Visitor<'de> for Visitor {
                type Value = Keys;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("a JSON object")
                }
                fn visit_map<A: serde::de::MapAccess<'de>>(
                    self,
                    mut map: A,
                ) -> Result<Keys, A::Error> {
                    let mut seen = std::collections::HashSet::new();
                    while let Some(key) = map.next_key::<String>()? {
                        map.next_value::<serde::de::IgnoredAny>()?;
                        if !seen.insert(key.clone()) {
                            return Ok(Keys(Some(key)));
                        }
                    }
                    Ok(Keys(None))
                }
            }
            d.deserialize_map(Visitor)
        }
    }
    serde_json::from_slice::<Keys>(header)
        .ok()
        .and_then(|k| k.0)
}

/// A weights file read: its tensors, what the file is, and the entry of the dict that wrapped
/// the state_dict, if one did (`state_dict` in an mmdetection checkpoint, `model` in
/// detectron2's).
#[derive(Clone, Debug)]
pub struct TensorFile {
    /// The tensors, converted to float32.
    pub tensors: TensorMap,
    /// What the file is.
    pub format: FileFormat,
    /// The key of the wrapping dict's entry the state_dict was taken from.
    pub entry: Option<String>,
}

impl TensorFile {
    /// What was read, for messages: `a PyTorch zip checkpoint (torch.save), its `state_dict`
    /// entry`.
    pub fn describe(&self) -> String {
        match &self.entry {
            Some(key) => format!("{}, its `{key}` entry", self.format),
            None => self.format.to_string(),
        }
    }
}

/// What the first bytes say a file is.
enum Sniffed {
    Safetensors,
    Zip,
    Pickle,
    /// Something else, in words.
    Other(String),
}

fn sniff(bytes: &[u8]) -> Sniffed {
    // safetensors: an 8-byte little-endian header length, then the JSON header. Checked first
    // and strictly, since a header length can start with any byte.
    let header = bytes
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])));
    let json = bytes.get(8) == Some(&b'{');
    if json && header.is_some_and(|n| n <= bytes.len() as u64 - 8) {
        return Sniffed::Safetensors;
    }
    if bytes.starts_with(b"PK\x03\x04") || bytes.starts_with(b"PK\x05\x06") {
        return Sniffed::Zip;
    }
    // A pickle of protocol 2 to 5 starts with PROTO; torch.save writes 2 unless told.
    if let [0x80, 2..=5, op, ..] = bytes {
        if *op != 0 {
            return Sniffed::Pickle;
        }
    }
    if json {
        return Sniffed::Safetensors; // a damaged one: its parser says how
    }
    let what = if bytes.is_empty() {
        "the file is empty".to_string()
    } else if bytes.starts_with(b"\x89PNG") {
        "it is a PNG picture".to_string()
    } else if bytes.starts_with(b"\xff\xd8\xff") {
        "it is a JPEG picture".to_string()
    } else if bytes.starts_with(b"\x1f\x8b") {
        "it is gzip-compressed: decompress it first".to_string()
    } else if bytes.starts_with(b"\x89HDF") {
        "it is an HDF5 file (Keras or TensorFlow weights)".to_string()
    } else if bytes.get(257..262) == Some(b"ustar") {
        "it is a tar archive (PyTorch's format before 0.1.10 was one: load and save it again \
         with a current torch.save)"
            .to_string()
    } else if let [0x80, p, ..] = bytes {
        format!("it looks like a pickle of protocol {p}, which Python does not write")
    } else {
        let head: Vec<String> = bytes.iter().take(8).map(|b| format!("{b:02x}")).collect();
        format!("it starts with the bytes {}", head.join(" "))
    };
    Sniffed::Other(what)
}

/// Parses a weights file of any format this crate reads, told apart by its content:
/// safetensors, a PyTorch checkpoint (`torch.save`: zip, or the legacy format) or a pickle of
/// numpy arrays (detectron2's `.pkl`). A checkpoint that wraps its state_dict in a dict has it
/// taken from its entry (see [`STATE_DICT_KEYS`]). Float16, bfloat16 and float64 tensors are
/// converted to float32. Tensors for which `skip(name)` is true are left out whatever their
/// dtype; any other non-float tensor is an error naming it. Pickles are read without running
/// anything they name: anything but tensors, numpy arrays and plain data is refused.
pub fn parse_file(bytes: &[u8], path: &Path, skip: impl Fn(&str) -> bool) -> Result<TensorFile> {
    let parsed = match sniff(bytes) {
        Sniffed::Safetensors => {
            return Ok(TensorFile {
                tensors: parse_safetensors(bytes, path, &skip)?,
                format: FileFormat::Safetensors,
                entry: None,
            })
        }
        Sniffed::Zip => crate::torch_file::parse_zip(bytes, path, &skip)?,
        Sniffed::Pickle => crate::torch_file::parse_pickles(bytes, path, &skip)?,
        Sniffed::Other(what) => {
            // The name says what the file was meant to be; the content, what it is.
            let named = path.extension().and_then(|e| e.to_str());
            let lead = match named {
                Some("safetensors") => {
                    "not a valid safetensors file (which starts with an \
                                        8-byte header length, then its JSON header)"
                }
                _ => "not a checkpoint",
            };
            return Err(file_error(
                path,
                format!(
                    "{lead}: {what}; weights are read from safetensors, a PyTorch .pth/.pt \
                     (torch.save) or a detectron2 .pkl"
                ),
            ));
        }
    };
    Ok(TensorFile {
        tensors: parsed.tensors,
        format: parsed.format,
        entry: parsed.entry,
    })
}

/// Parses a weights file's tensors; see [`parse_file`].
pub fn parse_tensors(bytes: &[u8], path: &Path, skip: impl Fn(&str) -> bool) -> Result<TensorMap> {
    parse_file(bytes, path, skip).map(|f| f.tensors)
}

/// Parses a safetensors image.
fn parse_safetensors(bytes: &[u8], path: &Path, skip: &dyn Fn(&str) -> bool) -> Result<TensorMap> {
    let st = SafeTensors::deserialize(bytes)
        .map_err(|e| file_error(path, format!("not a valid safetensors file: {e}")))?;
    // The parse above has checked that the header length fits the file.
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap_or([0; 8])) as usize;
    if let Some(name) = repeated_name(&bytes[8..8 + header_len]) {
        return Err(file_error(
            path,
            format!("not a valid safetensors file: the tensor name `{name}` appears twice"),
        ));
    }
    let mut out = TensorMap::new();
    for (name, view) in st.iter() {
        if skip(name) {
            continue;
        }
        let data = convert(path, name, view.dtype(), view.data())?;
        out.insert(
            name.to_string(),
            HostTensor {
                shape: view.shape().to_vec(),
                data,
            },
        );
    }
    Ok(out)
}

/// Reads a weights file of any format; see [`parse_file`].
pub fn read_file(path: &Path, skip: impl Fn(&str) -> bool) -> Result<TensorFile> {
    let bytes = std::fs::read(path).map_err(|e| file_error(path, format!("cannot read: {e}")))?;
    parse_file(&bytes, path, skip)
}

/// Reads a weights file's tensors; see [`parse_file`].
pub fn read_tensors(path: &Path, skip: impl Fn(&str) -> bool) -> Result<TensorMap> {
    read_file(path, skip).map(|f| f.tensors)
}

/// Writes tensors as float32 safetensors; see [`write_tensors_as`].
pub fn write_tensors<'a>(
    path: &Path,
    tensors: impl IntoIterator<Item = (&'a str, &'a HostTensor)>,
) -> Result<()> {
    write_tensors_as(path, tensors, Precision::F32, None)
}

/// Writes tensors as safetensors stored as `precision` (float32, or float16 rounded to
/// nearest), with `metadata` in the header when given. The file is written atomically (see
/// [`crate::atomic_file`]).
pub fn write_tensors_as<'a>(
    path: &Path,
    tensors: impl IntoIterator<Item = (&'a str, &'a HostTensor)>,
    precision: Precision,
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    let dtype = match precision {
        Precision::F32 => Dtype::F32,
        Precision::F16 => Dtype::F16,
    };
    let encode = |values: &'a [f32]| -> Cow<'a, [u8]> {
        match precision {
            Precision::F32 => Cow::Borrowed(bytemuck::cast_slice(values)),
            Precision::F16 => values
                .iter()
                .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                .collect(),
        }
    };
    let encoded: Vec<(&str, &HostTensor, Cow<[u8]>)> = tensors
        .into_iter()
        .map(|(name, t)| (name, t, encode(&t.data)))
        .collect();
    let views = encoded
        .iter()
        .map(|(name, t, bytes)| {
            safetensors::tensor::TensorView::new(dtype, t.shape.clone(), bytes)
                .map(|v| (*name, v))
                .map_err(|e| file_error(path, format!("tensor `{name}`: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let bytes = safetensors::serialize(views, metadata)
        .map_err(|e| file_error(path, format!("cannot write: {e}")))?;
    crate::atomic_file::write(path, &bytes)
}
