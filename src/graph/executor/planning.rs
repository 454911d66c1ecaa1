//! Planning: for one input shape, every value's shape and place in the pooled buffers (by
//! liveness, see [`plan`](crate::graph::plan)), each convolution's kernel configuration (preset,
//! cached or tuned), the split-K scratch they share, and every launch with its pipeline and
//! bind group, built once so that a forward only records them.

use std::ops::Range;
use std::time::Instant;

use super::lower::value_shapes;
use super::pool::OutputPool;
use super::{Executor, Granularity};
use crate::error::Result;
use crate::gpu::Dispatch;
use crate::graph::at_node;
use crate::graph::indirect::{size_by_rows, NodeLaunches};
use crate::graph::ops::{ConvChoice, Launch};
use crate::graph::plan::{plan_memory, MemoryPlan};
use crate::graph::tune::{self, Source, TuneCache, Tuning, TUNE_BUDGET_S};
use crate::kernels::conv2d::DeviceProfile;
use crate::tensor::{check_shape_in, padded_bytes, Tensor};

/// Everything needed to run the graph on one input shape.
pub struct Plan {
    input_shape: [usize; 4],
    /// The tensor each value lives in (views of the pooled buffers).
    pub(super) values: Vec<Tensor>,
    pub(super) dispatches: Vec<Dispatch>,
    /// The stage of each dispatch, parallel to `dispatches`.
    stages: Vec<String>,
    /// The node of each dispatch, parallel to `dispatches`.
    names: Vec<String>,
    /// The direct-convolution FLOPs of each dispatch (0 for ops that are not convolutions).
    dispatch_flops: Vec<u64>,
    pub(super) outputs: Vec<(String, usize)>,
    memory: MemoryPlan,
    /// Scratch for split-K partial sums, shared by the plan's launches.
    _partials: Option<wgpu::Buffer>,
    flops: u64,
    /// Output tensors handed out by earlier forwards, reused once their holders drop them.
    pub(super) pool: OutputPool,
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

/// A convolution to time: its node, its cache key, the candidates, and the nodes of the same
/// key that take its result.
struct ToTime {
    node: usize,
    key: String,
    candidates: Vec<ConvChoice>,
    same: Vec<usize>,
}

impl Executor {
    /// The shape of every value for `input_shape`, checked against the device's limits.
    pub(super) fn checked_shapes(&self, input_shape: [usize; 4]) -> Result<Vec<[usize; 4]>> {
        let shapes = value_shapes(&self.nodes, input_shape)?;
        for (node, &shape) in self.nodes.iter().zip(&shapes) {
            check_shape_in(
                &self.ctx,
                "plan",
                &format!("the output of `{}`", node.name),
                shape,
                node.layout,
            )?;
        }
        Ok(shapes)
    }

