//! The FP32 CPU reference interpreter of the IR: plain loops, written to be checked by eye,
//! not to be fast. Tests compare it with ONNX Runtime, and constant folding evaluates nodes
//! with it, so the GPU kernels will have one trusted answer to match.
//!
//! Data-movement operators (Concat, Gather, Slice, Transpose, Expand, Where, ...) compute a
//! list of source element indices and [`take`] them, so they work for every dtype at once.

use std::collections::HashMap;

use super::infer::{norm_axis, shape_range};
use super::ir::{
    element_count, Activation, BinaryOp, CmpOp, DType, Data, Dim, Graph, LogicalOp, Op, Tensor,
    UnaryOp, MAX_ELEMENTS,
};
use super::EngineError;

/// Runs `graph` on named inputs and returns the graph outputs in order.
pub fn run(graph: &Graph, inputs: &[(&str, Tensor)]) -> Result<Vec<Tensor>, EngineError> {
    run_with(graph, inputs, |_, node, args| eval(&node.op, args))
}

/// [`run`] with each node evaluated by `eval_node(node_index, node, inputs)` instead of
/// [`eval`]: the precision emulation ([`super::emulate`]) and calibration
/// ([`super::calibrate`]) wrap the FP32 kernels this way, so input checks and value
/// bookkeeping stay in one place.
pub fn run_with<F>(
    graph: &Graph,
    inputs: &[(&str, Tensor)],
    mut eval_node: F,
) -> Result<Vec<Tensor>, EngineError>
where
    F: FnMut(usize, &super::ir::Node, &[&Tensor]) -> Result<Vec<Tensor>, String>,
{
    let mut env: HashMap<usize, Tensor> = HashMap::new();
    let mut symbols: HashMap<String, usize> = HashMap::new();
    for &id in &graph.inputs {
        let v = &graph.values[id];
        let (_, t) = inputs
            .iter()
            .find(|(n, _)| *n == v.name)
            .ok_or_else(|| EngineError::Input(format!("input '{}' is missing", v.name)))?;
        if t.dtype() != v.dtype {
            return Err(EngineError::Input(format!(
                "input '{}' is {}, the model expects {}",
                v.name,
                t.dtype(),
                v.dtype
            )));
        }
        if let Some(dims) = &v.shape {
            check_dims(&v.name, dims, &t.shape, &mut symbols)?;
        }
        env.insert(id, t.clone());
    }
    if let Some((n, _)) = inputs
        .iter()
        .find(|(n, _)| !graph.find(n).is_some_and(|id| graph.inputs.contains(&id)))
    {
        return Err(EngineError::Input(format!("the model has no input '{n}'")));
    }
    for (index, node) in graph.nodes.iter().enumerate() {
        let args: Vec<&Tensor> = node
            .inputs
            .iter()
            .map(|id| {
                env.get(id)
                    .or_else(|| graph.constants.get(id))
                    .ok_or_else(|| {
                        EngineError::Model(format!(
                            "value '{}' is read before it is computed",
                            graph.values[*id].name
                        ))
                    })
            })
            .collect::<Result<_, _>>()?;
        let outs = eval_node(index, node, &args).map_err(|reason| EngineError::Eval {
            op: node.op.name().into(),
            node: node.name.clone(),
            reason,
        })?;
        for (&o, t) in node.outputs.iter().zip(outs) {
            env.insert(o, t);
        }
    }
    graph
        .outputs
        .iter()
        .map(|id| {
            env.get(id)
                .or_else(|| graph.constants.get(id))
                .cloned()
                .ok_or_else(|| {
                    EngineError::Model(format!(
                        "output '{}' is never computed",
                        graph.values[*id].name
                    ))
                })
        })
        .collect()
}

/// Checks concrete dims against declared ones, binding symbols consistently across inputs.
fn check_dims(
    name: &str,
    dims: &[Dim],
    actual: &[usize],
    symbols: &mut HashMap<String, usize>,
) -> Result<(), EngineError> {
    let bad = || {
        EngineError::Input(format!(
            "input '{name}' has shape {actual:?}, the model expects {}",
            super::ir::shape_string(&Some(dims.to_vec()))
        ))
    };
    if dims.len() != actual.len() {
        return Err(bad());
    }
    for (d, &n) in dims.iter().zip(actual) {
        match d {
            Dim::Known(k) if *k != n => return Err(bad()),
            Dim::Sym(s) => {
                let bound = *symbols.entry(s.clone()).or_insert(n);
                if bound != n {
                    return Err(EngineError::Input(format!(
                        "input '{name}' has {s} = {n}, another input set it to {bound}"
                    )));
                }
            }
            _ => {}
        }
    }
    Ok(())
}

fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

/// Concrete numpy broadcasting.
pub(crate) fn broadcast(a: &[usize], b: &[usize]) -> Result<Vec<usize>, String> {
    let rank = a.len().max(b.len());
    (0..rank)
        .map(|i| {
            let da = if i + a.len() >= rank {
                a[i + a.len() - rank]
            } else {
                1
            };
            let db = if i + b.len() >= rank {
                b[i + b.len() - rank]
            } else {
                1
            };
            match (da, db) {
                (x, y) if x == y => Ok(x),
                (1, y) => Ok(y),
                (x, 1) => Ok(x),
                (x, y) => Err(format!(
                    "shapes {a:?} and {b:?} cannot be broadcast ({x} vs {y})"
                )),
            }
        })
        .collect()
}

