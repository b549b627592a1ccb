//! Repository layout rules (spec section (b)): which folders are models and versions, and the
//! backend fields Triton fills from the files it finds.

use std::path::{Path, PathBuf};

use crate::config::ModelConfig;
use crate::error::{Error, Result};

/// The folders directly in `dir` (links to folders included), by file name.
fn subdirs(dir: &Path, what: &str) -> Result<Vec<(std::ffi::OsString, PathBuf)>> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, what, e))?;
    Ok(entries
        .flatten()
        .map(|e| (e.file_name(), e.path()))
        .filter(|(_, p)| p.is_dir())
        .collect())
}

/// Model folders of a repository, sorted by name. Files at the top level are ignored; hidden
/// folders are models too, as in Triton.
pub(crate) fn model_dirs(root: &Path) -> Result<Vec<(String, PathBuf)>> {
    let meta = std::fs::metadata(root)
        .map_err(|e| Error::io(root, "failed to open model repository", e))?;
    if !meta.is_dir() {
        return Err(Error::new(
            crate::ErrorKind::Io,
            format!(
                "model repository path '{}' is not a directory",
                root.display()
            ),
        ));
    }
    let mut out = Vec::new();
    for (file_name, path) in subdirs(root, "failed to read model repository")? {
        match file_name.into_string() {
            Ok(name) => out.push((name, path)),
            Err(name) => {
                tracing::warn!("ignoring model directory {name:?}: its name is not valid UTF-8")
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Version folders of a model: plain non-negative integers without leading zeros. Other names
/// are skipped with a warning (`warmup`, `initial_state` and `configs` silently).
pub(crate) fn version_dirs(model_dir: &Path) -> Result<Vec<(i64, PathBuf)>> {
    let mut out = Vec::new();
    for (file_name, path) in subdirs(model_dir, "failed to read model directory")? {
        let name = file_name.to_string_lossy().into_owned();
        if matches!(name.as_str(), "warmup" | "initial_state" | "configs") {
            continue;
        }
        if name.len() > 1 && name.starts_with('0') {
            tracing::warn!("ignore version directory '{name}' which contains leading zeros in its directory name");
            continue;
        }
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_digit()) {
            tracing::warn!(
                "ignore version directory '{name}' which fails to convert to integral number"
            );
            continue;
        }
        match name.parse::<i64>() {
            Ok(v) => out.push((v, path)),
            Err(_) => tracing::warn!(
                "ignore version directory '{name}' which fails to convert to integral number"
            ),
        }
    }
    out.sort();
    Ok(out)
}

/// Backends Triton recognises from the platform or the model file name, in Triton's order:
/// (backend, platforms, file name, platform to fill in).
const KNOWN: &[(&str, &[&str], &str, Option<&str>)] = &[
    (
        "tensorflow",
        &["tensorflow_savedmodel"],
        "model.savedmodel",
        Some("tensorflow_savedmodel"),
    ),
    (
        "tensorflow",
        &["tensorflow_graphdef"],
        "model.graphdef",
        Some("tensorflow_graphdef"),
    ),
    (
        "tensorrt",
        &["tensorrt_plan"],
        "model.plan",
        Some("tensorrt_plan"),
    ),
    (
        "onnxruntime",
        &["onnxruntime_onnx"],
        "model.onnx",
        Some("onnxruntime_onnx"),
    ),
    ("openvino", &[], "model.xml", None),
    (
        "pytorch",
        &["pytorch_libtorch", "libtorch"],
        "model.pt",
        Some("pytorch_libtorch"),
    ),
    ("pytorch", &["torch_aoti"], "model.pt2", Some("torch_aoti")),
    ("python", &[], "model.py", None),
];

/// Triton's `AutoCompleteBackendFields` (runs even with auto-complete disabled): the name from
/// the folder, then backend, platform and default file name from what the first sub-folder of
/// the model holds.
pub(crate) fn autofill_backend_fields(
    config: &mut ModelConfig,
    dir_name: &str,
    model_dir: &Path,
) -> Result<()> {
    if config.name.is_empty() {
        config.name = dir_name.to_string();
    }
    if config.is_ensemble() {
        return Ok(());
    }
    // Triton sniffs the lexicographically first sub-folder, whatever its name.
    let first_sub = std::fs::read_dir(model_dir).ok().and_then(|rd| {
        let mut dirs: Vec<PathBuf> = rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_dir())
            .collect();
        dirs.sort();
        dirs.into_iter().next()
    });
    let has_file = |file: &str| first_sub.as_ref().is_some_and(|d| d.join(file).exists());
    for &(backend, platforms, file, default_platform) in KNOWN {
        if config.backend.is_empty()
            && (platforms.contains(&config.platform.as_str())
                || config.default_model_filename == file
                || (config.platform.is_empty()
                    && config.default_model_filename.is_empty()
                    && has_file(file)))
        {
            config.backend = backend.to_string();
        }
        if config.backend == backend
            && (config.platform.is_empty()
                || platforms.is_empty()
                || platforms.contains(&config.platform.as_str()))
        {
            if config.platform.is_empty() {
                if let Some(p) = default_platform {
                    config.platform = p.to_string();
                }
            }
            if config.default_model_filename.is_empty() {
                config.default_model_filename = file.to_string();
            }
        }
    }
    if config.backend.is_empty()
        && config.platform.is_empty()
        && config.default_model_filename.is_empty()
    {
        match config.name.split_once('.') {
            Some((_, backend)) if !backend.is_empty() => {
                config.backend = backend.to_string();
                config.default_model_filename = format!("model.{backend}");
            }
            _ => {
                return Err(Error::invalid_config(format!(
                    "Invalid model name: Could not determine backend for model '{}' with no backend in model configuration. Expected model name of the form 'model.<backend_name>'.",
                    config.name
                )))
            }
        }
    }
    if config.backend == "onnxruntime" && config.platform.is_empty() {
        config.platform = "onnxruntime_onnx".into();
    }
    Ok(())
}

/// Whether `name` can only be a folder directly inside the repository (no separator, not
/// `.` or `..`, not empty): model names from callers never reach outside it.
pub(crate) fn is_model_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains(['/', '\\', '\0'])
        && std::path::Path::new(name).components().count() == 1
}
