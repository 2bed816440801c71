//! HTTP inference: the JSON request (with the binary tensor data extension) → core
//! [`InferRequest`], and core [`InferResponse`] → JSON or JSON + binary body.

use std::collections::HashMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::json::{nesting_exceeds, parse_tensor_data, DataJson};
use crate::error::InferError;
use crate::model::ModelSpec;
use crate::request::{InferRequest, InferResponse, InputTensor, ParamValue};
use crate::tensor::{element_count, DataType};

/// Request-level and per-input/output parameters the HTTP protocol itself consumes.
const BINARY_DATA_OUTPUT: &str = "binary_data_output";
const BINARY_DATA: &str = "binary_data";
const BINARY_DATA_SIZE: &str = "binary_data_size";

/// Which outputs go back as binary.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BinaryPlan {
    /// Default for outputs without their own `binary_data` parameter.
    pub default: bool,
    pub per_output: HashMap<String, bool>,
}

impl BinaryPlan {
    fn is_binary(&self, name: &str) -> bool {
        self.per_output.get(name).copied().unwrap_or(self.default)
    }
}

#[derive(Deserialize)]
struct JsonRequest<'a> {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    parameters: Option<Map<String, Value>>,
    #[serde(borrow)]
    inputs: Vec<JsonInput<'a>>,
    #[serde(default)]
    outputs: Option<Vec<JsonOutput>>,
}

#[derive(Deserialize)]
struct JsonInput<'a> {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    #[serde(default)]
    parameters: Option<Map<String, Value>>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct JsonOutput {
    name: String,
    #[serde(default)]
    parameters: Option<Map<String, Value>>,
}

fn param_value(key: &str, v: &Value) -> Result<ParamValue, InferError> {
    Ok(match v {
        Value::Bool(b) => ParamValue::Bool(*b),
        Value::String(s) => ParamValue::String(s.clone()),
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => ParamValue::Int64(i),
            (None, Some(u), _) => ParamValue::Uint64(u),
            (None, None, Some(f)) => ParamValue::Double(f),
            _ => {
                return Err(InferError::invalid(format!(
                    "parameter '{key}' is not a number"
                )))
            }
        },
        _ => {
            return Err(InferError::invalid(format!(
                "parameter '{key}' must be a bool, number or string"
            )))
        }
    })
}

fn bool_param(params: &Option<Map<String, Value>>, key: &str) -> Result<Option<bool>, InferError> {
    match params.as_ref().and_then(|p| p.get(key)) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(InferError::invalid(format!(
            "parameter '{key}' must be a bool"
        ))),
    }
}

fn refuse_shared_memory(params: &Option<Map<String, Value>>, what: &str) -> Result<(), InferError> {
    if let Some(p) = params {
        if p.keys().any(|k| k.starts_with("shared_memory_")) {
            return Err(InferError::Unsupported(format!(
                "{what} uses shared memory, which Switchyard does not support yet"
            )));
        }
    }
    Ok(())
}

/// Parses the `Inference-Header-Content-Length` value against the body length.
pub fn header_length(value: Option<&str>, body_len: usize) -> Result<Option<usize>, InferError> {
    let Some(v) = value else { return Ok(None) };
    let bad = || {
        InferError::invalid(format!(
            "Inference-Header-Content-Length '{v}' must be a number between 0 and the body length ({body_len})"
        ))
    };
    if v.is_empty() || v.len() > 10 || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let n: usize = v.parse().map_err(|_| bad())?;
    if n > body_len || n > i32::MAX as usize {
        return Err(bad());
    }
    Ok(Some(n))
}

