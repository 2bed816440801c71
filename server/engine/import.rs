//! ONNX `ModelProto` → [`Graph`].
//!
//! Every attribute a node carries must be understood: an attribute the importer does not
//! consume fails the import (naming it), rather than being silently ignored and changing the
//! maths. Operators are looked up by domain (`ai.onnx`, `ai.onnx.ml`) and the model's opset for
//! that domain, because some change shape between opsets (Unsqueeze/Squeeze/ReduceMean axes move
//! from an attribute to an input; Softmax stops flattening to 2-D at opset 13).

use std::collections::{HashMap, HashSet};

use prost::Message;

use super::ir::{
    Activation, BinaryOp, CmpOp, DType, Data, Dim, Gemm, Graph, LogicalOp, Op, Shape, Tensor,
    UnaryOp, ValueId,
};
use super::EngineError;
use crate::proto::onnx::{self as pb, attribute_proto::AttributeType, type_proto};

/// Highest opsets whose operator definitions the importer was written against.
const MAX_OPSET_ONNX: i64 = 21;
const MAX_OPSET_ML: i64 = 5;

/// Decodes and imports an ONNX model.
pub fn import_model(bytes: &[u8]) -> Result<Graph, EngineError> {
    let model = pb::ModelProto::decode(bytes)?;
    import_proto(&model)
}

/// Which operator set a node belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Domain {
    Onnx,
    Ml,
}

/// Imports a decoded model.
pub fn import_proto(model: &pb::ModelProto) -> Result<Graph, EngineError> {
    let mut opsets: HashMap<Domain, i64> = HashMap::new();
    for o in &model.opset_import {
        match o.domain.as_str() {
            "" | "ai.onnx" => opsets.insert(Domain::Onnx, o.version),
            "ai.onnx.ml" => opsets.insert(Domain::Ml, o.version),
            // Other domains only matter if a node uses them; that node fails by name.
            _ => None,
        };
    }
    let g = model
        .graph
        .as_ref()
        .ok_or_else(|| EngineError::Model("the model has no graph".into()))?;
    let mut b = Builder {
        graph: Graph::default(),
        names: HashMap::new(),
        opsets,
    };
    for init in &g.initializer {
        let t = tensor_from_proto(init).map_err(|reason| EngineError::Unsupported {
            op: "initializer".into(),
            node: init.name.clone(),
            reason,
        })?;
        let id = b.graph.add_constant(init.name.clone(), t);
        b.names.insert(init.name.clone(), id);
    }
    let initializers: HashSet<&str> = g.initializer.iter().map(|t| t.name.as_str()).collect();
    for input in &g.input {
        // Models from before IR version 4 also list initializers as inputs.
        if initializers.contains(input.name.as_str()) {
            continue;
        }
        let (dtype, shape) = value_type(input).map_err(|reason| EngineError::Unsupported {
            op: "graph input".into(),
            node: input.name.clone(),
            reason,
        })?;
        let id = b.graph.add_value(input.name.clone(), dtype, shape);
        b.graph.inputs.push(id);
        b.names.insert(input.name.clone(), id);
    }
    for (i, node) in g.node.iter().enumerate() {
        b.node(i, node)?;
    }
    for out in &g.output {
        let id = *b.names.get(&out.name).ok_or_else(|| {
            EngineError::Model(format!("graph output '{}' is never produced", out.name))
        })?;
        if let Ok((dtype, _)) = value_type(out) {
            let got = b.graph.values[id].dtype;
            if got != dtype {
                return Err(EngineError::Model(format!(
                    "graph output '{}' is declared {dtype} but computes {got}",
                    out.name
                )));
            }
        }
        b.graph.outputs.push(id);
    }
    Ok(b.graph)
}

/// ONNX `TensorProto.DataType` → [`DType`].
fn dtype_from_onnx(t: i32) -> Result<DType, String> {
    use pb::tensor_proto::DataType as D;
    Ok(match D::try_from(t) {
        Ok(D::Float) => DType::F32,
        Ok(D::Double) => DType::F64,
        Ok(D::Int32) => DType::I32,
        Ok(D::Int64) => DType::I64,
        Ok(D::Bool) => DType::Bool,
        Ok(other) => {
            return Err(format!(
                "data type {} is not supported",
                other.as_str_name()
            ))
        }
        Err(_) => return Err(format!("data type {t} is not supported")),
    })
}

fn value_type(v: &pb::ValueInfoProto) -> Result<(DType, Option<Shape>), String> {
    let Some(type_proto::Value::TensorType(t)) = v.r#type.as_ref().and_then(|t| t.value.as_ref())
    else {
        return Err("only tensor values are supported".into());
    };
    let dtype = dtype_from_onnx(t.elem_type)?;
    let shape = t.shape.as_ref().map(|s| {
        s.dim
            .iter()
            .map(|d| match &d.value {
                Some(pb::tensor_shape_proto::dimension::Value::DimValue(n)) if *n >= 0 => {
                    Dim::Known(*n as usize)
                }
                Some(pb::tensor_shape_proto::dimension::Value::DimParam(p)) if !p.is_empty() => {
                    Dim::Sym(p.clone())
                }
                _ => Dim::Unknown,
            })
            .collect()
    });
    Ok((dtype, shape))
}

