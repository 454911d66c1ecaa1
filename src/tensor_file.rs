//! Named host tensors in safetensors files: reading with dtype conversion, writing as float32 or
//! float16.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use safetensors::{Dtype, SafeTensors};

use crate::error::{Error, Result};
use crate::precision::Precision;

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

/// Parses a safetensors image, converting float16, bfloat16 and float64 tensors to float32.
/// Tensors for which `skip(name)` is true are left out whatever their dtype; any other
/// non-float tensor is an error naming it.
pub fn parse_tensors(bytes: &[u8], path: &Path, skip: impl Fn(&str) -> bool) -> Result<TensorMap> {
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
        let data = to_f32(view.dtype(), view.data()).ok_or_else(|| {
            file_error(
                path,
                format!(
                    "tensor `{name}` has dtype {:?}; only float32, float16, bfloat16 and float64 are supported",
                    view.dtype()
                ),
            )
        })?;
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

/// Reads a safetensors file; see [`parse_tensors`].
pub fn read_tensors(path: &Path, skip: impl Fn(&str) -> bool) -> Result<TensorMap> {
    let bytes = std::fs::read(path).map_err(|e| file_error(path, format!("cannot read: {e}")))?;
    parse_tensors(&bytes, path, skip)
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
