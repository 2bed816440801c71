//! INT8 calibration: the FP32 reference runs over calibration inputs and records, for the
//! activation input (`A`) of every `Gemm` that [`super::precision`] puts in INT8, its largest
//! absolute value (and optionally a percentile of the absolute values). The INT8 engine
//! quantises that activation with `scale = amax / 127` ([`super::quant::scale_for`]).
//!
//! # On-disk format (version 2)
//! A JSON object, named in config.pbtxt by the tensorrt parameter
//! `int8_calibration_table_name` (resolved inside the model directory):
//! ```json
//! {
//!   "format": "switchyard-int8-calibration",
//!   "version": 2,
//!   "method": "max",            // or "percentile:99.99"
//!   "tensors": { "<ONNX value name>": { "amax": 3.25, "max_abs": 3.25, "quant_error": 0.012 } }
//! }
//! ```
//! `amax` is what the scale is computed from (the max-abs for `"max"`, the percentile
//! otherwise); `max_abs` is informational. `quant_error` (version 2, optional) is the relative
//! L2 error of quantising the tensor with that scale over the calibration data,
//! `‖x − dequant(quant(x))‖ / ‖x‖`: a GEMM whose activation loses more than
//! [`MAX_QUANT_ERROR`] stays in FP16 ([`super::precision::assign_with`]) — the long-tailed
//! GELU outputs of a BERT's feed-forward layers are the usual case. Unknown fields are
//! refused, `amax` must be finite and positive, and a reader of a newer `version` refuses the
//! file rather than guess; version 1 files (no `quant_error`) are read as they are.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::ir::{Graph, Op, Tensor};
use super::precision::{Precision, PrecisionPlan};
use super::{reference, EngineError};

/// The `format` field every table carries.
pub const FORMAT: &str = "switchyard-int8-calibration";
/// The table version this code writes; it reads this one and every older one.
pub const VERSION: u32 = 2;

/// The largest `quant_error` at which a GEMM's activation is quantised to INT8: 8 % relative
/// L2 error. Measured on all-MiniLM-L6-v2 (max calibration on 8 sentences, judged on 8 others,
/// `engine_bench --cpu`): the GELU outputs feeding the feed-forward down-projections lose
/// 5-23 %, the attention blocks' LayerNorm outputs feeding the up-projections 4-10 %, every
/// other GEMM input 2-5 %. Embedding cosine to ONNX Runtime FP32, worst of 8 rows, by
/// threshold: all INT8 0.978; 0.15 (4 GEMMs of 36 in FP16) 0.9928; 0.08 (7) 0.9952;
/// 0.05 (12) 0.9973. 0.08 keeps 29 of 36 GEMMs in INT8 with a margin over the 0.99 bar.
pub const MAX_QUANT_ERROR: f32 = 0.08;

/// Which statistic of |x| becomes `amax`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Method {
    /// The largest absolute value seen.
    Max,
    /// This percentile (0–100) of the absolute values seen; outliers beyond it saturate.
    Percentile(f64),
}

/// One tensor's calibration record.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorRange {
    /// The clipping range: `scale = amax / 127`.
    pub amax: f32,
    /// The largest absolute value seen (informational).
    pub max_abs: f32,
    /// Relative L2 error of quantising the calibration data with `amax` (version 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quant_error: Option<f32>,
}

/// Activation ranges by ONNX value name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CalibrationTable {
    pub format: String,
    pub version: u32,
    pub method: String,
    pub tensors: BTreeMap<String, TensorRange>,
}

/// Why a calibration table cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum CalibrationError {
    #[error("cannot read calibration table {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("calibration table is not valid JSON of the expected shape: {0}")]
    Json(#[from] serde_json::Error),
    #[error("calibration table: {0}")]
    Invalid(String),
}

impl CalibrationTable {
    /// The INT8 activation scale of value `name`, if the table has it.
    pub fn scale(&self, name: &str) -> Option<f32> {
        self.tensors
            .get(name)
            .map(|r| super::quant::scale_for(r.amax))
    }

