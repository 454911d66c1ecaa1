//! Pictures into network inputs: decoding (JPEG, PNG), the EXIF orientation, conversion to
//! what the network takes (RGB, or grayscale for a 1-channel model) whatever the colour type,
//! optional downscaling, and scaling into an NCHW tensor: ImageNet-normalised for the FPN, or
//! 0..1 for the detectors, whose own transform normalises.

use std::io::Cursor;
use std::path::Path;

use image::imageops::FilterType;
use image::metadata::Orientation;
use image::{DynamicImage, GrayImage, ImageDecoder, ImageFormat, ImageReader, RgbImage};

use crate::error::{Error, Result};
pub use crate::model::PixelNorm;
use crate::tensor_file::HostTensor;

/// Per-channel mean of torchvision's ImageNet normalisation (RGB, on values in [0, 1]).
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// Per-channel standard deviation of torchvision's ImageNet normalisation.
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];
/// The weights of R, G and B in a gray value: ITU-R 601-2 luma, what PIL's `convert("L")` and
/// torchvision's `Grayscale` use.
pub const LUMA_WEIGHTS: [f32; 3] = [0.299, 0.587, 0.114];
/// Mean and standard deviation for 1-channel inputs: [`IMAGENET_MEAN`] and [`IMAGENET_STD`]
/// weighted by [`LUMA_WEIGHTS`], i.e. ImageNet's statistics carried through the same gray
/// conversion the picture goes through (the mean exactly, the deviation to first order). Other
/// grayscale pipelines use the plain average (0.449, 0.226) or (0.5, 0.5); a model trained with
/// those wants its input normalised by the caller (see [`normalise`]).
pub const GRAY_MEAN_STD: (f32, f32) = (0.458_971, 0.225_609);
/// The smallest image side accepted: every layer of the network keeps at least one pixel (a
/// padded or 1x1 stride-2 window over one pixel gives one), so any picture of at least 1x1 runs.
pub const MIN_IMAGE_SIDE: u32 = 1;

/// What to do with a picture's EXIF orientation tag.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ExifOrientation {
    /// Turn the picture as the tag says, so that it is the picture a viewer displays (a phone
    /// photo held upright comes out upright).
    #[default]
    Apply,
    /// Keep the pixels in their stored order, as PIL's `Image.open` and torchvision's
    /// `decode_jpeg` do by default: for parity with a PyTorch pipeline that does not call
    /// `ImageOps.exif_transpose`.
    Ignore,
}

/// The values a picture's pixels become.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum PixelScale {
    /// `(v / 255 - mean) / std`, with [`IMAGENET_MEAN`] and [`IMAGENET_STD`] (RGB) or
    /// [`GRAY_MEAN_STD`] (gray): what torchvision's backbones were trained on, and what an
    /// [`Fpn`](crate::Fpn) takes.
    #[default]
    ImageNet,
    /// `v / 255`, in 0..1: what torchvision's detectors take, their transform normalising on
    /// the GPU, and so what a [`Detector`](crate::Detector) takes.
    Unit,
    /// 0..255 values normalised as a checkpoint says (see
    /// [`Checkpoint::pixels`](crate::Checkpoint::pixels)); a 1-channel network takes the gray
    /// value minus the means' average over the deviations' average.
    Custom(PixelNorm),
}

/// How a picture becomes a network input.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ImageOptions {
    /// Downscale so that the longer side is at most this many pixels (keeping the aspect ratio).
    pub max_size: Option<u32>,
    /// Channels the network takes: 3 (RGB) or 1 (gray by [`LUMA_WEIGHTS`]).
    pub channels: usize,
    /// Whether the EXIF orientation is applied.
    pub orientation: ExifOrientation,
    /// ImageNet-normalised (the default, for an FPN) or 0..1 (for a detector).
    pub scale: PixelScale,
}

impl Default for ImageOptions {
    fn default() -> Self {
        ImageOptions {
            max_size: None,
            channels: 3,
            orientation: ExifOrientation::Apply,
            scale: PixelScale::ImageNet,
        }
    }
}

impl ImageOptions {
    /// The defaults with 0..1 values: RGB as torchvision's detectors take it.
    pub fn detection() -> Self {
        ImageOptions {
            scale: PixelScale::Unit,
            ..ImageOptions::default()
        }
    }
}

/// A decoded picture and the network input made from it.
#[derive(Debug)]
pub struct ImageInput {
    /// The picture as the network sees it (turned, downscaled), 8-bit RGB for display; a
    /// 1-channel network sees its gray values.
    pub rgb: RgbImage,
    /// Its size in the file, width x height, before any turn.
    pub original_size: (u32, u32),
    /// The EXIF orientation the file declares (`NoTransforms` without a tag), and whether it
    /// was applied.
    pub orientation: (Orientation, bool),
    /// The input, shape [1, C, H, W], scaled as [`ImageOptions::scale`] says.
    pub tensor: HostTensor,
}

