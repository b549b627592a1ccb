//! Planning a new input shape by re-typing, for graphs tract cannot type with symbolic
//! shapes (PaddleOCR's detector: its FPN adds maps of `2·⌈H/32⌉` and `⌈H/16⌉` rows, which only
//! agree for heights a multiple of 32, so tract cannot unify them). Such a graph used to be
//! typed and decluttered from the start at each new shape: on PP-OCR's detector ~10 ms of
//! typing and ~60 ms of declutter (tract's patches look for duplicates among all nodes, so
//! the declutter is quadratic in the graph's size), against ~2 ms to re-type the graph
//! decluttered at the first shape
//! ([`crate::execution::tract::Plans::retyped`]).
//!
//! A re-typed graph keeps what its operators fixed at the first shape: a constant folded
//! from a shape (a `Shape -> Div` scale, tf2onnx's Shape-driven Resize), a reshape's sizes.
//! Most of that shows as facts the operators refuse, but a scale does not, so re-typing is
//! trusted only as far as it was checked: a shape differing from the first in some dimensions
//! is re-typed only once a shape differing in each of them was planned both ways, decluttered
//! and re-typed, to the same program, byte for byte ([`same_program`]): the same launches with
//! the same parameters, weights and constants. A graph that runs nodes on tract (whose
//! constants the program does not hold) or plans differently is never re-typed.

use std::sync::Arc;

use tract_onnx::prelude::*;

use crate::execution::lower::{Program, Step, Storage, ValueId};

/// What re-typing has been checked for, per model version.
#[derive(Default)]
pub(crate) struct Retyping {
    /// The first shapes planned from the start and their decluttered graph; dropped when
    /// re-typing is refused.
    reference: Option<(Vec<TVec<usize>>, Arc<TypedModel>)>,
    /// Per input, per dimension: whether a shape differing from the reference's in it was
    /// planned both ways to the same program.
    checked: Vec<Vec<bool>>,
    /// Re-typing gave another program once (or cannot be checked): never again.
    refused: bool,
    /// Shapes planned by re-typing.
    retyped: usize,
}

/// What a new shape planned from the start is to do.
pub(crate) enum Plan {
    /// Re-type this graph (checked for the dimensions the shape differs in).
    Retype(Arc<TypedModel>),
    /// Declutter from the start, then check re-typing this graph against it.
    Check(Arc<TypedModel>),
    /// Declutter from the start (and keep the result as the reference if there is none).
    Declutter,
}

/// The dimensions (input, axis) in which `shapes` differ from `reference`, or `None` where
/// they cannot be compared (another number of inputs or rank).
fn differing(reference: &[TVec<usize>], shapes: &[TVec<usize>]) -> Option<Vec<(usize, usize)>> {
    if reference.len() != shapes.len()
        || reference
            .iter()
            .zip(shapes)
            .any(|(a, b)| a.len() != b.len())
    {
        return None;
    }
    let mut d = Vec::new();
    for (i, (a, b)) in reference.iter().zip(shapes).enumerate() {
        d.extend((0..a.len()).filter(|&k| a[k] != b[k]).map(|k| (i, k)));
    }
    Some(d)
}

impl Retyping {
    /// How to plan `shapes`.
    pub(crate) fn plan(&self, shapes: &[TVec<usize>]) -> Plan {
        let Some((first, graph)) = self.reference.as_ref().filter(|_| !self.refused) else {
            return Plan::Declutter;
        };
        match differing(first, shapes) {
            Some(d) if d.iter().all(|&(i, k)| self.checked[i][k]) => Plan::Retype(graph.clone()),
            Some(_) => Plan::Check(graph.clone()),
            None => Plan::Declutter,
        }
    }

