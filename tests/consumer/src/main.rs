//! What an application that adds `modelyard` writes: a Triton repository on disk, loaded,
//! run, and its errors told apart by kind. Only modelyard's public API (and the crates it
//! re-exports) is named here; if a public item needed a private or a tract type, this would
//! not compile. `.ci/run` runs it with default features off and on.
//!
//! Usage: `modelyard-consumer [ADD_SUB_ONNX]` (default: the checkout's
//! `fixtures/generated/add_sub_fp32_batch.onnx`). Exits non-zero on any wrong answer.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use modelyard::config::DataType;
use modelyard::ndarray::{Array2, ArrayViewD};
use modelyard::{Error, ErrorKind, NativeModel, Repository, Tensor};

const ADD_SUB: &str = r#"
backend: "onnxruntime"
max_batch_size: 8
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 16 ] }, { name: "INPUT1" data_type: TYPE_FP32 dims: [ 16 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 16 ] }, { name: "OUTPUT1" data_type: TYPE_FP32 dims: [ 16 ] } ]
"#;

const SCALE: &str = r#"
backend: "scale"
max_batch_size: 0
input [ { name: "X" data_type: TYPE_FP32 dims: [ -1 ] } ]
output [ { name: "Y" data_type: TYPE_FP32 dims: [ -1 ] } ]
"#;

/// A model written in Rust, served beside the ONNX one: `Y = 3 X`.
struct Scale;

impl NativeModel for Scale {
    fn execute(
        &self,
        inputs: &[(String, Tensor)],
        _outputs: &[String],
    ) -> modelyard::Result<Vec<(String, Tensor)>> {
        let x = inputs
            .iter()
            .find(|(n, _)| n == "X")
            .ok_or_else(|| Error::new(ErrorKind::InvalidInput, "no input X"))?;
        let y = x.1.view::<f32>()?.mapv(|v| 3.0 * v);
        Ok(vec![("Y".to_string(), Tensor::from(y))])
    }
}

fn write_repository(root: &Path, onnx: &Path) -> std::io::Result<()> {
    let add_sub = root.join("add_sub");
    std::fs::create_dir_all(add_sub.join("1"))?;
    std::fs::write(add_sub.join("config.pbtxt"), ADD_SUB)?;
    std::fs::copy(onnx, add_sub.join("1/model.onnx"))?;
    let scale = root.join("scale");
    std::fs::create_dir_all(scale.join("1"))?;
    std::fs::write(scale.join("config.pbtxt"), SCALE)?;
    Ok(())
}

fn check(what: &str, ok: bool, failures: &mut Vec<String>) {
    println!("{} {what}", if ok { "ok  " } else { "FAIL" });
    if !ok {
        failures.push(what.to_string());
    }
}

fn close(a: &ArrayViewD<'_, f32>, b: &ArrayViewD<'_, f32>) -> bool {
    a.shape() == b.shape() && a.iter().zip(b.iter()).all(|(x, y)| (x - y).abs() <= 1e-6)
}

