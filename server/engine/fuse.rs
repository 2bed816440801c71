//! Fusion of `MatMul(A, W) + bias [→ Relu | Sigmoid | Tanh | Gelu]` into one [`Op::Gemm`] with
//! an epilogue, the shape cuBLASLt runs as one call (bias and activation epilogues), after
//! [`fuse_erf_gelu`] has turned GELUs written out with Erf into `Gelu` nodes.
//!
//! The pattern matches only when the result is the same graph, whatever the inputs:
//! `W` is a 2-D float32 constant, `bias` a float32 constant of `N` elements laid out along the
//! last axis (`[N]`, `[1, N]`, ...), `A` has rank >= 2, and each intermediate value has exactly
//! one reader and is not a graph output.

use std::collections::HashMap;

use super::ir::{Activation, BinaryOp, DType, Dim, Gemm, Graph, Op, Shape, UnaryOp, ValueId};
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

/// Fuses scaled dot-product attention into one [`Op::Attention`]:
/// `MatMul(q, k) [→ Div(c) | Mul(c)] [→ Add(mask)] → Softmax(last axis) → MatMul(·, v)`.
///
/// - The scale is the scalar float32 constant between the first MatMul and the Softmax:
///   `Div` by `c` gives `scale = 1/c`, `Mul` by `c` (either order) `scale = c`, none `1`.
///   (Scales applied to `q` and `k` before the MatMul, as SDPA exports do, stay as they are.)
/// - `k` is taken as the MatMul's operand (`[B, H, D, Sk]`, `k_transposed = true`), unless
///   that operand is a `Transpose(perm [0, 1, 3, 2])` read only here: then the Transpose is
///   absorbed and its input (`[B, H, Sk, D]`) passed with `k_transposed = false`.
/// - The mask is the other operand of the `Add` (either order), a float32 value whose shape
///   broadcasts to the scores' `[B, H, Sq, Sk]` without growing it. A mask written
///   `Expand(m, Shape(scores))` (the scores' own shape, read only for that) is replaced by `m`,
///   which broadcasts to the same sum, so the Shape does not count as a second reader.
/// - The Softmax runs over the last axis (`axis` -1 or 3; the opset < 13 2-D coercion at
///   axis 3 is the same thing on rank 4).
/// - `q`, `k`, `v` have rank 4 with the same `B` and `H` (equal known sizes or equal symbols:
///   no broadcasting); every intermediate has exactly one reader and is not a graph output.
///
/// Returns how many attentions were fused.
pub fn fuse_attention(graph: &mut Graph) -> Result<usize, EngineError> {
    let mut fused = 0;
    while let Some(m) = find_attention(graph) {
        let out = graph.nodes[m.last].outputs[0];
        let name = graph.nodes[m.last].name.clone();
        let mut inputs = vec![m.q, m.k, m.v];
        inputs.extend(m.mask);
        // The Attention takes the place of the final MatMul: its inputs are all defined
        // before the pattern's nodes that read them, so before it.
        graph.nodes[m.last] = super::ir::Node {
            name,
            op: Op::Attention {
                scale: m.scale,
                k_transposed: m.k_transposed,
            },
            inputs,
            outputs: vec![out],
        };
        let mut remove = m.others;
        remove.sort_unstable();
        for r in remove.into_iter().rev() {
            graph.nodes.remove(r);
        }
        fused += 1;
    }
    Ok(fused)
}

