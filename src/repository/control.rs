//! Model control (spec section (g)): which models load at start, explicit load and unload,
//! and polling the repository for added, removed and changed models.
//!
//! Loads, unloads and polls run one at a time (a second one waits for the first). The slow
//! part, loading versions, runs without blocking requests: the new versions are built beside
//! the serving ones and swapped in when they are all ready, so a reload has no downtime; a
//! reload that fails leaves the serving versions in place and records why. A version taken
//! out of service stays alive while a caller holds it (requests in flight or queued finish),
//! and is UNLOADING in the index until the last one lets go.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::lifecycle::{self, ModelEntry};
use super::{scan, Repository};
use crate::backend::LoadOptions;
use crate::error::{Error, ErrorKind, Result};
use crate::model::Model;

/// How models are loaded and changed after start (Triton's `--model-control-mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ModelControl {
    /// Load every model at start; later changes on disk are ignored, and
    /// [`Repository::load_model`] / [`Repository::unload_model`] are refused.
    #[default]
    None,
    /// Load only the [`startup_models`](super::RepositoryBuilder::startup_models); then
    /// [`Repository::load_model`] and [`Repository::unload_model`] decide.
    Explicit,
    /// Load every model at start; [`Repository::poll`] (or the background interval) picks up
    /// added, removed and changed models and versions.
    Poll,
}

/// The models loaded at start.
pub(super) fn startup(
    root: &Path,
    mode: ModelControl,
    startup_models: &[String],
    auto_complete: bool,
    opts: &LoadOptions,
) -> Result<BTreeMap<String, ModelEntry>> {
    if mode != ModelControl::Explicit {
        return lifecycle::load_all(root, auto_complete, opts);
    }
    if startup_models.iter().any(|m| m == "*") {
        if startup_models.len() > 1 {
            return Err(Error::invalid_config(
                "Wildcard model name '*' must be the ONLY startup model if specified at all.",
            ));
        }
        return lifecycle::load_all(root, auto_complete, opts);
    }
    let mut models: BTreeMap<String, ModelEntry> = scan::model_dirs(root)?
        .into_iter()
        .map(|(name, _)| (name, ModelEntry::not_loaded()))
        .collect();
    for name in startup_models {
        if !models.contains_key(name) {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!("failed to load '{name}', failed to poll from model repository"),
            )
            .with_model(name.clone()));
        }
        for m in with_dependencies(root, name, auto_complete, &models) {
            let entry = lifecycle::poll_model(&m, &root.join(&m), auto_complete, opts);
            models.insert(m, entry);
        }
    }
    lifecycle::resolve_ensembles(&mut models, opts.max_request_bytes);
    Ok(models)
}

/// `name` and, for an ensemble, the composing models (transitively) that are not loaded yet,
/// dependencies first.
fn with_dependencies(
    root: &Path,
    name: &str,
    auto_complete: bool,
    models: &BTreeMap<String, ModelEntry>,
) -> Vec<String> {
    let mut order = Vec::new();
    let mut seen = BTreeSet::new();
    fn visit(
        root: &Path,
        name: &str,
        auto_complete: bool,
        models: &BTreeMap<String, ModelEntry>,
        seen: &mut BTreeSet<String>,
        order: &mut Vec<String>,
    ) {
        if !seen.insert(name.to_string()) {
            return;
        }
        for dep in lifecycle::ensemble_deps(name, &root.join(name), auto_complete) {
            let loaded = models.get(&dep).is_some_and(ModelEntry::is_live);
            if !loaded && scan::is_model_name(&dep) && root.join(&dep).is_dir() {
                visit(root, &dep, auto_complete, models, seen, order);
            }
        }
        order.push(name.to_string());
    }
    visit(root, name, auto_complete, models, &mut seen, &mut order);
    order
}

/// A fingerprint of every model folder that has an entry.
pub(super) fn fingerprints(
    root: &Path,
    models: &BTreeMap<String, ModelEntry>,
) -> BTreeMap<String, u64> {
    models
        .iter()
        .filter(|(_, e)| !e.is_not_loaded())
        .map(|(name, _)| (name.clone(), fingerprint(&root.join(name))))
        .collect()
}

