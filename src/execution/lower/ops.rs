//! Node by node: the launches (kernel, grid, parameters) for each operator a kernel takes.

use super::{
    act, act_of, bin, bin_of, broadcast_strides, bytes_of, copy, dims6, fits_i32, grid_1d, k,
    launch, strides_of, tensor1, view, AxisOp, Conv, DataFormat, Deconv, Downsample, EinSum,
    ElementWiseOp, Fusable, Kernel, KernelFormat, LaunchSpec, Lowering, MaxPool, MultiBroadcastTo,
    NearestUpsample, Operand, Pad, PadMode, PaddingSpec, Reduce, Reducer, RmsNorm, Slice, Softmax,
    SumPool, Tile, TypedBinOp, TypedConcat, View, B256, MAX_RANK,
};
use tract_onnx::prelude::*;

/// An EinSum that is a 1x1 convolution ([`Lowering::einsum_conv`]).
pub(super) struct PointwiseConv {
    /// The node's input that is the image (the other is the constant weights).
    input: usize,
    /// The weights are stored `[c, co]` (else `[co, c]`).
    transposed: bool,
    n: usize,
    c: usize,
    npix: usize,
    co: usize,
    /// The output's channel axis.
    pub(super) axis: usize,
}

/// The launches planned for one node, and the activation fused into them.
pub(super) type Planned = (Vec<LaunchSpec>, Option<Fusable>);

/// One operator's translator: its launches for `node` (whose single f32 output has shape
/// `oshape`), or `None` when the node is not its operator or no kernel takes this case.
type Translate = fn(&Lowering<'_>, &TypedNode, &[usize]) -> TractResult<Option<Planned>>;

/// Every operator a kernel takes, next to the translator that plans it. `f32_inputs`: the
/// kernel reads every input as f32 (the others read integer constants at load).
struct Translator {
    op: &'static str,
    f32_inputs: bool,
    translate: Translate,
}

const TRANSLATORS: &[Translator] = &[
    Translator {
        op: "Conv",
        f32_inputs: false,
        translate: conv_node,
    },
    Translator {
        op: "Deconv",
        f32_inputs: false,
        translate: deconv_node,
    },
    Translator {
        op: "EinSum",
        f32_inputs: false,
        translate: einsum_node,
    },
    Translator {
        op: "Resize",
        f32_inputs: false,
        translate: resize_node,
    },
    Translator {
        op: "ElementWiseOp",
        f32_inputs: true,
        translate: unary_node,
    },
    Translator {
        op: "TypedBinOp",
        f32_inputs: true,
        translate: binary_node,
    },
    Translator {
        op: "AxisOp::Move",
        f32_inputs: true,
        translate: move_axis_node,
    },
    Translator {
        op: "TypedConcat",
        f32_inputs: true,
        translate: concat_node,
    },
    Translator {
        op: "Slice",
        f32_inputs: true,
        translate: slice_node,
    },
    Translator {
        op: "Downsample",
        f32_inputs: true,
        translate: downsample_node,
    },
    Translator {
        op: "MultiBroadcastTo",
        f32_inputs: true,
        translate: broadcast_node,
    },
    Translator {
        op: "NearestUpsample",
        f32_inputs: true,
        translate: upsample_node,
    },
    Translator {
        op: "Tile",
        f32_inputs: true,
        translate: tile_node,
    },
    Translator {
        op: "Pad",
        f32_inputs: true,
        translate: pad_node,
    },
    Translator {
        op: "MaxPool",
        f32_inputs: true,
        translate: max_pool_node,
    },
    Translator {
        op: "SumPool",
        f32_inputs: true,
        translate: sum_pool_node,
    },
    Translator {
        op: "Reduce",
        f32_inputs: true,
        translate: reduce_node,
    },
    Translator {
        op: "RmsNorm",
        f32_inputs: true,
        translate: rms_norm_node,
    },
    Translator {
        op: "Softmax",
        f32_inputs: true,
        translate: softmax_node,
    },
];

impl Lowering<'_> {
    /// The launches for node `id`, or `None` when no kernel takes it: the first translator
    /// that plans it wins.
    pub(super) fn plan(&self, id: usize) -> TractResult<Option<Planned>> {
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
        // The kernels index inputs (offsets, view strides) in 32 bits as well: every input
        // must fit as the output does, or the node stays on the CPU.
        for i in &node.inputs {
            let (ishape, _) = self.fact_shape(*i)?;
            if !fits_i32(ishape.iter().product::<usize>()) {
                return Ok(None);
            }
        }
        let f32_inputs = node.inputs.iter().all(|i| self.is_f32(*i));
        for t in TRANSLATORS.iter().filter(|t| f32_inputs || !t.f32_inputs) {
            if let Some(planned) = (t.translate)(self, node, &oshape)? {
                tracing::trace!("node '{}' lowered as {}", node.name, t.op);
                return Ok(Some(planned));
            }
        }
        Ok(None)
    }
}

