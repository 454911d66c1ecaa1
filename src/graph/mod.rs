//! The model as a graph of ops over tensor values, with host-side weights.
//!
//! Node `i` produces value `i`; nodes are kept in topological order (an op's inputs are produced
//! by earlier nodes), which is also execution order. Node 0 is the graph input. [`passes`]
//! rewrite the graph (fold batch norm, fuse epilogues); [`executor`] uploads the weights, plans
//! memory per input shape ([`plan`]) and runs it.

pub mod executor;
pub mod passes;
pub mod plan;
pub mod tune;

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::kernels::conv2d::{self, Conv2dOptions};
use crate::kernels::max_pool2d::{self, MaxPool2dOptions};
use crate::kernels::pad2d;
use crate::kernels::upsample_add::UpsampleMode;

/// A value in the graph: the output of the node with this index.
pub type Value = usize;

/// A convolution's weights in host memory: OIHW kernel, optional bias, optional per-channel
/// affine applied after the bias (where a batch norm is folded).
#[derive(Clone, Debug)]
pub struct HostConv {
    /// [out channels, in channels / groups, kernel height, kernel width] (the groups are in the
    /// op's [`Conv2dOptions`]).
    pub shape: [usize; 4],
    /// The kernel, OIHW row-major.
    pub weight: Vec<f32>,
    /// One bias per output channel, added before the affine.
    pub bias: Option<Vec<f32>>,
    /// Per output channel (scale, shift), applied after the bias: a folded batch norm.
    pub affine: Option<(Vec<f32>, Vec<f32>)>,
}

/// An inference batch norm's parameters in host memory.
#[derive(Clone, Debug)]
pub struct HostBatchNorm {
    /// Running mean per channel.
    pub mean: Vec<f32>,
    /// Running variance per channel.
    pub var: Vec<f32>,
    /// Scale (gamma) per channel.
    pub weight: Vec<f32>,
    /// Shift (beta) per channel.
    pub bias: Vec<f32>,
    /// Added to the variance before the square root.
    pub eps: f32,
}

/// What a node computes.
#[derive(Clone, Debug)]
pub enum Op {
    /// The graph input (node 0 only).
    Input,
    /// `relu?(conv(x) * scale + shift + residual?)`; inputs `[x]` or `[x, residual]`, the
    /// residual added as `opts.residual` says (as it is, or upsampled).
    Conv2d {
        /// Kernel, bias and epilogue affine.
        weights: Arc<HostConv>,
        /// Stride, padding, groups, ReLU and residual mode.
        opts: Conv2dOptions,
    },
    /// Inference batch norm; inputs `[x]`.
    BatchNorm(Arc<HostBatchNorm>),
    /// Max pooling; inputs `[x]`.
    MaxPool2d(MaxPool2dOptions),
    /// Zero padding of each side by (vertical, horizontal); inputs `[x]`.
    Pad2d((usize, usize)),
    /// `upsample(x, size of y) + y`; inputs `[x, y]`.
    UpsampleAdd(UpsampleMode),
    /// ReLU; inputs `[x]`.
    Relu,
    /// `a + b`; inputs `[a, b]`.
    Add,
}

impl Op {
    /// Short name for reports.
    pub fn kind(&self) -> &'static str {
        match self {
            Op::Input => "input",
            Op::Conv2d { .. } => "conv2d",
            Op::BatchNorm(_) => "batch_norm",
            Op::MaxPool2d(_) => "max_pool2d",
            Op::Pad2d(_) => "pad2d",
            Op::UpsampleAdd(_) => "upsample_add",
            Op::Relu => "relu",
            Op::Add => "add",
        }
    }
}

/// One op with its inputs, a name (the PyTorch module path where there is one) and the stage
/// of the network it belongs to (for per-stage timings).
#[derive(Clone, Debug)]
pub struct Node {
    /// The PyTorch module path, or a descriptive name for ops without one.
    pub name: String,
    /// What it computes.
    pub op: Op,
    /// The values it reads, in the order the op expects.
    pub inputs: Vec<Value>,
    /// The part of the network (`stem`, `layer1`, `top-down`, ...) for timings.
    pub stage: String,
}

