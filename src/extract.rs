//! A network over many pictures in one process: pictures are decoded on worker threads while
//! the GPU runs earlier ones, pictures of one size go through the network in batches (gathered
//! from a look-ahead, so that sizes mixed in the input still fill them), and each batch's
//! outputs are read back while the next batch runs. One network, one plan per input size, one
//! device for all of them.
//!
//! Any [`BatchNetwork`] runs: an [`Fpn`](crate::Fpn) gives each picture's levels, a
//! [`Detector`](crate::Detector) its `detections` rows and Mask R-CNN's `masks` (pictures
//! loaded as RGB in 0..1, see [`ImageOptions::detection`];
//! [`Detections::from_outputs`](crate::Detections::from_outputs) reads them). Outputs a
//! network [reads in part](crate::model::BatchNetwork::read_in_part) are copied back once the
//! others are on the host, only what each image needs: Mask R-CNN's masks of the kept
//! detections, not of every slot. That second copy waits for the forward submitted after the
//! batch's.
//!
//! ```no_run
//! use fpn_wgpu::extract::{extract_images, ExtractOptions};
//! use fpn_wgpu::image_input::ImageOptions;
//! # fn main() -> fpn_wgpu::Result<()> {
//! # let ctx = fpn_wgpu::GpuContext::new()?;
//! # let fpn = fpn_wgpu::Fpn::from_safetensors(&ctx, "fpn.safetensors".as_ref())?;
//! let pictures: Vec<std::path::PathBuf> = vec!["a.jpg".into(), "b.png".into()];
//! let picture = ImageOptions { channels: fpn.config().in_channels, ..ImageOptions::default() };
//! for done in extract_images(&fpn, pictures, picture, ExtractOptions::default()) {
//!     match done.result {
//!         Ok(levels) => println!("{:?}: {} levels", done.item, levels.len()),
//!         Err(e) => eprintln!("{:?}: {e}", done.item),
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! ```no_run
//! use fpn_wgpu::extract::{extract_images, ExtractOptions};
//! use fpn_wgpu::image_input::ImageOptions;
//! use fpn_wgpu::{Detections, Detector, DetectorOptions};
//! # fn main() -> fpn_wgpu::Result<()> {
//! # let ctx = fpn_wgpu::GpuContext::new()?;
//! let detector =
//!     Detector::from_safetensors(&ctx, "retinanet.safetensors".as_ref(), DetectorOptions::default())?;
//! let pictures: Vec<std::path::PathBuf> = vec!["a.jpg".into(), "b.png".into()];
//! let options = ExtractOptions { batch: 4, ..ExtractOptions::default() };
//! for done in extract_images(&detector, pictures, ImageOptions::detection(), options) {
//!     let outputs = done.result?;
//!     // A detector's first output: `detections`, [1, 1, D, 6] rows (Mask R-CNN's masks follow).
//!     let found = Detections::from_rows(&outputs[0].1)?;
//!     println!("{:?}: {} boxes", done.item, found[0].len());
//! }
//! # Ok(()) }
//! ```

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::time::Instant;

use crate::error::{panic_message, Error, Result};
use crate::image_input::{load_image_with, ImageOptions};
use crate::model::BatchNetwork;
use crate::readback::{GpuSpan, Readback};
use crate::tensor::Tensor;
use crate::tensor_file::HostTensor;

/// How the pictures are fed to the network.
#[derive(Clone, Copy, Debug)]
pub struct ExtractOptions {
    /// Most pictures per forward. Pictures of one size share a forward; each batch is
    /// gathered from the next `2 * batch` decoded pictures, so that sizes mixed in the input
    /// (portrait and landscape photos) still fill batches.
    pub batch: usize,
    /// Threads decoding pictures.
    pub decoders: usize,
}

impl Default for ExtractOptions {
    /// Batches of one; a decoder thread per core but one (for the thread feeding the GPU),
    /// at most 8.
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        ExtractOptions {
            batch: 1,
            decoders: (cores - 1).clamp(1, 8),
        }
    }
}

/// One picture's outcome: the item it came from, and the network's outputs for it (in the
/// network's order, float32, batch 1: an FPN's levels finest first, NCHW) or why there are
/// none.
pub struct Extracted<I> {
    /// What was handed in for this picture.
    pub item: I,
    /// The named outputs, or the decoding or GPU error.
    pub result: Result<Vec<(String, HostTensor)>>,
}

/// What a run has done so far.
#[derive(Clone, Copy, Debug, Default)]
pub struct ExtractStats {
    /// Pictures whose outputs were returned.
    pub done: usize,
    /// Pictures returned with an error.
    pub failed: usize,
    /// Forwards run (fewer than pictures when batches hold several).
    pub forwards: usize,
    /// GPU time of the forwards and their read-back copies, from timestamp queries; `None`
    /// on adapters without them.
    pub gpu_seconds: Option<f64>,
    /// From the iterator's creation to the last result returned.
    pub wall_seconds: f64,
}

