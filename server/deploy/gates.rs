//! Canary gates: the candidate is compared with the stable version on the same traffic over a
//! sliding window, and a breached gate moves the canary's weight to zero at once (rollback).
//! The decision is kept in memory and, with `--deployment-state-dir`, on disk next to a hash
//! of the `deployment.toml` it was made under, so it survives a restart until the file changes.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// `[canary.gates]`, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct GateSpec {
    /// Samples older than this are forgotten.
    pub window: Duration,
    /// Canary requests in the window before any gate is judged (stable ones too, for ratios).
    pub min_requests: usize,
    /// Largest canary error rate (0..1).
    pub max_error_rate: Option<f64>,
    /// Largest canary p99, milliseconds.
    pub max_p99_ms: Option<f64>,
    /// Largest canary p99 / stable p99.
    pub max_p99_ratio: Option<f64>,
}

/// Why a canary was rolled back: the gate, the measured values and the limit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    pub gate: String,
    pub canary_value: f64,
    pub stable_value: Option<f64>,
    pub limit: f64,
    pub canary_requests: usize,
    pub stable_requests: usize,
    /// Milliseconds since the Unix epoch.
    pub time_ms: u128,
}

#[derive(Debug, Default)]
struct Window {
    /// (when, latency seconds, ok)
    samples: VecDeque<(Instant, f64, bool)>,
}

/// Samples kept per arm at most (the window is also bounded in time).
const MAX_SAMPLES: usize = 20_000;
/// Gates are judged at most this often (and on every canary failure).
const EVAL_EVERY: Duration = Duration::from_millis(20);

impl Window {
    fn push(&mut self, at: Instant, latency: f64, ok: bool, window: Duration) {
        self.samples.push_back((at, latency, ok));
        while self.samples.len() > MAX_SAMPLES
            || self
                .samples
                .front()
                .is_some_and(|(t, _, _)| at.saturating_duration_since(*t) > window)
        {
            self.samples.pop_front();
        }
    }

    fn error_rate(&self) -> f64 {
        let n = self.samples.len().max(1) as f64;
        self.samples.iter().filter(|(_, _, ok)| !ok).count() as f64 / n
    }

    /// p99 latency of the successful requests, in milliseconds.
    fn p99_ms(&self) -> Option<f64> {
        let mut v: Vec<f64> = self
            .samples
            .iter()
            .filter(|(_, _, ok)| *ok)
            .map(|(_, l, _)| *l)
            .collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let idx = ((v.len() as f64) * 0.99).ceil() as usize;
        Some(v[idx.clamp(1, v.len()) - 1] * 1e3)
    }
}

/// Judges the gates on two windows; the first breached gate, if any.
fn judge(spec: &GateSpec, stable: &Window, canary: &Window, now_ms: u128) -> Option<Verdict> {
    let (nc, ns) = (canary.samples.len(), stable.samples.len());
    if nc < spec.min_requests {
        return None;
    }
    let verdict = |gate: &str, canary_value: f64, stable_value: Option<f64>, limit: f64| Verdict {
        gate: gate.to_string(),
        canary_value,
        stable_value,
        limit,
        canary_requests: nc,
        stable_requests: ns,
        time_ms: now_ms,
    };
    if let Some(limit) = spec.max_error_rate {
        let e = canary.error_rate();
        if e > limit {
            return Some(verdict(
                "max_error_rate",
                e,
                Some(stable.error_rate()),
                limit,
            ));
        }
    }
    let cp = canary.p99_ms();
    if let (Some(limit), Some(p)) = (spec.max_p99_ms, cp) {
        if p > limit {
            return Some(verdict("max_p99_ms", p, stable.p99_ms(), limit));
        }
    }
    if let (Some(limit), Some(p)) = (spec.max_p99_ratio, cp) {
        if ns >= spec.min_requests {
            if let Some(s) = stable.p99_ms().filter(|s| *s > 0.0) {
                if p / s > limit {
                    return Some(verdict("max_p99_ratio", p / s, Some(s), limit));
                }
            }
        }
    }
    None
}

/// The gate state of one model's canary.
#[derive(Debug)]
pub struct CanaryMonitor {
    pub spec: GateSpec,
    pub canary: i64,
    windows: Mutex<(Window, Window, Instant)>,
    rolled_back: AtomicBool,
    verdict: Mutex<Option<Verdict>>,
    /// Where the decision is persisted, and the hash of the deployment it belongs to.
    state_file: Option<(PathBuf, u64)>,
}

/// What is stored in `<state dir>/<model>.json`.
#[derive(Debug, Serialize, Deserialize)]
struct Persisted {
    deployment_hash: String,
    canary: i64,
    state: String,
    verdict: Verdict,
}