/// Decodes a `TensorProto` (typed fields or little-endian `raw_data`).
pub fn tensor_from_proto(t: &pb::TensorProto) -> Result<Tensor, String> {
    if t.data_location == pb::tensor_proto::DataLocation::External as i32
        || !t.external_data.is_empty()
    {
        return Err("tensors stored in external data files are not supported".into());
    }
    if t.segment.is_some() {
        return Err("segmented tensors are not supported".into());
    }
    let shape: Vec<usize> = t
        .dims
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| format!("negative dim {d}")))
        .collect::<Result<_, _>>()?;
    let dtype = dtype_from_onnx(t.data_type)?;
    let raw = &t.raw_data;
    fn le<const N: usize, T>(raw: &[u8], f: fn([u8; N]) -> T) -> Result<Vec<T>, String> {
        if raw.len() % N != 0 {
            return Err(format!(
                "raw_data length {} is not a multiple of {N}",
                raw.len()
            ));
        }
        Ok(raw
            .chunks_exact(N)
            .map(|c| {
                let mut a = [0u8; N];
                a.copy_from_slice(c);
                f(a)
            })
            .collect())
    }
    let data = if !raw.is_empty() {
        match dtype {
            DType::F32 => Data::F32(le(raw, f32::from_le_bytes)?),
            DType::F64 => Data::F64(le(raw, f64::from_le_bytes)?),
            DType::I32 => Data::I32(le(raw, i32::from_le_bytes)?),
            DType::I64 => Data::I64(le(raw, i64::from_le_bytes)?),
            DType::Bool => Data::Bool(raw.iter().map(|&b| b != 0).collect()),
        }
    } else {
        match dtype {
            DType::F32 => Data::F32(t.float_data.clone()),
            DType::F64 => Data::F64(t.double_data.clone()),
            DType::I32 => Data::I32(t.int32_data.clone()),
            DType::I64 => Data::I64(t.int64_data.clone()),
            // Bools travel in int32_data.
            DType::Bool => Data::Bool(t.int32_data.iter().map(|&b| b != 0).collect()),
        }
    };
    Tensor::new(shape, data)
}

/// The attributes of one node; each is consumed once and leftovers are refused.
struct Attrs<'a> {
    left: HashMap<&'a str, &'a pb::AttributeProto>,
}

impl<'a> Attrs<'a> {
    fn new(node: &'a pb::NodeProto) -> Self {
        Attrs {
            left: node
                .attribute
                .iter()
                .map(|a| (a.name.as_str(), a))
                .collect(),
        }
    }

    fn take(
        &mut self,
        name: &str,
        want: AttributeType,
    ) -> Result<Option<&'a pb::AttributeProto>, String> {
        match self.left.remove(name) {
            None => Ok(None),
            Some(a) if !a.ref_attr_name.is_empty() => {
                Err(format!("attribute '{name}' refers to a function attribute"))
            }
            Some(a) if a.r#type == want as i32 || a.r#type == AttributeType::Undefined as i32 => {
                Ok(Some(a))
            }
            Some(a) => Err(format!(
                "attribute '{name}' has type {}, expected {}",
                AttributeType::try_from(a.r#type)
                    .map(|t| t.as_str_name())
                    .unwrap_or("unknown"),
                want.as_str_name()
            )),
        }
    }

    fn int(&mut self, name: &str, default: i64) -> Result<i64, String> {
        Ok(self
            .take(name, AttributeType::Int)?
            .map_or(default, |a| a.i))
    }

    fn opt_int(&mut self, name: &str) -> Result<Option<i64>, String> {
        Ok(self.take(name, AttributeType::Int)?.map(|a| a.i))
    }

    fn bool(&mut self, name: &str, default: bool) -> Result<bool, String> {
        match self.int(name, default as i64)? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(format!("attribute '{name}' must be 0 or 1, is {v}")),
        }
    }

    fn float(&mut self, name: &str, default: f32) -> Result<f32, String> {
        Ok(self
            .take(name, AttributeType::Float)?
            .map_or(default, |a| a.f))
    }

    fn floats(&mut self, name: &str) -> Result<Option<Vec<f32>>, String> {
        Ok(self
            .take(name, AttributeType::Floats)?
            .map(|a| a.floats.clone()))
    }

    fn ints(&mut self, name: &str) -> Result<Option<Vec<i64>>, String> {
        Ok(self
            .take(name, AttributeType::Ints)?
            .map(|a| a.ints.clone()))
    }

    fn string(&mut self, name: &str) -> Result<Option<String>, String> {
        self.take(name, AttributeType::String)?
            .map(|a| {
                String::from_utf8(a.s.clone())
                    .map_err(|_| format!("attribute '{name}' is not UTF-8"))
            })
            .transpose()
    }

    fn tensor(&mut self, name: &str) -> Result<Option<Tensor>, String> {
        self.take(name, AttributeType::Tensor)?
            .map(|a| {
                a.t.as_ref()
                    .ok_or_else(|| format!("attribute '{name}' holds no tensor"))
                    .and_then(tensor_from_proto)
            })
            .transpose()
    }

    /// Fails if an attribute was not consumed.
    fn finish(self) -> Result<(), String> {
        let mut names: Vec<&str> = self.left.into_keys().collect();
        names.sort_unstable();
        match names.first() {
            None => Ok(()),
            Some(n) => Err(format!("attribute '{n}' is not supported")),
        }
    }
}

