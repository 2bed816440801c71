//! Models through the engine (import → fold → fuse → FP32 reference) against ONNX Runtime:
//! fraud_mlp v1 and v2 on the 2000-row held-out set, and a tiny BERT-style encoder layer
//! (`tests/data/tiny_encoder.onnx`, from `scripts/gen_engine_test_models.py`). ONNX Runtime
//! must be present (run `scripts/deps.sh test` first): a missing library fails these tests,
//! it never skips them.

use std::path::{Path, PathBuf};

use prost::Message;
use switchyard::engine::ir::{Data, Tensor};
use switchyard::engine::{self, reference, EngineError};
use switchyard::executor::onnx::{init_runtime, OnnxEngine};
use switchyard::executor::Engine;
use switchyard::proto::onnx::ModelProto;
use switchyard::tensor::{DataType, NamedTensor, Tensor as WireTensor};

mod common;
use common::{ort_library, read_npy_f32, ROOT};

fn model_path(version: u32) -> PathBuf {
    Path::new(ROOT).join(format!("model_repository/fraud_mlp/{version}/model.onnx"))
}

/// ONNX Runtime's (probabilities, labels).
fn run_ort(path: &Path, rows: usize, cols: usize, x: &[f32]) -> (Vec<f32>, Vec<i64>) {
    init_runtime(&ort_library()).expect("ONNX Runtime must load for this test");
    let mut session = OnnxEngine::load(path, 1).unwrap();
    let input = NamedTensor {
        name: "features".into(),
        tensor: WireTensor {
            dtype: DataType::Fp32,
            shape: vec![rows as i64, cols as i64],
            data: x
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect::<Vec<u8>>()
                .into(),
        },
    };
    let out = session
        .execute(&[input], &["probabilities".into(), "label".into()])
        .unwrap();
    let probs = &out.tensors[0].tensor;
    let labels = &out.tensors[1].tensor;
    assert_eq!(probs.shape, vec![rows as i64, 2]);
    assert_eq!(labels.shape, vec![rows as i64, 1]);
    let p = probs
        .data
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let l = labels
        .data
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
        .collect();
    (p, l)
}

fn run_engine(
    graph: &engine::ir::Graph,
    rows: usize,
    cols: usize,
    x: &[f32],
) -> (Vec<f32>, Vec<i64>) {
    let input = Tensor::f32(vec![rows, cols], x.to_vec()).unwrap();
    let mut out = reference::run(graph, &[("features", input)]).unwrap();
    let labels = out.pop().unwrap();
    let probs = out.pop().unwrap();
    assert_eq!(probs.shape, vec![rows, 2]);
    assert_eq!(labels.shape, vec![rows, 1]);
    let Data::F32(p) = probs.data else {
        panic!("probabilities are not float32")
    };
    let Data::I64(l) = labels.data else {
        panic!("labels are not int64")
    };
    (p, l)
}

fn compare(version: u32) {
    let (rows, cols, x) =
        read_npy_f32(&Path::new(ROOT).join("tests/python/data/fraud_heldout.npy"));
    assert_eq!((rows, cols), (2000, 30));
    let path = model_path(version);
    let bytes = std::fs::read(&path).unwrap();
    let (ort_p, ort_l) = run_ort(&path, rows, cols, &x);

    let imported = engine::import::import_model(&bytes).unwrap();
    let compiled = engine::compile(&bytes).unwrap();
    // Three MatMul + Add [+ Relu | Sigmoid] layers, each one fused GEMM.
    assert_eq!(
        compiled.op_counts().get("Gemm"),
        Some(&3),
        "{:?}",
        compiled.op_counts()
    );
    assert_eq!(compiled.op_counts().get("MatMul"), None);
    assert_eq!(compiled.op_counts().get("Relu"), None);
    assert_eq!(compiled.op_counts().get("Sigmoid"), None);

    for (what, graph) in [("imported", &imported), ("compiled", &compiled)] {
        let (p, l) = run_engine(graph, rows, cols, &x);
        let max_err = p
            .iter()
            .zip(&ort_p)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        let label_diff = l.iter().zip(&ort_l).filter(|(a, b)| a != b).count();
        println!("fraud_mlp v{version} {what}: max |p - p_ort| = {max_err:e}, labels differing: {label_diff}/{rows}");
        assert!(
            max_err <= 1e-5,
            "v{version} {what}: probabilities differ by {max_err}"
        );
        assert_eq!(label_diff, 0, "v{version} {what}: labels differ");
    }
}

