//! Prometheus metrics on `--metrics-port` (`GET /metrics`), with Triton's names and labels so
//! existing dashboards keep working, plus `switchyard_` histograms.
//!
//! - Triton's per-model counters (`nv_inference_*{model,version}`) are published from each
//!   loaded version's [`StatsSnapshot`] when `/metrics` is scraped, so they always equal what
//!   the statistics API reports.
//! - Latency and batch-size histograms are recorded as requests finish
//!   ([`VersionHistograms`], owned by the version's `ModelStats`).
//! - CPU gauges are sampled every `--metrics-interval-ms`, as Triton does, and so are the GPU
//!   gauges (`nv_gpu_*`, `nv_energy_consumption`, labelled only by `gpu_uuid`) when NVML loads
//!   ([`switchyard_kernels::nvml`]); without NVML there are no GPU series at all.
//!
//! The recorder is `metrics-exporter-prometheus`, installed globally once per process.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use switchyard_kernels::nvml::{EnergySinceStart, GpuMonitor, GpuSample};
use tokio::net::TcpListener;

use crate::core::Core;
use crate::repository::ModelVersion;
use crate::stats::{CountNs, FailureReason, StatsSnapshot};

/// Request, queue and compute latency buckets, in seconds: 50 µs to 10 s, dense below a
/// millisecond where small models live.
pub const LATENCY_BUCKETS_SECONDS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
];

/// Shadow score-delta buckets (shadow - primary): symmetric, dense near zero.
pub const SCORE_DELTA_BUCKETS: &[f64] = &[
    -1.0, -0.5, -0.2, -0.1, -0.05, -0.02, -0.01, -0.001, 0.0, 0.001, 0.01, 0.02, 0.05, 0.1, 0.2,
    0.5, 1.0,
];

/// Batch-size buckets: powers of two up to 1024.
pub const BATCH_SIZE_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

const REQUEST_SECONDS: &str = "switchyard_request_duration_seconds";
const QUEUE_SECONDS: &str = "switchyard_queue_duration_seconds";
const COMPUTE_SECONDS: &str = "switchyard_compute_duration_seconds";
const BATCH_SIZE: &str = "switchyard_batch_size";

/// Triton's content type for `/metrics`.
const CONTENT_TYPE_TEXT: &str = "text/plain; charset=utf-8";

/// The histograms of one model version. Without an installed recorder they do nothing.
#[derive(Debug, Clone)]
pub struct VersionHistograms {
    request: metrics::Histogram,
    queue: metrics::Histogram,
    compute: metrics::Histogram,
    batch: metrics::Histogram,
}

impl Default for VersionHistograms {
    fn default() -> Self {
        VersionHistograms {
            request: metrics::Histogram::noop(),
            queue: metrics::Histogram::noop(),
            compute: metrics::Histogram::noop(),
            batch: metrics::Histogram::noop(),
        }
    }
}

impl VersionHistograms {
    /// Registers the histograms of `model` version `version` with the global recorder.
    pub fn new(model: &str, version: i64) -> Self {
        let labels = [
            ("model", model.to_string()),
            ("version", version.to_string()),
        ];
        VersionHistograms {
            request: histogram!(REQUEST_SECONDS, &labels),
            queue: histogram!(QUEUE_SECONDS, &labels),
            compute: histogram!(COMPUTE_SECONDS, &labels),
            batch: histogram!(BATCH_SIZE, &labels),
        }
    }

    /// One successful request: end to end, queued, and its batch's compute time.
    pub fn success(&self, total: Duration, queue: Duration, compute: Duration) {
        self.request.record(total.as_secs_f64());
        self.queue.record(queue.as_secs_f64());
        self.compute.record(compute.as_secs_f64());
    }

    /// One execution of `size` inferences.
    pub fn batch(&self, size: u64) {
        self.batch.record(size as f64);
    }
}

