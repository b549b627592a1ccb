//! The GPU executable: per distinct set of input shapes, a [`Program`] lowered from tract's
//! decluttered graph, its weights uploaded once, and a pool of instances (stream, page-locked
//! staging buffer), one per concurrent execution, each running in an activation arena taken
//! from the model's, which the plans of every shape share ([`Arenas`]).

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use parking_lot::Mutex;
use tract_onnx::prelude::*;

use super::device::{DevPtr, Device, DeviceError, DeviceResult};
use super::kernels::Kernel;
use super::retype::{Plan, Retyping};
use super::ExecutionReport;
use crate::error::{Error, ErrorKind, Result};
use crate::execution::lower::{self, Program, Step, Storage, ValueId};
use crate::execution::tract::{Bound, Plans};
use crate::execution::{Executable, Named};
use crate::tensor::Tensor as MyTensor;
use crate::util::lru::Lru;

/// The outputs of each image of a group, or why the group failed.
type GroupResult = Option<DeviceResult<Vec<Vec<TValue>>>>;

/// One model version on a device.
pub(crate) struct ProgramExecutable {
    plans: Plans,
    device: &'static dyn Device,
    /// The model batches (`max_batch_size > 0`): axis 0 of each input is the batch, which a
    /// device may run image by image ([`Device::side_by_side`]).
    batching: bool,
    /// Whether the graph keeps the images of a batch apart ([`lower::batch::separable`]),
    /// read once, at the first batch's shapes.
    images_apart: std::sync::OnceLock<bool>,
    /// Plans by input shapes.
    cache: Mutex<Lru<Vec<TVec<usize>>, Arc<GpuPlan>>>,
    last_report: Mutex<Option<ExecutionReport>>,
    /// Weights on the device by (content hash, bytes), shared by the plans of every shape
    /// (a new input shape uploads only the constants that differ).
    weights: Mutex<HashMap<(u64, usize), DevPtr>>,
    /// Whether a new shape bound from the symbolic graph is planned with its constants
    /// folded only ([`Bound::Folded`]), decided at the first bound shape: when that graph
    /// lowers to a program doing the same work as the decluttered one ([`same_work`]).
    fold_only: std::sync::OnceLock<bool>,
    arenas: Arc<Arenas>,
    /// How far a new shape of a graph without a symbolic form may be planned by re-typing
    /// the graph decluttered at the first ([`super::retype`]).
    retyping: Mutex<Retyping>,
}

impl Drop for ProgramExecutable {
    fn drop(&mut self) {
        // The plans (and their arenas) go with the cache; no execution runs while `self` drops.
        self.cache.get_mut().clear();
        for (_, p) in self.weights.get_mut().drain() {
            self.device.free(p);
        }
    }
}

struct Instance {
    /// The arena base `params` point into (0: not patched yet); the arena itself is held
    /// only while the instance runs (`held`), else it is back with the model's [`Arenas`].
    arena: DevPtr,
    held: Option<(DevPtr, usize)>,
    stream: u64,
    staging: *mut u8,
    /// The parameter bytes of each launch of the program, in order, with this instance's
    /// device addresses patched in (they never change while the instance lives).
    params: Vec<Vec<u8>>,
}

// SAFETY: an instance is used by one execution at a time (taken out of the pool).
unsafe impl Send for Instance {}

struct GpuPlan {
    program: Program,
    device: &'static dyn Device,
    /// The program's report, with what building the plan found (device, uploads).
    report: ExecutionReport,
    /// Device addresses of `program.weights` (owned by the executable's weight cache).
    weights: Vec<DevPtr>,
    /// Staging offset of each step (used by the copy steps only).
    staging: Vec<usize>,
    staging_bytes: usize,
    pool: Mutex<Vec<Instance>>,
    arenas: Arc<Arenas>,
}

/// The activation arenas of one model version, shared by the plans of every input shape: an
/// execution takes one at least as large as its plan's and gives it back when done. So a
/// model holds as many arenas as it ran executions at once (sized for the largest shapes),
/// not one per cached shape, and a new shape's first run writes into memory already faulted
/// in (a fresh 73 MB arena, PaddleOCR's detector at 736x1280, took ~30 ms to zero and fault
/// in, a third of planning that shape). A plan reads nothing of its arena it did not write
/// in the same run, as it already did when its instance ran again.
struct Arenas {
    device: &'static dyn Device,
    free: Mutex<Vec<(DevPtr, usize)>>,
}

