//! `backend/`: what turns a completed config and a version folder into something that runs.
//! As in Triton, a backend owns auto-complete (it is the one that reads the model file) and the
//! load-time checks of the config against the model. `onnx` reads ONNX graphs with tract and
//! hands them to [`crate::execution`]; `identity` is Triton's test backend (OUTPUTi =
//! INPUTi), used by the QA cases; `native` runs Rust code registered on the repository builder.
//! A backend never names a model or the repository.

mod identity;
pub(crate) mod native;
pub(crate) mod onnx;

use std::path::Path;
use std::sync::Arc;

use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::execution::Executable;

/// Settings a backend needs at load.
#[derive(Clone)]
pub(crate) struct LoadOptions {
    /// Plans kept per model version (one per distinct set of input shapes).
    pub plan_cache_capacity: usize,
    /// `default-max-batch-size` of the ONNX auto-complete (Triton's default: 4).
    pub default_max_batch_size: i32,
    /// Largest total input size of one request, in bytes.
    pub max_request_bytes: usize,
    /// Largest model file, and largest total of the weights it declares, in bytes.
    pub max_model_bytes: usize,
    /// Run `KIND_GPU` groups on the kernel emulator instead of CUDA (testing without a GPU).
    pub cuda_emulator: bool,
    /// Native backends registered on the repository builder, by name.
    pub natives: std::collections::BTreeMap<String, Arc<native::NativeFactory>>,
}

impl std::fmt::Debug for LoadOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadOptions")
            .field("plan_cache_capacity", &self.plan_cache_capacity)
            .field("default_max_batch_size", &self.default_max_batch_size)
            .field("max_request_bytes", &self.max_request_bytes)
            .field("max_model_bytes", &self.max_model_bytes)
            .field("cuda_emulator", &self.cuda_emulator)
            .field("natives", &self.natives.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// A backend: the devices it can use, auto-complete, and load.
pub(crate) trait Backend: Send + Sync {
    /// GPUs this backend's instance groups may use (`KIND_AUTO` takes them when there are);
    /// the emulator counts as one.
    fn gpu_count(&self, opts: &LoadOptions) -> usize {
        crate::execution::cuda::gpu_count(opts.cuda_emulator)
    }

    /// Whether the `KIND_GPU` groups of `config` can run here (after `KIND_AUTO` resolved): a
    /// clear error naming the model and group when CUDA is missing.
    fn check_instance_groups(&self, config: &ModelConfig, opts: &LoadOptions) -> Result<()> {
        crate::execution::cuda::check_instance_groups(config, opts.cuda_emulator)
    }

    /// Completes `config` from the model file in `version_dir` (only called when auto-complete
    /// is enabled).
    fn auto_complete(
        &self,
        config: &mut ModelConfig,
        version_dir: &Path,
        opts: &LoadOptions,
    ) -> Result<()>;

    /// Loads one version; checks the completed config against the model file.
    fn load(
        &self,
        config: &ModelConfig,
        version_dir: &Path,
        opts: &LoadOptions,
    ) -> Result<Arc<dyn Executable>>;
}

/// The backend a config asks for (a registered native backend first), or Triton's "unable to
/// find backend library" errors. A `runtime` must name the backend's own library
/// (`libtriton_<backend>.so`).
pub(crate) fn find(config: &ModelConfig, opts: &LoadOptions) -> Result<Box<dyn Backend>> {
    let name = config.backend.as_str();
    let backend: Box<dyn Backend> = match (opts.natives.get(name), name) {
        (Some(factory), _) => Box::new(native::NativeBackend { factory: factory.clone() }),
        (None, "onnxruntime") => Box::new(onnx::OnnxBackend),
        (None, "identity") => Box::new(identity::IdentityBackend),
        _ => {
            return Err(Error::invalid_config(format!(
                "unable to find backend library for backend '{name}', try specifying runtime on the model configuration."
            )))
        }
    };
    // Triton resolves `runtime` inside the backend's directory and refuses a name that climbs
    // out of it; the in-process backend's directory is `backends/<name>`.
    if !config.runtime.is_empty() && crate::util::paths::check_relative(&config.runtime).is_err() {
        return Err(Error::invalid_config(format!(
            "backend library name '{}' escapes backend directory 'backends/{name}', for model '{}', check model config runtime field",
            config.runtime, config.name
        )));
    }
    if !config.runtime.is_empty() && config.runtime != format!("libtriton_{name}.so") {
        return Err(Error::invalid_config(format!(
            "unable to find backend library '{}' for model '{}'",
            config.runtime, config.name
        )));
    }
    Ok(backend)
}
