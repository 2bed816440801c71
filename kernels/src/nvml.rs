//! GPU gauges for `/metrics`, read through NVML (`libnvidia-ml.so.1`, part of the NVIDIA
//! driver) loaded at run time by `nvml-wrapper`.
//!
//! Triton reads the same quantities through DCGM (core `src/metrics.cc`, `PollDcgmMetrics`):
//! utilisation, frame-buffer memory used and total, power usage, power-management limit and
//! total energy. [`GpuMonitor::open`] fails with a sentence, never a panic, where the library
//! or the driver is missing; the server then exports no GPU series.
//!
//! Difference from Triton: every GPU NVML sees is reported, whether or not
//! `CUDA_VISIBLE_DEVICES` hides it from CUDA (Triton keeps only CUDA-visible GPUs).

use nvml_wrapper::Nvml;

/// Sonames tried, in order: the driver installs `.so.1`; `.so` only comes with development
/// packages.
const LIBRARIES: [&str; 2] = ["libnvidia-ml.so.1", "libnvidia-ml.so"];

/// One GPU at one instant. A field is `None` when NVML could not read it (not supported on
/// this board, or a transient error); the exporter then publishes 0, as Triton does.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuSample {
    /// `GPU-xxxxxxxx-...`, the `gpu_uuid` label.
    pub uuid: String,
    /// Fraction of the last sample period a kernel ran, 0.0..=1.0.
    pub utilization: Option<f64>,
    pub memory_used_bytes: Option<u64>,
    pub memory_total_bytes: Option<u64>,
    pub power_watts: Option<f64>,
    pub power_limit_watts: Option<f64>,
    /// Energy since the driver loaded, in millijoules (NVML's counter; Volta and newer).
    pub energy_millijoules: Option<u64>,
}

/// An initialised NVML and the GPUs it found at startup.
pub struct GpuMonitor {
    nvml: Nvml,
    /// NVML index and UUID of each GPU, fixed at [`GpuMonitor::open`].
    devices: Vec<(u32, String)>,
    /// The library that loaded, for the startup log.
    library: &'static str,
}

impl std::fmt::Debug for GpuMonitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuMonitor")
            .field("devices", &self.devices)
            .field("library", &self.library)
            .finish()
    }
}

impl GpuMonitor {
    /// Loads NVML, initialises it and lists the GPUs. `Err` says why there will be no GPU
    /// metrics: library absent, driver not loaded, no GPU.
    pub fn open() -> Result<GpuMonitor, String> {
        // nvml-wrapper returns errors for a missing library or symbol; the catch_unwind is a
        // second guard so that no NVML surprise can take the server down at startup.
        std::panic::catch_unwind(Self::open_inner)
            .unwrap_or_else(|_| Err("NVML initialisation panicked".to_string()))
    }

    fn open_inner() -> Result<GpuMonitor, String> {
        let mut errors = Vec::new();
        for library in LIBRARIES {
            let nvml = match Nvml::builder()
                .lib_path(std::ffi::OsStr::new(library))
                .init()
            {
                Ok(n) => n,
                Err(e) => {
                    errors.push(format!("{library}: {e}"));
                    continue;
                }
            };
            let count = nvml
                .device_count()
                .map_err(|e| format!("NVML ({library}) cannot count GPUs: {e}"))?;
            let mut devices = Vec::new();
            for index in 0..count {
                match nvml.device_by_index(index).and_then(|d| d.uuid()) {
                    Ok(uuid) => devices.push((index, uuid)),
                    // One broken GPU must not hide the others (Triton skips it likewise).
                    Err(e) => eprintln!("warning: NVML GPU {index} skipped: {e}"),
                }
            }
            if devices.is_empty() {
                return Err(format!("NVML ({library}) found no GPU"));
            }
            return Ok(GpuMonitor {
                nvml,
                devices,
                library,
            });
        }
        Err(format!("NVML not available ({})", errors.join("; ")))
    }