impl Arenas {
    /// An arena of at least `bytes`: the smallest free one that is large enough, else a new
    /// one (the largest free one freed first, so there are never more arenas than ran at
    /// once).
    fn take(&self, bytes: usize) -> DeviceResult<(DevPtr, usize)> {
        let mut free = self.free.lock();
        let fits = (0..free.len())
            .filter(|&i| free[i].1 >= bytes)
            .min_by_key(|&i| free[i].1);
        if let Some(i) = fits {
            return Ok(free.swap_remove(i));
        }
        if let Some(i) = (0..free.len()).max_by_key(|&i| free[i].1) {
            self.device.free(free.swap_remove(i).0);
        }
        drop(free);
        Ok((self.device.alloc(bytes)?, bytes))
    }

    fn give(&self, arena: (DevPtr, usize)) {
        self.free.lock().push(arena);
    }
}

impl Drop for Arenas {
    fn drop(&mut self) {
        for (p, _) in self.free.get_mut().drain(..) {
            self.device.free(p);
        }
    }
}

impl Drop for GpuPlan {
    fn drop(&mut self) {
        for i in std::mem::take(self.pool.get_mut()) {
            self.free_instance(i);
        }
    }
}

/// Runs `f` (tract, on the host) on the host values `ins`, its panics caught.
fn run_cpu(
    what: &str,
    host: &[Option<TValue>],
    ins: &[ValueId],
    f: impl FnOnce(TVec<TValue>) -> TractResult<TVec<TValue>>,
) -> DeviceResult<TVec<TValue>> {
    let args = ins
        .iter()
        .map(|v| {
            host[*v]
                .clone()
                .ok_or_else(|| missing(&format!("an input of {what}")))
        })
        .collect::<DeviceResult<TVec<_>>>()?;
    catch_unwind(AssertUnwindSafe(|| f(args)))
        .map_err(|_| DeviceError::Cpu(format!("{what} panicked")))?
        .map_err(|e| DeviceError::Cpu(format!("{what}: {e:#}")))
}

/// A value the program should have computed before this step (a lowering bug).
fn missing(what: &str) -> DeviceError {
    DeviceError::Internal(format!("{what} was not computed"))
}

fn device_error(model: &str, device: &dyn Device, what: &str, e: DeviceError) -> Error {
    let kind = match e {
        DeviceError::OutOfMemory { .. } | DeviceError::HostOutOfMemory { .. } => {
            ErrorKind::ResourceExhausted
        }
        // The context is gone for good: the device is unavailable, not the request wrong.
        DeviceError::Fault { .. } | DeviceError::Lost(_) => ErrorKind::Unavailable,
        _ => ErrorKind::Execution,
    };
    Error::new(
        kind,
        format!("model '{model}' on {}: {what}: {e}", device.describe()),
    )
}

/// Each copy step's offset in the page-locked staging buffer, and the buffer's size. A slot is
/// in use from its copy until the stream is next synchronised, which `run` does before each
/// CPU step that follows a copy (`sync_staging`) and at the end: the copies between two such
/// points are laid out side by side, and each group starts again at offset 0.
fn staging_layout(program: &Program) -> (Vec<usize>, usize) {
    let mut staging = vec![0; program.steps.len()];
    let (mut group, mut most) = (0usize, 0usize);
    for (i, s) in program.steps.iter().enumerate() {
        let v = match s {
            Step::UploadInput { value, .. } | Step::Upload { value } | Step::Download { value } => {
                *value
            }
            Step::Cpu { .. } | Step::CpuIsland { .. } => {
                group = 0;
                continue;
            }
            _ => continue,
        };
        staging[i] = group;
        group += program.values[v].bytes().div_ceil(64) * 64;
        most = most.max(group);
    }
    (staging, most)
}

impl ProgramExecutable {
    pub(crate) fn new(
        plans: Plans,
        device: &'static dyn Device,
        batching: bool,
        capacity: usize,
    ) -> Self {
        ProgramExecutable {
            plans,
            device,
            batching,
            images_apart: std::sync::OnceLock::new(),
            cache: Mutex::new(Lru::new(capacity)),
            last_report: Mutex::new(None),
            weights: Mutex::new(HashMap::new()),
            fold_only: std::sync::OnceLock::new(),
            retyping: Mutex::new(Retyping::default()),
            arenas: Arc::new(Arenas {
                device,
                free: Mutex::new(Vec::new()),
            }),
        }
    }

    /// Whether new shapes are planned from the bound graph with its constants only folded
    /// (`None`: not decided yet, no shape bound from the symbolic graph).
    #[cfg(test)]
    pub(crate) fn plans_by_folding(&self) -> Option<bool> {
        self.fold_only.get().copied()
    }

    /// The activation arenas this model holds (none is in use between executions).
    #[cfg(test)]
    pub(crate) fn arenas_held(&self) -> usize {
        self.arenas.free.lock().len()
    }

