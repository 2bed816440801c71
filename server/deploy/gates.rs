//! Canary rollouts: the candidate is compared with the stable version on the same traffic over
//! a sliding window. A breached gate moves the canary's weight to zero at once (rollback) or
//! freezes the rollout at its step (pause). With steps, the weight goes up one step only when
//! the step has lasted its minimum time and canary requests with every gate holding; after the
//! last step the candidate is promoted to stable. Decisions are kept in memory and, with
//! `--deployment-state-dir`, on disk next to a hash of the `deployment.toml` they were made
//! under, so they survive a restart until the file changes.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::config::{CompareSpec, Deployment};
use super::router::BASIS_POINTS;
use super::shadow::ShadowArm;

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
    /// Largest PSI of the canary's scores against stable's.
    pub max_psi: Option<f64>,
    /// Quantile bins of the PSI.
    pub psi_bins: usize,
    /// Smallest share of checked canary requests on which stable makes the same decision.
    pub min_agreement: Option<f64>,
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
    /// The canary's weight in basis points (`None`: the file's fixed weight; a monitor always
    /// gives one).
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
    /// (when, latency seconds, ok, score or NaN)
    samples: VecDeque<(Instant, f64, bool, f64)>,
}

/// The gates' inputs: both arms' windows, and the agreement of checked canary requests.
#[derive(Debug)]
struct Windows {
    stable: Window,
    canary: Window,
    /// (when, stable agreed with the canary's decision)
    checks: VecDeque<(Instant, bool)>,
    last_eval: Instant,
}

/// The gates' measured values at the last evaluation (for the admin API and metrics).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct GateValues {
    pub canary_requests: usize,
    pub stable_requests: usize,
    pub canary_error_rate: f64,
    pub stable_error_rate: f64,
    pub canary_p99_ms: Option<f64>,
    pub stable_p99_ms: Option<f64>,
    pub psi: Option<f64>,
    pub checks: usize,
    pub agreement: Option<f64>,
}

/// Samples kept per arm at most (the window is also bounded in time).
const MAX_SAMPLES: usize = 20_000;
/// Gates are judged at most this often...
const EVAL_EVERY: Duration = Duration::from_millis(20);
/// ...and on a canary failure or disagreement, at most this often.
const EVAL_FORCED_EVERY: Duration = Duration::from_millis(2);
/// The PSI is judged only once each arm has this many scored requests per bin: below that,
/// sampling noise alone adds about (bins - 1) * (1/n_canary + 1/n_stable) to it.
pub const PSI_SAMPLES_PER_BIN: usize = 20;

impl Window {
    fn push(&mut self, at: Instant, latency: f64, ok: bool, score: Option<f64>, window: Duration) {
        self.samples
            .push_back((at, latency, ok, score.unwrap_or(f64::NAN)));
        while self.samples.len() > MAX_SAMPLES
            || self
                .samples
                .front()
                .is_some_and(|(t, ..)| at.saturating_duration_since(*t) > window)
        {
            self.samples.pop_front();
        }
    }

    /// Forgets samples older than `window` at `now` (an arm that gets no traffic still ages).
    fn evict(&mut self, now: Instant, window: Duration) {
        while self
            .samples
            .front()
            .is_some_and(|(t, ..)| now.saturating_duration_since(*t) > window)
        {
            self.samples.pop_front();
        }
    }

    fn error_rate(&self) -> f64 {
        let n = self.samples.len().max(1) as f64;
        self.samples.iter().filter(|(_, _, ok, _)| !ok).count() as f64 / n
    }

    /// The scores of the successful requests.
    fn scores(&self) -> Vec<f64> {
        self.samples
            .iter()
            .filter(|(_, _, ok, s)| *ok && s.is_finite())
            .map(|(.., s)| *s)
            .collect()
    }

    /// p99 latency of the successful requests, in milliseconds.
    fn p99_ms(&self) -> Option<f64> {
        let mut v: Vec<f64> = self
            .samples
            .iter()
            .filter(|(_, _, ok, _)| *ok)
            .map(|(_, l, _, _)| *l)
            .collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let idx = ((v.len() as f64) * 0.99).ceil() as usize;
        Some(v[idx.clamp(1, v.len()) - 1] * 1e3)
    }
}

