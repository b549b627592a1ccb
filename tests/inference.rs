//! Request checks before execution (Triton's messages) and real results on small models.

mod common;

use common::{copy_dir, expect_error, fixtures, max_abs_diff, reference, ADD_SUB};
use half::f16;
use std::sync::{Arc, Mutex};

use modelyard::config::{DataType, ModelConfig};
use modelyard::{ErrorKind, NativeModel, Repository, Tensor};
use ndarray::{Array, Array2, ArrayD, IxDyn};

/// Identity with reshape: the request gives [4,4] (plus batch), the model sees [16].
const RESHAPED: &str = r#"
backend: "onnxruntime"
max_batch_size: 8
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 4, 4 ] reshape { shape: [ 16 ] } }, { name: "INPUT1" data_type: TYPE_FP32 dims: [ 16 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 2, 8 ] reshape { shape: [ 16 ] } }, { name: "OUTPUT1" data_type: TYPE_FP32 dims: [ 16 ] } ]
"#;

fn repo_with(models: &[(&str, &str, &str)]) -> (tempfile::TempDir, Repository) {
    let tmp = tempfile::tempdir().unwrap();
    for (name, config, onnx) in models {
        let dir = tmp.path().join(name);
        std::fs::create_dir_all(dir.join("1")).unwrap();
        std::fs::write(dir.join("config.pbtxt"), config).unwrap();
        std::fs::copy(
            fixtures().join("generated").join(onnx),
            dir.join("1/model.onnx"),
        )
        .unwrap();
    }
    let repo = Repository::load(tmp.path()).unwrap();
    (tmp, repo)
}

fn add_sub() -> (tempfile::TempDir, Repository) {
    repo_with(&[
        ("add_sub", ADD_SUB, "add_sub_fp32_batch.onnx"),
        ("reshaped", RESHAPED, "add_sub_fp32_batch.onnx"),
    ])
}

fn batch(rows: usize, offset: f32) -> Tensor {
    Tensor::from(Array2::from_shape_fn((rows, 16), |(r, c)| {
        offset + (r * 16 + c) as f32
    }))
}

#[test]
fn add_sub_computes_sum_and_difference() {
    let (_t, repo) = add_sub();
    let model = repo.model("add_sub").unwrap();
    for rows in [1, 3, 8] {
        let a = batch(rows, 0.5);
        let b = batch(rows, -2.0);
        let out = model
            .infer([("INPUT0", a.clone()), ("INPUT1", b.clone())])
            .unwrap();
        let (a, b) = (a.view::<f32>().unwrap(), b.view::<f32>().unwrap());
        let sum = out
            .get("OUTPUT0")
            .unwrap()
            .view::<f32>()
            .unwrap()
            .to_owned();
        let diff = out
            .get("OUTPUT1")
            .unwrap()
            .view::<f32>()
            .unwrap()
            .to_owned();
        assert_eq!(sum, &a + &b);
        assert_eq!(diff, &a - &b);
    }
}

fn err(repo: &Repository, model: &str, inputs: Vec<(&str, Tensor)>) -> modelyard::Error {
    repo.model(model).unwrap().infer(inputs).unwrap_err()
}

