//! Execution on tract. tract plans are much faster with concrete shapes than with symbolic
//! dims, so each distinct set of input shapes gets its own optimised plan, built on first use
//! and kept in a small least-recently-used cache shared by all callers (`infer(&self)`).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use parking_lot::Mutex;
use tract_hir::infer::Factoid;
use tract_linalg::multithread::{multithread_tract_scope, Executor};
use tract_onnx::prelude::tract_data::prelude::Blob;
use tract_onnx::prelude::*;

use super::{Executable, Named};
use crate::error::{Error, ErrorKind, Result};
use crate::tensor::Tensor as MyTensor;
use crate::util::lru::Lru;

type Plan = TypedRunnableModel;

/// The names a graph's tensors go by, as its file declares them.
#[derive(Debug, Clone, Default)]
pub(crate) struct GraphNames {
    /// Graph inputs a request feeds, in order.
    pub inputs: Vec<String>,
    /// Graph inputs with an initializer (a request may not override them here).
    pub overridable: Vec<String>,
    /// Graph outputs, in order.
    pub outputs: Vec<String>,
}

pub(crate) struct Plans {
    model_name: String,
    model: InferenceModel,
    inputs: Vec<String>,
    input_types: Vec<DatumType>,
    outputs: Vec<String>,
    overridable: Vec<String>,
    cache: Mutex<Lru<Vec<TVec<usize>>, Arc<Plan>>>,
    executor: Option<Executor>,
    metadata: std::collections::BTreeMap<String, String>,
    /// The graph typed with its declared (symbolic) input shapes, where tract types it so.
    symbolic: Option<TypedModel>,
    /// That graph decluttered once, on first use: a new input shape binds its symbols and
    /// declutters what is left (~15-25 ms on PP-OCR's recogniser, against ~100 ms from the
    /// start).
    symbolic_decluttered: std::sync::OnceLock<Option<TypedModel>>,
}

/// What [`Plans::bind_symbolic`] does to the graph once its symbols are bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Bound {
    /// Declutters it again, whole.
    Decluttered,
    /// Only folds its constants (the shape arithmetic the sizes made constant): on PP-OCR's
    /// recogniser ~6 ms a width against 30-47 for the whole declutter. The graph may differ
    /// from the decluttered one (tract's declutter also rewrites operators), so a caller
    /// checks that it lowers to the same program before relying on it.
    Folded,
}

pub(crate) fn tract_err(kind: ErrorKind, what: String, e: impl std::fmt::Display) -> Error {
    Error::new(kind, format!("{what}: {e}"))
}

