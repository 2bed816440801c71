//! The GPU executor of a [`crate::program::Program`]: every [`crate::program::Step`] mapped
//! to one cuBLASLt matmul or one of our kernels (`kernels/cu/`), on one CUDA stream.
//!
//! # Layout
//! - [`device`]: [`GpuDevice`], one GPU opened for one model instance: its context, its
//!   stream, our kernels compiled with NVRTC and loaded, a cuBLASLt handle and workspace.
//! - [`program`]: [`GpuEngine`] (the weights of an engine's programs, deduplicated by
//!   content, and the one activation arena they share) and [`GpuProgram`] (one program
//!   uploaded: its steps resolved to launches, pinned staging buffers, optionally a CUDA
//!   graph) with [`GpuProgram::run`].
//! - [`gemm`]: the row-major → column-major mapping of GEMMs onto cuBLASLt (pure, tested) and
//!   the cuBLASLt descriptors of one planned matmul.
//! - [`launch`]: launch configurations and the by-value kernel parameter structs (pure,
//!   tested).
//! - [`weights`]: the content key weights are deduplicated by (pure, tested).
//!
//! # Data path of one [`GpuProgram::run`]
//! host input bytes → pinned staging (memcpy) → arena (async H2D) → the steps (or their
//! captured CUDA graph) → pinned staging (async D2H) → stream synchronize → `Vec<u8>` per
//! output. Nothing is allocated on the device after load.
//!
//! Nothing here panics on a machine without CUDA: [`GpuDevice::new`] returns an error naming
//! what is missing (see [`crate::probe()`]).

pub mod device;
pub mod gemm;
pub mod launch;
pub mod plan;
pub mod program;
pub mod weights;

pub use device::GpuDevice;
pub use program::{GpuEngine, GpuProgram, LoadOptions};

/// Why the GPU executor failed. `Clone`, so one failed batch can be reported to every
/// request in it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GpuError {
    /// The CUDA driver, a missing library, NVRTC or a kernel launch failed.
    #[error("CUDA: {0}")]
    Cuda(String),
    /// cuBLASLt refused a matmul (descriptor, heuristic or launch).
    #[error("cuBLASLt: {0}")]
    Cublas(String),
    /// The program is invalid ([`crate::program::Program::validate`]) or uses something the
    /// GPU executor does not support.
    #[error("program: {0}")]
    Program(String),
    /// The request's inputs do not fit the program (missing, wrong size, index out of range).
    #[error("input: {0}")]
    Input(String),
}

impl From<cudarc::driver::DriverError> for GpuError {
    fn from(e: cudarc::driver::DriverError) -> Self {
        GpuError::Cuda(e.to_string())
    }
}

impl From<cudarc::cublaslt::result::CublasError> for GpuError {
    fn from(e: cudarc::cublaslt::result::CublasError) -> Self {
        GpuError::Cublas(e.to_string())
    }
}

impl From<crate::nvrtc::CompileError> for GpuError {
    fn from(e: crate::nvrtc::CompileError) -> Self {
        GpuError::Cuda(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_read_as_sentences() {
        assert_eq!(
            GpuError::Program("step 3 (gemm): x".into()).to_string(),
            "program: step 3 (gemm): x"
        );
        assert_eq!(
            GpuError::from(crate::nvrtc::CompileError::NvrtcMissing).to_string(),
            "CUDA: NVRTC not found (libnvrtc.so.13): cannot compile CUDA kernels"
        );
    }
}