/// A translator for operator type `$op`: `$body` runs when the node's op is one, with the
/// lowering, the node, the op and the output shape bound to the names given.
macro_rules! translator {
    ($name:ident, $op:ty, |$l:pat_param, $node:ident, $x:ident, $oshape:pat_param| $body:block) => {
        fn $name(
            $l: &Lowering<'_>,
            $node: &TypedNode,
            $oshape: &[usize],
        ) -> TractResult<Option<Planned>> {
            let Some($x) = $node.op.downcast_ref::<$op>() else {
                return Ok(None);
            };
            $body
        }
    };
}

/// One launch, no fused activation.
fn one(l: Option<LaunchSpec>) -> Option<Planned> {
    l.map(|l| (vec![l], None))
}

/// A copy of the input, seen through `x` (offset and strides), into the contiguous output.
fn copy_from(oshape: &[usize], x: View) -> Option<Planned> {
    one(Some(copy(oshape, oshape, x, view(0, &strides_of(oshape)))))
}

fn conv_node(l: &Lowering<'_>, node: &TypedNode, oshape: &[usize]) -> TractResult<Option<Planned>> {
    let Some(c) = node.op.downcast_ref::<Conv>() else {
        return Ok(None);
    };
    let fused = l.epilogues.get(&node.id).cloned();
    Ok(l.conv(node, c, oshape, fused.as_ref())?
        .map(|x| (vec![x], fused)))
}

translator!(deconv_node, Deconv, |l, node, d, oshape| {
    let fused = l.fusable_after(node.id);
    Ok(l.deconv(node, d, oshape, fused.as_ref())?
        .map(|x| (vec![x], fused)))
});

translator!(einsum_node, EinSum, |l, node, e, oshape| {
    // A 1x1 convolution (tract turns them into EinSum) runs as one, with its epilogue.
    // If the convolution kernel cannot take it, the GEMM below does (and the epilogue's nodes
    // run as launches of their own).
    if let Some(p) = l.einsum_conv(node, e) {
        let fused = l.epilogues.get(&node.id).cloned();
        if let Some(x) = l.pointwise_conv(node, &p, fused.as_ref())? {
            return Ok(Some((vec![x], fused)));
        }
    }
    // The GEMM epilogue takes ReLU and sigmoid, not clamp bounds.
    let fused = l.fusable_after(node.id).filter(|f| f.act != act::CLIP);
    Ok(l.einsum(node, e, oshape, fused.as_ref())?
        .map(|x| (vec![x], fused)))
});

fn resize_node(
    l: &Lowering<'_>,
    node: &TypedNode,
    oshape: &[usize],
) -> TractResult<Option<Planned>> {
    // tract-onnx's Resize (its type is private to tract-onnx-opl); its other inputs (roi,
    // scales, sizes) are constants read at load.
    if node.op.name() != "Resize" || !l.is_f32(node.inputs[0]) {
        return Ok(None);
    }
    Ok(one(l.resize(node, oshape)?))
}

translator!(unary_node, ElementWiseOp, |_, node, e, oshape| {
    Ok(one(unary(e, oshape.iter().product())))
});

translator!(binary_node, TypedBinOp, |l, node, b, oshape| {
    Ok(one(l.binary(node, b, oshape)?))
});

