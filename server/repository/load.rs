//! Loading one model directory: config, version selection, engines, instances.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::autocomplete::{auto_complete, instance_total, model_spec, normalize};
use super::gpu::{gpu_plan, GpuPlan};
use super::paths::{inside, plain_relative};
use super::pbtxt::parse_model_config;
use super::schedule::scheduler_config;
use super::warmup;
use super::{Instances, ModelEntry, ModelVersion, VersionState};
use crate::config::LoadOptions;
use crate::deploy::control::Control;
use crate::deploy::shadow::ShadowArm;
use crate::deploy::{self, Deployment};
use crate::executor::instance::{spawn_instance, Fault};
use crate::executor::onnx::OnnxEngine;
use crate::executor::Engine;
use crate::model::ModelSpec;
use crate::proto::inference::{
    model_instance_group::Kind, model_version_policy::PolicyChoice, ModelConfig,
};
use crate::scheduler::Scheduler;
use crate::stats::ModelStats;
use parking_lot::{Mutex, RwLock};

const DEFAULT_MODEL_FILENAME: &str = "model.onnx";

/// Loads model `name` from its directory `model_dir`, with `config.pbtxt` or, when given,
/// `config_override` (the load API's `config`). Never fails: problems become UNAVAILABLE
/// states.
pub fn load_model(
    model_dir: &Path,
    name: &str,
    options: &LoadOptions,
    config_override: Option<ModelConfig>,
) -> ModelEntry {
    let started = tokio::time::Instant::now();
    let entry = match load_config(model_dir, name, options, config_override) {
        Err(error) => ModelEntry::failed(name, None, error),
        Ok((config, has_mbs)) => load_versions(model_dir, name, config, has_mbs, options),
    };
    match &entry.error {
        Some(e) => tracing::error!(model = name, error = %e, "failed to load model"),
        None => {
            for (v, s) in &entry.versions {
                match s {
                    VersionState::Ready(m) => tracing::info!(
                        model = name,
                        version = v,
                        instances = m.instance_count(),
                        ms = started.elapsed().as_millis() as u64,
                        "loaded model version"
                    ),
                    VersionState::Unavailable(r) => {
                        tracing::error!(model = name, version = v, error = %r, "failed to load model version")
                    }
                }
            }
        }
    }
    entry
}

fn load_config(
    model_dir: &Path,
    name: &str,
    options: &LoadOptions,
    config_override: Option<ModelConfig>,
) -> Result<(ModelConfig, bool), String> {
    let path = model_dir.join("config.pbtxt");
    let read = match config_override {
        Some(c) => {
            let has_mbs = c.max_batch_size != 0;
            Ok(Ok((c, has_mbs)))
        }
        None => std::fs::read_to_string(&path).map(|text| {
            parse_model_config(&text)
                .map(|p| (p.config, p.has_max_batch_size))
                .map_err(|e| format!("model '{name}': {e}"))
        }),
    };
    let (mut config, has_mbs) = match read {
        Ok(parsed) => parsed?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && options.auto_complete => {
            (ModelConfig::default(), false)
        }
        Err(e) => {
            return Err(format!(
                "model '{name}': cannot read {}: {e}",
                path.display()
            ))
        }
    };
    if config.name.is_empty() {
        config.name = name.to_string();
    } else if config.name != name {
        return Err(format!(
            "model '{name}': config name '{}' does not match the model directory name '{name}'",
            config.name
        ));
    }
    if config.platform.is_empty() && config.backend.is_empty() {
        config.platform = "onnxruntime_onnx".into();
    }
    let platform_ok = matches!(config.platform.as_str(), "" | "onnxruntime_onnx");
    let backend_ok = matches!(config.backend.as_str(), "" | "onnxruntime");
    if !platform_ok || !backend_ok {
        return Err(format!(
            "model '{name}': unsupported platform '{}' / backend '{}'; Switchyard serves platform 'onnxruntime_onnx' (backend 'onnxruntime')",
            config.platform, config.backend
        ));
    }
    check_config_paths(&config, model_dir).map_err(|e| format!("model '{name}': {e}"))?;
    let plan = gpu_plan(&config, model_dir).map_err(|e| format!("model '{name}': {e}"))?;
    check_gpu(name, &config, &plan)?;
    Ok((config, has_mbs))
}

