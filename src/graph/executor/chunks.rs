//! Batches larger than the device's bindings: run in the largest chunks of images that fit,
//! each chunk's outputs copied into batch-sized tensors (which are only copied into, so they
//! need not fit one binding). An image too large on its own gets an error naming the largest
//! input of its aspect ratio that fits.

use super::Executor;
use crate::error::{Error, Result};
use crate::kernels::convert;
use crate::precision::Precision;
use crate::tensor::Tensor;

impl Executor {
    /// The forward of an input whose plan hit the device limit `e`: in chunks where one image
    /// fits, else `e` with the largest size that would.
    pub(super) fn forward_too_large(&self, x: &Tensor, e: Error) -> Result<Vec<(String, Tensor)>> {
        let [n, c, h, w] = x.shape();
        if n > 1 && self.check_limits([1, c, h, w]).is_ok() {
            self.forward_in_chunks(x)
        } else {
            Err(self.too_large(x.shape(), e))
        }
    }

    fn forward_in_chunks(&self, x: &Tensor) -> Result<Vec<(String, Tensor)>> {
        let ctx = &self.ctx;
        // Chunks are cut by byte offsets, which copies need 4-aligned: an f16 image of an odd
        // size is not, so the input goes to f32 first.
        let x = &convert::convert(ctx, x, Precision::F32)?;
        let [n, c, h, w] = x.shape();
        let fits = |b: usize| self.check_limits([b, c, h, w]).is_ok();
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
        let outputs: Vec<(String, Tensor)> = self
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
            // Straight to the chunk's plan: a chunk that fails to plan is an error, not
            // another round of chunking.
            let pieces = super::record::submit(ctx, &*self.plan(part.shape())?, &part, None)?;
            let mut encoder = ctx.device().create_command_encoder(&Default::default());
            for ((_, full), (_, piece)) in outputs.iter().zip(&pieces) {
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
        Ok(outputs)
    }

    /// The limit error for an image too large to run, with the largest size that would fit.
    fn too_large(&self, shape: [usize; 4], e: Error) -> Error {
        let [_, c, h, w] = shape;
        let at = |hh: usize| [1, c, hh, (w * hh).div_ceil(h).max(1)];
        let (mut lo, mut hi) = (0, h);
        while lo < hi {
            let mid = (lo + hi).div_ceil(2);
            if self.check_limits(at(mid)).is_ok() {
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
