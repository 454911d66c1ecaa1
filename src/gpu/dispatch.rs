//! A recorded kernel launch, and the grids launches are cut into.

/// How a launch's grid follows the batch, the leading dimension of its output: what lets a
/// launch whose rows are only partly live (Mask R-CNN's mask branch on the detections kept
/// out of a fixed capacity) be sized on the GPU from the count of live rows, with
/// `dispatch_workgroups_indirect`, instead of by its capacity. Kernels whose workgroups each
/// stay inside the rows they were given and whose grid shrinks along one of these forms say so
/// with `Dispatch::with_batch`; the other launches always run their whole grid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BatchGrid {
    /// `per_row` workgroups per row along z: `[x, y, rows * per_row]` (the convolutions,
    /// whose z is the image, times the split-K parts).
    Z {
        /// Workgroups along z per row.
        per_row: u32,
    },
    /// `ceil(rows * items_per_row / items_per_group)` workgroups along x, y and z fixed (the
    /// transposed convolution, whose x tiles the pixels of the whole batch).
    X {
        /// Items (pixels, elements) per row.
        items_per_row: u32,
        /// Items per workgroup.
        items_per_group: u32,
    },
    /// `ceil(rows * items_per_row / items_per_group)` workgroups laid out by `grid_2d` (the
    /// kernels with one invocation per output element).
    Flat {
        /// Items (elements) per row.
        items_per_row: u32,
        /// Items per workgroup.
        items_per_group: u32,
    },
}

impl BatchGrid {
    /// The grid of a launch whose grid at full size is `full` when `rows` rows are live,
    /// `max_per_dim` the device's limit per dimension. The GPU computes the same in
    /// `shaders/indirect_grid.wgsl`.
    pub fn grid(&self, full: [u32; 3], rows: u32, max_per_dim: u32) -> [u32; 3] {
        let groups = |items_per_row: u32, items_per_group: u32| {
            let items = rows as u64 * items_per_row as u64;
            u32::try_from(items.div_ceil(items_per_group.max(1) as u64)).unwrap_or(u32::MAX)
        };
        match *self {
            BatchGrid::Z { per_row } => [full[0], full[1], rows.saturating_mul(per_row)],
            BatchGrid::X {
                items_per_row,
                items_per_group,
            } => [groups(items_per_row, items_per_group), full[1], full[2]],
            BatchGrid::Flat {
                items_per_row,
                items_per_group,
            } => match groups(items_per_row, items_per_group) {
                0 => [0, 1, 1],
                n => grid_2d(n, max_per_dim),
            },
        }
    }
}

/// Where an indirect launch reads its grid: three u32 at `offset` of `buffer`.
#[derive(Clone, Debug)]
pub(crate) struct IndirectGrid {
    pub(crate) buffer: wgpu::Buffer,
    pub(crate) offset: u64,
}

/// One recorded kernel launch: a pipeline, its bindings and its grid. Built once, recorded into
/// as many command encoders as needed.
#[derive(Clone, Debug)]
pub struct Dispatch {
    pub(crate) label: &'static str,
    pub(crate) pipeline: wgpu::ComputePipeline,
    pub(crate) bind_group: wgpu::BindGroup,
    pub(crate) workgroups: [u32; 3],
    /// How the kernel was configured for this launch (block, split), for reports; may be empty.
    pub(crate) config: String,
    /// How the grid follows the batch, where the kernel allows shrinking it.
    pub(crate) batch: Option<BatchGrid>,
    /// Set where the grid is computed on the GPU: the launch is recorded indirect.
    pub(crate) indirect: Option<IndirectGrid>,
}

impl Dispatch {
    /// A launch of `pipeline` over `workgroups`.
    pub(crate) fn new(
        label: &'static str,
        pipeline: wgpu::ComputePipeline,
        bind_group: wgpu::BindGroup,
        workgroups: [u32; 3],
    ) -> Self {
        Dispatch {
            label,
            pipeline,
            bind_group,
            workgroups,
            config: String::new(),
            batch: None,
            indirect: None,
        }
    }

    /// The same launch, described by `config` in reports.
    pub(crate) fn with_config(self, config: String) -> Self {
        Dispatch { config, ..self }
    }

    /// The same launch, its grid following its output's batch as `batch` says.
    pub(crate) fn with_batch(self, batch: BatchGrid) -> Self {
        Dispatch {
            batch: Some(batch),
            ..self
        }
    }

    /// How the kernel was configured for this launch (e.g. `direct 4x4, split 2, 16x16
    /// matrices; tuned`), or "" where there is nothing to say.
    pub fn config(&self) -> &str {
        &self.config
    }

    /// The grid recorded when it is not computed on the GPU: the launch at full size.
    pub fn workgroups(&self) -> [u32; 3] {
        self.workgroups
    }

    /// How the grid follows the batch, where the kernel can be launched on fewer rows.
    pub fn batch(&self) -> Option<BatchGrid> {
        self.batch
    }

    /// Whether the grid is read from a GPU buffer when the launch is recorded.
    pub fn is_indirect(&self) -> bool {
        self.indirect.is_some()
    }

    /// Records this launch into a compute pass.
    pub fn record(&self, pass: &mut wgpu::ComputePass<'_>) {
        pass.set_pipeline(&self.pipeline);
        pass.set_bind_group(0, &self.bind_group, &[]);
        match &self.indirect {
            Some(grid) => pass.dispatch_workgroups_indirect(&grid.buffer, grid.offset),
            None => {
                let [x, y, z] = self.workgroups;
                pass.dispatch_workgroups(x, y, z);
            }
        }
    }

    /// The kernel this launch runs, for reports and errors.
    pub fn label(&self) -> &'static str {
        self.label
    }
}

/// Splits `n` workgroups into a 2-D grid that respects the per-dimension limit; shaders
/// linearise with `workgroup_id.y * num_workgroups.x + workgroup_id.x`.
pub(crate) fn grid_2d(n: u32, max_per_dim: u32) -> [u32; 3] {
    if n <= max_per_dim {
        [n.max(1), 1, 1]
    } else {
        let y = n.div_ceil(max_per_dim);
        [n.div_ceil(y), y, 1]
    }
}

#[cfg(test)]
mod tests {
    use super::grid_2d;

    #[test]
    fn grid_covers_every_workgroup_within_limits() {
        for &(n, max) in &[
            (1, 65535),
            (65535, 65535),
            (65536, 65535),
            (1_000_000, 65535),
            (7, 3),
        ] {
            let [x, y, _] = grid_2d(n, max);
            assert!(x <= max && y <= max, "{n} {max} -> {x}x{y}");
            assert!(x as u64 * y as u64 >= n as u64);
        }
    }
}
