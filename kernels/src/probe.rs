//! What CUDA this process can use, found at run time.
//!
//! cudarc loads every library on first use and panics when it is absent, so each library is
//! first checked with its `is_culib_present()` (which only opens and closes candidate sonames)
//! and the driver is queried only when libcuda loaded. The probe runs once per process
//! ([`probe`]); [`CudaProbe::reason`] is the sentence a GPU model's load error carries.

use std::sync::OnceLock;

/// CUDA major version the bindings were built for (cudarc feature `cuda-13000`): the
/// libraries searched are `lib*.so.13`, and the driver must support CUDA 13.
pub const CUDA_MAJOR: i32 = 13;

/// The driver API version that CUDA 13.0 needs (`cuDriverGetVersion` encoding).
pub const MIN_DRIVER_VERSION: i32 = 13_000;

/// A GPU's compute capability, e.g. 9.0 for Hopper (H100, H200).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ComputeCapability {
    pub major: u32,
    pub minor: u32,
}

impl ComputeCapability {
    /// Hopper (H100, H200): `sm_90`.
    pub const HOPPER: ComputeCapability = ComputeCapability { major: 9, minor: 0 };

    pub const fn new(major: u32, minor: u32) -> Self {
        ComputeCapability { major, minor }
    }

    /// The real architecture name: `sm_90`.
    pub fn sm(&self) -> String {
        format!("sm_{}{}", self.major, self.minor)
    }

    /// The virtual architecture NVRTC compiles PTX for: `compute_90`.
    pub fn compute(&self) -> String {
        format!("compute_{}{}", self.major, self.minor)
    }
}

impl std::fmt::Display for ComputeCapability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// One GPU as the driver reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub ordinal: i32,
    pub name: String,
    pub compute_capability: ComputeCapability,
    pub total_memory_bytes: u64,
}

/// What happened when the CUDA driver (libcuda) was looked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DriverState {
    /// libcuda could not be loaded.
    Missing,
    /// libcuda loaded, but initialising it or a query failed.
    Failed(String),
    /// Initialised: the CUDA version the driver supports and its GPUs.
    Ready { version: i32, devices: Vec<Device> },
}

/// Which CUDA libraries this process can load, and what the driver reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CudaProbe {
    pub driver: DriverState,
    pub cublas: bool,
    pub cublaslt: bool,
    pub nvrtc: bool,
}

/// Renders a `cuDriverGetVersion` value: 13000 → "13.0", 12080 → "12.8".
pub fn driver_version_string(version: i32) -> String {
    format!("{}.{}", version / 1000, (version % 1000) / 10)
}

impl CudaProbe {
    /// Looks for every library and queries the driver. Never panics: a panic inside cudarc
    /// (a symbol this driver lacks) becomes a [`DriverState::Failed`].
    pub fn run() -> CudaProbe {
        // SAFETY (all four): `is_culib_present` only dlopens candidate sonames and closes
        // them again; it calls nothing inside the library.
        let driver_present = unsafe { cudarc::driver::sys::is_culib_present() };
        let cublas = unsafe { cudarc::cublas::sys::is_culib_present() };
        let cublaslt = unsafe { cudarc::cublaslt::sys::is_culib_present() };
        let nvrtc = unsafe { cudarc::nvrtc::sys::is_culib_present() };
        let driver = if !driver_present {
            DriverState::Missing
        } else {
            std::panic::catch_unwind(query_driver).unwrap_or_else(|_| {
                DriverState::Failed(
                    "a CUDA driver call panicked (a symbol missing from this libcuda?)".into(),
                )
            })
        };
        CudaProbe {
            driver,
            cublas,
            cublaslt,
            nvrtc,
        }
    }

