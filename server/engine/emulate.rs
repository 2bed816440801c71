//! FP16 and INT8 emulation on the CPU: the FP32 reference interpreter, wrapped so each node
//! computes as its [`PrecisionPlan`] entry says. This is the numerical contract the CUDA
//! kernels must match (see `docs/engine.md`, "Reduced precision"):
//! - **FP16 node**: every float32 input (activations *and* weights/bias) is rounded to IEEE
//!   half (round to nearest even, [`half::f16::from_f32`]); the FP32 kernel then runs, so GEMMs
//!   accumulate in FP32 and the bias and epilogue are FP32.
//! - **FP16 `Attention`** (two GEMMs around a softmax): `q`, `k`, `v` rounded to half, the
//!   additive mask kept in FP32; `q · k'` accumulates in FP32 and the scale, mask and softmax
//!   are FP32; the probabilities are rounded to half before `P · V`, which accumulates in
//!   FP32 (what a fused kernel feeding FP16 tensor cores computes).
//! - **INT8 `Gemm`**: `A` quantised per tensor with the calibrated scale `s_a`, `op(B)`
//!   quantised per output channel (`s_w[j]`, [`quant::QuantizedWeights`]), int8 × int8 → int32
//!   accumulation, then `y = act(acc · d[j] + beta · C)` with `d[j] = alpha · s_a · s_w[j]`
//!   computed once in FP32.
//! - a node with `output_f16` rounds its float outputs to half before anyone reads them
//!   (the engine stores them in FP16 buffers).

use std::collections::HashMap;

use half::f16;

use super::calibrate::CalibrationTable;
use super::ir::{Data, Graph, Node, Op, Tensor};
use super::precision::{Precision, PrecisionPlan};
use super::quant::{self, QuantizedWeights};
use super::{reference, EngineError};

/// One INT8 GEMM prepared at build time: its weights and its activation scale.
#[derive(Debug, Clone)]
struct Int8Gemm {
    weights: QuantizedWeights,
    act_scale: f32,
}

/// A graph with its precision plan, weights quantised, ready to run many batches.
#[derive(Debug, Clone)]
pub struct Emulator<'g> {
    graph: &'g Graph,
    plan: PrecisionPlan,
    int8: HashMap<usize, Int8Gemm>,
}

impl<'g> Emulator<'g> {
    /// Prepares `graph` under `plan`; INT8 GEMMs need their activation's scale in
    /// `calibration` (an error names the missing value and node).
    pub fn new(
        graph: &'g Graph,
        plan: PrecisionPlan,
        calibration: Option<&CalibrationTable>,
    ) -> Result<Self, EngineError> {
        if plan.nodes.len() != graph.nodes.len() {
            return Err(EngineError::Model(format!(
                "precision plan has {} nodes, the graph {}",
                plan.nodes.len(),
                graph.nodes.len()
            )));
        }
        let mut int8 = HashMap::new();
        for (i, (node, p)) in graph.nodes.iter().zip(&plan.nodes).enumerate() {
            if p.compute != Precision::Int8 {
                continue;
            }
            let invalid = |reason: String| EngineError::InvalidNode {
                op: node.op.name().into(),
                node: node.name.clone(),
                reason,
            };
            let Op::Gemm(g) = &node.op else {
                return Err(invalid("only Gemm runs in INT8".into()));
            };
            let b = node
                .inputs
                .get(1)
                .and_then(|b| graph.constants.get(b))
                .filter(|t| t.shape.len() == 2)
                .ok_or_else(|| invalid("INT8 needs constant 2-D weights".into()))?;
            let w = b
                .as_f32s()
                .ok_or_else(|| invalid("INT8 weights must be float32".into()))?;
            let (k, n) = if g.trans_b {
                (b.shape[1], b.shape[0])
            } else {
                (b.shape[0], b.shape[1])
            };
            let kn: Vec<f32> = if g.trans_b {
                (0..k * n).map(|i| w[(i % n) * k + i / n]).collect()
            } else {
                w.to_vec()
            };
            // 127 · 127 · K must fit the int32 accumulator.
            if k > (i32::MAX / (127 * 127)) as usize {
                return Err(invalid(format!(
                    "inner dimension {k} can overflow int32 accumulation"
                )));
            }
            let weights = QuantizedWeights::from_f32(&kn, k, n).map_err(invalid)?;
            let a = node.inputs.first().map_or("", |&a| &graph.values[a].name);
            let act_scale = calibration.and_then(|t| t.scale(a)).ok_or_else(|| {
                invalid(format!(
                    "INT8 needs a calibrated range for activation '{a}' (none in the calibration table)"
                ))
            })?;
            int8.insert(i, Int8Gemm { weights, act_scale });
        }
        Ok(Emulator { graph, plan, int8 })
    }

    pub fn plan(&self) -> &PrecisionPlan {
        &self.plan
    }