#[test]
fn fraud_mlp_v1_matches_onnx_runtime() {
    compare(1);
}

#[test]
fn fraud_mlp_v2_matches_onnx_runtime() {
    compare(2);
}

#[test]
fn fraud_mlp_label_shape_is_inferred_symbolically() {
    use switchyard::engine::ir::Dim;
    let g = engine::compile(&std::fs::read(model_path(1)).unwrap()).unwrap();
    let batch = Dim::Sym("batch".into());
    let shapes: Vec<_> = g
        .outputs
        .iter()
        .map(|&o| g.values[o].shape.clone())
        .collect();
    assert_eq!(shapes[0], Some(vec![batch.clone(), Dim::Known(2)]));
    assert_eq!(shapes[1], Some(vec![batch, Dim::Known(1)]));
    let mut bound = g.clone();
    let sizes = [("batch".to_string(), 8usize)].into_iter().collect();
    engine::infer::bind_symbols(&mut bound, &sizes).unwrap();
    assert_eq!(
        bound.values[bound.outputs[1]].shape,
        Some(vec![Dim::Known(8), Dim::Known(1)])
    );
}

#[test]
fn unsupported_operator_in_a_real_model_is_named_with_its_node() {
    let mut model = ModelProto::decode(&std::fs::read(model_path(1)).unwrap()[..]).unwrap();
    let graph = model.graph.as_mut().unwrap();
    let node = graph
        .node
        .iter_mut()
        .find(|n| n.name == "fraud_v1_Relu1")
        .unwrap();
    node.op_type = "Celu".into();
    match engine::compile(&model.encode_to_vec()) {
        Err(e @ EngineError::Unsupported { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains("Celu") && msg.contains("fraud_v1_Relu1"),
                "{msg}"
            );
        }
        other => panic!("expected an unsupported-operator error, got {other:?}"),
    }
}

/// Runs ONNX Runtime on named tensors; returns the float32 outputs asked for.
fn ort_f32_outputs(
    path: &Path,
    inputs: Vec<NamedTensor>,
    outputs: &[&str],
) -> Vec<(Vec<i64>, Vec<f32>)> {
    init_runtime(&ort_library()).expect("ONNX Runtime must load for this test");
    let mut session = OnnxEngine::load(path, 1).unwrap();
    let names: Vec<String> = outputs.iter().map(|s| s.to_string()).collect();
    let out = session.execute(&inputs, &names).unwrap();
    out.tensors
        .into_iter()
        .map(|t| {
            let v = t
                .tensor
                .data
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            (t.tensor.shape, v)
        })
        .collect()
}

fn i64_wire(name: &str, shape: [usize; 2], v: &[i64]) -> NamedTensor {
    common::wire(name, DataType::Int64, &shape, common::i64_bytes(v))
}

/// The pipeline before the attention and residual-add fusions: import, fold, GELU, GEMM.
fn compile_gemm_only(bytes: &[u8]) -> engine::ir::Graph {
    let mut g = engine::import::import_model(bytes).unwrap();
    engine::fold::fold_constants(&mut g).unwrap();
    engine::fuse::fuse_erf_gelu(&mut g).unwrap();
    engine::fuse::fuse_gemm(&mut g).unwrap();
    g.remove_unused();
    g
}

