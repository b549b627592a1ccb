//! `model/`: the handle an application holds ([`Model`]): its completed config, the input
//! checks, and the call into the backend.

mod classification;
mod ensemble;
mod future;
mod input;
mod scheduler;
mod stats;
pub(crate) mod warmup;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::ModelConfig;
use crate::error::{Error, ErrorKind, Result};
use crate::execution::Executable;
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
    /// For an ensemble: the same executable, whose steps hold the composing versions.
    ensemble: Option<Arc<ensemble::Ensemble>>,
    labels: BTreeMap<String, Vec<String>>,
    stats: stats::Recorder,
    /// None for an ensemble: it has no scheduler of its own, its steps queue on their models.
    scheduler: Option<Arc<scheduler::Scheduler>>,
    max_request_bytes: usize,
}

pub use future::InferFuture;
pub use scheduler::CancelToken;

/// Options of one request: the outputs wanted, its priority and timeout, a cancel token.
///
/// ```
/// # use std::time::Duration;
/// let opts = modelyard::InferOptions::new()
///     .outputs(["OUTPUT0"])
///     .priority(1)
///     .timeout(Duration::from_millis(50));
/// ```
#[derive(Debug, Clone, Default)]
pub struct InferOptions {
    outputs: Option<Vec<String>>,
    priority: u32,
    timeout: Option<Duration>,
    cancel: Option<CancelToken>,
    classes: Vec<(String, usize)>,
}

impl InferOptions {
    /// Every output, default priority, no timeout.
    pub fn new() -> InferOptions {
        InferOptions::default()
    }

