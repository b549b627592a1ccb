//! An ONNX file to tract's inference graph: our checked operator parsers, operators tract does
//! not know rejected at load, and the graph's tensor names.

use tract_hir::infer::Factoid;
use tract_onnx::pb;
use tract_onnx::prelude::*;

use crate::error::{Error, ErrorKind, Result};
use crate::execution::tract::{guarded, GraphNames, Plans};

/// What [`parse`] reads from a file: the graph, its tensor names, its `metadata_props`, and
/// the graph typed with symbolic input shapes where tract can type it so.
type Parsed = (
    InferenceModel,
    GraphNames,
    std::collections::BTreeMap<String, String>,
    Option<TypedModel>,
);

/// The parsed graph of model `m`, its tensor names, its `metadata_props`, and the graph typed
/// with its declared (possibly symbolic) input shapes where tract can type it so (`dims`:
/// the config's model-side dims of each input, which fix what the file leaves open).
pub(crate) fn parse(
    m: &str,
    proto: &pb::ModelProto,
    dir: Option<&str>,
    dims: &[Option<Vec<i64>>],
) -> Result<Parsed> {
    let parsed = guarded(&format!("failed to load model '{m}'"), || {
        super::checked_ops::onnx().parse(proto, dir)
    })?;
    if !parsed.unresolved_inputs.is_empty() {
        return Err(Error::new(
            ErrorKind::ModelFile,
            format!(
                "failed to load model '{m}': unresolved graph inputs {:?}",
                parsed.unresolved_inputs
            ),
        ));
    }
    let model = parsed.model;
    // Operators tract does not know are parsed as placeholders: reject them now.
    if let Some(node) = model
        .nodes()
        .iter()
        .find(|n| n.op_is::<tract_onnx::tract_core::ops::unimpl::UnimplementedOp>())
    {
        return Err(Error::new(
            ErrorKind::Unsupported,
            format!(
                "failed to load model '{m}': unsupported ONNX operator in node '{}': {:?}",
                node.name, node.op
            ),
        ));
    }
    // Check the whole graph once with its declared (possibly symbolic) shapes; kept, so a
    // new input shape is planned from it (`Plans::decluttered`). Some graphs (shapes
    // computed from `Shape` in ways tract cannot follow symbolically) only type with
    // concrete input shapes: those are checked when the first plan is built.
    let typed = match guarded("", || symbolic_inputs(&model, dims)?.into_typed()) {
        Ok(typed) => Some(typed),
        Err(e) => {
            tracing::debug!(
                "model '{m}' does not type with symbolic shapes; plans are checked per shape ({})",
                e.message()
            );
            None
        }
    };
    let metadata = proto
        .metadata_props
        .iter()
        .map(|p| (p.key.clone(), p.value.clone()))
        .collect();
    Ok((model, names(proto), metadata, typed))
}

/// `model` with every input dimension its file leaves open (`-1`, no value) the size the
/// config gives it (`dims[i]`, the model-side dims with the batch: -1 where variable), else a
/// symbol of its own (`modelyard_in<i>_<d>`), so the graph can be typed once for every size
/// a request may have.
fn symbolic_inputs(
    model: &InferenceModel,
    dims: &[Option<Vec<i64>>],
) -> TractResult<InferenceModel> {
    let mut m = model.clone();
    for i in 0..m.input_outlets()?.len() {
        let fact = m.input_fact(i)?.clone();
        let config = dims.get(i).and_then(|d| d.as_ref());
        let (Some(dt), false) = (fact.datum_type.concretize(), fact.shape.is_open()) else {
            tract_onnx::tract_core::internal::bail!("input {i}: type or rank unknown");
        };
        let dims: TVec<TDim> = fact
            .shape
            .dims()
            .enumerate()
            .map(|(d, dim)| {
                dim.concretize().unwrap_or_else(|| {
                    match config.and_then(|c| c.get(d)).filter(|&&v| v >= 0) {
                        Some(&v) => v.to_dim(),
                        None => m.symbols.sym(&format!("modelyard_in{i}_{d}")).to_dim(),
                    }
                })
            })
            .collect();
        m.set_input_fact(i, InferenceFact::dt_shape(dt, dims))?;
    }
    Ok(m)
}

