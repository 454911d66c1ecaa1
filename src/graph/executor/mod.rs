//! Runs a [`Graph`] on the GPU, in three steps, each in a file of its own:
//! - `lower`: the pass pipelines for the device, the values' layout, the weights uploaded;
//! - `planning`: for each input shape, once (and cached), value shapes, pooled buffers
//!   assigned by liveness, each convolution's configuration, every pipeline and bind group;
//! - `record`: a forward is then one command encoder and one submit: copy the input in, run
//!   every dispatch, copy the outputs into pooled tensors. Nothing is read back inside it.
//!
//! A graph may run in [`Precision::F16`]: its weights and values are then stored as f16 (the
//! kernels accumulate in f32), the input is converted on the way in and the outputs come back as
//! f32 tensors, all within the same submit. A batch too large for the device's bindings runs
//! in chunks.

mod chunks;
mod lower;
mod planning;
mod pool;
mod record;

use std::sync::{Arc, Mutex};

use self::lower::{lower, value_shapes, GpuNode};
pub use self::planning::Plan;
use crate::error::{Error, Result};
use crate::gpu::GpuContext;
use crate::graph::passes::Fusion;
use crate::graph::tune::Tuning;
use crate::graph::Graph;
use crate::precision::Precision;
use crate::tensor::{MemoryFormat, Tensor};

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

/// How finely [`Executor::profile_async`] times a forward.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Granularity {
    /// One time per stage of the network (`stem`, `layer1`, ..., `smooth`).
    #[default]
    Stages,
    /// One time per kernel launch: for tuning (each launch gets its own compute pass).
    Ops,
}

/// How the values of a graph are laid out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LayoutChoice {
    /// Channels-last where the convolutions run on cooperative matrices: f16 values, a
    /// device that has them and on which they passed their check, and every op with a
    /// channels-last kernel; NCHW otherwise.
    #[default]
    Auto,
    /// NCHW everywhere.
    Nchw,
    /// Channels-last everywhere but the ops' records (see
    /// [`GraphOp::output_layout`](crate::graph::ops::GraphOp::output_layout)), on
    /// cooperative matrices where [`LayoutChoice::Auto`] would use them and on the portable
    /// direct kernel elsewhere (f32, or a device without them): for tests and comparisons.
    /// A graph with an op that has no channels-last kernel is refused.
    ChannelsLast,
}

impl std::str::FromStr for LayoutChoice {
    type Err = String;

    /// `auto`, `nchw` or `channels-last` (`channels_last`, `nhwc`).
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(LayoutChoice::Auto),
            "nchw" => Ok(LayoutChoice::Nchw),
            "channels-last" | "channels_last" | "nhwc" => Ok(LayoutChoice::ChannelsLast),
            _ => Err(format!(
                "unknown layout {s:?}; use auto, nchw or channels-last"
            )),
        }
    }
}

/// How an executor lowers and runs its graph.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExecutorOptions {
    /// Whether the fusing pass pipeline runs.
    pub fusion: Fusion,
    /// Direct convolution (the default) or Winograd for stride-1 3x3 convs.
    pub algorithms: Algorithms,
    /// How weights and values are stored.
    pub precision: Precision,
    /// How convolutions get their kernel configuration.
    pub tuning: Tuning,
    /// How the values are laid out.
    pub layout: LayoutChoice,
}

/// A graph uploaded to the GPU, ready to run on any input shape.
pub struct Executor {
    ctx: GpuContext,
    precision: Precision,
    layout: MemoryFormat,
    cooperative: bool,
    /// How convolutions get their kernel configuration (resolved for the device).
    tuning: Tuning,
    nodes: Vec<GpuNode>,
    outputs: Vec<(String, usize)>,
    weight_bytes: u64,
    passes_applied: Vec<&'static str>,
    plans: Mutex<Vec<Arc<Plan>>>,
}

impl Executor {
    /// Uploads the graph's weights, as it is (no fusing passes), for direct convolution. The
    /// host copies are dropped with the graph.
    pub fn new(ctx: &GpuContext, graph: Graph) -> Result<Self> {
        Self::with_algorithms(ctx, graph, Algorithms::Direct)
    }

    /// Uploads the graph's weights, as it is, for the given choice of convolution algorithms.
    pub fn with_algorithms(ctx: &GpuContext, graph: Graph, algorithms: Algorithms) -> Result<Self> {
        Self::with_options(ctx, graph, algorithms, Precision::F32)
    }

