//! Hostile input, the list: configs, ONNX files and tensors that must each give an
//! error (or a correct answer), never a panic or an abort, while the other models of the same
//! repository keep serving. Inputs found by the fuzzers (`fuzz/`) are replayed here too.

mod common;
#[path = "../fuzz/harness/mod.rs"]
mod harness;

use std::path::Path;

use common::{add_sub_model, expect_error, fixtures, ADD_SUB};
use modelyard::config::{DataType, ModelConfig};
use modelyard::{ErrorKind, Repository, Tensor};
use ndarray::Array2;
use prost::Message;
use tract_onnx::pb;

fn ones(rows: usize) -> Tensor {
    Tensor::from(Array2::<f32>::ones((rows, 16)))
}

/// The good model still answers correctly.
fn still_serving(repo: &Repository) {
    let out = repo
        .model("good")
        .unwrap()
        .infer([("INPUT0", ones(1)), ("INPUT1", ones(1))])
        .unwrap();
    assert_eq!(
        out.get("OUTPUT0").unwrap().view::<f32>().unwrap()[[0, 0]],
        2.0
    );
}

/// A repository with `good` and one model `bad` made of `config` (None: no config file) and
/// `onnx` bytes; loads it with exit_on_error(false) and returns the repository and the
/// reason `bad` is not ready (None if it loaded).
fn with_bad(config: Option<&str>, onnx: &[u8]) -> (tempfile::TempDir, Repository, Option<String>) {
    let tmp = tempfile::tempdir().unwrap();
    add_sub_model(tmp.path(), "good", ADD_SUB);
    let dir = tmp.path().join("bad");
    std::fs::create_dir_all(dir.join("1")).unwrap();
    if let Some(c) = config {
        std::fs::write(dir.join("config.pbtxt"), c).unwrap();
    }
    std::fs::write(dir.join("1/model.onnx"), onnx).unwrap();
    let repo = Repository::builder(tmp.path())
        .exit_on_error(false)
        .load()
        .unwrap();
    still_serving(&repo);
    let reason = repo
        .index()
        .into_iter()
        .filter(|e| e.name == "bad" && !e.reason.is_empty())
        .map(|e| e.reason)
        .next();
    (tmp, repo, reason)
}

fn add_sub_proto() -> pb::ModelProto {
    let bytes = std::fs::read(fixtures().join("generated/add_sub_fp32_batch.onnx")).unwrap();
    pb::ModelProto::decode(bytes.as_slice()).unwrap()
}

#[test]
fn hostile_configs_are_errors() {
    // Each case with the words its reason must carry: a case that fails for another reason
    // (a config that is wrong somewhere else) does not test what it names.
    let good_input = "{ name: \"INPUT0\" data_type: TYPE_FP32 dims: [ 16 ] }";
    let with_input0 = |input0: &str| ADD_SUB.replacen(good_input, input0, 1);
    let mut cases: Vec<(String, &str)> = vec![
        ("\u{0}\u{1}\u{2}\u{ff}garbage".into(), "Invalid character"),
        (
            "optimization { ".repeat(700_000),
            "has no field named \"optimization\"",
        ),
        (
            with_input0("{ name: \"INPUT0\" data_type: TYPE_FP32 dims: [ -7 ] }"),
            "model input 'INPUT0' dimension must be integer >= 1, or -1",
        ),
        (
            with_input0("{ name: \"INPUT0\" data_type: TYPE_FP32 dims: [ 9223372036854775807, 9223372036854775807 ] }"),
            "element count for tensor 'INPUT0' exceeds maximum size",
        ),
        (
            format!("{ADD_SUB} input [ {{ name: \"INPUT0\" data_type: TYPE_FP32 dims: [ 16 ] }} ]"),
            "configuration expects 3 inputs, model provides 2",
        ),
        (
            "name: \"not-the-folder-name\"".into(),
            "unexpected directory name 'bad' for model 'not-the-folder-name'",
        ),
        (
            "max_batch_size: -5".into(),
            "'max_batch_size' must be non-negative value for bad",
        ),
        (
            format!("{ADD_SUB} cc_model_filenames {{ key: \"9.0\" value: \"../../good/1/model.onnx\" }}"),
            "escapes the model directory",
        ),
        (
            format!("{ADD_SUB} cc_model_filenames {{ key: \"9.0\" value: \"/etc/passwd\" }}"),
            "is an absolute path",
        ),
        (
            "version_policy { specific { versions: [ -1, 9223372036854775807 ] } }".into(),
            "at least one version must be available under the version policy",
        ),
        // Enum numbers no enum value has, each inside a config that is otherwise complete.
        (
            with_input0("{ name: \"INPUT0\" data_type: 77 dims: [ 16 ] }"),
            "unsupported datatype 77 for input 'INPUT0'",
        ),
        (
            with_input0("{ name: \"INPUT0\" data_type: TYPE_FP32 format: 12 dims: [ 16 ] }"),
            "unexpected format 12 for model input 'INPUT0'",
        ),
        (
            format!("{ADD_SUB} instance_group [ {{ kind: 42 }} ]"),
            "has unexpected kind 42",
        ),
        (
            format!("{ADD_SUB} dynamic_batching {{ default_queue_policy {{ timeout_action: 9 }} }}"),
            "unexpected timeout action 9",
        ),
        (
            format!("{ADD_SUB} model_warmup [ {{ name: \"w\" batch_size: 1 inputs {{ key: \"INPUT0\" value: {{ data_type: -3 dims: [ 16 ] zero_data: true }} }} }} ]"),
            "failed to run warmup sample 'w': tensors of TYPE_INVALID are not supported",
        ),
    ];
    cases.push(("data_type: 999".into(), "has no field named \"data_type\""));
    let onnx = std::fs::read(fixtures().join("generated/add_sub_fp32_batch.onnx")).unwrap();
    for (text, words) in &cases {
        let (_tmp, repo, reason) = with_bad(Some(text), &onnx);
        let head: String = text.chars().take(60).collect();
        let reason = reason.unwrap_or_else(|| panic!("config {text:?} loaded"));
        assert!(reason.contains(words), "config {head:?}: {reason}");
        let e = repo.model("bad").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
        assert!(e.to_string().contains("has no available versions"), "{e}");
    }
    // The config text alone never panics either.
    for (text, _) in &cases {
        let _ = ModelConfig::from_pbtxt(text);
    }
}