/// The deployment arms a version can answer as (`arm` label).
pub const ARMS: [&str; 3] = ["stable", "canary", "shadow"];

/// Per-arm series of one version (`switchyard_arm_*`), registered on first use so versions
/// that never serve an arm export none, and never re-registered on the request path.
#[derive(Debug, Default)]
pub struct ArmSeries {
    model: String,
    version: i64,
    arms: [std::sync::OnceLock<ArmHandles>; 3],
}

#[derive(Debug)]
struct ArmHandles {
    requests: metrics::Counter,
    failures: metrics::Counter,
    latency: metrics::Histogram,
}

impl ArmSeries {
    pub fn new(model: &str, version: i64) -> Self {
        ArmSeries {
            model: model.to_string(),
            version,
            arms: Default::default(),
        }
    }

    /// One request answered (or failed) as `arm`, one of [`ARMS`].
    pub fn record(&self, arm: &'static str, ok: bool, latency: Duration) {
        let Some(i) = ARMS.iter().position(|a| *a == arm) else {
            return;
        };
        let h = self.arms[i].get_or_init(|| {
            let labels = [
                ("model", self.model.clone()),
                ("version", self.version.to_string()),
                ("arm", arm.to_string()),
            ];
            ArmHandles {
                requests: counter!("switchyard_arm_requests_total", &labels),
                failures: counter!("switchyard_arm_failures_total", &labels),
                latency: histogram!("switchyard_arm_request_duration_seconds", &labels),
            }
        });
        h.requests.increment(1);
        if !ok {
            h.failures.increment(1);
        }
        h.latency.record(latency.as_secs_f64());
    }
}

/// Builds the Prometheus recorder with our buckets and installs it for the whole process.
pub fn install_recorder() -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS_SECONDS)
        .and_then(|b| {
            b.set_buckets_for_metric(Matcher::Full(BATCH_SIZE.into()), BATCH_SIZE_BUCKETS)
        })
        .and_then(|b| {
            b.set_buckets_for_metric(
                Matcher::Full("switchyard_shadow_score_delta".into()),
                SCORE_DELTA_BUCKETS,
            )
        })
        .context("invalid histogram buckets")?
        .install_recorder()
        .context("cannot install the metrics recorder")?;
    describe();
    Ok(handle)
}

