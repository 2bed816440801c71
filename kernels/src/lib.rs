//! Switchyard's GPU layer. Every `unsafe` block and every CUDA call of the project lives here.
//!
//! # Layout
//! - [`probe`]: which CUDA libraries load in this process (driver, cuBLAS, cuBLASLt, NVRTC,
//!   all loaded at run time through cudarc), what the driver reports (version, GPUs), and the
//!   sentence a GPU model's load error carries when something is missing.
//! - [`sources`]: our kernels, the `.cu` files of `kernels/cu/` embedded in the binary (bias +
//!   activation epilogue, row softmax, layer norm, INT8 quantise/dequantise, the generic
//!   elementwise kernel, attention's scale-mask-softmax, residual layer norm, mean, argmax,
//!   gather, symmetric INT8 GEMM support).
//! - [`nvrtc`]: compiles those sources to PTX for a GPU architecture (sm_90 on Hopper).
//! - [`nvml`]: GPU utilisation, memory, power and energy through NVML (loaded at run time),
//!   for the `nv_gpu_*` gauges of `/metrics`.
//! - [`program`]: a compiled engine lowered for one input shape: buffers, weights and the
//!   device steps (GEMMs, our kernels) in order — the contract between the engine compiler
//!   and the executors.
//! - [`program_cpu`]: runs a [`program::Program`] on the CPU with the kernels' semantics, so
//!   the lowering is tested against ONNX Runtime without a GPU.
//! - [`gpu`]: the GPU executor of a [`program::Program`]: [`gpu::GpuDevice`] (context, stream,
//!   kernels, cuBLASLt), [`gpu::GpuEngine`] (weights deduplicated by content, one shared
//!   arena), [`gpu::GpuProgram::run`] (pinned staging, each step a cuBLASLt matmul or one of
//!   our kernels, optionally one CUDA graph); its step mapping is [`gpu::plan`], pure and
//!   tested without a GPU.
//! - [`trim_heap`]: glibc `malloc_trim`, used when models are released.
//!
//! The server does not use the GPU executor yet: until it is wired in, [`gpu_unavailable`]
//! says why a `KIND_GPU` instance cannot be served.

pub mod gpu;
pub mod nvml;
pub mod nvrtc;
pub mod probe;
pub mod program;
pub mod program_cpu;
pub mod sources;

pub use probe::{probe, ComputeCapability, CudaProbe};

/// Why a GPU instance cannot be created in this process (what CUDA is missing), or `None`
/// when the driver, cuBLASLt and NVRTC load and a GPU is present: then KIND_GPU instances run
/// on [`gpu`]'s executor.
pub fn gpu_unavailable() -> Option<String> {
    probe().reason()
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
    fn a_gpu_instance_is_refused_with_a_reason() {
        assert_eq!(gpu_unavailable(), probe().reason());
    }

    #[test]
    fn trim_heap_is_callable() {
        let v = vec![0u8; 4 << 20];
        drop(v);
        let _ = trim_heap();
    }
}
