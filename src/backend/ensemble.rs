//! Ensembles (`platform: "ensemble"`): the checks against the composing models that Triton
//! runs once they are loaded (spec section (c), "Ensemble dependency checks" and
//! `ValidateEnsembleConfig`), and execution: the steps needed for the requested outputs run
//! as soon as their inputs are ready, independent ones in parallel, tensors shared between
//! steps without copies.

use std::collections::{BTreeMap, BTreeSet};

use super::Executable;
use crate::config::{dims_to_string, ModelConfig};
use crate::error::{Error, ErrorKind, Result};
use crate::model::Model;
use crate::tensor::Tensor;

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

fn dims_compatible(a: &[i64], b: &[i64]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(&x, &y)| x == y || x == -1 || y == -1)
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
        dims_compatible(&a.dims, &b.dims)
    } else {
        dims_compatible(&a.full_dims(), &b.full_dims())
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
pub(crate) fn validate_tensors(config: &ModelConfig, steps: &[ModelConfig]) -> Result<()> {
    let m = &config.name;
    let batching = config.max_batch_size > 0;
    let mut tensors: BTreeMap<String, TensorNode> = BTreeMap::new();
    for i in &config.input {
        let dims = i
            .reshape
            .as_ref()
            .map(|r| r.shape.clone())
            .unwrap_or_else(|| i.dims.clone());
        tensors.insert(
            i.name.clone(),
            TensorNode {
                model: m.clone(),
                batching,
                data_type: i.data_type,
                dims,
            },
        );
    }
    for o in &config.output {
        let dims = o
            .reshape
            .as_ref()
            .map(|r| r.shape.clone())
            .unwrap_or_else(|| o.dims.clone());
        tensors.insert(
            o.name.clone(),
            TensorNode {
                model: m.clone(),
                batching,
                data_type: o.data_type,
                dims,
            },
        );
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
        for (input, tensor) in &step.input_map {
            let Some(mi) = sc.input.iter().find(|x| &x.name == input) else {
                return Err(Error::invalid_config(format!(
                    "in ensemble {m}, ensemble tensor {tensor} is mapping to non-existing input {input} in model {s}"
                )));
            };
            let node = TensorNode {
                model: s.clone(),
                batching: step_batching,
                data_type: mi.data_type,
                dims: mi.dims.clone(),
            };
            merge(&mut tensors, m, tensor, node)?;
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
            let node = TensorNode {
                model: s.clone(),
                batching: step_batching,
                data_type: mo.data_type,
                dims: mo.dims.clone(),
            };
            merge(&mut tensors, m, tensor, node)?;
        }
    }
    Ok(())
}

/// A loaded ensemble: its steps, each bound to the composing model version it runs (`-1`
/// resolved to the latest READY version at load). Each composing model runs through its own
/// handle, with its own input checks.
pub(crate) struct Ensemble {
    name: String,
    steps: Vec<Step>,
    /// Whether the ensemble batches (its inputs then carry a batch dim).
    batching: bool,
}

/// Ensemble tensors a step produced: name → (value, produced by a batching model).
type Produced = Vec<(String, (Tensor, bool))>;

struct Step {
    model: Model,
    /// (model input, ensemble tensor)
    inputs: Vec<(String, String)>,
    /// (model output, ensemble tensor)
    outputs: Vec<(String, String)>,
}

impl Ensemble {
    pub(crate) fn new(config: &ModelConfig, models: Vec<Model>) -> Ensemble {
        let steps = config
            .ensemble()
            .map(|e| e.step.as_slice())
            .unwrap_or(&[])
            .iter()
            .zip(models)
            .map(|(s, model)| Step {
                model,
                inputs: s
                    .input_map
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                outputs: s
                    .output_map
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            })
            .collect();
        Ensemble {
            name: config.name.clone(),
            steps,
            batching: config.max_batch_size > 0,
        }
    }

    /// The steps needed for `wanted` tensors: walking back from them through producers.
    fn needed_steps(&self, wanted: &[String]) -> Vec<bool> {
        let mut needed = vec![false; self.steps.len()];
        let mut tensors: BTreeSet<&str> = wanted.iter().map(String::as_str).collect();
        loop {
            let mut changed = false;
            for (i, step) in self.steps.iter().enumerate() {
                if !needed[i]
                    && step
                        .outputs
                        .iter()
                        .any(|(_, t)| tensors.contains(t.as_str()))
                {
                    needed[i] = true;
                    changed = true;
                    tensors.extend(step.inputs.iter().map(|(_, t)| t.as_str()));
                }
            }
            if !changed {
                return needed;
            }
        }
    }
}

/// Triton's `ReshapeTensorDims`: a tensor without batch dim fed to a batching model whose
/// dims it matches gets a leading 1; a batch-1 tensor fed to a non-batching model whose dims
/// it does not match loses its leading dim.
fn adapt(tensor: &Tensor, model: &ModelConfig, input: &str, from_batching: bool) -> Result<Tensor> {
    let Some(cfg) = model.input.iter().find(|i| i.name == input) else {
        return Ok(tensor.clone());
    };
    let shape: Vec<i64> = tensor.shape().iter().map(|&d| d as i64).collect();
    let matches = |dims: &[i64]| {
        dims.len() == shape.len() && dims.iter().zip(&shape).all(|(&d, &s)| d == -1 || d == s)
    };
    let to_batching = model.max_batch_size > 0;
    if to_batching && !from_batching && matches(&cfg.dims) {
        let mut s = tensor.shape().to_vec();
        s.insert(0, 1);
        return tensor.reshaped(&s);
    }
    if !to_batching && from_batching && shape.first() == Some(&1) && !matches(&cfg.dims) {
        return tensor.reshaped(&tensor.shape()[1..]);
    }
    Ok(tensor.clone())
}

impl Executable for Ensemble {
    fn steps(&self) -> Vec<Model> {
        self.steps.iter().map(|s| s.model.clone()).collect()
    }

    fn execute(
        &self,
        inputs: Vec<(String, Tensor)>,
        outputs: &[String],
    ) -> Result<Vec<(String, Tensor)>> {
        let needed = self.needed_steps(outputs);
        let mut done = vec![false; self.steps.len()];
        // Ensemble tensor → (value, produced by a batching model).
        let mut tensors: BTreeMap<String, (Tensor, bool)> = inputs
            .into_iter()
            .map(|(n, t)| (n, (t, self.batching)))
            .collect();
        loop {
            // Every needed step whose inputs are all available runs now; independent steps run
            // in parallel.
            let ready: Vec<usize> = (0..self.steps.len())
                .filter(|&i| {
                    needed[i]
                        && !done[i]
                        && self.steps[i]
                            .inputs
                            .iter()
                            .all(|(_, t)| tensors.contains_key(t))
                })
                .collect();
            if ready.is_empty() {
                break;
            }
            let run = |i: usize| -> Result<Produced> {
                let step = &self.steps[i];
                let cfg = step.model.config();
                let mut step_inputs = Vec::with_capacity(step.inputs.len());
                for (input, tensor) in &step.inputs {
                    if let Some((t, from_batching)) = tensors.get(tensor) {
                        step_inputs.push((input.clone(), adapt(t, cfg, input, *from_batching)?));
                    }
                }
                let wanted: Vec<&str> = step.outputs.iter().map(|(o, _)| o.as_str()).collect();
                let out = step
                    .model
                    .infer_outputs(step_inputs, &wanted)
                    .map_err(|e| {
                        e.context(format!(
                            "in ensemble '{}', step {} ('{}' version {}): ",
                            self.name,
                            i,
                            step.model.name(),
                            step.model.version()
                        ))
                    })?;
                let batching = cfg.max_batch_size > 0;
                Ok(step
                    .outputs
                    .iter()
                    .filter_map(|(o, t)| out.get(o).map(|v| (t.clone(), (v.clone(), batching))))
                    .collect())
            };
            let results: Vec<Result<Produced>> = if ready.len() == 1 {
                vec![run(ready[0])]
            } else {
                std::thread::scope(|s| {
                    let handles: Vec<_> = ready.iter().map(|&i| s.spawn(move || run(i))).collect();
                    handles
                        .into_iter()
                        .map(|h| {
                            h.join().unwrap_or_else(|_| {
                                Err(Error::new(
                                    ErrorKind::Execution,
                                    "an ensemble step panicked",
                                ))
                            })
                        })
                        .collect()
                })
            };
            for (i, r) in ready.iter().zip(results) {
                done[*i] = true;
                tensors.extend(r?);
            }
        }
        let mut out = Vec::with_capacity(outputs.len());
        for name in outputs {
            match tensors.remove(name) {
                Some((t, _)) => out.push((name.clone(), t)),
                None => {
                    return Err(Error::new(
                        ErrorKind::Execution,
                        format!("ensemble '{}' did not produce output '{name}'", self.name),
                    ))
                }
            }
        }
        Ok(out)
    }
}
