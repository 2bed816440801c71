//! Shadow mode: a sampled copy of each routed request runs on a shadow version after the
//! primary is queued; the client only ever gets the primary's answer. Shadow work is bounded
//! (sampling, an in-flight cap, a timeout) and is dropped and counted rather than ever
//! delaying, failing or queueing the primary. Every compared pair is scored (`compare`);
//! diverging pairs are written to the divergence log.

use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use serde::Serialize;

use super::config::{CompareSpec, ShadowSpec};
use super::router::{seq_bucket, BASIS_POINTS};
use crate::request::InferResponse;
use crate::tensor::{element_count, split_bytes_elements, DataType, Tensor};

/// Runtime state of one `[[shadow]]` of a model.
#[derive(Debug)]
pub struct ShadowArm {
    pub spec: ShadowSpec,
    /// "shadow" for a `[[shadow]]`; "canary_check" for stable re-running canary requests.
    pub kind: &'static str,
    in_flight: AtomicUsize,
    seq: AtomicU64,
    compared: AtomicU64,
    /// Recent (primary score, shadow score) pairs, for the PSI metric.
    scores: Mutex<VecDeque<(f64, f64)>>,
}

/// Score pairs kept per arm for the PSI metric.
const PSI_PAIRS: usize = 5_000;
/// The PSI metric is recomputed every this many compared pairs.
const PSI_EVERY: usize = 200;

/// A shadow slot: holding one counts against `max_in_flight` until dropped.
#[derive(Debug)]
pub struct Slot(Arc<ShadowArm>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Why a request was not shadowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// Not in the sample.
    NotSampled,
    /// `max_in_flight` shadow requests are already running.
    Full,
}

impl ShadowArm {
    pub fn new(spec: ShadowSpec) -> Arc<Self> {
        Self::with_kind(spec, "shadow")
    }

    /// The stable version's re-runs of canary requests (`[canary.check]`).
    pub fn check(spec: ShadowSpec) -> Arc<Self> {
        Self::with_kind(spec, "canary_check")
    }

    fn with_kind(spec: ShadowSpec, kind: &'static str) -> Arc<Self> {
        Arc::new(ShadowArm {
            spec,
            kind,
            in_flight: AtomicUsize::new(0),
            seq: AtomicU64::new(0),
            compared: AtomicU64::new(0),
            scores: Mutex::new(VecDeque::new()),
        })
    }

    /// Keeps a compared pair's scores; every `PSI_EVERY` pairs, the PSI of the shadow's
    /// recent scores against the primary's.
    pub fn add_scores(&self, primary: Option<f64>, shadow: Option<f64>) -> Option<f64> {
        let (Some(p), Some(s)) = (primary, shadow) else {
            return None;
        };
        let mut q = self.scores.lock();
        q.push_back((p, s));
        if q.len() > PSI_PAIRS {
            q.pop_front();
        }
        let n = self.compared.fetch_add(1, Ordering::Relaxed) + 1;
        if n % PSI_EVERY as u64 != 0 {
            return None;
        }
        let (a, b): (Vec<f64>, Vec<f64>) = q.iter().copied().unzip();
        drop(q);
        crate::deploy::psi::psi(&a, &b, crate::deploy::psi::DEFAULT_BINS)
    }

    /// Decides whether this request is shadowed, and takes an in-flight slot if it is.
    pub fn admit(self: &Arc<Self>) -> Result<Slot, Skip> {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        if self.spec.sample_bp < BASIS_POINTS && seq_bucket(n ^ 0x5eed) >= self.spec.sample_bp {
            return Err(Skip::NotSampled);
        }
        let max = self.spec.max_in_flight;
        self.in_flight
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |f| {
                (f < max).then_some(f + 1)
            })
            .map(|_| Slot(self.clone()))
            .map_err(|_| Skip::Full)
    }

    /// Shadow requests running now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }
}

/// The score of one answer, for the configured output element.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Decision {
    pub score: Option<f64>,
    /// score > threshold, when a threshold is configured.
    pub decision: Option<bool>,
}