/// For every element of `out`, the flat index of the element of `input` broadcast onto it.
pub(crate) fn broadcast_map(out: &[usize], input: &[usize]) -> Vec<usize> {
    let n: usize = out.iter().product();
    let rank = out.len();
    let in_strides = strides(input);
    // Stride 0 where the input dim is 1 (or missing): that element repeats.
    let eff: Vec<usize> = (0..rank)
        .map(|i| {
            if i + input.len() < rank {
                0
            } else {
                let j = i + input.len() - rank;
                if input[j] == 1 {
                    0
                } else {
                    in_strides[j]
                }
            }
        })
        .collect();
    let mut idx = vec![0usize; rank];
    let mut map = Vec::with_capacity(n);
    for _ in 0..n {
        map.push(idx.iter().zip(&eff).map(|(i, s)| i * s).sum());
        for d in (0..rank).rev() {
            idx[d] += 1;
            if idx[d] < out[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    map
}

/// The elements of `data` at flat indices `idx`, in that order.
pub fn take(data: &Data, idx: &[usize]) -> Data {
    fn pick<T: Copy>(v: &[T], idx: &[usize]) -> Vec<T> {
        idx.iter().map(|&i| v[i]).collect()
    }
    match data {
        Data::F32(v) => Data::F32(pick(v, idx)),
        Data::F64(v) => Data::F64(pick(v, idx)),
        Data::I32(v) => Data::I32(pick(v, idx)),
        Data::I64(v) => Data::I64(pick(v, idx)),
        Data::Bool(v) => Data::Bool(pick(v, idx)),
    }
}

/// Joins same-dtype buffers end to end.
fn concat_data(parts: &[&Data]) -> Result<Data, String> {
    macro_rules! join {
        ($variant:ident) => {{
            let mut out = Vec::new();
            for p in parts {
                match p {
                    Data::$variant(v) => out.extend_from_slice(v),
                    _ => return Err("inputs must have the same type".into()),
                }
            }
            Data::$variant(out)
        }};
    }
    Ok(match parts.first() {
        None => return Err("no inputs".into()),
        Some(Data::F32(_)) => join!(F32),
        Some(Data::F64(_)) => join!(F64),
        Some(Data::I32(_)) => join!(I32),
        Some(Data::I64(_)) => join!(I64),
        Some(Data::Bool(_)) => join!(Bool),
    })
}

fn f32s<'a>(t: &'a Tensor, what: &str) -> Result<&'a [f32], String> {
    t.as_f32s()
        .ok_or_else(|| format!("{what} must be float32, is {}", t.dtype()))
}

fn ints(t: &Tensor, what: &str) -> Result<Vec<i64>, String> {
    t.as_i64s()
        .ok_or_else(|| format!("{what} must be an integer tensor, is {}", t.dtype()))
}

fn dims_of(v: &[i64], what: &str) -> Result<Vec<usize>, String> {
    v.iter()
        .map(|&n| usize::try_from(n).map_err(|_| format!("{what} has a negative dim {n}")))
        .collect()
}

fn erf(x: f32) -> f32 {
    // One series for the reference, the emulation and the CPU runner of programs.
    switchyard_kernels::program_cpu::erf(x as f64) as f32
}

fn unary(u: UnaryOp, x: f32) -> f32 {
    match u {
        UnaryOp::Relu => x.max(0.0),
        UnaryOp::Sigmoid => {
            // Split by sign so exp never overflows.
            if x >= 0.0 {
                1.0 / (1.0 + (-x).exp())
            } else {
                let e = x.exp();
                e / (1.0 + e)
            }
        }
        UnaryOp::Tanh => x.tanh(),
        UnaryOp::Erf => erf(x),
        UnaryOp::Sqrt => x.sqrt(),
        UnaryOp::Neg => -x,
        UnaryOp::Exp => x.exp(),
        UnaryOp::Gelu => 0.5 * x * (1.0 + erf(x / std::f32::consts::SQRT_2)),
    }
}

pub(crate) fn activate(a: Activation, x: f32) -> f32 {
    match a {
        Activation::None => x,
        Activation::Relu => unary(UnaryOp::Relu, x),
        Activation::Sigmoid => unary(UnaryOp::Sigmoid, x),
        Activation::Tanh => unary(UnaryOp::Tanh, x),
        Activation::Gelu => unary(UnaryOp::Gelu, x),
    }
}

fn binary(op: BinaryOp, a: &Tensor, b: &Tensor) -> Result<Tensor, String> {
    let shape = broadcast(&a.shape, &b.shape)?;
    let ia = broadcast_map(&shape, &a.shape);
    let ib = broadcast_map(&shape, &b.shape);
    fn zip<T: Copy, U>(
        x: &[T],
        ia: &[usize],
        y: &[T],
        ib: &[usize],
        f: impl Fn(T, T) -> Result<U, String>,
    ) -> Result<Vec<U>, String> {
        ia.iter().zip(ib).map(|(&i, &j)| f(x[i], y[j])).collect()
    }
    macro_rules! int_op {
        ($x:expr, $y:expr, $variant:ident) => {
            Data::$variant(zip($x, &ia, $y, &ib, |p, q| match op {
                BinaryOp::Add => Ok(p.wrapping_add(q)),
                BinaryOp::Sub => Ok(p.wrapping_sub(q)),
                BinaryOp::Mul => Ok(p.wrapping_mul(q)),
                BinaryOp::Div => p
                    .checked_div(q)
                    .ok_or_else(|| "integer division by zero".to_string()),
                BinaryOp::Pow => Err("Pow on integers is not supported".to_string()),
            })?)
        };
    }
    let data = match (&a.data, &b.data) {
        (Data::F32(x), Data::F32(y)) => Data::F32(zip(x, &ia, y, &ib, |p, q| {
            Ok(match op {
                BinaryOp::Add => p + q,
                BinaryOp::Sub => p - q,
                BinaryOp::Mul => p * q,
                BinaryOp::Div => p / q,
                BinaryOp::Pow => p.powf(q),
            })
        })?),
        (Data::I64(x), Data::I64(y)) => int_op!(x, y, I64),
        (Data::I32(x), Data::I32(y)) => int_op!(x, y, I32),
        _ => {
            return Err(format!(
                "{op:?} is not supported on {} and {}",
                a.dtype(),
                b.dtype()
            ))
        }
    };
    Ok(Tensor { shape, data })
}

fn equal(a: &Tensor, b: &Tensor) -> Result<Tensor, String> {
    let shape = broadcast(&a.shape, &b.shape)?;
    let ia = broadcast_map(&shape, &a.shape);
    let ib = broadcast_map(&shape, &b.shape);
    fn eq<T: PartialEq>(x: &[T], ia: &[usize], y: &[T], ib: &[usize]) -> Vec<bool> {
        ia.iter().zip(ib).map(|(&i, &j)| x[i] == y[j]).collect()
    }
    let v = match (&a.data, &b.data) {
        (Data::F32(x), Data::F32(y)) => eq(x, &ia, y, &ib),
        (Data::F64(x), Data::F64(y)) => eq(x, &ia, y, &ib),
        (Data::I32(x), Data::I32(y)) => eq(x, &ia, y, &ib),
        (Data::I64(x), Data::I64(y)) => eq(x, &ia, y, &ib),
        (Data::Bool(x), Data::Bool(y)) => eq(x, &ia, y, &ib),
        _ => return Err("inputs must have the same type".into()),
    };
    Ok(Tensor {
        shape,
        data: Data::Bool(v),
    })
}

/// [`Op::Compare`]: exact for integers, IEEE ordering (false for NaN) for floats.
fn compare(op: CmpOp, a: &Tensor, b: &Tensor) -> Result<Tensor, String> {
    let shape = broadcast(&a.shape, &b.shape)?;
    let ia = broadcast_map(&shape, &a.shape);
    let ib = broadcast_map(&shape, &b.shape);
    fn cmp<T: PartialOrd>(op: CmpOp, x: &[T], ia: &[usize], y: &[T], ib: &[usize]) -> Vec<bool> {
        ia.iter()
            .zip(ib)
            .map(|(&i, &j)| match op {
                CmpOp::Greater => x[i] > y[j],
                CmpOp::GreaterOrEqual => x[i] >= y[j],
                CmpOp::Less => x[i] < y[j],
                CmpOp::LessOrEqual => x[i] <= y[j],
            })
            .collect()
    }
    let v = match (&a.data, &b.data) {
        (Data::F32(x), Data::F32(y)) => cmp(op, x, &ia, y, &ib),
        (Data::F64(x), Data::F64(y)) => cmp(op, x, &ia, y, &ib),
        (Data::I32(x), Data::I32(y)) => cmp(op, x, &ia, y, &ib),
        (Data::I64(x), Data::I64(y)) => cmp(op, x, &ia, y, &ib),
        _ => {
            return Err(format!(
                "{op:?} is not supported on {} and {}",
                a.dtype(),
                b.dtype()
            ))
        }
    };
    Ok(Tensor {
        shape,
        data: Data::Bool(v),
    })
}

/// [`Op::Logical`] on two bool tensors.
fn logical(op: LogicalOp, a: &Tensor, b: &Tensor) -> Result<Tensor, String> {
    let (Data::Bool(x), Data::Bool(y)) = (&a.data, &b.data) else {
        return Err(format!(
            "inputs must be bool, are {} and {}",
            a.dtype(),
            b.dtype()
        ));
    };
    let shape = broadcast(&a.shape, &b.shape)?;
    let ia = broadcast_map(&shape, &a.shape);
    let ib = broadcast_map(&shape, &b.shape);
    let v = ia
        .iter()
        .zip(&ib)
        .map(|(&i, &j)| match op {
            LogicalOp::And => x[i] && y[j],
            LogicalOp::Or => x[i] || y[j],
            LogicalOp::Xor => x[i] != y[j],
        })
        .collect();
    Ok(Tensor {
        shape,
        data: Data::Bool(v),
    })
}

/// The one element of a scalar (or one-element) tensor.
fn scalar<T: Copy>(v: &[T], what: &str) -> Result<T, String> {
    match v {
        [x] => Ok(*x),
        _ => Err(format!("{what} must hold one element, holds {}", v.len())),
    }
}

/// ONNX `Range`: `max(ceil((limit - start) / delta), 0)` elements `start, start + delta, …`
/// (floats accumulate `delta` in float32, as ONNX Runtime does; integers are exact).
pub fn range(start: &Tensor, limit: &Tensor, delta: &Tensor) -> Result<Tensor, String> {
    fn ints<T>(s: T, l: T, d: T) -> Result<Vec<T>, String>
    where
        T: Copy + Into<i128> + TryFrom<i128>,
    {
        let (s, l, d) = (s.into(), l.into(), d.into());
        if d == 0 {
            return Err("delta must not be 0".into());
        }
        let span = l - s;
        // Ceiling division for either sign of delta.
        let n = if (span > 0) == (d > 0) && span != 0 {
            (span + d - d.signum()) / d
        } else {
            0
        };
        if n > MAX_ELEMENTS as i128 {
            return Err(format!("Range of {n} elements is too large"));
        }
        (0..n)
            .map(|i| T::try_from(s + i * d).map_err(|_| "Range overflows its type".to_string()))
            .collect()
    }
    let data = match (&start.data, &limit.data, &delta.data) {
        (Data::I64(s), Data::I64(l), Data::I64(d)) => Data::I64(ints(
            scalar(s, "start")?,
            scalar(l, "limit")?,
            scalar(d, "delta")?,
        )?),
        (Data::I32(s), Data::I32(l), Data::I32(d)) => Data::I32(ints(
            scalar(s, "start")?,
            scalar(l, "limit")?,
            scalar(d, "delta")?,
        )?),
        (Data::F32(s), Data::F32(l), Data::F32(d)) => {
            let (s, l, d) = (
                scalar(s, "start")?,
                scalar(l, "limit")?,
                scalar(d, "delta")?,
            );
            if d == 0.0 || !d.is_finite() || !s.is_finite() || !l.is_finite() {
                return Err(format!(
                    "start {s}, limit {l} and delta {d} must be finite, delta non-zero"
                ));
            }
            let n = (((l - s) / d).ceil()).max(0.0);
            if n > MAX_ELEMENTS as f32 {
                return Err(format!("Range of {n} elements is too large"));
            }
            let mut v = Vec::with_capacity(n as usize);
            let mut x = s;
            for _ in 0..n as usize {
                v.push(x);
                x += d;
            }
            Data::F32(v)
        }
        _ => {
            return Err(format!(
                "start, limit and delta must all be float32, int32 or int64, are {}, {}, {}",
                start.dtype(),
                limit.dtype(),
                delta.dtype()
            ))
        }
    };
    let n = data.len();
    Tensor::new(vec![n], data)
}

/// The output shape and, for every input element, the flat index of its output element,
/// of a reduction over `axes` (`None`: every axis).
fn reduce_map(
    shape: &[usize],
    axes: Option<&[i64]>,
    keepdims: bool,
) -> Result<(Vec<usize>, Vec<usize>, usize), String> {
    let rank = shape.len();
    let ax: Vec<usize> = match axes {
        Some(axes) => axes
            .iter()
            .map(|&x| norm_axis(x, rank))
            .collect::<Result<_, _>>()?,
        None => (0..rank).collect(),
    };
    let kept: Vec<usize> = (0..rank)
        .map(|d| if ax.contains(&d) { 1 } else { shape[d] })
        .collect();
    let map = broadcast_map(shape, &kept);
    let out_len = kept.iter().product();
    let out_shape = if keepdims {
        kept
    } else {
        (0..rank)
            .filter(|d| !ax.contains(d))
            .map(|d| shape[d])
            .collect()
    };
    Ok((out_shape, map, out_len))
}

/// [`Op::ReduceSum`]: floats accumulate in f64 (like [`Op::ReduceMean`]); integers wrap.
fn reduce_sum(a: &Tensor, axes: Option<&[i64]>, keepdims: bool) -> Result<Tensor, String> {
    let (shape, map, n) = reduce_map(&a.shape, axes, keepdims)?;
    let data = match &a.data {
        Data::F32(v) => {
            let mut sums = vec![0f64; n];
            for (x, &m) in v.iter().zip(&map) {
                sums[m] += *x as f64;
            }
            Data::F32(sums.into_iter().map(|s| s as f32).collect())
        }
        Data::I64(v) => {
            let mut sums = vec![0i64; n];
            for (x, &m) in v.iter().zip(&map) {
                sums[m] = sums[m].wrapping_add(*x);
            }
            Data::I64(sums)
        }
        Data::I32(v) => {
            let mut sums = vec![0i32; n];
            for (x, &m) in v.iter().zip(&map) {
                sums[m] = sums[m].wrapping_add(*x);
            }
            Data::I32(sums)
        }
        d => return Err(format!("ReduceSum is not supported on {}", d.dtype())),
    };
    Tensor::new(shape, data)
}

/// [`Op::Clip`]: `min` then `max`, each only when present; NaN stays NaN.
pub(crate) fn clip(x: f32, min: Option<f32>, max: Option<f32>) -> f32 {
    let mut y = x;
    if let Some(lo) = min {
        if y < lo {
            y = lo;
        }
    }
    if let Some(hi) = max {
        if y > hi {
            y = hi;
        }
    }
    y
}

fn cast(t: &Tensor, to: DType) -> Tensor {
    // Through f64, which holds every f32, i32 and (for the magnitudes shape maths uses) i64
    // exactly; float → int truncates toward zero and saturates, as ONNX Runtime's casts do.
    macro_rules! conv {
        ($v:expr) => {{
            let wide: Vec<f64> = $v.iter().map(|&x| x as f64).collect();
            match to {
                DType::F32 => Data::F32(wide.iter().map(|&x| x as f32).collect()),
                DType::F64 => Data::F64(wide),
                DType::I32 => Data::I32(wide.iter().map(|&x| x as i32).collect()),
                DType::I64 => Data::I64(wide.iter().map(|&x| x as i64).collect()),
                DType::Bool => Data::Bool(wide.iter().map(|&x| x != 0.0).collect()),
            }
        }};
    }
    let data = match (&t.data, to) {
        (d, to) if d.dtype() == to => d.clone(),
        // Integer to integer directly: i64 values beyond 2^53 (Slice's INT64_MAX ends) must
        // survive.
        (Data::I32(v), DType::I64) => Data::I64(v.iter().map(|&x| x as i64).collect()),
        (Data::I64(v), DType::I32) => Data::I32(v.iter().map(|&x| x as i32).collect()),
        (Data::F32(v), _) => conv!(v),
        (Data::F64(v), _) => conv!(v),
        (Data::I32(v), _) => conv!(v),
        (Data::I64(v), _) => conv!(v),
        (Data::Bool(v), _) => {
            let as_u8: Vec<u8> = v.iter().map(|&b| b as u8).collect();
            conv!(as_u8)
        }
    };
    Tensor {
        shape: t.shape.clone(),
        data,
    }
}

/// Batched matrix product with numpy broadcasting of the leading dims.
fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor, String> {
    let (x, y) = (f32s(a, "A")?, f32s(b, "B")?);
    if a.shape.is_empty() || b.shape.is_empty() {
        return Err("inputs must have rank >= 1".into());
    }
    let mut sa = a.shape.clone();
    let mut sb = b.shape.clone();
    if sa.len() == 1 {
        sa.insert(0, 1);
    }
    if sb.len() == 1 {
        sb.push(1);
    }
    let (m, k) = (sa[sa.len() - 2], sa[sa.len() - 1]);
    let (kb, n) = (sb[sb.len() - 2], sb[sb.len() - 1]);
    if k != kb {
        return Err(format!(
            "inner dims differ: A {:?} B {:?}",
            a.shape, b.shape
        ));
    }
    let batch = broadcast(&sa[..sa.len() - 2], &sb[..sb.len() - 2])?;
    let ba = broadcast_map(&batch, &sa[..sa.len() - 2]);
    let bb = broadcast_map(&batch, &sb[..sb.len() - 2]);
    let mut out = vec![0f32; ba.len() * m * n];
    for (bi, (&ia, &ib)) in ba.iter().zip(&bb).enumerate() {
        let (xa, yb) = (&x[ia * m * k..], &y[ib * k * n..]);
        let o = &mut out[bi * m * n..];
        for i in 0..m {
            for j in 0..n {
                let mut acc = 0f32;
                for p in 0..k {
                    acc += xa[i * k + p] * yb[p * n + j];
                }
                o[i * n + j] = acc;
            }
        }
    }
    let mut shape = batch;
    if a.shape.len() > 1 {
        shape.push(m);
    }
    if b.shape.len() > 1 {
        shape.push(n);
    }
    Tensor::f32(shape, out)
}

fn gemm(g: &super::ir::Gemm, a: &Tensor, b: &Tensor, c: Option<&Tensor>) -> Result<Tensor, String> {
    let (x, y) = (f32s(a, "A")?, f32s(b, "B")?);
    if b.shape.len() != 2 || a.shape.is_empty() || (g.trans_a && a.shape.len() != 2) {
        return Err(format!(
            "unsupported ranks: A {:?} B {:?}",
            a.shape, b.shape
        ));
    }
    let (m, k) = if g.trans_a {
        (a.shape[1], a.shape[0])
    } else {
        let k = a.shape[a.shape.len() - 1];
        (a.len() / k.max(1), k)
    };
    let (kb, n) = if g.trans_b {
        (b.shape[1], b.shape[0])
    } else {
        (b.shape[0], b.shape[1])
    };
    if k != kb {
        return Err(format!(
            "inner dims differ: A {:?} B {:?}",
            a.shape, b.shape
        ));
    }
    let mut shape: Vec<usize> = if g.trans_a {
        vec![m]
    } else {
        a.shape[..a.shape.len() - 1].to_vec()
    };
    shape.push(n);
    let bias = match c {
        None => None,
        Some(c) => {
            let full = broadcast(&shape, &c.shape)?;
            if full != shape {
                return Err(format!("C {:?} does not broadcast to {shape:?}", c.shape));
            }
            Some((f32s(c, "C")?, broadcast_map(&shape, &c.shape)))
        }
    };
    let mut out = vec![0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut acc = 0f32;
            for p in 0..k {
                let av = if g.trans_a {
                    x[p * m + i]
                } else {
                    x[i * k + p]
                };
                let bv = if g.trans_b {
                    y[j * k + p]
                } else {
                    y[p * n + j]
                };
                acc += av * bv;
            }
            let mut v = g.alpha * acc;
            if let Some((cv, map)) = &bias {
                v += g.beta * cv[map[i * n + j]];
            }
            out[i * n + j] = activate(g.activation, v);
        }
    }
    Tensor::f32(shape, out)
}