/// Fuses `LayerNorm(Add(x, residual), scale[, bias])` into one [`Op::AddLayerNorm`] when the
/// sum is read only by the LayerNorm (as its input 0) and `x` and `residual` have the same
/// shape by shape inference (equal known sizes or equal symbols; a broadcasting Add is left
/// alone). Run after [`fuse_gemm`]: the Add's operands are then the GEMM outputs, and the
/// residual add stays out of the GEMM epilogue. Returns how many were fused.
pub fn fuse_add_layer_norm(graph: &mut Graph) -> Result<usize, EngineError> {
    let mut fused = 0;
    while let Some((add, ln)) = find_add_layer_norm(graph) {
        let Op::LayerNorm { axis, epsilon } = graph.nodes[ln].op else {
            break;
        };
        let (x, residual) = (graph.nodes[add].inputs[0], graph.nodes[add].inputs[1]);
        let node = &mut graph.nodes[ln];
        node.op = Op::AddLayerNorm { axis, epsilon };
        let mut inputs = vec![x, residual];
        inputs.extend_from_slice(node.inputs.get(1..).unwrap_or_default());
        node.inputs = inputs;
        graph.nodes.remove(add);
        fused += 1;
    }
    Ok(fused)
}

fn find_add_layer_norm(graph: &Graph) -> Option<(usize, usize)> {
    let uses = graph.use_counts();
    for (i, node) in graph.nodes.iter().enumerate() {
        if node.op != Op::Binary(BinaryOp::Add) || node.inputs.len() != 2 {
            continue;
        }
        let (a, b) = (&graph.values[node.inputs[0]], &graph.values[node.inputs[1]]);
        if a.dtype != DType::F32 || b.dtype != DType::F32 || !same_shape(&a.shape, &b.shape) {
            continue;
        }
        let Some(j) = sole_reader(graph, &uses, node.outputs[0]) else {
            continue;
        };
        let ln = &graph.nodes[j];
        if matches!(ln.op, Op::LayerNorm { .. }) && ln.inputs.first() == Some(&node.outputs[0]) {
            return Some((i, j));
        }
    }
    None
}

/// Whether two dims are provably the same size: equal known sizes or equal symbols.
fn same_dim(a: &Dim, b: &Dim) -> bool {
    a == b && *a != Dim::Unknown
}

/// Whether two inferred shapes are provably equal.
fn same_shape(a: &Option<Shape>, b: &Option<Shape>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => a.len() == b.len() && a.iter().zip(b).all(|(x, y)| same_dim(x, y)),
        _ => false,
    }
}

struct AttentionMatch {
    q: ValueId,
    k: ValueId,
    v: ValueId,
    mask: Option<ValueId>,
    scale: f32,
    k_transposed: bool,
    /// The final `MatMul(probs, v)`, replaced by the Attention.
    last: usize,
    /// The pattern's other nodes, removed.
    others: Vec<usize>,
}

/// The nodes reading `v` (once per input slot), or `None` if `v` is a graph output.
fn readers(graph: &Graph, v: ValueId) -> Option<Vec<usize>> {
    if graph.outputs.contains(&v) {
        return None;
    }
    Some(
        graph
            .nodes
            .iter()
            .enumerate()
            .flat_map(|(i, n)| n.inputs.iter().filter(|&&x| x == v).map(move |_| i))
            .collect(),
    )
}

/// The float32 value of `v` if it is a one-element constant of rank <= 4 (broadcasting it
/// over rank-4 scores leaves their shape alone).
fn scalar_constant(graph: &Graph, v: ValueId) -> Option<f32> {
    let t = graph.constants.get(&v)?;
    match t.as_f32s()? {
        [c] if t.shape.len() <= 4 => Some(*c),
        _ => None,
    }
}

/// The scale a `Div`/`Mul` node applies to `cur` with a scalar constant, if it is one.
fn scale_of(graph: &Graph, node: &super::ir::Node, cur: ValueId) -> Option<f32> {
    match (&node.op, node.inputs.as_slice()) {
        (Op::Binary(BinaryOp::Div), [x, c]) if *x == cur => {
            let c = scalar_constant(graph, *c)?;
            (c != 0.0 && c.is_finite()).then(|| 1.0 / c)
        }
        (Op::Binary(BinaryOp::Mul), [x, c]) | (Op::Binary(BinaryOp::Mul), [c, x])
            if *x == cur && *c != cur =>
        {
            scalar_constant(graph, *c).filter(|c| c.is_finite())
        }
        _ => None,
    }
}