/// The scoring of one primary/shadow pair.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Comparison {
    pub primary: Decision,
    pub shadow: Decision,
    /// Largest absolute difference over every float element of every output.
    pub max_abs_diff: f64,
    /// Largest relative difference (|a - b| / max(|a|, tiny)).
    pub max_rel_diff: f64,
    /// Integer, bool and string outputs differ somewhere.
    pub exact_mismatch: bool,
    /// The pair agrees: same decision (with a threshold), else everything within tolerance.
    pub agree: bool,
}

/// Bytes per element of a numeric type (None for BYTES).
fn width(d: DataType) -> Option<usize> {
    Some(match d {
        DataType::Bytes => return None,
        DataType::Bool | DataType::Int8 | DataType::Uint8 => 1,
        DataType::Fp16 | DataType::Bf16 | DataType::Int16 | DataType::Uint16 => 2,
        DataType::Fp32 | DataType::Int32 | DataType::Uint32 => 4,
        DataType::Fp64 | DataType::Int64 | DataType::Uint64 => 8,
    })
}

/// One little-endian element of type `d` (`b` is exactly `width(d)` bytes) as f64.
fn decode(d: DataType, b: &[u8]) -> f64 {
    fn arr<const N: usize>(b: &[u8]) -> [u8; N] {
        let mut a = [0u8; N];
        a.copy_from_slice(b);
        a
    }
    match d {
        DataType::Fp32 => f32::from_le_bytes(arr(b)) as f64,
        DataType::Fp64 => f64::from_le_bytes(arr(b)),
        DataType::Fp16 => half::f16::from_le_bytes(arr(b)).to_f64(),
        DataType::Bf16 => half::bf16::from_le_bytes(arr(b)).to_f64(),
        DataType::Int8 => b[0] as i8 as f64,
        DataType::Uint8 => b[0] as f64,
        DataType::Bool => (b[0] != 0) as u8 as f64,
        DataType::Int16 => i16::from_le_bytes(arr(b)) as f64,
        DataType::Uint16 => u16::from_le_bytes(arr(b)) as f64,
        DataType::Int32 => i32::from_le_bytes(arr(b)) as f64,
        DataType::Uint32 => u32::from_le_bytes(arr(b)) as f64,
        DataType::Int64 => i64::from_le_bytes(arr(b)) as f64,
        DataType::Uint64 => u64::from_le_bytes(arr(b)) as f64,
        DataType::Bytes => f64::NAN,
    }
}

fn as_f64(t: &Tensor) -> Option<Vec<f64>> {
    let w = width(t.dtype)?;
    Some(t.data.chunks_exact(w).map(|c| decode(t.dtype, c)).collect())
}

/// Element `i` of a numeric tensor as f64, without converting the rest.
fn element_f64(t: &Tensor, i: usize) -> Option<f64> {
    let w = width(t.dtype)?;
    let start = i.checked_mul(w)?;
    let bytes = t.data.get(start..start.checked_add(w)?)?;
    Some(decode(t.dtype, bytes))
}

fn is_float(d: DataType) -> bool {
    matches!(
        d,
        DataType::Fp16 | DataType::Bf16 | DataType::Fp32 | DataType::Fp64
    )
}

/// The score (and decision) of one answer under `spec`.
pub fn decision(resp: &InferResponse, spec: &CompareSpec) -> Decision {
    let tensor = match &spec.output {
        Some(name) => resp.outputs.iter().find(|o| &o.name == name),
        None => resp.outputs.first(),
    };
    let score = tensor.and_then(|t| element_f64(&t.tensor, spec.element));
    Decision {
        score,
        decision: match (score, spec.threshold) {
            (Some(s), Some(t)) => Some(s > t),
            _ => None,
        },
    }
}

