//! ONNX Runtime backend auto-complete (spec section (d)): max_batch_size, dynamic batching and
//! the inputs/outputs, from the graph.

use super::io::{OnnxIo, OnnxTensor};
use crate::config::{
    model_config::SchedulingChoice, ModelConfig, ModelDynamicBatching, ModelInput, ModelOutput,
    ModelTensorReshape,
};
use crate::error::{Error, Result};

fn batchable(t: &OnnxTensor) -> bool {
    t.dims
        .as_ref()
        .is_some_and(|d| d.first().is_some_and(|&d0| d0 == -1))
}

/// Completes `config` from the graph I/O; a config that lists both inputs and outputs is left
/// unchanged, as in Triton.
pub(crate) fn auto_complete(
    config: &mut ModelConfig,
    io: &OnnxIo,
    default_max_batch_size: i32,
) -> Result<()> {
    let m = config.name.clone();
    let has_inputs = !config.input.is_empty() || !config.batch_input.is_empty();
    if has_inputs && !config.output.is_empty() {
        tracing::info!("skipping model configuration auto-complete for '{m}': inputs and outputs already specified");
        return Ok(());
    }
    let can_batch = io.inputs.iter().chain(&io.outputs).all(batchable);
    if can_batch {
        if config.max_batch_size == 0 {
            let n = default_max_batch_size.max(0);
            config.max_batch_size = n;
            tracing::warn!("autofilled max_batch_size to {n} for model '{m}' since batching is supporrted but no max_batch_size is specified in model configuration. Must specify max_batch_size to utilize autofill with a larger max batch size");
        }
        if config.max_batch_size > 1 && config.scheduling_choice.is_none() {
            config.scheduling_choice = Some(SchedulingChoice::DynamicBatching(
                ModelDynamicBatching::default(),
            ));
        }
    } else if config.max_batch_size != 0 {
        return Err(Error::invalid_config(format!(
            "autofill failed for model '{m}': model does not support batching while non-zero max_batch_size is specified"
        )));
    }
    let batching = config.max_batch_size > 0;
    let shape = |t: &OnnxTensor| -> (Vec<i64>, Option<ModelTensorReshape>) {
        let mut dims = t.dims.clone().unwrap_or_default();
        if batching && !dims.is_empty() {
            dims.remove(0);
        }
        if dims.is_empty() {
            (vec![1], batching.then(ModelTensorReshape::default))
        } else {
            (dims, None)
        }
    };
    if !has_inputs {
        config.input = io
            .inputs
            .iter()
            .map(|t| {
                let (dims, reshape) = shape(t);
                ModelInput {
                    name: t.name.clone(),
                    data_type: t.data_type as i32,
                    dims,
                    reshape,
                    ..Default::default()
                }
            })
            .collect();
    }
    if config.output.is_empty() {
        config.output = io
            .outputs
            .iter()
            .map(|t| {
                let (dims, reshape) = shape(t);
                ModelOutput {
                    name: t.name.clone(),
                    data_type: t.data_type as i32,
                    dims,
                    reshape,
                    ..Default::default()
                }
            })
            .collect();
    }
    Ok(())
}