    /// Why a GPU instance cannot run here, naming exactly what is missing; `None` when the
    /// driver sees at least one GPU and every library loads.
    pub fn reason(&self) -> Option<String> {
        let mut problems = Vec::new();
        match &self.driver {
            DriverState::Missing => {
                problems.push("no CUDA driver (libcuda.so.1 not found)".to_string())
            }
            DriverState::Failed(e) => problems.push(format!("the CUDA driver failed: {e}")),
            DriverState::Ready { version, devices } => {
                if *version < MIN_DRIVER_VERSION {
                    problems.push(format!(
                        "the CUDA driver supports CUDA {}, older than the CUDA {} this build needs",
                        driver_version_string(*version),
                        driver_version_string(MIN_DRIVER_VERSION)
                    ));
                }
                if devices.is_empty() {
                    problems.push(format!(
                        "the CUDA driver ({}) sees no GPU",
                        driver_version_string(*version)
                    ));
                }
            }
        }
        let missing: Vec<String> = self
            .libraries()
            .into_iter()
            .filter(|(_, _, present)| !present)
            .map(|(what, soname, _)| format!("{what} ({soname})"))
            .collect();
        if !missing.is_empty() {
            problems.push(format!("CUDA libraries not found: {}", missing.join(", ")));
        }
        (!problems.is_empty()).then(|| problems.join("; "))
    }

    /// One line for the startup log: driver, devices and libraries.
    pub fn summary(&self) -> String {
        let driver = match &self.driver {
            DriverState::Missing => "no driver".to_string(),
            DriverState::Failed(e) => format!("driver failed ({e})"),
            DriverState::Ready { version, devices } => {
                let devices: Vec<String> = devices
                    .iter()
                    .map(|d| {
                        format!(
                            "{}: {} (sm_{}{}, {} MiB)",
                            d.ordinal,
                            d.name,
                            d.compute_capability.major,
                            d.compute_capability.minor,
                            d.total_memory_bytes >> 20
                        )
                    })
                    .collect();
                format!(
                    "driver CUDA {}, {} GPU(s) [{}]",
                    driver_version_string(*version),
                    devices.len(),
                    devices.join(", ")
                )
            }
        };
        let libs: Vec<String> = self
            .libraries()
            .into_iter()
            .map(|(what, _, present)| format!("{what} {}", if present { "yes" } else { "no" }))
            .collect();
        format!("{driver}; {}", libs.join(", "))
    }

    /// (library, soname, loadable) for the libraries besides the driver.
    fn libraries(&self) -> [(&'static str, String, bool); 3] {
        [
            ("cuBLAS", format!("libcublas.so.{CUDA_MAJOR}"), self.cublas),
            (
                "cuBLASLt",
                format!("libcublasLt.so.{CUDA_MAJOR}"),
                self.cublaslt,
            ),
            ("NVRTC", format!("libnvrtc.so.{CUDA_MAJOR}"), self.nvrtc),
        ]
    }
}

/// Initialises the driver and lists its GPUs. Only called once libcuda is known to load.
fn query_driver() -> DriverState {
    use cudarc::driver::{result, sys};
    let failed = |what: &str, e: result::DriverError| DriverState::Failed(format!("{what}: {e}"));
    if let Err(e) = result::init() {
        return failed("cuInit", e);
    }
    let mut version = 0;
    // SAFETY: cuDriverGetVersion writes one int through a pointer to a live local.
    if let Err(e) = unsafe { sys::cuDriverGetVersion(&mut version) }.result() {
        return failed("cuDriverGetVersion", e);
    }
    let count = match result::device::get_count() {
        Ok(n) => n,
        Err(e) => return failed("cuDeviceGetCount", e),
    };
    let mut devices = Vec::new();
    for ordinal in 0..count {
        let dev = match result::device::get(ordinal) {
            Ok(d) => d,
            Err(e) => return failed("cuDeviceGet", e),
        };
        let name = result::device::get_name(dev).unwrap_or_else(|e| format!("<name: {e}>"));
        use sys::CUdevice_attribute_enum::{
            CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR as MAJOR,
            CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR as MINOR,
        };
        // SAFETY: `dev` came from cuDeviceGet above; the queries only write through
        // pointers to locals inside cudarc.
        let (major, minor, memory) = unsafe {
            (
                result::device::get_attribute(dev, MAJOR),
                result::device::get_attribute(dev, MINOR),
                result::device::total_mem(dev),
            )
        };
        let (major, minor) = match (major, minor) {
            (Ok(a), Ok(b)) => (a, b),
            (Err(e), _) | (_, Err(e)) => return failed("cuDeviceGetAttribute", e),
        };
        devices.push(Device {
            ordinal,
            name,
            compute_capability: ComputeCapability::new(major as u32, minor as u32),
            total_memory_bytes: memory.unwrap_or(0) as u64,
        });
    }
    DriverState::Ready { version, devices }
}

/// The process-wide probe, run on first use. Libraries that appear later (installed while
/// the server runs) are not noticed.
pub fn probe() -> &'static CudaProbe {
    static PROBE: OnceLock<CudaProbe> = OnceLock::new();
    PROBE.get_or_init(CudaProbe::run)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h100() -> Device {
        Device {
            ordinal: 0,
            name: "NVIDIA H100 80GB HBM3".into(),
            compute_capability: ComputeCapability::HOPPER,
            total_memory_bytes: 80 << 30,
        }
    }

