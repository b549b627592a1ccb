//! `model/`: the handle an application holds ([`Model`]): its completed config, the input
//! checks, and the call into the backend.

mod classification;
mod future;
mod input;
mod stats;
pub(crate) mod warmup;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::backend::Executable;
use crate::config::ModelConfig;
use crate::error::{Error, ErrorKind, Result};
use crate::tensor::Tensor;

/// State of a model version, as Triton's repository index reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ModelState {
    /// Loaded and serving.
    Ready,
    /// Failed to load, or unloaded; the index entry's reason says which.
    Unavailable,
    /// Being loaded.
    Loading,
    /// Being unloaded.
    Unloading,
    /// Never loaded.
    Unknown,
}

impl std::fmt::Display for ModelState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ModelState::Ready => "READY",
            ModelState::Unavailable => "UNAVAILABLE",
            ModelState::Loading => "LOADING",
            ModelState::Unloading => "UNLOADING",
            ModelState::Unknown => "UNKNOWN",
        })
    }
}

/// A loaded model version. Cheap to clone, `Send + Sync`; `infer` may be called from many
/// threads at once.
#[derive(Clone)]
pub struct Model {
    inner: Arc<ModelInner>,
}

struct ModelInner {
    version: i64,
    config: ModelConfig,
    exec: Arc<dyn Executable>,
    labels: BTreeMap<String, Vec<String>>,
    stats: stats::Recorder,
    instances: stats::Instances,
    max_request_bytes: usize,
}

pub use future::InferFuture;
pub use stats::{BatchStats, DurationStat, ModelStatistics};

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("name", &self.name())
            .field("version", &self.inner.version)
            .finish_non_exhaustive()
    }
}

/// The outputs of one inference, by name, in the config's output order.
#[derive(Debug, Clone, Default)]
pub struct Outputs {
    tensors: Vec<(String, Tensor)>,
}

impl Outputs {
    /// The output named `name`.
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.tensors.iter().find(|(n, _)| n == name).map(|(_, t)| t)
    }

    /// Names and tensors.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Tensor)> {
        self.tensors.iter().map(|(n, t)| (n.as_str(), t))
    }

    /// Number of outputs.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    /// Whether there is no output.
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }
}

impl IntoIterator for Outputs {
    type Item = (String, Tensor);
    type IntoIter = std::vec::IntoIter<(String, Tensor)>;
    fn into_iter(self) -> Self::IntoIter {
        self.tensors.into_iter()
    }
}

impl Model {
    pub(crate) fn new(
        config: ModelConfig,
        version: i64,
        exec: Arc<dyn Executable>,
        labels: BTreeMap<String, Vec<String>>,
        max_request_bytes: usize,
    ) -> Model {
        // Instances: the sum of the instance groups' counts (an ensemble has none and runs
        // each request at once; its steps queue on their own models).
        let count: i32 = config.instance_group.iter().map(|g| g.count.max(1)).sum();
        let instances = stats::Instances::new(if config.is_ensemble() {
            usize::MAX
        } else {
            count.max(1) as usize
        });
        Model {
            inner: Arc::new(ModelInner {
                stats: stats::Recorder::new(&config.name, version),
                max_request_bytes,
                instances,
                version,
                config,
                exec,
                labels,
            }),
        }
    }

    /// The model name.
    pub fn name(&self) -> &str {
        &self.inner.config.name
    }

    /// The version number.
    pub fn version(&self) -> i64 {
        self.inner.version
    }

    /// The completed, typed configuration (after normalisation and auto-complete).
    pub fn config(&self) -> &ModelConfig {
        &self.inner.config
    }

    /// A metadata value stored in the model file (ONNX `metadata_props`), e.g. PaddleOCR's
    /// recogniser dictionary under `character`.
    pub fn metadata(&self, key: &str) -> Option<&str> {
        self.inner
            .exec
            .metadata()
            .and_then(|m| m.get(key))
            .map(String::as_str)
    }

    /// The labels of an output that has a `label_filename` (line i = label of index i).
    pub fn labels(&self, output: &str) -> Option<&[String]> {
        self.inner.labels.get(output).map(Vec::as_slice)
    }

    /// Runs the model on `inputs` (any iterable of name and tensor) and returns every output.
    pub fn infer<I, S>(&self, inputs: I) -> Result<Outputs>
    where
        I: IntoIterator<Item = (S, Tensor)>,
        S: Into<String>,
    {
        let outputs = self.all_outputs();
        self.run(
            inputs.into_iter().map(|(n, t)| (n.into(), t)).collect(),
            outputs,
        )
    }

    /// Like [`infer`](Self::infer), returning only the outputs named in `outputs`.
    pub fn infer_outputs<I, S>(&self, inputs: I, outputs: &[&str]) -> Result<Outputs>
    where
        I: IntoIterator<Item = (S, Tensor)>,
        S: Into<String>,
    {
        let outputs: Vec<String> = outputs.iter().map(|s| s.to_string()).collect();
        self.run(
            inputs.into_iter().map(|(n, t)| (n.into(), t)).collect(),
            outputs,
        )
    }

