//! From tract's decluttered graph, at concrete shapes, to a [`Program`]: kernel launches with
//! every parameter resolved at load, weights to upload once, aliases for the reshapes, an
//! activation arena laid out by liveness, and per node the device it runs on. A node with no
//! kernel (another data type, an operator not written yet) becomes a CPU step, and the values
//! that cross between the two get explicit copies, which the report counts.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::{bail, format_err};
use tract_onnx::tract_core::ops::array::{
    MultiBroadcastTo, Pad, PadMode, Slice, Tile, TypedConcat,
};
use tract_onnx::tract_core::ops::binary::TypedBinOp;
use tract_onnx::tract_core::ops::change_axes::AxisOp;
use tract_onnx::tract_core::ops::cnn::{Conv, Deconv, KernelFormat, MaxPool, PaddingSpec, SumPool};
use tract_onnx::tract_core::ops::einsum::EinSum;
use tract_onnx::tract_core::ops::element_wise::ElementWiseOp;
use tract_onnx::tract_core::ops::konst::Const;
use tract_onnx::tract_core::ops::nn::{DataFormat, Reduce, Reducer, Softmax};
use tract_onnx::tract_core::ops::source::TypedSource;
use tract_onnx::tract_core::ops::Downsample;

use super::kernels::{self as k, act, bin, bytes_of, Kernel, View, MAX_RANK};
use super::ExecutionReport;

pub(crate) type ValueId = usize;

/// Where a value's bytes live on the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Storage {
    /// In the activation arena of the executing instance, at this byte offset.
    Arena(usize),
    /// An uploaded weight (index into [`Program::weights`]).
    Weight(usize),
    /// Only on the host (CPU-produced, constants no kernel reads).
    None,
}

#[derive(Debug, Clone)]
pub(crate) struct Value {
    pub shape: Vec<usize>,
    pub dt: DatumType,
    /// The value whose storage this one shares (itself, or the source of a reshape).
    pub root: ValueId,
    pub storage: Storage,
}

impl Value {
    pub(crate) fn bytes(&self) -> usize {
        self.shape.iter().product::<usize>() * self.dt.size_of()
    }
}

/// What a kernel parameter pointer refers to.
#[derive(Debug, Clone)]
pub(crate) enum Operand {
    Input(usize),
    Output,
    Const(Arc<Tensor>),
}

/// A launch as planned for one node, before its operands have values.
#[derive(Debug, Clone)]
pub(crate) struct LaunchSpec {
    pub kernel: Kernel,
    pub grid: [u32; 3],
    pub block: [u32; 3],
    pub params: Vec<u8>,
    /// (byte offset of a pointer field, what it points to)
    pub fixups: Vec<(usize, Operand)>,
}

#[derive(Debug, Clone)]
pub(crate) enum Step {
    /// Model input `input` → device value.
    UploadInput { input: usize, value: ValueId },
    /// Model input `input` kept on the host (a type no kernel takes).
    HostInput { input: usize, value: ValueId },
    Launch {
        kernel: Kernel,
        grid: [u32; 3],
        block: [u32; 3],
        params: Vec<u8>,
        fixups: Vec<(usize, ValueId)>,
    },
    /// A CPU-produced value copied to the device.
    Upload { value: ValueId },
    /// A device value copied to the host (for a CPU step or a model output).
    Download { value: ValueId },
    /// A node evaluated by tract on the CPU.
    Cpu {
        node: usize,
        inputs: Vec<ValueId>,
        outputs: Vec<ValueId>,
    },
    /// Consecutive CPU nodes compiled together as one optimised tract sub-model.
    CpuIsland {
        plan: Arc<TypedRunnableModel<TypedModel>>,
        inputs: Vec<ValueId>,
        outputs: Vec<ValueId>,
    },
}

pub(crate) struct Program {
    pub model: Arc<TypedModel>,
    pub values: Vec<Value>,
    pub steps: Vec<Step>,
    pub outputs: Vec<ValueId>,
    /// Host values known at load (constants).
    pub host_consts: Vec<(ValueId, Arc<Tensor>)>,
    /// Weight tensors (f32, contiguous) to upload once.
    pub weights: Vec<Arc<Tensor>>,
    pub arena_bytes: usize,
    pub report: ExecutionReport,
}

fn strides_of(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1usize; shape.len()];
    for d in (0..shape.len().saturating_sub(1)).rev() {
        s[d] = s[d + 1] * shape[d + 1];
    }
    s
}

fn dims6(shape: &[usize]) -> [i32; MAX_RANK] {
    let mut d = [1i32; MAX_RANK];
    for (i, &s) in shape.iter().enumerate() {
        d[i] = s as i32;
    }
    d
}

fn view(offset: usize, strides: &[usize]) -> View {
    let mut v = View {
        offset: offset as i32,
        strides: [0; MAX_RANK],
    };
    for (i, &s) in strides.iter().enumerate() {
        v.strides[i] = s as i32;
    }
    v
}

/// Threads for `n` independent elements: 256 per block, grid-stride beyond 65,535 blocks.
fn grid_1d(n: usize) -> [u32; 3] {
    [n.div_ceil(256).clamp(1, 65_535) as u32, 1, 1]
}

const B256: [u32; 3] = [256, 1, 1];

fn fits_i32(n: usize) -> bool {
    n < i32::MAX as usize
}

/// An activation a convolution or GEMM can take into its epilogue.
struct Fusable {
    node: usize,
    act: i32,
    a: f32,
    b: f32,
}

struct Lowering<'m> {
    model: &'m TypedModel,
    values: Vec<Value>,
    outlet_value: HashMap<OutletId, ValueId>,
    steps: Vec<Step>,
    on_device: Vec<bool>,
    on_host: Vec<bool>,
    host_consts: Vec<(ValueId, Arc<Tensor>)>,
    weights: Vec<Arc<Tensor>>,
    skip: HashSet<usize>,
    outputs: HashSet<OutletId>,
    /// Element-wise nodes fused into one `pointwise_f32` launch: node → its group's members
    /// (eval order; the last one is the group's output). Only groups of two or more.
    pointwise: HashMap<usize, Arc<Vec<usize>>>,
    report: ExecutionReport,
}

/// Builds the program of `model` (decluttered, concrete shapes).
pub(crate) fn lower(model: TypedModel) -> TractResult<Program> {
    let model = Arc::new(model);
    let mut l = Lowering {
        model: &model,
        values: Vec::new(),
        outlet_value: HashMap::new(),
        steps: Vec::new(),
        on_device: Vec::new(),
        on_host: Vec::new(),
        host_consts: Vec::new(),
        weights: Vec::new(),
        skip: HashSet::new(),
        outputs: model.output_outlets()?.iter().copied().collect(),
        pointwise: HashMap::new(),
        report: ExecutionReport::default(),
    };
    let order = model.eval_order()?;
    l.pointwise = l.pointwise_groups(&order)?;
    for id in order {
        l.node(id)?;
    }
    let mut outputs = Vec::new();
    for o in model.output_outlets()? {
        let v = l.value_of(*o)?;
        l.ensure_host(v);
        outputs.push(v);
    }
    let Lowering {
        values,
        mut steps,
        host_consts,
        weights,
        mut report,
        ..
    } = l;
    let mut values = values;
    let (islanded, islands) = form_islands(&model, steps, &values, &outputs);
    steps = islanded;
    report.cpu_islands = islands;
    let arena_bytes = layout_arena(&mut values, &steps, &outputs);
    for s in &steps {
        if let Step::Launch { kernel, .. } = s {
            report.launches += 1;
            *report.kernels.entry(kernel.name().to_string()).or_default() += 1;
        }
    }
    let up = steps
        .iter()
        .filter(|s| matches!(s, Step::Upload { .. }))
        .count();
    let inputs = steps
        .iter()
        .filter(|s| matches!(s, Step::UploadInput { .. }))
        .count();
    let down = steps
        .iter()
        .filter(|s| matches!(s, Step::Download { .. }))
        .count();
    let output_downloads = steps
        .iter()
        .filter(|s| matches!(s, Step::Download { value } if outputs.contains(value)))
        .count();
    report.uploads = up + inputs;
    report.downloads = down;
    report.intermediate_copies = up + down - output_downloads;
    report.weight_bytes = weights.iter().map(|w| w.len() * 4).sum();
    report.arena_bytes = arena_bytes;
    Ok(Program {
        model: model.clone(),
        values,
        steps,
        outputs,
        host_consts,
        weights,
        arena_bytes,
        report,
    })
}

