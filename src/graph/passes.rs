//! Graph rewrites, run as named pipelines. Each pass is a small function that rewrites the
//! graph in place and reports whether it changed anything; a [`Pipeline`] runs its passes in
//! order until none does, dropping the nodes each change leaves dead. Passes only fuse a
//! producer into its consumer when the producer's value has no other use, so no intermediate
//! that someone reads disappears.
//!
//! Which pipelines run is decided in one place, [`pipelines`]: the fusion setting, then the
//! layout the values are stored in and the kind of device.

use std::sync::Arc;

use super::ops::detect::{GroupNormLevels, MaskLevels};
use super::ops::{Add, BatchNorm, Conv2d, HostConv, Pad2d, Relu, ResidualMode, UpsampleAdd};
use super::{Graph, GraphOp, Node, Value};
use crate::kernels::conv2d::dense_from_grouped;
use crate::tensor::MemoryFormat;

/// A pass: rewrites the graph in place and says whether anything changed.
pub type Pass = fn(&mut Graph) -> bool;

/// Whether the fusing passes run (batch norm folded, ReLU, residual and upsample-add fused into
/// the convolutions) or every op keeps its own kernel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Fusion {
    /// Batch norm folded into the convs; ReLU, residual adds fused into their epilogues.
    #[default]
    Fused,
    /// Every op in its own kernel, as the network is written (for debugging and tests).
    Unfused,
}

/// A named list of passes, run in order until none changes the graph.
#[derive(Debug)]
pub struct Pipeline {
    /// A name for reports (`fuse`, `channels-last on a GPU`).
    pub name: &'static str,
    /// The passes with their names.
    pub passes: &'static [(&'static str, Pass)],
}

/// Folds batch norm and fuses ReLU and residual adds into the convolutions, then makes the
/// padding of dense convolutions explicit (written by the packed levels' mask where it feeds
/// one): what every fused graph runs.
pub const FUSE: Pipeline = Pipeline {
    name: "fuse",
    passes: &[
        ("fold_batch_norm", fold_batch_norm),
        ("fuse_residual_add", fuse_residual_add),
        ("fuse_relu", fuse_relu),
        ("explicit_padding", explicit_padding),
        ("pad_into_mask", pad_into_mask),
    ],
};

/// For the channels-last (cooperative-matrix) kernels on a GPU: the top-down merge into the
/// lateral convolutions' epilogue (one pass over the map fewer per level), grouped convolutions
/// made dense (those kernels have no grouped form) with their padding made explicit, and the
/// padding written as a halo by the producer.
pub const CHANNELS_LAST_GPU: Pipeline = Pipeline {
    name: "channels-last on a GPU",
    passes: &[
        ("fuse_upsample_add", fuse_upsample_add),
        ("dense_groups", dense_groups),
        ("explicit_padding", explicit_padding),
        ("halo_into_producer", halo_into_producer),
    ],
};

/// [`CHANNELS_LAST_GPU`] without the upsample-add fusion, which loses on CPU adapters (see
/// [`fuse_upsample_add`]).
pub const CHANNELS_LAST_CPU: Pipeline = Pipeline {
    name: "channels-last on a CPU adapter",
    passes: &[
        ("dense_groups", dense_groups),
        ("explicit_padding", explicit_padding),
        ("halo_into_producer", halo_into_producer),
    ],
};

/// For channels-last values without cooperative matrices (asked for by the caller; the
/// portable direct kernel runs the convolutions): grouped convolutions made dense and every
/// padding explicit, which that kernel needs as the cooperative-matrix ones do, but no halos,
/// which only the cooperative-matrix kernels write.
pub const CHANNELS_LAST_PORTABLE: Pipeline = Pipeline {
    name: "channels-last without cooperative matrices",
    passes: &[
        ("dense_groups", dense_groups),
        ("explicit_padding", explicit_padding),
    ],
};

