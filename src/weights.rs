//! Weights by their PyTorch `state_dict` names: a weights file (safetensors, a PyTorch
//! checkpoint or a detectron2 pickle) or deterministic seeded random values, walked with name prefixes (`vb.pp("layer1").pp(0)`) the way candle's `VarBuilder` does.
//!
//! Problems do not stop the walk: every missing, mis-shaped or unexpected tensor is collected, and
//! [`VarStore::finish`] reports them all in one error.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::fmt::Display;
use std::path::Path;

use crate::error::{Error, Result};
use crate::rng::SplitMix64;
use crate::tensor_file::{read_file, FileFormat, HostTensor, TensorMap};

/// How many disagreeing tensors an error lists by name before it only counts the rest.
pub const LISTED_PROBLEMS: usize = 8;

/// How a tensor is initialised when the weights are seeded random values. The values are chosen
/// so that activations stay O(1) through deep networks and every batch norm is far from identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Init {
    /// Convolution kernel: uniform in +-sqrt(3 / fan_in).
    Conv,
    /// Convolution bias: uniform in +-0.1.
    Bias,
    /// Batch norm or group norm weight (gamma): uniform in [0.5, 1.5).
    BnWeight,
    /// Batch norm or group norm bias (beta): uniform in +-0.2.
    BnBias,
    /// Batch norm running mean: uniform in +-0.2.
    BnMean,
    /// Batch norm running variance: uniform in [0.5, 2).
    BnVar,
    /// Bias of FCOS's box distances (in anchor sizes, before its ReLU): uniform in [1, 3), so
    /// that random boxes reach over neighbouring locations as trained ones do (with
    /// [`Init::Bias`] they would be about one stride wide, never overlap, and leave NMS
    /// nothing to do).
    DistanceBias,
}

/// PyTorch bookkeeping entries that hold no weights.
pub fn is_ignored(name: &str) -> bool {
    name.ends_with("num_batches_tracked")
}

enum Source {
    File {
        path: String,
        tensors: TensorMap,
        /// What the file was, when not safetensors: `a PyTorch zip checkpoint (torch.save),
        /// its `state_dict` entry`.
        described: Option<String>,
    },
    Random {
        seed: u64,
    },
}

/// Where the weights come from, plus the record of what the model asked for.
pub struct VarStore {
    source: Source,
    problems: RefCell<Vec<String>>,
    used: RefCell<BTreeSet<String>>,
    /// Every tensor handed out, kept only when asked for (to save seeded random weights).
    recorded: Option<RefCell<TensorMap>>,
}

impl VarStore {
    /// Loads a `state_dict` from safetensors, a PyTorch checkpoint (`.pth`, `.pt`, zip or
    /// legacy, the state_dict alone or wrapped in a dict) or a detectron2 `.pkl`, told apart
    /// by content (see [`crate::tensor_file::parse_file`]); `num_batches_tracked` entries are
    /// ignored and float16, bfloat16 and float64 tensors are converted to float32.
    pub fn from_file(path: &Path) -> Result<Self> {
        let file = read_file(path, is_ignored)?;
        let origin = match &file.entry {
            Some(key) => format!("{}'s `{key}` entry", path.display()),
            None => path.display().to_string(),
        };
        let described = (file.format != FileFormat::Safetensors).then(|| file.describe());
        Ok(Self::new(Source::File {
            path: origin,
            tensors: file.tensors,
            described,
        }))
    }

    /// Wraps tensors already in memory; `origin` names them in errors.
    pub fn from_tensors(origin: impl Into<String>, tensors: TensorMap) -> Self {
        Self::new(Source::File {
            path: origin.into(),
            tensors,
            described: None,
        })
    }

    /// What the weights file was when it was not safetensors, for messages: `a PyTorch zip
    /// checkpoint (torch.save), its `state_dict` entry`.
    pub fn file_format(&self) -> Option<&str> {
        match &self.source {
            Source::File { described, .. } => described.as_deref(),
            Source::Random { .. } => None,
        }
    }

    /// Deterministic random weights: the same `seed` and name always give the same values, on
    /// every platform, whatever order the model asks for them.
    pub fn random(seed: u64) -> Self {
        Self::new(Source::Random { seed })
    }

    /// Like [`VarStore::random`], and keeps every tensor handed out so that
    /// [`VarStore::into_recorded`] can return them (to save them as a file).
    pub fn random_recording(seed: u64) -> Self {
        VarStore {
            recorded: Some(RefCell::new(TensorMap::new())),
            ..Self::random(seed)
        }
    }

    fn new(source: Source) -> Self {
        VarStore {
            source,
            problems: RefCell::new(Vec::new()),
            used: RefCell::new(BTreeSet::new()),
            recorded: None,
        }
    }

