//! Lowering: the graph's pass pipelines for the device, the layout its values are stored in,
//! and every op's weights uploaded. What comes out keeps no host weights. Every value is
//! stored in the graph's layout but the records of the ops that say otherwise
//! ([`GraphOp::output_layout`](crate::graph::ops::GraphOp::output_layout)).

use super::{ExecutorOptions, LayoutChoice};
use crate::error::{Error, Result};
use crate::gpu::GpuContext;
use crate::graph::ops::{GpuOp, Target};
use crate::graph::passes::{pipelines, Fusion};
use crate::graph::{at_node, infer_shapes, Graph, Step};
use crate::kernels::conv2d::coop;
use crate::precision::Precision;
use crate::tensor::MemoryFormat;

/// A node with its op on the GPU.
pub(super) struct GpuNode {
    pub name: String,
    pub stage: String,
    pub op: Box<dyn GpuOp>,
    /// How many inputs the op takes, kept for shape inference.
    pub arity: std::ops::RangeInclusive<usize>,
    /// How the op's output is stored.
    pub precision: Precision,
    /// How the op's output is laid out: the graph's layout, or NCHW for records.
    pub layout: MemoryFormat,
    pub inputs: Vec<usize>,
    /// The records whose live rows size the node's launches (see `Graph::set_rows`).
    pub rows: Option<usize>,
}

/// A graph lowered onto a device.
pub(super) struct Lowered {
    pub nodes: Vec<GpuNode>,
    pub outputs: Vec<(String, usize)>,
    pub layout: MemoryFormat,
    /// Whether the channels-last convolutions run on cooperative matrices.
    pub cooperative: bool,
    pub weight_bytes: u64,
    /// The passes that changed the graph, in the order they did.
    pub passes_applied: Vec<&'static str>,
}

/// Runs the pipelines [`pipelines`] names for `options` and the device, chooses the layout
/// (see [`LayoutChoice`]), and uploads every op's weights.
pub(super) fn lower(ctx: &GpuContext, graph: Graph, options: &ExecutorOptions) -> Result<Lowered> {
    // The passes index their nodes' inputs: a miswired graph is refused before they run.
    graph.check_wiring()?;
    let mut graph = graph;
    let gpu = ctx.adapter().device_type != wgpu::DeviceType::Cpu;
    let mut passes_applied = Vec::new();
    let mut run = |graph: &mut Graph, layout, cooperative| {
        for pipeline in pipelines(options.fusion, layout, gpu, cooperative) {
            passes_applied.extend(pipeline.run(graph));
        }
    };
    run(&mut graph, None, false);
    let precision = options.precision;
    let all_take = |layout| graph.nodes.iter().all(|n| n.op.supports(layout, precision));
    // Tensor cores where the values are f16, the device has them and the kernel passed its
    // check there; asked only once every op left takes the channels-last values they need.
    let coop_verified = || precision == Precision::F16 && coop::verified(ctx);
    let (layout, cooperative) = match options.layout {
        LayoutChoice::Auto => {
            let cooperative = all_take(MemoryFormat::ChannelsLast) && coop_verified();
            let layout = if cooperative {
                MemoryFormat::ChannelsLast
            } else {
                MemoryFormat::Nchw
            };
            (layout, cooperative)
        }
        LayoutChoice::Nchw => (MemoryFormat::Nchw, false),
        LayoutChoice::ChannelsLast => {
            if let Some(node) = graph
                .nodes
                .iter()
                .find(|n| !n.op.supports(MemoryFormat::ChannelsLast, precision))
            {
                return Err(Error::invalid(
                    "Executor",
                    format!(
                        "channels-last values were asked for, but `{}` ({}) has no channels-last \
                     {precision} kernel{}; use LayoutChoice::Auto or LayoutChoice::Nchw",
                        node.name,
                        node.op.kind(),
                        if options.fusion == Fusion::Unfused {
                            " in an unfused graph (batch norm is folded and padding made explicit \
                         only by the fusing passes)"
                        } else {
                            ""
                        }
                    ),
                ));
            }
            (MemoryFormat::ChannelsLast, coop_verified())
        }
    };
    run(&mut graph, Some(layout), cooperative);
    let target = Target {
        precision: options.precision,
        layout,
        cooperative,
        winograd: options.algorithms == super::Algorithms::Winograd,
    };
    let mut weight_bytes = 0;
    let mut nodes = Vec::with_capacity(graph.nodes.len());
    for node in graph.nodes {
        let op = node
            .op
            .lower(ctx, &target)
            .map_err(|e| at_node(&node.name, e))?;
        weight_bytes += op.weight_bytes();
        nodes.push(GpuNode {
            name: node.name,
            stage: node.stage,
            arity: node.op.arity(),
            precision: node.op.output_precision(target.precision),
            layout: node.op.output_layout(target.layout),
            op,
            inputs: node.inputs,
            rows: node.rows,
        });
    }
    Ok(Lowered {
        nodes,
        outputs: graph.outputs,
        layout,
        cooperative,
        weight_bytes,
        passes_applied,
    })
}

/// The shape of every value of lowered `nodes` for an input of `input` shape.
pub(super) fn value_shapes(nodes: &[GpuNode], input: [usize; 4]) -> Result<Vec<[usize; 4]>> {
    infer_shapes(
        nodes.iter().map(|n| {
            let op = n.op.as_ref();
            Step {
                name: &n.name,
                arity: n.arity.clone(),
                inputs: &n.inputs,
                shape: Box::new(move |ins: &[[usize; 4]]| op.output_shape(ins)),
            }
        }),
        input,
    )
}
