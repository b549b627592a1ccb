//! A repository tree built from fuzz input (folders, files, symlinks, names from a vocabulary
//! that reaches the interesting paths, or raw) → load in every model-control mode, poll, index.
#![no_main]
use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use modelyard::{ModelControl, Repository};

const NAMES: &[&str] = &[
    "m", "e", "1", "2", "0", "003", "-1", "config.pbtxt", "model.onnx", "labels.txt", "warmup",
    "..", ".", "ü", "a b", "",
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
        Name::Known(i) => NAMES[*i as usize % NAMES.len()].to_string(),
        Name::Raw(s) => s.chars().filter(|c| *c != '/' && *c != '\0').take(40).collect(),
    }
}

fuzz_target!(|entries: Vec<Entry>| {
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
    for mode in [ModelControl::None, ModelControl::Explicit, ModelControl::Poll] {
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
                for n in NAMES {
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
});