/// The pipelines that run, in order, for a graph built with `fusion` whose values are stored
/// in `layout` on a GPU (`gpu`) or a CPU adapter, with the channels-last convolutions on
/// cooperative matrices or not (`cooperative`). The layout is chosen after the fusion
/// pipeline (it depends on the ops left), so this is asked twice: with `layout` `None` for
/// the fusion stage, then with the layout for the rest.
pub fn pipelines(
    fusion: Fusion,
    layout: Option<MemoryFormat>,
    gpu: bool,
    cooperative: bool,
) -> Vec<&'static Pipeline> {
    match (layout, fusion) {
        (None, Fusion::Fused) => vec![&FUSE],
        (None, Fusion::Unfused) => vec![],
        (Some(MemoryFormat::Nchw), _) => vec![],
        (Some(MemoryFormat::ChannelsLast), _) if !cooperative => vec![&CHANNELS_LAST_PORTABLE],
        (Some(MemoryFormat::ChannelsLast), _) if gpu => vec![&CHANNELS_LAST_GPU],
        (Some(MemoryFormat::ChannelsLast), _) => vec![&CHANNELS_LAST_CPU],
    }
}

impl Pipeline {
    /// Runs the passes until none changes the graph, dropping the nodes each change makes
    /// dead. Returns the names of the passes that changed something, in the order they did.
    pub fn run(&self, graph: &mut Graph) -> Vec<&'static str> {
        let mut applied = Vec::new();
        loop {
            let mut changed = false;
            for &(name, pass) in self.passes {
                if pass(graph) {
                    // A bypassed node still lists its inputs as uses until it is gone, which
                    // would make its producer look shared to the next pass.
                    remove_dead(graph);
                    applied.push(name);
                    changed = true;
                }
            }
            if !changed {
                return applied;
            }
        }
    }
}

/// Runs the [`FUSE`] pipeline. Returns the names of the passes that changed something, in the
/// order they did.
pub fn optimize(graph: &mut Graph) -> Vec<&'static str> {
    FUSE.run(graph)
}

/// A conv whose output can absorb the next op into its epilogue: no epilogue stage that must
/// come after the absorbed op, and no other reader of its value.
fn absorbable_conv(graph: &Graph, uses: &[usize], v: Value) -> Option<Conv2d> {
    let node = &graph.nodes[v];
    match node.op::<Conv2d>() {
        // A conv writing a halo has an epilogue sized for the map without it.
        Some(conv)
            if !conv.opts.relu
                && conv.opts.out_padding == (0, 0)
                && node.inputs.len() == 1
                && uses[v] == 1
                && !graph.is_output(v) =>
        {
            Some(conv.clone())
        }
        _ => None,
    }
}

/// Redirects every use of `from` (as input or output) to `to`.
fn replace_uses(graph: &mut Graph, from: Value, to: Value) {
    for n in &mut graph.nodes {
        for i in n.inputs.iter_mut().chain(&mut n.rows) {
            if *i == from {
                *i = to;
            }
        }
    }
    for (_, v) in &mut graph.outputs {
        if *v == from {
            *v = to;
        }
    }
}

