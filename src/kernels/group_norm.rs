//! Group norm over the levels of a packed map (`shaders/group_norm.wgsl`), for the detection
//! heads that normalise their hidden layers (RetinaNet v2, FCOS).
//!
//! torchvision runs such a head once per level, so a group's statistics are each level's own:
//! per image, group and level, over that level's region of the packed map (see
//! [`crate::kernels::levels`]). Outside the regions the output is zero, which is what the next
//! 3x3 convolution needs to see each level with zero padding around it: the norm also does the
//! masking an unnormalised head runs separately, and it may write the zero border the next
//! convolution's padding needs around the map, sparing that convolution a padding launch.
//!
//! Two launches whatever the batch and the number of levels ([`LAUNCHES`]): the statistics,
//! one workgroup per (image, group, level), then the normalisation, one invocation per element.

use crate::error::{Error, Result};
use crate::gpu::{grid_2d, Dispatch, GpuContext};
use crate::kernels::levels::{check_regions, region_table, LevelRegion, REGION_SLOTS};
use crate::kernels::{check_io, check_output_shape, layout_dispatch, pipeline, ShaderSource};
use crate::precision::Precision;
use crate::tensor::{check_shape_in, MemoryFormat, Tensor};

/// The WGSL source.
pub const SHADER: ShaderSource = ShaderSource {
    name: "group_norm.wgsl",
    parts: &["layout.wgsl", "level_regions.wgsl", "group_norm.wgsl"],
    source: concat!(
        include_str!("../../shaders/layout.wgsl"),
        include_str!("../../shaders/level_regions.wgsl"),
        include_str!("../../shaders/group_norm.wgsl")
    ),
    params: &[("GroupNormParams", std::mem::size_of::<GroupNormParams>())],
    enables: "",
    precisions: &Precision::ALL,
};

/// The launches [`prepare`] returns: the statistics, then the normalisation.
pub const LAUNCHES: usize = 2;

/// Bytes of one segment's statistics: (pivot, delta, 1 / sqrt(var + eps), 0) as four f32.
const STATS_BYTES: u64 = 16;

/// Mirrors `GroupNormParams` in the WGSL.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct GroupNormParams {
    len: u32,
    batch: u32,
    channels: u32,
    groups: u32,
    height: u32,
    width: u32,
    count: u32,
    relu: u32,
    eps: f32,
    segments: u32,
    pad_y: u32,
    pad_x: u32,
    cl: u32,
    _pad: [u32; 3],
    regions: [[u32; 4]; REGION_SLOTS],
}

/// A group norm's affine parameters on the GPU, with its number of groups and epsilon.
#[derive(Debug)]
pub struct GroupNormWeights {
    channels: usize,
    groups: usize,
    eps: f32,
    affine: wgpu::Buffer,
}

impl GroupNormWeights {
    /// Uploads `nn.GroupNorm(groups, channels, eps)`'s `weight` (gamma) and `bias` (beta), one
    /// value per channel; the channels must split evenly into the groups.
    pub fn new(
        ctx: &GpuContext,
        weight: &[f32],
        bias: &[f32],
        groups: usize,
        eps: f32,
    ) -> Result<Self> {
        const OP: &str = "GroupNormWeights::new";
        let channels = weight.len();
        if channels == 0 || bias.len() != channels {
            return Err(Error::invalid(
                OP,
                format!(
                    "weight and bias must have the same non-zero length; got {} and {}",
                    channels,
                    bias.len()
                ),
            ));
        }
        if groups == 0 || !channels.is_multiple_of(groups) {
            return Err(Error::invalid(
                OP,
                format!(
                    "{channels} channels do not split into {groups} groups; the groups must \
                     divide the channels (torchvision's heads: GroupNorm(32, 256))"
                ),
            ));
        }
        if !(eps >= 0.0 && eps.is_finite()) {
            return Err(Error::invalid(
                OP,
                format!("eps is {eps}; it must be finite and not negative (PyTorch's is 1e-5)"),
            ));
        }
        let affine: Vec<f32> = [weight, bias].concat();
        Ok(GroupNormWeights {
            channels,
            groups,
            eps,
            affine: ctx.storage_from("group norm affine", &affine),
        })
    }

    /// Number of channels.
    pub fn channels(&self) -> usize {
        self.channels
    }

    /// Number of groups.
    pub fn groups(&self) -> usize {
        self.groups
    }

    /// Bytes on the GPU.
    pub fn byte_size(&self) -> u64 {
        self.affine.size()
    }
}