/// The indices `Slice` picks from a dim of size `n` (ONNX clamping rules).
pub fn slice_range(n: usize, start: i64, end: i64, step: i64) -> Result<Vec<usize>, String> {
    if step == 0 {
        return Err("step must not be 0".into());
    }
    let n = n as i64;
    let fix = |x: i64| if x < 0 { x + n } else { x };
    let (mut s, mut e) = (fix(start), fix(end));
    let mut out = Vec::new();
    if step > 0 {
        s = s.clamp(0, n);
        e = e.clamp(0, n);
        let mut i = s;
        while i < e {
            out.push(i as usize);
            i = match i.checked_add(step) {
                Some(i) => i,
                None => break,
            };
        }
    } else {
        s = s.clamp(-1, n - 1);
        e = e.clamp(-1, n - 1);
        let mut i = s;
        while i > e {
            out.push(i as usize);
            i = match i.checked_add(step) {
                Some(i) => i,
                None => break,
            };
        }
    }
    Ok(out)
}

/// Source indices for picking, along each axis, the listed positions (a cartesian product).
fn select_axes(shape: &[usize], picks: &[Vec<usize>]) -> Vec<usize> {
    let st = strides(shape);
    let mut idx = vec![0usize];
    for (d, p) in picks.iter().enumerate() {
        let mut next = Vec::with_capacity(idx.len() * p.len());
        for &base in &idx {
            for &i in p {
                next.push(base + i * st[d]);
            }
        }
        idx = next;
    }
    idx
}

