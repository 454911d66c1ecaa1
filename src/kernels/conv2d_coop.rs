//! Convolution on cooperative matrices (tensor cores), f16 only: `shaders/conv2d_coop.wgsl`
//! plus an entry point generated here for one block shape.
//!
//! wgpu exposes cooperative matrices as an experimental feature. The kernel is used only where
//! the adapter offers 16x16x16 f16 matrices with f32 accumulators and a fixed subgroup size, and
//! only after [`verified`] has checked it against the direct kernel on the device itself.

use std::fmt::Write;

use crate::gpu::GpuContext;
use crate::kernels::conv2d::Conv2dParams;
use crate::kernels::ShaderSource;
use crate::precision::Precision;

/// The module without its generated entry point.
pub const SHADER: ShaderSource = ShaderSource {
    name: "conv2d_coop.wgsl",
    parts: &[
        "common.wgsl",
        "resample.wgsl",
        "conv2d_epilogue.wgsl",
        "conv2d_coop.wgsl",
    ],
    source: concat!(
        include_str!("../../shaders/common.wgsl"),
        include_str!("../../shaders/resample.wgsl"),
        include_str!("../../shaders/conv2d_epilogue.wgsl"),
        include_str!("../../shaders/conv2d_coop.wgsl")
    ),
    params: &[("Conv2dParams", std::mem::size_of::<Conv2dParams>())],
    enables: "enable wgpu_cooperative_matrix;\n",
    precisions: &[Precision::F16],
};

/// The side of every matrix (WGSL `MATRIX`): the kernel uses 16x16x16 multiplies.
pub const MATRIX: usize = 16;

/// One specialisation: a block of `m_tiles * 16` pixels by `n_tiles * 16` output channels per
/// subgroup.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CoopTile {
    /// 16-pixel tiles per block.
    pub m_tiles: usize,
    /// 16-channel tiles per block.
    pub n_tiles: usize,
}

/// 64 x 64 blocks: in a plain GEMM on an H100 over Vulkan, 4x4 tiles per 32-lane workgroup ran at
/// 74-78 TFLOP/s against 49-59 for 2x4.
pub const DEFAULT_TILE: CoopTile = CoopTile {
    m_tiles: 4,
    n_tiles: 4,
};

impl CoopTile {
    /// Pixels per block.
    pub fn block_pixels(&self) -> usize {
        self.m_tiles * MATRIX
    }

    /// Output channels per block; the weights are padded to a multiple of it.
    pub fn block_channels(&self) -> usize {
        self.n_tiles * MATRIX
    }

    /// Workgroup memory the kernel declares: the A block (f16) and the accumulators (f32).
    pub fn workgroup_bytes(&self) -> u32 {
        (self.block_pixels() * MATRIX * 2 + self.block_pixels() * self.block_channels() * 4) as u32
    }

    /// A short name for the pipeline cache and labels, e.g. `conv2d_coop_4x4`.
    pub fn key(&self) -> String {
        format!("conv2d_coop_{}x{}", self.m_tiles, self.n_tiles)
    }

    /// The whole module (f16): the static part and the generated entry point.
    pub fn module_source(&self) -> String {
        let mut s = SHADER.module(Precision::F16);
        s.push('\n');
        s.push_str(&self.entry_source());
        s
    }

