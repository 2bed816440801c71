//! The core API both front ends call: health, metadata, statistics, the repository index and
//! inference. Front ends decode their wire format, call one method here and encode the
//! answer; nothing else.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::deploy::control::{AdminAction, Control, Event};
use crate::deploy::gates::{CanaryMonitor, GateValues, Status, Verdict};
use crate::deploy::shadow::{
    compare, decision, logged_id, ms, now_ms, now_ms_precise, DivergenceLog, DivergenceRecord,
    ShadowArm, Skip, Slot,
};
use crate::deploy::StickyKey;
use crate::error::InferError;
use crate::proto::inference::ModelConfig;
use crate::repository::{
    Arm, IndexEntry, LoadRequest, ModelRepository, ModelVersion, Resolved, VersionState,
};
use crate::request::{validate, InferRequest, InferResponse, ParamValue};
use crate::stats::{FailureReason, StatsSnapshot};

/// Protocol extensions ServerMetadata reports (perf_analyzer reads "statistics").
pub const EXTENSIONS: [&str; 5] = [
    "model_configuration",
    "model_repository",
    "statistics",
    "schedule_policy",
    "binary_tensor_data",
];

/// Longest `who` or `why` of a deployment action, in bytes.
pub const MAX_AUDIT_TEXT: usize = 1024;

/// ServerMetadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerMetadata {
    pub name: String,
    pub version: String,
    pub extensions: Vec<String>,
}

/// One tensor of ModelMetadata, with the API shape (`-1` batch dim when batching).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorMetadata {
    pub name: String,
    pub datatype: String,
    pub shape: Vec<i64>,
}

/// ModelMetadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelMetadata {
    pub name: String,
    /// Every READY version, ascending.
    pub versions: Vec<String>,
    /// The config's `platform`, or its `backend` when no platform is set.
    pub platform: String,
    pub inputs: Vec<TensorMetadata>,
    pub outputs: Vec<TensorMetadata>,
}

/// Counts one shadow outcome (`switchyard_shadow_requests_total`), or one outcome of a
/// canary check (`switchyard_canary_checks_total`).
fn shadow_outcome(model: &str, arm: &ShadowArm, outcome: &'static str) {
    let name = if arm.kind == "shadow" {
        "switchyard_shadow_requests_total"
    } else {
        "switchyard_canary_checks_total"
    };
    metrics::counter!(
        name,
        "model" => model.to_string(),
        "version" => arm.spec.version.to_string(),
        "outcome" => outcome
    )
    .increment(1);
}

/// One shadow copy on its way.
struct ShadowRun {
    /// Held until the comparison is done: counts against `max_in_flight`.
    _slot: Slot,
    arm: Arc<ShadowArm>,
    version: Arc<ModelVersion>,
    request: InferRequest,
    /// The primary's answer and latency; dropped if the primary failed.
    primary: oneshot::Receiver<(InferResponse, std::time::Duration)>,
    log: Option<Arc<DivergenceLog>>,
    /// For a canary check: the rollout its agreement feeds.
    monitor: Option<(Arc<CanaryMonitor>, Arc<Control>)>,
}

