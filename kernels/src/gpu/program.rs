//! Programs uploaded to a GPU and run.
//!
//! A [`GpuEngine`] holds what the programs of one engine (one per input shape bucket) share:
//! the weights, uploaded once per distinct content ([`super::weights::WeightKey`]), and one
//! activation arena sized to the largest `arena_bytes` (the programs run one at a time, on
//! the device's one stream). [`GpuEngine::load`] turns a [`Program`] into a [`GpuProgram`]:
//! every step resolved to device addresses and planned (cuBLASLt algorithms chosen, kernel
//! parameters built), pinned staging buffers for its inputs and outputs allocated, and
//! optionally the steps captured into a CUDA graph. [`GpuProgram::run`] then allocates
//! nothing on the device. The step mapping itself is [`super::plan`].
//!
use std::collections::HashMap;
use std::sync::{Arc, Weak};

use cudarc::driver::{
    result as drv, sys as drv_sys, CudaGraph, CudaSlice, DevicePtr, LaunchConfig, PinnedHostSlice,
    PushKernelArg,
};

use super::device::GpuDevice;
use super::gemm::{LtMatmul, MatmulSpec};
use super::plan::{plan_program, Arg, KernelLaunch, Memory, Planned};
use super::weights::WeightKey;
use super::GpuError;
use crate::program::{Loc, Program, ALIGN};
use crate::program_cpu::{check_indices, HostInput};

/// How a program is loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadOptions {
    /// Capture every step into one CUDA graph at load and launch the graph per run (one
    /// launch instead of one per kernel). Off: the steps are launched one by one.
    pub cuda_graph: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions { cuda_graph: true }
    }
}

/// Device memory and its address.
struct DeviceBuffer {
    _slice: CudaSlice<u8>,
    ptr: u64,
}

impl DeviceBuffer {
    /// `len` zeroed bytes (at least one: CUDA refuses empty allocations).
    fn zeroed(device: &GpuDevice, len: usize) -> Result<DeviceBuffer, GpuError> {
        let slice = device.stream().alloc_zeros::<u8>(len.max(1))?;
        Ok(Self::wrap(device, slice))
    }

    fn upload(device: &GpuDevice, bytes: &[u8]) -> Result<DeviceBuffer, GpuError> {
        if bytes.is_empty() {
            return Self::zeroed(device, 0);
        }
        let slice = device.stream().clone_htod(bytes)?;
        Ok(Self::wrap(device, slice))
    }

    fn wrap(device: &GpuDevice, slice: CudaSlice<u8>) -> DeviceBuffer {
        let (ptr, _) = slice.device_ptr(device.stream());
        DeviceBuffer { _slice: slice, ptr }
    }
}

/// The weights and the arena the programs of one engine share, on one device.
pub struct GpuEngine {
    device: Arc<GpuDevice>,
    arena: Arc<DeviceBuffer>,
    arena_bytes: usize,
    /// Uploaded weights by content. Weak: a weight is freed once no loaded program uses it.
    weights: HashMap<WeightKey, Weak<DeviceBuffer>>,
}

impl std::fmt::Debug for GpuEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuEngine")
            .field("arena_bytes", &self.arena_bytes)
            .field("weights", &self.live_weights())
            .finish()
    }
}

impl GpuEngine {
    /// An engine whose arena holds `arena_bytes` (allocated now, once).
    pub fn new(device: Arc<GpuDevice>, arena_bytes: usize) -> Result<GpuEngine, GpuError> {
        let _stream = device.lock_stream();
        let arena = DeviceBuffer::zeroed(&device, arena_bytes)?;
        if arena.ptr % ALIGN as u64 != 0 {
            return Err(GpuError::Cuda(format!(
                "the arena at {:#x} is not {ALIGN}-byte aligned",
                arena.ptr
            )));
        }
        device.stream().synchronize()?;
        drop(_stream);
        Ok(GpuEngine {
            device,
            arena: Arc::new(arena),
            arena_bytes,
            weights: HashMap::new(),
        })
    }

