//! Triton's `identity` test backend: output i is input i, unchanged (no copy).

use std::path::Path;
use std::sync::Arc;

use super::{Backend, LoadOptions};
use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::execution::{Executable, Named};

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
    fn execute(&self, inputs: Named, outputs: &[String]) -> Result<Named> {
        let produced = self.pairs.iter().filter_map(|(input, output)| {
            let (_, t) = inputs.iter().find(|(n, _)| n == input)?;
            Some((output.clone(), t.clone()))
        });
        Ok(crate::util::wanted(produced, outputs))
    }
}
