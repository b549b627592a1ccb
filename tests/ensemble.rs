//! Ensemble execution: Triton's QA ensembles run end to end, only the steps needed for the
//! requested outputs run, and native (Rust) models serve as steps.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::{copy_dir, fixtures};
use modelyard::config::ModelConfig;
use modelyard::{ErrorKind, NativeModel, Repository, Tensor};
use ndarray::{Array2, ArrayD};

fn int_batch(rows: usize, offset: i32) -> Tensor {
    Tensor::from(Array2::from_shape_fn((rows, 16), |(r, c)| {
        offset + (r * 16 + c) as i32
    }))
}

/// Triton's `L0_simple_ensemble`: six steps over two versions of `simple` (add/sub) that
/// rebuild INPUT0 + INPUT1 and INPUT0 - INPUT1.
fn simple_ensemble_repo() -> (tempfile::TempDir, Repository) {
    let tmp = tempfile::tempdir().unwrap();
    let qa = fixtures().join("triton-qa/L0_simple_ensemble/models");
    for m in ["simple", "ensemble_add_sub_int32_int32_int32"] {
        copy_dir(&qa.join(m), &tmp.path().join(m));
    }
    for v in ["1", "2"] {
        let d = tmp.path().join("simple").join(v);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::copy(
            fixtures().join("generated/add_sub_int32_batch.onnx"),
            d.join("model.onnx"),
        )
        .unwrap();
    }
    std::fs::create_dir_all(tmp.path().join("ensemble_add_sub_int32_int32_int32/1")).unwrap();
    let repo = Repository::load(tmp.path()).unwrap();
    (tmp, repo)
}

#[test]
fn simple_ensemble_adds_and_subtracts() {
    let (_t, repo) = simple_ensemble_repo();
    let ens = repo.model("ensemble_add_sub_int32_int32_int32").unwrap();
    for rows in [1, 8] {
        let (a, b) = (int_batch(rows, 3), int_batch(rows, -100));
        let out = ens
            .infer([("INPUT0", a.clone()), ("INPUT1", b.clone())])
            .unwrap();
        let (a, b) = (a.view::<i32>().unwrap(), b.view::<i32>().unwrap());
        assert_eq!(out.get("OUTPUT0").unwrap().view::<i32>().unwrap(), &a + &b);
        assert_eq!(out.get("OUTPUT1").unwrap().view::<i32>().unwrap(), &a - &b);
        let only = ens
            .infer_outputs(
                [
                    ("INPUT0", int_batch(rows, 3)),
                    ("INPUT1", int_batch(rows, -100)),
                ],
                &["OUTPUT0"],
            )
            .unwrap();
        assert_eq!(only.len(), 1);
        assert_eq!(only.get("OUTPUT0").unwrap().view::<i32>().unwrap(), &a + &b);
    }
    let e = ens
        .infer([("INPUT0", int_batch(9, 0)), ("INPUT1", int_batch(9, 0))])
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "inference request batch-size must be <= 8 for 'ensemble_add_sub_int32_int32_int32'"
    );
}

/// Triton's check: asking only for OUTPUT0 runs only the steps on `simple` version 2 (the
/// latest, `-1`); version 1, used only by the OUTPUT1 branch, records no execution.
#[test]
fn pruned_steps_leave_no_statistics() {
    let (_t, repo) = simple_ensemble_repo();
    let ens = repo.model("ensemble_add_sub_int32_int32_int32").unwrap();
    ens.infer_outputs(
        [("INPUT0", int_batch(2, 1)), ("INPUT1", int_batch(2, 5))],
        &["OUTPUT0"],
    )
    .unwrap();
    let (v1, v2) = (
        repo.model_version("simple", 1).unwrap().statistics(),
        repo.model_version("simple", 2).unwrap().statistics(),
    );
    assert_eq!(v1.execution_count, 0);
    assert_eq!(v2.execution_count, 3);
    assert_eq!(v2.inference_count, 6);
    ens.infer([("INPUT0", int_batch(1, 1)), ("INPUT1", int_batch(1, 5))])
        .unwrap();
    let (v1, v2) = (
        repo.model_version("simple", 1).unwrap().statistics(),
        repo.model_version("simple", 2).unwrap().statistics(),
    );
    assert_eq!(v1.success.count, 3);
    assert_eq!(v2.success.count, 6);
    assert_eq!(ens.statistics().success.count, 2);
}

/// A native model that scales its input and counts its executions.
struct Scale {
    factor: f32,
    calls: Arc<AtomicUsize>,
    output: String,
}

impl NativeModel for Scale {
    fn execute(
        &self,
        inputs: &[(String, Tensor)],
        _: &[String],
    ) -> modelyard::Result<Vec<(String, Tensor)>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let x = inputs[0].1.view::<f32>()?;
        if x.iter().any(|v| v.is_nan()) {
            panic!("NaN input");
        }
        if x.iter().any(|&v| v == 7.0) {
            // A wrong answer: the wrong shape.
            return Ok(vec![(
                self.output.clone(),
                Tensor::from(ArrayD::<f32>::zeros(vec![1, 3])),
            )]);
        }
        Ok(vec![(
            self.output.clone(),
            Tensor::from(x.mapv(|v| v * self.factor)),
        )])
    }
}

fn model(dir: &Path, name: &str, text: &str) {
    std::fs::create_dir_all(dir.join(name).join("1")).unwrap();
    std::fs::write(dir.join(name).join("config.pbtxt"), text).unwrap();
}