fn move_axis_node(
    l: &Lowering<'_>,
    node: &TypedNode,
    oshape: &[usize],
) -> TractResult<Option<Planned>> {
    let Some(AxisOp::Move(from, to)) = node.op.downcast_ref::<AxisOp>() else {
        return Ok(None);
    };
    let (ishape, _) = l.fact_shape(node.inputs[0])?;
    let mut axes: Vec<usize> = (0..ishape.len()).collect();
    let a = axes.remove(*from);
    axes.insert(*to, a);
    let istr = strides_of(&ishape);
    let xs: Vec<usize> = axes.iter().map(|&a| istr[a]).collect();
    Ok(copy_from(oshape, view(0, &xs)))
}

translator!(concat_node, TypedConcat, |l, node, c, oshape| {
    let ostr = strides_of(oshape);
    let mut at = 0usize;
    let mut launches = Vec::new();
    for (i, input) in node.inputs.iter().enumerate() {
        let (ishape, _) = l.fact_shape(*input)?;
        if ishape.iter().product::<usize>() > 0 {
            let mut x = copy(
                &ishape,
                &ishape,
                view(0, &strides_of(&ishape)),
                view(at * ostr[c.axis], &ostr),
            );
            x.fixups[0].1 = Operand::Input(i);
            launches.push(x);
        }
        at += ishape[c.axis];
    }
    Ok(Some((launches, None)))
});

translator!(slice_node, Slice, |l, node, s, oshape| {
    let (ishape, _) = l.fact_shape(node.inputs[0])?;
    let start = s.start.to_i64()? as usize;
    let istr = strides_of(&ishape);
    Ok(copy_from(oshape, view(start * istr[s.axis], &istr)))
});

translator!(downsample_node, Downsample, |l, node, d, oshape| {
    if d.stride <= 0 {
        return Ok(None);
    }
    let (ishape, _) = l.fact_shape(node.inputs[0])?;
    let mut istr = strides_of(&ishape);
    let offset = d.modulo * istr[d.axis];
    istr[d.axis] *= d.stride as usize;
    Ok(copy_from(oshape, view(offset, &istr)))
});

fn broadcast_node(
    l: &Lowering<'_>,
    node: &TypedNode,
    oshape: &[usize],
) -> TractResult<Option<Planned>> {
    if node.op.downcast_ref::<MultiBroadcastTo>().is_none() {
        return Ok(None);
    }
    let (ishape, _) = l.fact_shape(node.inputs[0])?;
    Ok(copy_from(
        oshape,
        view(0, &broadcast_strides(&ishape, oshape)),
    ))
}

fn upsample_node(l: &Lowering<'_>, node: &TypedNode, _: &[usize]) -> TractResult<Option<Planned>> {
    let Some(u) = node.op.downcast_ref::<NearestUpsample>() else {
        return Ok(None);
    };
    // Replication by integer factors (tract's form of a nearest Resize): the output seen with
    // one extra axis of size `s` after each scaled axis, which the input view does not advance
    // along.
    let (ishape, _) = l.fact_shape(node.inputs[0])?;
    if u.scales.len() != ishape.len() || u.scales.contains(&0) {
        return Ok(None);
    }
    let (mut dims, mut xs) = (Vec::new(), Vec::new());
    for ((&d, &s), st) in ishape.iter().zip(&u.scales).zip(strides_of(&ishape)) {
        dims.push(d);
        xs.push(st);
        if s > 1 {
            dims.push(s);
            xs.push(0);
        }
    }
    if dims.len() > MAX_RANK {
        return Ok(None);
    }
    Ok(copy_from(&dims, view(0, &xs)))
}

fn tile_node(l: &Lowering<'_>, node: &TypedNode, oshape: &[usize]) -> TractResult<Option<Planned>> {
    if node.op.downcast_ref::<Tile>().is_none() {
        return Ok(None);
    }
    let (ishape, _) = l.fact_shape(node.inputs[0])?;
    if ishape.len() != oshape.len() {
        return Ok(None);
    }
    Ok(one(Some(copy(
        oshape,
        &ishape,
        view(0, &strides_of(&ishape)),
        view(0, &strides_of(oshape)),
    ))))
}

