//! Execution on tract. tract plans are much faster with concrete shapes than with symbolic
//! dims, so each distinct set of input shapes gets its own optimised plan, built on first use
//! and kept in a small least-recently-used cache shared by all callers (`infer(&self)`).

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use parking_lot::Mutex;
use tract_hir::infer::Factoid;
use tract_linalg::multithread::{multithread_tract_scope, Executor};
use tract_onnx::pb;
use tract_onnx::prelude::tract_data::prelude::Blob;
use tract_onnx::prelude::*;

use super::super::{Executable, LoadOptions};
use crate::config::ModelConfig;
use crate::error::{Error, ErrorKind, Result};
use crate::tensor::Tensor as MyTensor;

type Plan = TypedRunnableModel;

/// Least-recently-used cache of plans keyed by input shapes.
struct Lru {
    tick: u64,
    entries: HashMap<Vec<TVec<usize>>, (u64, Arc<Plan>)>,
}

pub(crate) struct Plans {
    model_name: String,
    model: InferenceModel,
    inputs: Vec<String>,
    input_types: Vec<DatumType>,
    outputs: Vec<String>,
    overridable: Vec<String>,
    capacity: usize,
    cache: Mutex<Lru>,
    executor: Option<Executor>,
    metadata: std::collections::BTreeMap<String, String>,
}

fn tract_err(kind: ErrorKind, what: String, e: impl std::fmt::Display) -> Error {
    Error::new(kind, format!("{what}: {e}"))
}

/// Runs `f`, turning a panic inside tract into an error.
fn guarded<T>(what: &str, f: impl FnOnce() -> TractResult<T>) -> Result<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(tract_err(
            ErrorKind::Execution,
            what.to_string(),
            format!("{e:#}"),
        )),
        Err(_) => Err(Error::new(
            ErrorKind::Execution,
            format!("{what}: the engine panicked"),
        )),
    }
}

