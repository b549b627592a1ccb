//! Repository scanning, version policies, model lookup and bad input on disk.

mod common;

use std::path::{Path, PathBuf};

use common::{copy_dir, expect_error, fixtures, ADD_SUB};
use modelyard::{ErrorKind, ModelState, Repository, Tensor};

/// A model folder `name` with `config` and the generated add/sub model in each version.
fn add_model(repo: &Path, name: &str, config: &str, versions: &[&str]) -> PathBuf {
    let dir = repo.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("config.pbtxt"), config).unwrap();
    for v in versions {
        std::fs::create_dir_all(dir.join(v)).unwrap();
        std::fs::copy(
            fixtures().join("generated/add_sub_fp32_batch.onnx"),
            dir.join(v).join("model.onnx"),
        )
        .unwrap();
    }
    dir
}

#[test]
fn version_folders_follow_triton_rules() {
    let tmp = tempfile::tempdir().unwrap();
    let policy = "version_policy: { all { } }";
    add_model(
        tmp.path(),
        "m",
        &format!("{ADD_SUB}{policy}"),
        &["1", "3", "0", "003", "abc", "-1", "1abc", " 2"],
    );
    std::fs::write(
        tmp.path().join("README.txt"),
        "top-level files are not models",
    )
    .unwrap();
    let repo = Repository::load(tmp.path()).unwrap();
    let versions: Vec<Option<i64>> = repo.index().iter().map(|e| e.version).collect();
    assert_eq!(versions, [Some(0), Some(1), Some(3)]);
    assert_eq!(repo.model("m").unwrap().version(), 3);
    assert_eq!(repo.model_version("m", 1).unwrap().version(), 1);
    let e = repo.model_version("m", 2).unwrap_err();
    assert_eq!(
        e.to_string(),
        "Request for unknown model: 'm' version 2 is not found"
    );
    assert_eq!(e.kind(), ErrorKind::NotFound);
    let e = repo.model("nope").unwrap_err();
    assert_eq!(
        e.to_string(),
        "Request for unknown model: 'nope' is not found"
    );
}

#[test]
fn version_policies_select_versions() {
    let tmp = tempfile::tempdir().unwrap();
    add_model(tmp.path(), "latest", ADD_SUB, &["1", "2", "10"]);
    add_model(
        tmp.path(),
        "latest2",
        &format!("{ADD_SUB} version_policy {{ latest {{ num_versions: 2 }} }}"),
        &["1", "2", "10"],
    );
    add_model(
        tmp.path(),
        "specific",
        &format!("{ADD_SUB} version_policy {{ specific {{ versions: [ 1, 7 ] }} }}"),
        &["1", "2"],
    );
    let repo = Repository::load(tmp.path()).unwrap();
    let of = |name: &str| -> Vec<i64> {
        repo.index()
            .iter()
            .filter(|e| e.name == name)
            .filter_map(|e| e.version)
            .collect()
    };
    assert_eq!(of("latest"), [10], "numerically highest, not lexicographic");
    assert_eq!(of("latest2"), [2, 10]);
    assert_eq!(of("specific"), [1]);
    assert!(repo.index().iter().all(|e| e.state == ModelState::Ready));
}

#[test]
fn no_available_version_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    add_model(
        tmp.path(),
        "m",
        &format!("{ADD_SUB} version_policy {{ specific {{ versions: [ 4 ] }} }}"),
        &["1"],
    );
    let e = Repository::load(tmp.path()).unwrap_err().to_string();
    assert!(
        e.contains("at least one version must be available under the version policy of model 'm'"),
        "{e}"
    );
}

