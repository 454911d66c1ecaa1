//! A recorded kernel launch, and the grids launches are cut into.

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
        }
    }

    /// The same launch, described by `config` in reports.
    pub(crate) fn with_config(self, config: String) -> Self {
        Dispatch { config, ..self }
    }

    /// How the kernel was configured for this launch (e.g. `direct 4x4, split 2, 16x16
    /// matrices; tuned`), or "" where there is nothing to say.
    pub fn config(&self) -> &str {
        &self.config
    }

    /// Records this launch into a compute pass.
    pub fn record(&self, pass: &mut wgpu::ComputePass<'_>) {
        pass.set_pipeline(&self.pipeline);
        pass.set_bind_group(0, &self.bind_group, &[]);
        let [x, y, z] = self.workgroups;
        pass.dispatch_workgroups(x, y, z);
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
