//! Triton's `identity` test backend: output i is input i, unchanged (no copy).

use std::path::Path;
use std::sync::Arc;

use super::{Backend, Executable, LoadOptions};
use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

pub(crate) struct IdentityBackend;

struct Identity {
    /// (input name, output name) in config order.
    pairs: Vec<(String, String)>,
}

impl Backend for IdentityBackend {
    fn auto_complete(&self, _: &mut ModelConfig, _: &Path, _: &LoadOptions) -> Result<()> {
        Ok(())
    }

    fn load(&self, config: &ModelConfig, _: &Path, _: &LoadOptions) -> Result<Arc<dyn Executable>> {
        if config.input.len() != config.output.len() {
            return Err(Error::invalid_config(format!(
                "identity model '{}' must have as many outputs as inputs, got {} inputs and {} outputs",
                config.name,
                config.input.len(),
                config.output.len()
            )));
        }
        let pairs = config
            .input
            .iter()
            .zip(&config.output)
            .map(|(i, o)| (i.name.clone(), o.name.clone()))
            .collect();
        Ok(Arc::new(Identity { pairs }))
    }
}

impl Executable for Identity {
    fn execute(
        &self,
        inputs: Vec<(String, Tensor)>,
        outputs: &[String],
    ) -> Result<Vec<(String, Tensor)>> {
        let mut out = Vec::with_capacity(outputs.len());
        for (input, output) in &self.pairs {
            if !outputs.contains(output) {
                continue;
            }
            if let Some((_, t)) = inputs.iter().find(|(n, _)| n == input) {
                out.push((output.clone(), t.clone()));
            }
        }
        Ok(out)
    }
}