struct Builder {
    graph: Graph,
    names: HashMap<String, ValueId>,
    opsets: HashMap<Domain, i64>,
}

/// A node-level failure before it is tagged with the operator and node.
enum Fail {
    Unsupported(String),
    Invalid(String),
    Engine(EngineError),
}

impl From<String> for Fail {
    fn from(s: String) -> Self {
        Fail::Unsupported(s)
    }
}

impl From<EngineError> for Fail {
    fn from(e: EngineError) -> Self {
        Fail::Engine(e)
    }
}

impl Builder {
    fn node(&mut self, index: usize, node: &pb::NodeProto) -> Result<(), EngineError> {
        let name = if node.name.is_empty() {
            format!("{}#{index}", node.op_type)
        } else {
            node.name.clone()
        };
        self.node_inner(&name, node).map_err(|f| match f {
            Fail::Unsupported(reason) => EngineError::Unsupported {
                op: node.op_type.clone(),
                node: name.clone(),
                reason,
            },
            Fail::Invalid(reason) => EngineError::InvalidNode {
                op: node.op_type.clone(),
                node: name.clone(),
                reason,
            },
            Fail::Engine(e) => e,
        })
    }

    fn node_inner(&mut self, name: &str, node: &pb::NodeProto) -> Result<(), Fail> {
        let domain = match node.domain.as_str() {
            "" | "ai.onnx" => Domain::Onnx,
            "ai.onnx.ml" => Domain::Ml,
            d => {
                return Err(Fail::Unsupported(format!(
                    "operator domain '{d}' is not supported"
                )))
            }
        };
        let opset = *self.opsets.get(&domain).ok_or_else(|| {
            Fail::Invalid(format!(
                "the model imports no opset for domain '{}'",
                node.domain
            ))
        })?;
        let max = if domain == Domain::Onnx {
            MAX_OPSET_ONNX
        } else {
            MAX_OPSET_ML
        };
        if opset > max {
            return Err(Fail::Unsupported(format!(
                "opset {opset} of domain '{}' is newer than the engine supports ({max})",
                if domain == Domain::Onnx {
                    "ai.onnx"
                } else {
                    "ai.onnx.ml"
                }
            )));
        }
        // Inputs: "" marks an absent optional input. Trailing ones are dropped; one followed by
        // present inputs is only understood by operators that read `slots` themselves (Clip).
        let last_present = node
            .input
            .iter()
            .rposition(|s| !s.is_empty())
            .map_or(0, |p| p + 1);
        let mut slots: Vec<Option<ValueId>> = Vec::with_capacity(last_present);
        for n in &node.input[..last_present] {
            if n.is_empty() {
                slots.push(None);
                continue;
            }
            let id = *self.names.get(n).ok_or_else(|| {
                Fail::Invalid(format!("input '{n}' is not defined before this node"))
            })?;
            slots.push(Some(id));
        }
        let mut inputs: Vec<ValueId> = slots.iter().flatten().copied().collect();
        let gaps_allowed = domain == Domain::Onnx && node.op_type == "Clip";
        if let Some(i) = slots.iter().position(Option::is_none) {
            if !gaps_allowed {
                return Err(Fail::Unsupported(format!(
                    "absent optional input {i} followed by present ones"
                )));
            }
        }
        let last_out = node
            .output
            .iter()
            .rposition(|s| !s.is_empty())
            .map_or(0, |p| p + 1);
        let outputs: Vec<String> = node.output[..last_out].to_vec();
        if outputs.iter().any(String::is_empty) {
            return Err(Fail::Unsupported(
                "absent optional output followed by present ones".into(),
            ));
        }
        let mut attrs = Attrs::new(node);
        let op_type = node.op_type.as_str();

        if domain == Domain::Onnx && op_type == "Constant" {
            let t = constant_value(&mut attrs)?;
            attrs.finish()?;
            let out = outputs
                .first()
                .ok_or_else(|| Fail::Invalid("no output".into()))?;
            let id = self.graph.add_constant(out.clone(), t);
            self.names.insert(out.clone(), id);
            return Ok(());
        }

        let op = match (domain, op_type) {
            (Domain::Onnx, "Relu") => Op::Unary(UnaryOp::Relu),
            (Domain::Onnx, "Sigmoid") => Op::Unary(UnaryOp::Sigmoid),
            (Domain::Onnx, "Tanh") => Op::Unary(UnaryOp::Tanh),
            (Domain::Onnx, "Erf") => Op::Unary(UnaryOp::Erf),
            (Domain::Onnx, "Sqrt") => Op::Unary(UnaryOp::Sqrt),
            (Domain::Onnx, "Neg") => Op::Unary(UnaryOp::Neg),
            (Domain::Onnx, "Exp") => Op::Unary(UnaryOp::Exp),
            (Domain::Onnx, "Gelu") => {
                if opset < 20 {
                    return Err(Fail::Unsupported(format!(
                        "Gelu is an ai.onnx operator from opset 20, the model imports {opset}"
                    )));
                }
                match attrs.string("approximate")?.as_deref() {
                    None | Some("none") => {}
                    Some(a) => {
                        return Err(Fail::Unsupported(format!(
                            "approximate = '{a}' is not supported"
                        )))
                    }
                }
                Op::Unary(UnaryOp::Gelu)
            }
            (Domain::Onnx, "Add") => Op::Binary(BinaryOp::Add),
            (Domain::Onnx, "Sub") => Op::Binary(BinaryOp::Sub),
            (Domain::Onnx, "Mul") => Op::Binary(BinaryOp::Mul),
            (Domain::Onnx, "Div") => Op::Binary(BinaryOp::Div),
            (Domain::Onnx, "Pow") => Op::Binary(BinaryOp::Pow),
            (Domain::Onnx, "Equal") => Op::Equal,
            (Domain::Onnx, "Greater") => Op::Compare(CmpOp::Greater),
            (Domain::Onnx, "GreaterOrEqual") => Op::Compare(CmpOp::GreaterOrEqual),
            (Domain::Onnx, "Less") => Op::Compare(CmpOp::Less),
            (Domain::Onnx, "LessOrEqual") => Op::Compare(CmpOp::LessOrEqual),
            (Domain::Onnx, "And") => Op::Logical(LogicalOp::And),
            (Domain::Onnx, "Or") => Op::Logical(LogicalOp::Or),
            (Domain::Onnx, "Xor") => Op::Logical(LogicalOp::Xor),
            (Domain::Onnx, "Not") => Op::Not,
            (Domain::Onnx, "Range") => Op::Range,
            (Domain::Onnx, "Flatten") => Op::Flatten {
                axis: attrs.int("axis", 1)?,
            },
            (Domain::Onnx, "ReduceSum") => {
                let keepdims = attrs.bool("keepdims", true)?;
                let axes = if opset < 13 {
                    attrs.ints("axes")?
                } else {
                    let noop = attrs.bool("noop_with_empty_axes", false)?;
                    let axes = self.const_input_ints(&mut inputs, 1, "axes")?;
                    if noop && axes.as_ref().is_none_or(|a| a.is_empty()) {
                        return Err(Fail::Unsupported(
                            "noop_with_empty_axes = 1 without axes is not supported".into(),
                        ));
                    }
                    axes.filter(|a| !a.is_empty())
                };
                Op::ReduceSum { axes, keepdims }
            }
            (Domain::Onnx, "Clip") => {
                if opset < 11 {
                    if opset < 6 {
                        return Err(Fail::Unsupported(format!(
                            "Clip before opset 6 is not supported (the model imports {opset})"
                        )));
                    }
                    Op::Clip {
                        min: attrs.take("min", AttributeType::Float)?.map(|a| a.f),
                        max: attrs.take("max", AttributeType::Float)?.map(|a| a.f),
                    }
                } else {
                    let x = slots
                        .first()
                        .copied()
                        .flatten()
                        .ok_or_else(|| Fail::Invalid("input 'input' is required".into()))?;
                    let min = self.const_input_f32(slots.get(1).copied().flatten(), "min")?;
                    let max = self.const_input_f32(slots.get(2).copied().flatten(), "max")?;
                    if slots.len() > 3 {
                        return Err(Fail::Invalid(format!(
                            "expects at most 3 inputs, has {}",
                            slots.len()
                        )));
                    }
                    inputs = vec![x];
                    Op::Clip { min, max }
                }
            }
            (Domain::Onnx, "Where") => Op::Where,
            (Domain::Onnx, "Identity") => Op::Identity,
            (Domain::Onnx, "Cast") => {
                let to = attrs
                    .opt_int("to")?
                    .ok_or_else(|| Fail::Invalid("attribute 'to' is required".into()))?;
                let to = dtype_from_onnx(to as i32).map_err(|e| format!("attribute 'to': {e}"))?;
                // Only meaningful for float8 targets, which are refused above.
                attrs.int("saturate", 1)?;
                Op::Cast { to }
            }
            (Domain::Onnx, "MatMul") => Op::MatMul,
            (Domain::Onnx, "Gemm") => Op::Gemm(Gemm {
                alpha: attrs.float("alpha", 1.0)?,
                beta: attrs.float("beta", 1.0)?,
                trans_a: attrs.bool("transA", false)?,
                trans_b: attrs.bool("transB", false)?,
                activation: Activation::None,
            }),
            (Domain::Onnx, "Concat") => Op::Concat {
                axis: attrs
                    .opt_int("axis")?
                    .ok_or_else(|| Fail::Invalid("attribute 'axis' is required".into()))?,
            },
            (Domain::Onnx, "ArgMax") => Op::ArgMax {
                axis: attrs.int("axis", 0)?,
                keepdims: attrs.bool("keepdims", true)?,
                select_last_index: attrs.bool("select_last_index", false)?,
            },
            (Domain::Onnx, "Reshape") => Op::Reshape {
                allowzero: attrs.bool("allowzero", false)?,
            },
            (Domain::Onnx, "Unsqueeze") => {
                let axes = if opset < 13 {
                    attrs
                        .ints("axes")?
                        .ok_or_else(|| Fail::Invalid("attribute 'axes' is required".into()))?
                } else {
                    self.const_input_ints(&mut inputs, 1, "axes")?
                        .ok_or_else(|| Fail::Invalid("input 'axes' is required".into()))?
                };
                Op::Unsqueeze { axes }
            }
            (Domain::Onnx, "Squeeze") => {
                let axes = if opset < 13 {
                    attrs.ints("axes")?
                } else {
                    self.const_input_ints(&mut inputs, 1, "axes")?
                };
                Op::Squeeze { axes }
            }
            (Domain::Onnx, "Gather") => Op::Gather {
                axis: attrs.int("axis", 0)?,
            },
            (Domain::Onnx, "Shape") => Op::Shape {
                start: attrs.int("start", 0)?,
                end: attrs.opt_int("end")?,
            },
            (Domain::Onnx, "Slice") => {
                if opset < 10 {
                    return Err(Fail::Unsupported(
                        "Slice before opset 10 (attribute form) is not supported".into(),
                    ));
                }
                Op::Slice
            }
            (Domain::Onnx, "Transpose") => Op::Transpose {
                perm: attrs
                    .ints("perm")?
                    .map(|p| {
                        p.into_iter()
                            .map(|v| {
                                usize::try_from(v).map_err(|_| format!("negative perm entry {v}"))
                            })
                            .collect()
                    })
                    .transpose()?,
            },
            (Domain::Onnx, "ReduceMean") => {
                let keepdims = attrs.bool("keepdims", true)?;
                let axes = if opset < 18 {
                    attrs.ints("axes")?
                } else {
                    let noop = attrs.bool("noop_with_empty_axes", false)?;
                    let axes = self.const_input_ints(&mut inputs, 1, "axes")?;
                    if noop && axes.as_ref().is_none_or(|a| a.is_empty()) {
                        attrs.finish()?;
                        return self.emit(name, Op::Identity, inputs, outputs);
                    }
                    axes.filter(|a| !a.is_empty())
                };
                Op::ReduceMean { axes, keepdims }
            }
            (Domain::Onnx, "Softmax") => {
                let coerce_2d = opset < 13;
                Op::Softmax {
                    axis: attrs.int("axis", if coerce_2d { 1 } else { -1 })?,
                    coerce_2d,
                }
            }
            (Domain::Onnx, "LayerNormalization") => {
                if outputs.len() > 1 {
                    return Err(Fail::Unsupported(
                        "the Mean and InvStdDev outputs are not supported".into(),
                    ));
                }
                if attrs.int("stash_type", 1)? != 1 {
                    return Err(Fail::Unsupported(
                        "stash_type other than float32 is not supported".into(),
                    ));
                }
                Op::LayerNorm {
                    axis: attrs.int("axis", -1)?,
                    epsilon: attrs.float("epsilon", 1e-5)?,
                }
            }
            (Domain::Onnx, "Expand") => Op::Expand,
            (Domain::Onnx, "ConstantOfShape") => {
                let value = attrs.tensor("value")?.unwrap_or(Tensor {
                    shape: vec![1],
                    data: Data::F32(vec![0.0]),
                });
                if value.len() != 1 {
                    return Err(Fail::Invalid(
                        "attribute 'value' must hold one element".into(),
                    ));
                }
                Op::ConstantOfShape { value }
            }
            (Domain::Ml, "Scaler") => {
                let offset = attrs.floats("offset")?.unwrap_or_else(|| vec![0.0]);
                let scale = attrs.floats("scale")?.unwrap_or_else(|| vec![1.0]);
                if offset.is_empty() || scale.is_empty() {
                    return Err(Fail::Invalid("offset and scale must not be empty".into()));
                }
                Op::Scaler { offset, scale }
            }
            (Domain::Ml, "ArrayFeatureExtractor") => Op::ArrayFeatureExtractor,
            (d, op) => {
                return Err(Fail::Unsupported(format!(
                    "no implementation of '{op}' in domain '{}' (opset {opset})",
                    if d == Domain::Onnx {
                        "ai.onnx"
                    } else {
                        "ai.onnx.ml"
                    }
                )))
            }
        };
        attrs.finish()?;
        self.emit(name, op, inputs, outputs)
    }

