//! Whether and how this device runs the cooperative-matrix kernels: the matrices it offers,
//! the staged block it can run, and the check of the kernels against the direct ones on the
//! device itself.

use std::sync::OnceLock;

#[cfg(not(target_arch = "wasm32"))]
use super::choice::CoopChoice;
use super::staged::StagedBlock;
use super::tile::TILES;
use crate::error::Result;
use crate::gpu::GpuContext;

/// What the device offers for cooperative matrices (tensor cores), as the kernels need them:
/// square f16 multiplies into f32, run by subgroups of one fixed size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CooperativeMatrixSupport {
    /// The side of the matrices (M = N = K): 16 on NVIDIA, 8 on Mesa's lavapipe and Apple.
    pub side: u32,
    /// Lanes per subgroup (32 on NVIDIA, 8 on lavapipe).
    pub subgroup_size: u32,
    /// Whether shaders can read their subgroup's id (wgpu's `SUBGROUP` feature), which blocks
    /// of several subgroups need.
    pub subgroup_ids: bool,
}

/// The matrix sides the kernels are written for, most preferred first.
pub const SIDES: [u32; 2] = [16, 8];

/// The cooperative matrices the context's device offers in a form the kernels are written
/// for: the largest square f16 -> f32 configuration of [`SIDES`], with one fixed subgroup size.
pub fn offered(ctx: &GpuContext) -> Option<CooperativeMatrixSupport> {
    let properties = ctx.cooperative_matrix_properties();
    let side = SIDES.into_iter().find(|&side| {
        properties.iter().any(|p| {
            (p.m_size, p.n_size, p.k_size) == (side, side, side)
                && p.ab_type == wgpu::CooperativeScalarType::F16
                && p.cr_type == wgpu::CooperativeScalarType::F32
        })
    })?;
    let (min, max) = ctx.subgroup_sizes();
    (min == max).then_some(CooperativeMatrixSupport {
        side,
        subgroup_size: max,
        subgroup_ids: ctx.device().features().contains(wgpu::Features::SUBGROUP),
    })
}

/// The cooperative matrices this kernel can use on the device: those [`offered`], where the
/// smallest block's workgroup memory fits.
pub fn support(ctx: &GpuContext) -> Option<CooperativeMatrixSupport> {
    let support = offered(ctx)?;
    let smallest = TILES[TILES.len() - 1];
    (smallest.workgroup_bytes(support.side) <= ctx.limits().max_compute_workgroup_storage_size)
        .then_some(support)
}

/// The staged block on this device, where it can run: the device reports subgroup ids, the
/// block's workgroup memory fits and its loads divide evenly among the invocations.
pub fn staged_block(ctx: &GpuContext) -> Option<StagedBlock> {
    let support = support(ctx)?;
    let block = StagedBlock {
        side: support.side as usize,
        subgroup: support.subgroup_size as usize,
    };
    let limits = ctx.limits();
    (support.subgroup_ids
        && block.loads_evenly()
        && block.workgroup_bytes() <= limits.max_compute_workgroup_storage_size
        && block.invocations() as u32 <= limits.max_compute_invocations_per_workgroup)
        .then_some(block)
}

/// The result of [`self_check`] on one context, kept there through [`GpuContext::memo`].
#[derive(Default)]
struct Verified(OnceLock<bool>);

/// Whether convolutions of an f16 network run on cooperative matrices on this device: it can
/// run the kernel and the kernel agreed with the direct one on test convolutions run there
/// (checked once per context; a disagreement or an error is logged and the direct kernels are
/// used instead).
pub fn verified(ctx: &GpuContext) -> bool {
    if support(ctx).is_none() {
        return false;
    }
    *ctx.memo::<Verified>().0.get_or_init(|| match self_check(ctx) {
        Ok(err) if err <= 1e-2 => {
            log::info!("cooperative-matrix convolutions agree with the direct kernel ({err:.1e}); f16 networks use them");
            true
        }
        Ok(err) => {
            log::warn!("cooperative-matrix convolutions disagree with the direct kernel ({err:e}); f16 networks use the direct kernels");
            false
        }
        Err(e) => {
            log::warn!("cooperative-matrix convolutions failed their check ({e}); f16 networks use the direct kernels");
            false
        }
    })
}

/// Runs a convolution with awkward sizes (channels not a multiple of the matrix side or the
/// block, a partial pixel block, padding, stride 1 and 2, every epilogue input, with and
/// without split-K) on both kernels; Ok with the largest difference relative to the largest
/// value.
#[cfg(not(target_arch = "wasm32"))]
fn self_check(ctx: &GpuContext) -> Result<f64> {
    use crate::kernels::conv2d::{
        conv2d_with, output_shape, Conv2dOptions, Conv2dWeights, WeightLayout,
    };
    use crate::precision::Precision;
    use crate::rng::SplitMix64;
    use crate::tensor::{MemoryFormat, Tensor};

    let f16 = Precision::F16;
    let mut rng = SplitMix64::new(11);
    let mut worst = 0.0f64;
    // Split 0 stands for the staged block, checked where the device can run it.
    let staged = staged_block(ctx).is_some();
    for (input, cout, k, stride, pad, split) in [
        ([2, 20, 9, 11], 70, 3, 1, 1, 1),
        ([1, 33, 13, 17], 19, 1, 2, 0, 2),
        ([1, 64, 11, 13], 130, 3, 1, 1, 0),
    ] {
        if split == 0 && !staged {
            continue;
        }
        let w_shape = [cout, input[1], k, k];
        let w = rng.vec(w_shape.iter().product(), -0.2, 0.2);
        let bias = rng.vec(cout, -0.5, 0.5);
        let x = rng.vec(input.iter().product(), -1.0, 1.0);
        let opts = Conv2dOptions::new(stride, pad).with_relu(true);
        let out_shape = output_shape(input, w_shape, &opts)?;
        let residual = rng.vec(out_shape.iter().product(), -1.0, 1.0);
        let run = |weight_layout, layout| -> Result<Vec<f32>> {
            let weights = Conv2dWeights::with_precision(
                ctx,
                w_shape,
                &w,
                Some(&bias),
                None,
                weight_layout,
                f16,
            )?;
            let x = Tensor::from_slice_with(ctx, input, &x, f16, layout)?;
            let r = Tensor::from_slice_with(ctx, out_shape, &residual, f16, layout)?;
            let choice = match split {
                0 => CoopChoice::STAGED,
                s => CoopChoice::direct(TILES[0], s),
            };
            let choice = (weight_layout == WeightLayout::TapMajor).then(|| choice.into());
            conv2d_with(ctx, &x, &weights, Some(&r), &opts, choice)?.download(ctx)
        };
        let want = run(WeightLayout::KMajor, MemoryFormat::Nchw)?;
        let got = run(WeightLayout::TapMajor, MemoryFormat::ChannelsLast)?;
        let scale = want
            .iter()
            .fold(0.0f64, |m, &v| m.max((v as f64).abs()))
            .max(1e-30);
        for (g, w) in got.iter().zip(&want) {
            let d = (*g as f64 - *w as f64).abs() / scale;
            // NaN compares false: count it as a failure.
            worst = if d.is_nan() {
                f64::INFINITY
            } else {
                worst.max(d)
            };
        }
    }
    Ok(worst)
}

/// Browsers have no cooperative matrices: the check never runs there.
#[cfg(target_arch = "wasm32")]
fn self_check(_ctx: &GpuContext) -> Result<f64> {
    Ok(f64::INFINITY)
}
