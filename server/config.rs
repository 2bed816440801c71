//! Process flags. Names and defaults follow `tritonserver` where a flag applies, so existing
//! launch scripts keep working. Nothing outside this module reads the environment.

use std::net::IpAddr;
use std::path::PathBuf;

use clap::{ArgAction, Parser};

/// Triton accepts `true/false`, `on/off` and `1/0`, case-insensitively.
fn parse_bool(s: &str) -> Result<bool, String> {
    match s.to_ascii_lowercase().as_str() {
        "true" | "on" | "1" | "yes" => Ok(true),
        "false" | "off" | "0" | "no" => Ok(false),
        other => Err(format!("expected true/false, on/off or 1/0, got '{other}'")),
    }
}

/// Switchyard: a Triton-compatible inference server.
#[derive(Debug, Clone, Parser)]
#[command(name = "switchyard", version, about)]
pub struct Args {
    /// Path of the model repository (Triton layout: <model>/config.pbtxt, <model>/<version>/).
    #[arg(long, alias = "model-store", env = "SWITCHYARD_MODEL_REPOSITORY")]
    pub model_repository: PathBuf,

    /// Address the gRPC endpoint binds.
    #[arg(long, default_value = "0.0.0.0")]
    pub grpc_address: IpAddr,
    /// Port of the gRPC endpoint (KServe v2 / Triton protocol). 0 picks a free port.
    #[arg(long, default_value_t = 8001)]
    pub grpc_port: u16,
    /// Serve gRPC.
    #[arg(long, default_value_t = true, action = ArgAction::Set, value_parser = parse_bool, num_args = 0..=1, default_missing_value = "true")]
    pub allow_grpc: bool,
    /// Largest gRPC message accepted or sent, in bytes (Triton uses INT32_MAX).
    #[arg(long, default_value_t = i32::MAX as usize)]
    pub grpc_max_message_bytes: usize,

    /// Port of the HTTP/REST endpoint (KServe v2). 0 picks a free port.
    #[arg(long, default_value_t = 8000)]
    pub http_port: u16,
    /// Address the HTTP endpoint binds.
    #[arg(long, default_value = "0.0.0.0")]
    pub http_address: IpAddr,
    /// Serve HTTP/REST.
    #[arg(long, default_value_t = true, action = ArgAction::Set, value_parser = parse_bool, num_args = 0..=1, default_missing_value = "true")]
    pub allow_http: bool,
    /// Largest HTTP request body in bytes, before and after decompression.
    #[arg(long, default_value_t = 1 << 26, value_parser = clap::value_parser!(u64).range(1..=(isize::MAX as u64)))]
    pub http_max_input_size: u64,
    /// Most non-empty chunks in one HTTP request body.
    #[arg(long, default_value_t = 65_536)]
    pub http_max_chunks: usize,
    /// Deepest JSON nesting accepted in an HTTP request.
    #[arg(long, default_value_t = 100)]
    pub http_max_json_depth: usize,
    /// Restrict HTTP API categories to requests carrying a header:
    /// `<category,...>:<key>=<value>` (value `@FILE` reads it from FILE). Repeatable.
    #[arg(long)]
    pub http_restricted_api: Vec<String>,
    /// Restrict gRPC API categories to requests carrying metadata:
    /// `<category,...>:<key>=<value>` (value `@FILE` reads it from FILE). Repeatable.
    #[arg(long)]
    pub grpc_restricted_protocol: Vec<String>,
    /// Port of the Prometheus endpoint (`GET /metrics`). 0 picks a free port.
    #[arg(long, default_value_t = 8002)]
    pub metrics_port: u16,
    /// Address of the Prometheus endpoint (default: the HTTP address, as in Triton).
    #[arg(long)]
    pub metrics_address: Option<IpAddr>,
    /// Serve Prometheus metrics.
    #[arg(long, default_value_t = true, action = ArgAction::Set, value_parser = parse_bool, num_args = 0..=1, default_missing_value = "true")]
    pub allow_metrics: bool,
    /// Export CPU utilisation and memory gauges (nv_cpu_*).
    #[arg(long, default_value_t = true, action = ArgAction::Set, value_parser = parse_bool, num_args = 0..=1, default_missing_value = "true")]
    pub allow_cpu_metrics: bool,
    /// Export GPU gauges (nv_gpu_*, nv_energy_consumption) read through NVML; none where the
    /// NVIDIA driver's libnvidia-ml.so.1 is absent.
    #[arg(long, default_value_t = true, action = ArgAction::Set, value_parser = parse_bool, num_args = 0..=1, default_missing_value = "true")]
    pub allow_gpu_metrics: bool,
    /// How often server-wide gauges (CPU, GPU) are sampled, in milliseconds.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..))]
    pub metrics_interval_ms: u64,

