//! Compiles every kernel with the real NVRTC (no GPU needed).
//!
//! `scripts/deps.sh test` extracts NVRTC 13.0 from NVIDIA's `nvidia-cuda-nvrtc` wheel into
//! `.deps/nvrtc/lib/`; this test loads it from there. Without it the test fails (run the
//! deps script): it never passes without having compiled the kernels.

use std::path::PathBuf;

use switchyard_kernels::nvrtc::{compile_all, compile_source, preload_library, CompileError};
use switchyard_kernels::ComputeCapability;

/// Loads NVRTC from `.deps/nvrtc/lib` (its builtins first, which NVRTC itself opens by
/// soname when it compiles).
fn load_nvrtc() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.deps/nvrtc/lib");
    for lib in ["libnvrtc-builtins.so.13.0", "libnvrtc.so.13"] {
        let path = dir.join(lib);
        assert!(
            path.is_file(),
            "{} missing: run `bash scripts/deps.sh test` (it installs NVRTC for this test)",
            path.display()
        );
        preload_library(&path).unwrap();
    }
    assert!(switchyard_kernels::nvrtc::nvrtc_available());
}

#[test]
fn every_kernel_compiles_to_ptx_for_hopper_and_ampere() {
    load_nvrtc();
    for cc in [ComputeCapability::HOPPER, ComputeCapability::new(8, 0)] {
        let compiled = compile_all(cc).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            compiled.len(),
            switchyard_kernels::sources::KERNEL_SOURCES.len()
        );
        for k in &compiled {
            let target = format!(".target {}", cc.sm());
            assert!(
                k.ptx.contains(&target),
                "{}: no `{target}` in its PTX",
                k.file
            );
            for entry in k.entry_points {
                assert!(
                    k.ptx.contains(&format!(".entry {entry}(")),
                    "{}: no entry point {entry} for {}",
                    k.file,
                    cc.sm()
                );
            }
        }
    }
}

#[test]
fn a_compile_error_carries_nvrtc_log() {
    load_nvrtc();
    let e = compile_source(
        "broken.cu",
        "extern \"C\" __global__ void k(float* y) { y[0] = undefined_name; }",
        ComputeCapability::HOPPER,
    )
    .unwrap_err();
    match &e {
        CompileError::Failed { file, arch, log } => {
            assert_eq!(file, "broken.cu");
            assert_eq!(arch, "compute_90");
            assert!(log.contains("undefined_name"), "{log}");
        }
        other => panic!("expected a compile failure, got {other:?}"),
    }
}