/// HELP texts, Triton's where the metric is Triton's.
fn describe() {
    describe_counter!(
        "nv_inference_request_success",
        "Number of successful inference requests, all batch sizes"
    );
    describe_counter!(
        "nv_inference_request_failure",
        "Number of failed inference requests, all batch sizes"
    );
    describe_counter!(
        "nv_inference_count",
        "Number of inferences performed (does not include cached requests)"
    );
    describe_counter!(
        "nv_inference_exec_count",
        "Number of model executions performed (does not include cached requests)"
    );
    describe_counter!(
        "nv_inference_request_duration_us",
        "Cumulative inference request duration in microseconds (includes cached requests)"
    );
    describe_counter!(
        "nv_inference_queue_duration_us",
        "Cumulative inference queuing duration in microseconds (includes cached requests)"
    );
    describe_counter!(
        "nv_inference_compute_input_duration_us",
        "Cumulative compute input duration in microseconds (does not include cached requests)"
    );
    describe_counter!(
        "nv_inference_compute_infer_duration_us",
        "Cumulative compute inference duration in microseconds (does not include cached requests)"
    );
    describe_counter!(
        "nv_inference_compute_output_duration_us",
        "Cumulative inference compute output duration in microseconds (does not include cached requests)"
    );
    describe_gauge!(
        "nv_inference_pending_request_count",
        "Instantaneous number of pending requests awaiting execution per-model."
    );
    describe_gauge!("nv_model_load_duration_secs", "Model load time in seconds");
    describe_gauge!("nv_cpu_utilization", "CPU utilization rate [0.0 - 1.0]");
    describe_gauge!(
        "nv_cpu_memory_total_bytes",
        "CPU total memory (RAM), in bytes"
    );
    describe_gauge!(
        "nv_cpu_memory_used_bytes",
        "CPU used memory (RAM), in bytes"
    );
    describe_gauge!("nv_gpu_utilization", "GPU utilization rate [0.0 - 1.0)");
    describe_gauge!("nv_gpu_memory_total_bytes", "GPU total memory, in bytes");
    describe_gauge!("nv_gpu_memory_used_bytes", "GPU used memory, in bytes");
    describe_gauge!("nv_gpu_power_usage", "GPU power usage in watts");
    describe_gauge!("nv_gpu_power_limit", "GPU power management limit in watts");
    describe_counter!(
        "nv_energy_consumption",
        "GPU energy consumption in joules since the Triton Server started"
    );
    describe_histogram!(
        REQUEST_SECONDS,
        "End-to-end duration of successful requests, in seconds"
    );
    describe_histogram!(
        QUEUE_SECONDS,
        "Time successful requests waited in the queue, in seconds"
    );
    describe_histogram!(
        COMPUTE_SECONDS,
        "Compute time (input + infer + output) of the batch each successful request ran in, in seconds"
    );
    describe_histogram!(BATCH_SIZE, "Inferences per model execution");
    describe_counter!(
        "switchyard_arm_requests_total",
        "Requests answered per deployment arm (stable, canary, shadow)"
    );
    describe_counter!(
        "switchyard_arm_failures_total",
        "Failed requests per deployment arm"
    );
    describe_histogram!(
        "switchyard_arm_request_duration_seconds",
        "End-to-end request latency per deployment arm"
    );
    describe_counter!(
        "switchyard_shadow_requests_total",
        "Shadow copies by outcome: compared, agreed, diverged, dropped, timed_out, errored"
    );
    describe_gauge!(
        "switchyard_canary_weight_percent",
        "Percent of unversioned requests routed to the canary (0 when killed)"
    );
    describe_gauge!(
        "switchyard_canary_rolled_back",
        "1 once a canary gate rolled the canary back"
    );
    describe_gauge!(
        "switchyard_canary_state",
        "Canary rollout state: 0 serving, 1 paused, 2 rolled back, 3 promoted"
    );
    describe_gauge!(
        "switchyard_canary_step",
        "Current step (0-based) of a stepped canary rollout"
    );
    describe_counter!(
        "switchyard_canary_pauses_total",
        "Canary rollouts paused, by the gate that was breached"
    );
    describe_counter!(
        "switchyard_canary_rollbacks_total",
        "Canary rollbacks, by the gate that was breached"
    );
    describe_gauge!(
        "switchyard_canary_gate_value",
        "Last measured value of each canary gate (error_rate, p99_ms, p99_ratio, psi, agreement)"
    );
    describe_counter!(
        "switchyard_canary_checks_total",
        "Canary requests re-run on stable for the agreement gate, by outcome"
    );
    describe_histogram!(
        "switchyard_shadow_score_delta",
        "Shadow score minus primary score of each compared pair"
    );
    describe_gauge!(
        "switchyard_shadow_psi",
        "PSI of the shadow's recent scores against the primary's"
    );
    describe_gauge!(
        "switchyard_stable_version",
        "The version answering unversioned requests"
    );
}

fn us(d: CountNs) -> u64 {
    d.ns / 1_000
}

