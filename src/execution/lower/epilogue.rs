//! What a convolution's epilogue takes from the nodes after it. Converters leave a chain of
//! small element-wise nodes after each convolution: paddle2onnx's PP-OCRv4 has, after every
//! one, a learnable affine block (`Mul` and `Add` by scalars), a hard-swish decomposed into
//! `Add(3) → Max(0) → Min(6) → Mul(x, ·)`, and another affine block. Run as their own
//! launch, they read and write the convolution's output once more; here they become
//! `y = post_mul · act(scale · acc + shift) + post_add`, with `scale` and `shift` per
//! output channel (folded into the weights and the bias at load) and the rest in the
//! epilogue the kernels already have.

use super::{act, act_of, Conv, DataFormat, EinSum, ElementWiseOp, Fusable, Lowering, TypedBinOp};
use std::collections::HashMap;
use tract_onnx::prelude::*;

/// The constant a binary node combines `x` with, and whether `x` is its first operand.
struct WithConst {
    op: String,
    c: Arc<Tensor>,
    x_first: bool,
}

impl Fusable {
    /// Only an activation.
    pub(super) fn act(node: usize, act: i32, a: f32, b: f32) -> Fusable {
        Fusable {
            nodes: vec![node],
            residual: None,
            act,
            a,
            b,
            scale: None,
            shift: None,
            post_mul: 1.0,
            post_add: 0.0,
        }
    }

    /// The outlet whose value the fused launch writes.
    pub(super) fn output(&self) -> Option<OutletId> {
        self.nodes.last().map(|n| OutletId::new(*n, 0))
    }
}

/// `c` as one value per channel of an output of shape `oshape` (channels on `axis`): a
/// scalar, or a tensor whose dims (aligned to the right) are 1 but on `axis`.
fn per_channel(c: &Tensor, oshape: &[usize], axis: usize) -> Option<Vec<f32>> {
    let co = oshape[axis];
    let v = c.try_as_plain_ram().ok()?;
    let v = v.as_slice::<f32>().ok()?;
    if v.len() == 1 {
        return Some(vec![v[0]; co]);
    }
    let rank = c.rank();
    if rank > oshape.len() || v.len() != co {
        return None;
    }
    let lead = oshape.len() - rank;
    let only_channels = c
        .shape()
        .iter()
        .enumerate()
        .all(|(i, &d)| d == 1 || lead + i == axis);
    only_channels.then(|| v.to_vec())
}

/// The affine map `x ↦ mul · x + add` a binary op with a constant applies, as a function of
/// that constant (`Sub` and `Div` only with `x` first).
fn affine_of(w: &WithConst) -> Option<fn(f32) -> (f32, f32)> {
    Some(match (w.op.as_str(), w.x_first) {
        ("Mul", _) => |c| (c, 0.0),
        ("Add", _) => |c| (1.0, c),
        ("Sub", true) => |c| (1.0, -c),
        ("Div", true) => |c| (1.0 / c, 0.0),
        _ => return None,
    })
}

/// `(mul, add)` followed by the affine map `(m, a)`.
fn then(mul: f32, add: f32, (m, a): (f32, f32)) -> (f32, f32) {
    (mul * m, add * m + a)
}

fn scalar(c: &Tensor) -> Option<f32> {
    let v = c.try_as_plain_ram().ok()?;
    let v = v.as_slice::<f32>().ok()?;
    (v.len() == 1).then(|| v[0])
}