/// Scores a pair of answers of the same request.
pub fn compare(primary: &InferResponse, shadow: &InferResponse, spec: &CompareSpec) -> Comparison {
    let mut max_abs: f64 = 0.0;
    let mut max_rel: f64 = 0.0;
    let mut exact_mismatch = false;
    let mut within = true;
    for p in &primary.outputs {
        let Some(s) = shadow.outputs.iter().find(|o| o.name == p.name) else {
            exact_mismatch = true;
            continue;
        };
        let (pt, st) = (&p.tensor, &s.tensor);
        if pt.dtype != st.dtype || pt.shape != st.shape {
            exact_mismatch = true;
            continue;
        }
        if pt.dtype == DataType::Bytes {
            let n = element_count(&pt.shape).unwrap_or(0);
            let a = split_bytes_elements(&pt.data, n);
            let b = split_bytes_elements(&st.data, n);
            if a != b {
                exact_mismatch = true;
            }
            continue;
        }
        if !is_float(pt.dtype) {
            if pt.data != st.data {
                exact_mismatch = true;
            }
            continue;
        }
        let (Some(a), Some(b)) = (as_f64(pt), as_f64(st)) else {
            continue;
        };
        for (x, y) in a.iter().zip(&b) {
            let d = (x - y).abs();
            if d.is_nan() {
                within = false;
                continue;
            }
            max_abs = max_abs.max(d);
            max_rel = max_rel.max(d / x.abs().max(f64::MIN_POSITIVE));
            if d > spec.abs_tolerance + spec.rel_tolerance * x.abs() {
                within = false;
            }
        }
    }
    let p = decision(primary, spec);
    let s = decision(shadow, spec);
    let agree = match (p.decision, s.decision) {
        (Some(a), Some(b)) => a == b,
        _ => within && !exact_mismatch,
    };
    Comparison {
        primary: p,
        shadow: s,
        max_abs_diff: max_abs,
        max_rel_diff: max_rel,
        exact_mismatch,
        agree,
    }
}

/// One line of the divergence log: one compared pair.
#[derive(Debug, Serialize)]
pub struct DivergenceRecord<'a> {
    /// Milliseconds since the Unix epoch.
    pub time_ms: u128,
    pub model: &'a str,
    pub request_id: &'a str,
    /// "shadow": a `[[shadow]]` copy of a request the primary answered; "canary_check": the
    /// stable version re-running a request the canary answered (the canary is the primary).
    pub kind: &'static str,
    pub primary_version: i64,
    pub shadow_version: i64,
    pub primary_score: Option<f64>,
    pub shadow_score: Option<f64>,
    pub primary_decision: Option<bool>,
    pub shadow_decision: Option<bool>,
    /// The decision threshold in effect, if any.
    pub threshold: Option<f64>,
    /// The pair agrees (same decision with a threshold, else within tolerance).
    pub agree: bool,
    /// What the log holds: "all" compared pairs, or only "divergent" ones.
    pub logged: &'static str,
    pub max_abs_diff: f64,
    pub max_rel_diff: f64,
    pub exact_mismatch: bool,
    pub primary_latency_ms: f64,
    pub shadow_latency_ms: f64,
}

/// The divergence log: JSON lines in `<dir>/divergence.jsonl`, rotated by size
/// (`divergence.jsonl.1` is the newest rotated file). The directory comes from the server's
/// flags only, never from a request or a model's files. Lines are written by one thread off
/// the request path; when it falls `LOG_QUEUE` lines behind, lines are dropped and counted
/// (`switchyard_shadow_log_dropped_total`).
#[derive(Debug)]
pub struct DivergenceLog {
    tx: Option<crossbeam_channel::Sender<Vec<u8>>>,
    worker: Option<std::thread::JoinHandle<()>>,
}

/// Lines waiting for the log's writer at most.
pub const LOG_QUEUE: usize = 16_384;

