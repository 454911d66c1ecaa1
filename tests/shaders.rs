//! Every WGSL file parses and validates with naga (the templates once expanded, for every shape
//! the kernels use and more), every file is used by a kernel and every kernel's file exists, and
//! each params struct has the byte size of its Rust twin.

use std::collections::BTreeSet;

use fpn_wgpu::kernels::conv2d::coop::{self, StagedBlock, TILES};
use fpn_wgpu::kernels::conv2d::rows::{self, RowTile};
use fpn_wgpu::kernels::conv2d::EPILOGUE_FLAGS;
use fpn_wgpu::kernels::{linear, SHADERS, TEMPLATES};
use fpn_wgpu::Precision;

fn validate(name: &str, source: &str) -> naga::Module {
    let module = naga::front::wgsl::parse_str(source)
        .unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(source)));
    let mut validator = naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        // f16 storage and cooperative matrices: what SHADER_F16 and
        // EXPERIMENTAL_COOPERATIVE_MATRIX grant.
        naga::valid::Capabilities::SHADER_FLOAT16
            | naga::valid::Capabilities::COOPERATIVE_MATRIX
            | naga::valid::Capabilities::SUBGROUP
            | naga::valid::Capabilities::SHADER_FLOAT16_IN_FLOAT32,
    );
    validator
        .validate(&module)
        .unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(source)));
    module
}

#[test]
fn every_shader_file_belongs_to_a_kernel_and_back() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/shaders");
    let on_disk: BTreeSet<String> = std::fs::read_dir(dir)
        .expect("shaders/ exists")
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".wgsl"))
        .collect();
    let used: BTreeSet<String> = SHADERS
        .iter()
        .flat_map(|s| s.parts.iter().map(|p| p.to_string()))
        .chain(TEMPLATES.iter().map(|t| t.name.to_string()))
        .collect();
    assert_eq!(
        on_disk, used,
        "shaders/ and the parts of kernels::SHADERS and kernels::TEMPLATES disagree"
    );
    for t in TEMPLATES {
        let on_disk = std::fs::read_to_string(format!("{dir}/{}", t.name)).unwrap();
        assert_eq!(
            on_disk, t.source,
            "{} differs from its file on disk",
            t.name
        );
        assert!(
            t.name.ends_with(".tmpl.wgsl"),
            "{}: a template's name says it is one",
            t.name
        );
    }
    for s in SHADERS {
        assert!(
            !s.source.contains("{{"),
            "{}: the static modules hold no template markers",
            s.name
        );
        assert_eq!(
            s.parts.last(),
            Some(&s.name),
            "{}: the kernel file comes last",
            s.name
        );
        let joined: String = s
            .parts
            .iter()
            .map(|p| std::fs::read_to_string(format!("{dir}/{p}")).unwrap())
            .collect();
        assert_eq!(
            joined, s.source,
            "{} differs from its files on disk",
            s.name
        );
    }
}

#[test]
fn every_shader_validates_in_every_precision_and_params_match_rust() {
    for (s, &precision) in SHADERS
        .iter()
        .flat_map(|s| s.precisions.iter().map(move |p| (s, p)))
    {
        let module = validate(&format!("{} ({precision})", s.name), &s.module(precision));
        // The row and cooperative-matrix kernels' entry points are generated; the tests below
        // validate those.
        let generated = [rows::SHADER.name, linear::coop::SHADER.name];
        assert!(
            !module.entry_points.is_empty() || generated.contains(&s.name),
            "{} has no entry point",
            s.name
        );
        for &(struct_name, rust_size) in s.params {
            let span = module
                .types
                .iter()
                .find_map(|(_, ty)| match &ty.inner {
                    naga::TypeInner::Struct { span, .. }
                        if ty.name.as_deref() == Some(struct_name) =>
                    {
                        Some(*span as usize)
                    }
                    _ => None,
                })
                .unwrap_or_else(|| panic!("{}: no struct {struct_name}", s.name));
            assert_eq!(
                span, rust_size,
                "{}: {struct_name} is {span} bytes in WGSL, {rust_size} in Rust",
                s.name
            );
            // Uniform buffers need 16-byte multiples on every backend.
            assert_eq!(
                span % 16,
                0,
                "{}: {struct_name} is not a multiple of 16 bytes",
                s.name
            );
        }
    }
}

