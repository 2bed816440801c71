//! Lowering: a compiled graph, specialised to concrete input shapes, becomes a
//! [`Program`] — the device steps the GPU executor runs (`kernels::program`).
//!
//! 1. **Specialise**: the graph inputs get their concrete dims, shapes are re-inferred and
//!    everything that only depends on shapes (`Shape`, the index maths after it,
//!    `ConstantOfShape`) folds to constants.
//! 2. **Precision**: [`precision::assign`] on the specialised graph; INT8 GEMMs take their
//!    activation scale from the calibration table.
//! 3. **Steps**: each node becomes zero (`Reshape`, `Squeeze`, `Unsqueeze`, `Identity` alias
//!    their input), one or a few steps. A node computing in FP16 gets every float input as
//!    an F16 buffer (a cast step for an F32 activation, converted weights for constants), so
//!    the step's operands are in its compute type, as the emulation rounds them
//!    (`engine::emulate`). Data movement keeps its input's element type (lossless).
//! 4. **Memory**: buffers are numbered while lowering; their live ranges (graph inputs from
//!    the start, outputs to the end) are packed first-fit into one arena, 256-byte aligned.
//!
//! `kernels::program_cpu` runs the result on the CPU with the kernels' semantics; the tests
//! compare it with ONNX Runtime (FP32) and with the emulation (FP16, INT8).

use std::collections::HashMap;

use half::f16;
use switchyard_kernels::program::{
    Act, AttentionStep, Binding, Buf, Elem, EwOp, GemmInt8Step, GemmStep, IndexCheck, Loc, Program,
    Step, View, Weight, ALIGN, MAX_RANK,
};

use super::calibrate::CalibrationTable;
use super::fold::fold_constants;
use super::infer::{infer_all, norm_axis};
use super::ir::{
    Activation, BinaryOp, DType, Data, Dim, Graph, LogicalOp, Node, Op, Tensor, UnaryOp, ValueId,
};
use super::precision::{self, Precision, PrecisionPlan};
use super::quant::QuantizedWeights;
use super::reference::slice_range;
use super::EngineError;

/// The graph with its inputs bound to `shapes` and every shape-only computation folded.
pub fn specialize(graph: &Graph, shapes: &[(&str, Vec<usize>)]) -> Result<Graph, EngineError> {
    let mut g = graph.clone();
    for &i in &g.inputs.clone() {
        let v = &mut g.values[i];
        let dims = shapes
            .iter()
            .find(|(n, _)| *n == v.name)
            .map(|(_, d)| d)
            .ok_or_else(|| EngineError::Input(format!("no shape given for input '{}'", v.name)))?;
        if let Some(declared) = &v.shape {
            let fits = declared.len() == dims.len()
                && declared
                    .iter()
                    .zip(dims)
                    .all(|(d, &n)| !matches!(d, Dim::Known(k) if *k != n));
            if !fits {
                return Err(EngineError::Input(format!(
                    "input '{}' has shape {dims:?}, the model declares {}",
                    v.name,
                    super::ir::shape_string(&v.shape)
                )));
            }
        }
        v.shape = Some(dims.iter().map(|&n| Dim::Known(n)).collect());
    }
    infer_all(&mut g)?;
    while fold_constants(&mut g)? > 0 {}
    g.remove_unused();
    // With every dim known, patterns whose shapes were unknown symbolically fuse now (torch
    // builds its reshape targets from Shape → Gather → Concat, which only folding resolves).
    super::fuse::fuse_attention(&mut g)?;
    super::fuse::fuse_add_layer_norm(&mut g)?;
    g.remove_unused();
    Ok(g)
}

/// Lowers `graph` (from [`super::compile`]) for inputs of `shapes` at `mode`.
pub fn lower(
    graph: &Graph,
    shapes: &[(&str, Vec<usize>)],
    mode: Precision,
    calibration: Option<&CalibrationTable>,
) -> Result<Program, EngineError> {
    let g = specialize(graph, shapes)?;
    let plan = precision::assign_with(&g, mode, calibration);
    let mut l = Lowerer::new(&g, &plan, calibration);
    for &i in &g.inputs {
        let v = &g.values[i];
        let elem = elem_of(v.dtype, false).ok_or_else(|| {
            EngineError::Model(format!(
                "input '{}' has type {}, not supported",
                v.name, v.dtype
            ))
        })?;
        let shape = l.shape(i)?;
        let buf = l.new_buf(elem, shape.iter().product());
        l.slots.insert(
            i,
            Slot {
                buf,
                shape: shape.clone(),
            },
        );
        l.inputs.push(Binding {
            name: v.name.clone(),
            buf,
            shape,
        });
    }
    for (idx, node) in g.nodes.iter().enumerate() {
        l.node(idx, node).map_err(|e| match e {
            Fail::Engine(e) => e,
            Fail::Msg(reason) => EngineError::Unsupported {
                op: node.op.name().into(),
                node: node.name.clone(),
                reason,
            },
        })?;
    }
    let mut outputs = Vec::new();
    for &o in &g.outputs {
        let v = &g.values[o];
        let want = elem_of(v.dtype, false).ok_or_else(|| {
            EngineError::Model(format!(
                "output '{}' has type {}, not supported",
                v.name, v.dtype
            ))
        })?;
        let slot = l.value(o).map_err(|e| EngineError::Model(e.to_string()))?;
        // Outputs are arena buffers of the declared type (a constant output is copied).
        let buf = if slot.buf.elem != want || matches!(slot.buf.loc, Loc::Weight(_)) {
            let out = l.new_buf(want, slot.buf.len);
            l.copy_all(&slot, out);
            out
        } else {
            slot.buf
        };
        outputs.push(Binding {
            name: v.name.clone(),
            buf,
            shape: slot.shape.clone(),
        });
    }
    l.finish(outputs)
}

/// A lowered value: its buffer and shape (row-major, contiguous).
#[derive(Debug, Clone)]
struct Slot {
    buf: Buf,
    shape: Vec<usize>,
}

enum Fail {
    Engine(EngineError),
    Msg(String),
}

impl From<String> for Fail {
    fn from(s: String) -> Fail {
        Fail::Msg(s)
    }
}

impl From<&str> for Fail {
    fn from(s: &str) -> Fail {
        Fail::Msg(s.to_string())
    }
}

impl From<EngineError> for Fail {
    fn from(e: EngineError) -> Fail {
        Fail::Engine(e)
    }
}

impl std::fmt::Display for Fail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fail::Engine(e) => write!(f, "{e}"),
            Fail::Msg(m) => f.write_str(m),
        }
    }
}

type R<T> = Result<T, Fail>;

fn elem_of(d: DType, f16: bool) -> Option<Elem> {
    Some(match d {
        DType::F32 if f16 => Elem::F16,
        DType::F32 => Elem::F32,
        DType::I32 => Elem::I32,
        DType::I64 => Elem::I64,
        DType::Bool => Elem::Bool,
        DType::F64 => return None,
    })
}

