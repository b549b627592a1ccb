//! The dependency rule of `src/`, checked: every `crate::…` path a module writes names only
//! itself or a module of a lower layer. The layers, lowest first:
//!
//! 0. `error`, `util` (path confinement, wildcard dims, the LRU cache, output filtering)
//! 1. `config` (schema, text format, normalise, validate)
//! 2. `tensor` (its element type is the config schema's `DataType`)
//! 3. `execution` (tract's plans, the lowering, the CUDA device and its emulator)
//! 4. `backend` (onnx, identity, native)
//! 5. `model` (handle, input checks, scheduler, statistics, warmup, ensemble execution)
//! 6. `repository` (scan, lifecycle, control, ensemble resolution)
//! 7. `ocr`: only the crate's public API (root re-exports and public modules), so it could
//!    become its own crate
//! 7. `server` (feature `server`): likewise only the public API
//! 8. `lib.rs` (the public facade: re-exports and the `gpu` module)

use std::path::Path;

const LAYERS: &[(&str, u32)] = &[
    ("error", 0),
    ("util", 0),
    ("config", 1),
    ("tensor", 2),
    ("execution", 3),
    ("backend", 4),
    ("model", 5),
    ("repository", 6),
    ("ocr", 7),
    ("server", 7),
];

/// Public modules a user of the crate can name (besides the root re-exports).
const PUBLIC: &[&str] = &[
    "config",
    "model",
    "repository",
    "tensor",
    "gpu",
    "ocr",
    "half",
    "ndarray",
];

fn layer(module: &str) -> Option<u32> {
    LAYERS.iter().find(|(m, _)| *m == module).map(|(_, l)| *l)
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The code of a file without its comments (line comments and doc comments).
fn code(text: &str) -> String {
    text.lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every `crate::name` a text writes, with `crate::{a, b::c}` expanded to `a`, `b`.
fn crate_paths(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        let before = rest[..i].chars().last();
        rest = &rest[i + "crate::".len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$') {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let name: String = item
                    .trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    out.push(name);
                }
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            out.push(name);
        }
    }
    out
}

/// Which module each root re-export of `lib.rs` comes from (`pub use model::{Model, …}`).
fn root_reexports(lib: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let code = code(lib);
    for stmt in code.split(';') {
        let Some(i) = stmt.find("pub use ") else {
            continue;
        };
        let path = stmt[i + "pub use ".len()..].trim();
        let module: String = path
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        let items = match (path.find('{'), path.rfind("::")) {
            (Some(b), _) => path[b + 1..].trim_end_matches('}').to_string(),
            (None, Some(c)) => path[c + 2..].to_string(),
            _ => continue,
        };
        for item in items.split(',') {
            let item = item.trim();
            if !item.is_empty() {
                out.push((item.to_string(), module.clone()));
            }
        }
    }
    out
}

#[test]
fn every_module_names_only_lower_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let lib = std::fs::read_to_string(src.join("lib.rs")).unwrap();
    let reexports = root_reexports(&lib);
    assert!(
        reexports.iter().any(|(i, m)| i == "Model" && m == "model"),
        "the lib.rs re-exports were not read: {reexports:?}"
    );
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut violations = Vec::new();
    let mut checked = 0;
    for file in &files {
        let rel = file.strip_prefix(&src).unwrap();
        let top = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string();
        // `lib.rs` is the facade; `bin/` holds binaries, separate crates on the public API.
        if top == "lib" || top == "bin" {
            continue;
        }
        let Some(own) = layer(&top) else {
            violations.push(format!("{}: module '{top}' has no layer", rel.display()));
            continue;
        };
        let text = std::fs::read_to_string(file).unwrap();
        for name in crate_paths(&code(&text)) {
            checked += 1;
            // A root re-export counts as the module it comes from.
            let target = reexports
                .iter()
                .find(|(i, _)| *i == name)
                .map(|(_, m)| m.clone());
            let public_item = target.is_some();
            let target = target.unwrap_or_else(|| name.clone());
            if top == "ocr" || top == "server" {
                if !(public_item || target == top || PUBLIC.contains(&target.as_str())) {
                    violations.push(format!(
                        "{}: {top} uses the crate's private `crate::{name}` (only the public API)",
                        rel.display()
                    ));
                }
                continue;
            }
            if target == top {
                continue;
            }
            match layer(&target) {
                Some(l) if l < own => {}
                _ => violations.push(format!(
                    "{}: `{top}` (layer {own}) names `crate::{name}` ({target}, layer {})",
                    rel.display(),
                    layer(&target).map_or("none".into(), |l| l.to_string())
                )),
            }
        }
    }
    assert!(checked > 100, "only {checked} crate paths were read");
    assert!(violations.is_empty(), "{}", violations.join("\n"));
}

#[test]
fn the_path_reader_sees_grouped_and_nested_paths() {
    let paths = crate_paths(
        "use crate::{Error, model::Model};\nlet x = crate::util::wanted(a);\n// crate::backend\nfoo_crate::x",
    );
    let paths_of_code = crate_paths(&code(
        "use crate::{Error, model::Model};\nlet x = crate::util::wanted(a); // crate::backend",
    ));
    assert_eq!(paths_of_code, ["Error", "model", "util"]);
    assert!(paths.contains(&"backend".to_string()), "{paths:?}");
    assert!(!paths.contains(&"x".to_string()), "{paths:?}");
}
