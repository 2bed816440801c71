//! Model control: startup loading, the load/unload API, repository polling, and the swap
//! that makes a reload invisible to clients.
//!
//! A (re)load builds a complete new [`ModelEntry`] — engines loaded, warmed, instance threads
//! running — while the old entry keeps serving. Only a fully READY new entry replaces the old
//! one, in one map write; a failed reload leaves the old entry serving, with the reason in the
//! index. Replaced versions are *retired*: requests that already hold them finish on them, and
//! a reaper thread releases each once nothing else holds it, so no async thread ever blocks
//! on joining model threads.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use parking_lot::Mutex;

use super::autocomplete::{instance_total, normalize_instance_groups};
use super::paths::{plain_relative, validate_model_name};
use super::pbtxt::{parse_model_config, parse_model_config_json};
use crate::deploy::config::FILE_NAME as DEPLOYMENT_FILE;
use crate::error::InferError;
use crate::proto::inference::ModelConfig;

use super::{load, ModelEntry, ModelRepository, ModelVersion, VersionState, UNLOADED};

/// `--model-control-mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlMode {
    /// Load everything at startup; never change.
    None,
    /// Load everything at startup, then follow the repository on disk.
    Poll,
    /// Load what `--load-model` names; then only the load/unload API changes anything.
    Explicit,
}

/// The load API's parameters.
#[derive(Debug, Default, Clone)]
pub struct LoadRequest {
    /// `config`: a JSON `ModelConfig` used instead of `config.pbtxt`.
    pub config: Option<String>,
    /// `file:<path>` contents: the model directory is built from these, in a temporary
    /// directory, instead of the repository's.
    pub files: Vec<(String, Vec<u8>)>,
}

/// What a model directory held when it was loaded: its parsed `config.pbtxt` (before
/// auto-complete) and a fingerprint of everything else in it.
#[derive(Debug, Clone)]
pub struct Source {
    config: ModelConfig,
    /// `deployment.toml` as written, if there is one.
    deployment: Option<String>,
    /// Everything else in the directory.
    files: u64,
}

impl Source {
    /// Reads `dir`; `None` when there is no readable, parseable `config.pbtxt`.
    fn read(dir: &Path) -> Option<Source> {
        let text = std::fs::read_to_string(dir.join("config.pbtxt")).ok()?;
        let config = parse_model_config(&text).ok()?.config;
        let deployment = std::fs::read_to_string(dir.join(DEPLOYMENT_FILE)).ok();
        Some(Source {
            config,
            deployment,
            files: fingerprint_except(dir, &["config.pbtxt", DEPLOYMENT_FILE]),
        })
    }

    /// The two differ at most in instance counts.
    fn only_instance_counts_differ(&self, other: &Source) -> bool {
        let counts_zeroed = |c: &ModelConfig| {
            let mut c = c.clone();
            for g in &mut c.instance_group {
                g.count = 0;
            }
            c
        };
        self.files == other.files && counts_zeroed(&self.config) == counts_zeroed(&other.config)
    }
}

/// What polling remembers between scans.
#[derive(Debug, Default)]
pub struct ControlState {
    /// Fingerprint of each model directory when it was last (re)loaded from disk.
    fingerprints: HashMap<String, u64>,
}

/// Versions out of service, released on the reaper thread once idle.
#[derive(Debug)]
pub struct Retired {
    pending: Arc<Mutex<Vec<Arc<ModelVersion>>>>,
    stop: Option<Sender<()>>,
    reaper: Option<std::thread::JoinHandle<()>>,
}

/// How often the reaper looks for idle retired versions.
const REAP_INTERVAL: Duration = Duration::from_millis(20);

impl Retired {
    pub fn start() -> Self {
        let pending: Arc<Mutex<Vec<Arc<ModelVersion>>>> = Arc::default();
        let (stop, stopped) = crossbeam_channel::bounded(1);
        let list = pending.clone();
        let reaper = std::thread::Builder::new()
            .name("model-reaper".into())
            .spawn(move || reap_loop(&list, &stopped))
            .map_err(|e| tracing::error!(error = %e, "cannot start the model reaper thread"))
            .ok();
        Retired {
            pending,
            stop: Some(stop),
            reaper,
        }
    }

    pub(super) fn retire(&self, versions: impl IntoIterator<Item = Arc<ModelVersion>>) {
        self.pending.lock().extend(versions);
    }

    /// Releases every retired version, waiting for their in-flight requests, for at most
    /// `wait`. True if all were released.
    pub fn drain(&self, wait: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            for t in reap(&self.pending) {
                let _ = t.join();
            }
            if self.pending.lock().is_empty() {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(REAP_INTERVAL);
        }
    }
}