    /// Whether new shapes are planned by re-typing: refused (`Some(false)`), checked for
    /// some dimension (`Some(true)`), or not decided yet; and how many were.
    #[cfg(test)]
    pub(crate) fn plans_by_retyping(&self) -> (Option<bool>, usize) {
        self.retyping.lock().state()
    }

    /// The graph at `shapes`, typed and simplified for the lowering, lowered: bound from the
    /// symbolic graph where it binds (its constants only folded once that proved to give as
    /// good a program), else typed and decluttered from the start.
    fn lowered(&self, shapes: &[TVec<usize>]) -> Result<Program> {
        let lower = |typed: TypedModel| {
            let m = self.plans.model_name();
            catch_unwind(AssertUnwindSafe(|| lower::lower(typed)))
                .map_err(|_| {
                    Error::new(
                        ErrorKind::Execution,
                        format!("model '{m}': building the GPU plan panicked"),
                    )
                })?
                .map_err(|e| {
                    Error::new(
                        ErrorKind::Unsupported,
                        format!("model '{m}' cannot run on the GPU: {e:#}"),
                    )
                })
        };
        if self.fold_only.get() == Some(&true) {
            // (A folded graph the lowering refuses at some shape falls back to the whole
            // declutter below.)
            if let Some(Ok(program)) = self.plans.bind_symbolic(shapes, Bound::Folded).map(lower) {
                return Ok(program);
            }
        }
        let Some(typed) = self.plans.bind_symbolic(shapes, Bound::Decluttered) else {
            // No symbolic form: re-typed from the first shape's graph as far as that was
            // checked to give the same program, else typed and decluttered from the start.
            let plan = self.retyping.lock().plan(shapes);
            if let Plan::Retype(graph) = &plan {
                if let Some(Ok(program)) = self.plans.retyped(graph, shapes).map(lower) {
                    self.retyping.lock().used();
                    return Ok(program);
                }
            }
            let program = lower(self.plans.decluttered_from_start(shapes)?)?;
            match plan {
                Plan::Declutter => self.retyping.lock().first(shapes, &program),
                // Re-typing failed where it was checked: refused, not tried again.
                Plan::Retype(_) => self.retyping.lock().checked(shapes, &program, None),
                Plan::Check(graph) => {
                    let retyped = self
                        .plans
                        .retyped(&graph, shapes)
                        .and_then(|g| lower(g).ok());
                    self.retyping
                        .lock()
                        .checked(shapes, &program, retyped.as_ref());
                }
            }
            return Ok(program);
        };
        let program = lower(typed)?;
        if self.fold_only.get().is_none() {
            let same = self
                .plans
                .bind_symbolic(shapes, Bound::Folded)
                .and_then(|folded| lower(folded).ok())
                .is_some_and(|folded| same_work(&folded, &program));
            let _ = self.fold_only.set(same);
        }
        Ok(program)
    }

    fn plan_for(&self, shapes: &[TVec<usize>]) -> Result<Arc<GpuPlan>> {
        if let Some(plan) = self.cache.lock().get(shapes) {
            return Ok(plan);
        }
        let m = self.plans.model_name();
        let program = self.lowered(shapes)?;
        let mut report = program.report.clone();
        report.device = self.device.describe();
        if report.cpu_nodes.is_empty() {
            tracing::info!(
                "model '{m}' for {shapes:?}: {} nodes on {}, {} launches, no CPU fallback",
                report.gpu_nodes,
                report.device,
                report.launches
            );
        } else {
            tracing::warn!(
                "model '{m}' for {shapes:?}: {} nodes fall back to the CPU ({} host-device copies per inference): {}",
                report.cpu_nodes.len(),
                report.intermediate_copies,
                report.cpu_nodes.join(", ")
            );
        }
        let (weights, uploaded) = self
            .upload_weights(&program.weights)
            .map_err(|e| device_error(m, self.device, "uploading the weights", e))?;
        report.uploaded_weight_bytes = uploaded;
        let (staging, staging_bytes) = if self.device.direct_copies() {
            (vec![0; program.steps.len()], 0)
        } else {
            staging_layout(&program)
        };
        report.staging_bytes = staging_bytes;
        *self.last_report.lock() = Some(report.clone());
        let plan = Arc::new(GpuPlan {
            program,
            device: self.device,
            report,
            weights,
            staging,
            staging_bytes,
            pool: Mutex::new(Vec::new()),
            arenas: self.arenas.clone(),
        });
        self.cache.lock().insert(shapes.to_vec(), plan.clone());
        Ok(plan)
    }

