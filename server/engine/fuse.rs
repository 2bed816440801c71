//! Fusion of `MatMul(A, W) + bias [→ Relu | Sigmoid | Tanh | Gelu]` into one [`Op::Gemm`] with
//! an epilogue, the shape cuBLASLt runs as one call (bias and activation epilogues), after
//! [`fuse_erf_gelu`] has turned GELUs written out with Erf into `Gelu` nodes.
//!
//! The pattern matches only when the result is the same graph, whatever the inputs:
//! `W` is a 2-D float32 constant, `bias` a float32 constant of `N` elements laid out along the
//! last axis (`[N]`, `[1, N]`, ...), `A` has rank >= 2, and each intermediate value has exactly
//! one reader and is not a graph output.

use std::collections::HashMap;

use super::ir::{Activation, BinaryOp, DType, Gemm, Graph, Op, UnaryOp, ValueId};
use super::EngineError;

/// Applies the fusion until nothing matches; returns how many GEMMs were formed.
pub fn fuse_gemm(graph: &mut Graph) -> Result<usize, EngineError> {
    let mut fused = 0;
    while let Some(m) = find_match(graph) {
        let activation = m.activation.map_or(Activation::None, |(_, a)| a);
        let last = m.activation.map_or(m.add, |(k, _)| k);
        let out = graph.nodes[last].outputs[0];
        let mm = &mut graph.nodes[m.matmul];
        mm.op = Op::Gemm(Gemm {
            trans_a: false,
            trans_b: false,
            alpha: 1.0,
            beta: 1.0,
            activation,
        });
        mm.inputs.push(m.bias);
        mm.outputs = vec![out];
        let mut remove = vec![m.add];
        if let Some((k, _)) = m.activation {
            remove.push(k);
        }
        remove.sort_unstable();
        for r in remove.into_iter().rev() {
            graph.nodes.remove(r);
        }
        fused += 1;
    }
    Ok(fused)
}

/// Rewrites GELU written out with Erf, `x · 0.5 · (1 + erf(x / √2))` (as PyTorch exports it,
/// with the `· 0.5` first or last, and `/ √2` or `· (1/√2)`), into one `Gelu` node, so that
/// [`fuse_gemm`] can then take it as a GEMM epilogue. Returns how many were rewritten.
pub fn fuse_erf_gelu(graph: &mut Graph) -> Result<usize, EngineError> {
    let mut fused = 0;
    while let Some(m) = find_gelu(graph) {
        let last = *m.nodes.iter().max().unwrap_or(&0);
        let out = graph.nodes[last].outputs[0];
        let name = graph.nodes[last].name.clone();
        // The Gelu takes the place of the pattern's last node: x is defined before it and
        // every reader of `out` comes after it.
        graph.nodes[last] = super::ir::Node {
            name,
            op: Op::Unary(UnaryOp::Gelu),
            inputs: vec![m.x],
            outputs: vec![out],
        };
        let mut remove: Vec<usize> = m.nodes.into_iter().filter(|&i| i != last).collect();
        remove.sort_unstable();
        for r in remove.into_iter().rev() {
            graph.nodes.remove(r);
        }
        fused += 1;
    }
    Ok(fused)
}

struct GeluMatch {
    x: ValueId,
    /// Every node of the pattern.
    nodes: Vec<usize>,
}

/// Whether `v` is a float32 scalar constant within 1e-5 (relative) of `want`.
fn scalar_near(graph: &Graph, v: ValueId, want: f32) -> bool {
    graph
        .constants
        .get(&v)
        .and_then(|t| t.as_f32s())
        .is_some_and(|s| s.len() == 1 && (s[0] - want).abs() <= 1e-5 * want.abs())
}

/// The input of binary `node` that is not `v`, if `v` is one of its inputs.
fn other_input(node: &super::ir::Node, v: ValueId) -> Option<ValueId> {
    match node.inputs.as_slice() {
        [a, b] if *a == v => Some(*b),
        [a, b] if *b == v => Some(*a),
        _ => None,
    }
}