/// Measures every gate's value on the windows.
fn measure(spec: &GateSpec, w: &Windows) -> GateValues {
    let (canary_scores, stable_scores) = if spec.max_psi.is_some() {
        (w.canary.scores(), w.stable.scores())
    } else {
        (Vec::new(), Vec::new())
    };
    let psi_min = spec.min_requests.max(PSI_SAMPLES_PER_BIN * spec.psi_bins);
    let enough = |n: usize| n >= psi_min;
    let checks = w.checks.len();
    GateValues {
        canary_requests: w.canary.samples.len(),
        stable_requests: w.stable.samples.len(),
        canary_error_rate: w.canary.error_rate(),
        stable_error_rate: w.stable.error_rate(),
        canary_p99_ms: w.canary.p99_ms(),
        stable_p99_ms: w.stable.p99_ms(),
        psi: (enough(canary_scores.len()) && enough(stable_scores.len()))
            .then(|| crate::deploy::psi::psi(&stable_scores, &canary_scores, spec.psi_bins))
            .flatten(),
        checks,
        agreement: (checks > 0)
            .then(|| w.checks.iter().filter(|(_, a)| *a).count() as f64 / checks as f64),
    }
}

/// Judges the gates on their measured values; the first breached gate, if any.
fn judge(spec: &GateSpec, v: &GateValues, now_ms: f64) -> Option<Verdict> {
    let (nc, ns) = (v.canary_requests, v.stable_requests);
    let verdict = |gate: &str, canary_value: f64, stable_value: Option<f64>, limit: f64| Verdict {
        gate: gate.to_string(),
        canary_value,
        stable_value,
        limit,
        canary_requests: nc,
        stable_requests: ns,
        time_ms: now_ms,
    };
    // Agreement is judged on its own sample count: checks arrive apart from the windows.
    if let (Some(limit), Some(a)) = (spec.min_agreement, v.agreement) {
        if v.checks >= spec.min_requests && a < limit {
            return Some(verdict("min_agreement", a, None, limit));
        }
    }
    if nc < spec.min_requests {
        return None;
    }
    if let Some(limit) = spec.max_error_rate {
        if v.canary_error_rate > limit {
            return Some(verdict(
                "max_error_rate",
                v.canary_error_rate,
                Some(v.stable_error_rate),
                limit,
            ));
        }
    }
    if let (Some(limit), Some(p)) = (spec.max_p99_ms, v.canary_p99_ms) {
        if p > limit {
            return Some(verdict("max_p99_ms", p, v.stable_p99_ms, limit));
        }
    }
    if let (Some(limit), Some(p)) = (spec.max_p99_ratio, v.canary_p99_ms) {
        if ns >= spec.min_requests {
            if let Some(s) = v.stable_p99_ms.filter(|s| *s > 0.0) {
                if p / s > limit {
                    return Some(verdict("max_p99_ratio", p / s, Some(s), limit));
                }
            }
        }
    }
    if let (Some(limit), Some(psi)) = (spec.max_psi, v.psi) {
        if psi > limit {
            return Some(verdict("max_psi", psi, None, limit));
        }
    }
    None
}

/// Every gate has had enough samples to be judged (a step may end only then).
fn all_judged(spec: &GateSpec, v: &GateValues) -> bool {
    v.canary_requests >= spec.min_requests
        && (spec.max_p99_ms.is_none() || v.canary_p99_ms.is_some())
        && (spec.max_p99_ratio.is_none()
            || (v.canary_p99_ms.is_some()
                && v.stable_p99_ms.is_some()
                && v.stable_requests >= spec.min_requests))
        && (spec.max_psi.is_none() || v.psi.is_some())
        && (spec.min_agreement.is_none() || v.checks >= spec.min_requests)
}

