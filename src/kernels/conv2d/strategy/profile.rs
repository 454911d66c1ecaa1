//! What the strategy needs to know of a device, as plain data: built once from a context, or
//! written out by hand in the tests (an H200, say).

use crate::gpu::GpuContext;
use crate::kernels::conv2d::coop::{self, CooperativeMatrixSupport, StagedBlock};

/// Workgroups a launch should have to keep a large GPU busy: about four per compute unit of an
/// H100 or H200 (132 units), one subgroup each. wgpu does not report compute units, so this is
/// the figure for the largest GPUs; on smaller ones it only means more split-K than needed.
pub const GPU_TARGET_WORKGROUPS: usize = 512;

/// A device as the convolution strategy sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceProfile {
    /// The adapter's name, backend and driver: what the tuning cache tells devices apart by.
    pub device: String,
    /// A CPU adapter (llvmpipe): a few threads, which any grid fills.
    pub cpu: bool,
    /// The cooperative matrices the kernels can use, if any.
    pub matrix: Option<CooperativeMatrixSupport>,
    /// The staged cooperative-matrix block, where the device runs it.
    pub staged: Option<StagedBlock>,
    /// Workgroup memory a kernel may use, in bytes.
    pub max_workgroup_storage: u32,
    /// The largest storage binding, in bytes: split-K scratch beyond it cannot run.
    pub max_binding_bytes: u64,
    /// Workgroups a launch should have on a GPU ([`GPU_TARGET_WORKGROUPS`]).
    pub target_workgroups: usize,
}

impl DeviceProfile {
    /// The profile of `ctx`'s device.
    pub fn of(ctx: &GpuContext) -> Self {
        let a = ctx.adapter();
        DeviceProfile {
            device: format!("{}|{:?}|{}", a.name, a.backend, a.driver),
            cpu: a.device_type == wgpu::DeviceType::Cpu,
            matrix: coop::support(ctx),
            staged: coop::staged_block(ctx),
            max_workgroup_storage: ctx.limits().max_compute_workgroup_storage_size,
            max_binding_bytes: ctx.max_binding_bytes(),
            target_workgroups: GPU_TARGET_WORKGROUPS,
        }
    }

    /// The side of the device's cooperative matrices, or 16 (NVIDIA's) where it has none: the
    /// sizes of the cooperative-matrix choices' scratch and reads are reasoned from it.
    pub fn matrix_side(&self) -> u32 {
        self.matrix.map_or(16, |m| m.side)
    }
}