impl DivergenceLog {
    pub fn new(dir: &Path, max_bytes: u64, keep: usize) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let writer = LogWriter {
            path: dir.join("divergence.jsonl"),
            max_bytes: max_bytes.max(1024),
            keep: keep.max(1),
            file: None,
        };
        let (tx, rx) = crossbeam_channel::bounded::<Vec<u8>>(LOG_QUEUE);
        let worker = std::thread::Builder::new()
            .name("divergence-log".into())
            .spawn(move || writer.run(rx))?;
        Ok(DivergenceLog {
            tx: Some(tx),
            worker: Some(worker),
        })
    }

    /// Queues one record; never blocks, and errors are logged, never returned to a request.
    pub fn write(&self, record: &DivergenceRecord<'_>) {
        let mut line = match serde_json::to_vec(record) {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "cannot encode a divergence record");
                return;
            }
        };
        line.push(b'\n');
        if let Some(tx) = &self.tx {
            if tx.try_send(line).is_err() {
                metrics::counter!("switchyard_shadow_log_dropped_total").increment(1);
            }
        }
    }
}

impl Drop for DivergenceLog {
    /// Writes what is queued, then stops the writer.
    fn drop(&mut self) {
        self.tx.take();
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

/// The writer thread's side of the log.
struct LogWriter {
    path: PathBuf,
    max_bytes: u64,
    keep: usize,
    /// The open file and its length.
    file: Option<(std::io::BufWriter<std::fs::File>, u64)>,
}

impl LogWriter {
    /// Writes lines as they come, flushing whenever the queue runs empty.
    fn run(mut self, rx: crossbeam_channel::Receiver<Vec<u8>>) {
        while let Ok(line) = rx.recv() {
            self.write(&line);
            while let Ok(line) = rx.try_recv() {
                self.write(&line);
            }
            if let Some((f, _)) = self.file.as_mut() {
                if let Err(e) = f.flush() {
                    tracing::warn!(error = %e, path = %self.path.display(), "cannot write the divergence log");
                    self.file = None;
                }
            }
        }
    }

    fn write(&mut self, line: &[u8]) {
        if let Err(e) = self.append(line) {
            tracing::warn!(error = %e, path = %self.path.display(), "cannot write the divergence log");
            self.file = None;
        }
    }

    fn append(&mut self, line: &[u8]) -> std::io::Result<()> {
        if self
            .file
            .as_ref()
            .is_some_and(|(_, len)| len + line.len() as u64 > self.max_bytes)
        {
            if let Some((mut f, _)) = self.file.take() {
                f.flush()?;
            }
            self.rotate()?;
        }
        if self.file.is_none() {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)?;
            let len = f.metadata()?.len();
            self.file = Some((std::io::BufWriter::new(f), len));
        }
        if let Some((f, len)) = self.file.as_mut() {
            f.write_all(line)?;
            *len += line.len() as u64;
        }
        Ok(())
    }

    fn rotate(&self) -> std::io::Result<()> {
        let name = |i: usize| PathBuf::from(format!("{}.{i}", self.path.display()));
        let _ = std::fs::remove_file(name(self.keep));
        for i in (1..self.keep).rev() {
            let from = name(i);
            if from.exists() {
                std::fs::rename(&from, name(i + 1))?;
            }
        }
        std::fs::rename(&self.path, name(1))
    }
}

/// Longest request id written to the divergence log, in bytes (ids are client-chosen).
pub const MAX_LOGGED_ID: usize = 256;

/// `id` cut to at most `MAX_LOGGED_ID` bytes, on a character boundary.
pub fn logged_id(id: &str) -> &str {
    if id.len() <= MAX_LOGGED_ID {
        return id;
    }
    let mut end = MAX_LOGGED_ID;
    while !id.is_char_boundary(end) {
        end -= 1;
    }
    &id[..end]
}

/// Milliseconds since the Unix epoch, for records.
pub fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

/// Milliseconds since the Unix epoch, with microsecond resolution.
pub fn now_ms_precise() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1e3)
        .unwrap_or(0.0)
}