/// Refuses KIND_GPU instance groups with the reason the GPU cannot be used here. As in
/// Triton's ONNX Runtime backend, GPU accelerators only apply to GPU instances: on a model
/// whose instances are all on the CPU they are accepted (once valid) and have no effect.
fn check_gpu(name: &str, config: &ModelConfig, plan: &GpuPlan) -> Result<(), String> {
    let gpu_group = config
        .instance_group
        .iter()
        .enumerate()
        .find(|(_, g)| g.kind == Kind::Gpu as i32);
    if let Some((i, g)) = gpu_group {
        if let Some(why) = switchyard_kernels::gpu_unavailable() {
            let what = match plan.describe() {
                d if d.is_empty() => String::new(),
                d => format!(" ({d})"),
            };
            // Unnamed groups get the name normalisation gives them later.
            let group = match g.name.as_str() {
                "" => format!("{name}_{i}"),
                n => n.to_string(),
            };
            return Err(format!(
                "model '{name}': instance group '{group}' asks for KIND_GPU{what}, but {why}"
            ));
        }
    } else if !plan.describe().is_empty() && !engine_on_cpu(config).unwrap_or(false) {
        tracing::warn!(
            model = name,
            gpu = %plan.describe(),
            "GPU optimization settings have no effect: the model has no KIND_GPU instance group"
        );
    }
    if !plan.ignored.is_empty() {
        tracing::warn!(model = name, parameters = ?plan.ignored, "accelerator parameters accepted for Triton compatibility but not used");
    }
    Ok(())
}

/// Every path a config names must stay inside the model directory; none of them is read here.
fn check_config_paths(config: &ModelConfig, model_dir: &Path) -> Result<(), String> {
    if !config.default_model_filename.is_empty() {
        plain_relative(&config.default_model_filename, "default_model_filename")?;
    }
    for (cc, file) in &config.cc_model_filenames {
        plain_relative(file, &format!("cc_model_filenames['{cc}']"))?;
    }
    for o in &config.output {
        if !o.label_filename.is_empty() {
            inside(
                model_dir,
                &o.label_filename,
                &format!("output '{}' label_filename", o.name),
            )?;
        }
    }
    warmup::check_paths(config, model_dir)
}

/// Numeric version directories without a leading zero.
fn version_dirs(model_dir: &Path) -> Vec<i64> {
    let Ok(rd) = std::fs::read_dir(model_dir) else {
        return Vec::new();
    };
    let mut versions: Vec<i64> = rd
        .filter_map(Result::ok)
        .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| !n.starts_with('0') && !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        .filter_map(|n| n.parse().ok())
        .collect();
    versions.sort_unstable();
    versions
}

/// Applies `version_policy` to the versions on disk.
pub fn select_versions(config: &ModelConfig, available: &[i64]) -> Vec<i64> {
    match config
        .version_policy
        .as_ref()
        .and_then(|p| p.policy_choice.as_ref())
    {
        Some(PolicyChoice::All(_)) => available.to_vec(),
        Some(PolicyChoice::Specific(s)) => available
            .iter()
            .copied()
            .filter(|v| s.versions.contains(v))
            .collect(),
        Some(PolicyChoice::Latest(l)) => {
            let n = l.num_versions.max(1) as usize;
            available[available.len().saturating_sub(n)..].to_vec()
        }
        None => available[available.len().saturating_sub(1)..].to_vec(),
    }
}

/// The model file of a version: `default_model_filename` (or `model.onnx`) inside the version
/// directory, never outside it. A directory holding `model.onnx` is accepted too.
pub fn model_file(version_dir: &Path, filename: &str) -> Result<PathBuf, String> {
    let what = "default_model_filename";
    let mut path = inside(version_dir, filename, what)?;
    if path.is_dir() {
        path = inside(
            version_dir,
            &format!("{filename}/{DEFAULT_MODEL_FILENAME}"),
            what,
        )?;
    }
    if !path.is_file() {
        return Err(format!("model file '{}' not found", path.display()));
    }
    Ok(path)
}

fn intra_op_threads(config: &ModelConfig, options: &LoadOptions) -> Result<usize, String> {
    match config.parameters.get("intra_op_thread_count") {
        None => Ok(options.intra_op_threads),
        Some(p) => p.string_value.trim().parse().map_err(|_| {
            format!(
                "model '{}': parameter intra_op_thread_count must be a non-negative integer, got '{}'",
                config.name, p.string_value
            )
        }),
    }
}

