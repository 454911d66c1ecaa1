//! Pictures of a pyramid a person can look at: per level, the L2 norm of the feature vector at
//! each pixel, normalised and colour-mapped; and one overview with the input and every level
//! side by side.

use image::imageops::{self, FilterType};
use image::{Rgb, RgbImage};

use crate::error::{Error, Result};
use crate::tensor_file::HostTensor;

/// Anchors of a dark-to-bright colour ramp (black, purple, red, orange, pale yellow), evenly
/// spaced: brightness rises monotonically, so the map reads correctly in grey too.
const RAMP: [[f32; 3]; 5] = [
    [0.0, 0.0, 4.0],
    [87.0, 16.0, 110.0],
    [188.0, 55.0, 84.0],
    [249.0, 142.0, 9.0],
    [252.0, 255.0, 164.0],
];

/// Fraction of pixels clipped at each end when normalising, so that a few extreme pixels do not
/// wash out the rest of the map.
const CLIP_FRACTION: f64 = 0.01;

/// Height of the panels in the overview, unless the input is smaller.
pub const OVERVIEW_HEIGHT: u32 = 320;
const GAP: u32 = 8;
const BACKGROUND: Rgb<u8> = Rgb([32, 32, 32]);

/// The L2 norm over channels at each pixel of image `n` of an NCHW level: H x W values, row-major.
pub fn energy(level: &HostTensor, n: usize) -> Result<(usize, usize, Vec<f32>)> {
    let [batch, c, h, w] = level.nchw("level")?;
    if n >= batch {
        return Err(Error::invalid(
            "energy",
            format!("image {n} asked of a batch of {batch}"),
        ));
    }
    let plane = h * w;
    let base = n * c * plane;
    let mut sums = vec![0.0f64; plane];
    for ch in 0..c {
        let values = &level.data[base + ch * plane..base + (ch + 1) * plane];
        for (s, &v) in sums.iter_mut().zip(values) {
            *s += v as f64 * v as f64;
        }
    }
    Ok((h, w, sums.into_iter().map(|s| s.sqrt() as f32).collect()))
}

/// Maps values to colours: the 1st..99th percentile range spans the ramp; non-finite values
/// (which a NaN input carries through) are drawn as the ramp's top.
pub fn colour_map(h: usize, w: usize, values: &[f32]) -> RgbImage {
    let mut finite: Vec<f32> = values.iter().copied().filter(|v| v.is_finite()).collect();
    finite.sort_by(f32::total_cmp);
    let (lo, hi) = if finite.is_empty() {
        (0.0, 0.0)
    } else {
        let at = |q: f64| finite[((finite.len() - 1) as f64 * q).round() as usize];
        (at(CLIP_FRACTION), at(1.0 - CLIP_FRACTION))
    };
    let span = hi - lo;
    RgbImage::from_fn(w as u32, h as u32, |x, y| {
        let v = values[y as usize * w + x as usize];
        let t = if !v.is_finite() {
            1.0
        } else if span > 0.0 {
            ((v - lo) / span).clamp(0.0, 1.0)
        } else {
            0.0
        };
        ramp(t)
    })
}

fn ramp(t: f32) -> Rgb<u8> {
    let pos = t * (RAMP.len() - 1) as f32;
    let i = (pos.floor() as usize).min(RAMP.len() - 2);
    let f = pos - i as f32;
    let mix = |c: usize| (RAMP[i][c] * (1.0 - f) + RAMP[i + 1][c] * f).round() as u8;
    Rgb([mix(0), mix(1), mix(2)])
}

/// The energy picture of image `n` of a level, at the level's resolution.
pub fn energy_picture(level: &HostTensor, n: usize) -> Result<RgbImage> {
    let (h, w, values) = energy(level, n)?;
    Ok(colour_map(h, w, &values))
}

/// The input and the level pictures in one row, each scaled to the same height (the levels with
/// nearest-neighbour, so that their pixels stay visible as blocks).
pub fn overview(input: &RgbImage, levels: &[RgbImage]) -> RgbImage {
    let height = input.height().clamp(1, OVERVIEW_HEIGHT);
    let scaled_width =
        |p: &RgbImage| ((p.width() as u64 * height as u64).div_ceil(p.height() as u64)) as u32;
    let mut panels = vec![imageops::resize(
        input,
        scaled_width(input),
        height,
        FilterType::Triangle,
    )];
    panels.extend(
        levels
            .iter()
            .map(|p| imageops::resize(p, scaled_width(p), height, FilterType::Nearest)),
    );
    let width: u32 =
        panels.iter().map(|p| p.width()).sum::<u32>() + GAP * (panels.len() as u32 + 1);
    let mut canvas = RgbImage::from_pixel(width, height + 2 * GAP, BACKGROUND);
    let mut x = GAP;
    for p in &panels {
        imageops::replace(&mut canvas, p, x as i64, GAP as i64);
        x += p.width() + GAP;
    }
    canvas
}

/// Writes `picture` as a PNG file, atomically (see [`crate::atomic_file`]).
pub fn save_png(picture: &RgbImage, path: &std::path::Path) -> Result<()> {
    let mut png = Vec::new();
    picture
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .map_err(|e| Error::File {
            path: path.display().to_string(),
            message: format!("cannot encode the PNG: {e}"),
        })?;
    crate::atomic_file::write(path, &png)
}