    /// Uploads the graph's weights, as it is, for the given convolution algorithms, stored in
    /// `precision` like the values the graph computes. [`Error::Unsupported`] if the
    /// device cannot use f16.
    pub fn with_options(
        ctx: &GpuContext,
        graph: Graph,
        algorithms: Algorithms,
        precision: Precision,
    ) -> Result<Self> {
        let options = ExecutorOptions {
            fusion: Fusion::Unfused,
            algorithms,
            precision,
            tuning: Tuning::Off,
            layout: LayoutChoice::Auto,
        };
        Self::build(ctx, graph, options)
    }

    /// Runs the pass pipelines `options` and the device call for, lowers the graph (its
    /// weights uploaded, the host copies dropped with it) and resolves the tuning mode.
    pub fn build(ctx: &GpuContext, graph: Graph, options: ExecutorOptions) -> Result<Self> {
        ctx.check_precision("Executor", options.precision)?;
        let lowered = lower(ctx, graph, &options)?;
        Ok(Executor {
            ctx: ctx.clone(),
            precision: options.precision,
            layout: lowered.layout,
            cooperative: lowered.cooperative,
            tuning: options.tuning.resolve(ctx),
            nodes: lowered.nodes,
            outputs: lowered.outputs,
            weight_bytes: lowered.weight_bytes,
            passes_applied: lowered.passes_applied,
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

    /// The graph passes that changed the graph when it was lowered, in the order they did.
    pub fn passes_applied(&self) -> &[&'static str] {
        &self.passes_applied
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
    /// matrices (or where [`LayoutChoice::ChannelsLast`] asked for it), NCHW otherwise. The
    /// records some ops write are NCHW whatever this is.
    pub fn memory_format(&self) -> MemoryFormat {
        self.layout
    }

    /// Whether the channels-last convolutions run on cooperative matrices.
    pub fn cooperative(&self) -> bool {
        self.cooperative
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
        if let Some(i) = plans.iter().position(|p| p.input_shape() == input_shape) {
            if i > 0 {
                let plan = plans.remove(i);
                plans.insert(0, plan);
            }
            return Ok(plans[0].clone());
        }
        let plan = Arc::new(self.build_plan(input_shape)?);
        plans.insert(0, plan.clone());
        plans.truncate(PLAN_CACHE_SIZE);
        Ok(plan)
    }

    /// The shape of every value for `input_shape`, checked against the device's limits without
    /// allocating anything: [`Error::LimitExceeded`] names the first value too large to
    /// bind.
    pub fn check_limits(&self, input_shape: [usize; 4]) -> Result<Vec<[usize; 4]>> {
        self.checked_shapes(input_shape)
    }

    /// The shape of each named output for `input_shape`, without checking device limits.
    pub fn output_shapes(&self, input_shape: [usize; 4]) -> Result<Vec<(String, [usize; 4])>> {
        let shapes = value_shapes(&self.nodes, input_shape)?;
        Ok(self
            .outputs
            .iter()
            .map(|(name, v)| (name.clone(), shapes[*v]))
            .collect())
    }

    /// Runs the graph on `input` and returns the named outputs, still on the GPU. The work is
    /// submitted, never waited for, so this does not block: downloading an output waits for it.
    ///
    /// The outputs are reused by a later forward once every one of them has been dropped. When
    /// the batch's values exceed the device's storage binding size, the batch runs in the
    /// largest chunks that fit and the outputs are assembled on the GPU; when a single image is
    /// too large, the error names the limit and the largest input of its aspect ratio that fits.
    pub fn forward(&self, input: &Tensor) -> Result<Vec<(String, Tensor)>> {
        self.ctx.check_alive()?;
        match self.plan(input.shape()) {
            Ok(plan) => record::submit(&self.ctx, &plan, input, None),
            // Only a value too large to bind is a matter of the input's size; a limit met
            // elsewhere in planning is reported as it is.
            Err(e @ Error::LimitExceeded { .. }) => match self.check_limits(input.shape()) {
                Err(too_large @ Error::LimitExceeded { .. }) => {
                    self.forward_too_large(input, too_large)
                }
                _ => Err(e),
            },
            Err(e) => Err(e),
        }
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
        self.ctx.check_alive()?;
        let plan = self.plan(input.shape())?;
        let groups = plan.groups(granularity);
        let count = 2 * groups.len() as u32;
        let device = self.ctx.device();
        let queries = device.create_query_set(&wgpu::QuerySetDescriptor {
            label: Some("stage timestamps"),
            ty: wgpu::QueryType::Timestamp,
            count,
        });
        let outputs = record::submit(&self.ctx, &plan, input, Some((&queries, &groups)))?;
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
}
