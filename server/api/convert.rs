//! Proto ⇄ core types. Pure functions, unit-tested.

use std::collections::HashMap;

use bytes::Bytes;

use crate::core::{ModelMetadata, ServerMetadata, TensorMetadata, VersionStats};
use crate::error::InferError;
use crate::proto::inference as pb;
use crate::repository::LoadRequest;
use crate::request::{InferRequest, InferResponse, InputTensor, ParamValue};
use crate::stats::CountNs;
use crate::tensor::{join_bytes_elements, DataType};

fn param(key: &str, p: &pb::InferParameter) -> Result<ParamValue, InferError> {
    use pb::infer_parameter::ParameterChoice as C;
    Ok(match &p.parameter_choice {
        Some(C::BoolParam(b)) => ParamValue::Bool(*b),
        Some(C::Int64Param(i)) => ParamValue::Int64(*i),
        Some(C::Uint64Param(u)) => ParamValue::Uint64(*u),
        Some(C::DoubleParam(d)) => ParamValue::Double(*d),
        Some(C::StringParam(s)) => ParamValue::String(s.clone()),
        None => {
            return Err(InferError::invalid(format!(
                "parameter '{key}' has no value"
            )))
        }
    })
}

fn le_bytes<T: Copy, const N: usize>(values: &[T], to: fn(T) -> [u8; N]) -> Bytes {
    let mut out = Vec::with_capacity(values.len() * N);
    for v in values {
        out.extend_from_slice(&to(*v));
    }
    out.into()
}

/// Typed `contents` to little-endian bytes, narrowing the 32-bit fields as Triton does.
fn typed_contents(
    name: &str,
    dtype: DataType,
    c: &pb::InferTensorContents,
) -> Result<Bytes, InferError> {
    Ok(match dtype {
        DataType::Bool => c
            .bool_contents
            .iter()
            .map(|b| *b as u8)
            .collect::<Vec<u8>>()
            .into(),
        DataType::Int8 => c
            .int_contents
            .iter()
            .map(|v| *v as i8 as u8)
            .collect::<Vec<u8>>()
            .into(),
        DataType::Int16 => le_bytes(&c.int_contents, |v| (v as i16).to_le_bytes()),
        DataType::Int32 => le_bytes(&c.int_contents, i32::to_le_bytes),
        DataType::Int64 => le_bytes(&c.int64_contents, i64::to_le_bytes),
        DataType::Uint8 => c
            .uint_contents
            .iter()
            .map(|v| *v as u8)
            .collect::<Vec<u8>>()
            .into(),
        DataType::Uint16 => le_bytes(&c.uint_contents, |v| (v as u16).to_le_bytes()),
        DataType::Uint32 => le_bytes(&c.uint_contents, u32::to_le_bytes),
        DataType::Uint64 => le_bytes(&c.uint64_contents, u64::to_le_bytes),
        DataType::Fp32 => le_bytes(&c.fp32_contents, f32::to_le_bytes),
        DataType::Fp64 => le_bytes(&c.fp64_contents, f64::to_le_bytes),
        DataType::Bytes => join_bytes_elements(&c.bytes_contents).into(),
        DataType::Fp16 | DataType::Bf16 => {
            return Err(InferError::invalid(format!(
                "input '{name}' has datatype {dtype}, which can only be sent in raw_input_contents"
            )))
        }
    })
}

fn has_contents(c: &pb::InferTensorContents) -> bool {
    !(c.bool_contents.is_empty()
        && c.int_contents.is_empty()
        && c.int64_contents.is_empty()
        && c.uint_contents.is_empty()
        && c.uint64_contents.is_empty()
        && c.fp32_contents.is_empty()
        && c.fp64_contents.is_empty()
        && c.bytes_contents.is_empty())
}

