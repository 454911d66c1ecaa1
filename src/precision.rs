//! The floating-point format tensors are stored in.

use std::fmt;
use std::str::FromStr;

/// How a tensor's elements (and a network's activations and weights) are stored. Arithmetic is
/// always float32: a half-precision kernel converts on load and rounds once on store.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Precision {
    /// float32: matches PyTorch's float32 to about 1e-6.
    #[default]
    F32,
    /// float16 storage, float32 accumulation: half the memory traffic and weight bytes, about
    /// 1e-3 of relative error. Needs an adapter with `SHADER_F16`.
    F16,
}

impl Precision {
    /// Bytes per element.
    pub fn bytes(self) -> u64 {
        match self {
            Precision::F32 => 4,
            Precision::F16 => 2,
        }
    }

    /// The WGSL extension this precision needs, if any (directives come first in a module).
    pub fn wgsl_enable(self) -> &'static str {
        match self {
            Precision::F32 => "",
            Precision::F16 => "enable f16;\n",
        }
    }

    /// The declaration every kernel module makes after its directives: `act`, the storage type
    /// of activations and weights, which the kernels convert to and from f32.
    pub fn wgsl_alias(self) -> &'static str {
        match self {
            Precision::F32 => "alias act = f32;\n",
            Precision::F16 => "alias act = f16;\n",
        }
    }

    /// Every precision, in order.
    pub const ALL: [Precision; 2] = [Precision::F32, Precision::F16];

    /// Converts host floats to this precision's bytes (round to nearest even for f16).
    pub fn encode(self, data: &[f32]) -> Vec<u8> {
        match self {
            Precision::F32 => bytemuck::cast_slice(data).to_vec(),
            Precision::F16 => data
                .iter()
                .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
                .collect(),
        }
    }

    /// Converts bytes of this precision back to host floats.
    pub fn decode(self, bytes: &[u8]) -> Vec<f32> {
        match self {
            Precision::F32 => bytemuck::pod_collect_to_vec::<u8, f32>(bytes),
            Precision::F16 => bytes
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
        }
    }

    /// Rounds a host value to what this precision stores (what the GPU would read back).
    pub fn round(self, v: f32) -> f32 {
        match self {
            Precision::F32 => v,
            Precision::F16 => half::f16::from_f32(v).to_f32(),
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Precision::F32 => "f32",
            Precision::F16 => "f16",
        })
    }
}

impl FromStr for Precision {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "float32" | "fp32" => Ok(Precision::F32),
            "f16" | "float16" | "fp16" | "half" => Ok(Precision::F16),
            _ => Err(format!("unknown precision {s:?}; use f32 or f16")),
        }
    }
}