    /// The root builder, with no prefix.
    pub fn root(&self) -> VarBuilder<'_> {
        VarBuilder {
            store: self,
            prefix: String::new(),
        }
    }

    /// The names in a loaded file (empty for random weights).
    pub fn names(&self) -> Vec<&str> {
        match &self.source {
            Source::File { tensors, .. } => tensors.keys().map(String::as_str).collect(),
            Source::Random { .. } => Vec::new(),
        }
    }

    /// The shape of the tensor `name` in a loaded file.
    pub fn shape_of(&self, name: &str) -> Option<&[usize]> {
        match &self.source {
            Source::File { tensors, .. } => tensors.get(name).map(|t| t.shape.as_slice()),
            Source::Random { .. } => None,
        }
    }

    /// The tensor `name` in a loaded file, for values read outside the network's walk (such as
    /// detectron2's `pixel_mean`).
    pub fn tensor(&self, name: &str) -> Option<&HostTensor> {
        match &self.source {
            Source::File { tensors, .. } => tensors.get(name),
            Source::Random { .. } => None,
        }
    }

    /// Renames the tensors of a loaded file: `rename` gives each name its new name, or `None` to
    /// drop the tensor (a detection checkpoint's heads, for one). `note` is added to the origin
    /// so that error messages say what was done. Two names mapping to one is an error.
    pub fn map_names(self, note: &str, rename: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let (path, tensors, described) = match self.source {
            Source::File {
                path,
                tensors,
                described,
            } => (path, tensors, described),
            random @ Source::Random { .. } => return Ok(Self::new(random)),
        };
        let mut out = TensorMap::new();
        for (name, t) in tensors {
            if let Some(new) = rename(&name) {
                if out.contains_key(&new) {
                    return Err(Error::Weights {
                        problems: vec![format!(
                            "in {path}: two tensors map to `{new}` ({note}); keep one of them"
                        )],
                    });
                }
                out.insert(new, t);
            }
        }
        Ok(Self::new(Source::File {
            path: format!("{path} ({note})"),
            tensors: out,
            described,
        }))
    }

    /// Where the weights come from, for messages: a path or `seeded random (seed N)`.
    pub fn origin(&self) -> String {
        match &self.source {
            Source::File { path, .. } => path.clone(),
            Source::Random { seed } => format!("seeded random weights (seed {seed})"),
        }
    }

    /// Ends the walk: an error listing every missing, mis-shaped and unexpected tensor, if any
    /// (see [`VarStore::finish_for`]).
    pub fn finish(&self) -> Result<()> {
        self.finish_for("the model")
    }

    /// Ends the walk of the network `network` describes (layout and variant, as guessed from
    /// the names): an error if any tensor is missing, mis-shaped or unexpected. The error is a
    /// summary a person can read: how many tensors disagree of each kind, the first
    /// [`LISTED_PROBLEMS`], and what to do.
    pub fn finish_for(&self, network: &str) -> Result<()> {
        let mut problems = self.problems.borrow().clone();
        if let Source::File { tensors, .. } = &self.source {
            let used = self.used.borrow();
            for (name, t) in tensors {
                if !used.contains(name) {
                    problems.push(format!(
                        "unexpected tensor `{name}` with shape {:?}",
                        t.shape
                    ));
                }
            }
        }
        if problems.is_empty() {
            return Ok(());
        }
        let count = |p: &str| problems.iter().filter(|l| l.starts_with(p)).count();
        let (missing, unexpected) = (count("missing"), count("unexpected"));
        let misshaped = problems.len() - missing - unexpected;
        let total = self.used.borrow().len();
        let mut lines = vec![
            format!("in {}:", self.origin()),
            format!(
                "{} tensors disagree with {network} ({missing} missing, {misshaped} mis-shaped, \
                 {unexpected} unexpected, of {total} the network reads):",
                problems.len()
            ),
        ];
        let shown = problems.len().min(LISTED_PROBLEMS);
        lines.extend(problems.drain(..shown));
        if !problems.is_empty() {
            lines.push(format!("... and {} more", problems.len()));
        }
        lines.push(
            "if the file is what it should be, its network differs from the one guessed: check \
             the layout, block counts, block type, groups, width and input channels above \
             against the model that saved it, or build with an explicit FpnConfig (Fpn::new)"
                .to_string(),
        );
        Err(Error::Weights { problems: lines })
    }

    /// The tensors handed out by a recording store, by name.
    pub fn into_recorded(self) -> Option<TensorMap> {
        self.recorded.map(RefCell::into_inner)
    }

    fn get(&self, name: String, shape: &[usize], init: Init) -> Vec<f32> {
        let n: usize = shape.iter().product();
        let data = match &self.source {
            Source::File { tensors, .. } => match tensors.get(&name) {
                None => {
                    self.problems
                        .borrow_mut()
                        .push(format!("missing tensor `{name}`: expected shape {shape:?}"));
                    vec![0.0; n]
                }
                Some(t) if t.shape != shape => {
                    self.problems.borrow_mut().push(format!(
                        "tensor `{name}` has shape {:?}; expected {shape:?}",
                        t.shape
                    ));
                    vec![0.0; n]
                }
                Some(t) => t.data.clone(),
            },
            Source::Random { seed } => random_values(*seed, &name, shape, init),
        };
        if let Some(rec) = &self.recorded {
            rec.borrow_mut().insert(
                name.clone(),
                HostTensor {
                    shape: shape.to_vec(),
                    data: data.clone(),
                },
            );
        }
        self.used.borrow_mut().insert(name);
        data
    }
}

