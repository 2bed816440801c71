//! `switchyard calibrate MODEL.onnx --input-data DATA.json [--method max|percentile:P]
//! [--batch N] --out calibration.json`: the INT8 calibration table a model's
//! `int8_calibration_table_name` names, made from the same `--input-data` file a
//! perf_analyzer user already has (`{"data": [{"<input>": {"content": [...], "shape": [...]}
//! or [...]}, ...]}`, one request per entry, shapes without the batch dim).
//!
//! It runs the FP32 reference of Switchyard's engine over the entries (stacked `--batch` at a
//! time), records the range and the quantisation error of every INT8 GEMM's activation, and
//! prints which GEMMs will stay in FP16 (`calibrate::MAX_QUANT_ERROR`). Offline: no runtime,
//! no server; `main.rs` dispatches here when the first argument is `calibrate`.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::Parser;

use super::calibrate::{self, Method, MAX_QUANT_ERROR};
use super::ir::{DType, Data, Graph, Tensor};
use super::precision::{self, Precision, Reason};

/// Make the INT8 calibration table of an ONNX model from perf_analyzer-style input data.
///
/// Exit codes: 0 done, 1 the table could not be written, 2 bad arguments or inputs.
#[derive(Debug, Clone, Parser)]
#[command(name = "calibrate", bin_name = "switchyard calibrate", version)]
pub struct CalibrateArgs {
    /// The ONNX model (the file the model's version directory serves).
    #[arg(value_name = "MODEL")]
    pub model: PathBuf,
    /// perf_analyzer `--input-data` JSON: representative requests.
    #[arg(long, value_name = "FILE")]
    pub input_data: PathBuf,
    /// `max` (largest |x| seen) or `percentile:P` (e.g. `percentile:99.99`).
    #[arg(long, default_value = "max")]
    pub method: String,
    /// Requests stacked into one batch of the reference run.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..))]
    pub batch: u16,
    /// Where to write the table (inside the model's directory, named by
    /// `int8_calibration_table_name`).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
}

fn method(s: &str) -> Result<Method, String> {
    if s == "max" {
        return Ok(Method::Max);
    }
    s.strip_prefix("percentile:")
        .and_then(|v| v.parse().ok())
        .map(Method::Percentile)
        .ok_or_else(|| format!("--method {s}: expected max or percentile:P"))
}

/// One entry's values for `name` as `dtype`: a `{"content": [...], "shape": [...]}` object
/// or a bare list (then the shape is its length).
fn entry_values(
    v: &serde_json::Value,
    name: &str,
    dtype: DType,
) -> Result<(Vec<usize>, Data), String> {
    let (content, shape) = match v {
        serde_json::Value::Array(a) => (a, None),
        serde_json::Value::Object(o) => (
            o.get("content")
                .and_then(|c| c.as_array())
                .ok_or_else(|| format!("input '{name}': no \"content\" list"))?,
            o.get("shape"),
        ),
        _ => return Err(format!("input '{name}': expected a list or an object")),
    };
    let shape: Vec<usize> = match shape {
        Some(s) => serde_json::from_value(s.clone())
            .map_err(|e| format!("input '{name}': bad \"shape\": {e}"))?,
        None => vec![content.len()],
    };
    let n: usize = shape.iter().product();
    if n != content.len() {
        return Err(format!(
            "input '{name}': shape {shape:?} holds {n} values, content has {}",
            content.len()
        ));
    }
    let bad = |i: usize| format!("input '{name}': value {i} is not a {dtype}");
    let data = match dtype {
        DType::F32 => Data::F32(
            content
                .iter()
                .enumerate()
                .map(|(i, x)| x.as_f64().map(|f| f as f32).ok_or_else(|| bad(i)))
                .collect::<Result<_, _>>()?,
        ),
        DType::I64 => Data::I64(
            content
                .iter()
                .enumerate()
                .map(|(i, x)| x.as_i64().ok_or_else(|| bad(i)))
                .collect::<Result<_, _>>()?,
        ),
        DType::I32 => Data::I32(
            content
                .iter()
                .enumerate()
                .map(|(i, x)| {
                    x.as_i64()
                        .and_then(|v| i32::try_from(v).ok())
                        .ok_or_else(|| bad(i))
                })
                .collect::<Result<_, _>>()?,
        ),
        DType::Bool => Data::Bool(
            content
                .iter()
                .enumerate()
                .map(|(i, x)| x.as_bool().ok_or_else(|| bad(i)))
                .collect::<Result<_, _>>()?,
        ),
        DType::F64 => return Err(format!("input '{name}': float64 inputs are not supported")),
    };
    Ok((shape, data))
}

fn concat(parts: Vec<Data>) -> Data {
    let mut it = parts.into_iter();
    let Some(mut first) = it.next() else {
        return Data::F32(Vec::new());
    };
    for p in it {
        match (&mut first, p) {
            (Data::F32(a), Data::F32(b)) => a.extend(b),
            (Data::I64(a), Data::I64(b)) => a.extend(b),
            (Data::I32(a), Data::I32(b)) => a.extend(b),
            (Data::Bool(a), Data::Bool(b)) => a.extend(b),
            (Data::F64(a), Data::F64(b)) => a.extend(b),
            _ => {}
        }
    }
    first
}

