//! The GPU parts of a model's config, as Triton users write them for ONNX models, checked at
//! load into a typed [`GpuPlan`]:
//!
//! ```text
//! optimization {
//!   execution_accelerators {
//!     gpu_execution_accelerator: [ { name: "tensorrt"
//!       parameters { key: "precision_mode" value: "INT8" }
//!       parameters { key: "int8_calibration_table_name" value: "calibration.json" } } ]
//!   }
//!   cuda { graphs: true }
//! }
//! ```
//!
//! Accelerator names and parameters follow Triton's ONNX Runtime backend: `tensorrt` and
//! `cuda` are known, anything else is refused with Triton's message; the tensorrt parameters
//! Triton knows are accepted, those Switchyard does not use are listed in
//! [`GpuPlan::ignored`] (logged at load), and unknown ones are refused. Unlike Triton, the
//! block is checked for every model, including those with only KIND_CPU instances (where it
//! has no effect, as in Triton), so a typo is found before the model reaches a GPU.

use std::path::{Path, PathBuf};

use super::paths::inside;
use crate::proto::inference::ModelConfig;

/// The precision an engine is built in (`precision_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Precision {
    Fp32,
    Fp16,
    Int8,
}

impl Precision {
    /// The config spelling: `FP32`, `FP16`, `INT8`.
    pub fn as_str(self) -> &'static str {
        match self {
            Precision::Fp32 => "FP32",
            Precision::Fp16 => "FP16",
            Precision::Int8 => "INT8",
        }
    }
}

/// The `tensorrt` accelerator: an engine compiled from the ONNX model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnginePlan {
    pub precision: Precision,
    /// `int8_calibration_table_name`, resolved inside the model directory (INT8 only).
    pub calibration: Option<PathBuf>,
    /// `max_workspace_size_bytes`.
    pub max_workspace_bytes: Option<u64>,
    /// `trt_engine_cache_enable` (default true: compiled engines are cached).
    pub engine_cache: bool,
}

/// What a model's config asks of the GPU executor.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GpuPlan {
    /// The `tensorrt` accelerator, when present.
    pub engine: Option<EnginePlan>,
    /// `optimization.cuda.graphs`.
    pub cuda_graphs: bool,
    /// Batch sizes of `optimization.cuda.graph_spec`, in config order.
    pub graph_batch_sizes: Vec<i32>,
    /// Parameters Triton accepts that Switchyard does not use, as `accelerator.key`.
    pub ignored: Vec<String>,
}

impl GpuPlan {
    /// A few words for load errors and logs: `tensorrt FP16, CUDA graphs`.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(e) = &self.engine {
            parts.push(format!("tensorrt {}", e.precision.as_str()));
        }
        if self.cuda_graphs {
            parts.push("CUDA graphs".to_string());
        }
        parts.join(", ")
    }
}

/// tensorrt parameters Triton's ONNX Runtime backend accepts and Switchyard does not use.
const IGNORED_TENSORRT_PARAMETERS: &[&str] = &[
    "int8_use_native_calibration_table",
    "trt_max_partition_iterations",
    "trt_min_subgraph_size",
    "trt_dla_enable",
    "trt_dla_core",
    "trt_engine_cache_path",
    "trt_engine_cache_prefix",
    "trt_dump_subgraphs",
    "trt_force_sequential_engine_build",
    "trt_context_memory_sharing_enable",
    "trt_layer_norm_fp32_fallback",
    "trt_timing_cache_enable",
    "trt_timing_cache_path",
    "trt_force_timing_cache",
    "trt_detailed_build_log",
    "trt_build_heuristics_enable",
    "trt_sparsity_enable",
    "trt_builder_optimization_level",
    "trt_auxiliary_streams",
    "trt_tactic_sources",
    "trt_extra_plugin_lib_paths",
    "trt_profile_min_shapes",
    "trt_profile_max_shapes",
    "trt_profile_opt_shapes",
    "trt_cuda_graph_enable",
    "trt_dump_ep_context_model",
    "trt_ep_context_file_path",
    "trt_ep_context_embed_mode",
];

const ACCELERATORS: &str = "optimization.execution_accelerators.gpu_execution_accelerator";

