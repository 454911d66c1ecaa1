//! JPEG decoding with the pixels PyTorch users get. PIL and torchvision.io decode JPEGs with
//! libjpeg-turbo; the `image` crate's pure-Rust decoder (zune-jpeg) upsamples chroma and rounds
//! its IDCT differently, by up to 4 levels in a quarter of the pixels of a 4:2:0 picture (see
//! `tests/jpeg.rs` for the measured table). With the `libjpeg-turbo` cargo feature, JPEGs are
//! decoded by libjpeg-turbo's own decoder (MozJPEG's build of it), which gives PIL's pixels
//! exactly; without it, or for CMYK pictures (converted the way PIL does by neither decoder),
//! the `image` crate decodes them.

use image::DynamicImage;

/// Whether [`decode`] uses libjpeg-turbo (the `libjpeg-turbo` feature).
pub const LIBJPEG_TURBO: bool = cfg!(feature = "libjpeg-turbo");

/// Decodes the JPEG `bytes` with libjpeg-turbo into 8-bit RGB or gray, as PIL's `Image.open`
/// does: `None` without the `libjpeg-turbo` feature and for CMYK or YCCK pictures (which the
/// caller decodes otherwise), else the picture or libjpeg's reason for refusing it.
pub fn decode(bytes: &[u8]) -> Option<Result<DynamicImage, String>> {
    #[cfg(feature = "libjpeg-turbo")]
    {
        turbo::decode(bytes)
    }
    #[cfg(not(feature = "libjpeg-turbo"))]
    {
        let _ = bytes;
        None
    }
}

#[cfg(feature = "libjpeg-turbo")]
mod turbo {
    use std::panic::{catch_unwind, AssertUnwindSafe};

    use image::{DynamicImage, GrayImage, RgbImage};
    use mozjpeg::{ColorSpace, Decompress};

    use crate::error::panic_message;

    pub(super) fn decode(bytes: &[u8]) -> Option<Result<DynamicImage, String>> {
        // libjpeg reports errors by unwinding out of its error handler (without the panic
        // hook); they end here as an Err, never as a panic.
        let decoded = catch_unwind(AssertUnwindSafe(|| -> Option<std::io::Result<_>> {
            let d = match Decompress::new_mem(bytes) {
                Ok(d) => d,
                Err(e) => return Some(Err(e)),
            };
            let gray = match d.color_space() {
                ColorSpace::JCS_CMYK | ColorSpace::JCS_YCCK => return None,
                ColorSpace::JCS_GRAYSCALE => true,
                _ => false,
            };
            let (w, h) = (d.width() as u32, d.height() as u32);
            Some((|| {
                let mut started = if gray { d.grayscale()? } else { d.rgb()? };
                let pixels: Vec<u8> = started.read_scanlines()?;
                started.finish()?;
                Ok(if gray {
                    GrayImage::from_raw(w, h, pixels).map(DynamicImage::ImageLuma8)
                } else {
                    RgbImage::from_raw(w, h, pixels).map(DynamicImage::ImageRgb8)
                })
            })())
        }));
        match decoded {
            Ok(None) => None,
            Ok(Some(Ok(Some(picture)))) => Some(Ok(picture)),
            Ok(Some(Ok(None))) => Some(Err("libjpeg-turbo returned fewer pixels than the \
                                            picture's size"
                .to_string())),
            Ok(Some(Err(e))) => Some(Err(e.to_string())),
            Err(payload) => Some(Err(panic_message(&*payload)
                .unwrap_or_else(|| "libjpeg-turbo refused the file".to_string()))),
        }
    }
}