    fn full() -> CudaProbe {
        CudaProbe {
            driver: DriverState::Ready {
                version: 13_000,
                devices: vec![h100()],
            },
            cublas: true,
            cublaslt: true,
            nvrtc: true,
        }
    }

    #[test]
    fn everything_present_has_no_reason() {
        assert_eq!(full().reason(), None);
        let s = full().summary();
        assert!(s.contains("driver CUDA 13.0, 1 GPU(s)"), "{s}");
        assert!(
            s.contains("NVIDIA H100 80GB HBM3 (sm_90, 81920 MiB)"),
            "{s}"
        );
        assert!(s.contains("cuBLAS yes, cuBLASLt yes, NVRTC yes"), "{s}");
    }

    #[test]
    fn nothing_present_names_the_driver_first_then_each_library() {
        let p = CudaProbe {
            driver: DriverState::Missing,
            cublas: false,
            cublaslt: false,
            nvrtc: false,
        };
        assert_eq!(
            p.reason().unwrap(),
            "no CUDA driver (libcuda.so.1 not found); CUDA libraries not found: \
             cuBLAS (libcublas.so.13), cuBLASLt (libcublasLt.so.13), NVRTC (libnvrtc.so.13)"
        );
        assert_eq!(p.summary(), "no driver; cuBLAS no, cuBLASLt no, NVRTC no");
    }

    #[test]
    fn one_missing_library_is_named_alone() {
        let p = CudaProbe {
            cublaslt: false,
            ..full()
        };
        assert_eq!(
            p.reason().unwrap(),
            "CUDA libraries not found: cuBLASLt (libcublasLt.so.13)"
        );
    }

    #[test]
    fn old_driver_and_no_gpu_are_reasons() {
        let p = CudaProbe {
            driver: DriverState::Ready {
                version: 12_080,
                devices: vec![],
            },
            ..full()
        };
        let r = p.reason().unwrap();
        assert!(
            r.contains("supports CUDA 12.8, older than the CUDA 13.0"),
            "{r}"
        );
        assert!(r.contains("sees no GPU"), "{r}");
        let p = CudaProbe {
            driver: DriverState::Failed("cuInit: CUDA_ERROR_NO_DEVICE".into()),
            ..full()
        };
        assert_eq!(
            p.reason().unwrap(),
            "the CUDA driver failed: cuInit: CUDA_ERROR_NO_DEVICE"
        );
    }

    #[test]
    fn versions_and_architectures_render() {
        assert_eq!(driver_version_string(13_000), "13.0");
        assert_eq!(driver_version_string(12_080), "12.8");
        assert_eq!(ComputeCapability::HOPPER.sm(), "sm_90");
        assert_eq!(ComputeCapability::new(8, 6).compute(), "compute_86");
        assert_eq!(ComputeCapability::HOPPER.to_string(), "9.0");
    }

    #[test]
    fn probing_this_machine_never_panics() {
        let p = probe();
        // Whatever is installed, the reason and summary agree on the driver.
        if p.driver == DriverState::Missing {
            assert!(p.reason().unwrap().starts_with("no CUDA driver"));
        }
        assert!(!p.summary().is_empty());
        // benches/gpu/run.sh sets this on the GPU machine, where everything must load.
        if std::env::var_os("SWITCHYARD_EXPECT_GPU").is_some() {
            assert_eq!(p.reason(), None, "{}", p.summary());
            eprintln!("probe on the GPU machine: {}", p.summary());
        }
    }
}
