//! The engine compiler's CPU-testable core: ONNX → IR → passes → FP32 reference.
//!
//! # Layout
//! - [`ir`]: the typed graph (values with symbolic shapes, constants, nodes with typed ops).
//! - [`import`]: ONNX `ModelProto` → [`ir::Graph`]; unsupported operators, attributes and
//!   dtypes are refused with the operator and node named.
//! - [`infer`]: dtype and shape inference per node, with symbolic dims (`batch`, `sequence`).
//! - [`fold`]: constant folding (evaluated by the reference interpreter).
//! - [`fuse`]: GELU written with Erf → `Gelu`; MatMul + Add(bias) [+ activation] → one
//!   [`ir::Op::Gemm`] with an epilogue; MatMul [→ scale] [→ + mask] → Softmax → MatMul → one
//!   [`ir::Op::Attention`]; residual Add → LayerNorm → one [`ir::Op::AddLayerNorm`].
//! - [`reference`](mod@reference): the FP32 CPU interpreter of the IR, used by tests and by folding.
//! - [`quant`]: INT8 maths (per-channel weight scales, calibrated activation scale, int32 GEMM).
//! - [`precision`]: the precision of every node for FP32 / FP16 / INT8 (`precision_mode`).
//! - [`emulate`]: FP16 and INT8 emulation over the reference: the contract the kernels match.
//! - [`calibrate`]: INT8 activation ranges from the FP32 reference, and their JSON table.
//! - [`plan`]: memory planning: liveness and reuse of activation buffers at bound sizes.
//! - [`cache`]: the compiled [`cache::Engine`] (graph, precisions, calibration, PTX) on disk,
//!   keyed by model hash, GPU architecture, precision, calibration and kernel sources.
//!
//! # Data path
//! `import::import_model(bytes)` → `fold::fold_constants` → `fuse::fuse_erf_gelu` →
//! `fuse::fuse_gemm` → `fuse::fuse_attention` → `fuse::fuse_add_layer_norm` →
//! `Graph::remove_unused` → `reference::run(graph, inputs)`. For reduced precision: `precision::assign(graph, mode)`
//! → (`calibrate::calibrate` for INT8) → `emulate::Emulator::run`; `plan::plan` sizes the
//! activation arena per batch-size bucket. The GPU executor will lower the same graph to
//! CUDA (see `docs/engine.md`).

pub mod cache;
pub mod calibrate;
pub mod calibrate_cmd;
pub mod emulate;
pub mod fold;
pub mod fuse;
pub mod import;
pub mod infer;
pub mod ir;
pub mod lower;
pub mod plan;
pub mod precision;
pub mod quant;
pub mod reference;

/// Why a model cannot be compiled or run by the engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The bytes are not an ONNX model.
    #[error("cannot decode ONNX model: {0}")]
    Decode(#[from] prost::DecodeError),
    /// A construct the engine does not implement (operator, attribute, dtype, opset).
    #[error("unsupported operator {op} (node '{node}'): {reason}")]
    Unsupported {
        op: String,
        node: String,
        reason: String,
    },
    /// A node that is malformed (wrong input count, bad attribute value, type mismatch).
    #[error("invalid node {op} '{node}': {reason}")]
    InvalidNode {
        op: String,
        node: String,
        reason: String,
    },
    /// A graph-level problem (undefined value, missing graph, bad declared type).
    #[error("invalid model: {0}")]
    Model(String),
    /// The reference interpreter could not evaluate a node on the given inputs.
    #[error("evaluation of {op} '{node}' failed: {reason}")]
    Eval {
        op: String,
        node: String,
        reason: String,
    },
    /// Inputs given to the reference interpreter do not match the graph.
    #[error("invalid input: {0}")]
    Input(String),
}

/// The full pipeline used by tests and, later, by the GPU compiler: import, fold, fuse.
/// The residual-add fusion runs after the GEMM fusion, so the residual Add is never taken
/// into a GEMM epilogue and its operands are the fused GEMM outputs.
pub fn compile(model: &[u8]) -> Result<ir::Graph, EngineError> {
    let mut graph = import::import_model(model)?;
    fold::fold_constants(&mut graph)?;
    fuse::fuse_erf_gelu(&mut graph)?;
    fuse::fuse_gemm(&mut graph)?;
    fuse::fuse_attention(&mut graph)?;
    fuse::fuse_add_layer_norm(&mut graph)?;
    graph.remove_unused();
    Ok(graph)
}