fn find_gelu(graph: &Graph) -> Option<GeluMatch> {
    let uses = graph.use_counts();
    let is = |i: usize, op: Op| graph.nodes[i].op == op;
    for (i, node) in graph.nodes.iter().enumerate() {
        // x / √2 or x · (1/√2)
        let x = match (&node.op, node.inputs.as_slice()) {
            (Op::Binary(BinaryOp::Div), [x, c])
                if scalar_near(graph, *c, std::f32::consts::SQRT_2) =>
            {
                *x
            }
            (Op::Binary(BinaryOp::Mul), [x, c])
                if scalar_near(graph, *c, std::f32::consts::FRAC_1_SQRT_2) =>
            {
                *x
            }
            (Op::Binary(BinaryOp::Mul), [c, x])
                if scalar_near(graph, *c, std::f32::consts::FRAC_1_SQRT_2) =>
            {
                *x
            }
            _ => continue,
        };
        if uses.get(&x) != Some(&2) || graph.outputs.contains(&x) {
            continue;
        }
        let Some(e) = sole_reader(graph, &uses, node.outputs[0]) else {
            continue;
        };
        if !is(e, Op::Unary(UnaryOp::Erf)) {
            continue;
        }
        let Some(a) = sole_reader(graph, &uses, graph.nodes[e].outputs[0]) else {
            continue;
        };
        let erf_out = graph.nodes[e].outputs[0];
        if !is(a, Op::Binary(BinaryOp::Add))
            || !other_input(&graph.nodes[a], erf_out).is_some_and(|c| scalar_near(graph, c, 1.0))
        {
            continue;
        }
        let Some(m) = sole_reader(graph, &uses, graph.nodes[a].outputs[0]) else {
            continue;
        };
        if !is(m, Op::Binary(BinaryOp::Mul)) {
            continue;
        }
        let Some(other) = other_input(&graph.nodes[m], graph.nodes[a].outputs[0]) else {
            continue;
        };
        if other == x {
            // (x · (1 + erf)) · 0.5
            let Some(h) = sole_reader(graph, &uses, graph.nodes[m].outputs[0]) else {
                continue;
            };
            if is(h, Op::Binary(BinaryOp::Mul))
                && other_input(&graph.nodes[h], graph.nodes[m].outputs[0])
                    .is_some_and(|c| scalar_near(graph, c, 0.5))
            {
                return Some(GeluMatch {
                    x,
                    nodes: vec![i, e, a, m, h],
                });
            }
        } else {
            // (x · 0.5) · (1 + erf)
            let Some(h) = graph.nodes.iter().position(|n| n.outputs.contains(&other)) else {
                continue;
            };
            if is(h, Op::Binary(BinaryOp::Mul))
                && other_input(&graph.nodes[h], x).is_some_and(|c| scalar_near(graph, c, 0.5))
                && sole_reader(graph, &uses, other) == Some(m)
            {
                return Some(GeluMatch {
                    x,
                    nodes: vec![i, e, a, h, m],
                });
            }
        }
    }
    None
}

struct Match {
    matmul: usize,
    add: usize,
    bias: ValueId,
    activation: Option<(usize, Activation)>,
}

/// The single node reading `v`, if `v` has exactly one reader and is not a graph output.
fn sole_reader(graph: &Graph, uses: &HashMap<ValueId, usize>, v: ValueId) -> Option<usize> {
    if uses.get(&v) != Some(&1) || graph.outputs.contains(&v) {
        return None;
    }
    graph.nodes.iter().position(|n| n.inputs.contains(&v))
}