    /// An engine sized for these programs: the arena holds the largest of their arenas.
    pub fn for_programs(
        device: Arc<GpuDevice>,
        programs: &[Program],
    ) -> Result<GpuEngine, GpuError> {
        let bytes = programs.iter().map(|p| p.arena_bytes).max().unwrap_or(0);
        Self::new(device, bytes)
    }

    pub fn arena_bytes(&self) -> usize {
        self.arena_bytes
    }

    /// How many distinct weights are on the device for this engine's loaded programs.
    pub fn live_weights(&self) -> usize {
        self.weights
            .values()
            .filter(|w| w.strong_count() > 0)
            .count()
    }

    fn weight(&mut self, bytes: &[u8]) -> Result<Arc<DeviceBuffer>, GpuError> {
        let key = WeightKey::of(bytes);
        if let Some(w) = self.weights.get(&key).and_then(Weak::upgrade) {
            return Ok(w);
        }
        self.weights.retain(|_, w| w.strong_count() > 0);
        let w = Arc::new(DeviceBuffer::upload(&self.device, bytes)?);
        self.weights.insert(key, Arc::downgrade(&w));
        Ok(w)
    }

    /// Uploads `program`: validates it, uploads its weights not yet on the device, plans
    /// every step, allocates pinned staging and, with [`LoadOptions::cuda_graph`], captures
    /// the steps into a CUDA graph.
    pub fn load(
        &mut self,
        program: &Program,
        options: LoadOptions,
    ) -> Result<GpuProgram, GpuError> {
        program.validate().map_err(GpuError::Program)?;
        if program.arena_bytes > self.arena_bytes {
            return Err(GpuError::Program(format!(
                "the program needs {} arena bytes, the engine's arena holds {}",
                program.arena_bytes, self.arena_bytes
            )));
        }
        let device = self.device.clone();
        let _stream = device.lock_stream();
        device.context().bind_to_thread()?;
        let weights = program
            .weights
            .iter()
            .map(|w| self.weight(&w.bytes))
            .collect::<Result<Vec<_>, _>>()?;
        let mem = Memory {
            arena: self.arena.ptr,
            weights: weights.iter().map(|w| w.ptr).collect(),
        };
        let mut ops = Vec::new();
        let mut int8_fallbacks = 0;
        for planned in plan_program(program, &mem)? {
            match planned {
                Planned::Kernel(k) => ops.push(Op::kernel(&device, k)?),
                Planned::Matmul(spec) => ops.push(Op::matmul(&device, spec)?),
                Planned::Int8Matmul { spec, fallback } => {
                    match spec.and_then(|s| Op::matmul(&device, s).ok()) {
                        Some(op) => ops.push(op),
                        None => {
                            int8_fallbacks += 1;
                            ops.push(Op::kernel(&device, fallback)?);
                        }
                    }
                }
            }
        }
        let inputs = program
            .inputs
            .iter()
            .map(|b| {
                if !matches!(b.buf.loc, Loc::Arena(_)) {
                    return Err(GpuError::Program(format!(
                        "input '{}' is not in the arena",
                        b.name
                    )));
                }
                Staging::new(&device, &b.name, mem.ptr(&b.buf), b.buf.bytes(), true)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let outputs = program
            .outputs
            .iter()
            .map(|b| Staging::new(&device, &b.name, mem.ptr(&b.buf), b.buf.bytes(), false))
            .collect::<Result<Vec<_>, _>>()?;
        // The uploads are done before anything can read the weights.
        device.stream().synchronize()?;
        let graph = if options.cuda_graph {
            capture(&device, &ops)?
        } else {
            None
        };
        drop(_stream);
        Ok(GpuProgram {
            device,
            _arena: self.arena.clone(),
            _weights: weights,
            ops,
            inputs,
            outputs,
            checks: Program {
                weights: Vec::new(),
                arena_bytes: program.arena_bytes,
                inputs: program.inputs.clone(),
                outputs: Vec::new(),
                steps: Vec::new(),
                index_checks: program.index_checks.clone(),
            },
            graph,
            int8_fallbacks,
        })
    }
}

/// Captures `ops` into a CUDA graph on the device's stream (the caller holds the stream).
fn capture(device: &GpuDevice, ops: &[Op]) -> Result<Option<Graph>, GpuError> {
    if ops.is_empty() {
        return Ok(None);
    }
    let stream = device.stream();
    stream.begin_capture(drv_sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)?;
    let enqueued: Result<(), GpuError> = ops.iter().try_for_each(|op| op.enqueue(device));
    // Always end the capture, so a failed step does not leave the stream capturing.
    let graph = stream.end_capture(drv_sys::CUgraphInstantiate_flags(0));
    enqueued.map_err(|e| e.context("while capturing the CUDA graph"))?;
    let graph = graph.map_err(|e| GpuError::Cuda(format!("capturing the CUDA graph: {e}")))?;
    if let Some(g) = &graph {
        g.upload()?;
        stream.synchronize()?;
    }
    Ok(graph.map(Graph))
}

/// A captured CUDA graph.
struct Graph(CudaGraph);

// SAFETY: a CUDA graph exec may be launched from any thread as long as calls on it are
// serialized; a Graph is only reached through `&mut GpuProgram`, under the device's stream
// lock.
unsafe impl Send for Graph {}

/// One kernel launch, fully resolved.
struct KernelOp {
    entry: String,
    func: cudarc::driver::CudaFunction,
    cfg: LaunchConfig,
    args: Vec<Arg>,
}

/// One device operation of a loaded program.
enum Op {
    Kernel(KernelOp),
    Matmul(Box<LtMatmul>),
}

impl Op {
    fn kernel(device: &GpuDevice, k: KernelLaunch) -> Result<Op, GpuError> {
        let func = device.kernel(&k.entry)?.clone();
        Ok(Op::Kernel(KernelOp {
            entry: k.entry,
            func,
            cfg: k.cfg,
            args: k.args,
        }))
    }

    fn matmul(device: &GpuDevice, spec: MatmulSpec) -> Result<Op, GpuError> {
        let (_, ws_bytes) = device.workspace();
        let m = LtMatmul::plan(device.lt(), spec, ws_bytes).map_err(GpuError::Cublas)?;
        Ok(Op::Matmul(Box::new(m)))
    }

    fn enqueue(&self, device: &GpuDevice) -> Result<(), GpuError> {
        let stream = device.stream();
        match self {
            Op::Kernel(k) => {
                let mut b = stream.launch_builder(&k.func);
                for a in &k.args {
                    match a {
                        Arg::Ptr(v) => b.arg(v),
                        Arg::I64(v) => b.arg(v),
                        Arg::I32(v) => b.arg(v),
                        Arg::F32(v) => b.arg(v),
                        Arg::Ew(v) => b.arg(v.as_ref()),
                        Arg::Mask(v) => b.arg(v),
                    };
                }
                // SAFETY: the arguments match the kernel's signature in kernels/cu (built
                // by `Planner` per entry point); every pointer is inside the arena or a
                // weight of a validated program, both alive as long as the program; the
                // launch configuration is the one the kernel documents.
                unsafe { b.launch(k.cfg) }
                    .map_err(|e| GpuError::Cuda(format!("launching {}: {e}", k.entry)))?;
            }
            Op::Matmul(m) => {
                let (ws, ws_bytes) = device.workspace();
                // SAFETY: the matmul's addresses are inside the arena or weights (validated
                // program, alive as long as it), the workspace is the device's, and the
                // stream is the one everything is allocated on.
                unsafe { m.enqueue(device.lt(), ws, ws_bytes, stream.cu_stream()) }
                    .map_err(GpuError::Cublas)?;
            }
        }
        Ok(())
    }
}

/// Pinned host memory for one input or output, and where its bytes go on the device.
struct Staging {
    name: String,
    ptr: u64,
    bytes: usize,
    host: PinnedHostSlice<u8>,
}

impl Staging {
    fn new(
        device: &GpuDevice,
        name: &str,
        ptr: u64,
        bytes: usize,
        input: bool,
    ) -> Result<Staging, GpuError> {
        // Inputs are only written by the CPU: write-combined memory crosses PCIe fastest.
        // Outputs are read by the CPU: cached (flags 0), as write-combined reads are slow.
        let flags = if input {
            drv_sys::CU_MEMHOSTALLOC_WRITECOMBINED
        } else {
            0
        };
        // SAFETY: the memory is uninitialised until written; every run writes `bytes`
        // bytes before reading them (input: copied in; output: D2H before the copy out).
        let host = unsafe {
            device
                .context()
                .alloc_pinned_with_flags::<u8>(bytes.max(1), flags)
        }?;
        Ok(Staging {
            name: name.to_string(),
            ptr,
            bytes,
            host,
        })
    }
}

/// One [`Program`] on the GPU, ready to run.
pub struct GpuProgram {
    device: Arc<GpuDevice>,
    _arena: Arc<DeviceBuffer>,
    _weights: Vec<Arc<DeviceBuffer>>,
    ops: Vec<Op>,
    inputs: Vec<Staging>,
    outputs: Vec<Staging>,
    /// The program's inputs and index checks, for [`check_indices`].
    checks: Program,
    graph: Option<Graph>,
    int8_fallbacks: usize,
}

impl std::fmt::Debug for GpuProgram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuProgram")
            .field("ops", &self.ops.len())
            .field("inputs", &self.inputs.len())
            .field("outputs", &self.outputs.len())
            .field("cuda_graph", &self.graph.is_some())
            .finish()
    }
}