fn native_repo(calls: &Arc<AtomicUsize>) -> (tempfile::TempDir, Repository) {
    let tmp = tempfile::tempdir().unwrap();
    let io = |i: &str, o: &str| {
        format!("max_batch_size: 4 input [ {{ name: \"{i}\" data_type: TYPE_FP32 dims: [ 2 ] }} ] output [ {{ name: \"{o}\" data_type: TYPE_FP32 dims: [ 2 ] }} ]")
    };
    model(tmp.path(), "double", &format!("backend: \"scale\" parameters {{ key: \"factor\" value: {{ string_value: \"2\" }} }} {}", io("X", "Y")));
    model(tmp.path(), "negate", &format!("backend: \"scale\" parameters {{ key: \"factor\" value: {{ string_value: \"-1\" }} }} {}", io("X", "Y")));
    model(
        tmp.path(),
        "branches",
        r#"platform: "ensemble" max_batch_size: 4
        input [ { name: "IN" data_type: TYPE_FP32 dims: [ 2 ] } ]
        output [ { name: "DOUBLED" data_type: TYPE_FP32 dims: [ 2 ] }, { name: "NEGATED_TWICE" data_type: TYPE_FP32 dims: [ 2 ] } ]
        ensemble_scheduling { step [
          { model_name: "double" model_version: -1 input_map { key: "X" value: "IN" } output_map { key: "Y" value: "DOUBLED" } },
          { model_name: "negate" model_version: -1 input_map { key: "X" value: "IN" } output_map { key: "Y" value: "NEG" } },
          { model_name: "negate" model_version: 1 input_map { key: "X" value: "NEG" } output_map { key: "Y" value: "NEGATED_TWICE" } }
        ] }"#,
    );
    let c = calls.clone();
    let repo = Repository::builder(tmp.path())
        .native_backend("scale", move |cfg: &ModelConfig| {
            let factor = cfg
                .parameters
                .get("factor")
                .and_then(|p| p.string_value.parse().ok())
                .unwrap_or(1.0);
            Ok(Box::new(Scale {
                factor,
                calls: c.clone(),
                output: cfg.output[0].name.clone(),
            }) as Box<dyn NativeModel>)
        })
        .load()
        .unwrap();
    (tmp, repo)
}

#[test]
fn only_needed_steps_run_and_natives_serve_as_steps() {
    let calls = Arc::new(AtomicUsize::new(0));
    let (_t, repo) = native_repo(&calls);
    let ens = repo.model("branches").unwrap();
    let x = Tensor::from(Array2::from_shape_vec((1, 2), vec![1.5f32, -4.0]).unwrap());
    let out = ens.infer([("IN", x.clone())]).unwrap();
    assert_eq!(
        out.get("DOUBLED")
            .unwrap()
            .view::<f32>()
            .unwrap()
            .as_slice()
            .unwrap(),
        [3.0, -8.0]
    );
    assert_eq!(
        out.get("NEGATED_TWICE")
            .unwrap()
            .view::<f32>()
            .unwrap()
            .as_slice()
            .unwrap(),
        [1.5, -4.0]
    );
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    // Asking only for DOUBLED runs only the first step.
    let out = ens
        .infer_outputs([("IN", x.clone())], &["DOUBLED"])
        .unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!(calls.load(Ordering::SeqCst), 4);
    let _ = ens.infer_outputs([("IN", x)], &["NEGATED_TWICE"]).unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 6);
}

#[test]
fn a_failing_native_model_fails_the_request_and_stays_usable() {
    let calls = Arc::new(AtomicUsize::new(0));
    let (_t, repo) = native_repo(&calls);
    let double = repo.model("double").unwrap();
    let nan = Tensor::from(Array2::from_shape_vec((1, 2), vec![f32::NAN, 0.0]).unwrap());
    let e = double.infer([("X", nan)]).unwrap_err();
    assert_eq!(
        (e.kind(), e.to_string().as_str()),
        (ErrorKind::Execution, "native model 'double' panicked")
    );
    let seven = Tensor::from(Array2::from_shape_vec((1, 2), vec![7.0f32, 0.0]).unwrap());
    let e = double.infer([("X", seven.clone())]).unwrap_err();
    assert_eq!(e.to_string(), "native model 'double' returned output 'Y' as TYPE_FP32 [1,3], but its config declares TYPE_FP32 [2]");
    let e = repo
        .model("branches")
        .unwrap()
        .infer([("IN", seven)])
        .unwrap_err();
    assert!(
        e.to_string().starts_with(
            "in ensemble 'branches', step 0 ('double' version 1): native model 'double' returned"
        ),
        "{e}"
    );
    let ok = Tensor::from(Array2::from_shape_vec((2, 2), vec![1.0f32, 2.0, 3.0, 4.0]).unwrap());
    let out = double.infer([("X", ok)]).unwrap();
    assert_eq!(
        out.get("Y")
            .unwrap()
            .view::<f32>()
            .unwrap()
            .as_slice()
            .unwrap(),
        [2.0, 4.0, 6.0, 8.0]
    );
}

#[test]
fn nested_ensembles_run() {
    let tmp = tempfile::tempdir().unwrap();
    let case = fixtures()
        .join("triton-qa/L0_model_config/autofill_noplatform_success/ensemble/embedded_ensemble");
    for m in ["embedded_ensemble", "inner_ensemble", "fp32_dim1_batch4"] {
        copy_dir(&case.join(m), &tmp.path().join(m));
        std::fs::create_dir_all(tmp.path().join(m).join("1")).unwrap();
    }
    let repo = Repository::load(tmp.path()).unwrap();
    let x = Array2::from_shape_fn((2, 16), |(r, c)| (r * 16 + c) as f32);
    let out = repo
        .model("embedded_ensemble")
        .unwrap()
        .infer([("data", Tensor::from(x.clone()))])
        .unwrap();
    assert_eq!(
        out.get("prob").unwrap().view::<f32>().unwrap(),
        x.into_dyn().view()
    );
}
