//! Runs a [`Graph`] on the GPU. Weights are uploaded once; for each input shape a [`Plan`] is
//! built once (and cached): value shapes, pooled buffers assigned by liveness, every pipeline and
//! bind group. A forward is then one command encoder and one submit: copy the input in, run every
//! dispatch, copy the outputs into fresh tensors. Nothing is read back inside a forward.
//!
//! A graph may run in [`Precision::F16`]: its weights and values are then stored as f16 (the
//! kernels accumulate in f32), the input is converted on the way in and the outputs come back as
//! f32 tensors, all within the same submit.

use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::plan::{plan_memory, MemoryPlan};
use super::tune::{self, Source, TuneCache, Tuning, TUNE_BUDGET_S};
use super::{at_node, infer_shapes, Graph, Op, ShapeRule};
use crate::error::Result;
use crate::gpu::{Dispatch, ErrorScopes, GpuContext};
use crate::kernels::batch_norm::{self, BatchNormWeights};
use crate::kernels::conv2d::{self, coop, select, Conv2dOptions, Conv2dWeights, KernelChoice};
use crate::kernels::convert;
use crate::kernels::elementwise;
use crate::kernels::max_pool2d::{self, MaxPool2dOptions};
use crate::kernels::pad2d;
use crate::kernels::upsample_add::{self, UpsampleMode};
use crate::precision::Precision;
use crate::tensor::{check_shape_in, numel, padded_bytes, MemoryFormat, Tensor};

/// Plans kept per executor; each holds its activation buffers, so the cache stays small.
const PLAN_CACHE_SIZE: usize = 4;

/// Which convolution algorithms the executor uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Algorithms {
    /// Direct convolution everywhere (register-tiled). The default: on the software adapters it
    /// is faster than the fused Winograd kernel (measured 13.9 against 10.0 GFLOP/s on a
    /// 256-channel 3x3 conv at 150x225).
    #[default]
    Direct,
    /// Winograd F(2x2, 3x3) for stride-1 3x3 convolutions, direct for the rest: 2.25x fewer
    /// multiplies, for adapters with the registers to hold its 16-position accumulators.
    Winograd,
}

/// A label and the range of a plan's dispatches timed together.
type TimedGroup = (String, Range<usize>);

/// How finely [`Executor::profile_async`] times a forward.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Granularity {
    /// One time per stage of the network (`stem`, `layer1`, ..., `smooth`).
    #[default]
    Stages,
    /// One time per kernel launch: for tuning (each launch gets its own compute pass).
    Ops,
}

/// An op with its weights on the GPU.
enum GpuOp {
    Input,
    Conv2d(Conv2dWeights, Conv2dOptions),
    BatchNorm(BatchNormWeights),
    MaxPool2d(MaxPool2dOptions),
    Pad2d((usize, usize)),
    UpsampleAdd(UpsampleMode),
    Relu,
    Add,
}