/// Whether `mask` is a float32 value whose shape broadcasts onto `scores` (rank 4) without
/// changing it: every dim, aligned from the right, is 1 or provably the scores' dim.
fn mask_fits(graph: &Graph, mask: ValueId, scores: &[Dim]) -> bool {
    let m = &graph.values[mask];
    let Some(ms) = &m.shape else {
        return false;
    };
    m.dtype == DType::F32
        && ms.len() <= scores.len()
        && ms
            .iter()
            .rev()
            .zip(scores.iter().rev())
            .all(|(d, s)| *d == Dim::Known(1) || same_dim(d, s))
}

/// The node whose outputs include `v`.
fn producer(graph: &Graph, v: ValueId) -> Option<usize> {
    graph.nodes.iter().position(|n| n.outputs.contains(&v))
}

/// For the two readers of the scores `s`, the `Expand(m, Shape(s))` mask pattern: returns
/// `(add, m, [shape, expand])` when one reader is a full-range `Shape` of `s` read only by an
/// `Expand` whose output is read only by the other reader, an `Add` of `s` and it.
fn expanded_mask(
    graph: &Graph,
    uses: &HashMap<ValueId, usize>,
    s: ValueId,
    two: [usize; 2],
) -> Option<(usize, ValueId, [usize; 2])> {
    for (sh, add) in [(two[0], two[1]), (two[1], two[0])] {
        let shape_node = &graph.nodes[sh];
        let Op::Shape { start, end } = shape_node.op else {
            continue;
        };
        let rank = graph.values[s].shape.as_ref().map_or(0, Vec::len);
        if shape_node.inputs != [s] || super::infer::shape_range(rank, start, end) != (0, rank) {
            continue;
        }
        let Some(ex) = sole_reader(graph, uses, shape_node.outputs[0]) else {
            continue;
        };
        let expand = &graph.nodes[ex];
        if expand.op != Op::Expand || expand.inputs.get(1) != Some(&shape_node.outputs[0]) {
            continue;
        }
        let e = expand.outputs[0];
        if sole_reader(graph, uses, e) != Some(add) {
            continue;
        }
        let a = &graph.nodes[add];
        if a.op == Op::Binary(BinaryOp::Add) && other_input(a, s) == Some(e) {
            return Some((add, expand.inputs[0], [sh, ex]));
        }
    }
    None
}