/// A step's progress.
#[derive(Debug)]
struct Progress {
    status: Status,
    step: usize,
    step_started: Instant,
    step_requests: usize,
    /// A weight an operator set (basis points), in place of the step's or the file's.
    override_bp: Option<u32>,
}

/// A rollout move: the status it moved to, with the breached gate's verdict for a rollback
/// or pause by a gate.
pub type Move = (Status, Option<Verdict>);

/// The part of a rollout that outlives the process (see `deploy::control`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub status: Status,
    pub step: usize,
    pub verdict: Option<Verdict>,
    #[serde(default)]
    pub override_bp: Option<u32>,
}

/// An operator's action on a canary (admin API).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Action {
    /// Canary weight in percent; with steps, the rollout is paused at that weight.
    SetWeight(f64),
    Promote,
    Rollback,
    Pause,
    /// Back to `Serving` from a pause or rollback: windows restart, the step's weight applies.
    Resume,
}

/// The rollout state of one model's canary.
#[derive(Debug)]
pub struct CanaryMonitor {
    pub gates: Option<GateSpec>,
    pub steps: Option<StepSpec>,
    pub on_failure: OnFailure,
    pub canary: i64,
    /// The file's fixed weight (basis points), used without steps.
    pub file_weight_bp: u32,
    /// The canary's score (PSI gate), when `[canary.compare]` is given.
    pub compare: Option<CompareSpec>,
    /// Stable's re-runs of canary requests (agreement gate).
    pub check: Option<Arc<ShadowArm>>,
    windows: Mutex<Windows>,
    progress: Mutex<Progress>,
    /// Fast path for routing: the weight in effect (basis points) and whether promoted.
    live_weight: AtomicU32,
    live_promoted: AtomicBool,
    verdict: Mutex<Option<Verdict>>,
    values: Mutex<Option<GateValues>>,
}

impl CanaryMonitor {
    /// A monitor for the canary of `d` (None without one), resuming from `restored`.
    pub fn new(d: &Deployment, restored: Option<Snapshot>) -> Option<Self> {
        let (canary, file_weight_bp) = d.canary?;
        let n_steps = d.steps.as_ref().map_or(1, |s| s.weights.len());
        let (status, step, verdict, override_bp) = match restored {
            Some(p) => (p.status, p.step.min(n_steps - 1), p.verdict, p.override_bp),
            None => (Status::Serving, 0, None, None),
        };
        let now = Instant::now();
        let m = CanaryMonitor {
            gates: d.gates.clone(),
            steps: d.steps.clone(),
            on_failure: d.on_failure,
            canary,
            file_weight_bp,
            compare: d.canary_compare.clone(),
            check: d.canary_check.clone().map(ShadowArm::check),
            windows: Mutex::new(Windows {
                stable: Window::default(),
                canary: Window::default(),
                checks: VecDeque::new(),
                last_eval: now,
            }),
            progress: Mutex::new(Progress {
                status,
                step,
                step_started: now,
                step_requests: 0,
                override_bp,
            }),
            live_weight: AtomicU32::new(0),
            live_promoted: AtomicBool::new(false),
            verdict: Mutex::new(verdict),
            values: Mutex::new(None),
        };
        m.publish(&m.progress.lock());
        Some(m)
    }

    /// The weight (basis points) the canary takes at `progress`.
    fn weight_at(&self, p: &Progress) -> u32 {
        match p.status {
            Status::RolledBack => 0,
            Status::Promoted => BASIS_POINTS,
            _ => p.override_bp.unwrap_or_else(|| {
                self.steps.as_ref().map_or(self.file_weight_bp, |s| {
                    s.weights[p.step.min(s.weights.len() - 1)]
                })
            }),
        }
    }

    /// Updates the routing fast path.
    fn publish(&self, p: &Progress) {
        self.live_weight.store(self.weight_at(p), Ordering::SeqCst);
        self.live_promoted
            .store(p.status == Status::Promoted, Ordering::SeqCst);
    }