struct GpuNode {
    name: String,
    stage: String,
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
    /// The stage of each dispatch, parallel to `dispatches`.
    stages: Vec<String>,
    /// The node of each dispatch, parallel to `dispatches`.
    names: Vec<String>,
    /// The direct-convolution FLOPs of each dispatch (0 for ops that are not convolutions).
    dispatch_flops: Vec<u64>,
    outputs: Vec<(String, usize)>,
    memory: MemoryPlan,
    /// Scratch for split-K partial sums, shared by the plan's launches.
    _partials: Option<wgpu::Buffer>,
    flops: u64,
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
        self.memory.arena_bytes.len()
    }

    /// The kernel launches of one forward, in order.
    pub fn dispatches(&self) -> &[Dispatch] {
        &self.dispatches
    }

    /// Floating-point operations of one forward, counted as a direct convolution would do them
    /// (2 per multiply-add); the convolutions' work, which is nearly all of it.
    pub fn conv_flops(&self) -> u64 {
        self.flops
    }

    /// The FLOPs of each launch as [`Plan::conv_flops`] counts them (0 for the other ops).
    pub fn dispatch_flops(&self) -> &[u64] {
        &self.dispatch_flops
    }

    /// Each launch as (node name, kernel): which kernel each op runs on this device.
    pub fn kernels(&self) -> Vec<(&str, &str)> {
        self.names
            .iter()
            .zip(&self.dispatches)
            .map(|(n, d)| (n.as_str(), d.label()))
            .collect()
    }

    /// Each launch as (node name, kernel, configuration): the kernel's block and split where
    /// it has them (see [`Dispatch::config`]).
    pub fn launches(&self) -> Vec<(&str, &str, &str)> {
        self.names
            .iter()
            .zip(&self.dispatches)
            .map(|(n, d)| (n.as_str(), d.label(), d.config()))
            .collect()
    }

    /// Consecutive launches timed together: per stage (`stem`, `layer1`, ...) or per op
    /// (`layer1.0.conv2 conv2d_rows`), as (label, range of [`Plan::dispatches`]).
    pub fn groups(&self, granularity: Granularity) -> Vec<(String, Range<usize>)> {
        match granularity {
            Granularity::Ops => self
                .kernels()
                .into_iter()
                .enumerate()
                .map(|(i, (node, kernel))| (format!("{node} {kernel}"), i..i + 1))
                .collect(),
            Granularity::Stages => {
                let mut out: Vec<(String, Range<usize>)> = Vec::new();
                for (i, s) in self.stages.iter().enumerate() {
                    match out.last_mut() {
                        Some((last, range)) if last == s => range.end = i + 1,
                        _ => out.push((s.clone(), i..i + 1)),
                    }
                }
                out
            }
        }
    }

    /// The stages in execution order, each once.
    pub fn stages(&self) -> Vec<&str> {
        self.groups(Granularity::Stages)
            .into_iter()
            .map(|(_, range)| self.stages[range.start].as_str())
            .collect()
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
    precision: Precision,
    layout: MemoryFormat,
    /// How convolutions get their kernel configuration (resolved for the device).
    tuning: Tuning,
    nodes: Vec<GpuNode>,
    outputs: Vec<(String, usize)>,
    weight_bytes: u64,
    plans: Mutex<Vec<Arc<Plan>>>,
}

impl Executor {
    /// Uploads the graph's weights for direct convolution. The host copies are dropped with the
    /// graph.
    pub fn new(ctx: &GpuContext, graph: Graph) -> Result<Self> {
        Self::with_algorithms(ctx, graph, Algorithms::Direct)
    }

    /// Uploads the graph's weights for the given choice of convolution algorithms.
    pub fn with_algorithms(ctx: &GpuContext, graph: Graph, algorithms: Algorithms) -> Result<Self> {
        Self::with_options(ctx, graph, algorithms, Precision::F32)
    }

