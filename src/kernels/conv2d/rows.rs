//! The row-tiled direct convolution: `shaders/conv2d_rows.wgsl` plus an entry point generated
//! here, unrolled for one kernel size, stride and channel tile (see the WGSL file for why).

use std::fmt::Write;

use crate::kernels::conv2d::Conv2dParams;
use crate::kernels::ShaderSource;
use crate::precision::Precision;

/// The module without its generated entry point (checked by naga in the tests like every file).
pub const SHADER: ShaderSource = ShaderSource {
    name: "conv2d_rows.wgsl",
    parts: &[
        "common.wgsl",
        "resample.wgsl",
        "conv2d_epilogue.wgsl",
        "conv2d_rows.wgsl",
    ],
    source: concat!(
        include_str!("../../../shaders/common.wgsl"),
        include_str!("../../../shaders/resample.wgsl"),
        include_str!("../../../shaders/conv2d_epilogue.wgsl"),
        include_str!("../../../shaders/conv2d_rows.wgsl")
    ),
    params: &[("Conv2dParams", std::mem::size_of::<Conv2dParams>())],
    enables: "",
    precisions: &Precision::ALL,
};

/// One specialisation of the row kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RowTile {
    /// Kernel (height, width).
    pub kernel: (usize, usize),
    /// Stride (vertical, horizontal).
    pub stride: (usize, usize),
    /// Output channels per invocation, a multiple of 4.
    pub couts: usize,
    /// Consecutive output pixels of one row per invocation, a power of two.
    pub pixels: usize,
}

impl RowTile {
    /// The tile for a convolution of `kernel` and `stride` whose output rows are `out_width`
    /// wide, on an adapter of `device_type`.
    ///
    /// On a CPU adapter (llvmpipe) 16 pixels by 16 channels: on a 3x3 256->256 conv at 150x225
    /// on lavapipe it ran at 43.1 GFLOP/s against 31.3 for 8 x 16, 34.4 for 16 x 8, 40.8 for 32
    /// x 8 and 28.7 for 32 x 16 (the accumulators outgrow what the core keeps close); rows
    /// narrower than 16 take 8 pixels, which wastes fewer lanes. On a GPU 8 x 8 keeps a
    /// thread's accumulators at 64 floats, within the register budget that leaves room for
    /// occupancy (a preset, not measured here).
    pub fn choose(
        kernel: (usize, usize),
        stride: (usize, usize),
        out_width: usize,
        device_type: wgpu::DeviceType,
    ) -> Self {
        let (couts, pixels) = match device_type {
            wgpu::DeviceType::Cpu if out_width >= 16 => (16, 16),
            wgpu::DeviceType::Cpu => (16, 8),
            _ => (8, 8),
        };
        RowTile {
            kernel,
            stride,
            couts,
            pixels,
        }
    }

    /// A short name for the pipeline cache and labels, e.g. `conv2d_rows_k3x3_s1x1_m16_p16`.
    pub fn key(&self) -> String {
        format!(
            "conv2d_rows_k{}x{}_s{}x{}_m{}_p{}",
            self.kernel.0, self.kernel.1, self.stride.0, self.stride.1, self.couts, self.pixels
        )
    }

    /// Input values one kernel row of an invocation's pixels spans.
    fn span(&self) -> usize {
        (self.pixels - 1) * self.stride.1 + self.kernel.1
    }

    /// The pipeline-cache name of the module for tensors in `precision`, with the split-K entry
    /// point or the whole-sum one.
    pub fn module_key(&self, precision: Precision, split_k: bool) -> String {
        let kind = if split_k { "_partial" } else { "" };
        format!("{}{kind}:{precision}", self.key())
    }

    /// The whole module for tensors in `precision`: the static part and the generated entry
    /// point, `conv2d_rows_partial` with `split_k` and `conv2d_rows` without. Separate modules:
    /// every network runs the second, and parsing both every time it is built doubled the
    /// time to a first forward on llvmpipe.
    pub fn module_source(&self, precision: Precision, split_k: bool) -> String {
        let mut s = SHADER.module(precision);
        s.push('\n');
        s.push_str(&self.entry_source(split_k));
        s
    }