/// A raw binary request (`Inference-Header-Content-Length: 0`): the body is the only input.
pub fn raw_binary_request(
    spec: &ModelSpec,
    model_version: &str,
    body: Bytes,
) -> Result<(InferRequest, BinaryPlan), InferError> {
    let model = &spec.name;
    let [input] = spec.inputs.as_slice() else {
        return Err(InferError::invalid(format!(
            "raw binary request needs a model with exactly one input; '{model}' has {}",
            spec.inputs.len()
        )));
    };
    let mut shape = Vec::with_capacity(input.dims.len() + 1);
    if spec.max_batch_size > 0 {
        shape.push(1);
    }
    if input.dtype == DataType::Bytes {
        if input.dims.iter().any(|d| *d != 1 && *d != -1) {
            return Err(InferError::invalid(format!(
                "raw binary request for BYTES input '{}' of model '{model}' needs shape [1]",
                input.name
            )));
        }
        shape.extend(input.dims.iter().map(|_| 1));
    } else {
        let size = input.dtype.element_size().unwrap_or(1) as u64;
        let elements = body.len() as u64 / size;
        let variable = input.dims.iter().filter(|d| **d < 0).count();
        let fixed: u64 = input
            .dims
            .iter()
            .filter(|d| **d >= 0)
            .map(|d| *d as u64)
            .product();
        if variable > 1 {
            return Err(InferError::invalid(format!(
                "raw binary request for input '{}' of model '{model}' allows at most one variable dimension",
                input.name
            )));
        }
        let var = if variable == 1 && fixed > 0 {
            (elements / fixed) as i64
        } else {
            0
        };
        shape.extend(input.dims.iter().map(|d| if *d < 0 { var } else { *d }));
    }
    let data = if input.dtype == DataType::Bytes {
        let mut b = Vec::with_capacity(body.len() + 4);
        let len = u32::try_from(body.len())
            .map_err(|_| InferError::invalid("raw binary BYTES input over 4 GiB"))?;
        b.extend(len.to_le_bytes());
        b.extend_from_slice(&body);
        Bytes::from(b)
    } else {
        body
    };
    let request = InferRequest {
        model_name: model.clone(),
        model_version: model_version.to_string(),
        inputs: vec![InputTensor {
            name: input.name.clone(),
            dtype: input.dtype,
            shape,
            data,
        }],
        ..Default::default()
    };
    Ok((
        request,
        BinaryPlan {
            default: true,
            per_output: HashMap::new(),
        },
    ))
}

/// Parses a JSON request whose first `header_len` bytes are JSON and the rest binary tensor
/// data (`header_len` = the body length when there is no binary part).
pub fn json_request(
    model_name: &str,
    model_version: &str,
    body: Bytes,
    header_len: usize,
    max_depth: usize,
) -> Result<(InferRequest, BinaryPlan), InferError> {
    let header = &body[..header_len];
    if nesting_exceeds(header, max_depth) {
        return Err(InferError::invalid(format!(
            "JSON nesting is deeper than the limit of {max_depth}"
        )));
    }
    let text = std::str::from_utf8(header)
        .map_err(|e| InferError::invalid(format!("request JSON is not UTF-8: {e}")))?;
    if !text.trim_start().starts_with('{') {
        return Err(InferError::invalid("the request JSON must be an object"));
    }
    let req: JsonRequest = serde_json::from_str(text)
        .map_err(|e| InferError::invalid(format!("failed to parse the request JSON: {e}")))?;

    let mut parameters = HashMap::new();
    let default_binary = bool_param(&req.parameters, BINARY_DATA_OUTPUT)?.unwrap_or(false);
    for (k, v) in req.parameters.iter().flatten() {
        if k != BINARY_DATA_OUTPUT {
            parameters.insert(k.clone(), param_value(k, v)?);
        }
    }

    let mut offset = header_len;
    let mut inputs = Vec::with_capacity(req.inputs.len());
    for input in req.inputs {
        let name = input.name;
        refuse_shared_memory(&input.parameters, &format!("input '{name}'"))?;
        let dtype = DataType::from_wire(&input.datatype).ok_or_else(|| {
            InferError::invalid(format!(
                "invalid datatype '{}' for input '{name}' of model '{model_name}'",
                input.datatype
            ))
        })?;
        let binary_size = match input.parameters.as_ref().and_then(|p| p.get(BINARY_DATA_SIZE)) {
            None => None,
            Some(v) => Some(v.as_u64().ok_or_else(|| {
                InferError::invalid(format!(
                    "parameter '{BINARY_DATA_SIZE}' of input '{name}' must be a non-negative integer"
                ))
            })?),
        };
        let data = match (binary_size, input.data) {
            (Some(_), Some(_)) => {
                return Err(InferError::invalid(format!(
                    "input '{name}' has both '{BINARY_DATA_SIZE}' and 'data'"
                )))
            }
            (Some(size), None) => {
                let end = usize::try_from(size)
                    .ok()
                    .and_then(|s| offset.checked_add(s))
                    .filter(|end| *end <= body.len())
                    .ok_or_else(|| {
                        InferError::invalid(format!(
                            "input '{name}' declares {size} bytes of binary data but only {} remain in the body",
                            body.len() - offset
                        ))
                    })?;
                let d = body.slice(offset..end);
                offset = end;
                d
            }
            (None, Some(raw)) => {
                if !raw.get().starts_with('[') {
                    return Err(InferError::invalid(format!(
                        "'data' of input '{name}' must be an array"
                    )));
                }
                let elements = element_count(&input.shape).map_err(|e| {
                    InferError::invalid(format!(
                        "invalid shape {:?} for input '{name}': {e:?}",
                        input.shape
                    ))
                })?;
                let max = usize::try_from(elements).unwrap_or(usize::MAX);
                let (bytes, n) = parse_tensor_data(raw.get(), dtype, max).map_err(|e| {
                    InferError::invalid(format!("failed to parse data of input '{name}': {e}"))
                })?;
                if n as u64 != elements {
                    return Err(InferError::invalid(format!(
                        "input '{name}' has {n} data elements but its shape {:?} needs {elements}",
                        input.shape
                    )));
                }
                Bytes::from(bytes)
            }
            (None, None) => {
                return Err(InferError::invalid(format!(
                    "input '{name}' has neither 'data' nor the '{BINARY_DATA_SIZE}' parameter"
                )))
            }
        };
        inputs.push(InputTensor {
            name,
            dtype,
            shape: input.shape,
            data,
        });
    }
    if offset != body.len() {
        return Err(InferError::invalid(format!(
            "{} bytes of binary data follow the JSON header but no input claims them",
            body.len() - offset
        )));
    }

    let mut plan = BinaryPlan {
        default: default_binary,
        per_output: HashMap::new(),
    };
    let mut outputs = Vec::new();
    for o in req.outputs.into_iter().flatten() {
        refuse_shared_memory(&o.parameters, &format!("output '{}'", o.name))?;
        if o.parameters
            .as_ref()
            .is_some_and(|p| p.contains_key("classification"))
        {
            return Err(InferError::Unsupported(format!(
                "output '{}' asks for classification, which Switchyard does not support yet",
                o.name
            )));
        }
        if let Some(b) = bool_param(&o.parameters, BINARY_DATA)? {
            plan.per_output.insert(o.name.clone(), b);
        }
        outputs.push(o.name);
    }
    Ok((
        InferRequest {
            model_name: model_name.to_string(),
            model_version: model_version.to_string(),
            id: req.id.unwrap_or_default(),
            parameters,
            inputs,
            outputs,
            headers: Default::default(),
        },
        plan,
    ))
}