fn run(root: &Path, failures: &mut Vec<String>) -> modelyard::Result<()> {
    let repo = Repository::builder(root)
        .native_backend("scale", |_config| {
            Ok(Box::new(Scale) as Box<dyn NativeModel>)
        })
        .load()?;
    let mut ready = repo.ready_models();
    ready.sort();
    check(
        "both models are ready",
        ready == ["add_sub", "scale"],
        failures,
    );

    // The ONNX model on the CPU engine: a batch of 3 rows.
    let model = repo.model("add_sub")?;
    let a = Array2::from_shape_fn((3, 16), |(r, c)| (r * 16 + c) as f32 * 0.5);
    let b = Array2::from_shape_fn((3, 16), |(r, c)| 1.0 - (r + c) as f32);
    let out = model.infer([
        ("INPUT0", Tensor::from(a.clone())),
        ("INPUT1", Tensor::from(b.clone())),
    ])?;
    let sum = (&a + &b).into_dyn();
    let diff = (&a - &b).into_dyn();
    let got = |name: &str| -> modelyard::Result<Tensor> {
        out.get(name)
            .cloned()
            .ok_or_else(|| Error::new(ErrorKind::NotFound, format!("no output {name}")))
    };
    let (o0, o1) = (got("OUTPUT0")?, got("OUTPUT1")?);
    check(
        "OUTPUT0 = INPUT0 + INPUT1",
        close(&o0.view::<f32>()?, &sum.view()),
        failures,
    );
    check(
        "OUTPUT1 = INPUT0 - INPUT1",
        close(&o1.view::<f32>()?, &diff.view()),
        failures,
    );
    check(
        "outputs are TYPE_FP32 [3,16]",
        o0.data_type() == DataType::TypeFp32 && o0.shape() == [3, 16],
        failures,
    );

    // The native model.
    let scale = repo.model("scale")?;
    let x = modelyard::ndarray::arr1(&[1.0f32, -2.0, 0.25]);
    let y = scale.infer([("X", Tensor::from(x.clone()))])?;
    let want = x.mapv(|v| 3.0 * v).into_dyn();
    check(
        "native model Y = 3 X",
        y.get("Y")
            .map(|t| t.view::<f32>().map(|v| close(&v, &want.view())))
            .transpose()?
            .unwrap_or(false),
        failures,
    );

    // Errors a caller branches on, by kind.
    let wrong = Tensor::from(Array2::<f32>::zeros((3, 15)));
    let e = model
        .infer([("INPUT0", wrong.clone()), ("INPUT1", wrong)])
        .err();
    check(
        "a [3,15] input is InvalidInput naming the model and tensor",
        e.as_ref().is_some_and(|e| {
            e.kind() == ErrorKind::InvalidInput
                && e.model() == Some("add_sub")
                && e.to_string().contains("INPUT0")
        }),
        failures,
    );
    let e = repo.model("no_such_model").err();
    check(
        "an unknown model is NotFound",
        e.is_some_and(|e| e.kind() == ErrorKind::NotFound),
        failures,
    );
    let e = o0.view::<i32>().err();
    check(
        "an FP32 tensor viewed as i32 is DataType",
        e.is_some_and(|e| e.kind() == ErrorKind::DataType),
        failures,
    );
    let stats = repo.statistics();
    check(
        "statistics count the add_sub inference",
        stats
            .iter()
            .any(|s| s.name == "add_sub" && s.inference_count == 3),
        failures,
    );
    full_features(failures);
    Ok(())
}

/// With modelyard's default features: the OCR module and the GPU probe are public and usable.
#[cfg(feature = "full")]
fn full_features(failures: &mut Vec<String>) {
    use modelyard::ocr::{image::RgbImage, OcrOptions};
    let img = RgbImage::new(4, 4);
    let options = OcrOptions::default();
    check(
        "ocr types are nameable",
        img.width() == 4 && format!("{options:?}").contains("OcrOptions"),
        failures,
    );
    match modelyard::gpu::probe() {
        Ok(info) => println!("note GPU: {} device(s)", info.devices.len()),
        Err(why) => println!("note no GPU: {why}"),
    }
}

#[cfg(not(feature = "full"))]
fn full_features(_: &mut Vec<String>) {}

fn main() -> ExitCode {
    let onnx = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../fixtures/generated/add_sub_fp32_batch.onnx")
        });
    let root = std::env::temp_dir().join(format!("modelyard-consumer-{}", std::process::id()));
    let mut failures = Vec::new();
    let result = write_repository(&root, &onnx)
        .map_err(|e| Error::new(ErrorKind::Io, e.to_string()))
        .and_then(|()| run(&root, &mut failures));
    let _ = std::fs::remove_dir_all(&root);
    match result {
        Err(e) => {
            eprintln!("error ({:?}): {e}", e.kind());
            ExitCode::FAILURE
        }
        Ok(()) if failures.is_empty() => ExitCode::SUCCESS,
        Ok(()) => {
            eprintln!("{} check(s) failed: {failures:?}", failures.len());
            ExitCode::FAILURE
        }
    }
}