    pub(super) fn build_plan(&self, input_shape: [usize; 4]) -> Result<Plan> {
        let ctx = &self.ctx;
        let shapes = self.checked_shapes(input_shape)?;
        let sizes: Vec<u64> = shapes
            .iter()
            .zip(&self.nodes)
            .map(|(&s, node)| padded_bytes(s, node.precision, node.layout))
            .collect();
        // The records sizing a node's launches are read by its grid launch: live until then.
        let inputs: Vec<Vec<usize>> = self
            .nodes
            .iter()
            .map(|n| n.inputs.iter().copied().chain(n.rows).collect())
            .collect();
        let outputs: Vec<usize> = self.outputs.iter().map(|&(_, v)| v).collect();
        let limits = ctx.limits();
        let mut memory = plan_memory(
            &sizes,
            &inputs,
            &outputs,
            limits.min_storage_buffer_offset_alignment as u64,
            limits.max_buffer_size,
        );
        let cache = (self.tuning != Tuning::Off).then(TuneCache::load);
        let (mut choices, mut sources, to_time, needs) =
            self.choose(&shapes, &sizes, cache.as_ref())?;
        // Any value may end an arena, so each arena leaves room after it for what the
        // cooperative-matrix kernels' last tiles read past a value's end.
        let slack = needs.slack.next_multiple_of(16);
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
                    self.nodes[v].precision,
                    self.nodes[v].layout,
                )
            })
            .collect();

        if let (false, Some(cache)) = (to_time.is_empty(), cache) {
            self.tune(
                &values,
                cache,
                to_time,
                needs.tuning_scratch,
                &mut choices,
                &mut sources,
            );
        }

        // One buffer for the split-K partial sums of the chosen configurations, reused by
        // every launch.
        let profile = DeviceProfile::of(ctx);
        let mut bytes = 0;
        for (i, node) in self.nodes.iter().enumerate() {
            if let (Some(conv), Some(c)) = (node.op.as_conv(), choices[i]) {
                let ins: Vec<[usize; 4]> = node.inputs.iter().map(|&v| shapes[v]).collect();
                let need = conv
                    .scratch_bytes(&profile, &ins, c)
                    .map_err(|e| at_node(&node.name, e))?;
                bytes = bytes.max(need);
            }
        }
        ctx.check_buffer_size("plan", "the split-K partial sums", bytes)?;
        let partials = (bytes > 0).then(|| ctx.storage_zeroed("split-K partial sums", bytes));

        let mut prepared = Vec::with_capacity(self.nodes.len());
        for (i, node) in self.nodes.iter().enumerate() {
            let ins: Vec<&Tensor> = node.inputs.iter().map(|&v| &values[v]).collect();
            let launch = Launch {
                choice: choices[i],
                scratch: partials.as_ref(),
            };
            let launches = node
                .op
                .prepare(ctx, &ins, &values[i], launch)
                .map_err(|e| at_node(&node.name, e))?;
            prepared.push(NodeLaunches {
                name: &node.name,
                launches,
                out: &values[i],
                rows: node.rows.map(|v| (v, &values[v])),
            });
        }
        let grids = size_by_rows(ctx, &mut prepared)?;

        let mut dispatches = Vec::with_capacity(self.nodes.len());
        let mut stages = Vec::with_capacity(self.nodes.len());
        let mut names = Vec::with_capacity(self.nodes.len());
        let mut dispatch_flops = Vec::with_capacity(self.nodes.len());
        for (i, (node, (prepared, grid))) in self
            .nodes
            .iter()
            .zip(prepared.into_iter().zip(grids))
            .enumerate()
        {
            if let Some(grid) = grid {
                dispatches.push(grid);
                stages.push(node.stage.clone());
                names.push(format!("{} rows", node.name));
                dispatch_flops.push(0);
            }
            // A split-K convolution is two launches; its FLOPs count on the first.
            for (k, mut d) in prepared.launches.into_iter().enumerate() {
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
                dispatch_flops.push(if k == 0 { node.op.flops(shapes[i]) } else { 0 });
            }
        }
        Ok(Plan {
            input_shape,
            pool: OutputPool::default(),
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

    /// Each convolution's kernel configuration: the preset, or the tuning cache's, or (to be
    /// timed) the fastest candidate; with the conv nodes to time and what every configuration
    /// that may run needs beyond the values.
    #[allow(clippy::type_complexity)]
    fn choose(
        &self,
        shapes: &[[usize; 4]],
        sizes: &[u64],
        cache: Option<&TuneCache>,
    ) -> Result<(Vec<Option<ConvChoice>>, Vec<Source>, Vec<ToTime>, Needs)> {
        let profile = DeviceProfile::of(&self.ctx);
        let mut choices = vec![None; self.nodes.len()];
        let mut sources = vec![Source::Preset; self.nodes.len()];
        let mut to_time: Vec<ToTime> = Vec::new();
        let mut needs = Needs::default();
        for (i, node) in self.nodes.iter().enumerate() {
            let Some(conv) = node.op.as_conv() else {
                continue;
            };
            let at = |e| at_node(&node.name, e);
            let ins: Vec<[usize; 4]> = node.inputs.iter().map(|&v| shapes[v]).collect();
            let mut choice = conv.preset(&profile, &ins).map_err(at)?;
            let mut considered = vec![choice];
            if let Some(cache) = &cache {
                let candidates = conv.candidates(&profile, &ins).map_err(at)?;
                let key = conv.tune_key(&profile, &ins);
                if let Some(cached) = cache.get(&key, &candidates) {
                    choice = cached;
                    sources[i] = Source::Cache;
                    considered = vec![cached];
                } else if self.tuning == Tuning::Full && candidates.len() > 1 {
                    // Convolutions of one shape are timed once and share the result.
                    match to_time.iter_mut().find(|t| t.key == key) {
                        Some(t) => t.same.push(i),
                        None => to_time.push(ToTime {
                            node: i,
                            key,
                            candidates: candidates.clone(),
                            same: Vec::new(),
                        }),
                    }
                    considered = candidates;
                }
            }
            for c in considered {
                let read = conv.bytes_read(&profile, &ins, c);
                needs.slack = needs.slack.max(read.saturating_sub(sizes[node.inputs[0]]));
                let scratch = conv.scratch_bytes(&profile, &ins, c).map_err(at)?;
                needs.tuning_scratch = needs.tuning_scratch.max(scratch);
            }
            choices[i] = Some(choice);
        }
        Ok((choices, sources, to_time, needs))
    }

    /// Times the candidates of `to_time` on the plan's own values, within [`TUNE_BUDGET_S`],
    /// and takes the fastest of each into `choices` and the cache. Tuning only ever improves on
    /// the presets: a candidate that cannot be prepared is left out, and a trial that fails
    /// keeps the preset, with a warning.
    fn tune(
        &self,
        values: &[Tensor],
        mut cache: TuneCache,
        to_time: Vec<ToTime>,
        scratch_bytes: u64,
        choices: &mut [Option<ConvChoice>],
        sources: &mut [Source],
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
        for ToTime {
            node: i,
            key,
            candidates,
            same,
        } in to_time
        {
            // Building the candidates' pipelines is the slow part; the convolutions left when
            // the budget runs out keep their presets and stay out of the cache.
            if start.elapsed().as_secs_f64() > TUNE_BUDGET_S {
                log::info!("tuning budget of {TUNE_BUDGET_S} s spent; the remaining convolutions keep their presets");
                break;
            }
            let node = &self.nodes[i];
            let ins: Vec<&Tensor> = node.inputs.iter().map(|&v| &values[v]).collect();
            let trial: tune::Trial = candidates
                .into_iter()
                .filter_map(|c| {
                    let launch = Launch {
                        choice: Some(c),
                        scratch: scratch.as_ref(),
                    };
                    node.op
                        .prepare(ctx, &ins, &values[i], launch)
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
                    cache.insert(key, choice);
                }
                Ok(None) => {}
                Err(e) => log::warn!("`{}`: tuning failed ({e}); it keeps its preset", node.name),
            }
        }
        log::info!("tuned in {:.2} s", start.elapsed().as_secs_f64());
        if let Err(e) = cache.save() {
            log::warn!("{e}");
        }
    }
}

/// What the configurations a plan may run need beyond the values themselves.
#[derive(Default)]
struct Needs {
    /// Bytes read past the end of a value, the most of any.
    slack: u64,
    /// Split-K scratch of the largest candidate, for tuning.
    tuning_scratch: u64,
}