    /// The device addresses of `program_weights`, uploading those no plan of this model
    /// uploaded yet (by content), and the bytes uploaded now.
    fn upload_weights(
        &self,
        program_weights: &[Arc<Tensor>],
    ) -> DeviceResult<(Vec<DevPtr>, usize)> {
        let mut weights = Vec::with_capacity(program_weights.len());
        let mut uploaded = 0usize;
        {
            let mut cache = self.weights.lock();
            let stream = self.device.new_stream()?;
            let mut result = Ok(());
            for w in program_weights {
                let bytes = w.as_bytes();
                let key = (super::kernels::fnv1a(&[bytes]), bytes.len());
                if let Some(p) = cache.get(&key) {
                    weights.push(*p);
                    continue;
                }
                let p = match self.device.alloc(bytes.len()) {
                    Ok(p) => p,
                    Err(e) => {
                        result = Err(e);
                        break;
                    }
                };
                cache.insert(key, p);
                weights.push(p);
                uploaded += bytes.len();
                if let Err(e) = self.device.upload(stream, p, bytes.as_ptr(), bytes.len()) {
                    result = Err(e);
                    break;
                }
            }
            let synced = self.device.sync(stream);
            self.device.free_stream(stream);
            // What was uploaded stays in the cache (freed with the executable), even on error.
            result.and(synced)?;
        }
        Ok((weights, uploaded))
    }

    /// Builds the plan for the input shapes the config fixes (batch 1 for a batching model),
    /// if it fixes them all: the load then uploads the weights, logs the nodes that fall back
    /// to the CPU, and fails on a model too large for the device.
    pub(crate) fn prepare(&self, config: &crate::config::ModelConfig) -> Result<()> {
        let mut shapes = Vec::new();
        for name in self.plans.input_names() {
            let Some(mut full) = config.model_input_dims(name) else {
                return Ok(());
            };
            if config.max_batch_size > 0 {
                full[0] = 1;
            }
            if full.iter().any(|&d| d < 0) {
                return Ok(());
            }
            shapes.push(full.iter().map(|&d| d as usize).collect::<TVec<usize>>());
        }
        match self.plan_for(&shapes) {
            Ok(_) => Ok(()),
            // Too large for the device: the load fails, naming the model.
            Err(e) if e.kind() == ErrorKind::ResourceExhausted => Err(e),
            // Anything else is reported by the requests that hit it.
            Err(e) => {
                tracing::warn!(
                    "model '{}': no GPU plan at load: {e}",
                    self.plans.model_name()
                );
                Ok(())
            }
        }
    }

    /// Times the kernels of the plan for `shapes` alone (no host copies): one full run on
    /// zero inputs first, then `iters` rounds of every launch, synchronised at the end.
    pub(crate) fn time_kernels(
        &self,
        shapes: &[TVec<usize>],
        iters: u32,
    ) -> Result<std::time::Duration> {
        let m = self.plans.model_name();
        let plan = self.plan_for(shapes)?;
        let inst = plan
            .instance()
            .map_err(|e| device_error(m, self.device, "preparing an instance", e))?;
        let zeros: Vec<TValue> = shapes
            .iter()
            .map(|s| Tensor::zero::<f32>(s).map(|t| t.into_tvalue()))
            .collect::<TractResult<_>>()
            .map_err(|e| Error::new(ErrorKind::InvalidInput, e.to_string()))?;
        let timed = (|| {
            plan.run(plan.device, &inst, &zeros)?;
            let started = std::time::Instant::now();
            for _ in 0..iters {
                for (kernel, grid, block, params) in plan.launches(&inst) {
                    self.device
                        .launch(inst.stream, kernel, grid, block, params)?;
                }
            }
            self.device.sync(inst.stream)?;
            Ok::<_, DeviceError>(started.elapsed())
        })();
        plan.release(inst);
        timed.map_err(|e| device_error(m, self.device, "timing the kernels", e))
    }

    /// The report of the plan used last.
    pub(crate) fn report(&self) -> Option<ExecutionReport> {
        self.last_report.lock().clone()
    }
}

impl GpuPlan {
    /// An instance to run on, from the pool or new, holding an arena from the model's
    /// [`Arenas`] (its parameters patched again where that arena is another than last time).
    fn instance(&self) -> DeviceResult<Instance> {
        let pooled = self.pool.lock().pop();
        let mut inst = match pooled {
            Some(i) => i,
            None => self.new_instance()?,
        };
        let arena = match self.arenas.take(self.program.report.arena_bytes) {
            Ok(a) => a,
            Err(e) => {
                self.free_instance(inst);
                return Err(e);
            }
        };
        inst.held = Some(arena);
        if inst.arena != arena.0 {
            inst.arena = arena.0;
            if let Err(e) = self.patch(&mut inst) {
                self.free_instance(inst);
                return Err(e);
            }
        }
        Ok(inst)
    }

