//! What `WGPU_BACKEND` does and how its mistakes are answered, through the command line (the
//! variable is the process's, so each case runs `fpn` in its own environment): an unknown name
//! lists the valid ones, an empty value means unset, a backend the platform lacks is named as
//! such (not answered with a driver to install), and `fpn info` lists only the adapters of
//! the backends asked for. The parsing itself has unit tests in `src/gpu/adapter.rs`.

mod common;

use common::fpn_command;

/// `fpn ARGS` with `WGPU_BACKEND` set to `backend`, or unset: (exit code, stdout, stderr).
fn fpn(backend: Option<&str>, args: &[&str]) -> (i32, String, String) {
    let mut command = fpn_command();
    match backend {
        Some(b) => command.env("WGPU_BACKEND", b),
        None => command.env_remove("WGPU_BACKEND"),
    };
    let out = command.args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The backend of each adapter `fpn info` lists: `0: llvmpipe (...) (Vulkan, Cpu, ...)`.
fn listed_backends(info: &str) -> Vec<String> {
    info.lines()
        .filter(|l| {
            l.split_once(": ")
                .is_some_and(|(i, _)| i.parse::<usize>().is_ok())
        })
        .filter_map(|l| l.rsplit_once(") (").map(|(_, r)| r.to_string()))
        .filter_map(|r| r.split(',').next().map(str::to_string))
        .collect()
}

#[test]
fn an_unknown_backend_name_lists_the_valid_ones() {
    for args in [&["info"][..], &["info", "--kernels", "--blocks", "1,1,1,1"]] {
        let (code, _, err) = fpn(Some("cuda"), args);
        assert_eq!(code, 1, "{err}");
        assert!(
            err.starts_with(
                "fpn: error: WGPU_BACKEND=\"cuda\" names no backend: `cuda` is none of vulkan"
            ) && err.contains("metal")
                && err.contains("dx12")
                && err.contains("gl")
                && err.contains("unset WGPU_BACKEND"),
            "{err}"
        );
        assert!(!err.contains("no GPU adapter found"), "{err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    }
}

#[test]
fn an_empty_wgpu_backend_means_unset() {
    let (code, unset, err) = fpn(None, &["info"]);
    assert_eq!(code, 0, "{err}");
    for empty in ["", " "] {
        let (code, out, err) = fpn(Some(empty), &["info"]);
        assert_eq!(code, 0, "{err}");
        assert_eq!(out, unset);
    }
}

#[test]
fn a_backend_this_platform_lacks_is_named_as_such() {
    let here = fpn_wgpu::gpu::platform_backends();
    let (name, _) = [
        ("metal", wgpu::Backends::METAL),
        ("dx12", wgpu::Backends::DX12),
    ]
    .into_iter()
    .find(|(_, b)| !here.contains(*b))
    .expect("a platform without Metal or without DX12");
    for args in [&["info"][..], &["info", "--kernels", "--blocks", "1,1,1,1"]] {
        let (code, _, err) = fpn(Some(name), args);
        assert_eq!(code, 1, "{err}");
        assert!(
            err.contains(&format!(
                "asks for {name}, which wgpu does not have on {}",
                std::env::consts::OS
            )) && err.contains("set WGPU_BACKEND to"),
            "{err}"
        );
        assert!(!err.contains("apt-get") && !err.contains("driver"), "{err}");
    }
}

#[test]
fn fpn_info_lists_the_adapters_of_the_backends_asked_for() {
    let (code, all, err) = fpn(None, &["info"]);
    assert_eq!(code, 0, "{err}");
    let backends = listed_backends(&all);
    assert!(!backends.is_empty(), "{all}");
    for backend in &backends {
        let (code, out, err) = fpn(Some(&backend.to_lowercase()), &["info"]);
        assert_eq!(code, 0, "{err}");
        let listed = listed_backends(&out);
        assert!(
            !listed.is_empty() && listed.iter().all(|b| b == backend),
            "{out}"
        );
        assert!(out.contains(&format!(
            "the adapters of WGPU_BACKEND={}",
            backend.to_lowercase()
        )));
    }
}