/// The epilogue's flags are declared once in WGSL (conv2d_epilogue.wgsl) and mirrored in Rust.
#[test]
fn every_convolution_declares_the_epilogue_flags_rust_sets() {
    let mut count = 0;
    for s in SHADERS
        .iter()
        .filter(|s| s.parts.contains(&"conv2d_epilogue.wgsl"))
    {
        let module = validate(s.name, &s.module(s.precisions[0]));
        for (name, bits) in EPILOGUE_FLAGS {
            let (_, constant) = module
                .constants
                .iter()
                .find(|(_, c)| c.name.as_deref() == Some(name))
                .unwrap_or_else(|| panic!("{}: no constant {name}", s.name));
            let value = &module.global_expressions[constant.init];
            assert_eq!(
                value,
                &naga::Expression::Literal(naga::Literal::U32(bits)),
                "{}: {name}",
                s.name
            );
        }
        count += 1;
    }
    // The direct, grouped, row and cooperative-matrix kernels.
    assert_eq!(count, 4);
}

#[test]
fn generated_row_kernels_validate_for_every_shape_the_network_uses_and_more() {
    let mut count = 0;
    for kernel in [(1, 1), (3, 3), (5, 5), (7, 7), (1, 3), (3, 1)] {
        for stride in [(1, 1), (2, 2), (3, 3), (1, 2)] {
            for (couts, pixels) in [(4, 8), (8, 8), (16, 8), (16, 16)] {
                let tile = RowTile {
                    kernel,
                    stride,
                    couts,
                    pixels,
                };
                for precision in Precision::ALL {
                    for (split_k, entry) in [(false, "conv2d_rows"), (true, "conv2d_rows_partial")]
                    {
                        let key = tile.module_key(precision, split_k);
                        let module = validate(&key, &tile.module_source(precision, split_k));
                        assert!(module.entry_points.iter().any(|e| e.name == entry), "{key}");
                        count += 1;
                    }
                }
            }
        }
    }
    assert_eq!(count, 384);
}

/// Both matrix sides the generator emits (16 on NVIDIA, 8 on lavapipe and Apple) and every
/// block: naga's WGSL front end, validator and SPIR-V writer (what wgpu's Vulkan backend runs)
/// must accept each entry point, whether or not this machine's adapter can run it.
#[test]
fn generated_cooperative_matrix_kernels_validate_and_compile_to_spirv() {
    let mut count = 0;
    // (module name, source, its entry points, workgroup-memory bytes, the device's limit)
    let mut modules = Vec::new();
    for (side, subgroup) in [(8, 8), (16, 32)] {
        // NVIDIA allows 48 KiB of workgroup memory; lavapipe 32 KiB.
        let limit = if side == 8 { 32 * 1024 } else { 48 * 1024 };
        for tile in TILES {
            modules.push((
                tile.key(side),
                tile.module_source(side),
                vec!["conv2d_coop", "conv2d_coop_partial", "conv2d_coop_reduce"],
                tile.workgroup_bytes(side),
                limit,
            ));
        }
        for block in linear::coop::BLOCKS {
            modules.push((
                block.key(side),
                block.module_source(side),
                vec!["linear_coop"],
                block.workgroup_bytes(side),
                limit,
            ));
        }
        let staged = StagedBlock {
            side: side as usize,
            subgroup,
        };
        assert!(staged.loads_evenly(), "{}", staged.key());
        modules.push((
            staged.key(),
            staged.module_source(),
            vec!["conv2d_coop_staged"],
            staged.workgroup_bytes(),
            limit,
        ));
    }
    for (name, source, entries, bytes, limit) in modules {
        let module = validate(&name, &source);
        let mut validator = naga::valid::Validator::new(
            naga::valid::ValidationFlags::all(),
            naga::valid::Capabilities::all(),
        );
        let info = validator.validate(&module).unwrap();
        for entry in entries {
            let stage = Some((naga::ShaderStage::Compute, entry));
            let flag = if entry == "linear_coop" {
                "RELU"
            } else {
                "UPSAMPLE"
            };
            let constants = [("SG".to_string(), 32.0), (flag.to_string(), 1.0)]
                .into_iter()
                .collect();
            let (module, info) = naga::back::pipeline_constants::process_overrides(
                &module, &info, stage, &constants,
            )
            .unwrap_or_else(|e| panic!("{name} {entry}: {e}"));
            let words = naga::back::spv::write_vec(
                &module,
                &info,
                &naga::back::spv::Options::default(),
                Some(&naga::back::spv::PipelineOptions {
                    shader_stage: naga::ShaderStage::Compute,
                    entry_point: entry.into(),
                }),
            )
            .unwrap_or_else(|e| panic!("{name} {entry}: {e}"));
            assert!(words.len() > 500, "{name} {entry}");
            count += 1;
        }
        assert!(bytes <= limit, "{name}: {bytes} bytes of workgroup memory");
    }
    assert_eq!(
        count,
        2 * (TILES.len() * 3 + 1 + linear::coop::BLOCKS.len())
    );
    assert_eq!(coop::SHADER.precisions, &[Precision::F16]);
    assert_eq!(linear::coop::SHADER.precisions, &[Precision::F16]);
}