fn load_versions(
    model_dir: &Path,
    name: &str,
    mut config: ModelConfig,
    has_mbs: bool,
    options: &LoadOptions,
) -> ModelEntry {
    let fail = |config: Option<ModelConfig>, error: String| {
        ModelEntry::failed(name, config.map(Arc::new), error)
    };
    let available = version_dirs(model_dir);
    let selected = select_versions(&config, &available);
    if selected.is_empty() {
        return fail(
            Some(config),
            format!("at least one version must be available under the version policy of model '{name}' (found {available:?})"),
        );
    }
    let threads = match intra_op_threads(&config, options) {
        Ok(t) => t,
        Err(e) => return fail(Some(config), e),
    };
    let filename = if config.default_model_filename.is_empty() {
        DEFAULT_MODEL_FILENAME.to_string()
    } else {
        config.default_model_filename.clone()
    };
    let instances = instance_total(&config);
    // Switchyard's engine (KIND_GPU, or switchyard_engine_cpu) or ONNX Runtime.
    let target = match engine_target(&config) {
        Ok(t) => t,
        Err(e) => return fail(Some(config), e),
    };
    let plan = match target {
        None => None,
        Some(_) => match gpu_plan(&config, model_dir) {
            Ok(p) => Some(p),
            Err(e) => return fail(Some(config), format!("model '{name}': {e}")),
        },
    };
    // Load the first engine of every version; the newest one that loads completes the config.
    type Loaded = Result<(PathBuf, FirstEngine, std::time::Duration), String>;
    let mut first_engines: BTreeMap<i64, Loaded> = BTreeMap::new();
    for &v in selected.iter().rev() {
        let t0 = tokio::time::Instant::now();
        let engine = model_file(&model_dir.join(v.to_string()), &filename).and_then(|path| {
            let first = match (target, &plan) {
                (Some(target), Some(plan)) => {
                    let (model, device) = crate::executor::gpu::compile_model(
                        &path,
                        plan,
                        target,
                        &options.engine_cache_dir,
                    )
                    .map_err(|e| format!("model '{name}' version {v}: engine: {e}"))?;
                    tracing::info!(model = name, version = v, ?target, engine = %plan.describe(), cache = ?model.outcome, ms = t0.elapsed().as_millis() as u64, "Switchyard engine ready");
                    FirstEngine::Compiled {
                        model: Arc::new(model),
                        device,
                        plan: plan.clone(),
                    }
                }
                _ => FirstEngine::Ort(OnnxEngine::load(&path, threads).map_err(|e| e.to_string())?),
            };
            Ok((path, first, t0.elapsed()))
        });
        first_engines.insert(v, engine);
    }
    if options.auto_complete {
        if let Some(Ok((_, e, _))) = first_engines.values().rev().find(|r| r.is_ok()) {
            if let Err(err) = auto_complete(&mut config, has_mbs, e.inputs(), e.outputs()) {
                return fail(Some(config), err);
            }
        }
    }
    normalize(&mut config);
    let config = Arc::new(config);

    let mut versions = BTreeMap::new();
    for (v, engine) in first_engines {
        let state = engine
            .and_then(|(path, first, first_load)| {
                let t0 = tokio::time::Instant::now();
                let source = VersionSource {
                    model_dir,
                    version: v,
                    path,
                };
                start_version(&config, source, first, instances, options, threads).map(|mut m| {
                    m.load_duration = first_load + t0.elapsed();
                    m
                })
            })
            .map(|m| VersionState::Ready(Arc::new(m)))
            .unwrap_or_else(VersionState::Unavailable);
        versions.insert(v, state);
    }
    let loaded: Vec<i64> = versions
        .iter()
        .filter(|(_, s)| matches!(s, VersionState::Ready(_)))
        .map(|(v, _)| *v)
        .collect();
    // A bad deployment.toml fails the whole model: serving without the routing its owner
    // wrote could send traffic to a version meant to get none.
    let outputs: Vec<String> = config.output.iter().map(|o| o.name.clone()).collect();
    let routing = match read_routing(name, model_dir, &loaded, &outputs, options) {
        Ok(r) => r,
        Err(e) => return ModelEntry::failed(name, Some(config), format!("model '{name}': {e}")),
    };
    ModelEntry {
        name: name.to_string(),
        config: Some(config),
        versions,
        error: None,
        reload_error: None,
        override_dir: None,
        source: None,
        shadow_arms: routing.shadow_arms,
        control: routing.control,
        deployment: routing.deployment,
        route_seq: Default::default(),
    }
}

