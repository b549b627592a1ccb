//! `model_warmup`: sample requests run at load, before the model is READY. Besides catching a
//! model that cannot run, this builds the plans for the shapes the samples use, so the first
//! real request of that shape does not pay for compilation. The samples' requests are not
//! counted in the model's statistics (Triton reports inference statistics of real requests
//! only): the version's counters start at zero when it becomes READY.

use std::path::Path;

use super::Model;
use crate::config::{model_warmup::input::InputDataType, DataType};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Runs every warmup sample of `model`; data files are read from `<model_dir>/warmup/`.
pub(crate) fn run(model: &Model, model_dir: &Path) -> Result<()> {
    let config = model.config();
    for sample in &config.model_warmup {
        let fail = |e: Error| e.context(format!("failed to run warmup sample '{}': ", sample.name));
        if sample.batch_size == 0 {
            continue;
        }
        let mut inputs = Vec::with_capacity(sample.inputs.len());
        for (name, input) in &sample.inputs {
            if input.dims.iter().any(|&d| d < 0) {
                return Err(fail(Error::invalid_config(format!(
                    "warmup setting expects all variable-size dimensions are specified for input '{name}'"
                ))));
            }
            let mut shape: Vec<usize> = Vec::with_capacity(input.dims.len() + 1);
            if config.max_batch_size > 0 {
                shape.push(sample.batch_size as usize);
            }
            shape.extend(input.dims.iter().map(|&d| d as usize));
            let dt = DataType::try_from(input.data_type).unwrap_or(DataType::TypeInvalid);
            let tensor = match &input.input_data_type {
                Some(InputDataType::RandomData(true)) => Tensor::random(dt, &shape),
                Some(InputDataType::InputDataFile(file)) => {
                    let path = crate::util::paths::confined(&model_dir.join("warmup"), file).map_err(|_| {
                        fail(Error::invalid_config(format!(
                            "warmup data file '{file}' for input '{name}' is outside the model's warmup directory"
                        )))
                    })?;
                    let bytes = std::fs::read(&path).map_err(|e| fail(Error::io(&path, "failed to read warmup data file", e)))?;
                    Tensor::from_le_bytes(dt, &shape, &bytes)
                }
                _ => Tensor::zeros(dt, &shape),
            }
            .map_err(|e| fail(e.with_tensor(name.clone())))?;
            inputs.push((name.clone(), tensor));
        }
        for _ in 0..sample.count.max(1) {
            model.infer(inputs.clone()).map_err(fail)?;
        }
    }
    model.inner.stats.reset();
    Ok(())
}
