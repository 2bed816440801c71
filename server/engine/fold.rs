//! Constant folding: a node whose inputs are all constants is evaluated once by the reference
//! interpreter and its outputs become constants. `Shape` of a value whose dims are all known
//! folds too. Shapes are re-inferred afterwards, since constant shape tensors (Reshape,
//! Expand, ConstantOfShape) make downstream shapes exact.

use super::infer::{infer_all, shape_range};
use super::ir::{Dim, Graph, Op, Tensor};
use super::{reference, EngineError};

/// Folds every foldable node, in one forward sweep; returns how many were folded.
pub fn fold_constants(graph: &mut Graph) -> Result<usize, EngineError> {
    let mut folded = 0;
    let nodes = std::mem::take(&mut graph.nodes);
    for node in nodes {
        let outs = if let Some(t) = static_shape(graph, &node.op, &node.inputs) {
            Some(vec![t])
        } else if !node.inputs.is_empty() && node.inputs.iter().all(|i| graph.is_constant(*i)) {
            let args: Vec<&Tensor> = node.inputs.iter().map(|i| &graph.constants[i]).collect();
            Some(
                reference::eval(&node.op, &args).map_err(|reason| EngineError::Eval {
                    op: node.op.name().into(),
                    node: node.name.clone(),
                    reason,
                })?,
            )
        } else {
            None
        };
        match outs {
            Some(outs) => {
                for (&o, t) in node.outputs.iter().zip(outs) {
                    graph.values[o].dtype = t.dtype();
                    graph.values[o].shape = Some(t.dims());
                    graph.constants.insert(o, t);
                }
                folded += 1;
            }
            None => graph.nodes.push(node),
        }
    }
    infer_all(graph)?;
    Ok(folded)
}

/// `Shape` of an input whose dims are all known, as a constant.
fn static_shape(graph: &Graph, op: &Op, inputs: &[usize]) -> Option<Tensor> {
    let Op::Shape { start, end } = op else {
        return None;
    };
    let dims = graph.values[*inputs.first()?].shape.as_ref()?;
    let (a, b) = shape_range(dims.len(), *start, *end);
    let known: Option<Vec<i64>> = dims[a..b]
        .iter()
        .map(|d| match d {
            Dim::Known(n) => Some(*n as i64),
            _ => None,
        })
        .collect();
    let known = known?;
    Tensor::i64(vec![known.len()], known).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::ir::{BinaryOp, DType};

    #[test]
    fn constant_subgraph_becomes_one_constant() {
        let mut g = Graph::default();
        let x = g.add_value(
            "x",
            DType::F32,
            Some(vec![Dim::Sym("batch".into()), Dim::Known(2)]),
        );
        g.inputs.push(x);
        let a = g.add_constant("a", Tensor::f32(vec![2], vec![1.0, 2.0]).unwrap());
        let b = g.add_constant("b", Tensor::f32(vec![2], vec![3.0, 4.0]).unwrap());
        let ab = g
            .add_node(
                "ab",
                Op::Binary(BinaryOp::Add),
                vec![a, b],
                vec!["ab".into()],
            )
            .unwrap()[0];
        let sq = g
            .add_node(
                "sq",
                Op::Binary(BinaryOp::Mul),
                vec![ab, ab],
                vec!["sq".into()],
            )
            .unwrap()[0];
        let y = g
            .add_node(
                "y",
                Op::Binary(BinaryOp::Mul),
                vec![x, sq],
                vec!["y".into()],
            )
            .unwrap()[0];
        g.outputs.push(y);
        let input = Tensor::f32(vec![1, 2], vec![1.0, -1.0]).unwrap();
        let before = reference::run(&g, &[("x", input.clone())]).unwrap();

        assert_eq!(fold_constants(&mut g).unwrap(), 2);
        assert_eq!(g.nodes.len(), 1);
        assert_eq!(g.nodes[0].name, "y");
        assert_eq!(g.constants[&sq].as_f32s().unwrap(), &[16.0, 36.0]);
        let after = reference::run(&g, &[("x", input)]).unwrap();
        assert_eq!(before, after);
        assert_eq!(after[0].as_f32s().unwrap(), &[16.0, -36.0]);
    }

    #[test]
    fn shape_of_symbolic_value_is_not_folded_but_known_one_is() {
        let mut g = Graph::default();
        let x = g.add_value(
            "x",
            DType::F32,
            Some(vec![Dim::Sym("batch".into()), Dim::Known(6)]),
        );
        g.inputs.push(x);
        let full = g
            .add_node(
                "full",
                Op::Shape {
                    start: 0,
                    end: None,
                },
                vec![x],
                vec!["full".into()],
            )
            .unwrap()[0];
        let last = g
            .add_node(
                "last",
                Op::Shape {
                    start: -1,
                    end: None,
                },
                vec![x],
                vec!["last".into()],
            )
            .unwrap()[0];
        g.outputs.extend([full, last]);
        assert_eq!(fold_constants(&mut g).unwrap(), 1);
        assert_eq!(g.nodes.len(), 1);
        assert_eq!(g.nodes[0].name, "full");
        assert_eq!(g.constants[&last].as_i64s().unwrap(), vec![6]);
    }
}
