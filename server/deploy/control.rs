//! Runtime control of one model's deployment: the kill switch in effect, the canary's rollout
//! (`gates::CanaryMonitor`), operators' actions from the admin API, and the history of every
//! decision with who made it, when and why.
//!
//! `deployment.toml` stays the source of truth: the state here starts from it, and with
//! `--deployment-state-dir` it is kept in `<dir>/<model>.json` next to a hash of the file's
//! text, so decisions and operators' actions survive a restart until the file changes. Every
//! action is also appended to `<dir>/audit.jsonl` and logged.

use std::collections::{BTreeSet, VecDeque};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};

use super::config::Deployment;
use super::gates::{Action, CanaryMonitor, Move, Snapshot, Status, Verdict};
use super::shadow::now_ms_precise;

/// History entries kept per model (oldest dropped first).
pub const HISTORY_LEN: usize = 200;

/// Who made the server's own decisions (gates, steps).
pub const GATE: &str = "gate";

/// One decision in a model's deployment history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Milliseconds since the Unix epoch.
    pub time_ms: f64,
    /// `gate` for the server's own decisions, else the operator's name as given.
    pub who: String,
    /// rollback, pause, step, promote, set_weight, resume, kill, unkill.
    pub action: String,
    pub why: String,
    /// The version acted on (the canary, or the version killed).
    pub version: Option<i64>,
    /// The canary's status after the decision.
    pub status: Option<Status>,
    /// The canary's weight after the decision, percent.
    pub weight_percent: Option<f64>,
    /// The breached gate, for a gate's rollback or pause.
    pub verdict: Option<Verdict>,
}

/// An operator's action (admin API).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AdminAction {
    Canary(Action),
    Kill(i64),
    Unkill(i64),
}

impl AdminAction {
    /// Parses an action name and its argument as the admin API takes them.
    pub fn parse(action: &str, version: Option<i64>, weight: Option<f64>) -> Result<Self, String> {
        let need_version = || version.ok_or_else(|| format!("action '{action}' needs a 'version'"));
        Ok(match action {
            "set_weight" => AdminAction::Canary(Action::SetWeight(
                weight.ok_or("action 'set_weight' needs a 'weight' (percent)")?,
            )),
            "promote" => AdminAction::Canary(Action::Promote),
            "rollback" => AdminAction::Canary(Action::Rollback),
            "pause" => AdminAction::Canary(Action::Pause),
            "resume" => AdminAction::Canary(Action::Resume),
            "kill" => AdminAction::Kill(need_version()?),
            "unkill" => AdminAction::Unkill(need_version()?),
            other => {
                return Err(format!(
                    "unknown action '{other}': expected set_weight, promote, rollback, pause, resume, kill or unkill"
                ))
            }
        })
    }

    fn name(&self) -> &'static str {
        match self {
            AdminAction::Canary(Action::SetWeight(_)) => "set_weight",
            AdminAction::Canary(Action::Promote) => "promote",
            AdminAction::Canary(Action::Rollback) => "rollback",
            AdminAction::Canary(Action::Pause) => "pause",
            AdminAction::Canary(Action::Resume) => "resume",
            AdminAction::Kill(_) => "kill",
            AdminAction::Unkill(_) => "unkill",
        }
    }
}

/// What `<state dir>/<model>.json` holds.
#[derive(Debug, Serialize, Deserialize)]
struct Persisted {
    deployment_hash: String,
    canary: Option<i64>,
    #[serde(default)]
    rollout: Option<Snapshot>,
    /// Absent in files written before operators could kill versions: the file's list then.
    #[serde(default)]
    killed: Option<Vec<i64>>,
    #[serde(default)]
    history: Vec<Event>,
    // The layout before `rollout`: the canary's decision at the top level.
    #[serde(default, skip_serializing)]
    status: Option<Status>,
    #[serde(default, skip_serializing)]
    step: Option<usize>,
    #[serde(default, skip_serializing)]
    verdict: Option<Verdict>,
}

impl Persisted {
    /// The rollout, from either layout.
    fn rollout(&self) -> Option<Snapshot> {
        self.rollout.clone().or_else(|| {
            self.status.map(|status| Snapshot {
                status,
                step: self.step.unwrap_or(0),
                verdict: self.verdict.clone(),
                override_bp: None,
            })
        })
    }
}