    /// The routing in effect.
    pub fn live(&self) -> Live {
        Live {
            weight_bp: Some(self.live_weight.load(Ordering::SeqCst)),
            promoted: self.live_promoted.load(Ordering::SeqCst),
        }
    }

    /// The canary's weight in effect, percent.
    pub fn weight_percent(&self) -> f64 {
        f64::from(self.live_weight.load(Ordering::SeqCst)) / 100.0
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
        self.steps.as_ref().map(|_| self.progress.lock().step)
    }

    /// Why it was rolled back or paused.
    pub fn verdict(&self) -> Option<Verdict> {
        self.verdict.lock().clone()
    }

    /// The gates' values at the last evaluation.
    pub fn values(&self) -> Option<GateValues> {
        self.values.lock().clone()
    }

    /// What survives a restart.
    pub fn snapshot(&self) -> Snapshot {
        let p = self.progress.lock();
        Snapshot {
            status: p.status,
            step: p.step,
            verdict: self.verdict(),
            override_bp: p.override_bp,
        }
    }

    /// Records one routed request (`score`: its compared score, when `compare` is set).
    pub fn record(
        &self,
        canary_arm: bool,
        latency: Duration,
        ok: bool,
        score: Option<f64>,
        now_ms: f64,
    ) -> Option<Move> {
        if self.gates.is_none() && self.steps.is_none() {
            return None;
        }
        let now = Instant::now();
        let mut progress = self.progress.lock();
        if matches!(progress.status, Status::RolledBack | Status::Promoted) {
            return None;
        }
        if canary_arm {
            progress.step_requests += 1;
        }
        let mut w = self.windows.lock();
        let window = self.window();
        let target = if canary_arm {
            &mut w.canary
        } else {
            &mut w.stable
        };
        target.push(now, latency.as_secs_f64(), ok, score, window);
        if !self.due(&progress, &w, now, canary_arm && !ok) {
            return None;
        }
        self.evaluate(&mut progress, &mut w, now, now_ms)
    }

    /// Records whether stable made the canary's decision on a checked canary request.
    pub fn record_check(&self, agree: bool, now_ms: f64) -> Option<Move> {
        let now = Instant::now();
        let mut progress = self.progress.lock();
        if matches!(progress.status, Status::RolledBack | Status::Promoted) {
            return None;
        }
        let mut w = self.windows.lock();
        let window = self.window();
        w.checks.push_back((now, agree));
        while w.checks.len() > MAX_SAMPLES
            || w.checks
                .front()
                .is_some_and(|(t, _)| now.saturating_duration_since(*t) > window)
        {
            w.checks.pop_front();
        }
        if !self.due(&progress, &w, now, !agree) {
            return None;
        }
        self.evaluate(&mut progress, &mut w, now, now_ms)
    }

    /// Whether to evaluate now: every `EVAL_EVERY`, sooner on bad news; never while a gate's
    /// own pause holds the rollout (a human decides, and nothing would change).
    fn due(&self, p: &Progress, w: &Windows, now: Instant, bad_news: bool) -> bool {
        if p.status == Status::Paused && self.verdict.lock().is_some() {
            return false;
        }
        let since = now.saturating_duration_since(w.last_eval);
        since >= EVAL_EVERY || (bad_news && since >= EVAL_FORCED_EVERY)
    }

    fn window(&self) -> Duration {
        self.gates
            .as_ref()
            .map_or(Duration::from_secs(60), |g| g.window)
    }