    fn new_instance(&self) -> DeviceResult<Instance> {
        let staging = self.device.alloc_host(self.staging_bytes)?;
        let stream = match self.device.new_stream() {
            Ok(s) => s,
            Err(e) => {
                self.device.free_host(staging, self.staging_bytes);
                return Err(e);
            }
        };
        Ok(Instance {
            arena: 0,
            held: None,
            stream,
            staging,
            params: Vec::new(),
        })
    }

    /// `inst`'s parameter bytes for each launch, with its arena's and the weights' addresses.
    fn patch(&self, inst: &mut Instance) -> DeviceResult<()> {
        let mut all = Vec::with_capacity(inst.params.len());
        for step in &self.program.steps {
            if let Step::Launch { params, fixups, .. } = step {
                let mut bytes = params.clone();
                for (at, v) in fixups {
                    let ptr = self.ptr(inst, *v)?;
                    bytes[*at..*at + 8].copy_from_slice(&ptr.to_le_bytes());
                }
                all.push(bytes);
            }
        }
        inst.params = all;
        Ok(())
    }

    /// `inst` back to the pool, its arena back to the model's.
    fn release(&self, mut inst: Instance) {
        if let Some(arena) = inst.held.take() {
            self.arenas.give(arena);
        }
        self.pool.lock().push(inst);
    }

    /// The program's launches with `inst`'s parameter bytes.
    fn launches<'a>(
        &'a self,
        inst: &'a Instance,
    ) -> impl Iterator<Item = (Kernel, [u32; 3], [u32; 3], &'a [u8])> + 'a {
        self.program
            .steps
            .iter()
            .filter_map(|s| match s {
                Step::Launch {
                    kernel,
                    grid,
                    block,
                    ..
                } => Some((*kernel, *grid, *block)),
                _ => None,
            })
            .zip(&inst.params)
            .map(|((k, g, b), p)| (k, g, b, p.as_slice()))
    }

    fn free_instance(&self, inst: Instance) {
        if let Some((arena, _)) = inst.held {
            self.device.free(arena);
        }
        self.device.free_host(inst.staging, self.staging_bytes);
        self.device.free_stream(inst.stream);
    }

    fn ptr(&self, inst: &Instance, v: ValueId) -> DeviceResult<DevPtr> {
        let root = self.program.values[v].root;
        match self.program.values[root].storage {
            Storage::Arena(o) => Ok(inst.arena + o as u64),
            Storage::Weight(i) => Ok(self.weights[i]),
            Storage::None => Err(DeviceError::Internal(format!(
                "value {v} has no device storage"
            ))),
        }
    }

    // Long: the program's interpreter, one arm per step kind, sharing the staging and
    // pending-download state; each arm is a few lines.
    /// Runs the program; `inputs` are in the model's input order.
    /// Runs the program on `dev`: the plan's device, or one that shares its memory
    /// ([`super::device::SideBySide`]).
    fn run(
        &self,
        dev: &dyn Device,
        inst: &Instance,
        inputs: &[TValue],
    ) -> DeviceResult<Vec<TValue>> {
        let p = &self.program;
        let mut host: Vec<Option<TValue>> = vec![None; p.values.len()];
        for (v, t) in &p.host_consts {
            host[*v] = Some(TValue::from_const(t.clone()));
        }
        let mut pending: Vec<(ValueId, usize)> = Vec::new();
        // Whether a copy used the staging buffer since the stream was last synchronised.
        let mut staged = false;
        // Waits for the copies in flight, so that their staging slots can be reused (see
        // `staging_layout`), and moves the downloaded values to the host.
        let sync_staging = |pending: &mut Vec<(ValueId, usize)>,
                            host: &mut Vec<Option<TValue>>,
                            staged: &mut bool| {
            if !std::mem::take(staged) {
                return Ok::<(), DeviceError>(());
            }
            dev.sync(inst.stream)?;
            for (v, off) in pending.drain(..) {
                // SAFETY: the staging slot holds the value just downloaded (stream synced).
                host[v] = Some(unsafe { host_value(p, v, inst.staging.add(off)) }?);
            }
            Ok(())
        };
        let mut launch = 0;
        for (i, step) in p.steps.iter().enumerate() {
            match step {
                Step::UploadInput { input, value } | Step::HostInput { input, value }
                    if inputs.get(*input).is_none() =>
                {
                    return Err(DeviceError::Internal(format!(
                        "input {input} missing for value {value}"
                    )));
                }
                Step::UploadInput { input, value } => {
                    self.stage_upload(dev, inst, i, *value, &inputs[*input])?;
                    staged = true;
                }
                Step::HostInput { input, value } => host[*value] = Some(inputs[*input].clone()),
                Step::Upload { value } => {
                    let t = host[*value]
                        .clone()
                        .ok_or_else(|| missing("a value to upload"))?;
                    self.stage_upload(dev, inst, i, *value, &t)?;
                    staged = true;
                }
                // Host memory is the device's: the value is copied out as it is.
                Step::Download { value } if dev.direct_copies() => {
                    // SAFETY: the value's slot is live in the arena and `download` is a
                    // synchronous copy out of it (`direct_copies`).
                    host[*value] = Some(unsafe {
                        host_value(p, *value, self.ptr(inst, *value)? as *const u8)
                    }?);
                }
                Step::Download { value } => {
                    let off = self.staging[i];
                    let bytes = p.values[*value].bytes();
                    // SAFETY: the slot has room for the value (laid out above).
                    let dst = unsafe { inst.staging.add(off) };
                    dev.download(inst.stream, self.ptr(inst, *value)?, dst, bytes)?;
                    pending.push((*value, off));
                    staged = true;
                }
                Step::Launch {
                    kernel,
                    grid,
                    block,
                    ..
                } => {
                    dev.launch(inst.stream, *kernel, *grid, *block, &inst.params[launch])?;
                    launch += 1;
                }
                Step::CpuIsland {
                    plan: island,
                    inputs: ins,
                    outputs: outs,
                } => {
                    sync_staging(&mut pending, &mut host, &mut staged)?;
                    let res = run_cpu("a CPU island", &host, ins, |args| island.run(args))?;
                    for (v, t) in outs.iter().zip(res) {
                        host[*v] = Some(t);
                    }
                }
                Step::Cpu {
                    node,
                    inputs: ins,
                    outputs: outs,
                } => {
                    sync_staging(&mut pending, &mut host, &mut staged)?;
                    let node = p.model.node(*node);
                    let what = format!("CPU node '{}'", node.name);
                    let res = run_cpu(&what, &host, ins, |args| {
                        node.op.eval_out_of_plan(args)?.ok_or_else(|| {
                            tract_onnx::tract_core::internal::format_err!(
                                "it only runs inside a plan"
                            )
                        })
                    })?;
                    for (v, t) in outs.iter().zip(res) {
                        host[*v] = Some(t);
                    }
                }
            }
        }
        sync_staging(&mut pending, &mut host, &mut staged)?;
        dev.sync(inst.stream)?;
        p.outputs
            .iter()
            .map(|v| host[*v].clone().ok_or_else(|| missing("an output")))
            .collect()
    }

    fn stage_upload(
        &self,
        dev: &dyn Device,
        inst: &Instance,
        step: usize,
        v: ValueId,
        t: &TValue,
    ) -> DeviceResult<()> {
        let want = &self.program.values[v];
        if t.datum_type() != DatumType::F32 || t.shape() != want.shape.as_slice() {
            return Err(DeviceError::Internal(format!(
                "value {v}: expected f32 {:?}, got {:?} {:?}",
                want.shape,
                t.datum_type(),
                t.shape()
            )));
        }
        let bytes = t.as_bytes();
        if dev.direct_copies() {
            // A synchronous copy straight from the request's tensor.
            return dev.upload(inst.stream, self.ptr(inst, v)?, bytes.as_ptr(), bytes.len());
        }
        let off = self.staging[step];
        // SAFETY: the slot was sized for this value; the staging buffer outlives the copy
        // (the stream is synchronised before the instance is reused or freed).
        unsafe {
            let dst = inst.staging.add(off);
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), dst, bytes.len());
            dev.upload(inst.stream, self.ptr(inst, v)?, dst, bytes.len())
        }
    }
}

