//! The on-disk engine cache: a compiled [`Engine`] stored per model file, GPU architecture,
//! precision, calibration and kernel version, so a model loads without compiling again.
//!
//! # File
//! `<dir>/<model hash>-sm<XY>-<precision>-k<kernels hash>-c<calibration hash>-v<version>.engine`:
//! the 8-byte magic `SWYENGN\0`, the format version (u32 little-endian), the postcard
//! encoding of `(CacheKey, Engine)`, then the xxh3-64 of that encoding (u64 little-endian).
//! The key inside the file must equal the key asked for. Anything else (short, corrupt,
//! another version, another key) is logged and rebuilt, never trusted. Files are written to
//! a temporary file in `dir` and renamed into place, so readers and concurrent writers only
//! ever see whole files (the last rename wins; both candidates are complete and equal).
//! The format is described in `docs/engine.md`, "Engine cache".

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use switchyard_kernels::nvrtc::{self, CompileError};
use switchyard_kernels::sources::{COMMON_HEADER, KERNEL_SOURCES};
use switchyard_kernels::ComputeCapability;
use xxhash_rust::xxh3::{xxh3_64, Xxh3};

use super::calibrate::CalibrationTable;
use super::emulate::Emulator;
use super::ir::{Graph, Tensor};
use super::precision::{self, Precision, PrecisionPlan};
use super::EngineError;

/// Bumped whenever [`Engine`], [`CacheKey`] or any serialized IR type changes shape.
pub const FORMAT_VERSION: u32 = 2;

const MAGIC: &[u8; 8] = b"SWYENGN\0";
/// Magic, version, and the trailing checksum.
const OVERHEAD: usize = 8 + 4 + 8;

/// One kernel source compiled to PTX for the engine's architecture.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelPtx {
    pub file: String,
    pub entry_points: Vec<String>,
    pub ptx: String,
}

/// Everything compilation produces that needs no GPU: what the executor loads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Engine {
    /// The graph after import, folding and fusion.
    pub graph: Graph,
    /// The precision of every node.
    pub precision: PrecisionPlan,
    /// The INT8 activation scales (INT8 engines only).
    pub calibration: Option<CalibrationTable>,
    /// Compute capability the PTX targets, as `(major, minor)`.
    pub compute_capability: (u32, u32),
    /// Our kernels, compiled by NVRTC for [`Engine::compute_capability`].
    pub kernels: Vec<KernelPtx>,
}

impl Engine {
    /// Compiles `model` (ONNX bytes) for `cc` in `mode`. INT8 needs `calibration`, and every
    /// INT8 GEMM's activation must have a scale in it.
    pub fn compile(
        model: &[u8],
        cc: ComputeCapability,
        mode: Precision,
        calibration: Option<&CalibrationTable>,
    ) -> Result<Engine, CacheError> {
        let graph = super::compile(model)?;
        let calibration = match mode {
            Precision::Int8 => Some(calibration.ok_or(CacheError::MissingCalibration)?.clone()),
            Precision::Fp32 | Precision::Fp16 => None,
        };
        let plan = precision::assign_with(&graph, mode, calibration.as_ref());
        // Refuses a table lacking a scale now, rather than when the engine is first run.
        Emulator::new(&graph, plan.clone(), calibration.as_ref())?;
        let kernels = nvrtc::compile_all(cc)?
            .into_iter()
            .map(|k| KernelPtx {
                file: k.file.into(),
                entry_points: k.entry_points.iter().map(|e| e.to_string()).collect(),
                ptx: k.ptx,
            })
            .collect();
        Ok(Engine {
            graph,
            precision: plan,
            calibration,
            compute_capability: (cc.major, cc.minor),
            kernels,
        })
    }

    /// Runs the engine on CPU: the FP32 reference with the FP16 / INT8 emulation of
    /// [`Engine::precision`] (the numbers the GPU kernels must match).
    pub fn run_reference(&self, inputs: &[(&str, Tensor)]) -> Result<Vec<Tensor>, EngineError> {
        Emulator::new(
            &self.graph,
            self.precision.clone(),
            self.calibration.as_ref(),
        )?
        .run(inputs)
    }
}