impl Drop for Retired {
    fn drop(&mut self) {
        self.stop.take();
        if let Some(t) = self.reaper.take() {
            let _ = t.join();
        }
        self.pending.lock().clear();
    }
}

fn reap_loop(list: &Mutex<Vec<Arc<ModelVersion>>>, stopped: &Receiver<()>) {
    let mut releasing: Vec<std::thread::JoinHandle<()>> = Vec::new();
    while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(REAP_INTERVAL) {
        let before = releasing.len();
        releasing.retain(|t| !t.is_finished());
        if releasing.len() < before {
            trim_heap();
        }
        releasing.extend(reap(list));
    }
    for t in releasing {
        let _ = t.join();
    }
}

/// Gives the memory that released versions freed back to the OS. glibc keeps freed memory in
/// its per-thread arenas (up to 8 per core): every load starts new threads (instances,
/// batchers, ONNX Runtime pools) that spread allocations over all of them, and each arena kept
/// its high-water mark, so RSS crept up over repeated loads and unloads (benches/reload:
/// +20-150 MiB over 1500 cycles with nothing live, flat with this).
fn trim_heap() {
    let t0 = tokio::time::Instant::now();
    let released = switchyard_kernels::trim_heap();
    let us = t0.elapsed().as_micros() as u64;
    tracing::debug!(
        released,
        us,
        "trimmed the heap after releasing model versions"
    );
}

/// Drops every retired version nothing else holds, each on its own short-lived thread:
/// tearing down ONNX Runtime sessions with their thread pools takes 70-500 ms on a busy
/// machine (measured, benches/reload), so one release at a time fell behind fast reloads.
/// Returns the release threads.
fn reap(list: &Mutex<Vec<Arc<ModelVersion>>>) -> Vec<std::thread::JoinHandle<()>> {
    let idle: Vec<Arc<ModelVersion>> = {
        let mut pending = list.lock();
        let (idle, busy) = std::mem::take(&mut *pending)
            .into_iter()
            .partition(|v| Arc::strong_count(v) == 1);
        *pending = busy;
        idle
    };
    idle.into_iter()
        .filter_map(|v| {
            let release = move || {
                let (name, version) = (v.spec.name.clone(), v.spec.version);
                let t0 = tokio::time::Instant::now();
                drop(v);
                let ms = t0.elapsed().as_millis() as u64;
                tracing::info!(model = %name, version, ms, "released model version");
            };
            std::thread::Builder::new()
                .name("model-release".into())
                .spawn(release)
                .map_err(|e| tracing::error!(error = %e, "cannot start a release thread"))
                .ok()
        })
        .collect()
}

/// A cheap fingerprint of everything under a model directory: relative paths, sizes and
/// modification times (symlinks followed), bounded in depth and entries.
pub fn fingerprint(dir: &Path) -> u64 {
    fingerprint_except(dir, &[])
}

/// [`fingerprint`] without the top-level file `skip`.
fn fingerprint_except(dir: &Path, skip: &[&str]) -> u64 {
    const MAX_DEPTH: usize = 4;
    const MAX_ENTRIES: usize = 10_000;
    let mut items: Vec<(String, u64, u128)> = Vec::new();
    let mut stack = vec![(dir.to_path_buf(), 0usize)];
    while let Some((d, depth)) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.filter_map(Result::ok) {
            if items.len() >= MAX_ENTRIES {
                break;
            }
            let path = e.path();
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            let mtime = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            let rel = path
                .strip_prefix(dir)
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default();
            if depth == 0 && skip.contains(&rel.as_str()) {
                continue;
            }
            items.push((
                rel,
                if meta.is_dir() { u64::MAX } else { meta.len() },
                mtime,
            ));
            if meta.is_dir() && depth < MAX_DEPTH {
                stack.push((path, depth + 1));
            }
        }
    }
    items.sort();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    items.hash(&mut h);
    h.finish()
}

