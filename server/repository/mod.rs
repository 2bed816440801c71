//! The model repository on disk and the versions loaded from it.
//!
//! Layout (Triton's): `<repo>/<model>/config.pbtxt` and `<repo>/<model>/<version>/model.onnx`.
//! Version directories must be numeric without a leading zero; anything else is ignored.
//! A model that fails to load is recorded as UNAVAILABLE with its reason and every other
//! model keeps serving.

mod autocomplete;
mod control;
pub mod gpu;
mod load;
pub mod paths;
pub mod pbtxt;
mod schedule;
mod warmup;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::RwLock;

use crate::config::LoadOptions;
use crate::error::InferError;
use crate::executor::instance::InstanceGuard;
use crate::model::ModelSpec;
use crate::proto::inference::ModelConfig;
use crate::request::{InferResponse, ValidInferRequest};
use crate::scheduler::Scheduler;
use crate::stats::ModelStats;
use tokio::sync::oneshot;
use tokio::time::Instant;

pub use autocomplete::DEFAULT_MAX_BATCH_SIZE;
pub use control::{ControlMode, LoadRequest};
pub use paths::validate_model_name;

use crate::deploy::control::Control;
use crate::deploy::gates::CanaryMonitor;
use crate::deploy::router::{pick, Pick};
use crate::deploy::shadow::ShadowArm;
use crate::deploy::{Deployment, StickyKey};

/// Which part of a deployment answered a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arm {
    /// The stable version of a `deployment.toml` (or the highest one it leaves to).
    Stable,
    /// The canary of a `deployment.toml`.
    Canary,
    /// A request that named its version, or a model without `deployment.toml`.
    Unrouted,
}

impl Arm {
    /// The `arm` label.
    pub fn label(self) -> &'static str {
        match self {
            Arm::Stable => "stable",
            Arm::Canary => "canary",
            Arm::Unrouted => "unrouted",
        }
    }
}

/// Where an inference request runs: its version, and the shadows that may get a copy.
#[derive(Debug)]
pub struct Resolved {
    pub version: Arc<ModelVersion>,
    pub arm: Arm,
    /// The canary gates to feed with this request's outcome (routed requests only), and the
    /// control that records their decisions.
    pub monitor: Option<(Arc<CanaryMonitor>, Arc<Control>)>,
    /// (arm, its READY version), only for routed (unversioned) requests.
    pub shadows: Vec<(Arc<ShadowArm>, Arc<ModelVersion>)>,
}

/// The reason an unloaded version shows in the index; strict readiness allows it (Triton's rule).
pub const UNLOADED: &str = "unloaded";

/// A loaded, serving model version.
#[derive(Debug)]
pub struct ModelVersion {
    pub spec: Arc<ModelSpec>,
    /// The normalised config; replaced in place when only `instance_group` changes.
    config: RwLock<Arc<ModelConfig>>,
    pub stats: Arc<ModelStats>,
    /// Declared before `instances`: dropping it closes the queue so the threads can finish.
    scheduler: Scheduler,
    instances: parking_lot::Mutex<Instances>,
    /// How long loading took (engines, scheduler, instance threads): `nv_model_load_duration_secs`.
    pub load_duration: std::time::Duration,
}

/// A version's instance threads and what starting another one needs.
#[derive(Debug)]
struct Instances {
    /// Running, or stopping after a `Work::Stop` (pruned once finished).
    guards: Vec<InstanceGuard>,
    /// How many instances the version should have.
    target: usize,
    channels: crate::scheduler::InstanceChannels,
    files: load::VersionFiles,
    /// Index of the next instance thread's name.
    next_index: usize,
    /// Fault injection of this version (off unless the config asks).
    fault: crate::executor::instance::Fault,
}

impl ModelVersion {
    /// Queues a validated request for this version's instances.
    pub fn enqueue(
        &self,
        request: ValidInferRequest,
        reply: oneshot::Sender<Result<InferResponse, InferError>>,
        received: Instant,
        deadline: Option<Instant>,
    ) -> Result<(), InferError> {
        self.scheduler.enqueue(request, reply, received, deadline)
    }

    /// Number of executor instances (the target; a stopping one finishes its batch first).
    pub fn instance_count(&self) -> usize {
        self.instances.lock().target
    }

    /// The normalised config this version serves with.
    pub fn config(&self) -> Arc<ModelConfig> {
        self.config.read().clone()
    }