#[test]
fn exit_on_error_false_keeps_good_models_serving() {
    let tmp = tempfile::tempdir().unwrap();
    add_model(tmp.path(), "good", ADD_SUB, &["1"]);
    let bad = add_model(tmp.path(), "truncated", ADD_SUB, &["1"]);
    let bytes = std::fs::read(bad.join("1/model.onnx")).unwrap();
    std::fs::write(bad.join("1/model.onnx"), &bytes[..bytes.len() / 2]).unwrap();
    add_model(tmp.path(), "broken_config", "input [ { name: ", &["1"]);

    let e = Repository::load(tmp.path()).unwrap_err();
    let msg = e.to_string();
    assert!(msg.starts_with("failed to load all models: "), "{msg}");
    assert!(msg.contains("'truncated' version 1: "), "{msg}");
    assert!(msg.contains("is not a valid ONNX model"), "{msg}");
    assert!(
        msg.contains("'broken_config': failed to read text proto from "),
        "{msg}"
    );
    assert!(
        msg.contains("config.pbtxt:1:"),
        "parse errors carry line and column: {msg}"
    );

    let repo = Repository::builder(tmp.path())
        .exit_on_error(false)
        .load()
        .unwrap();
    // The good model serves: 1 + 2 = 3 in every element.
    let one = |v: f32| Tensor::from(ndarray::Array2::<f32>::from_elem((1, 16), v));
    let out = repo
        .model("good")
        .unwrap()
        .infer([("INPUT0", one(1.0)), ("INPUT1", one(2.0))])
        .unwrap();
    let sum = out.get("OUTPUT0").unwrap().view::<f32>().unwrap();
    assert!(sum.iter().all(|&v| v == 3.0), "{sum}");
    assert_eq!(repo.ready_models(), ["good"]);
    let e = repo.model("truncated").unwrap_err();
    assert_eq!(
        e.to_string(),
        "Request for unknown model: 'truncated' has no available versions"
    );
    let index = repo.index();
    let t = index.iter().find(|e| e.name == "truncated").unwrap();
    assert_eq!((t.version, t.state), (Some(1), ModelState::Unavailable));
    assert!(
        t.reason
            .starts_with("Unavailable: failed to load model 'truncated'"),
        "{}",
        t.reason
    );
    let b = index.iter().find(|e| e.name == "broken_config").unwrap();
    assert_eq!((b.version, b.state), (None, ModelState::Unavailable));
}

#[test]
fn every_truncation_of_an_onnx_file_is_an_error() {
    let model = std::fs::read(fixtures().join("generated/add_sub_fp32_batch.onnx")).unwrap();
    for cut in [0, 1, 7, 50, 100, model.len() - 1] {
        let tmp = tempfile::tempdir().unwrap();
        let dir = add_model(tmp.path(), "m", ADD_SUB, &["1"]);
        std::fs::write(dir.join("1/model.onnx"), &model[..cut]).unwrap();
        let e = Repository::load(tmp.path()).unwrap_err();
        assert!(e.to_string().contains("'m' version 1"), "cut {cut}: {e}");
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = add_model(tmp.path(), "m", ADD_SUB, &["1"]);
    std::fs::write(dir.join("1/model.onnx"), b"this is not onnx at all").unwrap();
    expect_error(
        Repository::load(tmp.path()),
        ErrorKind::Unavailable,
        "model.onnx' is not a valid ONNX model",
    );
}

#[test]
fn unknown_onnx_operator_is_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = add_model(tmp.path(), "m", ADD_SUB, &["1"]);
    let mut bytes = std::fs::read(dir.join("1/model.onnx")).unwrap();
    // Rename the "Add" op type to "Qdd" (same length, so the protobuf stays valid).
    let pos = bytes
        .windows(5)
        .position(|w| w == b"\x22\x03Add")
        .expect("op type in file");
    bytes[pos + 2] = b'Q';
    std::fs::write(dir.join("1/model.onnx"), bytes).unwrap();
    let e = Repository::load(tmp.path()).unwrap_err().to_string();
    assert!(e.contains("'m' version 1") && e.contains("Qdd"), "{e}");
}

#[test]
fn paths_may_not_escape_the_model_folder() {
    let tmp = tempfile::tempdir().unwrap();
    add_model(
        tmp.path(),
        "m",
        &format!(
            "{ADD_SUB} backend: \"onnxruntime\" default_model_filename: \"../../m/1/model.onnx\""
        ),
        &["1"],
    );
    let e = Repository::load(tmp.path()).unwrap_err().to_string();
    assert!(e.contains("default_model_filename '../../m/1/model.onnx' for model 'm' escapes the model directory"), "{e}");

    let tmp = tempfile::tempdir().unwrap();
    let labelled = ADD_SUB.replacen(
        "name: \"OUTPUT0\"",
        "name: \"OUTPUT0\" label_filename: \"../secret.txt\"",
        1,
    );
    add_model(tmp.path(), "m", &labelled, &["1"]);
    let e = Repository::load(tmp.path()).unwrap_err().to_string();
    assert!(e.contains("label file path '../secret.txt' for output 'OUTPUT0' in model 'm' is outside model directory"), "{e}");
}

