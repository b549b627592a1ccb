//! ONNX operators whose tract parsers panic on hostile attributes instead of failing: each
//! is registered again here with its inputs checked first, so a model that gets them wrong
//! is a load or request error and never a panic (which an application built with
//! `panic = "abort"` would not survive).
//!
//! - `Squeeze` / `Unsqueeze`: tract 0.23 indexes the shape with each axis unchecked
//!   (`Vec::remove` / `insert` past the end; found by `fuzz/onnx_load`,
//!   `fuzz/regressions/onnx_load/squeeze-axis-out-of-range`). Axes are checked against
//!   the input's rank (ONNX: `[-r, r)`, for Unsqueeze `r` the output rank; no repeats), then
//!   tract's own operators do the work.

use tract_hir::internal::*;
use tract_hir::ops::array::{AddDims, Squeeze};
use tract_onnx::model::{Onnx, ParsingContext};
use tract_onnx::pb::NodeProto;

/// tract's ONNX framework with the parsers of the operators above replaced.
pub(crate) fn onnx() -> Onnx {
    let mut onnx = tract_onnx::onnx();
    onnx.op_register.insert("Squeeze", squeeze);
    onnx.op_register.insert("Unsqueeze", unsqueeze);
    onnx
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Squeeze,
    Unsqueeze,
}

/// Squeeze or Unsqueeze with its axes from the attribute (`Some`, opsets before 13) or from
/// the second input (`None`; a Squeeze without it drops every dim of size 1).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct CheckedAxes {
    kind: Kind,
    axes: Option<Vec<i64>>,
}

type Parsed = TractResult<(Box<dyn InferenceOp>, Vec<String>)>;

fn squeeze(ctx: &ParsingContext, node: &NodeProto) -> Parsed {
    parse(ctx, node, Kind::Squeeze)
}

fn unsqueeze(ctx: &ParsingContext, node: &NodeProto) -> Parsed {
    parse(ctx, node, Kind::Unsqueeze)
}

fn parse(ctx: &ParsingContext, node: &NodeProto, kind: Kind) -> Parsed {
    let axes = if ctx.onnx_operator_set_version < 13 {
        Some(node.get_attr_vec::<i64>("axes")?)
    } else {
        None
    };
    Ok((expand(CheckedAxes { kind, axes }), vec![]))
}

impl CheckedAxes {
    /// The axes normalised to `0..rank` (the output rank for Unsqueeze), or why not.
    fn checked(&self, axes: &[i64], input_rank: usize) -> TractResult<Vec<isize>> {
        let rank = match self.kind {
            Kind::Squeeze => input_rank,
            Kind::Unsqueeze => input_rank + axes.len(),
        } as i64;
        let mut seen = Vec::with_capacity(axes.len());
        for &a in axes {
            let n = if a < 0 { a.checked_add(rank) } else { Some(a) };
            match n {
                Some(n) if (0..rank).contains(&n) && !seen.contains(&(n as isize)) => {
                    seen.push(n as isize)
                }
                Some(n) if (0..rank).contains(&n) => {
                    bail!("{:?} axis {a} is given twice", self.kind)
                }
                _ => bail!(
                    "{:?} axis {a} is out of range for a rank {input_rank} input",
                    self.kind
                ),
            }
        }
        Ok(seen)
    }

    fn output_shape(&self, axes: &[i64], shape: &[TDim]) -> TractResult<TVec<TDim>> {
        let axes = self.checked(axes, shape.len())?;
        match self.kind {
            Kind::Squeeze => Squeeze::new(Some(axes)).output_shape(shape),
            Kind::Unsqueeze => Ok(AddDims::new(axes).output_shape(shape)),
        }
    }
}

fn unit_axes(shape: &[TDim]) -> Vec<i64> {
    shape
        .iter()
        .enumerate()
        .filter(|(_, d)| d.is_one())
        .map(|(i, _)| i as i64)
        .collect()
}

fn axes_of(t: &Tensor) -> TractResult<Vec<i64>> {
    Ok(t.cast_to::<i64>()?
        .try_as_plain_ram()?
        .as_slice::<i64>()?
        .to_vec())
}