/// A model's routing as `deployment.toml` sets it up: the validated file and the runtime
/// state of its shadows and canary rollout.
#[derive(Debug, Default)]
pub struct Routing {
    pub deployment: Option<Arc<Deployment>>,
    pub shadow_arms: Vec<Arc<ShadowArm>>,
    pub control: Option<Arc<Control>>,
}

/// Reads `deployment.toml` (once) if the model directory has one, validates it against the
/// loaded versions and outputs, and starts its runtime state (restoring a rollout decision
/// kept in `--deployment-state-dir` under the same text).
pub fn read_routing(
    name: &str,
    model_dir: &Path,
    loaded: &[i64],
    outputs: &[String],
    options: &LoadOptions,
) -> Result<Routing, String> {
    let text = match std::fs::read_to_string(model_dir.join(deploy::config::FILE_NAME)) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Routing::default()),
        Err(e) => return Err(format!("cannot read {}: {e}", deploy::config::FILE_NAME)),
    };
    let d = deploy::config::parse(&text, loaded, outputs)?;
    Ok(Routing {
        shadow_arms: d.shadows.iter().cloned().map(ShadowArm::new).collect(),
        control: Some(Arc::new(Control::new(
            name,
            &d,
            &text,
            options.deployment_state_dir.as_deref(),
        ))),
        deployment: Some(Arc::new(d)),
    })
}

/// Where one version's files are, and how its engines are made.
#[derive(Debug, Clone)]
pub struct VersionFiles {
    pub model_dir: PathBuf,
    pub version: i64,
    /// The model file.
    pub path: PathBuf,
    /// ONNX Runtime intra-op threads per engine.
    pub threads: usize,
    /// Set for a model with KIND_GPU instances: every instance runs the compiled engine.
    pub gpu: Option<Arc<GpuSetup>>,
}

/// What each GPU instance of a version is made from.
#[derive(Debug)]
pub struct GpuSetup {
    pub model: Arc<crate::executor::gpu::CompiledModel>,
    /// `None`: the CPU runner (`switchyard_engine_cpu`).
    pub device: Option<Arc<switchyard_kernels::gpu::GpuDevice>>,
    pub plan: GpuPlan,
    pub max_batch_size: usize,
    /// Input shapes whose programs are built at load (the config fixes every other dim).
    pub warm_shapes: Vec<Vec<Vec<usize>>>,
}

/// Whether the model asks for Switchyard's engine on the CPU runner
/// (`parameters { key: "switchyard_engine_cpu" value: { string_value: "true" } }`).
pub fn engine_on_cpu(config: &ModelConfig) -> Result<bool, String> {
    match config
        .parameters
        .get("switchyard_engine_cpu")
        .map(|p| p.string_value.trim())
    {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(v) => Err(format!(
            "model '{}': parameter switchyard_engine_cpu = '{v}': expected \"true\" or \"false\"",
            config.name
        )),
    }
}

/// Where a model's engine runs when it is not ONNX Runtime: the GPU of its first KIND_GPU
/// group, or the CPU runner (`switchyard_engine_cpu`).
fn engine_target(config: &ModelConfig) -> Result<Option<crate::executor::gpu::Target>, String> {
    use crate::executor::gpu::Target;
    let on_cpu = engine_on_cpu(config)?;
    let gpu_groups: Vec<_> = config
        .instance_group
        .iter()
        .filter(|g| g.kind == Kind::Gpu as i32)
        .collect();
    if gpu_groups.is_empty() {
        return Ok(on_cpu.then_some(Target::Cpu));
    }
    // One engine per model version on one device: say so rather than place instances on a
    // device the config did not ask for.
    if gpu_groups.len() != config.instance_group.len() {
        return Err(format!(
            "model '{}': KIND_GPU and other instance kinds in one model are not supported by Switchyard's engine; use KIND_GPU groups only",
            config.name
        ));
    }
    let mut gpus: Vec<i32> = gpu_groups
        .iter()
        .flat_map(|g| g.gpus.iter().copied())
        .collect();
    gpus.sort_unstable();
    gpus.dedup();
    if gpus.len() > 1 {
        return Err(format!(
            "model '{}': instance groups on several GPUs ({gpus:?}) are not supported yet; Switchyard's engine runs a model's instances on one GPU",
            config.name
        ));
    }
    Ok(Some(Target::Gpu(
        gpus.first().map_or(0, |&g| g.max(0) as usize),
    )))
}