/// Whether two programs do as much work: the same steps, each launch of the same kernel,
/// the same arena and CPU nodes. (Their parameters may differ where the graphs spell the
/// same operator differently, a unit axis kept or dropped; what they compute is the same,
/// since each graph is the same model's, only simplified differently.)
fn same_work(a: &Program, b: &Program) -> bool {
    let step = |x: &Step, y: &Step| match (x, y) {
        (Step::Launch { kernel, .. }, Step::Launch { kernel: k2, .. }) => kernel == k2,
        (x, y) => std::mem::discriminant(x) == std::mem::discriminant(y),
    };
    a.steps.len() == b.steps.len()
        && a.steps.iter().zip(&b.steps).all(|(x, y)| step(x, y))
        && a.report.arena_bytes == b.report.arena_bytes
        && a.report.cpu_nodes == b.report.cpu_nodes
}

/// Value `v` of `p` copied from `src` (its f32 data, in host memory) into a host tensor.
///
/// # Safety
/// `src` holds the value's bytes (`p.values[v].bytes()`), readable now.
unsafe fn host_value(p: &Program, v: ValueId, src: *const u8) -> DeviceResult<TValue> {
    let val = &p.values[v];
    let n = val.shape.iter().product::<usize>();
    let mut data = vec![0f32; n];
    std::ptr::copy_nonoverlapping(src, data.as_mut_ptr() as *mut u8, n * 4);
    let t = tract_ndarray::ArrayD::from_shape_vec(val.shape.as_slice(), data)
        .map_err(|e| DeviceError::Internal(e.to_string()))?;
    Ok(t.into_tvalue())
}