/// paddle2onnx computes reshape sizes as `Shape -> Cast(int32) -> Slice -> Cast(int64)`; tract
/// cannot cast a symbolic dimension to int32, so such a graph only types at concrete shapes,
/// and every new input shape is typed and decluttered from scratch (~100 ms for PP-OCR's
/// recogniser). In exactly that pattern (a Shape's output cast to int32, read only as the
/// data of Slice or Gather nodes whose outputs are read only by casts to int64, none of them
/// a graph output) the int32 cast is made an int64 one: the values are shape entries, the
/// same in both types, and the graph's int64 results are unchanged. Returns the casts changed.
pub(crate) fn widen_shape_casts(graph: &mut pb::GraphProto) -> usize {
    const INT32: i64 = 6;
    const INT64: i64 = 7;
    let outputs: std::collections::HashSet<&str> =
        graph.output.iter().map(|o| o.name.as_str()).collect();
    let mut readers: std::collections::HashMap<&str, Vec<(usize, usize)>> = Default::default();
    for (n, node) in graph.node.iter().enumerate() {
        for (slot, input) in node.input.iter().enumerate() {
            readers.entry(input.as_str()).or_default().push((n, slot));
        }
    }
    let producer: std::collections::HashMap<&str, &pb::NodeProto> = graph
        .node
        .iter()
        .flat_map(|n| n.output.iter().map(move |o| (o.as_str(), n)))
        .collect();
    let cast_to = |node: &pb::NodeProto| {
        (node.op_type == "Cast")
            .then(|| node.attribute.iter().find(|a| a.name == "to").map(|a| a.i))
            .flatten()
    };
    let only_read_by = |value: &str, ok: &dyn Fn(&pb::NodeProto, usize) -> bool| {
        !outputs.contains(value)
            && readers.get(value).is_some_and(|r| {
                !r.is_empty() && r.iter().all(|&(n, slot)| ok(&graph.node[n], slot))
            })
    };
    let widen: Vec<usize> = graph
        .node
        .iter()
        .enumerate()
        .filter(|(_, node)| {
            cast_to(node) == Some(INT32) && node.input.len() == 1 && node.output.len() == 1
        })
        .filter(|(_, node)| {
            producer
                .get(node.input[0].as_str())
                .is_some_and(|p| p.op_type == "Shape")
        })
        .filter(|(_, node)| {
            only_read_by(&node.output[0], &|reader, slot| {
                slot == 0
                    && ["Slice", "Gather"].contains(&reader.op_type.as_str())
                    && reader.output.len() == 1
                    && only_read_by(&reader.output[0], &|cast, _| cast_to(cast) == Some(INT64))
            })
        })
        .map(|(n, _)| n)
        .collect();
    for &n in &widen {
        for a in graph.node[n]
            .attribute
            .iter_mut()
            .filter(|a| a.name == "to")
        {
            a.i = INT64;
        }
    }
    widen.len()
}

fn names(proto: &pb::ModelProto) -> GraphNames {
    let Some(graph) = proto.graph.as_ref() else {
        return GraphNames::default();
    };
    let inits: std::collections::HashSet<&str> =
        graph.initializer.iter().map(|i| i.name.as_str()).collect();
    let (overridable, inputs) = graph
        .input
        .iter()
        .map(|i| i.name.clone())
        .partition(|n| inits.contains(n.as_str()));
    GraphNames {
        inputs,
        overridable,
        outputs: graph.output.iter().map(|o| o.name.clone()).collect(),
    }
}

/// The tract plans of a model file: parsed (its shape casts widened where that lets tract
/// type it with symbolic shapes, [`widen_shape_casts`]), then planned per input shape on
/// first use.
pub(crate) fn plans(
    m: &str,
    proto: &mut pb::ModelProto,
    dir: Option<&str>,
    dims: &[Option<Vec<i64>>],
    capacity: usize,
    threads: usize,
) -> Result<Plans> {
    if let Some(graph) = proto.graph.as_mut() {
        let widened = widen_shape_casts(graph);
        if widened > 0 {
            tracing::debug!("model '{m}': {widened} int32 shape casts widened to int64");
        }
    }
    let (model, names, metadata, typed) = parse(m, proto, dir, dims)?;
    Plans::new(m, model, names, metadata, capacity, threads, typed)
}