impl Plans {
    pub(crate) fn new(
        config: &ModelConfig,
        proto: pb::ModelProto,
        dir: Option<&str>,
        opts: &LoadOptions,
    ) -> Result<Plans> {
        let m = &config.name;
        let proto = &proto;
        let parsed = guarded(&format!("failed to load model '{m}'"), || {
            super::checked_ops::onnx().parse(proto, dir)
        })?;
        if !parsed.unresolved_inputs.is_empty() {
            return Err(Error::new(
                ErrorKind::ModelFile,
                format!(
                    "failed to load model '{m}': unresolved graph inputs {:?}",
                    parsed.unresolved_inputs
                ),
            ));
        }
        let model = parsed.model;
        // Operators tract does not know are parsed as placeholders: reject them now.
        if let Some(node) = model
            .nodes()
            .iter()
            .find(|n| n.op_is::<tract_onnx::tract_core::ops::unimpl::UnimplementedOp>())
        {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!(
                    "failed to load model '{m}': unsupported ONNX operator in node '{}': {:?}",
                    node.name, node.op
                ),
            ));
        }
        // Check the whole graph once with its declared (possibly symbolic) shapes. Some graphs
        // (shapes computed from `Shape`) only type with concrete input shapes: those are
        // checked when the first plan is built.
        if let Err(e) = guarded("", || model.clone().into_typed().map(|_| ())) {
            tracing::debug!(
                "model '{m}' does not type with symbolic shapes; plans are checked per shape ({})",
                e.message()
            );
        }
        let graph = proto.graph.as_ref();
        let inits: std::collections::HashSet<&str> = graph
            .map(|g| g.initializer.iter().map(|i| i.name.as_str()).collect())
            .unwrap_or_default();
        let inputs: Vec<String> = graph
            .map(|g| {
                g.input
                    .iter()
                    .filter(|i| !inits.contains(i.name.as_str()))
                    .map(|i| i.name.clone())
                    .collect()
            })
            .unwrap_or_default();
        let overridable: Vec<String> = graph
            .map(|g| {
                g.input
                    .iter()
                    .filter(|i| inits.contains(i.name.as_str()))
                    .map(|i| i.name.clone())
                    .collect()
            })
            .unwrap_or_default();
        let outputs: Vec<String> = graph
            .map(|g| g.output.iter().map(|o| o.name.clone()).collect())
            .unwrap_or_default();
        if inputs.len() != model.input_outlets().map(|o| o.len()).unwrap_or(0)
            || outputs.len() != model.output_outlets().map(|o| o.len()).unwrap_or(0)
        {
            return Err(Error::new(
                ErrorKind::ModelFile,
                format!("failed to load model '{m}': graph inputs/outputs could not be mapped"),
            ));
        }
        let mut input_types = Vec::with_capacity(inputs.len());
        for i in 0..inputs.len() {
            let fact = model.input_fact(i).map_err(|e| {
                tract_err(
                    ErrorKind::ModelFile,
                    format!("failed to load model '{m}'"),
                    e,
                )
            })?;
            input_types.push(fact.datum_type.concretize().unwrap_or(DatumType::F32));
        }
        let threads = config
            .parameters
            .get("intra_op_thread_count")
            .and_then(|p| p.string_value.parse::<usize>().ok())
            .unwrap_or(1);
        let executor = (threads > 1)
            .then(|| Executor::multithread_with_name(threads, &format!("modelyard-{m}")));
        Ok(Plans {
            model_name: m.clone(),
            model,
            inputs,
            input_types,
            outputs,
            overridable,
            capacity: opts.plan_cache_capacity.max(1),
            metadata: proto
                .metadata_props
                .iter()
                .map(|p| (p.key.clone(), p.value.clone()))
                .collect(),
            cache: Mutex::new(Lru {
                tick: 0,
                entries: HashMap::new(),
            }),
            executor,
        })
    }

    fn plan_for(&self, shapes: &[TVec<usize>]) -> Result<Arc<Plan>> {
        {
            let mut cache = self.cache.lock();
            cache.tick += 1;
            let tick = cache.tick;
            if let Some(entry) = cache.entries.get_mut(shapes) {
                entry.0 = tick;
                return Ok(entry.1.clone());
            }
        }
        let span = tracing::debug_span!("compile", model = %self.model_name, shapes = ?shapes);
        let _enter = span.enter();
        let plan = self.compile(shapes, |m| m.into_optimized()?.into_runnable())?;
        let mut cache = self.cache.lock();
        cache.tick += 1;
        let tick = cache.tick;
        if cache.entries.len() >= self.capacity {
            if let Some(oldest) = cache
                .entries
                .iter()
                .min_by_key(|(_, (t, _))| *t)
                .map(|(k, _)| k.clone())
            {
                cache.entries.remove(&oldest);
            }
        }
        cache.entries.insert(shapes.to_vec(), (tick, plan.clone()));
        Ok(plan)
    }

    /// The model's name.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub(crate) fn model_name(&self) -> &str {
        &self.model_name
    }

    /// The graph inputs (initializers excluded), in order.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub(crate) fn input_names(&self) -> &[String] {
        &self.inputs
    }

    /// The graph outputs, in order.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub(crate) fn output_names(&self) -> &[String] {
        &self.outputs
    }

    /// The graph typed and decluttered (not optimised for the CPU) at concrete input shapes:
    /// what the GPU executor lowers.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub(crate) fn decluttered(&self, shapes: &[TVec<usize>]) -> Result<TypedModel> {
        self.compile(shapes, |m| m.into_typed()?.into_decluttered())
    }

    /// The graph with concrete input shapes, turned into `T` by `f` (panics caught).
    fn compile<T>(
        &self,
        shapes: &[TVec<usize>],
        f: impl FnOnce(InferenceModel) -> TractResult<T>,
    ) -> Result<T> {
        let what = format!(
            "failed to compile model '{}' for input shapes {shapes:?}",
            self.model_name
        );
        guarded(&what, || {
            let mut m = self.model.clone();
            for (i, (shape, dt)) in shapes.iter().zip(&self.input_types).enumerate() {
                m.set_input_fact(i, InferenceFact::dt_shape(*dt, shape.as_slice()))?;
            }
            f(m)
        })
    }

    /// The request's inputs in the graph's order, with their shapes; refuses overridden
    /// initializers and missing inputs.
    pub(crate) fn ordered_inputs(
        &self,
        inputs: &[(String, MyTensor)],
    ) -> Result<(Vec<TVec<usize>>, TVec<TValue>)> {
        if let Some((name, _)) = inputs.iter().find(|(n, _)| self.overridable.contains(n)) {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!("model '{}': overriding the initializer '{name}' is not supported by the tract backend", self.model_name),
            )
            .with_tensor(name.clone()));
        }
        let mut ordered = Vec::with_capacity(self.inputs.len());
        for name in &self.inputs {
            let Some((_, t)) = inputs.iter().find(|(n, _)| n == name) else {
                return Err(Error::invalid_input(format!(
                    "missing input '{name}' for model '{}'",
                    self.model_name
                ))
                .with_tensor(name.clone()));
            };
            ordered.push(t);
        }
        let shapes: Vec<TVec<usize>> = ordered.iter().map(|t| t.shape().into()).collect();
        let values = ordered
            .iter()
            .zip(&self.input_types)
            .map(|(t, dt)| to_tvalue(t, *dt))
            .collect::<Result<TVec<_>>>()?;
        Ok((shapes, values))
    }

    /// The input shapes of the cached plans.
    #[cfg(test)]
    fn cached_shapes(&self) -> Vec<Vec<TVec<usize>>> {
        let mut v: Vec<_> = self.cache.lock().entries.keys().cloned().collect();
        v.sort();
        v
    }
}

