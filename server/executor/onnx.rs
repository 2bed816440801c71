//! CPU engine: ONNX Runtime through the `ort` crate, with `libonnxruntime.so` loaded at run
//! time (see `docs/decisions.md` for why ORT and not tract).

use std::path::Path;
use std::sync::OnceLock;

use half::{bf16, f16};
use ort::environment::Environment;
use ort::session::Session;
use ort::value::{DynValue, Tensor as OrtTensor, TensorElementType, ValueType};

use super::{Engine, EngineIo, EngineOutput, ExecError, PhaseTimes};
use crate::tensor::{join_bytes_elements, split_bytes_elements, DataType, NamedTensor, Tensor};

/// The process-wide ONNX Runtime environment, created once from the shared library.
static ENVIRONMENT: OnceLock<Result<Environment, String>> = OnceLock::new();

/// Loads `libonnxruntime` from `path` and creates the environment. Later calls return the
/// first outcome. A missing or too-old library is an error, never a panic.
pub fn init_runtime(path: &Path) -> Result<(), String> {
    ENVIRONMENT
        .get_or_init(|| {
            let builder = ort::init_from(path)
                .map_err(|e| format!("cannot load ONNX Runtime from '{}': {e}", path.display()))?;
            builder
                .with_name("switchyard")
                .build()
                .map_err(|e| format!("cannot create ONNX Runtime environment: {e}"))
        })
        .as_ref()
        .map(|_| ())
        .map_err(Clone::clone)
}

fn environment() -> Result<&'static Environment, ExecError> {
    match ENVIRONMENT.get() {
        Some(Ok(env)) => Ok(env),
        Some(Err(e)) => Err(ExecError::Load(e.clone())),
        None => Err(ExecError::Load("ONNX Runtime was not initialised".into())),
    }
}

/// One ONNX Runtime session.
pub struct OnnxEngine {
    session: Session,
    inputs: Vec<EngineIo>,
    outputs: Vec<EngineIo>,
}

impl std::fmt::Debug for OnnxEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnnxEngine")
            .field("inputs", &self.inputs)
            .field("outputs", &self.outputs)
            .finish()
    }
}

fn map_element_type(t: TensorElementType) -> Option<DataType> {
    Some(match t {
        TensorElementType::Bool => DataType::Bool,
        TensorElementType::Uint8 => DataType::Uint8,
        TensorElementType::Uint16 => DataType::Uint16,
        TensorElementType::Uint32 => DataType::Uint32,
        TensorElementType::Uint64 => DataType::Uint64,
        TensorElementType::Int8 => DataType::Int8,
        TensorElementType::Int16 => DataType::Int16,
        TensorElementType::Int32 => DataType::Int32,
        TensorElementType::Int64 => DataType::Int64,
        TensorElementType::Float16 => DataType::Fp16,
        TensorElementType::Float32 => DataType::Fp32,
        TensorElementType::Float64 => DataType::Fp64,
        TensorElementType::String => DataType::Bytes,
        TensorElementType::Bfloat16 => DataType::Bf16,
        _ => return None,
    })
}

fn describe(outlets: &[ort::value::Outlet]) -> Vec<EngineIo> {
    outlets
        .iter()
        .map(|o| match o.dtype() {
            ValueType::Tensor { ty, shape, .. } => EngineIo {
                name: o.name().to_string(),
                dtype: map_element_type(*ty),
                dims: shape.iter().copied().collect(),
            },
            _ => EngineIo {
                name: o.name().to_string(),
                dtype: None,
                dims: Vec::new(),
            },
        })
        .collect()
}

impl OnnxEngine {
    /// Loads `model` into a new session. `intra_op_threads == 0` lets ONNX Runtime choose.
    pub fn load(model: &Path, intra_op_threads: usize) -> Result<Self, ExecError> {
        let env = environment()?;
        let load_err =
            |e: ort::Error| ExecError::Load(format!("failed to load '{}': {e}", model.display()));
        let mut builder = Session::builder(env).map_err(load_err)?;
        if intra_op_threads > 0 {
            builder = builder
                .with_intra_threads(intra_op_threads)
                .map_err(|e| load_err(e.into()))?;
        }
        let session = builder.commit_from_file(model).map_err(load_err)?;
        let inputs = describe(session.inputs());
        let outputs = describe(session.outputs());
        Ok(OnnxEngine {
            session,
            inputs,
            outputs,
        })
    }
}

/// Decodes little-endian bytes into `T`s; `data.len()` is a multiple of `N` after validation.
fn decode_le<T, const N: usize>(data: &[u8], from: fn([u8; N]) -> T) -> Vec<T> {
    data.chunks_exact(N)
        .map(|c| {
            let mut a = [0u8; N];
            a.copy_from_slice(c);
            from(a)
        })
        .collect()
}