/// Names, sizes and modification times of everything under `dir`, and the content of its
/// `config.pbtxt`: it changes when a config, a version folder or a model file changes.
/// Bounded: symlinks inside are hashed by their target and not followed, depth ≤ 8, at most
/// 10,000 entries, at most 64 KiB read (fuzz/repository_tree found a model folder linked to
/// `/`: the walk read `/proc` files that claim size 0 and are endless, or block).
fn fingerprint(dir: &Path) -> u64 {
    use std::io::Read;
    const SMALL: u64 = 64 * 1024;
    fn walk(
        dir: &Path,
        depth: usize,
        budget: &mut usize,
        h: &mut std::collections::hash_map::DefaultHasher,
    ) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        let mut entries: Vec<_> = rd.filter_map(|e| e.ok()).take(*budget).collect();
        *budget = budget.saturating_sub(entries.len());
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let Ok(meta) = e.path().symlink_metadata() else {
                continue;
            };
            e.file_name().hash(h);
            meta.len().hash(h);
            meta.modified().ok().hash(h);
            if meta.file_type().is_symlink() {
                std::fs::read_link(e.path()).ok().hash(h);
            } else if depth == 0
                && e.file_name() == "config.pbtxt"
                && meta.is_file()
                && (1..=SMALL).contains(&meta.len())
            {
                // The config by content too: a rewrite within the clock resolution of the file
                // system is still seen. No other file is read: in a folder linked to `/proc`
                // a read can block forever (`/proc/kmsg`).
                let mut content = Vec::new();
                if let Ok(f) = std::fs::File::open(e.path()) {
                    let _ = f.take(SMALL).read_to_end(&mut content);
                }
                content.hash(h);
            } else if meta.is_dir() && depth < 8 && *budget > 0 {
                walk(&e.path(), depth + 1, budget, h);
            }
        }
    }
    let mut h = std::collections::hash_map::DefaultHasher::new();
    // A model folder that is itself a symlink: its target counts too.
    std::fs::read_link(dir).ok().hash(&mut h);
    walk(dir, 0, &mut 10_000, &mut h);
    h.finish()
}

/// Starts the background poller of a POLL-mode repository.
pub(super) fn spawn_poller(repo: &Repository, every: Duration) -> Result<()> {
    let weak = Arc::downgrade(&repo.inner);
    std::thread::Builder::new()
        .name("modelyard-poll".into())
        .spawn(move || loop {
            std::thread::sleep(every);
            let Some(inner) = weak.upgrade() else {
                return;
            };
            if let Err(e) = (Repository { inner }).poll() {
                tracing::error!("repository poll failed: {e}");
            }
        })
        .map(|_| ())
        .map_err(|e| Error::io(&repo.inner.root, "cannot start the poll thread for", e))
}

impl Repository {
    /// The model-control mode.
    pub fn model_control(&self) -> ModelControl {
        self.inner.control
    }

