//! Pictures into network inputs: decoding (JPEG, PNG), conversion to RGB whatever the colour
//! type, optional downscaling, and torchvision's ImageNet normalisation into an NCHW tensor.

use std::io::Cursor;
use std::path::Path;

use image::imageops::FilterType;
use image::{DynamicImage, ImageFormat, ImageReader, RgbImage};

use crate::error::{Error, Result};
use crate::tensor_file::HostTensor;

/// Per-channel mean of torchvision's ImageNet normalisation (RGB, on values in [0, 1]).
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// Per-channel standard deviation of torchvision's ImageNet normalisation.
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];
/// The smallest image side accepted: the backbone's coarsest level (C5) has stride 32, so a
/// smaller picture leaves P5 and above a single pixel that sees mostly padding.
pub const MIN_IMAGE_SIDE: u32 = 32;

/// A decoded picture and the network input made from it.
pub struct ImageInput {
    /// The picture as the network sees it (after any downscaling), 8-bit RGB.
    pub rgb: RgbImage,
    /// Its size in the file, width x height.
    pub original_size: (u32, u32),
    /// The normalised input, shape [1, 3, H, W].
    pub tensor: HostTensor,
}

/// Decodes the JPEG or PNG at `path` (the format is read from the content, not the name),
/// converts grayscale, alpha and 16-bit pictures to RGB, downscales it so that its longer side
/// is at most `max_size` (keeping the aspect ratio), and normalises it.
pub fn load_image(path: &Path, max_size: Option<u32>) -> Result<ImageInput> {
    let file_error = |message: String| Error::File {
        path: path.display().to_string(),
        message,
    };
    let bytes =
        std::fs::read(path).map_err(|e| file_error(format!("cannot open the image: {e}")))?;
    // Decided on the content, not the name: a file called `.png` may hold anything.
    let format =
        match image::guess_format(&bytes) {
            Ok(f @ (ImageFormat::Png | ImageFormat::Jpeg)) => f,
            Ok(other) => {
                return Err(file_error(format!(
                    "a {other:?} image; only JPEG and PNG are read: convert it to one"
                )))
            }
            Err(_) => return Err(file_error(
                "not a JPEG or PNG image (the content matches neither format); convert it to one"
                    .into(),
            )),
        };
    let picture = ImageReader::with_format(Cursor::new(bytes), format)
        .decode()
        .map_err(|e| file_error(format!("cannot decode the image: {e}")))?;
    from_picture(&picture, max_size).map_err(|e| match e {
        Error::InvalidArgument { message, .. } => file_error(message),
        other => other,
    })
}

/// [`load_image`] for a picture already in memory.
pub fn from_picture(picture: &DynamicImage, max_size: Option<u32>) -> Result<ImageInput> {
    let (w, h) = (picture.width(), picture.height());
    let (tw, th) = target_size(w, h, max_size)?;
    let rgb = if (tw, th) == (w, h) {
        picture.to_rgb8()
    } else {
        // Triangle is a bilinear filter widened to the scale factor, so it averages away
        // detail instead of aliasing it.
        picture.resize_exact(tw, th, FilterType::Triangle).to_rgb8()
    };
    let tensor = normalise(&rgb);
    Ok(ImageInput {
        rgb,
        original_size: (w, h),
        tensor,
    })
}

/// The size after downscaling to `max_size`, checked against [`MIN_IMAGE_SIDE`].
fn target_size(w: u32, h: u32, max_size: Option<u32>) -> Result<(u32, u32)> {
    let too_small = |what: String| {
        Err(Error::invalid(
            "load_image",
            format!(
                "{what}; the network needs at least {MIN_IMAGE_SIDE} pixels on each side (its \
                 coarsest backbone level has stride {MIN_IMAGE_SIDE}): use a larger image"
            ),
        ))
    };
    if w < MIN_IMAGE_SIDE || h < MIN_IMAGE_SIDE {
        return too_small(format!("the image is {w}x{h} pixels"));
    }
    let Some(max) = max_size else {
        return Ok((w, h));
    };
    if max < MIN_IMAGE_SIDE {
        return Err(Error::invalid(
            "load_image",
            format!("max size {max} is below the minimum image side {MIN_IMAGE_SIDE}"),
        ));
    }
    let longer = w.max(h);
    if longer <= max {
        return Ok((w, h));
    }
    let scale = max as f64 / longer as f64;
    let tw = ((w as f64 * scale).round() as u32).clamp(1, max);
    let th = ((h as f64 * scale).round() as u32).clamp(1, max);
    if tw < MIN_IMAGE_SIDE || th < MIN_IMAGE_SIDE {
        return too_small(format!(
            "downscaling the {w}x{h} image to a longer side of {max} makes it {tw}x{th}; raise \
             the max size or"
        ));
    }
    Ok((tw, th))
}

/// RGB bytes to a [1, 3, H, W] tensor: `(v / 255 - mean) / std` per channel.
pub fn normalise(rgb: &RgbImage) -> HostTensor {
    let (w, h) = (rgb.width() as usize, rgb.height() as usize);
    let mut data = vec![0.0f32; 3 * w * h];
    for (i, px) in rgb.pixels().enumerate() {
        for c in 0..3 {
            data[c * w * h + i] = (px[c] as f32 / 255.0 - IMAGENET_MEAN[c]) / IMAGENET_STD[c];
        }
    }
    HostTensor {
        shape: vec![1, 3, h, w],
        data,
    }
}