impl ExtractStats {
    /// The share of the wall time the GPU spent running forwards, when it could be measured.
    pub fn gpu_busy(&self) -> Option<f64> {
        self.gpu_seconds
            .filter(|_| self.wall_seconds > 0.0)
            .map(|g| (g / self.wall_seconds).min(1.0))
    }
}

/// A decoded picture or why it could not be.
type Decoded<I> = (I, Result<HostTensor>);

/// A decoded picture waiting for a batch: its position in the input, the item, its input
/// tensor and that tensor's shape.
struct Waiting<I> {
    index: usize,
    item: I,
    input: HostTensor,
    shape: [usize; 4],
}

/// A batch on its way back from the GPU: its pictures (position in the input, item) and the
/// forward, or why it could not be submitted.
struct Batch<I> {
    members: Vec<(usize, I)>,
    flight: Result<InFlight>,
}

/// A submitted forward: its outputs' names and batch shapes, their copy on its way, and the
/// outputs read in part once the others are back (by position among the outputs).
struct InFlight {
    shapes: Vec<(String, [usize; 4])>,
    readback: Readback,
    later: Vec<(usize, Tensor)>,
}

/// The iterator [`extract`] returns. Results come in the order the items were given. Dropping
/// it stops the decoders after the picture each is working on.
///
/// Every batch starts with the oldest picture not yet submitted, so the next result to return
/// is always finished, in the oldest batch in flight, or the first of the look-ahead: results
/// that finish early wait at most a few batches for it.
pub struct Extractor<'a, I> {
    network: &'a dyn BatchNetwork,
    batch: usize,
    /// Decoded pictures, in input order, that batches are gathered from.
    lookahead: VecDeque<Waiting<I>>,
    lookahead_len: usize,
    /// Worker `k` decodes items `k`, `k + n`, ...; reading them in turn restores the order.
    decoded: Vec<Receiver<Decoded<I>>>,
    next_worker: usize,
    /// Position in the input of the next item to take from the workers.
    next_decoded: usize,
    left: usize,
    flights: VecDeque<Batch<I>>,
    /// Results by position in the input, waiting for the ones before them.
    finished: BTreeMap<usize, Extracted<I>>,
    /// Positions whose items were lost with their decoder thread.
    lost: BTreeSet<usize>,
    /// Position in the input of the next result to return.
    next_out: usize,
    started: Instant,
    stats: ExtractStats,
}

/// Batches on the GPU at once: one running while the host takes in the one before it.
const IN_FLIGHT: usize = 2;

/// Batches' worth of decoded pictures that a batch is gathered from.
const LOOKAHEAD_BATCHES: usize = 2;

/// Runs `network` on each of `items`, made into an NCHW input of batch 1 by `load` on
/// [`ExtractOptions::decoders`] worker threads, and yields the outputs of each in order.
///
/// A panic inside `load` is reported as that item's error. Every input must have the
/// channels the network takes, and the values it expects; pictures of different sizes are
/// fine (each size gets its plan, of which the network keeps the most recent few).
pub fn extract<'a, I, F>(
    network: &'a dyn BatchNetwork,
    items: Vec<I>,
    load: F,
    options: ExtractOptions,
) -> Extractor<'a, I>
where
    I: Send + 'static,
    F: Fn(&I) -> Result<HostTensor> + Send + Sync + 'static,
{
    let workers = options.decoders.max(1).min(items.len().max(1));
    let batch = options.batch.max(1);
    let left = items.len();
    let load = Arc::new(load);
    let mut shares: Vec<Vec<I>> = (0..workers).map(|_| Vec::new()).collect();
    for (i, item) in items.into_iter().enumerate() {
        shares[i % workers].push(item);
    }
    let decoded = shares
        .into_iter()
        .map(|share| {
            // Room for a batch ahead of the GPU, so that gathering one rarely waits.
            let (tx, rx) = sync_channel(batch.div_ceil(workers) + 1);
            let load = Arc::clone(&load);
            std::thread::spawn(move || {
                for item in share {
                    let result = std::panic::catch_unwind(AssertUnwindSafe(|| load(&item)))
                        .unwrap_or_else(|panic| {
                            let why = panic_message(&*panic).unwrap_or_default();
                            Err(Error::invalid(
                                "extract",
                                format!(
                                    "loading it panicked ({why}); the input is probably damaged"
                                ),
                            ))
                        });
                    if tx.send((item, result)).is_err() {
                        return; // the iterator was dropped
                    }
                }
            });
            rx
        })
        .collect();
    Extractor {
        network,
        batch,
        lookahead: VecDeque::new(),
        // A batch of one has no choice to make.
        lookahead_len: if batch == 1 {
            1
        } else {
            LOOKAHEAD_BATCHES * batch
        },
        decoded,
        next_worker: 0,
        next_decoded: 0,
        left,
        flights: VecDeque::new(),
        finished: BTreeMap::new(),
        lost: BTreeSet::new(),
        next_out: 0,
        started: Instant::now(),
        stats: ExtractStats::default(),
    }
}