    /// Requests waiting in the queue.
    pub fn pending(&self) -> usize {
        self.scheduler.pending()
    }
}

/// A version's state in the repository index.
#[derive(Debug, Clone)]
pub enum VersionState {
    Ready(Arc<ModelVersion>),
    Unavailable(String),
}

/// Everything known about one model directory.
#[derive(Debug)]
pub struct ModelEntry {
    pub name: String,
    /// The normalised config, when it could be read.
    pub config: Option<Arc<ModelConfig>>,
    pub versions: BTreeMap<i64, VersionState>,
    /// Why the whole model failed (bad config, no versions), if it did.
    pub error: Option<String>,
    /// Why the last load or reload failed while this entry kept serving.
    pub reload_error: Option<String>,
    /// The temporary directory of a load with `file:` overrides; removed with the entry.
    pub override_dir: Option<Arc<tempfile::TempDir>>,
    /// What was on disk when this entry loaded from the repository (for in-place updates).
    pub source: Option<control::Source>,
    /// The model's `deployment.toml`, validated against the versions that loaded.
    pub deployment: Option<Arc<Deployment>>,
    /// Runtime state of each `[[shadow]]` of `deployment`.
    pub shadow_arms: Vec<Arc<ShadowArm>>,
    /// The runtime of `deployment` (kill switch, canary rollout, history), whenever it exists.
    pub control: Option<Arc<Control>>,
    /// Unversioned requests routed so far (the split of requests without a sticky key).
    pub route_seq: std::sync::atomic::AtomicU64,
}

impl ModelEntry {
    /// An entry with these versions and nothing else (no routing, no source, no error).
    pub fn plain(
        name: &str,
        config: Option<Arc<ModelConfig>>,
        versions: BTreeMap<i64, VersionState>,
    ) -> Self {
        ModelEntry {
            name: name.to_string(),
            config,
            versions,
            error: None,
            reload_error: None,
            override_dir: None,
            source: None,
            deployment: None,
            shadow_arms: Vec::new(),
            control: None,
            route_seq: Default::default(),
        }
    }

    /// This entry, still serving, after a (re)load that failed for `reason` (shown in the
    /// index). Routing and rollout state carry over.
    pub fn kept_after_failure(&self, reason: String) -> Self {
        ModelEntry {
            name: self.name.clone(),
            config: self.config.clone(),
            versions: self.versions.clone(),
            error: self.error.clone(),
            reload_error: Some(reason),
            override_dir: self.override_dir.clone(),
            source: self.source.clone(),
            deployment: self.deployment.clone(),
            shadow_arms: self.shadow_arms.clone(),
            control: self.control.clone(),
            route_seq: Default::default(),
        }
    }

    /// An entry with no versions that failed for `error`.
    pub fn failed(name: &str, config: Option<Arc<ModelConfig>>, error: String) -> Self {
        ModelEntry {
            error: Some(error),
            ..Self::plain(name, config, BTreeMap::new())
        }
    }

    /// Every version is READY, or unloaded on purpose (Triton's strict readiness).
    pub fn all_ready(&self) -> bool {
        self.error.is_none()
            && !self.versions.is_empty()
            && self.versions.values().all(|v| match v {
                VersionState::Ready(_) => true,
                VersionState::Unavailable(r) => r == UNLOADED,
            })
    }

    /// Every version the load selected is READY (none unloaded, none failed).
    pub fn loaded_ok(&self) -> bool {
        self.error.is_none()
            && !self.versions.is_empty()
            && self
                .versions
                .values()
                .all(|v| matches!(v, VersionState::Ready(_)))
    }

    /// At least one version serves.
    pub fn serving(&self) -> bool {
        self.versions
            .values()
            .any(|v| matches!(v, VersionState::Ready(_)))
    }

    /// Why this entry is not fully loaded: the model error or each failed version's reason.
    pub fn failure(&self) -> String {
        if let Some(e) = &self.error {
            return e.clone();
        }
        let reasons: Vec<String> = self
            .versions
            .iter()
            .filter_map(|(v, s)| match s {
                VersionState::Unavailable(r) if r != UNLOADED => Some(format!("version {v}: {r}")),
                _ => None,
            })
            .collect();
        reasons.join("; ")
    }
}

/// One row of RepositoryIndex.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexEntry {
    pub name: String,
    pub version: String,
    pub state: String,
    pub reason: String,
}