fn contiguous(shape: &[usize]) -> Vec<isize> {
    let mut s = vec![0isize; shape.len()];
    let mut acc = 1isize;
    for d in (0..shape.len()).rev() {
        s[d] = acc;
        acc *= shape[d] as isize;
    }
    s
}

/// Strides that read a tensor of `shape` broadcast (numpy rules) to `out`.
fn broadcast_strides(shape: &[usize], out: &[usize]) -> Result<Vec<isize>, String> {
    if shape.len() > out.len() {
        return Err(format!("cannot broadcast {shape:?} to {out:?}"));
    }
    let own = contiguous(shape);
    let lead = out.len() - shape.len();
    (0..out.len())
        .map(|d| {
            if d < lead {
                return Ok(0);
            }
            let (n, s) = (shape[d - lead], own[d - lead]);
            if n == out[d] {
                Ok(if n == 1 { 0 } else { s })
            } else if n == 1 {
                Ok(0)
            } else {
                Err(format!("cannot broadcast {shape:?} to {out:?}"))
            }
        })
        .collect()
}

/// Merges adjacent dims that every view walks contiguously, so ranks stay small.
fn merge_dims(shape: &[usize], views: &mut [&mut Vec<isize>]) -> Vec<usize> {
    let mut out_shape: Vec<usize> = Vec::new();
    let mut merged: Vec<Vec<isize>> = vec![Vec::new(); views.len()];
    for d in 0..shape.len() {
        if shape[d] == 1 {
            continue; // a size-1 dim adds nothing to any index
        }
        let can = !out_shape.is_empty()
            && views.iter().enumerate().all(|(v, s)| {
                let prev = *merged[v].last().unwrap_or(&0);
                prev == s[d] * shape[d] as isize
            });
        if can {
            let last = out_shape.len() - 1;
            out_shape[last] *= shape[d];
            for (v, s) in views.iter().enumerate() {
                let l = merged[v].len() - 1;
                merged[v][l] = s[d];
            }
        } else {
            out_shape.push(shape[d]);
            for (v, s) in views.iter().enumerate() {
                merged[v].push(s[d]);
            }
        }
    }
    if out_shape.is_empty() {
        out_shape.push(1);
        for m in &mut merged {
            m.push(0);
        }
    }
    for (v, m) in views.iter_mut().zip(merged) {
        **v = m;
    }
    out_shape
}

fn act_of(a: Activation) -> Act {
    match a {
        Activation::None => Act::None,
        Activation::Relu => Act::Relu,
        Activation::Sigmoid => Act::Sigmoid,
        Activation::Tanh => Act::Tanh,
        Activation::Gelu => Act::Gelu,
    }
}

fn unary_op(u: UnaryOp) -> EwOp {
    match u {
        UnaryOp::Relu => EwOp::Relu,
        UnaryOp::Sigmoid => EwOp::Sigmoid,
        UnaryOp::Tanh => EwOp::Tanh,
        UnaryOp::Erf => EwOp::Erf,
        UnaryOp::Sqrt => EwOp::Sqrt,
        UnaryOp::Neg => EwOp::Neg,
        UnaryOp::Exp => EwOp::Exp,
        UnaryOp::Gelu => EwOp::Gelu,
    }
}

fn binary_op(b: BinaryOp) -> EwOp {
    match b {
        BinaryOp::Add => EwOp::Add,
        BinaryOp::Sub => EwOp::Sub,
        BinaryOp::Mul => EwOp::Mul,
        BinaryOp::Div => EwOp::Div,
        BinaryOp::Pow => EwOp::Pow,
    }
}

/// Little-endian bytes of `t` as `elem` (floats rounded to half for F16).
fn tensor_bytes(t: &Tensor, elem: Elem) -> Result<Vec<u8>, String> {
    Ok(match (&t.data, elem) {
        (Data::F32(v), Elem::F32) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        (Data::F32(v), Elem::F16) => v
            .iter()
            .flat_map(|x| f16::from_f32(*x).to_le_bytes())
            .collect(),
        (Data::I64(v), Elem::I64) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        (Data::I32(v), Elem::I32) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        (Data::I64(v), Elem::I32) => v
            .iter()
            .map(|&x| i32::try_from(x).map_err(|_| format!("{x} does not fit int32")))
            .collect::<Result<Vec<i32>, _>>()?
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect(),
        (Data::Bool(v), Elem::Bool) => v.iter().map(|&b| b as u8).collect(),
        (d, e) => {
            return Err(format!(
                "a {} constant cannot be stored as {e:?}",
                d.dtype()
            ))
        }
    })
}

fn f32_bytes(v: &[f32], elem: Elem) -> Vec<u8> {
    match elem {
        Elem::F16 => v
            .iter()
            .flat_map(|x| f16::from_f32(*x).to_le_bytes())
            .collect(),
        _ => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
    }
}

/// Rounds to half and back: the value an FP16 node sees.
fn round_half(v: f32) -> f32 {
    f16::from_f32(v).to_f32()
}

struct Lowerer<'g> {
    g: &'g Graph,
    plan: &'g PrecisionPlan,
    calibration: Option<&'g CalibrationTable>,
    weights: Vec<Weight>,
    weight_of: HashMap<(ValueId, Elem), usize>,
    /// Element count and type of each numbered arena buffer (`Loc::Arena(id)` until
    /// [`Lowerer::finish`] places them).
    bufs: Vec<(Elem, usize)>,
    slots: HashMap<ValueId, Slot>,
    casts: HashMap<(ValueId, Elem), Buf>,
    steps: Vec<Step>,
    inputs: Vec<Binding>,
    index_checks: Vec<IndexCheck>,
}

impl<'g> Lowerer<'g> {
    fn new(
        g: &'g Graph,
        plan: &'g PrecisionPlan,
        calibration: Option<&'g CalibrationTable>,
    ) -> Self {
        Lowerer {
            g,
            plan,
            calibration,
            weights: Vec::new(),
            weight_of: HashMap::new(),
            bufs: Vec::new(),
            slots: HashMap::new(),
            casts: HashMap::new(),
            steps: Vec::new(),
            inputs: Vec::new(),
            index_checks: Vec::new(),
        }
    }

    fn shape(&self, v: ValueId) -> Result<Vec<usize>, EngineError> {
        let val = &self.g.values[v];
        val.shape
            .as_ref()
            .and_then(|s| {
                s.iter()
                    .map(|d| match d {
                        Dim::Known(n) => Some(*n),
                        _ => None,
                    })
                    .collect::<Option<Vec<usize>>>()
            })
            .ok_or_else(|| {
                EngineError::Model(format!(
                    "the shape of '{}' is not known after specialisation: {}",
                    val.name,
                    super::ir::shape_string(&val.shape)
                ))
            })
    }

