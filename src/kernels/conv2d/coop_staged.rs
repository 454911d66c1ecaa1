//! The cooperative-matrix convolution for large maps: a double-buffered block staged in
//! workgroup memory, generated here as the entry point `conv2d_coop_staged` of the
//! cooperative-matrix module (`shaders/conv2d_coop.wgsl` holds the bindings and the epilogue).
//!
//! The direct-load blocks of [`super::coop`] read every matrix straight from storage; each
//! subgroup then loads its own copy of tiles its neighbours also need. Here 8 subgroups share a
//! block of `BM` pixels by `BN` output channels (128 x 128 with 16x16 matrices: 4 x 2 subgroups of
//! 2 x 4 tiles each). Per k step (`KC` = 2 x side channels of one tap) the workgroup loads the
//! next step's A and B blocks into registers with 16-byte loads while it multiplies the current
//! pair of workgroup buffers, then stores them into the other pair: one barrier per step.
//! Measured on an H200 in a standalone probe built this way: 92 TFLOP/s on the FPN's largest 3x3
//! convolution against 55 for the direct-load blocks, 109 at batch 8. It needs maps large enough
//! to fill the GPU with such blocks; [`super::select`] keeps the direct-load blocks with split-K
//! for the others.

use std::fmt::Write;

use super::coop::SHADER;
use crate::precision::Precision;

/// Subgroups along pixels and along output channels.
const GRID: (usize, usize) = (4, 2);
/// Matrix tiles per subgroup along pixels and along output channels.
const TILES: (usize, usize) = (2, 4);
/// Workgroup-memory rows are padded by this many f16 (16 bytes), so that the rows a
/// cooperative load reads start in different banks.
const ROW_PAD: usize = 8;

/// The staged block's geometry for one matrix side and subgroup size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StagedBlock {
    /// The matrices' side.
    pub side: usize,
    /// Lanes per subgroup.
    pub subgroup: usize,
}

impl StagedBlock {
    /// Output pixels per block.
    pub fn block_pixels(&self) -> usize {
        GRID.0 * TILES.0 * self.side
    }

    /// Output channels per block; the weights' padded output channels must be a multiple.
    pub fn block_channels(&self) -> usize {
        GRID.1 * TILES.1 * self.side
    }

    /// Input channels per k step; the input's padded channels must be a multiple.
    pub fn step_channels(&self) -> usize {
        2 * self.side
    }

    /// Invocations per workgroup: 8 subgroups.
    pub fn invocations(&self) -> usize {
        GRID.0 * GRID.1 * self.subgroup
    }

    fn a_row(&self) -> usize {
        self.step_channels() + ROW_PAD
    }

    fn b_row(&self) -> usize {
        self.block_channels() + ROW_PAD
    }

    /// 16-byte chunks of the A and B blocks of one step.
    fn chunks(&self) -> (usize, usize) {
        (
            self.block_pixels() * self.step_channels() / 8,
            self.step_channels() * self.block_channels() / 8,
        )
    }

    /// Whether the kernel can be generated: every invocation loads whole chunks.
    pub fn loads_evenly(&self) -> bool {
        let (a, b) = self.chunks();
        let n = self.invocations();
        n > 0 && self.side.is_multiple_of(8) && a % n == 0 && b % n == 0
    }

    /// Workgroup memory: two A and two B buffers (f16) and one f32 tile per subgroup for the
    /// epilogue.
    pub fn workgroup_bytes(&self) -> u32 {
        let a = 2 * self.block_pixels() * self.a_row() * 2;
        let b = 2 * self.step_channels() * self.b_row() * 2;
        let c = GRID.0 * GRID.1 * self.side * self.side * 4;
        (a + b + c) as u32
    }

    /// A name for the pipeline cache, e.g. `conv2d_coop_staged_16_32`.
    pub fn key(&self) -> String {
        format!("conv2d_coop_staged_{}_{}", self.side, self.subgroup)
    }

    /// The whole module (f16): the static part and the generated entry point.
    pub fn module_source(&self) -> String {
        let mut s = SHADER.module(Precision::F16);
        s.push('\n');
        s.push_str(&self.entry_source());
        s
    }

