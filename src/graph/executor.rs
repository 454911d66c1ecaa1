//! Runs a [`Graph`] on the GPU. Weights are uploaded once; for each input shape a [`Plan`] is
//! built once (and cached): value shapes, pooled buffers assigned by liveness, every pipeline and
//! bind group. A forward is then one command encoder and one submit: copy the input in, run every
//! dispatch, copy the outputs into fresh tensors. Nothing is read back inside a forward.

use std::sync::{Arc, Mutex};

use super::plan::{plan_memory, MemoryPlan};
use super::{at_node, infer_shapes, Graph, Op, ShapeRule};
use crate::error::Result;
use crate::gpu::{Dispatch, ErrorScopes, GpuContext};
use crate::kernels::batch_norm::{self, BatchNormWeights};
use crate::kernels::conv2d::{self, Conv2dOptions, Conv2dWeights};
use crate::kernels::elementwise;
use crate::kernels::max_pool2d::{self, MaxPool2dOptions};
use crate::kernels::upsample_add::{self, UpsampleMode};
use crate::tensor::{check_shape, numel, Tensor, ELEMENT_BYTES};

/// Plans kept per executor; each holds its activation buffers, so the cache stays small.
const PLAN_CACHE_SIZE: usize = 4;

/// An op with its weights on the GPU.
enum GpuOp {
    Input,
    Conv2d(Conv2dWeights, Conv2dOptions),
    BatchNorm(BatchNormWeights),
    MaxPool2d(MaxPool2dOptions),
    UpsampleAdd(UpsampleMode),
    Relu,
    Add,
}

struct GpuNode {
    name: String,
    op: GpuOp,
    shape_rule: ShapeRule,
    inputs: Vec<usize>,
}

/// Everything needed to run the graph on one input shape.
pub struct Plan {
    input_shape: [usize; 4],
    /// The tensor each value lives in (views of the pooled buffers).
    values: Vec<Tensor>,
    dispatches: Vec<Dispatch>,
    outputs: Vec<(String, usize)>,
    memory: MemoryPlan,
}

impl Plan {
    /// The input shape this plan runs.
    pub fn input_shape(&self) -> [usize; 4] {
        self.input_shape
    }

    /// Bytes of the pooled activation buffers.
    pub fn activation_bytes(&self) -> u64 {
        self.memory.total_bytes()
    }

    /// The most bytes live at once: the floor any plan must pay.
    pub fn activation_lower_bound(&self) -> u64 {
        self.memory.lower_bound
    }

    /// Number of pooled buffers.
    pub fn buffer_count(&self) -> usize {
        self.memory.slot_bytes.len()
    }

    /// The kernel launches of one forward, in order.
    pub fn dispatches(&self) -> &[Dispatch] {
        &self.dispatches
    }

    /// The shape of each named output.
    pub fn output_shapes(&self) -> Vec<(String, [usize; 4])> {
        self.outputs
            .iter()
            .map(|(name, v)| (name.clone(), self.values[*v].shape()))
            .collect()
    }
}

/// A graph uploaded to the GPU, ready to run on any input shape.
pub struct Executor {
    ctx: GpuContext,
    nodes: Vec<GpuNode>,
    outputs: Vec<(String, usize)>,
    weight_bytes: u64,
    plans: Mutex<Vec<Arc<Plan>>>,
}

impl Executor {
    /// Uploads the graph's weights. The host copies are dropped with the graph.
    pub fn new(ctx: &GpuContext, graph: Graph) -> Result<Self> {
        let mut weight_bytes = 0;
        let mut nodes = Vec::with_capacity(graph.nodes.len());
        for node in graph.nodes {
            let shape_rule = node.op.shape_rule();
            let op = match node.op {
                Op::Input => GpuOp::Input,
                Op::Conv2d { weights: w, opts } => {
                    let affine = w.affine.as_ref().map(|(s, t)| (s.as_slice(), t.as_slice()));
                    let gw = Conv2dWeights::new(ctx, w.shape, &w.weight, w.bias.as_deref(), affine)
                        .map_err(|e| at_node(&node.name, e))?;
                    weight_bytes += gw.byte_size();
                    GpuOp::Conv2d(gw, opts)
                }
                Op::BatchNorm(bn) => {
                    let gw =
                        BatchNormWeights::new(ctx, &bn.mean, &bn.var, &bn.weight, &bn.bias, bn.eps)
                            .map_err(|e| at_node(&node.name, e))?;
                    weight_bytes += gw.byte_size();
                    GpuOp::BatchNorm(gw)
                }
                Op::MaxPool2d(o) => GpuOp::MaxPool2d(o),
                Op::UpsampleAdd(m) => GpuOp::UpsampleAdd(m),
                Op::Relu => GpuOp::Relu,
                Op::Add => GpuOp::Add,
            };
            nodes.push(GpuNode {
                name: node.name,
                op,
                shape_rule,
                inputs: node.inputs,
            });
        }
        Ok(Executor {
            ctx: ctx.clone(),
            nodes,
            outputs: graph.outputs,
            weight_bytes,
            plans: Mutex::new(Vec::new()),
        })
    }

