//! Switchyard's GPU layer. Every `unsafe` block and every CUDA call of the project lives here.
//!
//! Today this crate only answers whether a GPU executor can exist in this build; the CUDA
//! executor (cudarc, NVRTC kernels, engines compiled from ONNX) lands with the GPU issue.

/// Why a GPU instance can or cannot be created by this build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GpuSupport {
    /// The binary was built without the `cuda` feature.
    NotCompiled,
    /// The `cuda` feature is on, but the GPU executor is not part of this build yet.
    ExecutorMissing,
}

impl GpuSupport {
    /// A sentence for load errors: why a `KIND_GPU` instance group cannot be served.
    pub fn reason(&self) -> &'static str {
        match self {
            GpuSupport::NotCompiled => {
                "this Switchyard build has no GPU executor (built without the `cuda` feature)"
            }
            GpuSupport::ExecutorMissing => "the GPU executor is not available in this build",
        }
    }
}

/// What this build can do with `KIND_GPU` instance groups.
pub fn gpu_support() -> GpuSupport {
    if cfg!(feature = "cuda") {
        GpuSupport::ExecutorMissing
    } else {
        GpuSupport::NotCompiled
    }
}

/// Hands the C allocator's free memory back to the operating system (glibc `malloc_trim(0)`):
/// the free top of every malloc arena is unmapped and the free pages inside them are
/// `madvise`d away. Without it glibc keeps them: once ONNX Runtime frees a 1 MiB mmapped
/// block (its arena chunk, at session release) glibc's dynamic thresholds let every arena
/// keep at least 2 MiB free, plus whatever fragmentation left. Returns whether memory was
/// released; a no-op (false) where the C library is not glibc.
pub fn trim_heap() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn malloc_trim(pad: usize) -> std::os::raw::c_int;
        }
        // SAFETY: malloc_trim takes no pointers; it walks glibc's own arenas under their locks
        // and may be called from any thread at any time.
        unsafe { malloc_trim(0) != 0 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_build_reports_not_compiled() {
        assert_eq!(gpu_support(), GpuSupport::NotCompiled);
        assert!(gpu_support().reason().contains("cuda"));
    }

    #[test]
    fn trim_heap_is_callable() {
        let v = vec![0u8; 4 << 20];
        drop(v);
        let _ = trim_heap();
    }
}
