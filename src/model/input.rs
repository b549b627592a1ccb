//! Request checks before anything runs (Triton's `InferenceRequest::Normalize`, spec section
//! (h)): names, count, data types, batch size, shapes; then `reshape` is applied.

use crate::config::{dims_to_string, ModelConfig, ModelInput};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

fn quoted_list<'a>(names: impl IntoIterator<Item = &'a str>) -> String {
    let v: Vec<String> = names.into_iter().map(|n| format!("'{n}'")).collect();
    format!("[{}]", v.join(","))
}

fn shape_i64(shape: &[usize]) -> Vec<i64> {
    shape
        .iter()
        .map(|&d| i64::try_from(d).unwrap_or(i64::MAX))
        .collect()
}

/// Checks `inputs` against `config` and returns them in the shapes the backend expects.
pub(crate) fn prepare(
    config: &ModelConfig,
    inputs: Vec<(String, Tensor)>,
) -> Result<Vec<(String, Tensor)>> {
    check_names(config, &inputs)?;
    let mut batch: Option<usize> = None;
    let mut out = Vec::with_capacity(inputs.len());
    for (name, tensor) in inputs {
        let Some(cfg) = config.input.iter().find(|c| c.name == name) else {
            continue;
        };
        let tensor = check_input(config, cfg, &name, tensor, &mut batch)
            .map_err(|e| e.with_tensor(name.clone()))?;
        out.push((name, tensor));
    }
    Ok(out)
}

/// No input twice, none the config does not declare, every required one there.
fn check_names(config: &ModelConfig, inputs: &[(String, Tensor)]) -> Result<()> {
    let m = config.name.as_str();
    for (i, (name, _)) in inputs.iter().enumerate() {
        if inputs[..i].iter().any(|(n, _)| n == name) {
            return Err(
                Error::invalid_input(format!("input '{name}' already exists in request"))
                    .with_tensor(name.clone()),
            );
        }
        if !config.input.iter().any(|c| &c.name == name) {
            return Err(Error::invalid_input(format!(
                "unexpected inference input '{name}' for model '{m}'"
            ))
            .with_tensor(name.clone()));
        }
    }
    let missing: Vec<&str> = config
        .input
        .iter()
        .filter(|c| !c.optional && !inputs.iter().any(|(n, _)| n == &c.name))
        .map(|c| c.name.as_str())
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let required = config.input.iter().filter(|c| !c.optional).count();
    let total = config.input.len();
    let got = quoted_list(inputs.iter().map(|(n, _)| n.as_str()));
    let head = if required == total {
        format!(
            "expected {total} inputs but got {} inputs for model '{m}'",
            inputs.len()
        )
    } else {
        format!("expected number of inputs between {required} and {total} but got {} inputs for model '{m}'", inputs.len())
    };
    Err(Error::invalid_input(format!(
        "{head}. Got input(s) {got}, but missing required input(s) {}. Please provide all required input(s).",
        quoted_list(missing)
    )))
}