#[test]
fn request_errors_use_tritons_words() {
    let (_t, repo) = add_sub();
    let e = err(&repo, "add_sub", vec![("INPUT0", batch(1, 0.0))]);
    assert_eq!(e.to_string(), "expected 2 inputs but got 1 inputs for model 'add_sub'. Got input(s) ['INPUT0'], but missing required input(s) ['INPUT1']. Please provide all required input(s).");
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    assert_eq!((e.model(), e.version()), (Some("add_sub"), Some(1)));

    let e = err(
        &repo,
        "add_sub",
        vec![
            ("INPUT0", batch(1, 0.0)),
            ("INPUT1", batch(1, 0.0)),
            ("EXTRA", batch(1, 0.0)),
        ],
    );
    assert_eq!(
        e.to_string(),
        "unexpected inference input 'EXTRA' for model 'add_sub'"
    );
    assert_eq!(e.tensor(), Some("EXTRA"));

    let e = err(
        &repo,
        "add_sub",
        vec![("INPUT0", batch(1, 0.0)), ("INPUT0", batch(1, 0.0))],
    );
    assert_eq!(e.to_string(), "input 'INPUT0' already exists in request");

    let f64s = Tensor::from(Array2::<f64>::zeros((1, 16)));
    let e = err(
        &repo,
        "add_sub",
        vec![("INPUT0", f64s), ("INPUT1", batch(1, 0.0))],
    );
    assert_eq!(
        e.to_string(),
        "inference input 'INPUT0' data-type is 'FP64', but model 'add_sub' expects 'FP32'"
    );

    let e = err(
        &repo,
        "add_sub",
        vec![("INPUT0", batch(9, 0.0)), ("INPUT1", batch(9, 0.0))],
    );
    assert_eq!(
        e.to_string(),
        "inference request batch-size must be <= 8 for 'add_sub'"
    );

    let e = err(
        &repo,
        "add_sub",
        vec![("INPUT0", batch(2, 0.0)), ("INPUT1", batch(3, 0.0))],
    );
    assert_eq!(
        e.to_string(),
        "input 'INPUT1' batch size does not match other inputs for 'add_sub'"
    );

    let scalar = Tensor::from(ArrayD::<f32>::zeros(IxDyn(&[])));
    let e = err(
        &repo,
        "add_sub",
        vec![("INPUT0", scalar), ("INPUT1", batch(1, 0.0))],
    );
    assert_eq!(
        e.to_string(),
        "input 'INPUT0' has no shape but model requires batch dimension for 'add_sub'"
    );

    let wrong = Tensor::from(Array2::<f32>::zeros((2, 8)));
    let e = err(
        &repo,
        "add_sub",
        vec![("INPUT0", wrong), ("INPUT1", batch(2, 0.0))],
    );
    assert!(e.to_string().starts_with("unexpected shape for input 'INPUT0' for model 'add_sub'. Expected [-1,16], got [2,8]. NOTE: Setting a non-zero max_batch_size"), "{e}");

    // A zero-row batch to a batching model is refused as Triton refuses it.
    let empty = Tensor::from(Array::<f32, _>::zeros((0, 16)));
    let e = err(
        &repo,
        "add_sub",
        vec![("INPUT0", empty.clone()), ("INPUT1", empty)],
    );
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    assert_eq!(
        e.to_string(),
        "inference request batch-size must be >= 1 for 'add_sub'",
        "{e:?}"
    );
}

#[test]
fn reshape_is_applied_both_ways() {
    let (_t, repo) = add_sub();
    let model = repo.model("reshaped").unwrap();
    let a = Tensor::from(Array::from_shape_fn((2, 4, 4), |(b, i, j)| {
        (b * 16 + i * 4 + j) as f32
    }));
    // INPUT1 is not symmetric in its positions, so a reshape in the wrong (Fortran) order
    // or a transposed row shows in every element compared below.
    let b = Tensor::from(Array2::from_shape_fn((2, 16), |(r, c)| {
        (r * 1000 + c * c) as f32
    }));
    let out = model.infer([("INPUT0", a), ("INPUT1", b)]).unwrap();
    let sum = out.get("OUTPUT0").unwrap();
    assert_eq!(
        sum.shape(),
        &[2, 2, 8],
        "output presented with its config dims"
    );
    // Row-major: a[b, i, j] is element 4i + j of row b, OUTPUT0[b, r, c] is element 8r + c.
    let want_sum = Array::from_shape_fn((2, 2, 8), |(b, r, c)| {
        let k = r * 8 + c;
        ((b * 16 + k) + (b * 1000 + k * k)) as f32
    });
    assert_eq!(sum.view::<f32>().unwrap(), want_sum.into_dyn().view());
    let want_diff = Array2::from_shape_fn((2, 16), |(b, k)| {
        (b * 16 + k) as f32 - (b * 1000 + k * k) as f32
    });
    assert_eq!(
        out.get("OUTPUT1").unwrap().view::<f32>().unwrap(),
        want_diff.into_dyn().view()
    );
    let e = model
        .infer([("INPUT0", batch(2, 0.0)), ("INPUT1", batch(2, 0.0))])
        .unwrap_err();
    assert!(
        e.to_string().contains("Expected [-1,4,4], got [2,16]"),
        "{e}"
    );
}