#[test]
fn labels_are_read_from_the_model_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let labelled = ADD_SUB.replacen(
        "name: \"OUTPUT0\"",
        "name: \"OUTPUT0\" label_filename: \"labels.txt\"",
        1,
    );
    let dir = add_model(tmp.path(), "m", &labelled, &["1"]);
    std::fs::write(dir.join("labels.txt"), "zero\none\r\n\nthree").unwrap();
    let repo = Repository::load(tmp.path()).unwrap();
    let labels = repo.model("m").unwrap().labels("OUTPUT0").unwrap().to_vec();
    assert_eq!(
        labels,
        ["zero", "one\r", "", "three"],
        "split on \\n only, as Triton"
    );
}

#[test]
fn strict_mode_needs_a_config_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = add_model(tmp.path(), "m", ADD_SUB, &["1"]);
    std::fs::remove_file(dir.join("config.pbtxt")).unwrap();
    let e = Repository::builder(tmp.path())
        .auto_complete(false)
        .load()
        .unwrap_err()
        .to_string();
    assert!(e.contains("failed to open text file for read"), "{e}");
    // With auto-complete (the default) the config comes from the ONNX file.
    let repo = Repository::load(tmp.path()).unwrap();
    let cfg = repo.model("m").unwrap().config().clone();
    assert_eq!(cfg.max_batch_size, 4);
    assert_eq!(
        cfg.dynamic_batching().unwrap().preferred_batch_size,
        vec![4]
    );
    assert_eq!(cfg.input.len(), 2);
}

#[test]
fn directory_and_repository_problems() {
    let tmp = tempfile::tempdir().unwrap();
    add_model(
        tmp.path(),
        "m",
        &format!("name: \"other\" {ADD_SUB}"),
        &["1"],
    );
    let e = Repository::load(tmp.path()).unwrap_err().to_string();
    assert!(
        e.contains(
            "unexpected directory name 'm' for model 'other', directory name must equal model name"
        ),
        "{e}"
    );

    let file = tmp.path().join("a_file");
    std::fs::write(&file, "x").unwrap();
    let e = Repository::load(&file).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Io);
    assert!(e.to_string().contains("is not a directory"), "{e}");
    expect_error(
        Repository::load(tmp.path().join("missing")),
        ErrorKind::Io,
        "failed to open model repository",
    );
}

#[test]
fn absurd_dims_are_rejected_at_load() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = ADD_SUB.replacen("dims: [ 16 ]", "dims: [ 4294967296 ]", 1);
    add_model(tmp.path(), "m", &cfg, &["1"]);
    let e = Repository::load(tmp.path()).unwrap_err().to_string();
    assert!(e.contains("the model expects 2 dimensions (shape [-1,16]) but the model configuration specifies 2 dimensions"), "{e}");
    let tmp = tempfile::tempdir().unwrap();
    let cfg = ADD_SUB.replacen(
        "dims: [ 16 ]",
        "dims: [ 4294967296, 4294967296, 4294967296 ]",
        1,
    );
    add_model(tmp.path(), "m", &cfg, &["1"]);
    let e = Repository::load(tmp.path()).unwrap_err().to_string();
    assert!(
        e.contains("element count for tensor 'INPUT0' exceeds maximum size of 9223372036854775807"),
        "{e}"
    );
}

/// STR output for a deterministic input, from `repo`'s `text_recognition`.
fn str_logits(repo: &Repository) -> ndarray::ArrayD<f32> {
    let x = ndarray::Array::from_shape_fn((1, 1, 32, 100), |(_, _, y, x)| {
        ((x * 7 + y * 3) % 11) as f32 / 11.0
    });
    let out = repo
        .model("text_recognition")
        .unwrap()
        .infer([("input.1", modelyard::Tensor::from(x))])
        .unwrap();
    out.get("308").unwrap().view::<f32>().unwrap().to_owned()
}

