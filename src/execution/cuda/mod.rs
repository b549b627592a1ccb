//! The CUDA device: `device` runs the kernels of [`super::program::kernels`] (CUDA driver +
//! NVRTC with a disk cache), `emu` the same source compiled for the host; the programs
//! [`super::lower`] builds run through [`super::program::executor`].
//!
//! cudarc loads libcuda and libnvrtc when first used and *panics* when they are missing or
//! lack a symbol, so [`probe`] checks that the libraries load first and runs every driver call
//! behind `catch_unwind`: no CUDA is an answer (the probe says why), never a crash.

use std::sync::OnceLock;

use crate::config::{model_instance_group::Kind, ModelConfig};
use crate::error::{Error, ErrorKind, Result};
#[cfg(feature = "cuda")]
use crate::execution::program::device::{Device, DeviceError, Sticky};

#[cfg(feature = "cuda")]
pub(crate) mod device;
#[cfg(feature = "cuda")]
pub(crate) mod emu;

/// Whether the kernel emulator ([`crate::RepositoryBuilder::cuda_emulator`]) can run here:
/// it compiles `kernels/*.cu` with the host C++ compiler (`$CXX` or `c++`, Linux: it uses
/// `ucontext`) on first use and caches the library. `Err` says why not.
pub fn emulator() -> std::result::Result<(), String> {
    #[cfg(feature = "cuda")]
    return emu::shared().map(|_| ());
    #[cfg(not(feature = "cuda"))]
    Err("modelyard was built without the `cuda` feature".into())
}

/// GPUs the instance groups may use: the emulator counts as one.
pub(crate) fn gpu_count(emulator: bool) -> usize {
    if emulator && cfg!(feature = "cuda") {
        return 1;
    }
    probe().map(|i| i.devices.len()).unwrap_or(0)
}

/// The device a model's first `KIND_GPU` group runs on, or `None` for a CPU model.
#[cfg(feature = "cuda")]
pub(crate) fn device_for(
    config: &ModelConfig,
    emulator: bool,
) -> Result<Option<&'static dyn Device>> {
    let Some(g) = config
        .instance_group
        .iter()
        .find(|g| g.kind == Kind::Gpu as i32)
    else {
        return Ok(None);
    };
    let m = &config.name;
    let fail = |e: String| {
        Error::new(
            ErrorKind::Unavailable,
            format!(
                "model '{m}' instance group '{}' could not use the GPU: {e}",
                g.name
            ),
        )
    };
    if emulator {
        return emu::shared()
            .map(|d| Some(d as &'static dyn Device))
            .map_err(fail);
    }
    let ordinal = g.gpus.first().copied().unwrap_or(0).max(0) as usize;
    cuda_device(ordinal).map(Some).map_err(fail)
}

/// Device `ordinal`, opened once per process (kernels compiled or read from the cache).
#[cfg(feature = "cuda")]
fn cuda_device(ordinal: usize) -> std::result::Result<&'static dyn Device, String> {
    use std::collections::HashMap;
    type Opened = std::result::Result<&'static Sticky<device::CudaDevice>, String>;
    static DEVICES: OnceLock<parking_lot::Mutex<HashMap<usize, Opened>>> = OnceLock::new();
    probe().map_err(str::to_string)?;
    let mut devices = DEVICES.get_or_init(Default::default).lock();
    let entry = devices.entry(ordinal).or_insert_with(|| {
        std::panic::catch_unwind(|| device::CudaDevice::open(ordinal))
            .unwrap_or_else(|_| {
                Err(DeviceError::Internal(
                    "the CUDA libraries panicked while opening the device".into(),
                ))
            })
            // A kernel fault kills the context for good: the first one marks the device lost.
            .map(|d| &*Box::leak(Box::new(Sticky::new(d))))
            .map_err(|e| e.to_string())
    });
    entry.clone().map(|d| d as &'static dyn Device)
}

/// One CUDA device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuDevice {
    /// Device ordinal.
    pub ordinal: usize,
    /// Device name as the driver reports it.
    pub name: String,
}

/// What the probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuInfo {
    /// Driver API version (e.g. 13000 for CUDA 13.0).
    pub driver_version: i32,
    /// The devices.
    pub devices: Vec<GpuDevice>,
}