/// Decodes the JPEG or PNG at `path` (the format is read from the content, not the name),
/// turns it as its EXIF orientation says, converts grayscale, alpha and 16-bit pictures to RGB,
/// downscales it so that its longer side is at most `max_size` (keeping the aspect ratio), and
/// normalises it as torchvision does. See [`load_image_with`] for the other choices.
pub fn load_image(path: &Path, max_size: Option<u32>) -> Result<ImageInput> {
    load_image_with(
        path,
        &ImageOptions {
            max_size,
            ..ImageOptions::default()
        },
    )
}

/// [`load_image`] with the choices of `options`: the network's channels, the EXIF orientation
/// and the values' scale.
pub fn load_image_with(path: &Path, options: &ImageOptions) -> Result<ImageInput> {
    let bytes = std::fs::read(path).map_err(|e| Error::File {
        path: path.display().to_string(),
        message: format!("cannot open the image: {e}"),
    })?;
    decode_image(&bytes, &path.display().to_string(), options)
}

/// [`load_image_with`] for a JPEG or PNG file's bytes already in memory (fetched by a web page,
/// say); `name` names the picture in errors.
pub fn decode_image(bytes: &[u8], name: &str, options: &ImageOptions) -> Result<ImageInput> {
    let file_error = |message: String| Error::File {
        path: name.to_string(),
        message,
    };
    // Decided on the content, not the name: a file called `.png` may hold anything.
    let format =
        match image::guess_format(bytes) {
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
    let decode_error = |e: image::ImageError| file_error(format!("cannot decode the image: {e}"));
    let mut decoder = ImageReader::with_format(Cursor::new(bytes), format)
        .into_decoder()
        .map_err(decode_error)?;
    // A tag that cannot be read is no tag: the pixels are still good.
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let turbo = match format {
        ImageFormat::Jpeg => crate::jpeg::decode(bytes),
        _ => None,
    };
    let mut picture = match turbo {
        Some(decoded) => {
            decoded.map_err(|e| file_error(format!("cannot decode the image: {e}")))?
        }
        None => DynamicImage::from_decoder(decoder).map_err(decode_error)?,
    };
    let original_size = (picture.width(), picture.height());
    let apply = options.orientation == ExifOrientation::Apply;
    if apply {
        picture.apply_orientation(orientation);
    }
    let mut input = from_picture_with(&picture, options).map_err(|e| match e {
        Error::InvalidArgument { message, .. } => file_error(message),
        other => other,
    })?;
    input.original_size = original_size;
    input.orientation = (
        orientation,
        apply && orientation != Orientation::NoTransforms,
    );
    Ok(input)
}

/// [`load_image`] for a picture already in memory (and already turned upright).
pub fn from_picture(picture: &DynamicImage, max_size: Option<u32>) -> Result<ImageInput> {
    from_picture_with(
        picture,
        &ImageOptions {
            max_size,
            ..ImageOptions::default()
        },
    )
}

/// [`from_picture`] with the network's channels and the values' scale from `options` (its
/// orientation is not used: a picture in memory has no tag).
pub fn from_picture_with(picture: &DynamicImage, options: &ImageOptions) -> Result<ImageInput> {
    let (w, h) = (picture.width(), picture.height());
    let (tw, th) = target_size(w, h, options.max_size)?;
    let resized;
    let picture = if (tw, th) == (w, h) {
        picture
    } else {
        // Triangle is a bilinear filter widened to the scale factor, so it averages away
        // detail instead of aliasing it.
        resized = picture.resize_exact(tw, th, FilterType::Triangle);
        &resized
    };
    let (rgb, tensor) = match options.channels {
        3 => {
            let rgb = picture.to_rgb8();
            let tensor = match options.scale {
                PixelScale::ImageNet => normalise(&rgb),
                PixelScale::Unit => unit_rgb(&rgb),
                PixelScale::Custom(norm) => {
                    let order = if norm.bgr { [2, 1, 0] } else { [0, 1, 2] };
                    planes_ordered(&rgb, order, |c, v| (v - norm.mean[c]) / norm.std[c])
                }
            };
            (rgb, tensor)
        }
        1 => {
            let gray = to_gray(picture);
            let tensor = match options.scale {
                PixelScale::ImageNet => normalise_gray(&gray),
                PixelScale::Unit => unit_gray(&gray),
                PixelScale::Custom(norm) => {
                    let mean = norm.mean.iter().sum::<f32>() / 3.0;
                    let std = norm.std.iter().sum::<f32>() / 3.0;
                    gray_plane(&gray, |v| (v * 255.0 - mean) / std)
                }
            };
            (DynamicImage::ImageLuma8(gray).to_rgb8(), tensor)
        }
        n => {
            return Err(Error::invalid(
                "load_image",
                format!(
                    "the network takes {n}-channel inputs, and a picture gives 3 (RGB) or 1 \
                     (gray); pass the input as a tensor instead (`fpn run --input`)"
                ),
            ))
        }
    };
    Ok(ImageInput {
        rgb,
        original_size: (w, h),
        orientation: (Orientation::NoTransforms, false),
        tensor,
    })
}

/// Gray values as PIL's `convert("L")` computes them from RGB (601-2 luma in 16-bit fixed
/// point, rounded); a gray picture keeps its values.
fn to_gray(picture: &DynamicImage) -> GrayImage {
    if !picture.color().has_color() {
        return picture.to_luma8();
    }
    let rgb = picture.to_rgb8();
    GrayImage::from_fn(rgb.width(), rgb.height(), |x, y| {
        let [r, g, b] = rgb.get_pixel(x, y).0.map(u32::from);
        image::Luma([((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16) as u8])
    })
}

/// The size after downscaling to `max_size`: the longer side becomes `max_size`, the shorter
/// one is rounded and kept at least 1 pixel (a 2000x45 picture at 800 becomes 800x18).
fn target_size(w: u32, h: u32, max_size: Option<u32>) -> Result<(u32, u32)> {
    if w < MIN_IMAGE_SIDE || h < MIN_IMAGE_SIDE {
        return Err(Error::invalid(
            "load_image",
            format!("the image is {w}x{h} pixels, with no pixels at all: use another picture"),
        ));
    }
    let Some(max) = max_size else {
        return Ok((w, h));
    };
    if max < MIN_IMAGE_SIDE {
        return Err(Error::invalid(
            "load_image",
            format!(
                "max size {max} leaves no pixels: give a max size of at least {MIN_IMAGE_SIDE}"
            ),
        ));
    }
    let longer = w.max(h);
    if longer <= max {
        return Ok((w, h));
    }
    let scale = max as f64 / longer as f64;
    let tw = ((w as f64 * scale).round() as u32).clamp(MIN_IMAGE_SIDE, max);
    let th = ((h as f64 * scale).round() as u32).clamp(MIN_IMAGE_SIDE, max);
    Ok((tw, th))
}

/// RGB bytes to a [1, 3, H, W] tensor: `(v / 255 - mean) / std` per channel.
pub fn normalise(rgb: &RgbImage) -> HostTensor {
    planes(rgb, |c, v| (v - IMAGENET_MEAN[c]) / IMAGENET_STD[c])
}

/// RGB bytes to a [1, 3, H, W] tensor in 0..1: `v / 255`.
pub fn unit_rgb(rgb: &RgbImage) -> HostTensor {
    planes(rgb, |_, v| v)
}

/// RGB bytes to a [1, 3, H, W] tensor, channel planes one after another, channel `c` holding
/// `f(c, v)` with `v` the 0..255 value of the picture's channel `order[c]` (`[2, 1, 0]` for BGR).
fn planes_ordered(rgb: &RgbImage, order: [usize; 3], f: impl Fn(usize, f32) -> f32) -> HostTensor {
    let (w, h) = (rgb.width() as usize, rgb.height() as usize);
    let mut data = vec![0.0f32; 3 * w * h];
    for (i, px) in rgb.pixels().enumerate() {
        for (c, &from) in order.iter().enumerate() {
            data[c * w * h + i] = f(c, px[from] as f32);
        }
    }
    HostTensor {
        shape: vec![1, 3, h, w],
        data,
    }
}

/// RGB planes of `f(channel, v / 255)`.
fn planes(rgb: &RgbImage, f: impl Fn(usize, f32) -> f32) -> HostTensor {
    planes_ordered(rgb, [0, 1, 2], |c, v| f(c, v / 255.0))
}

/// Gray bytes to a [1, 1, H, W] tensor: `(v / 255 - mean) / std` with [`GRAY_MEAN_STD`].
pub fn normalise_gray(gray: &GrayImage) -> HostTensor {
    let (mean, std) = GRAY_MEAN_STD;
    gray_plane(gray, |v| (v - mean) / std)
}

/// Gray bytes to a [1, 1, H, W] tensor in 0..1: `v / 255`.
pub fn unit_gray(gray: &GrayImage) -> HostTensor {
    gray_plane(gray, |v| v)
}

fn gray_plane(gray: &GrayImage, f: impl Fn(f32) -> f32) -> HostTensor {
    HostTensor {
        shape: vec![1, 1, gray.height() as usize, gray.width() as usize],
        data: gray.pixels().map(|p| f(p[0] as f32 / 255.0)).collect(),
    }
}