#[test]
fn tutorial_part2_gpu_group_runs_on_the_gpu_or_fails_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("text_recognition");
    copy_dir(&fixtures().join("tutorial-configs/Part_2-improving_resource_utilization/model_repository/text_recognition"), &dir);
    std::fs::create_dir_all(dir.join("1")).unwrap();
    std::fs::copy(
        fixtures().join("tutorial_repository_part2/text_recognition/1/model.onnx"),
        dir.join("1/model.onnx"),
    )
    .unwrap();
    let loaded = Repository::load(tmp.path());
    let want = match modelyard::gpu::probe() {
        _ if !cfg!(feature = "cuda") => Some("instance group text_recognition_0 of model text_recognition has kind KIND_GPU but server does not support GPUs".to_string()),
        Err(reason) => Some(format!("model 'text_recognition' instance group 'text_recognition_0' requests KIND_GPU but no CUDA driver was found ({reason})")),
        Ok(_) => None,
    };
    let gpu_answer = match (want, loaded) {
        (Some(want), Err(e)) => {
            assert!(e.to_string().contains(&want), "{e}");
            None
        }
        (None, Ok(repo)) => {
            let logits = str_logits(&repo);
            let report = repo
                .model("text_recognition")
                .unwrap()
                .execution_report()
                .unwrap();
            assert!(report.cpu_nodes.is_empty(), "{report:?}");
            Some(logits)
        }
        (want, loaded) => panic!("expected {want:?}, got {:?}", loaded.err()),
    };
    // KIND_AUTO (no instance group): the CPU without a GPU, the GPU with one, as in Triton;
    // the emulator counts as a GPU.
    let config = std::fs::read_to_string(dir.join("config.pbtxt")).unwrap();
    let cut = config.find("instance_group").unwrap();
    std::fs::write(dir.join("config.pbtxt"), &config[..cut]).unwrap();
    let repo = Repository::load(tmp.path()).unwrap();
    let m = repo.model("text_recognition").unwrap();
    let auto = if modelyard::gpu::probe().is_ok() {
        "KIND_GPU"
    } else {
        "KIND_CPU"
    };
    assert_eq!(m.config().instance_group[0].kind().as_str_name(), auto);
    let cpu_or_gpu = str_logits(&repo);
    let emulated = Repository::builder(tmp.path())
        .cuda_emulator(true)
        .load()
        .unwrap();
    let m = emulated.model("text_recognition").unwrap();
    assert_eq!(
        m.config().instance_group[0].kind().as_str_name(),
        "KIND_GPU"
    );
    let on_emulator = str_logits(&emulated);
    assert!(m.execution_report().unwrap().device.contains("emulator"));
    for other in [Some(&on_emulator), gpu_answer.as_ref()]
        .into_iter()
        .flatten()
    {
        let diff = other
            .iter()
            .zip(cpu_or_gpu.iter())
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(
            diff < 2e-3,
            "GPU path differs from the first load by {diff}"
        );
    }
}

#[test]
fn the_gpu_probe_never_panics() {
    match modelyard::gpu::probe() {
        Ok(info) => println!("CUDA {}: {:?}", info.driver_version, info.devices),
        Err(reason) => {
            common::skip(&format!("no usable GPU here ({reason}); GPU tests skip"));
            assert!(!reason.is_empty());
        }
    }
    // Probed once: the same answer again.
    assert_eq!(
        modelyard::gpu::probe().is_ok(),
        modelyard::gpu::probe().is_ok()
    );
}

#[test]
fn initializer_as_optional_input() {
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(
        &fixtures().join("triton-qa/L0_initializer_as_input/models"),
        tmp.path(),
    );
    let repo = Repository::load(tmp.path()).unwrap();
    let model = repo.model("add_with_initializer").unwrap();
    let zeros = ndarray::ArrayD::<f32>::zeros(vec![5, 5]);
    let out = model
        .infer([("INPUT", modelyard::Tensor::from(zeros.clone()))])
        .unwrap();
    let o = out.get("OUTPUT").unwrap().view::<f32>().unwrap();
    assert!(o.iter().all(|&v| v == 1.0), "INPUT + initializer of ones");
    let e = model
        .infer([
            ("INPUT", modelyard::Tensor::from(zeros.clone())),
            ("INITIALIZER", modelyard::Tensor::from(zeros)),
        ])
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unsupported);
    assert_eq!(e.tensor(), Some("INITIALIZER"));
}