    fn emit(
        &mut self,
        name: &str,
        op: Op,
        inputs: Vec<ValueId>,
        outputs: Vec<String>,
    ) -> Result<(), Fail> {
        let ids = self.graph.add_node(name, op, inputs, outputs.clone())?;
        for (n, id) in outputs.into_iter().zip(ids) {
            self.names.insert(n, id);
        }
        Ok(())
    }

    /// The float32 scalar held by the constant `id` (`None` when the input is absent).
    fn const_input_f32(&self, id: Option<ValueId>, what: &str) -> Result<Option<f32>, Fail> {
        let Some(id) = id else {
            return Ok(None);
        };
        let t = self.graph.constants.get(&id).ok_or_else(|| {
            Fail::Unsupported(format!(
                "input '{what}' ('{}') must be a constant",
                self.graph.values[id].name
            ))
        })?;
        match t.as_f32s() {
            Some([v]) => Ok(Some(*v)),
            _ => Err(Fail::Invalid(format!(
                "input '{what}' must be one float32, is {} of shape {:?}",
                t.dtype(),
                t.shape
            ))),
        }
    }

    /// Removes input `i` (an int list that must be a constant) and returns its values.
    fn const_input_ints(
        &self,
        inputs: &mut Vec<ValueId>,
        i: usize,
        what: &str,
    ) -> Result<Option<Vec<i64>>, Fail> {
        if inputs.len() <= i {
            return Ok(None);
        }
        let id = inputs.remove(i);
        let t = self
            .graph
            .constants
            .get(&id)
            .ok_or_else(|| Fail::Unsupported(format!("input '{what}' must be a constant")))?;
        Ok(Some(t.as_i64s().ok_or_else(|| {
            Fail::Invalid(format!("input '{what}' must be integers"))
        })?))
    }
}