/// conv -> batch norm becomes one conv whose affine epilogue applies the batch norm:
/// `scale = weight / sqrt(var + eps)`, `shift = bias - mean * scale` (computed in f64).
pub fn fold_batch_norm(graph: &mut Graph) -> bool {
    let mut changed = false;
    for k in 0..graph.nodes.len() {
        let uses = graph.use_counts();
        let Some(BatchNorm(bn)) = graph.nodes[k].op::<BatchNorm>().cloned() else {
            continue;
        };
        if uses[k] == 0 {
            continue;
        }
        let producer = graph.nodes[k].inputs[0];
        let Some(conv) = absorbable_conv(graph, &uses, producer) else {
            continue;
        };
        let mut folded = (*conv.weights).clone();
        let cout = folded.shape[0];
        let (old_scale, old_shift) = folded
            .affine
            .take()
            .unwrap_or_else(|| (vec![1.0; cout], vec![0.0; cout]));
        let mut scale = Vec::with_capacity(cout);
        let mut shift = Vec::with_capacity(cout);
        for c in 0..cout {
            let s = bn.weight[c] as f64 / (bn.var[c] as f64 + bn.eps as f64).sqrt();
            let t = bn.bias[c] as f64 - bn.mean[c] as f64 * s;
            // (conv * s0 + t0) * s + t
            scale.push((old_scale[c] as f64 * s) as f32);
            shift.push((old_shift[c] as f64 * s + t) as f32);
        }
        folded.affine = Some((scale, shift));
        graph.nodes[producer].op = Arc::new(Conv2d {
            weights: Arc::new(folded),
            ..conv
        });
        replace_uses(graph, k, producer);
        changed = true;
    }
    changed
}

/// `add(conv(x), r)` becomes a conv with `r` as its residual, when `r` is computed before the
/// conv runs (so the fused node still sees all its inputs in execution order).
pub fn fuse_residual_add(graph: &mut Graph) -> bool {
    let mut changed = false;
    for k in 0..graph.nodes.len() {
        let uses = graph.use_counts();
        if !graph.nodes[k].op.is::<Add>() || uses[k] == 0 {
            continue;
        }
        let (a, b) = (graph.nodes[k].inputs[0], graph.nodes[k].inputs[1]);
        let fused = [(a, b), (b, a)]
            .into_iter()
            .find(|&(conv, res)| res < conv && absorbable_conv(graph, &uses, conv).is_some());
        if let Some((conv, res)) = fused {
            graph.nodes[conv].inputs.push(res);
            replace_uses(graph, k, conv);
            changed = true;
        }
    }
    changed
}

/// `upsample_add(coarse, conv(x))` becomes a conv whose epilogue adds the upsampled coarse map,
/// when `coarse` is computed before the conv runs.
///
/// Only in [`CHANNELS_LAST_GPU`]: on Mesa's software adapters it loses. The fused lateral convs
/// made the top-down stage slower (1181 against 896 ms at 600x900 on lavapipe), and lavapipe
/// (Mesa 22.3) kept about 0.8 MB of host memory per forward for that kernel.
pub fn fuse_upsample_add(graph: &mut Graph) -> bool {
    let mut changed = false;
    for k in 0..graph.nodes.len() {
        let uses = graph.use_counts();
        let Some(&UpsampleAdd(mode)) = graph.nodes[k].op::<UpsampleAdd>() else {
            continue;
        };
        if uses[k] == 0 {
            continue;
        }
        let (coarse, lateral) = (graph.nodes[k].inputs[0], graph.nodes[k].inputs[1]);
        if coarse >= lateral {
            continue;
        }
        let Some(mut conv) = absorbable_conv(graph, &uses, lateral) else {
            continue;
        };
        conv.opts.residual = ResidualMode::Upsampled(mode);
        graph.nodes[lateral].op = Arc::new(conv);
        graph.nodes[lateral].inputs.push(coarse);
        replace_uses(graph, k, lateral);
        changed = true;
    }
    changed
}

/// `relu(conv(x))` becomes a conv with ReLU in its epilogue (after the affine and the residual).
pub fn fuse_relu(graph: &mut Graph) -> bool {
    let mut changed = false;
    for k in 0..graph.nodes.len() {
        let uses = graph.use_counts();
        if !graph.nodes[k].op.is::<Relu>() || uses[k] == 0 {
            continue;
        }
        let producer = graph.nodes[k].inputs[0];
        let Some(conv) = graph.nodes[producer].op::<Conv2d>() else {
            continue;
        };
        if conv.opts.relu || uses[producer] != 1 || graph.is_output(producer) {
            continue;
        }
        let mut conv = conv.clone();
        conv.opts.relu = true;
        graph.nodes[producer].op = Arc::new(conv);
        replace_uses(graph, k, producer);
        changed = true;
    }
    changed
}

