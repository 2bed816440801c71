//! Dtype and shape inference, node by node, with symbolic dims.
//!
//! A dim is [`Dim::Known`], a named [`Dim::Sym`] (`batch` stays `batch` through elementwise
//! ops, MatMul, Concat on other axes, Reshape with `-1` when the arithmetic allows it) or
//! [`Dim::Unknown`]. [`bind_symbols`] replaces symbols with sizes and re-infers the graph, which
//! is how an engine will be specialised per batch-size bucket.

use std::collections::HashMap;

use super::ir::{DType, Dim, Graph, Op, Shape, ValueId};
use super::EngineError;

/// The inferred type of one output.
pub type ValueType = (DType, Option<Shape>);

/// Infers the output types of `op` applied to `inputs` (already in `graph`).
pub fn infer_node(
    graph: &Graph,
    name: &str,
    op: &Op,
    inputs: &[ValueId],
) -> Result<Vec<ValueType>, EngineError> {
    infer_inner(graph, op, inputs).map_err(|reason| EngineError::InvalidNode {
        op: op.name().into(),
        node: name.into(),
        reason,
    })
}

/// Re-infers every node output in order (after a pass or after [`bind_symbols`]).
pub fn infer_all(graph: &mut Graph) -> Result<(), EngineError> {
    for i in 0..graph.nodes.len() {
        let node = &graph.nodes[i];
        let types = infer_node(graph, &node.name, &node.op, &node.inputs)?;
        let outputs = node.outputs.clone();
        for (o, (dtype, shape)) in outputs.into_iter().zip(types) {
            graph.values[o].dtype = dtype;
            graph.values[o].shape = shape;
        }
    }
    Ok(())
}

/// Replaces the symbolic dims of the graph inputs named in `sizes` (e.g. `batch` → 8) and
/// re-infers every shape.
pub fn bind_symbols(graph: &mut Graph, sizes: &HashMap<String, usize>) -> Result<(), EngineError> {
    for &i in &graph.inputs.clone() {
        if let Some(dims) = &mut graph.values[i].shape {
            for d in dims.iter_mut() {
                if let Dim::Sym(s) = d {
                    if let Some(&n) = sizes.get(s.as_str()) {
                        *d = Dim::Known(n);
                    }
                }
            }
        }
    }
    infer_all(graph)
}

fn want_inputs(inputs: &[ValueId], min: usize, max: usize) -> Result<(), String> {
    if inputs.len() < min || inputs.len() > max {
        return Err(if min == max {
            format!("expects {min} inputs, has {}", inputs.len())
        } else {
            format!("expects {min} to {max} inputs, has {}", inputs.len())
        });
    }
    Ok(())
}

/// Normalizes a possibly negative axis against `rank`.
pub fn norm_axis(axis: i64, rank: usize) -> Result<usize, String> {
    let r = rank as i64;
    let a = if axis < 0 { axis + r } else { axis };
    if a < 0 || a >= r {
        return Err(format!("axis {axis} is out of range for rank {rank}"));
    }
    Ok(a as usize)
}

/// Numpy broadcasting of two dims.
fn broadcast_dim(a: &Dim, b: &Dim) -> Result<Dim, String> {
    Ok(match (a, b) {
        (Dim::Known(1), x) | (x, Dim::Known(1)) => x.clone(),
        (Dim::Known(m), Dim::Known(n)) => {
            if m != n {
                return Err(format!("dims {m} and {n} cannot be broadcast"));
            }
            Dim::Known(*m)
        }
        (Dim::Known(n), _) | (_, Dim::Known(n)) => Dim::Known(*n),
        (Dim::Sym(s), Dim::Sym(t)) if s == t => Dim::Sym(s.clone()),
        (Dim::Sym(s), Dim::Unknown) | (Dim::Unknown, Dim::Sym(s)) => Dim::Sym(s.clone()),
        _ => Dim::Unknown,
    })
}

/// Numpy broadcasting of two shapes.
pub fn broadcast_shapes(a: &[Dim], b: &[Dim]) -> Result<Shape, String> {
    let rank = a.len().max(b.len());
    let one = Dim::Known(1);
    (0..rank)
        .map(|i| {
            let da = if i + a.len() >= rank {
                &a[i + a.len() - rank]
            } else {
                &one
            };
            let db = if i + b.len() >= rank {
                &b[i + b.len() - rank]
            } else {
                &one
            };
            broadcast_dim(da, db)
        })
        .collect()
}

fn broadcast_opt(shapes: &[&Option<Shape>]) -> Result<Option<Shape>, String> {
    let mut out: Shape = Vec::new();
    for s in shapes {
        match s {
            None => return Ok(None),
            Some(s) => out = broadcast_shapes(&out, s)?,
        }
    }
    Ok(Some(out))
}