/// The models of one repository directory.
#[derive(Debug)]
pub struct ModelRepository {
    root: PathBuf,
    options: LoadOptions,
    mode: ControlMode,
    models: RwLock<BTreeMap<String, Arc<ModelEntry>>>,
    /// Serializes loads, unloads and polls; holds what the last poll saw.
    control: parking_lot::Mutex<control::ControlState>,
    /// Versions taken out of service, released off the async threads once idle.
    retired: control::Retired,
}

impl ModelRepository {
    /// A repository over `root` with a model control mode; nothing is loaded until
    /// [`ModelRepository::load_all`] or [`ModelRepository::load_startup`].
    pub fn with_mode(root: &Path, options: LoadOptions, mode: ControlMode) -> Self {
        ModelRepository {
            root: root.to_path_buf(),
            options,
            mode,
            models: RwLock::new(BTreeMap::new()),
            control: parking_lot::Mutex::new(control::ControlState::default()),
            retired: control::Retired::start(),
        }
    }

    /// The model control mode.
    pub fn mode(&self) -> ControlMode {
        self.mode
    }

    /// Loads every model directory. Returns the names of models that failed.
    pub fn load_all(&self) -> std::io::Result<Vec<String>> {
        let names = self.scan()?;
        Ok(self.load_startup(&names))
    }

    /// Removes every model once its in-flight requests are done; queues close and instance
    /// threads finish.
    /// Waits at most `wait` for requests still holding a version; returns false if some
    /// did not finish in time.
    pub fn unload_all(&self, wait: std::time::Duration) -> bool {
        let models = std::mem::take(&mut *self.models.write());
        for entry in models.values() {
            self.retired
                .retire(entry.versions.values().filter_map(|v| match v {
                    VersionState::Ready(m) => Some(m.clone()),
                    VersionState::Unavailable(_) => None,
                }));
        }
        drop(models);
        self.retired.drain(wait)
    }

    /// The entry of model `name`, if the repository has it.
    pub fn entry(&self, name: &str) -> Option<Arc<ModelEntry>> {
        self.models.read().get(name).cloned()
    }

    /// Every entry, by name.
    pub fn entries(&self) -> Vec<Arc<ModelEntry>> {
        self.models.read().values().cloned().collect()
    }

    /// Every READY version of every model.
    pub fn ready_versions(&self) -> Vec<Arc<ModelVersion>> {
        self.entries()
            .iter()
            .flat_map(|e| e.versions.values())
            .filter_map(|v| match v {
                VersionState::Ready(m) => Some(m.clone()),
                VersionState::Unavailable(_) => None,
            })
            .collect()
    }

    /// The serving version for a request: `version` is "" or "-1" for the highest ready one.
    pub fn get(&self, name: &str, version: &str) -> Result<Arc<ModelVersion>, InferError> {
        let entry = self.entry(name).ok_or_else(|| {
            InferError::NotFound(format!("Request for unknown model: '{name}' is not found"))
        })?;
        if version.is_empty() || version == "-1" {
            return entry
                .versions
                .values()
                .rev()
                .find_map(|v| match v {
                    VersionState::Ready(m) => Some(m.clone()),
                    VersionState::Unavailable(_) => None,
                })
                .ok_or_else(|| {
                    InferError::NotFound(format!(
                        "Request for unknown model: '{name}' has no available versions{}",
                        entry
                            .error
                            .as_ref()
                            .map(|e| format!(": {e}"))
                            .unwrap_or_default()
                    ))
                });
        }
        let v: i64 = version.parse().ok().ok_or_else(|| {
            InferError::invalid(format!(
                "failed to get model version from specified version string '{version}' for model '{name}', version should be an integral value > 0"
            ))
        })?;
        match entry.versions.get(&v) {
            Some(VersionState::Ready(m)) => Ok(m.clone()),
            Some(VersionState::Unavailable(reason)) => Err(InferError::Unavailable(format!(
                "Request for unknown model: '{name}' version {v} is not at ready state: {reason}"
            ))),
            None => Err(InferError::NotFound(format!(
                "Request for unknown model: '{name}' version {v} is not found"
            ))),
        }
    }

