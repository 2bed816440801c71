//! `model_warmup`: synthetic requests run on every instance's engine before the version is
//! marked READY, so the first real request does not pay for lazy initialisation. A failed
//! warmup fails the load (Triton's rule), and a reload keeps the old version serving.

use std::path::Path;

use bytes::Bytes;

use super::paths::inside;
use crate::executor::Engine;
use crate::model::ModelSpec;
use crate::proto::inference::model_warmup::input::InputDataType;
use crate::proto::inference::{ModelConfig, ModelWarmup};
use crate::tensor::{element_count, DataType, NamedTensor, Tensor};

/// Largest tensor a warmup sample may build, in bytes.
const MAX_WARMUP_TENSOR_BYTES: u64 = 1 << 28;

/// One sample's engine inputs and how many times to run it.
#[derive(Debug)]
pub struct Sample {
    name: String,
    inputs: Vec<NamedTensor>,
    count: u32,
}

/// Checks every `input_data_file` path (inside `<model_dir>/warmup/`) without reading it.
pub fn check_paths(config: &ModelConfig, model_dir: &Path) -> Result<(), String> {
    let dir = model_dir.join("warmup");
    for w in &config.model_warmup {
        for (input, spec) in &w.inputs {
            if let Some(InputDataType::InputDataFile(f)) = &spec.input_data_type {
                inside(
                    &dir,
                    f,
                    &format!("model_warmup '{}' input '{input}' input_data_file", w.name),
                )?;
            }
        }
    }
    Ok(())
}

/// Builds the samples of `config.model_warmup` for the engine's view of `spec`.
pub fn samples(
    config: &ModelConfig,
    spec: &ModelSpec,
    model_dir: &Path,
) -> Result<Vec<Sample>, String> {
    config
        .model_warmup
        .iter()
        .map(|w| sample(w, spec, model_dir))
        .collect()
}

fn sample(w: &ModelWarmup, spec: &ModelSpec, model_dir: &Path) -> Result<Sample, String> {
    let what = |input: &str| format!("model_warmup '{}' input '{input}'", w.name);
    let batching = spec.max_batch_size > 0;
    if batching && (w.batch_size == 0 || i64::from(w.batch_size) > spec.max_batch_size) {
        return Err(format!(
            "model_warmup '{}': batch_size must be between 1 and max_batch_size ({}), got {}",
            w.name, spec.max_batch_size, w.batch_size
        ));
    }
    let mut inputs = Vec::with_capacity(spec.inputs.len());
    for io in &spec.inputs {
        let Some(input) = w.inputs.get(&io.name) else {
            if io.optional {
                continue;
            }
            return Err(format!(
                "model_warmup '{}' does not give input '{}'",
                w.name, io.name
            ));
        };
        let dtype = DataType::from_config_value(input.data_type)
            .filter(|d| *d == io.dtype)
            .ok_or_else(|| {
                format!(
                    "{}: data_type does not match the model's {}",
                    what(&io.name),
                    io.dtype
                )
            })?;
        let mut shape = Vec::with_capacity(io.dims.len() + 1);
        if batching {
            shape.push(i64::from(w.batch_size));
        }
        shape.extend(io.reshape.as_ref().unwrap_or(&input.dims));
        let elements = element_count(&shape)
            .map_err(|e| format!("{}: invalid dims {:?}: {e:?}", what(&io.name), input.dims))?;
        let size = dtype.element_size().unwrap_or(1) as u64;
        if elements.saturating_mul(size) > MAX_WARMUP_TENSOR_BYTES {
            return Err(format!(
                "{}: the tensor would exceed {MAX_WARMUP_TENSOR_BYTES} bytes",
                what(&io.name)
            ));
        }
        let data = match &input.input_data_type {
            Some(InputDataType::ZeroData(_)) | None => fill(dtype, elements, |_| 0.0),
            Some(InputDataType::RandomData(_)) => {
                let mut state = 0x9e37_79b9_7f4a_7c15_u64;
                fill(dtype, elements, |_| {
                    // splitmix64: deterministic values in [0, 1).
                    state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
                    let mut z = state;
                    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                    (z >> 11) as f64 / (1u64 << 53) as f64
                })
            }
            Some(InputDataType::InputDataFile(f)) => {
                let path = inside(&model_dir.join("warmup"), f, &what(&io.name))?;
                let bytes = std::fs::read(&path)
                    .map_err(|e| format!("{}: cannot read '{f}': {e}", what(&io.name)))?;
                from_file(dtype, elements, size, bytes)
                    .map_err(|e| format!("{}: {e}", what(&io.name)))?
            }
        };
        inputs.push(NamedTensor {
            name: io.name.clone(),
            tensor: Tensor { dtype, shape, data },
        });
    }
    Ok(Sample {
        name: w.name.clone(),
        inputs,
        count: w.count.max(1),
    })
}