/// The tensor a `Constant` node holds, whichever attribute carries it.
fn constant_value(attrs: &mut Attrs<'_>) -> Result<Tensor, Fail> {
    if let Some(t) = attrs.tensor("value")? {
        return Ok(t);
    }
    if let Some(a) = attrs.take("value_float", AttributeType::Float)? {
        return Ok(Tensor::f32(vec![], vec![a.f])?);
    }
    if let Some(v) = attrs.floats("value_floats")? {
        return Ok(Tensor::f32(vec![v.len()], v)?);
    }
    if let Some(v) = attrs.opt_int("value_int")? {
        return Ok(Tensor::i64(vec![], vec![v])?);
    }
    if let Some(v) = attrs.ints("value_ints")? {
        return Ok(Tensor::i64(vec![v.len()], v)?);
    }
    Err(Fail::Unsupported(
        "only value, value_float(s) and value_int(s) constants are supported".into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(nodes: Vec<pb::NodeProto>, opset: i64) -> Vec<u8> {
        let vi = |name: &str| pb::ValueInfoProto {
            name: name.into(),
            r#type: Some(pb::TypeProto {
                value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                    elem_type: 1,
                    shape: Some(pb::TensorShapeProto {
                        dim: vec![
                            pb::tensor_shape_proto::Dimension {
                                value: Some(pb::tensor_shape_proto::dimension::Value::DimParam(
                                    "batch".into(),
                                )),
                                denotation: String::new(),
                            },
                            pb::tensor_shape_proto::Dimension {
                                value: Some(pb::tensor_shape_proto::dimension::Value::DimValue(4)),
                                denotation: String::new(),
                            },
                        ],
                    }),
                })),
                denotation: String::new(),
            }),
            ..Default::default()
        };
        pb::ModelProto {
            ir_version: 8,
            opset_import: vec![pb::OperatorSetIdProto {
                domain: String::new(),
                version: opset,
            }],
            graph: Some(pb::GraphProto {
                node: nodes,
                input: vec![vi("x")],
                output: vec![vi("y")],
                ..Default::default()
            }),
            ..Default::default()
        }
        .encode_to_vec()
    }

    fn mk_node(op: &str, name: &str, attrs: Vec<pb::AttributeProto>) -> pb::NodeProto {
        pb::NodeProto {
            input: vec!["x".into()],
            output: vec!["y".into()],
            name: name.into(),
            op_type: op.into(),
            attribute: attrs,
            ..Default::default()
        }
    }

    fn expect_unsupported(bytes: &[u8]) -> (String, String, String) {
        match import_model(bytes) {
            Err(EngineError::Unsupported { op, node, reason }) => (op, node, reason),
            other => panic!("expected Unsupported, got {other:?}"),
        }
    }

    #[test]
    fn unknown_operator_is_named_with_its_node() {
        let (op, node, reason) =
            expect_unsupported(&model(vec![mk_node("HardSwish", "act_7", vec![])], 17));
        assert_eq!((op.as_str(), node.as_str()), ("HardSwish", "act_7"));
        assert!(reason.contains("ai.onnx"), "{reason}");
        let msg = import_model(&model(vec![mk_node("HardSwish", "act_7", vec![])], 17))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("HardSwish") && msg.contains("act_7"), "{msg}");
    }

    #[test]
    fn unknown_attribute_and_unknown_domain_fail() {
        let attr = pb::AttributeProto {
            name: "alpha".into(),
            r#type: AttributeType::Float as i32,
            f: 0.1,
            ..Default::default()
        };
        let (op, node, reason) =
            expect_unsupported(&model(vec![mk_node("Relu", "r", vec![attr])], 17));
        assert_eq!((op.as_str(), node.as_str()), ("Relu", "r"));
        assert!(reason.contains("'alpha'"), "{reason}");
        let mut n = mk_node("FusedConv", "c", vec![]);
        n.domain = "com.microsoft".into();
        let (_, _, reason) = expect_unsupported(&model(vec![n], 17));
        assert!(reason.contains("com.microsoft"), "{reason}");
    }

    #[test]
    fn newer_opset_than_supported_fails() {
        let (op, _, reason) = expect_unsupported(&model(vec![mk_node("Relu", "r", vec![])], 99));
        assert_eq!(op, "Relu");
        assert!(reason.contains("opset 99"), "{reason}");
    }

    #[test]
    fn axes_move_from_attribute_to_input_with_the_opset() {
        let axes_attr = pb::AttributeProto {
            name: "axes".into(),
            r#type: AttributeType::Ints as i32,
            ints: vec![1],
            ..Default::default()
        };
        let g = import_model(&model(
            vec![mk_node("ReduceMean", "m", vec![axes_attr.clone()])],
            17,
        ))
        .unwrap();
        assert_eq!(
            g.nodes[0].op,
            Op::ReduceMean {
                axes: Some(vec![1]),
                keepdims: true
            }
        );
        // From opset 18 the attribute is gone (refused by name) and the input is read.
        let (_, node, reason) = expect_unsupported(&model(
            vec![mk_node("ReduceMean", "m", vec![axes_attr])],
            18,
        ));
        assert_eq!(node, "m");
        assert!(reason.contains("'axes'"), "{reason}");
        let mut m =
            pb::ModelProto::decode(&model(vec![mk_node("ReduceMean", "m", vec![])], 18)[..])
                .unwrap();
        let graph = m.graph.as_mut().unwrap();
        graph.node[0].input.push("ax".into());
        graph.initializer.push(pb::TensorProto {
            name: "ax".into(),
            dims: vec![1],
            data_type: 7,
            int64_data: vec![1],
            ..Default::default()
        });
        let g = import_proto(&m).unwrap();
        assert_eq!(
            g.nodes[0].op,
            Op::ReduceMean {
                axes: Some(vec![1]),
                keepdims: true
            }
        );
        assert_eq!(
            g.values[g.outputs[0]].shape,
            Some(vec![Dim::Sym("batch".into()), Dim::Known(1)])
        );
        // Softmax before opset 13 flattens to 2-D from axis 1.
        let g = import_model(&model(vec![mk_node("Softmax", "s", vec![])], 11)).unwrap();
        assert_eq!(
            g.nodes[0].op,
            Op::Softmax {
                axis: 1,
                coerce_2d: true
            }
        );
        let g = import_model(&model(vec![mk_node("Softmax", "s", vec![])], 13)).unwrap();
        assert_eq!(
            g.nodes[0].op,
            Op::Softmax {
                axis: -1,
                coerce_2d: false
            }
        );
        // Gelu exists from opset 20 only.
        assert!(import_model(&model(vec![mk_node("Gelu", "g", vec![])], 17)).is_err());
        assert!(import_model(&model(vec![mk_node("Gelu", "g", vec![])], 20)).is_ok());
    }

    #[test]
    fn garbage_bytes_are_a_decode_error() {
        assert!(matches!(
            import_model(&[0xff, 0xff, 0xff]),
            Err(EngineError::Decode(_))
        ));
    }

    #[test]
    fn symbolic_batch_survives_import() {
        let g = import_model(&model(vec![mk_node("Relu", "r", vec![])], 17)).unwrap();
        let y = &g.values[g.outputs[0]];
        assert_eq!(y.shape, Some(vec![Dim::Sym("batch".into()), Dim::Known(4)]));
    }

    /// `model(node)` at `opset` with float32 scalar initializers `lo`, `hi`, `ax` (int64 `[1]`
    /// holding 1) added.
    fn with_inits(node: pb::NodeProto, opset: i64) -> pb::ModelProto {
        let mut m = pb::ModelProto::decode(&model(vec![node], opset)[..]).unwrap();
        let graph = m.graph.as_mut().unwrap();
        for (name, v) in [("lo", 0.25f32), ("hi", 2.0)] {
            graph.initializer.push(pb::TensorProto {
                name: name.into(),
                data_type: 1,
                float_data: vec![v],
                ..Default::default()
            });
        }
        graph.initializer.push(pb::TensorProto {
            name: "ax".into(),
            dims: vec![1],
            data_type: 7,
            int64_data: vec![1],
            ..Default::default()
        });
        m
    }

    fn with_inputs(op: &str, inputs: &[&str], attrs: Vec<pb::AttributeProto>) -> pb::NodeProto {
        let mut n = mk_node(op, "n7", attrs);
        n.input = inputs.iter().map(|s| s.to_string()).collect();
        n
    }

    #[test]
    fn clip_bounds_are_constant_inputs_and_empty_names_are_absent() {
        let g = import_proto(&with_inits(
            with_inputs("Clip", &["x", "lo", ""], vec![]),
            17,
        ))
        .unwrap();
        assert_eq!(
            g.nodes[0].op,
            Op::Clip {
                min: Some(0.25),
                max: None
            }
        );
        assert_eq!(g.nodes[0].inputs.len(), 1);
        let g = import_proto(&with_inits(
            with_inputs("Clip", &["x", "", "hi"], vec![]),
            17,
        ))
        .unwrap();
        assert_eq!(
            g.nodes[0].op,
            Op::Clip {
                min: None,
                max: Some(2.0)
            }
        );
        let g = import_proto(&with_inits(with_inputs("Clip", &["x"], vec![]), 13)).unwrap();
        assert_eq!(
            g.nodes[0].op,
            Op::Clip {
                min: None,
                max: None
            }
        );
        // A bound computed at run time is refused, naming the node.
        let (op, node, reason) = expect_unsupported(
            &with_inits(with_inputs("Clip", &["x", "x"], vec![]), 17).encode_to_vec(),
        );
        assert_eq!((op.as_str(), node.as_str()), ("Clip", "n7"));
        assert!(
            reason.contains("'min'") && reason.contains("constant"),
            "{reason}"
        );
        // Opset 6: attributes.
        let min = pb::AttributeProto {
            name: "min".into(),
            r#type: AttributeType::Float as i32,
            f: -1.5,
            ..Default::default()
        };
        let g = import_model(&model(vec![mk_node("Clip", "c", vec![min])], 6)).unwrap();
        assert_eq!(
            g.nodes[0].op,
            Op::Clip {
                min: Some(-1.5),
                max: None
            }
        );
        // Other operators still refuse a gap followed by present inputs.
        let (_, _, reason) = expect_unsupported(
            &with_inits(with_inputs("Add", &["", "x"], vec![]), 17).encode_to_vec(),
        );
        assert!(reason.contains("absent optional input 0"), "{reason}");
    }

    #[test]
    fn reduce_sum_axes_input_moves_into_the_attribute() {
        let keep0 = pb::AttributeProto {
            name: "keepdims".into(),
            r#type: AttributeType::Int as i32,
            i: 0,
            ..Default::default()
        };
        let g = import_proto(&with_inits(
            with_inputs("ReduceSum", &["x", "ax"], vec![keep0.clone()]),
            17,
        ))
        .unwrap();
        assert_eq!(
            g.nodes[0].op,
            Op::ReduceSum {
                axes: Some(vec![1]),
                keepdims: false
            }
        );
        assert_eq!(g.nodes[0].inputs.len(), 1);
        assert_eq!(
            g.values[g.outputs[0]].shape,
            Some(vec![Dim::Sym("batch".into())])
        );
        // No axes: every axis.
        let g = import_proto(&with_inits(with_inputs("ReduceSum", &["x"], vec![]), 17)).unwrap();
        assert_eq!(
            g.nodes[0].op,
            Op::ReduceSum {
                axes: None,
                keepdims: true
            }
        );
        // noop_with_empty_axes without axes is refused.
        let noop = pb::AttributeProto {
            name: "noop_with_empty_axes".into(),
            r#type: AttributeType::Int as i32,
            i: 1,
            ..Default::default()
        };
        let (_, node, reason) = expect_unsupported(
            &with_inits(with_inputs("ReduceSum", &["x"], vec![noop]), 17).encode_to_vec(),
        );
        assert_eq!(node, "n7");
        assert!(reason.contains("noop_with_empty_axes"), "{reason}");
        // Axes computed at run time are refused.
        let (_, _, reason) = expect_unsupported(
            &with_inits(with_inputs("ReduceSum", &["x", "x"], vec![]), 17).encode_to_vec(),
        );
        assert!(reason.contains("'axes'"), "{reason}");
        // Opset 11: the attribute form.
        let axes = pb::AttributeProto {
            name: "axes".into(),
            r#type: AttributeType::Ints as i32,
            ints: vec![-1],
            ..Default::default()
        };
        let g = import_model(&model(
            vec![mk_node("ReduceSum", "r", vec![axes, keep0])],
            11,
        ))
        .unwrap();
        assert_eq!(
            g.nodes[0].op,
            Op::ReduceSum {
                axes: Some(vec![-1]),
                keepdims: false
            }
        );
    }

    #[test]
    fn comparisons_logic_range_and_flatten_import() {
        for (name, op) in [
            ("Greater", Op::Compare(CmpOp::Greater)),
            ("GreaterOrEqual", Op::Compare(CmpOp::GreaterOrEqual)),
            ("Less", Op::Compare(CmpOp::Less)),
            ("LessOrEqual", Op::Compare(CmpOp::LessOrEqual)),
        ] {
            let mut m = with_inits(with_inputs(name, &["x", "lo"], vec![]), 17);
            // The graph output is bool.
            let out = &mut m.graph.as_mut().unwrap().output[0];
            if let Some(pb::TypeProto {
                value: Some(type_proto::Value::TensorType(t)),
                ..
            }) = out.r#type.as_mut()
            {
                t.elem_type = 9;
            }
            let g = import_proto(&m).unwrap();
            assert_eq!(g.nodes[0].op, op);
            assert_eq!(g.values[g.outputs[0]].dtype, DType::Bool);
        }
        let axis = pb::AttributeProto {
            name: "axis".into(),
            r#type: AttributeType::Int as i32,
            i: 0,
            ..Default::default()
        };
        let mut m = with_inits(mk_node("Flatten", "f", vec![axis]), 17);
        m.graph.as_mut().unwrap().output[0].r#type = None;
        let g = import_proto(&m).unwrap();
        assert_eq!(g.nodes[0].op, Op::Flatten { axis: 0 });
        assert_eq!(
            g.values[g.outputs[0]].shape,
            Some(vec![Dim::Known(1), Dim::Unknown])
        );
        let mut m = with_inits(with_inputs("Range", &["lo", "hi", "lo"], vec![]), 17);
        m.graph.as_mut().unwrap().output[0].r#type = None;
        let g = import_proto(&m).unwrap();
        assert_eq!(g.nodes[0].op, Op::Range);
        assert_eq!(g.values[g.outputs[0]].shape, Some(vec![Dim::Known(7)]));
        for (name, op) in [
            ("And", LogicalOp::And),
            ("Or", LogicalOp::Or),
            ("Xor", LogicalOp::Xor),
        ] {
            assert!(
                matches!(
                    import_model(&model(vec![with_inputs(name, &["x", "x"], vec![])], 17)),
                    Err(EngineError::InvalidNode { .. })
                ),
                "{op:?} on float inputs"
            );
        }
    }
}