/// Decodes a ModelInferRequest: parameters, datatypes, raw or typed payloads.
pub fn decode_infer_request(req: pb::ModelInferRequest) -> Result<InferRequest, InferError> {
    let model = req.model_name;
    let parameters = req
        .parameters
        .iter()
        .map(|(k, v)| Ok((k.clone(), param(k, v)?)))
        .collect::<Result<HashMap<_, _>, InferError>>()?;
    let use_raw = !req.raw_input_contents.is_empty();
    if use_raw && req.raw_input_contents.len() != req.inputs.len() {
        return Err(InferError::invalid(format!(
            "expected {} entries in raw_input_contents (one per input) for model '{model}', got {}",
            req.inputs.len(),
            req.raw_input_contents.len()
        )));
    }
    let mut raw = req.raw_input_contents.into_iter();
    let mut inputs = Vec::with_capacity(req.inputs.len());
    for input in req.inputs {
        let name = input.name;
        if input
            .parameters
            .keys()
            .any(|k| k.starts_with("shared_memory_"))
        {
            return Err(InferError::Unsupported(format!(
                "input '{name}' uses shared memory, which Switchyard does not support yet"
            )));
        }
        let dtype = DataType::from_wire(&input.datatype).ok_or_else(|| {
            InferError::invalid(format!(
                "invalid datatype '{}' for input '{name}' of model '{model}'",
                input.datatype
            ))
        })?;
        let contents = input.contents.as_ref().filter(|c| has_contents(c));
        let data = match (use_raw, contents) {
            (true, Some(_)) => {
                return Err(InferError::invalid(format!(
                    "contents field must not be specified when using raw_input_contents for '{name}' for model '{model}'"
                )))
            }
            (true, None) => raw.next().unwrap_or_default(),
            (false, Some(c)) => typed_contents(&name, dtype, c)?,
            (false, None) => Bytes::new(),
        };
        inputs.push(InputTensor {
            name,
            dtype,
            shape: input.shape,
            data,
        });
    }
    let mut outputs = Vec::with_capacity(req.outputs.len());
    for o in req.outputs {
        if o.parameters.contains_key("classification") {
            return Err(InferError::Unsupported(format!(
                "output '{}' asks for classification, which Switchyard does not support yet",
                o.name
            )));
        }
        if o.parameters.keys().any(|k| k.starts_with("shared_memory_")) {
            return Err(InferError::Unsupported(format!(
                "output '{}' uses shared memory, which Switchyard does not support yet",
                o.name
            )));
        }
        outputs.push(o.name);
    }
    Ok(InferRequest {
        model_name: model,
        model_version: req.model_version,
        id: req.id,
        parameters,
        inputs,
        outputs,
        headers: Default::default(),
    })
}

/// Encodes a response: every output in `raw_output_contents`, one entry per output, in order.
pub fn encode_infer_response(resp: InferResponse) -> pb::ModelInferResponse {
    let mut outputs = Vec::with_capacity(resp.outputs.len());
    let mut raw = Vec::with_capacity(resp.outputs.len());
    for o in resp.outputs {
        outputs.push(pb::model_infer_response::InferOutputTensor {
            name: o.name,
            datatype: o.tensor.dtype.wire_name().to_string(),
            shape: o.tensor.shape,
            parameters: HashMap::new(),
            contents: None,
        });
        raw.push(o.tensor.data);
    }
    pb::ModelInferResponse {
        model_name: resp.model_name,
        model_version: resp.model_version.to_string(),
        id: resp.id,
        parameters: HashMap::new(),
        outputs,
        raw_output_contents: raw,
    }
}

/// RepositoryModelLoad parameters: `config` (string JSON) and `file:<path>` (bytes).
pub fn decode_load_request(
    parameters: HashMap<String, pb::ModelRepositoryParameter>,
) -> Result<LoadRequest, InferError> {
    use pb::model_repository_parameter::ParameterChoice as C;
    let mut request = LoadRequest::default();
    for (key, p) in parameters {
        match (key.as_str(), p.parameter_choice) {
            ("config", Some(C::StringParam(c))) => request.config = Some(c),
            ("config", _) => {
                return Err(InferError::invalid(
                    "parameter 'config' must be a string holding the JSON config",
                ))
            }
            (k, Some(C::BytesParam(b))) if k.starts_with("file:") => {
                request.files.push((k["file:".len()..].to_string(), b));
            }
            (k, _) if k.starts_with("file:") => {
                return Err(InferError::invalid(format!(
                    "parameter '{k}' must hold the file's bytes"
                )))
            }
            (k, _) => {
                return Err(InferError::invalid(format!(
                    "unrecognized load parameter '{k}'"
                )))
            }
        }
    }
    Ok(request)
}

/// Core server metadata → `ServerMetadataResponse`.
pub fn encode_server_metadata(m: ServerMetadata) -> pb::ServerMetadataResponse {
    pb::ServerMetadataResponse {
        name: m.name,
        version: m.version,
        extensions: m.extensions,
    }
}

/// Core model metadata → `ModelMetadataResponse`.
pub fn encode_model_metadata(m: ModelMetadata) -> pb::ModelMetadataResponse {
    let tensor = |t: TensorMetadata| pb::model_metadata_response::TensorMetadata {
        name: t.name,
        datatype: t.datatype,
        shape: t.shape,
    };
    pb::ModelMetadataResponse {
        name: m.name,
        versions: m.versions,
        platform: m.platform,
        inputs: m.inputs.into_iter().map(tensor).collect(),
        outputs: m.outputs.into_iter().map(tensor).collect(),
    }
}