    /// The UUIDs of the GPUs found at startup, in NVML order.
    pub fn uuids(&self) -> Vec<String> {
        self.devices.iter().map(|(_, u)| u.clone()).collect()
    }

    /// The library that loaded.
    pub fn library(&self) -> &'static str {
        self.library
    }

    /// Reads every GPU found at startup. Never panics; unreadable values are `None`.
    pub fn sample(&self) -> Vec<GpuSample> {
        self.devices
            .iter()
            .map(|(index, uuid)| {
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    self.sample_one(*index, uuid)
                }))
                .unwrap_or_else(|_| GpuSample {
                    uuid: uuid.clone(),
                    utilization: None,
                    memory_used_bytes: None,
                    memory_total_bytes: None,
                    power_watts: None,
                    power_limit_watts: None,
                    energy_millijoules: None,
                })
            })
            .collect()
    }

    fn sample_one(&self, index: u32, uuid: &str) -> GpuSample {
        let device = self.nvml.device_by_index(index).ok();
        let d = device.as_ref();
        let memory = d.and_then(|d| d.memory_info().ok());
        GpuSample {
            uuid: uuid.to_string(),
            utilization: d
                .and_then(|d| d.utilization_rates().ok())
                .map(|u| f64::from(u.gpu) * 0.01),
            memory_used_bytes: memory.as_ref().map(|m| m.used),
            memory_total_bytes: memory.as_ref().map(|m| m.total),
            power_watts: d
                .and_then(|d| d.power_usage().ok())
                .map(|mw| f64::from(mw) * 0.001),
            power_limit_watts: d
                .and_then(|d| d.power_management_limit().ok())
                .map(|mw| f64::from(mw) * 0.001),
            energy_millijoules: d.and_then(|d| d.total_energy_consumption().ok()),
        }
    }
}

/// Energy since the server started, Triton's `nv_energy_consumption`: the first reading of
/// the driver's counter is the baseline; a counter that went backwards (driver reload) starts
/// a new baseline, so the result never decreases.
#[derive(Debug, Default, Clone)]
pub struct EnergySinceStart {
    last_mj: Option<u64>,
    total_mj: u64,
}

impl EnergySinceStart {
    /// Feeds one reading in millijoules; returns the joules since the first reading.
    pub fn update(&mut self, reading_mj: u64) -> f64 {
        if let Some(last) = self.last_mj {
            self.total_mj += reading_mj.saturating_sub(last);
        }
        self.last_mj = Some(reading_mj);
        self.joules()
    }

    pub fn joules(&self) -> f64 {
        self.total_mj as f64 * 0.001
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn energy_counts_from_the_first_reading_and_never_decreases() {
        let mut e = EnergySinceStart::default();
        assert_eq!(e.update(5_000_000), 0.0);
        assert_eq!(e.update(5_001_500), 1.5);
        // Driver reloaded: the counter restarted lower; nothing is subtracted.
        assert_eq!(e.update(200), 1.5);
        assert_eq!(e.update(1_200), 2.5);
    }

    #[test]
    fn opening_nvml_never_panics() {
        // On this CI machine there is no NVIDIA driver: an error naming both sonames. On a
        // GPU machine: at least one GPU with a UUID.
        match GpuMonitor::open() {
            Ok(m) => {
                assert!(!m.uuids().is_empty());
                for s in m.sample() {
                    eprintln!("NVML sample: {s:?}");
                    assert!(
                        s.uuid.starts_with("GPU-") || s.uuid.starts_with("MIG-"),
                        "{s:?}"
                    );
                    if let Some(u) = s.utilization {
                        assert!((0.0..=1.0).contains(&u), "{s:?}");
                    }
                }
            }
            Err(why) => {
                // benches/gpu/run.sh sets this on the GPU machine, where NVML must load.
                assert!(
                    std::env::var_os("SWITCHYARD_EXPECT_GPU").is_none(),
                    "no NVML on the GPU machine: {why}"
                );
                assert!(why.contains("NVML"), "{why}")
            }
        }
    }
}
