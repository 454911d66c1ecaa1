//! Pyramid levels packed into one map (`shaders/levels.wgsl`), so that a detection head whose
//! weights every level shares runs each layer once over all levels instead of once per level.
//!
//! Level `l` occupies the rectangle `regions[l]` of an `[N, C, HS, WS]` map; the rectangles are
//! at least one row or column apart and everything else is zero, so a 3x3 convolution with zero
//! padding 1 computes, inside each rectangle, that level's own output. [`pack`] places the
//! levels: the finest along the top, the others side by side below it.

use crate::error::{Error, Result};
use crate::gpu::{Dispatch, GpuContext};
use crate::kernels::{check_io, check_output_shape, layout_dispatch, ShaderSource};
use crate::precision::Precision;
use crate::tensor::{check_shape_in, Tensor};

/// The WGSL source.
pub const SHADER: ShaderSource = ShaderSource {
    name: "levels.wgsl",
    parts: &["layout.wgsl", "level_regions.wgsl", "levels.wgsl"],
    source: concat!(
        include_str!("../../shaders/layout.wgsl"),
        include_str!("../../shaders/level_regions.wgsl"),
        include_str!("../../shaders/levels.wgsl")
    ),
    params: &[("LevelsParams", std::mem::size_of::<LevelsParams>())],
    enables: "",
    precisions: &Precision::ALL,
};

/// Most levels a packed map holds (the bindings of `stack_levels`).
pub const MAX_LEVELS: usize = 5;
/// Regions the params structs of the kernels over packed levels have room for.
pub(crate) const REGION_SLOTS: usize = 8;

/// Where one level lies in a packed map, in elements.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LevelRegion {
    /// First row.
    pub y0: u32,
    /// First column.
    pub x0: u32,
    /// Rows.
    pub height: u32,
    /// Columns.
    pub width: u32,
}

impl LevelRegion {
    /// The region as the shaders' `vec4<u32>` (y0, x0, height, width).
    pub(crate) fn words(self) -> [u32; 4] {
        [self.y0, self.x0, self.height, self.width]
    }
}

/// Places levels of sizes `sizes` (height, width; finest first) in one map: the first along
/// the top, the others left to right in a row below it, one zero row or column between any
/// two. Returns the regions and the map's (height, width).
pub fn pack(sizes: &[(usize, usize)]) -> (Vec<LevelRegion>, (usize, usize)) {
    let mut regions = Vec::with_capacity(sizes.len());
    let Some(&(h0, w0)) = sizes.first() else {
        return (regions, (0, 0));
    };
    regions.push(LevelRegion {
        y0: 0,
        x0: 0,
        height: h0 as u32,
        width: w0 as u32,
    });
    let (mut height, mut width) = (h0, w0);
    let mut x = 0;
    for &(h, w) in &sizes[1..] {
        regions.push(LevelRegion {
            y0: (h0 + 1) as u32,
            x0: x as u32,
            height: h as u32,
            width: w as u32,
        });
        height = height.max(h0 + 1 + h);
        width = width.max(x + w);
        x += w + 1;
    }
    (regions, (height, width))
}

/// Mirrors `LevelsParams` in the WGSL.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct LevelsParams {
    len: u32,
    height: u32,
    width: u32,
    count: u32,
    in_height: u32,
    in_width: u32,
    pad_y: u32,
    pad_x: u32,
    channels: u32,
    cl: u32,
    _pad: [u32; 2],
    regions: [[u32; 4]; REGION_SLOTS],
}

/// The params of a launch writing `out` from a map `padding` smaller on each side.
fn params(out: &Tensor, regions: &[LevelRegion], (pad_y, pad_x): (usize, usize)) -> LevelsParams {
    let [_, channels, height, width] = out.shape();
    LevelsParams {
        len: out.storage_len() as u32,
        height: height as u32,
        width: width as u32,
        count: regions.len() as u32,
        in_height: (height - 2 * pad_y) as u32,
        in_width: (width - 2 * pad_x) as u32,
        pad_y: pad_y as u32,
        pad_x: pad_x as u32,
        channels: channels as u32,
        cl: out.memory_format().wgsl_flag(channels),
        _pad: [0; 2],
        regions: region_table(regions),
    }
}

/// `regions` as the shaders' table, `(y0, x0, height, width)` per slot, unused slots zero.
pub(crate) fn region_table(regions: &[LevelRegion]) -> [[u32; 4]; REGION_SLOTS] {
    let mut table = [[0; 4]; REGION_SLOTS];
    for (slot, r) in table.iter_mut().zip(regions) {
        *slot = r.words();
    }
    table
}

