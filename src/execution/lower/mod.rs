//! From tract's decluttered graph, at concrete shapes, to a [`Program`]: kernel launches with
//! every parameter resolved at load, weights to upload once, aliases for the reshapes, an
//! activation arena laid out by liveness, and per node the device it runs on. A node with no
//! kernel (another data type, an operator not written yet) becomes a CPU step, and the values
//! that cross between the two get explicit copies, which the report counts.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::format_err;
use tract_onnx::tract_core::ops::array::{
    MultiBroadcastTo, Pad, PadMode, Slice, Tile, TypedConcat,
};
use tract_onnx::tract_core::ops::binary::TypedBinOp;
use tract_onnx::tract_core::ops::change_axes::AxisOp;
use tract_onnx::tract_core::ops::cnn::{Conv, Deconv, KernelFormat, MaxPool, PaddingSpec, SumPool};
use tract_onnx::tract_core::ops::einsum::EinSum;
use tract_onnx::tract_core::ops::element_wise::ElementWiseOp;
use tract_onnx::tract_core::ops::konst::Const;
use tract_onnx::tract_core::ops::nn::{
    DataFormat, NearestUpsample, Reduce, Reducer, RmsNorm, Softmax,
};
use tract_onnx::tract_core::ops::source::TypedSource;
use tract_onnx::tract_core::ops::Downsample;

use super::program::kernels::{self as k, act, bin, bytes_of, Kernel, View, MAX_RANK};
use super::program::ExecutionReport;
use schedule::{form_islands, layout_arena};

pub(crate) mod batch;
mod epilogue;
mod ops;
mod pointwise;
mod schedule;

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
    /// Scratch f32 storage of this shape, shared by the node's launches that name the same
    /// index (one launch writes it, a later one reads it).
    Temp(usize, Vec<usize>),
    /// A value computed before this node that is not one of its inputs (the residual a
    /// convolution's epilogue adds).
    Outlet(OutletId),
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
        plan: Arc<TypedRunnableModel>,
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

/// Whether `n` elements can be indexed by the kernels' 32-bit `int`s, grid-stride loops
/// included: `i += step` must not pass `i32::MAX` (the step is at most 65,535 blocks of 256).
fn fits_i32(n: usize) -> bool {
    n <= i32::MAX as usize - 65_535 * 256
}