/// Layer normalization of `a` over the dims from `axis` on, statistics in f64, then
/// `· scale [+ bias]` in f32 ([`Op::LayerNorm`], and [`Op::AddLayerNorm`] on `x + residual`).
fn layer_norm(
    a: &Tensor,
    axis: i64,
    epsilon: f32,
    scale: &Tensor,
    bias: Option<&Tensor>,
) -> Result<Tensor, String> {
    let v = f32s(a, "X")?;
    let ax = norm_axis(axis, a.shape.len())?;
    let n: usize = a.shape[ax..].iter().product();
    let norm_shape = a.shape[ax..].to_vec();
    for t in std::iter::once(scale).chain(bias) {
        if broadcast(&norm_shape, &t.shape)? != norm_shape {
            return Err(format!(
                "scale/bias {:?} do not broadcast to {norm_shape:?}",
                t.shape
            ));
        }
    }
    let sm = broadcast_map(&norm_shape, &scale.shape);
    let sv = f32s(scale, "scale")?;
    let bias = match bias {
        Some(b) => Some((f32s(b, "bias")?, broadcast_map(&norm_shape, &b.shape))),
        None => None,
    };
    let mut out = vec![0f32; v.len()];
    for r in 0..v.len() / n.max(1) {
        let row = &v[r * n..(r + 1) * n];
        let mean = row.iter().map(|&x| x as f64).sum::<f64>() / n as f64;
        let var = row.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n as f64;
        let inv = 1.0 / (var + epsilon as f64).sqrt();
        for j in 0..n {
            let mut y = ((row[j] as f64 - mean) * inv) as f32 * sv[sm[j]];
            if let Some((bv, bm)) = &bias {
                y += bv[bm[j]];
            }
            out[r * n + j] = y;
        }
    }
    Tensor::f32(a.shape.clone(), out)
}

