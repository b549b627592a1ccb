//! The fuzz targets' bodies, one function per target taking the raw fuzz input. The targets
//! in `fuzz_targets/` call them, and `tests/hostile.rs` replays every file of
//! `fuzz/regressions/<target>/` through the same function, so a regression is replayed exactly
//! as the fuzzer ran it (structured inputs are decoded with `arbitrary`, as libFuzzer's
//! `fuzz_target!` decodes them).
#![allow(dead_code)]

use std::sync::OnceLock;

use arbitrary::{Arbitrary, Unstructured};
use modelyard::config::{self, DataType};
use modelyard::{ModelControl, Repository, Tensor};

/// The target names, as the folders under `fuzz/regressions/` are named.
pub const TARGETS: &[&str] = &[
    "config_text",
    "onnx_load",
    "repository_tree",
    "infer_inputs",
];

/// Runs `data` through the target `name`; false for a name that is not a target.
pub fn run(name: &str, data: &[u8]) -> bool {
    match name {
        "config_text" => config_text(data),
        "onnx_load" => onnx_load(data),
        "repository_tree" => repository_tree(data),
        "infer_inputs" => infer_inputs(data),
        _ => return false,
    }
    true
}

// ---- config_text: config.pbtxt text -> parse, normalise, validate, print back.

pub fn config_text(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(mut c) = config::ModelConfig::from_pbtxt(&text) {
        config::normalize(&mut c);
        let _ = config::validate_model_config(&c);
        let _ = config::validate_io_config(&c);
        config::normalize_instance_groups(&mut c, 0);
        let _ = config::validate_instance_groups(&c, false, 0);
        let printed = c.to_pbtxt();
        // What we print, we must read back.
        assert!(
            config::ModelConfig::from_pbtxt(&printed).is_ok(),
            "{printed}"
        );
    }
}

// ---- onnx_load: arbitrary bytes as `model.onnx` -> auto-complete and load; if it loads, one
// request of zeros shaped by its completed config.

pub fn onnx_load(data: &[u8]) {
    let root = std::env::temp_dir().join(format!("modelyard-fuzz-onnx-{}", std::process::id()));
    let dir = root.join("m/1");
    let _ = std::fs::create_dir_all(&dir);
    if std::fs::write(dir.join("model.onnx"), data).is_err() {
        return;
    }
    let Ok(repo) = Repository::builder(&root)
        .exit_on_error(false)
        .max_model_bytes(64 << 20)
        .load()
    else {
        return;
    };
    let Ok(model) = repo.model("m") else {
        return;
    };
    let _ = model.infer(zeros_for(model.config(), 64));
}

/// One request of zeros shaped by a completed config: a batch of 1, variable dims as 1, each
/// dim at most `max_dim` (the fuzzer keeps requests small; a replay uses the config's dims).
pub fn zeros_for(config: &config::ModelConfig, max_dim: i64) -> Vec<(String, Tensor)> {
    config
        .input
        .iter()
        .filter_map(|i| {
            let mut shape: Vec<usize> = Vec::new();
            if config.max_batch_size > 0 {
                shape.push(1);
            }
            shape.extend(i.dims.iter().map(|&d| d.clamp(1, max_dim) as usize));
            Tensor::zeros(i.data_type(), &shape)
                .ok()
                .map(|t| (i.name.clone(), t))
        })
        .collect()
}

// ---- repository_tree: a repository tree built from fuzz input (folders, files, symlinks,
// names from a vocabulary that reaches the interesting paths, or raw) -> load in every
// model-control mode, poll, index.

const TREE_NAMES: &[&str] = &[
    "m",
    "e",
    "1",
    "2",
    "0",
    "003",
    "-1",
    "config.pbtxt",
    "model.onnx",
    "labels.txt",
    "warmup",
    "..",
    ".",
    "ü",
    "a b",
    "",
];
const ADD_SUB_ONNX: &[u8] = include_bytes!("../../fixtures/generated/add_sub_fp32_batch.onnx");
const CONFIGS: &[&str] = &[
    "max_batch_size: 8\ninput [ { name: \"INPUT0\" data_type: TYPE_FP32 dims: [ 16 ] }, { name: \"INPUT1\" data_type: TYPE_FP32 dims: [ 16 ] } ]\noutput [ { name: \"OUTPUT0\" data_type: TYPE_FP32 dims: [ 16 ] label_filename: \"labels.txt\" } ]",
    "platform: \"ensemble\" max_batch_size: 8 input [ { name: \"A\" data_type: TYPE_FP32 dims: [ 16 ] } ] output [ { name: \"B\" data_type: TYPE_FP32 dims: [ 16 ] } ] ensemble_scheduling { step [ { model_name: \"m\" model_version: -1 input_map { key: \"INPUT0\" value: \"A\" } input_map { key: \"INPUT1\" value: \"A\" } output_map { key: \"OUTPUT0\" value: \"B\" } } ] }",
    "default_model_filename: \"../../m/1/model.onnx\"",
    "output [ { name: \"OUTPUT0\" label_filename: \"/etc/passwd\" } ]",
];

#[derive(Arbitrary, Debug)]
enum Name {
    Known(u8),
    Raw(String),
}

#[derive(Arbitrary, Debug)]
enum Content {
    AddSub,
    Config(u8),
    Bytes(Vec<u8>),
    Symlink(Vec<Name>),
    Dir,
}

#[derive(Arbitrary, Debug)]
struct Entry {
    path: Vec<Name>,
    content: Content,
}

