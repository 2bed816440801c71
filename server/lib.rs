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
pub mod error;
pub mod executor;
pub mod metrics;
pub mod model;
pub mod proto;
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

use crate::api::grpc::GrpcService;
use crate::api::health::HealthService;
use crate::config::Args;
use crate::core::Core;
use crate::proto::health::health_server::HealthServer;
use crate::proto::inference::grpc_inference_service_server::GrpcInferenceServiceServer;
use crate::repository::ModelRepository;

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
    let repository = ModelRepository::new(&args.model_repository, args.load_options());
    let repository = tokio::task::spawn_blocking(move || {
        repository.load_all().map(|failed| (repository, failed))
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
    let core = Core::new(repository, args.id.clone(), args.strict_readiness);

    if !args.allow_grpc {
        anyhow::bail!("--allow-grpc=false leaves no endpoint: HTTP is not implemented yet");
    }
    let addr = SocketAddr::new(args.grpc_address, args.grpc_port);
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot bind gRPC endpoint {addr}"))?;
    let local = listener.local_addr()?;
    tracing::info!("Started GRPCInferenceService at {local}");

    let limit = args.grpc_max_message_bytes;
    let infer = GrpcInferenceServiceServer::new(GrpcService::new(core.clone()))
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit);
    let health = HealthServer::new(HealthService::new(core.clone()));

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
    let metrics_endpoint = match metrics_handle {
        Some(handle) => {
            let addr = SocketAddr::new(
                args.metrics_address.unwrap_or(args.http_address),
                args.metrics_port,
            );
            let interval = Duration::from_millis(args.metrics_interval_ms);
            Some(
                metrics::MetricsEndpoint::bind(
                    addr,
                    core.clone(),
                    handle,
                    interval,
                    args.allow_cpu_metrics,
                )
                .await?,
            )
        }
        None => None,
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (metrics_stop_tx, metrics_stop_rx) = tokio::sync::oneshot::channel::<()>();
    if let Some(endpoint) = metrics_endpoint {
        tokio::spawn(endpoint.serve(async {
            let _ = metrics_stop_rx.await;
        }));
    }
    let drain_core = core.clone();
    let signal_task = tokio::spawn(async move {
        shutdown.await;
        // Readiness first, then new requests are refused, then the endpoint drains.
        drain_core.stop_accepting();
        let _ = stop_tx.send(());
    });
    let server = tonic::transport::Server::builder()
        .add_service(infer)
        .add_service(health)
        .serve_with_incoming_shutdown(incoming, async {
            let _ = stop_rx.await;
        });
    let mut server = std::pin::pin!(server);
    let exit_timeout = Duration::from_secs(args.exit_timeout_secs);
    tokio::select! {
        r = &mut server => r.context("gRPC server failed")?,
        _ = async {
            // Once shutdown starts, in-flight requests get `--exit-timeout-secs` to finish.
            while !signal_task.is_finished() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            tokio::time::sleep(exit_timeout).await;
        } => tracing::warn!("exit timeout reached with requests still in flight"),
    }
    // Metrics stay up through the drain, like Triton's; they stop with the process.
    let _ = metrics_stop_tx.send(());
    let core_for_unload = core.clone();
    let _ = tokio::task::spawn_blocking(move || core_for_unload.repository.unload_all()).await;
    tracing::info!("stopped");
    Ok(())
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