    /// The entry point `conv2d_coop_staged`.
    pub fn entry_source(&self) -> String {
        let side = self.side;
        let (gm, gn) = GRID;
        let (tm, tn) = TILES;
        let (a_chunks, b_chunks) = self.chunks();
        let wg = self.invocations();
        let (per_a, per_b) = (a_chunks / wg, b_chunks / wg);
        let mat = format!("coop_mat{side}x{side}");
        let mut s = String::new();
        let w = &mut s;
        // `writeln!` into a String cannot fail.
        let _ = writeln!(
            w,
            "// Generated: the staged {}x{} block, {gm}x{gn} subgroups of {tm}x{tn} {side}x{side} matrices.",
            self.block_pixels(),
            self.block_channels()
        );
        let _ = writeln!(w, "const SS: u32 = {side}u;");
        let _ = writeln!(w, "const KC: u32 = {}u;", self.step_channels());
        let _ = writeln!(w, "const SBM: u32 = {}u;", self.block_pixels());
        let _ = writeln!(w, "const SBN: u32 = {}u;", self.block_channels());
        let _ = writeln!(w, "const LDA: u32 = {}u;", self.a_row());
        let _ = writeln!(w, "const LDB: u32 = {}u;", self.b_row());
        let _ = writeln!(
            w,
            "const A_BUF: u32 = {}u;",
            self.block_pixels() * self.a_row()
        );
        let _ = writeln!(
            w,
            "const B_BUF: u32 = {}u;",
            self.step_channels() * self.b_row()
        );
        let _ = writeln!(w, "const WGS: u32 = {wg}u;");
        let _ = writeln!(
            w,
            "const A_ROW_CHUNKS: u32 = {}u;",
            self.step_channels() / 8
        );
        let _ = writeln!(
            w,
            "const B_ROW_CHUNKS: u32 = {}u;",
            self.block_channels() / 8
        );
        let _ = writeln!(
            w,
            "var<workgroup> a_s: array<act, {}>;",
            2 * self.block_pixels() * self.a_row()
        );
        let _ = writeln!(
            w,
            "var<workgroup> b_s: array<act, {}>;",
            2 * self.step_channels() * self.b_row()
        );
        let _ = writeln!(
            w,
            "var<workgroup> c_s: array<f32, {}>;",
            gm * gn * side * side
        );
        // The input and the weights again, as 16-byte words for the block loads.
        let _ = writeln!(
            w,
            "@group(0) @binding(7) var<storage, read> x4: array<vec4<u32>>;"
        );
        let _ = writeln!(
            w,
            "@group(0) @binding(8) var<storage, read> w4: array<vec4<u32>>;"
        );
        // Eight f16 from one 16-byte word into workgroup memory (naga takes no bitcast to
        // vec2<f16>; unpack2x16float is exact).
        for (name, array) in [("stage_a", "a_s"), ("stage_b", "b_s")] {
            let _ = writeln!(w, "fn {name}(at: u32, v: vec4<u32>) {{");
            for (k, c) in ["x", "y", "z", "w"].iter().enumerate() {
                let _ = writeln!(w, "    let h{k} = unpack2x16float(v.{c});");
                let _ = writeln!(w, "    {array}[at + {}u] = act(h{k}.x);", 2 * k);
                let _ = writeln!(w, "    {array}[at + {}u] = act(h{k}.y);", 2 * k + 1);
            }
            let _ = writeln!(w, "}}");
        }
        let _ = writeln!(w, "@compute @workgroup_size(WGS)");
        let _ = writeln!(w, "fn conv2d_coop_staged(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32, @builtin(subgroup_id) sg: u32, @builtin(subgroup_invocation_id) lane: u32) {{");
        let _ = writeln!(w, "    let n = wid.z;");
        let _ = writeln!(w, "    let m0 = wid.x * SBM;");
        let _ = writeln!(w, "    let n0 = wid.y * SBN;");
        let _ = writeln!(w, "    let plane = p.out_height * p.out_width;");
        // Each invocation's chunks keep their rows from step to step: their storage origins
        // are computed once. Pixels past the map's end load the last one again (never stored).
        for k in 0..per_a {
            let _ = writeln!(w, "    let ca{k} = lid + {}u;", k * wg);
            let _ = writeln!(
                w,
                "    let pix{k} = min(m0 + ca{k} / A_ROW_CHUNKS, plane - 1u);"
            );
            let _ = writeln!(w, "    let pa{k} = segment_origin(n, pix{k} / p.out_width, pix{k} % p.out_width) + (ca{k} % A_ROW_CHUNKS) * 8u;");
            let _ = writeln!(
                w,
                "    let sa{k} = (ca{k} / A_ROW_CHUNKS) * LDA + (ca{k} % A_ROW_CHUNKS) * 8u;"
            );
        }
        for k in 0..per_b {
            let _ = writeln!(w, "    let cb{k} = lid + {}u;", k * wg);
            let _ = writeln!(w, "    let pb{k} = (cb{k} / B_ROW_CHUNKS) * p.w_stride + n0 + (cb{k} % B_ROW_CHUNKS) * 8u;");
            let _ = writeln!(
                w,
                "    let sb{k} = (cb{k} / B_ROW_CHUNKS) * LDB + (cb{k} % B_ROW_CHUNKS) * 8u;"
            );
        }
        let _ = writeln!(w, "    let sm = sg / {gn}u;");
        let _ = writeln!(w, "    let sn = sg % {gn}u;");
        for i in 0..tm {
            for j in 0..tn {
                let _ = writeln!(w, "    var c{i}_{j} = {mat}<f32, C>();");
            }
        }
        let _ = writeln!(w, "    let kchunks = p.in_cl / KC;");
        let _ = writeln!(w, "    let lda = LDA;");
        let _ = writeln!(w, "    let ldb = LDB;");
        for k in 0..per_a {
            let _ = writeln!(w, "    var ra{k}: vec4<u32>;");
        }
        for k in 0..per_b {
            let _ = writeln!(w, "    var rb{k}: vec4<u32>;");
        }
        // Step t's loads into registers: t -> (tap, first channel).
        let load = |w: &mut String, t: &str| {
            let _ = writeln!(w, "        {{");
            let _ = writeln!(w, "            let tap = {t} / kchunks;");
            let _ = writeln!(w, "            let c0 = ({t} - tap * kchunks) * KC;");
            let _ = writeln!(w, "            let ky = tap / p.kernel_w;");
            let _ = writeln!(
                w,
                "            let a_off = (ky * p.in_width + tap - ky * p.kernel_w) * p.in_cl + c0;"
            );
            let _ = writeln!(
                w,
                "            let b_off = (tap * p.in_cl + c0) * p.w_stride;"
            );
            for k in 0..per_a {
                let _ = writeln!(w, "            ra{k} = x4[(pa{k} + a_off) / 8u];");
            }
            for k in 0..per_b {
                let _ = writeln!(w, "            rb{k} = w4[(pb{k} + b_off) / 8u];");
            }
            let _ = writeln!(w, "        }}");
        };
        let store = |w: &mut String, buf: &str| {
            for k in 0..per_a {
                let _ = writeln!(w, "        stage_a({buf} * A_BUF + sa{k}, ra{k});");
            }
            for k in 0..per_b {
                let _ = writeln!(w, "        stage_b({buf} * B_BUF + sb{k}, rb{k});");
            }
        };
        let _ = writeln!(w, "    if (p.steps > 0u) {{");
        load(w, "0u");
        store(w, "0u");
        let _ = writeln!(w, "    }}");
        let _ = writeln!(w, "    workgroupBarrier();");
        let _ = writeln!(w, "    for (var t = 0u; t < p.steps; t++) {{");
        let _ = writeln!(w, "        let cur = t & 1u;");
        let _ = writeln!(w, "        let more = t + 1u < p.steps;");
        let _ = writeln!(w, "        if (more) {{");
        load(w, "(t + 1u)");
        let _ = writeln!(w, "        }}");
        for kk in 0..self.step_channels() / side {
            for i in 0..tm {
                let _ = writeln!(
                    w,
                    "        let ai{kk}_{i} = cur * A_BUF + (sm * {}u + {}u) * LDA + {}u;",
                    tm * side,
                    i * side,
                    kk * side
                );
                let _ = writeln!(
                    w,
                    "        let a{kk}_{i} = coopLoadT<{mat}<act, A>>(&a_s[ai{kk}_{i}], lda);"
                );
            }
            for j in 0..tn {
                let _ = writeln!(
                    w,
                    "        let bi{kk}_{j} = cur * B_BUF + {}u * LDB + sn * {}u + {}u;",
                    kk * side,
                    tn * side,
                    j * side
                );
                let _ = writeln!(
                    w,
                    "        let b{kk}_{j} = coopLoadT<{mat}<act, B>>(&b_s[bi{kk}_{j}], ldb);"
                );
            }
            for i in 0..tm {
                for j in 0..tn {
                    let _ = writeln!(
                        w,
                        "        c{i}_{j} = coopMultiplyAdd(a{kk}_{i}, b{kk}_{j}, c{i}_{j});"
                    );
                }
            }
        }
        let _ = writeln!(w, "        if (more) {{");
        let _ = writeln!(w, "            let next = 1u - cur;");
        store(w, "next");
        let _ = writeln!(w, "        }}");
        let _ = writeln!(w, "        workgroupBarrier();");
        let _ = writeln!(w, "    }}");
        // The epilogue, one tile at a time through this subgroup's f32 tile in workgroup
        // memory: row-major, so consecutive lanes take consecutive channels of a pixel.
        let _ = writeln!(w, "    let cs = sg * SS * SS;");
        let _ = writeln!(w, "    let ldc = SS;");
        for i in 0..tm {
            for j in 0..tn {
                let _ = writeln!(w, "    coopStoreT(c{i}_{j}, &c_s[cs], ldc);");
                let _ = writeln!(w, "    workgroupBarrier();");
                let _ = writeln!(w, "    for (var e = lane; e < SS * SS; e += SG) {{");
                let _ = writeln!(
                    w,
                    "        let pix = m0 + sm * {}u + {}u + e / SS;",
                    tm * side,
                    i * side
                );
                let _ = writeln!(
                    w,
                    "        let co = n0 + sn * {}u + {}u + e % SS;",
                    tn * side,
                    j * side
                );
                let _ = writeln!(w, "        if (pix < plane && co < p.out_cl) {{");
                let _ = writeln!(w, "            epilogue(n, pix / p.out_width, pix % p.out_width, co, c_s[cs + e]);");
                let _ = writeln!(w, "        }}");
                let _ = writeln!(w, "    }}");
                let _ = writeln!(w, "    workgroupBarrier();");
            }
        }
        let _ = writeln!(w, "}}");
        s
    }
}
