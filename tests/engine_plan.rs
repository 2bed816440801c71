//! Memory plans of the real test models (fraud_mlp, the tiny encoder) at several bound
//! sizes: every plan passes its own overlap check and reuses buffers (its arena is smaller
//! than the sum of all intermediates).

use std::collections::HashMap;
use std::path::Path;

use switchyard::engine::precision::{self, Precision};
use switchyard::engine::{self, plan};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn sizes(pairs: &[(&str, usize)]) -> HashMap<String, usize> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

fn check(model: &str, bound: &[(&str, usize)]) -> plan::MemoryPlan {
    let graph = engine::compile(&std::fs::read(Path::new(ROOT).join(model)).unwrap()).unwrap();
    let mut last = None;
    for mode in [Precision::Fp32, Precision::Fp16] {
        let prec = precision::assign(&graph, mode);
        let p = plan::plan(&graph, &sizes(bound), Some(&prec)).unwrap();
        p.check().unwrap();
        println!(
            "{model} {bound:?} {}: {} values in {} buffers, arena {} B, live bound {} B, unshared {} B",
            mode.as_str(),
            p.allocations.len(),
            p.buffers.len(),
            p.peak_bytes(),
            p.live_bound_bytes(),
            p.unshared_bytes()
        );
        assert!(p.peak_bytes() < p.unshared_bytes(), "no reuse");
        assert!(p.peak_bytes() >= p.live_bound_bytes());
        assert!(p.buffers.iter().all(|b| b % plan::ALIGN == 0));
        if let Some(fp32) = &last {
            let fp32: &plan::MemoryPlan = fp32;
            assert!(
                p.peak_bytes() <= fp32.peak_bytes(),
                "FP16 needs more than FP32"
            );
        }
        last = Some(p);
    }
    last.unwrap()
}

#[test]
fn fraud_mlp_plans_reuse_buffers() {
    for b in [1, 8, 128] {
        check("model_repository/fraud_mlp/1/model.onnx", &[("batch", b)]);
        check("model_repository/fraud_mlp/2/model.onnx", &[("batch", b)]);
    }
}

#[test]
fn tiny_encoder_plans_reuse_buffers() {
    for (b, s) in [(1, 8), (8, 32), (32, 64)] {
        check(
            "tests/data/tiny_encoder.onnx",
            &[("batch", b), ("sequence", s)],
        );
    }
}

#[test]
fn corrupted_models_plan_to_ok_or_err_never_a_panic() {
    let fraud =
        std::fs::read(Path::new(ROOT).join("model_repository/fraud_mlp/1/model.onnx")).unwrap();
    let encoder = std::fs::read(Path::new(ROOT).join("tests/data/tiny_encoder.onnx")).unwrap();
    let bound = sizes(&[("batch", 4), ("sequence", 8)]);
    let mut planned = 0;
    for (bytes, step) in [(&fraud, 13), (&encoder, 11)] {
        for at in (0..bytes.len()).step_by(step) {
            let mut b = bytes.clone();
            b[at] ^= 0x5a;
            if let Ok(g) = engine::compile(&b) {
                let prec = precision::assign(&g, Precision::Fp16);
                if let Ok(p) = plan::plan(&g, &bound, Some(&prec)) {
                    p.check().unwrap();
                    planned += 1;
                }
            }
        }
    }
    assert!(planned > 100, "only {planned} corrupted models planned");
}