impl Executable for ProgramExecutable {
    fn metadata(&self) -> Option<&std::collections::BTreeMap<String, String>> {
        self.plans.metadata()
    }

    fn execution_report(&self) -> Option<ExecutionReport> {
        self.report()
    }

    fn time_kernels(
        &self,
        shapes: &[Vec<usize>],
        iters: u32,
    ) -> Option<Result<std::time::Duration>> {
        let shapes: Vec<TVec<usize>> = shapes.iter().map(|s| s.iter().copied().collect()).collect();
        Some(ProgramExecutable::time_kernels(self, &shapes, iters))
    }

    fn execute(&self, inputs: Named, outputs: &[String]) -> Result<Named> {
        let (shapes, values) = self.plans.ordered_inputs(&inputs)?;
        let m = self.plans.model_name();
        let produced = match self.images_side_by_side(&shapes, &values)? {
            Some(values) => values,
            None => {
                let plan = match self.plan_for(&shapes) {
                    Ok(plan) => plan,
                    // A graph the lowering refuses (an operator that keeps state, a shape
                    // only known while running) runs on tract's CPU plan instead, with a
                    // warning; device errors (memory, compilation) stay errors.
                    Err(e) if e.kind() == ErrorKind::Unsupported => {
                        tracing::warn!("{e}; running on the CPU");
                        *self.last_report.lock() = Some(ExecutionReport {
                            device: "cpu".into(),
                            cpu_nodes: vec![format!("the whole model ({e})")],
                            ..Default::default()
                        });
                        return self.plans.execute(inputs, outputs);
                    }
                    Err(e) => return Err(e),
                };
                *self.last_report.lock() = Some(plan.report.clone());
                plan.execute(plan.device, &values)
                    .map_err(|e| device_error(m, plan.device, "execution failed", e))?
            }
        };
        let produced = self.plans.output_names().iter().cloned().zip(produced);
        Ok(crate::util::wanted(produced, outputs)
            .into_iter()
            .map(|(name, value)| (name, MyTensor::from_tract(value.into_tensor())))
            .collect())
    }
}

impl ProgramExecutable {
    /// Runs a batch image by image, the images side by side, where the device does that
    /// faster ([`Device::side_by_side`]) and the graph keeps the images apart
    /// ([`lower::batch::separable`]; a property of the graph, read once, on its first batch's
    /// shapes at a batch of 2): `parts` groups of
    /// `batch / parts` images run at once, each image on its own, then the images left over
    /// one by one on the device's own threads. The outputs are the images' outputs in order,
    /// concatenated along the batch axis. `None` where the batch runs as one.
    fn images_side_by_side(
        &self,
        shapes: &[TVec<usize>],
        values: &[TValue],
    ) -> Result<Option<Vec<TValue>>> {
        let Some(side) = self.device.side_by_side().filter(|_| self.batching) else {
            return Ok(None);
        };
        let batch = match shapes.first().and_then(|s| s.first()) {
            Some(&b) if b >= 2 && shapes.iter().all(|s| s.first() == Some(&b)) => b,
            _ => return Ok(None),
        };
        let at = |b: usize| -> Vec<TVec<usize>> {
            shapes
                .iter()
                .map(|s| std::iter::once(b).chain(s[1..].iter().copied()).collect())
                .collect()
        };
        let apart = match self.images_apart.get() {
            Some(apart) => *apart,
            None => {
                let apart = self.plans.decluttered(&at(2)).is_ok_and(|model| {
                    catch_unwind(AssertUnwindSafe(|| lower::batch::separable(&model, 2)))
                        .unwrap_or(false)
                });
                *self.images_apart.get_or_init(|| apart)
            }
        };
        if !apart {
            return Ok(None);
        }
        let plan = match self.plan_for(&at(1)) {
            Ok(plan) => plan,
            // The batch at once decides (a plan it cannot build falls back there).
            Err(e) if e.kind() == ErrorKind::Unsupported => return Ok(None),
            Err(e) => return Err(e),
        };
        if side.parts <= 1 && plan.report.arena_bytes.saturating_mul(batch) <= side.alone_above {
            return Ok(None);
        }
        let m = self.plans.model_name();
        let image = |i: usize| -> DeviceResult<Vec<TValue>> {
            values
                .iter()
                .map(|v| v.slice(0, i, i + 1).map(|t| t.into_tvalue()))
                .collect::<TractResult<_>>()
                .map_err(|e| DeviceError::Internal(format!("slicing image {i}: {e}")))
        };
        let parts = side.parts.clamp(1, batch);
        let rounds = batch / parts;
        let results: Vec<Mutex<GroupResult>> = (0..parts).map(|_| Mutex::new(None)).collect();
        (side.run)(parts, &|p| {
            let run = || {
                (p * rounds..(p + 1) * rounds)
                    .map(|i| plan.execute(side.device, &image(i)?))
                    .collect::<DeviceResult<Vec<_>>>()
            };
            let r = catch_unwind(AssertUnwindSafe(run))
                .unwrap_or_else(|_| Err(DeviceError::Internal("the executor panicked".into())));
            *results[p].lock() = Some(r);
        });
        let mut images = Vec::with_capacity(batch);
        for r in results {
            let r = r.into_inner().unwrap_or_else(|| {
                Err(DeviceError::Internal(
                    "a group of images did not run".into(),
                ))
            });
            images.extend(r.map_err(|e| device_error(m, plan.device, "execution failed", e))?);
        }
        // The images left over, one at a time on every thread.
        for i in parts * rounds..batch {
            let out = image(i)
                .and_then(|v| plan.execute(plan.device, &v))
                .map_err(|e| device_error(m, plan.device, "execution failed", e))?;
            images.push(out);
        }
        let mut report = plan.report.clone();
        report.images_side_by_side = parts;
        *self.last_report.lock() = Some(report);
        let outputs = images.first().map_or(0, |o| o.len());
        (0..outputs)
            .map(|o| {
                let each: Vec<&Tensor> = images.iter().map(|img| &*img[o]).collect();
                Tensor::stack_tensors(0, &each).map(|t| t.into_tvalue())
            })
            .collect::<TractResult<Vec<_>>>()
            .map(Some)
            .map_err(|e| {
                Error::new(
                    ErrorKind::Execution,
                    format!("model '{m}': concatenating the images' outputs: {e}"),
                )
            })
    }
}