/// The product of dims: known if all are, the one symbol if the rest are 1, else unknown.
fn dims_product(dims: &[Dim]) -> Dim {
    let mut known = 1usize;
    let mut sym = None;
    for d in dims {
        match d {
            Dim::Known(n) => known = known.saturating_mul(*n),
            Dim::Sym(s) if sym.is_none() => sym = Some(s.clone()),
            _ => return Dim::Unknown,
        }
    }
    match sym {
        None => Dim::Known(known),
        Some(s) if known == 1 => Dim::Sym(s),
        Some(_) => Dim::Unknown,
    }
}

fn merge_dim(a: &Dim, b: &Dim) -> Result<Dim, String> {
    Ok(match (a, b) {
        (Dim::Known(m), Dim::Known(n)) if m != n => {
            return Err(format!("dims {m} and {n} must be equal"))
        }
        (Dim::Known(n), _) | (_, Dim::Known(n)) => Dim::Known(*n),
        (Dim::Sym(s), _) | (_, Dim::Sym(s)) => Dim::Sym(s.clone()),
        _ => Dim::Unknown,
    })
}

fn infer_inner(graph: &Graph, op: &Op, inputs: &[ValueId]) -> Result<Vec<ValueType>, String> {
    let val = |i: usize| &graph.values[inputs[i]];
    let dt = |i: usize| graph.values[inputs[i]].dtype;
    let shape = |i: usize| &graph.values[inputs[i]].shape;
    let konst = |i: usize| inputs.get(i).and_then(|id| graph.constants.get(id));
    let need_float = |i: usize| -> Result<(), String> {
        if dt(i) != DType::F32 {
            return Err(format!(
                "input '{}' is {}, the engine computes this operator in float32 only",
                val(i).name,
                dt(i)
            ));
        }
        Ok(())
    };
    let same_dtype = |i: usize, j: usize| -> Result<(), String> {
        if dt(i) != dt(j) {
            return Err(format!(
                "inputs '{}' ({}) and '{}' ({}) must have the same type",
                val(i).name,
                dt(i),
                val(j).name,
                dt(j)
            ));
        }
        Ok(())
    };
    let one = |d: DType, s: Option<Shape>| -> Result<Vec<ValueType>, String> { Ok(vec![(d, s)]) };
    match op {
        Op::Unary(_) => {
            want_inputs(inputs, 1, 1)?;
            need_float(0)?;
            one(DType::F32, shape(0).clone())
        }
        Op::Binary(b) => {
            want_inputs(inputs, 2, 2)?;
            same_dtype(0, 1)?;
            if matches!(b, super::ir::BinaryOp::Pow) || dt(0) == DType::Bool || dt(0) == DType::F64
            {
                need_float(0)?;
            }
            one(dt(0), broadcast_opt(&[shape(0), shape(1)])?)
        }
        Op::Equal => {
            want_inputs(inputs, 2, 2)?;
            same_dtype(0, 1)?;
            one(DType::Bool, broadcast_opt(&[shape(0), shape(1)])?)
        }
        Op::Compare(_) => {
            want_inputs(inputs, 2, 2)?;
            same_dtype(0, 1)?;
            if dt(0) == DType::Bool {
                return Err(format!("input '{}' must be numeric, is bool", val(0).name));
            }
            one(DType::Bool, broadcast_opt(&[shape(0), shape(1)])?)
        }
        Op::Logical(_) => {
            want_inputs(inputs, 2, 2)?;
            for i in 0..2 {
                if dt(i) != DType::Bool {
                    return Err(format!(
                        "input '{}' must be bool, is {}",
                        val(i).name,
                        dt(i)
                    ));
                }
            }
            one(DType::Bool, broadcast_opt(&[shape(0), shape(1)])?)
        }
        Op::Not => {
            want_inputs(inputs, 1, 1)?;
            if dt(0) != DType::Bool {
                return Err(format!(
                    "input '{}' must be bool, is {}",
                    val(0).name,
                    dt(0)
                ));
            }
            one(DType::Bool, shape(0).clone())
        }
        Op::Range => {
            want_inputs(inputs, 3, 3)?;
            if !matches!(dt(0), DType::F32 | DType::I32 | DType::I64) {
                return Err(format!(
                    "input '{}' is {}, Range takes float32, int32 or int64",
                    val(0).name,
                    dt(0)
                ));
            }
            same_dtype(0, 1)?;
            same_dtype(0, 2)?;
            for i in 0..3 {
                if let Some(s) = shape(i) {
                    if dims_product(s) != Dim::Known(1) {
                        return Err(format!(
                            "input '{}' must be a scalar, has shape {}",
                            val(i).name,
                            super::ir::shape_string(shape(i))
                        ));
                    }
                }
            }
            let len = match (konst(0), konst(1), konst(2)) {
                (Some(a), Some(b), Some(c)) => Dim::Known(super::reference::range(a, b, c)?.len()),
                _ => Dim::Unknown,
            };
            one(dt(0), Some(vec![len]))
        }
        Op::Flatten { axis } => {
            want_inputs(inputs, 1, 1)?;
            let out = match shape(0) {
                None => None,
                Some(s) => {
                    let r = s.len() as i64;
                    let a = if *axis < 0 { axis + r } else { *axis };
                    if a < 0 || a > r {
                        return Err(format!("axis {axis} is out of range for rank {r}"));
                    }
                    let a = a as usize;
                    Some(vec![dims_product(&s[..a]), dims_product(&s[a..])])
                }
            };
            one(dt(0), out)
        }
        Op::Where => {
            want_inputs(inputs, 3, 3)?;
            if dt(0) != DType::Bool {
                return Err(format!("condition '{}' must be bool", val(0).name));
            }
            same_dtype(1, 2)?;
            one(dt(1), broadcast_opt(&[shape(0), shape(1), shape(2)])?)
        }
        Op::Identity => {
            want_inputs(inputs, 1, 1)?;
            one(dt(0), shape(0).clone())
        }
        Op::Cast { to } => {
            want_inputs(inputs, 1, 1)?;
            one(*to, shape(0).clone())
        }
        Op::MatMul => {
            want_inputs(inputs, 2, 2)?;
            need_float(0)?;
            need_float(1)?;
            let out = match (shape(0), shape(1)) {
                (Some(a), Some(b)) => Some(matmul_shape(a, b)?),
                _ => None,
            };
            one(DType::F32, out)
        }
        Op::Gemm(g) => {
            want_inputs(inputs, 2, 3)?;
            need_float(0)?;
            need_float(1)?;
            if inputs.len() == 3 {
                need_float(2)?;
            }
            let out = match (shape(0), shape(1)) {
                (Some(a), Some(b)) => {
                    if b.len() != 2 || a.is_empty() || (g.trans_a && a.len() != 2) {
                        return Err(format!(
                            "needs a 2-D B and a 2-D A (or N-D without transA), got A {} B {}",
                            super::ir::shape_string(&Some(a.to_vec())),
                            super::ir::shape_string(&Some(b.to_vec()))
                        ));
                    }
                    let (m, k) = if g.trans_a {
                        (vec![a[1].clone()], a[0].clone())
                    } else {
                        (a[..a.len() - 1].to_vec(), a[a.len() - 1].clone())
                    };
                    let (kb, n) = if g.trans_b {
                        (b[1].clone(), b[0].clone())
                    } else {
                        (b[0].clone(), b[1].clone())
                    };
                    merge_dim(&k, &kb).map_err(|e| format!("inner dims: {e}"))?;
                    let mut out = m;
                    out.push(n);
                    if let Some(Some(c)) = inputs.get(2).map(|&c| &graph.values[c].shape) {
                        let b = broadcast_shapes(&out, c)?;
                        if b.len() != out.len() {
                            return Err("bias C has a higher rank than the output".into());
                        }
                    }
                    Some(out)
                }
                _ => None,
            };
            one(DType::F32, out)
        }
        Op::Scaler { offset, scale } => {
            want_inputs(inputs, 1, 1)?;
            if dt(0) == DType::Bool {
                return Err("Scaler input must be numeric".into());
            }
            if let Some(Some(Dim::Known(n))) = shape(0).as_ref().map(|s| s.last()) {
                for (what, v) in [("offset", offset), ("scale", scale)] {
                    if v.len() != 1 && v.len() != *n {
                        return Err(format!(
                            "{what} has {} values, the input has {n} features",
                            v.len()
                        ));
                    }
                }
            }
            one(DType::F32, shape(0).clone())
        }
        Op::Concat { axis } => {
            if inputs.is_empty() {
                return Err("expects at least one input".into());
            }
            for i in 1..inputs.len() {
                same_dtype(0, i)?;
            }
            let shapes: Option<Vec<&Shape>> =
                (0..inputs.len()).map(|i| shape(i).as_ref()).collect();
            let Some(shapes) = shapes else {
                return one(dt(0), None);
            };
            let rank = shapes[0].len();
            if shapes.iter().any(|s| s.len() != rank) {
                return Err("inputs must have the same rank".into());
            }
            let ax = norm_axis(*axis, rank)?;
            let mut out = shapes[0].clone();
            for s in &shapes[1..] {
                for d in 0..rank {
                    out[d] = if d == ax {
                        match (&out[d], &s[d]) {
                            (Dim::Known(a), Dim::Known(b)) => Dim::Known(a.saturating_add(*b)),
                            _ => Dim::Unknown,
                        }
                    } else {
                        merge_dim(&out[d], &s[d])?
                    };
                }
            }
            one(dt(0), Some(out))
        }
        Op::ArgMax { axis, keepdims, .. } => {
            want_inputs(inputs, 1, 1)?;
            let out = match shape(0) {
                None => None,
                Some(s) => {
                    let ax = norm_axis(*axis, s.len())?;
                    let mut o = s.clone();
                    if *keepdims {
                        o[ax] = Dim::Known(1);
                    } else {
                        o.remove(ax);
                    }
                    Some(o)
                }
            };
            one(DType::I64, out)
        }
        Op::ArrayFeatureExtractor => {
            want_inputs(inputs, 2, 2)?;
            if !matches!(dt(1), DType::I64) {
                return Err("indices must be int64".into());
            }
            let out = match (shape(0), shape(1)) {
                (Some(x), Some(y)) => {
                    let n = dims_product(y);
                    if x.len() <= 1 {
                        Some(vec![Dim::Known(1), n])
                    } else {
                        let mut o = x[..x.len() - 1].to_vec();
                        o.push(n);
                        Some(o)
                    }
                }
                _ => None,
            };
            one(dt(0), out)
        }
        Op::Reshape { allowzero } => {
            want_inputs(inputs, 2, 2)?;
            if dt(1) != DType::I64 {
                return Err("shape must be int64".into());
            }
            let out = match konst(1) {
                Some(t) => Some(reshape_shape(
                    shape(0).as_ref(),
                    &t.as_i64s().unwrap_or_default(),
                    *allowzero,
                )?),
                None => match shape(1) {
                    Some(s) if s.len() == 1 => match s[0] {
                        Dim::Known(r) => Some(vec![Dim::Unknown; r]),
                        _ => None,
                    },
                    _ => None,
                },
            };
            one(dt(0), out)
        }
        Op::Unsqueeze { axes } => {
            want_inputs(inputs, 1, 1)?;
            let out = match shape(0) {
                None => None,
                Some(s) => {
                    let rank = s.len() + axes.len();
                    let mut ax: Vec<usize> = axes
                        .iter()
                        .map(|&a| norm_axis(a, rank))
                        .collect::<Result<_, _>>()?;
                    ax.sort_unstable();
                    if ax.windows(2).any(|w| w[0] == w[1]) {
                        return Err("axes repeat".into());
                    }
                    let mut it = s.iter();
                    Some(
                        (0..rank)
                            .map(|d| {
                                if ax.contains(&d) {
                                    Dim::Known(1)
                                } else {
                                    it.next().cloned().unwrap_or(Dim::Unknown)
                                }
                            })
                            .collect(),
                    )
                }
            };
            one(dt(0), out)
        }
        Op::Squeeze { axes } => {
            want_inputs(inputs, 1, 1)?;
            let out = match (shape(0), axes) {
                (None, _) => None,
                (Some(s), Some(axes)) => {
                    let ax: Vec<usize> = axes
                        .iter()
                        .map(|&a| norm_axis(a, s.len()))
                        .collect::<Result<_, _>>()?;
                    for &a in &ax {
                        if let Dim::Known(n) = s[a] {
                            if n != 1 {
                                return Err(format!("cannot squeeze axis {a} of size {n}"));
                            }
                        }
                    }
                    Some(
                        s.iter()
                            .enumerate()
                            .filter(|(i, _)| !ax.contains(i))
                            .map(|(_, d)| d.clone())
                            .collect(),
                    )
                }
                (Some(s), None) => {
                    if s.iter().all(|d| matches!(d, Dim::Known(_))) {
                        Some(s.iter().filter(|d| **d != Dim::Known(1)).cloned().collect())
                    } else {
                        None
                    }
                }
            };
            one(dt(0), out)
        }
        Op::Gather { axis } => {
            want_inputs(inputs, 2, 2)?;
            if !matches!(dt(1), DType::I64 | DType::I32) {
                return Err("indices must be int32 or int64".into());
            }
            let out = match (shape(0), shape(1)) {
                (Some(d), Some(q)) => {
                    let ax = norm_axis(*axis, d.len())?;
                    let mut o = d[..ax].to_vec();
                    o.extend(q.iter().cloned());
                    o.extend(d[ax + 1..].iter().cloned());
                    Some(o)
                }
                _ => None,
            };
            one(dt(0), out)
        }
        Op::Shape { start, end } => {
            want_inputs(inputs, 1, 1)?;
            let out = shape(0).as_ref().map(|s| {
                let (a, b) = shape_range(s.len(), *start, *end);
                vec![Dim::Known(b - a)]
            });
            one(DType::I64, out)
        }
        Op::Slice => {
            want_inputs(inputs, 3, 5)?;
            for i in 1..inputs.len() {
                if !matches!(dt(i), DType::I64 | DType::I32) {
                    return Err(format!("'{}' must be int32 or int64", val(i).name));
                }
            }
            let out = shape(0)
                .as_ref()
                .map(|s| slice_shape(s, inputs.len(), &konst));
            one(dt(0), out.transpose()?)
        }
        Op::Transpose { perm } => {
            want_inputs(inputs, 1, 1)?;
            let out = match shape(0) {
                None => None,
                Some(s) => {
                    let p: Vec<usize> = match perm {
                        Some(p) => p.clone(),
                        None => (0..s.len()).rev().collect(),
                    };
                    let mut sorted = p.clone();
                    sorted.sort_unstable();
                    if sorted != (0..s.len()).collect::<Vec<_>>() {
                        return Err(format!(
                            "perm {p:?} is not a permutation of rank {}",
                            s.len()
                        ));
                    }
                    Some(p.iter().map(|&i| s[i].clone()).collect())
                }
            };
            one(dt(0), out)
        }
        Op::ReduceMean { axes, keepdims } => {
            want_inputs(inputs, 1, 1)?;
            need_float(0)?;
            let out = shape(0)
                .as_ref()
                .map(|s| reduce_shape(s, axes.as_deref(), *keepdims))
                .transpose()?;
            one(DType::F32, out)
        }
        Op::ReduceSum { axes, keepdims } => {
            want_inputs(inputs, 1, 1)?;
            if !matches!(dt(0), DType::F32 | DType::I32 | DType::I64) {
                return Err(format!(
                    "input '{}' is {}, ReduceSum takes float32, int32 or int64",
                    val(0).name,
                    dt(0)
                ));
            }
            let out = shape(0)
                .as_ref()
                .map(|s| reduce_shape(s, axes.as_deref(), *keepdims))
                .transpose()?;
            one(dt(0), out)
        }
        Op::Clip { min, max } => {
            want_inputs(inputs, 1, 1)?;
            need_float(0)?;
            if let (Some(lo), Some(hi)) = (min, max) {
                if lo.is_nan() || hi.is_nan() {
                    return Err("min and max must not be NaN".into());
                }
            }
            one(DType::F32, shape(0).clone())
        }
        Op::Softmax { axis, .. } => {
            want_inputs(inputs, 1, 1)?;
            need_float(0)?;
            if let Some(s) = shape(0) {
                norm_axis(*axis, s.len())?;
            }
            one(DType::F32, shape(0).clone())
        }
        Op::LayerNorm { axis, .. } => {
            want_inputs(inputs, 2, 3)?;
            for i in 0..inputs.len() {
                need_float(i)?;
            }
            if let Some(s) = shape(0) {
                norm_axis(*axis, s.len())?;
            }
            one(DType::F32, shape(0).clone())
        }
        Op::Attention { k_transposed, .. } => {
            want_inputs(inputs, 3, 4)?;
            for i in 0..inputs.len() {
                need_float(i)?;
            }
            let out = match (shape(0), shape(1), shape(2)) {
                (Some(q), Some(k), Some(v)) => {
                    let mask = inputs.get(3).and_then(|&m| graph.values[m].shape.as_ref());
                    Some(attention_shape(q, k, v, *k_transposed, mask)?)
                }
                _ => None,
            };
            one(DType::F32, out)
        }
        Op::AddLayerNorm { axis, .. } => {
            want_inputs(inputs, 3, 4)?;
            for i in 0..inputs.len() {
                need_float(i)?;
            }
            let out = match (shape(0), shape(1)) {
                (Some(x), Some(r)) => {
                    if x.len() != r.len() {
                        return Err(format!(
                            "x {} and residual {} must have the same shape",
                            super::ir::shape_string(shape(0)),
                            super::ir::shape_string(shape(1))
                        ));
                    }
                    let merged: Shape = x
                        .iter()
                        .zip(r)
                        .map(|(a, b)| merge_dim(a, b))
                        .collect::<Result<_, _>>()
                        .map_err(|e| format!("x and residual: {e}"))?;
                    norm_axis(*axis, merged.len())?;
                    Some(merged)
                }
                (Some(s), None) | (None, Some(s)) => {
                    norm_axis(*axis, s.len())?;
                    Some(s.clone())
                }
                (None, None) => None,
            };
            one(DType::F32, out)
        }
        Op::Expand => {
            want_inputs(inputs, 2, 2)?;
            if dt(1) != DType::I64 {
                return Err("shape must be int64".into());
            }
            let out = match (shape(0), konst(1)) {
                (Some(s), Some(t)) => {
                    let target: Shape = t
                        .as_i64s()
                        .unwrap_or_default()
                        .into_iter()
                        .map(|n| {
                            usize::try_from(n)
                                .map(Dim::Known)
                                .map_err(|_| format!("negative dim {n} in shape"))
                        })
                        .collect::<Result<_, _>>()?;
                    Some(broadcast_shapes(s, &target)?)
                }
                (Some(s), None) => match shape(1) {
                    Some(r) if r.len() == 1 => match r[0] {
                        Dim::Known(r) => Some(vec![Dim::Unknown; r.max(s.len())]),
                        _ => None,
                    },
                    _ => None,
                },
                _ => None,
            };
            one(dt(0), out)
        }
        Op::ConstantOfShape { value } => {
            want_inputs(inputs, 1, 1)?;
            if dt(0) != DType::I64 {
                return Err("shape must be int64".into());
            }
            let out = match konst(0) {
                Some(t) => Some(
                    t.as_i64s()
                        .unwrap_or_default()
                        .into_iter()
                        .map(|n| {
                            usize::try_from(n)
                                .map(Dim::Known)
                                .map_err(|_| format!("negative dim {n} in shape"))
                        })
                        .collect::<Result<_, _>>()?,
                ),
                None => match shape(0) {
                    Some(r) if r.len() == 1 => match r[0] {
                        Dim::Known(r) => Some(vec![Dim::Unknown; r]),
                        _ => None,
                    },
                    _ => None,
                },
            };
            one(value.dtype(), out)
        }
    }
}