/// Runs of CPU steps (with the downloads between them, which move before the run: the values
/// they read were computed before it) become one tract sub-model, optimised as tract
/// optimises a whole CPU model (a single node too: some tract ops only run inside a plan). A
/// run that does not compile stays node by node.
/// Returns the new steps and the number of islands.
fn form_islands(
    model: &TypedModel,
    steps: Vec<Step>,
    values: &[Value],
    outputs: &[ValueId],
) -> (Vec<Step>, usize) {
    let reads = |s: &Step| -> Vec<ValueId> {
        match s {
            Step::Launch { fixups, .. } => fixups.iter().map(|(_, v)| *v).collect(),
            Step::Upload { value } | Step::Download { value } => vec![*value],
            Step::Cpu { inputs, .. } | Step::CpuIsland { inputs, .. } => inputs.clone(),
            _ => vec![],
        }
    };
    let mut out = Vec::with_capacity(steps.len());
    let mut islands = 0;
    let mut i = 0;
    while i < steps.len() {
        if !matches!(steps[i], Step::Cpu { .. }) {
            out.push(steps[i].clone());
            i += 1;
            continue;
        }
        let mut end = i;
        while end < steps.len() && matches!(steps[end], Step::Cpu { .. } | Step::Download { .. }) {
            end += 1;
        }
        while matches!(steps[end - 1], Step::Download { .. }) {
            end -= 1;
        }
        let run = &steps[i..end];
        let cpu: Vec<&Step> = run
            .iter()
            .filter(|s| matches!(s, Step::Cpu { .. }))
            .collect();
        let island = if !cpu.is_empty() {
            let later: std::collections::HashSet<ValueId> = steps[end..]
                .iter()
                .flat_map(reads)
                .chain(outputs.iter().copied())
                .collect();
            compile_island(model, &cpu, values, &later)
        } else {
            None
        };
        match island {
            Some(step) => {
                out.extend(
                    run.iter()
                        .filter(|s| matches!(s, Step::Download { .. }))
                        .cloned(),
                );
                out.push(step);
                islands += 1;
            }
            None => out.extend(run.iter().cloned()),
        }
        i = end;
    }
    (out, islands)
}

/// The CPU steps `cpu` as one optimised tract model: its inputs are the values they read that
/// none of them produces, its outputs those of their values read in `later`.
fn compile_island(
    model: &TypedModel,
    cpu: &[&Step],
    values: &[Value],
    later: &std::collections::HashSet<ValueId>,
) -> Option<Step> {
    let build = || -> TractResult<Step> {
        let mut sub = TypedModel::default();
        let mut outlet: HashMap<ValueId, OutletId> = HashMap::new();
        let mut inputs = Vec::new();
        let mut produced = Vec::new();
        for s in cpu {
            let Step::Cpu {
                node,
                inputs: ins,
                outputs: outs,
            } = s
            else {
                continue;
            };
            let mut wires = TVec::new();
            for v in ins {
                if !outlet.contains_key(v) {
                    let val = &values[*v];
                    let fact = TypedFact::dt_shape(val.dt, val.shape.as_slice());
                    let o = sub.add_source(format!("island_input_{v}"), fact)?;
                    outlet.insert(*v, o);
                    inputs.push(*v);
                }
                wires.push(outlet[v]);
            }
            let n = model.node(*node);
            let wired = sub.wire_node(n.name.clone(), n.op.clone(), &wires)?;
            for (v, o) in outs.iter().zip(wired) {
                outlet.insert(*v, o);
                produced.push(*v);
            }
        }
        let outputs: Vec<ValueId> = produced.into_iter().filter(|v| later.contains(v)).collect();
        sub.set_output_outlets(&outputs.iter().map(|v| outlet[v]).collect::<Vec<_>>())?;
        let plan = sub.into_optimized()?.into_runnable()?;
        Ok(Step::CpuIsland {
            plan: Arc::new(plan),
            inputs,
            outputs,
        })
    };
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(build)) {
        Ok(Ok(step)) => Some(step),
        Ok(Err(e)) => {
            tracing::debug!("CPU island not compiled, node by node instead: {e:#}");
            None
        }
        Err(_) => None,
    }
}

/// Gives every arena root an offset: values are placed when first written and their space is
/// reused after their last read (model outputs live to the end). First fit, 256-byte aligned.
fn layout_arena(values: &mut [Value], steps: &[Step], outputs: &[ValueId]) -> usize {
    let n = values.len();
    let mut first = vec![usize::MAX; n];
    let mut last = vec![0usize; n];
    let mut touch = |v: ValueId, at: usize, values: &[Value]| {
        let r = values[v].root;
        first[r] = first[r].min(at);
        last[r] = last[r].max(at);
    };
    for (i, s) in steps.iter().enumerate() {
        match s {
            Step::UploadInput { value, .. } | Step::Upload { value } | Step::Download { value } => {
                touch(*value, i, values)
            }
            Step::Launch { fixups, .. } => {
                for (_, v) in fixups {
                    touch(*v, i, values)
                }
            }
            _ => {}
        }
    }
    for &o in outputs {
        let r = values[o].root;
        if first[r] != usize::MAX {
            last[r] = steps.len();
        }
    }
    // Roots in the order they are first written.
    let mut roots: Vec<ValueId> = (0..n)
        .filter(|&v| values[v].root == v && values[v].storage == Storage::Arena(0))
        .filter(|&v| first[v] != usize::MAX)
        .collect();
    roots.sort_by_key(|&v| first[v]);
    let mut live: Vec<(usize, usize, usize)> = Vec::new(); // (offset, size, last use)
    let mut top = 0usize;
    for v in roots {
        let size = values[v].bytes().max(1).div_ceil(256) * 256;
        live.retain(|&(_, _, end)| end >= first[v]);
        live.sort_unstable();
        let mut offset = 0usize;
        for &(o, s, _) in &live {
            if o >= offset + size {
                break;
            }
            offset = offset.max(o + s);
        }
        live.push((offset, size, last[v]));
        top = top.max(offset + size);
        values[v].storage = Storage::Arena(offset);
    }
    top
}

