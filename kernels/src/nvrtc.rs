//! Run-time compilation of the kernel sources to PTX with NVRTC, for one GPU architecture.
//!
//! NVRTC needs no GPU: the PTX can be produced (and checked) on any machine where
//! `libnvrtc.so.13` loads. The driver turns PTX into machine code when a module is loaded.

use std::path::Path;

use crate::probe::ComputeCapability;
use crate::sources::{expand, KernelSource, KERNEL_SOURCES};

/// Why kernels could not be compiled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompileError {
    /// NVRTC is not loadable in this process.
    #[error("NVRTC not found (libnvrtc.so.{major}): cannot compile CUDA kernels", major = crate::probe::CUDA_MAJOR)]
    NvrtcMissing,
    /// NVRTC ran and rejected the source; `log` is its message.
    #[error("NVRTC failed to compile {file} for {arch}: {log}")]
    Failed {
        file: String,
        arch: String,
        log: String,
    },
}

/// One source compiled to PTX.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompiledPtx {
    pub file: &'static str,
    pub entry_points: &'static [&'static str],
    /// PTX text, `.target sm_XY`.
    pub ptx: String,
}

/// Whether NVRTC loads in this process now (checked on every call: a library preloaded
/// with [`preload_library`] counts from then on).
pub fn nvrtc_available() -> bool {
    // SAFETY: only dlopens candidate sonames and closes them again.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// Compiles CUDA source `text` (already expanded) named `file` to PTX for `cc`.
pub fn compile_source(
    file: &str,
    text: &str,
    cc: ComputeCapability,
) -> Result<String, CompileError> {
    if !nvrtc_available() {
        return Err(CompileError::NvrtcMissing);
    }
    let arch = cc.compute();
    let opts = cudarc::nvrtc::CompileOptions {
        options: vec![format!("--gpu-architecture={arch}"), "--std=c++17".into()],
        name: Some(file.to_string()),
        ..Default::default()
    };
    let failed = |log: String| CompileError::Failed {
        file: file.to_string(),
        arch: arch.clone(),
        log,
    };
    match cudarc::nvrtc::compile_ptx_with_opts(text, opts) {
        Ok(ptx) => Ok(ptx.to_src()),
        Err(cudarc::nvrtc::CompileError::CompileError { nvrtc, log, .. }) => Err(failed(format!(
            "{nvrtc:?}: {}",
            log.to_string_lossy().trim()
        ))),
        Err(e) => Err(failed(format!("{e:?}"))),
    }
}

/// Compiles one of [`KERNEL_SOURCES`] for `cc`.
pub fn compile_kernel(
    kernel: &KernelSource,
    cc: ComputeCapability,
) -> Result<CompiledPtx, CompileError> {
    let ptx = compile_source(kernel.file, &expand(kernel.text), cc)?;
    Ok(CompiledPtx {
        file: kernel.file,
        entry_points: kernel.entry_points,
        ptx,
    })
}

/// Compiles every kernel source for `cc` (sm_90 on Hopper); the first failure is returned.
pub fn compile_all(cc: ComputeCapability) -> Result<Vec<CompiledPtx>, CompileError> {
    KERNEL_SOURCES
        .iter()
        .map(|k| compile_kernel(k, cc))
        .collect()
}

/// Loads a shared library from an explicit path and keeps it loaded for the life of the
/// process. cudarc opens CUDA libraries by soname (`libnvrtc.so.13`); the dynamic loader
/// matches an already-loaded library by its soname, so a library preloaded from a folder that
/// is not on the search path (a wheel's `nvidia/cu13/lib`) is then found. Load a library's
/// own dependencies first (`libnvrtc-builtins.so.13.0` before `libnvrtc.so.13`).
pub fn preload_library(path: &Path) -> Result<(), String> {
    // SAFETY: loading runs the library's initialisers; NVIDIA's CUDA libraries have none with
    // preconditions on the caller, and nothing is called through the handle here.
    let lib = unsafe { libloading::Library::new(path) }
        .map_err(|e| format!("cannot load {}: {e}", path.display()))?;
    // Never unloaded: cudarc keeps function pointers into it for the rest of the process.
    std::mem::forget(lib);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_read_as_sentences() {
        assert_eq!(
            CompileError::NvrtcMissing.to_string(),
            "NVRTC not found (libnvrtc.so.13): cannot compile CUDA kernels"
        );
        let e = CompileError::Failed {
            file: "softmax.cu".into(),
            arch: "compute_90".into(),
            log: "error: x".into(),
        };
        assert_eq!(
            e.to_string(),
            "NVRTC failed to compile softmax.cu for compute_90: error: x"
        );
    }

    #[test]
    fn preloading_a_missing_file_is_an_error() {
        let e = preload_library(Path::new("/nonexistent/libnvrtc.so.13")).unwrap_err();
        assert!(e.contains("/nonexistent/libnvrtc.so.13"), "{e}");
    }
}