fn duration(c: CountNs) -> Option<pb::StatisticDuration> {
    Some(pb::StatisticDuration {
        count: c.count,
        ns: c.ns,
    })
}

/// Core statistics → `ModelStatistics`, every sub-message present.
pub fn encode_statistics(v: VersionStats) -> pb::ModelStatistics {
    let s = v.stats;
    pb::ModelStatistics {
        name: v.name,
        version: v.version.to_string(),
        last_inference: s.last_inference_ms,
        inference_count: s.inference_count,
        execution_count: s.execution_count,
        inference_stats: Some(pb::InferStatistics {
            success: duration(s.success),
            fail: duration(s.fail),
            queue: duration(s.queue),
            compute_input: duration(s.compute_input),
            compute_infer: duration(s.compute_infer),
            compute_output: duration(s.compute_output),
            cache_hit: duration(CountNs::default()),
            cache_miss: duration(CountNs::default()),
        }),
        batch_stats: s
            .batch
            .iter()
            .map(|(bs, b)| pb::InferBatchStatistics {
                batch_size: *bs,
                compute_input: duration(b.compute_input),
                compute_infer: duration(b.compute_infer),
                compute_output: duration(b.compute_output),
            })
            .collect(),
        memory_usage: Vec::new(),
        response_stats: HashMap::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensor(
        name: &str,
        dtype: &str,
        shape: Vec<i64>,
        contents: Option<pb::InferTensorContents>,
    ) -> pb::model_infer_request::InferInputTensor {
        pb::model_infer_request::InferInputTensor {
            name: name.into(),
            datatype: dtype.into(),
            shape,
            parameters: HashMap::new(),
            contents,
        }
    }

    #[test]
    fn typed_contents_are_serialized_little_endian() {
        let req = pb::ModelInferRequest {
            model_name: "m".into(),
            inputs: vec![
                tensor(
                    "a",
                    "INT16",
                    vec![2],
                    Some(pb::InferTensorContents {
                        int_contents: vec![1, -2],
                        ..Default::default()
                    }),
                ),
                tensor(
                    "b",
                    "BYTES",
                    vec![2],
                    Some(pb::InferTensorContents {
                        bytes_contents: vec![b"x".to_vec(), b"".to_vec()],
                        ..Default::default()
                    }),
                ),
                tensor(
                    "c",
                    "BOOL",
                    vec![1],
                    Some(pb::InferTensorContents {
                        bool_contents: vec![true],
                        ..Default::default()
                    }),
                ),
            ],
            ..Default::default()
        };
        let r = decode_infer_request(req).unwrap();
        assert_eq!(&r.inputs[0].data[..], &[1, 0, 0xfe, 0xff]);
        assert_eq!(&r.inputs[1].data[..], &[1, 0, 0, 0, b'x', 0, 0, 0, 0]);
        assert_eq!(&r.inputs[2].data[..], &[1]);
    }

    #[test]
    fn raw_and_typed_rules() {
        let mixed = pb::ModelInferRequest {
            model_name: "m".into(),
            inputs: vec![tensor(
                "a",
                "INT32",
                vec![1],
                Some(pb::InferTensorContents {
                    int_contents: vec![1],
                    ..Default::default()
                }),
            )],
            raw_input_contents: vec![Bytes::from_static(&[0, 0, 0, 0])],
            ..Default::default()
        };
        let e = decode_infer_request(mixed).unwrap_err().to_string();
        assert!(
            e.contains(
                "contents field must not be specified when using raw_input_contents for 'a'"
            ),
            "{e}"
        );
        let count = pb::ModelInferRequest {
            model_name: "m".into(),
            inputs: vec![
                tensor("a", "INT32", vec![1], None),
                tensor("b", "INT32", vec![1], None),
            ],
            raw_input_contents: vec![Bytes::from_static(&[0, 0, 0, 0])],
            ..Default::default()
        };
        assert!(decode_infer_request(count)
            .unwrap_err()
            .to_string()
            .contains("expected 2 entries"));
        let bad_type = pb::ModelInferRequest {
            inputs: vec![tensor("a", "FLOAT", vec![1], None)],
            ..Default::default()
        };
        assert!(decode_infer_request(bad_type)
            .unwrap_err()
            .to_string()
            .contains("invalid datatype 'FLOAT'"));
    }
}
