//! The intermediate representation: a typed, topologically ordered graph.
//!
//! Values are numbered ([`ValueId`]); each has a name (the ONNX name, kept for errors and for
//! binding inputs and outputs), a dtype and a shape whose dims may be symbolic. Constants
//! (ONNX initializers and `Constant` nodes) are values with a [`Tensor`] attached. Nodes carry
//! an [`Op`] whose attributes were parsed and validated by the importer, so passes and the
//! interpreter never look at strings.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use serde::{Deserialize, Serialize};

/// Index of a value in [`Graph::values`].
pub type ValueId = usize;

/// Element types the engine computes with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DType {
    F32,
    F64,
    I32,
    I64,
    Bool,
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            DType::F32 => "float32",
            DType::F64 => "float64",
            DType::I32 => "int32",
            DType::I64 => "int64",
            DType::Bool => "bool",
        };
        f.write_str(s)
    }
}

/// One dimension of a shape.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Dim {
    /// A size known at compile time.
    Known(usize),
    /// A named size bound at run time (`batch`, `sequence`); equal names are equal sizes.
    Sym(String),
    /// A size nothing is known about.
    Unknown,
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Known(n) => write!(f, "{n}"),
            Dim::Sym(s) => f.write_str(s),
            Dim::Unknown => f.write_str("?"),
        }
    }
}

/// A shape of known rank; `None` where even the rank is unknown.
pub type Shape = Vec<Dim>;

/// Formats an optional shape as `[batch, 30]` or `[*]`.
pub fn shape_string(shape: &Option<Shape>) -> String {
    match shape {
        None => "[*]".into(),
        Some(dims) => {
            let parts: Vec<String> = dims.iter().map(|d| d.to_string()).collect();
            format!("[{}]", parts.join(", "))
        }
    }
}

/// The elements of a tensor, one variant per [`DType`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Data {
    F32(Vec<f32>),
    F64(Vec<f64>),
    I32(Vec<i32>),
    I64(Vec<i64>),
    Bool(Vec<bool>),
}

impl Data {
    pub fn dtype(&self) -> DType {
        match self {
            Data::F32(_) => DType::F32,
            Data::F64(_) => DType::F64,
            Data::I32(_) => DType::I32,
            Data::I64(_) => DType::I64,
            Data::Bool(_) => DType::Bool,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Data::F32(v) => v.len(),
            Data::F64(v) => v.len(),
            Data::I32(v) => v.len(),
            Data::I64(v) => v.len(),
            Data::Bool(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A dense row-major tensor with concrete dims: constants and interpreter values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Data,
}

/// The most elements one tensor may hold (2^31): a bad model asking for more gets an error
/// instead of an overflow or an allocation failure.
pub const MAX_ELEMENTS: usize = 1 << 31;

/// The element count of `shape`, refused past [`MAX_ELEMENTS`].
pub fn element_count(shape: &[usize]) -> Result<usize, String> {
    shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .filter(|&n| n <= MAX_ELEMENTS)
        .ok_or_else(|| format!("shape {shape:?} holds more than {MAX_ELEMENTS} elements"))
}

impl Tensor {
    /// A tensor whose element count must match its shape.
    pub fn new(shape: Vec<usize>, data: Data) -> Result<Tensor, String> {
        let n = element_count(&shape)?;
        if n != data.len() {
            return Err(format!(
                "shape {shape:?} holds {n} elements but {} were given",
                data.len()
            ));
        }
        Ok(Tensor { shape, data })
    }

    pub fn f32(shape: Vec<usize>, v: Vec<f32>) -> Result<Tensor, String> {
        Tensor::new(shape, Data::F32(v))
    }

    pub fn i64(shape: Vec<usize>, v: Vec<i64>) -> Result<Tensor, String> {
        Tensor::new(shape, Data::I64(v))
    }

    pub fn dtype(&self) -> DType {
        self.data.dtype()
    }

    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The shape as IR dims (all known).
    pub fn dims(&self) -> Shape {
        self.shape.iter().map(|&n| Dim::Known(n)).collect()
    }

    /// Integer contents (int32 or int64) widened to i64; `None` for other dtypes.
    pub fn as_i64s(&self) -> Option<Vec<i64>> {
        match &self.data {
            Data::I64(v) => Some(v.clone()),
            Data::I32(v) => Some(v.iter().map(|&x| x as i64).collect()),
            _ => None,
        }
    }

    /// The float32 elements, or `None` for another dtype.
    pub fn as_f32s(&self) -> Option<&[f32]> {
        match &self.data {
            Data::F32(v) => Some(v),
            _ => None,
        }
    }
}

/// Elementwise functions of one input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum UnaryOp {
    Relu,
    Sigmoid,
    Tanh,
    Erf,
    Sqrt,
    Neg,
    Exp,
    /// The exact (erf) GELU, ONNX `Gelu` with `approximate = "none"`.
    Gelu,
}

/// Elementwise functions of two inputs with numpy broadcasting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
    Pow,
}

/// Ordered comparisons of two inputs with numpy broadcasting; the output is bool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CmpOp {
    Greater,
    GreaterOrEqual,
    Less,
    LessOrEqual,
}