fn pad_node(l: &Lowering<'_>, node: &TypedNode, oshape: &[usize]) -> TractResult<Option<Planned>> {
    let Some(p) = node.op.downcast_ref::<Pad>() else {
        return Ok(None);
    };
    let PadMode::Constant(value) = &p.mode else {
        return Ok(None);
    };
    let (ishape, _) = l.fact_shape(node.inputs[0])?;
    let n = oshape.iter().product::<usize>();
    let params = k::PadParams {
        n: n as i32,
        rank: oshape.len() as i32,
        value: value.cast_to_scalar::<f32>()?,
        dims: dims6(oshape),
        x_dims: dims6(&ishape),
        before: dims6(&p.pads.iter().map(|(b, _)| *b).collect::<Vec<_>>()),
        ..Default::default()
    };
    Ok(one(Some(launch(
        Kernel::Pad,
        grid_1d(n),
        &params,
        vec![Operand::Input(0), Operand::Output],
    ))))
}

translator!(max_pool_node, MaxPool, |l, node, p, oshape| {
    if p.with_index_outputs.is_some() {
        return Ok(None);
    }
    Ok(one(l.pool(
        node,
        &p.pool_spec,
        k::pool::MAX,
        false,
        oshape,
    )?))
});

translator!(sum_pool_node, SumPool, |l, node, p, oshape| {
    let mode = if p.normalize {
        k::pool::AVG
    } else {
        k::pool::SUM
    };
    Ok(one(l.pool(
        node,
        &p.pool_spec,
        mode,
        p.count_include_pad,
        oshape,
    )?))
});

translator!(reduce_node, Reduce, |l, node, r, oshape| {
    Ok(one(l.reduce(node, r, oshape)?))
});

translator!(rms_norm_node, RmsNorm, |l, node, r, oshape| {
    Ok(l.rms_norm(r, oshape)?.map(|x| (x, None)))
});

translator!(softmax_node, Softmax, |_, node, s, oshape| {
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
    let rows = oshape.iter().product::<usize>() / oshape[a].max(1);
    Ok(one(Some(launch(
        Kernel::Softmax,
        // One block per row, block-strided beyond 65,535 rows.
        [rows.clamp(1, 65_535) as u32, 1, 1],
        &params,
        vec![Operand::Input(0), Operand::Output],
    ))))
});