/// One input: its data type, its batch size (the same as the inputs before it, in `batch`),
/// its shape against the config's dims; then `reshape` applied.
fn check_input(
    config: &ModelConfig,
    cfg: &ModelInput,
    name: &str,
    tensor: Tensor,
    batch: &mut Option<usize>,
) -> Result<Tensor> {
    let m = config.name.as_str();
    let batching = config.max_batch_size > 0;
    if tensor.data_type() as i32 != cfg.data_type {
        return Err(Error::invalid_input(format!(
            "inference input '{name}' data-type is '{}', but model '{m}' expects '{}'",
            tensor.data_type().protocol_name(),
            cfg.data_type().protocol_name()
        )));
    }
    let shape = shape_i64(tensor.shape());
    let body: &[i64] = if batching {
        let Some(&b) = shape.first() else {
            return Err(Error::invalid_input(format!(
                "input '{name}' has no shape but model requires batch dimension for '{m}'"
            )));
        };
        let b = usize::try_from(b).unwrap_or(usize::MAX);
        if batch.get_or_insert(b) != &b {
            return Err(Error::invalid_input(format!(
                "input '{name}' batch size does not match other inputs for '{m}'"
            )));
        }
        // Triton's rule: a batching model's request carries at least one row.
        if b == 0 {
            return Err(Error::invalid_input(format!(
                "inference request batch-size must be >= 1 for '{m}'"
            )));
        }
        if b > config.max_batch_size as usize {
            return Err(Error::invalid_input(format!(
                "inference request batch-size must be <= {} for '{m}'",
                config.max_batch_size
            )));
        }
        &shape[1..]
    } else {
        &shape
    };
    if !crate::util::dims::fits(&cfg.dims, body) {
        let expected: Vec<i64> = if batching {
            std::iter::once(-1)
                .chain(cfg.dims.iter().copied())
                .collect()
        } else {
            cfg.dims.clone()
        };
        let note = if batching {
            " NOTE: Setting a non-zero max_batch_size in the model config requires a batch dimension to be prepended to each input shape. If you want to specify the full shape including the batch dim in your input dims config, try setting max_batch_size to zero. See the model configuration docs for more info on max_batch_size."
        } else {
            ""
        };
        return Err(Error::invalid_input(format!(
            "unexpected shape for input '{name}' for model '{m}'. Expected {}, got {}.{note}",
            dims_to_string(&expected),
            dims_to_string(&shape)
        )));
    }
    let Some(r) = &cfg.reshape else {
        return Ok(tensor);
    };
    // The reshape's -1 dims take the request's sizes of the config's -1 dims, in order.
    let mut variable = body
        .iter()
        .zip(&cfg.dims)
        .filter(|(_, &d)| d == -1)
        .map(|(&s, _)| s);
    let mut new_shape: Vec<usize> = Vec::with_capacity(r.shape.len() + 1);
    if batching {
        new_shape.push(tensor.shape()[0]);
    }
    for &d in &r.shape {
        let v = if d == -1 {
            variable.next().unwrap_or(1)
        } else {
            d
        };
        new_shape.push(usize::try_from(v).unwrap_or(0));
    }
    tensor
        .reshaped(&new_shape)
        .map_err(|e| e.context(format!("input '{name}' for model '{m}': ")))
}

/// Checks requested output names.
pub(crate) fn check_outputs(config: &ModelConfig, outputs: &[String]) -> Result<()> {
    for name in outputs {
        if !config.output.iter().any(|o| &o.name == name) {
            return Err(Error::invalid_input(format!(
                "unexpected inference output '{name}' for model '{}'",
                config.name
            ))
            .with_tensor(name.clone()));
        }
    }
    Ok(())
}

/// Gives outputs with a `reshape` the shape of their config `dims` (plus the batch dim).
pub(crate) fn present_outputs(
    config: &ModelConfig,
    outputs: Vec<(String, Tensor)>,
) -> Result<Vec<(String, Tensor)>> {
    outputs
        .into_iter()
        .map(|(name, t)| {
            let Some(cfg) = config.output.iter().find(|o| o.name == name) else {
                return Ok((name, t));
            };
            if cfg.reshape.is_none() {
                return Ok((name, t));
            }
            let batching = config.max_batch_size > 0;
            let mut shape: Vec<usize> = Vec::new();
            let mut per_item = t.len();
            if batching {
                let b = t.shape().first().copied().unwrap_or(1);
                shape.push(b);
                per_item = per_item.checked_div(b).unwrap_or(0);
            }
            let fixed: usize = cfg
                .dims
                .iter()
                .filter(|&&d| d != -1)
                .map(|&d| d as usize)
                .product();
            let vars = cfg.dims.iter().filter(|&&d| d == -1).count();
            if vars > 1 {
                return Ok((name, t));
            }
            for &d in &cfg.dims {
                shape.push(if d == -1 {
                    per_item.checked_div(fixed).unwrap_or(0)
                } else {
                    d as usize
                });
            }
            let t = t.reshaped(&shape)?;
            Ok((name, t))
        })
        .collect()
}
