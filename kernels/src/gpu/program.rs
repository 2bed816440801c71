//! Programs uploaded to a GPU and run.
//!
//! A [`GpuEngine`] holds what the programs of one engine (one per input shape bucket) share:
//! the weights, uploaded once per distinct content ([`super::weights::WeightKey`]), and one
//! activation arena sized to the largest `arena_bytes` (the programs run one at a time, on
//! the device's one stream). [`GpuEngine::load`] turns a [`Program`] into a [`GpuProgram`]:
//! every step resolved to device addresses and planned (cuBLASLt algorithms chosen, kernel
//! parameters built), pinned staging buffers for its inputs and outputs allocated, and
//! optionally the steps captured into a CUDA graph. [`GpuProgram::run`] then allocates
//! nothing on the device.
//!
//! # Step mapping
//! - `Gemm` → one cuBLASLt matmul (row-major via the swap, see [`super::gemm`]); bias with
//!   `CUBLASLT_EPILOGUE_BIAS`, bias + ReLU with `RELU_BIAS`; sigmoid, tanh and exact GELU
//!   (cuBLASLt's GELU is the tanh approximation) by a plain matmul then `bias_<act>_<t>`.
//! - `GemmInt8` → `quantize_sym_<t>`, then the INT8 cuBLASLt matmul (TN, i8 × i8 → i32) or,
//!   for shapes it refuses, `gemm_i8_i32`, then `dequant_bias_act_<t>`.
//! - `Attention` → strided-batched matmul `q · k'` into `scores` (alpha 1),
//!   `scale_mask_softmax_<t>` (scale, mask, softmax; F16 probabilities into `probs`), then
//!   the strided-batched matmul `probs · v`.
//! - `Elementwise` → `elementwise`; `Softmax` → `softmax_<t>`; `LayerNorm` →
//!   `add_layer_norm_<t>`; `ReduceMean` → `reduce_mean_<t>`; `Gather` → `gather_<i64|i32>`;
//!   `ArgMax` → `argmax`. Launch configurations: [`super::launch`].

use std::collections::HashMap;
use std::sync::{Arc, Weak};

use cudarc::driver::{
    result as drv, sys as drv_sys, CudaGraph, CudaSlice, DevicePtr, LaunchConfig, PinnedHostSlice,
    PushKernelArg,
};

use super::device::GpuDevice;
use super::gemm::{
    int8_lt_eligible, lt_gemm, lt_gemm_int8, Epilogue, LtMatmul, MatmulSpec, RowMajorGemm, Scale,
};
use super::launch::{
    act_code, bias_act_entry, ew_params, grid_1d, grid_rows, mask_view, EwParams, MaskView,
};
use super::weights::WeightKey;
use super::GpuError;
use crate::program::{
    Act, AttentionStep, Buf, Elem, GemmInt8Step, GemmStep, Loc, Program, Step, ALIGN,
};
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
        let mut planner = Planner {
            device: &device,
            mem: &mem,
            ops: Vec::new(),
            int8_fallbacks: 0,
        };
        for (i, s) in program.steps.iter().enumerate() {
            planner
                .step(s)
                .map_err(|e| e.context(&format!("step {i} ({})", s.kind())))?;
        }
        let Planner {
            ops,
            int8_fallbacks,
            ..
        } = planner;
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