#[test]
fn tensors_convert_and_view_with_typed_errors() {
    let t = Tensor::from(Array2::<f16>::from_elem((2, 3), f16::from_f32(1.5)));
    assert_eq!(t.data_type(), DataType::TypeFp16);
    assert_eq!(t.shape(), &[2, 3]);
    assert_eq!(t.byte_size(), 12);
    assert_eq!(t.view::<f16>().unwrap()[[1, 2]], f16::from_f32(1.5));
    let e = t.view::<f32>().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::DataType);
    assert_eq!(
        e.to_string(),
        "tensor holds TYPE_FP16 elements, not TYPE_FP32"
    );
    for (t, dt) in [
        (
            Tensor::from(Array2::<bool>::default((1, 1))),
            DataType::TypeBool,
        ),
        (
            Tensor::from(Array2::<u8>::zeros((1, 1))),
            DataType::TypeUint8,
        ),
        (
            Tensor::from(Array2::<u16>::zeros((1, 1))),
            DataType::TypeUint16,
        ),
        (
            Tensor::from(Array2::<u32>::zeros((1, 1))),
            DataType::TypeUint32,
        ),
        (
            Tensor::from(Array2::<u64>::zeros((1, 1))),
            DataType::TypeUint64,
        ),
        (
            Tensor::from(Array2::<i8>::zeros((1, 1))),
            DataType::TypeInt8,
        ),
        (
            Tensor::from(Array2::<i16>::zeros((1, 1))),
            DataType::TypeInt16,
        ),
        (
            Tensor::from(Array2::<i32>::zeros((1, 1))),
            DataType::TypeInt32,
        ),
        (
            Tensor::from(Array2::<i64>::zeros((1, 1))),
            DataType::TypeInt64,
        ),
        (
            Tensor::from(Array2::<f64>::zeros((1, 1))),
            DataType::TypeFp64,
        ),
    ] {
        assert_eq!(t.data_type(), dt);
    }
    let s: Tensor = ["hello", "wörld"].iter().collect();
    assert_eq!(s.data_type(), DataType::TypeString);
    assert_eq!(s.shape(), &[2]);
    assert_eq!(
        s.bytes().unwrap(),
        [b"hello".as_slice(), "wörld".as_bytes()]
    );
    assert_eq!(s.byte_size(), 4 + 5 + 4 + 6);
    let raw = Tensor::from_bytes(&[1, 2], [vec![0xffu8, 0xfe], vec![]]).unwrap();
    assert_eq!(
        raw.bytes().unwrap()[0],
        &[0xff, 0xfe],
        "non-UTF-8 bytes are kept as they are"
    );
    expect_error(
        Tensor::from_bytes(&[3], ["a"]),
        ErrorKind::InvalidInput,
        "1 byte strings do not fill shape [3]",
    );
}

