//! Graph rewrites applied to the ONNX protobuf before tract parses it, where tract runs an
//! equivalent graph much faster. Each rewrite is exact (the same numbers come out).
//!
//! - Nearest-neighbour `Resize` by constant integer scales `[1, 1, kh, kw]` (an FPN's
//!   upsampling, as in PaddleOCR's DB detector) becomes `Unsqueeze` → `Expand` → `Reshape`:
//!   pure replication, which tract does at memory speed, where its generic `Resize` spends half
//!   of the detector's time (measured: 643 of 1351 ms at 736x1280).

use std::collections::HashMap;

use tract_onnx::pb;

fn attr<'a>(node: &'a pb::NodeProto, name: &str) -> Option<&'a pb::AttributeProto> {
    node.attribute.iter().find(|a| a.name == name)
}

fn attr_str(node: &pb::NodeProto, name: &str, default: &str) -> String {
    attr(node, name)
        .map(|a| String::from_utf8_lossy(&a.s).into_owned())
        .unwrap_or_else(|| default.to_string())
}

/// Float values of a constant tensor (initializer or `Constant` node).
fn floats(t: &pb::TensorProto) -> Option<Vec<f32>> {
    if t.data_type != 1 {
        return None;
    }
    if !t.float_data.is_empty() {
        return Some(t.float_data.clone());
    }
    if t.raw_data.len().is_multiple_of(4) {
        return Some(
            t.raw_data
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        );
    }
    None
}

fn i64_tensor(name: &str, values: &[i64]) -> pb::TensorProto {
    pb::TensorProto {
        name: name.to_string(),
        dims: vec![values.len() as i64],
        data_type: 7,
        raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ..Default::default()
    }
}

fn node(
    op: &str,
    name: String,
    inputs: Vec<String>,
    output: String,
    attribute: Vec<pb::AttributeProto>,
) -> pb::NodeProto {
    pb::NodeProto {
        op_type: op.into(),
        name,
        input: inputs,
        output: vec![output],
        attribute,
        ..Default::default()
    }
}

fn ints_attr(name: &str, ints: Vec<i64>) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: 7,
        ints,
        ..Default::default()
    }
}

/// The integer scales `(kh, kw)` of a `Resize` that only replicates pixels, if it is one.
fn replicating_resize(
    node: &pb::NodeProto,
    opset: i64,
    constants: &HashMap<String, Vec<f32>>,
) -> Option<(i64, i64)> {
    if node.op_type != "Resize" || !(node.domain.is_empty() || node.domain == "ai.onnx") {
        return None;
    }
    if attr_str(node, "mode", "nearest") != "nearest"
        || attr(node, "axes").is_some()
        || attr(node, "antialias").is_some_and(|a| a.i != 0)
    {
        return None;
    }
    let coord = attr_str(
        node,
        "coordinate_transformation_mode",
        if opset < 11 {
            "asymmetric"
        } else {
            "half_pixel"
        },
    );
    let rounding = attr_str(node, "nearest_mode", "round_prefer_floor");
    let exact = match coord.as_str() {
        "asymmetric" => rounding == "floor",
        "half_pixel" => rounding == "round_prefer_floor" || rounding == "round_prefer_ceil",
        _ => false,
    };
    let scales_at = if opset < 11 { 1 } else { 2 };
    if !exact
        || node.input.len() <= scales_at
        || node.input.get(scales_at + 1).is_some_and(|s| !s.is_empty())
    {
        return None;
    }
    let scales = constants.get(&node.input[scales_at])?;
    match scales.as_slice() {
        &[1.0, 1.0, h, w] if h >= 1.0 && w >= 1.0 && h.fract() == 0.0 && w.fract() == 0.0 => {
            Some((h as i64, w as i64))
        }
        _ => None,
    }
}