/// What the first load of a version produced: an ONNX Runtime session, or Switchyard's
/// compiled engine (such a model never opens ONNX Runtime).
enum FirstEngine {
    Ort(OnnxEngine),
    Compiled {
        model: Arc<crate::executor::gpu::CompiledModel>,
        device: Option<Arc<switchyard_kernels::gpu::GpuDevice>>,
        plan: GpuPlan,
    },
}

impl FirstEngine {
    fn inputs(&self) -> &[crate::executor::EngineIo] {
        match self {
            FirstEngine::Ort(e) => e.inputs(),
            FirstEngine::Compiled { model, .. } => &model.inputs,
        }
    }

    fn outputs(&self) -> &[crate::executor::EngineIo] {
        match self {
            FirstEngine::Ort(e) => e.outputs(),
            FirstEngine::Compiled { model, .. } => &model.outputs,
        }
    }
}

/// The instances' recipe for a compiled engine: programs are built at load for every batch
/// bucket when the config fixes the other dims.
fn gpu_setup(
    config: &ModelConfig,
    model: Arc<crate::executor::gpu::CompiledModel>,
    device: Option<Arc<switchyard_kernels::gpu::GpuDevice>>,
    plan: GpuPlan,
) -> Arc<GpuSetup> {
    let max_batch_size = config.max_batch_size.max(0) as usize;
    // In the model's input order (the engine's), each input's shape as it reaches the
    // engine: the config's `reshape` when set, else its dims.
    let fixed: Option<Vec<Vec<usize>>> = model
        .inputs
        .iter()
        .map(|io| {
            let cfg = config.input.iter().find(|i| i.name == io.name)?;
            let dims = cfg.reshape.as_ref().map_or(&cfg.dims, |r| &r.shape);
            dims.iter()
                .map(|&d| usize::try_from(d).ok())
                .collect::<Option<Vec<usize>>>()
        })
        .collect();
    let warm_shapes = match fixed {
        None => Vec::new(),
        Some(dims) if max_batch_size == 0 => vec![dims],
        Some(dims) => crate::executor::gpu::batch_buckets(&plan, max_batch_size)
            .into_iter()
            .filter(|_| plan.cuda_graphs)
            .map(|b| {
                dims.iter()
                    .map(|d| std::iter::once(b).chain(d.iter().copied()).collect())
                    .collect()
            })
            .collect(),
    };
    Arc::new(GpuSetup {
        model,
        device,
        plan,
        max_batch_size,
        warm_shapes,
    })
}

struct VersionSource<'a> {
    model_dir: &'a Path,
    version: i64,
    path: PathBuf,
}

fn start_version(
    config: &Arc<ModelConfig>,
    source: VersionSource<'_>,
    first: FirstEngine,
    instances: usize,
    options: &LoadOptions,
    threads: usize,
) -> Result<ModelVersion, String> {
    let spec = Arc::new(model_spec(
        config,
        source.version,
        first.inputs(),
        first.outputs(),
    )?);
    let (gpu, first) = match first {
        FirstEngine::Ort(e) => (None, Some(e)),
        FirstEngine::Compiled {
            model,
            device,
            plan,
        } => (Some(gpu_setup(config, model, device, plan)), None),
    };
    let files = VersionFiles {
        model_dir: source.model_dir.to_path_buf(),
        version: source.version,
        gpu,
        path: source.path,
        threads,
    };
    let stats = Arc::new(ModelStats::new(&config.name, files.version));
    let sched = scheduler_config(
        config,
        options.max_pending_requests,
        options.delay_scheduler,
    )?;
    let (scheduler, channels) = Scheduler::start(&config.name, sched, instances, stats.clone())
        .map_err(|e| format!("cannot start the batcher thread: {e}"))?;
    let fault = fault_of(config, files.version)?;
    if fault != Fault::default() {
        tracing::warn!(model = %config.name, version = files.version, ?fault, "fault injection is on");
    }
    let mut set = Instances {
        guards: Vec::with_capacity(instances),
        target: 0,
        channels,
        files,
        next_index: 0,
        fault,
    };
    add_instances(&mut set, config, &spec, &stats, instances, first)?;
    Ok(ModelVersion {
        spec,
        config: RwLock::new(config.clone()),
        stats,
        scheduler,
        instances: Mutex::new(set),
        load_duration: std::time::Duration::ZERO,
    })
}