/// Seconds as fractional milliseconds.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::NamedTensor;

    fn resp(version: i64, probs: &[f32], label: i64) -> InferResponse {
        InferResponse {
            model_name: "m".into(),
            model_version: version,
            id: String::new(),
            outputs: vec![
                NamedTensor {
                    name: "p".into(),
                    tensor: Tensor {
                        dtype: DataType::Fp32,
                        shape: vec![1, probs.len() as i64],
                        data: probs
                            .iter()
                            .flat_map(|v| v.to_le_bytes())
                            .collect::<Vec<u8>>()
                            .into(),
                    },
                },
                NamedTensor {
                    name: "label".into(),
                    tensor: Tensor {
                        dtype: DataType::Int64,
                        shape: vec![1, 1],
                        data: label.to_le_bytes().to_vec().into(),
                    },
                },
            ],
        }
    }

    fn spec(threshold: Option<f64>) -> CompareSpec {
        CompareSpec {
            output: Some("p".into()),
            element: 1,
            threshold,
            abs_tolerance: 1e-6,
            rel_tolerance: 1e-4,
            log_all: false,
        }
    }

    #[test]
    fn decisions_and_differences() {
        let a = resp(1, &[0.1, 0.9], 1);
        let b = resp(2, &[0.2, 0.8], 1);
        let c = compare(&a, &b, &spec(Some(0.85)));
        assert_eq!(c.primary.decision, Some(true));
        assert_eq!(c.shadow.decision, Some(false));
        assert!(!c.agree);
        assert!((c.max_abs_diff - 0.1).abs() < 1e-6);
        let same_decision = compare(&a, &b, &spec(Some(0.5)));
        assert!(same_decision.agree);
        // Without a threshold, the tolerance decides.
        assert!(!compare(&a, &b, &spec(None)).agree);
        assert!(compare(&a, &a, &spec(None)).agree);
        // Integer outputs must match exactly.
        let d = compare(&a, &resp(2, &[0.1, 0.9], 0), &spec(None));
        assert!(d.exact_mismatch && !d.agree);
    }

    #[test]
    fn admission_samples_and_caps() {
        let arm = ShadowArm::new(ShadowSpec {
            version: 2,
            sample_bp: 10_000,
            max_in_flight: 2,
            timeout: Duration::from_secs(1),
            compare: spec(None),
        });
        let a = arm.admit().unwrap();
        let _b = arm.admit().unwrap();
        assert_eq!(arm.admit().unwrap_err(), Skip::Full);
        drop(a);
        assert!(arm.admit().is_ok());
        let half = ShadowArm::new(ShadowSpec {
            sample_bp: 5_000,
            max_in_flight: 1_000_000,
            ..arm.spec.clone()
        });
        let mut slots = Vec::new();
        let mut sampled = 0;
        for _ in 0..10_000 {
            if let Ok(s) = half.admit() {
                sampled += 1;
                slots.push(s);
            }
        }
        assert!((4_700..=5_300).contains(&sampled), "{sampled}");
    }

    #[test]
    fn log_rotates_by_size() {
        let d = tempfile::tempdir().unwrap();
        let log = DivergenceLog::new(d.path(), 1024, 2).unwrap();
        let r = DivergenceRecord {
            time_ms: 1,
            model: "m",
            request_id: "r",
            kind: "shadow",
            primary_version: 1,
            shadow_version: 2,
            primary_score: Some(0.9),
            shadow_score: Some(0.1),
            primary_decision: Some(true),
            shadow_decision: Some(false),
            threshold: Some(0.5),
            agree: false,
            logged: "all",
            max_abs_diff: 0.8,
            max_rel_diff: 0.9,
            exact_mismatch: false,
            primary_latency_ms: 1.0,
            shadow_latency_ms: 2.0,
        };
        for _ in 0..40 {
            log.write(&r);
        }
        drop(log); // writes what is queued
        assert!(d.path().join("divergence.jsonl").exists());
        assert!(d.path().join("divergence.jsonl.1").exists());
        assert!(d.path().join("divergence.jsonl.2").exists());
        assert!(!d.path().join("divergence.jsonl.3").exists());
        let text = std::fs::read_to_string(d.path().join("divergence.jsonl")).unwrap();
        let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(first["shadow_decision"], false);
        assert!(
            std::fs::metadata(d.path().join("divergence.jsonl"))
                .unwrap()
                .len()
                <= 1024
        );
    }
}
