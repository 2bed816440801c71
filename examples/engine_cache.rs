//! Compile time vs cache-load time of engines, for `docs/engine.md` ("Engine cache").
//!
//! `bash scripts/deps.sh test && cargo run --release --example engine_cache`
//!
//! For fraud_mlp v1 and `tests/data/tiny_encoder.onnx`, in FP16 for sm_90: the median of 5
//! full compilations (import, passes, precision, NVRTC for every kernel) against the median
//! of 20 loads of the cached file (read, checksum, decode, key check).

use std::path::Path;
use std::time::Duration;

// tokio's Instant (the lint's choice): outside a runtime it reads the real clock.
use tokio::time::Instant;

use switchyard::engine::cache::{get_or_compile, CacheKey, CacheOutcome, Engine};
use switchyard::engine::precision::Precision;
use switchyard_kernels::nvrtc::preload_library;
use switchyard_kernels::ComputeCapability;

fn median(mut xs: Vec<Duration>) -> Duration {
    xs.sort();
    xs[xs.len() / 2]
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for lib in ["libnvrtc-builtins.so.13.0", "libnvrtc.so.13"] {
        preload_library(&root.join(".deps/nvrtc/lib").join(lib))
            .expect("run `bash scripts/deps.sh test` first (it installs NVRTC)");
    }
    let cc = ComputeCapability::HOPPER;
    let mode = Precision::Fp16;
    let dir = tempfile::tempdir().unwrap();
    println!("model\tcompile_ms\tload_ms\tspeedup\tfile_bytes");
    for model in [
        "model_repository/fraud_mlp/1/model.onnx",
        "tests/data/tiny_encoder.onnx",
    ] {
        let path = root.join(model);
        let bytes = std::fs::read(&path).unwrap();
        let compile = median(
            (0..5)
                .map(|_| {
                    let t = Instant::now();
                    Engine::compile(&bytes, cc, mode, None).unwrap();
                    t.elapsed()
                })
                .collect(),
        );
        let (_, first) = get_or_compile(dir.path(), &path, cc, mode, None).unwrap();
        assert_eq!(first, CacheOutcome::Miss);
        let load = median(
            (0..20)
                .map(|_| {
                    let t = Instant::now();
                    let (_, o) = get_or_compile(dir.path(), &path, cc, mode, None).unwrap();
                    assert_eq!(o, CacheOutcome::Hit);
                    t.elapsed()
                })
                .collect(),
        );
        let file = dir
            .path()
            .join(CacheKey::new(&bytes, cc, mode, None).file_name());
        println!(
            "{model}\t{:.2}\t{:.3}\t{:.0}x\t{}",
            compile.as_secs_f64() * 1e3,
            load.as_secs_f64() * 1e3,
            compile.as_secs_f64() / load.as_secs_f64(),
            std::fs::metadata(file).unwrap().len()
        );
    }
}