/// `elements` values of `dtype` from `value(i)` (numbers) — BYTES elements are empty strings.
fn fill(dtype: DataType, elements: u64, mut value: impl FnMut(u64) -> f64) -> Bytes {
    let n = elements as usize;
    let mut out = Vec::with_capacity(n * dtype.element_size().unwrap_or(4));
    for i in 0..elements {
        let v = value(i);
        match dtype {
            DataType::Bool => out.push((v >= 0.5) as u8),
            DataType::Uint8 | DataType::Int8 => out.push((v * 100.0) as u8),
            DataType::Uint16 | DataType::Int16 => out.extend(((v * 100.0) as u16).to_le_bytes()),
            DataType::Uint32 | DataType::Int32 => out.extend(((v * 100.0) as u32).to_le_bytes()),
            DataType::Uint64 | DataType::Int64 => out.extend(((v * 100.0) as u64).to_le_bytes()),
            DataType::Fp16 => out.extend(half::f16::from_f64(v).to_le_bytes()),
            DataType::Bf16 => out.extend(half::bf16::from_f64(v).to_le_bytes()),
            DataType::Fp32 => out.extend((v as f32).to_le_bytes()),
            DataType::Fp64 => out.extend(v.to_le_bytes()),
            DataType::Bytes => out.extend(0u32.to_le_bytes()),
        }
    }
    Bytes::from(out)
}

/// A file's bytes as the tensor: raw little-endian values, or for BYTES one element with the
/// whole file, repeated.
fn from_file(dtype: DataType, elements: u64, size: u64, bytes: Vec<u8>) -> Result<Bytes, String> {
    if dtype == DataType::Bytes {
        let len = u32::try_from(bytes.len()).map_err(|_| "file over 4 GiB".to_string())?;
        let mut out = Vec::new();
        for _ in 0..elements {
            out.extend(len.to_le_bytes());
            out.extend_from_slice(&bytes);
        }
        return Ok(Bytes::from(out));
    }
    let want = elements * size;
    if bytes.len() as u64 != want {
        return Err(format!(
            "the file holds {} bytes but the tensor needs {want}",
            bytes.len()
        ));
    }
    Ok(Bytes::from(bytes))
}

/// Runs every sample on `engine`, `count` times each.
pub fn run(engine: &mut dyn Engine, samples: &[Sample], outputs: &[String]) -> Result<(), String> {
    for s in samples {
        for _ in 0..s.count {
            engine
                .execute(&s.inputs, outputs)
                .map_err(|e| format!("model_warmup '{}' failed: {e}", s.name))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::IoSpec;
    use crate::proto::inference::model_warmup::Input;

    fn spec() -> ModelSpec {
        ModelSpec {
            name: "m".into(),
            version: 1,
            max_batch_size: 4,
            inputs: vec![IoSpec {
                name: "X".into(),
                dtype: DataType::Fp32,
                dims: vec![3],
                reshape: None,
                optional: false,
            }],
            outputs: vec![],
        }
    }

    fn warmup(batch: u32, data: InputDataType) -> ModelConfig {
        let mut w = ModelWarmup {
            name: "w".into(),
            batch_size: batch,
            count: 2,
            ..Default::default()
        };
        w.inputs.insert(
            "X".into(),
            Input {
                data_type: DataType::Fp32.config_value(),
                dims: vec![3],
                input_data_type: Some(data),
            },
        );
        ModelConfig {
            model_warmup: vec![w],
            ..Default::default()
        }
    }

    #[test]
    fn builds_batched_samples() {
        let d = tempfile::tempdir().unwrap();
        let s = samples(
            &warmup(2, InputDataType::RandomData(true)),
            &spec(),
            d.path(),
        )
        .unwrap();
        assert_eq!(s[0].inputs[0].tensor.shape, vec![2, 3]);
        assert_eq!(s[0].inputs[0].tensor.data.len(), 24);
        assert_eq!(s[0].count, 2);
        assert!(samples(&warmup(5, InputDataType::ZeroData(true)), &spec(), d.path()).is_err());
        assert!(samples(&warmup(0, InputDataType::ZeroData(true)), &spec(), d.path()).is_err());
    }

    #[test]
    fn data_files_stay_inside_the_warmup_dir() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("warmup")).unwrap();
        std::fs::write(d.path().join("warmup/x.bin"), [0u8; 12]).unwrap();
        std::fs::write(d.path().join("secret"), [0u8; 12]).unwrap();
        let ok = warmup(1, InputDataType::InputDataFile("x.bin".into()));
        assert!(samples(&ok, &spec(), d.path()).is_ok());
        for bad in ["../secret", "/etc/passwd", "a/../../secret"] {
            let c = warmup(1, InputDataType::InputDataFile(bad.into()));
            assert!(check_paths(&c, d.path()).is_err(), "{bad}");
            assert!(samples(&c, &spec(), d.path()).is_err(), "{bad}");
        }
        let short = warmup(2, InputDataType::InputDataFile("x.bin".into()));
        assert!(samples(&short, &spec(), d.path())
            .unwrap_err()
            .contains("needs 24"));
    }
}
