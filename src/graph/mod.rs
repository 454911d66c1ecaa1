//! The model as a graph of ops over tensor values, with host-side weights.
//!
//! Node `i` produces value `i`; nodes are kept in topological order (an op's inputs are produced
//! by earlier nodes), which is also execution order. Node 0 is the graph input. Each op is a
//! type of its own under [`ops`]; [`passes`] rewrite the graph (fold batch norm, fuse epilogues)
//! in named pipelines; [`executor`] lowers it onto a device, plans memory per input shape
//! ([`plan`]) and runs it.

pub mod executor;
pub(crate) mod indirect;
pub mod ops;
pub mod passes;
pub mod plan;
pub mod tune;

use std::sync::Arc;

use crate::error::{Error, Result};

pub use ops::{GraphOp, HostBatchNorm, HostConv, Input};

/// A value in the graph: the output of the node with this index.
pub type Value = usize;

/// One op with its inputs, a name (the PyTorch module path where there is one) and the stage
/// of the network it belongs to (for per-stage timings).
#[derive(Clone, Debug)]
pub struct Node {
    /// The PyTorch module path, or a descriptive name for ops without one.
    pub name: String,
    /// What it computes.
    pub op: Arc<dyn GraphOp>,
    /// The values it reads, in the order the op expects.
    pub inputs: Vec<Value>,
    /// The part of the network (`stem`, `layer1`, `top-down`, ...) for timings.
    pub stage: String,
    /// The records value whose live rows size this node's launches, where only the first rows
    /// of its output are worth computing (see [`Graph::set_rows`]).
    pub rows: Option<Value>,
}

impl Node {
    /// The values this node needs to run: its inputs, and the records its launches are
    /// sized by.
    pub fn reads(&self) -> impl Iterator<Item = Value> + '_ {
        self.inputs.iter().copied().chain(self.rows)
    }

    /// The op as its concrete type, if it is a `T`.
    pub fn op<T: GraphOp>(&self) -> Option<&T> {
        self.op.downcast()
    }
}

/// A graph of ops in execution order, with named outputs.
#[derive(Clone, Debug)]
pub struct Graph {
    pub(crate) nodes: Vec<Node>,
    pub(crate) outputs: Vec<(String, Value)>,
    stage: String,
    rows: Option<Value>,
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
                op: Arc::new(Input),
                inputs: vec![],
                stage: "input".into(),
                rows: None,
            }],
            outputs: vec![],
            stage: String::new(),
            rows: None,
        }
    }

    /// Labels the nodes pushed from now on as belonging to `stage` (e.g. `layer2`).
    pub fn set_stage(&mut self, stage: impl Into<String>) {
        self.stage = stage.into();
    }

    /// Sizes the launches of the nodes pushed from now on by the live rows of `records`
    /// (`None`: by their outputs' full size): f32 `[N, 1, D, 6]` records whose live records come
    /// first ([`CompactRecords`](ops::detect::CompactRecords) writes them so). Their outputs'
    /// leading dimension must be the records' `N * D` rows, one per record: a launch then
    /// computes the live records' rows (or, like the pasting of compacted records, the results
    /// of the live records, placed where each record says) and leaves the other rows as they
    /// were. Where the device cannot launch indirectly, or a kernel's grid cannot be cut by
    /// rows, launches run at full size, which gives the same live rows.
    pub fn set_rows(&mut self, records: Option<Value>) {
        self.rows = records;
    }

    /// The graph input.
    pub fn input(&self) -> Value {
        0
    }

    /// Appends a node computing `op` of `inputs` and returns its value.
    pub fn push(&mut self, name: impl Into<String>, op: impl GraphOp, inputs: &[Value]) -> Value {
        debug_assert!(
            inputs.iter().all(|&v| v < self.nodes.len()),
            "inputs must exist"
        );
        self.nodes.push(Node {
            name: name.into(),
            op: Arc::new(op),
            inputs: inputs.to_vec(),
            stage: self.stage.clone(),
            rows: self.rows,
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
            for i in n.reads() {
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

    /// Checks how the nodes are wired, before any pass reads their inputs: each takes as many
    /// inputs as its op does, each produced by an earlier node, and the outputs name nodes.
    pub fn check_wiring(&self) -> Result<()> {
        for (i, n) in self.nodes.iter().enumerate() {
            let arity = if i == 0 { 0..=0 } else { n.op.arity() };
            if !arity.contains(&n.inputs.len()) || n.reads().any(|v| v >= i) {
                return Err(Error::invalid(
                    "graph",
                    format!(
                        "node `{}` has inputs {:?}; it takes {arity:?} inputs, each produced by an earlier node",
                        n.name, n.inputs
                    ),
                ));
            }
        }
        if let Some((name, v)) = self.outputs.iter().find(|(_, v)| *v >= self.nodes.len()) {
            return Err(Error::invalid(
                "graph",
                format!("the output `{name}` names value {v}, which no node produces"),
            ));
        }
        Ok(())
    }

    /// The shape of every value for an input of `input` shape, or an error naming the node
    /// whose inputs do not fit.
    pub fn shapes(&self, input: [usize; 4]) -> Result<Vec<[usize; 4]>> {
        infer_shapes(
            self.nodes.iter().map(|n| {
                let op = n.op.as_ref();
                Step {
                    name: &n.name,
                    arity: op.arity(),
                    inputs: &n.inputs,
                    shape: Box::new(move |ins: &[[usize; 4]]| op.output_shape(ins)),
                }
            }),
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

/// A shape rule applied to input shapes.
type ShapeFn<'a> = Box<dyn Fn(&[[usize; 4]]) -> Result<[usize; 4]> + 'a>;

/// One node as shape inference sees it: the graph's ops before lowering, or the executor's
/// lowered ops (which keep no host weights) after.
pub(crate) struct Step<'a> {
    pub name: &'a str,
    pub arity: std::ops::RangeInclusive<usize>,
    pub inputs: &'a [Value],
    pub shape: ShapeFn<'a>,
}

/// The shape of every value of a graph given node by node, or an error naming the node whose
/// inputs do not fit. Node 0 is the graph input, of shape `input`.
pub(crate) fn infer_shapes<'a>(
    nodes: impl IntoIterator<Item = Step<'a>>,
    input: [usize; 4],
) -> Result<Vec<[usize; 4]>> {
    let mut shapes: Vec<[usize; 4]> = Vec::new();
    for step in nodes {
        let Step {
            name,
            arity,
            inputs,
            shape,
        } = step;
        if shapes.is_empty() {
            shapes.push(Input::check(input)?);
            continue;
        }
        if !arity.contains(&inputs.len()) || inputs.iter().any(|&i| i >= shapes.len()) {
            return Err(Error::invalid(
                "graph",
                format!(
                    "node `{name}` has inputs {inputs:?}; it takes {arity:?} inputs, each produced by an earlier node"
                ),
            ));
        }
        let ins: Vec<[usize; 4]> = inputs.iter().map(|&i| shapes[i]).collect();
        shapes.push(shape(&ins).map_err(|e| at_node(name, e))?);
    }
    Ok(shapes)
}