    /// Uploads the graph's weights for the given convolution algorithms, stored in `precision`
    /// like the values the graph computes. [`crate::Error::Unsupported`] if the device cannot use f16.
    pub fn with_options(
        ctx: &GpuContext,
        graph: Graph,
        algorithms: Algorithms,
        precision: Precision,
    ) -> Result<Self> {
        ctx.check_precision("Executor", precision)?;
        // Tensor cores where the device has them, the kernel passed its check there and every
        // op of the graph takes the channels-last values they need.
        let cooperative = precision == Precision::F16
            && graph.nodes.iter().all(|n| takes_channels_last(&n.op))
            && coop::verified(ctx);
        let layout = if cooperative {
            MemoryFormat::ChannelsLast
        } else {
            MemoryFormat::Nchw
        };
        let mut graph = graph;
        if cooperative {
            // On a GPU the top-down merge belongs in the lateral convolutions' epilogue (one
            // pass over the map fewer per level); on CPU adapters the separate kernel was
            // measured faster (see passes::fuse_upsample_add).
            let gpu = ctx.adapter().device_type != wgpu::DeviceType::Cpu;
            // Each pass leaves the nodes it bypassed for remove_dead, and those would count as
            // readers in the next pass.
            if gpu && super::passes::fuse_upsample_add(&mut graph) {
                super::passes::remove_dead(&mut graph);
            }
            // The cooperative-matrix kernels have no grouped form, and read padded inputs.
            if super::passes::dense_groups(&mut graph) {
                super::passes::explicit_padding(&mut graph);
            }
            if super::passes::halo_into_producer(&mut graph) {
                super::passes::remove_dead(&mut graph);
            }
        }
        let mut weight_bytes = 0;
        let mut nodes = Vec::with_capacity(graph.nodes.len());
        for node in graph.nodes {
            let shape_rule = node.op.shape_rule();
            let op = match node.op {
                Op::Input => GpuOp::Input,
                Op::Conv2d { weights: w, opts } => {
                    let affine = w.affine.as_ref().map(|(s, t)| (s.as_slice(), t.as_slice()));
                    let algorithm = select::algorithm(
                        w.shape,
                        &opts,
                        precision,
                        cooperative,
                        algorithms == Algorithms::Winograd,
                    );
                    let gw = Conv2dWeights::with_precision(
                        ctx,
                        w.shape,
                        &w.weight,
                        w.bias.as_deref(),
                        affine,
                        algorithm,
                        precision,
                    )
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
                Op::Pad2d(pad) => GpuOp::Pad2d(pad),
                Op::UpsampleAdd(m) => GpuOp::UpsampleAdd(m),
                Op::Relu => GpuOp::Relu,
                Op::Add => GpuOp::Add,
            };
            nodes.push(GpuNode {
                name: node.name,
                stage: node.stage,
                op,
                shape_rule,
                inputs: node.inputs,
            });
        }
        Ok(Executor {
            ctx: ctx.clone(),
            precision,
            layout,
            tuning: Tuning::Off,
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

    /// How weights and values are stored.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// The same executor with convolutions configured as `tuning` says (see [`Tuning`]; the
    /// executors this module makes use the presets). Plans already built keep theirs.
    pub fn with_tuning(mut self, tuning: Tuning) -> Self {
        self.tuning = tuning.resolve(&self.ctx);
        self
    }

    /// How convolutions get their kernel configuration on this device: [`Tuning::Off`] (the
    /// presets), [`Tuning::Cache`] or [`Tuning::Full`].
    pub fn tuning(&self) -> Tuning {
        self.tuning
    }

    /// How the values are stored: channels-last where the convolutions run on cooperative
    /// matrices, NCHW otherwise.
    pub fn memory_format(&self) -> MemoryFormat {
        self.layout
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

    fn value_shapes(&self, input_shape: [usize; 4]) -> Result<Vec<[usize; 4]>> {
        infer_shapes(
            self.nodes
                .iter()
                .map(|n| (n.name.as_str(), n.shape_rule, n.inputs.as_slice())),
            input_shape,
        )
    }

    /// The shape of every value for `input_shape`, checked against the device's limits without
    /// allocating anything: [`crate::Error::LimitExceeded`] names the first value too large to
    /// bind.
    pub fn check_limits(&self, input_shape: [usize; 4]) -> Result<Vec<[usize; 4]>> {
        let shapes = self.value_shapes(input_shape)?;
        for (node, &shape) in self.nodes.iter().zip(&shapes) {
            check_shape_in(
                &self.ctx,
                "plan",
                &format!("the output of `{}`", node.name),
                shape,
                self.layout,
            )?;
        }
        Ok(shapes)
    }

    /// The shape of each named output for `input_shape`, without checking device limits.
    pub fn output_shapes(&self, input_shape: [usize; 4]) -> Result<Vec<(String, [usize; 4])>> {
        let shapes = self.value_shapes(input_shape)?;
        Ok(self
            .outputs
            .iter()
            .map(|(name, v)| (name.clone(), shapes[*v]))
            .collect())
    }

    fn build_plan(&self, input_shape: [usize; 4]) -> Result<Plan> {
        let ctx = &self.ctx;
        let shapes = self.check_limits(input_shape)?;
        let sizes: Vec<u64> = shapes
            .iter()
            .map(|&s| padded_bytes(s, self.precision, self.layout))
            .collect();
        let inputs: Vec<Vec<usize>> = self.nodes.iter().map(|n| n.inputs.clone()).collect();
        let outputs: Vec<usize> = self.outputs.iter().map(|&(_, v)| v).collect();
        let limits = ctx.limits();
        let mut memory = plan_memory(
            &sizes,
            &inputs,
            &outputs,
            limits.min_storage_buffer_offset_alignment as u64,
            limits.max_buffer_size,
        );
        // Each convolution's kernel configuration: the preset, or the tuning cache's, or (to be
        // timed below) the fastest candidate. The arenas leave room after them for what the
        // cooperative-matrix kernels' last tiles read past a value's end (any value may end an
        // arena), for every configuration that may run.
        let mut cache = (self.tuning != Tuning::Off).then(TuneCache::load);
        let mut choices = vec![None; self.nodes.len()];
        let mut sources = vec![Source::Preset; self.nodes.len()];
        let mut to_time: Vec<(usize, String, Vec<KernelChoice>, Vec<usize>)> = Vec::new();
        let (mut slack, mut tuning_bytes) = (0u64, 0u64);
        for (i, node) in self.nodes.iter().enumerate() {
            let GpuOp::Conv2d(w, o) = &node.op else {
                continue;
            };
            let at = |e| at_node(&node.name, e);
            let x = shapes[node.inputs[0]];
            let mut choice = select::choice(ctx, x, w, o).map_err(at)?;
            let mut considered = vec![choice];
            if let Some(cache) = &cache {
                // Candidates whose partial sums could not be bound are never tried.
                let mut candidates = select::candidates(ctx, x, w, o).map_err(at)?;
                candidates.retain(|&c| {
                    partial_bytes(ctx, x, w, o, c).is_ok_and(|b| b <= ctx.max_binding_bytes())
                });
                let key = tune::key(ctx, self.precision, self.layout, x, w, o);
                if let Some(cached) = cache.get(&key, &candidates) {
                    choice = cached;
                    sources[i] = Source::Cache;
                    considered = vec![cached];
                } else if self.tuning == Tuning::Full && candidates.len() > 1 {
                    // Convolutions of one shape are timed once and share the result.
                    match to_time.iter_mut().find(|(_, k, _, _)| *k == key) {
                        Some((_, _, _, same)) => same.push(i),
                        None => to_time.push((i, key, candidates.clone(), Vec::new())),
                    }
                    considered = candidates;
                }
            }
            for c in considered {
                if let KernelChoice::Coop(_) = c {
                    let side = coop::support(ctx).map_or(16, |s| s.side);
                    let read = coop::input_bytes_read(x, w.shape(), o.stride, side);
                    slack = slack.max(read.saturating_sub(sizes[node.inputs[0]]));
                }
                tuning_bytes = tuning_bytes.max(partial_bytes(ctx, x, w, o, c).map_err(at)?);
            }
            choices[i] = Some(choice);
        }
        let slack = slack.next_multiple_of(16);
        for bytes in &mut memory.arena_bytes {
            *bytes += slack;
            ctx.check_buffer_size("plan", "an activation buffer", *bytes)?;
        }

        let buffers: Vec<wgpu::Buffer> = memory
            .arena_bytes
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
            .enumerate()
            .map(|(v, &shape)| {
                let arena = &buffers[memory.arena_of[v]];
                Tensor::view(
                    arena.clone(),
                    memory.offset_of[v],
                    shape,
                    self.precision,
                    self.layout,
                )
            })
            .collect();

        if !to_time.is_empty() {
            self.tune(
                &values,
                to_time,
                tuning_bytes,
                &mut choices,
                &mut sources,
                cache.as_mut(),
            );
        }

        // One buffer for the split-K partial sums of the chosen configurations, reused by
        // every launch.
        let mut bytes = 0;
        for (i, node) in self.nodes.iter().enumerate() {
            if let (GpuOp::Conv2d(w, o), Some(c)) = (&node.op, choices[i]) {
                let x = shapes[node.inputs[0]];
                bytes =
                    bytes.max(partial_bytes(ctx, x, w, o, c).map_err(|e| at_node(&node.name, e))?);
            }
        }
        ctx.check_buffer_size("plan", "the split-K partial sums", bytes)?;
        let partials = (bytes > 0).then(|| ctx.storage_zeroed("split-K partial sums", bytes));

        let mut dispatches = Vec::with_capacity(self.nodes.len());
        let mut stages = Vec::with_capacity(self.nodes.len());
        let mut names = Vec::with_capacity(self.nodes.len());
        let mut dispatch_flops = Vec::with_capacity(self.nodes.len());
        for (i, node) in self.nodes.iter().enumerate() {
            let node_flops = match &node.op {
                GpuOp::Conv2d(w, _) => {
                    let [_, cin, kh, kw] = w.shape();
                    2 * (numel(shapes[i]) * cin * kh * kw) as u64
                }
                _ => 0,
            };
            let x = |k: usize| &values[node.inputs[k]];
            let out = &values[i];
            let launches = match &node.op {
                GpuOp::Input => continue,
                GpuOp::Conv2d(w, o) => conv2d::prepare_with(
                    ctx,
                    x(0),
                    w,
                    node.inputs.get(1).map(|&r| &values[r]),
                    out,
                    o,
                    choices[i],
                    partials.as_ref(),
                ),
                GpuOp::BatchNorm(bn) => batch_norm::prepare(ctx, x(0), bn, out).map(|d| vec![d]),
                GpuOp::MaxPool2d(o) => max_pool2d::prepare(ctx, x(0), out, o).map(|d| vec![d]),
                GpuOp::Pad2d(pad) => pad2d::prepare(ctx, x(0), out, *pad).map(|d| vec![d]),
                GpuOp::UpsampleAdd(m) => {
                    upsample_add::prepare(ctx, x(0), x(1), out, *m).map(|d| vec![d])
                }
                GpuOp::Relu => elementwise::prepare_relu(ctx, x(0), out).map(|d| vec![d]),
                GpuOp::Add => elementwise::prepare_add(ctx, x(0), x(1), out).map(|d| vec![d]),
            }
            .map_err(|e| at_node(&node.name, e))?;
            // A split-K convolution is two launches; its FLOPs count on the first.
            for (k, mut d) in launches.into_iter().enumerate() {
                if choices[i].is_some() {
                    let config = match d.config() {
                        "" => sources[i].to_string(),
                        c => format!("{c}; {}", sources[i]),
                    };
                    d = d.with_config(config);
                }
                dispatches.push(d);
                stages.push(node.stage.clone());
                names.push(node.name.clone());
                dispatch_flops.push(if k == 0 { node_flops } else { 0 });
            }
        }
        Ok(Plan {
            input_shape,
            values,
            dispatches,
            stages,
            names,
            flops: dispatch_flops.iter().sum(),
            dispatch_flops,
            outputs: self.outputs.clone(),
            memory,
            _partials: partials,
        })
    }

    /// Times the candidates of `to_time` (node, cache key, candidates, nodes of the same shape)
    /// on the plan's own values, within [`TUNE_BUDGET_S`], and takes the fastest of each into
    /// `choices` and the cache. Tuning only ever improves on the presets: a candidate that
    /// cannot be prepared is left out, and a trial that fails keeps the preset, with a warning.
    fn tune(
        &self,
        values: &[Tensor],
        to_time: Vec<(usize, String, Vec<KernelChoice>, Vec<usize>)>,
        scratch_bytes: u64,
        choices: &mut [Option<KernelChoice>],
        sources: &mut [Source],
        mut cache: Option<&mut TuneCache>,
    ) {
        let ctx = &self.ctx;
        if let Err(e) = ctx.check_buffer_size("tuning", "the split-K partial sums", scratch_bytes) {
            log::warn!("not tuning: {e}");
            return;
        }
        // Scratch for the candidates' partial sums, freed once they are timed.
        let scratch =
            (scratch_bytes > 0).then(|| ctx.storage_zeroed("tuning partial sums", scratch_bytes));
        let start = Instant::now();
        for (i, key, candidates, same) in to_time {
            // Building the candidates' pipelines is the slow part; the convolutions left when
            // the budget runs out keep their presets and stay out of the cache.
            if start.elapsed().as_secs_f64() > TUNE_BUDGET_S {
                log::info!("tuning budget of {TUNE_BUDGET_S} s spent; the remaining convolutions keep their presets");
                break;
            }
            let node = &self.nodes[i];
            let GpuOp::Conv2d(w, o) = &node.op else {
                continue;
            };
            let residual = node.inputs.get(1).map(|&r| &values[r]);
            let x = &values[node.inputs[0]];
            let trial: tune::Trial = candidates
                .into_iter()
                .filter_map(|c| {
                    conv2d::prepare_with(
                        ctx,
                        x,
                        w,
                        residual,
                        &values[i],
                        o,
                        Some(c),
                        scratch.as_ref(),
                    )
                    .map_err(|e| log::debug!("`{}`: candidate {c} left out: {e}", node.name))
                    .ok()
                    .map(|launches| (c, launches))
                })
                .collect();
            match tune::time_trial(ctx, &trial) {
                Ok(Some((choice, secs))) => {
                    log::debug!("`{}`: {choice} ({:.1} us)", node.name, secs * 1e6);
                    for j in std::iter::once(i).chain(same) {
                        choices[j] = Some(choice);
                        sources[j] = Source::Tuned;
                    }
                    if let Some(cache) = cache.as_deref_mut() {
                        cache.insert(key, choice);
                    }
                }
                Ok(None) => {}
                Err(e) => log::warn!("`{}`: tuning failed ({e}); it keeps its preset", node.name),
            }
        }
        log::info!("tuned in {:.2} s", start.elapsed().as_secs_f64());
        if let Some(Err(e)) = cache.map(|c| c.save()) {
            log::warn!("{e}");
        }
    }

    /// Runs the graph on `input` and returns the named outputs, still on the GPU. The work is
    /// submitted, never waited for, so this does not block: downloading an output waits for it.
    pub fn forward(&self, input: &Tensor) -> Result<Vec<(String, Tensor)>> {
        self.submit(input, None)
    }

    /// Runs one forward with a GPU timestamp around each stage (or each launch, as
    /// `granularity` says) and returns the outputs and the GPU time of each in seconds, in
    /// execution order; `None` for the times when the adapter has no timestamp queries. Waits
    /// for the GPU.
    pub async fn profile_async(
        &self,
        input: &Tensor,
        granularity: Granularity,
    ) -> Result<(Vec<(String, Tensor)>, Option<Vec<(String, f64)>>)> {
        if !self.ctx.supports_timestamps() {
            return Ok((self.forward(input)?, None));
        }
        let plan = self.plan(input.shape())?;
        let groups = plan.groups(granularity);
        let count = 2 * groups.len() as u32;
        let device = self.ctx.device();
        let queries = device.create_query_set(&wgpu::QuerySetDescriptor {
            label: Some("stage timestamps"),
            ty: wgpu::QueryType::Timestamp,
            count,
        });
        let outputs = self.submit(input, Some((&queries, &groups)))?;
        let (ticks, tick_s) = self.ctx.read_timestamps(&queries, count).await?;
        let times = groups
            .into_iter()
            .enumerate()
            .map(|(i, (label, _))| {
                let dt = ticks[2 * i + 1].saturating_sub(ticks[2 * i]);
                (label, dt as f64 * tick_s)
            })
            .collect();
        Ok((outputs, Some(times)))
    }

    /// Records and submits one forward: copy the input in, every dispatch (one compute pass, or
    /// one per group with timestamps around each when `timestamps` is given), copy the outputs
    /// into fresh tensors.
    fn submit(
        &self,
        input: &Tensor,
        timestamps: Option<(&wgpu::QuerySet, &[TimedGroup])>,
    ) -> Result<Vec<(String, Tensor)>> {
        self.ctx.check_alive()?;
        let plan = self.plan(input.shape())?;
        let ctx = &self.ctx;
        let device = ctx.device();
        let scopes = ErrorScopes::push(device);
        let outputs: Vec<(String, Tensor)> = plan
            .outputs
            .iter()
            .map(|(name, v)| Ok((name.clone(), Tensor::empty(ctx, plan.values[*v].shape())?)))
            .collect::<Result<_>>()?;
        // Values of another precision than the caller's tensors go through conversion kernels,
        // in passes of their own so that the stage timestamps measure the network alone.
        let input_value = &plan.values[0];
        let stored_as = |t: &Tensor| (t.precision(), t.memory_format());
        let convert_in = (stored_as(input) != stored_as(input_value))
            .then(|| convert::prepare(ctx, input, input_value))
            .transpose()?;
        let boundary = (Precision::F32, MemoryFormat::Nchw);
        let convert_out: Vec<Dispatch> = plan
            .outputs
            .iter()
            .zip(&outputs)
            .filter(|((_, v), _)| stored_as(&plan.values[*v]) != boundary)
            .map(|((_, v), (_, t))| convert::prepare(ctx, &plan.values[*v], t))
            .collect::<Result<_>>()?;
        let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("forward"),
        });
        match &convert_in {
            None => encoder.copy_buffer_to_buffer(
                input.buffer(),
                input.offset(),
                input_value.buffer(),
                input_value.offset(),
                input.word_size(),
            ),
            Some(d) => record_pass(&mut encoder, "convert input", [d]),
        }
        match timestamps {
            None => {
                let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some("forward"),
                    timestamp_writes: None,
                });
                for d in &plan.dispatches {
                    d.record(&mut pass);
                }
            }
            Some((query_set, groups)) => {
                for (i, (label, range)) in groups.iter().enumerate() {
                    let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                        label: Some(label),
                        timestamp_writes: Some(wgpu::ComputePassTimestampWrites {
                            query_set,
                            beginning_of_pass_write_index: Some(2 * i as u32),
                            end_of_pass_write_index: Some(2 * i as u32 + 1),
                        }),
                    });
                    for d in &plan.dispatches[range.clone()] {
                        d.record(&mut pass);
                    }
                }
            }
        }
        if !convert_out.is_empty() {
            record_pass(&mut encoder, "convert outputs", &convert_out);
        }
        for ((_, v), (_, t)) in plan.outputs.iter().zip(&outputs) {
            if stored_as(&plan.values[*v]) != boundary {
                continue;
            }
            encoder.copy_buffer_to_buffer(
                plan.values[*v].buffer(),
                plan.values[*v].offset(),
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

/// Records `dispatches` into a compute pass of their own.
fn record_pass<'a>(
    encoder: &mut wgpu::CommandEncoder,
    label: &str,
    dispatches: impl IntoIterator<Item = &'a Dispatch>,
) {
    let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
        label: Some(label),
        timestamp_writes: None,
    });
    for d in dispatches {
        d.record(&mut pass);
    }
}