/// The shape of a reduction over `axes` (`None`: every axis).
fn reduce_shape(s: &[Dim], axes: Option<&[i64]>, keepdims: bool) -> Result<Shape, String> {
    let ax: Vec<usize> = match axes {
        Some(a) => a
            .iter()
            .map(|&a| norm_axis(a, s.len()))
            .collect::<Result<_, _>>()?,
        None => (0..s.len()).collect(),
    };
    Ok(s.iter()
        .enumerate()
        .filter_map(|(i, d)| {
            if !ax.contains(&i) {
                Some(d.clone())
            } else if keepdims {
                Some(Dim::Known(1))
            } else {
                None
            }
        })
        .collect())
}

/// `[start, end)` of `Shape` for a given rank, clamped as the operator defines.
pub fn shape_range(rank: usize, start: i64, end: Option<i64>) -> (usize, usize) {
    let clamp = |x: i64| -> usize {
        let r = rank as i64;
        let x = if x < 0 { x + r } else { x };
        x.clamp(0, r) as usize
    };
    let a = clamp(start);
    let b = clamp(end.unwrap_or(rank as i64));
    (a, b.max(a))
}

/// [`Op::Attention`]'s output shape `[B, H, Sq, D]`: `q`, `k`, `v` of rank 4 with equal
/// `B`, `H`, the inner dims agreeing, and `mask` (if its shape is known) broadcasting to
/// `[B, H, Sq, Sk]` without growing it.
fn attention_shape(
    q: &[Dim],
    k: &[Dim],
    v: &[Dim],
    k_transposed: bool,
    mask: Option<&Shape>,
) -> Result<Shape, String> {
    if q.len() != 4 || k.len() != 4 || v.len() != 4 {
        return Err(format!(
            "q, k and v must have rank 4, got q {} k {} v {}",
            super::ir::shape_string(&Some(q.to_vec())),
            super::ir::shape_string(&Some(k.to_vec())),
            super::ir::shape_string(&Some(v.to_vec()))
        ));
    }
    let mut bh = Vec::with_capacity(2);
    for d in 0..2 {
        let m = merge_dim(&merge_dim(&q[d], &k[d])?, &v[d])
            .map_err(|e| format!("batch dim {d} of q, k and v: {e}"))?;
        bh.push(m);
    }
    let (kd, sk) = if k_transposed {
        (&k[2], &k[3])
    } else {
        (&k[3], &k[2])
    };
    merge_dim(&q[3], kd).map_err(|e| format!("head size of q and k: {e}"))?;
    merge_dim(sk, &v[2]).map_err(|e| format!("key length of k and v: {e}"))?;
    if let Some(m) = mask {
        let scores = vec![bh[0].clone(), bh[1].clone(), q[2].clone(), sk.clone()];
        if m.len() > 4 {
            return Err(format!(
                "mask {} has a rank above 4",
                super::ir::shape_string(&Some(m.clone()))
            ));
        }
        broadcast_shapes(&scores, m).map_err(|e| format!("mask: {e}"))?;
    }
    Ok(vec![
        bh[0].clone(),
        bh[1].clone(),
        q[2].clone(),
        v[3].clone(),
    ])
}