/// Builds the [`LAUNCHES`] launches writing `out`: `x` `[N, C, HS, WS]` group-normalised per
/// image, group and level over each of `regions`, then ReLU when `relu`, and zero outside the
/// regions, within a zero border of `padding` (rows, columns) on each side: `out` is
/// `[N, C, HS + 2 py, WS + 2 px]`. Both tensors are NCHW or both channels-last (the padding
/// channels come out zero), of one precision (f32 or f16; the statistics are f32).
///
/// The statistics' scratch is made here, once; the first launch writes all of it before the
/// second reads it, so the launches may be recorded any number of times.
pub fn prepare(
    ctx: &GpuContext,
    x: &Tensor,
    regions: &[LevelRegion],
    gn: &GroupNormWeights,
    relu: bool,
    padding: (usize, usize),
    out: &Tensor,
) -> Result<Vec<Dispatch>> {
    const OP: &str = "group_norm_levels";
    let layout = x.memory_format();
    check_shape_in(ctx, OP, "the packed map", x.shape(), layout)?;
    let [n, c, h, w] = x.shape();
    let (pad_y, pad_x) = padding;
    check_output_shape(OP, out, [n, c, h + 2 * pad_y, w + 2 * pad_x])?;
    check_shape_in(ctx, OP, "the output", out.shape(), out.memory_format())?;
    check_io(OP, out, &[x])?;
    if c != gn.channels {
        return Err(Error::invalid(
            OP,
            format!(
                "the input has {c} channels (shape {:?}) but the group norm has {}",
                x.shape(),
                gn.channels
            ),
        ));
    }
    check_regions(OP, regions, (h, w))?;

    let segments = (n * gn.groups * regions.len()) as u64;
    let stats_bytes = segments * STATS_BYTES;
    ctx.check_binding_size(OP, "the statistics", stats_bytes)?;
    let groups = u32::try_from(segments).map_err(|_| {
        Error::invalid(
            OP,
            format!("{segments} (image, group, level) segments are more than a u32 counts; use a smaller batch"),
        )
    })?;
    let stats_grid = grid_2d(groups, ctx.limits().max_compute_workgroups_per_dimension);
    ctx.check_grid("group_norm_stats", stats_grid)?;

    let params = GroupNormParams {
        len: out.storage_len() as u32,
        batch: n as u32,
        channels: c as u32,
        groups: gn.groups as u32,
        height: h as u32,
        width: w as u32,
        count: regions.len() as u32,
        relu: relu as u32,
        eps: gn.eps,
        segments: groups,
        pad_y: pad_y as u32,
        pad_x: pad_x as u32,
        cl: layout.wgsl_flag(c),
        _pad: [0; 3],
        regions: region_table(regions),
    };
    let stats = ctx.storage_zeroed("group norm statistics", stats_bytes);

    let entry = "group_norm_stats";
    let constants: &[(&str, u32)] = match layout {
        MemoryFormat::Nchw => &[],
        MemoryFormat::ChannelsLast => &[("CHANNELS_LAST", 1)],
    };
    let stats_pipeline = pipeline(ctx, &SHADER, x.precision(), entry, constants)?;
    let uniform = ctx.uniform(&params);
    let bind_group = ctx.bind_group(
        entry,
        &stats_pipeline,
        &[
            (0, x.binding()),
            (2, stats.as_entire_binding()),
            (4, uniform.binding()),
        ],
    );
    let stats_launch = Dispatch::new(entry, stats_pipeline, bind_group, stats_grid);
    let apply = layout_dispatch(
        ctx,
        &SHADER,
        (x.precision(), layout),
        "group_norm_apply",
        out.storage_len(),
        &params,
        &[
            (0, x.binding()),
            (1, gn.affine.as_entire_binding()),
            (2, stats.as_entire_binding()),
            (3, out.binding()),
        ],
        4,
    )?;
    Ok(vec![stats_launch, apply])
}

/// Runs the group norm now, without a border, and returns its output, stored as `x` is
/// (downloading it waits for the GPU).
pub fn group_norm_levels(
    ctx: &GpuContext,
    x: &Tensor,
    regions: &[LevelRegion],
    gn: &GroupNormWeights,
    relu: bool,
) -> Result<Tensor> {
    let out = Tensor::empty_with(ctx, x.shape(), x.precision(), x.memory_format())?;
    let launches = prepare(ctx, x, regions, gn, relu, (0, 0), &out)?;
    ctx.submit(&launches.iter().collect::<Vec<_>>())?;
    Ok(out)
}