/// The input data as batches of at most `batch` requests each (every request of a batch
/// must have the same shapes; a change of shape starts a new batch).
pub fn batches(
    graph: &Graph,
    json: &str,
    batch: usize,
) -> Result<Vec<Vec<(String, Tensor)>>, String> {
    let v: serde_json::Value =
        serde_json::from_str(json).map_err(|e| format!("input data: {e}"))?;
    let entries = v
        .get("data")
        .and_then(|d| d.as_array())
        .ok_or("input data: no \"data\" list")?;
    if entries.is_empty() {
        return Err("input data: \"data\" is empty".into());
    }
    let inputs: Vec<(String, DType)> = graph
        .inputs
        .iter()
        .map(|&i| (graph.values[i].name.clone(), graph.values[i].dtype))
        .collect();
    let mut out = Vec::new();
    let mut pending: Vec<Vec<(Vec<usize>, Data)>> = Vec::new();
    let flush = |pending: &mut Vec<Vec<(Vec<usize>, Data)>>,
                 out: &mut Vec<Vec<(String, Tensor)>>|
     -> Result<(), String> {
        if pending.is_empty() {
            return Ok(());
        }
        let rows = pending.len();
        let mut named = Vec::new();
        for (k, (name, _)) in inputs.iter().enumerate() {
            let shape = pending[0][k].0.clone();
            let parts: Vec<Data> = pending
                .iter_mut()
                .map(|e| std::mem::replace(&mut e[k].1, Data::F32(Vec::new())))
                .collect();
            let mut full = vec![rows];
            full.extend(shape);
            named.push((name.clone(), Tensor::new(full, concat(parts))?));
        }
        pending.clear();
        out.push(named);
        Ok(())
    };
    for (i, e) in entries.iter().enumerate() {
        let mut values = Vec::new();
        for (name, dtype) in &inputs {
            let raw = e
                .get(name)
                .ok_or_else(|| format!("input data entry {i}: no input '{name}'"))?;
            values.push(entry_values(raw, name, *dtype).map_err(|m| format!("entry {i}: {m}"))?);
        }
        let same = pending
            .first()
            .is_some_and(|p| p.iter().zip(&values).all(|(a, b)| a.0 == b.0));
        if !pending.is_empty() && (!same || pending.len() >= batch) {
            flush(&mut pending, &mut out)?;
        }
        pending.push(values);
    }
    flush(&mut pending, &mut out)?;
    Ok(out)
}

/// Builds the table and the lines printed about it.
pub fn run(args: &CalibrateArgs) -> Result<(calibrate::CalibrationTable, Vec<String>), String> {
    let method = method(&args.method)?;
    let bytes = std::fs::read(&args.model)
        .map_err(|e| format!("cannot read {}: {e}", args.model.display()))?;
    let graph = super::compile(&bytes).map_err(|e| e.to_string())?;
    let json = std::fs::read_to_string(&args.input_data)
        .map_err(|e| format!("cannot read {}: {e}", args.input_data.display()))?;
    let owned = batches(&graph, &json, usize::from(args.batch))?;
    let feeds: Vec<Vec<(&str, Tensor)>> = owned
        .into_iter()
        .map(|b| {
            // The reference takes &str names; the graph owns them.
            b.into_iter()
                .map(|(n, t)| {
                    let name = graph
                        .inputs
                        .iter()
                        .map(|&i| graph.values[i].name.as_str())
                        .find(|g| *g == n)
                        .unwrap_or("");
                    (name, t)
                })
                .collect()
        })
        .collect();
    let plan = precision::assign(&graph, Precision::Int8);
    let table = calibrate::calibrate(&graph, &plan, &feeds, method).map_err(|e| e.to_string())?;
    let mut lines = vec![format!(
        "calibrated {} activations over {} batches ({method:?})",
        table.tensors.len(),
        feeds.len()
    )];
    for (name, r) in &table.tensors {
        lines.push(format!(
            "  {name}: amax {:.4}, quantisation error {:.2} %",
            r.amax,
            r.quant_error.unwrap_or(0.0) * 100.0
        ));
    }
    let final_plan = precision::assign_with(&graph, Precision::Int8, Some(&table));
    let fp16: Vec<&str> = graph
        .nodes
        .iter()
        .zip(&final_plan.nodes)
        .filter(|(_, p)| p.reason == Reason::Int8Inaccurate)
        .map(|(n, _)| n.name.as_str())
        .collect();
    lines.push(format!(
        "{} GEMMs in INT8; {} stay in FP16 (activation loses more than {:.0} %){}",
        final_plan.count(Precision::Int8),
        fp16.len(),
        MAX_QUANT_ERROR * 100.0,
        if fp16.is_empty() {
            String::new()
        } else {
            format!(": {}", fp16.join(", "))
        }
    ));
    Ok((table, lines))
}

/// The subcommand's entry point: `argv` starts with `calibrate`. Returns the exit code.
pub fn main(argv: impl IntoIterator<Item = OsString>) -> i32 {
    let args = CalibrateArgs::parse_from(argv);
    match run(&args) {
        Err(e) => {
            eprintln!("error: {e}");
            2
        }
        Ok((table, lines)) => {
            for l in lines {
                println!("{l}");
            }
            match table.save(&args.out) {
                Ok(()) => {
                    println!("wrote {}", args.out.display());
                    0
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    1
                }
            }
        }
    }
}