    /// Runs the model on `inputs` and returns the outputs `classifications` names, each
    /// replaced by its top `k` classes per batch item, as Triton's classification extension
    /// formats them: BYTES `"<value>:<index>"` or `"<value>:<index>:<label>"` (labels from the
    /// output's `label_filename`), shape `[batch, k]` (or `[k]` without batching).
    pub fn infer_classes<I, S>(
        &self,
        inputs: I,
        classifications: &[(&str, usize)],
    ) -> Result<Outputs>
    where
        I: IntoIterator<Item = (S, Tensor)>,
        S: Into<String>,
    {
        let names: Vec<&str> = classifications.iter().map(|(n, _)| *n).collect();
        let out = self.infer_outputs(inputs, &names)?;
        let batching = self.inner.config.max_batch_size > 0;
        let tensors = out
            .tensors
            .into_iter()
            .map(|(name, t)| {
                let k = classifications
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, k)| *k)
                    .unwrap_or(0);
                let classes = classification::classify(&t, k, batching, self.labels(&name))
                    .map_err(|e| {
                        e.with_model(self.name().to_string())
                            .with_version(self.version())
                            .with_tensor(name.clone())
                    })?;
                Ok((name, classes))
            })
            .collect::<Result<_>>()?;
        Ok(Outputs { tensors })
    }

    /// Like [`infer`](Self::infer), without blocking the caller: the request runs on its own
    /// thread and the returned future completes with its result. It needs no particular async
    /// runtime. Dropping the future before the request reaches an instance cancels it (the
    /// model does not run; it counts as a failed request).
    pub fn infer_async<I, S>(&self, inputs: I) -> InferFuture
    where
        I: IntoIterator<Item = (S, Tensor)>,
        S: Into<String>,
    {
        let inputs: Vec<(String, Tensor)> =
            inputs.into_iter().map(|(n, t)| (n.into(), t)).collect();
        let outputs = self.all_outputs();
        let completion = Arc::new(future::Completion::default());
        let (model, done) = (self.clone(), completion.clone());
        let spawned = std::thread::Builder::new()
            .name(format!("modelyard-{}", self.name()))
            .spawn(move || {
                let result = model.run_with_cancel(inputs, outputs, Some(&done));
                done.complete(result);
            });
        if let Err(e) = spawned {
            completion.complete(Err(Error::new(
                ErrorKind::ResourceExhausted,
                format!("cannot start a request thread: {e}"),
            )));
        }
        InferFuture { completion }
    }

    /// Every output of the config, in config order.
    fn all_outputs(&self) -> Vec<String> {
        self.inner
            .config
            .output
            .iter()
            .map(|o| o.name.clone())
            .collect()
    }

    /// Statistics of this version (Triton's statistics extension).
    pub fn statistics(&self) -> ModelStatistics {
        self.inner.stats.snapshot()
    }

    fn run(&self, inputs: Vec<(String, Tensor)>, outputs: Vec<String>) -> Result<Outputs> {
        self.run_with_cancel(inputs, outputs, None)
    }

    fn run_with_cancel(
        &self,
        inputs: Vec<(String, Tensor)>,
        outputs: Vec<String>,
        cancel: Option<&future::Completion>,
    ) -> Result<Outputs> {
        let start = std::time::Instant::now();
        let config = &self.inner.config;
        let tag = |e: Error| {
            e.with_model(config.name.clone())
                .with_version(self.inner.version)
        };
        let mut executed = false;
        let result = (|| {
            input::check_outputs(config, &outputs).map_err(tag)?;
            let bytes: usize = inputs
                .iter()
                .map(|(_, t)| t.byte_size())
                .fold(0, usize::saturating_add);
            if bytes > self.inner.max_request_bytes {
                return Err(tag(Error::new(
                    ErrorKind::ResourceExhausted,
                    format!("request for model '{}' carries {bytes} bytes of inputs, more than the limit of {} bytes", config.name, self.inner.max_request_bytes),
                )));
            }
            let input_start = std::time::Instant::now();
            let inputs = input::prepare(config, inputs).map_err(tag)?;
            let batch = if config.max_batch_size > 0 {
                inputs
                    .first()
                    .and_then(|(_, t)| t.shape().first())
                    .copied()
                    .unwrap_or(1) as u64
            } else {
                1
            };
            let prepared = input_start.elapsed();
            let wait = std::time::Instant::now();
            let _instance = self.inner.instances.acquire();
            let queue = wait.elapsed();
            if cancel.is_some_and(|c| c.is_cancelled()) {
                return Err(tag(Error::new(
                    ErrorKind::Cancelled,
                    "the request was cancelled before it ran",
                )));
            }
            let span =
                tracing::trace_span!("infer", model = %config.name, version = self.inner.version);
            let _enter = span.enter();
            let infer_start = std::time::Instant::now();
            executed = true;
            let produced = self.inner.exec.execute(inputs, &outputs).map_err(tag)?;
            let infer = infer_start.elapsed();
            let output_start = std::time::Instant::now();
            let mut tensors = input::present_outputs(config, produced).map_err(tag)?;
            // Config order, as Triton returns them.
            tensors.sort_by_key(|(n, _)| config.output.iter().position(|o| &o.name == n));
            if tensors.len() != outputs.len() {
                return Err(tag(Error::new(
                    ErrorKind::Execution,
                    format!(
                        "model '{}' did not produce every requested output",
                        config.name
                    ),
                )));
            }
            let output = output_start.elapsed();
            Ok((
                Outputs { tensors },
                stats::Timing {
                    total: Duration::ZERO,
                    queue,
                    input: prepared,
                    infer,
                    output,
                    batch,
                },
            ))
        })();
        match result {
            Ok((out, mut timing)) => {
                timing.total = start.elapsed();
                self.inner.stats.success(timing);
                Ok(out)
            }
            Err(e) => {
                self.inner.stats.failure(start.elapsed(), executed);
                Err(e)
            }
        }
    }
}

const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Model>();
    assert_send_sync::<Tensor>();
};