    /// Server identifier reported by ServerMetadata (`name`).
    #[arg(long, default_value = "triton")]
    pub id: String,
    /// Exit at startup if any model fails to load.
    #[arg(long, default_value_t = true, action = ArgAction::Set, value_parser = parse_bool, num_args = 0..=1, default_missing_value = "true")]
    pub exit_on_error: bool,
    /// Report the server ready only when every model loaded.
    #[arg(long, default_value_t = true, action = ArgAction::Set, value_parser = parse_bool, num_args = 0..=1, default_missing_value = "true")]
    pub strict_readiness: bool,
    /// Model control mode: `none` loads everything at startup and never changes; `poll`
    /// also follows the repository on disk; `explicit` loads the `--load-model` models and
    /// then only what the load/unload API asks for.
    #[arg(long, default_value = "none", value_parser = ["none", "poll", "explicit"])]
    pub model_control_mode: String,
    /// Seconds between repository scans in `poll` mode.
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..))]
    pub repository_poll_secs: u64,
    /// Model to load at startup in `explicit` mode (repeatable); `*` loads every model and
    /// must then be the only one.
    #[arg(long)]
    pub load_model: Vec<String>,
    /// Do not fill in missing inputs, outputs and max_batch_size from the model file.
    #[arg(long, default_value_t = false, action = ArgAction::Set, value_parser = parse_bool, num_args = 0..=1, default_missing_value = "true")]
    pub disable_auto_complete_config: bool,
    /// Seconds to wait for in-flight requests at shutdown.
    #[arg(long, default_value_t = 30)]
    pub exit_timeout_secs: u64,
    /// Verbose logging level (0 = info, 1 = debug, 2+ = trace).
    #[arg(long, default_value_t = 0)]
    pub log_verbose: u32,

    /// Directory where canary decisions (rollbacks) are kept across restarts, one file per
    /// model; a decision holds until the model's deployment.toml changes.
    #[arg(long)]
    pub deployment_state_dir: Option<PathBuf>,
    /// Directory of the shadow divergence log (`divergence.jsonl`, rotated by size). No log
    /// without it; shadow counters are kept either way.
    #[arg(long)]
    pub shadow_log_dir: Option<PathBuf>,
    /// Size at which the divergence log rotates, in bytes.
    #[arg(long, default_value_t = 64 << 20)]
    pub shadow_log_max_bytes: u64,
    /// Rotated divergence logs kept.
    #[arg(long, default_value_t = 5)]
    pub shadow_log_keep: usize,

    /// Directory of compiled GPU engines (`tensorrt` accelerator models), one file per model
    /// file, GPU architecture, precision, calibration and kernel version; a cached engine
    /// loads instead of compiling. Default: `switchyard-engines` in the system's temporary
    /// directory. `trt_engine_cache_enable: "false"` in a model's config turns it off for
    /// that model.
    #[arg(long)]
    pub engine_cache_dir: Option<PathBuf>,

    /// Path of ONNX Runtime's shared library (libonnxruntime.so), loaded at run time.
    #[arg(long, env = "ORT_DYLIB_PATH", default_value = "libonnxruntime.so")]
    pub ort_library: PathBuf,
    /// ONNX Runtime intra-op threads per instance when the model does not set the
    /// `intra_op_thread_count` parameter; 0 lets ONNX Runtime choose.
    #[arg(long, default_value_t = 0)]
    pub ort_intra_op_threads: usize,
    /// Requests queued per model version before new ones are refused with UNAVAILABLE
    /// "Exceeds maximum queue size" (a config's `max_queue_size` takes precedence).
    #[arg(long, default_value_t = 4096)]
    pub max_pending_requests: usize,
    /// Test hook, like Triton's TRITONSERVER_DELAY_SCHEDULER: every version's batcher holds
    /// its queue until this many requests are waiting (once), so batch formation can be
    /// tested deterministically. 0 = off.
    #[arg(long, default_value_t = 0)]
    pub delay_scheduler: usize,
}