/// Publishes the Triton counters of one version from its statistics.
fn publish_version(v: &ModelVersion, snap: &StatsSnapshot) {
    let model = v.spec.name.clone();
    let version = v.spec.version.to_string();
    let labels = [("model", model.clone()), ("version", version.clone())];
    counter!("nv_inference_request_success", &labels).absolute(snap.success.count);
    for reason in FailureReason::ALL {
        counter!(
            "nv_inference_request_failure",
            "model" => model.clone(),
            "reason" => reason.label(),
            "version" => version.clone()
        )
        .absolute(snap.failures[reason as usize]);
    }
    counter!("nv_inference_count", &labels).absolute(snap.inference_count);
    counter!("nv_inference_exec_count", &labels).absolute(snap.execution_count);
    counter!("nv_inference_request_duration_us", &labels).absolute(us(snap.success));
    counter!("nv_inference_queue_duration_us", &labels).absolute(us(snap.queue));
    counter!("nv_inference_compute_input_duration_us", &labels).absolute(us(snap.compute_input));
    counter!("nv_inference_compute_infer_duration_us", &labels).absolute(us(snap.compute_infer));
    counter!("nv_inference_compute_output_duration_us", &labels).absolute(us(snap.compute_output));
    gauge!("nv_inference_pending_request_count", &labels).set(v.pending() as f64);
    gauge!("nv_model_load_duration_secs", &labels).set(v.load_duration.as_secs_f64());
}

/// What the scrape handler needs.
#[derive(Clone)]
struct Scrape {
    core: Arc<Core>,
    handle: PrometheusHandle,
}

/// Routing gauges of a model with a `deployment.toml`.
fn publish_deployment(
    model: &str,
    d: &crate::deploy::Deployment,
    control: Option<&crate::deploy::control::Control>,
) {
    use crate::deploy::gates::Status;
    let monitor = control.and_then(|c| c.monitor.as_deref());
    let status = monitor.map_or(Status::Serving, |m| m.status());
    let rolled_back = status == Status::RolledBack;
    if let Some(stable) = d.stable {
        gauge!("switchyard_stable_version", "model" => model.to_string()).set(stable as f64);
    }
    let Some((canary, bp)) = d.canary else {
        return;
    };
    let killed = control.map_or(d.killed.contains(&canary), |c| c.is_killed(canary));
    let weight = if killed {
        0.0
    } else {
        monitor.map_or(f64::from(bp) / 100.0, |m| m.weight_percent())
    };
    let code = match status {
        Status::Serving => 0.0,
        Status::Paused => 1.0,
        Status::RolledBack => 2.0,
        Status::Promoted => 3.0,
    };
    let labels = [
        ("model", model.to_string()),
        ("version", canary.to_string()),
    ];
    gauge!("switchyard_canary_state", &labels).set(code);
    if let Some(step) = monitor.and_then(|m| m.step()) {
        gauge!("switchyard_canary_step", &labels).set(step as f64);
    }
    gauge!("switchyard_canary_rolled_back", &labels).set(if rolled_back { 1.0 } else { 0.0 });
    gauge!("switchyard_canary_weight_percent", &labels).set(weight);
    if let Some(v) = monitor.and_then(|m| m.values()) {
        let p99_ratio = match (v.canary_p99_ms, v.stable_p99_ms) {
            (Some(c), Some(s)) if s > 0.0 => Some(c / s),
            _ => None,
        };
        let values = [
            ("error_rate", Some(v.canary_error_rate)),
            ("p99_ms", v.canary_p99_ms),
            ("p99_ratio", p99_ratio),
            ("psi", v.psi),
            ("agreement", v.agreement),
        ];
        for (gate, value) in values {
            if let Some(x) = value {
                gauge!(
                    "switchyard_canary_gate_value",
                    "model" => model.to_string(),
                    "version" => canary.to_string(),
                    "gate" => gate
                )
                .set(x);
            }
        }
    }
}

async fn metrics_handler(
    axum::extract::State(s): axum::extract::State<Scrape>,
) -> impl IntoResponse {
    for v in s.core.repository.ready_versions() {
        publish_version(&v, &v.stats.snapshot());
    }
    for e in s.core.repository.entries() {
        if let Some(d) = &e.deployment {
            publish_deployment(&e.name, d, e.control.as_deref());
        }
    }
    ([(CONTENT_TYPE, CONTENT_TYPE_TEXT)], s.handle.render())
}

