//! Switchyard's engine on the GPU: accuracy against ONNX Runtime's answers and throughput,
//! for `benches/gpu/run.sh` (sections `engine-minilm-accuracy` and `engine-bench`).
//!
//! ```text
//! engine_bench --model M.onnx --data data.json --out DIR [--seq 128] [--batches 1,8,32,128]
//!              [--iters 100] [--precisions fp16,int8]
//! ```
//!
//! `data.json` (written by `benches/gpu/prepare.sh` with ONNX Runtime FP32 on the CPU):
//! `{"input_ids": [[..]], "attention_mask": [[..]], "token_type_ids": [[..]],
//!   "embedding": [[..]], "calibration": {"input_ids": [[..]], ...}}` — real token ids,
//! ORT's embeddings for them, and other sentences to calibrate INT8 with.
//!
//! Writes `DIR/engine_accuracy.csv` (precision, rows, worst relative L2 error, worst cosine
//! against ORT) and `DIR/engine_bench.csv` (precision, batch, seq, median and p90 latency of
//! one batch in ms, sequences/s), the batch timed from pinned host input to host output
//! through a captured CUDA graph, after 10 warm-up runs.
//!
//! `--write-widened PATH` (with `--widen-f16`) also writes the widened FP32 model there.
//!
//! `--widen-f16`: the model file stores its float initializers as FLOAT16 (how
//! `benches/gpu/prepare_engine.sh` fits MiniLM in a device call's carry); they are widened
//! back to FLOAT32 exactly before compiling, so the engine sees the FP32 model whose weights
//! are the half-rounded ones ORT answered for.
//!
//! Needs a GPU (exits with the reason otherwise) and NVRTC (`.deps/nvrtc/lib` or the loader
//! path).

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use prost::Message;

use tokio::time::Instant;

use switchyard::engine::calibrate::{self, Method};
use switchyard::engine::ir::Tensor;
use switchyard::engine::lower::lower;
use switchyard::engine::precision::{self, Precision};
use switchyard_kernels::gpu::{GpuDevice, GpuEngine, LoadOptions};

const INPUTS: [&str; 3] = ["input_ids", "attention_mask", "token_type_ids"];

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn fail(msg: String) -> ! {
    eprintln!("engine_bench: {msg}");
    std::process::exit(1)
}

fn rows_i64(v: &serde_json::Value, key: &str) -> Vec<Vec<i64>> {
    v.get(key)
        .and_then(|r| serde_json::from_value(r.clone()).ok())
        .unwrap_or_else(|| fail(format!("data.json lacks '{key}' as rows of integers")))
}

fn bytes(rows: &[Vec<i64>]) -> Vec<u8> {
    rows.iter()
        .flatten()
        .flat_map(|x| x.to_le_bytes())
        .collect()
}