#[test]
fn tiny_encoder_compiles_to_fused_gemms_attention_and_add_layer_norms() {
    let bytes = std::fs::read(Path::new(ROOT).join("tests/data/tiny_encoder.onnx")).unwrap();
    let imported = engine::import::import_model(&bytes).unwrap();
    let compiled = engine::compile(&bytes).unwrap();
    let counts = compiled.op_counts();
    // q, k, v, o, ffn1, ffn2 and the head: MatMul + bias each; ffn1's Erf-written GELU and
    // the head's Tanh are fused as epilogues.
    assert_eq!(counts.get("Gemm"), Some(&7), "{counts:?}");
    assert_eq!(counts.get("Tanh"), None, "{counts:?}");
    assert_eq!(counts.get("Erf"), None, "{counts:?}");
    // Q·Kᵀ / √d + mask → Softmax → ·V is one Attention (the mask's Expand to the scores'
    // shape and its Shape go with it); the residual adds before LayerNorm 1 and 2 are fused.
    assert_eq!(counts.get("Attention"), Some(&1), "{counts:?}");
    assert_eq!(counts.get("AddLayerNorm"), Some(&2), "{counts:?}");
    assert_eq!(counts.get("LayerNormalization"), Some(&1), "{counts:?}");
    for gone in ["MatMul", "Softmax", "Expand"] {
        assert_eq!(counts.get(gone), None, "{gone}: {counts:?}");
    }
    let attention = compiled
        .nodes
        .iter()
        .find(|n| matches!(n.op, engine::ir::Op::Attention { .. }))
        .unwrap();
    assert_eq!(
        attention.op,
        engine::ir::Op::Attention {
            scale: 1.0 / 8f32.sqrt(),
            k_transposed: true
        }
    );
    let names: Vec<&str> = attention
        .inputs
        .iter()
        .map(|&i| compiled.values[i].name.as_str())
        .collect();
    assert_eq!(names, ["qt", "kt", "vt", "mask"]);
    let add_lns: Vec<Vec<&str>> = compiled
        .nodes
        .iter()
        .filter(|n| matches!(n.op, engine::ir::Op::AddLayerNorm { .. }))
        .map(|n| {
            n.inputs[..2]
                .iter()
                .map(|&i| compiled.values[i].name.as_str())
                .collect()
        })
        .collect();
    assert_eq!(add_lns, [["o", "x0"], ["ffn2", "x1"]]);
    let gelus = compiled
        .nodes
        .iter()
        .filter(|n| {
            matches!(
                n.op,
                engine::ir::Op::Gemm(engine::ir::Gemm {
                    activation: engine::ir::Activation::Gelu,
                    ..
                })
            )
        })
        .count();
    assert_eq!(gelus, 1, "{counts:?}");
    // Symbolic dims survive attention (Reshape with 0s, Transpose, the fused Attention),
    // pooling and normalisation.
    use engine::ir::Dim;
    let (b, s) = (Dim::Sym("batch".into()), Dim::Sym("sequence".into()));
    let shapes: Vec<_> = compiled
        .outputs
        .iter()
        .map(|&o| compiled.values[o].shape.clone())
        .collect();
    assert_eq!(shapes[0], Some(vec![b.clone(), s, Dim::Known(16)]));
    assert_eq!(shapes[1], Some(vec![b, Dim::Known(16)]));
    // The three `gamma + 1` Adds of constants were folded away.
    assert!(imported.nodes.iter().any(|n| n.name == "Add_ln0_gamma"));
    assert!(!compiled.nodes.iter().any(|n| n.name.starts_with("Add_ln")));
    // The fused graph survives the engine cache's serialization.
    let bytes = postcard::to_allocvec(&compiled).unwrap();
    let back: engine::ir::Graph = postcard::from_bytes(&bytes).unwrap();
    assert_eq!(back, compiled);
}

/// Deterministic ids in [0, 50) and a mask padding row r by (2·r mod seq) positions.
fn encoder_tokens(batch: usize, seq: usize) -> (Vec<i64>, Vec<i64>) {
    let mut state = 12345u64;
    let ids: Vec<i64> = (0..batch * seq)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 33) % 50) as i64
        })
        .collect();
    let mask: Vec<i64> = (0..batch * seq)
        .map(|i| i64::from(i % seq < seq - (2 * (i / seq)) % seq))
        .collect();
    (ids, mask)
}