fn find_match(graph: &Graph) -> Option<Match> {
    let uses = graph.use_counts();
    for (i, node) in graph.nodes.iter().enumerate() {
        if node.op != Op::MatMul {
            continue;
        }
        let (a, w) = (node.inputs[0], node.inputs[1]);
        let Some(wt) = graph.constants.get(&w) else {
            continue;
        };
        if wt.dtype() != DType::F32 || wt.shape.len() != 2 {
            continue;
        }
        let n = wt.shape[1];
        if graph.values[a].shape.as_ref().is_none_or(|s| s.len() < 2) {
            continue;
        }
        let Some(j) = sole_reader(graph, &uses, node.outputs[0]) else {
            continue;
        };
        let add = &graph.nodes[j];
        if add.op != Op::Binary(BinaryOp::Add) {
            continue;
        }
        let bias = if add.inputs[0] == node.outputs[0] {
            add.inputs[1]
        } else {
            add.inputs[0]
        };
        let Some(bt) = graph.constants.get(&bias) else {
            continue;
        };
        let along_last = bt.shape.last() == Some(&n) && bt.len() == n;
        let a_rank = graph.values[a].shape.as_ref().map_or(0, Vec::len);
        if bt.dtype() != DType::F32 || !along_last || bt.shape.len() > a_rank {
            continue;
        }
        let activation = sole_reader(graph, &uses, add.outputs[0]).and_then(|k| {
            let act = match graph.nodes[k].op {
                Op::Unary(UnaryOp::Relu) => Activation::Relu,
                Op::Unary(UnaryOp::Sigmoid) => Activation::Sigmoid,
                Op::Unary(UnaryOp::Tanh) => Activation::Tanh,
                Op::Unary(UnaryOp::Gelu) => Activation::Gelu,
                _ => return None,
            };
            Some((k, act))
        });
        return Some(Match {
            matmul: i,
            add: j,
            bias,
            activation,
        });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::infer::infer_all;
    use crate::engine::ir::{Dim, Tensor};
    use crate::engine::reference;

    /// `x[batch, 3] · W[3, 2] + b → act`, `b` a `[1, 2]` constant or a `[2]` graph input.
    fn mlp(act: Option<UnaryOp>, bias_const: bool, mm_is_output: bool) -> Graph {
        let mut g = Graph::default();
        let x = g.add_value(
            "x",
            DType::F32,
            Some(vec![Dim::Sym("batch".into()), Dim::Known(3)]),
        );
        g.inputs.push(x);
        let w = g.add_constant(
            "w",
            Tensor::f32(vec![3, 2], vec![1.0, -1.0, 0.5, 2.0, -0.25, 0.0]).unwrap(),
        );
        let b = if bias_const {
            g.add_constant("b", Tensor::f32(vec![1, 2], vec![0.1, -3.0]).unwrap())
        } else {
            let b = g.add_value("b", DType::F32, Some(vec![Dim::Known(2)]));
            g.inputs.push(b);
            b
        };
        let mm = g
            .add_node("mm", Op::MatMul, vec![x, w], vec!["mm".into()])
            .unwrap()[0];
        let mut y = g
            .add_node(
                "add",
                Op::Binary(BinaryOp::Add),
                vec![b, mm],
                vec!["add".into()],
            )
            .unwrap()[0];
        if let Some(u) = act {
            y = g
                .add_node("act", Op::Unary(u), vec![y], vec!["y".into()])
                .unwrap()[0];
        }
        g.outputs.push(y);
        if mm_is_output {
            g.outputs.push(mm);
        }
        g
    }

    fn inputs() -> Vec<(&'static str, Tensor)> {
        vec![
            (
                "x",
                Tensor::f32(vec![2, 3], vec![1.0, 2.0, 3.0, -4.0, 0.5, 6.0]).unwrap(),
            ),
            ("b", Tensor::f32(vec![2], vec![0.1, -3.0]).unwrap()),
        ]
    }

    fn run(g: &Graph) -> Vec<Tensor> {
        let names: Vec<String> = g.inputs.iter().map(|&i| g.values[i].name.clone()).collect();
        let ins: Vec<(&str, Tensor)> = inputs()
            .into_iter()
            .filter(|(n, _)| names.iter().any(|m| m == n))
            .collect();
        reference::run(g, &ins).unwrap()
    }

    #[test]
    fn matmul_add_activation_becomes_one_gemm() {
        for (u, a) in [
            (UnaryOp::Relu, Activation::Relu),
            (UnaryOp::Sigmoid, Activation::Sigmoid),
            (UnaryOp::Tanh, Activation::Tanh),
            (UnaryOp::Gelu, Activation::Gelu),
        ] {
            let mut g = mlp(Some(u), true, false);
            let before = run(&g);
            assert_eq!(fuse_gemm(&mut g).unwrap(), 1);
            assert_eq!(g.nodes.len(), 1);
            let Op::Gemm(gemm) = &g.nodes[0].op else {
                panic!("not a Gemm: {:?}", g.nodes[0].op)
            };
            assert_eq!(gemm.activation, a);
            assert_eq!(g.nodes[0].outputs, g.outputs);
            infer_all(&mut g).unwrap();
            assert_eq!(
                g.values[g.outputs[0]].shape,
                Some(vec![Dim::Sym("batch".into()), Dim::Known(2)])
            );
            let after = run(&g);
            for (x, y) in before[0]
                .as_f32s()
                .unwrap()
                .iter()
                .zip(after[0].as_f32s().unwrap())
            {
                assert!((x - y).abs() < 1e-6, "{u:?}: {x} vs {y}");
            }
        }
    }

    #[test]
    fn matmul_add_without_activation_fuses_bias_only() {
        let mut g = mlp(None, true, false);
        let before = run(&g);
        assert_eq!(fuse_gemm(&mut g).unwrap(), 1);
        assert!(matches!(
            g.nodes[0].op,
            Op::Gemm(Gemm {
                activation: Activation::None,
                ..
            })
        ));
        assert_eq!(before, run(&g));
    }

    /// `gelu(x · W + b)` with the GELU written out with Erf; `half_first` puts `· 0.5` first.
    fn erf_gelu(half_first: bool) -> Graph {
        let mut g = mlp(None, true, false);
        let h = g.outputs.pop().unwrap();
        let c = |g: &mut Graph, name: &str, v: f32| {
            g.add_constant(name, Tensor::f32(vec![], vec![v]).unwrap())
        };
        let sqrt2 = c(&mut g, "sqrt2", std::f32::consts::SQRT_2);
        let one = c(&mut g, "one", 1.0);
        let half = c(&mut g, "half", 0.5);
        let bin = |g: &mut Graph, op, a, b, name: &str| {
            g.add_node(name, Op::Binary(op), vec![a, b], vec![name.into()])
                .unwrap()[0]
        };
        let d = bin(&mut g, BinaryOp::Div, h, sqrt2, "d");
        let e = g
            .add_node("e", Op::Unary(UnaryOp::Erf), vec![d], vec!["e".into()])
            .unwrap()[0];
        let a = bin(&mut g, BinaryOp::Add, one, e, "a");
        let y = if half_first {
            let hx = bin(&mut g, BinaryOp::Mul, h, half, "hx");
            bin(&mut g, BinaryOp::Mul, hx, a, "y")
        } else {
            let m = bin(&mut g, BinaryOp::Mul, h, a, "m");
            bin(&mut g, BinaryOp::Mul, half, m, "y")
        };
        g.outputs.push(y);
        g
    }

    #[test]
    fn gelu_written_with_erf_becomes_the_gemm_epilogue() {
        for half_first in [false, true] {
            let mut g = erf_gelu(half_first);
            let before = run(&g);
            assert_eq!(
                fuse_erf_gelu(&mut g).unwrap(),
                1,
                "half_first = {half_first}"
            );
            assert_eq!(fuse_gemm(&mut g).unwrap(), 1);
            assert_eq!(g.nodes.len(), 1, "{:?}", g.op_counts());
            assert!(matches!(
                g.nodes[0].op,
                Op::Gemm(Gemm {
                    activation: Activation::Gelu,
                    ..
                })
            ));
            let after = run(&g);
            for (x, y) in before[0]
                .as_f32s()
                .unwrap()
                .iter()
                .zip(after[0].as_f32s().unwrap())
            {
                assert!((x - y).abs() < 1e-6, "{x} vs {y}");
            }
        }
    }

    #[test]
    fn erf_pattern_with_a_wrong_constant_is_left_alone() {
        let mut g = erf_gelu(false);
        let half = g.find("half").unwrap();
        g.constants
            .insert(half, Tensor::f32(vec![], vec![0.4]).unwrap());
        assert_eq!(fuse_erf_gelu(&mut g).unwrap(), 0);
        assert_eq!(g.op_counts().get("Erf"), Some(&1));
    }

    #[test]
    fn no_fusion_when_bias_is_not_constant() {
        let mut g = mlp(Some(UnaryOp::Relu), false, false);
        assert_eq!(fuse_gemm(&mut g).unwrap(), 0);
        assert_eq!(g.op_counts().get("MatMul"), Some(&1));
    }

    #[test]
    fn no_fusion_when_matmul_result_is_also_read_elsewhere() {
        let mut g = mlp(Some(UnaryOp::Relu), true, true);
        let before = run(&g);
        assert_eq!(fuse_gemm(&mut g).unwrap(), 0);
        assert_eq!(g.nodes.len(), 3);
        assert_eq!(before, run(&g));
    }

    #[test]
    fn activation_not_fused_when_add_result_is_a_graph_output() {
        let mut g = mlp(Some(UnaryOp::Relu), true, false);
        let add_out = g.nodes[1].outputs[0];
        g.outputs.push(add_out);
        let before = run(&g);
        assert_eq!(fuse_gemm(&mut g).unwrap(), 1);
        assert_eq!(g.op_counts().get("Relu"), Some(&1));
        assert_eq!(before, run(&g));
    }
}