/// What identifies a cached engine. Stored in the file and compared on load.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheKey {
    pub format_version: u32,
    /// xxh3-64 of the model file's bytes.
    pub model_hash: u64,
    pub compute_capability: (u32, u32),
    pub precision: Precision,
    /// [`kernels_hash`] of the kernel sources built into this binary.
    pub kernels_hash: u64,
    /// xxh3-64 of the calibration table's JSON (INT8 only; other modes ignore the table).
    pub calibration_hash: Option<u64>,
}

impl CacheKey {
    pub fn new(
        model: &[u8],
        cc: ComputeCapability,
        precision: Precision,
        calibration: Option<&CalibrationTable>,
    ) -> CacheKey {
        let calibration_hash = match precision {
            Precision::Int8 => calibration.map(|t| xxh3_64(t.to_json().as_bytes())),
            Precision::Fp32 | Precision::Fp16 => None,
        };
        CacheKey {
            format_version: FORMAT_VERSION,
            model_hash: xxh3_64(model),
            compute_capability: (cc.major, cc.minor),
            precision,
            kernels_hash: kernels_hash(),
            calibration_hash,
        }
    }

    /// The file name this key is stored under.
    pub fn file_name(&self) -> String {
        let (major, minor) = self.compute_capability;
        format!(
            "{:016x}-sm{major}{minor}-{}-k{:016x}-c{:016x}-v{}.engine",
            self.model_hash,
            self.precision.as_str().to_ascii_lowercase(),
            self.kernels_hash,
            self.calibration_hash.unwrap_or(0),
            self.format_version
        )
    }
}

/// xxh3-64 over the name and text of every embedded `.cu` source and their common header:
/// any kernel edit changes it, so engines holding old PTX are rebuilt.
pub fn kernels_hash() -> u64 {
    let mut h = Xxh3::new();
    h.update(COMMON_HEADER.as_bytes());
    for k in KERNEL_SOURCES {
        h.update(&[0]);
        h.update(k.file.as_bytes());
        h.update(&[0]);
        h.update(k.text.as_bytes());
    }
    h.digest()
}

/// How [`get_or_compile`] got its engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Loaded from the cache.
    Hit,
    /// No cached file: compiled and stored.
    Miss,
    /// A cached file was there but unusable (corrupt, truncated, other version or key):
    /// compiled and stored over it.
    Rebuilt,
}

/// Why an engine could be neither loaded nor compiled.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("engine cache: {what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Kernels(#[from] CompileError),
    #[error("an INT8 engine needs a calibration table")]
    MissingCalibration,
    #[error("cannot encode engine: {0}")]
    Encode(#[from] postcard::Error),
}

/// Loads the engine for `model_path` from `dir`, or compiles it and stores it there.
/// `dir` is created if missing. A cache file that cannot be used is logged and replaced.
pub fn get_or_compile(
    dir: &Path,
    model_path: &Path,
    cc: ComputeCapability,
    precision: Precision,
    calibration: Option<&CalibrationTable>,
) -> Result<(Engine, CacheOutcome), CacheError> {
    let io = |what, path: &Path| {
        let path = path.to_path_buf();
        move |source| CacheError::Io { what, path, source }
    };
    let model = std::fs::read(model_path).map_err(io("cannot read model", model_path))?;
    let key = CacheKey::new(&model, cc, precision, calibration);
    let path = dir.join(key.file_name());
    let outcome = match std::fs::read(&path) {
        Ok(bytes) => match decode(&bytes, &key) {
            Ok(engine) => return Ok((engine, CacheOutcome::Hit)),
            Err(reason) => {
                tracing::warn!(path = %path.display(), %reason, "engine cache: rebuilding unusable file");
                CacheOutcome::Rebuilt
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => CacheOutcome::Miss,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "engine cache: cannot read, rebuilding");
            CacheOutcome::Rebuilt
        }
    };
    let engine = Engine::compile(&model, cc, precision, calibration)?;
    std::fs::create_dir_all(dir).map_err(io("cannot create", dir))?;
    let bytes = encode(&key, &engine)?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".engine-")
        .tempfile_in(dir)
        .map_err(io("cannot create a temporary file in", dir))?;
    tmp.write_all(&bytes)
        .and_then(|_| tmp.as_file().sync_all())
        .map_err(io("cannot write", tmp.path()))?;
    tmp.persist(&path)
        .map_err(|e| io("cannot rename into", &path)(e.error))?;
    Ok((engine, outcome))
}