#[test]
fn identity_backend_passes_tensors_through() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("id");
    std::fs::create_dir_all(dir.join("1")).unwrap();
    std::fs::write(
        dir.join("config.pbtxt"),
        r#"backend: "identity" max_batch_size: 0 input [ { name: "IN" data_type: TYPE_STRING dims: [ -1 ] } ] output [ { name: "OUT" data_type: TYPE_STRING dims: [ -1 ] } ]"#,
    )
    .unwrap();
    let repo = Repository::load(tmp.path()).unwrap();
    let t: Tensor = ["a", "bc"].iter().collect();
    let out = repo.model("id").unwrap().infer([("IN", t)]).unwrap();
    assert_eq!(
        out.get("OUT").unwrap().bytes().unwrap(),
        [b"a".as_slice(), b"bc"]
    );
    assert_eq!(
        repo.model("id").unwrap().config().instance_group[0].count,
        1
    );
}

/// Triton's classification refuses an output of more than 1,000,000 elements ("classification
/// output tensor too large", naming the model and the output); one of exactly 1,000,000 is
/// classified.
#[test]
fn classification_refuses_outputs_past_a_million_elements() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("scores");
    std::fs::create_dir_all(dir.join("1")).unwrap();
    std::fs::write(
        dir.join("config.pbtxt"),
        r#"backend: "identity" max_batch_size: 0 input [ { name: "IN" data_type: TYPE_FP32 dims: [ -1 ] } ] output [ { name: "OUT" data_type: TYPE_FP32 dims: [ -1 ] } ]"#,
    )
    .unwrap();
    let repo = Repository::load(tmp.path()).unwrap();
    let model = repo.model("scores").unwrap();
    let scores = |n: usize| {
        let mut v = ndarray::Array1::<f32>::zeros(n);
        v[n - 3] = 2.5;
        Tensor::from(v)
    };
    let out = model
        .infer_classes([("IN", scores(1_000_000))], &[("OUT", 1)])
        .unwrap();
    assert_eq!(
        out.get("OUT").unwrap().bytes().unwrap(),
        [b"2.500000:999997".as_slice()]
    );
    let e = expect_error(
        model.infer_classes([("IN", scores(1_000_001))], &[("OUT", 1)]),
        ErrorKind::InvalidInput,
        "classification output tensor too large",
    );
    assert_eq!(e.model(), Some("scores"));
    assert_eq!(e.tensor(), Some("OUT"));
}

#[test]
fn plans_are_cached_per_shape_and_bounded() {
    let tmp = tempfile::tempdir().unwrap();
    common::add_sub_model(tmp.path(), "m", ADD_SUB);
    let repo = Repository::builder(tmp.path())
        .plan_cache_capacity(2)
        .load()
        .unwrap();
    let model = repo.model("m").unwrap();
    // More distinct shapes than the cache holds: every call still answers correctly.
    for rows in [1, 2, 3, 1, 2, 3, 8] {
        let out = model
            .infer([("INPUT0", batch(rows, 1.0)), ("INPUT1", batch(rows, 1.0))])
            .unwrap();
        // OUTPUT0 = a + b = 2a, OUTPUT1 = a - b = 0: both, element by element, so a plan
        // answering for another shape or zeros fails.
        let a = batch(rows, 1.0);
        let a = a.view::<f32>().unwrap();
        assert_eq!(
            out.get("OUTPUT0").unwrap().view::<f32>().unwrap(),
            a.mapv(|v| 2.0 * v).view()
        );
        assert_eq!(
            out.get("OUTPUT1").unwrap().view::<f32>().unwrap(),
            a.mapv(|_| 0.0).view()
        );
    }
}