    fn new_buf(&mut self, elem: Elem, len: usize) -> Buf {
        self.bufs.push((elem, len));
        Buf {
            loc: Loc::Arena(self.bufs.len() - 1),
            elem,
            len,
        }
    }

    fn add_weight(&mut self, name: &str, elem: Elem, bytes: Vec<u8>) -> Buf {
        let len = bytes.len() / elem.size();
        self.weights.push(Weight {
            name: name.to_string(),
            elem,
            bytes,
        });
        Buf {
            loc: Loc::Weight(self.weights.len() - 1),
            elem,
            len,
        }
    }

    fn constant(&self, v: ValueId) -> Option<&'g Tensor> {
        self.g.constants.get(&v)
    }

    /// The value as it is stored (a constant keeps its own type).
    fn value(&mut self, v: ValueId) -> R<Slot> {
        if let Some(s) = self.slots.get(&v) {
            return Ok(s.clone());
        }
        if let Some(t) = self.constant(v) {
            let elem = elem_of(t.dtype(), false)
                .ok_or_else(|| format!("constant of type {} is not supported", t.dtype()))?;
            let buf = self.weight(v, elem)?;
            return Ok(Slot {
                buf,
                shape: t.shape.clone(),
            });
        }
        Err(format!(
            "value '{}' is not computed before it is read",
            self.g.values[v].name
        )
        .into())
    }

    fn weight(&mut self, v: ValueId, elem: Elem) -> R<Buf> {
        if let Some(&w) = self.weight_of.get(&(v, elem)) {
            let len = self.weights[w].bytes.len() / elem.size();
            return Ok(Buf {
                loc: Loc::Weight(w),
                elem,
                len,
            });
        }
        let t = self.constant(v).ok_or("not a constant")?;
        let bytes = tensor_bytes(t, elem)?;
        let name = self.g.values[v].name.clone();
        let buf = self.add_weight(&name, elem, bytes);
        if let Loc::Weight(w) = buf.loc {
            self.weight_of.insert((v, elem), w);
        }
        Ok(buf)
    }

    /// The value stored as `elem`: itself, converted weights, or a cast step's output.
    fn value_as(&mut self, v: ValueId, elem: Elem) -> R<Slot> {
        let s = self.value(v)?;
        if s.buf.elem == elem {
            return Ok(s);
        }
        if self.constant(v).is_some() {
            let buf = self.weight(v, elem)?;
            return Ok(Slot {
                buf,
                shape: s.shape,
            });
        }
        if let Some(&b) = self.casts.get(&(v, elem)) {
            return Ok(Slot {
                buf: b,
                shape: s.shape,
            });
        }
        let out = self.new_buf(elem, s.buf.len);
        self.copy_all(&s, out);
        self.casts.insert((v, elem), out);
        Ok(Slot {
            buf: out,
            shape: s.shape,
        })
    }

    /// A float input of a node computing in `compute` (F16 operands for FP16 maths).
    fn float_in(&mut self, v: ValueId, compute: Elem) -> R<Slot> {
        self.value_as(v, compute)
    }

    fn copy_all(&mut self, from: &Slot, to: Buf) {
        let n = from.buf.len;
        self.steps.push(Step::Elementwise {
            op: EwOp::Copy,
            ins: vec![View {
                buf: from.buf,
                offset: 0,
                strides: vec![1],
            }],
            out: View {
                buf: to,
                offset: 0,
                strides: vec![1],
            },
            shape: vec![n],
        });
    }

    /// A new contiguous buffer of `shape` holding the strided view `(buf, offset, strides)`:
    /// one copy step (transposes, broadcasts, slices).
    fn copy_view(
        &mut self,
        buf: Buf,
        offset: usize,
        strides: Vec<isize>,
        shape: &[usize],
    ) -> R<Buf> {
        let y = self.new_buf(buf.elem, shape.iter().product());
        if y.len > 0 {
            self.elementwise(
                EwOp::Copy,
                vec![View {
                    buf,
                    offset,
                    strides,
                }],
                View {
                    buf: y,
                    offset: 0,
                    strides: contiguous(shape),
                },
                shape,
            )?;
        }
        Ok(y)
    }

    fn elementwise(&mut self, op: EwOp, ins: Vec<View>, out: View, shape: &[usize]) -> R<()> {
        let mut ins = ins;
        let mut out = out;
        let merged = {
            let mut strides: Vec<&mut Vec<isize>> =
                ins.iter_mut().map(|v| &mut v.strides).collect();
            strides.push(&mut out.strides);
            merge_dims(shape, &mut strides)
        };
        if merged.len() > MAX_RANK {
            return Err(format!("rank {} is above the kernel's {MAX_RANK}", merged.len()).into());
        }
        self.steps.push(Step::Elementwise {
            op,
            ins,
            out,
            shape: merged,
        });
        Ok(())
    }

    fn compute(&self, idx: usize) -> Elem {
        match self.plan.nodes[idx].compute {
            Precision::Fp16 | Precision::Int8 => Elem::F16,
            Precision::Fp32 => Elem::F32,
        }
    }

    /// The element type of a node's float output.
    fn out_elem(&self, idx: usize, v: ValueId) -> R<Elem> {
        let d = self.g.values[v].dtype;
        elem_of(d, self.plan.nodes[idx].output_f16)
            .ok_or_else(|| format!("type {d} is not supported").into())
    }

    fn define(&mut self, v: ValueId, buf: Buf) -> R<()> {
        let shape = self.shape(v)?;
        self.slots.insert(v, Slot { buf, shape });
        Ok(())
    }

    fn node(&mut self, idx: usize, node: &'g Node) -> R<()> {
        let out = *node.outputs.first().ok_or("node has no output")?;
        let out_shape = self.shape(out)?;
        let n_out: usize = out_shape.iter().product();
        let input = |i: usize| -> R<ValueId> {
            node.inputs
                .get(i)
                .copied()
                .ok_or_else(|| format!("input {i} is missing").into())
        };
        match &node.op {
            Op::Identity | Op::Reshape { .. } | Op::Squeeze { .. } | Op::Unsqueeze { .. } => {
                let s = self.value(input(0)?)?;
                self.define(out, s.buf)
            }
            Op::Cast { to } => {
                let s = self.value(input(0)?)?;
                let elem = elem_of(*to, self.plan.nodes[idx].output_f16)
                    .ok_or_else(|| format!("cast to {to} is not supported"))?;
                let y = self.new_buf(elem, n_out);
                self.copy_all(&s, y);
                self.define(out, y)
            }
            Op::Unary(_) | Op::Binary(_) | Op::Equal | Op::Where => {
                let op = match &node.op {
                    Op::Unary(u) => unary_op(*u),
                    Op::Binary(b) => binary_op(*b),
                    Op::Equal => EwOp::Equal,
                    _ => EwOp::Where,
                };
                let compute = self.compute(idx);
                let mut views = Vec::new();
                for &i in &node.inputs {
                    let s = if self.g.values[i].dtype == DType::F32 && compute == Elem::F16 {
                        self.float_in(i, compute)?
                    } else {
                        self.value(i)?
                    };
                    views.push(View {
                        buf: s.buf,
                        offset: 0,
                        strides: broadcast_strides(&s.shape, &out_shape)?,
                    });
                }
                let y = self.new_buf(self.out_elem(idx, out)?, n_out);
                let ov = View {
                    buf: y,
                    offset: 0,
                    strides: contiguous(&out_shape),
                };
                self.elementwise(op, views, ov, &out_shape)?;
                self.define(out, y)
            }
            Op::Scaler { offset, scale } => {
                let s = self.value_as(input(0)?, Elem::F32)?;
                let last = *out_shape.last().unwrap_or(&1);
                let per = |v: &[f32]| -> R<Vec<f32>> {
                    match v.len() {
                        1 => Ok(vec![v[0]; last]),
                        n if n == last => Ok(v.to_vec()),
                        n => Err(format!("{n} scaler values for {last} features").into()),
                    }
                };
                let off = per(offset)?;
                let sc = per(scale)?;
                let off = self.add_weight(
                    &format!("{}.offset", node.name),
                    Elem::F32,
                    f32_bytes(&off, Elem::F32),
                );
                let sc = self.add_weight(
                    &format!("{}.scale", node.name),
                    Elem::F32,
                    f32_bytes(&sc, Elem::F32),
                );
                let t = self.new_buf(Elem::F32, n_out);
                let y = self.new_buf(self.out_elem(idx, out)?, n_out);
                let own = contiguous(&out_shape);
                let feat = broadcast_strides(&[last], &out_shape)?;
                let view = |buf: Buf, strides: &Vec<isize>| View {
                    buf,
                    offset: 0,
                    strides: strides.clone(),
                };
                self.elementwise(
                    EwOp::Sub,
                    vec![view(s.buf, &own), view(off, &feat)],
                    view(t, &own),
                    &out_shape,
                )?;
                self.elementwise(
                    EwOp::Mul,
                    vec![view(t, &own), view(sc, &feat)],
                    view(y, &own),
                    &out_shape,
                )?;
                self.define(out, y)
            }
            Op::MatMul => self.matmul(idx, node, out, &out_shape),
            Op::Gemm(gm) => {
                if self.plan.nodes[idx].compute == Precision::Int8 {
                    self.gemm_int8(idx, node, gm, out, &out_shape)
                } else {
                    self.gemm(idx, node, gm, out, &out_shape)
                }
            }
            Op::Concat { axis } => {
                let ax = norm_axis(*axis, out_shape.len())?;
                let mut parts = Vec::new();
                for &i in &node.inputs {
                    parts.push(self.value(i)?);
                }
                let elem = if parts.iter().all(|p| p.buf.elem == parts[0].buf.elem) {
                    parts[0].buf.elem
                } else {
                    self.out_elem(idx, out)?
                };
                let y = self.new_buf(elem, n_out);
                let os = contiguous(&out_shape);
                let mut at = 0usize;
                for p in parts {
                    if p.buf.len > 0 {
                        let ov = View {
                            buf: y,
                            offset: at * os[ax] as usize,
                            strides: os.clone(),
                        };
                        let iv = View {
                            buf: p.buf,
                            offset: 0,
                            strides: contiguous(&p.shape),
                        };
                        self.elementwise(EwOp::Copy, vec![iv], ov, &p.shape)?;
                    }
                    at += p.shape.get(ax).copied().unwrap_or(0);
                }
                self.define(out, y)
            }
            Op::Transpose { perm } => {
                let s = self.value(input(0)?)?;
                let rank = s.shape.len();
                let p: Vec<usize> = perm.clone().unwrap_or_else(|| (0..rank).rev().collect());
                let own = contiguous(&s.shape);
                let strides: Vec<isize> = p.iter().map(|&d| own[d]).collect();
                let y = self.copy_view(s.buf, 0, strides, &out_shape)?;
                self.define(out, y)
            }
            Op::Expand => {
                let s = self.value(input(0)?)?;
                let strides = broadcast_strides(&s.shape, &out_shape)?;
                let y = self.copy_view(s.buf, 0, strides, &out_shape)?;
                self.define(out, y)
            }
            Op::Slice => {
                let s = self.value(input(0)?)?;
                let ints = |i: usize| -> R<Option<Vec<i64>>> {
                    match node.inputs.get(i) {
                        None => Ok(None),
                        Some(v) => self
                            .constant(*v)
                            .and_then(|t| t.as_i64s())
                            .map(Some)
                            .ok_or_else(|| "starts, ends, axes and steps must be constants".into()),
                    }
                };
                let starts = ints(1)?.unwrap_or_default();
                let ends = ints(2)?.unwrap_or_default();
                let rank = s.shape.len();
                let axes: Vec<usize> = match ints(3)? {
                    Some(a) => a
                        .into_iter()
                        .map(|x| norm_axis(x, rank))
                        .collect::<Result<_, _>>()?,
                    None => (0..starts.len()).collect(),
                };
                let steps = ints(4)?.unwrap_or_else(|| vec![1; starts.len()]);
                let own = contiguous(&s.shape);
                let mut offset = 0isize;
                let mut strides = own.clone();
                for j in 0..starts
                    .len()
                    .min(ends.len())
                    .min(axes.len())
                    .min(steps.len())
                {
                    let d = axes[j];
                    let picks = slice_range(s.shape[d], starts[j], ends[j], steps[j])?;
                    if let Some(&first) = picks.first() {
                        offset += first as isize * own[d];
                    }
                    strides[d] = own[d] * steps[j] as isize;
                }
                let y = self.copy_view(s.buf, offset as usize, strides, &out_shape)?;
                self.define(out, y)
            }
            Op::Gather { axis } => {
                let data = self.value(input(0)?)?;
                let ax = norm_axis(*axis, data.shape.len())?;
                self.gather(node, input(1)?, data, ax, out, n_out)
            }
            Op::ArrayFeatureExtractor => {
                let data = self.value(input(0)?)?;
                let ax = data.shape.len().saturating_sub(1);
                self.gather(node, input(1)?, data, ax, out, n_out)
            }
            Op::ReduceMean { axes, .. } => self.reduce(idx, input(0)?, axes, true, out, n_out),
            Op::ReduceSum { axes, .. } => {
                if self.g.values[input(0)?].dtype != DType::F32 {
                    return Err("ReduceSum of integers".into());
                }
                self.reduce(idx, input(0)?, axes, false, out, n_out)
            }
            Op::Softmax { axis, coerce_2d } => {
                let s = self.value_as(input(0)?, Elem::F32)?;
                let rank = s.shape.len();
                let ax = norm_axis(*axis, rank)?;
                if !coerce_2d && ax + 1 != rank {
                    return Err("softmax over an axis other than the last".into());
                }
                let rows = s.shape[..ax].iter().product();
                let cols = s.shape[ax..].iter().product();
                let y = self.new_buf(self.out_elem(idx, out)?, n_out);
                self.steps.push(Step::Softmax {
                    x: s.buf,
                    y,
                    rows,
                    cols,
                });
                self.define(out, y)
            }
            Op::LayerNorm { axis, epsilon } => {
                self.layer_norm(idx, node, None, *axis, *epsilon, out, n_out)
            }
            Op::AddLayerNorm { axis, epsilon } => {
                let residual = input(1)?;
                self.layer_norm(idx, node, Some(residual), *axis, *epsilon, out, n_out)
            }
            Op::Attention {
                scale,
                k_transposed,
            } => self.attention(idx, node, *scale, *k_transposed, out, n_out),
            Op::ArgMax {
                axis,
                select_last_index,
                ..
            } => {
                let s = self.value(input(0)?)?;
                let s = if s.buf.elem == Elem::F16 {
                    self.value_as(input(0)?, Elem::F32)?
                } else {
                    s
                };
                let ax = norm_axis(*axis, s.shape.len())?;
                let y = self.new_buf(Elem::I64, n_out);
                self.steps.push(Step::ArgMax {
                    x: s.buf,
                    y,
                    outer: s.shape[..ax].iter().product(),
                    len: s.shape[ax],
                    inner: s.shape[ax + 1..].iter().product(),
                    select_last: *select_last_index,
                });
                self.define(out, y)
            }
            Op::Shape { .. } | Op::ConstantOfShape { .. } => {
                Err("its input's shape is not known after specialisation".into())
            }
            Op::Flatten { .. } => {
                let s = self.value(input(0)?)?;
                self.define(out, s.buf)
            }
            Op::Clip { min, max } => {
                let mut cur = self.value(input(0)?)?;
                let y_elem = self.out_elem(idx, out)?;
                let bounds: Vec<(EwOp, f32)> = [(EwOp::Max, *min), (EwOp::Min, *max)]
                    .into_iter()
                    .filter_map(|(op, b)| b.map(|b| (op, b)))
                    .collect();
                if bounds.is_empty() {
                    let y = self.new_buf(y_elem, n_out);
                    self.copy_all(&cur, y);
                    return self.define(out, y);
                }
                for (op, bound) in bounds {
                    let w = self.add_weight(&format!("{}.bound", node.name), Elem::F32, f32_bytes(&[bound], Elem::F32));
                    let y = self.new_buf(y_elem, n_out);
                    let own = contiguous(&out_shape);
                    self.elementwise(
                        op,
                        vec![
                            View { buf: cur.buf, offset: 0, strides: own.clone() },
                            View { buf: w, offset: 0, strides: vec![0; out_shape.len()] },
                        ],
                        View { buf: y, offset: 0, strides: own },
                        &out_shape,
                    )?;
                    cur = Slot { buf: y, shape: out_shape.clone() };
                }
                self.define(out, cur.buf)
            }
            Op::Logical(op @ (LogicalOp::And | LogicalOp::Or)) => {
                // On 0/1 values: and = min, or = max.
                let ew = if *op == LogicalOp::And { EwOp::Min } else { EwOp::Max };
                let mut views = Vec::new();
                for &i in &node.inputs {
                    let s = self.value(i)?;
                    views.push(View {
                        buf: s.buf,
                        offset: 0,
                        strides: broadcast_strides(&s.shape, &out_shape)?,
                    });
                }
                let y = self.new_buf(Elem::Bool, n_out);
                let ov = View { buf: y, offset: 0, strides: contiguous(&out_shape) };
                self.elementwise(ew, views, ov, &out_shape)?;
                self.define(out, y)
            }
            // Shape maths: these fold away once shapes are concrete; on data they have no
            // device step yet.
            Op::Compare(_) | Op::Logical(LogicalOp::Xor) | Op::Not | Op::Range => {
                Err("no device step for this operator on data (it folds when it only depends on shapes)".into())
            }
        }
    }

    fn gather(
        &mut self,
        node: &Node,
        indices: ValueId,
        data: Slot,
        ax: usize,
        out: ValueId,
        n_out: usize,
    ) -> R<()> {
        let idx = self.value(indices)?;
        if !matches!(idx.buf.elem, Elem::I64 | Elem::I32) {
            return Err("indices must be int64 or int32".into());
        }
        let axis_len = data.shape[ax];
        if let Some(input) = self.source_input(indices) {
            self.index_checks.push(IndexCheck {
                input: self.g.values[input].name.clone(),
                bound: axis_len,
                node: node.name.clone(),
            });
        } else if let Some(t) = self.constant(indices) {
            let n = axis_len as i64;
            if let Some(bad) = t
                .as_i64s()
                .and_then(|v| v.into_iter().find(|&i| i < -n || i >= n))
            {
                return Err(format!("index {bad} is out of range for a dim of {n}").into());
            }
        }
        let y = self.new_buf(data.buf.elem, n_out);
        self.steps.push(Step::Gather {
            data: data.buf,
            indices: idx.buf,
            y,
            outer: data.shape[..ax].iter().product(),
            axis_len,
            inner: data.shape[ax + 1..].iter().product(),
            count: idx.buf.len,
        });
        self.define(out, y)
    }

    /// Sum or mean over adjacent `axes` (all when `None`) as one `Reduce` step.
    fn reduce(
        &mut self,
        idx: usize,
        input: ValueId,
        axes: &Option<Vec<i64>>,
        mean: bool,
        out: ValueId,
        n_out: usize,
    ) -> R<()> {
        let s = self.value_as(input, Elem::F32)?;
        let rank = s.shape.len();
        let mut ax: Vec<usize> = match axes {
            Some(a) => a
                .iter()
                .map(|&x| norm_axis(x, rank))
                .collect::<Result<_, _>>()?,
            None => (0..rank).collect(),
        };
        ax.sort_unstable();
        ax.dedup();
        let (Some(&lo), Some(&hi)) = (ax.first(), ax.last()) else {
            return Err("no axes to reduce".into());
        };
        if hi - lo + 1 != ax.len() {
            return Err(format!("axes {ax:?} are not adjacent").into());
        }
        let outer = s.shape[..lo].iter().product();
        let len = s.shape[lo..=hi].iter().product();
        let inner = s.shape[hi + 1..].iter().product();
        // The kernel reads and writes one float type; a half output is cast after.
        let y = self.new_buf(Elem::F32, n_out);
        self.steps.push(Step::Reduce {
            x: s.buf,
            y,
            outer,
            len,
            inner,
            mean,
        });
        let want = self.out_elem(idx, out)?;
        if want != Elem::F32 {
            let z = self.new_buf(want, n_out);
            let shape = self.shape(out)?;
            self.copy_all(&Slot { buf: y, shape }, z);
            return self.define(out, z);
        }
        self.define(out, y)
    }

    /// The graph input whose values `v` holds unchanged (through Identity, Reshape, Squeeze,
    /// Unsqueeze, Flatten and integer-to-integer Casts), if any: ids that reach a Gather that
    /// way are range-checked on the host like ids fed to it directly.
    fn source_input(&self, mut v: ValueId) -> Option<ValueId> {
        let integer = |d: DType| matches!(d, DType::I64 | DType::I32);
        loop {
            if self.g.inputs.contains(&v) {
                return Some(v);
            }
            let node = self
                .g
                .nodes
                .iter()
                .find(|n| n.outputs.first() == Some(&v))?;
            let from = *node.inputs.first()?;
            let passes = match &node.op {
                Op::Identity
                | Op::Reshape { .. }
                | Op::Squeeze { .. }
                | Op::Unsqueeze { .. }
                | Op::Flatten { .. } => true,
                Op::Cast { to } => integer(*to) && integer(self.g.values[from].dtype),
                _ => false,
            };
            if !passes {
                return None;
            }
            v = from;
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn layer_norm(
        &mut self,
        idx: usize,
        node: &Node,
        residual: Option<ValueId>,
        axis: i64,
        eps: f32,
        out: ValueId,
        n_out: usize,
    ) -> R<()> {
        // Inputs: X, [residual,] scale[, bias].
        let first_param = if residual.is_some() { 2 } else { 1 };
        let x = self.value_as(node.inputs[0], Elem::F32)?;
        let res = match residual {
            Some(r) => Some(self.value_as(r, Elem::F32)?.buf),
            None => None,
        };
        let ax = norm_axis(axis, x.shape.len())?;
        let cols: usize = x.shape[ax..].iter().product();
        let rows: usize = x.shape[..ax].iter().product();
        let param = |l: &mut Self, i: usize| -> R<Option<Buf>> {
            match node.inputs.get(i) {
                None => Ok(None),
                Some(&v) => {
                    let s = l.value_as(v, Elem::F32)?;
                    if s.buf.len != cols {
                        return Err(format!(
                            "scale and bias must hold {cols} values (one per normalised element), not {}",
                            s.buf.len
                        )
                        .into());
                    }
                    Ok(Some(s.buf))
                }
            }
        };
        let gamma = param(self, first_param)?.ok_or("scale is missing")?;
        let beta = param(self, first_param + 1)?;
        let y = self.new_buf(self.out_elem(idx, out)?, n_out);
        self.steps.push(Step::LayerNorm {
            x: x.buf,
            residual: res,
            gamma,
            beta,
            y,
            rows,
            cols,
            eps,
        });
        self.define(out, y)
    }

    /// `softmax(scale · q·k' + mask) · v` over `[B, H, S, D]` operands. In FP16 q, k and v
    /// are halves and the probabilities are rounded to half before `· v`; the mask stays
    /// FP32 (a large negative mask would overflow half), as the emulation does.
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &mut self,
        idx: usize,
        node: &Node,
        scale: f32,
        k_transposed: bool,
        out: ValueId,
        n_out: usize,
    ) -> R<()> {
        let compute = self.compute(idx);
        let q = self.float_in(node.inputs[0], compute)?;
        let k = self.float_in(node.inputs[1], compute)?;
        let v = self.float_in(node.inputs[2], compute)?;
        let [b, h, sq, d] = q.shape[..] else {
            return Err(format!("q must be rank 4, not {:?}", q.shape).into());
        };
        let sk = if k_transposed {
            k.shape.get(3)
        } else {
            k.shape.get(2)
        }
        .copied()
        .ok_or("k must be rank 4")?;
        let mask = match node.inputs.get(3) {
            None => None,
            Some(&m) => {
                let s = self.value(m)?;
                let s = if s.buf.elem.is_float() {
                    self.value_as(m, Elem::F32)?
                } else {
                    s
                };
                Some(View {
                    buf: s.buf,
                    offset: 0,
                    strides: broadcast_strides(&s.shape, &[b, h, sq, sk])?,
                })
            }
        };
        let scores = self.new_buf(Elem::F32, b * h * sq * sk);
        let probs = if compute == Elem::F16 {
            self.new_buf(Elem::F16, b * h * sq * sk)
        } else {
            scores
        };
        let y = self.new_buf(self.out_elem(idx, out)?, n_out);
        self.steps.push(Step::Attention(AttentionStep {
            q: q.buf,
            k: k.buf,
            v: v.buf,
            mask,
            y,
            scores,
            probs,
            batch: b,
            heads: h,
            sq,
            sk,
            d,
            scale,
            k_transposed,
            compute,
        }));
        self.define(out, y)
    }

    fn matmul(&mut self, idx: usize, node: &Node, out: ValueId, out_shape: &[usize]) -> R<()> {
        let compute = self.compute(idx);
        let a = self.float_in(node.inputs[0], compute)?;
        let b = self.float_in(node.inputs[1], compute)?;
        if a.shape.len() < 2 || b.shape.len() < 2 {
            return Err("MatMul of a 1-D operand".into());
        }
        let (ra, rb) = (a.shape.len(), b.shape.len());
        let (m, k) = (a.shape[ra - 2], a.shape[ra - 1]);
        let n = b.shape[rb - 1];
        let y = self.new_buf(self.out_elem(idx, out)?, out_shape.iter().product());
        let (batch, stride_a, stride_b, m_eff, a_buf, b_buf) = if rb == 2 {
            // Every leading dim of A folds into M.
            (1, 0, 0, a.buf.len / k.max(1), a.buf, b.buf)
        } else {
            let batch_out = &out_shape[..out_shape.len() - 2];
            let batch: usize = batch_out.iter().product();
            let (a_buf, sa) = self.batch_operand(&a, batch_out, m * k)?;
            let (b_buf, sb) = self.batch_operand(&b, batch_out, k * n)?;
            (batch, sa, sb, m, a_buf, b_buf)
        };
        self.steps.push(Step::Gemm(GemmStep {
            a: a_buf,
            b: b_buf,
            bias: None,
            y,
            m: m_eff,
            n,
            k,
            batch,
            stride_a,
            stride_b,
            stride_y: m * n,
            trans_a: false,
            trans_b: false,
            alpha: 1.0,
            act: Act::None,
            compute,
        }));
        self.define(out, y)
    }

    /// A batched GEMM operand for the output batch dims: shared (stride 0) when it has no
    /// batch, in place when its batch equals the output's, else expanded by a copy.
    fn batch_operand(&mut self, s: &Slot, batch_out: &[usize], mat: usize) -> R<(Buf, usize)> {
        let r = s.shape.len();
        let own_batch = &s.shape[..r - 2];
        if own_batch.iter().product::<usize>() == 1 {
            return Ok((s.buf, 0));
        }
        if own_batch == batch_out {
            return Ok((s.buf, mat));
        }
        let mut full = batch_out.to_vec();
        full.extend_from_slice(&s.shape[r - 2..]);
        let y = self.copy_view(s.buf, 0, broadcast_strides(&s.shape, &full)?, &full)?;
        Ok((y, mat))
    }

    fn gemm(
        &mut self,
        idx: usize,
        node: &Node,
        gm: &super::ir::Gemm,
        out: ValueId,
        out_shape: &[usize],
    ) -> R<()> {
        let compute = self.compute(idx);
        let a = self.float_in(node.inputs[0], compute)?;
        let b = self.float_in(node.inputs[1], compute)?;
        if b.shape.len() != 2 || (gm.trans_a && a.shape.len() != 2) || a.shape.is_empty() {
            return Err(format!("Gemm of shapes {:?} and {:?}", a.shape, b.shape).into());
        }
        let k = if gm.trans_a {
            a.shape[0]
        } else {
            a.shape[a.shape.len() - 1]
        };
        let n = if gm.trans_b { b.shape[0] } else { b.shape[1] };
        let m = a.buf.len / k.max(1);
        let y_elem = self.out_elem(idx, out)?;
        let n_out: usize = out_shape.iter().product();
        // C: a per-column bias (constant) folds into the GEMM; anything else is added after.
        let mut bias = None;
        let mut extra_c = None;
        if let Some(&c) = node.inputs.get(2) {
            match self.constant(c).and_then(|t| t.as_f32s().map(|v| (t, v))) {
                Some((t, v)) if v.len() == n || v.len() == 1 => {
                    let fits = v.len() == 1 || t.shape.last() == Some(&n);
                    if fits {
                        let vals: Vec<f32> = (0..n)
                            .map(|j| {
                                let c = v[if v.len() == 1 { 0 } else { j }];
                                let c = if compute == Elem::F16 {
                                    round_half(c)
                                } else {
                                    c
                                };
                                gm.beta * c
                            })
                            .collect();
                        let name = format!("{}.bias", node.name);
                        bias = Some(self.add_weight(&name, y_elem, f32_bytes(&vals, y_elem)));
                    } else {
                        extra_c = Some(c);
                    }
                }
                _ => extra_c = Some(c),
            }
        }
        if extra_c.is_some() && gm.beta != 1.0 {
            return Err("Gemm with beta != 1 and a C that is not a bias".into());
        }
        let act = act_of(gm.activation);
        let (gemm_out, gemm_act) = if extra_c.is_some() {
            (self.new_buf(Elem::F32, n_out), Act::None)
        } else {
            (self.new_buf(y_elem, n_out), act)
        };
        let bias = match (bias, extra_c) {
            // The bias goes with the GEMM's own output type.
            (Some(b), None) => Some(b),
            _ => None,
        };
        self.steps.push(Step::Gemm(GemmStep {
            a: a.buf,
            b: b.buf,
            bias,
            y: gemm_out,
            m,
            n,
            k,
            batch: 1,
            stride_a: 0,
            stride_b: 0,
            stride_y: 0,
            trans_a: gm.trans_a,
            trans_b: gm.trans_b,
            alpha: gm.alpha,
            act: gemm_act,
            compute,
        }));
        let Some(c) = extra_c else {
            return self.define(out, gemm_out);
        };
        let cs = if compute == Elem::F16 {
            self.float_in(c, Elem::F16)?
        } else {
            self.value(c)?
        };
        let own = contiguous(out_shape);
        let y = self.new_buf(y_elem, n_out);
        let sum = if act == Act::None {
            y
        } else {
            self.new_buf(Elem::F32, n_out)
        };
        self.elementwise(
            EwOp::Add,
            vec![
                View {
                    buf: gemm_out,
                    offset: 0,
                    strides: own.clone(),
                },
                View {
                    buf: cs.buf,
                    offset: 0,
                    strides: broadcast_strides(&cs.shape, out_shape)?,
                },
            ],
            View {
                buf: sum,
                offset: 0,
                strides: own.clone(),
            },
            out_shape,
        )?;
        if act != Act::None {
            let op = match act {
                Act::Relu => EwOp::Relu,
                Act::Sigmoid => EwOp::Sigmoid,
                Act::Tanh => EwOp::Tanh,
                Act::Gelu => EwOp::Gelu,
                Act::None => EwOp::Copy,
            };
            self.elementwise(
                op,
                vec![View {
                    buf: sum,
                    offset: 0,
                    strides: own.clone(),
                }],
                View {
                    buf: y,
                    offset: 0,
                    strides: own,
                },
                out_shape,
            )?;
        }
        self.define(out, y)
    }

    fn gemm_int8(
        &mut self,
        idx: usize,
        node: &Node,
        gm: &super::ir::Gemm,
        out: ValueId,
        out_shape: &[usize],
    ) -> R<()> {
        if gm.trans_a {
            return Err("INT8 Gemm with a transposed A".into());
        }
        let a_id = node.inputs[0];
        let a = self.value(a_id)?;
        let a = if a.buf.elem.is_float() {
            a
        } else {
            return Err("INT8 Gemm of a non-float A".into());
        };
        let w = self
            .constant(node.inputs[1])
            .filter(|t| t.shape.len() == 2)
            .ok_or("INT8 needs constant 2-D weights")?;
        let wv = w.as_f32s().ok_or("INT8 weights must be float32")?;
        let (k, n) = if gm.trans_b {
            (w.shape[1], w.shape[0])
        } else {
            (w.shape[0], w.shape[1])
        };
        let kn: Vec<f32> = if gm.trans_b {
            (0..k * n).map(|i| wv[(i % n) * k + i / n]).collect()
        } else {
            wv.to_vec()
        };
        let q = QuantizedWeights::from_f32(&kn, k, n)?;
        // Stored [n, k]: each output channel contiguous.
        let nk: Vec<u8> = (0..n * k).map(|i| q.q[(i % k) * n + i / k] as u8).collect();
        let name = &self.g.values[node.inputs[1]].name;
        let w_buf = self.add_weight(&format!("{name}.int8"), Elem::I8, nk);
        let scales = self.add_weight(
            &format!("{name}.scales"),
            Elem::F32,
            f32_bytes(&q.scales, Elem::F32),
        );
        let a_name = &self.g.values[a_id].name;
        let a_scale = self
            .calibration
            .and_then(|t| t.scale(a_name))
            .ok_or_else(|| {
                format!("INT8 needs a calibrated range for activation '{a_name}' (none in the calibration table)")
            })?;
        let bias = match node.inputs.get(2) {
            None => None,
            Some(&c) => {
                let t = self.constant(c).ok_or("INT8 Gemm needs a constant C")?;
                let v = t.as_f32s().ok_or("C must be float32")?;
                if !(v.len() == 1 || (v.len() == n && t.shape.last() == Some(&n))) {
                    return Err("INT8 Gemm needs a per-column C".into());
                }
                let vals: Vec<f32> = (0..n)
                    .map(|j| gm.beta * v[if v.len() == 1 { 0 } else { j }])
                    .collect();
                Some(self.add_weight(
                    &format!("{}.bias", node.name),
                    Elem::F32,
                    f32_bytes(&vals, Elem::F32),
                ))
            }
        };
        let m = a.buf.len / k.max(1);
        let a_q = self.new_buf(Elem::I8, m * k);
        let acc = self.new_buf(Elem::I32, m * n);
        let y = self.new_buf(self.out_elem(idx, out)?, out_shape.iter().product());
        self.steps.push(Step::GemmInt8(GemmInt8Step {
            a: a.buf,
            a_scale,
            a_q,
            w: w_buf,
            w_scales: scales,
            bias,
            acc,
            y,
            m,
            n,
            k,
            alpha: gm.alpha,
            act: act_of(gm.activation),
        }));
        self.define(out, y)
    }

    /// Places the numbered buffers in one arena (first fit over live ranges) and returns the
    /// program.
    fn finish(mut self, outputs: Vec<Binding>) -> Result<Program, EngineError> {
        let n = self.bufs.len();
        let end = self.steps.len() + 1;
        let mut first = vec![usize::MAX; n];
        let mut last = vec![0usize; n];
        let touch = |b: &Buf, at: usize, first: &mut Vec<usize>, last: &mut Vec<usize>| {
            if let Loc::Arena(id) = b.loc {
                first[id] = first[id].min(at);
                last[id] = last[id].max(at);
            }
        };
        for b in &self.inputs {
            touch(&b.buf, 0, &mut first, &mut last);
        }
        for (i, s) in self.steps.iter_mut().enumerate() {
            s.for_each_buf(|b, _| touch(b, i + 1, &mut first, &mut last));
        }
        for b in &outputs {
            touch(&b.buf, end, &mut first, &mut last);
        }
        let mut order: Vec<usize> = (0..n).filter(|&i| first[i] != usize::MAX).collect();
        order.sort_by_key(|&i| (first[i], std::cmp::Reverse(self.bufs[i].1)));
        let mut offset = vec![0usize; n];
        // (offset, size, last use) of placed buffers.
        let mut placed: Vec<(usize, usize, usize)> = Vec::new();
        let mut arena = 0usize;
        for id in order {
            let (elem, len) = self.bufs[id];
            let size = (len * elem.size()).div_ceil(ALIGN) * ALIGN;
            let mut live: Vec<(usize, usize)> = placed
                .iter()
                .filter(|p| p.2 >= first[id])
                .map(|p| (p.0, p.0 + p.1))
                .collect();
            live.sort_unstable();
            let mut at = 0usize;
            for (s, e) in live {
                if at + size <= s {
                    break;
                }
                at = at.max(e);
            }
            offset[id] = at;
            arena = arena.max(at + size);
            placed.push((at, size, last[id]));
        }
        let place = |b: &mut Buf| {
            if let Loc::Arena(id) = b.loc {
                b.loc = Loc::Arena(offset[id]);
            }
        };
        for s in &mut self.steps {
            s.for_each_buf(|b, _| place(b));
        }
        let mut inputs = self.inputs;
        for b in &mut inputs {
            place(&mut b.buf);
        }
        let mut outputs = outputs;
        for b in &mut outputs {
            place(&mut b.buf);
        }
        let program = Program {
            weights: self.weights,
            arena_bytes: arena,
            inputs,
            outputs,
            steps: self.steps,
            index_checks: self.index_checks,
        };
        program.validate().map_err(EngineError::Model)?;
        Ok(program)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_reshaped_before_a_gather_are_still_checked_on_the_host() {
        use crate::engine::ir::{Dim, Tensor};
        let mut g = Graph::default();
        let ids = g.add_value(
            "ids",
            DType::I64,
            Some(vec![Dim::Sym("batch".into()), Dim::Known(3)]),
        );
        g.inputs.push(ids);
        let table = g.add_constant(
            "table",
            Tensor::f32(vec![10, 4], (0..40).map(|i| i as f32).collect()).unwrap(),
        );
        let shape = g.add_constant("flat", Tensor::i64(vec![1], vec![-1]).unwrap());
        let flat = g
            .add_node(
                "flatten_ids",
                Op::Reshape { allowzero: false },
                vec![ids, shape],
                vec!["flat_ids".into()],
            )
            .unwrap()[0];
        let cast = g
            .add_node(
                "to_i32",
                Op::Cast { to: DType::I32 },
                vec![flat],
                vec!["ids32".into()],
            )
            .unwrap()[0];
        let out = g
            .add_node(
                "lookup",
                Op::Gather { axis: 0 },
                vec![table, cast],
                vec!["rows".into()],
            )
            .unwrap()[0];
        g.outputs.push(out);
        let p = lower(&g, &[("ids", vec![2, 3])], Precision::Fp32, None).unwrap();
        assert_eq!(p.index_checks.len(), 1, "{:?}", p.index_checks);
        assert_eq!(p.index_checks[0].input, "ids");
        assert_eq!(p.index_checks[0].bound, 10);
        let ids: Vec<u8> = [1i64, 2, 3, 4, 5, 10]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let e = switchyard_kernels::program_cpu::run(&p, &[("ids", &ids)]).unwrap_err();
        assert!(e.contains("index 10 is out of range"), "{e}");
    }

    #[test]
    fn broadcast_and_merge() {
        assert_eq!(broadcast_strides(&[3], &[2, 3]).unwrap(), vec![0, 1]);
        assert_eq!(broadcast_strides(&[2, 1], &[2, 3]).unwrap(), vec![1, 0]);
        assert!(broadcast_strides(&[2], &[2, 3]).is_err());
        let mut a = contiguous(&[2, 3, 4]);
        let mut b = contiguous(&[2, 3, 4]);
        let s = merge_dims(&[2, 3, 4], &mut [&mut a, &mut b]);
        assert_eq!((s, a), (vec![24], vec![1]));
        // A transpose does not merge.
        let mut t = vec![1, 2];
        let mut o = vec![2, 1];
        let s = merge_dims(&[2, 2], &mut [&mut t, &mut o]);
        assert_eq!(s, vec![2, 2]);
    }
}