    /// Judges the gates, then moves the step on if everything held long enough.
    fn evaluate(
        &self,
        progress: &mut Progress,
        w: &mut Windows,
        now: Instant,
        now_ms: f64,
    ) -> Option<Move> {
        w.last_eval = now;
        let window = self.window();
        w.stable.evict(now, window);
        w.canary.evict(now, window);
        while w
            .checks
            .front()
            .is_some_and(|(t, _)| now.saturating_duration_since(*t) > window)
        {
            w.checks.pop_front();
        }
        let (breach, judged) = match &self.gates {
            Some(g) => {
                let values = measure(g, w);
                let out = (judge(g, &values, now_ms), all_judged(g, &values));
                *self.values.lock() = Some(values);
                out
            }
            None => (None, true),
        };
        if let Some(v) = breach {
            // A gate's own pause holds until a human acts (`due` stops evaluating then); an
            // operator's pause or weight keeps the gates armed.
            if progress.status == Status::Paused && self.verdict.lock().is_some() {
                return None;
            }
            let status = match self.on_failure {
                OnFailure::Rollback => Status::RolledBack,
                OnFailure::Pause => Status::Paused,
            };
            progress.status = status;
            *self.verdict.lock() = Some(v.clone());
            self.publish(progress);
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
        self.publish(progress);
        Some((status, None))
    }

    /// Carries out an operator's action; the status it leaves, or why it cannot be done.
    /// Gates stay armed after every action: an operator's pause or weight is still rolled back
    /// (or paused) by a breached gate.
    pub fn act(&self, action: Action) -> Result<Status, String> {
        let mut p = self.progress.lock();
        match action {
            Action::SetWeight(pct) => {
                if !(0.0..=100.0).contains(&pct) {
                    return Err(format!("weight {pct}: must be a percent from 0 to 100"));
                }
                if p.status == Status::RolledBack || self.verdict.lock().is_some() {
                    self.restart(&mut p);
                }
                p.override_bp = Some((pct * 100.0).round() as u32);
                p.status = if self.steps.is_some() {
                    Status::Paused
                } else {
                    Status::Serving
                };
            }
            Action::Promote => p.status = Status::Promoted,
            Action::Rollback => p.status = Status::RolledBack,
            Action::Pause => match p.status {
                Status::Serving | Status::Paused => p.status = Status::Paused,
                s => return Err(format!("the canary is {s:?}: only a serving canary pauses")),
            },
            Action::Resume => {
                match p.status {
                    Status::Promoted => {
                        return Err(
                            "the canary is promoted: roll it back first, or edit deployment.toml"
                                .into(),
                        )
                    }
                    // After a rollback the rollout starts again from its first step.
                    Status::RolledBack => p.step = 0,
                    Status::Serving | Status::Paused => {}
                }
                p.override_bp = None;
                self.restart(&mut p);
                p.status = Status::Serving;
            }
        }
        self.publish(&p);
        Ok(p.status)
    }

    /// Fresh windows, no verdict and a new step timer: the gates judge only what comes next.
    fn restart(&self, p: &mut Progress) {
        p.step_started = Instant::now();
        p.step_requests = 0;
        *self.verdict.lock() = None;
        *self.values.lock() = None;
        let mut w = self.windows.lock();
        w.stable = Window::default();
        w.canary = Window::default();
        w.checks.clear();
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
            max_psi: None,
            psi_bins: 10,
            min_agreement: None,
        }
    }

    fn monitor(gates: GateSpec, steps: Option<StepSpec>, on_failure: OnFailure) -> CanaryMonitor {
        let d = Deployment {
            stable: Some(1),
            canary: Some((2, 1_000)),
            gates: Some(gates),
            steps,
            on_failure,
            ..Default::default()
        };
        CanaryMonitor::new(&d, None).unwrap()
    }

    const MS: Duration = Duration::from_millis(1);

    /// One failed canary request, after the forced-evaluation interval.
    fn fail(m: &CanaryMonitor) -> Option<Move> {
        std::thread::sleep(EVAL_FORCED_EVERY + MS);
        m.record(true, MS, false, None, 0.0)
    }

    /// One canary check, after the forced-evaluation interval.
    fn check(m: &CanaryMonitor, agree: bool) -> Option<Move> {
        std::thread::sleep(EVAL_FORCED_EVERY + MS);
        m.record_check(agree, 0.0)
    }

    #[test]
    fn error_rate_gate_needs_min_requests() {
        let m = monitor(spec(), None, OnFailure::Rollback);
        assert_eq!(m.live().weight_bp, Some(1_000));
        for _ in 0..19 {
            assert!(fail(&m).is_none());
        }
        let (status, v) = fail(&m).unwrap();
        assert_eq!(status, Status::RolledBack);
        let v = v.unwrap();
        assert_eq!(v.gate, "max_error_rate");
        assert_eq!(m.live().weight_bp, Some(0));
        assert_eq!(v.canary_requests, 20);
        assert!(m.rolled_back());
        assert!(fail(&m).is_none());
    }