/// Runs a shadow copy within its timeout, then scores it against the primary's answer.
async fn run_shadow(run: ShadowRun) {
    let ShadowRun {
        _slot,
        arm,
        version,
        request,
        primary,
        log,
        monitor,
    } = run;
    let model = request.model_name.clone();
    let id = request.id.clone();
    let shadow_v = arm.spec.version;
    let started = Instant::now();
    let outcome: Result<InferResponse, &'static str> = async {
        let valid = validate(request, &version.spec).map_err(|_| "errored")?;
        let (tx, rx) = oneshot::channel();
        let deadline = started.checked_add(arm.spec.timeout);
        version
            .enqueue(valid, tx, started, deadline)
            .map_err(|_| "dropped")?;
        match tokio::time::timeout(arm.spec.timeout, rx).await {
            Err(_) => Err("timed_out"),
            Ok(Ok(Ok(r))) => Ok(r),
            Ok(Ok(Err(InferError::DeadlineExceeded(_)))) => Err("timed_out"),
            Ok(_) => Err("errored"),
        }
    }
    .await;
    let shadow_latency = started.elapsed();
    let is_shadow = arm.kind == "shadow";
    if is_shadow && !matches!(outcome, Err("dropped")) {
        version
            .stats
            .record_arm("shadow", outcome.is_ok(), shadow_latency);
    }
    let shadow = match outcome {
        Ok(r) => r,
        Err(o) => return shadow_outcome(&model, &arm, o),
    };
    let Ok((primary, primary_latency)) = primary.await else {
        return; // the primary failed: nothing to compare
    };
    let c = compare(&primary, &shadow, &arm.spec.compare);
    shadow_outcome(&model, &arm, "compared");
    shadow_outcome(&model, &arm, if c.agree { "agreed" } else { "diverged" });
    if let Some((m, control)) = &monitor {
        if let Some(mv) = m.record_check(c.agree, now_ms_precise()) {
            control.moved(mv);
        }
    } else if let (Some(p), Some(sh)) = (c.primary.score, c.shadow.score) {
        metrics::histogram!(
            "switchyard_shadow_score_delta",
            "model" => model.clone(),
            "version" => shadow_v.to_string()
        )
        .record(sh - p);
    }
    if is_shadow {
        if let Some(psi) = arm.add_scores(c.primary.score, c.shadow.score) {
            metrics::gauge!(
                "switchyard_shadow_psi",
                "model" => model.clone(),
                "version" => shadow_v.to_string()
            )
            .set(psi);
        }
    }
    if !c.agree || arm.spec.compare.log_all {
        if let Some(log) = &log {
            log.write(&DivergenceRecord {
                time_ms: now_ms(),
                model: &model,
                request_id: logged_id(&id),
                kind: arm.kind,
                primary_version: primary.model_version,
                shadow_version: shadow_v,
                primary_score: c.primary.score,
                shadow_score: c.shadow.score,
                primary_decision: c.primary.decision,
                shadow_decision: c.shadow.decision,
                threshold: arm.spec.compare.threshold,
                agree: c.agree,
                logged: if arm.spec.compare.log_all {
                    "all"
                } else {
                    "divergent"
                },
                max_abs_diff: c.max_abs_diff,
                max_rel_diff: c.max_rel_diff,
                exact_mismatch: c.exact_mismatch,
                primary_latency_ms: ms(primary_latency),
                shadow_latency_ms: ms(shadow_latency),
            });
        }
    }
}

/// The request's sticky routing key: a string or integer parameter, or a header value.
fn sticky_key(req: &InferRequest, key: &StickyKey) -> Option<String> {
    match key {
        StickyKey::Parameter(p) => match req.parameters.get(p)? {
            ParamValue::String(s) => Some(s.clone()),
            ParamValue::Int64(i) => Some(i.to_string()),
            ParamValue::Uint64(u) => Some(u.to_string()),
            _ => None,
        },
        StickyKey::Header(h) => req
            .headers
            .get(h.as_str())
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
    }
}

/// `GET /v2/models/{m}/deployment`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeploymentState {
    pub model: String,
    pub has_deployment_file: bool,
    /// The version answering unversioned requests not sent to the canary.
    pub stable: Option<i64>,
    pub canary: Option<CanaryState>,
    pub killed: Vec<i64>,
    /// `parameter:<name>` or `header:<name>`.
    pub sticky: Option<String>,
    pub shadows: Vec<ShadowState>,
    pub versions: Vec<VersionRow>,
    /// Why the last (re)load of the model or its deployment file failed, if it did.
    pub last_error: Option<String>,
    /// Every decision (gates and operators), oldest first.
    pub history: Vec<Event>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct CanaryState {
    pub version: i64,
    /// The weight in effect (0 once rolled back).
    pub weight_percent: f64,
    /// The weight `deployment.toml` gives (its first step when stepping).
    pub configured_weight_percent: f64,
    /// serving, paused, rolled_back or promoted.
    pub state: Status,
    /// The current step (0-based) when the canary steps.
    pub step: Option<usize>,
    pub steps_percent: Vec<f64>,
    /// The breached gate, with the values measured, when rolled back or paused.
    pub rollback: Option<Verdict>,
    /// The gates as configured, and their values at the last evaluation.
    pub gates: Option<GatesState>,
}