impl Lowering<'_> {
    fn value_of(&self, o: OutletId) -> TractResult<ValueId> {
        self.outlet_value
            .get(&o)
            .copied()
            .ok_or_else(|| format_err!("no value for outlet {o:?}"))
    }

    fn new_value(&mut self, shape: &[usize], dt: DatumType, storage: Storage) -> ValueId {
        let id = self.values.len();
        self.values.push(Value {
            shape: shape.to_vec(),
            dt,
            root: id,
            storage,
        });
        self.on_device.push(false);
        self.on_host.push(false);
        id
    }

    fn fact_shape(&self, o: OutletId) -> TractResult<(Vec<usize>, DatumType)> {
        let f = self.model.outlet_fact(o)?;
        let shape = f
            .shape
            .as_concrete()
            .ok_or_else(|| format_err!("symbolic shape at {o:?}"))?
            .to_vec();
        Ok((shape, f.datum_type))
    }

    /// Makes `v` readable by a kernel: constants become weights, CPU values are uploaded.
    fn ensure_device(&mut self, v: ValueId) -> ValueId {
        if self.on_device[v] {
            return v;
        }
        if let Some((_, t)) = self.host_consts.iter().find(|(c, _)| *c == v) {
            let t = t.clone();
            self.weights.push(t);
            self.values[v].storage = Storage::Weight(self.weights.len() - 1);
        } else {
            self.values[v].storage = Storage::Arena(0);
            self.steps.push(Step::Upload { value: v });
        }
        self.on_device[v] = true;
        v
    }

    /// Makes `v` readable on the host (downloads it if only the device has it).
    fn ensure_host(&mut self, v: ValueId) {
        if !self.on_host[v] {
            self.steps.push(Step::Download { value: v });
            self.on_host[v] = true;
        }
    }

    fn node(&mut self, id: usize) -> TractResult<()> {
        if self.skip.contains(&id) {
            return Ok(());
        }
        let node = self.model.node(id);
        if let Some(src) = node.op_as::<TypedSource>() {
            let input = self
                .model
                .input_outlets()?
                .iter()
                .position(|o| o.node == id)
                .ok_or_else(|| format_err!("source not an input"))?;
            let shape = src
                .fact
                .shape
                .as_concrete()
                .ok_or_else(|| format_err!("symbolic input shape"))?;
            let dt = src.fact.datum_type;
            if dt == DatumType::F32 {
                let v = self.new_value(shape, dt, Storage::Arena(0));
                self.steps.push(Step::UploadInput { input, value: v });
                self.on_device[v] = true;
                self.outlet_value.insert(OutletId::new(id, 0), v);
            } else {
                let v = self.new_value(shape, dt, Storage::None);
                self.steps.push(Step::HostInput { input, value: v });
                self.on_host[v] = true;
                self.outlet_value.insert(OutletId::new(id, 0), v);
            }
            return Ok(());
        }
        if let Some(c) = node.op_as::<Const>() {
            let t = c.0.clone();
            let v = self.new_value(t.shape(), t.datum_type(), Storage::None);
            self.on_host[v] = true;
            self.host_consts.push((v, t));
            self.outlet_value.insert(OutletId::new(id, 0), v);
            return Ok(());
        }
        // A reshape of a device value is free: same bytes, another shape.
        if let Some(op) = node.op_as::<AxisOp>() {
            if !matches!(op, AxisOp::Move(..)) {
                let src = self.value_of(node.inputs[0])?;
                if self.on_device[src] {
                    let (shape, dt) = self.fact_shape(OutletId::new(id, 0))?;
                    let root = self.values[src].root;
                    let v = self.new_value(&shape, dt, Storage::Arena(0));
                    self.values[v].root = root;
                    self.values[v].storage = self.values[root].storage;
                    self.on_device[v] = true;
                    self.outlet_value.insert(OutletId::new(id, 0), v);
                    self.report.gpu_nodes += 1;
                    return Ok(());
                }
            }
        }
        if let Some(group) = self.pointwise.get(&id).cloned() {
            // Members before the last are computed inside the last one's launch.
            if group.last() == Some(&id) {
                return self.emit_pointwise(&group);
            }
            return Ok(());
        }
        match self.plan(id) {
            Ok(Some((launches, fused))) => self.emit(id, launches, fused),
            Ok(None) => self.cpu(id),
            Err(e) => {
                tracing::debug!("node '{}' stays on the CPU: {e}", node.name);
                eprintln!("DEBUG {} {e:?}", node.name);
                self.cpu(id)
            }
        }
    }

    fn emit(
        &mut self,
        id: usize,
        launches: Vec<LaunchSpec>,
        fused: Option<Fusable>,
    ) -> TractResult<()> {
        let node = self.model.node(id);
        let inputs: Vec<ValueId> = node
            .inputs
            .iter()
            .map(|i| self.value_of(*i))
            .collect::<TractResult<_>>()?;
        let out_outlet = match &fused {
            Some(f) => OutletId::new(f.node, 0),
            None => OutletId::new(id, 0),
        };
        let (shape, dt) = self.fact_shape(out_outlet)?;
        let mut used_inputs = HashMap::new();
        for l in &launches {
            for (_, o) in &l.fixups {
                if let Operand::Input(i) = o {
                    let v = self.ensure_device(inputs[*i]);
                    used_inputs.insert(*i, v);
                }
            }
        }
        let out = self.new_value(&shape, dt, Storage::Arena(0));
        for l in launches {
            let mut fixups = Vec::new();
            for (at, o) in l.fixups {
                let v = match o {
                    Operand::Input(i) => used_inputs[&i],
                    Operand::Output => out,
                    Operand::Const(t) => {
                        self.weights.push(t.clone());
                        let v = self.new_value(t.shape(), DatumType::F32, Storage::None);
                        self.values[v].storage = Storage::Weight(self.weights.len() - 1);
                        self.on_device[v] = true;
                        v
                    }
                };
                fixups.push((at, v));
            }
            self.steps.push(Step::Launch {
                kernel: l.kernel,
                grid: l.grid,
                block: l.block,
                params: l.params,
                fixups,
            });
        }
        self.on_device[out] = true;
        self.outlet_value.insert(out_outlet, out);
        self.report.gpu_nodes += 1;
        if let Some(f) = fused {
            self.skip.insert(f.node);
            self.report.gpu_nodes += 1;
            self.report.fused_nodes += 1;
        }
        Ok(())
    }

    /// A node one `pointwise_f32` operator can compute: an activation, or a binary op whose
    /// output has the shape the group iterates over.
    fn pointwise_op(&self, id: usize) -> Option<(i32, f32, f32, bool)> {
        let node = self.model.node(id);
        let out = OutletId::new(id, 0);
        if node.outputs.len() != 1
            || !self.is_f32(out)
            || !node.inputs.iter().all(|i| self.is_f32(*i))
        {
            return None;
        }
        let (shape, _) = self.fact_shape(out).ok()?;
        if shape.len() > MAX_RANK || !fits_i32(shape.iter().product()) {
            return None;
        }
        if let Some(e) = node.op_as::<ElementWiseOp>() {
            let (code, a, b) = act_of(e)?;
            return Some((100 + code, a, b, false));
        }
        let b = node.op_as::<TypedBinOp>()?;
        if node.inputs.len() != 2 {
            return None;
        }
        let (code, swap) = bin_of(b)?;
        Some((code, 0.0, 0.0, swap))
    }

    /// Groups of element-wise nodes to fuse: a node joins the group of an input's producer
    /// when that producer is element-wise, read by this node alone, not a model output, and
    /// of the same shape; a group stays within `PW_MAX_OPS` operators and `PW_MAX_IN`
    /// inputs.
    fn pointwise_groups(&self, order: &[usize]) -> TractResult<HashMap<usize, Arc<Vec<usize>>>> {
        let mut group_of: HashMap<usize, usize> = HashMap::new();
        let mut groups: Vec<Vec<usize>> = Vec::new();
        for &id in order {
            if self.pointwise_op(id).is_none() {
                continue;
            }
            let node = self.model.node(id);
            let (shape, _) = self.fact_shape(OutletId::new(id, 0))?;
            let mut joined: Option<usize> = None;
            for input in &node.inputs {
                let Some(&g) = group_of.get(&input.node) else {
                    continue;
                };
                let producer = self.model.node(input.node);
                let (pshape, _) = self.fact_shape(*input)?;
                if producer.outputs[0].successors.len() != 1
                    || self.outputs.contains(input)
                    || pshape != shape
                {
                    continue;
                }
                match joined {
                    None if groups[g].len() < k::PW_MAX_OPS => joined = Some(g),
                    Some(j) if j != g && groups[j].len() + groups[g].len() < k::PW_MAX_OPS => {
                        let moved = std::mem::take(&mut groups[g]);
                        for m in &moved {
                            group_of.insert(*m, j);
                        }
                        groups[j].extend(moved);
                    }
                    _ => {}
                }
            }
            let g = joined.unwrap_or_else(|| {
                groups.push(Vec::new());
                groups.len() - 1
            });
            groups[g].push(id);
            group_of.insert(id, g);
        }
        let mut out = HashMap::new();
        for mut members in groups.into_iter().filter(|g| g.len() >= 2) {
            let pos: HashMap<usize, usize> =
                order.iter().enumerate().map(|(i, n)| (*n, i)).collect();
            members.sort_by_key(|m| pos[m]);
            if self.pointwise_inputs(&members).len() > k::PW_MAX_IN {
                continue;
            }
            let members = Arc::new(members);
            for m in members.iter() {
                out.insert(*m, members.clone());
            }
        }
        Ok(out)
    }

    /// The outlets a group reads that none of its members produces, in first-use order.
    fn pointwise_inputs(&self, members: &[usize]) -> Vec<OutletId> {
        let mut inputs = Vec::new();
        for m in members {
            for i in &self.model.node(*m).inputs {
                if !members.contains(&i.node) && !inputs.contains(i) {
                    inputs.push(*i);
                }
            }
        }
        inputs
    }

    /// One `pointwise_f32` launch computing a group; its value is the last member's output.
    fn emit_pointwise(&mut self, members: &[usize]) -> TractResult<()> {
        let last = *members.last().ok_or_else(|| format_err!("empty group"))?;
        let out_outlet = OutletId::new(last, 0);
        let (oshape, dt) = self.fact_shape(out_outlet)?;
        let inputs = self.pointwise_inputs(members);
        let n = oshape.iter().product::<usize>();
        let mut p = k::PointwiseParams {
            n: n as i32,
            rank: oshape.len() as i32,
            n_in: inputs.len() as i32,
            n_ops: members.len() as i32,
            dims: dims6(&oshape),
            ..Default::default()
        };
        let mut fixups = Vec::new();
        for (k, o) in inputs.iter().enumerate() {
            let (ishape, _) = self.fact_shape(*o)?;
            p.views[k] = view(0, &broadcast_strides(&ishape, &oshape));
            let v = self.value_of(*o)?;
            let v = self.ensure_device(v);
            fixups.push((k * 8, v));
        }
        let reg = |o: &OutletId| -> i32 {
            match members.iter().position(|m| *m == o.node) {
                Some(j) => (k::PW_MAX_IN + j) as i32,
                None => inputs.iter().position(|i| i == o).unwrap_or(0) as i32,
            }
        };
        for (j, m) in members.iter().enumerate() {
            let node = self.model.node(*m);
            let (code, a, b, swap) = self
                .pointwise_op(*m)
                .ok_or_else(|| format_err!("not element-wise"))?;
            let (x, y) = if swap { (1, 0) } else { (0, 1) };
            p.code[j] = code;
            p.a[j] = reg(&node.inputs[x]);
            p.b[j] = node.inputs.get(y).map(reg).unwrap_or(0);
            p.ca[j] = a;
            p.cb[j] = b;
        }
        let out = self.new_value(&oshape, dt, Storage::Arena(0));
        fixups.push((k::PW_MAX_IN * 8, out));
        self.steps.push(Step::Launch {
            kernel: Kernel::Pointwise,
            grid: grid_1d(n),
            block: B256,
            params: bytes_of(&p),
            fixups,
        });
        self.on_device[out] = true;
        self.outlet_value.insert(out_outlet, out);
        self.report.gpu_nodes += members.len();
        self.report.fused_nodes += members.len() - 1;
        Ok(())
    }

    fn cpu(&mut self, id: usize) -> TractResult<()> {
        let node = self.model.node(id);
        if !node.op.is_stateless() {
            bail!(
                "node '{}' ({}) keeps state between runs",
                node.name,
                node.op.name()
            );
        }
        let mut inputs = Vec::new();
        for i in &node.inputs {
            let v = self.value_of(*i)?;
            self.ensure_host(v);
            inputs.push(v);
        }
        let mut outputs = Vec::new();
        for slot in 0..node.outputs.len() {
            let (shape, dt) = self.fact_shape(OutletId::new(id, slot))?;
            let v = self.new_value(&shape, dt, Storage::None);
            self.on_host[v] = true;
            self.outlet_value.insert(OutletId::new(id, slot), v);
            outputs.push(v);
        }
        self.steps.push(Step::Cpu {
            node: id,
            inputs,
            outputs,
        });
        self.report
            .cpu_nodes
            .push(format!("{} ({})", node.name, node.op.name()));
        Ok(())
    }

    fn konst(&self, o: OutletId) -> Option<Arc<Tensor>> {
        self.model.outlet_fact(o).ok()?.konst.clone()
    }

    fn is_f32(&self, o: OutletId) -> bool {
        self.model
            .outlet_fact(o)
            .is_ok_and(|f| f.datum_type == DatumType::F32)
    }

    /// The activation after `id` that can run in its epilogue: the only consumer, not a model
    /// output, a ReLU / sigmoid / clamp.
    fn fusable_after(&self, id: usize) -> Option<Fusable> {
        let node = self.model.node(id);
        let out = OutletId::new(id, 0);
        if node.outputs.len() != 1
            || node.outputs[0].successors.len() != 1
            || self.outputs.contains(&out)
        {
            return None;
        }
        let next = self.model.node(node.outputs[0].successors[0].node);
        if self.pointwise.contains_key(&next.id) {
            return None;
        }
        if let Some(e) = next.op_as::<ElementWiseOp>() {
            if e.0.name() == "Sigmoid" {
                return Some(Fusable {
                    node: next.id,
                    act: act::SIGMOID,
                    a: 0.0,
                    b: 0.0,
                });
            }
            return None;
        }
        let b = next.op_as::<TypedBinOp>()?;
        let other = next.inputs.iter().find(|i| **i != out)?;
        let c = self.konst(*other)?;
        if c.len() != 1 || c.datum_type() != DatumType::F32 || next.inputs.len() != 2 {
            return None;
        }
        let c = *c.to_scalar::<f32>().ok()?;
        match b.0.name() {
            "Max" if c == 0.0 => Some(Fusable {
                node: next.id,
                act: act::RELU,
                a: 0.0,
                b: 0.0,
            }),
            "Max" => Some(Fusable {
                node: next.id,
                act: act::CLIP,
                a: c,
                b: f32::INFINITY,
            }),
            "Min" => Some(Fusable {
                node: next.id,
                act: act::CLIP,
                a: f32::NEG_INFINITY,
                b: c,
            }),
            _ => None,
        }
    }

    /// The launches for node `id`, or `None` when no kernel takes it.
    #[allow(clippy::type_complexity)]
    fn plan(&self, id: usize) -> TractResult<Option<(Vec<LaunchSpec>, Option<Fusable>)>> {
        let node = self.model.node(id);
        let out = OutletId::new(id, 0);
        if node.outputs.len() != 1 || !self.is_f32(out) {
            return Ok(None);
        }
        let (oshape, _) = self.fact_shape(out)?;
        let n = oshape.iter().product::<usize>();
        if !fits_i32(n) || oshape.len() > MAX_RANK {
            return Ok(None);
        }
        let op = &node.op;
        if let Some(c) = op.downcast_ref::<Conv>() {
            let fused = self.fusable_after(id);
            return Ok(self
                .conv(node, c, &oshape, fused.as_ref())?
                .map(|l| (vec![l], fused)));
        }
        if let Some(d) = op.downcast_ref::<Deconv>() {
            let fused = self.fusable_after(id);
            return Ok(self
                .deconv(node, d, &oshape, fused.as_ref())?
                .map(|l| (vec![l], fused)));
        }
        if let Some(e) = op.downcast_ref::<EinSum>() {
            // The GEMM epilogue takes ReLU and sigmoid, not clamp bounds.
            let fused = self.fusable_after(id).filter(|f| f.act != act::CLIP);
            return Ok(self
                .einsum(node, e, &oshape, fused.as_ref())?
                .map(|l| (vec![l], fused)));
        }
        if op.name() == "Resize" && self.is_f32(node.inputs[0]) {
            // Its other inputs (roi, scales, sizes) are constants read at load.
            return Ok(self.resize(node, &oshape)?.map(|l| (vec![l], None)));
        }
        // Every other kernel reads f32 inputs only.
        if !node.inputs.iter().all(|i| self.is_f32(*i)) {
            return Ok(None);
        }
        let one = |l: Option<LaunchSpec>| l.map(|l| (vec![l], None));
        if let Some(e) = op.downcast_ref::<ElementWiseOp>() {
            return Ok(one(unary(e, n)));
        }
        if let Some(b) = op.downcast_ref::<TypedBinOp>() {
            return Ok(one(self.binary(node, b, &oshape)?));
        }
        if let Some(AxisOp::Move(from, to)) = op.downcast_ref::<AxisOp>() {
            let (ishape, _) = self.fact_shape(node.inputs[0])?;
            let mut axes: Vec<usize> = (0..ishape.len()).collect();
            let a = axes.remove(*from);
            axes.insert(*to, a);
            let istr = strides_of(&ishape);
            let xs: Vec<usize> = axes.iter().map(|&a| istr[a]).collect();
            return Ok(one(Some(copy(
                &oshape,
                &oshape,
                view(0, &xs),
                view(0, &strides_of(&oshape)),
            ))));
        }
        if let Some(c) = op.downcast_ref::<TypedConcat>() {
            let ostr = strides_of(&oshape);
            let mut at = 0usize;
            let mut launches = Vec::new();
            for (i, input) in node.inputs.iter().enumerate() {
                let (ishape, _) = self.fact_shape(*input)?;
                if ishape.iter().product::<usize>() > 0 {
                    let mut l = copy(
                        &ishape,
                        &ishape,
                        view(0, &strides_of(&ishape)),
                        view(at * ostr[c.axis], &ostr),
                    );
                    l.fixups[0].1 = Operand::Input(i);
                    launches.push(l);
                }
                at += ishape[c.axis];
            }
            return Ok(Some((launches, None)));
        }
        if let Some(s) = op.downcast_ref::<Slice>() {
            let (ishape, _) = self.fact_shape(node.inputs[0])?;
            let start = s.start.to_i64()? as usize;
            let istr = strides_of(&ishape);
            return Ok(one(Some(copy(
                &oshape,
                &oshape,
                view(start * istr[s.axis], &istr),
                view(0, &strides_of(&oshape)),
            ))));
        }
        if let Some(d) = op.downcast_ref::<Downsample>() {
            if d.stride <= 0 {
                return Ok(None);
            }
            let (ishape, _) = self.fact_shape(node.inputs[0])?;
            let mut istr = strides_of(&ishape);
            let offset = d.modulo * istr[d.axis];
            istr[d.axis] *= d.stride as usize;
            return Ok(one(Some(copy(
                &oshape,
                &oshape,
                view(offset, &istr),
                view(0, &strides_of(&oshape)),
            ))));
        }
        if op.downcast_ref::<MultiBroadcastTo>().is_some() {
            let (ishape, _) = self.fact_shape(node.inputs[0])?;
            let xs = broadcast_strides(&ishape, &oshape);
            return Ok(one(Some(copy(
                &oshape,
                &oshape,
                view(0, &xs),
                view(0, &strides_of(&oshape)),
            ))));
        }
        if op.downcast_ref::<Tile>().is_some() {
            let (ishape, _) = self.fact_shape(node.inputs[0])?;
            if ishape.len() != oshape.len() {
                return Ok(None);
            }
            return Ok(one(Some(copy(
                &oshape,
                &ishape,
                view(0, &strides_of(&ishape)),
                view(0, &strides_of(&oshape)),
            ))));
        }
        if let Some(p) = op.downcast_ref::<Pad>() {
            let PadMode::Constant(value) = &p.mode else {
                return Ok(None);
            };
            let (ishape, _) = self.fact_shape(node.inputs[0])?;
            let params = k::PadParams {
                n: n as i32,
                rank: oshape.len() as i32,
                value: value.cast_to_scalar::<f32>()?,
                dims: dims6(&oshape),
                x_dims: dims6(&ishape),
                before: dims6(&p.pads.iter().map(|(b, _)| *b).collect::<Vec<_>>()),
                ..Default::default()
            };
            return Ok(one(Some(launch(
                Kernel::Pad,
                grid_1d(n),
                &params,
                vec![Operand::Input(0), Operand::Output],
            ))));
        }
        if let Some(p) = op.downcast_ref::<MaxPool>() {
            if p.with_index_outputs.is_some() {
                return Ok(None);
            }
            return Ok(one(self.pool(
                node,
                &p.pool_spec,
                k::pool::MAX,
                false,
                &oshape,
            )?));
        }
        if let Some(p) = op.downcast_ref::<SumPool>() {
            let mode = if p.normalize {
                k::pool::AVG
            } else {
                k::pool::SUM
            };
            return Ok(one(self.pool(
                node,
                &p.pool_spec,
                mode,
                p.count_include_pad,
                &oshape,
            )?));
        }
        if let Some(r) = op.downcast_ref::<Reduce>() {
            return Ok(one(self.reduce(node, r, &oshape)?));
        }
        if let Some(s) = op.downcast_ref::<Softmax>() {
            if s.axes.len() != 1 || s.quant_output_dt.is_some() {
                return Ok(None);
            }
            let a = s.axes[0];
            let params = k::SoftmaxParams {
                outer: oshape[..a].iter().product::<usize>() as i32,
                axis: oshape[a] as i32,
                inner: oshape[a + 1..].iter().product::<usize>() as i32,
                ..Default::default()
            };
            let rows = n / oshape[a].max(1);
            return Ok(one(Some(launch(
                Kernel::Softmax,
                grid_1d(rows),
                &params,
                vec![Operand::Input(0), Operand::Output],
            ))));
        }
        Ok(None)
    }

    fn binary(
        &self,
        node: &TypedNode,
        b: &TypedBinOp,
        oshape: &[usize],
    ) -> TractResult<Option<LaunchSpec>> {
        if node.inputs.len() != 2 {
            return Ok(None);
        }
        let Some((code, swap)) = bin_of(b) else {
            return Ok(None);
        };
        let (ia, ib) = if swap { (1, 0) } else { (0, 1) };
        let (sa, _) = self.fact_shape(node.inputs[ia])?;
        let (sb, _) = self.fact_shape(node.inputs[ib])?;
        let n = oshape.iter().product::<usize>();
        if sa == oshape && sb == oshape {
            let params = k::BinarySameParams {
                n: n as i32,
                op: code,
                act: act::NONE,
                vec4: 1,
                ..Default::default()
            };
            return Ok(Some(launch(
                Kernel::BinarySame,
                grid_1d(n.div_ceil(4)),
                &params,
                vec![Operand::Input(ia), Operand::Input(ib), Operand::Output],
            )));
        }
        let params = k::BinaryParams {
            n: n as i32,
            rank: oshape.len() as i32,
            op: code,
            act: act::NONE,
            dims: dims6(oshape),
            va: view(0, &broadcast_strides(&sa, oshape)),
            vb: view(0, &broadcast_strides(&sb, oshape)),
            ..Default::default()
        };
        Ok(Some(launch(
            Kernel::Binary,
            grid_1d(n),
            &params,
            vec![Operand::Input(ia), Operand::Input(ib), Operand::Output],
        )))
    }

    fn conv(
        &self,
        node: &TypedNode,
        c: &Conv,
        oshape: &[usize],
        fused: Option<&Fusable>,
    ) -> TractResult<Option<LaunchSpec>> {
        let spec = &c.pool_spec;
        let has_n = match spec.data_format {
            DataFormat::NCHW => true,
            DataFormat::CHW => false,
            _ => return Ok(None),
        };
        if c.q_params.is_some() || spec.kernel_shape.is_empty() || !self.is_f32(node.inputs[0]) {
            return Ok(None);
        }
        let Some(kernel) = self.konst(node.inputs[1]) else {
            return Ok(None);
        };
        if kernel.datum_type() != DatumType::F32 {
            return Ok(None);
        }
        let (ishape, _) = self.fact_shape(node.inputs[0])?;
        let (n, c_in, spatial) = if has_n {
            (ishape[0], ishape[1], &ishape[2..])
        } else {
            (1, ishape[0], &ishape[1..])
        };
        let out_spatial = if has_n { &oshape[2..] } else { &oshape[1..] };
        let co = if has_n { oshape[1] } else { oshape[0] };
        let full_rank = spatial.len();
        let kernel = match c.kernel_fmt {
            KernelFormat::OIHW => kernel,
            KernelFormat::HWIO => {
                let mut axes = vec![full_rank + 1, full_rank];
                axes.extend(0..full_rank);
                Arc::new(kernel.as_ref().clone().permute_axes(&axes)?)
            }
            KernelFormat::OHWI => {
                let mut axes = vec![0, full_rank + 1];
                axes.extend(1..=full_rank);
                Arc::new(kernel.as_ref().clone().permute_axes(&axes)?)
            }
        };
        // Spatial axes of size 1 everywhere (tract's declutter sometimes adds one, making a
        // 3-D convolution of a 2-D one) are dropped; at most two may remain.
        let pads = spec.computed_padding(spatial);
        let strides = spec.strides();
        let dil = spec.dilations();
        let keep: Vec<usize> = (0..full_rank)
            .filter(|&a| {
                !(spatial[a] == 1
                    && out_spatial[a] == 1
                    && spec.kernel_shape[a] == 1
                    && pads[a].pad_before == 0
                    && pads[a].pad_after == 0)
            })
            .collect();
        if keep.len() > 2 {
            return Ok(None);
        }
        let pick = |v: &[usize]| -> (usize, usize) {
            match keep.as_slice() {
                [a, b] => (v[*a], v[*b]),
                [a] => (1, v[*a]),
                _ => (1, 1),
            }
        };
        let (h, w) = pick(spatial);
        let (oh, ow) = pick(out_spatial);
        let (kh, kw) = pick(&spec.kernel_shape);
        let (sh, sw) = pick(&strides);
        let (dh, dw) = pick(&dil);
        let before: Vec<usize> = pads.iter().map(|p| p.pad_before).collect();
        let (pt, pl) = match keep.as_slice() {
            [a, b] => (before[*a], before[*b]),
            [a] => (0, before[*a]),
            _ => (0, 0),
        };
        let Some(bias) = self.conv_bias(node, co)? else {
            return Ok(None);
        };
        let group = c.group;
        if group == 0
            || c_in % group != 0
            || co % group != 0
            || kernel.len() != co * (c_in / group) * kh * kw
        {
            return Ok(None);
        }
        let (act, a, b) = fused
            .map(|f| (f.act, f.a, f.b))
            .unwrap_or((act::NONE, 0.0, 0.0));
        let params = k::ConvParams {
            n: n as i32,
            c: c_in as i32,
            h: h as i32,
            w: w as i32,
            co: co as i32,
            oh: oh as i32,
            ow: ow as i32,
            kh: kh as i32,
            kw: kw as i32,
            sh: sh as i32,
            sw: sw as i32,
            dh: dh as i32,
            dw: dw as i32,
            pt: pt as i32,
            pl: pl as i32,
            group: group as i32,
            act,
            a,
            b,
            ..Default::default()
        };
        let cg = c_in / group;
        let one_by_one =
            kh == 1 && kw == 1 && sh == 1 && sw == 1 && pt == 0 && pl == 0 && oh == h && ow == w;
        let (kern, grid) = if cg == 1 && group > 1 {
            (Kernel::ConvDepthwise, grid_1d(n * co * oh * ow))
        } else {
            let npix = n * oh * ow;
            let mg = co / group;
            // Few output channels per group: the 16 x 256 tile.
            let (kern, bm, bn) = if mg <= 16 && !one_by_one {
                (Kernel::ConvNarrow, 16, 256)
            } else if one_by_one {
                (Kernel::Conv1x1, 64, 64)
            } else {
                (Kernel::Conv, 64, 64)
            };
            let gy = mg.div_ceil(bm);
            if gy > 65_535 || group > 65_535 {
                return Ok(None);
            }
            (
                kern,
                [npix.div_ceil(bn).max(1) as u32, gy as u32, group as u32],
            )
        };
        Ok(Some(conv_launch(kern, grid, &params, kernel, bias)))
    }

    /// A convolution's bias input as `co` floats: `Some(None)` when there is none (or it is a
    /// zero scalar), `None` when it is not a constant of a usable shape.
    fn conv_bias(&self, node: &TypedNode, co: usize) -> TractResult<Option<Option<Arc<Tensor>>>> {
        let Some(b) = node.inputs.get(2) else {
            return Ok(Some(None));
        };
        let Some(t) = self.konst(*b) else {
            return Ok(None);
        };
        let t = t.cast_to::<f32>()?.into_owned();
        Ok(match t.len() {
            1 if t.as_slice::<f32>()?[0] == 0.0 => Some(None),
            1 => Some(Some(Arc::new(tensor1(&vec![t.as_slice::<f32>()?[0]; co])))),
            l if l == co => Some(Some(Arc::new(t.into_shape(&[co])?))),
            _ => None,
        })
    }

    /// ConvTranspose: 2-D, NCHW, one group, explicit padding.
    fn deconv(
        &self,
        node: &TypedNode,
        d: &Deconv,
        oshape: &[usize],
        fused: Option<&Fusable>,
    ) -> TractResult<Option<LaunchSpec>> {
        let spec = &d.pool_spec;
        let before = match &spec.padding {
            PaddingSpec::Valid => vec![0, 0],
            PaddingSpec::Explicit(b, _) => b.to_vec(),
            _ => return Ok(None),
        };
        if spec.data_format != DataFormat::NCHW
            || spec.kernel_shape.len() != 2
            || d.group != 1
            || d.kernel_format != KernelFormat::OIHW
            || !self.is_f32(node.inputs[0])
        {
            return Ok(None);
        }
        let Some(kernel) = self.konst(node.inputs[1]) else {
            return Ok(None);
        };
        let (ishape, _) = self.fact_shape(node.inputs[0])?;
        let (co, c) = (oshape[1], ishape[1]);
        if kernel.datum_type() != DatumType::F32
            || kernel.shape() != [co, c, spec.kernel_shape[0], spec.kernel_shape[1]]
        {
            return Ok(None);
        }
        let Some(bias) = self.conv_bias(node, co)? else {
            return Ok(None);
        };
        let strides = spec.strides();
        let dil = spec.dilations();
        let (act, a, b) = fused
            .map(|f| (f.act, f.a, f.b))
            .unwrap_or((act::NONE, 0.0, 0.0));
        let params = k::ConvParams {
            n: ishape[0] as i32,
            c: c as i32,
            h: ishape[2] as i32,
            w: ishape[3] as i32,
            co: co as i32,
            oh: oshape[2] as i32,
            ow: oshape[3] as i32,
            kh: spec.kernel_shape[0] as i32,
            kw: spec.kernel_shape[1] as i32,
            sh: strides[0] as i32,
            sw: strides[1] as i32,
            dh: dil[0] as i32,
            dw: dil[1] as i32,
            pt: before[0] as i32,
            pl: before[1] as i32,
            group: 1,
            act,
            a,
            b,
            ..Default::default()
        };
        let n = oshape.iter().product::<usize>();
        Ok(Some(conv_launch(
            Kernel::Deconv,
            grid_1d(n),
            &params,
            kernel,
            bias,
        )))
    }

    fn einsum(
        &self,
        node: &TypedNode,
        e: &EinSum,
        oshape: &[usize],
        fused: Option<&Fusable>,
    ) -> TractResult<Option<LaunchSpec>> {
        if node.inputs.len() != 2 || e.q_params.is_some() || e.operating_dt != DatumType::F32 {
            return Ok(None);
        }
        if !node.inputs.iter().all(|i| self.is_f32(*i)) {
            return Ok(None);
        }
        let (sa, _) = self.fact_shape(node.inputs[0])?;
        let (sb, _) = self.fact_shape(node.inputs[1])?;
        let (ta, tb, tc) = (strides_of(&sa), strides_of(&sb), strides_of(oshape));
        // (size, stride in a, in b, in c, order key)
        type Ax = (usize, usize, usize, usize, usize);
        let (mut batch, mut m, mut nn, mut kk): (Vec<Ax>, Vec<Ax>, Vec<Ax>, Vec<Ax>) =
            Default::default();
        for axis in e.axes.iter_all_axes() {
            if axis.inputs.len() != 2
                || axis.outputs.len() != 1
                || axis.inputs.iter().chain(&axis.outputs).any(|p| p.len() > 1)
            {
                return Ok(None);
            }
            let (pa, pb, pc) = (
                axis.inputs[0].first(),
                axis.inputs[1].first(),
                axis.outputs[0].first(),
            );
            let size = pa
                .map(|&p| sa[p])
                .or(pb.map(|&p| sb[p]))
                .or(pc.map(|&p| oshape[p]))
                .unwrap_or(1);
            if size == 1 {
                continue;
            }
            let st = |p: Option<&usize>, t: &[usize]| p.map(|&p| t[p]).unwrap_or(0);
            let ax = (size, st(pa, &ta), st(pb, &tb), st(pc, &tc), 0);
            match (pa, pb, pc) {
                (Some(_), Some(_), Some(&c)) => batch.push((ax.0, ax.1, ax.2, ax.3, c)),
                (Some(_), None, Some(&c)) => m.push((ax.0, ax.1, ax.2, ax.3, c)),
                (None, Some(_), Some(&c)) => nn.push((ax.0, ax.1, ax.2, ax.3, c)),
                (Some(&a), Some(_), None) => kk.push((ax.0, ax.1, ax.2, ax.3, a)),
                _ => return Ok(None),
            }
        }
        // Each group must flatten into one index with one stride per tensor.
        fn flatten(mut g: Vec<Ax>, uses: [bool; 3]) -> Option<(usize, [usize; 3])> {
            g.sort_by_key(|a| a.4);
            let Some(last) = g.last() else {
                return Some((1, [0, 0, 0]));
            };
            let inner = [last.1, last.2, last.3];
            for w in g.windows(2) {
                let (o, i) = (w[0], w[1]);
                let so = [o.1, o.2, o.3];
                let si = [i.1, i.2, i.3];
                for t in 0..3 {
                    let absent = so[t] == 0 && si[t] == 0;
                    if uses[t] && !absent && so[t] != si[t] * i.0 {
                        return None;
                    }
                }
            }
            Some((g.iter().map(|a| a.0).product(), inner))
        }
        // An m (or n) group that does not flatten (the batch axis of "NIHW,OI->NOHW" in front
        // of H, W) gives its outer axes to the GEMM batch, with stride 0 in the other operand.
        for (group, uses) in [
            (&mut m, [true, false, true]),
            (&mut nn, [false, true, true]),
        ] {
            group.sort_by_key(|a| a.4);
            while group.len() > 1 && flatten(group.clone(), uses).is_none() {
                batch.push(group.remove(0));
            }
        }
        let Some((msz, ms)) = flatten(m, [true, false, true]) else {
            return Ok(None);
        };
        let Some((nsz, ns)) = flatten(nn, [false, true, true]) else {
            return Ok(None);
        };
        let Some((bsz, bs)) = flatten(batch, [true, true, true]) else {
            return Ok(None);
        };
        let Some((ksz, ks)) = flatten(kk, [true, true, false]) else {
            return Ok(None);
        };
        if bsz > 65_535
            || msz.div_ceil(64) > 65_535
            || [bsz, msz, nsz, ksz].iter().any(|&s| !fits_i32(s))
        {
            return Ok(None);
        }
        let params = k::GemmParams {
            batch: bsz as i32,
            m: msz as i32,
            n: nsz as i32,
            k: ksz as i32,
            sab: bs[0] as i32,
            sam: ms[0] as i32,
            sak: ks[0] as i32,
            sbb: bs[1] as i32,
            sbk: ks[1] as i32,
            sbn: ns[1] as i32,
            scb: bs[2] as i32,
            scm: ms[2] as i32,
            scn: ns[2] as i32,
            act: fused.map(|f| f.act).unwrap_or(act::NONE),
            ..Default::default()
        };
        let operand = |i: usize| match self.konst(node.inputs[i]) {
            Some(t) => Operand::Const(
                t.cast_to::<f32>()
                    .map(|t| Arc::new(t.into_owned()))
                    .unwrap_or(t),
            ),
            None => Operand::Input(i),
        };
        // Few columns (a 1x1 convolution's output channels): the 256 x 16 tile.
        let (kernel, bm, bn) = if nsz <= 16 {
            (Kernel::GemmNarrow, 256, 16)
        } else {
            (Kernel::Gemm, 64, 64)
        };
        if msz.div_ceil(bm) > 65_535 {
            return Ok(None);
        }
        Ok(Some(LaunchSpec {
            kernel,
            grid: [nsz.div_ceil(bn) as u32, msz.div_ceil(bm) as u32, bsz as u32],
            block: B256,
            params: bytes_of(&params),
            fixups: vec![(0, operand(0)), (8, operand(1)), (16, Operand::Output)],
        }))
    }

    fn pool(
        &self,
        node: &TypedNode,
        spec: &tract_onnx::tract_core::ops::cnn::PoolSpec,
        mode: i32,
        count_pad: bool,
        oshape: &[usize],
    ) -> TractResult<Option<LaunchSpec>> {
        let has_n = match spec.data_format {
            DataFormat::NCHW => true,
            DataFormat::CHW => false,
            _ => return Ok(None),
        };
        let (ishape, _) = self.fact_shape(node.inputs[0])?;
        let split = if has_n { 2 } else { 1 };
        let spatial = &ishape[split..];
        let out_spatial = &oshape[split..];
        if spatial.len() != 2 || spec.kernel_shape.len() != 2 {
            return Ok(None);
        }
        if matches!(spec.padding, PaddingSpec::ExplicitOnnxPool(_, _, true)) && mode != k::pool::MAX
        {
            // ceil_mode average pooling divides by a clipped window: not written.
            return Ok(None);
        }
        let pads = spec.computed_padding(spatial);
        let strides = spec.strides();
        let dil = spec.dilations();
        let nc: usize = ishape[..split].iter().product();
        let params = k::PoolParams {
            nc: nc as i32,
            h: spatial[0] as i32,
            w: spatial[1] as i32,
            oh: out_spatial[0] as i32,
            ow: out_spatial[1] as i32,
            kh: spec.kernel_shape[0] as i32,
            kw: spec.kernel_shape[1] as i32,
            sh: strides[0] as i32,
            sw: strides[1] as i32,
            dh: dil[0] as i32,
            dw: dil[1] as i32,
            pt: pads[0].pad_before as i32,
            pl: pads[1].pad_before as i32,
            mode,
            count_pad: count_pad as i32,
            ..Default::default()
        };
        let n = oshape.iter().product::<usize>();
        Ok(Some(launch(
            Kernel::Pool,
            grid_1d(n),
            &params,
            vec![Operand::Input(0), Operand::Output],
        )))
    }

    fn reduce(
        &self,
        node: &TypedNode,
        r: &Reduce,
        oshape: &[usize],
    ) -> TractResult<Option<LaunchSpec>> {
        let (ishape, _) = self.fact_shape(node.inputs[0])?;
        if ishape.len() != oshape.len() || r.axes.len() > MAX_RANK {
            return Ok(None);
        }
        let count: usize = r.axes.iter().map(|&a| ishape[a]).product();
        let (op, scale) = match r.reducer {
            Reducer::Sum => (k::red::SUM, 1.0),
            Reducer::Max => (k::red::MAX, 1.0),
            Reducer::Min => (k::red::MIN, 1.0),
            Reducer::Prod => (k::red::PROD, 1.0),
            Reducer::MeanOfSquares => (k::red::SUM_SQUARES, 1.0 / count.max(1) as f32),
            _ => return Ok(None),
        };
        let istr = strides_of(&ishape);
        let kept: Vec<usize> = (0..ishape.len())
            .map(|a| if r.axes.contains(&a) { 0 } else { istr[a] })
            .collect();
        let mut axes = r.axes.to_vec();
        axes.sort_unstable();
        let red_dims: Vec<usize> = axes.iter().map(|&a| ishape[a]).collect();
        let red_strides: Vec<usize> = axes.iter().map(|&a| istr[a]).collect();
        let n = oshape.iter().product::<usize>();
        let params = k::ReduceParams {
            n_out: n as i32,
            rank: oshape.len() as i32,
            out_dims: dims6(oshape),
            vout: view(0, &kept),
            red_rank: axes.len() as i32,
            red_dims: dims6(&red_dims),
            red_strides: view(0, &red_strides).strides,
            op,
            scale,
            ..Default::default()
        };
        Ok(Some(launch(
            Kernel::Reduce,
            grid_1d(n),
            &params,
            vec![Operand::Input(0), Operand::Output],
        )))
    }

    /// tract-onnx's Resize is private: its settings are read from its `Debug` text
    /// ("coord_transformer: Asymmetric, interpolator: Linear, nearest: Floor, ...").
    fn resize(&self, node: &TypedNode, oshape: &[usize]) -> TractResult<Option<LaunchSpec>> {
        let text = format!("{:?}", node.op);
        let field = |name: &str| -> Option<String> {
            let at = text.find(&format!("{name}: "))? + name.len() + 2;
            let rest = &text[at..];
            let end = rest.find([',', ' ', '}']).unwrap_or(rest.len());
            Some(rest[..end].to_string())
        };
        let coord = match field("coord_transformer").as_deref() {
            Some("HalfPixel") => k::resize::HALF_PIXEL,
            Some("Asymmetric") => k::resize::ASYMMETRIC,
            Some("AlignCorners") => k::resize::ALIGN_CORNERS,
            _ => return Ok(None),
        };
        let linear = match field("interpolator").as_deref() {
            Some("Linear") => 1,
            Some("Nearest") => 0,
            _ => return Ok(None),
        };
        let nearest = match field("nearest").as_deref() {
            Some("Floor") => k::resize::FLOOR,
            Some("Ceil") => k::resize::CEIL,
            Some("RoundPreferFloor") => k::resize::ROUND_PREFER_FLOOR,
            Some("RoundPreferCeil") => k::resize::ROUND_PREFER_CEIL,
            _ => return Ok(None),
        };
        let (ishape, _) = self.fact_shape(node.inputs[0])?;
        if ishape.len() != 4 || ishape[..2] != oshape[..2] {
            return Ok(None);
        }
        // Scales as given (a constant input), else output / input as tract does.
        let mut scale_h = oshape[2] as f32 / ishape[2] as f32;
        let mut scale_w = oshape[3] as f32 / ishape[3] as f32;
        if let Some(Ok(ix)) = field("optional_scales_input").map(|s| {
            s.trim_start_matches("Some(")
                .trim_end_matches(')')
                .parse::<usize>()
        }) {
            if let Some(t) = node.inputs.get(ix).and_then(|i| self.konst(*i)) {
                if let Ok(s) = t.as_slice::<f32>() {
                    if s.len() == 4 {
                        scale_h = s[2];
                        scale_w = s[3];
                    }
                }
            }
        }
        let params = k::ResizeParams {
            nc: (ishape[0] * ishape[1]) as i32,
            h: ishape[2] as i32,
            w: ishape[3] as i32,
            oh: oshape[2] as i32,
            ow: oshape[3] as i32,
            scale_h,
            scale_w,
            coord,
            linear,
            nearest,
            ..Default::default()
        };
        let n = oshape.iter().product::<usize>();
        Ok(Some(launch(
            Kernel::Resize,
            grid_1d(n),
            &params,
            vec![Operand::Input(0), Operand::Output],
        )))
    }
}