/// Rewrites replicating nearest `Resize` nodes; returns how many.
pub(crate) fn nearest_resize(proto: &mut pb::ModelProto) -> usize {
    let opset = proto
        .opset_import
        .iter()
        .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
        .map(|o| o.version)
        .unwrap_or(0);
    if opset < 10 {
        return 0;
    }
    let Some(graph) = proto.graph.as_mut() else {
        return 0;
    };
    let mut constants: HashMap<String, Vec<f32>> = graph
        .initializer
        .iter()
        .filter_map(|t| Some((t.name.clone(), floats(t)?)))
        .collect();
    for n in &graph.node {
        if n.op_type == "Constant" {
            if let Some(v) = attr(n, "value").and_then(|a| a.t.as_ref()).and_then(floats) {
                constants.insert(n.output[0].clone(), v);
            }
        }
    }
    let mut rewritten = 0;
    let mut nodes = Vec::with_capacity(graph.node.len());
    let mut inits = Vec::new();
    for n in std::mem::take(&mut graph.node) {
        let Some((kh, kw)) = replicating_resize(&n, opset, &constants) else {
            nodes.push(n);
            continue;
        };
        let p = format!("modelyard_resize_{rewritten}");
        let (x, out) = (n.input[0].clone(), n.output[0].clone());
        let name = |s: &str| format!("{p}_{s}");
        let unsqueeze = if opset >= 13 {
            inits.push(i64_tensor(&name("axes"), &[3, 5]));
            node(
                "Unsqueeze",
                name("unsqueeze"),
                vec![x.clone(), name("axes")],
                name("u"),
                vec![],
            )
        } else {
            node(
                "Unsqueeze",
                name("unsqueeze"),
                vec![x.clone()],
                name("u"),
                vec![ints_attr("axes", vec![3, 5])],
            )
        };
        nodes.push(unsqueeze);
        inits.push(i64_tensor(&name("expand_to"), &[1, 1, 1, kh, 1, kw]));
        nodes.push(node(
            "Expand",
            name("expand"),
            vec![name("u"), name("expand_to")],
            name("e"),
            vec![],
        ));
        nodes.push(node("Shape", name("shape"), vec![x], name("s"), vec![]));
        for (k, v) in [("i0", 0), ("i2", 2), ("i4", 4)] {
            inits.push(i64_tensor(&name(k), &[v]));
        }
        inits.push(i64_tensor(&name("scale"), &[kh, kw]));
        nodes.push(node(
            "Slice",
            name("slice_nc"),
            vec![name("s"), name("i0"), name("i2")],
            name("nc"),
            vec![],
        ));
        nodes.push(node(
            "Slice",
            name("slice_hw"),
            vec![name("s"), name("i2"), name("i4")],
            name("hw"),
            vec![],
        ));
        nodes.push(node(
            "Mul",
            name("mul"),
            vec![name("hw"), name("scale")],
            name("hw2"),
            vec![],
        ));
        let axis = pb::AttributeProto {
            name: "axis".into(),
            r#type: 2,
            i: 0,
            ..Default::default()
        };
        nodes.push(node(
            "Concat",
            name("concat"),
            vec![name("nc"), name("hw2")],
            name("target"),
            vec![axis],
        ));
        nodes.push(node(
            "Reshape",
            name("reshape"),
            vec![name("e"), name("target")],
            out,
            vec![],
        ));
        rewritten += 1;
    }
    graph.node = nodes;
    graph.initializer.extend(inits);
    rewritten
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_replicating_resizes_are_rewritten() {
        for opset in [12, 13] {
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(format!(
                "fixtures/generated/resize_nearest_opset{opset}.onnx"
            ));
            let mut proto = super::super::io::read_proto(&path, "m", usize::MAX).unwrap();
            assert_eq!(
                super::nearest_resize(&mut proto),
                2,
                "floor/asymmetric and half_pixel, not round/asymmetric"
            );
            let graph = proto.graph.as_ref().unwrap();
            assert_eq!(
                graph.node.iter().filter(|n| n.op_type == "Resize").count(),
                1
            );
            assert_eq!(
                graph.node.iter().filter(|n| n.op_type == "Expand").count(),
                2
            );
        }
    }
}