/// FNV-1a of the name, mixed with the seed: each tensor gets its own stream.
fn name_seed(seed: u64, name: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed;
    for b in name.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn random_values(seed: u64, name: &str, shape: &[usize], init: Init) -> Vec<f32> {
    let n: usize = shape.iter().product();
    let mut rng = SplitMix64::new(name_seed(seed, name));
    let (lo, hi) = match init {
        Init::Conv => {
            let fan_in: usize = shape.iter().skip(1).product();
            let b = (3.0 / fan_in.max(1) as f64).sqrt() as f32;
            (-b, b)
        }
        Init::Bias => (-0.1, 0.1),
        Init::BnWeight => (0.5, 1.5),
        Init::BnBias | Init::BnMean => (-0.2, 0.2),
        Init::BnVar => (0.5, 2.0),
        Init::DistanceBias => (1.0, 3.0),
    };
    rng.vec(n, lo, hi)
}

/// A position in the weight namespace: a store plus a dotted prefix.
#[derive(Clone)]
pub struct VarBuilder<'a> {
    store: &'a VarStore,
    prefix: String,
}

impl<'a> VarBuilder<'a> {
    /// The builder one level down: `vb.pp("layer1").pp(0)` walks to `layer1.0.`.
    pub fn pp(&self, part: impl Display) -> VarBuilder<'a> {
        let prefix = if self.prefix.is_empty() {
            part.to_string()
        } else {
            format!("{}.{part}", self.prefix)
        };
        VarBuilder {
            store: self.store,
            prefix,
        }
    }

    /// The dotted prefix, e.g. `layer1.0.conv1`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The full dotted name of `name` under this prefix.
    pub fn path(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }

    /// The tensor `name` with the expected `shape`. A missing or mis-shaped tensor is recorded
    /// as a problem (reported by [`VarStore::finish`]) and zeros are returned in its place.
    pub fn get(&self, name: &str, shape: &[usize], init: Init) -> Vec<f32> {
        self.store.get(self.path(name), shape, init)
    }

    /// Whether the file has any tensor under this prefix (always false for random weights).
    pub fn contains_prefix(&self) -> bool {
        let p = format!("{}.", self.prefix);
        self.store.names().iter().any(|n| n.starts_with(&p))
    }
}

/// The number of blocks in each of `layer1`..`layer4`, read from the names of a state dict
/// (`layer3.5.conv1.weight` means layer 3 has at least 6 blocks). Layers after the last one
/// present count 0 (torchvision drops the layers after the deepest returned one); `layer1`
/// must be there and no layer may be skipped.
pub fn infer_block_counts(names: &[&str]) -> Result<[usize; 4]> {
    let mut counts = [0usize; 4];
    for name in names {
        let mut parts = name.split('.');
        let (Some(layer), Some(index)) = (parts.next(), parts.next()) else {
            continue;
        };
        let Some(l) = layer
            .strip_prefix("layer")
            .and_then(|s| s.parse::<usize>().ok())
        else {
            continue;
        };
        if let (1..=4, Ok(i)) = (l, index.parse::<usize>()) {
            counts[l - 1] = counts[l - 1].max(i + 1);
        }
    }
    let present = counts.iter().rposition(|&c| c > 0).map_or(0, |l| l + 1);
    if let Some(missing) = counts[..present.max(1)].iter().position(|&c| c == 0) {
        return Err(Error::Weights {
            problems: vec![format!(
                "no tensors named `layer{}.<block>.*`: this is not a state_dict of the FPN's ResNet \
                 backbone (expected names such as `layer1.0.conv1.weight`)",
                missing + 1
            )],
        });
    }
    Ok(counts)
}