impl GpuProgram {
    /// Device operations (kernel launches and matmuls) per run.
    pub fn op_count(&self) -> usize {
        self.ops.len()
    }

    /// Whether runs launch one captured CUDA graph.
    pub fn uses_cuda_graph(&self) -> bool {
        self.graph.is_some()
    }

    /// INT8 GEMMs that use our fallback kernel because cuBLASLt refused their shape.
    pub fn int8_fallbacks(&self) -> usize {
        self.int8_fallbacks
    }

    /// Runs the program on `inputs` (name, little-endian bytes of the binding's shape) and
    /// returns every output's bytes in the program's order. Index inputs are checked on the
    /// host first; nothing is allocated on the device.
    pub fn run(&mut self, inputs: &[HostInput<'_>]) -> Result<Vec<Vec<u8>>, GpuError> {
        check_indices(&self.checks, inputs).map_err(GpuError::Input)?;
        let mut sources = Vec::with_capacity(self.inputs.len());
        for s in &self.inputs {
            let (_, bytes) = inputs
                .iter()
                .find(|(n, _)| *n == s.name)
                .ok_or_else(|| GpuError::Input(format!("input '{}' is missing", s.name)))?;
            if bytes.len() != s.bytes {
                return Err(GpuError::Input(format!(
                    "input '{}' has {} bytes, its shape needs {}",
                    s.name,
                    bytes.len(),
                    s.bytes
                )));
            }
            sources.push(*bytes);
        }
        let device = self.device.clone();
        let _stream = device.lock_stream();
        device.context().bind_to_thread()?;
        let cu_stream = device.stream().cu_stream();
        for (s, bytes) in self.inputs.iter_mut().zip(sources) {
            if s.bytes == 0 {
                continue;
            }
            let host = &mut s.host.as_mut_slice()?[..s.bytes];
            host.copy_from_slice(bytes);
            // SAFETY: `s.ptr .. + s.bytes` is the input's place in the arena (validated);
            // the source is pinned memory owned by this program, not touched again before
            // the synchronize below.
            unsafe { drv::memcpy_htod_async(s.ptr, &host[..], cu_stream) }?;
        }
        match &self.graph {
            Some(g) => g.0.launch()?,
            None => {
                for op in &self.ops {
                    op.enqueue(&device)?;
                }
            }
        }
        for s in &mut self.outputs {
            if s.bytes == 0 {
                continue;
            }
            let host = &mut s.host.as_mut_slice()?[..s.bytes];
            // SAFETY: `s.ptr .. + s.bytes` is the output's buffer (validated); the
            // destination is pinned memory owned by this program, read only after the
            // synchronize below.
            unsafe { drv::memcpy_dtoh_async(host, s.ptr, cu_stream) }?;
        }
        device.stream().synchronize()?;
        self.outputs
            .iter()
            .map(|s| Ok(s.host.as_slice()?[..s.bytes].to_vec()))
            .collect()
    }
}