/// A padded dense convolution becomes a zero-padding op followed by the same convolution
/// without padding, which runs without bounds checks per tap (the faster kernel on every
/// adapter measured). Grouped convolutions keep their padding: their kernel checks bounds per
/// tap either way, so a padding launch would only add a pass over the map. Inserting nodes
/// renumbers the graph.
pub fn explicit_padding(graph: &mut Graph) -> bool {
    let padded_dense = |conv: &Conv2d| conv.opts.padding != (0, 0) && conv.opts.groups <= 1;
    if !graph
        .nodes
        .iter()
        .any(|n| n.op::<Conv2d>().is_some_and(padded_dense))
    {
        return false;
    }
    let mut new_index = Vec::with_capacity(graph.nodes.len());
    let mut nodes = Vec::with_capacity(graph.nodes.len() + 8);
    for mut node in graph.nodes.drain(..) {
        for v in node.inputs.iter_mut().chain(&mut node.rows) {
            *v = new_index[*v];
        }
        if let Some(conv) = node.op::<Conv2d>().filter(|c| padded_dense(c)) {
            let mut conv = conv.clone();
            nodes.push(super::Node {
                name: format!("{}.pad", node.name),
                op: Arc::new(Pad2d(conv.opts.padding)),
                inputs: vec![node.inputs[0]],
                stage: node.stage.clone(),
                rows: node.rows,
            });
            node.inputs[0] = nodes.len() - 1;
            conv.opts.padding = (0, 0);
            node.op = Arc::new(conv);
        }
        new_index.push(nodes.len());
        nodes.push(node);
    }
    for (_, v) in &mut graph.outputs {
        *v = new_index[*v];
    }
    graph.nodes = nodes;
    true
}

/// `pad2d(conv(x))` becomes a conv that writes its output inside a zero halo
/// ([`Conv2dOptions::out_padding`](crate::kernels::conv2d::Conv2dOptions)), when the conv's
/// value has no other reader: the padded input of the next convolution without a padding
/// launch. Halos of at most one pixel, which every map has room to write.
///
/// Only in the channels-last pipelines: only the cooperative-matrix kernels write halos.
pub fn halo_into_producer(graph: &mut Graph) -> bool {
    let mut changed = false;
    for k in 0..graph.nodes.len() {
        let uses = graph.use_counts();
        let Some(&Pad2d(pad)) = graph.nodes[k].op::<Pad2d>() else {
            continue;
        };
        let v = graph.nodes[k].inputs[0];
        if uses[k] == 0 || uses[v] != 1 || graph.is_output(v) || pad.0 > 1 || pad.1 > 1 {
            continue;
        }
        let Some(conv) = graph.nodes[v].op::<Conv2d>() else {
            continue;
        };
        if conv.opts.out_padding != (0, 0) {
            continue;
        }
        let mut conv = conv.clone();
        conv.opts.out_padding = pad;
        graph.nodes[v].op = Arc::new(conv);
        replace_uses(graph, k, v);
        changed = true;
    }
    changed
}

/// `pad2d(mask_levels(x))` becomes a `mask_levels` that writes its zero border itself, and
/// likewise `pad2d(group_norm_levels(x))`, when every reader of the masked value pads it the
/// same way (FCOS's last regression layer feeds two convolutions): in a detection head, the
/// padded input of the next convolutions in one launch instead of two.
pub fn pad_into_mask(graph: &mut Graph) -> bool {
    let mut changed = false;
    for k in 0..graph.nodes.len() {
        let uses = graph.use_counts();
        let Some(&Pad2d(pad)) = graph.nodes[k].op::<Pad2d>() else {
            continue;
        };
        let v = graph.nodes[k].inputs[0];
        if uses[k] == 0 || graph.is_output(v) {
            continue;
        }
        let readers: Vec<Value> = (0..graph.nodes.len())
            .filter(|&i| graph.nodes[i].inputs.contains(&v))
            .collect();
        let all_padded = readers.iter().all(|&i| {
            graph.nodes[i].inputs == [v] && graph.nodes[i].op::<Pad2d>() == Some(&Pad2d(pad))
        });
        if !all_padded || readers.len() != uses[v] {
            continue;
        }
        let Some(op) = with_border(&graph.nodes[v], pad) else {
            continue;
        };
        graph.nodes[v].op = op;
        for r in readers {
            replace_uses(graph, r, v);
        }
        changed = true;
    }
    changed
}

