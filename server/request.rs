//! Inference requests: what the front ends decode into ([`InferRequest`]) and what only the
//! validator can produce ([`ValidInferRequest`]). Every message names the tensor, the bound
//! and the value received.

use std::collections::HashMap;

use bytes::Bytes;

use crate::error::InferError;
use crate::model::{fmt_shape, ModelSpec};
use crate::tensor::{
    element_count, split_bytes_elements, BytesError, DataType, NamedTensor, ShapeError, Tensor,
};

/// A request parameter value (`InferParameter`).
#[derive(Debug, Clone, PartialEq)]
pub enum ParamValue {
    Bool(bool),
    Int64(i64),
    Uint64(u64),
    Double(f64),
    String(String),
}

/// One input as decoded from the wire: type parsed, payload as little-endian bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct InputTensor {
    pub name: String,
    pub dtype: DataType,
    pub shape: Vec<i64>,
    pub data: Bytes,
}

/// A decoded, not yet validated request.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InferRequest {
    pub model_name: String,
    pub model_version: String,
    pub id: String,
    pub parameters: HashMap<String, ParamValue>,
    pub inputs: Vec<InputTensor>,
    /// Requested output names; empty means all outputs.
    pub outputs: Vec<String>,
    /// HTTP headers or gRPC metadata (for a sticky routing key named by a header).
    pub headers: http::HeaderMap,
}

/// A request that matches its model: names, types, shapes and sizes all checked.
#[derive(Debug, Clone)]
pub struct ValidInferRequest {
    pub id: String,
    /// Batch size for statistics and batching (1 for non-batching models).
    pub batch_size: u64,
    /// Inputs in the model's order, with the shape the engine sees (after `reshape`).
    pub inputs: Vec<NamedTensor>,
    /// Indices into the model's outputs, in the order the response lists them.
    pub outputs: Vec<usize>,
    /// Scheduler priority level requested (0 = default).
    pub priority: u64,
    /// Queue timeout requested, in microseconds.
    pub timeout_us: Option<u64>,
}

const ENABLE_EMPTY_FINAL: &str = "triton_enable_empty_final_response";

fn check_parameters(
    params: &HashMap<String, ParamValue>,
) -> Result<(u64, Option<u64>), InferError> {
    let mut priority = 0;
    let mut timeout = None;
    for (key, value) in params {
        match (key.as_str(), value) {
            (ENABLE_EMPTY_FINAL, ParamValue::Bool(_)) => {}
            (ENABLE_EMPTY_FINAL, v) => {
                return Err(InferError::invalid(format!(
                    "parameter '{ENABLE_EMPTY_FINAL}' must be a bool, got {v:?}"
                )))
            }
            (k, _) if k.starts_with("triton_") => {
                return Err(InferError::invalid(format!(
                "parameter keys starting with 'triton_' are reserved for Triton usage, got '{k}'"
            )))
            }
            ("priority", ParamValue::Int64(p)) if *p >= 0 => priority = *p as u64,
            ("priority", ParamValue::Uint64(p)) => priority = *p,
            ("priority", v) => {
                return Err(InferError::invalid(format!(
                    "parameter 'priority' must be a non-negative int64 or a uint64, got {v:?}"
                )))
            }
            ("timeout", ParamValue::Int64(t)) if *t >= 0 => timeout = Some(*t as u64),
            ("timeout", v) => {
                return Err(InferError::invalid(format!(
                    "parameter 'timeout' must be a non-negative int64 (microseconds), got {v:?}"
                )))
            }
            (
                "sequence_id",
                ParamValue::Int64(_) | ParamValue::String(_),
            ) => {}
            ("sequence_id", v) => {
                return Err(InferError::invalid(format!(
                    "invalid value type for 'sequence_id' parameter, expected int64 or string, got {v:?}"
                )))
            }
            ("sequence_start" | "sequence_end", ParamValue::Bool(_)) => {}
            (k @ ("sequence_start" | "sequence_end"), v) => {
                return Err(InferError::invalid(format!(
                    "parameter '{k}' must be a bool, got {v:?}"
                )))
            }
            (k, ParamValue::Uint64(v)) => {
                return Err(InferError::invalid(format!(
                    "invalid value type for '{k}' parameter ({v}), expected int64, bool, string or double"
                )))
            }
            _ => {}
        }
    }
    Ok((priority, timeout))
}