/// Writes `file:` overrides into a fresh temporary model directory. Every path must be plain
/// and relative; files are created new (never through an existing link).
fn write_override_dir(files: &[(String, Vec<u8>)]) -> Result<tempfile::TempDir, String> {
    let dir = tempfile::Builder::new()
        .prefix("switchyard-override-")
        .tempdir()
        .map_err(|e| format!("cannot create a temporary model directory: {e}"))?;
    let base = dir
        .path()
        .canonicalize()
        .map_err(|e| format!("cannot resolve the temporary model directory: {e}"))?;
    for (rel, bytes) in files {
        let relative = plain_relative(rel, "file override")?;
        let path = base.join(&relative);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| format!("file override '{rel}': {e}"))?;
            let real = parent
                .canonicalize()
                .map_err(|e| format!("file override '{rel}': {e}"))?;
            if !real.starts_with(&base) {
                return Err(format!(
                    "file override '{rel}' resolves outside the model directory"
                ));
            }
        }
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| format!("file override '{rel}': {e}"))?;
        f.write_all(bytes)
            .map_err(|e| format!("file override '{rel}': {e}"))?;
    }
    Ok(dir)
}

impl ModelRepository {
    /// Names of the model directories under the root (hidden and invalid names skipped).
    pub fn scan(&self) -> std::io::Result<Vec<String>> {
        let mut names: Vec<String> = std::fs::read_dir(&self.root)?
            .filter_map(Result::ok)
            // A symlinked model directory counts, as in Triton.
            .filter(|e| e.path().is_dir())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| !n.starts_with('.'))
            .filter(|n| match validate_model_name(n) {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(error = %e, "skipping model directory");
                    false
                }
            })
            .collect();
        names.sort();
        Ok(names)
    }

    /// Loads `names` from the repository at startup. Returns the names that failed.
    pub fn load_startup(&self, names: &[String]) -> Vec<String> {
        let mut state = self.control.lock();
        let mut failed = Vec::new();
        for name in names {
            let dir = self.root.join(name);
            if !dir.is_dir() {
                tracing::error!(model = %name, "no such model directory in the repository");
                self.models.write().insert(
                    name.clone(),
                    Arc::new(ModelEntry::failed(
                        name,
                        None,
                        format!("model '{name}' is not in the model repository"),
                    )),
                );
                failed.push(name.clone());
                continue;
            }
            state.fingerprints.insert(name.clone(), fingerprint(&dir));
            let entry = self.load_from_disk(name, &dir);
            if self.install(name, entry).is_err() {
                failed.push(name.clone());
            }
        }
        failed
    }

    /// The load API: loads or reloads `name` (explicit mode only). Blocks until the new
    /// versions serve, or fails leaving what served before untouched.
    pub fn load(&self, name: &str, req: LoadRequest) -> Result<(), InferError> {
        validate_model_name(name).map_err(InferError::InvalidArgument)?;
        self.check_explicit()?;
        let failed = |e: String| InferError::invalid(format!("failed to load '{name}': {e}"));
        let config = match &req.config {
            Some(json) => Some(parse_model_config_json(json).map_err(failed)?),
            None => None,
        };
        let mut state = self.control.lock();
        let (dir, override_dir) = if req.files.is_empty() {
            (self.root.join(name), None)
        } else {
            if config.is_none() {
                return Err(failed(
                    "file: overrides need the 'config' parameter too".into(),
                ));
            }
            let tmp = write_override_dir(&req.files).map_err(failed)?;
            (tmp.path().to_path_buf(), Some(Arc::new(tmp)))
        };
        if override_dir.is_none() && !dir.is_dir() {
            return Err(failed(
                "no such model directory in the model repository".into(),
            ));
        }
        if override_dir.is_none() {
            state
                .fingerprints
                .insert(name.to_string(), fingerprint(&dir));
        } else {
            state.fingerprints.remove(name);
        }
        if override_dir.is_none() && config.is_none() {
            if let Some(done) = self.try_resize(name, &dir) {
                return done.map_err(InferError::InvalidArgument);
            }
            let entry = self.load_from_disk(name, &dir);
            return self
                .install(name, entry)
                .map_err(InferError::InvalidArgument);
        }
        let mut entry = load::load_model(&dir, name, &self.options, config);
        entry.override_dir = override_dir;
        self.install(name, entry)
            .map_err(InferError::InvalidArgument)
    }

    /// Loads `name` from its repository directory, remembering what was on disk.
    fn load_from_disk(&self, name: &str, dir: &Path) -> ModelEntry {
        let source = Source::read(dir);
        let mut entry = load::load_model(dir, name, &self.options, None);
        entry.source = source;
        entry
    }

    /// If the only changes on disk since `name` loaded are `instance_group` counts and
    /// `deployment.toml`, applies them in place (instances added or stopped, routing
    /// replaced; no reload) and returns the outcome. A bad `deployment.toml` keeps the old
    /// routing.
    fn try_resize(&self, name: &str, dir: &Path) -> Option<Result<(), String>> {
        let old = self.entry(name)?;
        if !old.loaded_ok() || old.override_dir.is_some() {
            return None;
        }
        let new = Source::read(dir)?;
        let old_source = old.source.as_ref()?;
        if !old_source.only_instance_counts_differ(&new) {
            return None;
        }
        let loaded: Vec<i64> = old
            .versions
            .iter()
            .filter(|(_, s)| matches!(s, VersionState::Ready(_)))
            .map(|(v, _)| *v)
            .collect();
        let (deployment, shadow_arms, control) = if new.deployment == old_source.deployment {
            (
                old.deployment.clone(),
                old.shadow_arms.clone(),
                old.control.clone(),
            )
        } else {
            let outputs: Vec<String> = old
                .config
                .iter()
                .flat_map(|c| c.output.iter().map(|o| o.name.clone()))
                .collect();
            match load::read_routing(name, dir, &loaded, &outputs, &self.options) {
                Ok(r) => (r.deployment, r.shadow_arms, r.control),
                Err(e) => {
                    let reason = format!("failed to load '{name}': {e}");
                    let kept = old.kept_after_failure(reason.clone());
                    self.models.write().insert(name.to_string(), Arc::new(kept));
                    return Some(Err(reason));
                }
            }
        };
        let mut served = (*old.config.clone()?).clone();
        served.instance_group = new.config.instance_group.clone();
        normalize_instance_groups(&mut served);
        let target = instance_total(&served);
        let served = Arc::new(served);
        let mut result = Ok(());
        for state in old.versions.values() {
            if let VersionState::Ready(m) = state {
                if m.instance_count() == target {
                    continue;
                }
                if let Err(e) = m.resize(target, served.clone()) {
                    result = Err(format!("failed to load '{name}': {e}"));
                    break;
                }
            }
        }
        tracing::info!(model = %name, instances = target, "instance count and routing updated in place");
        let entry = ModelEntry {
            name: old.name.clone(),
            config: Some(served),
            versions: old.versions.clone(),
            error: None,
            reload_error: result.as_ref().err().cloned(),
            override_dir: None,
            source: Some(new),
            deployment,
            shadow_arms,
            control,
            route_seq: Default::default(),
        };
        self.models
            .write()
            .insert(name.to_string(), Arc::new(entry));
        Some(result)
    }

    fn check_explicit(&self) -> Result<(), InferError> {
        if self.mode == ControlMode::Explicit {
            return Ok(());
        }
        Err(InferError::Unavailable(format!(
            "explicit model load / unload is not allowed with --model-control-mode={}",
            self.mode.flag()
        )))
    }

    /// The unload API: in-flight requests finish, new ones are refused.
    pub fn unload(&self, name: &str) -> Result<(), InferError> {
        validate_model_name(name).map_err(InferError::InvalidArgument)?;
        self.check_explicit()?;
        let mut state = self.control.lock();
        state.fingerprints.remove(name);
        if self.entry(name).is_none() && !self.root.join(name).is_dir() {
            return Err(InferError::invalid(format!(
                "failed to unload '{name}': no such model in the model repository"
            )));
        }
        self.unload_entry(name);
        Ok(())
    }

    /// One poll: loads added models, reloads changed ones, unloads removed ones.
    pub fn poll(&self) -> std::io::Result<()> {
        let names = self.scan()?;
        let mut state = self.control.lock();
        let present: HashSet<&String> = names.iter().collect();
        for name in &names {
            let dir = self.root.join(name);
            let fp = fingerprint(&dir);
            if state.fingerprints.get(name) == Some(&fp) {
                continue;
            }
            state.fingerprints.insert(name.clone(), fp);
            if let Some(done) = self.try_resize(name, &dir) {
                if let Err(e) = done {
                    tracing::error!(model = %name, error = %e, "instance count change failed");
                }
                continue;
            }
            tracing::info!(model = %name, "model directory changed; loading");
            let entry = self.load_from_disk(name, &dir);
            if let Err(e) = self.install(name, entry) {
                tracing::error!(model = %name, error = %e, "reload failed; what served before keeps serving");
            }
        }
        let gone: Vec<String> = state
            .fingerprints
            .keys()
            .filter(|n| !present.contains(n))
            .cloned()
            .collect();
        for name in gone {
            tracing::info!(model = %name, "model directory removed; unloading");
            state.fingerprints.remove(&name);
            self.unload_entry(&name);
        }
        Ok(())
    }

    /// Marks every version of `name` unloaded and retires what served.
    fn unload_entry(&self, name: &str) {
        let old = self.entry(name);
        let already_unloaded = old.as_ref().is_some_and(|e| {
            e.error.is_none()
                && !e.versions.is_empty()
                && e.versions
                    .values()
                    .all(|v| matches!(v, VersionState::Unavailable(r) if r == UNLOADED))
        });
        if already_unloaded {
            return;
        }
        if !old.as_ref().is_some_and(|e| e.serving()) {
            // Nothing loaded (never loaded, or its load failed): forget it; the index lists
            // the directory by name if it is still there, and readiness is unaffected.
            if let Some(old) = self.models.write().remove(name) {
                self.retire_versions(&old);
            }
            return;
        }
        let versions: BTreeMap<i64, VersionState> = old
            .iter()
            .flat_map(|e| e.versions.keys())
            .map(|v| (*v, VersionState::Unavailable(UNLOADED.into())))
            .collect();
        let entry = ModelEntry::plain(name, old.as_ref().and_then(|e| e.config.clone()), versions);
        self.models
            .write()
            .insert(name.to_string(), Arc::new(entry));
        if let Some(old) = old {
            self.retire_versions(&old);
        }
        tracing::info!(model = %name, "unloaded model");
    }

    fn retire_versions(&self, entry: &ModelEntry) {
        self.retired
            .retire(entry.versions.values().filter_map(|v| match v {
                VersionState::Ready(m) => Some(m.clone()),
                VersionState::Unavailable(_) => None,
            }));
    }

    /// Puts a freshly loaded entry in service, or keeps the old one if the new one failed
    /// while the old one served. Returns the failure, if any.
    fn install(&self, name: &str, mut new: ModelEntry) -> Result<(), String> {
        let old = self.entry(name);
        if !new.loaded_ok() {
            let reason = new.failure();
            if let Some(old) = old.filter(|o| o.serving()) {
                let kept = old.kept_after_failure(reason.clone());
                self.models.write().insert(name.to_string(), Arc::new(kept));
                // The new entry's versions that did load are released with it, here.
                drop(new);
                return Err(format!("failed to load '{name}': {reason}"));
            }
            self.models.write().insert(name.to_string(), Arc::new(new));
            return Err(format!("failed to load '{name}': {reason}"));
        }
        if let Some(old) = &old {
            for v in old.versions.keys() {
                new.versions
                    .entry(*v)
                    .or_insert_with(|| VersionState::Unavailable(UNLOADED.into()));
            }
        }
        self.models.write().insert(name.to_string(), Arc::new(new));
        if let Some(old) = old {
            self.retire_versions(&old);
        }
        Ok(())
    }
}