/// The masking op of `node` writing a zero border of `pad` around its map, if it is one that
/// has none yet.
fn with_border(node: &Node, pad: (usize, usize)) -> Option<Arc<dyn GraphOp>> {
    if let Some(mask) = node.op::<MaskLevels>() {
        return (mask.padding == (0, 0)).then(|| {
            Arc::new(MaskLevels {
                padding: pad,
                ..mask.clone()
            }) as Arc<dyn GraphOp>
        });
    }
    let norm = node.op::<GroupNormLevels>()?;
    (norm.padding == (0, 0)).then(|| {
        Arc::new(GroupNormLevels {
            padding: pad,
            ..norm.clone()
        }) as Arc<dyn GraphOp>
    })
}

/// Every grouped convolution becomes the dense block-diagonal one it equals
/// ([`dense_from_grouped`]), with `groups` 1: what kernels without a grouped form (the
/// channels-last, cooperative-matrix ones) can run, at `groups` times the multiply-adds.
///
/// Only in the channels-last pipelines, followed there by [`explicit_padding`] for the padding
/// the grouped convolutions kept: the NCHW networks run grouped convolutions on their own
/// kernel.
pub fn dense_groups(graph: &mut Graph) -> bool {
    let mut changed = false;
    for node in &mut graph.nodes {
        let Some(conv) = node.op::<Conv2d>() else {
            continue;
        };
        if conv.opts.groups <= 1 {
            continue;
        }
        let w = &conv.weights;
        let [cout, cin_g, kh, kw] = w.shape;
        // A graph's weights and groups were checked against each other when it was built (the
        // model checks each tensor's shape); weights that do not split stay as they are, for the
        // shape checks to report at their node.
        let Ok(weight) = dense_from_grouped(&w.weight, w.shape, conv.opts.groups) else {
            continue;
        };
        let weights = Arc::new(HostConv {
            shape: [cout, cin_g * conv.opts.groups, kh, kw],
            weight,
            bias: w.bias.clone(),
            affine: w.affine.clone(),
        });
        let mut opts = conv.opts;
        opts.groups = 1;
        node.op = Arc::new(Conv2d { weights, opts });
        changed = true;
    }
    changed
}

/// Drops nodes whose value nobody uses (the graph input always stays) and renumbers the rest.
pub fn remove_dead(graph: &mut Graph) {
    // Walk backwards so that removing a consumer can make its producers dead in the same sweep.
    let mut live = vec![false; graph.nodes.len()];
    live[0] = true;
    for &(_, v) in &graph.outputs {
        live[v] = true;
    }
    for i in (0..graph.nodes.len()).rev() {
        if live[i] {
            for j in graph.nodes[i].reads() {
                live[j] = true;
            }
        }
    }
    let mut new_index = vec![usize::MAX; graph.nodes.len()];
    let mut nodes = Vec::new();
    for (i, node) in graph.nodes.drain(..).enumerate() {
        if live[i] {
            new_index[i] = nodes.len();
            nodes.push(node);
        }
    }
    for n in &mut nodes {
        for v in n.inputs.iter_mut().chain(&mut n.rows) {
            *v = new_index[*v];
        }
    }
    for (_, v) in &mut graph.outputs {
        *v = new_index[*v];
    }
    graph.nodes = nodes;
}