/// A graph of ops in execution order, with named outputs.
#[derive(Clone, Debug)]
pub struct Graph {
    pub(crate) nodes: Vec<Node>,
    pub(crate) outputs: Vec<(String, Value)>,
    stage: String,
}

impl Default for Graph {
    fn default() -> Self {
        Self::new()
    }
}

impl Graph {
    /// A graph holding only its input.
    pub fn new() -> Self {
        Graph {
            nodes: vec![Node {
                name: "input".into(),
                op: Op::Input,
                inputs: vec![],
                stage: "input".into(),
            }],
            outputs: vec![],
            stage: String::new(),
        }
    }

    /// Labels the nodes pushed from now on as belonging to `stage` (e.g. `layer2`).
    pub fn set_stage(&mut self, stage: impl Into<String>) {
        self.stage = stage.into();
    }

    /// The graph input.
    pub fn input(&self) -> Value {
        0
    }

    /// Appends a node and returns its value.
    pub fn push(&mut self, name: impl Into<String>, op: Op, inputs: &[Value]) -> Value {
        debug_assert!(
            inputs.iter().all(|&v| v < self.nodes.len()),
            "inputs must exist"
        );
        self.nodes.push(Node {
            name: name.into(),
            op,
            inputs: inputs.to_vec(),
            stage: self.stage.clone(),
        });
        self.nodes.len() - 1
    }

    /// Marks `value` as an output named `name`.
    pub fn output(&mut self, name: impl Into<String>, value: Value) {
        self.outputs.push((name.into(), value));
    }

    /// The nodes in execution order.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// The named outputs.
    pub fn outputs(&self) -> &[(String, Value)] {
        &self.outputs
    }

    /// How many times each value is used, as an op input or a graph output.
    pub fn use_counts(&self) -> Vec<usize> {
        let mut uses = vec![0; self.nodes.len()];
        for n in &self.nodes {
            for &i in &n.inputs {
                uses[i] += 1;
            }
        }
        for &(_, v) in &self.outputs {
            uses[v] += 1;
        }
        uses
    }

    /// Whether `value` is a graph output.
    pub fn is_output(&self, value: Value) -> bool {
        self.outputs.iter().any(|&(_, v)| v == value)
    }

    /// The shape of every value for an input of `input` shape, or an error naming the node
    /// whose inputs do not fit.
    pub fn shapes(&self, input: [usize; 4]) -> Result<Vec<[usize; 4]>> {
        infer_shapes(
            self.nodes
                .iter()
                .map(|n| (n.name.as_str(), n.op.shape_rule(), n.inputs.as_slice())),
            input,
        )
    }
}

/// Prefixes an argument error with the node it arose at.
pub(crate) fn at_node(name: &str, e: Error) -> Error {
    match e {
        Error::InvalidArgument { op, message } => Error::InvalidArgument {
            op,
            message: format!("at `{name}`: {message}"),
        },
        other => other,
    }
}

/// The part of an op that decides its output shape; the executor keeps it after the weights
/// have gone to the GPU.
#[derive(Clone, Copy, Debug)]
pub(crate) enum ShapeRule {
    Input,
    Conv2d([usize; 4], Conv2dOptions),
    BatchNorm(usize),
    MaxPool2d(MaxPool2dOptions),
    Pad2d((usize, usize)),
    UpsampleAdd,
    SameAsInput,
    SameAsBoth,
}