impl GpuError {
    fn context(self, what: &str) -> GpuError {
        match self {
            GpuError::Cuda(e) => GpuError::Cuda(format!("{what}: {e}")),
            GpuError::Cublas(e) => GpuError::Cublas(format!("{what}: {e}")),
            GpuError::Program(e) => GpuError::Program(format!("{what}: {e}")),
            GpuError::Input(e) => GpuError::Input(format!("{what}: {e}")),
        }
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

/// Where a program's buffers are on the device.
struct Memory {
    arena: u64,
    weights: Vec<u64>,
}

impl Memory {
    /// The address of a buffer of a validated program.
    fn ptr(&self, b: &Buf) -> u64 {
        match b.loc {
            Loc::Arena(off) => self.arena + off as u64,
            Loc::Weight(w) => self.weights.get(w).copied().unwrap_or(0),
        }
    }

    fn opt(&self, b: &Option<Buf>) -> u64 {
        b.as_ref().map_or(0, |b| self.ptr(b))
    }
}

/// One argument of a kernel launch, kept until the launch reads it.
#[derive(Debug, Clone)]
enum Arg {
    Ptr(u64),
    I64(i64),
    I32(i32),
    F32(f32),
    Ew(Box<EwParams>),
    Mask(MaskView),
}

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

fn n64(v: usize) -> Result<i64, GpuError> {
    i64::try_from(v).map_err(|_| GpuError::Program(format!("{v} does not fit in i64")))
}

fn float_suffix(e: Elem, what: &str) -> Result<&'static str, GpuError> {
    match e {
        Elem::F32 => Ok("f32"),
        Elem::F16 => Ok("f16"),
        other => Err(GpuError::Program(format!(
            "{what} is {other:?}; the GPU executor takes F32 or F16"
        ))),
    }
}

fn same(elems: &[Elem], what: &str) -> Result<Elem, GpuError> {
    let first = elems[0];
    if elems.iter().any(|&e| e != first) {
        return Err(GpuError::Program(format!(
            "{what} mix element types {elems:?}; the GPU kernel takes one"
        )));
    }
    Ok(first)
}

/// Turns steps into device operations.
struct Planner<'a> {
    device: &'a GpuDevice,
    mem: &'a Memory,
    ops: Vec<Op>,
    int8_fallbacks: usize,
}

