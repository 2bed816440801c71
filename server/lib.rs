//! Switchyard: a Triton-compatible inference server.
//!
//! # Layout
//! - [`config`]: process flags (clap), the only reader of the environment.
//! - [`api`]: front ends. `api::grpc` serves `inference.GRPCInferenceService`, `api::health`
//!   serves `grpc.health.v1.Health`, `api::convert` maps proto ⇄ core types.
//! - [`core`]: the one API both front ends call (health, metadata, stats, index, infer).
//! - [`request`]: decoded requests and the validator that makes [`request::ValidInferRequest`].
//! - [`repository`]: model directories on disk → loaded versions (config.pbtxt parsing,
//!   auto-complete, version policy, engines, instances).
//! - [`scheduler`]: the per-version queue between handlers and instances.
//! - [`executor`]: engines (ONNX Runtime) and one OS thread per instance.
//! - [`stats`]: Triton's per-version statistics.
//! - [`metrics`]: the Prometheus endpoint (Triton's `nv_*` names, `switchyard_` histograms).
//! - [`tensor`], [`model`]: shared data types.
//!
//! # One request
//! `api::grpc::model_infer` decodes the proto into an [`request::InferRequest`] →
//! [`core::Core::infer`] resolves the version, validates against its [`model::ModelSpec`],
//! queues a [`scheduler::Job`] with a oneshot → an instance thread takes it, runs the engine,
//! records statistics and answers the oneshot → the handler encodes the response.

#![forbid(unsafe_code)]

pub mod api;
pub mod config;
pub mod core;
pub mod deploy;
pub mod engine;
pub mod error;
pub mod executor;
pub mod metrics;
pub mod model;
pub mod proto;
pub mod report;
pub mod repository;
pub mod request;
pub mod scheduler;
pub mod shutdown;
pub mod stats;
pub mod tensor;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::api::admin::AdminService;
use crate::api::grpc::GrpcService;
use crate::api::health::HealthService;
use crate::api::http::{HttpEndpoint, HttpLimits};
use crate::api::restrict::Restrictions;
use crate::config::Args;
use crate::core::Core;
use crate::proto::health::health_server::HealthServer;
use crate::proto::inference::grpc_inference_service_server::GrpcInferenceServiceServer;
use crate::proto::switchyard::deployment_server::DeploymentServer;
use crate::repository::{ControlMode, ModelRepository};

/// Loads the repository, serves until `shutdown` resolves, then drains and stops.
pub async fn run(
    args: Args,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    // Installed before any model loads: versions register their histograms at load.
    let metrics_handle = if args.allow_metrics {
        Some(metrics::install_recorder()?)
    } else {
        None
    };
    if let Err(e) = executor::onnx::init_runtime(&args.ort_library) {
        // Every ONNX model will fail its load with this reason; --exit-on-error decides.
        tracing::error!(error = %e, "ONNX Runtime is not available");
    }
    let mode = ControlMode::parse(&args.model_control_mode).map_err(anyhow::Error::msg)?;
    let startup = startup_models(mode, &args.load_model)?;
    let repository = ModelRepository::with_mode(&args.model_repository, args.load_options(), mode);
    let repository = tokio::task::spawn_blocking(move || {
        let failed = match startup {
            None => repository.load_all()?,
            Some(names) => repository.load_startup(&names),
        };
        std::io::Result::Ok((repository, failed))
    })
    .await
    .context("model loading panicked")?
    .with_context(|| {
        format!(
            "cannot read model repository '{}'",
            args.model_repository.display()
        )
    })?;
    let (repository, failed) = repository;
    if !failed.is_empty() {
        if args.exit_on_error {
            anyhow::bail!("failed to load all models: {}", failed.join(", "));
        }
        tracing::warn!(models = ?failed, "some models failed to load; serving the rest");
    }
    let shadow_log = match &args.shadow_log_dir {
        Some(dir) => Some(std::sync::Arc::new(
            deploy::shadow::DivergenceLog::new(
                dir,
                args.shadow_log_max_bytes,
                args.shadow_log_keep,
            )
            .with_context(|| format!("cannot create --shadow-log-dir '{}'", dir.display()))?,
        )),
        None => None,
    };
    let core = Core::new(
        repository,
        args.id.clone(),
        args.strict_readiness,
        shadow_log,
    );
    if !args.allow_grpc && !args.allow_http {
        anyhow::bail!("--allow-grpc=false and --allow-http=false leave no endpoint");
    }
    let http_restrictions =
        Restrictions::parse(&args.http_restricted_api).map_err(anyhow::Error::msg)?;
    let grpc_restrictions =
        Restrictions::parse(&args.grpc_restricted_protocol).map_err(anyhow::Error::msg)?;

    // Every endpoint stops when `stop` turns true.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let mut endpoints: tokio::task::JoinSet<anyhow::Result<()>> = tokio::task::JoinSet::new();
    if args.allow_grpc {
        let addr = SocketAddr::new(args.grpc_address, args.grpc_port);
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot bind gRPC endpoint {addr}"))?;
        tracing::info!("Started GRPCInferenceService at {}", listener.local_addr()?);
        endpoints.spawn(serve_grpc(
            listener,
            GrpcService::new(core.clone(), grpc_restrictions.clone()),
            AdminService::new(core.clone(), grpc_restrictions),
            core.clone(),
            args.grpc_max_message_bytes,
            stopped(stop_rx.clone()),
        ));
    }
    if args.allow_http {
        let addr = SocketAddr::new(args.http_address, args.http_port);
        let limits = HttpLimits {
            max_input_bytes: usize::try_from(args.http_max_input_size).unwrap_or(usize::MAX),
            max_chunks: args.http_max_chunks,
            max_json_depth: args.http_max_json_depth,
        };
        let endpoint = HttpEndpoint::bind(addr, core.clone(), limits, http_restrictions).await?;
        let stop = stopped(stop_rx.clone());
        endpoints.spawn(async move {
            endpoint.serve(stop).await;
            Ok(())
        });
    }
    // Metrics stay up through the drain, like Triton's; they stop with the process.
    let (metrics_stop_tx, metrics_stop_rx) = tokio::sync::oneshot::channel::<()>();
    if let Some(handle) = metrics_handle {
        let addr = SocketAddr::new(
            args.metrics_address.unwrap_or(args.http_address),
            args.metrics_port,
        );
        let interval = Duration::from_millis(args.metrics_interval_ms);
        let endpoint = metrics::MetricsEndpoint::bind(
            addr,
            core.clone(),
            handle,
            interval,
            args.allow_cpu_metrics,
            args.allow_gpu_metrics,
        )
        .await?;
        tokio::spawn(endpoint.serve(async {
            let _ = metrics_stop_rx.await;
        }));
    }
    if mode == ControlMode::Poll {
        tokio::spawn(poll_repository(
            core.clone(),
            Duration::from_secs(args.repository_poll_secs),
            stopped(stop_rx.clone()),
        ));
    }
    let drain_core = core.clone();
    tokio::spawn(async move {
        shutdown.await;
        // Readiness first, then new requests are refused, then the endpoints drain.
        drain_core.stop_accepting();
        let _ = stop_tx.send(true);
    });
    let exit_timeout = Duration::from_secs(args.exit_timeout_secs);
    let mut signalled = stop_rx.clone();
    let mut release_wait = exit_timeout;
    tokio::select! {
        r = async {
            while let Some(r) = endpoints.join_next().await {
                r.context("endpoint task panicked")??;
            }
            anyhow::Ok(())
        } => r?,
        _ = async {
            // Once shutdown starts, in-flight requests get `--exit-timeout-secs` to finish.
            let _ = signalled.wait_for(|s| *s).await;
            tokio::time::sleep(exit_timeout).await;
        } => {
            tracing::warn!("exit timeout reached with requests still in flight");
            release_wait = Duration::from_secs(1);
        }
    }
    let _ = metrics_stop_tx.send(());
    let core_for_unload = core.clone();
    let released =
        tokio::task::spawn_blocking(move || core_for_unload.repository.unload_all(release_wait))
            .await
            .unwrap_or(false);
    if !released {
        tracing::warn!("some model versions were still busy at exit");
    }
    tracing::info!("stopped");
    Ok(())
}