/// Logical functions of two bool inputs with numpy broadcasting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogicalOp {
    And,
    Or,
    Xor,
}

/// What a fused GEMM applies to its result, in order after the bias.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Activation {
    None,
    Relu,
    Sigmoid,
    Tanh,
    Gelu,
}

/// `Y = activation(alpha · op(A) · op(B) + beta · C)`. ONNX `Gemm` (2-D `A`) and the fusion of
/// `MatMul` + `Add` [+ activation] (then `A` may have leading batch dims, `B` is 2-D).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Gemm {
    pub trans_a: bool,
    pub trans_b: bool,
    pub alpha: f32,
    pub beta: f32,
    pub activation: Activation,
}

/// Operators with validated, typed attributes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Op {
    Unary(UnaryOp),
    Binary(BinaryOp),
    Equal,
    /// Inputs `a, b` (same dtype, broadcast); output bool.
    Compare(CmpOp),
    /// Inputs `a, b` (bool, broadcast); output bool.
    Logical(LogicalOp),
    /// Bool → bool.
    Not,
    /// Inputs `start, limit, delta` (scalars of one dtype: int32, int64 or float32); the
    /// output is 1-D with `max(ceil((limit - start) / delta), 0)` elements.
    Range,
    /// ONNX `Flatten`: the output is 2-D `[prod(dims[..axis]), prod(dims[axis..])]`.
    Flatten {
        axis: i64,
    },
    Where,
    Identity,
    Cast {
        to: DType,
    },
    MatMul,
    /// Inputs `A, B[, C]`.
    Gemm(Gemm),
    /// `ai.onnx.ml.Scaler`: `(x - offset) * scale` per last-axis feature (or one for all).
    Scaler {
        offset: Vec<f32>,
        scale: Vec<f32>,
    },
    Concat {
        axis: i64,
    },
    ArgMax {
        axis: i64,
        keepdims: bool,
        select_last_index: bool,
    },
    /// `ai.onnx.ml.ArrayFeatureExtractor`: inputs `X, indices`; picks along X's last axis.
    ArrayFeatureExtractor,
    /// Inputs `data, shape`.
    Reshape {
        allowzero: bool,
    },
    Unsqueeze {
        axes: Vec<i64>,
    },
    Squeeze {
        axes: Option<Vec<i64>>,
    },
    Gather {
        axis: i64,
    },
    Shape {
        start: i64,
        end: Option<i64>,
    },
    /// Inputs `data, starts, ends[, axes[, steps]]`.
    Slice,
    Transpose {
        perm: Option<Vec<usize>>,
    },
    ReduceMean {
        axes: Option<Vec<i64>>,
        keepdims: bool,
    },
    /// Float or integer input; `None` reduces over every axis.
    ReduceSum {
        axes: Option<Vec<i64>>,
        keepdims: bool,
    },
    /// Float32 input; each bound is applied when present (`min` first, then `max`).
    Clip {
        min: Option<f32>,
        max: Option<f32>,
    },
    /// `coerce_2d` is the opset < 13 behaviour: the input is seen as 2-D split at `axis`.
    Softmax {
        axis: i64,
        coerce_2d: bool,
    },
    /// Inputs `X, scale[, bias]`; normalizes over the dims from `axis` on.
    LayerNorm {
        axis: i64,
        epsilon: f32,
    },
    /// Inputs `data, shape`.
    Expand,
    /// Fused scaled dot-product attention (from [`crate::engine::fuse::fuse_attention`]).
    /// Inputs `q, k, v[, mask]`: `q` `[B, H, Sq, D]`; `k` `[B, H, D, Sk]` when `k_transposed`,
    /// else `[B, H, Sk, D]`; `v` `[B, H, Sk, D]`; `mask` an additive float32 tensor that
    /// broadcasts (numpy rules) to `[B, H, Sq, Sk]`. The output `[B, H, Sq, D]` is
    /// `softmax_last_axis((q · k') · scale + mask) · v`, `k'` the `[B, H, D, Sk]` view of `k`.
    /// All four inputs have rank 4 and equal `B`, `H` (no broadcasting of `q`, `k`, `v`).
    Attention {
        scale: f32,
        k_transposed: bool,
    },
    /// Fused residual add + layer norm (from [`crate::engine::fuse::fuse_add_layer_norm`]).
    /// Inputs `x, residual, scale[, bias]`: [`Op::LayerNorm`] of `x + residual` (same shape,
    /// no broadcasting), normalized over the dims from `axis` on.
    AddLayerNorm {
        axis: i64,
        epsilon: f32,
    },
    /// Input `shape`; the value is a one-element tensor.
    ConstantOfShape {
        value: Tensor,
    },
}

