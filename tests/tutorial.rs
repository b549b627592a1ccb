//! The tutorial-shaped models (EAST-architecture detector, STR-architecture recogniser) through
//! the tutorial's Part 1 repository, checked against outputs ONNX Runtime computed once.

mod common;

use std::sync::Arc;

use common::{fixtures, max_abs_diff, reference};
use modelyard::{config::DataType, Repository};

fn repo() -> Repository {
    Repository::load(fixtures().join("tutorial_repository")).unwrap()
}

fn check(repo: &Repository, model: &str, key: &str, tol: f32) {
    let r = reference(key);
    let m = repo.model(model).unwrap();
    let out = m.infer(r.input_tensors()).unwrap();
    // On a GPU (KIND_AUTO takes it when there is one) the kernels sum in another order:
    // tests/gpu.rs states that tolerance.
    let tol = if m.execution_report().is_some() {
        tol.max(1e-3)
    } else {
        tol
    };
    for (name, expected) in &r.outputs {
        let got = out
            .get(name)
            .unwrap_or_else(|| panic!("output {name} missing"));
        let diff = max_abs_diff(&got.view::<f32>().unwrap(), expected);
        let scale = expected.iter().fold(0f32, |m, v| m.max(v.abs())).max(1.0);
        assert!(
            diff <= tol * scale,
            "{model} {key} {name}: max abs diff {diff} (scale {scale})"
        );
    }
}

#[test]
fn east_detector_matches_onnx_runtime() {
    let repo = repo();
    check(&repo, "text_detection", "east_1x64x96", 1e-4);
    check(&repo, "text_detection", "east_2x96x128", 1e-4);
}

#[test]
fn str_recogniser_matches_onnx_runtime() {
    check(&repo(), "text_recognition", "str_1x1x32x100", 1e-4);
}

#[test]
fn completed_configs_keep_the_tutorial_io() {
    let repo = repo();
    let det = repo.model("text_detection").unwrap();
    let cfg = det.config();
    assert_eq!(cfg.platform, "onnxruntime_onnx");
    assert_eq!(cfg.max_batch_size, 0);
    assert_eq!(cfg.input.len(), 1);
    assert_eq!(cfg.input[0].name, "input_images:0");
    assert_eq!(cfg.input[0].data_type(), DataType::TypeFp32);
    let outs: Vec<&str> = cfg.output.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(
        outs,
        [
            "feature_fusion/Conv_7/Sigmoid:0",
            "feature_fusion/concat_3:0"
        ]
    );
    // KIND_AUTO becomes KIND_GPU on a machine with a usable GPU (one instance per GPU, as
    // Triton), KIND_CPU without one (two instances for onnxruntime, as Triton).
    let group = &cfg.instance_group[0];
    if modelyard::gpu::probe().is_ok() {
        assert_eq!(group.kind().as_str_name(), "KIND_GPU");
        assert_eq!(group.count, 1, "KIND_GPU default count is 1");
        assert!(!group.gpus.is_empty(), "{group:?}");
    } else {
        assert_eq!(group.kind().as_str_name(), "KIND_CPU");
        assert_eq!(group.count, 2, "KIND_CPU onnxruntime default count is 2");
    }
    assert_eq!(det.version(), 1);
    let v1 = repo.model_version("text_detection", 1).unwrap();
    assert_eq!(v1.name(), "text_detection");
}