/// The part of [`Args`] that model loading needs.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// `--deployment-state-dir`.
    pub deployment_state_dir: Option<PathBuf>,
    /// `--engine-cache-dir`, or its default.
    pub engine_cache_dir: PathBuf,
    pub auto_complete: bool,
    pub intra_op_threads: usize,
    pub max_pending_requests: usize,
    pub delay_scheduler: usize,
}

impl Args {
    /// Options for the model repository.
    pub fn load_options(&self) -> LoadOptions {
        LoadOptions {
            deployment_state_dir: self.deployment_state_dir.clone(),
            engine_cache_dir: self
                .engine_cache_dir
                .clone()
                .unwrap_or_else(|| std::env::temp_dir().join("switchyard-engines")),
            auto_complete: !self.disable_auto_complete_config,
            intra_op_threads: self.ort_intra_op_threads,
            max_pending_requests: self.max_pending_requests,
            delay_scheduler: self.delay_scheduler,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn triton_flag_spellings_parse() {
        let a = Args::try_parse_from([
            "switchyard",
            "--model-repository=/m",
            "--exit-on-error=false",
            "--strict-readiness",
            "off",
            "--grpc-port=0",
        ])
        .unwrap();
        assert!(!a.exit_on_error);
        assert!(!a.strict_readiness);
        assert_eq!(a.grpc_port, 0);
        assert_eq!(a.id, "triton");
        assert_eq!(a.exit_timeout_secs, 30);
        assert_eq!((a.metrics_port, a.metrics_interval_ms), (8002, 2000));
        assert!(a.allow_metrics && a.metrics_address.is_none());
        let b =
            Args::try_parse_from(["switchyard", "--model-store", "/m", "--exit-on-error"]).unwrap();
        assert!(b.exit_on_error);
        assert!(Args::try_parse_from([
            "switchyard",
            "--model-repository=/m",
            "--exit-on-error=maybe"
        ])
        .is_err());
        assert!(Args::try_parse_from([
            "switchyard",
            "--model-repository=/m",
            "--model-control-mode=bogus"
        ])
        .is_err());
        let e = Args::try_parse_from([
            "switchyard",
            "--model-repository=/m",
            "--model-control-mode=explicit",
            "--load-model=a",
            "--load-model=b",
        ])
        .unwrap();
        assert_eq!(e.load_model, vec!["a", "b"]);
        assert!(Args::try_parse_from([
            "switchyard",
            "--model-repository=/m",
            "--repository-poll-secs=0"
        ])
        .is_err());
    }

    #[test]
    fn engine_cache_dir_defaults_to_the_temporary_directory() {
        let a = Args::try_parse_from(["switchyard", "--model-repository=/m"]).unwrap();
        assert_eq!(
            a.load_options().engine_cache_dir,
            std::env::temp_dir().join("switchyard-engines")
        );
        let b = Args::try_parse_from([
            "switchyard",
            "--model-repository=/m",
            "--engine-cache-dir=/var/cache/sy",
        ])
        .unwrap();
        assert_eq!(
            b.load_options().engine_cache_dir,
            PathBuf::from("/var/cache/sy")
        );
    }
}