/// The file's bytes for `engine` under `key`.
pub fn encode(key: &CacheKey, engine: &Engine) -> Result<Vec<u8>, postcard::Error> {
    let mut out = Vec::with_capacity(1 << 16);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&key.format_version.to_le_bytes());
    let body = postcard::to_extend(&(key, engine), out)?;
    let sum = xxh3_64(&body[MAGIC.len() + 4..]);
    let mut out = body;
    out.extend_from_slice(&sum.to_le_bytes());
    Ok(out)
}

/// The engine in `bytes` if they are a whole file of this version stored under `key`;
/// otherwise why not.
pub fn decode(bytes: &[u8], key: &CacheKey) -> Result<Engine, String> {
    if bytes.len() < OVERHEAD {
        return Err(format!("file too short ({} bytes)", bytes.len()));
    }
    if &bytes[..MAGIC.len()] != MAGIC {
        return Err("not an engine file (bad magic)".into());
    }
    let mut version = [0u8; 4];
    version.copy_from_slice(&bytes[8..12]);
    let version = u32::from_le_bytes(version);
    if version != FORMAT_VERSION {
        return Err(format!(
            "format version {version}, this build reads {FORMAT_VERSION}"
        ));
    }
    let (body, sum) = bytes[12..].split_at(bytes.len() - OVERHEAD);
    let mut stored = [0u8; 8];
    stored.copy_from_slice(sum);
    if xxh3_64(body) != u64::from_le_bytes(stored) {
        return Err("checksum mismatch (corrupt or truncated)".into());
    }
    let (stored_key, engine): (CacheKey, Engine) =
        postcard::from_bytes(body).map_err(|e| format!("cannot decode: {e}"))?;
    if &stored_key != key {
        return Err(format!("stored under another key: {stored_key:?}"));
    }
    Ok(engine)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An engine without PTX (no NVRTC needed): a one-constant graph.
    fn engine() -> Engine {
        let mut graph = Graph::default();
        graph.add_constant(
            "w",
            Tensor::f32(vec![2], vec![1.5, f32::NEG_INFINITY]).unwrap(),
        );
        Engine {
            precision: precision::assign(&graph, Precision::Fp16),
            graph,
            calibration: None,
            compute_capability: (9, 0),
            kernels: vec![KernelPtx {
                file: "softmax.cu".into(),
                entry_points: vec!["softmax_f32".into()],
                ptx: ".target sm_90".into(),
            }],
        }
    }

    fn key() -> CacheKey {
        CacheKey::new(b"model", ComputeCapability::HOPPER, Precision::Fp16, None)
    }

    #[test]
    fn a_file_round_trips_and_names_its_key() {
        let bytes = encode(&key(), &engine()).unwrap();
        assert_eq!(decode(&bytes, &key()).unwrap(), engine());
        let name = key().file_name();
        assert!(
            name.contains("-sm90-fp16-") && name.ends_with(&format!("-v{FORMAT_VERSION}.engine")),
            "{name}"
        );
    }

    #[test]
    fn every_damaged_file_is_refused_with_a_reason() {
        let good = encode(&key(), &engine()).unwrap();
        for cut in 0..good.len() {
            assert!(decode(&good[..cut], &key()).is_err(), "cut at {cut}");
        }
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 1;
            assert!(decode(&bad, &key()).is_err(), "byte {i} flipped");
        }
        let mut other = key();
        other.compute_capability = (8, 0);
        let e = decode(&good, &other).unwrap_err();
        assert!(e.contains("another key"), "{e}");
    }

    #[test]
    fn int8_keys_depend_on_the_calibration_and_others_ignore_it() {
        let table = CalibrationTable::from_json(
            r#"{"format":"switchyard-int8-calibration","version":1,"method":"max","tensors":{}}"#,
        )
        .unwrap();
        let cc = ComputeCapability::HOPPER;
        let k = |p, t| CacheKey::new(b"m", cc, p, t);
        assert_eq!(k(Precision::Fp16, Some(&table)), k(Precision::Fp16, None));
        assert_ne!(k(Precision::Int8, Some(&table)), k(Precision::Int8, None));
        assert_ne!(kernels_hash(), 0);
    }
}
