//! The FP16 / INT8 acceptance criteria, checked on CPU with the emulation
//! (`engine::emulate`) against ONNX Runtime FP32:
//! - fraud_mlp v1 and v2: FP16 labels identical to ONNX Runtime on ≥ 99.9 % of the 2000
//!   held-out rows; INT8, calibrated on rows 0..400, agrees on ≥ 99 % of rows 400..2000;
//! - the tiny encoder: FP16 embeddings within 1e-2 relative error (L2, per row) and INT8
//!   embeddings with cosine similarity ≥ 0.99 per row, calibrated on different inputs.
//!
//! ONNX Runtime must be present (run `scripts/deps.sh test` first): a missing library fails
//! these tests, it never skips them.

use std::path::Path;

use switchyard::engine::calibrate::{self, CalibrationTable, Method};
use switchyard::engine::emulate::Emulator;
use switchyard::engine::ir::{Graph, Tensor};
use switchyard::engine::precision::{self, Precision};
use switchyard::engine::{self};
use switchyard::tensor::DataType;

mod common;
use common::{f32_bytes, f32s, heldout, i64_bytes, ort, tokens, wire, ROOT};

/// The emulated engine's labels (the graph's second output) on `rows` of the held-out set.
fn labels(emu: &Emulator, x: &[f32], rows: usize) -> Vec<i64> {
    let out = emu
        .run(&[("features", Tensor::f32(vec![rows, 30], x.to_vec()).unwrap())])
        .unwrap();
    out[1].as_i64s().unwrap()
}

fn agreement(a: &[i64], b: &[i64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).filter(|(x, y)| x == y).count() as f64 / a.len() as f64
}

fn fraud(version: u32) {
    let (rows, cols, x) = heldout();
    assert_eq!((rows, cols), (2000, 30));
    let path = Path::new(ROOT).join(format!("model_repository/fraud_mlp/{version}/model.onnx"));
    let out = ort(
        &path,
        vec![wire(
            "features",
            DataType::Fp32,
            &[rows, cols],
            f32_bytes(&x),
        )],
        &["label"],
    );
    let ort_labels: Vec<i64> = out[0]
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let graph = engine::compile(&std::fs::read(&path).unwrap()).unwrap();

    let fp16 = Emulator::new(&graph, precision::assign(&graph, Precision::Fp16), None).unwrap();
    assert_eq!(fp16.plan().count(Precision::Fp16), 3);
    let a16 = agreement(&labels(&fp16, &x, rows), &ort_labels);

    // INT8: calibrated on the first 400 rows, judged on the other 1600.
    let (calib, judged) = (400usize, rows - 400);
    let plan8 = precision::assign(&graph, Precision::Int8);
    assert_eq!(plan8.count(Precision::Int8), 3);
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
    assert_eq!(table.tensors.len(), 3, "{:?}", table.tensors.keys());
    // Through the on-disk format, as the INT8 engine will read it.
    let table = CalibrationTable::from_json(&table.to_json()).unwrap();
    let int8 = Emulator::new(&graph, plan8, Some(&table)).unwrap();
    let a8 = agreement(
        &labels(&int8, &x[calib * cols..], judged),
        &ort_labels[calib..],
    );
    println!(
        "fraud_mlp v{version}: FP16 label agreement {:.2} % ({rows} rows), INT8 {:.2} % ({judged} rows)",
        a16 * 100.0,
        a8 * 100.0
    );
    assert!(a16 >= 0.999, "v{version} FP16 agreement {a16}");
    assert!(a8 >= 0.99, "v{version} INT8 agreement {a8}");
}

#[test]
fn fraud_mlp_v1_fp16_and_int8_decisions_match_onnx_runtime() {
    fraud(1);
}

#[test]
fn fraud_mlp_v2_fp16_and_int8_decisions_match_onnx_runtime() {
    fraud(2);
}