fn to_tvalue(t: &MyTensor, dt: DatumType) -> Result<TValue> {
    let inner = t.as_tract();
    if dt == DatumType::String && inner.datum_type() == DatumType::Blob {
        let blobs = inner
            .try_as_plain_ram()
            .and_then(|v| v.as_slice::<Blob>())
            .map_err(|e| Error::invalid_input(e.to_string()))?;
        let strings = blobs
            .iter()
            .map(|b| String::from_utf8(b.as_bytes().to_vec()))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|_| {
                Error::invalid_input(
                    "BYTES input is not valid UTF-8, which ONNX string tensors require",
                )
            })?;
        let arr = tract_ndarray::ArrayD::from_shape_vec(inner.shape(), strings)
            .map_err(|e| Error::invalid_input(e.to_string()))?;
        return Ok(TValue::from_const(Arc::new(Tensor::from(arr))));
    }
    Ok(TValue::from_const(inner.clone()))
}

impl Executable for Plans {
    fn metadata(&self) -> Option<&std::collections::BTreeMap<String, String>> {
        Some(&self.metadata)
    }

    fn execute(
        &self,
        inputs: Vec<(String, MyTensor)>,
        outputs: &[String],
    ) -> Result<Vec<(String, MyTensor)>> {
        let (shapes, values) = self.ordered_inputs(&inputs)?;
        let plan = self.plan_for(&shapes)?;
        let what = format!("failed to run model '{}'", self.model_name);
        let result = match &self.executor {
            Some(ex) => guarded(&what, || {
                multithread_tract_scope(ex.clone(), || plan.run(values))
            }),
            None => guarded(&what, || plan.run(values)),
        }?;
        let mut out = Vec::with_capacity(outputs.len());
        for (name, value) in self.outputs.iter().zip(result) {
            if outputs.contains(name) {
                out.push((name.clone(), MyTensor::from_tract(value.into_tensor())));
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn least_recently_used_plan_is_evicted() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures/generated/add_sub_fp32_batch.onnx");
        let proto = super::super::io::read_proto(&path, "m", usize::MAX).unwrap();
        let config = ModelConfig {
            name: "m".into(),
            ..Default::default()
        };
        let opts = LoadOptions {
            plan_cache_capacity: 2,
            default_max_batch_size: 4,
            max_request_bytes: 1 << 30,
            max_model_bytes: usize::MAX,
            cuda_emulator: false,
            natives: Default::default(),
        };
        let plans = Plans::new(&config, proto, None, &opts).unwrap();
        let run = |rows: usize| {
            let t = MyTensor::from(tract_ndarray::Array2::<f32>::ones((rows, 16)));
            let out = plans
                .execute(
                    vec![("INPUT0".into(), t.clone()), ("INPUT1".into(), t)],
                    &["OUTPUT0".into()],
                )
                .unwrap();
            assert_eq!(out[0].1.shape(), &[rows, 16]);
        };
        let key = |rows: usize| vec![tvec![rows, 16], tvec![rows, 16]];
        run(1);
        run(2);
        assert_eq!(plans.cached_shapes(), [key(1), key(2)]);
        run(1); // 1 is now more recent than 2
        run(3);
        assert_eq!(plans.cached_shapes(), [key(1), key(3)]);
    }
}