/// A convolution-family launch: input, weights, optional bias, output (`ConvParams` order).
fn conv_launch(
    kernel: Kernel,
    grid: [u32; 3],
    params: &k::ConvParams,
    weights: Arc<Tensor>,
    bias: Option<Arc<Tensor>>,
) -> LaunchSpec {
    let mut fixups = vec![(0, Operand::Input(0)), (8, Operand::Const(weights))];
    if let Some(b) = bias {
        fixups.push((16, Operand::Const(b)));
    }
    fixups.push((24, Operand::Output));
    LaunchSpec {
        kernel,
        grid,
        block: B256,
        params: bytes_of(params),
        fixups,
    }
}

fn tensor1(v: &[f32]) -> Tensor {
    tract_ndarray::Array1::from_vec(v.to_vec()).into_tensor()
}

/// Strides reading `shape` as if broadcast to `out` (0 on broadcast axes); `shape` may have
/// fewer axes (aligned to the right).
fn broadcast_strides(shape: &[usize], out: &[usize]) -> Vec<usize> {
    let pad = out.len() - shape.len().min(out.len());
    let full: Vec<usize> = std::iter::repeat_n(1, pad)
        .chain(shape.iter().copied())
        .collect();
    let s = strides_of(&full);
    (0..out.len())
        .map(|d| if full[d] == 1 && out[d] != 1 { 0 } else { s[d] })
        .collect()
}