/// Numpy matmul output shape.
pub fn matmul_shape(a: &[Dim], b: &[Dim]) -> Result<Shape, String> {
    if a.is_empty() || b.is_empty() {
        return Err("MatMul inputs must have rank >= 1".into());
    }
    let mut a2 = a.to_vec();
    let mut b2 = b.to_vec();
    if a.len() == 1 {
        a2.insert(0, Dim::Known(1));
    }
    if b.len() == 1 {
        b2.push(Dim::Known(1));
    }
    let (m, k) = (&a2[a2.len() - 2], &a2[a2.len() - 1]);
    let (kb, n) = (&b2[b2.len() - 2], &b2[b2.len() - 1]);
    merge_dim(k, kb).map_err(|e| format!("inner dims: {e}"))?;
    let mut out = broadcast_shapes(&a2[..a2.len() - 2], &b2[..b2.len() - 2])?;
    if a.len() > 1 {
        out.push(m.clone());
    }
    if b.len() > 1 {
        out.push(n.clone());
    }
    Ok(out)
}

/// Reshape's output shape for a constant target (with `0` and `-1`), keeping symbols where
/// the element-count arithmetic determines them.
fn reshape_shape(input: Option<&Shape>, target: &[i64], allowzero: bool) -> Result<Shape, String> {
    let mut out = Vec::with_capacity(target.len());
    let mut infer_at = None;
    for (i, &t) in target.iter().enumerate() {
        match t {
            -1 => {
                if infer_at.replace(i).is_some() {
                    return Err("shape has more than one -1".into());
                }
                out.push(Dim::Unknown);
            }
            0 if !allowzero => match input.and_then(|s| s.get(i)) {
                Some(d) => out.push(d.clone()),
                None => out.push(Dim::Unknown),
            },
            t if t >= 0 => out.push(Dim::Known(t as usize)),
            t => return Err(format!("invalid dim {t} in shape")),
        }
    }
    if let (Some(at), Some(input)) = (infer_at, input) {
        // Cancel what the input and the explicit output dims have in common.
        let mut in_known = 1usize;
        let mut in_syms: Vec<&String> = Vec::new();
        for d in input {
            match d {
                Dim::Known(n) => in_known = in_known.saturating_mul(*n),
                Dim::Sym(s) => in_syms.push(s),
                Dim::Unknown => return Ok(out),
            }
        }
        let mut out_known = 1usize;
        for (i, d) in out.iter().enumerate() {
            if i == at {
                continue;
            }
            match d {
                Dim::Known(n) => out_known = out_known.saturating_mul(*n),
                Dim::Sym(s) => match in_syms.iter().position(|x| *x == s) {
                    Some(p) => {
                        in_syms.remove(p);
                    }
                    None => return Ok(out),
                },
                Dim::Unknown => return Ok(out),
            }
        }
        if out_known == 0 || in_known % out_known != 0 {
            return Err(format!(
                "cannot reshape {in_known} elements into groups of {out_known}"
            ));
        }
        let rest = in_known / out_known;
        out[at] = match (in_syms.len(), rest) {
            (0, r) => Dim::Known(r),
            (1, 1) => Dim::Sym(in_syms[0].clone()),
            _ => Dim::Unknown,
        };
    }
    Ok(out)
}