/// Validates `req` against `spec`.
pub fn validate(req: InferRequest, spec: &ModelSpec) -> Result<ValidInferRequest, InferError> {
    let model = &spec.name;
    let (priority, timeout_us) = check_parameters(&req.parameters)?;

    // Inputs: known, unique, all required ones present.
    let mut slots: Vec<Option<InputTensor>> = vec![None; spec.inputs.len()];
    for input in req.inputs {
        let Some(idx) = spec.inputs.iter().position(|s| s.name == input.name) else {
            return Err(InferError::invalid(format!(
                "unexpected inference input '{}' for model '{model}'",
                input.name
            )));
        };
        if slots[idx].is_some() {
            return Err(InferError::invalid(format!(
                "input '{}' is specified more than once for model '{model}'",
                input.name
            )));
        }
        slots[idx] = Some(input);
    }
    let missing: Vec<String> = spec
        .inputs
        .iter()
        .zip(&slots)
        .filter(|(s, v)| v.is_none() && !s.optional)
        .map(|(s, _)| format!("'{}'", s.name))
        .collect();
    if !missing.is_empty() {
        let got: Vec<String> = slots
            .iter()
            .flatten()
            .map(|i| format!("'{}'", i.name))
            .collect();
        return Err(InferError::invalid(format!(
            "expected {} inputs but got {} inputs for model '{model}'. Got input(s) [{}], but missing required input(s) [{}]. Please provide all required input(s).",
            spec.inputs.iter().filter(|s| !s.optional).count(),
            got.len(),
            got.join(","),
            missing.join(",")
        )));
    }

    let mut batch: Option<(u64, String)> = None;
    let mut inputs = Vec::with_capacity(slots.len());
    for (io, input) in spec.inputs.iter().zip(slots) {
        let Some(input) = input else { continue };
        let name = &input.name;
        if input.dtype != io.dtype {
            return Err(InferError::invalid(format!(
                "inference input '{name}' data-type is '{}', but model '{model}' expects '{}'",
                input.dtype, io.dtype
            )));
        }
        let count = element_count(&input.shape).map_err(|e| match e {
            ShapeError::NegativeDim { index, value } => InferError::invalid(format!(
                "inference input '{name}' for model '{model}' has negative dimension {value} at index {index} of shape {}",
                fmt_shape(&input.shape)
            )),
            ShapeError::ElementCountOverflow => InferError::invalid(format!(
                "inference input '{name}' for model '{model}' with shape {} causes total element count to exceed maximum size of {}",
                fmt_shape(&input.shape),
                i64::MAX
            )),
        })?;
        // Shape against the config: batch dim first when the model batches.
        let item_shape = if spec.max_batch_size > 0 {
            let Some(&b) = input.shape.first() else {
                return Err(InferError::invalid(format!(
                    "inference input '{name}' for model '{model}' has shape [] but the model batches: expected [batch,{}]",
                    fmt_shape(&io.dims).trim_matches(|c| c == '[' || c == ']')
                )));
            };
            let b = b as u64; // non-negative: checked by element_count
            if b < 1 || b > spec.max_batch_size as u64 {
                return Err(InferError::invalid(format!(
                    "inference request batch-size must be <= {} and >= 1 for '{model}', got {b} for input '{name}'",
                    spec.max_batch_size
                )));
            }
            match &batch {
                Some((b0, other)) if *b0 != b => {
                    return Err(InferError::invalid(format!(
                        "input '{name}' has batch size {b} but input '{other}' has batch size {b0} for model '{model}'; all inputs must share the batch size"
                    )))
                }
                None => batch = Some((b, name.clone())),
                _ => {}
            }
            &input.shape[1..]
        } else {
            &input.shape[..]
        };
        let dims_match = item_shape.len() == io.dims.len()
            && item_shape
                .iter()
                .zip(&io.dims)
                .all(|(&got, &want)| want == -1 || got == want);
        if !dims_match {
            return Err(InferError::invalid(format!(
                "unexpected shape for input '{name}' for model '{model}'. Expected {}, got {}",
                fmt_shape(&spec.api_dims(io)),
                fmt_shape(&input.shape)
            )));
        }
        // Payload size.
        match io.dtype.element_size() {
            Some(size) => {
                let expected = count.checked_mul(size as u64).filter(|n| *n <= i64::MAX as u64).ok_or_else(|| {
                    InferError::invalid(format!(
                        "byte size overflow for input '{name}' for model '{model}': {count} elements of {} bytes",
                        size
                    ))
                })?;
                if expected != input.data.len() as u64 {
                    return Err(InferError::invalid(format!(
                        "input byte size mismatch for input '{name}' for model '{model}'. Expected {expected}, got {}",
                        input.data.len()
                    )));
                }
            }
            None => {
                split_bytes_elements(&input.data, count).map_err(|e| match e {
                    BytesError::Truncated { element } => InferError::invalid(format!(
                        "element {element} of BYTES input '{name}' for model '{model}' is truncated: its length prefix or data runs past the end of the {} byte payload",
                        input.data.len()
                    )),
                    BytesError::CountMismatch { expected, found } => InferError::invalid(format!(
                        "expected {expected} string elements for inference input '{name}' for model '{model}' (shape {}), got {found}",
                        fmt_shape(&input.shape)
                    )),
                })?;
            }
        }
        let shape = match &io.reshape {
            Some(r) if spec.max_batch_size > 0 => std::iter::once(input.shape[0])
                .chain(r.iter().copied())
                .collect(),
            Some(r) => r.clone(),
            None => input.shape,
        };
        inputs.push(NamedTensor {
            name: input.name,
            tensor: Tensor {
                dtype: input.dtype,
                shape,
                data: input.data,
            },
        });
    }

    // Outputs: known and unique; none requested means all, in model order.
    let outputs = if req.outputs.is_empty() {
        (0..spec.outputs.len()).collect()
    } else {
        let mut idx = Vec::with_capacity(req.outputs.len());
        for name in &req.outputs {
            let Some(i) = spec.outputs.iter().position(|o| &o.name == name) else {
                return Err(InferError::invalid(format!(
                    "unexpected inference output '{name}' for model '{model}'"
                )));
            };
            if idx.contains(&i) {
                return Err(InferError::invalid(format!(
                    "output '{name}' is requested more than once for model '{model}'"
                )));
            }
            idx.push(i);
        }
        idx
    };

    Ok(ValidInferRequest {
        id: req.id,
        batch_size: batch.map(|(b, _)| b).unwrap_or(1),
        inputs,
        outputs,
        priority,
        timeout_us,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::IoSpec;

    fn simple() -> ModelSpec {
        let io = |n: &str| IoSpec {
            name: n.into(),
            dtype: DataType::Int32,
            dims: vec![16],
            reshape: None,
            optional: false,
        };
        ModelSpec {
            name: "simple".into(),
            version: 1,
            max_batch_size: 8,
            inputs: vec![io("INPUT0"), io("INPUT1")],
            outputs: vec![io("OUTPUT0"), io("OUTPUT1")],
        }
    }

    fn input(name: &str, shape: Vec<i64>, bytes: usize) -> InputTensor {
        InputTensor {
            name: name.into(),
            dtype: DataType::Int32,
            shape,
            data: Bytes::from(vec![0u8; bytes]),
        }
    }

    fn req(inputs: Vec<InputTensor>) -> InferRequest {
        InferRequest {
            model_name: "simple".into(),
            inputs,
            ..Default::default()
        }
    }

    fn err(r: InferRequest) -> String {
        match validate(r, &simple()) {
            Err(InferError::InvalidArgument(m)) => m,
            other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
        }
    }

    #[test]
    fn good_request_is_ordered_and_batched() {
        let mut r = req(vec![
            input("INPUT1", vec![2, 16], 128),
            input("INPUT0", vec![2, 16], 128),
        ]);
        r.outputs = vec!["OUTPUT1".into()];
        r.parameters
            .insert(ENABLE_EMPTY_FINAL.into(), ParamValue::Bool(true));
        let v = validate(r, &simple()).unwrap();
        assert_eq!(v.batch_size, 2);
        assert_eq!(v.inputs[0].name, "INPUT0");
        assert_eq!(v.outputs, vec![1]);
    }

    #[test]
    fn bad_inputs_name_the_tensor_and_values() {
        let m = err(req(vec![input("INPUT0", vec![1, 16], 64)]));
        assert!(m.contains("missing required input(s) ['INPUT1']"), "{m}");
        let m = err(req(vec![
            input("INPUT0", vec![1, 16], 64),
            input("INPUT1", vec![1, 16], 64),
            input("X", vec![1], 4),
        ]));
        assert!(m.contains("unexpected inference input 'X'"), "{m}");
        let m = err(req(vec![
            input("INPUT0", vec![1, 16], 64),
            input("INPUT0", vec![1, 16], 64),
        ]));
        assert!(m.contains("more than once"), "{m}");
        let m = err(req(vec![
            input("INPUT0", vec![1, 16], 60),
            input("INPUT1", vec![1, 16], 64),
        ]));
        assert!(m.contains("Expected 64, got 60"), "{m}");
        let m = err(req(vec![
            input("INPUT0", vec![9, 16], 576),
            input("INPUT1", vec![9, 16], 576),
        ]));
        assert!(m.contains("batch-size must be <= 8"), "{m}");
        let m = err(req(vec![
            input("INPUT0", vec![(1 << 32) + 1, 16], 64),
            input("INPUT1", vec![1, 16], 64),
        ]));
        assert!(
            m.contains("batch-size must be <= 8") && m.contains("4294967297"),
            "{m}"
        );
        let m = err(req(vec![
            input("INPUT0", vec![16, (1 << 60) + 2], 64),
            input("INPUT1", vec![1, 16], 64),
        ]));
        assert!(
            m.contains("causes total element count to exceed maximum size"),
            "{m}"
        );
        let m = err(req(vec![
            input("INPUT0", vec![1, -16], 64),
            input("INPUT1", vec![1, 16], 64),
        ]));
        assert!(m.contains("negative dimension -16"), "{m}");
        let m = err(req(vec![
            input("INPUT0", vec![0, 16], 0),
            input("INPUT1", vec![0, 16], 0),
        ]));
        assert!(m.contains(">= 1"), "{m}");
        let m = err(req(vec![
            input("INPUT0", vec![1, 8], 32),
            input("INPUT1", vec![1, 16], 64),
        ]));
        assert!(m.contains("Expected [-1,16], got [1,8]"), "{m}");
        let m = err(req(vec![
            input("INPUT0", vec![1, 16], 64),
            input("INPUT1", vec![2, 16], 128),
        ]));
        assert!(m.contains("batch size"), "{m}");
        let mut bad_type = req(vec![
            input("INPUT0", vec![1, 16], 64),
            input("INPUT1", vec![1, 16], 64),
        ]);
        bad_type.inputs[0].dtype = DataType::Fp32;
        assert!(err(bad_type).contains("data-type is 'FP32', but model 'simple' expects 'INT32'"));
    }

    #[test]
    fn bad_outputs_and_parameters() {
        let base = || {
            req(vec![
                input("INPUT0", vec![1, 16], 64),
                input("INPUT1", vec![1, 16], 64),
            ])
        };
        let mut r = base();
        r.outputs = vec!["NOPE".into()];
        assert!(err(r).contains("unexpected inference output 'NOPE'"));
        let mut r = base();
        r.outputs = vec!["OUTPUT0".into(), "OUTPUT0".into()];
        assert!(err(r).contains("more than once"));
        let mut r = base();
        r.parameters
            .insert("triton_other".into(), ParamValue::Bool(true));
        assert!(err(r).contains("reserved"));
        let mut r = base();
        r.parameters
            .insert("priority".into(), ParamValue::String("high".into()));
        assert!(err(r).contains("'priority'"));
        let mut r = base();
        r.parameters
            .insert("custom".into(), ParamValue::Double(1.5));
        assert!(validate(r, &simple()).is_ok());
    }

    #[test]
    fn bytes_inputs_are_checked_element_by_element() {
        let spec = ModelSpec {
            inputs: vec![IoSpec {
                name: "S".into(),
                dtype: DataType::Bytes,
                dims: vec![-1],
                reshape: None,
                optional: false,
            }],
            outputs: vec![],
            ..simple()
        };
        let mk = |data: Vec<u8>, n: i64| InferRequest {
            inputs: vec![InputTensor {
                name: "S".into(),
                dtype: DataType::Bytes,
                shape: vec![1, n],
                data: data.into(),
            }],
            ..Default::default()
        };
        let good = crate::tensor::join_bytes_elements(["ab", "c"]);
        assert!(validate(mk(good.clone(), 2), &spec).is_ok());
        let m = validate(mk(good.clone(), 3), &spec)
            .unwrap_err()
            .to_string();
        assert!(m.contains("expected 3 string elements"), "{m}");
        let m = validate(mk(good[..good.len() - 1].to_vec(), 2), &spec)
            .unwrap_err()
            .to_string();
        assert!(m.contains("truncated"), "{m}");
    }
}

/// A successful inference: the requested outputs, in the requested order, with API shapes.
#[derive(Debug, Clone)]
pub struct InferResponse {
    pub model_name: String,
    pub model_version: i64,
    pub id: String,
    pub outputs: Vec<NamedTensor>,
}
