//! The Feature Pyramid Network: the ResNet bottom-up path, then the head of its layout (1x1
//! lateral convs, the top-down path of upsample-and-add, 3x3 smoothing), giving P2..P5 with 256
//! channels, plus P6 (and P7) in torchvision's layout.

use std::path::Path;

use crate::error::{Error, Result};
use crate::gpu::GpuContext;
use crate::graph::executor::{Algorithms, Executor, Plan};
use crate::graph::tune::Tuning;
use crate::graph::{passes, Graph};
use crate::model::checkpoint::Checkpoint;
use crate::model::config::{FpnConfig, Layout};
use crate::model::pyramid::Pyramid;
use crate::model::resnet::ResNet;
use crate::model::seed_head::SeedHead;
use crate::model::torchvision_head::TorchvisionHead;
use crate::precision::Precision;
use crate::tensor::Tensor;
use crate::tensor_file::TensorMap;
use crate::weights::VarStore;

/// Channels of every pyramid level.
pub const PYRAMID_CHANNELS: usize = 256;
/// Channels of an RGB input image, the default; a checkpoint's `conv1.weight` can say otherwise
/// ([`FpnConfig::in_channels`]).
pub const INPUT_CHANNELS: usize = 3;

/// Whether the graph passes run (batch norm folded, ReLU, residual and upsample-add fused into
/// the convolutions) or every op keeps its own kernel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Fusion {
    /// Batch norm folded into the convs; ReLU, residual adds fused into their epilogues.
    #[default]
    Fused,
    /// Every op in its own kernel, as the network is written (for debugging and tests).
    Unfused,
}

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
}

/// An FPN whose weights live on the GPU, ready to run on NCHW tensors of any size and batch.
pub struct Fpn {
    executor: Executor,
    config: FpnConfig,
    origin: String,
    passes: Vec<&'static str>,
}

