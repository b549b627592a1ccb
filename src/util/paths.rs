//! The one confinement rule for file names a config supplies (model, label, warmup and data
//! files, per-compute-capability model names, backend runtimes).

use std::path::{Component, Path, PathBuf};

/// Checks that a relative file name from a config stays inside its folder: no absolute path,
/// no `..`, no root or prefix component. Returns why not.
pub(crate) fn check_relative(file: &str) -> std::result::Result<(), &'static str> {
    let p = Path::new(file);
    if file.is_empty() {
        return Err("is empty");
    }
    for c in p.components() {
        match c {
            Component::Normal(_) | Component::CurDir => {}
            Component::ParentDir => return Err("escapes the model directory"),
            Component::RootDir | Component::Prefix(_) => return Err("is an absolute path"),
        }
    }
    Ok(())
}

/// `file` checked by [`check_relative`], then joined to `dir`. Symbolic links are followed,
/// as Triton follows them: a link in the repository was placed there by its operator (model
/// caches lay files out that way), a name in a config is what could be hostile.
pub(crate) fn confined(dir: &Path, file: &str) -> std::result::Result<PathBuf, &'static str> {
    check_relative(file)?;
    Ok(dir.join(file))
}
