//! Fills in a config from the model file, as Triton's ONNX Runtime backend does, normalises
//! it, and derives the typed [`ModelSpec`] that requests are validated against.

use crate::executor::EngineIo;
use crate::model::{IoSpec, ModelSpec};
use crate::proto::inference::{
    model_config::SchedulingChoice, model_version_policy, ModelConfig, ModelDynamicBatching,
    ModelInput, ModelOutput, ModelVersionPolicy,
};
use crate::tensor::DataType;

/// Triton's `default-max-batch-size` backend setting.
pub const DEFAULT_MAX_BATCH_SIZE: i32 = 4;

fn engine_batches(io: &[EngineIo]) -> bool {
    !io.is_empty() && io.iter().all(|i| i.dims.first() == Some(&-1))
}

fn engine_dims(io: &EngineIo, batched: bool) -> Vec<i64> {
    if batched {
        io.dims[1..].to_vec()
    } else {
        io.dims.clone()
    }
}

fn dtype_of(io: &EngineIo, model: &str) -> Result<DataType, String> {
    io.dtype.ok_or_else(|| {
        format!(
            "model '{model}': tensor '{}' of the model file has a type Triton cannot express",
            io.name
        )
    })
}

/// Fills missing inputs, outputs and `max_batch_size` from the engine's I/O.
pub fn auto_complete(
    config: &mut ModelConfig,
    has_max_batch_size: bool,
    inputs: &[EngineIo],
    outputs: &[EngineIo],
) -> Result<(), String> {
    let model = config.name.clone();
    if !has_max_batch_size && engine_batches(inputs) && engine_batches(outputs) {
        config.max_batch_size = DEFAULT_MAX_BATCH_SIZE;
        if config.scheduling_choice.is_none() {
            config.scheduling_choice = Some(SchedulingChoice::DynamicBatching(
                ModelDynamicBatching::default(),
            ));
        }
    }
    let batched = config.max_batch_size > 0;
    if config.input.is_empty() {
        for io in inputs {
            config.input.push(ModelInput {
                name: io.name.clone(),
                data_type: dtype_of(io, &model)?.config_value(),
                dims: engine_dims(io, batched),
                ..Default::default()
            });
        }
    }
    if config.output.is_empty() {
        for io in outputs {
            config.output.push(ModelOutput {
                name: io.name.clone(),
                data_type: dtype_of(io, &model)?.config_value(),
                dims: engine_dims(io, batched),
                ..Default::default()
            });
        }
    }
    Ok(())
}

/// Fills in `instance_group` as Triton does: one group if none, names, count >= 1, and
/// KIND_AUTO as KIND_CPU (no GPU executor yet).
pub fn normalize_instance_groups(config: &mut ModelConfig) {
    if config.instance_group.is_empty() {
        config.instance_group.push(Default::default());
    }
    for (i, g) in config.instance_group.iter_mut().enumerate() {
        if g.name.is_empty() {
            g.name = format!("{}_{i}", config.name);
        }
        if g.count < 1 {
            g.count = 1;
        }
        if g.kind == 0 {
            g.kind = 2;
        }
    }
}

/// Total instances the (normalised) instance groups ask for.
pub fn instance_total(config: &ModelConfig) -> usize {
    config
        .instance_group
        .iter()
        .map(|g| g.count.max(1) as usize)
        .sum::<usize>()
        .max(1)
}

/// Fills defaults the way Triton shows them in ModelConfig responses.
pub fn normalize(config: &mut ModelConfig) {
    if config.version_policy.is_none() {
        config.version_policy = Some(ModelVersionPolicy {
            policy_choice: Some(model_version_policy::PolicyChoice::Latest(
                model_version_policy::Latest { num_versions: 1 },
            )),
        });
    }
    if config.backend.is_empty() && config.platform == "onnxruntime_onnx" {
        config.backend = "onnxruntime".into();
    }
    if config.platform.is_empty() && config.backend == "onnxruntime" {
        config.platform = "onnxruntime_onnx".into();
    }
    normalize_instance_groups(config);
    let mbs = config.max_batch_size;
    if let Some(SchedulingChoice::DynamicBatching(db)) = &mut config.scheduling_choice {
        if db.preferred_batch_size.is_empty() && mbs > 0 {
            db.preferred_batch_size.push(mbs);
        }
    }
}

fn io_spec(
    model: &str,
    kind: &str,
    name: &str,
    data_type: i32,
    dims: &[i64],
    reshape: Option<&[i64]>,
    optional: bool,
) -> Result<IoSpec, String> {
    let dtype = DataType::from_config_value(data_type).ok_or_else(|| {
        format!("model '{model}': {kind} '{name}' has invalid data_type {data_type}")
    })?;
    if let Some(d) = dims.iter().find(|&&d| d < -1) {
        return Err(format!(
            "model '{model}': {kind} '{name}' has invalid dimension {d}"
        ));
    }
    Ok(IoSpec {
        name: name.to_string(),
        dtype,
        dims: dims.to_vec(),
        reshape: reshape.map(<[i64]>::to_vec),
        optional,
    })
}