    /// The entry point `conv2d_rows` or, with `split_k`, `conv2d_rows_partial` (the raw sums
    /// of a part of the input channels), unrolled over kernel columns, pixels and channels.
    pub fn entry_source(&self, split_k: bool) -> String {
        match split_k {
            false => self.entry("conv2d_rows", false),
            true => self.entry("conv2d_rows_partial", true),
        }
    }

    fn entry(&self, name: &str, partial: bool) -> String {
        let (kh, kw) = self.kernel;
        let (sh, sw) = self.stride;
        let m4 = self.couts / 4;
        let span = self.span();
        // Aligned vec4s covering `span` values that start anywhere within the first one.
        let loads = (span + 3).div_ceil(4);
        let mut s = String::new();
        let w = &mut s;
        // `writeln!` into a String cannot fail.
        let _ = writeln!(
            w,
            "// Generated: kernel {kh}x{kw}, stride {sh}x{sw}, {} output channels by {} pixels.",
            self.couts, self.pixels
        );
        let _ = writeln!(w, "@compute @workgroup_size(WG_PIX, WG_CO)");
        let _ = writeln!(w, "fn {name}(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {{");
        if partial {
            let _ = writeln!(w, "    let n = wid.z / p.splits;");
            // This launch's part of the input channels.
            let _ = writeln!(w, "    let split = wid.z % p.splits;");
            let _ = writeln!(
                w,
                "    let part = (p.in_channels + p.splits - 1u) / p.splits;"
            );
            let _ = writeln!(w, "    let ci0 = min(split * part, p.in_channels);");
            let _ = writeln!(w, "    let ci1 = min(ci0 + part, p.in_channels);");
        } else {
            // The whole sum, with the loop bounds llvmpipe sees as uniform: bounds derived
            // from the workgroup id made the unsplit kernel 3-15% slower there.
            let _ = writeln!(w, "    let n = wid.z;");
            let _ = writeln!(w, "    let ci0 = 0u;");
            let _ = writeln!(w, "    let ci1 = p.in_channels;");
        }
        let _ = writeln!(
            w,
            "    let blocks = (p.out_width + {}u) / {}u;",
            self.pixels - 1,
            self.pixels
        );
        let _ = writeln!(w, "    let lanes = blocks * p.out_height;");
        let _ = writeln!(w, "    let gid = wid.x * WG_PIX + lid.x;");
        // `% WG_CO` folds to 0 when WG_CO is 1: the channel tile is then uniform.
        let _ = writeln!(w, "    let co_tile = wid.y * WG_CO + lid.y % WG_CO;");
        let _ = writeln!(w, "    let co_base = co_tile * {}u;", self.couts);
        let _ = writeln!(w, "    let live = gid < lanes && co_base < p.out_channels;");
        // Dead lanes compute on a clamped position and store nothing.
        let _ = writeln!(w, "    let g = min(gid, lanes - 1u);");
        let _ = writeln!(w, "    let oy = g / blocks;");
        let _ = writeln!(w, "    let ox0 = (g % blocks) * {}u;", self.pixels);
        for m in 0..m4 {
            for j in 0..self.pixels {
                let _ = writeln!(w, "    var a{m}_{j} = vec4<f32>(0.0);");
            }
        }
        let _ = writeln!(w, "    let in_plane = p.in_height * p.in_width;");
        let _ = writeln!(
            w,
            "    var xb = (n * p.in_channels + ci0) * in_plane + oy * {sh}u * p.in_width + ox0 * {sw}u;"
        );
        let _ = writeln!(
            w,
            "    var wi = ci0 * {}u * p.cout_vec4 + co_tile * {m4}u;",
            kh * kw
        );
        let _ = writeln!(w, "    for (var ci = ci0; ci < ci1; ci++) {{");
        // Kernel rows stay a loop: unrolling them too multiplies the code (and the shader
        // compile time, seconds on llvmpipe for a 7x7 kernel) for no measured gain.
        let _ = writeln!(w, "        for (var ky = 0u; ky < {kh}u; ky++) {{");
        let _ = writeln!(w, "            let e = xb + ky * p.in_width;");
        let _ = writeln!(w, "            let s = e & 3u;");
        let _ = writeln!(w, "            let a = e >> 2u;");
        for q in 0..loads {
            let _ = writeln!(w, "            let q{q} = vec4<f32>(x[a + {q}u]);");
        }
        // v_i = element e + i: component s + i of the loaded run, picked with selects.
        let comp = |k: usize| format!("q{}[{}]", k / 4, k % 4);
        for i in 0..span {
            let _ = writeln!(
                w,
                "            let v{i} = select(select({}, {}, s == 1u), select({}, {}, s == 3u), s >= 2u);",
                comp(i),
                comp(i + 1),
                comp(i + 2),
                comp(i + 3)
            );
        }
        for kx in 0..kw {
            for m in 0..m4 {
                let _ = writeln!(
                    w,
                    "            let w{kx}_{m} = vec4<f32>(weights[wi + {m}u]);"
                );
                for j in 0..self.pixels {
                    let _ = writeln!(
                        w,
                        "            a{m}_{j} = fma(w{kx}_{m}, vec4(v{}), a{m}_{j});",
                        j * sw + kx
                    );
                }
            }
            let _ = writeln!(w, "            wi += p.cout_vec4;");
        }
        let _ = writeln!(w, "        }}");
        let _ = writeln!(w, "        xb += in_plane;");
        let _ = writeln!(w, "    }}");
        let _ = writeln!(w, "    if (!live) {{");
        let _ = writeln!(w, "        return;");
        let _ = writeln!(w, "    }}");
        let _ = writeln!(w, "    let row = oy * p.out_width + ox0;");
        // The epilogue loops over the 8 pixels; each pixel's accumulators are picked from the
        // named variables with a tree of selects on the loop index, and the channels are
        // unrolled. Indexing an array of the accumulators instead (the former epilogue) compiles,
        // on lavapipe, to per-lane scratch memory: a 1x1 64->256 conv at 150x225 ran at 7.8
        // GFLOP/s that way and 18.1 this way (GL: 19.1 and 19.6; 3x3 256->256: 27.6 -> 30.9 on
        // Vulkan, 32.6 -> 34.2 on GL). Unrolling the pixels as well was slower (15.5) and made
        // the shaders several times larger: a cold compile of the op tests' kernels took 50-60 s
        // instead of 9 on llvmpipe, long enough for wgpu's GL backend to give up on its context
        // lock in other threads.
        let _ = writeln!(w, "    for (var j = 0u; j < {}u; j++) {{", self.pixels);
        let _ = writeln!(w, "        if (ox0 + j >= p.out_width) {{");
        let _ = writeln!(w, "            break;");
        let _ = writeln!(w, "        }}");
        for m in 0..m4 {
            let _ = writeln!(
                w,
                "        let v{m} = {};",
                select_tree(&format!("a{m}_"), self.pixels)
            );
            for c in 0..4 {
                let co = m * 4 + c;
                let _ = writeln!(w, "        if (co_base + {co}u < p.out_channels) {{");
                if partial {
                    let _ = writeln!(w, "            partials[((split * p.batch + n) * p.out_channels + co_base + {co}u) * p.out_height * p.out_width + row + j] = v{m}[{c}];");
                } else {
                    let _ = writeln!(
                        w,
                        "            store_output(n, co_base + {co}u, row + j, v{m}[{c}], UPSAMPLE);"
                    );
                }
                let _ = writeln!(w, "        }}");
            }
        }
        let _ = writeln!(w, "    }}");
        let _ = writeln!(w, "}}");
        s
    }
}

/// A WGSL expression choosing `{prefix}{j}` among `{prefix}0 .. {prefix}{count - 1}` by the
/// bits of `j`: a balanced tree of selects (`count` a power of two).
fn select_tree(prefix: &str, count: usize) -> String {
    fn node(prefix: &str, lo: usize, len: usize) -> String {
        if len == 1 {
            return format!("{prefix}{lo}");
        }
        let half = len / 2;
        format!(
            "select({}, {}, (j & {half}u) != 0u)",
            node(prefix, lo, half),
            node(prefix, lo + half, half)
        )
    }
    debug_assert!(count.is_power_of_two());
    node(prefix, 0, count)
}