#[test]
fn tiny_encoder_matches_onnx_runtime() {
    let path = Path::new(ROOT).join("tests/data/tiny_encoder.onnx");
    let bytes = std::fs::read(&path).unwrap();
    let imported = engine::import::import_model(&bytes).unwrap();
    let gemm_only = compile_gemm_only(&bytes);
    let compiled = engine::compile(&bytes).unwrap();
    assert_eq!(gemm_only.op_counts().get("Attention"), None);
    for (batch, seq) in [(3usize, 7usize), (1, 1), (2, 5), (5, 16)] {
        let (ids, mask) = encoder_tokens(batch, seq);
        assert!(batch == 1 || mask.contains(&0), "some padding");
        let ort = ort_f32_outputs(
            &path,
            vec![
                i64_wire("input_ids", [batch, seq], &ids),
                i64_wire("attention_mask", [batch, seq], &mask),
            ],
            &["last_hidden_state", "embedding"],
        );
        for (what, graph) in [
            ("imported", &imported),
            ("gemm-fused", &gemm_only),
            ("compiled", &compiled),
        ] {
            let out = reference::run(
                graph,
                &[
                    (
                        "input_ids",
                        Tensor::i64(vec![batch, seq], ids.clone()).unwrap(),
                    ),
                    (
                        "attention_mask",
                        Tensor::i64(vec![batch, seq], mask.clone()).unwrap(),
                    ),
                ],
            )
            .unwrap();
            for ((name, (ort_shape, ort_v)), got) in ["last_hidden_state", "embedding"]
                .iter()
                .zip(&ort)
                .zip(&out)
            {
                let shape: Vec<i64> = got.shape.iter().map(|&d| d as i64).collect();
                assert_eq!(&shape, ort_shape, "{name}");
                let v = got.as_f32s().unwrap();
                let max_err = v
                    .iter()
                    .zip(ort_v)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f32, f32::max);
                println!("tiny_encoder {batch}x{seq} {what} {name}: max |y - y_ort| = {max_err:e}");
                assert!(
                    max_err <= 1e-4,
                    "{batch}x{seq} {what} {name}: differs by {max_err}"
                );
            }
        }
    }
}

#[test]
fn truncated_and_corrupted_models_are_errors_not_panics() {
    let fraud = std::fs::read(model_path(1)).unwrap();
    let mut errors = 0;
    for cut in (0..fraud.len()).step_by(97) {
        if engine::compile(&fraud[..cut]).is_err() {
            errors += 1;
        }
    }
    assert!(errors > 0);
    // Flip bytes one at a time across both files: compiling and running every model that
    // still compiles ends in Ok or Err, never in a panic.
    let encoder = std::fs::read(Path::new(ROOT).join("tests/data/tiny_encoder.onnx")).unwrap();
    let ids = Tensor::i64(vec![1, 3], vec![4, 9, 0]).unwrap();
    let mask = Tensor::i64(vec![1, 3], vec![1, 1, 0]).unwrap();
    let features = Tensor::f32(vec![2, 30], vec![0.5; 60]).unwrap();
    let mut ran = 0;
    for (bytes, step) in [(&fraud, 13), (&encoder, 11)] {
        for at in (0..bytes.len()).step_by(step) {
            let mut b = bytes.clone();
            b[at] ^= 0x5a;
            if let Ok(g) = engine::compile(&b) {
                // Only the inputs the (possibly corrupted) graph declares.
                let all = [
                    ("features", &features),
                    ("input_ids", &ids),
                    ("attention_mask", &mask),
                ];
                let inputs: Vec<(&str, Tensor)> = all
                    .iter()
                    .filter(|(n, _)| g.inputs.iter().any(|&i| g.values[i].name == *n))
                    .map(|(n, t)| (*n, (*t).clone()))
                    .collect();
                if reference::run(&g, &inputs).is_ok() {
                    ran += 1;
                }
            }
        }
    }
    // Most flips land in weights: those models still run.
    assert!(ran > 100, "only {ran} corrupted models ran");
}