/// [`extract`] on pictures (JPEG or PNG files, decoded, turned, downscaled and scaled by
/// [`load_image_with`] as `picture` says; its `channels` and `scale` should be what the
/// network takes: ImageNet-normalised for an FPN, [`ImageOptions::detection`] for a detector).
pub fn extract_images<'a, I>(
    network: &'a dyn BatchNetwork,
    pictures: Vec<I>,
    picture: ImageOptions,
    options: ExtractOptions,
) -> Extractor<'a, I>
where
    I: AsRef<Path> + Send + 'static,
{
    extract(
        network,
        pictures,
        move |p: &I| load_image_with(p.as_ref(), &picture).map(|input| input.tensor),
        options,
    )
}

impl<I> Extractor<'_, I> {
    /// Counts so far; complete once the iterator has returned `None`.
    pub fn stats(&self) -> ExtractStats {
        self.stats
    }

    /// Takes decoded pictures from the workers, in input order, until the look-ahead is full
    /// or every item is taken. Pictures that failed to decode, or whose input is not one
    /// image, are finished at once.
    fn fill_lookahead(&mut self) {
        while self.lookahead.len() < self.lookahead_len && self.left > 0 {
            let worker = self.next_worker;
            self.next_worker = (worker + 1) % self.decoded.len();
            self.left -= 1;
            let index = self.next_decoded;
            self.next_decoded += 1;
            // A worker only hangs up early when its thread died outside the guarded decode;
            // its remaining items are then lost, and the count says so at the end.
            let Ok((item, decoded)) = self.decoded[worker].recv() else {
                self.lost.insert(index);
                continue;
            };
            match decoded.and_then(|t| Ok((t.nchw("input")?, t))) {
                Ok((shape, input)) if shape[0] == 1 => self.lookahead.push_back(Waiting {
                    index,
                    item,
                    input,
                    shape,
                }),
                Ok((shape, _)) => {
                    let e = Error::invalid(
                        "extract",
                        format!(
                            "a loaded item has shape {shape:?}; each must be one image, \
                             [1, C, H, W]"
                        ),
                    );
                    self.fail(index, item, e);
                }
                Err(e) => self.fail(index, item, e),
            }
        }
    }

    fn fail(&mut self, index: usize, item: I, e: Error) {
        self.stats.failed += 1;
        self.finished.insert(
            index,
            Extracted {
                item,
                result: Err(e),
            },
        );
    }

    /// Gathers the next batch, the oldest waiting picture and up to `batch - 1` later ones of
    /// its shape from the look-ahead, and submits it.
    fn next_batch(&mut self) -> Option<Batch<I>> {
        self.fill_lookahead();
        let shape = self.lookahead.front()?.shape;
        let mut members = Vec::new();
        let mut data = Vec::new();
        let mut rest = VecDeque::with_capacity(self.lookahead.len());
        for waiting in self.lookahead.drain(..) {
            if members.len() < self.batch && waiting.shape == shape {
                members.push((waiting.index, waiting.item));
                data.extend_from_slice(&waiting.input.data);
            } else {
                rest.push_back(waiting);
            }
        }
        self.lookahead = rest;
        let shape = [members.len(), shape[1], shape[2], shape[3]];
        let flight = self.submit(shape, &data);
        Some(Batch { members, flight })
    }

    /// Submits batches until [`IN_FLIGHT`] are on the GPU or no picture is left.
    fn fill_flights(&mut self) {
        while self.flights.len() < IN_FLIGHT {
            match self.next_batch() {
                Some(batch) => self.flights.push_back(batch),
                None => break,
            }
        }
    }

    /// Uploads a batch, runs the network on it and starts reading its outputs back.
    fn submit(&mut self, shape: [usize; 4], data: &[f32]) -> Result<InFlight> {
        let ctx = self.network.context();
        let x = Tensor::from_slice(ctx, shape, data)?;
        let span = GpuSpan::begin(ctx);
        let (names, outputs): (Vec<String>, Vec<Tensor>) =
            self.network.forward_batch(&x)?.into_iter().unzip();
        self.stats.forwards += 1;
        let shapes: Vec<(String, [usize; 4])> = names
            .into_iter()
            .zip(outputs.iter().map(Tensor::shape))
            .collect();
        // Outputs are split per picture along their first dimension, which must be the batch.
        if let Some((name, s)) = shapes.iter().find(|(_, s)| s[0] != shape[0]) {
            return Err(Error::invalid(
                "extract",
                format!(
                    "the network's output `{name}` has shape {s:?} for a batch of {}; each \
                     output must have the batch as its first dimension",
                    shape[0]
                ),
            ));
        }
        let (now, later): (Vec<_>, Vec<_>) = outputs
            .into_iter()
            .enumerate()
            .partition(|(i, _)| !self.network.read_in_part(&shapes[*i].0));
        let now: Vec<Tensor> = now.into_iter().map(|(_, t)| t).collect();
        Ok(InFlight {
            readback: Readback::start(ctx, &now, span)?,
            shapes,
            later,
        })
    }

    /// Waits for a batch and splits its outputs per picture.
    fn finish(&mut self, batch: Batch<I>) {
        let ctx = self.network.context();
        let outputs = batch.flight.and_then(|f| {
            let readout = f.readback.wait(ctx)?;
            if let Some(s) = readout.gpu_seconds {
                *self.stats.gpu_seconds.get_or_insert(0.0) += s;
            }
            let per_image = self.per_image(&f.shapes, readout.images, &f.later)?;
            // Every member must be finished, with its outputs or an error: a picture left out
            // would stall the ordered results behind it.
            if per_image.len() != batch.members.len() {
                return Err(Error::invalid(
                    "extract",
                    format!(
                        "a batch of {} pictures came back as {} pictures' outputs; the network's outputs must have the batch as their first dimension",
                        batch.members.len(),
                        per_image.len()
                    ),
                ));
            }
            Ok(per_image)
        });
        let per_image = match outputs {
            Ok(v) => v,
            Err(e) => {
                for (index, item) in batch.members {
                    self.fail(index, item, e.clone());
                }
                return;
            }
        };
        for ((index, item), outputs) in batch.members.into_iter().zip(per_image) {
            self.stats.done += 1;
            self.finished.insert(
                index,
                Extracted {
                    item,
                    result: Ok(outputs),
                },
            );
        }
    }
}

