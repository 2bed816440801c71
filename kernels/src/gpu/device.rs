//! One GPU opened for one model instance.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use parking_lot::{Mutex, MutexGuard};

use cudarc::driver::{CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr};

use super::gemm::LtHandle;
use super::GpuError;
use crate::probe::{probe, ComputeCapability, CudaProbe};

/// cuBLASLt workspace: NVIDIA recommends 32 MiB on Hopper, 4 MiB before.
pub fn workspace_bytes(cc: ComputeCapability) -> usize {
    if cc.major >= 9 {
        32 << 20
    } else {
        4 << 20
    }
}

/// A GPU's context, the instance's one stream, our kernels and cuBLASLt.
///
/// Every buffer and every launch of the programs loaded through it use this one stream, so
/// ordering is the stream's; cudarc's per-buffer event tracking is turned off for this
/// context (it would record events inside CUDA graph captures and is useless with one
/// stream).
pub struct GpuDevice {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    cc: ComputeCapability,
    name: String,
    /// Our kernels by entry point name, loaded from the PTX NVRTC compiled for `cc`.
    kernels: HashMap<&'static str, CudaFunction>,
    lt: LtHandle,
    /// The cuBLASLt workspace every matmul of this device uses (they run one after another
    /// on the one stream).
    workspace: CudaSlice<u8>,
    workspace_ptr: u64,
    /// Held by whoever enqueues work on `stream` (a program's run, a load with its uploads
    /// and graph capture): runs of programs that share an arena never interleave, and no
    /// other thread's work lands inside a graph being captured.
    stream_lock: Mutex<()>,
}

impl std::fmt::Debug for GpuDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuDevice")
            .field("ordinal", &self.ctx.ordinal())
            .field("name", &self.name)
            .field("compute_capability", &self.cc)
            .field("kernels", &self.kernels.len())
            .finish()
    }
}

/// Why CUDA cannot be used in this process now, or `None`. The driver state comes from the
/// process-wide [`probe`]; the libraries are looked for again, so one preloaded since (NVRTC
/// from a wheel) counts.
pub fn missing_cuda() -> Option<String> {
    let p = probe();
    // SAFETY (all three): `is_culib_present` only dlopens candidate sonames and closes them.
    let now = CudaProbe {
        driver: p.driver.clone(),
        cublas: unsafe { cudarc::cublas::sys::is_culib_present() },
        cublaslt: unsafe { cudarc::cublaslt::sys::is_culib_present() },
        nvrtc: crate::nvrtc::nvrtc_available(),
    };
    now.reason()
}

impl GpuDevice {
    /// Opens GPU `ordinal`: context, stream, kernels compiled for its architecture, cuBLASLt.
    /// On a machine without CUDA (or without that GPU) this is an error naming what is
    /// missing; it never panics (a panic inside cudarc becomes an error).
    pub fn new(ordinal: usize) -> Result<Arc<GpuDevice>, GpuError> {
        if let Some(why) = missing_cuda() {
            return Err(GpuError::Cuda(why));
        }
        std::panic::catch_unwind(AssertUnwindSafe(|| Self::open(ordinal))).unwrap_or_else(|_| {
            Err(GpuError::Cuda(format!(
                "opening GPU {ordinal} panicked inside cudarc (a CUDA symbol missing?)"
            )))
        })
    }

    fn open(ordinal: usize) -> Result<Arc<GpuDevice>, GpuError> {
        let ctx = CudaContext::new(ordinal)?;
        // SAFETY: every buffer of this context is used on the one stream created below, in
        // order, so cudarc's cross-stream events are not needed; turning them off before any
        // buffer exists keeps them out of graph captures.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream()?;
        let (major, minor) = ctx.compute_capability()?;
        let cc = ComputeCapability::new(major as u32, minor as u32);
        let name = ctx.name()?;
        let mut kernels = HashMap::new();
        for compiled in crate::nvrtc::compile_all(cc)? {
            let module = ctx.load_module(cudarc::nvrtc::Ptx::from_src(compiled.ptx))?;
            for &entry in compiled.entry_points {
                kernels.insert(entry, module.load_function(entry)?);
            }
        }
        let lt = LtHandle::new()?;
        let bytes = workspace_bytes(cc);
        let workspace = stream.alloc_zeros::<u8>(bytes)?;
        let (workspace_ptr, _) = workspace.device_ptr(&stream);
        stream.synchronize()?;
        Ok(Arc::new(GpuDevice {
            ctx,
            stream,
            cc,
            name,
            kernels,
            lt,
            workspace,
            workspace_ptr,
            stream_lock: Mutex::new(()),
        }))
    }

    pub fn compute_capability(&self) -> ComputeCapability {
        self.cc
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// One of our kernels by entry point name.
    pub fn kernel(&self, entry: &str) -> Result<&CudaFunction, GpuError> {
        self.kernels
            .get(entry)
            .ok_or_else(|| GpuError::Cuda(format!("kernel {entry} is not loaded")))
    }

    /// Exclusive use of the stream (see the field).
    pub fn lock_stream(&self) -> MutexGuard<'_, ()> {
        self.stream_lock.lock()
    }

    pub(crate) fn lt(&self) -> &LtHandle {
        &self.lt
    }

    /// The cuBLASLt workspace: device address and size.
    pub(crate) fn workspace(&self) -> (u64, usize) {
        (self.workspace_ptr, self.workspace.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workspace_follows_nvidia_advice() {
        assert_eq!(workspace_bytes(ComputeCapability::HOPPER), 32 << 20);
        assert_eq!(workspace_bytes(ComputeCapability::new(8, 0)), 4 << 20);
    }

    #[test]
    fn without_cuda_opening_is_an_error_naming_what_is_missing() {
        match missing_cuda() {
            Some(why) => {
                let e = GpuDevice::new(0).unwrap_err();
                assert_eq!(e, GpuError::Cuda(why));
            }
            // A GPU machine: opening a GPU that does not exist is an error, not a panic.
            None => assert!(GpuDevice::new(1 << 20).is_err()),
        }
    }
}
