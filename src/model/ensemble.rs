//! Ensemble execution (`platform: "ensemble"`): the steps needed for the requested outputs run
//! as soon as their inputs are ready, independent ones in parallel, tensors shared between
//! steps without copies. An ensemble composes models, so it lives here; the repository
//! resolves and checks its steps (`repository/ensemble.rs`).

use std::collections::{BTreeMap, BTreeSet};

use super::Model;
use crate::config::ModelConfig;
use crate::error::{Error, ErrorKind, Result};
use crate::execution::{Executable, Named};
use crate::tensor::Tensor;

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
    let matches = |dims: &[i64]| crate::util::dims::fits(dims, &shape);
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

impl Ensemble {
    /// Runs step `i` on the ensemble tensors it maps; returns the tensors it produced.
    fn run_step(&self, i: usize, tensors: &BTreeMap<String, (Tensor, bool)>) -> Result<Produced> {
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
    }

    /// The composing model versions of the steps, in step order.
    pub(crate) fn models(&self) -> Vec<Model> {
        self.steps.iter().map(|s| s.model.clone()).collect()
    }
}

impl Executable for Ensemble {
    fn execute(&self, inputs: Named, outputs: &[String]) -> Result<Named> {
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
            let run = |i: usize| self.run_step(i, &tensors);
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