    pub fn to_json(&self) -> String {
        // Serialising plain maps of strings and finite floats cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Parses and checks a table (format name, version, finite positive ranges).
    pub fn from_json(text: &str) -> Result<Self, CalibrationError> {
        let t: CalibrationTable = serde_json::from_str(text)?;
        if t.format != FORMAT {
            return Err(CalibrationError::Invalid(format!(
                "format is '{}', expected '{FORMAT}'",
                t.format
            )));
        }
        if t.version == 0 || t.version > VERSION {
            return Err(CalibrationError::Invalid(format!(
                "version {} is not supported (this build reads versions 1 to {VERSION})",
                t.version
            )));
        }
        for (name, r) in &t.tensors {
            if !(r.amax.is_finite() && r.amax > 0.0) {
                return Err(CalibrationError::Invalid(format!(
                    "tensor '{name}' has amax {}, it must be finite and > 0",
                    r.amax
                )));
            }
        }
        Ok(t)
    }

    pub fn load(path: &Path) -> Result<Self, CalibrationError> {
        let text = std::fs::read_to_string(path).map_err(|source| CalibrationError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_json(&text)
    }

    pub fn save(&self, path: &Path) -> Result<(), CalibrationError> {
        std::fs::write(path, self.to_json()).map_err(|source| CalibrationError::Io {
            path: path.display().to_string(),
            source,
        })
    }
}

/// The values whose ranges INT8 needs: input `A` of each INT8 `Gemm` in `plan`.
pub fn int8_activations(graph: &Graph, plan: &PrecisionPlan) -> Vec<usize> {
    let mut ids: Vec<usize> = graph
        .nodes
        .iter()
        .zip(&plan.nodes)
        .filter(|(n, p)| p.compute == Precision::Int8 && matches!(n.op, Op::Gemm(_)))
        .filter_map(|(n, _)| n.inputs.first().copied())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// Runs the FP32 reference on every batch of `batches` and builds the table for the INT8
/// GEMM inputs of `plan`. Every value of those tensors is kept until the end (for the
/// percentile and the quantisation error): fine for the few hundred rows a calibration set
/// holds, not for millions. A tensor that was all zeros gets `amax = 1` (any scale is exact).
pub fn calibrate(
    graph: &Graph,
    plan: &PrecisionPlan,
    batches: &[Vec<(&str, Tensor)>],
    method: Method,
) -> Result<CalibrationTable, EngineError> {
    if let Method::Percentile(p) = method {
        if !(p > 0.0 && p <= 100.0) {
            return Err(EngineError::Input(format!(
                "calibration percentile must be in (0, 100], got {p}"
            )));
        }
    }
    let wanted = int8_activations(graph, plan);
    let mut seen: HashMap<usize, Vec<f32>> = wanted.iter().map(|&v| (v, Vec::new())).collect();
    let mut max_abs: HashMap<usize, f32> = wanted.iter().map(|&v| (v, 0.0)).collect();
    let mut record = |id: usize, t: &Tensor| {
        if let (Some(m), Some(xs)) = (max_abs.get_mut(&id), t.as_f32s()) {
            for x in xs {
                *m = m.max(x.abs());
            }
            if let Some(all) = seen.get_mut(&id) {
                all.extend_from_slice(xs);
            }
        }
    };
    for inputs in batches {
        for (name, t) in inputs {
            if let Some(id) = graph.find(name) {
                record(id, t);
            }
        }
        reference::run_with(graph, inputs, |_, node, args| {
            let outs = reference::eval(&node.op, args)?;
            for (&o, t) in node.outputs.iter().zip(&outs) {
                record(o, t);
            }
            Ok(outs)
        })?;
    }
    let mut tensors = BTreeMap::new();
    for id in wanted {
        let m = max_abs.get(&id).copied().unwrap_or(0.0);
        let all = seen.get_mut(&id).map(std::mem::take).unwrap_or_default();
        let amax = match method {
            Method::Max => m,
            Method::Percentile(p) => percentile(all.iter().map(|x| x.abs()).collect(), p),
        };
        let amax = if amax.is_finite() && amax > 0.0 {
            amax
        } else {
            1.0
        };
        tensors.insert(
            graph.values[id].name.clone(),
            TensorRange {
                amax,
                max_abs: m,
                // A tensor with ±inf or NaN cannot be quantised: the error counts as 100 %.
                quant_error: Some(
                    Some(quant_error(&all, amax))
                        .filter(|e| e.is_finite())
                        .unwrap_or(1.0),
                ),
            },
        );
    }
    Ok(CalibrationTable {
        format: FORMAT.into(),
        version: VERSION,
        method: match method {
            Method::Max => "max".into(),
            Method::Percentile(p) => format!("percentile:{p}"),
        },
        tensors,
    })
}

/// `‖x − dequant(quant(x))‖ / ‖x‖` with the scale of `amax` (0 for an all-zero tensor).
pub fn quant_error(x: &[f32], amax: f32) -> f32 {
    let scale = super::quant::scale_for(amax);
    let (mut err, mut norm) = (0f64, 0f64);
    for &v in x {
        let d = v as f64 - super::quant::quantize(v, scale) as f64 * scale as f64;
        err += d * d;
        norm += v as f64 * v as f64;
    }
    if norm > 0.0 {
        (err / norm).sqrt() as f32
    } else {
        0.0
    }
}

/// The `p`-th percentile (nearest rank) of non-negative values; 0 for none.
fn percentile(mut v: Vec<f32>, p: f64) -> f32 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_unstable_by(|a, b| a.total_cmp(b));
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> CalibrationTable {
        CalibrationTable {
            format: FORMAT.into(),
            version: VERSION,
            method: "max".into(),
            tensors: [(
                "x".to_string(),
                TensorRange {
                    amax: 2.54,
                    max_abs: 2.54,
                    quant_error: Some(0.01),
                },
            )]
            .into_iter()
            .collect(),
        }
    }

    #[test]
    fn json_round_trip_and_scale() {
        let t = table();
        let back = CalibrationTable::from_json(&t.to_json()).unwrap();
        assert_eq!(back, t);
        assert!((back.scale("x").unwrap() - 0.02).abs() < 1e-7);
        assert_eq!(back.scale("y"), None);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("calibration.json");
        t.save(&path).unwrap();
        assert_eq!(CalibrationTable::load(&path).unwrap(), t);
    }

    #[test]
    fn quantisation_error_is_relative_l2() {
        // Values on the grid of amax 127 (scale 1) are exact.
        assert_eq!(quant_error(&[1.0, -3.0, 127.0], 127.0), 0.0);
        assert_eq!(quant_error(&[0.0, 0.0], 1.0), 0.0);
        // A long tail: one large value makes the scale coarse for all the small ones.
        let mut tail = vec![0.01f32; 1000];
        tail.push(100.0);
        let e = quant_error(&tail, 100.0);
        assert!(e > 0.0 && e < 0.01, "{e}");
        let small: Vec<f32> = (0..1000).map(|i| (i as f32 * 0.37).sin() * 0.05).collect();
        // Quantised with their own range they keep their shape; with the range of an
        // outlier 400 times larger (20 / 127 per step) they are almost all crushed to 0.
        let just_small = quant_error(&small, 0.05);
        assert!(
            quant_error(&small, 20.0) > 0.5,
            "{}",
            quant_error(&small, 20.0)
        );
        assert!(just_small < 0.01, "{just_small}");
    }

    #[test]
    fn bad_tables_are_refused_with_a_reason() {
        let t = table().to_json();
        for (text, needle) in [
            (t.replace("\"version\": 2", "\"version\": 3"), "version 3"),
            (t.replace("\"version\": 2", "\"version\": 0"), "version 0"),
            (t.replace(FORMAT, "other"), "format is 'other'"),
            (t.replace("\"amax\": 2.54", "\"amax\": -1.0"), "amax -1"),
            (
                t.replace("\"method\"", "\"extra\": 1, \"method\""),
                "unknown field",
            ),
            ("{".to_string(), "JSON"),
        ] {
            let err = CalibrationTable::from_json(&text).unwrap_err().to_string();
            assert!(err.contains(needle), "{needle}: {err}");
        }
        // A version 1 file (no quant_error) still reads.
        let v1 = t
            .replace("\"version\": 2", "\"version\": 1")
            .replace(",\n      \"quant_error\": 0.01", "");
        let old = CalibrationTable::from_json(&v1).unwrap();
        assert_eq!(old.tensors["x"].quant_error, None);
        let missing = CalibrationTable::load(Path::new("/nonexistent/calibration.json"));
        assert!(matches!(missing, Err(CalibrationError::Io { .. })));
    }

    #[test]
    fn the_table_named_in_config_pbtxt_loads() {
        use crate::repository::gpu::gpu_plan;
        use crate::repository::pbtxt::parse_model_config;
        let dir = tempfile::tempdir().unwrap();
        table().save(&dir.path().join("calibration.json")).unwrap();
        let text = r#"optimization { execution_accelerators { gpu_execution_accelerator: [ {
            name: "tensorrt"
            parameters { key: "precision_mode" value: "INT8" }
            parameters { key: "int8_calibration_table_name" value: "calibration.json" } } ] } }"#;
        let plan = gpu_plan(&parse_model_config(text).unwrap().config, dir.path()).unwrap();
        let path = plan.engine.unwrap().calibration.unwrap();
        assert_eq!(CalibrationTable::load(&path).unwrap(), table());
    }

    #[test]
    fn percentile_by_nearest_rank() {
        let v: Vec<f32> = (1..=100).map(|i| i as f32).collect();
        assert_eq!(percentile(v.clone(), 100.0), 100.0);
        assert_eq!(percentile(v.clone(), 99.0), 99.0);
        assert_eq!(percentile(v, 50.0), 50.0);
        assert_eq!(percentile(Vec::new(), 99.0), 0.0);
    }
}