#[test]
fn warmup_samples_run_at_load() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m");
    std::fs::create_dir_all(dir.join("1")).unwrap();
    std::fs::create_dir_all(dir.join("warmup")).unwrap();
    std::fs::copy(
        fixtures().join("generated/add_sub_fp32_batch.onnx"),
        dir.join("1/model.onnx"),
    )
    .unwrap();
    let data: Vec<u8> = (0..32).flat_map(|i| (i as f32).to_le_bytes()).collect();
    std::fs::write(dir.join("warmup/in0.bin"), data).unwrap();
    let warm = r#"model_warmup [ { name: "w" batch_size: 2 count: 3 inputs { key: "INPUT0" value: { data_type: TYPE_FP32 dims: [ 16 ] input_data_file: "in0.bin" } }
        inputs { key: "INPUT1" value: { data_type: TYPE_FP32 dims: [ 16 ] random_data: true } } } ]"#;
    std::fs::write(dir.join("config.pbtxt"), format!("{ADD_SUB}{warm}")).unwrap();
    let repo = Repository::load(tmp.path()).unwrap();
    let stats = repo.model("m").unwrap().statistics();
    assert_eq!(
        (
            stats.success.count,
            stats.execution_count,
            stats.inference_count
        ),
        (0, 0, 0),
        "warmup requests are not the model's inference statistics: {stats}"
    );

    // A sample that cannot run keeps the model from loading, with Triton's prefix.
    let bad = warm.replace("batch_size: 2", "batch_size: 3");
    std::fs::write(dir.join("config.pbtxt"), format!("{ADD_SUB}{bad}")).unwrap();
    let e = Repository::load(tmp.path()).unwrap_err().to_string();
    assert!(
        e.contains("failed to run warmup sample 'w': ")
            && e.contains("bytes do not hold 48 elements"),
        "{e}"
    );
    let escape = warm.replace("in0.bin", "../config.pbtxt");
    std::fs::write(dir.join("config.pbtxt"), format!("{ADD_SUB}{escape}")).unwrap();
    let e = Repository::load(tmp.path()).unwrap_err().to_string();
    assert!(e.contains("outside the model's warmup directory"), "{e}");
}

/// Every call's inputs, in order.
type Calls = Arc<Mutex<Vec<Vec<(String, Tensor)>>>>;

/// A native model that records every call's inputs, and fails when told to.
struct Recording {
    calls: Calls,
    fail_on_rows: usize,
}

impl NativeModel for Recording {
    fn execute(
        &self,
        inputs: &[(String, Tensor)],
        outputs: &[String],
    ) -> modelyard::Result<Vec<(String, Tensor)>> {
        self.calls.lock().unwrap().push(inputs.to_vec());
        let x = &inputs.iter().find(|(n, _)| n == "IN").unwrap().1;
        if x.shape()[0] == self.fail_on_rows {
            return Err(modelyard::Error::new(
                ErrorKind::Execution,
                "the model refused this sample",
            ));
        }
        Ok(outputs.iter().map(|n| (n.clone(), x.clone())).collect())
    }
}