impl Planner<'_> {
    fn kernel(
        &mut self,
        entry: &str,
        cfg: Option<LaunchConfig>,
        args: Vec<Arg>,
    ) -> Result<(), GpuError> {
        let Some(cfg) = cfg else {
            return Ok(()); // nothing to compute
        };
        let func = self.device.kernel(entry)?.clone();
        self.ops.push(Op::Kernel(KernelOp {
            entry: entry.to_string(),
            func,
            cfg,
            args,
        }));
        Ok(())
    }

    fn matmul(&mut self, spec: MatmulSpec) -> Result<(), GpuError> {
        let (_, ws_bytes) = self.device.workspace();
        let m = LtMatmul::plan(self.device.lt(), spec, ws_bytes).map_err(GpuError::Cublas)?;
        self.ops.push(Op::Matmul(Box::new(m)));
        Ok(())
    }

    fn rows(rows: usize, cols: usize) -> Result<Option<LaunchConfig>, GpuError> {
        grid_rows(rows, cols).map_err(GpuError::Program)
    }

    fn step(&mut self, s: &Step) -> Result<(), GpuError> {
        let p = |b: &Buf| Arg::Ptr(self.mem.ptr(b));
        match s {
            Step::Gemm(g) => self.gemm(g),
            Step::GemmInt8(g) => self.gemm_int8(g),
            Step::Attention(a) => self.attention(a),
            Step::Elementwise {
                op,
                ins,
                out,
                shape,
            } => {
                let ins: Vec<(u64, &crate::program::View)> =
                    ins.iter().map(|v| (self.mem.ptr(&v.buf), v)).collect();
                let params = ew_params(*op, &ins, (self.mem.ptr(&out.buf), out), shape)
                    .map_err(GpuError::Program)?;
                let n = shape.iter().product();
                self.kernel("elementwise", grid_1d(n), vec![Arg::Ew(Box::new(params))])
            }
            Step::Softmax { x, y, rows, cols } => {
                let t = float_suffix(same(&[x.elem, y.elem], "softmax x and y")?, "softmax")?;
                let args = vec![p(y), p(x), Arg::I64(n64(*cols)?)];
                self.kernel(&format!("softmax_{t}"), Self::rows(*rows, *cols)?, args)
            }
            Step::LayerNorm {
                x,
                residual,
                gamma,
                beta,
                y,
                rows,
                cols,
                eps,
            } => {
                let mut elems = vec![x.elem, gamma.elem, y.elem];
                elems.extend(residual.iter().chain(beta.iter()).map(|b| b.elem));
                let t = float_suffix(same(&elems, "layer norm operands")?, "layer norm")?;
                let args = vec![
                    p(y),
                    p(x),
                    Arg::Ptr(self.mem.opt(residual)),
                    p(gamma),
                    Arg::Ptr(self.mem.opt(beta)),
                    Arg::I64(n64(*cols)?),
                    Arg::F32(*eps),
                ];
                self.kernel(
                    &format!("add_layer_norm_{t}"),
                    Self::rows(*rows, *cols)?,
                    args,
                )
            }
            Step::ReduceMean {
                x,
                y,
                outer,
                len,
                inner,
            } => {
                let t = float_suffix(same(&[x.elem, y.elem], "reduce mean x and y")?, "mean")?;
                let args = vec![
                    p(y),
                    p(x),
                    Arg::I64(n64(*outer)?),
                    Arg::I64(n64(*len)?),
                    Arg::I64(n64(*inner)?),
                ];
                self.kernel(&format!("reduce_mean_{t}"), grid_1d(outer * inner), args)
            }
            Step::Gather {
                data,
                indices,
                y,
                outer,
                axis_len,
                inner,
                count,
            } => {
                same(&[data.elem, y.elem], "gather data and y")?;
                let entry = match indices.elem {
                    Elem::I64 => "gather_i64",
                    Elem::I32 => "gather_i32",
                    other => {
                        return Err(GpuError::Program(format!(
                            "gather indices are {other:?}, not I64 or I32"
                        )))
                    }
                };
                let args = vec![
                    p(y),
                    p(data),
                    p(indices),
                    Arg::I64(n64(*outer)?),
                    Arg::I64(n64(*axis_len)?),
                    Arg::I64(n64(*inner)?),
                    Arg::I64(n64(*count)?),
                    Arg::I32(data.elem.size() as i32),
                ];
                self.kernel(entry, grid_1d(outer * count * inner), args)
            }
            Step::ArgMax {
                x,
                y,
                outer,
                len,
                inner,
                select_last,
            } => {
                if y.elem != Elem::I64 {
                    return Err(GpuError::Program(format!(
                        "argmax writes I64, y is {:?}",
                        y.elem
                    )));
                }
                let args = vec![
                    p(y),
                    p(x),
                    Arg::I32(x.elem.code()),
                    Arg::I64(n64(*outer)?),
                    Arg::I64(n64(*len)?),
                    Arg::I64(n64(*inner)?),
                    Arg::I32(*select_last as i32),
                ];
                // An empty axis has no index to return; program_cpu returns 0, so does the
                // kernel (its loop starts at index 0).
                self.kernel("argmax", grid_1d(outer * inner), args)
            }
        }
    }

    fn gemm(&mut self, g: &GemmStep) -> Result<(), GpuError> {
        float_suffix(g.compute, "GEMM compute")?;
        let t = float_suffix(g.y.elem, "GEMM output")?;
        if g.a.elem != g.compute || g.b.elem != g.compute {
            return Err(GpuError::Program(
                "GEMM operands not in the compute type".into(),
            ));
        }
        let lt = lt_gemm(&RowMajorGemm {
            m: g.m,
            n: g.n,
            k: g.k,
            batch: g.batch,
            trans_a: g.trans_a,
            trans_b: g.trans_b,
            stride_a: g.stride_a,
            stride_b: g.stride_b,
            stride_y: g.stride_y,
        })
        .map_err(GpuError::Program)?;
        let bias = g.bias.as_ref().map(|b| self.mem.ptr(b));
        let fused = match (bias, g.act) {
            (None, Act::None) => Some(Epilogue::Default),
            (None, Act::Relu) => Some(Epilogue::Relu),
            (Some(b), Act::None) => Some(Epilogue::Bias(b)),
            (Some(b), Act::Relu) => Some(Epilogue::ReluBias(b)),
            _ => None,
        };
        let y = self.mem.ptr(&g.y);
        self.matmul(MatmulSpec {
            gemm: lt,
            a_type: g.b.elem,
            b_type: g.a.elem,
            d_type: g.y.elem,
            a_ptr: self.mem.ptr(&g.b),
            b_ptr: self.mem.ptr(&g.a),
            d_ptr: y,
            alpha: Scale::F32(g.alpha),
            epilogue: fused.unwrap_or(Epilogue::Default),
        })?;
        if fused.is_some() {
            return Ok(());
        }
        // Bias and activation in place over Y: one launch when the batches are contiguous,
        // else one per batch.
        let entry = bias_act_entry(g.act, t);
        let (m, n) = (g.m, g.n);
        let launches: Vec<(u64, usize)> = if g.batch == 1 || g.stride_y == m * n {
            vec![(y, g.batch * m)]
        } else {
            (0..g.batch)
                .map(|b| (y + (b * g.stride_y * g.y.elem.size()) as u64, m))
                .collect()
        };
        for (ptr, rows) in launches {
            let args = vec![
                Arg::Ptr(ptr),
                Arg::Ptr(ptr),
                Arg::Ptr(bias.unwrap_or(0)),
                Arg::I64(n64(rows)?),
                Arg::I64(n64(n)?),
            ];
            self.kernel(&entry, grid_1d(rows * n), args)?;
        }
        Ok(())
    }

    fn gemm_int8(&mut self, g: &GemmInt8Step) -> Result<(), GpuError> {
        let ta = float_suffix(g.a.elem, "INT8 GEMM input")?;
        let ty = float_suffix(g.y.elem, "INT8 GEMM output")?;
        if g.w_scales.elem != Elem::F32 || g.bias.is_some_and(|b| b.elem != Elem::F32) {
            return Err(GpuError::Program("INT8 scales and bias must be F32".into()));
        }
        let (m, n, k) = (g.m, g.n, g.k);
        let (a, aq, w, acc) = (
            self.mem.ptr(&g.a),
            self.mem.ptr(&g.a_q),
            self.mem.ptr(&g.w),
            self.mem.ptr(&g.acc),
        );
        self.kernel(
            &format!("quantize_sym_{ta}"),
            grid_1d(m * k),
            vec![
                Arg::Ptr(aq),
                Arg::Ptr(a),
                Arg::I64(n64(m * k)?),
                Arg::F32(g.a_scale),
            ],
        )?;
        let planned = if m > 0 && int8_lt_eligible(n, k, &[aq, w, acc]) {
            lt_gemm_int8(m, n, k).ok().and_then(|gemm| {
                let spec = MatmulSpec {
                    gemm,
                    a_type: Elem::I8,
                    b_type: Elem::I8,
                    d_type: Elem::I32,
                    a_ptr: w,
                    b_ptr: aq,
                    d_ptr: acc,
                    alpha: Scale::I32(1),
                    epilogue: Epilogue::Default,
                };
                let (_, ws_bytes) = self.device.workspace();
                LtMatmul::plan(self.device.lt(), spec, ws_bytes).ok()
            })
        } else {
            None
        };
        match planned {
            Some(mm) => self.ops.push(Op::Matmul(Box::new(mm))),
            None => {
                self.int8_fallbacks += 1;
                self.kernel(
                    "gemm_i8_i32",
                    grid_1d(m * n),
                    vec![
                        Arg::Ptr(acc),
                        Arg::Ptr(aq),
                        Arg::Ptr(w),
                        Arg::I64(n64(m)?),
                        Arg::I64(n64(n)?),
                        Arg::I64(n64(k)?),
                    ],
                )?;
            }
        }
        self.kernel(
            &format!("dequant_bias_act_{ty}"),
            grid_1d(m * n),
            vec![
                Arg::Ptr(self.mem.ptr(&g.y)),
                Arg::Ptr(acc),
                Arg::Ptr(self.mem.ptr(&g.w_scales)),
                Arg::Ptr(self.mem.opt(&g.bias)),
                Arg::I64(n64(m)?),
                Arg::I64(n64(n)?),
                // (alpha · a_scale) in f32 first, as program_cpu.
                Arg::F32(g.alpha * g.a_scale),
                Arg::I32(act_code(g.act)),
            ],
        )
    }

    fn attention(&mut self, a: &AttentionStep) -> Result<(), GpuError> {
        let t = float_suffix(a.compute, "attention compute")?;
        float_suffix(a.y.elem, "attention output")?;
        if [a.q.elem, a.k.elem, a.v.elem]
            .iter()
            .any(|&e| e != a.compute)
        {
            return Err(GpuError::Program("q, k, v not in the compute type".into()));
        }
        if a.scores.elem != Elem::F32 || (a.compute == Elem::F16 && a.probs.elem != Elem::F16) {
            return Err(GpuError::Program(
                "scores must be F32 (and probs F16 with F16 compute)".into(),
            ));
        }
        let (bh, sq, sk, d) = (a.batch * a.heads, a.sq, a.sk, a.d);
        if bh == 0 || sq == 0 {
            return Ok(());
        }
        let (q, k, v, y, scores) = (
            self.mem.ptr(&a.q),
            self.mem.ptr(&a.k),
            self.mem.ptr(&a.v),
            self.mem.ptr(&a.y),
            self.mem.ptr(&a.scores),
        );
        // scores[b] = q[b] [sq, d] · k'[b] [d, sk]; k stored [d, sk] when transposed (the
        // plain B layout), else [sk, d] (B transposed).
        let qk = lt_gemm(&RowMajorGemm {
            m: sq,
            n: sk,
            k: d,
            batch: bh,
            trans_a: false,
            trans_b: !a.k_transposed,
            stride_a: sq * d,
            stride_b: sk * d,
            stride_y: sq * sk,
        })
        .map_err(GpuError::Program)?;
        self.matmul(MatmulSpec {
            gemm: qk,
            a_type: a.k.elem,
            b_type: a.q.elem,
            d_type: Elem::F32,
            a_ptr: k,
            b_ptr: q,
            d_ptr: scores,
            alpha: Scale::F32(1.0),
            epilogue: Epilogue::Default,
        })?;
        let mask = mask_view(a.mask.as_ref().map(|m| (self.mem.ptr(&m.buf), m)))
            .map_err(GpuError::Program)?;
        let probs = if a.compute == Elem::F16 {
            self.mem.ptr(&a.probs)
        } else {
            scores
        };
        let mut args = vec![Arg::Ptr(scores)];
        if a.compute == Elem::F16 {
            args.push(Arg::Ptr(probs));
        }
        args.extend([
            Arg::Mask(mask),
            Arg::I64(n64(a.heads)?),
            Arg::I64(n64(sq)?),
            Arg::I64(n64(sk)?),
            Arg::F32(a.scale),
        ]);
        self.kernel(
            &format!("scale_mask_softmax_{t}"),
            Self::rows(bh * sq, sk)?,
            args,
        )?;
        // y[b] = probs[b] [sq, sk] · v[b] [sk, d].
        let pv = lt_gemm(&RowMajorGemm {
            m: sq,
            n: d,
            k: sk,
            batch: bh,
            trans_a: false,
            trans_b: false,
            stride_a: sq * sk,
            stride_b: sk * d,
            stride_y: sq * d,
        })
        .map_err(GpuError::Program)?;
        self.matmul(MatmulSpec {
            gemm: pv,
            a_type: a.v.elem,
            b_type: a.compute,
            d_type: a.y.elem,
            a_ptr: v,
            b_ptr: probs,
            d_ptr: y,
            alpha: Scale::F32(1.0),
            epilogue: Epilogue::Default,
        })
    }
}
