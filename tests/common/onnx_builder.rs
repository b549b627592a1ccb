//! One-operator ONNX models built in code, model folders with a chosen instance-group kind,
//! and deterministic random inputs: shared by
//! `tests/gpu.rs` and `benches/gpu.rs` (which include this file by path).
#![allow(dead_code)]

use std::path::Path;

use ndarray::ArrayD;
use prost::Message;
use tract_onnx::pb;

/// Deterministic values in [-1, 1).
pub fn random(shape: &[usize], seed: u64) -> ArrayD<f32> {
    let mut s = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
    ArrayD::from_shape_fn(shape, |_| {
        s = s
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    })
}

pub fn attr_ints(name: &str, v: &[i64]) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: pb::attribute_proto::AttributeType::Ints as i32,
        ints: v.to_vec(),
        ..Default::default()
    }
}

pub fn attr_int(name: &str, v: i64) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: pb::attribute_proto::AttributeType::Int as i32,
        i: v,
        ..Default::default()
    }
}

pub fn attr_str(name: &str, v: &str) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: pb::attribute_proto::AttributeType::String as i32,
        s: v.as_bytes().to_vec(),
        ..Default::default()
    }
}

pub fn value_info(name: &str, shape: Option<&[usize]>) -> pb::ValueInfoProto {
    use pb::tensor_shape_proto::{dimension::Value, Dimension};
    pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: 1,
                shape: shape.map(|s| pb::TensorShapeProto {
                    dim: s
                        .iter()
                        .map(|&d| Dimension {
                            // An empty dim is a named (dynamic) one, fed 0 at request time.
                            value: Some(if d == 0 {
                                Value::DimParam("n".into())
                            } else {
                                Value::DimValue(d as i64)
                            }),
                            ..Default::default()
                        })
                        .collect(),
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// One operator: `inputs` fed at request time, `weights` as initializers, output "y".
#[derive(Clone)]
pub struct OneOp {
    pub op: &'static str,
    attrs: Vec<pb::AttributeProto>,
    pub inputs: Vec<(&'static str, Vec<usize>)>,
    weights: Vec<(&'static str, ArrayD<f32>)>,
    /// i64 initializers (Resize sizes, Pad pads, Slice starts, Tile repeats).
    ints: Vec<(&'static str, Vec<i64>)>,
    /// Inputs of the node in order ("" for an absent optional input).
    node_inputs: Vec<&'static str>,
    /// Operators applied after it, in order: each takes the previous output, and a second
    /// input (a graph input or weight name) when one is given.
    after: Vec<(&'static str, Option<&'static str>, Vec<pb::AttributeProto>)>,
}

impl OneOp {
    pub fn new(op: &'static str, inputs: Vec<(&'static str, Vec<usize>)>) -> Self {
        let node_inputs = inputs.iter().map(|(n, _)| *n).collect();
        OneOp {
            op,
            attrs: vec![],
            inputs,
            weights: vec![],
            ints: vec![],
            node_inputs,
            after: vec![],
        }
    }
    /// Appends a one-input operator to the chain.
    pub fn then(mut self, op: &'static str) -> Self {
        self.after.push((op, None, vec![]));
        self
    }
    /// Appends a one-input operator with attributes.
    pub fn then_attrs(mut self, op: &'static str, attrs: Vec<pb::AttributeProto>) -> Self {
        self.after.push((op, None, attrs));
        self
    }
    /// The first operator reads `name` (a graph input already given) once more.
    pub fn reuse(mut self, name: &'static str) -> Self {
        self.node_inputs.push(name);
        self
    }
    /// Appends a two-input operator: (previous output, `other`).
    pub fn then_with(mut self, op: &'static str, other: &'static str) -> Self {
        self.after.push((op, Some(other), vec![]));
        self
    }
    /// A graph input that only later operators read (not an input of the first one).
    pub fn extra_input(mut self, name: &'static str, shape: Vec<usize>) -> Self {
        self.inputs.push((name, shape));
        self
    }
    /// A weight that only later operators read (not an input of the first one).
    pub fn extra_weight(mut self, name: &'static str, a: ArrayD<f32>) -> Self {
        self.weights.push((name, a));
        self
    }
    pub fn attr(mut self, a: pb::AttributeProto) -> Self {
        self.attrs.push(a);
        self
    }
    pub fn weight(mut self, name: &'static str, a: ArrayD<f32>) -> Self {
        self.weights.push((name, a));
        self.node_inputs.push(name);
        self
    }
    pub fn ints(mut self, name: &'static str, v: Vec<i64>) -> Self {
        self.ints.push((name, v));
        self.node_inputs.push(name);
        self
    }
    pub fn empty_input(mut self) -> Self {
        self.node_inputs.push("");
        self
    }
    /// Followed by a second operator (e.g. Relu after Conv, to test the fused epilogue).
    pub fn bytes(&self, then: Option<&str>) -> Vec<u8> {
        let chain: Vec<(&str, Option<&str>, &[pb::AttributeProto])> = then
            .map(|t| (t, None, &[][..]))
            .into_iter()
            .chain(self.after.iter().map(|(o, x, a)| (*o, *x, a.as_slice())))
            .collect();
        let wire = |i: usize| {
            if i == chain.len() {
                "y".to_string()
            } else {
                format!("t{i}")
            }
        };
        let mut nodes = vec![pb::NodeProto {
            op_type: self.op.into(),
            input: self.node_inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![wire(0)],
            attribute: self.attrs.clone(),
            name: "op".into(),
            ..Default::default()
        }];
        for (i, (next, other, attrs)) in chain.iter().enumerate() {
            nodes.push(pb::NodeProto {
                op_type: next.to_string(),
                input: std::iter::once(wire(i))
                    .chain(other.map(str::to_string))
                    .collect(),
                output: vec![wire(i + 1)],
                attribute: attrs.to_vec(),
                name: format!("then{i}"),
                ..Default::default()
            });
        }
        let mut initializer: Vec<pb::TensorProto> = self
            .weights
            .iter()
            .map(|(n, a)| pb::TensorProto {
                name: n.to_string(),
                dims: a.shape().iter().map(|&d| d as i64).collect(),
                data_type: 1,
                float_data: a.iter().copied().collect(),
                ..Default::default()
            })
            .collect();
        initializer.extend(self.ints.iter().map(|(n, v)| pb::TensorProto {
            name: n.to_string(),
            dims: vec![v.len() as i64],
            data_type: 7,
            int64_data: v.clone(),
            ..Default::default()
        }));
        let graph = pb::GraphProto {
            name: "g".into(),
            node: nodes,
            initializer,
            input: self
                .inputs
                .iter()
                .map(|(n, s)| value_info(n, Some(s)))
                .collect(),
            output: vec![value_info("y", None)],
            ..Default::default()
        };
        pb::ModelProto {
            ir_version: 8,
            opset_import: vec![pb::OperatorSetIdProto {
                domain: String::new(),
                version: 13,
            }],
            graph: Some(graph),
            ..Default::default()
        }
        .encode_to_vec()
    }

    /// A one-model folder (config with the inputs; outputs auto-completed from a CPU run).
    pub fn folder(&self, then: Option<&str>, out_shape: &[usize]) -> tempfile::TempDir {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("1")).unwrap();
        std::fs::write(tmp.path().join("1/model.onnx"), self.bytes(then)).unwrap();
        let mut cfg = String::from("backend: \"onnxruntime\"\nmax_batch_size: 0\n");
        for (n, s) in &self.inputs {
            // Triton's dims are >= 1 or -1: an empty (0) dim is declared variable.
            let dims: Vec<i64> = s
                .iter()
                .map(|&d| if d == 0 { -1 } else { d as i64 })
                .collect();
            cfg.push_str(&format!(
                "input [ {{ name: \"{n}\" data_type: TYPE_FP32 dims: {dims:?} }} ]\n"
            ));
        }
        let dims: Vec<i64> = out_shape
            .iter()
            .map(|&d| if d == 0 { -1 } else { d as i64 })
            .collect();
        cfg.push_str(&format!(
            "output [ {{ name: \"y\" data_type: TYPE_FP32 dims: {dims:?} }} ]\n"
        ));
        std::fs::write(tmp.path().join("config.pbtxt"), cfg).unwrap();
        tmp
    }
}

/// Copies model folder `src` into `repo` as `name`, with one instance group of `kind`.
pub fn add_model(repo: &Path, src: &Path, name: &str, kind: &str) {
    let dst = repo.join(name);
    crate::common::copy_dir(src, &dst);
    let cfg = dst.join("config.pbtxt");
    let text = std::fs::read_to_string(&cfg).unwrap_or_default();
    let mut kept: String = text
        .lines()
        .filter(|l| !l.contains("instance_group"))
        .map(|l| format!("{l}\n"))
        .collect();
    kept = kept.replace(
        &format!("name: \"{}\"", src.file_name().unwrap().to_str().unwrap()),
        &format!("name: \"{name}\""),
    );
    kept.push_str(&format!(
        "instance_group [ {{ count: 1, kind: {kind} }} ]\n"
    ));
    std::fs::write(cfg, kept).unwrap();
}