/// Which models to load at startup: `None` for all of them.
fn startup_models(mode: ControlMode, load_model: &[String]) -> anyhow::Result<Option<Vec<String>>> {
    if mode != ControlMode::Explicit {
        if !load_model.is_empty() {
            anyhow::bail!("--load-model needs --model-control-mode=explicit");
        }
        return Ok(None);
    }
    if load_model.iter().any(|m| m == "*") {
        if load_model.len() > 1 {
            anyhow::bail!("--load-model=* must be the only --load-model");
        }
        return Ok(None);
    }
    for name in load_model {
        repository::validate_model_name(name).map_err(anyhow::Error::msg)?;
    }
    Ok(Some(load_model.to_vec()))
}

/// `poll` mode: rescans the repository every `every` until `stop`.
async fn poll_repository(
    core: std::sync::Arc<Core>,
    every: Duration,
    stop: impl Future<Output = ()>,
) {
    let mut stop = std::pin::pin!(stop);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = tick.tick() => {}
        }
        let c = core.clone();
        match tokio::task::spawn_blocking(move || c.repository.poll()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "cannot scan the model repository"),
            Err(e) => tracing::error!(error = %e, "repository poll task failed"),
        }
    }
}

/// Serves `inference.GRPCInferenceService`, `switchyard.Deployment` and
/// `grpc.health.v1.Health` on `listener` until `stop` resolves, then waits for in-flight calls.
async fn serve_grpc(
    listener: TcpListener,
    service: GrpcService,
    admin: AdminService,
    core: std::sync::Arc<Core>,
    max_message_bytes: usize,
    stop: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let infer = GrpcInferenceServiceServer::new(service)
        .max_decoding_message_size(max_message_bytes)
        .max_encoding_message_size(max_message_bytes);
    let health = HealthServer::new(HealthService::new(core));
    // tonic applies `tcp_nodelay` only to listeners it binds itself: set it on every accepted
    // stream, or small responses wait on Nagle's algorithm (measured: p99 40 ms at c=4).
    let incoming = tokio_stream::StreamExt::map(
        tokio_stream::wrappers::TcpListenerStream::new(listener),
        |conn| {
            conn.inspect(|stream| {
                if let Err(e) = stream.set_nodelay(true) {
                    tracing::debug!(error = %e, "cannot set TCP_NODELAY");
                }
            })
        },
    );
    tonic::transport::Server::builder()
        .add_service(infer)
        .add_service(DeploymentServer::new(admin))
        .add_service(health)
        .serve_with_incoming_shutdown(incoming, stop)
        .await
        .context("gRPC server failed")
}

/// Sets up logging for `--log-verbose`.
pub fn init_tracing(verbose: u32) {
    let level = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_new(format!("switchyard={level},warn"))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .try_init();
}