#[test]
fn every_shipped_config_parses() {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "pbtxt")
                || (p
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("expected")
                    && p.to_string_lossy().contains("autofill_noplatform_success"))
            {
                out.push(p);
            }
        }
    }
    let mut files = Vec::new();
    walk(&fixtures(), &mut files);
    assert!(files.len() > 100, "{} files", files.len());
    for f in &files {
        modelyard::config::ModelConfig::from_pbtxt_file(f).unwrap_or_else(|e| panic!("{e}"));
    }
}

#[cfg(unix)]
#[test]
fn symlinks_in_the_repository_are_followed_as_triton_does() {
    // A model cache lays files out as links into its blob store: the model file, a label file
    // and a whole version folder are links that point outside the repository.
    let tmp = tempfile::tempdir().unwrap();
    let store = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixtures().join("generated/add_sub_fp32_batch.onnx"),
        store.path().join("blob-1"),
    )
    .unwrap();
    std::fs::write(store.path().join("blob-2"), "zero\none").unwrap();
    std::fs::create_dir_all(store.path().join("v2")).unwrap();
    std::os::unix::fs::symlink(
        store.path().join("blob-1"),
        store.path().join("v2/model.onnx"),
    )
    .unwrap();
    let labelled = ADD_SUB.replacen(
        "name: \"OUTPUT0\"",
        "name: \"OUTPUT0\" label_filename: \"labels.txt\"",
        1,
    );
    let dir = add_model(
        tmp.path(),
        "m",
        &format!("{labelled}version_policy: {{ all {{ }} }}"),
        &[],
    );
    std::fs::create_dir_all(dir.join("1")).unwrap();
    std::os::unix::fs::symlink(store.path().join("blob-1"), dir.join("1/model.onnx")).unwrap();
    std::os::unix::fs::symlink(store.path().join("v2"), dir.join("2")).unwrap();
    std::os::unix::fs::symlink(store.path().join("blob-2"), dir.join("labels.txt")).unwrap();
    let repo = Repository::load(tmp.path()).unwrap();
    for v in [1, 2] {
        let m = repo.model_version("m", v).unwrap();
        assert_eq!(m.labels("OUTPUT0").unwrap(), ["zero", "one"]);
        let a = ndarray::Array2::<f32>::from_shape_fn((1, 16), |(_, j)| j as f32);
        let out = m
            .infer([
                ("INPUT0", modelyard::Tensor::from(a.clone())),
                ("INPUT1", modelyard::Tensor::from(a.clone())),
            ])
            .unwrap();
        let sum = out
            .get("OUTPUT0")
            .unwrap()
            .view::<f32>()
            .unwrap()
            .to_owned();
        assert_eq!(sum, (&a * 2.0).into_dyn(), "version {v}");
    }

    // A name in the config may still not climb out of the model folder.
    let tmp = tempfile::tempdir().unwrap();
    let climbing =
        format!("backend: \"onnxruntime\"\ndefault_model_filename: \"../../x.onnx\"\n{ADD_SUB}");
    add_model(tmp.path(), "m", &climbing, &["1"]);
    let e = Repository::load(tmp.path()).unwrap_err();
    assert!(
        e.to_string().contains(
            "default_model_filename '../../x.onnx' for model 'm' escapes the model directory"
        ),
        "{e}"
    );
}

