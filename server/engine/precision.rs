//! Per-operation precision of a compiled graph for the requested `precision_mode`.
//!
//! The rules (the numerical contract is in `docs/engine.md`, "Reduced precision"):
//! - **FP32** requested: every node computes in FP32.
//! - **GEMMs** (`Gemm`, and `MatMul` between activations) take the requested precision. A
//!   `Gemm` runs in INT8 only when its `B` is a constant 2-D float32 matrix (per-channel
//!   weight scales need the weights at build time); otherwise, and for `MatMul` (attention's
//!   `Q·Kᵀ` and `P·V` would need two calibrated activations), INT8 mode falls back to FP16.
//!   A fused `Attention` is treated like those two `MatMul`s: FP16 in FP16 and INT8 modes,
//!   its softmax inside in FP32 (see [`super::emulate`]).
//! - **Outputs** of a reduced-precision GEMM are stored as FP16, except a graph output and a
//!   `Gemm` with a `Sigmoid` epilogue (a classifier's final probability): those stay FP32.
//! - **Everything else** computes in FP32: softmax, layer norm (also the fused residual
//!   add + layer norm) and reductions because they
//!   are numerically sensitive, integer and bool operators because they are exact, and the
//!   remaining elementwise operators because they read FP16 buffers and widen to FP32 (they
//!   are the candidates for fusion into GEMM epilogues, where they would run in FP32 anyway).

use serde::{Deserialize, Serialize};

use super::ir::{DType, Graph, Node, Op, UnaryOp};

pub use crate::repository::gpu::Precision;

/// Why a node got its precision (recorded for dumps and tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reason {
    /// FP32 was requested.
    Fp32Requested,
    /// A GEMM at the requested precision.
    Gemm,
    /// INT8 requested, but the GEMM's second operand is not a constant weight matrix.
    Int8NeedsConstantWeights,
    /// INT8 requested, but calibration measured that quantising the GEMM's activation loses
    /// more than `calibrate::MAX_QUANT_ERROR`: the GEMM stays in FP16.
    Int8Inaccurate,
    /// Softmax, layer norm, reductions, exp, pow, sqrt, sigmoid: kept in FP32.
    Sensitive,
    /// Integer or bool values (shape maths, ids, masks, labels): exact, never reduced.
    Integer,
    /// Other elementwise and data-movement operators: FP32 maths on widened inputs.
    Elementwise,
}

/// The choice for one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodePrecision {
    /// The precision the node's arithmetic runs in.
    pub compute: Precision,
    /// Whether the node's float outputs are stored as FP16 (rounded) for their readers.
    pub output_f16: bool,
    pub reason: Reason,
}

/// The precision of every node, indexed like [`Graph::nodes`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrecisionPlan {
    pub mode: Precision,
    pub nodes: Vec<NodePrecision>,
}

impl PrecisionPlan {
    /// How many nodes compute in `precision`.
    pub fn count(&self, precision: Precision) -> usize {
        self.nodes.iter().filter(|n| n.compute == precision).count()
    }
}

fn fp32(reason: Reason) -> NodePrecision {
    NodePrecision {
        compute: Precision::Fp32,
        output_f16: false,
        reason,
    }
}

/// [`assign`], then, with a calibration table, every INT8 GEMM whose activation's measured
/// quantisation error exceeds [`super::calibrate::MAX_QUANT_ERROR`] goes back to FP16
/// ([`Reason::Int8Inaccurate`]). The plan INT8 engines are built and emulated with.
pub fn assign_with(
    graph: &Graph,
    mode: Precision,
    table: Option<&super::calibrate::CalibrationTable>,
) -> PrecisionPlan {
    let mut plan = assign(graph, mode);
    let Some(table) = table else {
        return plan;
    };
    for (node, p) in graph.nodes.iter().zip(plan.nodes.iter_mut()) {
        if p.compute != Precision::Int8 {
            continue;
        }
        let error = node
            .inputs
            .first()
            .and_then(|&a| table.tensors.get(&graph.values[a].name))
            .and_then(|r| r.quant_error);
        // NaN (a damaged table) counts as too lossy.
        if error.is_some_and(|e| e.is_nan() || e > super::calibrate::MAX_QUANT_ERROR) {
            p.compute = Precision::Fp16;
            p.reason = Reason::Int8Inaccurate;
        }
    }
    plan
}