#[cfg(test)]
mod tests {
    use crate::execution::tract::Bound;
    use crate::execution::Executable;
    use crate::tensor::Tensor;
    use tract_onnx::prelude::*;

    /// The model file `fixtures/<file>`, read as model `name`.
    fn fixture_proto(file: &str, name: &str) -> tract_onnx::pb::ModelProto {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures")
            .join(file);
        super::super::io::read_proto(&path, name, usize::MAX).unwrap()
    }

    fn rec_proto() -> tract_onnx::pb::ModelProto {
        fixture_proto("ocr_repository/text_recognition/1/model.onnx", "rec")
    }

    /// The largest absolute difference between two arrays of the same shape.
    fn largest_difference(
        a: tract_ndarray::ArrayViewD<f32>,
        b: tract_ndarray::ArrayViewD<f32>,
    ) -> f32 {
        a.iter()
            .zip(b.iter())
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max)
    }

    /// PP-OCRv4's recogniser (paddle2onnx) types with a symbolic width once its three
    /// `Shape -> Cast(int32) -> Slice -> Cast(int64)` casts are int64, and a graph planned
    /// from the symbolic one answers exactly what the graph typed at the shape from the start
    /// answers, at several shapes.
    #[test]
    fn a_new_shape_is_planned_from_the_symbolic_graph_with_the_same_answers() {
        let mut widened = rec_proto();
        assert_eq!(super::widen_shape_casts(widened.graph.as_mut().unwrap()), 3);
        // The config's dims (`[3, 48, -1]`, batching): the file leaves the height open.
        let dims = [Some(vec![-1, 3, 48, -1])];
        let plans = super::plans("rec", &mut rec_proto(), None, &dims, 4, 1).unwrap();
        for shape in [tvec![1, 3, 48, 320], tvec![2, 3, 48, 488]] {
            let shapes = vec![shape.clone()];
            let bound = |how| {
                plans
                    .bind_symbolic(&shapes, how)
                    .unwrap_or_else(|| panic!("{shape:?} not planned from the symbolic graph"))
            };
            let direct = plans.decluttered_from_start(&shapes).unwrap();
            let x = tract_ndarray::ArrayD::from_shape_fn(shape.as_slice(), |i| {
                ((i[1] * 7 + i[2] * 3 + i[3]) % 17) as f32 / 8.0 - 1.0
            });
            let run = |m: TypedModel| {
                m.into_runnable()
                    .unwrap()
                    .run(tvec![tract_onnx::prelude::Tensor::from(x.clone()).into()])
                    .unwrap()
            };
            let b = run(direct);
            // Bound and decluttered again, or bound with its constants folded only.
            for how in [Bound::Decluttered, Bound::Folded] {
                let a = run(bound(how));
                assert_eq!(a.len(), b.len());
                for (a, b) in a.iter().zip(&b) {
                    assert_eq!(a.shape(), b.shape(), "{shape:?} {how:?}");
                    let diff = largest_difference(
                        a.to_plain_array_view::<f32>().unwrap(),
                        b.to_plain_array_view::<f32>().unwrap(),
                    );
                    assert!(diff <= 1e-6, "{shape:?} {how:?}: differs by {diff}");
                }
            }
        }
    }

    /// On the native engine, the recogniser's first width decides (by lowering both) that a
    /// bound graph with its constants only folded does the same work as the decluttered one,
    /// and every later width is planned so, answering what tract's plan of the graph typed
    /// at that shape from the start answers.
    #[test]
    fn later_widths_are_planned_with_the_constants_folded_and_answer_the_same() {
        let dims = [Some(vec![-1, 3, 48, -1])];
        let plans = super::plans("rec", &mut rec_proto(), None, &dims, 4, 1).unwrap();
        let reference = super::plans("rec", &mut rec_proto(), None, &dims, 4, 1).unwrap();
        let exec = crate::execution::program::executor::ProgramExecutable::new(
            plans,
            crate::execution::cpu::device(1),
            true,
            8,
        );
        assert_eq!(exec.plans_by_folding(), None);
        for (i, width) in [320usize, 200, 488].into_iter().enumerate() {
            answers_as_tract(
                &exec,
                &reference,
                "x",
                "softmax_11.tmp_0",
                &[1, 3, 48, width],
            );
            // The first width lowers both graphs and keeps the decluttered one's program.
            assert_eq!(
                exec.plans_by_folding(),
                Some(true),
                "after width {width} ({i})"
            );
        }
    }

    /// `exec`'s answer at `shape` (a deterministic input) against tract's plan of the graph
    /// typed at that shape from the start (`reference`).
    fn answers_as_tract(
        exec: &crate::execution::program::executor::ProgramExecutable,
        reference: &crate::execution::tract::Plans,
        input: &str,
        output: &str,
        shape: &[usize],
    ) {
        let x = tract_ndarray::ArrayD::from_shape_fn(shape, |i| {
            ((i[1] * 7 + i[2] * 3 + i[3]) % 17) as f32 / 8.0 - 1.0
        });
        let got = exec
            .execute(
                vec![(input.into(), Tensor::from(x.clone()))],
                &[output.into()],
            )
            .unwrap();
        let want = reference
            .decluttered_from_start(&[shape.iter().copied().collect()])
            .unwrap()
            .into_runnable()
            .unwrap()
            .run(tvec![tract_onnx::prelude::Tensor::from(x).into()])
            .unwrap();
        let want = want[0].to_plain_array_view::<f32>().unwrap();
        let got = got[0].1.view::<f32>().unwrap();
        assert_eq!(got.shape(), want.shape(), "{shape:?}");
        let diff = largest_difference(got, want);
        assert!(diff <= 1e-4, "{shape:?}: differs by {diff}");
    }

    /// `file` (under fixtures/) planned on the native engine at each of `shapes` in turn,
    /// each answer against tract's plan of the graph typed at that shape from the start;
    /// returns the executable, to read how it planned.
    fn planned_at(
        file: &str,
        input: &str,
        output: &str,
        shapes: &[[usize; 4]],
    ) -> crate::execution::program::executor::ProgramExecutable {
        let proto = || fixture_proto(file, "m");
        let plans = super::plans("m", &mut proto(), None, &[], 8, 1).unwrap();
        let reference = super::plans("m", &mut proto(), None, &[], 8, 1).unwrap();
        let exec = crate::execution::program::executor::ProgramExecutable::new(
            plans,
            crate::execution::cpu::device(1),
            false,
            8,
        );
        for shape in shapes {
            answers_as_tract(&exec, &reference, input, output, shape);
            // None of these has a symbolic form: every shape is planned from the start.
            assert_eq!(exec.plans_by_folding(), None, "{shape:?}");
        }
        exec
    }

    /// PaddleOCR's detector does not type with symbolic shapes; once a shape differing from
    /// the first in height and width was planned both ways to the same program (its means'
    /// scales, folded from the shapes, set again), later shapes are re-typed, not decluttered
    /// again, and answer what tract's plan at each shape answers.
    #[test]
    fn the_detector_is_planned_by_re_typing_once_that_was_checked() {
        let det = "ocr_repository/text_detection/1/model.onnx";
        let shapes = [
            [1, 3, 64, 96],
            [1, 3, 96, 128],
            [1, 3, 128, 64],
            [1, 3, 32, 160],
        ];
        let exec = planned_at(det, "x", "sigmoid_0.tmp_0", &shapes);
        assert_eq!(exec.plans_by_retyping(), (Some(true), 2));
        // One after another, the four shapes' plans ran in one arena (each shape's run in
        // memory another shape wrote before, and answered right).
        assert_eq!(exec.arenas_held(), 1);
    }

    /// A graph computing a value from a shape (a division by the input's width, read with
    /// `Shape`) is not re-typed: re-typing kept the first width, the check saw another
    /// program, and every shape is decluttered from the start and answers right. Without the
    /// division the same graph is re-typed (its mean's scale set again).
    #[test]
    fn a_value_folded_from_a_shape_stops_re_typing() {
        let shapes = [[1, 2, 8, 12], [1, 2, 10, 16], [1, 2, 6, 20]];
        let exec = planned_at("generated/fpn_sum_scaled.onnx", "X", "OUT", &shapes);
        assert_eq!(exec.plans_by_retyping(), (Some(false), 0));
        let exec = planned_at("generated/fpn_sum.onnx", "X", "OUT", &shapes);
        assert_eq!(exec.plans_by_retyping(), (Some(true), 1));
    }

    /// The STR fixture's residual blocks: the three whose shortcut is a 1x1 convolution read
    /// by the block's Add alone accumulate in place (the output takes the shortcut's storage);
    /// the eight identity shortcuts, which the block's first convolution reads too, do not.
    /// (`tests/tutorial.rs` checks the model's answers against ONNX Runtime's.)
    #[test]
    fn single_use_residuals_are_accumulated_in_place() {
        use crate::execution::lower::Step;
        let mut proto = fixture_proto("tutorial_repository/text_recognition/1/model.onnx", "str");
        let plans = super::plans("str", &mut proto, None, &[], 4, 1).unwrap();
        let graph = plans
            .decluttered_from_start(&[tvec![1, 1, 32, 100]])
            .unwrap();
        let program = crate::execution::lower::lower(graph).unwrap();
        let root = |v: usize| program.values[v].root;
        // (output, residual) of each convolution launch with a residual (`ConvParams`: y
        // at byte 24, res at 32).
        let residual: Vec<(usize, usize)> = program
            .steps
            .iter()
            .filter_map(|s| match s {
                Step::Launch { fixups, .. } => {
                    let at = |o: usize| fixups.iter().find(|(a, _)| *a == o).map(|f| f.1);
                    Some((at(24)?, at(32)?))
                }
                _ => None,
            })
            .collect();
        assert_eq!(residual.len(), 11);
        let in_place = residual
            .iter()
            .filter(|(y, r)| root(*y) == root(*r))
            .count();
        assert_eq!(in_place, 3);
    }

    /// A cast to int32 outside the pattern (its value added to, or a graph output) is left.
    #[test]
    fn only_shape_casts_read_back_as_int64_are_widened() {
        use tract_onnx::pb;
        let node = |op: &str, ins: &[&str], out: &str, to: Option<i64>| pb::NodeProto {
            op_type: op.into(),
            input: ins.iter().map(|s| s.to_string()).collect(),
            output: vec![out.into()],
            attribute: to
                .map(|i| pb::AttributeProto {
                    name: "to".into(),
                    i,
                    ..Default::default()
                })
                .into_iter()
                .collect(),
            ..Default::default()
        };
        let graph = |tail: Vec<pb::NodeProto>, output: &str| pb::GraphProto {
            node: [
                vec![
                    node("Shape", &["x"], "s", None),
                    node("Cast", &["s"], "s32", Some(6)),
                    node("Slice", &["s32", "a", "b"], "w32", None),
                ],
                tail,
            ]
            .concat(),
            output: vec![tract_onnx::pb::ValueInfoProto {
                name: output.into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let back = node("Cast", &["w32"], "w", Some(7));
        assert_eq!(
            super::widen_shape_casts(&mut graph(vec![back.clone()], "w")),
            1
        );
        let added = node("Add", &["w32", "one"], "w", None);
        assert_eq!(super::widen_shape_casts(&mut graph(vec![added], "w")), 0);
        assert_eq!(super::widen_shape_casts(&mut graph(vec![back], "w32")), 0);
    }

    #[test]
    fn least_recently_used_plan_is_evicted() {
        let mut proto = fixture_proto("generated/add_sub_fp32_batch.onnx", "m");
        let plans = super::plans("m", &mut proto, None, &[], 2, 1).unwrap();
        let run = |rows: usize| {
            let t = Tensor::from(tract_ndarray::Array2::<f32>::ones((rows, 16)));
            let out = plans
                .execute(
                    vec![("INPUT0".into(), t.clone()), ("INPUT1".into(), t)],
                    &["OUTPUT0".into()],
                )
                .unwrap();
            assert_eq!(out[0].1.shape(), &[rows, 16]);
        };
        let key = |rows: usize| vec![tvec![rows, 16], tvec![rows, 16]];
        run(1);
        run(2);
        assert_eq!(plans.cached_shapes(), [key(1), key(2)]);
        run(1); // 1 is now more recent than 2
        run(3);
        assert_eq!(plans.cached_shapes(), [key(1), key(3)]);
    }
}