impl Lowering<'_> {
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

    // Long: the choice between the conv kernels (1x1, narrow, depthwise, tiled) and their
    // parameters in one place, so each case can be read against the kernel it picks.
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
        let Some(mut bias) = self.conv_bias(node, co)? else {
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
        let mut kernel = kernel;
        if let Some(f) = fused {
            let Some(folded) = fold_affine(kernel, bias, co, f)? else {
                return Ok(None);
            };
            (kernel, bias) = folded;
        }
        let (act, a, b, post_mul, post_add) = fused
            .map(|f| (f.act, f.a, f.b, f.post_mul, f.post_add))
            .unwrap_or((act::NONE, 0.0, 0.0, 1.0, 0.0));
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
            post_mul,
            post_add,
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
        let residual = fused.and_then(|f| f.residual);
        Ok(Some(conv_launch(
            0, kern, grid, &params, kernel, bias, residual,
        )))
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
        let first = t.try_as_plain_ram()?.as_slice::<f32>()?.first().copied();
        Ok(match (t.len(), first) {
            (1, Some(0.0)) => Some(None),
            (1, Some(b)) => Some(Some(Arc::new(tensor1(&vec![b; co])))),
            (l, _) if l == co => Some(Some(Arc::new(t.into_shape(&[co])?))),
            _ => None,
        })
    }

    /// An EinSum that is a 1x1 convolution: a constant `[co, c]` (either order) times an
    /// input laid out `[outer…, c, inner…]`, giving `[outer…, co, inner…]` (size-1 axes
    /// anywhere). The outer axes are the batch, the inner ones the pixels.
    pub(super) fn einsum_conv(&self, node: &TypedNode, e: &EinSum) -> Option<PointwiseConv> {
        if node.inputs.len() != 2 || e.q_params.is_some() || e.operating_dt != DatumType::F32 {
            return None;
        }
        let wi = (0..2).find(|&i| self.konst(node.inputs[i]).is_some())?;
        let xi = 1 - wi;
        let w = self.konst(node.inputs[wi])?;
        if self.konst(node.inputs[xi]).is_some()
            || w.datum_type() != DatumType::F32
            || !self.is_f32(node.inputs[xi])
        {
            return None;
        }
        let (sx, _) = self.fact_shape(node.inputs[xi]).ok()?;
        let (so, _) = self.fact_shape(OutletId::new(node.id, 0)).ok()?;
        let (mut k_axis, mut co_axis) = (None, None);
        let mut others: Vec<(usize, usize)> = Vec::new();
        for axis in e.axes.iter_all_axes() {
            if axis.inputs.len() != 2
                || axis.outputs.len() != 1
                || axis.inputs.iter().chain(&axis.outputs).any(|p| p.len() > 1)
            {
                return None;
            }
            let (px, pw, po) = (
                axis.inputs[xi].first().copied(),
                axis.inputs[wi].first().copied(),
                axis.outputs[0].first().copied(),
            );
            let size = px
                .map(|p| sx[p])
                .or(pw.map(|p| w.shape()[p]))
                .or(po.map(|p| so[p]))
                .unwrap_or(1);
            if size == 1 {
                continue;
            }
            match (px, pw, po) {
                (Some(x), Some(w), None) if k_axis.replace((x, w)).is_none() => {}
                (None, Some(w), Some(o)) if co_axis.replace((w, o)).is_none() => {}
                (Some(x), None, Some(o)) => others.push((x, o)),
                _ => return None,
            }
        }
        let ((kx, kw), (cw, axis)) = (k_axis?, co_axis?);
        others.sort_by_key(|a| a.0);
        if !others.windows(2).all(|p| p[0].1 < p[1].1)
            || !others.iter().all(|&(x, o)| (x < kx) == (o < axis))
        {
            return None;
        }
        let n: usize = others
            .iter()
            .filter(|a| a.0 < kx)
            .map(|a| sx[a.0])
            .product();
        let npix: usize = others
            .iter()
            .filter(|a| a.0 > kx)
            .map(|a| sx[a.0])
            .product();
        let (c, co) = (sx[kx], so[axis]);
        // Rows of a plain MatMul ([tokens, c] x [c, co]: no pixels) stay a GEMM.
        if npix < 2 {
            return None;
        }
        if w.len() != c * co {
            return None;
        }
        Some(PointwiseConv {
            input: xi,
            transposed: cw > kw,
            n,
            c,
            npix,
            co,
            axis,
        })
    }

    /// The `conv2d_1x1_f32` launch of [`Self::einsum_conv`]'s convolution.
    fn pointwise_conv(
        &self,
        node: &TypedNode,
        p: &PointwiseConv,
        fused: Option<&Fusable>,
    ) -> TractResult<Option<LaunchSpec>> {
        let gy = p.co.div_ceil(64);
        let npix = p.n * p.npix;
        if gy > 65_535 || [p.n, p.c, p.npix, p.co].iter().any(|&s| !fits_i32(s)) {
            return Ok(None);
        }
        let Some(w) = self.konst(node.inputs[1 - p.input]) else {
            return Ok(None);
        };
        // Row-major over its non-trivial axes, the constant is [co, c] or [c, co].
        let wv = w.try_as_plain_ram()?.as_slice::<f32>()?;
        let (c, co) = (p.c, p.co);
        let weights: Vec<f32> = if p.transposed {
            (0..co * c).map(|i| wv[(i % c) * co + i / c]).collect()
        } else {
            wv.to_vec()
        };
        let mut kernel = Arc::new(Tensor::from_shape(&[co, c], &weights)?);
        let mut bias = None;
        if let Some(f) = fused {
            let Some(folded) = fold_affine(kernel, bias, p.co, f)? else {
                return Ok(None);
            };
            (kernel, bias) = folded;
        }
        let (act, a, b, post_mul, post_add) = fused
            .map(|f| (f.act, f.a, f.b, f.post_mul, f.post_add))
            .unwrap_or((act::NONE, 0.0, 0.0, 1.0, 0.0));
        let params = k::ConvParams {
            n: p.n as i32,
            c: p.c as i32,
            h: 1,
            w: p.npix as i32,
            co: p.co as i32,
            oh: 1,
            ow: p.npix as i32,
            kh: 1,
            kw: 1,
            sh: 1,
            sw: 1,
            dh: 1,
            dw: 1,
            group: 1,
            act,
            a,
            b,
            post_mul,
            post_add,
            ..Default::default()
        };
        let grid = [npix.div_ceil(64).max(1) as u32, gy as u32, 1];
        Ok(Some(conv_launch(
            p.input,
            Kernel::Conv1x1,
            grid,
            &params,
            kernel,
            bias,
            fused.and_then(|f| f.residual),
        )))
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
            post_mul: 1.0,
            post_add: 0.0,
            ..Default::default()
        };
        let n = oshape.iter().product::<usize>();
        Ok(Some(conv_launch(
            0,
            Kernel::Deconv,
            grid_1d(n),
            &params,
            kernel,
            bias,
            None,
        )))
    }

    // Long: the EinSum expressions a GEMM takes (batch, transposes, broadcast operands)
    // recognised in one place, against the strides the kernel reads.
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
        if bsz > 65_535 || [bsz, msz, nsz, ksz].iter().any(|&s| !fits_i32(s)) {
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
        // M (pixels, for a 1x1 convolution: millions) on grid.x, whose limit is 2^31 - 1;
        // N on grid.y (65,535 tiles).
        if nsz.div_ceil(bn) > 65_535 {
            return Ok(None);
        }
        Ok(Some(LaunchSpec {
            kernel,
            grid: [msz.div_ceil(bm) as u32, nsz.div_ceil(bn) as u32, bsz as u32],
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
        Ok(Some(reduce_launch(
            &ishape,
            &r.axes,
            oshape,
            op,
            scale,
            Operand::Output,
        )))
    }

    /// tract's `RmsNorm` (what it makes of `x / sqrt(mean(x², axis) + eps)`): the mean of
    /// squares into a scratch value, then one pointwise pass `x * rsqrt(m + eps)`.
    fn rms_norm(&self, r: &RmsNorm, oshape: &[usize]) -> TractResult<Option<Vec<LaunchSpec>>> {
        let Ok(eps) = r.eps.cast_to_scalar::<f32>() else {
            return Ok(None);
        };
        if r.axis >= oshape.len() {
            return Ok(None);
        }
        let mut mshape = oshape.to_vec();
        mshape[r.axis] = 1;
        let mean = Operand::Temp(0, mshape.clone());
        let reduce = reduce_launch(
            oshape,
            &[r.axis],
            &mshape,
            k::red::SUM_SQUARES,
            1.0 / oshape[r.axis].max(1) as f32,
            mean.clone(),
        );
        let n = oshape.iter().product::<usize>();
        let mut p = k::PointwiseParams {
            n: n as i32,
            rank: oshape.len() as i32,
            n_in: 2,
            n_ops: 2,
            dims: dims6(oshape),
            ..Default::default()
        };
        p.views[0] = view(0, &strides_of(oshape));
        p.views[1] = view(0, &broadcast_strides(&mshape, oshape));
        let (m, t) = (1, k::PW_MAX_IN as i32);
        p.code[0] = k::PW_ACT_BASE + act::RSQRT_ADD;
        p.a[0] = m;
        p.ca[0] = eps;
        p.code[1] = bin::MUL;
        p.a[1] = 0;
        p.b[1] = t;
        let scale = LaunchSpec {
            kernel: Kernel::Pointwise,
            grid: grid_1d(n),
            block: B256,
            params: bytes_of(&p),
            fixups: vec![
                (0, Operand::Input(0)),
                (8, mean),
                (k::PW_MAX_IN * 8, Operand::Output),
            ],
        };
        Ok(Some(vec![reduce, scale]))
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
            Some("HalfPixel") => k::coord::HALF_PIXEL,
            Some("Asymmetric") => k::coord::ASYMMETRIC,
            Some("AlignCorners") => k::coord::ALIGN_CORNERS,
            _ => return Ok(None),
        };
        let linear = match field("interpolator").as_deref() {
            Some("Linear") => 1,
            Some("Nearest") => 0,
            _ => return Ok(None),
        };
        let nearest = match field("nearest").as_deref() {
            Some("Floor") => k::nearest::FLOOR,
            Some("Ceil") => k::nearest::CEIL,
            Some("RoundPreferFloor") => k::nearest::ROUND_PREFER_FLOOR,
            Some("RoundPreferCeil") => k::nearest::ROUND_PREFER_CEIL,
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
                if let Ok(s) = t.try_as_plain_ram().and_then(|v| v.as_slice::<f32>()) {
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

/// A convolution's weights and its bias (`None`: no bias).
type WeightsAndBias = (Arc<Tensor>, Option<Arc<Tensor>>);

/// A convolution's weights and bias with an epilogue's per-channel affine op folded in:
/// `scale · (w ∗ x + bias) + shift = (scale · w) ∗ x + (scale · bias + shift)`, rows of the
/// kernel (O first) scaled by their channel's factor.
fn fold_affine(
    kernel: Arc<Tensor>,
    bias: Option<Arc<Tensor>>,
    co: usize,
    f: &Fusable,
) -> TractResult<Option<WeightsAndBias>> {
    let (Some(s), Some(t)) = (&f.scale, &f.shift) else {
        return Ok(Some((kernel, bias)));
    };
    let w = kernel.try_as_plain_ram()?.as_slice::<f32>()?;
    if co == 0 || w.len() % co != 0 || s.len() != co || t.len() != co {
        // Not a layout the fold reads: the node is not planned with this epilogue.
        return Ok(None);
    }
    let per = w.len() / co;
    let w: Vec<f32> = w.iter().enumerate().map(|(i, v)| v * s[i / per]).collect();
    let b0 = match &bias {
        Some(b) => b.try_as_plain_ram()?.as_slice::<f32>()?.to_vec(),
        None => vec![0.0; co],
    };
    let b: Vec<f32> = (0..co).map(|o| b0[o] * s[o] + t[o]).collect();
    Ok(Some((
        Arc::new(Tensor::from_shape(kernel.shape(), &w)?),
        Some(Arc::new(tensor1(&b))),
    )))
}

/// A convolution-family launch: the node's input `input`, weights, optional bias, output
/// (`ConvParams` order).
fn conv_launch(
    input: usize,
    kernel: Kernel,
    grid: [u32; 3],
    params: &k::ConvParams,
    weights: Arc<Tensor>,
    bias: Option<Arc<Tensor>>,
    residual: Option<OutletId>,
) -> LaunchSpec {
    let mut fixups = vec![(0, Operand::Input(input)), (8, Operand::Const(weights))];
    if let Some(b) = bias {
        fixups.push((16, Operand::Const(b)));
    }
    fixups.push((24, Operand::Output));
    if let Some(r) = residual {
        fixups.push((32, Operand::Outlet(r)));
    }
    LaunchSpec {
        kernel,
        grid,
        block: B256,
        params: bytes_of(params),
        fixups,
    }
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

/// A reduction of `ishape` over `axes` (scaled by `scale`) into `dst`, of shape `oshape` (the
/// reduced axes kept with size 1); it reads the node's first input.
fn reduce_launch(
    ishape: &[usize],
    axes: &[usize],
    oshape: &[usize],
    op: i32,
    scale: f32,
    dst: Operand,
) -> LaunchSpec {
    let istr = strides_of(ishape);
    let kept: Vec<usize> = (0..ishape.len())
        .map(|a| if axes.contains(&a) { 0 } else { istr[a] })
        .collect();
    let mut axes = axes.to_vec();
    axes.sort_unstable();
    let red_dims: Vec<usize> = axes.iter().map(|&a| ishape[a]).collect();
    let red_strides: Vec<usize> = axes.iter().map(|&a| istr[a]).collect();
    let n = oshape.iter().product::<usize>();
    let red_n = red_dims.iter().product::<usize>();
    let per_block = reduce_per_block(n, red_n);
    let params = k::ReduceParams {
        per_block: per_block as i32,
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
    let grid = if per_block {
        [n.clamp(1, 65_535) as u32, 1, 1]
    } else {
        grid_1d(n)
    };
    launch(Kernel::Reduce, grid, &params, vec![Operand::Input(0), dst])
}

/// Whether a reduction to `n_out` outputs of `red_n` elements each runs one block per output
/// (256 threads along the elements) rather than one thread per output: when each output is
/// long and there are too few of them to fill the GPU with threads (PP-OCR's global pools:
/// hundreds of outputs over ~1,000 pixels; a max over 6,625 classes). A thread per output
/// stays for many short reductions, where a block would leave most of its threads idle.
fn reduce_per_block(n_out: usize, red_n: usize) -> bool {
    red_n >= 64 && n_out <= 32_768
}