/// Reads and checks the GPU parts of `config`; paths resolve inside `model_dir`.
pub fn gpu_plan(config: &ModelConfig, model_dir: &Path) -> Result<GpuPlan, String> {
    let mut plan = GpuPlan::default();
    let Some(opt) = &config.optimization else {
        return Ok(plan);
    };
    if let Some(cuda) = &opt.cuda {
        plan.cuda_graphs = cuda.graphs;
        plan.graph_batch_sizes = cuda.graph_spec.iter().map(|g| g.batch_size).collect();
    }
    let accelerators = opt
        .execution_accelerators
        .as_ref()
        .map(|e| e.gpu_execution_accelerator.as_slice())
        .unwrap_or_default();
    for (i, acc) in accelerators.iter().enumerate() {
        let at = format!("{ACCELERATORS}[{i}]");
        let mut keys: Vec<&String> = acc.parameters.keys().collect();
        keys.sort();
        match acc.name.as_str() {
            "tensorrt" => {
                if plan.engine.is_some() {
                    return Err(format!("{at}: the tensorrt accelerator is given twice"));
                }
                plan.engine = Some(engine_plan(&at, &acc.parameters, &keys, model_dir, &mut plan.ignored)?);
            }
            // CUDA is what a KIND_GPU instance runs on anyway; its ONNX Runtime options
            // have no meaning for Switchyard's executor.
            "cuda" => plan
                .ignored
                .extend(keys.iter().map(|k| format!("cuda.{k}"))),
            other => {
                return Err(format!(
                    "{at}: unknown Execution Accelerator '{}' is requested (name must be 'tensorrt' or 'cuda')",
                    other.escape_debug()
                ))
            }
        }
    }
    Ok(plan)
}

fn engine_plan(
    at: &str,
    params: &std::collections::HashMap<String, String>,
    keys: &[&String],
    model_dir: &Path,
    ignored: &mut Vec<String>,
) -> Result<EnginePlan, String> {
    let bad = |key: &str, value: &str, want: &str| {
        format!(
            "{at} 'tensorrt': parameter {key} = '{}': {want}",
            value.escape_debug()
        )
    };
    let mut plan = EnginePlan {
        precision: Precision::Fp32,
        calibration: None,
        max_workspace_bytes: None,
        engine_cache: true,
    };
    let mut calibration = None;
    for key in keys {
        let value = params[key.as_str()].as_str();
        match key.as_str() {
            "precision_mode" => {
                plan.precision = match value {
                    "FP32" => Precision::Fp32,
                    "FP16" => Precision::Fp16,
                    "INT8" => Precision::Int8,
                    _ => {
                        return Err(bad(
                            key,
                            value,
                            "unsupported precision mode (Switchyard supports FP32, FP16 and INT8)",
                        ))
                    }
                }
            }
            "max_workspace_size_bytes" => {
                plan.max_workspace_bytes = Some(value.parse().map_err(|_| {
                    bad(key, value, "expected a number of bytes (an unsigned integer)")
                })?)
            }
            "trt_engine_cache_enable" => {
                plan.engine_cache = parse_bool(value)
                    .ok_or_else(|| bad(key, value, "expected true/false (or 1/0)"))?
            }
            "int8_calibration_table_name" => {
                let path = inside(model_dir, value, &format!("{at} 'tensorrt': parameter {key}"))?;
                if !path.is_file() {
                    return Err(bad(key, value, "no such file in the model directory"));
                }
                calibration = Some(path);
            }
            k if IGNORED_TENSORRT_PARAMETERS.contains(&k) => ignored.push(format!("tensorrt.{k}")),
            k => {
                return Err(format!(
                    "{at} 'tensorrt': unknown parameter '{}' is provided for TensorRT Execution Accelerator",
                    k.escape_debug()
                ))
            }
        }
    }
    match (plan.precision, calibration) {
        (Precision::Int8, None) => {
            return Err(format!(
                "{at} 'tensorrt': precision_mode = 'INT8' needs parameter int8_calibration_table_name (a calibration file inside the model directory)"
            ))
        }
        (Precision::Int8, c) => plan.calibration = c,
        // Accepted (Triton passes it on too) but unused outside INT8.
        (_, Some(_)) => ignored.push("tensorrt.int8_calibration_table_name".into()),
        (_, None) => {}
    }
    Ok(plan)
}