/// The state saved in `path` for the deployment hashed `hash` with canary `canary`, if any.
/// A file that exists but cannot be read is logged, never silently ignored.
fn read_state(model: &str, path: &Path, hash: u64, canary: Option<i64>) -> Option<Persisted> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::error!(model, error = %e, path = %path.display(), "cannot read the deployment state file; starting fresh");
            return None;
        }
    };
    match serde_json::from_str::<Persisted>(&text) {
        Ok(p) => (p.deployment_hash == format!("{hash:016x}") && p.canary == canary).then_some(p),
        Err(e) => {
            tracing::error!(model, error = %e, path = %path.display(), "the deployment state file is not valid; starting fresh");
            None
        }
    }
}

/// The runtime deployment state of one model with a `deployment.toml`.
#[derive(Debug)]
pub struct Control {
    pub model: String,
    /// The file's stable version (operators cannot kill it).
    pub stable: Option<i64>,
    pub monitor: Option<Arc<CanaryMonitor>>,
    /// Versions switched off now: the file's `killed`, as operators changed it.
    killed: RwLock<BTreeSet<i64>>,
    history: Mutex<VecDeque<Event>>,
    /// Where the state is kept, and the hash of the deployment text it belongs to.
    state: Option<(PathBuf, u64)>,
    /// Held while the state file is written, so writes never interleave or go back in time.
    persisting: Mutex<()>,
    audit: Option<PathBuf>,
}

impl Control {
    /// The control of `model` deployed by `d` (read from `text`); with `state_dir`, state
    /// saved there under the same text is restored.
    pub fn new(model: &str, d: &Deployment, text: &str, state_dir: Option<&Path>) -> Self {
        let hash = xxhash_rust::xxh3::xxh3_64(text.as_bytes());
        let state = state_dir.map(|dir| (dir.join(format!("{model}.json")), hash));
        let canary = d.canary.map(|(v, _)| v);
        let restored = state
            .as_ref()
            .and_then(|(path, hash)| read_state(model, path, *hash, canary));
        let (rollout, killed, history) = match restored {
            Some(p) => {
                let rollout = p.rollout();
                tracing::warn!(model, status = ?rollout.as_ref().map(|r| r.status), killed = ?p.killed, "deployment decisions restored from --deployment-state-dir");
                let killed = p
                    .killed
                    .map_or_else(|| d.killed.clone(), |k| k.into_iter().collect());
                (rollout, killed, p.history)
            }
            None => (None, d.killed.clone(), Vec::new()),
        };
        let c = Control {
            model: model.to_string(),
            stable: d.stable,
            monitor: CanaryMonitor::new(d, rollout).map(Arc::new),
            killed: RwLock::new(killed),
            history: Mutex::new(history.into_iter().collect()),
            state,
            persisting: Mutex::new(()),
            audit: state_dir.map(|d| d.join("audit.jsonl")),
        };
        // The file now belongs to this deployment: what an earlier text decided is gone, even
        // if that text comes back later.
        c.persist(true);
        c
    }

    /// The version answers nothing (kill switch).
    pub fn is_killed(&self, version: i64) -> bool {
        self.killed.read().contains(&version)
    }

    /// Versions switched off now.
    pub fn killed(&self) -> Vec<i64> {
        self.killed.read().iter().copied().collect()
    }

    /// Every decision, oldest first.
    pub fn history(&self) -> Vec<Event> {
        self.history.lock().iter().cloned().collect()
    }

    /// A rollout move made by the gates or steps: logged, counted, kept and persisted.
    pub fn moved(&self, (status, verdict): Move) {
        let Some(m) = &self.monitor else {
            return;
        };
        let model = self.model.as_str();
        let action = match (&verdict, status) {
            (Some(_), Status::Paused) => "pause",
            (Some(_), _) => "rollback",
            (None, Status::Promoted) => "promote",
            (None, _) => "step",
        };
        let why = match &verdict {
            Some(v) => {
                tracing::warn!(
                    model, canary = m.canary, gate = %v.gate, ?status,
                    canary_value = v.canary_value, stable_value = ?v.stable_value,
                    limit = v.limit, canary_requests = v.canary_requests,
                    "canary gate breached"
                );
                let counter = if status == Status::Paused {
                    "switchyard_canary_pauses_total"
                } else {
                    "switchyard_canary_rollbacks_total"
                };
                metrics::counter!(
                    counter,
                    "model" => model.to_string(),
                    "version" => m.canary.to_string(),
                    "gate" => v.gate.clone()
                )
                .increment(1);
                format!(
                    "gate {} breached: {} against a limit of {}",
                    v.gate, v.canary_value, v.limit
                )
            }
            None => {
                tracing::info!(model, canary = m.canary, ?status, step = ?m.step(), "canary rollout moved on");
                match m.step() {
                    // A step move goes up by one: the step that passed is the one before.
                    Some(s) if status == Status::Serving && s > 0 => {
                        format!("every gate held through step {}", s - 1)
                    }
                    _ => "every gate held through the last step".to_string(),
                }
            }
        };
        self.record(Event {
            time_ms: now_ms_precise(),
            who: GATE.to_string(),
            action: action.to_string(),
            why,
            version: Some(m.canary),
            status: Some(status),
            weight_percent: Some(m.weight_percent()),
            verdict,
        });
    }