/// A gauge value perf_analyzer's pattern accepts (`\d+\.?\d*`): finite and not negative.
/// Rust's `Display` for `f64`, which the exporter uses, never writes an exponent
/// (85899345920, 0.000001), so only NaN, infinities and negatives need replacing; Triton
/// publishes 0 for a value it could not read, and so does this.
pub fn plain_gauge_value(x: f64) -> f64 {
    if x.is_finite() && x > 0.0 {
        x
    } else {
        0.0
    }
}

/// NVML and the energy baseline of each GPU, owned by the sampler.
struct GpuGauges {
    monitor: Arc<GpuMonitor>,
    energy: Vec<EnergySinceStart>,
}

impl GpuGauges {
    /// Opens NVML when GPU metrics are asked for; without it logs one line and returns
    /// `None`, and no GPU series is ever exported.
    fn open(allowed: bool) -> Option<GpuGauges> {
        if !allowed {
            return None;
        }
        match GpuMonitor::open() {
            Ok(monitor) => {
                tracing::info!(
                    library = monitor.library(),
                    gpus = ?monitor.uuids(),
                    "Collecting GPU metrics"
                );
                let energy = vec![EnergySinceStart::default(); monitor.uuids().len()];
                Some(GpuGauges {
                    monitor: Arc::new(monitor),
                    energy,
                })
            }
            Err(why) => {
                tracing::info!("GPU metrics will not be available: {why}");
                None
            }
        }
    }

    /// Reads every GPU (off the async workers: NVML calls block) and publishes the gauges.
    async fn sample(&mut self) {
        let monitor = self.monitor.clone();
        let Ok(samples) = tokio::task::spawn_blocking(move || monitor.sample()).await else {
            return;
        };
        publish_gpus(&samples, &mut self.energy);
    }
}

/// Publishes Triton's GPU series for `samples`; `energy[i]` is GPU i's baseline.
fn publish_gpus(samples: &[GpuSample], energy: &mut [EnergySinceStart]) {
    for (s, e) in samples.iter().zip(energy.iter_mut()) {
        let label = [("gpu_uuid", s.uuid.clone())];
        let set = |name: &'static str, v: Option<f64>| {
            gauge!(name, &label).set(plain_gauge_value(v.unwrap_or(0.0)));
        };
        set("nv_gpu_utilization", s.utilization);
        set(
            "nv_gpu_memory_total_bytes",
            s.memory_total_bytes.map(|b| b as f64),
        );
        set(
            "nv_gpu_memory_used_bytes",
            s.memory_used_bytes.map(|b| b as f64),
        );
        set("nv_gpu_power_usage", s.power_watts);
        set("nv_gpu_power_limit", s.power_limit_watts);
        // Triton's is a floating-point counter; the exporter's counters are integers, so whole
        // joules are published (the fraction is kept and shows up in later samples).
        if let Some(mj) = s.energy_millijoules {
            counter!("nv_energy_consumption", &label).absolute(e.update(mj) as u64);
        }
    }
}

/// Samples server-wide gauges (CPU, GPU) and runs the recorder's upkeep every `interval`.
async fn sample_loop(
    handle: PrometheusHandle,
    interval: Duration,
    cpu: bool,
    mut gpu: Option<GpuGauges>,
) {
    let mut sys = sysinfo::System::new();
    let mut tick = tokio::time::interval(interval.max(sysinfo::MINIMUM_CPU_UPDATE_INTERVAL));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if cpu {
            sys.refresh_cpu_usage();
            sys.refresh_memory();
            gauge!("nv_cpu_utilization").set(f64::from(sys.global_cpu_usage()) / 100.0);
            gauge!("nv_cpu_memory_total_bytes").set(sys.total_memory() as f64);
            gauge!("nv_cpu_memory_used_bytes").set(sys.used_memory() as f64);
        }
        if let Some(g) = gpu.as_mut() {
            g.sample().await;
        }
        handle.run_upkeep();
    }
}