/// A launch whose pointer fields are the first fields of the struct, in `operands` order.
fn launch<P: k::Params>(
    kernel: Kernel,
    grid: [u32; 3],
    params: &P,
    operands: Vec<Operand>,
) -> LaunchSpec {
    LaunchSpec {
        kernel,
        grid,
        block: B256,
        params: bytes_of(params),
        fixups: operands
            .into_iter()
            .enumerate()
            .map(|(i, o)| (i * 8, o))
            .collect(),
    }
}

fn copy(dims: &[usize], x_dims: &[usize], vx: View, vy: View) -> LaunchSpec {
    let n = dims.iter().product::<usize>();
    let params = k::CopyParams {
        n: n as i32,
        rank: dims.len() as i32,
        dims: dims6(dims),
        x_dims: dims6(x_dims),
        vx,
        vy,
        ..Default::default()
    };
    launch(
        Kernel::Copy,
        grid_1d(n),
        &params,
        vec![Operand::Input(0), Operand::Output],
    )
}

/// The operator code of a binary op, and whether its operands are swapped (`SubF` is b - a).
fn bin_of(b: &TypedBinOp) -> Option<(i32, bool)> {
    Some(match b.0.name() {
        "Add" => (bin::ADD, false),
        "Sub" => (bin::SUB, false),
        "SubF" => (bin::SUB, true),
        "Mul" => (bin::MUL, false),
        "Div" => (bin::DIV, false),
        "Max" => (bin::MAX, false),
        "Min" => (bin::MIN, false),
        "Pow" => (bin::POW, false),
        _ => return None,
    })
}