#[test]
fn infer_from_many_threads_gives_the_same_answer() {
    let repo = Arc::new(repo());
    let r = Arc::new(reference("str_1x1x32x100"));
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let repo = repo.clone();
            let r = r.clone();
            std::thread::spawn(move || {
                let model = repo.model("text_recognition").unwrap();
                for _ in 0..3 {
                    let out = model.infer(r.input_tensors()).unwrap();
                    let diff = max_abs_diff(
                        &out.get("308").unwrap().view::<f32>().unwrap(),
                        &r.outputs[0].1,
                    );
                    assert!(diff < 1e-3, "diff {diff}");
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}

#[test]
fn requested_output_subset() {
    let repo = repo();
    let r = reference("east_1x64x96");
    let model = repo.model("text_detection").unwrap();
    let out = model
        .infer_outputs(r.input_tensors(), &["feature_fusion/concat_3:0"])
        .unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!(
        out.get("feature_fusion/concat_3:0").unwrap().shape(),
        &[1, 16, 24, 5]
    );
    let err = model
        .infer_outputs(r.input_tensors(), &["nope"])
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "unexpected inference output 'nope' for model 'text_detection'"
    );
}

#[test]
fn part2_batched_recogniser() {
    // As shipped, Part 2 asks for two GPU instances: on a machine with a usable GPU it loads
    // and serves them there; without one (or without the `cuda` feature) it is a clear error
    // that names the kind, as in Triton.
    let shipped = Repository::load(fixtures().join("tutorial_repository_part2"));
    if modelyard::gpu::probe().is_ok() {
        let repo = shipped.unwrap();
        let model = repo.model("text_recognition").unwrap();
        let group = &model.config().instance_group[0];
        assert_eq!(group.kind().as_str_name(), "KIND_GPU");
        assert_eq!(group.count, 2);
        check(&repo, "text_recognition", "str_3x1x32x100", 1e-4);
    } else {
        // With the `cuda` feature the GPU is missing (Unavailable); without it the config
        // asks for what this build cannot do (Triton's "server does not support GPUs").
        let kind = if cfg!(feature = "cuda") {
            modelyard::ErrorKind::Unavailable
        } else {
            modelyard::ErrorKind::InvalidConfig
        };
        common::expect_error(shipped, kind, "KIND_GPU");
    }

    // The same repository with the group on the CPU serves batches up to 8.
    let tmp = tempfile::tempdir().unwrap();
    common::copy_dir(&fixtures().join("tutorial_repository_part2"), tmp.path());
    let cfg_path = tmp.path().join("text_recognition/config.pbtxt");
    let cfg = std::fs::read_to_string(&cfg_path)
        .unwrap()
        .replace("KIND_GPU", "KIND_CPU");
    std::fs::write(&cfg_path, cfg).unwrap();
    let repo = Repository::load(tmp.path()).unwrap();
    let model = repo.model("text_recognition").unwrap();
    assert_eq!(model.config().max_batch_size, 8);
    assert_eq!(
        model
            .config()
            .dynamic_batching()
            .unwrap()
            .preferred_batch_size,
        vec![8]
    );
    assert_eq!(model.config().instance_group[0].count, 2);
    check(&repo, "text_recognition", "str_3x1x32x100", 1e-4);
}

/// The fixture detector keeps the graph features of what `tf2onnx` emits for the tutorial's
/// `frozen_east_text_detection.pb` (tract 0.21 crashed on them; a regenerated fixture must not
/// lose them).
#[test]
fn the_east_fixture_is_shaped_as_tf2onnx_emits_it() {
    use prost::Message;
    use tract_onnx::pb;
    let path = fixtures().join("tutorial_repository/text_detection/1/model.onnx");
    let proto = pb::ModelProto::decode(std::fs::read(path).unwrap().as_slice()).unwrap();
    let g = proto.graph.unwrap();
    let producer = |name: &str| g.node.iter().find(|n| n.output.iter().any(|o| o == name));
    let op = |name: &str| producer(name).map(|n| n.op_type.as_str()).unwrap_or("");
    let attr_s = |n: &pb::NodeProto, a: &str| {
        n.attribute
            .iter()
            .find(|x| x.name == a)
            .map(|x| String::from_utf8_lossy(&x.s).into_owned())
            .unwrap_or_default()
    };
    let attr_i = |n: &pb::NodeProto, a: &str| {
        n.attribute
            .iter()
            .find(|x| x.name == a)
            .map(|x| x.ints.clone())
            .unwrap_or_default()
    };
    // NHWC input with tf2onnx's dim names, transposed once.
    let dims: Vec<String> = match &g.input[0].r#type.as_ref().unwrap().value {
        Some(pb::type_proto::Value::TensorType(t)) => t
            .shape
            .as_ref()
            .unwrap()
            .dim
            .iter()
            .map(|d| match &d.value {
                Some(pb::tensor_shape_proto::dimension::Value::DimParam(p)) => p.clone(),
                Some(pb::tensor_shape_proto::dimension::Value::DimValue(v)) => v.to_string(),
                None => String::new(),
            })
            .collect(),
        _ => panic!("not a tensor"),
    };
    assert!(dims[..3].iter().all(|d| d.starts_with("unk__")) && dims[3] == "3");
    assert!(!g.node.iter().any(|n| n.op_type == "BatchNormalization"));
    // Strided convs as explicit Pad + VALID conv.
    let padded = g
        .node
        .iter()
        .filter(|n| n.op_type == "Conv" && op(&n.input[0]) == "Pad")
        .inspect(|n| {
            assert_eq!(attr_s(n, "auto_pad"), "VALID");
            assert_eq!(attr_i(n, "strides"), [2, 2]);
        })
        .count();
    assert_eq!(padded, 4, "the root conv and the last unit of three blocks");
    assert!(g.node.iter().any(|n| n.op_type == "MaxPool"
        && attr_i(n, "kernel_shape") == [1, 1]
        && attr_i(n, "strides") == [2, 2]
        && attr_s(n, "auto_pad") == "SAME_UPPER"));
    // The unpool's sizes, computed from Shape at run time.
    let resizes: Vec<&pb::NodeProto> = g.node.iter().filter(|n| n.op_type == "Resize").collect();
    assert_eq!(resizes.len(), 3);
    for r in resizes {
        assert_eq!(attr_s(r, "mode"), "linear");
        assert_eq!(attr_s(r, "coordinate_transformation_mode"), "asymmetric");
        let sizes = producer(&r.input[3]).unwrap();
        assert_eq!(sizes.op_type, "Concat");
        let nc = producer(&sizes.input[0]).unwrap();
        assert_eq!((nc.op_type.as_str(), op(&nc.input[0])), ("Slice", "Shape"));
        let cast = producer(&sizes.input[1]).unwrap();
        assert_eq!(cast.op_type, "Cast");
        let hw = producer(&cast.input[0]).unwrap();
        assert_eq!(hw.op_type, "Concat");
        let mut chain = vec![];
        let mut at = hw.input[0].as_str();
        while let Some(n) = producer(at).filter(|_| chain.len() < 7) {
            chain.push(n.op_type.as_str());
            at = n.input[0].as_str();
        }
        assert_eq!(
            chain,
            [
                "Unsqueeze",
                "Mul",
                "Squeeze",
                "Slice",
                "Cast",
                "Gather",
                "Shape"
            ],
            "sizes from the NHWC shape"
        );
    }
}