/// Runs `f`, turning a panic inside tract into an error.
pub(crate) fn guarded<T>(what: &str, f: impl FnOnce() -> TractResult<T>) -> Result<T> {
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
    /// Plans for `model` (parsed, every operator known), built per input shape on first use;
    /// `capacity` of them kept; `threads` > 1 runs tract's multithreaded executor.
    pub(crate) fn new(
        m: &str,
        model: InferenceModel,
        names: GraphNames,
        metadata: std::collections::BTreeMap<String, String>,
        capacity: usize,
        threads: usize,
        symbolic: Option<TypedModel>,
    ) -> Result<Plans> {
        let GraphNames {
            inputs,
            overridable,
            outputs,
        } = names;
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
        let executor = (threads > 1)
            .then(|| Executor::multithread_with_name(threads, &format!("modelyard-{m}")));
        Ok(Plans {
            model_name: m.to_string(),
            model,
            inputs,
            input_types,
            outputs,
            overridable,
            metadata,
            cache: Mutex::new(Lru::new(capacity)),
            executor,
            symbolic,
            symbolic_decluttered: std::sync::OnceLock::new(),
        })
    }

    fn plan_for(&self, shapes: &[TVec<usize>]) -> Result<Arc<Plan>> {
        if let Some(plan) = self.cache.lock().get(shapes) {
            return Ok(plan);
        }
        let span = tracing::debug_span!("compile", model = %self.model_name, shapes = ?shapes);
        let _enter = span.enter();
        let plan = self.compile(shapes, |m| m.into_optimized()?.into_runnable())?;
        self.cache.lock().insert(shapes.to_vec(), plan.clone());
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
        match self.bind_symbolic(shapes, Bound::Decluttered) {
            Some(model) => Ok(model),
            None => self.decluttered_from_start(shapes),
        }
    }

    /// The graph typed and decluttered at `shapes` from the start (what `decluttered` does
    /// without a symbolic graph).
    pub(crate) fn decluttered_from_start(&self, shapes: &[TVec<usize>]) -> Result<TypedModel> {
        self.compile(shapes, |m| m.into_typed()?.into_decluttered())
    }

    /// The graph at `shapes` from the symbolic graph decluttered once: its input symbols
    /// bound to the sizes, then decluttered again or only its constants folded (`how`).
    /// `None` (plan from the start) where the graph has no symbolic form, the shapes do not
    /// bind its inputs' dimensions one to one, or a dimension is left unknown.
    pub(crate) fn bind_symbolic(&self, shapes: &[TVec<usize>], how: Bound) -> Option<TypedModel> {
        let decluttered = self.symbolic_decluttered.get_or_init(|| {
            let typed = self.symbolic.clone()?;
            guarded("", || typed.into_decluttered()).ok()
        });
        let model = decluttered.as_ref()?;
        let mut subs: std::collections::HashMap<Symbol, TDim> = Default::default();
        for (i, shape) in shapes.iter().enumerate() {
            let fact = model.input_fact(i).ok()?;
            if fact.rank() != shape.len() || fact.datum_type != *self.input_types.get(i)? {
                return None;
            }
            for (dim, &size) in fact.shape.iter().zip(shape) {
                let size = (size as i64).to_dim();
                match dim {
                    TDim::Sym(s) => {
                        if subs
                            .insert(s.clone(), size.clone())
                            .is_some_and(|d| d != size)
                        {
                            return None;
                        }
                    }
                    d if *d == size => {}
                    _ => return None,
                }
            }
        }
        let bound = guarded("", || {
            let mut bound = model.set_symbols(&subs)?;
            match how {
                Bound::Decluttered => bound.into_decluttered(),
                Bound::Folded => {
                    tract_onnx::tract_core::optim::Optimizer::prop_consts().optimize(&mut bound)?;
                    Ok(bound)
                }
            }
        })
        .ok()?;
        let concrete = every_shape_concrete(&bound);
        let inputs_match = shapes.iter().enumerate().all(|(i, shape)| {
            bound
                .input_fact(i)
                .is_ok_and(|f| f.shape.as_concrete() == Some(shape.as_slice()))
        });
        (concrete && inputs_match).then_some(bound)
    }

    /// `reference` (this model's graph decluttered at other input shapes) re-typed at
    /// `shapes`: the same operators, each node's output facts computed again from its inputs'
    /// (nothing simplified again). What an operator fixed at the reference's shapes (a
    /// constant folded from a shape, a reshape's sizes) it keeps, so the graph may not be the
    /// model's at `shapes`: the caller checks that re-typing gives the program the declutter
    /// gives before relying on it ([`crate::execution::program::retype`]). `None` where an
    /// operator refuses the new facts or a dimension is left unknown.
    pub(crate) fn retyped(
        &self,
        reference: &TypedModel,
        shapes: &[TVec<usize>],
    ) -> Option<TypedModel> {
        let retyped = guarded("", || {
            let mut m = TypedModel {
                symbols: reference.symbols.clone(),
                properties: reference.properties.clone(),
                ..TypedModel::default()
            };
            let inputs = reference.input_outlets()?;
            tract_onnx::tract_core::internal::ensure!(inputs.len() == shapes.len());
            let mut map: std::collections::HashMap<OutletId, OutletId> = Default::default();
            for (input, shape) in inputs.iter().zip(shapes) {
                let dt = reference.outlet_fact(*input)?.datum_type;
                let name = &reference.node(input.node).name;
                let source = m.add_source(name, TypedFact::dt_shape(dt, shape.as_slice()))?;
                map.insert(*input, source);
            }
            for id in reference.eval_order()? {
                let node = reference.node(id);
                if inputs.iter().any(|i| i.node == id) {
                    continue;
                }
                let mut wired: TVec<OutletId> = node.inputs.iter().map(|i| map[i]).collect();
                if let Some((slot, scale)) = mean_scale(reference, node, &m, &wired) {
                    wired[slot] = m.add_const(format!("{}.scale", node.name), scale)?;
                }
                let facts = wired
                    .iter()
                    .map(|o| m.outlet_fact(*o).cloned())
                    .collect::<TractResult<TVec<_>>>()?;
                let facts = node.op.output_facts(&facts.iter().collect::<TVec<_>>())?;
                tract_onnx::tract_core::internal::ensure!(facts.len() == node.outputs.len());
                let new = m.add_node(&node.name, node.op.clone(), facts)?;
                for (slot, outlet) in wired.iter().enumerate() {
                    m.add_edge(*outlet, InletId::new(new, slot))?;
                }
                for slot in 0..node.outputs.len() {
                    map.insert(OutletId::new(id, slot), OutletId::new(new, slot));
                }
            }
            let outputs: TVec<OutletId> =
                reference.output_outlets()?.iter().map(|o| map[o]).collect();
            m.select_output_outlets(&outputs)?;
            for (outlet, label) in &reference.outlet_labels {
                if let Some(o) = map.get(outlet) {
                    m.set_outlet_label(*o, label.clone())?;
                }
            }
            Ok(m)
        })
        .ok()?;
        every_shape_concrete(&retyped).then_some(retyped)
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
    pub(crate) fn cached_shapes(&self) -> Vec<Vec<TVec<usize>>> {
        let mut v: Vec<_> = self.cache.lock().keys().cloned().collect();
        v.sort();
        v
    }
}

/// Whether every node's outputs of `model` have concrete shapes (what the lowering needs).
fn every_shape_concrete(model: &TypedModel) -> bool {
    model.nodes().iter().all(|n| {
        n.outputs
            .iter()
            .all(|o| o.fact.shape.as_concrete().is_some())
    })
}

/// A mean's scale at new shapes: where `node` (of `reference`) multiplies a sum over some axes
/// by the constant `1 / n` (or divides it by `n`), `n` the number of values summed at the
/// reference's shapes, the slot of that constant and its value for the sum as wired in `m`
/// (`wired`: `node`'s inputs there). tract types `GlobalAveragePool` and `ReduceMean` so, the
/// count folded into a constant at concrete shapes; anything else is left as it is.
fn mean_scale(
    reference: &TypedModel,
    node: &TypedNode,
    m: &TypedModel,
    wired: &[OutletId],
) -> Option<(usize, Arc<Tensor>)> {
    use tract_onnx::tract_core::ops::{binary::TypedBinOp, konst::Const, nn::Reduce, nn::Reducer};
    let bin = node.op_as::<TypedBinOp>()?;
    let divides = match bin.0.name() {
        "Mul" => false,
        "Div" => true,
        _ => return None,
    };
    let [a, b] = node.inputs.as_slice() else {
        return None;
    };
    // The sum is the dividend, or either factor.
    let (sum, slot) = if divides || reference.node(a.node).op_is::<Reduce>() {
        (a, 1)
    } else {
        (b, 0)
    };
    let reduce = reference.node(sum.node).op_as::<Reduce>()?;
    if !matches!(reduce.reducer, Reducer::Sum) {
        return None;
    }
    let konst = reference
        .node(node.inputs[slot].node)
        .op_as::<Const>()?
        .val();
    if konst.datum_type() != f32::datum_type() || konst.len() != 1 {
        return None;
    }
    let count = |model: &TypedModel, input: OutletId| -> Option<f32> {
        let shape = model.outlet_fact(input).ok()?.shape.as_concrete()?.to_vec();
        Some(
            reduce
                .axes
                .iter()
                .map(|&k| shape.get(k).copied())
                .product::<Option<usize>>()? as f32,
        )
    };
    let summed = reference.node(sum.node).inputs.first()?;
    let before = count(reference, *summed)?;
    let now_summed = m.node(wired[1 - slot].node).inputs.first()?;
    let now = count(m, *now_summed)?;
    let value = *konst
        .try_as_plain_ram()
        .ok()?
        .as_slice::<f32>()
        .ok()?
        .first()?;
    let scale = if divides {
        (value == before).then_some(now)?
    } else {
        (value == 1.0 / before).then_some(1.0 / now)?
    };
    let mut t = konst.as_ref().clone();
    t.try_as_plain_ram_mut().ok()?.as_slice_mut::<f32>().ok()?[0] = scale;
    Some((slot, t.into_arc_tensor()))
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

    fn execute(&self, inputs: Named, outputs: &[String]) -> Result<Named> {
        let (shapes, values) = self.ordered_inputs(&inputs)?;
        let plan = self.plan_for(&shapes)?;
        let what = format!("failed to run model '{}'", self.model_name);
        let result = match &self.executor {
            Some(ex) => guarded(&what, || {
                multithread_tract_scope(ex.clone(), || plan.run(values))
            }),
            None => guarded(&what, || plan.run(values)),
        }?;
        let produced = self.outputs.iter().cloned().zip(result);
        Ok(crate::util::wanted(produced, outputs)
            .into_iter()
            .map(|(name, value)| (name, MyTensor::from_tract(value.into_tensor())))
            .collect())
    }
}