fn find_attention(graph: &Graph) -> Option<AttentionMatch> {
    let uses = graph.use_counts();
    let rank4 = |v: ValueId| graph.values[v].shape.as_ref().filter(|s| s.len() == 4);
    for (i, node) in graph.nodes.iter().enumerate() {
        if node.op != Op::MatMul {
            continue;
        }
        let [q, kk] = node.inputs[..] else {
            continue;
        };
        let mut others = vec![i];
        let mut cur = node.outputs[0];
        let Some(scores_shape) = rank4(cur) else {
            continue;
        };
        // The next node of the chain: the sole reader of the scores, or the Add of an
        // expanded mask (whose Shape is then the only other reader).
        let next_of = |s: ValueId| match readers(graph, s)?.as_slice() {
            [r] => Some(*r),
            [a, b] => expanded_mask(graph, &uses, s, [*a, *b]).map(|(add, _, _)| add),
            _ => None,
        };
        let Some(mut next) = next_of(cur) else {
            continue;
        };
        // Optional scale.
        let mut scale = 1.0;
        if let Some(c) = scale_of(graph, &graph.nodes[next], cur) {
            if readers(graph, cur).map(|r| r.len()) != Some(1) {
                continue;
            }
            scale = c;
            others.push(next);
            cur = graph.nodes[next].outputs[0];
            let Some(n) = next_of(cur) else {
                continue;
            };
            next = n;
        }
        // Optional additive mask.
        let mut mask = None;
        if graph.nodes[next].op == Op::Binary(BinaryOp::Add) {
            let add = next;
            let m = match readers(graph, cur).as_deref() {
                Some([_]) => other_input(&graph.nodes[add], cur).filter(|&m| m != cur),
                Some(&[a, b]) => match expanded_mask(graph, &uses, cur, [a, b]) {
                    Some((at, m, extra)) if at == add => {
                        others.extend(extra);
                        Some(m)
                    }
                    _ => None,
                },
                _ => None,
            };
            let Some(m) = m.filter(|&m| mask_fits(graph, m, scores_shape)) else {
                continue;
            };
            mask = Some(m);
            others.push(add);
            cur = graph.nodes[add].outputs[0];
            let Some(n) = sole_reader(graph, &uses, cur) else {
                continue;
            };
            next = n;
        }
        // Softmax over the last axis.
        let sm = &graph.nodes[next];
        let Op::Softmax { axis, .. } = sm.op else {
            continue;
        };
        if sm.inputs != [cur] || super::infer::norm_axis(axis, 4).ok() != Some(3) {
            continue;
        }
        others.push(next);
        let probs = sm.outputs[0];
        let Some(last) = sole_reader(graph, &uses, probs) else {
            continue;
        };
        let pv = &graph.nodes[last];
        let (Op::MatMul, &[p, v]) = (&pv.op, pv.inputs.as_slice()) else {
            continue;
        };
        if p != probs || v == probs {
            continue;
        }
        // k as produced, or the input of an absorbed Transpose(perm [0, 1, 3, 2]).
        let (k, k_transposed) = match producer(graph, kk) {
            Some(t)
                if graph.nodes[t].op
                    == (Op::Transpose {
                        perm: Some(vec![0, 1, 3, 2]),
                    })
                    && sole_reader(graph, &uses, kk) == Some(i) =>
            {
                others.push(t);
                (graph.nodes[t].inputs[0], false)
            }
            _ => (kk, true),
        };
        let (Some(qs), Some(ks), Some(vs)) = (rank4(q), rank4(k), rank4(v)) else {
            continue;
        };
        let batch_dims_equal = (0..2).all(|d| same_dim(&qs[d], &ks[d]) && same_dim(&qs[d], &vs[d]));
        if !batch_dims_equal {
            continue;
        }
        return Some(AttentionMatch {
            q,
            k,
            v,
            mask,
            scale,
            k_transposed,
            last,
            others,
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

#[cfg(test)]
mod attention_tests {
    use super::*;
    use crate::engine::infer::infer_all;
    use crate::engine::ir::{Dim, Tensor};
    use crate::engine::reference;

    #[derive(Clone, Copy, PartialEq)]
    enum Scale {
        None,
        Div,
        Mul,
        MulConstantFirst,
        /// Div by a 4-element constant: not a scalar.
        DivByVector,
        /// Div by a graph input: not a constant.
        DivByInput,
    }

    #[derive(Clone, Copy)]
    struct Spec {
        scale: Scale,
        mask: bool,
        /// The mask as `Add(mask, scores)` instead of `Add(scores, mask)`.
        mask_first: bool,
        /// The mask written `Expand(mask, Shape(scores))`, as the tiny encoder does.
        expand_mask: bool,
        /// `k` given as `[B, H, S, D]` and transposed by a `Transpose(perm [0, 1, 3, 2])`.
        k_transpose_node: bool,
        softmax_axis: i64,
        /// The scores are also read by a Relu whose output is a graph output.
        scores_read_twice: bool,
    }

    const BASE: Spec = Spec {
        scale: Scale::Div,
        mask: true,
        mask_first: false,
        expand_mask: false,
        k_transpose_node: false,
        softmax_axis: -1,
        scores_read_twice: false,
    };

    const D: usize = 4;

    fn sym(s: &str) -> Dim {
        Dim::Sym(s.into())
    }

    /// q, v `[batch, 2, seq, 4]`, k `[batch, 2, 4, seq]` (or `[batch, 2, seq, 4]` then
    /// transposed), mask `[batch, 1, 1, seq]` → attention as torch exports it.
    fn graph(spec: Spec) -> Graph {
        let mut g = Graph::default();
        let input = |g: &mut Graph, name: &str, dims: Vec<Dim>| {
            let id = g.add_value(name, DType::F32, Some(dims));
            g.inputs.push(id);
            id
        };
        let bhsd = vec![sym("batch"), Dim::Known(2), sym("seq"), Dim::Known(D)];
        let q = input(&mut g, "q", bhsd.clone());
        let v = input(&mut g, "v", bhsd.clone());
        let k = if spec.k_transpose_node {
            let k = input(&mut g, "k", bhsd);
            g.add_node(
                "kt",
                Op::Transpose {
                    perm: Some(vec![0, 1, 3, 2]),
                },
                vec![k],
                vec!["kt".into()],
            )
            .unwrap()[0]
        } else {
            input(
                &mut g,
                "k",
                vec![sym("batch"), Dim::Known(2), Dim::Known(D), sym("seq")],
            )
        };
        let bin = |g: &mut Graph, op, a, b, name: &str| {
            g.add_node(name, Op::Binary(op), vec![a, b], vec![name.into()])
                .unwrap()[0]
        };
        let mut s = g
            .add_node("qk", Op::MatMul, vec![q, k], vec!["qk".into()])
            .unwrap()[0];
        let two = g.add_constant("two", Tensor::f32(vec![], vec![2.0]).unwrap());
        s = match spec.scale {
            Scale::None => s,
            Scale::Div => bin(&mut g, BinaryOp::Div, s, two, "scaled"),
            Scale::Mul => bin(&mut g, BinaryOp::Mul, s, two, "scaled"),
            Scale::MulConstantFirst => bin(&mut g, BinaryOp::Mul, two, s, "scaled"),
            Scale::DivByVector => {
                // seq is 4 in the inputs below, so the division broadcasts.
                let c = g.add_constant("c4", Tensor::f32(vec![4], vec![2.0; 4]).unwrap());
                bin(&mut g, BinaryOp::Div, s, c, "scaled")
            }
            Scale::DivByInput => {
                let c = input(&mut g, "c", vec![]);
                bin(&mut g, BinaryOp::Div, s, c, "scaled")
            }
        };
        if spec.scores_read_twice {
            let r = g
                .add_node("relu", Op::Unary(UnaryOp::Relu), vec![s], vec!["r".into()])
                .unwrap()[0];
            g.outputs.push(r);
        }
        if spec.mask {
            let mut m = input(
                &mut g,
                "mask",
                vec![sym("batch"), Dim::Known(1), Dim::Known(1), sym("seq")],
            );
            if spec.expand_mask {
                let shape = g
                    .add_node(
                        "shape",
                        Op::Shape {
                            start: 0,
                            end: None,
                        },
                        vec![s],
                        vec!["scores_shape".into()],
                    )
                    .unwrap()[0];
                m = g
                    .add_node("expand", Op::Expand, vec![m, shape], vec!["mf".into()])
                    .unwrap()[0];
            }
            s = if spec.mask_first {
                bin(&mut g, BinaryOp::Add, m, s, "masked")
            } else {
                bin(&mut g, BinaryOp::Add, s, m, "masked")
            };
        }
        let p = g
            .add_node(
                "softmax",
                Op::Softmax {
                    axis: spec.softmax_axis,
                    coerce_2d: false,
                },
                vec![s],
                vec!["p".into()],
            )
            .unwrap()[0];
        let out = g
            .add_node("pv", Op::MatMul, vec![p, v], vec!["out".into()])
            .unwrap()[0];
        g.outputs.insert(0, out);
        g
    }

    /// Batch 2, sequence 4; the second sequence has its last two positions masked.
    fn run(g: &Graph) -> Vec<Tensor> {
        let (b, h, s) = (2usize, 2usize, 4usize);
        let vals = |n: usize, seed: usize| -> Vec<f32> {
            (0..n)
                .map(|i| (((i * 7 + seed * 13) % 23) as f32 - 11.0) / 7.0)
                .collect()
        };
        let k_shape = if g.find("kt").is_some() {
            vec![b, h, s, D]
        } else {
            vec![b, h, D, s]
        };
        let mask: Vec<f32> = (0..b * s)
            .map(|i| if i >= s && i % s >= 2 { -10000.0 } else { 0.0 })
            .collect();
        let all = [
            (
                "q",
                Tensor::f32(vec![b, h, s, D], vals(b * h * s * D, 1)).unwrap(),
            ),
            ("k", Tensor::f32(k_shape, vals(b * h * s * D, 2)).unwrap()),
            (
                "v",
                Tensor::f32(vec![b, h, s, D], vals(b * h * s * D, 3)).unwrap(),
            ),
            ("mask", Tensor::f32(vec![b, 1, 1, s], mask).unwrap()),
            ("c", Tensor::f32(vec![], vec![2.0]).unwrap()),
        ];
        let inputs: Vec<(&str, Tensor)> = all
            .into_iter()
            .filter(|(n, _)| g.inputs.iter().any(|&i| g.values[i].name == *n))
            .collect();
        reference::run(g, &inputs).unwrap()
    }

    fn assert_close(a: &[Tensor], b: &[Tensor]) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert_eq!(x.shape, y.shape);
            for (p, q) in x.as_f32s().unwrap().iter().zip(y.as_f32s().unwrap()) {
                assert!((p - q).abs() <= 1e-6, "{p} vs {q}");
            }
        }
    }

    /// Fuses `spec`'s graph; checks the one Attention node and that the output is unchanged.
    fn fuses(spec: Spec, scale: f32, k_transposed: bool) -> Graph {
        let mut g = graph(spec);
        let before = run(&g);
        assert_eq!(fuse_attention(&mut g).unwrap(), 1, "{:?}", g.op_counts());
        g.remove_unused();
        assert_eq!(g.nodes.len(), 1, "{:?}", g.op_counts());
        let n = &g.nodes[0];
        assert_eq!(
            n.op,
            Op::Attention {
                scale,
                k_transposed
            }
        );
        let names: Vec<&str> = n
            .inputs
            .iter()
            .map(|&i| g.values[i].name.as_str())
            .collect();
        let mut want = vec!["q", "k", "v"];
        if spec.mask {
            want.push("mask");
        }
        assert_eq!(names, want);
        assert_eq!(n.outputs, g.outputs);
        infer_all(&mut g).unwrap();
        assert_eq!(
            g.values[g.outputs[0]].shape,
            Some(vec![sym("batch"), Dim::Known(2), sym("seq"), Dim::Known(D)])
        );
        let after = run(&g);
        assert_close(&before, &after);
        g
    }

    fn unfused(spec: Spec) {
        let mut g = graph(spec);
        let before = g.clone();
        assert_eq!(fuse_attention(&mut g).unwrap(), 0);
        assert_eq!(g, before);
    }

    #[test]
    fn attention_with_div_mul_or_no_scale() {
        fuses(BASE, 0.5, true);
        for scale in [Scale::Mul, Scale::MulConstantFirst] {
            fuses(Spec { scale, ..BASE }, 2.0, true);
        }
        fuses(
            Spec {
                scale: Scale::None,
                ..BASE
            },
            1.0,
            true,
        );
    }

    #[test]
    fn attention_with_the_mask_first_expanded_or_absent() {
        fuses(
            Spec {
                mask_first: true,
                ..BASE
            },
            0.5,
            true,
        );
        for scale in [Scale::Div, Scale::None] {
            fuses(
                Spec {
                    expand_mask: true,
                    scale,
                    ..BASE
                },
                if scale == Scale::Div { 0.5 } else { 1.0 },
                true,
            );
        }
        fuses(
            Spec {
                mask: false,
                ..BASE
            },
            0.5,
            true,
        );
        fuses(
            Spec {
                mask: false,
                scale: Scale::None,
                ..BASE
            },
            1.0,
            true,
        );
    }

    #[test]
    fn attention_absorbs_the_transpose_of_k() {
        let g = fuses(
            Spec {
                k_transpose_node: true,
                ..BASE
            },
            0.5,
            false,
        );
        assert_eq!(g.op_counts().get("Transpose"), None);
        // softmax over axis 3 is the last axis too.
        fuses(
            Spec {
                softmax_axis: 3,
                ..BASE
            },
            0.5,
            true,
        );
    }

    #[test]
    fn attention_left_alone_when_the_pattern_does_not_hold() {
        unfused(Spec {
            scores_read_twice: true,
            ..BASE
        });
        unfused(Spec {
            scores_read_twice: true,
            scale: Scale::None,
            ..BASE
        });
        unfused(Spec {
            scale: Scale::DivByVector,
            ..BASE
        });
        unfused(Spec {
            scale: Scale::DivByInput,
            ..BASE
        });
        unfused(Spec {
            softmax_axis: 2,
            ..BASE
        });
        unfused(Spec {
            softmax_axis: -2,
            mask: false,
            ..BASE
        });
    }

    #[test]
    fn attention_left_alone_when_an_intermediate_is_a_graph_output_or_shapes_broadcast() {
        // The probabilities are also a graph output.
        let mut g = graph(BASE);
        let p = g.find("p").unwrap();
        g.outputs.push(p);
        assert_eq!(fuse_attention(&mut g).unwrap(), 0);
        // A Transpose of k read twice stays, and k is then taken as produced.
        let mut g = graph(Spec {
            k_transpose_node: true,
            ..BASE
        });
        let kt = g.find("kt").unwrap();
        g.outputs.push(kt);
        let before = run(&g);
        assert_eq!(fuse_attention(&mut g).unwrap(), 1);
        assert_eq!(g.op_counts().get("Transpose"), Some(&1));
        assert!(matches!(
            g.nodes.last().unwrap().op,
            Op::Attention {
                k_transposed: true,
                ..
            }
        ));
        assert_close(&before, &run(&g));
        // v with a broadcast head dim (1): MatMul would broadcast, Attention does not.
        let mut g = graph(BASE);
        let v = g.find("v").unwrap();
        g.values[v].shape = Some(vec![sym("batch"), Dim::Known(1), sym("seq"), Dim::Known(D)]);
        infer_all(&mut g).unwrap();
        assert_eq!(fuse_attention(&mut g).unwrap(), 0);
        // A mask that would grow the scores (a per-query dim of unknown size).
        let mut g = graph(BASE);
        let m = g.find("mask").unwrap();
        g.values[m].shape = Some(vec![sym("batch"), Dim::Known(1), Dim::Unknown, sym("seq")]);
        infer_all(&mut g).unwrap();
        assert_eq!(fuse_attention(&mut g).unwrap(), 0);
    }

    /// `LayerNorm(Add(x, r))` over `[batch, seq, 4]`; `r` `[4]` when `broadcast`.
    fn add_ln(broadcast: bool, sum_read_twice: bool, bias: bool) -> Graph {
        let mut g = Graph::default();
        let full = vec![sym("batch"), sym("seq"), Dim::Known(4)];
        let x = g.add_value("x", DType::F32, Some(full.clone()));
        let r_shape = if broadcast { vec![Dim::Known(4)] } else { full };
        let r = g.add_value("r", DType::F32, Some(r_shape));
        g.inputs = vec![x, r];
        let sum = g
            .add_node(
                "res",
                Op::Binary(BinaryOp::Add),
                vec![x, r],
                vec!["sum".into()],
            )
            .unwrap()[0];
        let scale = g.add_constant(
            "gamma",
            Tensor::f32(vec![4], vec![1.0, 0.5, -2.0, 1.5]).unwrap(),
        );
        let mut inputs = vec![sum, scale];
        if bias {
            inputs.push(g.add_constant(
                "beta",
                Tensor::f32(vec![4], vec![0.1, 0.0, -0.3, 2.0]).unwrap(),
            ));
        }
        let y = g
            .add_node(
                "ln",
                Op::LayerNorm {
                    axis: -1,
                    epsilon: 1e-5,
                },
                inputs,
                vec!["y".into()],
            )
            .unwrap()[0];
        g.outputs.push(y);
        if sum_read_twice {
            g.outputs.push(sum);
        }
        g
    }

    fn run_ln(g: &Graph, broadcast: bool) -> Vec<Tensor> {
        let x: Vec<f32> = (0..24).map(|i| ((i * 5 % 13) as f32 - 6.0) / 3.0).collect();
        let r: Vec<f32> = (0..24).map(|i| ((i * 3 % 7) as f32 - 3.0) / 2.0).collect();
        let r = if broadcast {
            Tensor::f32(vec![4], r[..4].to_vec()).unwrap()
        } else {
            Tensor::f32(vec![2, 3, 4], r).unwrap()
        };
        reference::run(
            g,
            &[("x", Tensor::f32(vec![2, 3, 4], x).unwrap()), ("r", r)],
        )
        .unwrap()
    }

    #[test]
    fn residual_add_and_layer_norm_become_one_node() {
        for bias in [true, false] {
            let mut g = add_ln(false, false, bias);
            let before = run_ln(&g, false);
            assert_eq!(fuse_add_layer_norm(&mut g).unwrap(), 1);
            assert_eq!(g.nodes.len(), 1);
            assert_eq!(
                g.nodes[0].op,
                Op::AddLayerNorm {
                    axis: -1,
                    epsilon: 1e-5
                }
            );
            let names: Vec<&str> = g.nodes[0]
                .inputs
                .iter()
                .map(|&i| g.values[i].name.as_str())
                .collect();
            let want: &[&str] = if bias {
                &["x", "r", "gamma", "beta"]
            } else {
                &["x", "r", "gamma"]
            };
            assert_eq!(names, want);
            infer_all(&mut g).unwrap();
            assert_eq!(
                g.values[g.outputs[0]].shape,
                Some(vec![sym("batch"), sym("seq"), Dim::Known(4)])
            );
            // The same arithmetic: bit for bit.
            assert_eq!(before, run_ln(&g, false));
        }
    }

    #[test]
    fn broadcasting_or_shared_residual_adds_are_left_alone() {
        let mut g = add_ln(true, false, true);
        assert_eq!(fuse_add_layer_norm(&mut g).unwrap(), 0);
        assert_eq!(g.nodes.len(), 2);
        run_ln(&g, true);
        let mut g = add_ln(false, true, true);
        assert_eq!(fuse_add_layer_norm(&mut g).unwrap(), 0);
        // Unknown dims cannot be proved equal.
        let mut g = add_ln(false, false, true);
        for name in ["x", "r"] {
            let id = g.find(name).unwrap();
            g.values[id].shape = Some(vec![Dim::Unknown, sym("seq"), Dim::Known(4)]);
        }
        infer_all(&mut g).unwrap();
        assert_eq!(fuse_add_layer_norm(&mut g).unwrap(), 0);
        // Different symbols neither.
        let mut g = add_ln(false, false, true);
        let r = g.find("r").unwrap();
        g.values[r].shape = Some(vec![sym("batch"), sym("other"), Dim::Known(4)]);
        infer_all(&mut g).unwrap();
        assert_eq!(fuse_add_layer_norm(&mut g).unwrap(), 0);
    }
}
