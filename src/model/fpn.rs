//! The Feature Pyramid Network: the ResNet bottom-up path, then the head of its layout (1x1
//! lateral convs, the top-down path of upsample-and-add, 3x3 smoothing), giving P2..P5 (P1 too
//! where the stem feeds it) with [`FpnConfig::pyramid_channels`] channels, plus the extra levels
//! above them.

use std::path::Path;

use crate::error::{Error, Result};
use crate::gpu::GpuContext;
use crate::graph::executor::{Algorithms, Executor, ExecutorOptions, LayoutChoice, Plan};
pub use crate::graph::passes::Fusion;
use crate::graph::tune::Tuning;
use crate::graph::{Graph, Value};
use crate::model::checkpoint::Checkpoint;
use crate::model::config::{FpnConfig, Layout};
use crate::model::naming;
use crate::model::pyramid::Pyramid;
use crate::model::pyramid_head::PyramidHead;
use crate::model::resnet::ResNet;
use crate::model::seed_head::SeedHead;
use crate::precision::Precision;
use crate::tensor::Tensor;
use crate::tensor_file::TensorMap;
use crate::weights::{VarBuilder, VarStore};

/// Channels of every pyramid level unless a checkpoint says otherwise (every shipped detector's
/// width, and the one the detectors' heads read).
pub const PYRAMID_CHANNELS: usize = 256;
/// Channels of an RGB input image, the default; a checkpoint's `conv1.weight` can say otherwise
/// ([`FpnConfig::in_channels`]).
pub const INPUT_CHANNELS: usize = 3;

/// How a network is built: graph passes, convolution algorithms and storage precision.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FpnOptions {
    /// Fused epilogues (the default) or one kernel per op.
    pub fusion: Fusion,
    /// Direct convolution (the default) or Winograd for stride-1 3x3 convs.
    pub algorithms: Algorithms,
    /// f32 (the default; PyTorch parity about 1e-6) or f16 weights and activations (f32 sums;
    /// 1e-3 to 2e-3 of relative error, half the memory). Inputs and outputs are f32 either way.
    pub precision: Precision,
    /// How each convolution's kernel configuration is picked: by default timed on GPUs at plan
    /// time and cached on disk, presets on CPU adapters; `FPN_TUNE=off|cache|full` overrides
    /// the default. See [`Tuning`].
    pub tuning: Tuning,
    /// How the values are laid out: by default channels-last where the convolutions run on
    /// cooperative matrices, NCHW elsewhere (see [`LayoutChoice`]).
    pub layout: LayoutChoice,
}

impl FpnOptions {
    /// The same options with weights and activations stored in `precision`.
    pub fn with_precision(self, precision: Precision) -> Self {
        FpnOptions { precision, ..self }
    }

    /// The same options with convolutions configured as `tuning` says.
    pub fn with_tuning(self, tuning: Tuning) -> Self {
        FpnOptions { tuning, ..self }
    }

    /// The same options with the graph passes on or off.
    pub fn with_fusion(self, fusion: Fusion) -> Self {
        FpnOptions { fusion, ..self }
    }

    /// The same options with the values laid out as `layout` says.
    pub fn with_layout(self, layout: LayoutChoice) -> Self {
        FpnOptions { layout, ..self }
    }
}

/// An FPN whose weights live on the GPU, ready to run on NCHW tensors of any size and batch.
pub struct Fpn {
    executor: Executor,
    config: FpnConfig,
    origin: String,
}

impl Fpn {
    /// Loads a PyTorch `state_dict` saved as safetensors, or as a PyTorch `.pth`/`.pt` or a
    /// detectron2 `.pkl` (told apart by content; see [`crate::tensor_file::parse_file`]). The
    /// layout (seed, torchvision or timm, detectron2 or mmdetection, a whole detection model's
    /// backbone included), block counts and extra levels come from its names and shapes; see
    /// [`Checkpoint::open_with`] for the settings names cannot show, and to change the batch
    /// norm epsilon before building.
    pub fn from_safetensors(ctx: &GpuContext, path: &Path) -> Result<Self> {
        Self::from_safetensors_with(ctx, path, FpnOptions::default())
    }

    /// [`Fpn::from_safetensors`] with build options (f16 storage, say).
    pub fn from_safetensors_with(
        ctx: &GpuContext,
        path: &Path,
        options: FpnOptions,
    ) -> Result<Self> {
        let checkpoint = Checkpoint::open(path)?;
        Self::with_options(ctx, checkpoint.store(), checkpoint.config(), options)
    }

    /// Deterministic seeded random weights, for shape demos and benchmarks.
    pub fn random(ctx: &GpuContext, config: FpnConfig, seed: u64) -> Result<Self> {
        Self::new(ctx, &VarStore::random(seed), config, Fusion::Fused)
    }

    /// Builds the network from `store` with `config`, runs the graph passes unless `fusion` is
    /// `Unfused`, and uploads the weights. Every missing, unexpected or mis-shaped tensor is
    /// reported in one error.
    pub fn new(
        ctx: &GpuContext,
        store: &VarStore,
        config: FpnConfig,
        fusion: Fusion,
    ) -> Result<Self> {
        Self::with_options(
            ctx,
            store,
            config,
            FpnOptions::default().with_fusion(fusion),
        )
    }