impl Fpn {
    /// Loads a PyTorch `state_dict` saved as safetensors. The layout (seed or torchvision, a
    /// whole detection model's backbone included), block counts and extra levels come from its
    /// names and shapes; see [`Checkpoint`] to change the batch norm epsilon before building.
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
        let mut graph = Self::graph(store, config)?;
        let passes = match options.fusion {
            Fusion::Fused => passes::optimize(&mut graph),
            Fusion::Unfused => Vec::new(),
        };
        Ok(Fpn {
            executor: Executor::with_options(ctx, graph, options.algorithms, options.precision)?
                .with_tuning(options.tuning),
            config,
            origin: store.origin(),
            passes,
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
        config.validate()?;
        let vb = store.root();
        let mut g = Graph::new();
        let x = g.input();
        let levels = match config.layout {
            Layout::Seed => {
                let backbone = ResNet::new(&vb, &config, "shortcut");
                let head = SeedHead::new(&vb, &config);
                store.finish_for(&config.describe())?;
                let c = backbone.forward(&mut g, x);
                head.forward(&mut g, &c)
            }
            Layout::Torchvision => {
                let backbone = ResNet::new(&vb.pp("body"), &config, "downsample");
                let head = TorchvisionHead::new(&vb.pp("fpn"), &config);
                store.finish_for(&config.describe())?;
                let c = backbone.forward(&mut g, x);
                head.forward(&mut g, &c)
            }
        };
        for (name, v) in levels {
            g.output(name, v);
        }
        Ok(g)
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

    /// The graph passes that changed the graph when it was built.
    pub fn passes_applied(&self) -> &[&'static str] {
        &self.passes
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

    /// Runs the network on an NCHW tensor with [`FpnConfig::in_channels`] channels (3 for RGB). It submits the work and returns at
    /// once: the levels stay on the GPU until downloaded (which waits for them). The first call
    /// for a new input shape builds its plan.
    ///
    /// When the batch's tensors exceed the device's storage binding size, the batch runs in the
    /// largest chunks that fit and the levels are assembled on the GPU; when a single image is
    /// too large, the error names the limit and the largest input of its aspect ratio that fits.
    pub fn forward(&self, x: &Tensor) -> Result<Pyramid> {
        let shape = x.shape();
        self.check_input(shape)?;
        match self.executor.check_limits(shape) {
            Ok(_) => Ok(Pyramid {
                levels: self.executor.forward(x)?,
            }),
            Err(e @ Error::LimitExceeded { .. }) => {
                let one = [1, shape[1], shape[2], shape[3]];
                if shape[0] > 1 && self.executor.check_limits(one).is_ok() {
                    self.forward_in_chunks(x)
                } else {
                    Err(self.too_large(shape, e))
                }
            }
            Err(e) => Err(e),
        }
    }

    /// Runs a batch in chunks of as many images as fit, copying each chunk's levels into
    /// batch-sized outputs (which are only copied into, so they need not fit one binding).
    fn forward_in_chunks(&self, x: &Tensor) -> Result<Pyramid> {
        let ctx = self.executor.context();
        // Chunks are cut by byte offsets, which copies need 4-aligned: an f16 image of an odd
        // size is not, so the input goes to f32 first.
        let x = &crate::kernels::convert::convert(ctx, x, Precision::F32)?;
        let [n, c, h, w] = x.shape();
        let fits = |b: usize| self.executor.check_limits([b, c, h, w]).is_ok();
        let (mut lo, mut hi) = (1, n - 1);
        while lo < hi {
            let mid = (lo + hi).div_ceil(2);
            if fits(mid) {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        let chunk = lo;
        let levels: Vec<(String, Tensor)> = self
            .executor
            .output_shapes([n, c, h, w])?
            .into_iter()
            .map(|(name, s)| Ok((name, Tensor::empty(ctx, s)?)))
            .collect::<Result<_>>()?;
        let image_bytes = (c * h * w) as u64 * Precision::F32.bytes();
        for start in (0..n).step_by(chunk) {
            let len = chunk.min(n - start);
            let part = Tensor::empty(ctx, [len, c, h, w])?;
            let mut encoder = ctx.device().create_command_encoder(&Default::default());
            encoder.copy_buffer_to_buffer(
                x.buffer(),
                x.offset() + start as u64 * image_bytes,
                part.buffer(),
                0,
                part.byte_size(),
            );
            ctx.queue().submit([encoder.finish()]);
            let outputs = self.executor.forward(&part)?;
            let mut encoder = ctx.device().create_command_encoder(&Default::default());
            for ((_, full), (_, piece)) in levels.iter().zip(&outputs) {
                let per_image = piece.byte_size() / len as u64;
                encoder.copy_buffer_to_buffer(
                    piece.buffer(),
                    0,
                    full.buffer(),
                    start as u64 * per_image,
                    piece.byte_size(),
                );
            }
            ctx.queue().submit([encoder.finish()]);
        }
        Ok(Pyramid { levels })
    }

    /// The limit error for an image too large to run, with the largest size that would fit.
    fn too_large(&self, shape: [usize; 4], e: Error) -> Error {
        let [_, c, h, w] = shape;
        let at = |hh: usize| [1, c, hh, (w * hh).div_ceil(h).max(1)];
        let (mut lo, mut hi) = (0, h);
        while lo < hi {
            let mid = (lo + hi).div_ceil(2);
            if self.executor.check_limits(at(mid)).is_ok() {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        let hint = if lo == 0 {
            "no input fits this device".to_string()
        } else {
            let [_, _, fh, fw] = at(lo);
            format!("downscale or tile the image: the largest input of this aspect ratio that fits is {fh}x{fw}")
        };
        match e {
            Error::LimitExceeded {
                op,
                what,
                value,
                limit_name,
                limit,
                ..
            } => Error::LimitExceeded {
                op,
                what,
                value,
                limit_name,
                limit,
                hint,
            },
            other => other,
        }
    }
}