/// Triton's ParseBoolValue spellings.
fn parse_bool(value: &str) -> Option<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "on" | "1" => Some(true),
        "false" | "off" | "0" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repository::pbtxt::parse_model_config;

    fn plan(text: &str, dir: &Path) -> Result<GpuPlan, String> {
        gpu_plan(&parse_model_config(text).unwrap().config, dir)
    }

    fn trt(params: &str) -> String {
        format!(
            r#"optimization {{ execution_accelerators {{ gpu_execution_accelerator: [ {{ name: "tensorrt" {params} }} ] }} }}"#
        )
    }

    #[test]
    fn no_optimization_block_is_an_empty_plan() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(
            plan("max_batch_size: 4", d.path()).unwrap(),
            GpuPlan::default()
        );
    }

    #[test]
    fn fp16_engine_with_cuda_graphs() {
        let d = tempfile::tempdir().unwrap();
        let text = r#"
optimization {
  execution_accelerators {
    gpu_execution_accelerator: [ {
      name: "tensorrt"
      parameters { key: "precision_mode" value: "FP16" }
      parameters { key: "max_workspace_size_bytes" value: "1073741824" }
      parameters { key: "trt_engine_cache_enable" value: "false" }
      parameters { key: "trt_engine_cache_path" value: "/tmp" }
    } ]
  }
  cuda { graphs: true graph_spec [ { batch_size: 8 }, { batch_size: 32 } ] }
}"#;
        let p = plan(text, d.path()).unwrap();
        assert_eq!(
            p.engine,
            Some(EnginePlan {
                precision: Precision::Fp16,
                calibration: None,
                max_workspace_bytes: Some(1 << 30),
                engine_cache: false,
            })
        );
        assert!(p.cuda_graphs);
        assert_eq!(p.graph_batch_sizes, vec![8, 32]);
        assert_eq!(p.ignored, vec!["tensorrt.trt_engine_cache_path"]);
        assert_eq!(p.describe(), "tensorrt FP16, CUDA graphs");
    }

    #[test]
    fn int8_needs_a_calibration_file_inside_the_model_directory() {
        let d = tempfile::tempdir().unwrap();
        let model = d.path().join("m");
        std::fs::create_dir(&model).unwrap();
        std::fs::write(model.join("calib.json"), b"{}").unwrap();
        std::fs::write(d.path().join("outside.json"), b"{}").unwrap();
        let int8 = |file: &str| {
            trt(&format!(
                r#"parameters {{ key: "precision_mode" value: "INT8" }} parameters {{ key: "int8_calibration_table_name" value: "{file}" }}"#
            ))
        };
        let p = plan(&int8("calib.json"), &model).unwrap();
        let e = p.engine.unwrap();
        assert_eq!(e.precision, Precision::Int8);
        assert!(e.calibration.unwrap().ends_with("calib.json"));

        let err = plan(&int8("../outside.json"), &model).unwrap_err();
        assert!(
            err.contains("int8_calibration_table_name") && err.contains("../outside.json"),
            "{err}"
        );
        let err = plan(&int8("/etc/passwd"), &model).unwrap_err();
        assert!(err.contains("/etc/passwd"), "{err}");
        let err = plan(&int8("missing.json"), &model).unwrap_err();
        assert!(
            err.contains("int8_calibration_table_name = 'missing.json'"),
            "{err}"
        );
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(d.path().join("outside.json"), model.join("link.json"))
                .unwrap();
            let err = plan(&int8("link.json"), &model).unwrap_err();
            assert!(err.contains("outside the model directory"), "{err}");
        }
        let err = plan(
            &trt(r#"parameters { key: "precision_mode" value: "INT8" }"#),
            &model,
        )
        .unwrap_err();
        assert!(
            err.contains("needs parameter int8_calibration_table_name"),
            "{err}"
        );
    }

    #[test]
    fn bad_values_name_key_and_value() {
        let d = tempfile::tempdir().unwrap();
        let err = plan(
            &trt(r#"parameters { key: "precision_mode" value: "FP8" }"#),
            d.path(),
        )
        .unwrap_err();
        assert!(err.contains("precision_mode = 'FP8'"), "{err}");
        assert!(err.contains("gpu_execution_accelerator[0]"), "{err}");
        let err = plan(
            &trt(r#"parameters { key: "max_workspace_size_bytes" value: "lots" }"#),
            d.path(),
        )
        .unwrap_err();
        assert!(err.contains("max_workspace_size_bytes = 'lots'"), "{err}");
        let err = plan(&trt(r#"parameters { key: "fp16" value: "1" }"#), d.path()).unwrap_err();
        assert!(err.contains("unknown parameter 'fp16'"), "{err}");
        let err = plan(
            r#"optimization { execution_accelerators { gpu_execution_accelerator: [ { name: "openvino" } ] } }"#,
            d.path(),
        )
        .unwrap_err();
        assert!(
            err.contains("unknown Execution Accelerator 'openvino'"),
            "{err}"
        );
        let twice = r#"optimization { execution_accelerators { gpu_execution_accelerator: [ { name: "tensorrt" }, { name: "tensorrt" } ] } }"#;
        assert!(plan(twice, d.path()).unwrap_err().contains("given twice"));
    }

    #[test]
    fn cuda_accelerator_is_known_and_its_options_ignored() {
        let d = tempfile::tempdir().unwrap();
        let p = plan(
            r#"optimization { execution_accelerators { gpu_execution_accelerator: [ { name: "cuda" parameters { key: "cudnn_conv_algo_search" value: "1" } } ] } }"#,
            d.path(),
        )
        .unwrap();
        assert_eq!(p.engine, None);
        assert_eq!(p.ignored, vec!["cuda.cudnn_conv_algo_search"]);
        assert_eq!(p.describe(), "");
    }

    #[test]
    fn bools_parse_like_triton() {
        for (s, b) in [
            ("true", true),
            ("1", true),
            ("ON", true),
            ("false", false),
            ("0", false),
        ] {
            assert_eq!(parse_bool(s), Some(b), "{s}");
        }
        assert_eq!(parse_bool("yes"), None);
    }
}