/// Slice's output shape: exact where starts/ends/axes/steps are constants and the dims known.
fn slice_shape<'a>(
    s: &[Dim],
    n_inputs: usize,
    konst: &dyn Fn(usize) -> Option<&'a super::ir::Tensor>,
) -> Result<Shape, String> {
    let rank = s.len();
    let consts: Vec<Option<Vec<i64>>> = (1..n_inputs)
        .map(|i| konst(i).and_then(|t| t.as_i64s()))
        .collect();
    let axes: Option<Vec<usize>> = match consts.get(2) {
        Some(Some(a)) => Some(
            a.iter()
                .map(|&a| norm_axis(a, rank))
                .collect::<Result<_, _>>()?,
        ),
        Some(None) => None,
        None => consts[0].as_ref().map(|st| (0..st.len()).collect()),
    };
    let Some(axes) = axes else {
        return Ok(vec![Dim::Unknown; rank]);
    };
    let mut out = s.to_vec();
    for (j, &ax) in axes.iter().enumerate() {
        let get = |k: usize| {
            consts
                .get(k)
                .and_then(|c| c.as_ref())
                .and_then(|v| v.get(j).copied())
        };
        let step = if n_inputs > 4 { get(3) } else { Some(1) };
        out[ax] = match (&s[ax], get(0), get(1), step) {
            (Dim::Known(n), Some(st), Some(en), Some(step)) => {
                Dim::Known(super::reference::slice_range(*n, st, en, step)?.len())
            }
            _ => Dim::Unknown,
        };
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::ir::{CmpOp, LogicalOp, Tensor};

    fn sym(s: &str) -> Dim {
        Dim::Sym(s.into())
    }

    #[test]
    fn new_ops_infer_dtype_and_symbolic_shape() {
        let mut g = Graph::default();
        let x = g.add_value(
            "x",
            DType::I64,
            Some(vec![sym("batch"), Dim::Known(1), sym("seq")]),
        );
        let y = g.add_value("y", DType::I64, Some(vec![sym("seq")]));
        let f = g.add_value(
            "f",
            DType::F32,
            Some(vec![sym("batch"), sym("seq"), Dim::Known(8)]),
        );
        let ty = |g: &Graph, op: Op, ins: Vec<ValueId>| {
            infer_node(g, "n", &op, &ins).map(|mut v| v.remove(0))
        };
        let (dt, s) = ty(&g, Op::Compare(CmpOp::Less), vec![x, y]).unwrap();
        assert_eq!(
            (dt, s),
            (
                DType::Bool,
                Some(vec![sym("batch"), Dim::Known(1), sym("seq")])
            )
        );
        assert!(
            ty(&g, Op::Compare(CmpOp::Less), vec![x, f]).is_err(),
            "dtypes differ"
        );
        let b = g.add_value("b", DType::Bool, Some(vec![Dim::Known(4), Dim::Known(1)]));
        let (dt, s) = ty(&g, Op::Logical(LogicalOp::Or), vec![b, b]).unwrap();
        assert_eq!(
            (dt, s),
            (DType::Bool, Some(vec![Dim::Known(4), Dim::Known(1)]))
        );
        assert!(ty(&g, Op::Logical(LogicalOp::And), vec![b, x]).is_err());
        assert!(ty(&g, Op::Not, vec![x]).is_err());
        let (_, s) = ty(&g, Op::Flatten { axis: 1 }, vec![f]).unwrap();
        assert_eq!(s, Some(vec![sym("batch"), Dim::Unknown]));
        let (_, s) = ty(&g, Op::Flatten { axis: 0 }, vec![f]).unwrap();
        assert_eq!(s, Some(vec![Dim::Known(1), Dim::Unknown]));
        let (_, s) = ty(&g, Op::Flatten { axis: 2 }, vec![x]).unwrap();
        assert_eq!(s, Some(vec![sym("batch"), sym("seq")]));
        let (dt, s) = ty(
            &g,
            Op::ReduceSum {
                axes: Some(vec![1]),
                keepdims: false,
            },
            vec![f],
        )
        .unwrap();
        assert_eq!(
            (dt, s),
            (DType::F32, Some(vec![sym("batch"), Dim::Known(8)]))
        );
        let (dt, _) = ty(
            &g,
            Op::ReduceSum {
                axes: None,
                keepdims: true,
            },
            vec![x],
        )
        .unwrap();
        assert_eq!(dt, DType::I64);
        assert!(ty(
            &g,
            Op::ReduceSum {
                axes: None,
                keepdims: true
            },
            vec![b]
        )
        .is_err());
        assert!(
            ty(
                &g,
                Op::Clip {
                    min: Some(0.0),
                    max: None
                },
                vec![x]
            )
            .is_err(),
            "float only"
        );
        let (_, s) = ty(
            &g,
            Op::Clip {
                min: Some(0.0),
                max: None,
            },
            vec![f],
        )
        .unwrap();
        assert_eq!(s, g.values[f].shape);
        // Range: exact length from constants, unknown otherwise.
        let c = |g: &mut Graph, v: i64| g.add_constant("c", Tensor::i64(vec![], vec![v]).unwrap());
        let (s0, l, d) = (c(&mut g, 10), c(&mut g, 0), c(&mut g, -3));
        let (dt, s) = ty(&g, Op::Range, vec![s0, l, d]).unwrap();
        assert_eq!((dt, s), (DType::I64, Some(vec![Dim::Known(4)])));
        let n = g.add_value("n", DType::I64, Some(vec![]));
        let (_, s) = ty(&g, Op::Range, vec![l, n, d]).unwrap();
        assert_eq!(s, Some(vec![Dim::Unknown]));
        assert!(
            ty(&g, Op::Range, vec![l, y, d]).is_err(),
            "limit is not a scalar"
        );
        assert!(ty(&g, Op::Range, vec![l, f, d]).is_err(), "dtypes differ");
    }
}