/// The machine's CUDA devices, or why there are none usable (no driver, no NVRTC, a driver
/// older than CUDA 13, no device). Probed once per process; never panics.
pub fn probe() -> Result<&'static GpuInfo, &'static str> {
    static PROBE: OnceLock<Result<GpuInfo, String>> = OnceLock::new();
    PROBE
        .get_or_init(|| {
            std::panic::catch_unwind(probe_now)
                .unwrap_or_else(|_| Err("the CUDA libraries panicked while probing".into()))
        })
        .as_ref()
        .map_err(String::as_str)
}

#[cfg(feature = "cuda")]
fn probe_now() -> Result<GpuInfo, String> {
    use cudarc::driver::{result, sys};
    // SAFETY: only tries to open the shared libraries by name.
    if !unsafe { sys::is_culib_present() } {
        return Err("libcuda could not be loaded (no NVIDIA driver)".into());
    }
    // cudarc opens `libcuda.so` before `libcuda.so.1`: a toolkit's `stubs/` folder on the
    // library path wins over the driver, and every call then answers STUB_LIBRARY.
    let stub = || {
        format!(
            "libcuda resolved to the CUDA toolkit's stub library{}, not the driver's \
             libcuda.so.1: take the toolkit's stubs/ folder off LD_LIBRARY_PATH",
            device::loaded_library("libcuda")
                .map(|p| format!(" ({p})"))
                .unwrap_or_default()
        )
    };
    let mut version = 0;
    // SAFETY: the library is loaded; the symbol exists in every driver version.
    let status = unsafe { sys::cuDriverGetVersion(&mut version) };
    if status == sys::CUresult::CUDA_ERROR_STUB_LIBRARY
        || device::loaded_library("libcuda").is_some_and(|p| p.contains("/stubs/"))
    {
        return Err(stub());
    }
    if status != sys::CUresult::CUDA_SUCCESS {
        return Err(format!("cuDriverGetVersion failed: {status:?}"));
    }
    if version < 13000 {
        return Err(format!(
            "the driver supports CUDA {}.{}, CUDA 13.0 or newer is needed",
            version / 1000,
            version % 1000 / 10
        ));
    }
    // SAFETY: only tries to open the shared library by name.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Err("libnvrtc (CUDA 13) could not be loaded".into());
    }
    device::cuda_impl::nvrtc_check()?;
    result::init().map_err(|e| {
        if e.0 == sys::CUresult::CUDA_ERROR_STUB_LIBRARY {
            stub()
        } else {
            format!("cuInit failed: {e}")
        }
    })?;
    let count = result::device::get_count().map_err(|e| format!("no device: {e}"))?;
    let devices = (0..count)
        .map(|i| {
            let name = result::device::get(i)
                .and_then(result::device::get_name)
                .unwrap_or_else(|e| format!("device {i} ({e})"));
            GpuDevice {
                ordinal: i as usize,
                name,
            }
        })
        .collect::<Vec<_>>();
    if devices.is_empty() {
        return Err("the driver reports no CUDA device".into());
    }
    Ok(GpuInfo {
        driver_version: version,
        devices,
    })
}

#[cfg(not(feature = "cuda"))]
fn probe_now() -> Result<GpuInfo, String> {
    Err("modelyard was built without the `cuda` feature".into())
}

/// The instance groups that ask for `KIND_GPU` without naming GPUs: without usable CUDA (and
/// no emulator), a clear error naming the model and group and why. A build without the `cuda`
/// feature keeps Triton's "server does not support GPUs", and a group that lists GPU ids gets
/// Triton's "invalid or unsupported gpu id", both from validation. `KIND_AUTO` was already
/// resolved.
pub(crate) fn check_instance_groups(config: &ModelConfig, emulator: bool) -> Result<()> {
    let Some(g) = config
        .instance_group
        .iter()
        .find(|g| g.kind == Kind::Gpu as i32)
    else {
        return Ok(());
    };
    if !g.gpus.is_empty() {
        return Ok(());
    }
    let (m, name) = (&config.name, &g.name);
    match probe() {
        Err(_) if !cfg!(feature = "cuda") || emulator => Ok(()),
        Err(reason) => Err(Error::new(
            ErrorKind::Unavailable,
            format!("model '{m}' instance group '{name}' requests KIND_GPU but no CUDA driver was found ({reason})"),
        )),
        Ok(_) => Ok(()),
    }
}