impl ControlMode {
    /// Parses the flag value.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(ControlMode::None),
            "poll" => Ok(ControlMode::Poll),
            "explicit" => Ok(ControlMode::Explicit),
            other => Err(format!(
                "invalid --model-control-mode '{other}': expected none, poll or explicit"
            )),
        }
    }

    /// The flag spelling.
    pub fn flag(self) -> &'static str {
        match self {
            ControlMode::None => "none",
            ControlMode::Poll => "poll",
            ControlMode::Explicit => "explicit",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_follows_changes() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("1")).unwrap();
        std::fs::write(d.path().join("1/model.onnx"), b"abc").unwrap();
        let a = fingerprint(d.path());
        assert_eq!(a, fingerprint(d.path()));
        std::fs::create_dir(d.path().join("2")).unwrap();
        let b = fingerprint(d.path());
        assert_ne!(a, b);
        std::fs::write(d.path().join("1/model.onnx"), b"abcd").unwrap();
        assert_ne!(b, fingerprint(d.path()));
    }

    #[test]
    fn override_files_stay_inside() {
        let ok = write_override_dir(&[("1/model.onnx".into(), b"x".to_vec())]).unwrap();
        assert!(ok.path().join("1/model.onnx").is_file());
        for bad in ["../x", "1/../../x", "/tmp/x", "", "./1/x"] {
            assert!(
                write_override_dir(&[(bad.into(), b"x".to_vec())]).is_err(),
                "{bad}"
            );
        }
        // The same path twice: the second write must not overwrite (create_new).
        assert!(write_override_dir(&[
            ("1/m".into(), b"x".to_vec()),
            ("1/m".into(), b"y".to_vec())
        ])
        .is_err());
    }

    #[test]
    fn modes_parse() {
        assert_eq!(ControlMode::parse("poll").unwrap(), ControlMode::Poll);
        assert!(ControlMode::parse("POLL").is_err());
        assert_eq!(ControlMode::Explicit.flag(), "explicit");
    }
}