impl Op {
    /// The ONNX-style name, for errors and dumps.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Unary(u) => match u {
                UnaryOp::Relu => "Relu",
                UnaryOp::Sigmoid => "Sigmoid",
                UnaryOp::Tanh => "Tanh",
                UnaryOp::Erf => "Erf",
                UnaryOp::Sqrt => "Sqrt",
                UnaryOp::Neg => "Neg",
                UnaryOp::Exp => "Exp",
                UnaryOp::Gelu => "Gelu",
            },
            Op::Binary(b) => match b {
                BinaryOp::Add => "Add",
                BinaryOp::Sub => "Sub",
                BinaryOp::Mul => "Mul",
                BinaryOp::Div => "Div",
                BinaryOp::Pow => "Pow",
            },
            Op::Equal => "Equal",
            Op::Compare(c) => match c {
                CmpOp::Greater => "Greater",
                CmpOp::GreaterOrEqual => "GreaterOrEqual",
                CmpOp::Less => "Less",
                CmpOp::LessOrEqual => "LessOrEqual",
            },
            Op::Logical(l) => match l {
                LogicalOp::And => "And",
                LogicalOp::Or => "Or",
                LogicalOp::Xor => "Xor",
            },
            Op::Not => "Not",
            Op::Range => "Range",
            Op::Flatten { .. } => "Flatten",
            Op::ReduceSum { .. } => "ReduceSum",
            Op::Clip { .. } => "Clip",
            Op::Where => "Where",
            Op::Identity => "Identity",
            Op::Cast { .. } => "Cast",
            Op::MatMul => "MatMul",
            Op::Gemm(_) => "Gemm",
            Op::Scaler { .. } => "Scaler",
            Op::Concat { .. } => "Concat",
            Op::ArgMax { .. } => "ArgMax",
            Op::ArrayFeatureExtractor => "ArrayFeatureExtractor",
            Op::Reshape { .. } => "Reshape",
            Op::Unsqueeze { .. } => "Unsqueeze",
            Op::Squeeze { .. } => "Squeeze",
            Op::Gather { .. } => "Gather",
            Op::Shape { .. } => "Shape",
            Op::Slice => "Slice",
            Op::Transpose { .. } => "Transpose",
            Op::ReduceMean { .. } => "ReduceMean",
            Op::Softmax { .. } => "Softmax",
            Op::LayerNorm { .. } => "LayerNormalization",
            Op::Expand => "Expand",
            Op::Attention { .. } => "Attention",
            Op::AddLayerNorm { .. } => "AddLayerNorm",
            Op::ConstantOfShape { .. } => "ConstantOfShape",
        }
    }
}