impl CanaryMonitor {
    /// A monitor for `canary`; with `state_dir`, a rollback recorded there under the same
    /// deployment text is restored.
    pub fn new(spec: GateSpec, canary: i64, state: Option<(&Path, &str, &str)>) -> Self {
        let state_file = state.map(|(dir, model, text)| {
            (
                dir.join(format!("{model}.json")),
                xxhash_rust::xxh3::xxh3_64(text.as_bytes()),
            )
        });
        let restored = state_file.as_ref().and_then(|(path, hash)| {
            let p: Persisted = serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
            (p.deployment_hash == format!("{hash:016x}")
                && p.canary == canary
                && p.state == "rolled_back")
                .then_some(p.verdict)
        });
        CanaryMonitor {
            spec,
            canary,
            windows: Mutex::new((Window::default(), Window::default(), Instant::now())),
            rolled_back: AtomicBool::new(restored.is_some()),
            verdict: Mutex::new(restored),
            state_file,
        }
    }

    /// The canary gets no traffic.
    pub fn rolled_back(&self) -> bool {
        self.rolled_back.load(Ordering::SeqCst)
    }

    /// Why it was rolled back.
    pub fn verdict(&self) -> Option<Verdict> {
        self.verdict.lock().clone()
    }

    /// Records one routed request; returns the verdict if this one made the canary roll back.
    pub fn record(
        &self,
        canary_arm: bool,
        latency: Duration,
        ok: bool,
        now_ms: u128,
    ) -> Option<Verdict> {
        if self.rolled_back() {
            return None;
        }
        let now = Instant::now();
        let verdict = {
            let mut w = self.windows.lock();
            let (stable, canary, last) = &mut *w;
            let target = if canary_arm {
                &mut *canary
            } else {
                &mut *stable
            };
            target.push(now, latency.as_secs_f64(), ok, self.spec.window);
            let due = now.saturating_duration_since(*last) >= EVAL_EVERY || (canary_arm && !ok);
            if !due {
                return None;
            }
            *last = now;
            judge(&self.spec, stable, canary, now_ms)?
        };
        if self.rolled_back.swap(true, Ordering::SeqCst) {
            return None;
        }
        *self.verdict.lock() = Some(verdict.clone());
        self.persist(&verdict);
        Some(verdict)
    }

    fn persist(&self, verdict: &Verdict) {
        let Some((path, hash)) = &self.state_file else {
            return;
        };
        let p = Persisted {
            deployment_hash: format!("{hash:016x}"),
            canary: self.canary,
            state: "rolled_back".into(),
            verdict: verdict.clone(),
        };
        let tmp = path.with_extension("json.tmp");
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let written = std::fs::create_dir_all(&dir)
            .and_then(|()| serde_json::to_vec_pretty(&p).map_err(std::io::Error::other))
            .and_then(|b| std::fs::write(&tmp, b))
            .and_then(|()| std::fs::rename(&tmp, path));
        if let Err(e) = written {
            tracing::error!(error = %e, path = %path.display(), "cannot persist the rollback");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> GateSpec {
        GateSpec {
            window: Duration::from_secs(60),
            min_requests: 20,
            max_error_rate: Some(0.1),
            max_p99_ms: Some(50.0),
            max_p99_ratio: Some(3.0),
        }
    }

    #[test]
    fn error_rate_gate_needs_min_requests() {
        let m = CanaryMonitor::new(spec(), 2, None);
        for _ in 0..19 {
            assert!(m.record(true, Duration::from_millis(1), false, 0).is_none());
        }
        let v = m.record(true, Duration::from_millis(1), false, 0).unwrap();
        assert_eq!(v.gate, "max_error_rate");
        assert_eq!(v.canary_requests, 20);
        assert!(m.rolled_back());
        assert!(m.record(true, Duration::from_millis(1), false, 0).is_none());
    }

    #[test]
    fn latency_gates() {
        let mut stable = Window::default();
        let mut canary = Window::default();
        let now = Instant::now();
        for _ in 0..100 {
            stable.push(now, 0.002, true, Duration::from_secs(60));
            canary.push(now, 0.010, true, Duration::from_secs(60));
        }
        let v = judge(&spec(), &stable, &canary, 0).unwrap();
        assert_eq!(v.gate, "max_p99_ratio");
        assert!((v.canary_value - 5.0).abs() < 1e-9);
        let mut ok = spec();
        ok.max_p99_ratio = Some(6.0);
        assert!(judge(&ok, &stable, &canary, 0).is_none());
        ok.max_p99_ms = Some(5.0);
        assert_eq!(judge(&ok, &stable, &canary, 0).unwrap().gate, "max_p99_ms");
    }

    #[test]
    fn decisions_persist_for_the_same_deployment_only() {
        let d = tempfile::tempdir().unwrap();
        let m = CanaryMonitor::new(spec(), 2, Some((d.path(), "m", "text-a")));
        for _ in 0..20 {
            m.record(true, Duration::from_millis(1), false, 0);
        }
        assert!(m.rolled_back());
        let again = CanaryMonitor::new(spec(), 2, Some((d.path(), "m", "text-a")));
        assert!(again.rolled_back());
        assert_eq!(again.verdict().unwrap().gate, "max_error_rate");
        let changed = CanaryMonitor::new(spec(), 2, Some((d.path(), "m", "text-b")));
        assert!(!changed.rolled_back());
        let other_canary = CanaryMonitor::new(spec(), 3, Some((d.path(), "m", "text-a")));
        assert!(!other_canary.rolled_back());
    }
}