/// The activation code (and parameters) of an element-wise op, if a kernel has it.
fn act_of(e: &ElementWiseOp) -> Option<(i32, f32, f32)> {
    Some(match e.0.name().as_ref() {
        "Sigmoid" => (act::SIGMOID, 0.0, 0.0),
        "Tanh" => (act::TANH, 0.0, 0.0),
        "Exp" => (act::EXP, 0.0, 0.0),
        "Sqrt" => (act::SQRT, 0.0, 0.0),
        "Recip" => (act::RECIP, 0.0, 0.0),
        "Abs" => (act::ABS, 0.0, 0.0),
        "Neg" => (act::NEG, 0.0, 0.0),
        "Ln" => (act::LOG, 0.0, 0.0),
        "Erf" => (act::ERF, 0.0, 0.0),
        "Floor" => (act::FLOOR, 0.0, 0.0),
        "Ceil" => (act::CEIL, 0.0, 0.0),
        "Square" => (act::SQUARE, 0.0, 0.0),
        "Rsqrt" => (act::RSQRT, 0.0, 0.0),
        "Cos" => (act::COS, 0.0, 0.0),
        "Sin" => (act::SIN, 0.0, 0.0),
        "RoundHalfToEven" => (act::ROUND, 0.0, 0.0),
        "HardSwish" => (12, 1.0 / 6.0, 0.5),
        _ => return None,
    })
}

fn unary(e: &ElementWiseOp, n: usize) -> Option<LaunchSpec> {
    let (code, a, b) = act_of(e)?;
    let params = k::UnaryParams {
        n: n as i32,
        act: code,
        a,
        b,
        vec4: 1,
        ..Default::default()
    };
    Some(launch(
        Kernel::Unary,
        grid_1d(n.div_ceil(4)),
        &params,
        vec![Operand::Input(0), Operand::Output],
    ))
}