    /// Carries out an operator's action, with who asked and why; the event it recorded.
    /// `loaded` are the model's loaded versions.
    pub fn act(
        &self,
        action: AdminAction,
        who: &str,
        why: &str,
        loaded: &[i64],
    ) -> Result<Event, String> {
        let who = if who.trim().is_empty() {
            "anonymous"
        } else {
            who.trim()
        };
        if who == GATE {
            return Err(format!(
                "who = \"{GATE}\" is reserved for the server's own decisions"
            ));
        }
        let (version, status) = match action {
            AdminAction::Canary(a) => {
                let m = self.monitor.as_ref().ok_or_else(|| {
                    format!(
                        "model '{}' has no canary in its deployment.toml",
                        self.model
                    )
                })?;
                (Some(m.canary), Some(m.act(a)?))
            }
            AdminAction::Kill(v) => {
                if !loaded.contains(&v) {
                    return Err(format!("version {v} is not loaded (loaded: {loaded:?})"));
                }
                if self.stable == Some(v) {
                    return Err(format!(
                        "version {v} is the stable version; switch stable in deployment.toml first"
                    ));
                }
                self.killed.write().insert(v);
                (Some(v), self.monitor.as_ref().map(|m| m.status()))
            }
            AdminAction::Unkill(v) => {
                if !self.killed.write().remove(&v) {
                    return Err(format!("version {v} is not switched off"));
                }
                (Some(v), self.monitor.as_ref().map(|m| m.status()))
            }
        };
        let event = Event {
            time_ms: now_ms_precise(),
            who: who.to_string(),
            action: action.name().to_string(),
            why: why.to_string(),
            version,
            status,
            weight_percent: self.monitor.as_ref().map(|m| {
                if self.is_killed(m.canary) {
                    0.0
                } else {
                    m.weight_percent()
                }
            }),
            verdict: None,
        };
        tracing::warn!(
            model = %self.model, who = %event.who, action = %event.action, why = %event.why,
            version = ?event.version, status = ?event.status, "deployment action"
        );
        self.record(event.clone());
        Ok(event)
    }