/// The fault-injection parameters of `config` for `version` (all off when absent).
pub fn fault_of(config: &ModelConfig, version: i64) -> Result<Fault, String> {
    let param = |k: &str| config.parameters.get(k).map(|p| p.string_value.trim());
    let bad = |k: &str, v: &str, want: &str| {
        format!("model '{}': parameter {k} = '{v}': {want}", config.name)
    };
    if let Some(list) = param("switchyard_fault_versions") {
        let mut versions = Vec::new();
        for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            versions.push(item.parse::<i64>().map_err(|_| {
                bad(
                    "switchyard_fault_versions",
                    list,
                    "expected a comma-separated list of versions",
                )
            })?);
        }
        if !versions.is_empty() && !versions.contains(&version) {
            return Ok(Fault::default());
        }
    }
    let latency = match param("switchyard_fault_latency_ms") {
        None => 0,
        Some(v) => v.parse::<u64>().map_err(|_| {
            bad(
                "switchyard_fault_latency_ms",
                v,
                "expected milliseconds (an integer)",
            )
        })?,
    };
    let error_rate = match param("switchyard_fault_error_rate") {
        None => 0.0,
        Some(v) => v
            .parse::<f64>()
            .ok()
            .filter(|r| (0.0..=1.0).contains(r))
            .ok_or_else(|| {
                bad(
                    "switchyard_fault_error_rate",
                    v,
                    "expected a fraction from 0 to 1",
                )
            })?,
    };
    Ok(Fault {
        latency: std::time::Duration::from_millis(latency),
        error_rate,
    })
}

/// Starts `n` more instances: engines loaded (the first may be given) and warmed before any
/// thread starts, so a failure adds none.
fn add_instances(
    set: &mut Instances,
    config: &ModelConfig,
    spec: &Arc<ModelSpec>,
    stats: &Arc<ModelStats>,
    n: usize,
    first: Option<OnnxEngine>,
) -> Result<(), String> {
    let files = &set.files;
    let mut engines: Vec<Box<dyn Engine>> = Vec::with_capacity(n);
    if let Some(gpu) = &files.gpu {
        while engines.len() < n {
            engines.push(Box::new(
                crate::executor::gpu::ProgramEngine::new(
                    gpu.model.clone(),
                    gpu.device.clone(),
                    &gpu.plan,
                    gpu.max_batch_size,
                    &gpu.warm_shapes,
                )
                .map_err(|e| e.to_string())?,
            ));
        }
    } else if let Some(first) = first {
        engines.push(Box::new(first));
    }
    while engines.len() < n {
        engines.push(Box::new(
            OnnxEngine::load(&files.path, files.threads).map_err(|e| e.to_string())?,
        ));
    }
    // Warm every instance before the version (or the new instance) can take traffic.
    let samples = warmup::samples(config, spec, &files.model_dir)?;
    if !samples.is_empty() {
        let outputs: Vec<String> = spec.outputs.iter().map(|o| o.name.clone()).collect();
        for engine in &mut engines {
            warmup::run(engine.as_mut(), &samples, &outputs)?;
        }
    }
    for engine in engines {
        let thread = format!("{}-v{}-{}", config.name, files.version, set.next_index);
        set.next_index += 1;
        set.guards.push(
            spawn_instance(
                thread,
                engine,
                set.channels.batches.clone(),
                set.channels.slots.clone(),
                spec.clone(),
                stats.clone(),
                set.fault,
            )
            .map_err(|e| format!("cannot start instance thread: {e}"))?,
        );
        set.target += 1;
    }
    Ok(())
}