/// A value: a graph input, a constant or a node output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Value {
    pub name: String,
    pub dtype: DType,
    pub shape: Option<Shape>,
}

/// One operation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Node {
    /// The ONNX node name (or `op_type#index` when the model left it empty).
    pub name: String,
    pub op: Op,
    pub inputs: Vec<ValueId>,
    pub outputs: Vec<ValueId>,
}

/// A whole model. `nodes` is in topological order: every input of a node is a graph input,
/// a constant or an output of an earlier node.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Graph {
    pub values: Vec<Value>,
    pub constants: BTreeMap<ValueId, Tensor>,
    pub inputs: Vec<ValueId>,
    pub outputs: Vec<ValueId>,
    pub nodes: Vec<Node>,
}

impl Graph {
    /// Adds a value and returns its id.
    pub fn add_value(
        &mut self,
        name: impl Into<String>,
        dtype: DType,
        shape: Option<Shape>,
    ) -> ValueId {
        self.values.push(Value {
            name: name.into(),
            dtype,
            shape,
        });
        self.values.len() - 1
    }

    /// Adds a constant value holding `tensor`.
    pub fn add_constant(&mut self, name: impl Into<String>, tensor: Tensor) -> ValueId {
        let id = self.add_value(name, tensor.dtype(), Some(tensor.dims()));
        self.constants.insert(id, tensor);
        id
    }

    /// Appends a node whose output types are inferred from its inputs (see [`crate::engine::infer`]).
    pub fn add_node(
        &mut self,
        name: impl Into<String>,
        op: Op,
        inputs: Vec<ValueId>,
        output_names: Vec<String>,
    ) -> Result<Vec<ValueId>, crate::engine::EngineError> {
        let name = name.into();
        let types = crate::engine::infer::infer_node(self, &name, &op, &inputs)?;
        if types.len() != output_names.len() {
            return Err(crate::engine::EngineError::InvalidNode {
                op: op.name().into(),
                node: name,
                reason: format!(
                    "{} outputs named but the operator has {}",
                    output_names.len(),
                    types.len()
                ),
            });
        }
        let outputs: Vec<ValueId> = output_names
            .into_iter()
            .zip(types)
            .map(|(n, (dtype, shape))| self.add_value(n, dtype, shape))
            .collect();
        self.nodes.push(Node {
            name,
            op,
            inputs,
            outputs: Vec::clone(&outputs),
        });
        Ok(outputs)
    }

    pub fn is_constant(&self, id: ValueId) -> bool {
        self.constants.contains_key(&id)
    }

    /// The id of the value named `name`, if any.
    pub fn find(&self, name: &str) -> Option<ValueId> {
        self.values.iter().position(|v| v.name == name)
    }

    /// How many node inputs and graph outputs read each value.
    pub fn use_counts(&self) -> HashMap<ValueId, usize> {
        let mut uses = HashMap::new();
        for n in &self.nodes {
            for &i in &n.inputs {
                *uses.entry(i).or_insert(0) += 1;
            }
        }
        for &o in &self.outputs {
            *uses.entry(o).or_insert(0) += 1;
        }
        uses
    }

    /// Removes nodes none of whose outputs are used, and constants nobody reads (values stay
    /// in the table so ids remain stable).
    pub fn remove_unused(&mut self) {
        loop {
            let uses = self.use_counts();
            let before = self.nodes.len();
            self.nodes.retain(|n| {
                n.outputs
                    .iter()
                    .any(|o| uses.get(o).copied().unwrap_or(0) > 0)
            });
            if self.nodes.len() == before {
                break;
            }
        }
        let uses = self.use_counts();
        self.constants
            .retain(|id, _| uses.get(id).copied().unwrap_or(0) > 0);
    }

    /// Counts nodes by operator name, for tests and summaries.
    pub fn op_counts(&self) -> BTreeMap<&'static str, usize> {
        let mut m = BTreeMap::new();
        for n in &self.nodes {
            *m.entry(n.op.name()).or_insert(0) += 1;
        }
        m
    }
}