fn encoder_inputs(batch: usize, seq: usize, seed: u64) -> Vec<(&'static str, Tensor)> {
    let (ids, mask) = tokens(batch, seq, seed);
    vec![
        ("input_ids", Tensor::i64(vec![batch, seq], ids).unwrap()),
        (
            "attention_mask",
            Tensor::i64(vec![batch, seq], mask).unwrap(),
        ),
    ]
}

fn embeddings(emu: &Emulator, inputs: &[(&str, Tensor)]) -> Vec<f32> {
    emu.run(inputs).unwrap()[1].as_f32s().unwrap().to_vec()
}

#[test]
fn tiny_encoder_fp16_and_int8_embeddings_match_onnx_runtime() {
    let path = Path::new(ROOT).join("tests/data/tiny_encoder.onnx");
    let graph: Graph = engine::compile(&std::fs::read(&path).unwrap()).unwrap();
    let (batch, seq, h) = (16usize, 12usize, 16usize);
    let (ids, mask) = tokens(batch, seq, 7);
    let out = ort(
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
        &["embedding"],
    );
    let want = f32s(&out[0]);
    assert_eq!(want.len(), batch * h);
    let inputs = encoder_inputs(batch, seq, 7);

    let fp16 = Emulator::new(&graph, precision::assign(&graph, Precision::Fp16), None).unwrap();
    let got16 = embeddings(&fp16, &inputs);
    // INT8 calibrated on 32 other sequences.
    let plan8 = precision::assign(&graph, Precision::Int8);
    assert_eq!(plan8.count(Precision::Int8), 7, "the 7 GEMMs with weights");
    let table =
        calibrate::calibrate(&graph, &plan8, &[encoder_inputs(32, seq, 99)], Method::Max).unwrap();
    let int8 = Emulator::new(&graph, plan8.clone(), Some(&table)).unwrap();
    let got8 = embeddings(&int8, &inputs);
    // The same with a 99.99th-percentile range (outliers saturate).
    let table_p = calibrate::calibrate(
        &graph,
        &plan8,
        &[encoder_inputs(32, seq, 99)],
        Method::Percentile(99.99),
    )
    .unwrap();
    let got8p = embeddings(
        &Emulator::new(&graph, plan8, Some(&table_p)).unwrap(),
        &inputs,
    );

    let (mut worst_rel16, mut worst_cos8, mut worst_cos16) = (0f64, 1f64, 1f64);
    let mut worst_cos8p = 1f64;
    for r in 0..batch {
        let w = &want[r * h..(r + 1) * h];
        let norm = |v: &[f32]| v.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
        let cos = |a: &[f32]| {
            a.iter()
                .zip(w)
                .map(|(&x, &y)| x as f64 * y as f64)
                .sum::<f64>()
                / (norm(a) * norm(w))
        };
        let g16 = &got16[r * h..(r + 1) * h];
        let diff: Vec<f32> = g16.iter().zip(w).map(|(a, b)| a - b).collect();
        worst_rel16 = worst_rel16.max(norm(&diff) / norm(w));
        worst_cos16 = worst_cos16.min(cos(g16));
        worst_cos8 = worst_cos8.min(cos(&got8[r * h..(r + 1) * h]));
        worst_cos8p = worst_cos8p.min(cos(&got8p[r * h..(r + 1) * h]));
    }
    println!(
        "tiny_encoder ({batch}×{seq}): FP16 worst relative L2 error {worst_rel16:.2e}, worst cosine {worst_cos16:.6}; INT8 worst cosine {worst_cos8:.6} (max), {worst_cos8p:.6} (99.99th percentile)"
    );
    assert!(worst_rel16 < 1e-2, "FP16 relative error {worst_rel16}");
    assert!(worst_cos8 >= 0.99, "INT8 cosine {worst_cos8}");
    assert!(
        worst_cos8p >= 0.99,
        "INT8 (percentile) cosine {worst_cos8p}"
    );
}