fn check_against_engine(
    model: &str,
    kind: &str,
    spec: &IoSpec,
    engine: &[EngineIo],
    batched: bool,
) -> Result<(), String> {
    let Some(io) = engine.iter().find(|e| e.name == spec.name) else {
        let names: Vec<&str> = engine.iter().map(|e| e.name.as_str()).collect();
        return Err(format!(
            "unable to load model '{model}': configuration expects {kind} '{}' but the model file has {kind}s {names:?}",
            spec.name
        ));
    };
    if io.dtype != Some(spec.dtype) {
        return Err(format!(
            "unable to load model '{model}': configuration expects data type {} for {kind} '{}', the model file provides {}",
            spec.dtype,
            spec.name,
            io.dtype.map(|d| d.wire_name()).unwrap_or("an unsupported type")
        ));
    }
    let mut want: Vec<i64> = spec.reshape.clone().unwrap_or_else(|| spec.dims.clone());
    if batched {
        want.insert(0, -1);
    }
    let compatible = want.len() == io.dims.len()
        && want
            .iter()
            .zip(&io.dims)
            .all(|(&w, &e)| w == -1 || e == -1 || w == e);
    if !compatible {
        return Err(format!(
            "unable to load model '{model}': {kind} '{}' has shape {:?} (with batch dim) in the configuration but {:?} in the model file",
            spec.name, want, io.dims
        ));
    }
    Ok(())
}

/// Builds the typed spec of `version` and checks it against the engine's I/O.
pub fn model_spec(
    config: &ModelConfig,
    version: i64,
    inputs: &[EngineIo],
    outputs: &[EngineIo],
) -> Result<ModelSpec, String> {
    let model = config.name.as_str();
    if config.max_batch_size < 0 {
        return Err(format!(
            "model '{model}': max_batch_size must be >= 0, got {}",
            config.max_batch_size
        ));
    }
    let batched = config.max_batch_size > 0;
    let ins = config
        .input
        .iter()
        .map(|i| {
            io_spec(
                model,
                "input",
                &i.name,
                i.data_type,
                &i.dims,
                i.reshape.as_ref().map(|r| &r.shape[..]),
                i.optional,
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    let outs = config
        .output
        .iter()
        .map(|o| {
            io_spec(
                model,
                "output",
                &o.name,
                o.data_type,
                &o.dims,
                o.reshape.as_ref().map(|r| &r.shape[..]),
                false,
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    for s in &ins {
        check_against_engine(model, "input", s, inputs, batched)?;
    }
    if ins.len() != inputs.len() {
        let missing: Vec<&str> = inputs
            .iter()
            .filter(|e| !ins.iter().any(|s| s.name == e.name))
            .map(|e| e.name.as_str())
            .collect();
        return Err(format!(
            "unable to load model '{model}': configuration expects {} inputs, model provides {} (not in the configuration: {missing:?})",
            ins.len(),
            inputs.len()
        ));
    }
    for s in &outs {
        check_against_engine(model, "output", s, outputs, batched)?;
    }
    if outs.is_empty() {
        return Err(format!("model '{model}' has no outputs"));
    }
    Ok(ModelSpec {
        name: model.to_string(),
        version,
        max_batch_size: config.max_batch_size as i64,
        inputs: ins,
        outputs: outs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eio(name: &str, dtype: DataType, dims: &[i64]) -> EngineIo {
        EngineIo {
            name: name.into(),
            dtype: Some(dtype),
            dims: dims.to_vec(),
        }
    }

    #[test]
    fn fills_missing_io_and_batch_size() {
        let mut c = ModelConfig {
            name: "m".into(),
            platform: "onnxruntime_onnx".into(),
            ..Default::default()
        };
        let ins = [eio("x", DataType::Fp32, &[-1, 30])];
        let outs = [eio("p", DataType::Fp32, &[-1, 2])];
        auto_complete(&mut c, false, &ins, &outs).unwrap();
        normalize(&mut c);
        assert_eq!(c.max_batch_size, 4);
        assert_eq!(c.input[0].dims, vec![30]);
        assert_eq!(c.output[0].data_type, DataType::Fp32.config_value());
        assert_eq!(c.backend, "onnxruntime");
        assert_eq!(c.instance_group[0].count, 1);
        match &c.scheduling_choice {
            Some(SchedulingChoice::DynamicBatching(d)) => {
                assert_eq!(d.preferred_batch_size, vec![4])
            }
            other => panic!("{other:?}"),
        }
        let spec = model_spec(&c, 1, &ins, &outs).unwrap();
        assert_eq!(spec.max_batch_size, 4);
    }

    #[test]
    fn explicit_zero_batch_is_kept_and_mismatches_fail() {
        let mut c = ModelConfig {
            name: "m".into(),
            ..Default::default()
        };
        let ins = [eio("x", DataType::Int32, &[-1, 16])];
        let outs = [eio("y", DataType::Int32, &[-1, 16])];
        auto_complete(&mut c, true, &ins, &outs).unwrap();
        assert_eq!(c.max_batch_size, 0);
        assert_eq!(c.input[0].dims, vec![-1, 16]);
        assert!(model_spec(&c, 1, &ins, &outs).is_ok());
        c.input[0].data_type = DataType::Fp32.config_value();
        let e = model_spec(&c, 1, &ins, &outs).unwrap_err();
        assert!(e.contains("data type FP32") && e.contains("'x'"), "{e}");
        c.input[0].data_type = DataType::Int32.config_value();
        c.input[0].name = "nope".into();
        assert!(model_spec(&c, 1, &ins, &outs)
            .unwrap_err()
            .contains("'nope'"));
    }
}