/// Triton's wording for two config mistakes (its QA corpus has both): a `runtime` that climbs
/// out of the backend directory, and a `KIND_GPU` group listing a GPU that does not exist.
#[test]
fn runtime_escapes_and_missing_gpu_ids_use_tritons_wording() {
    for runtime in [
        "../../libtriton_onnxruntime.so",
        "/usr/lib/libtriton_onnxruntime.so",
    ] {
        let tmp = tempfile::tempdir().unwrap();
        add_model(
            tmp.path(),
            "m",
            &format!("{ADD_SUB} backend: \"onnxruntime\" runtime: \"{runtime}\""),
            &["1"],
        );
        let e = Repository::load(tmp.path()).unwrap_err();
        assert!(
            e.to_string().contains(&format!(
                "backend library name '{runtime}' escapes backend directory 'backends/onnxruntime', for model 'm', check model config runtime field"
            )),
            "{e}"
        );
    }
    let tmp = tempfile::tempdir().unwrap();
    add_model(
        tmp.path(),
        "m",
        &format!("{ADD_SUB} instance_group [ {{ name: \"g\" kind: KIND_GPU gpus: [ 42 ] }} ]"),
        &["1"],
    );
    let e = Repository::load(tmp.path()).unwrap_err().to_string();
    let usable = match modelyard::gpu::probe() {
        Ok(info) => info.devices.len(),
        Err(_) => 0,
    };
    let want = if cfg!(feature = "cuda") {
        let ids: Vec<String> = (0..usable).map(|i| i.to_string()).collect();
        format!("instance group g of model m specifies invalid or unsupported gpu id 42. GPUs with at least the minimum required CUDA compute compatibility of 6.0 are: {}", ids.join(" "))
    } else {
        "instance group g of model m has kind KIND_GPU but server does not support GPUs".into()
    };
    assert!(e.contains(&want), "{e}\nwanted: {want}");
}

/// `parameters { key: "engine" }` picks tract's plan or the native engine; anything else is a
/// config error naming the model and the choices.
#[test]
fn an_unknown_engine_is_a_config_error() {
    let tmp = tempfile::tempdir().unwrap();
    add_model(
        tmp.path(),
        "m",
        &format!("{ADD_SUB} backend: \"onnxruntime\" parameters {{ key: \"engine\" value: {{ string_value: \"fast\" }} }}"),
        &["1"],
    );
    let e = Repository::load(tmp.path()).unwrap_err();
    assert!(
        e.to_string().contains(
            "model 'm': unknown engine 'fast' in parameters (expected 'tract' or 'native')"
        ),
        "{e}"
    );
}

/// `Repository::file_in`, which native models use to resolve a file name from their config:
/// names inside the folder resolve there (links in it followed, as Triton does), and a name
/// that is empty, absolute or climbs out with `..` is refused as a config error naming it.
#[test]
fn file_in_keeps_a_config_file_name_inside_its_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("1");
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::write(dir.join("sub/dict.txt"), "a\nb\n").unwrap();
    std::fs::write(tmp.path().join("outside.txt"), "secret").unwrap();
    for (file, resolved) in [
        ("dict.txt", dir.join("dict.txt")),
        ("sub/dict.txt", dir.join("sub/dict.txt")),
        ("./sub/dict.txt", dir.join("./sub/dict.txt")),
        ("sub/./dict.txt", dir.join("sub/./dict.txt")),
    ] {
        assert_eq!(Repository::file_in(&dir, file).unwrap(), resolved, "{file}");
    }
    let read = Repository::file_in(&dir, "sub/dict.txt").unwrap();
    assert_eq!(std::fs::read_to_string(read).unwrap(), "a\nb\n");
    for (file, why) in [
        ("../outside.txt", "escapes the model directory"),
        ("sub/../../outside.txt", "escapes the model directory"),
        ("sub/..", "escapes the model directory"),
        ("..", "escapes the model directory"),
        ("/etc/passwd", "is an absolute path"),
        ("", "is empty"),
    ] {
        let e = expect_error(
            Repository::file_in(&dir, file),
            modelyard::ErrorKind::InvalidConfig,
            &format!(
                "file '{file}' {why}: it must name a file inside '{}'",
                dir.display()
            ),
        );
        assert_eq!(e.model(), None, "{e}");
    }
    // A link the operator placed in the folder is followed, as Triton does.
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink(tmp.path().join("outside.txt"), dir.join("linked.txt")).unwrap();
        let linked = Repository::file_in(&dir, "linked.txt").unwrap();
        assert_eq!(std::fs::read_to_string(linked).unwrap(), "secret");
    }
}
