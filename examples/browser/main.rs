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
//! Given a whole torchvision detection `state_dict` instead
//! (`index.html?detector=maskrcnn.safetensors`: RetinaNet, FCOS, Faster or Mask R-CNN), the page
//! makes a [`DetectorSession`] and each [`DetectorSession::run`] finds boxes (and for Mask R-CNN
//! masks) in the picture, all on the GPU, and draws them.
//!
//! On a native target this example is empty.

#[cfg(target_arch = "wasm32")]
mod web {
    use fpn_wgpu::detection_output::draw_detections;
    use fpn_wgpu::image_input::{decode_image, ImageOptions};
    use fpn_wgpu::model::{DetectorConfig, RpnOptions};
    use fpn_wgpu::tensor_file::{parse_tensors, HostTensor};
    use fpn_wgpu::visualize::energy_picture;
    use fpn_wgpu::weights::VarStore;
    use fpn_wgpu::{
        Checkpoint, Detections, Detector, DetectorOptions, Fpn, FpnConfig, Fusion, GpuContext,
        Tensor,
    };
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

    /// A device on the browser's adapter and a detector on it.
    #[wasm_bindgen]
    pub struct DetectorSession {
        ctx: GpuContext,
        detector: Detector,
    }

    #[wasm_bindgen]
    impl DetectorSession {
        /// Picks the browser's adapter and builds the detector a whole torchvision detection
        /// `state_dict` (the bytes of its safetensors file) describes, with torchvision's
        /// options but where given: the shorter side's size, the longer side's bound, the score
        /// threshold, the most detections per picture and (two-stage detectors) the proposals
        /// kept after the RPN's NMS.
        pub async fn create(
            weights: Vec<u8>,
            min_size: Option<u32>,
            max_size: Option<u32>,
            score_thresh: Option<f32>,
            detections_per_img: Option<u32>,
            rpn_post_nms_top_n: Option<u32>,
        ) -> Result<DetectorSession, JsError> {
            console_error_panic_hook();
            let ctx = GpuContext::new_async().await.map_err(js_error)?;
            let name = "detector.safetensors";
            let tensors = parse_tensors(&weights, name.as_ref(), |n| {
                fpn_wgpu::weights::is_ignored(n)
            })
            .map_err(js_error)?;
            // torchvision's defaults for the kind of detector the weights turn out to be.
            let options = |config: &DetectorConfig| {
                let defaults = DetectorOptions::for_kind(config.kind);
                DetectorOptions {
                    min_size: min_size.map_or(defaults.min_size, |v| v as usize),
                    max_size: max_size.map_or(defaults.max_size, |v| v as usize),
                    score_thresh: score_thresh.unwrap_or(defaults.score_thresh),
                    detections_per_img: detections_per_img
                        .map_or(defaults.detections_per_img, |v| v as usize),
                    rpn: RpnOptions {
                        rpn_post_nms_top_n_test: rpn_post_nms_top_n
                            .map_or(defaults.rpn.rpn_post_nms_top_n_test, |v| v as usize),
                        ..defaults.rpn
                    },
                    ..defaults
                }
            };
            let detector =
                Detector::from_tensors_with(&ctx, name, tensors, options).map_err(js_error)?;
            Ok(DetectorSession { ctx, detector })
        }

        /// The adapter, as `fpn info` names it.
        pub fn adapter(&self) -> String {
            self.ctx.adapter().to_string()
        }

        /// The detector, in words.
        pub fn network(&self) -> String {
            format!(
                "{}, {} classes, fetched weights",
                self.detector.config().kind,
                self.detector.config().num_classes
            )
        }

        /// The kind of detector, as torchvision's papers name it ("Mask R-CNN").
        pub fn kind(&self) -> String {
            self.detector.config().kind.to_string()
        }

        /// Whether the detector finds masks as well as boxes (Mask R-CNN).
        pub fn has_masks(&self) -> bool {
            self.detector.config().kind.has_masks()
        }

        /// Finds the boxes in a JPEG or PNG (its bytes; `name` names it in errors): RGB in
        /// 0..1 goes in, as `fpn detect --image` makes it.
        pub async fn run(&self, picture: Vec<u8>, name: String) -> Result<Found, JsError> {
            let input =
                decode_image(&picture, &name, &ImageOptions::default()).map_err(js_error)?;
            let (w, h) = input.rgb.dimensions();
            let rgb: Vec<f32> = (0..3)
                .flat_map(|c| input.rgb.pixels().map(move |p| p.0[c] as f32 / 255.0))
                .collect();
            let started = now_ms();
            let x = Tensor::from_slice(&self.ctx, [1, 3, h as usize, w as usize], &rgb)
                .map_err(js_error)?;
            let mut found = self.detector.detect_async(&x).await.map_err(js_error)?;
            let forward_ms = now_ms() - started;
            let detections = found.pop().unwrap_or_default();
            let drawn = draw_detections(&input.rgb, &detections);
            Ok(Found {
                size: (w, h),
                pixels: rgb,
                rgba: drawn
                    .pixels()
                    .flat_map(|p| [p[0], p[1], p[2], 255])
                    .collect(),
                detections,
                forward_ms,
            })
        }
    }

    /// One picture's detections, on the host, and the picture with them drawn.
    #[wasm_bindgen]
    pub struct Found {
        size: (u32, u32),
        pixels: Vec<f32>,
        rgba: Vec<u8>,
        detections: Detections,
        forward_ms: f64,
    }

    #[wasm_bindgen]
    impl Found {
        /// How many detections.
        pub fn count(&self) -> usize {
            self.detections.len()
        }

        /// (x1, y1, x2, y2) of each detection, in the picture's pixels, flattened.
        pub fn boxes(&self) -> Vec<f32> {
            self.detections.boxes.concat()
        }

        /// The scores, best first.
        pub fn scores(&self) -> Vec<f32> {
            self.detections.scores.clone()
        }

        /// The class indices (as floats, for JavaScript).
        pub fn labels(&self) -> Vec<f32> {
            self.detections.labels.iter().map(|&l| l as f32).collect()
        }

        /// How many masks (as many as detections for Mask R-CNN, else none).
        pub fn mask_count(&self) -> usize {
            self.detections.masks.as_ref().map_or(0, |m| m.len())
        }

        /// Each detection's mask in the picture's pixels, flattened `[K, 1, H, W]`: the
        /// probabilities torchvision's `masks` holds (empty without masks).
        pub fn masks(&self) -> Vec<f32> {
            self.detections
                .masks
                .as_ref()
                .map_or_else(Vec::new, |m| m.data.clone())
        }

        /// The picture as the detector took it: `[1, 3, H, W]` RGB in 0..1, flattened.
        pub fn pixels(&self) -> Vec<f32> {
            self.pixels.clone()
        }

        /// The picture's width.
        pub fn width(&self) -> u32 {
            self.size.0
        }

        /// The picture's height.
        pub fn height(&self) -> u32 {
            self.size.1
        }

        /// The picture with the boxes (and masks) drawn: RGBA bytes for a canvas's `ImageData`.
        pub fn drawn_rgba(&self) -> Vec<u8> {
            self.rgba.clone()
        }

        /// Milliseconds from the upload of the picture to the detections read back (the
        /// first run of a size also builds its plan and pipelines).
        pub fn forward_ms(&self) -> f64 {
            self.forward_ms
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