/// Whether an op has a kernel for channels-last values (the cooperative-matrix convolutions
/// read padded inputs, so a dense convolution must have had its padding made explicit; a
/// grouped one gets it made explicit when it is made dense).
fn takes_channels_last(op: &Op) -> bool {
    match op {
        Op::Input | Op::MaxPool2d(_) | Op::Pad2d(_) | Op::UpsampleAdd(_) | Op::Relu | Op::Add => {
            true
        }
        Op::Conv2d { opts, .. } => opts.padding == (0, 0) || opts.groups > 1,
        Op::BatchNorm(_) => false,
    }
}

/// Bytes of the split-K partial sums of a convolution of `x` by `w` run as `choice`.
fn partial_bytes(
    ctx: &GpuContext,
    x: [usize; 4],
    w: &Conv2dWeights,
    o: &Conv2dOptions,
    choice: KernelChoice,
) -> Result<u64> {
    let out = conv2d::conv_shape(x, w.shape(), o)?;
    Ok(match choice {
        KernelChoice::Coop(c) => {
            let side = coop::support(ctx).map_or(16, |s| s.side);
            coop::partial_bytes(out, w.cout_pad(), c, side)
        }
        KernelChoice::Nchw { split } => conv2d::direct::partial_bytes(out, split),
        KernelChoice::Grouped => 0,
    })
}