impl GpuPlan {
    /// One run of the program on `dev` ([`GpuPlan::run`]) on an instance from the pool,
    /// which goes back to the pool after a run that succeeded (one that failed may have left
    /// work behind: it is synchronised and freed).
    fn execute(&self, dev: &dyn Device, values: &[TValue]) -> DeviceResult<Vec<TValue>> {
        let inst = self.instance()?;
        let result = catch_unwind(AssertUnwindSafe(|| self.run(dev, &inst, values)))
            .unwrap_or_else(|_| Err(DeviceError::Internal("the executor panicked".into())));
        if result.is_ok() {
            self.release(inst);
        } else {
            let _ = self.device.sync(inst.stream);
            self.free_instance(inst);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::execution::program::device::tests::Faulty;

    /// What a request sees for each device failure: memory is ResourceExhausted (device and
    /// page-locked host alike), a lost context is Unavailable with what to do, the rest is
    /// Execution; each names the model and the device.
    #[test]
    fn device_failures_map_to_the_error_kinds_a_caller_acts_on() {
        let cases = [
            (
                DeviceError::OutOfMemory {
                    bytes: 1 << 40,
                    detail: String::new(),
                },
                ErrorKind::ResourceExhausted,
                "out of device memory",
            ),
            (
                DeviceError::HostOutOfMemory {
                    bytes: 1 << 40,
                    detail: "cuMemHostAlloc".into(),
                },
                ErrorKind::ResourceExhausted,
                "page-locked host memory",
            ),
            (
                DeviceError::Fault {
                    call: "cuStreamSynchronize".into(),
                    detail: "CUDA_ERROR_ILLEGAL_ADDRESS".into(),
                },
                ErrorKind::Unavailable,
                "the GPU context is lost, restart the process",
            ),
            (
                DeviceError::Lost("launching gemm: CUDA_ERROR_ILLEGAL_ADDRESS".into()),
                ErrorKind::Unavailable,
                "restart the process",
            ),
            (
                DeviceError::Driver {
                    call: "cuMemcpyHtoDAsync".into(),
                    detail: "CUDA_ERROR_INVALID_VALUE".into(),
                },
                ErrorKind::Execution,
                "CUDA_ERROR_INVALID_VALUE",
            ),
        ];
        for (e, kind, says) in cases {
            let device = Faulty::new("NVIDIA H200 (sm_90)");
            let err = device_error("east", &device, "running", e);
            assert_eq!(err.kind(), kind, "{err}");
            let text = err.to_string();
            assert!(
                text.starts_with("model 'east' on NVIDIA H200 (sm_90): running: ")
                    && text.contains(says),
                "{text}"
            );
        }
    }
}