/// What a convolution or GEMM takes into its epilogue from the nodes after it:
/// `post_mul · act(scale · acc + shift + residual) + post_add`, `scale` and `shift` per
/// output channel (convolutions only; a GEMM takes the activation alone).
#[derive(Clone)]
struct Fusable {
    /// The nodes computed in the epilogue, in order; the last one's output is the launch's.
    nodes: Vec<usize>,
    /// A value of the output's shape added before the activation (a ResNet block's shortcut),
    /// computed before the convolution.
    residual: Option<OutletId>,
    act: i32,
    a: f32,
    b: f32,
    scale: Option<Vec<f32>>,
    shift: Option<Vec<f32>>,
    post_mul: f32,
    post_add: f32,
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
    /// Convolution → the nodes after it its epilogue computes (`epilogue.rs`).
    epilogues: HashMap<usize, Fusable>,
    /// Every node some epilogue above computes: no element-wise group takes them.
    in_epilogue: HashSet<usize>,
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
        epilogues: HashMap::new(),
        in_epilogue: HashSet::new(),
        report: ExecutionReport::default(),
    };
    // The model's inputs first (tract's order puts each just before its first reader), so
    // an input is "computed before" every node, which a residual epilogue asks of its value.
    let mut order = model.eval_order()?;
    order.sort_by_key(|&id| !model.node(id).op_is::<TypedSource>());
    l.epilogues = l.conv_epilogues(&order);
    l.in_epilogue = l.epilogues.values().flat_map(|f| f.nodes.clone()).collect();
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
    let (islanded, islands) = form_islands(&model, steps, &values, &outputs)?;
    steps = islanded;
    report.cpu_islands = islands;
    report.arena_bytes = layout_arena(&mut values, &steps, &outputs);
    for s in &steps {
        if let Step::Launch { kernel, .. } = s {
            report.launches += 1;
            *report.kernels.entry(kernel.name().to_string()).or_default() += 1;
        }
    }
    let count = |f: &dyn Fn(&Step) -> bool| steps.iter().filter(|s| f(s)).count();
    let up = count(&|s| matches!(s, Step::Upload { .. }));
    let inputs = count(&|s| matches!(s, Step::UploadInput { .. }));
    let down = count(&|s| matches!(s, Step::Download { .. }));
    let output_downloads =
        count(&|s| matches!(s, Step::Download { value } if outputs.contains(value)));
    report.uploads = up + inputs;
    report.downloads = down;
    report.intermediate_copies = up + down - output_downloads;
    report.weight_bytes = weights.iter().map(|w| w.len() * 4).sum();
    Ok(Program {
        model: model.clone(),
        values,
        steps,
        outputs,
        host_consts,
        weights,
        report,
    })
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
        "Silu" => (act::SILU, 0.0, 0.0),
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
        "HardSwish" => (act::HARD_SWISH, 1.0 / 6.0, 0.5),
        _ => return None,
    })
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
            let t = c.val().clone();
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
        let out_outlet = fused
            .as_ref()
            .and_then(Fusable::output)
            .unwrap_or(OutletId::new(id, 0));
        let (shape, dt) = self.fact_shape(out_outlet)?;
        let mut used_inputs = HashMap::new();
        let mut outlets = HashMap::new();
        for l in &launches {
            for (_, o) in &l.fixups {
                match o {
                    Operand::Input(i) => {
                        let v = self.ensure_device(inputs[*i]);
                        used_inputs.insert(*i, v);
                    }
                    Operand::Outlet(o) => {
                        let v = self.value_of(*o)?;
                        outlets.insert(*o, self.ensure_device(v));
                    }
                    _ => {}
                }
            }
        }
        let out = self.new_value(&shape, dt, Storage::Arena(0));
        // A residual read by nothing after this launch is accumulated in place: the output
        // takes its storage, so the epilogue reads and writes the same bytes (ONNX Runtime's
        // Conv + Add "Sum" input): no separate output is fetched into the cache only to be
        // overwritten. Full-size EAST, one thread, on and off in alternating processes (AVX-512
        // EPYC, medians of 16): 188.9 / 190.9 -> 185.9 / 185.0 ms; full STR level.
        if let Some(r) = fused.as_ref().and_then(|f| f.residual) {
            if let Some(&v) = outlets.get(&r) {
                if self.accumulates_in_place(r, v, out) {
                    self.values[out].root = v;
                }
            }
        }
        let mut temps: HashMap<usize, ValueId> = HashMap::new();
        for l in launches {
            // An empty grid (a batch of 0, m = 0) has nothing to compute, and a GPU refuses
            // to launch it.
            if l.grid.contains(&0) {
                continue;
            }
            let mut fixups = Vec::new();
            for (at, o) in l.fixups {
                let v = match o {
                    Operand::Input(i) => used_inputs[&i],
                    Operand::Outlet(o) => outlets[&o],
                    Operand::Output => out,
                    Operand::Temp(k, tshape) => *temps.entry(k).or_insert_with(|| {
                        let v = self.new_value(&tshape, DatumType::F32, Storage::Arena(0));
                        self.on_device[v] = true;
                        v
                    }),
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
            self.skip.extend(f.nodes.iter().copied());
            self.report.gpu_nodes += f.nodes.len();
            self.report.fused_nodes += f.nodes.len();
        }
        Ok(())
    }
    /// Whether a launch's output `out` may take the storage of residual `r` (its value `v`):
    /// `r` is read by the fused Add alone (no later node, no reshape of it, not a graph
    /// output), is no graph input, and its value owns its arena bytes with the output's
    /// shape and type.
    fn accumulates_in_place(&self, r: OutletId, v: ValueId, out: ValueId) -> bool {
        let node = self.model.node(r.node);
        let (rv, ov) = (&self.values[v], &self.values[out]);
        node.outputs[r.slot].successors.len() == 1
            && !self.outputs.contains(&r)
            && !node.op_is::<TypedSource>()
            && rv.root == v
            && rv.storage == Storage::Arena(0)
            && rv.shape == ov.shape
            && rv.dt == ov.dt
    }

    /// A CPU step (an island of its own at least: stateful operators such as the Scan an
    /// LSTM becomes only run inside a tract plan).
    fn cpu(&mut self, id: usize) -> TractResult<()> {
        let node = self.model.node(id);
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
                return Some(Fusable::act(next.id, act::SIGMOID, 0.0, 0.0));
            }
            return None;
        }
        let b = next.op_as::<TypedBinOp>()?;
        let other = next.inputs.iter().find(|i| **i != out)?;
        let c = self.konst(*other)?;
        if c.len() != 1 || c.datum_type() != DatumType::F32 || next.inputs.len() != 2 {
            return None;
        }
        let c = *c.try_as_plain_ram().ok()?.to_scalar::<f32>().ok()?;
        match b.0.name() {
            "Max" if c == 0.0 => Some(Fusable::act(next.id, act::RELU, 0.0, 0.0)),
            "Max" => Some(Fusable::act(next.id, act::CLIP, c, f32::INFINITY)),
            "Min" => Some(Fusable::act(next.id, act::CLIP, f32::NEG_INFINITY, c)),
            _ => None,
        }
    }
}