/// The metrics endpoint, bound and ready to serve.
pub struct MetricsEndpoint {
    listener: TcpListener,
    router: Router,
    sampler: tokio::task::JoinHandle<()>,
}

impl MetricsEndpoint {
    /// Binds `addr` and starts the sampler: CPU gauges when `cpu`, GPU gauges when `gpu` and
    /// NVML loads.
    pub async fn bind(
        addr: SocketAddr,
        core: Arc<Core>,
        handle: PrometheusHandle,
        interval: Duration,
        cpu: bool,
        gpu: bool,
    ) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot bind metrics endpoint {addr}"))?;
        tracing::info!("Started Metrics Service at {}", listener.local_addr()?);
        let gpu = tokio::task::spawn_blocking(move || GpuGauges::open(gpu))
            .await
            .unwrap_or(None);
        let sampler = tokio::spawn(sample_loop(handle.clone(), interval, cpu, gpu));
        let router = Router::new()
            .route("/metrics", get(metrics_handler))
            .with_state(Scrape { core, handle });
        Ok(MetricsEndpoint {
            listener,
            router,
            sampler,
        })
    }

    /// Serves until `stop` resolves.
    pub async fn serve(self, stop: impl std::future::Future<Output = ()> + Send + 'static) {
        let r = axum::serve(self.listener, self.router)
            .with_graceful_shutdown(stop)
            .await;
        self.sampler.abort();
        if let Err(e) = r {
            tracing::error!(error = %e, "metrics endpoint failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_sorted_and_cover_sub_millisecond_work() {
        assert!(LATENCY_BUCKETS_SECONDS.windows(2).all(|w| w[0] < w[1]));
        assert!(BATCH_SIZE_BUCKETS.windows(2).all(|w| w[0] < w[1]));
        let sub_ms = LATENCY_BUCKETS_SECONDS
            .iter()
            .filter(|&&b| b < 0.001)
            .count();
        assert!(sub_ms >= 4);
    }

    #[test]
    fn histograms_render_with_our_buckets() {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS_SECONDS)
            .unwrap()
            .set_buckets_for_metric(Matcher::Full(BATCH_SIZE.into()), BATCH_SIZE_BUCKETS)
            .unwrap()
            .build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            let h = VersionHistograms::new("m", 3);
            h.success(
                Duration::from_micros(80),
                Duration::from_micros(10),
                Duration::from_micros(40),
            );
            h.batch(5);
        });
        let text = handle.render();
        assert!(
            text.contains(
                r#"switchyard_request_duration_seconds_bucket{model="m",version="3",le="0.0001"} 1"#
            ),
            "{text}"
        );
        assert!(text.contains(
            r#"switchyard_request_duration_seconds_bucket{model="m",version="3",le="0.00005"} 0"#
        ));
        assert!(text.contains(r#"switchyard_batch_size_bucket{model="m",version="3",le="4"} 0"#));
        assert!(text.contains(r#"switchyard_batch_size_bucket{model="m",version="3",le="8"} 1"#));
        assert!(text.contains(r#"switchyard_batch_size_count{model="m",version="3"} 1"#));
    }

    /// perf_analyzer's pattern, `\n<name>\{gpu_uuid="([^"]+)"\} (\d+\.?\d*)`, written out by
    /// hand, and stricter: the number must be the whole value (the regex would silently read
    /// `8.5e+10` as 8.5). Returns (uuid, value) per matching line.
    fn perf_analyzer_reads(text: &str, name: &str) -> Vec<(String, f64)> {
        let prefix = format!("\n{name}{{gpu_uuid=\"");
        let mut found = Vec::new();
        let mut rest = text;
        while let Some(i) = rest.find(&prefix) {
            rest = &rest[i + prefix.len()..];
            let Some(q) = rest.find('"') else { break };
            let uuid = &rest[..q];
            let line_end = rest.find('\n').unwrap_or(rest.len());
            let Some(value) = rest[q..line_end].strip_prefix("\"} ") else {
                continue;
            };
            let (int, frac) = value.split_once('.').unwrap_or((value, ""));
            let digits = |s: &str| s.chars().all(|c| c.is_ascii_digit());
            if uuid.is_empty() || int.is_empty() || !digits(int) || !digits(frac) {
                continue;
            }
            found.push((uuid.to_string(), value.parse().unwrap()));
        }
        found
    }

    #[test]
    fn gauge_values_are_plain_decimals() {
        assert_eq!(plain_gauge_value(f64::NAN), 0.0);
        assert_eq!(plain_gauge_value(f64::INFINITY), 0.0);
        assert_eq!(plain_gauge_value(-3.0), 0.0);
        assert_eq!(plain_gauge_value(0.37), 0.37);
        // What the exporter writes: f64 Display, never an exponent.
        assert_eq!(85_899_345_920.0_f64.to_string(), "85899345920");
        assert_eq!(1e21_f64.to_string(), "1000000000000000000000");
        assert_eq!(1e-7_f64.to_string(), "0.0000001");
    }

    #[test]
    fn gpu_series_render_the_way_perf_analyzer_parses_them() {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let h100 = GpuSample {
            uuid: "GPU-5f1c2a9e-0000-1111-2222-333344445555".into(),
            utilization: Some(0.87),
            memory_used_bytes: Some(1_234_567_890),
            memory_total_bytes: Some(85_899_345_920),
            power_watts: Some(312.456),
            power_limit_watts: Some(700.0),
            energy_millijoules: Some(9_000_000_000),
        };
        // A second board that cannot report power: 0, as Triton publishes.
        let other = GpuSample {
            uuid: "GPU-aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee".into(),
            power_watts: None,
            utilization: Some(f64::NAN),
            ..h100.clone()
        };
        let mut energy = vec![EnergySinceStart::default(); 2];
        metrics::with_local_recorder(&recorder, || {
            describe();
            publish_gpus(&[h100.clone(), other.clone()], &mut energy);
            let later = GpuSample {
                energy_millijoules: Some(9_000_002_600),
                ..h100.clone()
            };
            publish_gpus(&[later, other.clone()], &mut energy);
        });
        let text = handle.render();
        let read = |name| perf_analyzer_reads(&text, name);
        let total = read("nv_gpu_memory_total_bytes");
        assert_eq!(total.len(), 2, "{text}");
        assert!(
            total.contains(&(h100.uuid.clone(), 85_899_345_920.0)),
            "{text}"
        );
        assert!(
            total.contains(&(other.uuid.clone(), 85_899_345_920.0)),
            "{text}"
        );
        assert!(read("nv_gpu_utilization").contains(&(h100.uuid.clone(), 0.87)));
        assert!(read("nv_gpu_utilization").contains(&(other.uuid.clone(), 0.0)));
        assert!(read("nv_gpu_memory_used_bytes").contains(&(h100.uuid.clone(), 1_234_567_890.0)));
        assert!(read("nv_gpu_power_usage").contains(&(h100.uuid.clone(), 312.456)));
        assert!(read("nv_gpu_power_usage").contains(&(other.uuid.clone(), 0.0)));
        assert!(read("nv_gpu_power_limit").contains(&(h100.uuid.clone(), 700.0)));
        // 2.6 J since the first sample, published as whole joules.
        assert!(read("nv_energy_consumption").contains(&(h100.uuid.clone(), 2.0)));
        assert!(
            text.contains("# TYPE nv_energy_consumption counter"),
            "{text}"
        );
        assert!(text.contains("# TYPE nv_gpu_utilization gauge"), "{text}");
        // Exactly one label on every GPU line.
        for line in text.lines().filter(|l| l.starts_with("nv_gpu_")) {
            assert_eq!(line.matches('=').count(), 1, "{line}");
        }
    }
}