fn f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// The model with every FLOAT16 initializer turned into the same values as FLOAT32.
fn widen_f16(bytes: &[u8]) -> Vec<u8> {
    use switchyard::proto::onnx::ModelProto;
    const FLOAT: i32 = 1;
    const FLOAT16: i32 = 10;
    let mut m =
        ModelProto::decode(bytes).unwrap_or_else(|e| fail(format!("not an ONNX model: {e}")));
    let mut widened = 0;
    for t in m.graph.iter_mut().flat_map(|g| g.initializer.iter_mut()) {
        if t.data_type != FLOAT16 {
            continue;
        }
        let halves: Vec<half::f16> = if t.raw_data.is_empty() {
            t.int32_data
                .iter()
                .map(|&b| half::f16::from_bits(b as u16))
                .collect()
        } else {
            t.raw_data
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]))
                .collect()
        };
        t.raw_data = halves
            .iter()
            .flat_map(|h| h.to_f32().to_le_bytes())
            .collect();
        t.int32_data.clear();
        t.data_type = FLOAT;
        widened += 1;
    }
    println!("engine_bench: widened {widened} FLOAT16 initializers to FLOAT32");
    m.encode_to_vec()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let model =
        PathBuf::from(arg(&args, "--model").unwrap_or_else(|| fail("--model is required".into())));
    let data_path = arg(&args, "--data").unwrap_or_else(|| fail("--data is required".into()));
    let out = PathBuf::from(arg(&args, "--out").unwrap_or_else(|| ".".into()));
    let seq: usize = arg(&args, "--seq")
        .and_then(|s| s.parse().ok())
        .unwrap_or(128);
    let iters: usize = arg(&args, "--iters")
        .and_then(|s| s.parse().ok())
        .unwrap_or(100);
    let batches: Vec<usize> = arg(&args, "--batches")
        .unwrap_or_else(|| "1,8,32,128".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let precisions: Vec<Precision> = arg(&args, "--precisions")
        .unwrap_or_else(|| "fp16,int8".into())
        .split(',')
        .map(|p| match p.trim() {
            "fp32" => Precision::Fp32,
            "fp16" => Precision::Fp16,
            "int8" => Precision::Int8,
            other => fail(format!("unknown precision {other}")),
        })
        .collect();

    // --calibration max | percentile:P (INT8 activation ranges; default max: on MiniLM the
    // percentiles clip the large activations BERT depends on, docs/decisions.md).
    let method = match arg(&args, "--calibration").as_deref().unwrap_or("max") {
        "max" => Method::Max,
        p => match p.strip_prefix("percentile:").and_then(|v| v.parse().ok()) {
            Some(v) => Method::Percentile(v),
            None => fail(format!("--calibration {p}: expected max or percentile:P")),
        },
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for lib in ["libnvrtc-builtins.so.13.0", "libnvrtc.so.13"] {
        let p = root.join(".deps/nvrtc/lib").join(lib);
        if p.is_file() {
            let _ = switchyard_kernels::nvrtc::preload_library(&p);
        }
    }
    // --cpu: accuracy only, on kernels::program_cpu (the kernels' semantics, no GPU): checks
    // the model and the whole pipeline on the developer machine before a device call.
    let cpu = args.iter().any(|a| a == "--cpu");
    let device = if cpu {
        None
    } else {
        Some(GpuDevice::new(0).unwrap_or_else(|e| fail(format!("no GPU: {e}"))))
    };
    let text =
        std::fs::read_to_string(&data_path).unwrap_or_else(|e| fail(format!("{data_path}: {e}")));
    let data: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| fail(format!("{data_path}: {e}")));
    let want: Vec<Vec<f32>> = data
        .get("embedding")
        .and_then(|r| serde_json::from_value(r.clone()).ok())
        .unwrap_or_else(|| fail("data.json lacks 'embedding'".into()));
    let feeds: HashMap<&str, Vec<Vec<i64>>> =
        INPUTS.iter().map(|n| (*n, rows_i64(&data, n))).collect();
    let n_rows = want.len();
    let data_seq = feeds["input_ids"].first().map_or(0, Vec::len);
    let calib = data
        .get("calibration")
        .unwrap_or_else(|| fail("data.json lacks 'calibration'".into()));
    let calib_feeds: Vec<(&str, Tensor)> = INPUTS
        .iter()
        .map(|n| {
            let rows = rows_i64(calib, n);
            let shape = vec![rows.len(), rows.first().map_or(0, Vec::len)];
            (
                *n,
                Tensor::i64(shape, rows.into_iter().flatten().collect())
                    .unwrap_or_else(|e| fail(e)),
            )
        })
        .collect();

    let mut bytes_model =
        std::fs::read(&model).unwrap_or_else(|e| fail(format!("{}: {e}", model.display())));
    if args.iter().any(|a| a == "--widen-f16") {
        bytes_model = widen_f16(&bytes_model);
        // For the server run that follows (benches/gpu/run.sh): the FP32 file it serves.
        if let Some(path) = arg(&args, "--write-widened") {
            std::fs::write(&path, &bytes_model).unwrap_or_else(|e| fail(format!("{path}: {e}")));
            println!("engine_bench: wrote {path}");
        }
    }
    let t = Instant::now();
    let graph = switchyard::engine::compile(&bytes_model).unwrap_or_else(|e| fail(e.to_string()));
    println!(
        "engine_bench: compiled {} in {:?}: {:?}",
        model.display(),
        t.elapsed(),
        graph.op_counts()
    );
    std::fs::create_dir_all(&out).unwrap_or_else(|e| fail(e.to_string()));
    let mut acc = std::fs::File::create(out.join("engine_accuracy.csv"))
        .unwrap_or_else(|e| fail(e.to_string()));
    let mut bench =
        std::fs::File::create(out.join("engine_bench.csv")).unwrap_or_else(|e| fail(e.to_string()));
    let _ = writeln!(acc, "precision,rows,seq,max_rel_l2_err,min_cosine");
    let _ = writeln!(
        bench,
        "engine,precision,batch,seq,median_ms,p90_ms,seq_per_s"
    );

    for &mode in &precisions {
        let table = (mode == Precision::Int8).then(|| {
            let t = Instant::now();
            let plan = precision::assign(&graph, mode);
            let table =
                calibrate::calibrate(&graph, &plan, std::slice::from_ref(&calib_feeds), method)
                    .unwrap_or_else(|e| fail(e.to_string()));
            println!("engine_bench: INT8 calibration in {:?}", t.elapsed());
            for (name, r) in &table.tensors {
                println!(
                    "engine_bench:   {name}: amax {:.3}, quantisation error {:.4}",
                    r.amax,
                    r.quant_error.unwrap_or(f32::NAN)
                );
            }
            table
        });
        // Accuracy: the data rows at their own sequence length.
        let shapes: Vec<(&str, Vec<usize>)> = INPUTS
            .iter()
            .map(|n| (*n, vec![n_rows, data_seq]))
            .collect();
        let p =
            lower(&graph, &shapes, mode, table.as_ref()).unwrap_or_else(|e| fail(e.to_string()));
        let in_bytes: Vec<Vec<u8>> = INPUTS.iter().map(|n| bytes(&feeds[n])).collect();
        let host: Vec<(&str, &[u8])> = INPUTS
            .iter()
            .copied()
            .zip(in_bytes.iter().map(Vec::as_slice))
            .collect();
        // The GPU executor's planner (no device needed) must accept every step.
        let fake = switchyard_kernels::gpu::plan::Memory {
            arena: 1 << 30,
            weights: (0..p.weights.len() as u64)
                .map(|i| (2 << 30) + i * (1 << 26))
                .collect(),
        };
        match switchyard_kernels::gpu::plan::plan_program(&p, &fake) {
            Ok(ops) => println!(
                "engine_bench: {mode:?} plans to {} device operations",
                ops.len()
            ),
            Err(e) => fail(format!(
                "the GPU executor refuses the {mode:?} program: {e}"
            )),
        }
        let t = Instant::now();
        let outs = match &device {
            None => switchyard_kernels::program_cpu::run(&p, &host).unwrap_or_else(|e| fail(e)),
            Some(device) => {
                let mut gpu = GpuEngine::new(device.clone(), p.arena_bytes)
                    .unwrap_or_else(|e| fail(e.to_string()));
                let mut prog = gpu
                    .load(&p, LoadOptions { cuda_graph: true })
                    .unwrap_or_else(|e| fail(e.to_string()));
                prog.run(&host).unwrap_or_else(|e| fail(e.to_string()))
            }
        };
        println!(
            "engine_bench: {mode:?} {} steps, arena {} B, ran in {:?}",
            p.steps.len(),
            p.arena_bytes,
            t.elapsed()
        );
        let got = f32s(&outs[0]);
        let h = want.first().map_or(0, Vec::len);
        let (mut worst_rel, mut worst_cos) = (0f64, 1f64);
        for (r, w) in want.iter().enumerate() {
            let g = &got[r * h..(r + 1) * h];
            let dot: f64 = g.iter().zip(w).map(|(a, b)| *a as f64 * *b as f64).sum();
            let ng: f64 = g.iter().map(|a| (*a as f64).powi(2)).sum::<f64>().sqrt();
            let nw: f64 = w.iter().map(|a| (*a as f64).powi(2)).sum::<f64>().sqrt();
            let diff: f64 = g
                .iter()
                .zip(w)
                .map(|(a, b)| (*a as f64 - *b as f64).powi(2))
                .sum::<f64>()
                .sqrt();
            worst_rel = worst_rel.max(diff / nw.max(1e-12));
            worst_cos = worst_cos.min(dot / (ng * nw).max(1e-12));
        }
        println!("engine_bench: {mode:?} accuracy over {n_rows} rows: max rel L2 err {worst_rel:.3e}, min cosine {worst_cos:.6}");
        let _ = writeln!(
            acc,
            "{},{n_rows},{data_seq},{worst_rel:.6e},{worst_cos:.6}",
            mode.as_str()
        );
        // Throughput: every batch at `seq`, ids cycled from the data rows.
        let Some(device) = &device else { continue };
        for &b in &batches {
            let shapes: Vec<(&str, Vec<usize>)> =
                INPUTS.iter().map(|n| (*n, vec![b, seq])).collect();
            let p = lower(&graph, &shapes, mode, table.as_ref())
                .unwrap_or_else(|e| fail(e.to_string()));
            let mut gpu = GpuEngine::new(device.clone(), p.arena_bytes)
                .unwrap_or_else(|e| fail(e.to_string()));
            let mut prog = gpu
                .load(&p, LoadOptions { cuda_graph: true })
                .unwrap_or_else(|e| fail(e.to_string()));
            let batch_in: Vec<Vec<u8>> = INPUTS
                .iter()
                .map(|n| {
                    let rows: Vec<Vec<i64>> = (0..b)
                        .map(|i| {
                            let src = &feeds[n][i % n_rows];
                            (0..seq).map(|j| src.get(j).copied().unwrap_or(0)).collect()
                        })
                        .collect();
                    bytes(&rows)
                })
                .collect();
            let host: Vec<(&str, &[u8])> = INPUTS
                .iter()
                .copied()
                .zip(batch_in.iter().map(Vec::as_slice))
                .collect();
            for _ in 0..10 {
                prog.run(&host).unwrap_or_else(|e| fail(e.to_string()));
            }
            let mut times: Vec<f64> = (0..iters)
                .map(|_| {
                    let t = Instant::now();
                    prog.run(&host).unwrap_or_else(|e| fail(e.to_string()));
                    t.elapsed().as_secs_f64() * 1e3
                })
                .collect();
            times.sort_by(f64::total_cmp);
            let med = times[times.len() / 2];
            let p90 = times[(times.len() * 9 / 10).min(times.len() - 1)];
            println!("engine_bench: {mode:?} batch {b} seq {seq}: median {med:.3} ms, p90 {p90:.3} ms, {:.0} seq/s", b as f64 / med * 1e3);
            let _ = writeln!(
                bench,
                "switchyard,{},{b},{seq},{med:.4},{p90:.4},{:.1}",
                mode.as_str(),
                b as f64 / med * 1e3
            );
        }
    }
}