impl<I> Extractor<'_, I> {
    /// One list of outputs per image of a batch: those read back whole (`images`, per output
    /// then image, in the order of `shapes` less the `later` ones), then each `later` output's
    /// leading channels each image needs ([`BatchNetwork::channels_needed`]), read in one
    /// copy per output and put back in its place.
    fn per_image(
        &self,
        shapes: &[(String, [usize; 4])],
        images: Vec<Vec<Vec<f32>>>,
        later: &[(usize, Tensor)],
    ) -> Result<Vec<Vec<(String, HostTensor)>>> {
        let n = shapes.first().map_or(0, |(_, s)| s[0]);
        let is_later = |i: usize| later.iter().any(|(j, _)| *j == i);
        let now = shapes.iter().enumerate().filter(|(i, _)| !is_later(*i));
        let mut out: Vec<Vec<(String, HostTensor)>> = (0..n).map(|_| Vec::new()).collect();
        for ((_, (name, [_, c, h, w])), values) in now.zip(images) {
            for (image, data) in out.iter_mut().zip(values) {
                image.push((
                    name.clone(),
                    HostTensor {
                        shape: vec![1, *c, *h, *w],
                        data,
                    },
                ));
            }
        }
        for (position, tensor) in later {
            let name = &shapes[*position].0;
            let [_, c, h, w] = tensor.shape();
            let plane = h * w;
            let mut ranges = Vec::with_capacity(n);
            for (b, image) in out.iter().enumerate() {
                let k = self.network.channels_needed(name, image)?.min(c);
                let start = b * c * plane;
                ranges.push(start..start + k * plane);
            }
            let read =
                pollster::block_on(tensor.download_values_async(self.network.context(), &ranges))?;
            for ((image, data), range) in out.iter_mut().zip(read).zip(&ranges) {
                let tensor = HostTensor {
                    shape: vec![1, range.len() / plane.max(1), h, w],
                    data,
                };
                // Positions ascend, so each goes back where the network put it.
                let at = (*position).min(image.len());
                image.insert(at, (name.clone(), tensor));
            }
        }
        Ok(out)
    }
}

impl<I> Iterator for Extractor<'_, I> {
    type Item = Extracted<I>;

    fn next(&mut self) -> Option<Extracted<I>> {
        loop {
            while self.lost.remove(&self.next_out) {
                self.next_out += 1;
            }
            if let Some(done) = self.finished.remove(&self.next_out) {
                self.next_out += 1;
                self.stats.wall_seconds = self.started.elapsed().as_secs_f64();
                return Some(done);
            }
            self.fill_flights();
            let Some(oldest) = self.flights.pop_front() else {
                // Nothing left for the GPU: what remains failed before reaching it.
                let (&index, _) = self.finished.first_key_value()?;
                self.next_out = index;
                continue;
            };
            self.finish(oldest);
            // The next batch runs while the caller takes these results.
            self.fill_flights();
        }
    }
}
