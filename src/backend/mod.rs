//! `backend/`: what turns a completed config and a version folder into something that runs.
//! As in Triton, a backend owns auto-complete (it is the one that reads the model file) and the
//! load-time checks of the config against the model. `onnx` runs ONNX graphs on tract;
//! `identity` is Triton's test backend (OUTPUTi = INPUTi), used by the QA cases.

pub mod cuda;
pub(crate) mod ensemble;
mod identity;
pub(crate) mod native;
pub(crate) mod onnx;

use std::path::Path;
use std::sync::Arc;

use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

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

/// One loaded model version, ready to execute.
pub(crate) trait Executable: Send + Sync {
    /// Key/value metadata stored in the model file (ONNX `metadata_props`).
    fn metadata(&self) -> Option<&std::collections::BTreeMap<String, String>> {
        None
    }

    /// Where the nodes ran and the host-device copies, for a model on a GPU.
    fn execution_report(&self) -> Option<cuda::ExecutionReport> {
        None
    }

    /// For a model on a GPU: the time of `iters` rounds of its kernels at these input shapes,
    /// without host copies (benchmarks).
    fn time_kernels(
        &self,
        _shapes: &[Vec<usize>],
        _iters: u32,
    ) -> Option<Result<std::time::Duration>> {
        None
    }

    /// For an ensemble: the composing model versions of its steps, in step order.
    fn steps(&self) -> Vec<crate::model::Model> {
        Vec::new()
    }

    /// Runs the model. `inputs` are checked and shaped as the backend expects (reshape
    /// applied); `outputs` names the outputs wanted (non-empty).
    fn execute(
        &self,
        inputs: Vec<(String, Tensor)>,
        outputs: &[String],
    ) -> Result<Vec<(String, Tensor)>>;
}

/// A backend: auto-complete plus load.
pub(crate) trait Backend: Send + Sync {
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
    if !config.runtime.is_empty() && config.runtime != format!("libtriton_{name}.so") {
        return Err(Error::invalid_config(format!(
            "unable to find backend library '{}' for model '{}'",
            config.runtime, config.name
        )));
    }
    Ok(backend)
}