/// [`Op::Attention`]: for every `(b, h)` and query row `i`,
/// `s_j = (Σ_p q[i, p] · k'[p, j]) · scale + mask[i, j]`, `p_j = exp(s_j - max s) / Σ exp(..)`,
/// `out[i, d] = Σ_j round_probs(p_j) · v[j, d]`, every sum accumulated in f32 in index order.
/// `round_probs` is the identity in FP32; the FP16 emulation rounds the probabilities to half
/// there, where a kernel feeds them to its second (FP16) GEMM.
pub(crate) fn attention(
    scale: f32,
    k_transposed: bool,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    round_probs: &dyn Fn(f32) -> f32,
) -> Result<Tensor, String> {
    let (qv, kv, vv) = (f32s(q, "q")?, f32s(k, "k")?, f32s(v, "v")?);
    if q.shape.len() != 4 || k.shape.len() != 4 || v.shape.len() != 4 {
        return Err(format!(
            "q, k and v must have rank 4: q {:?} k {:?} v {:?}",
            q.shape, k.shape, v.shape
        ));
    }
    let (b, h, sq, d) = (q.shape[0], q.shape[1], q.shape[2], q.shape[3]);
    let (kd, sk) = if k_transposed {
        (k.shape[2], k.shape[3])
    } else {
        (k.shape[3], k.shape[2])
    };
    let dv = v.shape[3];
    if k.shape[..2] != q.shape[..2] || v.shape[..2] != q.shape[..2] || kd != d || v.shape[2] != sk {
        return Err(format!(
            "shapes do not agree: q {:?} k {:?} (k_transposed = {k_transposed}) v {:?}",
            q.shape, k.shape, v.shape
        ));
    }
    let scores_shape = [b, h, sq, sk];
    element_count(&scores_shape)?;
    let mask = match mask {
        None => None,
        Some(m) => {
            if broadcast(&scores_shape, &m.shape)? != scores_shape {
                return Err(format!(
                    "mask {:?} does not broadcast to {scores_shape:?}",
                    m.shape
                ));
            }
            Some((f32s(m, "mask")?, broadcast_map(&scores_shape, &m.shape)))
        }
    };
    let mut out = vec![0f32; b * h * sq * dv];
    let mut s = vec![0f32; sk];
    for bh in 0..b * h {
        let (qb, kb, vb) = (&qv[bh * sq * d..], &kv[bh * d * sk..], &vv[bh * sk * dv..]);
        for i in 0..sq {
            for (j, sj) in s.iter_mut().enumerate() {
                let mut acc = 0f32;
                for p in 0..d {
                    let kpj = if k_transposed {
                        kb[p * sk + j]
                    } else {
                        kb[j * d + p]
                    };
                    acc += qb[i * d + p] * kpj;
                }
                *sj = acc * scale;
                if let Some((mv, map)) = &mask {
                    *sj += mv[map[(bh * sq + i) * sk + j]];
                }
            }
            let max = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let sum: f32 = s.iter().map(|&x| (x - max).exp()).sum();
            for sj in s.iter_mut() {
                *sj = round_probs((*sj - max).exp() / sum);
            }
            let o = &mut out[(bh * sq + i) * dv..(bh * sq + i + 1) * dv];
            for (c, oc) in o.iter_mut().enumerate() {
                let mut acc = 0f32;
                for (j, &pj) in s.iter().enumerate() {
                    acc += pj * vb[j * dv + c];
                }
                *oc = acc;
            }
        }
    }
    Tensor::f32(vec![b, h, sq, dv], out)
}