impl ModelVersion {
    /// Changes the instance count in place (a config change that only touches
    /// `instance_group`): new instances are loaded and warmed before they take work; removed
    /// ones stop as they become free, never mid-batch. `config` becomes the served config.
    pub fn resize(&self, target: usize, config: Arc<ModelConfig>) -> Result<(), String> {
        let target = target.max(1);
        let mut set = self.instances.lock();
        set.guards.retain(|g| !g.is_finished());
        if target > set.target {
            let n = target - set.target;
            add_instances(&mut set, &config, &self.spec, &self.stats, n, None)?;
        } else if target < set.target {
            self.scheduler.stop_instances(set.target - target);
            set.target = target;
        }
        *self.config.write() = config;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::inference::{model_version_policy, ModelVersionPolicy};

    #[test]
    fn version_policies() {
        let avail = [1, 2, 3, 7];
        let mut c = ModelConfig::default();
        assert_eq!(select_versions(&c, &avail), vec![7]);
        c.version_policy = Some(ModelVersionPolicy {
            policy_choice: Some(PolicyChoice::Latest(model_version_policy::Latest {
                num_versions: 2,
            })),
        });
        assert_eq!(select_versions(&c, &avail), vec![3, 7]);
        c.version_policy = Some(ModelVersionPolicy {
            policy_choice: Some(PolicyChoice::All(model_version_policy::All {})),
        });
        assert_eq!(select_versions(&c, &avail), avail.to_vec());
        c.version_policy = Some(ModelVersionPolicy {
            policy_choice: Some(PolicyChoice::Specific(model_version_policy::Specific {
                versions: vec![2, 5],
            })),
        });
        assert_eq!(select_versions(&c, &avail), vec![2]);
        assert!(select_versions(&c, &[]).is_empty());
    }

    #[test]
    fn engine_targets_one_gpu_or_the_cpu_runner() {
        use crate::executor::gpu::Target;
        use crate::proto::inference::ModelInstanceGroup;
        let group = |kind: Kind, gpus: Vec<i32>| ModelInstanceGroup {
            kind: kind as i32,
            gpus,
            count: 1,
            ..Default::default()
        };
        let mut c = ModelConfig {
            name: "m".into(),
            instance_group: vec![group(Kind::Cpu, vec![])],
            ..Default::default()
        };
        assert_eq!(engine_target(&c).unwrap(), None);
        c.parameters.insert(
            "switchyard_engine_cpu".into(),
            crate::proto::inference::ModelParameter {
                string_value: "true".into(),
            },
        );
        assert_eq!(engine_target(&c).unwrap(), Some(Target::Cpu));
        c.instance_group = vec![group(Kind::Gpu, vec![]), group(Kind::Gpu, vec![])];
        assert_eq!(engine_target(&c).unwrap(), Some(Target::Gpu(0)));
        c.instance_group = vec![group(Kind::Gpu, vec![1]), group(Kind::Gpu, vec![1])];
        assert_eq!(engine_target(&c).unwrap(), Some(Target::Gpu(1)));
        c.instance_group = vec![group(Kind::Gpu, vec![0, 1])];
        assert!(engine_target(&c)
            .unwrap_err()
            .contains("several GPUs ([0, 1])"));
        c.instance_group = vec![group(Kind::Gpu, vec![0]), group(Kind::Cpu, vec![])];
        assert!(engine_target(&c)
            .unwrap_err()
            .contains("KIND_GPU and other instance kinds"));
        c.parameters
            .get_mut("switchyard_engine_cpu")
            .unwrap()
            .string_value = "yes".into();
        assert!(engine_target(&c)
            .unwrap_err()
            .contains("switchyard_engine_cpu = 'yes'"));
    }

    #[test]
    fn version_dirs_skip_non_numeric_and_zero_prefixed() {
        let d = tempfile::tempdir().unwrap();
        for n in ["1", "02", "abc", "10", "0", "3x"] {
            std::fs::create_dir(d.path().join(n)).unwrap();
        }
        std::fs::write(d.path().join("5"), b"file, not dir").unwrap();
        assert_eq!(version_dirs(d.path()), vec![1, 10]);
    }

    #[test]
    fn model_file_stays_inside_version_dir() {
        let d = tempfile::tempdir().unwrap();
        let v = d.path().join("1");
        std::fs::create_dir(&v).unwrap();
        std::fs::write(v.join("model.onnx"), b"x").unwrap();
        std::fs::write(d.path().join("outside.onnx"), b"x").unwrap();
        assert!(model_file(&v, "model.onnx").is_ok());
        assert!(model_file(&v, "../outside.onnx").is_err());
        assert!(model_file(&v, "/etc/passwd").is_err());
        assert!(model_file(&v, "missing.onnx").is_err());
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(d.path().join("outside.onnx"), v.join("link.onnx")).unwrap();
            assert!(model_file(&v, "link.onnx").unwrap_err().contains("outside"));
        }
    }
}
