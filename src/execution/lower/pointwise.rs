//! Element-wise fusion: connected chains of activations and binary ops become one
//! `pointwise_f32` launch.

use super::{
    act_of, bin_of, broadcast_strides, bytes_of, dims6, fits_i32, grid_1d, k, view, ElementWiseOp,
    Kernel, Lowering, Step, Storage, TypedBinOp, B256, MAX_RANK,
};
use std::collections::HashMap;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::format_err;

impl Lowering<'_> {
    /// A node one `pointwise_f32` operator can compute: an activation, or a binary op whose
    /// output has the shape the group iterates over.
    fn pointwise_op(&self, id: usize) -> Option<(i32, f32, f32, bool)> {
        let node = self.model.node(id);
        let out = OutletId::new(id, 0);
        if node.outputs.len() != 1
            || self.in_epilogue.contains(&id)
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
            return Some((k::PW_ACT_BASE + code, a, b, false));
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
    pub(super) fn pointwise_groups(
        &self,
        order: &[usize],
    ) -> TractResult<HashMap<usize, Arc<Vec<usize>>>> {
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
        let pos: HashMap<usize, usize> = order.iter().enumerate().map(|(i, n)| (*n, i)).collect();
        for mut members in groups.into_iter().filter(|g| g.len() >= 2) {
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
    pub(super) fn emit_pointwise(&mut self, members: &[usize]) -> TractResult<()> {
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
}