impl Expansion for CheckedAxes {
    fn name(&self) -> StaticName {
        format!("Checked{:?}", self.kind).into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_output_arity(outputs, 1)?;
        if inputs.is_empty() || inputs.len() > 2 {
            bail!("{:?} takes 1 or 2 inputs, not {}", self.kind, inputs.len());
        }
        s.equals(&outputs[0].datum_type, &inputs[0].datum_type)?;
        match (&self.axes, inputs.len(), self.kind) {
            (Some(axes), _, _) => s.given(&inputs[0].shape, move |s, shape| {
                s.equals(&outputs[0].shape, self.output_shape(axes, &shape)?)
            }),
            (None, 2, _) => s.given_2(&inputs[0].shape, &inputs[1].value, move |s, shape, axes| {
                s.equals(
                    &outputs[0].shape,
                    self.output_shape(&axes_of(&axes)?, &shape)?,
                )
            }),
            (None, _, Kind::Squeeze) => s.given(&inputs[0].shape, move |s, shape| {
                s.equals(
                    &outputs[0].shape,
                    self.output_shape(&unit_axes(&shape), &shape)?,
                )
            }),
            (None, _, Kind::Unsqueeze) => bail!("Unsqueeze needs its axes input"),
        }
    }

    fn wire(
        &self,
        prefix: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        let shape = model.outlet_fact(inputs[0])?.shape.to_tvec();
        let axes = match (&self.axes, inputs.get(1)) {
            (Some(axes), _) => axes.clone(),
            (None, Some(i)) => match model.outlet_fact(*i)?.konst.clone() {
                Some(t) => axes_of(&t)?,
                None => bail!("{:?} needs constant axes", self.kind),
            },
            (None, None) if self.kind == Kind::Squeeze => unit_axes(&shape),
            (None, None) => bail!("Unsqueeze needs its axes input"),
        };
        let axes = self.checked(&axes, shape.len())?;
        match self.kind {
            Kind::Squeeze => Squeeze::new(Some(axes)).wire(prefix, model, &inputs[..1]),
            Kind::Unsqueeze => AddDims::new(axes).wire(prefix, model, &inputs[..1]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axes_are_checked_against_the_rank() {
        let sq = CheckedAxes {
            kind: Kind::Squeeze,
            axes: None,
        };
        let unsq = CheckedAxes {
            kind: Kind::Unsqueeze,
            axes: None,
        };
        assert_eq!(sq.checked(&[-1, 0], 4).unwrap(), [3, 0]);
        let refused = |c: &CheckedAxes, axes: &[i64], rank: usize| {
            c.checked(axes, rank)
                .map(|ok| format!("accepted as {ok:?}"))
                .unwrap_or_else(|e| e.to_string())
        };
        let out_of_range = |a: i64| format!("Squeeze axis {a} is out of range for a rank 4 input");
        assert_eq!(refused(&sq, &[4], 4), out_of_range(4));
        assert_eq!(refused(&sq, &[-5], 4), out_of_range(-5));
        assert_eq!(
            refused(&sq, &[-120259084285], 4),
            out_of_range(-120259084285),
            "the fuzz case"
        );
        assert_eq!(refused(&sq, &[i64::MIN], 4), out_of_range(i64::MIN));
        assert_eq!(refused(&sq, &[1, -3], 4), "Squeeze axis -3 is given twice");
        // Unsqueeze counts the output rank: [2, 3] inserts two axes at the end of a rank 2.
        assert_eq!(unsq.checked(&[2, 3], 2).unwrap(), [2, 3]);
        assert_eq!(unsq.checked(&[-1], 2).unwrap(), [2]);
        assert_eq!(
            refused(&unsq, &[4], 2),
            "Unsqueeze axis 4 is out of range for a rank 2 input"
        );
        assert_eq!(
            refused(&unsq, &[9], 2),
            "Unsqueeze axis 9 is out of range for a rank 2 input"
        );
    }
}