    /// The version an inference request runs on. Unversioned requests follow the model's
    /// `deployment.toml` (stable, canary weight, sticky key from `key`); a named version is
    /// used as named unless the kill switch has it off.
    pub fn resolve(
        &self,
        name: &str,
        version: &str,
        key: impl FnOnce(&StickyKey) -> Option<String>,
    ) -> Result<Resolved, InferError> {
        let entry = self.entry(name).ok_or_else(|| {
            InferError::NotFound(format!("Request for unknown model: '{name}' is not found"))
        })?;
        let direct = |version| Resolved {
            version,
            arm: Arm::Unrouted,
            monitor: None,
            shadows: Vec::new(),
        };
        let Some(d) = entry.deployment.as_ref() else {
            return self.get(name, version).map(direct);
        };
        let control = entry.control.as_ref();
        let killed = |v: i64| control.map_or(d.killed.contains(&v), |c| c.is_killed(v));
        if !(version.is_empty() || version == "-1") {
            let m = self.get(name, version)?;
            if killed(m.spec.version) {
                return Err(InferError::Unavailable(format!(
                    "version {} of model '{name}' is switched off (kill switch: deployment.toml or the deployment API)",
                    m.spec.version
                )));
            }
            return Ok(direct(m));
        }
        let key = d.sticky.as_ref().and_then(key);
        let seq = entry
            .route_seq
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let ready = |v: i64| match entry.versions.get(&v) {
            Some(VersionState::Ready(m)) => Some(m.clone()),
            _ => None,
        };
        let monitor = control.and_then(|c| c.monitor.clone().map(|m| (m, c.clone())));
        let live = monitor.as_ref().map(|(m, _)| m.live());
        let picked = pick(d, name, key.as_deref(), seq, live, killed);
        let arm = match picked {
            Pick::Version(v) if d.canary.is_some_and(|(c, _)| c == v) => Arm::Canary,
            _ => Arm::Stable,
        };
        let primary = match picked {
            Pick::Version(v) => ready(v).ok_or_else(|| {
                InferError::Unavailable(format!(
                    "Request for unknown model: '{name}' version {v} (from deployment.toml) is not at ready state"
                ))
            }),
            Pick::Highest => entry
                .versions
                .iter()
                .rev()
                .filter(|(v, _)| !killed(**v))
                .find_map(|(_, s)| match s {
                    VersionState::Ready(m) => Some(m.clone()),
                    VersionState::Unavailable(_) => None,
                })
                .ok_or_else(|| {
                    InferError::Unavailable(format!(
                        "Request for unknown model: '{name}' has no available versions that are switched on"
                    ))
                }),
        }?;
        // A canary request may also be re-run on stable for the agreement gate.
        let check = monitor
            .as_ref()
            .filter(|_| arm == Arm::Canary)
            .and_then(|(m, _)| m.check.as_ref());
        let shadows = entry
            .shadow_arms
            .iter()
            .chain(check)
            .filter(|arm| arm.spec.version != primary.spec.version)
            .filter(|arm| !killed(arm.spec.version))
            .filter_map(|arm| ready(arm.spec.version).map(|v| (arm.clone(), v)))
            .collect();
        Ok(Resolved {
            version: primary,
            arm,
            monitor,
            shadows,
        })
    }

    /// RepositoryIndex rows; with `ready_only`, only READY versions. Model directories that
    /// were never loaded (explicit mode) appear with their name only.
    pub fn index(&self, ready_only: bool) -> Vec<IndexEntry> {
        let mut rows = Vec::new();
        let entries = self.entries();
        if !ready_only {
            for name in self.scan().unwrap_or_default() {
                if !entries.iter().any(|e| e.name == name) {
                    rows.push(IndexEntry {
                        name,
                        version: String::new(),
                        state: String::new(),
                        reason: String::new(),
                    });
                }
            }
        }
        for entry in entries {
            if let Some(err) = &entry.error {
                if !ready_only {
                    rows.push(IndexEntry {
                        name: entry.name.clone(),
                        version: String::new(),
                        state: "UNAVAILABLE".into(),
                        reason: err.clone(),
                    });
                }
                continue;
            }
            for (v, state) in &entry.versions {
                let (state, reason) = match state {
                    VersionState::Ready(_) => (
                        "READY",
                        entry
                            .reload_error
                            .as_ref()
                            .map(|e| {
                                format!(
                                    "the last reload failed, the previous load still serves: {e}"
                                )
                            })
                            .unwrap_or_default(),
                    ),
                    VersionState::Unavailable(r) => ("UNAVAILABLE", r.clone()),
                };
                if ready_only && state != "READY" {
                    continue;
                }
                rows.push(IndexEntry {
                    name: entry.name.clone(),
                    version: v.to_string(),
                    state: state.into(),
                    reason,
                });
            }
        }
        rows.sort_by(|a, b| a.name.cmp(&b.name));
        rows
    }
}