#[test]
fn unicode_names_and_an_empty_config_are_fine() {
    let tmp = tempfile::tempdir().unwrap();
    add_sub_model(
        tmp.path(),
        "模型-ü",
        &format!("name: \"模型-ü\"\n{ADD_SUB}"),
    );
    add_sub_model(tmp.path(), "empty", "");
    let repo = Repository::load(tmp.path()).unwrap();
    for m in ["模型-ü", "empty"] {
        repo.model(m)
            .unwrap()
            .infer([("INPUT0", ones(2)), ("INPUT1", ones(2))])
            .unwrap();
    }
}

#[test]
fn hostile_onnx_files_are_errors() {
    let mut cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "wrong magic",
            b"\x89PNG\r\n\x1a\nnot an onnx file at all".to_vec(),
            "is not a valid ONNX model",
        ),
        ("empty", Vec::new(), "contains no graph"),
        (
            "missing graph",
            pb::ModelProto {
                graph: None,
                ..add_sub_proto()
            }
            .encode_to_vec(),
            "contains no graph",
        ),
    ];
    let mut unknown = add_sub_proto();
    unknown.graph.as_mut().unwrap().node[0].op_type = "FrobnicateX".into();
    cases.push((
        "unknown op",
        unknown.encode_to_vec(),
        "unsupported ONNX operator in node 'OUTPUT0'",
    ));
    // Two nodes that feed each other.
    let mut cyclic = add_sub_proto();
    let g = cyclic.graph.as_mut().unwrap();
    let (a, b) = (g.node[0].output[0].clone(), g.node[1].output[0].clone());
    g.node[0].input[0] = b;
    g.node[1].input[0] = a;
    cases.push((
        "cyclic graph",
        cyclic.encode_to_vec(),
        "which is part of a cycle or produced by no node",
    ));
    // An attribute of the wrong type: Softmax with a string axis.
    let mut attr = add_sub_proto();
    let n = &mut attr.graph.as_mut().unwrap().node[0];
    n.op_type = "Softmax".into();
    n.input.truncate(1);
    n.attribute = vec![pb::AttributeProto {
        name: "axis".into(),
        r#type: pb::attribute_proto::AttributeType::String as i32,
        s: b"sideways".to_vec(),
        ..Default::default()
    }];
    cases.push((
        "attribute of the wrong type",
        attr.encode_to_vec(),
        "attribute 'axis': expected int",
    ));
    // An initializer that claims more elements than it stores.
    let mut short = add_sub_proto();
    short
        .graph
        .as_mut()
        .unwrap()
        .initializer
        .push(pb::TensorProto {
            name: "liar".into(),
            dims: vec![1000],
            data_type: 1,
            float_data: vec![1.0, 2.0],
            ..Default::default()
        });
    cases.push((
        "initializer shorter than its dims",
        short.encode_to_vec(),
        "initializer 'liar' declares dims [1000] (1000 elements) but stores 2",
    ));
    for (what, bytes, words) in &cases {
        let (_tmp, _repo, reason) = with_bad(None, bytes);
        let reason = reason.unwrap_or_else(|| panic!("{what}: loaded"));
        assert!(
            reason.contains(words) && reason.contains("failed to load model 'bad'"),
            "{what}: {reason}"
        );
    }
}

