//! The on-disk engine cache (`engine::cache`) on fraud_mlp: hits equal the compiled engine,
//! every key component is a miss, unusable files are rebuilt, and a loaded engine computes
//! what a fresh one does.
//!
//! Compiling an engine compiles our kernels with NVRTC (no GPU needed): run
//! `bash scripts/deps.sh test` first; without NVRTC these tests fail, they never skip.

use std::path::{Path, PathBuf};

use switchyard::engine::cache::{self, get_or_compile, CacheKey, CacheOutcome, Engine};
use switchyard::engine::calibrate::{self, CalibrationTable, Method};
use switchyard::engine::ir::Tensor;
use switchyard::engine::precision::{self, Precision};
use switchyard_kernels::nvrtc::preload_library;
use switchyard_kernels::ComputeCapability;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const HOPPER: ComputeCapability = ComputeCapability::HOPPER;

fn load_nvrtc() {
    let dir = Path::new(ROOT).join(".deps/nvrtc/lib");
    for lib in ["libnvrtc-builtins.so.13.0", "libnvrtc.so.13"] {
        let path = dir.join(lib);
        assert!(
            path.is_file(),
            "{} missing: run `bash scripts/deps.sh test`",
            path.display()
        );
        preload_library(&path).unwrap();
    }
}

fn fraud(version: u32) -> PathBuf {
    Path::new(ROOT).join(format!("model_repository/fraud_mlp/{version}/model.onnx"))
}

/// 64 deterministic rows of 30 features.
fn features() -> Tensor {
    let x: Vec<f32> = (0..64 * 30)
        .map(|i| ((i * 7919 % 1000) as f32 / 250.0) - 2.0)
        .collect();
    Tensor::f32(vec![64, 30], x).unwrap()
}

fn table(model: &Path) -> CalibrationTable {
    let graph = switchyard::engine::compile(&std::fs::read(model).unwrap()).unwrap();
    let plan = precision::assign(&graph, Precision::Int8);
    calibrate::calibrate(
        &graph,
        &plan,
        &[vec![("features", features())]],
        Method::Max,
    )
    .unwrap()
}

fn only_file(dir: &Path) -> PathBuf {
    let files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    files.into_iter().next().unwrap()
}

#[test]
fn a_hit_is_the_compiled_engine_and_runs_the_same() {
    load_nvrtc();
    let dir = tempfile::tempdir().unwrap();
    let model = fraud(1);
    let cal = table(&model);
    for (mode, cal) in [
        (Precision::Fp32, None),
        (Precision::Fp16, None),
        (Precision::Int8, Some(&cal)),
    ] {
        let (fresh, first) = get_or_compile(dir.path(), &model, HOPPER, mode, cal).unwrap();
        assert_eq!(first, CacheOutcome::Miss, "{mode:?}");
        let (loaded, second) = get_or_compile(dir.path(), &model, HOPPER, mode, cal).unwrap();
        assert_eq!(second, CacheOutcome::Hit, "{mode:?}");
        assert_eq!(loaded, fresh, "{mode:?}");
        assert!(!loaded.kernels.is_empty());
        assert!(loaded
            .kernels
            .iter()
            .all(|k| k.ptx.contains(".target sm_90")));
        let x = [("features", features())];
        assert_eq!(
            loaded.run_reference(&x).unwrap(),
            fresh.run_reference(&x).unwrap(),
            "{mode:?}"
        );
    }
}

