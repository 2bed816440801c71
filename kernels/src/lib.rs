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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_build_reports_not_compiled() {
        assert_eq!(gpu_support(), GpuSupport::NotCompiled);
        assert!(gpu_support().reason().contains("cuda"));
    }
}