    /// Only these outputs (by default, every output of the config).
    pub fn outputs<I, S>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.outputs = Some(names.into_iter().map(Into::into).collect());
        self
    }

    /// Priority level (1 is the highest; 0 or a level above `priority_levels` means the
    /// config's `default_priority_level`). Used by models with `dynamic_batching`.
    pub fn priority(mut self, level: u32) -> Self {
        self.priority = level;
        self
    }

    /// How long the request may wait in the queue before it is answered "Request timeout
    /// expired". With `dynamic_batching` this follows the queue policy: it applies only when
    /// `allow_timeout_override` is set, and the smaller of it and
    /// `default_timeout_microseconds` wins. Without `dynamic_batching` it always applies.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Returns output `output` as its top `k` classes per batch item (Triton's
    /// classification extension, as [`Model::infer_classes`] formats them) instead of the raw
    /// tensor. The output is computed even when [`outputs`](Self::outputs) leaves it out.
    pub fn classification(mut self, output: impl Into<String>, k: usize) -> Self {
        let output = output.into();
        if let Some(outputs) = &mut self.outputs {
            if !outputs.contains(&output) {
                outputs.push(output.clone());
            }
        }
        self.classes.retain(|(o, _)| *o != output);
        self.classes.push((output, k));
        self
    }

    /// Cancels the request when `token` is cancelled while the request is still queued.
    pub fn cancel_token(mut self, token: &CancelToken) -> Self {
        self.cancel = Some(token.clone());
        self
    }
}
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
        let scheduler = (!config.is_ensemble())
            .then(|| Arc::new(scheduler::Scheduler::new(&config, count.max(1) as usize)));
        Model {
            inner: Arc::new(ModelInner {
                stats: stats::Recorder::new(&config.name, version),
                max_request_bytes,
                scheduler,
                version,
                config,
                exec,
                ensemble: None,
                labels,
            }),
        }
    }

    /// Version `version` of ensemble `config`, its steps run by `steps` (the composing model
    /// version of each step, in step order, resolved by the repository).
    pub(crate) fn ensemble(
        config: ModelConfig,
        version: i64,
        steps: Vec<Model>,
        max_request_bytes: usize,
    ) -> Model {
        let exec = Arc::new(ensemble::Ensemble::new(&config, steps));
        Model {
            inner: Arc::new(ModelInner {
                stats: stats::Recorder::new(&config.name, version),
                max_request_bytes,
                scheduler: None,
                version,
                ensemble: Some(exec.clone()),
                exec,
                config,
                labels: BTreeMap::new(),
            }),
        }
    }

    /// How many handles share this version (the repository's, callers', ensembles').
    pub(crate) fn holders(&self) -> usize {
        Arc::strong_count(&self.inner)
    }

    /// For an ensemble: its steps' composing versions, in step order.
    pub(crate) fn steps(&self) -> Vec<Model> {
        self.inner
            .ensemble
            .as_ref()
            .map(|e| e.models())
            .unwrap_or_default()
    }

    /// Whether both handles are the same loaded version.
    pub(crate) fn same_as(&self, other: &Model) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
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

    /// Where this model's nodes ran the last time a plan was built, and the host↔device
    /// copies per inference: `Some` for a model run by the lowered program (a GPU instance
    /// group, the emulator, or the native CPU engine, `engine: "native"`), `None` for tract's
    /// own plan.
    pub fn execution_report(&self) -> Option<crate::execution::ExecutionReport> {
        self.inner.exec.execution_report()
    }

    /// For benchmarks of a model on a GPU instance group: the time of `iters` rounds of all
    /// its kernels at these input shapes (in the order of the model's inputs), device-side
    /// only (no uploads, downloads or scheduling), synchronised before the clock stops.
    /// `Ok(None)` for a model that does not run on a GPU.
    pub fn time_gpu_kernels(
        &self,
        shapes: &[Vec<usize>],
        iters: u32,
    ) -> Result<Option<std::time::Duration>> {
        self.inner.exec.time_kernels(shapes, iters).transpose()
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
        self.run(collect(inputs), InferOptions::default())
    }

    /// Like [`infer`](Self::infer), returning only the outputs named in `outputs`.
    pub fn infer_outputs<I, S>(&self, inputs: I, outputs: &[&str]) -> Result<Outputs>
    where
        I: IntoIterator<Item = (S, Tensor)>,
        S: Into<String>,
    {
        self.run(
            collect(inputs),
            InferOptions::new().outputs(outputs.iter().copied()),
        )
    }

    /// Like [`infer`](Self::infer), with per-request options (outputs, priority, timeout,
    /// cancellation).
    pub fn infer_with<I, S>(&self, inputs: I, options: &InferOptions) -> Result<Outputs>
    where
        I: IntoIterator<Item = (S, Tensor)>,
        S: Into<String>,
    {
        self.run(collect(inputs), options.clone())
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
        let options = classifications.iter().fold(
            InferOptions::new().outputs(classifications.iter().map(|(n, _)| *n)),
            |o, (name, k)| o.classification(*name, *k),
        );
        self.infer_with(inputs, &options)
    }

    /// The outputs named in `classes` replaced by their top-k classes.
    fn classify(&self, outputs: Outputs, classes: &[(String, usize)]) -> Result<Outputs> {
        if classes.is_empty() {
            return Ok(outputs);
        }
        let batching = self.inner.config.max_batch_size > 0;
        let tensors = outputs
            .tensors
            .into_iter()
            .map(|(name, t)| {
                let Some((_, k)) = classes.iter().find(|(n, _)| *n == name) else {
                    return Ok((name, t));
                };
                let classes = classification::classify(&t, *k, batching, self.labels(&name))
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
        self.infer_async_with(inputs, InferOptions::default())
    }

    /// [`infer_async`](Self::infer_async) with per-request options. The future's
    /// [`cancel_token`](InferFuture::cancel_token) is the options' token (or a new one).
    pub fn infer_async_with<I, S>(&self, inputs: I, mut options: InferOptions) -> InferFuture
    where
        I: IntoIterator<Item = (S, Tensor)>,
        S: Into<String>,
    {
        let inputs = collect(inputs);
        let token = options.cancel.get_or_insert_with(CancelToken::new).clone();
        let completion = Arc::new(future::Completion::new(token));
        let (model, done) = (self.clone(), completion.clone());
        let spawned = std::thread::Builder::new()
            .name(format!("modelyard-{}", self.name()))
            .spawn(move || done.complete(model.run(inputs, options)));
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

    fn run(&self, inputs: Vec<(String, Tensor)>, mut options: InferOptions) -> Result<Outputs> {
        let start = Instant::now();
        let mut rows = 1;
        let classes = std::mem::take(&mut options.classes);
        let result = self.request(inputs, options, &mut rows);
        match result {
            Ok(done) => {
                self.inner.stats.request_ok(start.elapsed(), &done, rows);
                self.classify(done.outputs, &classes)
            }
            Err(e) => {
                self.inner.stats.request_failed(start.elapsed());
                Err(e)
            }
        }
    }

    fn request(
        &self,
        inputs: Vec<(String, Tensor)>,
        options: InferOptions,
        rows: &mut u64,
    ) -> Result<scheduler::Done> {
        let inner = &*self.inner;
        let config = &inner.config;
        let outputs = options.outputs.unwrap_or_else(|| self.all_outputs());
        input::check_outputs(config, &outputs).map_err(|e| inner.tag(e))?;
        let bytes: usize = inputs
            .iter()
            .map(|(_, t)| t.byte_size())
            .fold(0, usize::saturating_add);
        if bytes > inner.max_request_bytes {
            return Err(inner.tag(Error::new(
                ErrorKind::ResourceExhausted,
                format!("request for model '{}' carries {bytes} bytes of inputs, more than the limit of {} bytes", config.name, inner.max_request_bytes),
            )));
        }
        let input_start = Instant::now();
        let inputs = input::prepare(config, inputs).map_err(|e| inner.tag(e))?;
        let batch = if config.max_batch_size > 0 {
            inputs
                .first()
                .and_then(|(_, t)| t.shape().first())
                .copied()
                .unwrap_or(1)
        } else {
            1
        };
        *rows = batch as u64;
        let prepared = input_start.elapsed();
        if options
            .cancel
            .as_ref()
            .is_some_and(CancelToken::is_cancelled)
        {
            return Err(inner.tag(Error::new(
                ErrorKind::Cancelled,
                "the request was cancelled before it ran",
            )));
        }
        let submit = scheduler::Submit {
            inputs,
            outputs,
            batch,
            priority: options.priority,
            timeout: options.timeout,
            cancel: options.cancel,
        };
        let mut done = match &inner.scheduler {
            Some(s) => s.submit(submit, &|batch| inner.run_batch(batch)),
            None => inner
                .run_batch(vec![scheduler::Queued::now(submit)])
                .pop()
                .unwrap_or_else(|| Err(Error::new(ErrorKind::Execution, "no result"))),
        }
        .map_err(|e| inner.tag(e))?;
        done.input += prepared;
        Ok(done)
    }
}

impl ModelInner {
    fn tag(&self, e: Error) -> Error {
        e.with_model(self.config.name.clone())
            .with_version(self.version)
    }

    /// Executes a batch: the requests' inputs stacked along the batch dim (one request runs
    /// on its own tensors), the union of their outputs computed once, and each request given
    /// its own rows of the outputs it asked for.
    fn run_batch(&self, mut batch: Vec<scheduler::Queued>) -> Vec<Result<scheduler::Done>> {
        let config = &self.config;
        let span = tracing::trace_span!("execute", model = %config.name, version = self.version, requests = batch.len());
        let _enter = span.enter();
        let input_start = Instant::now();
        let (inputs, wanted) = match batch.as_mut_slice() {
            // One request runs on its own tensors, moved, not copied.
            [one] => (
                Ok(std::mem::take(&mut one.inputs)),
                std::mem::take(&mut one.outputs),
            ),
            _ => (
                stack_inputs(&batch),
                config
                    .output
                    .iter()
                    .filter(|o| batch.iter().any(|q| q.outputs.contains(&o.name)))
                    .map(|o| o.name.clone())
                    .collect(),
            ),
        };
        let input = input_start.elapsed();
        let infer_start = Instant::now();
        let produced = inputs.and_then(|i| self.exec.execute(i, &wanted));
        let infer = infer_start.elapsed();
        let produced = match produced {
            Ok(p) => p,
            Err(e) => {
                self.stats.execution_failed();
                let e = self.tag(e);
                return batch.iter().map(|_| Err(e.duplicate())).collect();
            }
        };
        let output_start = Instant::now();
        let rows: usize = batch.iter().map(|q| q.batch).sum();
        let per_request: Vec<Result<Outputs>> = if batch.len() == 1 {
            vec![self.present(produced, &wanted)]
        } else {
            let mut offset = 0;
            batch
                .iter()
                .map(|q| {
                    let start = offset;
                    offset += q.batch;
                    split_rows(&produced, &q.outputs, rows, start, q.batch)
                        .and_then(|m| self.present(m, &q.outputs))
                })
                .collect()
        };
        let output = output_start.elapsed();
        self.stats.execution(rows as u64, input, infer, output);
        per_request
            .into_iter()
            .zip(batch)
            .map(|(r, q)| {
                r.map(|outputs| scheduler::Done {
                    outputs,
                    queue: q.queue,
                    input,
                    infer,
                    output,
                })
                .map_err(|e| self.tag(e))
            })
            .collect()
    }

    /// The requested outputs in config order, with their config shapes.
    fn present(&self, produced: Vec<(String, Tensor)>, wanted: &[String]) -> Result<Outputs> {
        let config = &self.config;
        let mut tensors = input::present_outputs(config, produced)?;
        tensors.retain(|(n, _)| wanted.contains(n));
        tensors.sort_by_key(|(n, _)| config.output.iter().position(|o| &o.name == n));
        if tensors.len() != wanted.len() {
            return Err(Error::new(
                ErrorKind::Execution,
                format!(
                    "model '{}' did not produce every requested output",
                    config.name
                ),
            ));
        }
        Ok(Outputs { tensors })
    }
}

fn collect<I, S>(inputs: I) -> Vec<(String, Tensor)>
where
    I: IntoIterator<Item = (S, Tensor)>,
    S: Into<String>,
{
    inputs.into_iter().map(|(n, t)| (n.into(), t)).collect()
}

/// The inputs of several requests stacked along the batch dim (the scheduler only batches
/// requests with the same input names and shapes past the batch dim).
fn stack_inputs(batch: &[scheduler::Queued]) -> Result<Vec<(String, Tensor)>> {
    let Some(first) = batch.first() else {
        return Ok(Vec::new());
    };
    first
        .inputs
        .iter()
        .map(|(name, _)| {
            let parts = batch
                .iter()
                .map(|q| {
                    q.inputs
                        .iter()
                        .find(|(n, _)| n == name)
                        .map(|(_, t)| t.clone())
                        .ok_or_else(|| {
                            Error::new(ErrorKind::Execution, "requests of a batch differ in inputs")
                        })
                })
                .collect::<Result<Vec<_>>>()?;
            Ok((
                name.clone(),
                Tensor::concat_rows(&parts).map_err(|e| e.with_tensor(name.clone()))?,
            ))
        })
        .collect()
}

/// Rows `start..start + len` of the outputs in `wanted`, out of a batch of `rows`.
fn split_rows(
    produced: &[(String, Tensor)],
    wanted: &[String],
    rows: usize,
    start: usize,
    len: usize,
) -> Result<Vec<(String, Tensor)>> {
    produced
        .iter()
        .filter(|(n, _)| wanted.contains(n))
        .map(|(n, t)| {
            if t.shape().first() != Some(&rows) {
                return Err(Error::new(
                    ErrorKind::Execution,
                    format!(
                        "output '{n}' has shape {:?}, which does not start with the batch size {rows}",
                        t.shape()
                    ),
                )
                .with_tensor(n.clone()));
            }
            Ok((n.clone(), t.rows(start, start + len)?))
        })
        .collect()
}

const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Model>();
    assert_send_sync::<Tensor>();
};