    /// The entry point `conv2d_coop` with its block constants and workgroup arrays.
    pub fn entry_source(&self) -> String {
        let (mt, nt) = (self.m_tiles, self.n_tiles);
        let mut s = String::new();
        let w = &mut s;
        // `writeln!` into a String cannot fail.
        let _ = writeln!(w, "// Generated: blocks of {mt}x{nt} matrices.");
        let _ = writeln!(w, "const BM: u32 = {}u;", self.block_pixels());
        let _ = writeln!(w, "const BN: u32 = {}u;", self.block_channels());
        // A row-major [BM][16]; C column-major [BN][BM].
        let _ = writeln!(
            w,
            "var<workgroup> a_block: array<act, {}>;",
            self.block_pixels() * MATRIX
        );
        let _ = writeln!(
            w,
            "var<workgroup> c_block: array<f32, {}>;",
            self.block_pixels() * self.block_channels()
        );
        let _ = writeln!(w, "@compute @workgroup_size(SG)");
        let _ = writeln!(w, "fn conv2d_coop(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lane: u32) {{");
        let _ = writeln!(w, "    let n = wid.z;");
        let _ = writeln!(w, "    let m0 = wid.x * BM;");
        let _ = writeln!(w, "    let n0 = wid.y * BN;");
        let _ = writeln!(
            w,
            "    let k_len = p.in_channels * p.kernel_h * p.kernel_w;"
        );
        let _ = writeln!(w, "    let ldb = p.cout_vec4 * 4u;");
        for i in 0..mt {
            for j in 0..nt {
                let _ = writeln!(w, "    var c{i}_{j} = coop_mat16x16<f32, C>();");
            }
        }
        let _ = writeln!(w, "    for (var k0 = 0u; k0 < k_len; k0 += MATRIX) {{");
        // The previous step's loads of the A block must be done before it is overwritten.
        let _ = writeln!(w, "        workgroupBarrier();");
        let _ = writeln!(w, "        for (var e = lane; e < BM * MATRIX; e += SG) {{");
        let _ = writeln!(w, "            let m = e % BM;");
        let _ = writeln!(w, "            let kk = e / BM;");
        let _ = writeln!(
            w,
            "            a_block[m * MATRIX + kk] = im2col(n, m0 + m, k0 + kk);"
        );
        let _ = writeln!(w, "        }}");
        let _ = writeln!(w, "        workgroupBarrier();");
        // Indices bound to a `let` first: naga 30's SPIR-V writer panicked on an inline index
        // expression inside a cooperative load's pointer.
        for i in 0..mt {
            let _ = writeln!(w, "        let ai{i} = {}u;", i * MATRIX * MATRIX);
            let _ = writeln!(
                w,
                "        let a{i} = coopLoadT<coop_mat16x16<act, A>>(&a_block[ai{i}], MATRIX);"
            );
        }
        for j in 0..nt {
            let _ = writeln!(w, "        let bi{j} = k0 * ldb + n0 + {}u;", j * MATRIX);
            let _ = writeln!(
                w,
                "        let b{j} = coopLoadT<coop_mat16x16<act, B>>(&weights[bi{j}], ldb);"
            );
        }
        for i in 0..mt {
            for j in 0..nt {
                let _ = writeln!(
                    w,
                    "        c{i}_{j} = coopMultiplyAdd(a{i}, b{j}, c{i}_{j});"
                );
            }
        }
        let _ = writeln!(w, "    }}");
        for i in 0..mt {
            for j in 0..nt {
                let _ = writeln!(
                    w,
                    "    let ci{i}_{j} = {}u;",
                    j * MATRIX * self.block_pixels() + i * MATRIX
                );
                let _ = writeln!(w, "    coopStore(c{i}_{j}, &c_block[ci{i}_{j}], BM);");
            }
        }
        let _ = writeln!(w, "    workgroupBarrier();");
        let _ = writeln!(w, "    let plane = p.out_height * p.out_width;");
        let _ = writeln!(w, "    for (var e = lane; e < BM * BN; e += SG) {{");
        let _ = writeln!(w, "        let m = e % BM;");
        let _ = writeln!(w, "        let c = e / BM;");
        let _ = writeln!(
            w,
            "        if (m0 + m < plane && n0 + c < p.out_channels) {{"
        );
        let _ = writeln!(
            w,
            "            store_output(n, n0 + c, m0 + m, c_block[e], UPSAMPLE);"
        );
        let _ = writeln!(w, "        }}");
        let _ = writeln!(w, "    }}");
        let _ = writeln!(w, "}}");
        s
    }
}

/// The subgroup size the kernel runs with, where the device can run it at all: the
/// cooperative-matrix feature, a 16x16x16 f16 configuration with f32 accumulators, one fixed
/// subgroup size, and room for the tile's workgroup memory.
pub fn subgroup_size(ctx: &GpuContext) -> Option<u32> {
    let support = ctx.cooperative_matrix()?;
    (DEFAULT_TILE.workgroup_bytes() <= ctx.limits().max_compute_workgroup_storage_size)
        .then_some(support.subgroup_size)
}

/// Whether convolutions of an f16 network run on cooperative matrices on this device: it can
/// run the kernel and the kernel agreed with the direct one on a test convolution run there
/// (checked once per context; a disagreement or an error is logged and the direct kernels are
/// used instead).
pub fn verified(ctx: &GpuContext) -> bool {
    subgroup_size(ctx).is_some() && ctx.cooperative_matrix_verified(self_check)
}

/// Runs a convolution with awkward sizes (k not a multiple of 16, channels not a multiple of the
/// block, a partial pixel block, padding, stride 1 and 2, every epilogue input) on both kernels;
/// Ok when they agree within f16 rounding.
#[cfg(not(target_arch = "wasm32"))]
fn self_check(ctx: &GpuContext) -> crate::Result<f64> {
    use crate::kernels::conv2d::{self, Conv2dOptions, Conv2dWeights, ConvAlgorithm};
    use crate::rng::SplitMix64;
    use crate::tensor::Tensor;

    let f16 = Precision::F16;
    let mut rng = SplitMix64::new(11);
    let mut worst = 0.0f64;
    for (input, cout, k, stride, pad) in [
        ([2, 20, 9, 11], 70, 3, 1, 1),
        ([1, 33, 13, 17], 19, 1, 2, 0),
    ] {
        let w_shape = [cout, input[1], k, k];
        let w = rng.vec(w_shape.iter().product(), -0.2, 0.2);
        let bias = rng.vec(cout, -0.5, 0.5);
        let x =
            Tensor::from_slice_as(ctx, input, &rng.vec(input.iter().product(), -1.0, 1.0), f16)?;
        let opts = Conv2dOptions::new(stride, pad).with_relu(true);
        let out_shape = conv2d::output_shape(input, w_shape, &opts)?;
        let residual = Tensor::from_slice_as(
            ctx,
            out_shape,
            &rng.vec(out_shape.iter().product(), -1.0, 1.0),
            f16,
        )?;
        let run = |algorithm| -> crate::Result<Vec<f32>> {
            let weights =
                Conv2dWeights::with_precision(ctx, w_shape, &w, Some(&bias), None, algorithm, f16)?;
            conv2d::conv2d(ctx, &x, &weights, Some(&residual), &opts)?.download(ctx)
        };
        let want = run(ConvAlgorithm::Direct)?;
        let got = run(ConvAlgorithm::CooperativeMatrix)?;
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
fn self_check(_ctx: &GpuContext) -> crate::Result<f64> {
    Ok(f64::INFINITY)
}