    /// `program`, decluttered from the start at `shapes`, is the first: its graph becomes the
    /// reference (if it runs nothing on tract).
    pub(crate) fn first(&mut self, shapes: &[TVec<usize>], program: &Program) {
        if self.reference.is_some() || self.refused {
            return;
        }
        if !program.report.cpu_nodes.is_empty() {
            self.refused = true;
            return;
        }
        self.checked = shapes.iter().map(|s| vec![false; s.len()]).collect();
        self.reference = Some((shapes.to_vec(), program.model.clone()));
    }

    /// `retyped` (the reference re-typed at `shapes`, lowered, or `None` where that failed)
    /// against `decluttered`: the dimensions `shapes` differ in are checked, or re-typing is
    /// refused for good.
    pub(crate) fn checked(
        &mut self,
        shapes: &[TVec<usize>],
        decluttered: &Program,
        retyped: Option<&Program>,
    ) {
        let Some((first, _)) = self.reference.as_ref() else {
            return;
        };
        let d = differing(first, shapes);
        match (d, retyped) {
            (Some(d), Some(r)) if same_program(r, decluttered) => {
                for (i, k) in d {
                    self.checked[i][k] = true;
                }
            }
            _ => {
                self.refused = true;
                self.reference = None;
            }
        }
    }

    /// A shape was planned by re-typing.
    pub(crate) fn used(&mut self) {
        self.retyped += 1;
    }

    /// Whether re-typing was refused (`Some(false)`), checked for some dimension
    /// (`Some(true)`), or not decided yet; and how many shapes it planned.
    #[cfg(test)]
    pub(crate) fn state(&self) -> (Option<bool>, usize) {
        let checked = if self.refused {
            Some(false)
        } else if self.checked.iter().flatten().any(|&c| c) {
            Some(true)
        } else {
            None
        };
        (checked, self.retyped)
    }
}

/// Whether two programs compute the same, byte for byte: the same steps, each launch of the
/// same kernel on the same grid with the same parameters, reading and writing the same arena
/// offsets and weights of the same contents (two graphs may share or order their constants
/// differently), and nothing run on tract.
pub(crate) fn same_program(a: &Program, b: &Program) -> bool {
    // The same bytes: a value of the same shape and type at the same arena offset, or a
    // weight of the same contents.
    let same = |x: ValueId, y: ValueId| {
        let (Some(vx), Some(vy)) = (a.values.get(x), b.values.get(y)) else {
            return false;
        };
        let (Some(rx), Some(ry)) = (a.values.get(vx.root), b.values.get(vy.root)) else {
            return false;
        };
        vx.shape == vy.shape
            && vx.dt == vy.dt
            && match (rx.storage, ry.storage) {
                (Storage::Arena(o), Storage::Arena(p)) => o == p,
                (Storage::Weight(i), Storage::Weight(j)) => a.weights.get(i) == b.weights.get(j),
                _ => false,
            }
    };
    let step = |x: &Step, y: &Step| match (x, y) {
        (
            Step::Launch {
                kernel,
                grid,
                block,
                params,
                fixups,
            },
            Step::Launch {
                kernel: k,
                grid: g,
                block: bl,
                params: p,
                fixups: f,
            },
        ) => {
            kernel == k
                && grid == g
                && block == bl
                && params == p
                && fixups.len() == f.len()
                && fixups
                    .iter()
                    .zip(f)
                    .all(|(&(at, v), &(at2, w))| at == at2 && same(v, w))
        }
        (Step::UploadInput { input, value }, Step::UploadInput { input: i, value: v }) => {
            input == i && same(*value, *v)
        }
        (Step::Upload { value }, Step::Upload { value: v })
        | (Step::Download { value }, Step::Download { value: v }) => same(*value, *v),
        _ => false,
    };
    a.report.cpu_nodes.is_empty()
        && b.report.cpu_nodes.is_empty()
        && a.report.arena_bytes == b.report.arena_bytes
        && a.steps.len() == b.steps.len()
        && a.steps.iter().zip(&b.steps).all(|(x, y)| step(x, y))
        && a.outputs.len() == b.outputs.len()
        && a.outputs.iter().zip(&b.outputs).all(|(&x, &y)| same(x, y))
}