    /// Bytes of weights on the GPU.
    pub fn weight_bytes(&self) -> u64 {
        self.weight_bytes
    }

    /// Number of nodes (kernel launches plus the input).
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// The GPU context the executor runs on.
    pub fn context(&self) -> &GpuContext {
        &self.ctx
    }

    /// The plan for `input_shape`, built on first use and cached (most recent first).
    pub fn plan(&self, input_shape: [usize; 4]) -> Result<Arc<Plan>> {
        let mut plans = self.plans.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = plans.iter().position(|p| p.input_shape == input_shape) {
            let plan = plans.remove(i);
            plans.insert(0, plan.clone());
            return Ok(plan);
        }
        let plan = Arc::new(self.build_plan(input_shape)?);
        plans.insert(0, plan.clone());
        plans.truncate(PLAN_CACHE_SIZE);
        Ok(plan)
    }

    fn build_plan(&self, input_shape: [usize; 4]) -> Result<Plan> {
        let ctx = &self.ctx;
        let shapes = infer_shapes(
            self.nodes
                .iter()
                .map(|n| (n.name.as_str(), n.shape_rule, n.inputs.as_slice())),
            input_shape,
        )?;
        for (node, &shape) in self.nodes.iter().zip(&shapes) {
            check_shape(
                ctx,
                "plan",
                &format!("the output of `{}`", node.name),
                shape,
            )?;
        }
        let sizes: Vec<u64> = shapes
            .iter()
            .map(|&s| numel(s) as u64 * ELEMENT_BYTES)
            .collect();
        let inputs: Vec<Vec<usize>> = self.nodes.iter().map(|n| n.inputs.clone()).collect();
        let outputs: Vec<usize> = self.outputs.iter().map(|&(_, v)| v).collect();
        let memory = plan_memory(&sizes, &inputs, &outputs);

        let buffers: Vec<wgpu::Buffer> = memory
            .slot_bytes
            .iter()
            .map(|&bytes| {
                ctx.device().create_buffer(&wgpu::BufferDescriptor {
                    label: Some("activation pool"),
                    size: bytes,
                    usage: Tensor::usage(),
                    mapped_at_creation: false,
                })
            })
            .collect();
        let values: Vec<Tensor> = shapes
            .iter()
            .zip(&memory.slot_of)
            .map(|(&shape, &slot)| Tensor::from_buffer(buffers[slot].clone(), shape))
            .collect::<Result<_>>()?;

        let mut dispatches = Vec::with_capacity(self.nodes.len());
        for (i, node) in self.nodes.iter().enumerate() {
            let x = |k: usize| &values[node.inputs[k]];
            let out = &values[i];
            let d = match &node.op {
                GpuOp::Input => continue,
                GpuOp::Conv2d(w, o) => conv2d::prepare(
                    ctx,
                    x(0),
                    w,
                    node.inputs.get(1).map(|&r| &values[r]),
                    out,
                    o,
                ),
                GpuOp::BatchNorm(bn) => batch_norm::prepare(ctx, x(0), bn, out),
                GpuOp::MaxPool2d(o) => max_pool2d::prepare(ctx, x(0), out, o),
                GpuOp::UpsampleAdd(m) => upsample_add::prepare(ctx, x(0), x(1), out, *m),
                GpuOp::Relu => elementwise::prepare_relu(ctx, x(0), out),
                GpuOp::Add => elementwise::prepare_add(ctx, x(0), x(1), out),
            }
            .map_err(|e| at_node(&node.name, e))?;
            dispatches.push(d);
        }
        Ok(Plan {
            input_shape,
            values,
            dispatches,
            outputs: self.outputs.clone(),
            memory,
        })
    }

    /// Runs the graph on `input` and returns the named outputs, still on the GPU. The work is
    /// submitted, never waited for, so this does not block: downloading an output waits for it.
    pub fn forward(&self, input: &Tensor) -> Result<Vec<(String, Tensor)>> {
        let plan = self.plan(input.shape())?;
        let ctx = &self.ctx;
        let device = ctx.device();
        let scopes = ErrorScopes::push(device);
        let outputs: Vec<(String, Tensor)> = plan
            .outputs
            .iter()
            .map(|(name, v)| Ok((name.clone(), Tensor::empty(ctx, plan.values[*v].shape())?)))
            .collect::<Result<_>>()?;
        let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("forward"),
        });
        encoder.copy_buffer_to_buffer(
            input.buffer(),
            0,
            plan.values[0].buffer(),
            0,
            input.byte_size(),
        );
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("forward"),
                timestamp_writes: None,
            });
            for d in &plan.dispatches {
                d.record(&mut pass);
            }
        }
        for ((_, v), (_, t)) in plan.outputs.iter().zip(&outputs) {
            encoder.copy_buffer_to_buffer(
                plan.values[*v].buffer(),
                0,
                t.buffer(),
                0,
                t.byte_size(),
            );
        }
        ctx.queue().submit([encoder.finish()]);
        scopes.check("forward")?;
        Ok(outputs)
    }
}