/// Chooses the precision of every node of `graph` for `mode`.
pub fn assign(graph: &Graph, mode: Precision) -> PrecisionPlan {
    let nodes = graph
        .nodes
        .iter()
        .map(|node| choose(graph, node, mode))
        .collect();
    PrecisionPlan { mode, nodes }
}

fn choose(graph: &Graph, node: &Node, mode: Precision) -> NodePrecision {
    if mode == Precision::Fp32 {
        return fp32(Reason::Fp32Requested);
    }
    let all_f32 = node
        .inputs
        .iter()
        .chain(&node.outputs)
        .all(|&v| graph.values[v].dtype == DType::F32);
    if !all_f32 {
        return fp32(Reason::Integer);
    }
    let is_graph_output = node.outputs.iter().any(|o| graph.outputs.contains(o));
    match &node.op {
        Op::Gemm(g) => {
            let weights_constant = node.inputs.get(1).is_some_and(|&b| {
                graph
                    .constants
                    .get(&b)
                    .is_some_and(|t| t.shape.len() == 2 && t.dtype() == DType::F32)
            });
            let (compute, reason) = match mode {
                Precision::Int8 if weights_constant => (Precision::Int8, Reason::Gemm),
                Precision::Int8 => (Precision::Fp16, Reason::Int8NeedsConstantWeights),
                _ => (Precision::Fp16, Reason::Gemm),
            };
            let classifier_head = g.activation == super::ir::Activation::Sigmoid;
            NodePrecision {
                compute,
                output_f16: !is_graph_output && !classifier_head,
                reason,
            }
        }
        // Attention is two GEMMs between activations (Q·Kᵀ and P·V) around an FP32 softmax
        // (see the emulation contract): FP16 like `MatMul`, never INT8.
        Op::MatMul | Op::Attention { .. } => NodePrecision {
            compute: Precision::Fp16,
            output_f16: !is_graph_output,
            reason: if mode == Precision::Int8 {
                Reason::Int8NeedsConstantWeights
            } else {
                Reason::Gemm
            },
        },
        Op::Softmax { .. }
        | Op::LayerNorm { .. }
        | Op::AddLayerNorm { .. }
        | Op::ReduceMean { .. }
        | Op::ReduceSum { .. }
        | Op::Binary(super::ir::BinaryOp::Pow)
        | Op::Unary(UnaryOp::Sigmoid | UnaryOp::Exp | UnaryOp::Sqrt | UnaryOp::Erf) => {
            fp32(Reason::Sensitive)
        }
        _ => fp32(Reason::Elementwise),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::ir::{Activation, Dim, Gemm, Tensor};

    /// `x[batch, 4]` → Gemm + Relu → Mul → MatMul with a second graph input (not a constant)
    /// → Softmax → Gemm + Sigmoid (the head), plus an integer Shape node.
    fn graph() -> Graph {
        let mut g = Graph::default();
        let x = g.add_value(
            "x",
            DType::F32,
            Some(vec![Dim::Sym("batch".into()), Dim::Known(4)]),
        );
        g.inputs.push(x);
        let w1 = g.add_constant("w1", Tensor::f32(vec![4, 4], vec![0.5; 16]).unwrap());
        let b1 = g.add_constant("b1", Tensor::f32(vec![4], vec![0.1; 4]).unwrap());
        let gemm = |activation| {
            Op::Gemm(Gemm {
                trans_a: false,
                trans_b: false,
                alpha: 1.0,
                beta: 1.0,
                activation,
            })
        };
        let h = g
            .add_node(
                "fc1",
                gemm(Activation::Relu),
                vec![x, w1, b1],
                vec!["h".into()],
            )
            .unwrap()[0];
        let hh = g
            .add_node(
                "h_mul",
                Op::Binary(super::super::ir::BinaryOp::Mul),
                vec![h, h],
                vec!["hh".into()],
            )
            .unwrap()[0];
        let wt = g.add_value("wt", DType::F32, Some(vec![Dim::Known(4), Dim::Known(4)]));
        g.inputs.push(wt);
        let m = g
            .add_node("mm", Op::MatMul, vec![hh, wt], vec!["m".into()])
            .unwrap()[0];
        let s = g
            .add_node(
                "sm",
                Op::Softmax {
                    axis: -1,
                    coerce_2d: false,
                },
                vec![m],
                vec!["s".into()],
            )
            .unwrap()[0];
        let w2 = g.add_constant("w2", Tensor::f32(vec![4, 1], vec![1.0; 4]).unwrap());
        let b2 = g.add_constant("b2", Tensor::f32(vec![1], vec![0.0]).unwrap());
        let p = g
            .add_node(
                "head",
                gemm(Activation::Sigmoid),
                vec![s, w2, b2],
                vec!["p".into()],
            )
            .unwrap()[0];
        let shape = g
            .add_node(
                "shape",
                Op::Shape {
                    start: 0,
                    end: None,
                },
                vec![p],
                vec!["p_shape".into()],
            )
            .unwrap()[0];
        g.outputs = vec![p, shape];
        g
    }

    fn by_name(g: &Graph, plan: &PrecisionPlan, name: &str) -> NodePrecision {
        let i = g.nodes.iter().position(|n| n.name == name).unwrap();
        plan.nodes[i]
    }

    #[test]
    fn fp32_keeps_everything_in_fp32() {
        let g = graph();
        let plan = assign(&g, Precision::Fp32);
        assert_eq!(plan.nodes.len(), g.nodes.len());
        assert_eq!(plan.count(Precision::Fp32), g.nodes.len());
        assert!(plan.nodes.iter().all(|n| !n.output_f16));
    }

    #[test]
    fn fp16_reduces_gemms_only() {
        let g = graph();
        let plan = assign(&g, Precision::Fp16);
        let fc1 = by_name(&g, &plan, "fc1");
        assert_eq!((fc1.compute, fc1.output_f16), (Precision::Fp16, true));
        let mm = by_name(&g, &plan, "mm");
        assert_eq!((mm.compute, mm.reason), (Precision::Fp16, Reason::Gemm));
        // The classifier head: FP16 GEMM, FP32 sigmoid and output.
        let head = by_name(&g, &plan, "head");
        assert_eq!((head.compute, head.output_f16), (Precision::Fp16, false));
        assert_eq!(by_name(&g, &plan, "sm").reason, Reason::Sensitive);
        assert_eq!(by_name(&g, &plan, "sm").compute, Precision::Fp32);
        assert_eq!(by_name(&g, &plan, "h_mul").reason, Reason::Elementwise);
        assert_eq!(by_name(&g, &plan, "shape").reason, Reason::Integer);
        assert_eq!(plan.count(Precision::Fp16), 3);
        assert_eq!(plan.count(Precision::Int8), 0);
    }

    #[test]
    fn int8_needs_constant_weights() {
        let g = graph();
        let plan = assign(&g, Precision::Int8);
        assert_eq!(by_name(&g, &plan, "fc1").compute, Precision::Int8);
        assert_eq!(by_name(&g, &plan, "head").compute, Precision::Int8);
        let mm = by_name(&g, &plan, "mm");
        assert_eq!(
            (mm.compute, mm.reason),
            (Precision::Fp16, Reason::Int8NeedsConstantWeights)
        );
        assert_eq!(by_name(&g, &plan, "sm").compute, Precision::Fp32);
        assert_eq!(by_name(&g, &plan, "shape").compute, Precision::Fp32);
    }
}
