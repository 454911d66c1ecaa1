//! The grids of launches sized on the GPU by a count of live rows
//! (`shaders/indirect_grid.wgsl`), for `dispatch_workgroups_indirect`: one small launch reads
//! how many records of a compacted records tensor are live
//! ([`crate::kernels::compact_records`]) and writes, for each launch that follows its rows,
//! the grid its [`BatchGrid`] gives for that count. The executor places it before those
//! launches and records them indirect.

use crate::error::{Error, Result};
use crate::gpu::{BatchGrid, Dispatch, GpuContext};
use crate::kernels::box_decode::check_records;
use crate::kernels::{pipeline, ShaderSource};
use crate::precision::Precision;
use crate::tensor::Tensor;

const OP: &str = "indirect_grid";

/// The WGSL source.
pub const SHADER: ShaderSource = ShaderSource {
    name: "indirect_grid.wgsl",
    parts: &["indirect_grid.wgsl"],
    source: include_str!("../../shaders/indirect_grid.wgsl"),
    params: &[
        ("GridParams", std::mem::size_of::<GridParams>()),
        ("GridRule", std::mem::size_of::<GridRule>()),
    ],
    enables: "",
    precisions: &[Precision::F32],
};

/// Mirrors `GridParams` in the WGSL.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
struct GridParams {
    rows: u32,
    rules: u32,
    max_per_dim: u32,
    _pad: u32,
}

/// Mirrors `GridRule` in the WGSL.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
struct GridRule {
    kind: u32,
    full: [u32; 3],
    per_row: u32,
    per_group: u32,
    _pad: [u32; 2],
}

impl GridRule {
    fn new(batch: BatchGrid, full: [u32; 3]) -> Self {
        let (kind, per_row, per_group) = match batch {
            BatchGrid::Z { per_row } => (0, per_row, 1),
            BatchGrid::X {
                items_per_row,
                items_per_group,
            } => (1, items_per_row, items_per_group),
            BatchGrid::Flat {
                items_per_row,
                items_per_group,
            } => (2, items_per_row, items_per_group),
        };
        GridRule {
            kind,
            full,
            per_row,
            per_group,
            _pad: [0; 2],
        }
    }
}

/// Builds the launch writing into `args` (3 u32 per launch, a buffer made by
/// `GpuContext::indirect_buffer`) the grid of each launch of `launches` (how its grid follows
/// the batch, and its grid at full size) for the live rows of `records` (f32 `[N, 1, D, 6]`,
/// the live records first).
pub(crate) fn prepare(
    ctx: &GpuContext,
    records: &Tensor,
    launches: &[(BatchGrid, [u32; 3])],
    args: &wgpu::Buffer,
) -> Result<Dispatch> {
    let (n, d) = check_records(OP, records.shape())?;
    if records.precision() != Precision::F32 {
        return Err(Error::invalid(
            OP,
            format!(
                "the records are {}; the rows of launches are counted in float32 records",
                records.precision()
            ),
        ));
    }
    if (args.size() as usize) < launches.len() * 12 {
        return Err(Error::invalid(
            OP,
            format!(
                "a buffer of {} bytes for the grids of {} launches; it needs 12 bytes each",
                args.size(),
                launches.len()
            ),
        ));
    }
    let rules: Vec<GridRule> = launches
        .iter()
        .map(|&(batch, full)| GridRule::new(batch, full))
        .collect();
    let params = GridParams {
        rows: (n * d) as u32,
        rules: rules.len() as u32,
        max_per_dim: ctx.limits().max_compute_workgroups_per_dimension,
        _pad: 0,
    };
    let pipeline = pipeline(ctx, &SHADER, Precision::F32, OP, &[])?;
    let rules = ctx.storage_from("indirect grid rules", &rules);
    let uniform = ctx.uniform(&params);
    let bind_group = ctx.bind_group(
        OP,
        &pipeline,
        &[
            (0, records.binding()),
            (1, rules.as_entire_binding()),
            (2, args.as_entire_binding()),
            (3, uniform.binding()),
        ],
    );
    Ok(Dispatch::new(OP, pipeline, bind_group, [1, 1, 1]))
}

/// Runs the grid launch now for `launches` on the live rows of `records` and returns the
/// grids it wrote, in order (what the indirect launches would read), once the GPU is done.
pub async fn grids(
    ctx: &GpuContext,
    records: &Tensor,
    launches: &[(BatchGrid, [u32; 3])],
) -> Result<Vec<[u32; 3]>> {
    if launches.is_empty() {
        return Ok(Vec::new());
    }
    let words = 3 * launches.len();
    let args = ctx.indirect_buffer("indirect grids", words);
    let launch = prepare(ctx, records, launches, &args)?;
    ctx.submit(&[&launch])?;
    let out = Tensor::empty(ctx, [1, 1, 1, words.max(1)])?;
    let mut encoder = ctx
        .device()
        .create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("indirect grids"),
        });
    encoder.copy_buffer_to_buffer(&args, 0, out.buffer(), out.offset(), (words * 4) as u64);
    ctx.queue().submit([encoder.finish()]);
    let values = out.download_async(ctx).await?;
    Ok(values
        .chunks_exact(3)
        .map(|g| [g[0].to_bits(), g[1].to_bits(), g[2].to_bits()])
        .collect())
}