#[test]
fn a_100_gb_initializer_is_refused_without_allocating_it() {
    let mut huge = add_sub_proto();
    huge.graph
        .as_mut()
        .unwrap()
        .initializer
        .push(pb::TensorProto {
            name: "huge".into(),
            dims: vec![25_000_000_000],
            data_type: 1,
            ..Default::default()
        });
    let (_tmp, _repo, reason) = with_bad(Some(ADD_SUB), &huge.encode_to_vec());
    let reason = reason.unwrap();
    assert!(
        reason.contains("needs 100000000000 bytes, more than the limit"),
        "{reason}"
    );
    // The limit applies to the file itself too (here to every model of the repository).
    let tmp = tempfile::tempdir().unwrap();
    add_sub_model(tmp.path(), "good", ADD_SUB);
    let e = Repository::builder(tmp.path())
        .max_model_bytes(16)
        .load()
        .unwrap_err();
    assert!(
        e.message().contains("more than the limit of 16 bytes"),
        "{e}"
    );
}

#[test]
fn hostile_tensors_are_errors_or_correct_answers() {
    let tmp = tempfile::tempdir().unwrap();
    add_sub_model(tmp.path(), "good", ADD_SUB);
    let repo = Repository::load(tmp.path()).unwrap();
    let m = repo.model("good").unwrap();
    // NaN and infinities are data: they go through.
    let special = Tensor::from(Array2::from_shape_fn((1, 16), |(_, c)| match c % 3 {
        0 => f32::NAN,
        1 => f32::INFINITY,
        _ => f32::NEG_INFINITY,
    }));
    let out = m
        .infer([("INPUT0", special.clone()), ("INPUT1", ones(1))])
        .unwrap();
    let sum = out.get("OUTPUT0").unwrap().view::<f32>().unwrap();
    assert!(sum[[0, 0]].is_nan() && sum[[0, 1]] == f32::INFINITY);
    // A zero batch: Triton's error, not an empty answer.
    let e = m
        .infer([("INPUT0", ones(0)), ("INPUT1", ones(0))])
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    assert!(e.to_string().contains("batch-size must be >= 1"), "{e}");
    // Byte length not matching the shape; element counts that overflow or are absurd.
    let e = Tensor::from_le_bytes(DataType::TypeFp32, &[2, 16], &[0u8; 12]).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    expect_error(
        Tensor::from_le_bytes(DataType::TypeFp32, &[1 << 31], &[0u8; 4]),
        ErrorKind::InvalidInput,
        "4 bytes do not hold 2147483648 elements of TYPE_FP32",
    );
    expect_error(
        Tensor::zeros(DataType::TypeFp32, &[usize::MAX, 2]),
        ErrorKind::ResourceExhausted,
        "has too many elements",
    );
    // Non-UTF-8 BYTES to a model that wants FP32: a type error naming the tensor.
    let bytes = Tensor::from_bytes(&[1, 16], std::iter::repeat_n([0xffu8, 0xfe], 16)).unwrap();
    let e = m
        .infer([("INPUT0", bytes), ("INPUT1", ones(1))])
        .unwrap_err();
    assert_eq!(
        (e.kind(), e.tensor()),
        (ErrorKind::InvalidInput, Some("INPUT0"))
    );
    // Wrong shapes, a batch over max_batch_size, unknown names.
    expect_error(
        m.infer([("INPUT0", ones(9)), ("INPUT1", ones(9))]),
        ErrorKind::InvalidInput,
        "inference request batch-size must be <= 8 for 'good'",
    );
    let narrow = Tensor::from(Array2::<f32>::ones((1, 15)));
    expect_error(
        m.infer([("INPUT0", narrow), ("INPUT1", ones(1))]),
        ErrorKind::InvalidInput,
        "Expected [-1,16], got [1,15]",
    );
    expect_error(
        m.infer([("INPUT0", ones(1)), ("ΩMEGA", ones(1))]),
        ErrorKind::InvalidInput,
        "unexpected inference input 'ΩMEGA' for model 'good'",
    );
    still_serving(&repo);
}

