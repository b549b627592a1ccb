//! Passes over the finished steps: CPU islands and the activation arena's layout.

use super::{Step, Storage, Value, ValueId};
use std::collections::HashMap;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::format_err;

/// Runs of CPU steps (with the downloads between them, which move before the run: the values
/// they read were computed before it) become one tract sub-model, optimised as tract
/// optimises a whole CPU model (a single node too: some tract ops only run inside a plan). A
/// run that does not compile stays node by node.
/// Returns the new steps and the number of islands.
pub(super) fn form_islands(
    model: &TypedModel,
    steps: Vec<Step>,
    values: &[Value],
    outputs: &[ValueId],
) -> TractResult<(Vec<Step>, usize)> {
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
            // Node by node; a stateful operator cannot run that way.
            None => {
                if let Some(Step::Cpu { node, .. }) = cpu.iter().find(
                    |s| matches!(s, Step::Cpu { node, .. } if !is_stateless(model.node(*node))),
                ) {
                    let n = model.node(*node);
                    return Err(format_err!(
                        "node '{}' ({}) keeps state and its CPU island did not compile",
                        n.name,
                        n.op.name()
                    ));
                }
                out.extend(run.iter().cloned())
            }
        }
        i = end;
    }
    Ok((out, islands))
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
        sub.select_output_outlets(&outputs.iter().map(|v| outlet[v]).collect::<Vec<_>>())?;
        let plan = sub.into_optimized()?.into_runnable()?;
        Ok(Step::CpuIsland {
            plan,
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
pub(super) fn layout_arena(values: &mut [Value], steps: &[Step], outputs: &[ValueId]) -> usize {
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

/// Whether `node` keeps no state between runs (so it can be evaluated on its own).
fn is_stateless(node: &TypedNode) -> bool {
    node.op
        .state(&tract_onnx::tract_core::plan::EvalContext::out_of_plan())
        .is_ok_and(|s| s.is_none())
}
