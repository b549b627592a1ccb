//! The CUDA side: what the machine has. cudarc loads libcuda and libnvrtc when first used and
//! *panics* when they are missing or lack a symbol, so everything here checks that the
//! libraries load first and runs every driver call behind `catch_unwind`: no CUDA is an
//! answer ([`probe`] returns why), never a crash.
//!
//! Status: the probe, the instance-group rules that depend on it and the errors are in; the
//! GPU executor and the kernels (`kernels/*.cu`) are not written yet, so a model that asks for
//! `KIND_GPU` is refused with a clear error and `KIND_AUTO` runs on the CPU.

use std::sync::OnceLock;

use crate::config::{model_instance_group::Kind, ModelConfig};
use crate::error::{Error, ErrorKind, Result};

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

/// The instance groups that ask for `KIND_GPU`: without usable CUDA, the clear error
/// (a build without the `cuda` feature keeps Triton's "server does not support GPUs", from
/// validation); with CUDA, an error saying the executor is not there yet. `KIND_AUTO` was
/// already normalised to `KIND_CPU`.
pub(crate) fn check_instance_groups(config: &ModelConfig) -> Result<()> {
    let Some(g) = config
        .instance_group
        .iter()
        .find(|g| g.kind == Kind::Gpu as i32)
    else {
        return Ok(());
    };
    let (m, name) = (&config.name, &g.name);
    match probe() {
        Err(_) if !cfg!(feature = "cuda") => Ok(()),
        Err(reason) => Err(Error::new(
            ErrorKind::Unavailable,
            format!("model '{m}' instance group '{name}' requests KIND_GPU but no CUDA driver was found ({reason})"),
        )),
        Ok(info) => {
            let names: Vec<&str> = info.devices.iter().map(|d| d.name.as_str()).collect();
            Err(Error::new(
                ErrorKind::Unsupported,
                format!(
                    "model '{m}' instance group '{name}' requests KIND_GPU: CUDA {}.{} with {} found, but modelyard's CUDA executor is not implemented yet; use KIND_CPU or KIND_AUTO",
                    info.driver_version / 1000,
                    info.driver_version % 1000 / 10,
                    names.join(", ")
                ),
            ))
        }
    }
}
