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
use crate::execution::program::device::{Device, DeviceError};

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
    static DEVICES: OnceLock<
        parking_lot::Mutex<
            HashMap<usize, std::result::Result<&'static device::CudaDevice, String>>,
        >,
    > = OnceLock::new();
    probe().map_err(str::to_string)?;
    let mut devices = DEVICES.get_or_init(Default::default).lock();
    let entry = devices.entry(ordinal).or_insert_with(|| {
        std::panic::catch_unwind(|| device::CudaDevice::open(ordinal))
            .unwrap_or_else(|_| {
                Err(DeviceError::Internal(
                    "the CUDA libraries panicked while opening the device".into(),
                ))
            })
            .map(|d| &*Box::leak(Box::new(d)))
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
    // SAFETY: as above.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Err("libnvrtc (CUDA 13) could not be loaded".into());
    }
    let mut version = 0;
    // SAFETY: the library is loaded; the symbol exists in every driver version.
    let status = unsafe { sys::cuDriverGetVersion(&mut version) };
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
    result::init().map_err(|e| format!("cuInit failed: {e}"))?;
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