#[test]
fn every_key_component_is_a_miss() {
    load_nvrtc();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let outcome = |model: &Path, cc, mode, cal| get_or_compile(d, model, cc, mode, cal).unwrap().1;
    let (v1, v2) = (fraud(1), fraud(2));
    let (cal1, cal2) = (table(&v1), {
        let mut t = table(&v1);
        for r in t.tensors.values_mut() {
            r.amax *= 2.0;
        }
        t
    });
    assert_eq!(
        outcome(&v1, HOPPER, Precision::Fp16, None),
        CacheOutcome::Miss
    );
    assert_eq!(
        outcome(&v1, HOPPER, Precision::Fp16, None),
        CacheOutcome::Hit
    );
    // Model file content.
    assert_eq!(
        outcome(&v2, HOPPER, Precision::Fp16, None),
        CacheOutcome::Miss
    );
    // GPU architecture.
    let ampere = ComputeCapability::new(8, 0);
    assert_eq!(
        outcome(&v1, ampere, Precision::Fp16, None),
        CacheOutcome::Miss
    );
    // Precision.
    assert_eq!(
        outcome(&v1, HOPPER, Precision::Fp32, None),
        CacheOutcome::Miss
    );
    assert_eq!(
        outcome(&v1, HOPPER, Precision::Int8, Some(&cal1)),
        CacheOutcome::Miss
    );
    // Calibration table (INT8).
    assert_eq!(
        outcome(&v1, HOPPER, Precision::Int8, Some(&cal2)),
        CacheOutcome::Miss
    );
    assert_eq!(
        outcome(&v1, HOPPER, Precision::Int8, Some(&cal1)),
        CacheOutcome::Hit
    );
    assert_eq!(std::fs::read_dir(d).unwrap().count(), 6);

    // Kernel sources and format version: a build with other kernels or another format
    // looks for another file name; a file claiming them under this name is rebuilt.
    let model = std::fs::read(&v1).unwrap();
    let key = CacheKey::new(&model, HOPPER, Precision::Fp32, None);
    let path = d.join(key.file_name());
    let engine = Engine::compile(&model, HOPPER, Precision::Fp32, None).unwrap();
    for change in [
        |k: &mut CacheKey| k.kernels_hash ^= 1,
        |k: &mut CacheKey| k.format_version += 1,
    ] {
        let mut other = key.clone();
        change(&mut other);
        assert_ne!(other.file_name(), key.file_name());
        std::fs::write(&path, cache::encode(&other, &engine).unwrap()).unwrap();
        assert_eq!(
            outcome(&v1, HOPPER, Precision::Fp32, None),
            CacheOutcome::Rebuilt
        );
        assert_eq!(
            outcome(&v1, HOPPER, Precision::Fp32, None),
            CacheOutcome::Hit
        );
    }
}

#[test]
fn corrupt_truncated_and_foreign_files_are_rebuilt() {
    load_nvrtc();
    let dir = tempfile::tempdir().unwrap();
    let model = fraud(1);
    let get = || get_or_compile(dir.path(), &model, HOPPER, Precision::Fp16, None).unwrap();
    let (fresh, _) = get();
    let path = only_file(dir.path());
    let good = std::fs::read(&path).unwrap();
    let mut flipped = good.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x40;
    let foreign = std::fs::read(fraud(2)).unwrap();
    let broken: [(&str, Vec<u8>); 6] = [
        ("empty", Vec::new()),
        ("truncated", good[..good.len() / 3].to_vec()),
        ("last byte cut", good[..good.len() - 1].to_vec()),
        ("one byte flipped", flipped),
        ("an ONNX file", foreign),
        ("text", b"not an engine at all, just text".to_vec()),
    ];
    for (what, bytes) in broken {
        std::fs::write(&path, bytes).unwrap();
        let (engine, outcome) = get();
        assert_eq!(outcome, CacheOutcome::Rebuilt, "{what}");
        assert_eq!(engine, fresh, "{what}");
        assert_eq!(std::fs::read(&path).unwrap(), good, "{what}");
        assert_eq!(get().1, CacheOutcome::Hit, "{what}");
    }
    // No temporary files are left behind.
    assert_eq!(only_file(dir.path()), path);
}

#[test]
fn concurrent_writers_leave_one_whole_file() {
    load_nvrtc();
    let dir = tempfile::tempdir().unwrap();
    let model = fraud(1);
    let engines: Vec<Engine> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|| {
                    get_or_compile(dir.path(), &model, HOPPER, Precision::Fp16, None)
                        .unwrap()
                        .0
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(engines.windows(2).all(|w| w[0] == w[1]));
    only_file(dir.path());
    let (loaded, outcome) =
        get_or_compile(dir.path(), &model, HOPPER, Precision::Fp16, None).unwrap();
    assert_eq!(outcome, CacheOutcome::Hit);
    assert_eq!(loaded, engines[0]);
}
