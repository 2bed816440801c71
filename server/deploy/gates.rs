//! Canary rollouts: the candidate is compared with the stable version on the same traffic over
//! a sliding window. A breached gate moves the canary's weight to zero at once (rollback) or
//! freezes the rollout at its step (pause). With steps, the weight goes up one step only when
//! the step has lasted its minimum time and canary requests with every gate holding; after the
//! last step the candidate is promoted to stable. Decisions are kept in memory and, with
//! `--deployment-state-dir`, on disk next to a hash of the `deployment.toml` they were made
//! under, so they survive a restart until the file changes.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
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

/// `canary.steps` with their conditions, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct StepSpec {
    /// Weights in basis points, increasing; the last is 10 000.
    pub weights: Vec<u32>,
    pub min_duration: Duration,
    /// Canary requests in a step before it may end.
    pub min_requests: usize,
}

/// What a breached gate does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnFailure {
    #[default]
    Rollback,
    Pause,
}

/// Where a rollout is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Taking its step's (or fixed) weight.
    Serving,
    /// A gate was breached with `on_gate_failure = "pause"`: held at its step.
    Paused,
    /// A gate was breached: no traffic.
    RolledBack,
    /// Every step passed: the candidate is the stable version.
    Promoted,
}

/// The routing a rollout asks for now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Live {
    /// The canary's weight in basis points (`None`: the file's fixed weight).
    pub weight_bp: Option<u32>,
    /// The candidate answers every unversioned request.
    pub promoted: bool,
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
    /// Milliseconds since the Unix epoch (microsecond resolution).
    pub time_ms: f64,
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
fn judge(spec: &GateSpec, stable: &Window, canary: &Window, now_ms: f64) -> Option<Verdict> {
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

/// A step's progress.
#[derive(Debug)]
struct Progress {
    status: Status,
    step: usize,
    step_started: Instant,
    step_requests: usize,
}

/// The rollout state of one model's canary.
#[derive(Debug)]
pub struct CanaryMonitor {
    pub gates: Option<GateSpec>,
    pub steps: Option<StepSpec>,
    pub on_failure: OnFailure,
    pub canary: i64,
    windows: Mutex<(Window, Window, Instant)>,
    progress: Mutex<Progress>,
    /// Fast path for routing: the weight in effect (basis points) and whether promoted.
    live_weight: AtomicU32,
    live_promoted: AtomicBool,
    uses_steps: bool,
    verdict: Mutex<Option<Verdict>>,
    /// Where decisions are persisted, and the hash of the deployment they belong to.
    state_file: Option<(PathBuf, u64)>,
}

/// What is stored in `<state dir>/<model>.json`.
#[derive(Debug, Serialize, Deserialize)]
struct Persisted {
    deployment_hash: String,
    canary: i64,
    status: Status,
    step: usize,
    verdict: Option<Verdict>,
}

impl CanaryMonitor {
    /// A monitor for `canary`; with `state`, a decision recorded in that directory under the
    /// same deployment text is restored.
    pub fn new(
        gates: Option<GateSpec>,
        steps: Option<StepSpec>,
        on_failure: OnFailure,
        canary: i64,
        state: Option<(&Path, &str, &str)>,
    ) -> Self {
        let state_file = state.map(|(dir, model, text)| {
            (
                dir.join(format!("{model}.json")),
                xxhash_rust::xxh3::xxh3_64(text.as_bytes()),
            )
        });
        let restored: Option<Persisted> = state_file.as_ref().and_then(|(path, hash)| {
            let p: Persisted = serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
            (p.deployment_hash == format!("{hash:016x}") && p.canary == canary).then_some(p)
        });
        let n_steps = steps.as_ref().map_or(1, |s| s.weights.len());
        let (status, step, verdict) = match restored {
            Some(p) => (p.status, p.step.min(n_steps - 1), p.verdict),
            None => (Status::Serving, 0, None),
        };
        let m = CanaryMonitor {
            gates,
            uses_steps: steps.is_some(),
            steps,
            on_failure,
            canary,
            windows: Mutex::new((Window::default(), Window::default(), Instant::now())),
            progress: Mutex::new(Progress {
                status,
                step,
                step_started: Instant::now(),
                step_requests: 0,
            }),
            live_weight: AtomicU32::new(0),
            live_promoted: AtomicBool::new(false),
            verdict: Mutex::new(verdict),
            state_file,
        };
        m.publish(status, step);
        m
    }

    /// Updates the routing fast path for `status` at `step`.
    fn publish(&self, status: Status, step: usize) {
        let step_weight = self
            .steps
            .as_ref()
            .map_or(u32::MAX, |s| s.weights[step.min(s.weights.len() - 1)]);
        let w = match status {
            Status::RolledBack => 0,
            _ => step_weight,
        };
        self.live_weight.store(w, Ordering::SeqCst);
        self.live_promoted
            .store(status == Status::Promoted, Ordering::SeqCst);
    }

    /// The routing in effect.
    pub fn live(&self) -> Live {
        let w = self.live_weight.load(Ordering::SeqCst);
        Live {
            weight_bp: (self.uses_steps || w == 0).then_some(w),
            promoted: self.live_promoted.load(Ordering::SeqCst),
        }
    }

    /// The canary gets no traffic.
    pub fn rolled_back(&self) -> bool {
        self.status() == Status::RolledBack
    }

    /// Where the rollout is.
    pub fn status(&self) -> Status {
        self.progress.lock().status
    }

    /// The current step (0-based) when stepping.
    pub fn step(&self) -> Option<usize> {
        self.uses_steps.then(|| self.progress.lock().step)
    }

    /// Why it was rolled back or paused.
    pub fn verdict(&self) -> Option<Verdict> {
        self.verdict.lock().clone()
    }

    /// Records one routed request. Returns the status it moved the rollout to, with the
    /// breached gate's verdict for a rollback or pause.
    pub fn record(
        &self,
        canary_arm: bool,
        latency: Duration,
        ok: bool,
        now_ms: f64,
    ) -> Option<(Status, Option<Verdict>)> {
        let now = Instant::now();
        let mut progress = self.progress.lock();
        if matches!(progress.status, Status::RolledBack | Status::Promoted) {
            return None;
        }
        if canary_arm {
            progress.step_requests += 1;
        }
        let judged;
        let breach = {
            let mut w = self.windows.lock();
            let (stable, canary, last) = &mut *w;
            let window = self
                .gates
                .as_ref()
                .map_or(Duration::from_secs(60), |g| g.window);
            let target = if canary_arm {
                &mut *canary
            } else {
                &mut *stable
            };
            target.push(now, latency.as_secs_f64(), ok, window);
            let due = now.saturating_duration_since(*last) >= EVAL_EVERY || (canary_arm && !ok);
            if !due {
                return None;
            }
            *last = now;
            // A step ends only once its gates have been judged on enough canary requests.
            judged = self
                .gates
                .as_ref()
                .is_none_or(|g| canary.samples.len() >= g.min_requests);
            self.gates
                .as_ref()
                .and_then(|g| judge(g, stable, canary, now_ms))
        };
        if let Some(v) = breach {
            if progress.status == Status::Paused {
                return None; // already held; a human decides
            }
            let status = match self.on_failure {
                OnFailure::Rollback => Status::RolledBack,
                OnFailure::Pause => Status::Paused,
            };
            progress.status = status;
            *self.verdict.lock() = Some(v.clone());
            self.publish(status, progress.step);
            self.persist(status, progress.step, Some(&v));
            return Some((status, Some(v)));
        }
        // Every gate holds: the step may end.
        let steps = self.steps.as_ref()?;
        if progress.status != Status::Serving
            || !judged
            || progress.step_requests < steps.min_requests
            || now.saturating_duration_since(progress.step_started) < steps.min_duration
        {
            return None;
        }
        let status = if progress.step + 1 >= steps.weights.len() {
            Status::Promoted
        } else {
            progress.step += 1;
            progress.step_started = now;
            progress.step_requests = 0;
            Status::Serving
        };
        progress.status = status;
        self.publish(status, progress.step);
        self.persist(status, progress.step, None);
        Some((status, None))
    }

    fn persist(&self, status: Status, step: usize, verdict: Option<&Verdict>) {
        let Some((path, hash)) = &self.state_file else {
            return;
        };
        let p = Persisted {
            deployment_hash: format!("{hash:016x}"),
            canary: self.canary,
            status,
            step,
            verdict: verdict.cloned(),
        };
        let tmp = path.with_extension("json.tmp");
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let written = std::fs::create_dir_all(&dir)
            .and_then(|()| serde_json::to_vec_pretty(&p).map_err(std::io::Error::other))
            .and_then(|b| std::fs::write(&tmp, b))
            .and_then(|()| std::fs::rename(&tmp, path));
        if let Err(e) = written {
            tracing::error!(error = %e, path = %path.display(), "cannot persist the canary decision");
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
        let m = CanaryMonitor::new(Some(spec()), None, OnFailure::Rollback, 2, None);
        for _ in 0..19 {
            assert!(m
                .record(true, Duration::from_millis(1), false, 0.0)
                .is_none());
        }
        let (status, v) = m
            .record(true, Duration::from_millis(1), false, 0.0)
            .unwrap();
        assert_eq!(status, Status::RolledBack);
        let v = v.unwrap();
        assert_eq!(v.gate, "max_error_rate");
        assert_eq!(m.live().weight_bp, Some(0));
        assert_eq!(v.canary_requests, 20);
        assert!(m.rolled_back());
        assert!(m
            .record(true, Duration::from_millis(1), false, 0.0)
            .is_none());
    }

    #[test]
    fn steps_advance_only_after_time_and_requests_then_promote() {
        let steps = StepSpec {
            weights: vec![100, 5_000, 10_000],
            min_duration: Duration::ZERO,
            min_requests: 5,
        };
        let m = CanaryMonitor::new(Some(spec()), Some(steps), OnFailure::Rollback, 2, None);
        assert_eq!(
            m.live(),
            Live {
                weight_bp: Some(100),
                promoted: false
            }
        );
        let mut moves = Vec::new();
        for _ in 0..200 {
            std::thread::sleep(Duration::from_millis(1));
            if let Some((s, _)) = m.record(true, Duration::from_millis(1), true, 0.0) {
                moves.push((s, m.step()));
            }
            if m.status() == Status::Promoted {
                break;
            }
        }
        assert_eq!(
            moves,
            vec![
                (Status::Serving, Some(1)),
                (Status::Serving, Some(2)),
                (Status::Promoted, Some(2))
            ]
        );
        assert!(m.live().promoted);
    }

    #[test]
    fn pause_holds_the_step() {
        let steps = StepSpec {
            weights: vec![1_000, 10_000],
            min_duration: Duration::ZERO,
            min_requests: 1,
        };
        let m = CanaryMonitor::new(Some(spec()), Some(steps), OnFailure::Pause, 2, None);
        for _ in 0..20 {
            m.record(true, Duration::from_millis(1), false, 0.0);
        }
        assert_eq!(m.status(), Status::Paused);
        assert_eq!(
            m.live(),
            Live {
                weight_bp: Some(1_000),
                promoted: false
            }
        );
        for _ in 0..50 {
            std::thread::sleep(Duration::from_millis(1));
            assert!(m
                .record(true, Duration::from_millis(1), true, 0.0)
                .is_none());
        }
        assert_eq!(m.step(), Some(0));
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
        let v = judge(&spec(), &stable, &canary, 0.0).unwrap();
        assert_eq!(v.gate, "max_p99_ratio");
        assert!((v.canary_value - 5.0).abs() < 1e-9);
        let mut ok = spec();
        ok.max_p99_ratio = Some(6.0);
        assert!(judge(&ok, &stable, &canary, 0.0).is_none());
        ok.max_p99_ms = Some(5.0);
        assert_eq!(
            judge(&ok, &stable, &canary, 0.0).unwrap().gate,
            "max_p99_ms"
        );
    }

    #[test]
    fn decisions_persist_for_the_same_deployment_only() {
        let d = tempfile::tempdir().unwrap();
        let new = |canary, text| {
            CanaryMonitor::new(
                Some(spec()),
                None,
                OnFailure::Rollback,
                canary,
                Some((d.path(), "m", text)),
            )
        };
        let m = new(2, "text-a");
        for _ in 0..20 {
            m.record(true, Duration::from_millis(1), false, 0.0);
        }
        assert!(m.rolled_back());
        let again = new(2, "text-a");
        assert!(again.rolled_back());
        assert_eq!(again.verdict().unwrap().gate, "max_error_rate");
        let changed = new(2, "text-b");
        assert!(!changed.rolled_back());
        let other_canary = new(3, "text-a");
        assert!(!other_canary.rolled_back());
    }
}