impl Op {
    pub(crate) fn shape_rule(&self) -> ShapeRule {
        match self {
            Op::Input => ShapeRule::Input,
            Op::Conv2d { weights, opts } => ShapeRule::Conv2d(weights.shape, *opts),
            Op::BatchNorm(bn) => ShapeRule::BatchNorm(bn.mean.len()),
            Op::MaxPool2d(o) => ShapeRule::MaxPool2d(*o),
            Op::Pad2d(pad) => ShapeRule::Pad2d(*pad),
            Op::UpsampleAdd(_) => ShapeRule::UpsampleAdd,
            Op::Relu => ShapeRule::SameAsInput,
            Op::Add => ShapeRule::SameAsBoth,
        }
    }
}

impl ShapeRule {
    /// The output shape for inputs of shapes `ins`, where the graph input has shape `input`.
    pub(crate) fn output_shape(&self, ins: &[[usize; 4]], input: [usize; 4]) -> Result<[usize; 4]> {
        let same = |a: [usize; 4], b: [usize; 4], what: &'static str| -> Result<[usize; 4]> {
            if a != b {
                return Err(Error::invalid(
                    what,
                    format!("input shapes {a:?} and {b:?} must match"),
                ));
            }
            Ok(a)
        };
        match *self {
            ShapeRule::Input if input.contains(&0) => Err(Error::invalid(
                "input",
                format!("the input has shape {input:?}, with a zero dimension; every dimension must be at least 1"),
            )),
            ShapeRule::Input => Ok(input),
            ShapeRule::Conv2d(w, opts) => {
                if let Some(&r) = ins.get(1) {
                    let out = conv2d::conv_shape(ins[0], w, &opts)?;
                    conv2d::check_residual_shape(out, r, opts.residual)?;
                }
                conv2d::output_shape(ins[0], w, &opts)
            }
            ShapeRule::BatchNorm(c) => {
                if ins[0][1] != c {
                    return Err(Error::invalid(
                        "batch_norm",
                        format!(
                            "the input has {} channels but the batch norm has {c}",
                            ins[0][1]
                        ),
                    ));
                }
                Ok(ins[0])
            }
            ShapeRule::MaxPool2d(opts) => max_pool2d::output_shape(ins[0], &opts),
            ShapeRule::Pad2d(pad) => Ok(pad2d::output_shape(ins[0], pad)),
            ShapeRule::UpsampleAdd => {
                let (x, y) = (ins[0], ins[1]);
                if x[..2] != y[..2] {
                    return Err(Error::invalid(
                        "upsample_add",
                        format!("the coarse input {x:?} and the lateral input {y:?} must agree in batch and channels"),
                    ));
                }
                Ok(y)
            }
            ShapeRule::SameAsInput => Ok(ins[0]),
            ShapeRule::SameAsBoth => same(ins[0], ins[1], "add"),
        }
    }
}

/// The shape of every value of a graph given as (name, rule, inputs) per node, or an error
/// naming the node whose inputs do not fit.
pub(crate) fn infer_shapes<'a>(
    nodes: impl IntoIterator<Item = (&'a str, ShapeRule, &'a [Value])>,
    input: [usize; 4],
) -> Result<Vec<[usize; 4]>> {
    let mut shapes: Vec<[usize; 4]> = Vec::new();
    for (name, rule, inputs) in nodes {
        let arity = match rule {
            ShapeRule::Input => 0..=0,
            ShapeRule::Conv2d(..) => 1..=2,
            ShapeRule::UpsampleAdd | ShapeRule::SameAsBoth => 2..=2,
            _ => 1..=1,
        };
        if !arity.contains(&inputs.len()) || inputs.iter().any(|&i| i >= shapes.len()) {
            return Err(Error::invalid(
                "graph",
                format!(
                    "node `{name}` has inputs {inputs:?}; it takes {arity:?} inputs, each produced by an earlier node"
                ),
            ));
        }
        let ins: Vec<[usize; 4]> = inputs.iter().map(|&i| shapes[i]).collect();
        shapes.push(
            rule.output_shape(&ins, input)
                .map_err(|e| at_node(name, e))?,
        );
    }
    Ok(shapes)
}
