//! Graph rewrites. Each pass is a small function that reports whether it changed the graph;
//! [`optimize`] runs them until none does. They only fuse a producer into its consumer when the
//! producer's value has no other use, so no intermediate that someone reads disappears.

use std::sync::Arc;

use super::{Graph, HostConv, Op, Value};
use crate::kernels::conv2d::{dense_from_grouped, ResidualMode};

/// A pass: rewrites the graph in place and says whether anything changed.
pub type Pass = fn(&mut Graph) -> bool;

/// The passes [`optimize`] runs, with their names for reports.
pub const PASSES: &[(&str, Pass)] = &[
    ("fold_batch_norm", fold_batch_norm),
    ("fuse_residual_add", fuse_residual_add),
    ("fuse_relu", fuse_relu),
    ("explicit_padding", explicit_padding),
];

/// Runs every pass until none changes the graph, dropping the nodes each one makes dead.
/// Returns the names of the passes that changed something, in the order they did.
pub fn optimize(graph: &mut Graph) -> Vec<&'static str> {
    let mut applied = Vec::new();
    loop {
        let mut changed = false;
        for &(name, pass) in PASSES {
            if pass(graph) {
                // A bypassed node still lists its inputs as uses until it is gone, which would
                // make its producer look shared to the next pass.
                remove_dead(graph);
                applied.push(name);
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    applied
}

/// A conv whose output can absorb the next op into its epilogue: no epilogue stage that must
/// come after the absorbed op, and no other reader of its value.
fn absorbable_conv(graph: &Graph, uses: &[usize], v: Value) -> Option<Arc<HostConv>> {
    let node = &graph.nodes[v];
    match &node.op {
        Op::Conv2d { weights, opts }
            if !opts.relu && node.inputs.len() == 1 && uses[v] == 1 && !graph.is_output(v) =>
        {
            Some(weights.clone())
        }
        _ => None,
    }
}

/// Redirects every use of `from` (as input or output) to `to`.
fn replace_uses(graph: &mut Graph, from: Value, to: Value) {
    for n in &mut graph.nodes {
        for i in &mut n.inputs {
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
        let Op::BatchNorm(bn) = &graph.nodes[k].op else {
            continue;
        };
        if uses[k] == 0 {
            continue;
        }
        let producer = graph.nodes[k].inputs[0];
        let Some(conv) = absorbable_conv(graph, &uses, producer) else {
            continue;
        };
        let mut folded = (*conv).clone();
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
        if let Op::Conv2d { weights, .. } = &mut graph.nodes[producer].op {
            *weights = Arc::new(folded);
        }
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
        if !matches!(graph.nodes[k].op, Op::Add) || uses[k] == 0 {
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
/// Not in [`PASSES`]: on Mesa's software adapters it loses. The fused lateral convs made the
/// top-down stage slower (1181 against 896 ms at 600x900 on lavapipe), and lavapipe (Mesa 22.3)
/// kept about 0.8 MB of host memory per forward for that kernel. Run it on a graph by hand
/// where it wins.
pub fn fuse_upsample_add(graph: &mut Graph) -> bool {
    let mut changed = false;
    for k in 0..graph.nodes.len() {
        let uses = graph.use_counts();
        let Op::UpsampleAdd(mode) = graph.nodes[k].op else {
            continue;
        };
        if uses[k] == 0 {
            continue;
        }
        let (coarse, lateral) = (graph.nodes[k].inputs[0], graph.nodes[k].inputs[1]);
        if coarse >= lateral || absorbable_conv(graph, &uses, lateral).is_none() {
            continue;
        }
        graph.nodes[lateral].inputs.push(coarse);
        if let Op::Conv2d { opts, .. } = &mut graph.nodes[lateral].op {
            opts.residual = ResidualMode::Upsampled(mode);
        }
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
        if !matches!(graph.nodes[k].op, Op::Relu) || uses[k] == 0 {
            continue;
        }
        let producer = graph.nodes[k].inputs[0];
        let node = &graph.nodes[producer];
        let ok = matches!(&node.op, Op::Conv2d { opts, .. } if !opts.relu)
            && uses[producer] == 1
            && !graph.is_output(producer);
        if ok {
            if let Op::Conv2d { opts, .. } = &mut graph.nodes[producer].op {
                opts.relu = true;
            }
            replace_uses(graph, k, producer);
            changed = true;
        }
    }
    changed
}

/// A padded dense convolution becomes a zero-padding op followed by the same convolution
/// without padding, which runs without bounds checks per tap (the faster kernel on every
/// adapter measured). Grouped convolutions keep their padding: their kernel checks bounds per
/// tap either way, so a padding launch would only add a pass over the map. Inserting nodes
/// renumbers the graph.
pub fn explicit_padding(graph: &mut Graph) -> bool {
    let padded_dense = |op: &Op| match op {
        Op::Conv2d { opts, .. } => opts.padding != (0, 0) && opts.groups <= 1,
        _ => false,
    };
    if !graph.nodes.iter().any(|n| padded_dense(&n.op)) {
        return false;
    }
    let mut new_index = Vec::with_capacity(graph.nodes.len());
    let mut nodes = Vec::with_capacity(graph.nodes.len() + 8);
    for mut node in graph.nodes.drain(..) {
        for v in &mut node.inputs {
            *v = new_index[*v];
        }
        if padded_dense(&node.op) {
            if let Op::Conv2d { opts, .. } = &mut node.op {
                nodes.push(super::Node {
                    name: format!("{}.pad", node.name),
                    op: Op::Pad2d(opts.padding),
                    inputs: vec![node.inputs[0]],
                    stage: node.stage.clone(),
                });
                node.inputs[0] = nodes.len() - 1;
                opts.padding = (0, 0);
            }
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
/// Not in [`PASSES`]: only the channels-last (cooperative-matrix) kernels write halos, so the
/// executor runs it on graphs it stores channels-last. Returns whether anything changed; the
/// padding nodes it bypasses are left for [`remove_dead`].
pub fn halo_into_producer(graph: &mut Graph) -> bool {
    let mut changed = false;
    for k in 0..graph.nodes.len() {
        let uses = graph.use_counts();
        let Op::Pad2d(pad) = graph.nodes[k].op else {
            continue;
        };
        let v = graph.nodes[k].inputs[0];
        if uses[k] == 0 || uses[v] != 1 || graph.is_output(v) || pad.0 > 1 || pad.1 > 1 {
            continue;
        }
        let Op::Conv2d { opts, .. } = &mut graph.nodes[v].op else {
            continue;
        };
        if opts.out_padding != (0, 0) {
            continue;
        }
        opts.out_padding = pad;
        replace_uses(graph, k, v);
        changed = true;
    }
    changed
}

/// Every grouped convolution becomes the dense block-diagonal one it equals
/// ([`dense_from_grouped`]), with `groups` 1: what kernels without a grouped form (the
/// channels-last, cooperative-matrix ones) can run, at `groups` times the multiply-adds.
///
/// Not in [`PASSES`]: the NCHW networks run grouped convolutions on their own kernel, so the
/// executor runs it on graphs it stores channels-last, followed by [`explicit_padding`] for
/// the padding the grouped convolutions kept. Returns whether anything changed.
pub fn dense_groups(graph: &mut Graph) -> bool {
    let mut changed = false;
    for node in &mut graph.nodes {
        let Op::Conv2d { weights, opts } = &mut node.op else {
            continue;
        };
        if opts.groups <= 1 {
            continue;
        }
        let [cout, cin_g, kh, kw] = weights.shape;
        // A graph's weights and groups were checked against each other when it was built (the
        // model checks each tensor's shape); weights that do not split stay as they are, for the
        // shape checks to report at their node.
        let Ok(weight) = dense_from_grouped(&weights.weight, weights.shape, opts.groups) else {
            continue;
        };
        *weights = Arc::new(HostConv {
            shape: [cout, cin_g * opts.groups, kh, kw],
            weight,
            bias: weights.bias.clone(),
            affine: weights.affine.clone(),
        });
        opts.groups = 1;
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
            for &j in &graph.nodes[i].inputs {
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
        for v in &mut n.inputs {
            *v = new_index[*v];
        }
    }
    for (_, v) in &mut graph.outputs {
        *v = new_index[*v];
    }
    graph.nodes = nodes;
}
