//! Ensemble resolution (`platform: "ensemble"`): the checks against the composing models that
//! Triton runs once they are loaded (spec section (c), "Ensemble dependency checks" and
//! `ValidateEnsembleConfig`). The config-only checks (steps, maps, cycles) are in
//! `config/validate.rs`; execution is `model/ensemble.rs`.

use std::collections::BTreeMap;

use crate::config::{dims_to_string, ModelConfig};
use crate::error::{Error, ErrorKind, Result};

/// Why a composing model cannot be used.
pub(crate) enum DepError {
    Missing,
    /// Its config failed validation.
    Invalid(String),
    /// No version loaded (with the load error, when there is one).
    NotLoaded(Option<String>),
    /// The version the step asks for is not loaded.
    VersionMissing(i64),
}

/// Each step's composing model must be valid, loaded, and have the version asked for.
pub(crate) fn check_dependencies(
    config: &ModelConfig,
    lookup: &dyn Fn(&str, i64) -> std::result::Result<ModelConfig, DepError>,
) -> Result<()> {
    let m = &config.name;
    let Some(e) = config.ensemble() else {
        return Ok(());
    };
    for step in &e.step {
        let dep = &step.model_name;
        match lookup(dep, step.model_version) {
            Ok(_) => {}
            Err(DepError::Missing) => {
                return Err(Error::invalid_config(format!(
                    "ensemble {m} contains models that are not available or ambiguous: {dep}"
                )))
            }
            Err(DepError::Invalid(msg)) => {
                return Err(Error::invalid_config(format!(
                    "ensemble '{m}' depends on '{dep}' which is not valid. Model '{dep}' failed with error: {msg}"
                )))
            }
            Err(DepError::NotLoaded(reason)) => {
                let mut msg = format!("ensemble '{m}' depends on '{dep}' which has no loaded version.");
                if let Some(r) = reason {
                    msg.push_str(&format!(" Model '{dep}' loading failed with error: {r}"));
                }
                return Err(Error::new(ErrorKind::Unavailable, msg));
            }
            Err(DepError::VersionMissing(v)) => {
                return Err(Error::new(
                    ErrorKind::Unavailable,
                    format!("ensemble '{m}' depends on '{dep}' whose required version {v} is not loaded."),
                ))
            }
        }
    }
    Ok(())
}

/// What an ensemble tensor is, as inferred from one model.
struct TensorNode {
    model: String,
    batching: bool,
    data_type: i32,
    dims: Vec<i64>,
}

impl TensorNode {
    fn full_dims(&self) -> Vec<i64> {
        if self.batching {
            std::iter::once(-1)
                .chain(self.dims.iter().copied())
                .collect()
        } else {
            self.dims.clone()
        }
    }
}

fn consistent(m: &str, name: &str, a: &TensorNode, b: &TensorNode) -> Result<()> {
    if a.data_type != b.data_type {
        return Err(Error::invalid_config(format!(
            "in ensemble {m}, ensemble tensor {name}: inconsistent data type: {} is inferred from model {} while {} is inferred from model {}",
            crate::config::data_type_name(a.data_type),
            a.model,
            crate::config::data_type_name(b.data_type),
            b.model
        )));
    }
    let ok = if a.batching == b.batching {
        crate::util::dims::compatible(&a.dims, &b.dims)
    } else {
        crate::util::dims::compatible(&a.full_dims(), &b.full_dims())
    };
    if !ok {
        return Err(Error::invalid_config(format!(
            "in ensemble {m}, ensemble tensor {name}: inconsistent shape: {} is inferred from model {} while {} is inferred from model {}",
            dims_to_string(&a.full_dims()),
            a.model,
            dims_to_string(&b.full_dims()),
            b.model
        )));
    }
    Ok(())
}

/// Records what `node` says of ensemble tensor `name`, or checks it against what is known.
fn merge(
    tensors: &mut BTreeMap<String, TensorNode>,
    m: &str,
    name: &str,
    node: TensorNode,
) -> Result<()> {
    match tensors.get(name) {
        Some(existing) => consistent(m, name, existing, &node),
        None => {
            tensors.insert(name.to_string(), node);
            Ok(())
        }
    }
}

/// `ValidateEnsembleConfig`: batch sizes, input/output maps and tensor consistency, with the
/// completed configs of the step models (`steps[i]` is the config of step i).
// Long on purpose: Triton's `ValidateEnsembleConfig` step by step, in its order (the
// first failing check decides the message).
pub(crate) fn validate_tensors(config: &ModelConfig, steps: &[ModelConfig]) -> Result<()> {
    let m = &config.name;
    let batching = config.max_batch_size > 0;
    let mut tensors: BTreeMap<String, TensorNode> = BTreeMap::new();
    let own = |data_type: i32, dims: &[i64], reshape: Option<&[i64]>| TensorNode {
        model: m.clone(),
        batching,
        data_type,
        dims: reshape.unwrap_or(dims).to_vec(),
    };
    for i in &config.input {
        let reshape = i.reshape.as_ref().map(|r| r.shape.as_slice());
        tensors.insert(i.name.clone(), own(i.data_type, &i.dims, reshape));
    }
    for o in &config.output {
        let reshape = o.reshape.as_ref().map(|r| r.shape.as_slice());
        tensors.insert(o.name.clone(), own(o.data_type, &o.dims, reshape));
    }
    let Some(e) = config.ensemble() else {
        return Ok(());
    };
    for (step, sc) in e.step.iter().zip(steps) {
        let s = &sc.name;
        if sc.max_batch_size != 0 && config.max_batch_size > sc.max_batch_size {
            return Err(Error::invalid_config(format!(
                "ensemble {m} allows maximum batch size {}, but it contains model {s} which only allows maximum batch size to be {}",
                config.max_batch_size, sc.max_batch_size
            )));
        }
        let step_batching = sc.max_batch_size > 0;
        let node = |data_type: i32, dims: &[i64]| TensorNode {
            model: s.clone(),
            batching: step_batching,
            data_type,
            dims: dims.to_vec(),
        };
        for (input, tensor) in &step.input_map {
            let Some(mi) = sc.input.iter().find(|x| &x.name == input) else {
                return Err(Error::invalid_config(format!(
                    "in ensemble {m}, ensemble tensor {tensor} is mapping to non-existing input {input} in model {s}"
                )));
            };
            merge(&mut tensors, m, tensor, node(mi.data_type, &mi.dims))?;
        }
        for mi in &sc.input {
            if !mi.optional && !step.input_map.contains_key(&mi.name) {
                return Err(Error::invalid_config(format!(
                    "in ensemble {m}, input {} in model {s} is not mapped to any ensemble tensors",
                    mi.name
                )));
            }
        }
        for (output, tensor) in &step.output_map {
            let Some(mo) = sc.output.iter().find(|x| &x.name == output) else {
                return Err(Error::invalid_config(format!(
                    "in ensemble {m}, ensemble tensor {tensor} is mapped from non-existing output {output} in model {s}"
                )));
            };
            merge(&mut tensors, m, tensor, node(mo.data_type, &mo.dims))?;
        }
    }
    Ok(())
}
