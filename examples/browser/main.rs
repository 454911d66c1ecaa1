//! The FPN in a web page, on the browser's WebGPU adapter.
//!
//! Built for wasm32 and bound to JavaScript with wasm-bindgen; `examples/browser/index.html`
//! is the page. `.ci/browser build` makes `target/browser/`, which any static file server can
//! serve; the README's "Browser" section has the commands.
//!
//! The page makes a [`Session`] (a device on the browser's adapter and the seed FPN, with
//! seeded random weights or a safetensors `state_dict` it fetched), then runs pictures on it:
//! each [`Session::run`] decodes a JPEG or PNG with the crate's own decoder (the same pixels as
//! `fpn run --image`), runs the network and reads every level back.
//!
//! On a native target this example is empty.

#[cfg(target_arch = "wasm32")]
mod web {
    use fpn_wgpu::image_input::{decode_image, ImageOptions};
    use fpn_wgpu::tensor_file::{parse_tensors, HostTensor};
    use fpn_wgpu::visualize::energy_picture;
    use fpn_wgpu::weights::VarStore;
    use fpn_wgpu::{Checkpoint, Fpn, FpnConfig, Fusion, GpuContext, Tensor};
    use wasm_bindgen::prelude::*;

    /// A JavaScript `Error` carrying the crate's sentence.
    fn js_error(e: impl std::fmt::Display) -> JsError {
        JsError::new(&e.to_string())
    }

    /// Milliseconds from the page's time origin.
    fn now_ms() -> f64 {
        web_sys::window()
            .and_then(|w| w.performance())
            .map_or(0.0, |p| p.now())
    }

    /// A device on the browser's adapter and a network on it.
    #[wasm_bindgen]
    pub struct Session {
        ctx: GpuContext,
        fpn: Fpn,
        origin: String,
    }

    #[wasm_bindgen]
    impl Session {
        /// Picks the browser's adapter and builds the seed FPN: from `weights` (the bytes of
        /// a safetensors `state_dict`, seed or torchvision layout) when given, else with the
        /// random weights `fpn run` uses without `--weights` (seed 0).
        pub async fn create(weights: Option<Vec<u8>>) -> Result<Session, JsError> {
            console_error_panic_hook();
            let ctx = GpuContext::new_async().await.map_err(js_error)?;
            let (fpn, origin) = match weights {
                Some(bytes) => {
                    let tensors = parse_tensors(&bytes, "weights.safetensors".as_ref(), |_| false)
                        .map_err(js_error)?;
                    let store = VarStore::from_tensors("weights.safetensors", tensors);
                    let checkpoint = Checkpoint::from_store(store).map_err(js_error)?;
                    let config = checkpoint.config();
                    let fpn = Fpn::new(&ctx, checkpoint.store(), config, Fusion::Fused)
                        .map_err(js_error)?;
                    (fpn, format!("{} layout, fetched weights", config.layout))
                }
                None => {
                    let config = FpnConfig::preset("seed").map_err(js_error)?;
                    let fpn = Fpn::new(&ctx, &VarStore::random(0), config, Fusion::Fused)
                        .map_err(js_error)?;
                    (
                        fpn,
                        "seed layout, seeded random weights (seed 0)".to_string(),
                    )
                }
            };
            Ok(Session { ctx, fpn, origin })
        }

        /// The adapter, as `fpn info` names it.
        pub fn adapter(&self) -> String {
            self.ctx.adapter().to_string()
        }

        /// Where the weights came from.
        pub fn network(&self) -> String {
            self.origin.clone()
        }

        /// Runs the network on a JPEG or PNG (its bytes; `name`, a file name or URL, names it
        /// in errors), downscaled so that its longer side is at most `max_size` pixels when
        /// given.
        pub async fn run(
            &self,
            picture: Vec<u8>,
            name: String,
            max_size: Option<u32>,
        ) -> Result<Levels, JsError> {
            // As `fpn run --image` makes it: EXIF orientation applied, gray for a 1-channel
            // network.
            let options = ImageOptions {
                max_size,
                channels: self.fpn.config().in_channels,
                ..ImageOptions::default()
            };
            let input = decode_image(&picture, &name, &options).map_err(js_error)?;
            let shape = input.tensor.nchw("input").map_err(js_error)?;
            let started = now_ms();
            let x = Tensor::from_slice(&self.ctx, shape, &input.tensor.data).map_err(js_error)?;
            let pyramid = self.fpn.forward(&x).map_err(js_error)?;
            let levels = pyramid.download_async(&self.ctx).await.map_err(js_error)?;
            let forward_ms = now_ms() - started;
            Ok(Levels {
                input: shape.map(|d| d as u32).to_vec(),
                levels,
                forward_ms,
            })
        }
    }

    /// One forward's levels, on the host.
    #[wasm_bindgen]
    pub struct Levels {
        input: Vec<u32>,
        levels: Vec<(String, HostTensor)>,
        forward_ms: f64,
    }

    #[wasm_bindgen]
    impl Levels {
        /// The network input's shape, [1, 3, H, W].
        pub fn input_shape(&self) -> Vec<u32> {
            self.input.clone()
        }

        /// Milliseconds from the upload of the input to the last level read back (the first
        /// run of a size also builds its plan and pipelines).
        pub fn forward_ms(&self) -> f64 {
            self.forward_ms
        }

        /// How many levels (P2..P5 for the seed layout).
        pub fn count(&self) -> usize {
            self.levels.len()
        }

        /// The name of level `i`, finest first: "p2", "p3", ...
        pub fn name(&self, i: usize) -> String {
            self.levels.get(i).map_or(String::new(), |(n, _)| n.clone())
        }

        /// The shape of level `i`, NCHW.
        pub fn shape(&self, i: usize) -> Vec<u32> {
            self.levels
                .get(i)
                .map_or(vec![], |(_, t)| t.shape.iter().map(|&d| d as u32).collect())
        }

        /// The values of level `i`, NCHW float32.
        pub fn values(&self, i: usize) -> Vec<f32> {
            self.levels.get(i).map_or(vec![], |(_, t)| t.data.clone())
        }

        /// Level `i` as an energy map (the L2 norm over channels, colour-mapped): RGBA bytes
        /// of its width x height, for a canvas's `ImageData`.
        pub fn energy_rgba(&self, i: usize) -> Result<Vec<u8>, JsError> {
            let (_, level) = self
                .levels
                .get(i)
                .ok_or_else(|| js_error(format!("there is no level {i}")))?;
            let rgb = energy_picture(level, 0).map_err(js_error)?;
            Ok(rgb.pixels().flat_map(|p| [p[0], p[1], p[2], 255]).collect())
        }
    }

    /// Sends Rust panics and the crate's log (warnings and errors: an uncaptured GPU error
    /// among them) to the console, where the page and its test harness see them.
    fn console_error_panic_hook() {
        std::panic::set_hook(Box::new(|info| {
            web_sys::console::error_1(&format!("panic: {info}").into());
        }));
        static LOGGER: Console = Console;
        if log::set_logger(&LOGGER).is_ok() {
            log::set_max_level(log::LevelFilter::Warn);
        }
    }

    struct Console;

    impl log::Log for Console {
        fn enabled(&self, metadata: &log::Metadata) -> bool {
            metadata.level() <= log::Level::Warn
        }

        fn log(&self, record: &log::Record) {
            let line = format!("{}: {}", record.target(), record.args()).into();
            match record.level() {
                log::Level::Error => web_sys::console::error_1(&line),
                _ => web_sys::console::warn_1(&line),
            }
        }

        fn flush(&self) {}
    }
}
