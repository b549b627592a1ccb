//! Native models: a model written in Rust by the application, registered by name on the
//! repository builder and selected by a `config.pbtxt` with `backend: "<name>"`. The config
//! declares its inputs and outputs as for any model; requests are checked against it before
//! the model runs, and its answers are checked after (every requested output, with the
//! declared data type and dims). A panic inside a native model is an error for that request.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::Arc;

use super::{Backend, LoadOptions};
use crate::config::{dims_to_string, ModelConfig};
use crate::error::{Error, ErrorKind, Result};
use crate::execution::{Executable, Named};
use crate::tensor::Tensor;

/// A model implemented in Rust.
pub trait NativeModel: Send + Sync {
    /// Computes `outputs` (names from the config) from `inputs` (checked against the config,
    /// batch dim first when `max_batch_size > 0`).
    fn execute(
        &self,
        inputs: &[(String, Tensor)],
        outputs: &[String],
    ) -> Result<Vec<(String, Tensor)>>;
}

/// Builds a native model for one loaded version from its completed config and its version
/// folder (where the model may keep data files of its own).
pub type NativeFactory = dyn Fn(&ModelConfig, &Path) -> Result<Box<dyn NativeModel>> + Send + Sync;

pub(crate) struct NativeBackend {
    pub factory: Arc<NativeFactory>,
}

struct Native {
    config: ModelConfig,
    model: Box<dyn NativeModel>,
}

impl Backend for NativeBackend {
    fn auto_complete(&self, _: &mut ModelConfig, _: &Path, _: &LoadOptions) -> Result<()> {
        Ok(())
    }

    fn load(
        &self,
        config: &ModelConfig,
        version_dir: &Path,
        _: &LoadOptions,
    ) -> Result<Arc<dyn Executable>> {
        let model = match catch_unwind(AssertUnwindSafe(|| (self.factory)(config, version_dir))) {
            Ok(r) => r?,
            Err(_) => {
                return Err(Error::new(
                    ErrorKind::Execution,
                    format!("native model '{}' panicked while loading", config.name),
                ))
            }
        };
        Ok(Arc::new(Native {
            config: config.clone(),
            model,
        }))
    }
}

impl Executable for Native {
    fn execute(&self, inputs: Named, outputs: &[String]) -> Result<Named> {
        let m = &self.config.name;
        let produced = match catch_unwind(AssertUnwindSafe(|| self.model.execute(&inputs, outputs)))
        {
            Ok(r) => r?,
            Err(_) => {
                return Err(Error::new(
                    ErrorKind::Execution,
                    format!("native model '{m}' panicked"),
                ))
            }
        };
        let batching = self.config.max_batch_size > 0;
        for name in outputs {
            let Some((_, t)) = produced.iter().find(|(n, _)| n == name) else {
                return Err(Error::new(
                    ErrorKind::Execution,
                    format!("native model '{m}' did not return output '{name}'"),
                )
                .with_tensor(name.clone()));
            };
            let Some(cfg) = self.config.output.iter().find(|o| &o.name == name) else {
                continue;
            };
            let shape: Vec<i64> = t.shape().iter().map(|&d| d as i64).collect();
            let body = if batching {
                shape.get(1..).unwrap_or(&[])
            } else {
                &shape[..]
            };
            let dims = cfg
                .reshape
                .as_ref()
                .map(|r| r.shape.as_slice())
                .unwrap_or(&cfg.dims);
            let fits = crate::util::dims::fits(dims, body);
            if t.data_type() as i32 != cfg.data_type || !fits {
                return Err(Error::new(
                    ErrorKind::Execution,
                    format!(
                        "native model '{m}' returned output '{name}' as {} {}, but its config declares {} {}",
                        t.data_type().as_str_name(),
                        dims_to_string(&shape),
                        cfg.data_type().as_str_name(),
                        dims_to_string(dims)
                    ),
                )
                .with_tensor(name.clone()));
            }
        }
        Ok(crate::util::wanted(produced, outputs))
    }
}