impl Lowering<'_> {
    /// Each convolution's epilogue (NCHW and CHW, the layouts the conv kernels take, and the
    /// EinSums that are 1x1 convolutions).
    pub(super) fn conv_epilogues(&self, order: &[usize]) -> HashMap<usize, Fusable> {
        let mut out = HashMap::new();
        let pos: HashMap<usize, usize> = order.iter().enumerate().map(|(i, n)| (*n, i)).collect();
        for &id in order {
            let node = self.model.node(id);
            let axis = if let Some(c) = node.op_as::<Conv>() {
                match c.pool_spec.data_format {
                    DataFormat::NCHW => 1,
                    DataFormat::CHW => 0,
                    _ => continue,
                }
            } else if let Some(p) = node
                .op_as::<EinSum>()
                .and_then(|e| self.einsum_conv(node, e))
            {
                p.axis
            } else {
                continue;
            };
            // A residual computed before this convolution (its value exists when the
            // fused launch runs): ResNet's shortcut, the block's input or the projection
            // convolution's output (whichever of the two convolutions comes second takes
            // the other's value).
            let earlier = |o: OutletId| pos.get(&o.node).is_some_and(|&p| p < pos[&id]);
            if let Some(f) = self.epilogue_after(id, axis, &earlier) {
                out.insert(id, f);
            }
        }
        out
    }

    /// The node reading `o` when it is the only one and `o` is not a model output.
    fn only_reader(&self, o: OutletId) -> Option<&TypedNode> {
        let node = self.model.node(o.node);
        if node.outputs.len() != 1
            || node.outputs[0].successors.len() != 1
            || self.outputs.contains(&o)
        {
            return None;
        }
        Some(self.model.node(node.outputs[0].successors[0].node))
    }

    /// `next` as a binary op of `x` and an f32 constant, whose output has `x`'s shape.
    fn with_const(&self, next: &TypedNode, x: OutletId) -> Option<WithConst> {
        let b = next.op_as::<TypedBinOp>()?;
        if next.inputs.len() != 2 || next.outputs.len() != 1 {
            return None;
        }
        let (other, x_first) = match (next.inputs[0] == x, next.inputs[1] == x) {
            (true, false) => (next.inputs[1], true),
            (false, true) => (next.inputs[0], false),
            _ => return None,
        };
        let c = self.konst(other)?;
        let (xs, _) = self.fact_shape(x).ok()?;
        let (os, _) = self.fact_shape(OutletId::new(next.id, 0)).ok()?;
        if c.datum_type() != DatumType::F32 || !self.is_f32(x) || xs != os {
            return None;
        }
        Some(WithConst {
            op: b.0.name().to_string(),
            c,
            x_first,
        })
    }

    /// The element-wise nodes after convolution `id` (channels on `axis` of its output) that
    /// its epilogue can compute, or `None` when there are none; a residual `Add` only of a
    /// value `earlier` says is computed before the convolution.
    pub(super) fn epilogue_after(
        &self,
        id: usize,
        axis: usize,
        earlier: &dyn Fn(OutletId) -> bool,
    ) -> Option<Fusable> {
        let mut cur = OutletId::new(id, 0);
        let (oshape, _) = self.fact_shape(cur).ok()?;
        if axis >= oshape.len() || !self.is_f32(cur) {
            return None;
        }
        let co = oshape[axis];
        let mut f = Fusable::act(id, act::NONE, 0.0, 0.0);
        f.nodes.clear();
        // Per-channel affine ops before the activation.
        let (mut s, mut t) = (vec![1f32; co], vec![0f32; co]);
        while let Some(next) = self.only_reader(cur) {
            let Some(w) = self.with_const(next, cur) else {
                break;
            };
            let Some(v) = per_channel(&w.c, &oshape, axis) else {
                break;
            };
            let Some(affine) = affine_of(&w) else {
                break;
            };
            for ((s, t), c) in s.iter_mut().zip(&mut t).zip(&v) {
                (*s, *t) = then(*s, *t, affine(*c));
            }
            f.nodes.push(next.id);
            cur = OutletId::new(next.id, 0);
        }
        if !f.nodes.is_empty() {
            f.scale = Some(s);
            f.shift = Some(t);
        }
        if let Some((add, other)) = self.residual_at(cur).filter(|(_, o)| earlier(*o)) {
            f.residual = Some(other);
            f.nodes.push(add);
            cur = OutletId::new(add, 0);
        }
        let Some((code, a, b, mul, nodes)) = self.activation_at(cur) else {
            return (!f.nodes.is_empty()).then_some(f);
        };
        (f.act, f.a, f.b, f.post_mul) = (code, a, b, mul);
        f.nodes.extend(nodes);
        cur = f.output()?;
        // Scalar affine ops after it.
        while let Some(next) = self.only_reader(cur) {
            let Some(w) = self.with_const(next, cur) else {
                break;
            };
            let (Some(c), Some(affine)) = (scalar(&w.c), affine_of(&w)) else {
                break;
            };
            (f.post_mul, f.post_add) = then(f.post_mul, f.post_add, affine(c));
            f.nodes.push(next.id);
            cur = OutletId::new(next.id, 0);
        }
        Some(f)
    }

    /// `x`'s only reader when it is `Add(x, r)` (either order) of another computed f32 value
    /// of the same shape, no broadcast: (the `Add`, `r`).
    fn residual_at(&self, x: OutletId) -> Option<(usize, OutletId)> {
        let next = self.only_reader(x)?;
        if next.op_as::<TypedBinOp>()?.0.name() != "Add"
            || next.inputs.len() != 2
            || next.outputs.len() != 1
        {
            return None;
        }
        let other = match (next.inputs[0] == x, next.inputs[1] == x) {
            (true, false) => next.inputs[1],
            (false, true) => next.inputs[0],
            _ => return None,
        };
        let (xs, _) = self.fact_shape(x).ok()?;
        let (rs, _) = self.fact_shape(other).ok()?;
        let (os, _) = self.fact_shape(OutletId::new(next.id, 0)).ok()?;
        let fits = self.konst(other).is_none() && self.is_f32(other) && xs == rs && xs == os;
        fits.then_some((next.id, other))
    }

    /// The activation computed from `x`: (code, a, b, a factor for after it, the nodes it
    /// spans, in order; the last one's output is its value).
    fn activation_at(&self, x: OutletId) -> Option<(i32, f32, f32, f32, Vec<usize>)> {
        if let Some(next) = self.only_reader(x) {
            if let Some(e) = next.op_as::<ElementWiseOp>() {
                let (code, a, b) = act_of(e)?;
                return Some((code, a, b, 1.0, vec![next.id]));
            }
            let (lo, hi, nodes) = self.clamp_at(x)?;
            return Some(if lo == 0.0 && hi == f32::INFINITY {
                (act::RELU, 0.0, 0.0, 1.0, nodes)
            } else {
                (act::CLIP, lo, hi, 1.0, nodes)
            });
        }
        self.hard_swish_at(x)
    }

    /// `Max` and `Min` by scalars reading `x`, one after the other: (low, high, nodes).
    fn clamp_at(&self, x: OutletId) -> Option<(f32, f32, Vec<usize>)> {
        let (mut lo, mut hi) = (f32::NEG_INFINITY, f32::INFINITY);
        let mut nodes = Vec::new();
        let mut cur = x;
        while nodes.len() < 2 {
            let Some(next) = self.only_reader(cur) else {
                break;
            };
            let Some(w) = self.with_const(next, cur) else {
                break;
            };
            let Some(c) = scalar(&w.c).filter(|c| !c.is_nan()) else {
                break;
            };
            match w.op.as_str() {
                "Max" => lo = lo.max(c),
                "Min" => hi = hi.min(c),
                _ => break,
            }
            nodes.push(next.id);
            cur = OutletId::new(next.id, 0);
        }
        (!nodes.is_empty() && lo <= hi).then_some((lo, hi, nodes))
    }

    /// The decomposed hard-swish `x · clamp(x + c, 0, h)` (optionally times a scalar before
    /// the product): `h · hard_swish(x)` with slope `1/h` and offset `c/h`. `x` has exactly
    /// two readers, the `Add` starting the branch and the `Mul` ending it.
    fn hard_swish_at(&self, x: OutletId) -> Option<(i32, f32, f32, f32, Vec<usize>)> {
        let node = self.model.node(x.node);
        let readers = &node.outputs.get(x.slot)?.successors;
        if readers.len() != 2 || self.outputs.contains(&x) {
            return None;
        }
        for first in readers {
            let add = self.model.node(first.node);
            let Some(w) = self.with_const(add, x) else {
                continue;
            };
            let Some(c) = scalar(&w.c) else {
                continue;
            };
            if w.op != "Add" {
                continue;
            }
            let Some((lo, h, mut nodes)) = self.clamp_at(OutletId::new(add.id, 0)) else {
                continue;
            };
            if lo != 0.0 || !(h > 0.0 && h.is_finite()) {
                continue;
            }
            nodes.insert(0, add.id);
            let mut cur = OutletId::new(*nodes.last()?, 0);
            let mut mul = h;
            let mut product = self.only_reader(cur)?;
            if let Some(m) = self.with_const(product, cur) {
                match (scalar(&m.c), affine_of(&m)) {
                    (Some(v), Some(affine)) if affine(v).1 == 0.0 => mul *= affine(v).0,
                    _ => return None,
                }
                nodes.push(product.id);
                cur = OutletId::new(product.id, 0);
                product = self.only_reader(cur)?;
            }
            let closes = product.op_as::<TypedBinOp>()?.0.name() == "Mul"
                && product.inputs.len() == 2
                && product.inputs.contains(&x)
                && product.inputs.contains(&cur)
                && readers.iter().any(|r| r.node == product.id);
            let (xs, _) = self.fact_shape(x).ok()?;
            let (ps, _) = self.fact_shape(OutletId::new(product.id, 0)).ok()?;
            if !closes || xs != ps {
                return None;
            }
            nodes.push(product.id);
            return Some((act::HARD_SWISH, 1.0 / h, c / h, mul, nodes));
        }
        None
    }
}