    /// [`Fpn::new`] with a choice of convolution algorithms (Winograd for stride-1 3x3 convs).
    pub fn with_algorithms(
        ctx: &GpuContext,
        store: &VarStore,
        config: FpnConfig,
        fusion: Fusion,
        algorithms: Algorithms,
    ) -> Result<Self> {
        let options = FpnOptions {
            fusion,
            algorithms,
            ..FpnOptions::default()
        };
        Self::with_options(ctx, store, config, options)
    }

    /// Builds the network from `store` with `config` as `options` say: the graph passes unless
    /// unfused, the convolution algorithms, and the precision the weights and activations are
    /// stored in.
    pub fn with_options(
        ctx: &GpuContext,
        store: &VarStore,
        config: FpnConfig,
        options: FpnOptions,
    ) -> Result<Self> {
        let graph = Self::graph(store, config)?;
        let options = ExecutorOptions {
            fusion: options.fusion,
            algorithms: options.algorithms,
            precision: options.precision,
            tuning: options.tuning,
            layout: options.layout,
        };
        Ok(Fpn {
            executor: Executor::build(ctx, graph, options)?,
            config,
            origin: store.origin(),
        })
    }

    /// The seeded random weights [`Fpn::random`] uses, as a `state_dict` by PyTorch name (to save
    /// them as safetensors and load them elsewhere, in PyTorch for instance).
    pub fn random_state_dict(config: FpnConfig, seed: u64) -> Result<TensorMap> {
        let store = VarStore::random_recording(seed);
        Self::graph(&store, config)?;
        Ok(store.into_recorded().unwrap_or_default())
    }

    /// The unoptimised graph of the network, its weights read from `store`.
    pub fn graph(store: &VarStore, config: FpnConfig) -> Result<Graph> {
        let mut g = Graph::new();
        let x = g.input();
        let levels = Self::levels(&store.root(), config, &mut g, x)?;
        store.finish_for(&config.describe())?;
        for (name, v) in levels {
            g.output(name, v);
        }
        Ok(g)
    }

    /// Records the network on `x` into `g`, its weights read under `vb` (the caller checks the
    /// store with [`VarStore::finish_for`] once everything built from it has read its
    /// weights), and returns the levels by name, finest first.
    pub fn levels(
        vb: &VarBuilder,
        config: FpnConfig,
        g: &mut Graph,
        x: Value,
    ) -> Result<Vec<(String, Value)>> {
        config.validate()?;
        Ok(match config.layout {
            Layout::Seed => {
                let backbone = ResNet::new(vb, &config);
                let head = SeedHead::new(vb, &config);
                let c = backbone.forward(g, x);
                head.forward(g, &c[1..])
            }
            layout => {
                let prefix = naming::backbone_prefix(layout);
                let backbone = ResNet::new(&vb.pp(prefix), &config);
                let head = PyramidHead::new(vb, &config);
                let c = backbone.forward(g, x);
                head.forward(g, &c)
            }
        })
    }

    /// How the weights and activations are stored.
    pub fn precision(&self) -> Precision {
        self.executor.precision()
    }

    /// The configuration the network was built with.
    pub fn config(&self) -> &FpnConfig {
        &self.config
    }

    /// Where the weights came from (a path, or the seed).
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The graph passes that changed the graph when it was lowered, in the order they did:
    /// the fusing pipeline's, then those of the layout's pipeline (a pass may appear more than
    /// once).
    pub fn passes_applied(&self) -> &[&'static str] {
        self.executor.passes_applied()
    }

    /// The executor, for memory and dispatch reports.
    pub fn executor(&self) -> &Executor {
        &self.executor
    }

    /// The execution plan for an input shape (built once, then cached).
    pub fn plan(&self, input_shape: [usize; 4]) -> Result<std::sync::Arc<Plan>> {
        self.check_input(input_shape)?;
        self.executor.plan(input_shape)
    }

    fn check_input(&self, shape: [usize; 4]) -> Result<()> {
        let want = self.config.in_channels;
        if shape[1] != want {
            let what = match want {
                1 => "grayscale images".to_string(),
                3 => "RGB images".to_string(),
                n => format!("{n}-channel images"),
            };
            return Err(Error::invalid(
                "Fpn::forward",
                format!(
                    "the input has {} channels (shape {shape:?}); this FPN takes {what} of shape \
                     [N, {want}, H, W] (its first conv has {want} input channels)",
                    shape[1]
                ),
            ));
        }
        Ok(())
    }

    /// Runs the network on an NCHW tensor with [`FpnConfig::in_channels`] channels (3 for RGB).
    /// It submits the work and returns at once: the levels stay on the GPU until downloaded
    /// (which waits for them). The first call for a new input shape builds its plan. The
    /// levels' tensors are reused by a later forward once all of them have been dropped.
    ///
    /// When the batch's tensors exceed the device's storage binding size, the batch runs in the
    /// largest chunks that fit and the levels are assembled on the GPU; when a single image is
    /// too large, the error names the limit and the largest input of its aspect ratio that fits.
    pub fn forward(&self, x: &Tensor) -> Result<Pyramid> {
        self.check_input(x.shape())?;
        Ok(Pyramid {
            levels: self.executor.forward(x)?,
        })
    }
}