#[test]
fn warmup_runs_each_sample_count_times_with_its_batch_and_data() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("rec");
    std::fs::create_dir_all(dir.join("1")).unwrap();
    std::fs::create_dir_all(dir.join("warmup")).unwrap();
    let data: Vec<f32> = (0..8).map(|i| i as f32 * 0.5 - 1.0).collect();
    let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(dir.join("warmup/in.bin"), bytes).unwrap();
    let config = |fail_sample: &str| {
        format!(
            r#"backend: "recording" max_batch_size: 4
input [ {{ name: "IN" data_type: TYPE_FP32 dims: [ 4 ] }}, {{ name: "Z" data_type: TYPE_INT32 dims: [ 3 ] }} ]
output [ {{ name: "OUT" data_type: TYPE_FP32 dims: [ 4 ] }} ]
model_warmup [
  {{ name: "file" batch_size: 2 count: 3 inputs {{ key: "IN" value: {{ data_type: TYPE_FP32 dims: [ 4 ] input_data_file: "in.bin" }} }}
    inputs {{ key: "Z" value: {{ data_type: TYPE_INT32 dims: [ 3 ] zero_data: true }} }} }},
  {{ name: "{fail_sample}" batch_size: 1 inputs {{ key: "IN" value: {{ data_type: TYPE_FP32 dims: [ 4 ] random_data: true }} }}
    inputs {{ key: "Z" value: {{ data_type: TYPE_INT32 dims: [ 3 ] zero_data: true }} }} }}
]"#
        )
    };
    std::fs::write(dir.join("config.pbtxt"), config("random")).unwrap();
    let load = |fail_on_rows: usize| {
        let calls: Calls = Arc::default();
        let c = calls.clone();
        let repo = Repository::builder(tmp.path())
            .native_backend("recording", move |_: &ModelConfig| {
                Ok(Box::new(Recording {
                    calls: c.clone(),
                    fail_on_rows,
                }) as Box<dyn NativeModel>)
            })
            .load();
        let calls = calls.lock().unwrap().clone();
        (repo, calls)
    };

    let (repo, calls) = load(usize::MAX);
    let repo = repo.unwrap();
    // Sample "file" three times, then "random" once (count 0 means once, as in Triton).
    assert_eq!(calls.len(), 4, "calls: {}", calls.len());
    let want = ArrayD::from_shape_vec(vec![2, 4], data.clone()).unwrap();
    for call in &calls[..3] {
        let x = &call.iter().find(|(n, _)| n == "IN").unwrap().1;
        assert_eq!(
            x.view::<f32>().unwrap(),
            want.view(),
            "the data file's values"
        );
        let z = &call.iter().find(|(n, _)| n == "Z").unwrap().1;
        assert_eq!(z.shape(), [2, 3]);
        assert!(
            z.view::<i32>().unwrap().iter().all(|&v| v == 0),
            "zero_data"
        );
    }
    let x = &calls[3].iter().find(|(n, _)| n == "IN").unwrap().1;
    assert_eq!(x.shape(), [1, 4], "batch_size 1 prepended to dims");
    let stats = repo.model("rec").unwrap().statistics();
    assert_eq!(
        (stats.success.count, stats.execution_count),
        (0, 0),
        "{stats}"
    );

    // A sample the model itself fails on keeps the model from loading, with Triton's prefix
    // and the model's own message (the data files are all fine here).
    std::fs::write(dir.join("config.pbtxt"), config("refused")).unwrap();
    let (repo, calls) = load(1);
    let e = repo.unwrap_err();
    assert!(
        e.to_string()
            .contains("failed to run warmup sample 'refused': the model refused this sample"),
        "{e}"
    );
    assert_eq!(calls.len(), 4, "the failing sample ran, after the first");
}

#[test]
fn symbolic_dims_with_non_identifier_names_load() {
    // paddle2onnx (PaddleOCR's models) names dims "p2o.DynamicDimension.0" and "?". tract
    // 0.21 failed to parse such names (we renamed them); 0.23 reads them as unknown dims.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("odd");
    std::fs::create_dir_all(dir.join("1")).unwrap();
    std::fs::copy(
        fixtures().join("generated/odd_dim_names.onnx"),
        dir.join("1/model.onnx"),
    )
    .unwrap();
    let repo = Repository::load(tmp.path()).unwrap();
    let model = repo.model("odd").unwrap();
    assert_eq!(
        model.config().max_batch_size,
        4,
        "auto-complete sees a variable first dim"
    );
    assert_eq!(model.config().input[0].dims, vec![-1, 4]);
    let x = Array::from_shape_fn((2, 3, 4), |(a, b, c)| (a * 100 + b * 10 + c) as f32);
    let out = model.infer([("INPUT0", Tensor::from(x.clone()))]).unwrap();
    assert_eq!(
        out.get("OUTPUT0").unwrap().view::<f32>().unwrap(),
        x.into_dyn().view()
    );
}

