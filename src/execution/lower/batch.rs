//! Whether a graph keeps the images of a batch apart: axis 0 of every input flows to axis 0 of
//! every output through operators that never combine two positions along it. Then a batch may
//! run image by image (each image's activations stay in one core's caches, and images run
//! side by side on the cores with no synchronisation between operators) and give the same
//! answer as the whole batch at once.
//!
//! Triton's dynamic batcher assumes as much of every batching model, but a model may still mix
//! its batch (a softmax over axis 0, a mean over the batch, a reshape that merges it with
//! another axis): those are found here and keep running as one batch.
//!
//! The graph is read at a batch of 2 or more: at batch 1 tract's declutter treats the batch
//! axis as any axis of size 1 (a 1x1 convolution becomes an EinSum that sums over it, a
//! reduction over it folds away), which hides both what keeps images apart and what mixes
//! them.

use std::collections::HashMap;

use tract_onnx::prelude::*;
use tract_onnx::tract_core::axes::AxesMapping;
use tract_onnx::tract_core::internal::{InOut, ToDim};
use tract_onnx::tract_core::ops::array::DynSlice;
use tract_onnx::tract_core::ops::cnn::{MaxPool, SumPool};
use tract_onnx::tract_core::ops::nn::{RmsNorm, Softmax};
use tract_onnx::tract_core::ops::Downsample;

/// Whether `model` (decluttered at batch `batch` ≥ 2: axis 0 of every input has that size)
/// keeps the images of a batch apart. Conservative: an operator this does not know as keeping
/// them apart says no.
pub(crate) fn separable(model: &TypedModel, batch: usize) -> bool {
    batch >= 2 && images_apart(model, batch.to_dim()).unwrap_or(false)
}

fn images_apart(model: &TypedModel, batch: TDim) -> TractResult<bool> {
    // The batch axis of each value that carries images (the others are the same for every
    // image: weights, shapes computed from them).
    let mut axis_of: HashMap<OutletId, usize> = HashMap::new();
    let inputs = model.input_outlets()?;
    if inputs.is_empty() {
        return Ok(false);
    }
    for i in inputs {
        let fact = model.outlet_fact(*i)?;
        if fact.rank() == 0 || fact.shape[0] != batch {
            return Ok(false);
        }
        axis_of.insert(*i, 0);
    }
    for id in model.eval_order()? {
        let node = model.node(id);
        if inputs.contains(&OutletId::new(id, 0)) {
            continue;
        }
        let carried: Vec<(usize, usize)> = node
            .inputs
            .iter()
            .enumerate()
            .filter_map(|(slot, i)| axis_of.get(i).map(|a| (slot, *a)))
            .collect();
        if carried.is_empty() {
            continue;
        }
        let Some(out_axes) = output_axes(model, node, &carried)? else {
            return Ok(false);
        };
        for (slot, axis) in out_axes.into_iter().enumerate() {
            let fact = model.outlet_fact(OutletId::new(id, slot))?;
            // The batch's size: the axis was not broadcast or resized.
            if axis >= fact.rank() || fact.shape[axis] != batch {
                return Ok(false);
            }
            axis_of.insert(OutletId::new(id, slot), axis);
        }
    }
    Ok(model
        .output_outlets()?
        .iter()
        .all(|o| axis_of.get(o) == Some(&0)))
}

/// The batch axis of each output of `node`, whose inputs `carried` (slot, axis) carry images,
/// or `None` where the node may combine images (or is not known not to).
fn output_axes(
    model: &TypedModel,
    node: &TypedNode,
    carried: &[(usize, usize)],
) -> TractResult<Option<Vec<usize>>> {
    let on = |a: usize| carried.iter().any(|(_, c)| *c == a);
    // Operators whose tract axes mapping links an axis they reduce or scan along.
    if let Some(op) = node.op_as::<Softmax>() {
        if op.axes.iter().any(|a| on(*a)) {
            return Ok(None);
        }
    } else if let Some(op) = node.op_as::<RmsNorm>() {
        if on(op.axis) {
            return Ok(None);
        }
    } else if let Some(op) = node.op_as::<DynSlice>() {
        if on(op.axis) {
            return Ok(None);
        }
    } else if node.op.name().starts_with("Scan") {
        return Ok(None);
    }
    // Operators with no axes mapping in tract that keep every position of the batch axis
    // apart: pooling over the image axes, tract-onnx's Resize and tract's replication and
    // subsampling along other axes (a size change along the batch axis is caught by the
    // caller's size check).
    let positional = match () {
        _ if node.op_is::<MaxPool>() || node.op_is::<SumPool>() => {
            let spec = node
                .op_as::<MaxPool>()
                .map(|p| &p.pool_spec)
                .or_else(|| node.op_as::<SumPool>().map(|p| &p.pool_spec));
            let fact = model.outlet_fact(node.inputs[0])?;
            let n = spec.and_then(|s| s.data_format.shape(&fact.shape).ok()?.n_axis());
            carried.len() == 1 && carried[0].0 == 0 && n == Some(carried[0].1)
        }
        _ if node.op_is::<Downsample>() => node
            .op_as::<Downsample>()
            .is_some_and(|d| carried.len() == 1 && carried[0].0 == 0 && !on(d.axis)),
        _ if ["Resize", "NearestUpsample", "Tile"].contains(&node.op.name().as_ref()) => {
            carried.len() == 1 && carried[0].0 == 0
        }
        _ => {
            return mapped_axes(model, node, carried);
        }
    };
    Ok(positional.then(|| vec![carried[0].1; node.outputs.len()]))
}

/// The batch axis of each output as tract's axes mapping of the node links it to the inputs
/// that carry images (all of them the same axis of the mapping).
fn mapped_axes(
    model: &TypedModel,
    node: &TypedNode,
    carried: &[(usize, usize)],
) -> TractResult<Option<Vec<usize>>> {
    let (inputs, outputs) = model.node_facts(node.id)?;
    let map: AxesMapping = node.op.axes_mapping(&inputs, &outputs)?;
    let mut repr = None;
    for (slot, axis) in carried {
        let r = map.axis((InOut::In(*slot), *axis))?.repr;
        if repr.is_some_and(|prev| prev != r) {
            return Ok(None);
        }
        repr = Some(r);
    }
    let Some(repr) = repr else {
        return Ok(None);
    };
    let axis = map.axis(repr)?;
    Ok(axis
        .outputs
        .iter()
        .map(|positions| match positions.as_slice() {
            [a] => Some(*a),
            _ => None,
        })
        .collect())
}