    #[test]
    fn steps_advance_only_after_time_and_requests_then_promote() {
        let steps = StepSpec {
            weights: vec![100, 5_000, 10_000],
            min_duration: Duration::ZERO,
            min_requests: 5,
        };
        let m = monitor(spec(), Some(steps), OnFailure::Rollback);
        assert_eq!(
            m.live(),
            Live {
                weight_bp: Some(100),
                promoted: false
            }
        );
        let mut moves = Vec::new();
        for _ in 0..200 {
            std::thread::sleep(MS);
            // The p99 ratio gate needs stable requests too before a step may end.
            let stable = m.record(false, MS, true, None, 0.0);
            if let Some((s, _)) = stable.or_else(|| m.record(true, MS, true, None, 0.0)) {
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
        let m = monitor(spec(), Some(steps), OnFailure::Pause);
        for _ in 0..20 {
            fail(&m);
        }
        assert_eq!(m.status(), Status::Paused);
        assert_eq!(m.live().weight_bp, Some(1_000));
        for _ in 0..50 {
            std::thread::sleep(MS);
            assert!(m.record(true, MS, true, None, 0.0).is_none());
        }
        assert_eq!(m.step(), Some(0));
        // An operator resumes: the step runs again with fresh windows.
        assert_eq!(m.act(Action::Resume), Ok(Status::Serving));
        assert!(m.verdict().is_none());
    }

    fn windows() -> Windows {
        Windows {
            stable: Window::default(),
            canary: Window::default(),
            checks: VecDeque::new(),
            last_eval: Instant::now(),
        }
    }

    #[test]
    fn latency_gates() {
        let mut w = windows();
        let now = Instant::now();
        let window = Duration::from_secs(60);
        for _ in 0..100 {
            w.stable.push(now, 0.002, true, None, window);
            w.canary.push(now, 0.010, true, None, window);
        }
        let v = judge(&spec(), &measure(&spec(), &w), 0.0).unwrap();
        assert_eq!(v.gate, "max_p99_ratio");
        assert!((v.canary_value - 5.0).abs() < 1e-9);
        let mut ok = spec();
        ok.max_p99_ratio = Some(6.0);
        assert!(judge(&ok, &measure(&ok, &w), 0.0).is_none());
        ok.max_p99_ms = Some(5.0);
        assert_eq!(
            judge(&ok, &measure(&ok, &w), 0.0).unwrap().gate,
            "max_p99_ms"
        );
    }

    #[test]
    fn psi_gate_compares_score_distributions() {
        let mut g = spec();
        g.max_psi = Some(0.25);
        let mut w = windows();
        let now = Instant::now();
        let window = Duration::from_secs(60);
        for i in 0..200 {
            let x = f64::from(i) / 200.0;
            w.stable.push(now, 0.002, true, Some(x), window);
            w.canary.push(now, 0.002, true, Some(x * 0.98), window);
        }
        let same = measure(&g, &w);
        assert!(same.psi.unwrap() < 0.05, "{:?}", same.psi);
        assert!(judge(&g, &same, 0.0).is_none());
        assert!(all_judged(&g, &same));
        let mut shifted = windows();
        for i in 0..200 {
            let x = f64::from(i) / 200.0;
            shifted.stable.push(now, 0.002, true, Some(x), window);
            shifted
                .canary
                .push(now, 0.002, true, Some(0.5 + x / 2.0), window);
        }
        let v = judge(&g, &measure(&g, &shifted), 0.0).unwrap();
        assert_eq!(v.gate, "max_psi");
        assert!(v.canary_value > 0.25);
    }

    #[test]
    fn agreement_gate_counts_checks() {
        let mut g = spec();
        g.min_agreement = Some(0.9);
        let m = monitor(g, None, OnFailure::Rollback);
        // 19 checks, all disagreeing: below min_requests, nothing judged.
        for _ in 0..19 {
            assert!(check(&m, false).is_none());
        }
        let (status, v) = check(&m, false).unwrap();
        assert_eq!(status, Status::RolledBack);
        assert_eq!(v.unwrap().gate, "min_agreement");
        let mut g = spec();
        g.min_agreement = Some(0.9);
        let fine = monitor(g, None, OnFailure::Rollback);
        for i in 0..100 {
            assert!(check(&fine, i % 20 != 0).is_none());
        }
    }

    #[test]
    fn operator_weight_overrides_the_step_and_pauses() {
        let steps = StepSpec {
            weights: vec![100, 10_000],
            min_duration: Duration::ZERO,
            min_requests: 1,
        };
        let m = monitor(spec(), Some(steps), OnFailure::Rollback);
        assert_eq!(m.act(Action::SetWeight(25.0)), Ok(Status::Paused));
        assert_eq!(m.live().weight_bp, Some(2_500));
        assert!(m.act(Action::SetWeight(101.0)).is_err());
        assert_eq!(m.act(Action::Resume), Ok(Status::Serving));
        assert_eq!(m.live().weight_bp, Some(100));
        assert_eq!(m.act(Action::Rollback), Ok(Status::RolledBack));
        assert_eq!(m.live().weight_bp, Some(0));
        let snap = m.snapshot();
        assert_eq!(snap.status, Status::RolledBack);
        let d = Deployment {
            stable: Some(1),
            canary: Some((2, 1_000)),
            ..Default::default()
        };
        let restored = CanaryMonitor::new(&d, Some(snap)).unwrap();
        assert!(restored.rolled_back());
    }

    #[test]
    fn an_operators_pause_keeps_the_gates_armed() {
        let m = monitor(spec(), None, OnFailure::Rollback);
        assert_eq!(m.act(Action::Pause), Ok(Status::Paused));
        for _ in 0..20 {
            fail(&m);
        }
        assert_eq!(m.status(), Status::RolledBack);
        // A new weight after a rollback starts from fresh windows: the old failures are gone.
        assert_eq!(m.act(Action::SetWeight(10.0)), Ok(Status::Serving));
        assert!(m.verdict().is_none());
        std::thread::sleep(Duration::from_millis(25));
        assert!(m.record(true, MS, true, None, 0.0).is_none());
        assert_eq!(m.status(), Status::Serving);
    }

    #[test]
    fn resume_rules() {
        let steps = StepSpec {
            weights: vec![100, 5_000, 10_000],
            min_duration: Duration::ZERO,
            min_requests: 1,
        };
        let m = monitor(spec(), Some(steps), OnFailure::Rollback);
        assert_eq!(m.act(Action::Promote), Ok(Status::Promoted));
        assert!(m.act(Action::Resume).is_err());
        assert_eq!(m.act(Action::Rollback), Ok(Status::RolledBack));
        assert_eq!(m.act(Action::Resume), Ok(Status::Serving));
        assert_eq!((m.step(), m.live().weight_bp), (Some(0), Some(100)));
    }

    #[test]
    fn windows_age_without_traffic_and_psi_needs_samples_per_bin() {
        let mut g = spec();
        g.window = Duration::from_millis(30);
        g.max_psi = Some(0.25);
        let mut w = windows();
        let t0 = Instant::now();
        for i in 0..150 {
            let x = f64::from(i) / 150.0;
            w.stable.push(t0, 0.001, true, Some(x), g.window);
            w.canary.push(t0, 0.001, true, Some(x + 0.5), g.window);
        }
        // 150 per arm is below 20 per bin x 10 bins: no PSI yet, and the step cannot end.
        let v = measure(&g, &w);
        assert_eq!(v.psi, None);
        assert!(!all_judged(&g, &v));
        w.stable.evict(t0 + Duration::from_millis(40), g.window);
        assert!(w.stable.samples.is_empty());
    }
}