#[cfg(all(test, feature = "cuda"))]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use std::path::{Path, PathBuf};
    use std::process::Command;

    /// The probe's answer in a child process whose library path is only `dir`.
    fn probe_in_child(dir: &Path) -> String {
        let out = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "execution::cuda::tests::probe_child"])
            .args(["--include-ignored", "--nocapture", "--test-threads=1"])
            .env("LD_LIBRARY_PATH", dir)
            .env("MODELYARD_PROBE_CHILD", "1")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let at = text.find("PROBE: ");
        let at = at.unwrap_or_else(|| panic!("no answer from the child: {text}"));
        text[at..].lines().next().unwrap_or_default().to_string()
    }

    #[test]
    #[ignore = "the probe in a fresh process, run by the tests below"]
    fn probe_child() {
        if std::env::var_os("MODELYARD_PROBE_CHILD").is_some() {
            println!("PROBE: {:?}", super::probe());
        }
    }

    /// A `libcuda.so` built here from C: its two calls answer `status`.
    fn fake_libcuda(dir: &Path, status: i32) {
        std::fs::create_dir_all(dir).unwrap();
        let c = dir.join("fake.c");
        std::fs::write(
            &c,
            format!(
                "int cuDriverGetVersion(int *v) {{ *v = 13000; return {}; }}\n\
                 int cuInit(unsigned f) {{ return {status}; }}\n\
                 int cuGetErrorString(int e, const char **s) {{ *s = \"fake\"; return 0; }}\n\
                 int cuGetErrorName(int e, const char **s) {{ *s = \"FAKE\"; return 0; }}\n",
                if status == 34 { 34 } else { 0 }
            ),
        )
        .unwrap();
        let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
        let ok = Command::new(cc)
            .args(["-shared", "-fPIC", "-o"])
            .arg(dir.join("libcuda.so"))
            .arg(&c)
            .status()
            .unwrap();
        assert!(ok.success(), "building the fake libcuda");
    }

    /// The folder of the NVRTC 13 this process could load (the wheel CI installs).
    fn nvrtc_dir() -> Option<PathBuf> {
        let path = std::env::var_os("LD_LIBRARY_PATH")?;
        let found = std::env::split_paths(&path).find(|d| d.join("libnvrtc.so.13").exists());
        if found.is_none() {
            assert!(
                !crate::util::nvrtc_required(),
                "MODELYARD_REQUIRE_NVRTC or MODELYARD_REQUIRE_GPU is set but no libnvrtc.so.13 is on LD_LIBRARY_PATH"
            );
            crate::util::skip("no libnvrtc.so.13 on LD_LIBRARY_PATH: NVRTC probe checks skipped");
        }
        found
    }

    /// A toolkit's stub libcuda found first is named as such, with its path and the fix.
    #[test]
    fn probe_names_a_stub_libcuda_and_the_fix() {
        let tmp = tempfile::tempdir().unwrap();
        let stubs = tmp.path().join("stubs");
        fake_libcuda(&stubs, 34);
        let answer = probe_in_child(&stubs);
        assert!(
            answer.contains("stub library")
                && answer.contains("stubs/libcuda.so")
                && answer.contains("off LD_LIBRARY_PATH"),
            "{answer}"
        );
    }

    /// NVRTC without its builtins library loads but cannot compile: the probe says so, and
    /// with the builtins beside it the probe goes on to the driver (here a fake without a
    /// device).
    #[test]
    fn probe_compiles_an_empty_program_so_missing_nvrtc_builtins_are_caught() {
        let Some(nvrtc) = nvrtc_dir() else { return };
        let tmp = tempfile::tempdir().unwrap();
        let alone = tmp.path().join("alone");
        fake_libcuda(&alone, 100);
        std::fs::copy(nvrtc.join("libnvrtc.so.13"), alone.join("libnvrtc.so.13")).unwrap();
        let answer = probe_in_child(&alone);
        assert!(answer.contains("libnvrtc-builtins"), "{answer}");

        let both = tmp.path().join("both");
        fake_libcuda(&both, 100);
        for f in std::fs::read_dir(&nvrtc).unwrap() {
            let f = f.unwrap().path();
            let name = f.file_name().unwrap().to_string_lossy().to_string();
            if name.starts_with("libnvrtc") {
                std::fs::copy(&f, both.join(&name)).unwrap();
            }
        }
        let answer = probe_in_child(&both);
        assert!(answer.contains("cuInit failed"), "{answer}");
    }
}