/// Evaluates one operator on concrete inputs.
pub fn eval(op: &Op, x: &[&Tensor]) -> Result<Vec<Tensor>, String> {
    let arg = |i: usize| {
        x.get(i)
            .copied()
            .ok_or_else(|| format!("missing input {i}"))
    };
    let one = |t: Tensor| -> Result<Vec<Tensor>, String> { Ok(vec![t]) };
    match op {
        Op::Unary(u) => {
            let a = arg(0)?;
            one(Tensor::f32(
                a.shape.clone(),
                f32s(a, "input")?.iter().map(|&v| unary(*u, v)).collect(),
            )?)
        }
        Op::Binary(b) => one(binary(*b, arg(0)?, arg(1)?)?),
        Op::Equal => one(equal(arg(0)?, arg(1)?)?),
        Op::Compare(c) => one(compare(*c, arg(0)?, arg(1)?)?),
        Op::Logical(l) => one(logical(*l, arg(0)?, arg(1)?)?),
        Op::Not => {
            let a = arg(0)?;
            let Data::Bool(v) = &a.data else {
                return Err(format!("input must be bool, is {}", a.dtype()));
            };
            one(Tensor {
                shape: a.shape.clone(),
                data: Data::Bool(v.iter().map(|b| !b).collect()),
            })
        }
        Op::Range => one(range(arg(0)?, arg(1)?, arg(2)?)?),
        Op::Flatten { axis } => {
            let a = arg(0)?;
            let r = a.shape.len() as i64;
            let ax = if *axis < 0 { axis + r } else { *axis };
            if ax < 0 || ax > r {
                return Err(format!("axis {axis} is out of range for rank {r}"));
            }
            let ax = ax as usize;
            let outer: usize = a.shape[..ax].iter().product();
            let inner: usize = a.shape[ax..].iter().product();
            one(Tensor::new(vec![outer, inner], a.data.clone())?)
        }
        Op::ReduceSum { axes, keepdims } => one(reduce_sum(arg(0)?, axes.as_deref(), *keepdims)?),
        Op::Clip { min, max } => {
            let a = arg(0)?;
            one(Tensor::f32(
                a.shape.clone(),
                f32s(a, "input")?
                    .iter()
                    .map(|&v| clip(v, *min, *max))
                    .collect(),
            )?)
        }
        Op::Where => {
            let (c, a, b) = (arg(0)?, arg(1)?, arg(2)?);
            let Data::Bool(cv) = &c.data else {
                return Err("condition must be bool".into());
            };
            let shape = broadcast(&broadcast(&c.shape, &a.shape)?, &b.shape)?;
            let (ic, ia, ib) = (
                broadcast_map(&shape, &c.shape),
                broadcast_map(&shape, &a.shape),
                broadcast_map(&shape, &b.shape),
            );
            let both = concat_data(&[&a.data, &b.data])?;
            let idx: Vec<usize> = (0..ic.len())
                .map(|i| if cv[ic[i]] { ia[i] } else { a.len() + ib[i] })
                .collect();
            one(Tensor {
                shape,
                data: take(&both, &idx),
            })
        }
        Op::Identity => one(arg(0)?.clone()),
        Op::Cast { to } => one(cast(arg(0)?, *to)),
        Op::MatMul => one(matmul(arg(0)?, arg(1)?)?),
        Op::Gemm(g) => one(gemm(g, arg(0)?, arg(1)?, x.get(2).copied())?),
        Op::Scaler { offset, scale } => {
            let a = cast(arg(0)?, DType::F32);
            let v = f32s(&a, "input")?;
            let c = a.shape.last().copied().unwrap_or(1).max(1);
            let pick = |p: &[f32], i: usize| {
                if p.len() == 1 {
                    p[0]
                } else {
                    p.get(i % c).copied().unwrap_or(0.0)
                }
            };
            if (offset.len() != 1 && offset.len() != c) || (scale.len() != 1 && scale.len() != c) {
                return Err(format!(
                    "offset/scale lengths {}/{} do not match {c} features",
                    offset.len(),
                    scale.len()
                ));
            }
            one(Tensor::f32(
                a.shape.clone(),
                v.iter()
                    .enumerate()
                    .map(|(i, &x)| (x - pick(offset, i)) * pick(scale, i))
                    .collect(),
            )?)
        }
        Op::Concat { axis } => {
            let first = arg(0)?;
            let rank = first.shape.len();
            let ax = norm_axis(*axis, rank)?;
            for t in x {
                if t.shape.len() != rank
                    || (0..rank).any(|d| d != ax && t.shape[d] != first.shape[d])
                {
                    return Err(format!(
                        "shapes {:?} and {:?} cannot be joined on axis {ax}",
                        first.shape, t.shape
                    ));
                }
            }
            let outer: usize = first.shape[..ax].iter().product();
            let inner: usize = first.shape[ax + 1..].iter().product();
            let mut bases = Vec::new();
            let mut base = 0;
            for t in x {
                bases.push(base);
                base += t.len();
            }
            let mut idx = Vec::with_capacity(base);
            for o in 0..outer {
                for (t, &b) in x.iter().zip(&bases) {
                    let block = t.shape[ax] * inner;
                    idx.extend(b + o * block..b + (o + 1) * block);
                }
            }
            let all = concat_data(&x.iter().map(|t| &t.data).collect::<Vec<_>>())?;
            let mut shape = first.shape.clone();
            shape[ax] = x.iter().map(|t| t.shape[ax]).sum();
            one(Tensor {
                shape,
                data: take(&all, &idx),
            })
        }
        Op::ArgMax {
            axis,
            keepdims,
            select_last_index,
        } => {
            let a = arg(0)?;
            let ax = norm_axis(*axis, a.shape.len())?;
            let v: Vec<f64> = match &a.data {
                Data::F32(v) => v.iter().map(|&x| x as f64).collect(),
                Data::F64(v) => v.clone(),
                Data::I32(v) => v.iter().map(|&x| x as f64).collect(),
                Data::I64(v) => v.iter().map(|&x| x as f64).collect(),
                Data::Bool(_) => return Err("ArgMax on bool".into()),
            };
            let (outer, n) = (a.shape[..ax].iter().product::<usize>(), a.shape[ax]);
            let inner: usize = a.shape[ax + 1..].iter().product();
            if n == 0 {
                return Err("ArgMax over an empty axis".into());
            }
            let mut out = Vec::with_capacity(outer * inner);
            for o in 0..outer {
                for i in 0..inner {
                    let mut best = 0;
                    for j in 1..n {
                        let (cur, b) = (v[(o * n + j) * inner + i], v[(o * n + best) * inner + i]);
                        if cur > b || (*select_last_index && cur == b) {
                            best = j;
                        }
                    }
                    out.push(best as i64);
                }
            }
            let mut shape = a.shape.clone();
            if *keepdims {
                shape[ax] = 1;
            } else {
                shape.remove(ax);
            }
            one(Tensor::i64(shape, out)?)
        }
        Op::ArrayFeatureExtractor => {
            let (a, y) = (arg(0)?, arg(1)?);
            let idx = ints(y, "indices")?;
            let stride = a.shape.last().copied().unwrap_or(1);
            let outer = a.len().checked_div(stride).unwrap_or(0);
            let mut src = Vec::with_capacity(outer * idx.len());
            for o in 0..outer {
                for &i in &idx {
                    let i = usize::try_from(i)
                        .ok()
                        .filter(|&i| i < stride)
                        .ok_or_else(|| {
                            format!("index {i} is out of range for {stride} features")
                        })?;
                    src.push(o * stride + i);
                }
            }
            let shape = if a.shape.len() <= 1 {
                vec![1, idx.len()]
            } else {
                let mut s = a.shape[..a.shape.len() - 1].to_vec();
                s.push(idx.len());
                s
            };
            one(Tensor {
                shape,
                data: take(&a.data, &src),
            })
        }
        Op::Reshape { allowzero } => {
            let (a, s) = (arg(0)?, arg(1)?);
            let target = ints(s, "shape")?;
            let mut shape = Vec::with_capacity(target.len());
            let mut infer_at = None;
            for (i, &t) in target.iter().enumerate() {
                shape.push(match t {
                    -1 => {
                        if infer_at.replace(i).is_some() {
                            return Err("more than one -1 in shape".into());
                        }
                        1
                    }
                    0 if !allowzero => *a.shape.get(i).ok_or("0 in shape past the input's rank")?,
                    t if t >= 0 => t as usize,
                    t => return Err(format!("invalid dim {t}")),
                });
            }
            if let Some(at) = infer_at {
                let rest: usize = shape.iter().product();
                if rest == 0 || a.len() % rest != 0 {
                    return Err(format!("cannot reshape {:?} into {target:?}", a.shape));
                }
                shape[at] = a.len() / rest;
            }
            one(Tensor::new(shape, a.data.clone())
                .map_err(|e| format!("cannot reshape {:?} into {target:?}: {e}", a.shape))?)
        }
        Op::Unsqueeze { axes } => {
            let a = arg(0)?;
            let rank = a.shape.len() + axes.len();
            let ax: Vec<usize> = axes
                .iter()
                .map(|&x| norm_axis(x, rank))
                .collect::<Result<_, _>>()?;
            let mut it = a.shape.iter();
            let shape = (0..rank)
                .map(|d| {
                    if ax.contains(&d) {
                        1
                    } else {
                        it.next().copied().unwrap_or(1)
                    }
                })
                .collect();
            one(Tensor::new(shape, a.data.clone())?)
        }
        Op::Squeeze { axes } => {
            let a = arg(0)?;
            let ax: Vec<usize> = match axes {
                Some(axes) => axes
                    .iter()
                    .map(|&x| norm_axis(x, a.shape.len()))
                    .collect::<Result<_, _>>()?,
                None => (0..a.shape.len()).filter(|&d| a.shape[d] == 1).collect(),
            };
            if let Some(&d) = ax.iter().find(|&&d| a.shape[d] != 1) {
                return Err(format!("cannot squeeze axis {d} of size {}", a.shape[d]));
            }
            let shape = a
                .shape
                .iter()
                .enumerate()
                .filter(|(i, _)| !ax.contains(i))
                .map(|(_, &d)| d)
                .collect();
            one(Tensor::new(shape, a.data.clone())?)
        }
        Op::Gather { axis } => {
            let (a, q) = (arg(0)?, arg(1)?);
            let ax = norm_axis(*axis, a.shape.len())?;
            let n = a.shape[ax] as i64;
            let idx: Vec<usize> = ints(q, "indices")?
                .into_iter()
                .map(|i| {
                    let j = if i < 0 { i + n } else { i };
                    if j < 0 || j >= n {
                        Err(format!("index {i} is out of range for a dim of {n}"))
                    } else {
                        Ok(j as usize)
                    }
                })
                .collect::<Result<_, _>>()?;
            let outer: usize = a.shape[..ax].iter().product();
            let inner: usize = a.shape[ax + 1..].iter().product();
            let mut src = Vec::with_capacity(outer * idx.len() * inner);
            for o in 0..outer {
                for &i in &idx {
                    src.extend((0..inner).map(|k| (o * a.shape[ax] + i) * inner + k));
                }
            }
            let mut shape = a.shape[..ax].to_vec();
            shape.extend_from_slice(&q.shape);
            shape.extend_from_slice(&a.shape[ax + 1..]);
            one(Tensor {
                shape,
                data: take(&a.data, &src),
            })
        }
        Op::Shape { start, end } => {
            let a = arg(0)?;
            let (s, e) = shape_range(a.shape.len(), *start, *end);
            let dims: Vec<i64> = a.shape[s..e].iter().map(|&d| d as i64).collect();
            one(Tensor::i64(vec![dims.len()], dims)?)
        }
        Op::Slice => {
            let a = arg(0)?;
            let starts = ints(arg(1)?, "starts")?;
            let ends = ints(arg(2)?, "ends")?;
            let axes: Vec<usize> = match x.get(3) {
                Some(t) => ints(t, "axes")?
                    .into_iter()
                    .map(|v| norm_axis(v, a.shape.len()))
                    .collect::<Result<_, _>>()?,
                None => (0..starts.len()).collect(),
            };
            let steps = match x.get(4) {
                Some(t) => ints(t, "steps")?,
                None => vec![1; starts.len()],
            };
            if ends.len() != starts.len()
                || axes.len() != starts.len()
                || steps.len() != starts.len()
            {
                return Err("starts, ends, axes and steps must have the same length".into());
            }
            let mut picks: Vec<Vec<usize>> = a.shape.iter().map(|&n| (0..n).collect()).collect();
            for j in 0..starts.len() {
                picks[axes[j]] = slice_range(a.shape[axes[j]], starts[j], ends[j], steps[j])?;
            }
            let shape = picks.iter().map(Vec::len).collect();
            one(Tensor {
                shape,
                data: take(&a.data, &select_axes(&a.shape, &picks)),
            })
        }
        Op::Transpose { perm } => {
            let a = arg(0)?;
            let rank = a.shape.len();
            let p: Vec<usize> = perm.clone().unwrap_or_else(|| (0..rank).rev().collect());
            let mut sorted = p.clone();
            sorted.sort_unstable();
            if sorted != (0..rank).collect::<Vec<_>>() {
                return Err(format!("perm {p:?} is not a permutation of rank {rank}"));
            }
            let shape: Vec<usize> = p.iter().map(|&i| a.shape[i]).collect();
            let st = strides(&a.shape);
            let out_strides: Vec<usize> = p.iter().map(|&i| st[i]).collect();
            // Walk the output in order; output dim d steps the input by out_strides[d].
            let mut idx = vec![0usize];
            for (&n, &s) in shape.iter().zip(&out_strides) {
                idx = idx
                    .iter()
                    .flat_map(|&b| (0..n).map(move |i| b + i * s))
                    .collect();
            }
            one(Tensor {
                shape,
                data: take(&a.data, &idx),
            })
        }
        Op::ReduceMean { axes, keepdims } => {
            let a = arg(0)?;
            let v = f32s(a, "input")?;
            let (shape, map, n) = reduce_map(&a.shape, axes.as_deref(), *keepdims)?;
            let count = a.len().checked_div(n).unwrap_or(0);
            let mut sums = vec![0f64; n];
            for (x, &m) in v.iter().zip(&map) {
                sums[m] += *x as f64;
            }
            let out: Vec<f32> = sums
                .iter()
                .map(|s| (s / count.max(1) as f64) as f32)
                .collect();
            one(Tensor::f32(shape, out)?)
        }
        Op::Softmax { axis, coerce_2d } => {
            let a = arg(0)?;
            let v = f32s(a, "input")?;
            let ax = norm_axis(*axis, a.shape.len())?;
            let (outer, n, inner) = if *coerce_2d {
                (
                    a.shape[..ax].iter().product::<usize>(),
                    a.shape[ax..].iter().product::<usize>(),
                    1,
                )
            } else {
                (
                    a.shape[..ax].iter().product(),
                    a.shape[ax],
                    a.shape[ax + 1..].iter().product(),
                )
            };
            let mut out = v.to_vec();
            for o in 0..outer {
                for i in 0..inner {
                    let at = |j: usize| (o * n + j) * inner + i;
                    let max = (0..n).map(|j| v[at(j)]).fold(f32::NEG_INFINITY, f32::max);
                    let sum: f32 = (0..n).map(|j| (v[at(j)] - max).exp()).sum();
                    for j in 0..n {
                        out[at(j)] = (v[at(j)] - max).exp() / sum;
                    }
                }
            }
            one(Tensor::f32(a.shape.clone(), out)?)
        }
        Op::LayerNorm { axis, epsilon } => one(layer_norm(
            arg(0)?,
            *axis,
            *epsilon,
            arg(1)?,
            x.get(2).copied(),
        )?),
        Op::AddLayerNorm { axis, epsilon } => {
            let (a, r) = (arg(0)?, arg(1)?);
            if a.shape != r.shape {
                return Err(format!(
                    "x {:?} and residual {:?} must have the same shape",
                    a.shape, r.shape
                ));
            }
            let sum: Vec<f32> = f32s(a, "x")?
                .iter()
                .zip(f32s(r, "residual")?)
                .map(|(p, q)| p + q)
                .collect();
            let sum = Tensor::f32(a.shape.clone(), sum)?;
            one(layer_norm(
                &sum,
                *axis,
                *epsilon,
                arg(2)?,
                x.get(3).copied(),
            )?)
        }
        Op::Attention {
            scale,
            k_transposed,
        } => one(attention(
            *scale,
            *k_transposed,
            arg(0)?,
            arg(1)?,
            arg(2)?,
            x.get(3).copied(),
            &|p| p,
        )?),
        Op::Expand => {
            let (a, s) = (arg(0)?, arg(1)?);
            let target = dims_of(&ints(s, "shape")?, "shape")?;
            let shape = broadcast(&a.shape, &target)?;
            element_count(&shape)?;
            let idx = broadcast_map(&shape, &a.shape);
            one(Tensor {
                shape,
                data: take(&a.data, &idx),
            })
        }
        Op::ConstantOfShape { value } => {
            let shape = dims_of(&ints(arg(0)?, "shape")?, "shape")?;
            let n = element_count(&shape)?;
            one(Tensor {
                shape,
                data: take(&value.data, &vec![0; n]),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erf_matches_known_values() {
        for (x, want) in [
            (0.0, 0.0),
            (0.5, 0.520_499_877_8),
            (1.0, 0.842_700_792_9),
            (2.0, 0.995_322_265),
            (-3.0, -0.999_977_909_5),
            (3.5, 0.999_999_256_9),
        ] {
            assert!(
                (switchyard_kernels::program_cpu::erf(x) - want).abs() < 1e-9,
                "erf({x}) = {} want {want}",
                switchyard_kernels::program_cpu::erf(x)
            );
        }
    }

    #[test]
    fn broadcasting_binary_and_matmul() {
        let a = Tensor::f32(vec![2, 3], vec![1., 2., 3., 4., 5., 6.]).unwrap();
        let b = Tensor::f32(vec![3], vec![10., 20., 30.]).unwrap();
        let s = binary(BinaryOp::Add, &a, &b).unwrap();
        assert_eq!(s.as_f32s().unwrap(), &[11., 22., 33., 14., 25., 36.]);
        let w = Tensor::f32(vec![3, 1], vec![1., 1., 1.]).unwrap();
        let m = matmul(&a, &w).unwrap();
        assert_eq!(m.shape, vec![2, 1]);
        assert_eq!(m.as_f32s().unwrap(), &[6., 15.]);
    }

    #[test]
    fn transpose_slice_gather() {
        let a = Tensor::i64(vec![2, 3], vec![0, 1, 2, 3, 4, 5]).unwrap();
        let t = eval(&Op::Transpose { perm: None }, &[&a])
            .unwrap()
            .remove(0);
        assert_eq!(
            (t.shape.clone(), t.as_i64s().unwrap()),
            (vec![3, 2], vec![0, 3, 1, 4, 2, 5])
        );
        let st = Tensor::i64(vec![1], vec![-2]).unwrap();
        let en = Tensor::i64(vec![1], vec![i64::MAX]).unwrap();
        let ax = Tensor::i64(vec![1], vec![1]).unwrap();
        let s = eval(&Op::Slice, &[&a, &st, &en, &ax]).unwrap().remove(0);
        assert_eq!(
            (s.shape.clone(), s.as_i64s().unwrap()),
            (vec![2, 2], vec![1, 2, 4, 5])
        );
        let q = Tensor::i64(vec![2], vec![1, -1]).unwrap();
        let g = eval(&Op::Gather { axis: 0 }, &[&a, &q]).unwrap().remove(0);
        assert_eq!(g.as_i64s().unwrap(), vec![3, 4, 5, 3, 4, 5]);
    }

    #[test]
    fn range_counts_and_negative_delta() {
        let i = |v: i64| Tensor::i64(vec![], vec![v]).unwrap();
        let r = eval(&Op::Range, &[&i(0), &i(5), &i(2)]).unwrap().remove(0);
        assert_eq!(
            (r.shape.clone(), r.as_i64s().unwrap()),
            (vec![3], vec![0, 2, 4])
        );
        let r = eval(&Op::Range, &[&i(10), &i(4), &i(-3)])
            .unwrap()
            .remove(0);
        assert_eq!(r.as_i64s().unwrap(), vec![10, 7]);
        let r = eval(&Op::Range, &[&i(3), &i(3), &i(1)]).unwrap().remove(0);
        assert_eq!(r.shape, vec![0]);
        let r = eval(&Op::Range, &[&i(0), &i(5), &i(-1)]).unwrap().remove(0);
        assert_eq!(r.shape, vec![0]);
        assert!(eval(&Op::Range, &[&i(0), &i(5), &i(0)]).is_err());
        let f = |v: f32| Tensor::f32(vec![], vec![v]).unwrap();
        let r = eval(&Op::Range, &[&f(1.0), &f(-1.0), &f(-0.5)])
            .unwrap()
            .remove(0);
        assert_eq!(r.as_f32s().unwrap(), &[1.0, 0.5, 0.0, -0.5]);
        let r32 = Tensor::new(vec![], Data::I32(vec![2])).unwrap();
        assert!(
            eval(&Op::Range, &[&r32, &i(5), &i(1)]).is_err(),
            "mixed dtypes"
        );
    }

    #[test]
    fn compare_and_logical_broadcast() {
        let a = Tensor::i64(vec![2, 1], vec![1, 3]).unwrap();
        let b = Tensor::i64(vec![3], vec![1, 2, 3]).unwrap();
        let bools = |t: Tensor| match t.data {
            Data::Bool(v) => (t.shape, v),
            d => panic!("not bool: {d:?}"),
        };
        let ge = eval(&Op::Compare(CmpOp::GreaterOrEqual), &[&a, &b])
            .unwrap()
            .remove(0);
        assert_eq!(
            bools(ge),
            (vec![2, 3], vec![true, false, false, true, true, true])
        );
        let lt = eval(&Op::Compare(CmpOp::Less), &[&a, &b])
            .unwrap()
            .remove(0);
        assert_eq!(bools(lt).1, vec![false, true, true, false, false, false]);
        let x = Tensor::f32(vec![2], vec![0.5, f32::NAN]).unwrap();
        let y = Tensor::f32(vec![], vec![0.5]).unwrap();
        let gt = eval(&Op::Compare(CmpOp::Greater), &[&x, &y])
            .unwrap()
            .remove(0);
        assert_eq!(bools(gt).1, vec![false, false]);
        let le = eval(&Op::Compare(CmpOp::LessOrEqual), &[&x, &y])
            .unwrap()
            .remove(0);
        assert_eq!(bools(le).1, vec![true, false]);
        let p = Tensor::new(vec![2, 1], Data::Bool(vec![true, false])).unwrap();
        let q = Tensor::new(vec![2], Data::Bool(vec![true, false])).unwrap();
        for (op, want) in [
            (LogicalOp::And, vec![true, false, false, false]),
            (LogicalOp::Or, vec![true, true, true, false]),
            (LogicalOp::Xor, vec![false, true, true, false]),
        ] {
            let r = eval(&Op::Logical(op), &[&p, &q]).unwrap().remove(0);
            assert_eq!(bools(r), (vec![2, 2], want), "{op:?}");
        }
        let n = eval(&Op::Not, &[&q]).unwrap().remove(0);
        assert_eq!(bools(n).1, vec![false, true]);
        assert!(eval(&Op::Logical(LogicalOp::And), &[&a, &a]).is_err());
    }

    #[test]
    fn flatten_reduce_sum_clip() {
        let a = Tensor::i64(vec![2, 3, 2], (0..12).collect()).unwrap();
        let f = eval(&Op::Flatten { axis: 2 }, &[&a]).unwrap().remove(0);
        assert_eq!(f.shape, vec![6, 2]);
        let f = eval(&Op::Flatten { axis: 0 }, &[&a]).unwrap().remove(0);
        assert_eq!(f.shape, vec![1, 12]);
        let f = eval(&Op::Flatten { axis: -3 }, &[&a]).unwrap().remove(0);
        assert_eq!(f.shape, vec![1, 12]);
        assert!(eval(&Op::Flatten { axis: 4 }, &[&a]).is_err());
        let s = eval(
            &Op::ReduceSum {
                axes: Some(vec![1]),
                keepdims: false,
            },
            &[&a],
        )
        .unwrap()
        .remove(0);
        assert_eq!(
            (s.shape.clone(), s.as_i64s().unwrap()),
            (vec![2, 2], vec![6, 9, 24, 27])
        );
        let x = Tensor::f32(vec![2, 2], vec![1.0, 2.0, 3.0, 4.5]).unwrap();
        let s = eval(
            &Op::ReduceSum {
                axes: None,
                keepdims: true,
            },
            &[&x],
        )
        .unwrap()
        .remove(0);
        assert_eq!(
            (s.shape.clone(), s.as_f32s().unwrap()),
            (vec![1, 1], &[10.5f32][..])
        );
        let s = eval(
            &Op::ReduceSum {
                axes: Some(vec![-1]),
                keepdims: true,
            },
            &[&x],
        )
        .unwrap()
        .remove(0);
        assert_eq!(
            (s.shape.clone(), s.as_f32s().unwrap()),
            (vec![2, 1], &[3.0f32, 7.5][..])
        );
        let x = Tensor::f32(vec![4], vec![-1.0, 1e-12, 5.0, f32::NAN]).unwrap();
        let c = eval(
            &Op::Clip {
                min: Some(1e-9),
                max: None,
            },
            &[&x],
        )
        .unwrap()
        .remove(0);
        let v = c.as_f32s().unwrap();
        assert_eq!(&v[..3], &[1e-9, 1e-9, 5.0]);
        assert!(v[3].is_nan());
        let c = eval(
            &Op::Clip {
                min: None,
                max: Some(0.0),
            },
            &[&x],
        )
        .unwrap()
        .remove(0);
        assert_eq!(&c.as_f32s().unwrap()[..3], &[-1.0, 0.0, 0.0]);
        // min > max: everything becomes max, as ONNX Runtime does.
        assert_eq!(clip(0.5, Some(2.0), Some(1.0)), 1.0);
    }
}