#[test]
fn nearest_resize_matches_onnx_runtime() {
    // Nearest Resize as FPNs use it: pure replications (floor + asymmetric, half_pixel) and
    // one that is not (asymmetric + round_prefer_floor). All three must equal ONNX Runtime's
    // outputs exactly.
    for opset in [12, 13] {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("resize");
        std::fs::create_dir_all(dir.join("1")).unwrap();
        std::fs::copy(
            fixtures().join(format!("generated/resize_nearest_opset{opset}.onnx")),
            dir.join("1/model.onnx"),
        )
        .unwrap();
        std::fs::write(
            dir.join("config.pbtxt"),
            r#"backend: "onnxruntime" input [ { name: "X" data_type: TYPE_FP32 dims: [ 1, 2, 5, 7 ] } ]
               output [ { name: "Y_floor" data_type: TYPE_FP32 dims: [ 1, 2, 10, 14 ] },
                        { name: "Y_half_pixel" data_type: TYPE_FP32 dims: [ 1, 2, 15, 14 ] },
                        { name: "Y_round" data_type: TYPE_FP32 dims: [ 1, 2, 10, 14 ] } ]"#,
        )
        .unwrap();
        let repo = Repository::load(tmp.path()).unwrap();
        let r = common::reference(&format!("resize_nearest_opset{opset}"));
        let out = repo
            .model("resize")
            .unwrap()
            .infer(r.input_tensors())
            .unwrap();
        for (name, want) in &r.outputs {
            let got = out.get(name).unwrap().view::<f32>().unwrap();
            assert_eq!(got, want.view(), "opset {opset} {name}");
        }
    }
}

#[test]
fn request_size_limit() {
    let tmp = tempfile::tempdir().unwrap();
    common::add_sub_model(tmp.path(), "m", ADD_SUB);
    let repo = Repository::builder(tmp.path())
        .max_request_bytes(200)
        .load()
        .unwrap();
    let model = repo.model("m").unwrap();
    // One row: 2 x 16 x 4 = 128 bytes; two rows: 256.
    model
        .infer([("INPUT0", batch(1, 0.0)), ("INPUT1", batch(1, 0.0))])
        .unwrap();
    let e = model
        .infer([("INPUT0", batch(2, 0.0)), ("INPUT1", batch(2, 0.0))])
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ResourceExhausted);
    assert_eq!(
        e.to_string(),
        "request for model 'm' carries 256 bytes of inputs, more than the limit of 200 bytes"
    );
}

#[test]
fn kind_cpu_runs_the_native_engine_unless_the_config_asks_for_tract() {
    // The tutorial's recogniser, unchanged, and a copy that asks for tract's own plan: both
    // answer ONNX Runtime's committed outputs; only the first runs our kernels.
    let src = fixtures().join("tutorial_repository/text_recognition");
    let repos: Vec<(tempfile::TempDir, Repository)> = [None, Some("tract")]
        .into_iter()
        .map(|engine| {
            let tmp = tempfile::tempdir().unwrap();
            copy_dir(&src, &tmp.path().join("text_recognition"));
            if let Some(engine) = engine {
                let cfg = tmp.path().join("text_recognition/config.pbtxt");
                let mut text = std::fs::read_to_string(&cfg).unwrap();
                text.push_str(&format!(
                    "parameters {{ key: \"engine\" value: {{ string_value: \"{engine}\" }} }}\n"
                ));
                std::fs::write(&cfg, text).unwrap();
            }
            let repo = Repository::load(tmp.path()).unwrap();
            (tmp, repo)
        })
        .collect();
    let r = reference("str_1x1x32x100");
    for ((_tmp, repo), name) in repos.iter().zip(["native", "tract"]) {
        let model = repo.model("text_recognition").unwrap();
        let out = model.infer(r.input_tensors()).unwrap();
        let (output, want) = &r.outputs[0];
        let diff = max_abs_diff(&out.get(output).unwrap().view::<f32>().unwrap(), want);
        assert!(diff < 1e-3, "{name}: max |modelyard - ORT| = {diff}");
        let report = model.execution_report();
        match name {
            "native" => assert_eq!(
                report.map(|r| (r.device, r.cpu_nodes)),
                Some(("cpu (native kernels)".to_string(), vec![]))
            ),
            _ => assert!(report.is_none(), "{report:?}"),
        }
    }
}