fn to_ort(t: &Tensor) -> Result<DynValue, ExecError> {
    let shape = t.shape.clone();
    let err = |e: ort::Error| ExecError::Run(format!("cannot create input tensor: {e}"));
    macro_rules! numeric {
        ($n:expr, $from:expr) => {
            OrtTensor::from_array((shape, decode_le::<_, $n>(&t.data, $from)))
                .map_err(err)?
                .into_dyn()
        };
    }
    Ok(match t.dtype {
        DataType::Bool => {
            OrtTensor::from_array((shape, t.data.iter().map(|b| *b != 0).collect::<Vec<bool>>()))
                .map_err(err)?
                .into_dyn()
        }
        DataType::Uint8 => OrtTensor::from_array((shape, t.data.to_vec()))
            .map_err(err)?
            .into_dyn(),
        DataType::Int8 => numeric!(1, i8::from_le_bytes),
        DataType::Uint16 => numeric!(2, u16::from_le_bytes),
        DataType::Int16 => numeric!(2, i16::from_le_bytes),
        DataType::Uint32 => numeric!(4, u32::from_le_bytes),
        DataType::Int32 => numeric!(4, i32::from_le_bytes),
        DataType::Uint64 => numeric!(8, u64::from_le_bytes),
        DataType::Int64 => numeric!(8, i64::from_le_bytes),
        DataType::Fp16 => numeric!(2, |b| f16::from_bits(u16::from_le_bytes(b))),
        DataType::Bf16 => numeric!(2, |b| bf16::from_bits(u16::from_le_bytes(b))),
        DataType::Fp32 => numeric!(4, f32::from_le_bytes),
        DataType::Fp64 => numeric!(8, f64::from_le_bytes),
        DataType::Bytes => {
            let count = crate::tensor::element_count(&t.shape)
                .map_err(|e| ExecError::InvalidInput(format!("bad shape: {e:?}")))?;
            let elements = split_bytes_elements(&t.data, count)
                .map_err(|e| ExecError::InvalidInput(format!("malformed BYTES tensor: {e:?}")))?;
            let strings = elements
                .into_iter()
                .enumerate()
                .map(|(i, e)| {
                    let s = std::str::from_utf8(e).map_err(|_| {
                        ExecError::InvalidInput(format!(
                            "BYTES element {i} is not valid UTF-8, which ONNX Runtime string tensors require"
                        ))
                    })?;
                    if s.contains('\0') {
                        return Err(ExecError::InvalidInput(format!(
                            "BYTES element {i} contains a NUL byte, which ONNX Runtime string tensors cannot hold"
                        )));
                    }
                    Ok(s.to_owned())
                })
                .collect::<Result<Vec<String>, _>>()?;
            OrtTensor::from_string_array((shape, &strings[..]))
                .map_err(err)?
                .into_dyn()
        }
    })
}

fn encode_le<T: Copy, const N: usize>(values: &[T], to: fn(T) -> [u8; N]) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() * N);
    for v in values {
        out.extend_from_slice(&to(*v));
    }
    out
}

fn from_ort(name: &str, v: &DynValue) -> Result<Tensor, ExecError> {
    let err = |e: ort::Error| ExecError::Run(format!("cannot read output '{name}': {e}"));
    let ValueType::Tensor { ty, .. } = v.dtype() else {
        return Err(ExecError::Run(format!("output '{name}' is not a tensor")));
    };
    let dtype = map_element_type(*ty)
        .ok_or_else(|| ExecError::Run(format!("output '{name}' has unsupported type {ty:?}")))?;
    macro_rules! numeric {
        ($t:ty, $to:expr) => {{
            let (shape, data) = v.try_extract_tensor::<$t>().map_err(err)?;
            (
                shape.iter().copied().collect::<Vec<i64>>(),
                encode_le(data, $to),
            )
        }};
    }
    let (shape, data) = match dtype {
        DataType::Bool => numeric!(bool, |b: bool| [b as u8]),
        DataType::Uint8 => numeric!(u8, |b: u8| [b]),
        DataType::Int8 => numeric!(i8, i8::to_le_bytes),
        DataType::Uint16 => numeric!(u16, u16::to_le_bytes),
        DataType::Int16 => numeric!(i16, i16::to_le_bytes),
        DataType::Uint32 => numeric!(u32, u32::to_le_bytes),
        DataType::Int32 => numeric!(i32, i32::to_le_bytes),
        DataType::Uint64 => numeric!(u64, u64::to_le_bytes),
        DataType::Int64 => numeric!(i64, i64::to_le_bytes),
        DataType::Fp16 => numeric!(f16, |x: f16| x.to_bits().to_le_bytes()),
        DataType::Bf16 => numeric!(bf16, |x: bf16| x.to_bits().to_le_bytes()),
        DataType::Fp32 => numeric!(f32, f32::to_le_bytes),
        DataType::Fp64 => numeric!(f64, f64::to_le_bytes),
        DataType::Bytes => {
            let (shape, strings) = v.try_extract_strings().map_err(err)?;
            (
                shape.iter().copied().collect(),
                join_bytes_elements(&strings),
            )
        }
    };
    Ok(Tensor {
        dtype,
        shape,
        data: data.into(),
    })
}

impl Engine for OnnxEngine {
    fn inputs(&self) -> &[EngineIo] {
        &self.inputs
    }

    fn outputs(&self) -> &[EngineIo] {
        &self.outputs
    }

    fn execute(
        &mut self,
        inputs: &[NamedTensor],
        outputs: &[String],
    ) -> Result<EngineOutput, ExecError> {
        let t0 = tokio::time::Instant::now();
        let values = inputs
            .iter()
            .map(|i| Ok((i.name.as_str(), to_ort(&i.tensor)?)))
            .collect::<Result<Vec<(&str, DynValue)>, ExecError>>()?;
        let t1 = tokio::time::Instant::now();
        let result = self
            .session
            .run(values)
            .map_err(|e| ExecError::Run(format!("onnxruntime execution failed: {e}")))?;
        let t2 = tokio::time::Instant::now();
        let tensors = outputs
            .iter()
            .map(|name| {
                let v = result
                    .get(name)
                    .ok_or_else(|| ExecError::Run(format!("model produced no output '{name}'")))?;
                Ok(NamedTensor {
                    name: name.clone(),
                    tensor: from_ort(name, v)?,
                })
            })
            .collect::<Result<Vec<_>, ExecError>>()?;
        let t3 = tokio::time::Instant::now();
        Ok(EngineOutput {
            tensors,
            times: PhaseTimes {
                input: t1 - t0,
                infer: t2 - t1,
                output: t3 - t2,
            },
        })
    }
}