    /// Loads (or reloads) model `name` and, for an ensemble, the composing models it needs
    /// that are not loaded ([`ModelControl::Explicit`] only). A model whose folder did not
    /// change since it was loaded is left as it is. On failure the versions that were serving
    /// keep serving, and the error says which version failed and why (Triton's "load failed
    /// for model 'm': version v is at UNAVAILABLE state: ...").
    pub fn load_model(&self, name: &str) -> Result<()> {
        self.require_explicit()?;
        let inner = &self.inner;
        if !scan::is_model_name(name) || !inner.root.join(name).is_dir() {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!("failed to load '{name}', failed to poll from model repository"),
            )
            .with_model(name));
        }
        let mut prints = inner.fingerprints.lock();
        let order = with_dependencies(&inner.root, name, inner.auto_complete, &inner.models.read());
        let mut result = Ok(());
        for m in order {
            let print = fingerprint(&inner.root.join(&m));
            let live = inner.models.read().get(&m).is_some_and(ModelEntry::is_live);
            if live && prints.get(&m) == Some(&print) {
                continue;
            }
            prints.insert(m.clone(), print);
            if let Err(e) = self.reload(&m) {
                if m == name || result.is_ok() {
                    result = Err(e);
                }
            }
        }
        self.resolve();
        if result.is_ok() {
            result = self.check_loaded(name);
        }
        result
    }

    /// Unloads every version of `name` ([`ModelControl::Explicit`] only). Requests already
    /// running or queued on them finish; new requests get "has no available versions".
    /// Ensembles that use the model become UNAVAILABLE. Unloading an unknown model succeeds.
    pub fn unload_model(&self, name: &str) -> Result<()> {
        self.require_explicit()?;
        let mut prints = self.inner.fingerprints.lock();
        prints.remove(name);
        let old = {
            let mut models = self.inner.models.write();
            let Some(old) = models.remove(name) else {
                return Ok(());
            };
            models.insert(
                name.to_string(),
                ModelEntry::unloaded(old.versions().keys().copied()),
            );
            old
        };
        self.retire(old.ready().cloned());
        tracing::info!("successfully unloaded '{name}'");
        self.resolve();
        Ok(())
    }

    /// Re-scans the repository ([`ModelControl::Poll`] only): model folders that appeared are
    /// loaded, folders that disappeared are unloaded, and folders whose files changed (config,
    /// version folders, model files, by name, size and modification time) are reloaded. A
    /// reload that fails (a half-written version folder, a broken config) leaves the serving
    /// versions in place; it is tried again once the folder changes again.
    pub fn poll(&self) -> Result<()> {
        if self.inner.control != ModelControl::Poll {
            return Err(Error::new(
                ErrorKind::Unsupported,
                "poll is only allowed in POLL model control mode",
            ));
        }
        let inner = &self.inner;
        let mut prints = inner.fingerprints.lock();
        let on_disk: BTreeMap<String, std::path::PathBuf> =
            scan::model_dirs(&inner.root)?.into_iter().collect();
        let gone: Vec<String> = inner
            .models
            .read()
            .keys()
            .filter(|n| !on_disk.contains_key(*n))
            .cloned()
            .collect();
        for name in gone {
            prints.remove(&name);
            let old = inner.models.write().remove(&name);
            if let Some(old) = old {
                self.retire(old.ready().cloned());
                tracing::info!("successfully unloaded '{name}'");
            }
        }
        for (name, dir) in &on_disk {
            let print = fingerprint(dir);
            if prints.get(name) == Some(&print) {
                continue;
            }
            prints.insert(name.clone(), print);
            // A failure is recorded in the index; the poll goes on with the other models.
            let _ = self.reload(name);
        }
        self.resolve();
        Ok(())
    }

    fn require_explicit(&self) -> Result<()> {
        if self.inner.control == ModelControl::Explicit {
            Ok(())
        } else {
            Err(Error::new(
                ErrorKind::Unavailable,
                "explicit model load / unload is not allowed if polling is enabled",
            ))
        }
    }

    /// Loads `name` beside its serving versions and swaps it in; on failure keeps them.
    fn reload(&self, name: &str) -> Result<()> {
        let inner = &self.inner;
        let dir = inner.root.join(name);
        if let Some(e) = inner.models.write().get_mut(name) {
            e.loading = e.versions().keys().copied().collect();
        }
        let new = lifecycle::poll_model(name, &dir, inner.auto_complete, &inner.opts);
        let failure = load_failure(name, &new);
        let mut models = inner.models.write();
        match (models.remove(name), failure) {
            (Some(mut old), Some(e)) if old.ready().next().is_some() => {
                // Keep serving what was serving; say why the reload failed.
                old.loading.clear();
                old.reload_failed(
                    e.clone()
                        .context("reload failed, previous versions keep serving: "),
                );
                models.insert(name.to_string(), old);
                Err(e)
            }
            (old, failure) => {
                models.insert(name.to_string(), new);
                drop(models);
                // Every version that served before is replaced by a newly loaded one.
                let retired: Vec<Model> = old
                    .map(|o| o.ready().cloned().collect())
                    .unwrap_or_default();
                let count = retired.len();
                self.retire(retired);
                match failure {
                    Some(e) => Err(e),
                    None => {
                        tracing::info!("successfully loaded '{name}' ({count} versions retired)");
                        Ok(())
                    }
                }
            }
        }
    }

    fn retire(&self, models: impl IntoIterator<Item = Model>) {
        let mut retiring = self.inner.retiring.lock();
        retiring.extend(models);
        super::release_retired(&mut retiring);
    }

    /// Resolves every ensemble again against the composing models now loaded.
    fn resolve(&self) {
        let mut models = self.inner.models.write();
        let before: Vec<Model> = models
            .values()
            .filter(|e| e.ensemble.is_some())
            .flat_map(|e| e.ready().cloned().collect::<Vec<_>>())
            .collect();
        lifecycle::resolve_ensembles(&mut models, self.inner.opts.max_request_bytes);
        let after: Vec<Model> = models
            .values()
            .flat_map(|e| e.ready().cloned().collect::<Vec<_>>())
            .collect();
        drop(models);
        // Ensembles whose config and composing versions did not change were kept.
        self.retire(
            before
                .into_iter()
                .filter(|m| !after.iter().any(|a| a.same_as(m))),
        );
    }

    fn check_loaded(&self, name: &str) -> Result<()> {
        let models = self.inner.models.read();
        match models.get(name) {
            Some(e) => load_failure(name, e).map_or(Ok(()), Err),
            None => Ok(()),
        }
    }
}

/// Triton's error for a load that left a version (or the model) unavailable.
fn load_failure(name: &str, entry: &ModelEntry) -> Option<Error> {
    // The kind of the first failure survives (an invalid config stays `InvalidConfig`).
    if let Some(e) = entry.error() {
        return Some(
            Error::new(e.kind(), format!("load failed for model '{name}': {e};\n"))
                .with_model(name),
        );
    }
    entry
        .versions()
        .iter()
        .find(|(_, v)| v.model.is_none())
        .map(|(v, ve)| {
            Error::new(
                ve.error
                    .as_ref()
                    .map_or(ErrorKind::Unavailable, Error::kind),
                format!(
                    "load failed for model '{name}': version {v} is at UNAVAILABLE state: {};\n",
                    ve.reason
                ),
            )
            .with_model(name)
            .with_version(*v)
        })
}