    /// Runs the graph on named inputs, each node at its planned precision.
    pub fn run(&self, inputs: &[(&str, Tensor)]) -> Result<Vec<Tensor>, EngineError> {
        reference::run_with(self.graph, inputs, |i, node, args| {
            let p = self.plan.nodes[i];
            let mut outs = match p.compute {
                Precision::Fp32 => reference::eval(&node.op, args)?,
                Precision::Fp16 => match &node.op {
                    Op::Attention {
                        scale,
                        k_transposed,
                    } => vec![attention_f16(*scale, *k_transposed, args)?],
                    _ => {
                        let rounded: Vec<Tensor> = args.iter().map(|t| round_f16(t)).collect();
                        let refs: Vec<&Tensor> = rounded.iter().collect();
                        reference::eval(&node.op, &refs)?
                    }
                },
                Precision::Int8 => {
                    let q = self
                        .int8
                        .get(&i)
                        .ok_or_else(|| "INT8 node was not prepared".to_string())?;
                    vec![gemm_int8(node, args, q)?]
                }
            };
            if p.output_f16 {
                for t in &mut outs {
                    *t = round_f16(t);
                }
            }
            Ok(outs)
        })
    }
}

/// `t` with float32 elements rounded to the nearest IEEE half (other dtypes unchanged).
pub fn round_f16(t: &Tensor) -> Tensor {
    match &t.data {
        Data::F32(v) => Tensor {
            shape: t.shape.clone(),
            data: Data::F32(v.iter().map(|&x| f16::from_f32(x).to_f32()).collect()),
        },
        _ => t.clone(),
    }
}

/// The FP16 `Attention` of the contract in the module docs: `q`, `k`, `v` rounded to half,
/// the mask kept in FP32, scores, scale, mask and softmax in FP32, the probabilities rounded
/// to half for the FP32-accumulated `P · V`.
fn attention_f16(scale: f32, k_transposed: bool, args: &[&Tensor]) -> Result<Tensor, String> {
    let [q, k, v, rest @ ..] = args else {
        return Err(format!(
            "Attention needs q, k, v; has {} inputs",
            args.len()
        ));
    };
    let (q, k, v) = (round_f16(q), round_f16(k), round_f16(v));
    reference::attention(
        scale,
        k_transposed,
        &q,
        &k,
        &v,
        rest.first().copied(),
        &|p| f16::from_f32(p).to_f32(),
    )
}

