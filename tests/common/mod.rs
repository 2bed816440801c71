//! Helpers shared by the engine's integration tests (each test file includes this module).

#![allow(dead_code)]

use std::path::{Path, PathBuf};

pub const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// ORT_DYLIB_PATH if set, else the path `scripts/deps.sh` records in `.deps/ort-lib-path`.
pub fn ort_library() -> PathBuf {
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH") {
        return PathBuf::from(p);
    }
    let recorded = Path::new(ROOT).join(".deps/ort-lib-path");
    let text = std::fs::read_to_string(&recorded).unwrap_or_else(|e| {
        panic!(
            "ONNX Runtime is required: set ORT_DYLIB_PATH or run `bash scripts/deps.sh test` ({}: {e})",
            recorded.display()
        )
    });
    PathBuf::from(text.trim())
}

/// Reads a little-endian float32 C-order `.npy` (format 1.0 or 2.0): `(rows, cols, data)`.
pub fn read_npy_f32(path: &Path) -> (usize, usize, Vec<f32>) {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(&bytes[..6], b"\x93NUMPY", "not a .npy file");
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        _ => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
    };
    let header = std::str::from_utf8(&bytes[start..start + header_len]).unwrap();
    assert!(header.contains("'descr': '<f4'"), "{header}");
    assert!(header.contains("'fortran_order': False"), "{header}");
    let shape = &header[header.find("'shape': (").unwrap() + 10..];
    let shape = &shape[..shape.find(')').unwrap()];
    let dims: Vec<usize> = shape
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect();
    assert_eq!(dims.len(), 2, "{header}");
    let data: Vec<f32> = bytes[start + header_len..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    assert_eq!(data.len(), dims[0] * dims[1]);
    (dims[0], dims[1], data)
}

/// The 2000 x 30 held-out fraud rows (`tests/python/data/fraud_heldout.npy`).
pub fn heldout() -> (usize, usize, Vec<f32>) {
    read_npy_f32(&Path::new(ROOT).join("tests/python/data/fraud_heldout.npy"))
}

use switchyard::executor::onnx::{init_runtime, OnnxEngine};
use switchyard::executor::Engine;
use switchyard::tensor::{DataType, NamedTensor, Tensor as WireTensor};

/// Runs ONNX Runtime on `path` and returns each requested output's raw little-endian bytes.
pub fn ort(path: &Path, inputs: Vec<NamedTensor>, outputs: &[&str]) -> Vec<Vec<u8>> {
    init_runtime(&ort_library()).expect("ONNX Runtime must load for this test");
    let mut session = OnnxEngine::load(path, 1).unwrap();
    let names: Vec<String> = outputs.iter().map(|s| s.to_string()).collect();
    let out = session.execute(&inputs, &names).unwrap();
    out.tensors
        .into_iter()
        .map(|t| t.tensor.data.to_vec())
        .collect()
}

/// A named wire tensor of raw little-endian `data`.
pub fn wire(name: &str, dtype: DataType, shape: &[usize], data: Vec<u8>) -> NamedTensor {
    NamedTensor {
        name: name.into(),
        tensor: WireTensor {
            dtype,
            shape: shape.iter().map(|&d| d as i64).collect(),
            data: data.into(),
        },
    }
}

pub fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

pub fn i64_bytes(v: &[i64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

pub fn f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

pub fn i64s(b: &[u8]) -> Vec<i64> {
    b.chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

/// Deterministic ids in [0, 50) and masks with a varying amount of padding (row r loses
/// r mod (seq / 2) trailing positions).
pub fn tokens(batch: usize, seq: usize, seed: u64) -> (Vec<i64>, Vec<i64>) {
    let mut state = seed;
    let ids = (0..batch * seq)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 33) % 50) as i64
        })
        .collect();
    let mask = (0..batch * seq)
        .map(|i| i64::from(i % seq < seq - (i / seq) % (seq / 2).max(1)))
        .collect();
    (ids, mask)
}