/// Crash inputs the fuzzers found (`fuzz/regressions/<target>/`), every folder replayed from
/// its files through the fuzz target's own body (`fuzz/harness`), and each file's outcome
/// checked against what it was kept for. As under libFuzzer, a panic counts even when the
/// library catches it (an application built with `panic = "abort"` would not survive it). A
/// file no expectation names, or a folder no target reads, fails the test.
#[test]
fn fuzz_regressions_stay_fixed() {
    static PANICKED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICKED.store(true, std::sync::atomic::Ordering::SeqCst);
        previous(info);
    }));
    // What each kept input must do now, beyond not panicking.
    let expected: &[(&str, &str, &str)] = &[
        // tract panicked on a graph output no node produces: refused at load.
        (
            "onnx_load",
            "graph-output-without-producer",
            "load: is produced by no node",
        ),
        // tract panicked in Squeeze's shape inference: the request fails instead.
        (
            "onnx_load",
            "squeeze-axis-out-of-range",
            "request: Squeeze axis -120259084285 is out of range",
        ),
        // Polling read /proc through a model folder linked to /: bounded now.
        ("repository_tree", "model-folder-linked-to-root", "bounded"),
    ];
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions");
    let mut replayed = 0;
    for folder in std::fs::read_dir(&root).unwrap() {
        let folder = folder.unwrap();
        let target = folder.file_name().into_string().unwrap();
        assert!(
            harness::TARGETS.contains(&target.as_str()),
            "fuzz/regressions/{target}: no fuzz target of that name reads it"
        );
        for file in std::fs::read_dir(folder.path()).unwrap() {
            let file = file.unwrap();
            let name = file.file_name().into_string().unwrap();
            if name == ".gitkeep" {
                continue;
            }
            let Some(&(_, _, outcome)) =
                expected.iter().find(|(t, n, _)| *t == target && *n == name)
            else {
                panic!("fuzz/regressions/{target}/{name}: no expectation names this input");
            };
            let data = std::fs::read(file.path()).unwrap();
            let start = std::time::Instant::now();
            assert!(harness::run(&target, &data));
            assert!(
                start.elapsed() < std::time::Duration::from_secs(60),
                "{target}/{name} took {:?}",
                start.elapsed()
            );
            if target == "onnx_load" {
                check_onnx_regression(&name, &data, outcome);
            }
            replayed += 1;
        }
    }
    assert_eq!(replayed, expected.len(), "every expectation has its input");
    assert!(
        !PANICKED.load(std::sync::atomic::Ordering::SeqCst),
        "a fuzz regression panicked (even if caught)"
    );
}

/// An ONNX regression is a broken model: its load fails, or (when it only fails to type at
/// concrete shapes) its first request does, with the words `outcome` names.
fn check_onnx_regression(name: &str, data: &[u8], outcome: &str) {
    let (_tmp, repo, reason) = with_bad(None, data);
    match outcome.split_once(": ") {
        Some(("load", words)) => {
            let reason = reason.unwrap_or_else(|| panic!("{name}: loaded"));
            assert!(
                reason.contains("failed to load model 'bad'") && reason.contains(words),
                "{name}: {reason}"
            );
        }
        Some(("request", words)) => {
            assert_eq!(reason, None, "{name}: its load should succeed");
            let m = repo.model("bad").unwrap();
            let e = m
                .infer(harness::zeros_for(m.config(), i64::MAX))
                .unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Execution, "{name}: {e}");
            assert!(e.to_string().contains(words), "{name}: {e}");
            still_serving(&repo);
        }
        _ => panic!("{name}: outcome {outcome:?} is neither load: nor request:"),
    }
}

/// fuzz/repository_tree: a model folder that is a symlink to `/` made polling walk the whole
/// file system and read `/proc` files that claim size 0 (4 GiB allocation). Polling is
/// bounded now: it finishes quickly and reads little.
#[test]
fn a_model_folder_linked_to_the_root_is_polled_in_bounded_time() {
    let tmp = tempfile::tempdir().unwrap();
    add_sub_model(tmp.path(), "good", ADD_SUB);
    std::os::unix::fs::symlink("/", tmp.path().join("m")).unwrap();
    let start = std::time::Instant::now();
    let repo = Repository::builder(tmp.path())
        .exit_on_error(false)
        .model_control(modelyard::ModelControl::Poll)
        .load()
        .unwrap();
    repo.poll().unwrap();
    still_serving(&repo);
    expect_error(
        repo.model("m"),
        ErrorKind::Unavailable,
        "Request for unknown model: 'm' has no available versions",
    );
    assert!(
        start.elapsed() < std::time::Duration::from_secs(20),
        "took {:?}",
        start.elapsed()
    );
}