    /// Keeps `event` in the history, the audit log and the state file.
    fn record(&self, event: Event) {
        if let Some(path) = &self.audit {
            #[derive(Serialize)]
            struct Line<'a> {
                model: &'a str,
                #[serde(flatten)]
                event: &'a Event,
            }
            let appended = serde_json::to_vec(&Line {
                model: &self.model,
                event: &event,
            })
            .map_err(std::io::Error::other)
            .and_then(|mut line| {
                line.push(b'\n');
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?
                    .write_all(&line)
            });
            if let Err(e) = appended {
                tracing::error!(error = %e, path = %path.display(), "cannot append to the audit log");
            }
        }
        {
            let mut h = self.history.lock();
            h.push_back(event);
            while h.len() > HISTORY_LEN {
                h.pop_front();
            }
        }
        self.persist(false);
    }

    /// Writes the state file. Unless `claim`, only while the file still belongs to this
    /// deployment: a control replaced by a reload (requests in flight still hold it) must not
    /// overwrite its successor's state.
    fn persist(&self, claim: bool) {
        let Some((path, hash)) = &self.state else {
            return;
        };
        let _writing = self.persisting.lock();
        if !claim {
            let current = std::fs::read_to_string(path)
                .ok()
                .and_then(|t| serde_json::from_str::<Persisted>(&t).ok());
            if current.is_some_and(|p| p.deployment_hash != format!("{hash:016x}")) {
                return;
            }
        }
        let p = Persisted {
            deployment_hash: format!("{hash:016x}"),
            canary: self.monitor.as_ref().map(|m| m.canary),
            rollout: self.monitor.as_ref().map(|m| m.snapshot()),
            killed: Some(self.killed()),
            history: self.history(),
            status: None,
            step: None,
            verdict: None,
        };
        let tmp = path.with_extension("json.tmp");
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let written = std::fs::create_dir_all(&dir)
            .and_then(|()| serde_json::to_vec_pretty(&p).map_err(std::io::Error::other))
            .and_then(|b| std::fs::write(&tmp, b))
            .and_then(|()| std::fs::rename(&tmp, path));
        if let Err(e) = written {
            tracing::error!(error = %e, path = %path.display(), "cannot persist the deployment state");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(text: &str) -> Deployment {
        super::super::config::parse(text, &[1, 2, 3], &["p".into()]).unwrap()
    }

    const CANARY: &str = "stable = 1\n[canary]\nversion = 2\nweight = 10.0\n[canary.gates]\nmin_requests = 5\nmax_error_rate = 0.1\n";

    #[test]
    fn operator_actions_move_the_canary_and_are_recorded() {
        let c = Control::new("m", &deployment(CANARY), CANARY, None);
        let m = c.monitor.clone().unwrap();
        assert_eq!(m.weight_percent(), 10.0);
        let e = c
            .act(
                AdminAction::Canary(Action::SetWeight(30.0)),
                "ana",
                "more traffic",
                &[1, 2, 3],
            )
            .unwrap();
        assert_eq!((e.who.as_str(), e.action.as_str()), ("ana", "set_weight"));
        assert_eq!(m.weight_percent(), 30.0);
        c.act(AdminAction::Canary(Action::Rollback), "", "bad", &[1, 2, 3])
            .unwrap();
        assert_eq!(m.weight_percent(), 0.0);
        assert!(c
            .act(AdminAction::Canary(Action::Pause), "ana", "", &[1, 2, 3])
            .is_err());
        c.act(
            AdminAction::Canary(Action::Resume),
            "ana",
            "fixed",
            &[1, 2, 3],
        )
        .unwrap();
        assert_eq!(m.weight_percent(), 10.0);
        c.act(
            AdminAction::Canary(Action::Promote),
            "ana",
            "done",
            &[1, 2, 3],
        )
        .unwrap();
        assert!(m.live().promoted);
        let h = c.history();
        assert_eq!(h.len(), 4);
        assert_eq!(h[1].who, "anonymous");
        assert_eq!(h[3].status, Some(Status::Promoted));
    }

    #[test]
    fn kill_switch_rules() {
        let c = Control::new("m", &deployment(CANARY), CANARY, None);
        assert!(c.act(AdminAction::Kill(1), "ana", "", &[1, 2, 3]).is_err());
        assert!(c.act(AdminAction::Kill(9), "ana", "", &[1, 2, 3]).is_err());
        c.act(AdminAction::Kill(2), "ana", "", &[1, 2, 3]).unwrap();
        assert!(c.is_killed(2));
        c.act(AdminAction::Unkill(2), "ana", "", &[1, 2, 3])
            .unwrap();
        assert!(!c.is_killed(2));
        assert!(c
            .act(AdminAction::Unkill(2), "ana", "", &[1, 2, 3])
            .is_err());
        let plain = "stable = 1\n";
        let p = Control::new("m", &deployment(plain), plain, None);
        assert!(p
            .act(AdminAction::Canary(Action::Promote), "ana", "", &[1, 2])
            .is_err());
    }

    #[test]
    fn state_survives_a_restart_for_the_same_file_only() {
        let d = tempfile::tempdir().unwrap();
        let c = Control::new("m", &deployment(CANARY), CANARY, Some(d.path()));
        let m = c.monitor.clone().unwrap();
        for _ in 0..5 {
            std::thread::sleep(std::time::Duration::from_millis(3));
            if let Some(mv) = m.record(true, std::time::Duration::from_millis(1), false, None, 0.0)
            {
                c.moved(mv);
            }
        }
        assert!(m.rolled_back());
        c.act(AdminAction::Kill(3), "ana", "broken", &[1, 2, 3])
            .unwrap();
        let again = Control::new("m", &deployment(CANARY), CANARY, Some(d.path()));
        assert!(again.monitor.as_ref().unwrap().rolled_back());
        assert!(again.is_killed(3));
        assert_eq!(again.history().len(), 2);
        assert_eq!(again.history()[0].who, GATE);
        let audit = std::fs::read_to_string(d.path().join("audit.jsonl")).unwrap();
        assert_eq!(audit.lines().count(), 2);
        assert!(audit.contains("\"who\":\"ana\""));
        let edited = format!("{CANARY}# edited\n");
        let fresh = Control::new("m", &deployment(&edited), &edited, Some(d.path()));
        assert!(!fresh.monitor.as_ref().unwrap().rolled_back());
        assert!(!fresh.is_killed(3));
    }
}