/// The INT8 `Gemm` of the contract in the module docs.
fn gemm_int8(node: &Node, args: &[&Tensor], q: &Int8Gemm) -> Result<Tensor, String> {
    let Op::Gemm(g) = &node.op else {
        return Err("only Gemm runs in INT8".into());
    };
    let a = args.first().ok_or("Gemm needs A")?;
    let x = a.as_f32s().ok_or("A must be float32")?;
    let (k, n) = (q.weights.k, q.weights.n);
    if a.shape.is_empty() || (g.trans_a && a.shape.len() != 2) {
        return Err(format!("unsupported rank of A {:?}", a.shape));
    }
    let (m, ka) = if g.trans_a {
        (a.shape[1], a.shape[0])
    } else {
        let ka = a.shape[a.shape.len() - 1];
        (a.len() / ka.max(1), ka)
    };
    if ka != k {
        return Err(format!(
            "inner dims differ: A {:?}, weights K = {k}",
            a.shape
        ));
    }
    let xq: Vec<i8> = (0..m * k)
        .map(|i| {
            let v = if g.trans_a {
                x[(i % k) * m + i / k]
            } else {
                x[i]
            };
            quant::quantize(v, q.act_scale)
        })
        .collect();
    let acc = quant::gemm_i8(&xq, m, &q.weights);
    let mut shape: Vec<usize> = if g.trans_a {
        vec![m]
    } else {
        a.shape[..a.shape.len() - 1].to_vec()
    };
    shape.push(n);
    let bias = match args.get(2) {
        None => None,
        Some(c) => {
            let full = reference::broadcast(&shape, &c.shape)?;
            if full != shape {
                return Err(format!("C {:?} does not broadcast to {shape:?}", c.shape));
            }
            let cv = c.as_f32s().ok_or("C must be float32")?;
            Some((cv, reference::broadcast_map(&shape, &c.shape)))
        }
    };
    let d: Vec<f32> = q
        .weights
        .scales
        .iter()
        .map(|&sw| g.alpha * q.act_scale * sw)
        .collect();
    let out = acc
        .iter()
        .enumerate()
        .map(|(i, &acc)| {
            let mut v = acc as f32 * d[i % n];
            if let Some((cv, map)) = &bias {
                v += g.beta * cv[map[i]];
            }
            reference::activate(g.activation, v)
        })
        .collect();
    Tensor::f32(shape, out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::calibrate::{calibrate, Method};
    use crate::engine::ir::{Activation, DType, Dim, Gemm};
    use crate::engine::precision::assign;

    /// x[batch, 8] → Gemm(W[8, 3] or Wᵀ, bias, Relu).
    fn linear(trans_b: bool) -> (Graph, Vec<f32>) {
        let (k, n) = (8usize, 3usize);
        let w: Vec<f32> = (0..k * n)
            .map(|i| ((i * 7 % 11) as f32 - 5.0) / 4.0)
            .collect();
        let mut g = Graph::default();
        let x = g.add_value(
            "x",
            DType::F32,
            Some(vec![Dim::Sym("batch".into()), Dim::Known(k)]),
        );
        g.inputs.push(x);
        let wt = if trans_b {
            let t: Vec<f32> = (0..n * k).map(|i| w[(i % k) * n + i / k]).collect();
            Tensor::f32(vec![n, k], t).unwrap()
        } else {
            Tensor::f32(vec![k, n], w.clone()).unwrap()
        };
        let wid = g.add_constant("w", wt);
        let b = g.add_constant("b", Tensor::f32(vec![n], vec![0.25, -0.5, 1.0]).unwrap());
        let y = g
            .add_node(
                "fc",
                Op::Gemm(Gemm {
                    trans_a: false,
                    trans_b,
                    alpha: 1.0,
                    beta: 1.0,
                    activation: Activation::Relu,
                }),
                vec![x, wid, b],
                vec!["y".into()],
            )
            .unwrap()[0];
        g.outputs.push(y);
        (g, w)
    }

    fn input(rows: usize) -> Tensor {
        let v: Vec<f32> = (0..rows * 8)
            .map(|i| ((i * 13 % 17) as f32 - 8.0) / 3.0)
            .collect();
        Tensor::f32(vec![rows, 8], v).unwrap()
    }

    #[test]
    fn fp16_rounds_inputs_and_stores_fp32_graph_outputs() {
        let (g, _) = linear(false);
        let plan = assign(&g, Precision::Fp16);
        let emu = Emulator::new(&g, plan, None).unwrap();
        let x = input(4);
        let got = emu.run(&[("x", x.clone())]).unwrap();
        // Same as the FP32 reference on half-rounded x, w and bias (all exactly
        // representable here except x/3), output not rounded (a graph output).
        let mut h = g.clone();
        for t in h.constants.values_mut() {
            *t = round_f16(t);
        }
        let want = reference::run(&h, &[("x", round_f16(&x))]).unwrap();
        assert_eq!(got, want);
        let fp32 = reference::run(&g, &[("x", x)]).unwrap();
        assert_ne!(got, fp32, "x/3 is not exact in half");
    }

    #[test]
    fn int8_matches_quant_linear_for_both_weight_layouts() {
        for trans_b in [false, true] {
            let (g, w) = linear(trans_b);
            let plan = assign(&g, Precision::Int8);
            let x = input(5);
            let table = calibrate(&g, &plan, &[vec![("x", x.clone())]], Method::Max).unwrap();
            let emu = Emulator::new(&g, plan, Some(&table)).unwrap();
            let got = emu.run(&[("x", x.clone())]).unwrap();
            let qw = QuantizedWeights::from_f32(&w, 8, 3).unwrap();
            let sa = table.scale("x").unwrap();
            let want: Vec<f32> =
                quant::linear_i8(x.as_f32s().unwrap(), 5, sa, &qw, Some(&[0.25, -0.5, 1.0]))
                    .unwrap()
                    .into_iter()
                    .map(|v| v.max(0.0))
                    .collect();
            let got = got[0].as_f32s().unwrap();
            for (a, b) in got.iter().zip(&want) {
                assert!((a - b).abs() <= 1e-6 * b.abs().max(1.0), "{a} vs {b}");
            }
            // And close to FP32.
            let fp32 = reference::run(&g, &[("x", x)]).unwrap();
            for (a, b) in got.iter().zip(fp32[0].as_f32s().unwrap()) {
                assert!((a - b).abs() < 0.1, "{a} vs {b}");
            }
        }
    }

    #[test]
    fn bad_inputs_and_plans_are_errors_not_panics() {
        let (g, _) = linear(false);
        let plan = assign(&g, Precision::Int8);
        let table = calibrate(
            &g,
            &plan,
            &[vec![("x", input(6))]],
            Method::Percentile(50.0),
        )
        .unwrap();
        assert_eq!(table.method, "percentile:50");
        let r = table.tensors["x"];
        assert!(r.amax > 0.0 && r.amax < r.max_abs, "{r:?}");
        assert!(calibrate(&g, &plan, &[], Method::Percentile(0.0)).is_err());
        let emu = Emulator::new(&g, plan, Some(&table)).unwrap();
        let wrong = Tensor::f32(vec![2, 7], vec![0.0; 14]).unwrap();
        assert!(emu.run(&[("x", wrong)]).is_err());
        assert!(emu.run(&[]).is_err());
        let empty = PrecisionPlan {
            mode: Precision::Fp16,
            nodes: Vec::new(),
        };
        assert!(Emulator::new(&g, empty, None).is_err());
    }

    #[test]
    fn int8_without_calibration_names_the_activation() {
        let (g, _) = linear(false);
        let err = Emulator::new(&g, assign(&g, Precision::Int8), None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("'x'") && err.contains("fc"), "{err}");
    }
}
