//! An ONNX file to tract's inference graph: our checked operator parsers, operators tract does
//! not know rejected at load, and the graph's tensor names.

use tract_onnx::pb;
use tract_onnx::prelude::*;

use crate::error::{Error, ErrorKind, Result};
use crate::execution::tract::{guarded, GraphNames, Plans};

/// The parsed graph of model `m`, its tensor names and its `metadata_props`.
pub(crate) fn parse(
    m: &str,
    proto: &pb::ModelProto,
    dir: Option<&str>,
) -> Result<(
    InferenceModel,
    GraphNames,
    std::collections::BTreeMap<String, String>,
)> {
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
    // Check the whole graph once with its declared (possibly symbolic) shapes. Some graphs
    // (shapes computed from `Shape`) only type with concrete input shapes: those are
    // checked when the first plan is built.
    if let Err(e) = guarded("", || model.clone().into_typed().map(|_| ())) {
        tracing::debug!(
            "model '{m}' does not type with symbolic shapes; plans are checked per shape ({})",
            e.message()
        );
    }
    let metadata = proto
        .metadata_props
        .iter()
        .map(|p| (p.key.clone(), p.value.clone()))
        .collect();
    Ok((model, names(proto), metadata))
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

/// The tract plans of a model file: parsed, then planned per input shape on first use.
pub(crate) fn plans(
    m: &str,
    proto: &pb::ModelProto,
    dir: Option<&str>,
    capacity: usize,
    threads: usize,
) -> Result<Plans> {
    let (model, names, metadata) = parse(m, proto, dir)?;
    Plans::new(m, model, names, metadata, capacity, threads)
}

#[cfg(test)]
mod tests {
    use crate::execution::Executable;
    use crate::tensor::Tensor;
    use tract_onnx::prelude::*;

    #[test]
    fn least_recently_used_plan_is_evicted() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures/generated/add_sub_fp32_batch.onnx");
        let proto = super::super::io::read_proto(&path, "m", usize::MAX).unwrap();
        let plans = super::plans("m", &proto, None, 2, 1).unwrap();
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