/// Checks that there are 1 to [`REGION_SLOTS`] regions, each with a row and a column, lying
/// inside a `height` x `width` map.
pub(crate) fn check_regions(
    op: &'static str,
    regions: &[LevelRegion],
    (height, width): (usize, usize),
) -> Result<()> {
    if regions.is_empty() || regions.len() > REGION_SLOTS {
        return Err(Error::invalid(
            op,
            format!(
                "{} levels were given; between 1 and {REGION_SLOTS} are supported",
                regions.len()
            ),
        ));
    }
    for (l, r) in regions.iter().enumerate() {
        if r.height == 0 || r.width == 0 {
            return Err(Error::invalid(
                op,
                format!(
                    "level {l} is {}x{}; every level needs at least one row and one column",
                    r.height, r.width
                ),
            ));
        }
        // In u64: a caller's region must not wrap around and pass.
        let bottom = r.y0 as u64 + r.height as u64;
        let right = r.x0 as u64 + r.width as u64;
        if bottom > height as u64 || right > width as u64 {
            return Err(Error::invalid(
                op,
                format!(
                    "level {l} covers rows {}..{bottom} and columns {}..{right}, outside the {height}x{width} map: its region does not lie inside it",
                    r.y0, r.x0
                ),
            ));
        }
    }
    Ok(())
}

/// Builds the launch that packs `levels` (each `[N, C, h_l, w_l]`, finest first, at most
/// [`MAX_LEVELS`]) into `out` as [`pack`] places them. Every tensor NCHW or every one
/// channels-last, of one precision.
pub fn prepare_stack(ctx: &GpuContext, levels: &[&Tensor], out: &Tensor) -> Result<Dispatch> {
    const OP: &str = "stack_levels";
    if levels.is_empty() || levels.len() > MAX_LEVELS {
        return Err(Error::invalid(
            OP,
            format!(
                "{} levels given; 1 to {MAX_LEVELS} can be packed",
                levels.len()
            ),
        ));
    }
    let [n, c, _, _] = levels[0].shape();
    let mut sizes = Vec::with_capacity(levels.len());
    for (l, t) in levels.iter().enumerate() {
        check_shape_in(ctx, OP, "a level", t.shape(), t.memory_format())?;
        let [ln, lc, h, w] = t.shape();
        if (ln, lc) != (n, c) {
            return Err(Error::invalid(
                OP,
                format!(
                    "level {l} has shape {:?} but level 0 has {:?}; every level must have the same batch and channels",
                    t.shape(),
                    levels[0].shape()
                ),
            ));
        }
        sizes.push((h, w));
    }
    let (regions, (height, width)) = pack(&sizes);
    check_output_shape(OP, out, [n, c, height, width])?;
    check_shape_in(ctx, OP, "the packed map", out.shape(), out.memory_format())?;
    check_io(OP, out, levels)?;
    let mut buffers: Vec<(u32, wgpu::BindingResource<'_>)> = (0..MAX_LEVELS)
        .map(|l| (l as u32, levels.get(l).unwrap_or(&levels[0]).binding()))
        .collect();
    buffers.push((6, out.binding()));
    layout_dispatch(
        ctx,
        &SHADER,
        (out.precision(), out.memory_format()),
        OP,
        out.storage_len(),
        &params(out, &regions, (0, 0)),
        &buffers,
        7,
    )
}

/// Builds the launch computing `out = x` inside `regions` and 0 outside them, within a zero
/// border of `padding` (rows, columns) on each side: `out` is `[N, C, HS + 2 py, WS + 2 px]`.
/// Both NCHW or both channels-last, of one precision.
pub fn prepare_mask(
    ctx: &GpuContext,
    x: &Tensor,
    regions: &[LevelRegion],
    padding: (usize, usize),
    out: &Tensor,
) -> Result<Dispatch> {
    const OP: &str = "mask_levels";
    check_shape_in(ctx, OP, "the packed map", x.shape(), x.memory_format())?;
    let [n, c, h, w] = x.shape();
    check_output_shape(OP, out, [n, c, h + 2 * padding.0, w + 2 * padding.1])?;
    check_io(OP, out, &[x])?;
    check_regions(OP, regions, (h, w))?;
    layout_dispatch(
        ctx,
        &SHADER,
        (out.precision(), out.memory_format()),
        OP,
        out.storage_len(),
        &params(out, regions, padding),
        &[(5, x.binding()), (6, out.binding())],
        7,
    )
}
