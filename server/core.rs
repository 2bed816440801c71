//! The core API both front ends call: health, metadata, statistics, the repository index and
//! inference. Front ends decode their wire format, call one method here and encode the
//! answer; nothing else.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::deploy::StickyKey;
use crate::error::InferError;
use crate::proto::inference::ModelConfig;
use crate::repository::{IndexEntry, LoadRequest, ModelRepository, ModelVersion, VersionState};
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
}

impl Core {
    pub fn new(repository: ModelRepository, id: String, strict_readiness: bool) -> Arc<Self> {
        Arc::new(Core {
            repository,
            id,
            strict_readiness,
            accepting: AtomicBool::new(true),
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
        let version = self
            .repository
            .resolve(&req.model_name, &req.model_version, |key| {
                sticky_key(&req, key)
            })?;
        let request = validate(req, &version.spec)?;
        let (reply, rx) = oneshot::channel();
        if let Err(e) = version.enqueue(request, reply, received, deadline) {
            version
                .stats
                .record_failure(received.elapsed(), FailureReason::of(&e));
            return Err(e);
        }
        // `version` stays alive until the answer arrives, so a drain never drops this request.
        let result = rx.await.unwrap_or_else(|_| {
            Err(InferError::Internal(
                "the model instance stopped before answering".into(),
            ))
        });
        drop(version);
        result
    }
}