fn name(n: &Name) -> String {
    match n {
        Name::Known(i) => TREE_NAMES[*i as usize % TREE_NAMES.len()].to_string(),
        Name::Raw(s) => s
            .chars()
            .filter(|c| *c != '/' && *c != '\0')
            .take(40)
            .collect(),
    }
}

pub fn repository_tree(data: &[u8]) {
    let Ok(entries) = Vec::<Entry>::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    let root = std::env::temp_dir().join(format!("modelyard-fuzz-tree-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let _ = std::fs::create_dir_all(&root);
    for e in entries.iter().take(24) {
        let parts: Vec<String> = e.path.iter().take(4).map(name).collect();
        // Built inside `root` only: `..` in the path is kept for the engine to see, but files
        // are only written where the joined path stays under `root`.
        let path = parts.iter().fold(root.clone(), |p, c| p.join(c));
        if !path.starts_with(&root) || parts.iter().any(|p| p == ".." || p.is_empty()) {
            continue;
        }
        if let Some(parent) = path.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        let _ = match &e.content {
            Content::AddSub => std::fs::write(&path, ADD_SUB_ONNX),
            Content::Config(i) => std::fs::write(&path, CONFIGS[*i as usize % CONFIGS.len()]),
            Content::Bytes(b) => std::fs::write(&path, b),
            Content::Dir => std::fs::create_dir_all(&path),
            Content::Symlink(target) => {
                let t: Vec<String> = target.iter().take(4).map(name).collect();
                std::os::unix::fs::symlink(t.join("/"), &path)
            }
        };
    }
    for mode in [
        ModelControl::None,
        ModelControl::Explicit,
        ModelControl::Poll,
    ] {
        let Ok(repo) = Repository::builder(&root)
            .exit_on_error(false)
            .model_control(mode)
            .startup_models(["*"])
            .max_model_bytes(16 << 20)
            .load()
        else {
            continue;
        };
        let _ = repo.index();
        for m in repo.ready_models() {
            let _ = repo.model(&m).map(|m| m.statistics());
        }
        match mode {
            ModelControl::Explicit => {
                for n in TREE_NAMES {
                    let _ = repo.load_model(n);
                    let _ = repo.unload_model(n);
                }
            }
            ModelControl::Poll => {
                let _ = repo.poll();
            }
            _ => {}
        }
        let _ = repo.index();
    }
}

// ---- infer_inputs: request inputs (names, types, shapes, byte sizes, BYTES contents) ->
// `infer` on a fixture add/sub model (FP32, batching) and an identity model (BYTES, variable
// dims).

const INFER_NAMES: &[&str] = &["INPUT0", "INPUT1", "IN", "OUTPUT0", "", "ü"];

#[derive(Arbitrary, Debug)]
struct Input {
    name: u8,
    data_type: u8,
    shape: Vec<u16>,
    bytes: Vec<u8>,
    strings: Vec<Vec<u8>>,
}

#[derive(Arbitrary, Debug)]
struct InferRequest {
    model: bool,
    inputs: Vec<Input>,
    outputs: Option<Vec<u8>>,
}

fn infer_repo() -> &'static Repository {
    static REPO: OnceLock<Repository> = OnceLock::new();
    REPO.get_or_init(|| {
        let root = std::env::temp_dir().join(format!("modelyard-fuzz-infer-{}", std::process::id()));
        let add = root.join("add_sub/1");
        std::fs::create_dir_all(&add).unwrap();
        std::fs::write(
            add.join("model.onnx"),
            include_bytes!("../../fixtures/generated/add_sub_fp32_batch.onnx"),
        )
        .unwrap();
        std::fs::write(root.join("add_sub/config.pbtxt"), "max_batch_size: 8\ndynamic_batching { }").unwrap();
        std::fs::create_dir_all(root.join("id/1")).unwrap();
        std::fs::write(
            root.join("id/config.pbtxt"),
            r#"backend: "identity" max_batch_size: 0 input [ { name: "IN" data_type: TYPE_STRING dims: [ -1, -1 ] } ] output [ { name: "OUT" data_type: TYPE_STRING dims: [ -1, -1 ] } ]"#,
        )
        .unwrap();
        Repository::builder(&root).max_request_bytes(1 << 20).load().unwrap()
    })
}

pub fn infer_inputs(data: &[u8]) {
    let Ok(req) = InferRequest::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    let model = infer_repo()
        .model(if req.model { "add_sub" } else { "id" })
        .unwrap();
    let mut inputs = Vec::new();
    for i in req.inputs.iter().take(4) {
        let dt = DataType::try_from(i32::from(i.data_type % 16)).unwrap_or(DataType::TypeInvalid);
        let shape: Vec<usize> = i
            .shape
            .iter()
            .take(5)
            .map(|&d| usize::from(d % 64))
            .collect();
        let tensor = if dt == DataType::TypeString {
            Tensor::from_bytes(&shape, i.strings.iter())
        } else {
            Tensor::from_le_bytes(dt, &shape, &i.bytes)
        };
        if let Ok(t) = tensor {
            inputs.push((
                INFER_NAMES[i.name as usize % INFER_NAMES.len()].to_string(),
                t,
            ));
        }
    }
    let result = match &req.outputs {
        Some(o) => {
            let names: Vec<&str> = o
                .iter()
                .take(3)
                .map(|&n| INFER_NAMES[n as usize % INFER_NAMES.len()])
                .collect();
            model.infer_outputs(inputs, &names)
        }
        None => model.infer(inputs),
    };
    if let Ok(out) = result {
        for (_, t) in out.iter() {
            let _ = t.byte_size();
        }
    }
}
