//! Where things lie for a picture of a given size: torchvision's resize and padding
//! (`GeneralizedRCNNTransform`), the pyramid levels' sizes and strides, and the packing of
//! the levels into one map. Every detection op derives its layout from the picture's shape
//! through this one type, so that they all agree.

use crate::error::{Error, Result};
use crate::kernels::levels::{pack, LevelRegion};

/// torchvision's detection resize: the shorter side to `min_size` unless the longer side
/// would then exceed `max_size` (then the longer side to `max_size`), then zero padding to
/// a multiple of `size_divisible`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResizeRule {
    /// The shorter side's target, in pixels (torchvision: 800).
    pub min_size: usize,
    /// The longer side's bound, in pixels (torchvision: 1333).
    pub max_size: usize,
    /// The padded batch's sides are multiples of this (torchvision: 32).
    pub size_divisible: usize,
}

impl Default for ResizeRule {
    fn default() -> Self {
        ResizeRule {
            min_size: 800,
            max_size: 1333,
            size_divisible: 32,
        }
    }
}

/// The geometry of a detector's input: its resize rule and its pyramid levels (as powers of
/// two: 3..=7 for P3..P7).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DetectionGeometry {
    /// How pictures are resized and padded.
    pub resize: ResizeRule,
    /// The levels the heads run on, finest first.
    pub levels: Vec<u32>,
}

impl DetectionGeometry {
    /// The resized picture's (height, width) for a picture of `height` x `width`: Python's
    /// `scale = min(min_size / shorter, max_size / longer)` in f64, then
    /// `floor(side * scale)`, as `F.interpolate(scale_factor=scale,
    /// recompute_scale_factor=True)` sizes it.
    pub fn resized(&self, (height, width): (usize, usize)) -> Result<(usize, usize)> {
        let r = self.resize;
        if r.min_size == 0 || r.max_size == 0 || r.size_divisible == 0 {
            return Err(Error::invalid(
                "detection transform",
                format!("min_size, max_size and size_divisible must be positive; got {r:?}"),
            ));
        }
        if height == 0 || width == 0 {
            return Err(Error::invalid(
                "detection transform",
                format!("the picture is {height}x{width}; it needs at least one pixel"),
            ));
        }
        let shorter = height.min(width) as f64;
        let longer = height.max(width) as f64;
        let scale = (r.min_size as f64 / shorter).min(r.max_size as f64 / longer);
        let h = (height as f64 * scale).floor() as usize;
        let w = (width as f64 * scale).floor() as usize;
        if h == 0 || w == 0 {
            return Err(Error::invalid(
                "detection transform",
                format!(
                    "a {height}x{width} picture resized by {scale} (min_size {}, max_size {}) has \
                     no pixels left; crop it to a less extreme aspect ratio",
                    r.min_size, r.max_size
                ),
            ));
        }
        Ok((h, w))
    }

    /// The padded batch's (height, width) for pictures of `size`.
    pub fn padded(&self, size: (usize, usize)) -> Result<(usize, usize)> {
        let (h, w) = self.resized(size)?;
        let d = self.resize.size_divisible;
        Ok((h.next_multiple_of(d), w.next_multiple_of(d)))
    }

    /// Each level's (height, width): every stride-2 step of the network rounds up, so level
    /// `l` of a padded picture of side `s` has side `ceil(s / 2^l)`.
    pub fn level_sizes(&self, size: (usize, usize)) -> Result<Vec<(usize, usize)>> {
        let (ph, pw) = self.padded(size)?;
        Ok(self
            .levels
            .iter()
            .map(|&l| (ph.div_ceil(1 << l), pw.div_ceil(1 << l)))
            .collect())
    }

    /// Each level's (vertical, horizontal) anchor stride, as torchvision's `AnchorGenerator`
    /// computes it: the padded size integer-divided by the level's size.
    pub fn strides(&self, size: (usize, usize)) -> Result<Vec<(u32, u32)>> {
        let (ph, pw) = self.padded(size)?;
        Ok(self
            .level_sizes(size)?
            .into_iter()
            .map(|(h, w)| ((ph / h) as u32, (pw / w) as u32))
            .collect())
    }

    /// The levels' regions in the packed map and the map's (height, width).
    pub fn packed(&self, size: (usize, usize)) -> Result<(Vec<LevelRegion>, (usize, usize))> {
        Ok(pack(&self.level_sizes(size)?))
    }

    /// (sx, sy): what boxes in the resized picture are multiplied by to land in the original
    /// one, divided in f32 as torchvision's `resize_boxes` does.
    pub fn box_scale(&self, size: (usize, usize)) -> Result<[f32; 2]> {
        let (h, w) = self.resized(size)?;
        Ok([size.1 as f32 / w as f32, size.0 as f32 / h as f32])
    }
}

/// The (height, width) of a picture shape `[N, C, H, W]`.
pub fn picture_size(shape: [usize; 4]) -> (usize, usize) {
    (shape[2], shape[3])
}