#[derive(Serialize)]
struct JsonResponse<'a> {
    #[serde(skip_serializing_if = "str::is_empty")]
    id: &'a str,
    model_name: &'a str,
    model_version: String,
    outputs: Vec<JsonOutputTensor<'a>>,
}

#[derive(Serialize)]
struct JsonOutputTensor<'a> {
    name: &'a str,
    datatype: &'static str,
    shape: &'a [i64],
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<BinarySize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<DataJson<'a>>,
}

#[derive(Serialize)]
struct BinarySize {
    binary_data_size: usize,
}

/// An encoded response: the JSON header and, if any output is binary, the bytes after it.
#[derive(Debug)]
pub struct EncodedResponse {
    pub json: Vec<u8>,
    pub binary: Vec<Bytes>,
}

/// Renders a response; outputs flagged binary go after the JSON in output order.
pub fn encode_response(
    resp: &InferResponse,
    plan: &BinaryPlan,
) -> Result<EncodedResponse, InferError> {
    let mut binary = Vec::new();
    let mut outputs = Vec::with_capacity(resp.outputs.len());
    for o in &resp.outputs {
        let t = &o.tensor;
        let (parameters, data) = if plan.is_binary(&o.name) {
            binary.push(t.data.clone());
            (
                Some(BinarySize {
                    binary_data_size: t.data.len(),
                }),
                None,
            )
        } else {
            let elements = element_count(&t.shape).unwrap_or(0);
            (
                None,
                Some(DataJson {
                    dtype: t.dtype,
                    elements,
                    data: &t.data,
                }),
            )
        };
        outputs.push(JsonOutputTensor {
            name: &o.name,
            datatype: t.dtype.wire_name(),
            shape: &t.shape,
            parameters,
            data,
        });
    }
    let body = JsonResponse {
        id: &resp.id,
        model_name: &resp.model_name,
        model_version: resp.model_version.to_string(),
        outputs,
    };
    let json = serde_json::to_vec(&body)
        .map_err(|e| InferError::Internal(format!("cannot render the response: {e}")))?;
    Ok(EncodedResponse { json, binary })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::IoSpec;

    fn spec(dtype: DataType, dims: Vec<i64>, mbs: i64) -> ModelSpec {
        ModelSpec {
            name: "m".into(),
            version: 1,
            max_batch_size: mbs,
            inputs: vec![IoSpec {
                name: "IN".into(),
                dtype,
                dims,
                reshape: None,
                optional: false,
            }],
            outputs: vec![],
        }
    }

    #[test]
    fn header_length_bounds() {
        assert_eq!(header_length(None, 5).unwrap(), None);
        assert_eq!(header_length(Some("3"), 5).unwrap(), Some(3));
        assert_eq!(header_length(Some("0"), 5).unwrap(), Some(0));
        for bad in ["6", "-1", "", "abc", "99999999999", " 3"] {
            assert!(header_length(Some(bad), 5).is_err(), "{bad}");
        }
    }

    #[test]
    fn json_and_binary_inputs() {
        let json = br#"{"id":"7","parameters":{"binary_data_output":true,"priority":1},
            "inputs":[{"name":"A","shape":[1,2],"datatype":"INT32","data":[[1,2]]},
                      {"name":"B","shape":[2],"datatype":"INT32","parameters":{"binary_data_size":8}}],
            "outputs":[{"name":"X","parameters":{"binary_data":false}},{"name":"Y"}]}"#;
        let mut body = json.to_vec();
        body.extend([3, 0, 0, 0, 4, 0, 0, 0]);
        let (r, plan) = json_request("m", "", Bytes::from(body), json.len(), 100).unwrap();
        assert_eq!(r.id, "7");
        assert_eq!(r.parameters.get("priority"), Some(&ParamValue::Int64(1)));
        assert!(!r.parameters.contains_key(BINARY_DATA_OUTPUT));
        assert_eq!(&r.inputs[0].data[..], &[1, 0, 0, 0, 2, 0, 0, 0]);
        assert_eq!(&r.inputs[1].data[..], &[3, 0, 0, 0, 4, 0, 0, 0]);
        assert_eq!(r.outputs, vec!["X".to_string(), "Y".to_string()]);
        assert!(!plan.is_binary("X") && plan.is_binary("Y"));
    }

    #[test]
    fn binary_sizes_must_match_the_body() {
        let json = br#"{"inputs":[{"name":"B","shape":[2],"datatype":"INT32","parameters":{"binary_data_size":8}}]}"#;
        let mut short = json.to_vec();
        short.extend([1, 2, 3]);
        let e = json_request("m", "", Bytes::from(short), json.len(), 100).unwrap_err();
        assert!(e.to_string().contains("declares 8 bytes"), "{e}");
        let mut long = json.to_vec();
        long.extend([0u8; 12]);
        let e = json_request("m", "", Bytes::from(long), json.len(), 100).unwrap_err();
        assert!(e.to_string().contains("no input claims them"), "{e}");
        let huge = br#"{"inputs":[{"name":"B","shape":[2],"datatype":"INT32","parameters":{"binary_data_size":18446744073709551615}}]}"#;
        assert!(json_request("m", "", Bytes::from_static(huge), huge.len(), 100).is_err());
    }

    #[test]
    fn bad_json_requests() {
        let cases: [&[u8]; 5] = [
            b"{",
            br#"{"inputs":[{"name":"A","shape":[2],"datatype":"INT32","data":[1]}]}"#,
            br#"{"inputs":[{"name":"A","shape":[-1],"datatype":"INT32","data":[1]}]}"#,
            br#"{"inputs":[{"name":"A","shape":[1],"datatype":"FLOAT","data":[1]}]}"#,
            br#"{"inputs":[{"name":"A","shape":[1],"datatype":"INT32"}]}"#,
        ];
        for c in cases {
            let r = json_request("m", "", Bytes::from_static(c), c.len(), 100);
            assert!(
                matches!(r, Err(InferError::InvalidArgument(_))),
                "{:?}",
                String::from_utf8_lossy(c)
            );
        }
        let deep = format!(
            r#"{{"inputs":[{{"name":"A","shape":[1],"datatype":"INT32","data":{}1{}}}]}}"#,
            "[".repeat(200),
            "]".repeat(200)
        );
        let e = json_request("m", "", Bytes::from(deep.clone()), deep.len(), 100).unwrap_err();
        assert!(e.to_string().contains("nesting"), "{e}");
    }

    #[test]
    fn raw_binary_shapes() {
        let (r, plan) = raw_binary_request(
            &spec(DataType::Fp32, vec![-1, 2], 8),
            "",
            Bytes::from(vec![0u8; 24]),
        )
        .unwrap();
        assert_eq!(r.inputs[0].shape, vec![1, 3, 2]);
        assert!(plan.default);
        let (s, _) = raw_binary_request(
            &spec(DataType::Bytes, vec![1], 0),
            "",
            Bytes::from_static(b"hi"),
        )
        .unwrap();
        assert_eq!(s.inputs[0].shape, vec![1]);
        assert_eq!(&s.inputs[0].data[..], &[2, 0, 0, 0, b'h', b'i']);
        assert!(
            raw_binary_request(&spec(DataType::Fp32, vec![-1, -1], 0), "", Bytes::new()).is_err()
        );
    }
}