/// The canary's gates: limits and the last measured values.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GatesState {
    pub window_seconds: f64,
    pub min_requests: usize,
    pub max_error_rate: Option<f64>,
    pub max_p99_ms: Option<f64>,
    pub max_p99_ratio: Option<f64>,
    pub max_psi: Option<f64>,
    pub min_agreement: Option<f64>,
    pub values: Option<GateValues>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ShadowState {
    pub version: i64,
    pub sample_percent: f64,
    pub max_in_flight: usize,
    pub timeout_ms: u64,
    pub in_flight: usize,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct VersionRow {
    pub version: i64,
    pub state: String,
}

/// Statistics of one model version.
#[derive(Debug, Clone)]
pub struct VersionStats {
    pub name: String,
    pub version: i64,
    pub stats: StatsSnapshot,
}

/// The server's shared state.
#[derive(Debug)]
pub struct Core {
    pub repository: ModelRepository,
    /// ServerMetadata name (`--id`).
    pub id: String,
    strict_readiness: bool,
    /// False once shutdown starts: readiness drops and new inference is refused.
    accepting: AtomicBool,
    /// Where diverging shadow pairs are written (`--shadow-log-dir`), if anywhere.
    shadow_log: Option<Arc<DivergenceLog>>,
}

impl Core {
    /// The core over `repository`; diverging shadow pairs go to `shadow_log`, if given.
    pub fn new(
        repository: ModelRepository,
        id: String,
        strict_readiness: bool,
        shadow_log: Option<Arc<DivergenceLog>>,
    ) -> Arc<Self> {
        Arc::new(Core {
            repository,
            id,
            strict_readiness,
            accepting: AtomicBool::new(true),
            shadow_log,
        })
    }

    /// Liveness: true while the process serves.
    pub fn live(&self) -> bool {
        true
    }

    /// Readiness: not shutting down and, with strict readiness, every model fully loaded.
    pub fn ready(&self) -> bool {
        if !self.accepting.load(Ordering::SeqCst) {
            return false;
        }
        !self.strict_readiness || self.repository.entries().iter().all(|e| e.all_ready())
    }

    /// Stops taking new inference requests; readiness goes false.
    pub fn stop_accepting(&self) {
        self.accepting.store(false, Ordering::SeqCst);
    }

    /// ServerMetadata: `--id`, our version and the extensions we implement.
    pub fn server_metadata(&self) -> ServerMetadata {
        ServerMetadata {
            name: self.id.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            extensions: EXTENSIONS.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// ModelMetadata of the version `version` resolves to.
    pub fn model_metadata(&self, name: &str, version: &str) -> Result<ModelMetadata, InferError> {
        let m = self.model(name, version)?;
        let spec = &m.spec;
        let meta = |io: &crate::model::IoSpec| TensorMetadata {
            name: io.name.clone(),
            datatype: io.dtype.wire_name().to_string(),
            shape: spec.api_dims(io),
        };
        let config = m.config();
        let platform = if config.platform.is_empty() {
            config.backend.clone()
        } else {
            config.platform.clone()
        };
        Ok(ModelMetadata {
            name: spec.name.clone(),
            versions: self
                .ready_versions(name)
                .iter()
                .map(i64::to_string)
                .collect(),
            platform,
            inputs: spec.inputs.iter().map(meta).collect(),
            outputs: spec.outputs.iter().map(meta).collect(),
        })
    }

    /// Is this model (version) ready? Unknown models are simply not ready (status OK, as in
    /// every released Triton); a version string that is not a number is an error.
    pub fn model_ready(&self, name: &str, version: &str) -> Result<bool, InferError> {
        match self.repository.get(name, version) {
            Ok(_) => Ok(self.accepting.load(Ordering::SeqCst)),
            Err(e @ InferError::InvalidArgument(_)) => Err(e),
            Err(_) => Ok(false),
        }
    }

    /// The serving version for metadata, config and inference.
    pub fn model(&self, name: &str, version: &str) -> Result<Arc<ModelVersion>, InferError> {
        self.repository.get(name, version)
    }

    /// Every version number of `name` that is READY, ascending.
    pub fn ready_versions(&self, name: &str) -> Vec<i64> {
        self.repository
            .entry(name)
            .map(|e| {
                e.versions
                    .iter()
                    .filter(|(_, s)| matches!(s, VersionState::Ready(_)))
                    .map(|(v, _)| *v)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The normalised config of a model; like Triton, the version picks which one.
    pub fn model_config(&self, name: &str, version: &str) -> Result<Arc<ModelConfig>, InferError> {
        Ok(self.model(name, version)?.config())
    }

    /// Statistics: an empty name means every model, an empty version every ready version.
    pub fn statistics(&self, name: &str, version: &str) -> Result<Vec<VersionStats>, InferError> {
        let collect = |entry: &crate::repository::ModelEntry| -> Vec<VersionStats> {
            entry
                .versions
                .iter()
                .filter_map(|(v, s)| match s {
                    VersionState::Ready(m) => Some(VersionStats {
                        name: entry.name.clone(),
                        version: *v,
                        stats: m.stats.snapshot(),
                    }),
                    VersionState::Unavailable(_) => None,
                })
                .collect()
        };
        if name.is_empty() {
            return Ok(self
                .repository
                .entries()
                .iter()
                .flat_map(|e| collect(e))
                .collect());
        }
        if version.is_empty() {
            let entry = self.repository.entry(name).ok_or_else(|| {
                InferError::NotFound(format!("Request for unknown model: '{name}' is not found"))
            })?;
            let rows = collect(&entry);
            if rows.is_empty() {
                return Err(InferError::Unavailable(format!(
                    "Request for unknown model: '{name}' has no available versions"
                )));
            }
            return Ok(rows);
        }
        let m = self.model(name, version)?;
        Ok(vec![VersionStats {
            name: name.to_string(),
            version: m.spec.version,
            stats: m.stats.snapshot(),
        }])
    }

    /// RepositoryModelLoad: loads or reloads `name`; returns once it serves (explicit mode).
    pub async fn load_model(
        self: &Arc<Self>,
        name: &str,
        request: LoadRequest,
    ) -> Result<(), InferError> {
        let core = self.clone();
        let name = name.to_string();
        tokio::task::spawn_blocking(move || core.repository.load(&name, request))
            .await
            .map_err(|e| InferError::Internal(format!("model load task failed: {e}")))?
    }

    /// RepositoryModelUnload: in-flight requests finish; new ones are refused.
    pub async fn unload_model(self: &Arc<Self>, name: &str) -> Result<(), InferError> {
        let core = self.clone();
        let name = name.to_string();
        tokio::task::spawn_blocking(move || core.repository.unload(&name))
            .await
            .map_err(|e| InferError::Internal(format!("model unload task failed: {e}")))?
    }

    /// The deployment state of a model: its routing and shadows as loaded, and their runtime.
    pub fn deployment_state(&self, name: &str) -> Result<DeploymentState, InferError> {
        let entry = self.repository.entry(name).ok_or_else(|| {
            InferError::NotFound(format!("Request for unknown model: '{name}' is not found"))
        })?;
        let versions = entry
            .versions
            .iter()
            .map(|(v, s)| VersionRow {
                version: *v,
                state: match s {
                    VersionState::Ready(_) => "READY".into(),
                    VersionState::Unavailable(_) => "UNAVAILABLE".into(),
                },
            })
            .collect();
        let d = entry.deployment.as_deref();
        let control = entry.control.as_deref();
        let killed =
            |v: &i64| control.map_or(d.is_some_and(|d| d.killed.contains(v)), |c| c.is_killed(*v));
        let highest_ready = entry
            .versions
            .iter()
            .rev()
            .find(|(v, s)| matches!(s, VersionState::Ready(_)) && !killed(v))
            .map(|(v, _)| *v);
        let monitor = control.and_then(|c| c.monitor.as_deref());
        Ok(DeploymentState {
            model: name.to_string(),
            has_deployment_file: d.is_some(),
            stable: d.and_then(|d| d.stable).or(highest_ready),
            canary: d.and_then(|d| d.canary).map(|(version, bp)| CanaryState {
                version,
                weight_percent: if killed(&version) {
                    0.0
                } else {
                    monitor.map_or(f64::from(bp) / 100.0, |m| m.weight_percent())
                },
                configured_weight_percent: f64::from(bp) / 100.0,
                state: monitor.map_or(Status::Serving, |m| m.status()),
                step: monitor.and_then(|m| m.step()),
                steps_percent: d
                    .and_then(|d| d.steps.as_ref())
                    .map(|s| s.weights.iter().map(|w| f64::from(*w) / 100.0).collect())
                    .unwrap_or_default(),
                rollback: monitor.and_then(|m| m.verdict()),
                gates: monitor.and_then(|m| {
                    m.gates.as_ref().map(|g| GatesState {
                        window_seconds: g.window.as_secs_f64(),
                        min_requests: g.min_requests,
                        max_error_rate: g.max_error_rate,
                        max_p99_ms: g.max_p99_ms,
                        max_p99_ratio: g.max_p99_ratio,
                        max_psi: g.max_psi,
                        min_agreement: g.min_agreement,
                        values: m.values(),
                    })
                }),
            }),
            killed: control.map_or_else(
                || {
                    d.map(|d| d.killed.iter().copied().collect())
                        .unwrap_or_default()
                },
                |c| c.killed(),
            ),
            sticky: d.and_then(|d| d.sticky.as_ref()).map(|k| match k {
                StickyKey::Parameter(p) => format!("parameter:{p}"),
                StickyKey::Header(h) => format!("header:{h}"),
            }),
            shadows: entry
                .shadow_arms
                .iter()
                .map(|a| ShadowState {
                    version: a.spec.version,
                    sample_percent: f64::from(a.spec.sample_bp) / 100.0,
                    max_in_flight: a.spec.max_in_flight,
                    timeout_ms: a.spec.timeout.as_millis() as u64,
                    in_flight: a.in_flight(),
                })
                .collect(),
            versions,
            last_error: entry.reload_error.clone().or_else(|| entry.error.clone()),
            history: control.map(|c| c.history()).unwrap_or_default(),
        })
    }

    /// An operator's action on a model's deployment (admin API): done at once, logged with
    /// who asked and why, kept in the history and, with `--deployment-state-dir`, on disk.
    pub fn deployment_action(
        &self,
        name: &str,
        action: &str,
        version: Option<i64>,
        weight_percent: Option<f64>,
        who: &str,
        why: &str,
    ) -> Result<Event, InferError> {
        let entry = self.repository.entry(name).ok_or_else(|| {
            InferError::NotFound(format!("Request for unknown model: '{name}' is not found"))
        })?;
        let control = entry.control.as_ref().ok_or_else(|| {
            InferError::invalid(format!(
                "model '{name}' has no deployment.toml: there is no deployment to act on"
            ))
        })?;
        if why.trim().is_empty() {
            return Err(InferError::invalid(
                "a deployment action needs a reason ('why')",
            ));
        }
        if who.len() > MAX_AUDIT_TEXT || why.len() > MAX_AUDIT_TEXT {
            return Err(InferError::invalid(format!(
                "'who' and 'why' are limited to {MAX_AUDIT_TEXT} bytes"
            )));
        }
        let action =
            AdminAction::parse(action, version, weight_percent).map_err(InferError::invalid)?;
        let loaded: Vec<i64> = entry
            .versions
            .iter()
            .filter(|(_, s)| matches!(s, VersionState::Ready(_)))
            .map(|(v, _)| *v)
            .collect();
        control
            .act(action, who, why, &loaded)
            .map_err(InferError::invalid)
    }

    /// RepositoryIndex rows.
    pub fn index(&self, ready_only: bool) -> Vec<IndexEntry> {
        self.repository.index(ready_only)
    }

    /// Runs one inference: resolve the version, validate, queue, await the instance.
    /// Dropping the returned future (client gone) leaves the queued job to be skipped.
    pub async fn infer(
        &self,
        req: InferRequest,
        deadline: Option<Instant>,
    ) -> Result<InferResponse, InferError> {
        let received = Instant::now();
        if !self.accepting.load(Ordering::SeqCst) {
            return Err(InferError::Unavailable(
                "Server is stopping, new inference requests are refused".into(),
            ));
        }
        let Resolved {
            version,
            arm,
            monitor,
            shadows,
        } = self
            .repository
            .resolve(&req.model_name, &req.model_version, |key| {
                sticky_key(&req, key)
            })?;
        // Shadow copies: admitted now (sampling, in-flight cap), started once the primary is
        // queued, and never waited for.
        let mut shadow_jobs = Vec::new();
        for (arm, shadow_version) in shadows {
            match arm.admit() {
                Ok(slot) => shadow_jobs.push((slot, arm, shadow_version)),
                Err(Skip::Full) => shadow_outcome(&req.model_name, &arm, "dropped"),
                Err(Skip::NotSampled) => {}
            }
        }
        let shadow_request = (!shadow_jobs.is_empty()).then(|| req.clone());
        let request = validate(req, &version.spec)?;
        let (reply, rx) = oneshot::channel();
        let mut primary_waiters = Vec::with_capacity(shadow_jobs.len());
        let result = match version.enqueue(request, reply, received, deadline) {
            Err(e) => {
                // Refused at admission (queue full, stopping): a failure of this arm too.
                version
                    .stats
                    .record_failure(received.elapsed(), FailureReason::of(&e));
                Err(e)
            }
            Ok(()) => {
                if let Some(shadow_request) = shadow_request {
                    for (slot, arm, shadow_version) in shadow_jobs {
                        let (tx, primary) = oneshot::channel();
                        primary_waiters.push(tx);
                        let monitor = monitor.clone().filter(|_| arm.kind != "shadow");
                        tokio::spawn(run_shadow(ShadowRun {
                            _slot: slot,
                            arm,
                            version: shadow_version,
                            request: shadow_request.clone(),
                            primary,
                            log: self.shadow_log.clone(),
                            monitor,
                        }));
                    }
                }
                // `version` stays alive until the answer arrives, so a drain never drops
                // this request.
                rx.await.unwrap_or_else(|_| {
                    Err(InferError::Internal(
                        "the model instance stopped before answering".into(),
                    ))
                })
            }
        };
        let latency = received.elapsed();
        if arm != Arm::Unrouted {
            version
                .stats
                .record_arm(arm.label(), result.is_ok(), latency);
            // A client's own deadline or cancellation says nothing about the version.
            let client_caused = matches!(
                result,
                Err(InferError::Cancelled(_) | InferError::DeadlineExceeded(_))
            );
            if let Some((m, control)) = monitor.as_ref().filter(|_| !client_caused) {
                let score = match (&result, &m.compare) {
                    (Ok(r), Some(spec)) => decision(r, spec).score,
                    _ => None,
                };
                if let Some(mv) = m.record(
                    arm == Arm::Canary,
                    latency,
                    result.is_ok(),
                    score,
                    now_ms_precise(),
                ) {
                    control.moved(mv);
                }
            }
        }
        if let Ok(response) = &result {
            for tx in primary_waiters {
                let _ = tx.send((response.clone(), latency));
            }
        }
        drop(version);
        result
    }
}
