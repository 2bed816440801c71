//! The lowering (`engine::lower`) run by the CPU runner of programs (`kernels::program_cpu`,
//! the kernels' semantics step by step) against ONNX Runtime (FP32) and against the FP16 /
//! INT8 emulation, on fraud_mlp and the tiny encoder at several batch and sequence sizes.
//! What the GPU executor will run is exactly these programs: a wrong stride, offset, layout,
//! cast or arena overlap fails here. ONNX Runtime must be present (`scripts/deps.sh test`).

use std::path::Path;

use switchyard::engine::calibrate::{self, CalibrationTable, Method};
use switchyard::engine::emulate::Emulator;
use switchyard::engine::ir::{Graph, Tensor};
use switchyard::engine::lower::lower;
use switchyard::engine::precision::{self, Precision};
use switchyard::engine::{self, EngineError};
use switchyard::tensor::DataType;
use switchyard_kernels::program::{Elem, Program, Step};
use switchyard_kernels::program_cpu;

mod common;
use common::{f32_bytes, f32s, heldout, i64_bytes, i64s, ort, tokens, wire, ROOT};

/// The GPU executor's planner (pure: no device) accepts every step of `p` — element types,
/// epilogues, layouts — at fake, aligned addresses, so a program the CPU runner answers
/// correctly is also one the GPU will run rather than refuse at load.
fn gpu_accepts(p: &Program) {
    let mem = switchyard_kernels::gpu::plan::Memory {
        arena: 1 << 30,
        weights: (0..p.weights.len() as u64)
            .map(|i| (2 << 30) + i * (1 << 24))
            .collect(),
    };
    if let Err(e) = switchyard_kernels::gpu::plan::plan_program(p, &mem) {
        panic!("the GPU executor refuses this program: {e}");
    }
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn output<'p>(p: &'p Program, outs: &'p [Vec<u8>], name: &str) -> &'p [u8] {
    let i = p.outputs.iter().position(|b| b.name == name).unwrap();
    &outs[i]
}

fn fraud_graph(version: u32) -> (std::path::PathBuf, Graph) {
    let path = Path::new(ROOT).join(format!("model_repository/fraud_mlp/{version}/model.onnx"));
    let g = engine::compile(&std::fs::read(&path).unwrap()).unwrap();
    (path, g)
}

fn fraud_fp32(version: u32) {
    let (path, graph) = fraud_graph(version);
    let (_, cols, x) = heldout();
    for rows in [1usize, 7, 300] {
        let xs = &x[..rows * cols];
        let p = lower(
            &graph,
            &[("features", vec![rows, cols])],
            Precision::Fp32,
            None,
        )
        .unwrap();
        gpu_accepts(&p);
        assert!(p.steps.iter().any(|s| matches!(s, Step::Gemm(_))));
        let outs = program_cpu::run(&p, &[("features", &f32_bytes(xs))]).unwrap();
        let want = ort(
            &path,
            vec![wire(
                "features",
                DataType::Fp32,
                &[rows, cols],
                f32_bytes(xs),
            )],
            &["probabilities", "label"],
        );
        let d = max_abs_diff(&f32s(output(&p, &outs, "probabilities")), &f32s(&want[0]));
        assert!(
            d < 1e-5,
            "v{version} batch {rows}: probabilities differ by {d}"
        );
        assert_eq!(
            i64s(output(&p, &outs, "label")),
            i64s(&want[1]),
            "v{version} batch {rows}"
        );
        println!(
            "fraud_mlp v{version} FP32 batch {rows}: {} steps, arena {} B, max abs diff {d:e}",
            p.steps.len(),
            p.arena_bytes
        );
    }
}

#[test]
fn fraud_mlp_fp32_programs_match_onnx_runtime() {
    fraud_fp32(1);
    fraud_fp32(2);
}

/// FP16 and INT8 programs against the emulation (the numerical contract) and ONNX Runtime.
#[test]
fn fraud_mlp_fp16_and_int8_programs_match_the_emulation() {
    let (rows, cols, x) = heldout();
    for version in [1u32, 2] {
        let (path, graph) = fraud_graph(version);
        let want = ort(
            &path,
            vec![wire(
                "features",
                DataType::Fp32,
                &[rows, cols],
                f32_bytes(&x),
            )],
            &["label"],
        );
        let ort_labels = i64s(&want[0]);
        let calib = 400usize;
        let plan8 = precision::assign(&graph, Precision::Int8);
        let table = calibrate::calibrate(
            &graph,
            &plan8,
            &[vec![(
                "features",
                Tensor::f32(vec![calib, cols], x[..calib * cols].to_vec()).unwrap(),
            )]],
            Method::Max,
        )
        .unwrap();
        for (mode, table, min_agree) in [
            (Precision::Fp16, None, 0.999),
            (Precision::Int8, Some(&table), 0.99),
        ] {
            let p = lower(&graph, &[("features", vec![rows, cols])], mode, table).unwrap();
            gpu_accepts(&p);
            let kinds: Vec<&str> = p.steps.iter().map(|s| s.kind()).collect();
            match mode {
                Precision::Int8 => {
                    assert_eq!(kinds.iter().filter(|k| **k == "gemm_int8").count(), 3)
                }
                _ => assert!(p
                    .steps
                    .iter()
                    .any(|s| matches!(s, Step::Gemm(g) if g.compute == Elem::F16))),
            }
            let outs = program_cpu::run(&p, &[("features", &f32_bytes(&x))]).unwrap();
            let emu =
                Emulator::new(&graph, precision::assign_with(&graph, mode, table), table).unwrap();
            let e = emu
                .run(&[(
                    "features",
                    Tensor::f32(vec![rows, cols], x.clone()).unwrap(),
                )])
                .unwrap();
            let probs = f32s(output(&p, &outs, "probabilities"));
            let d = max_abs_diff(&probs, e[0].as_f32s().unwrap());
            // Same roundings as the emulation; only the order of f32 sums differs.
            assert!(d < 2e-3, "v{version} {mode:?}: {d} from the emulation");
            let labels = i64s(output(&p, &outs, "label"));
            let agree = labels
                .iter()
                .zip(&ort_labels)
                .filter(|(a, b)| a == b)
                .count() as f64
                / rows as f64;
            println!("fraud_mlp v{version} {mode:?}: {d:e} from the emulation, labels {:.2} % as ONNX Runtime", agree * 100.0);
            assert!(agree >= min_agree, "v{version} {mode:?}: {agree}");
        }
    }
}

fn encoder() -> (std::path::PathBuf, Graph) {
    let path = Path::new(ROOT).join("tests/data/tiny_encoder.onnx");
    let g = engine::compile(&std::fs::read(&path).unwrap()).unwrap();
    (path, g)
}

#[test]
fn tiny_encoder_programs_match_onnx_runtime_and_the_emulation() {
    let (path, graph) = encoder();
    for (batch, seq) in [(1usize, 4usize), (3, 9), (8, 16)] {
        let (ids, mask) = tokens(batch, seq, 11);
        let shapes = [
            ("input_ids", vec![batch, seq]),
            ("attention_mask", vec![batch, seq]),
        ];
        let inputs = [
            ("input_ids", &i64_bytes(&ids)[..]),
            ("attention_mask", &i64_bytes(&mask)[..]),
        ];
        let want = ort(
            &path,
            vec![
                wire("input_ids", DataType::Int64, &[batch, seq], i64_bytes(&ids)),
                wire(
                    "attention_mask",
                    DataType::Int64,
                    &[batch, seq],
                    i64_bytes(&mask),
                ),
            ],
            &["last_hidden_state", "embedding"],
        );
        let p = lower(&graph, &shapes, Precision::Fp32, None).unwrap();
        gpu_accepts(&p);
        let outs = program_cpu::run(&p, &inputs).unwrap();
        let dh = max_abs_diff(
            &f32s(output(&p, &outs, "last_hidden_state")),
            &f32s(&want[0]),
        );
        let de = max_abs_diff(&f32s(output(&p, &outs, "embedding")), &f32s(&want[1]));
        println!("tiny encoder FP32 {batch}x{seq}: {} steps, arena {} B, hidden {dh:e}, embedding {de:e}", p.steps.len(), p.arena_bytes);
        assert!(dh < 1e-4 && de < 1e-4, "{batch}x{seq}: {dh} {de}");
        // The fused attention and residual layer norms are single steps.
        assert_eq!(
            p.steps.iter().filter(|s| s.kind() == "attention").count(),
            1
        );
        let residual_ln = p
            .steps
            .iter()
            .filter(|s| {
                matches!(
                    s,
                    Step::LayerNorm {
                        residual: Some(_),
                        ..
                    }
                )
            })
            .count();
        // The two residual adds, and (at concrete shapes) the embeddings' last add, whose
        // token-type term has the same shape as the sum before it.
        assert_eq!(residual_ln, 3);
        // The position ids only depend on the shape: folded, no Shape step is left.
        assert!(p
            .index_checks
            .iter()
            .any(|c| c.input == "input_ids" && c.bound == 50));

        let tin = [
            (
                "input_ids",
                Tensor::i64(vec![batch, seq], ids.clone()).unwrap(),
            ),
            (
                "attention_mask",
                Tensor::i64(vec![batch, seq], mask.clone()).unwrap(),
            ),
        ];
        let p16 = lower(&graph, &shapes, Precision::Fp16, None).unwrap();
        gpu_accepts(&p16);
        let o16 = program_cpu::run(&p16, &inputs).unwrap();
        let emu = Emulator::new(&graph, precision::assign(&graph, Precision::Fp16), None).unwrap();
        let e = emu.run(&tin).unwrap();
        let d16 = max_abs_diff(
            &f32s(output(&p16, &o16, "embedding")),
            e[1].as_f32s().unwrap(),
        );
        let rel = max_abs_diff(&f32s(output(&p16, &o16, "embedding")), &f32s(&want[1]));
        println!("tiny encoder FP16 {batch}x{seq}: {d16:e} from the emulation, {rel:e} from ONNX Runtime");
        assert!(
            d16 < 5e-3,
            "{batch}x{seq}: FP16 program {d16} from the emulation"
        );
        assert!(
            rel < 1e-2,
            "{batch}x{seq}: FP16 program {rel} from ONNX Runtime"
        );
    }
}

#[test]
fn tiny_encoder_int8_program_matches_the_emulation() {
    let (_, graph) = encoder();
    let (batch, seq) = (4usize, 10usize);
    let plan8 = precision::assign(&graph, Precision::Int8);
    let calib: Vec<Vec<(&str, Tensor)>> = (0..4)
        .map(|s| {
            let (ids, mask) = tokens(8, seq, 100 + s);
            vec![
                ("input_ids", Tensor::i64(vec![8, seq], ids).unwrap()),
                ("attention_mask", Tensor::i64(vec![8, seq], mask).unwrap()),
            ]
        })
        .collect();
    let table = calibrate::calibrate(&graph, &plan8, &calib, Method::Max).unwrap();
    let table = CalibrationTable::from_json(&table.to_json()).unwrap();
    let (ids, mask) = tokens(batch, seq, 5);
    let shapes = [
        ("input_ids", vec![batch, seq]),
        ("attention_mask", vec![batch, seq]),
    ];
    let p = lower(&graph, &shapes, Precision::Int8, Some(&table)).unwrap();
    gpu_accepts(&p);
    assert_eq!(
        p.steps.iter().filter(|s| s.kind() == "gemm_int8").count(),
        7
    );
    let outs = program_cpu::run(
        &p,
        &[
            ("input_ids", &i64_bytes(&ids)),
            ("attention_mask", &i64_bytes(&mask)),
        ],
    )
    .unwrap();
    let emu = Emulator::new(
        &graph,
        precision::assign_with(&graph, Precision::Int8, Some(&table)),
        Some(&table),
    )
    .unwrap();
    let e = emu
        .run(&[
            ("input_ids", Tensor::i64(vec![batch, seq], ids).unwrap()),
            (
                "attention_mask",
                Tensor::i64(vec![batch, seq], mask).unwrap(),
            ),
        ])
        .unwrap();
    let d = max_abs_diff(
        &f32s(output(&p, &outs, "embedding")),
        e[1].as_f32s().unwrap(),
    );
    println!("tiny encoder INT8 {batch}x{seq}: {d:e} from the emulation");
    assert!(d < 5e-3, "INT8 program {d} from the emulation");
}

#[test]
fn bad_ids_and_shapes_are_errors_not_garbage() {
    let (_, graph) = encoder();
    let shapes = [
        ("input_ids", vec![1usize, 3]),
        ("attention_mask", vec![1, 3]),
    ];
    let p = lower(&graph, &shapes, Precision::Fp32, None).unwrap();
    gpu_accepts(&p);
    let e = program_cpu::run(
        &p,
        &[
            ("input_ids", &i64_bytes(&[1, 50, 2])),
            ("attention_mask", &i64_bytes(&[1, 1, 1])),
        ],
    )
    .unwrap_err();
    assert!(e.contains("index 50 is out of range"), "{e}");
    // A shape the model does not accept.
    let (_, fraud) = fraud_graph(1);
    let e = lower(&fraud, &[("features", vec![2, 29])], Precision::Fp32, None).unwrap_err();
    assert!(matches!(e, EngineError::Input(_)), "{e}");
    let e = lower(&fraud, &[], Precision::Fp32, None).unwrap_err();
    assert!(e.to_string().contains("no shape given"), "{e}");
}

#[test]
fn arena_reuses_memory_and_never_overlaps_live_buffers() {
    let (_, graph) = encoder();
    let shapes = [
        ("input_ids", vec![8usize, 16]),
        ("attention_mask", vec![8, 16]),
    ];
    let p = lower(&graph, &shapes, Precision::Fp32, None).unwrap();
    gpu_accepts(&p);
    p.validate().unwrap();
    // Sum of every arena buffer against the arena: reuse makes it smaller.
    let mut total = 0usize;
    let mut steps = p.steps.clone();
    let mut seen = std::collections::HashSet::new();
    for s in &mut steps {
        s.for_each_buf(|b, _| {
            if let switchyard_kernels::program::Loc::Arena(o) = b.loc {
                if seen.insert((o, b.len, b.elem)) {
                    total += b.bytes();
                }
            }
        });
    }
    println!("arena {} B for {total} B of buffers", p.arena_bytes);
    assert!(
        p.arena_bytes < total,
        "no reuse: {} vs {total}",
        p.arena_bytes
    );
}

/// A BERT exported by PyTorch exactly as the MiniLM benchmark exports all-MiniLM-L6-v2
/// (`tests/data/tiny_bert_torch.onnx`, `scripts/gen_tiny_bert.py`): its mask subgraph folds
/// at concrete shapes, its attention fuses there, and the programs answer as ONNX Runtime.
#[test]
fn torch_exported_bert_programs_match_onnx_runtime() {
    let path = Path::new(ROOT).join("tests/data/tiny_bert_torch.onnx");
    let graph = engine::compile(&std::fs::read(&path).unwrap()).unwrap();
    for (batch, seq) in [(1usize, 4usize), (3, 9), (4, 16)] {
        let (ids, mask) = tokens(batch, seq, 21);
        let ids: Vec<i64> = ids.iter().map(|i| i * 2 % 100).collect();
        let types = vec![0i64; batch * seq];
        let shapes = [
            ("input_ids", vec![batch, seq]),
            ("attention_mask", vec![batch, seq]),
            ("token_type_ids", vec![batch, seq]),
        ];
        let (ib, mb, tb) = (i64_bytes(&ids), i64_bytes(&mask), i64_bytes(&types));
        let inputs = [
            ("input_ids", &ib[..]),
            ("attention_mask", &mb[..]),
            ("token_type_ids", &tb[..]),
        ];
        let want = ort(
            &path,
            vec![
                wire("input_ids", DataType::Int64, &[batch, seq], ib.clone()),
                wire("attention_mask", DataType::Int64, &[batch, seq], mb.clone()),
                wire("token_type_ids", DataType::Int64, &[batch, seq], tb.clone()),
            ],
            &["embedding"],
        );
        let want = f32s(&want[0]);
        for (mode, tol) in [(Precision::Fp32, 1e-5f32), (Precision::Fp16, 1e-2)] {
            let p = lower(&graph, &shapes, mode, None).unwrap();
            gpu_accepts(&p);
            assert_eq!(
                p.steps.iter().filter(|s| s.kind() == "attention").count(),
                2
            );
            let got = f32s(&program_cpu::run(&p, &inputs).unwrap()[0]);
            // Relative L2 error per row, the measure for embeddings.
            let h = want.len() / batch;
            let worst = (0..batch)
                .map(|r| {
                    let (g, w) = (&got[r * h..(r + 1) * h], &want[r * h..(r + 1) * h]);
                    let d: f32 = g
                        .iter()
                        .zip(w)
                        .map(|(a, b)| (a - b) * (a - b))
                        .sum::<f32>()
                        .sqrt();
                    d / w.iter().map(|b| b * b).sum::<f32>().sqrt()
                })
                .fold(0f32, f32::max);
            println!(
                "tiny torch BERT {mode:?} {batch}x{seq}: {} steps, worst relative error {worst:e}",
                p.steps.len()
            );
            assert!(worst < tol, "{mode:?} {batch}x{seq}: {worst}");
        }
    }
}

/// A GEMM whose activation calibration measured as too lossy in INT8 stays in FP16.
#[test]
fn int8_gemms_with_lossy_activations_stay_in_fp16() {
    let (_, graph) = fraud_graph(1);
    let (_, cols, x) = heldout();
    let plan8 = precision::assign(&graph, Precision::Int8);
    let mut table = calibrate::calibrate(
        &graph,
        &plan8,
        &[vec![(
            "features",
            Tensor::f32(vec![400, cols], x[..400 * cols].to_vec()).unwrap(),
        )]],
        Method::Max,
    )
    .unwrap();
    assert!(table.tensors.values().all(|r| r
        .quant_error
        .is_some_and(|e| e < calibrate::MAX_QUANT_ERROR)));
    let shapes = [("features", vec![4, cols])];
    let all = lower(&graph, &shapes, Precision::Int8, Some(&table)).unwrap();
    assert_eq!(
        all.steps.iter().filter(|s| s.kind() == "gemm_int8").count(),
        3
    );
    // Mark the first GEMM's input as lossy: that GEMM alone goes back to FP16.
    let first = table.tensors.keys().next().unwrap().clone();
    table.tensors.get_mut(&first).unwrap().quant_error = Some(0.5);
    let p = lower(&graph, &shapes, Precision::Int8, Some(&table)).unwrap();
    gpu_accepts(&p);
    assert_eq!(
        p.steps.iter().filter(|s| s.kind() == "gemm_int8").count(),
        2
    );
    assert!(p
        .steps
        .iter()
        .any(|s| matches!(s, Step::Gemm(g) if g.compute == Elem::F16)));
    let plan = precision::assign_with(&graph, Precision::Int8, Some(&table));
    assert_eq!(plan.count(Precision::Int8), 2);
    assert!(plan
        .nodes
        .iter()
        .any(|n| n.reason == precision::Reason::Int8Inaccurate));
}
