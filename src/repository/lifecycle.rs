//! Loading: poll each model folder, load the versions its policy selects, then resolve
//! ensembles against their composing models (spec sections (b), (c) pipeline order, (g)).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use super::ensemble;
use super::scan;
use crate::backend::{self, LoadOptions};
use crate::config::{
    self, model_version_policy::PolicyChoice, ModelConfig, ModelTransactionPolicy,
};
use crate::error::{Error, ErrorKind, Result};
use crate::model::{Model, ModelState};

/// A version of a model: loaded (`model` is Some) or not, with the reason (and, for a failed
/// load, its error, whose kind survives).
#[derive(Clone)]
pub(crate) struct VersionEntry {
    pub state: ModelState,
    pub reason: String,
    pub model: Option<Model>,
    pub error: Option<Error>,
}

/// Where a model folder stands.
pub(crate) enum Status {
    /// Known but never loaded (explicit model control): UNKNOWN in the index.
    NotLoaded,
    /// The config could not be read, or is invalid.
    Invalid(Error),
    /// An ensemble polled and not resolved against its composing models yet.
    Unresolved,
    /// Failed before any version loaded (version selection, ensemble dependencies).
    Failed(Error),
    /// The selected versions, each loaded or not. `reload_error`: a later reload failed and
    /// these versions keep serving.
    Loaded {
        versions: BTreeMap<i64, VersionEntry>,
        reload_error: Option<Error>,
    },
}

/// A model folder after loading.
pub(crate) struct ModelEntry {
    pub status: Status,
    /// An ensemble's polled config: ensembles are resolved again whenever a model changes.
    pub ensemble: Option<(ModelConfig, PathBuf)>,
    /// Versions being loaded right now (LOADING in the index).
    pub loading: BTreeSet<i64>,
}

static NO_VERSIONS: BTreeMap<i64, VersionEntry> = BTreeMap::new();

impl ModelEntry {
    fn new(status: Status) -> ModelEntry {
        ModelEntry {
            status,
            ensemble: None,
            loading: BTreeSet::new(),
        }
    }

    /// A model that failed before any version loaded.
    pub(crate) fn failed(error: Error) -> ModelEntry {
        ModelEntry::new(Status::Failed(error))
    }

    /// Versions selected and loaded (or not).
    pub(crate) fn loaded(versions: BTreeMap<i64, VersionEntry>) -> ModelEntry {
        ModelEntry::new(Status::Loaded {
            versions,
            reload_error: None,
        })
    }

    /// A model folder that is known but not loaded.
    pub(crate) fn not_loaded() -> ModelEntry {
        ModelEntry::new(Status::NotLoaded)
    }

    /// The entry of a model that was unloaded (its versions UNAVAILABLE, reason "unloaded").
    pub(crate) fn unloaded(versions: impl IntoIterator<Item = i64>) -> ModelEntry {
        ModelEntry::loaded(
            versions
                .into_iter()
                .map(|v| {
                    let entry = VersionEntry {
                        state: ModelState::Unavailable,
                        reason: "unloaded".into(),
                        model: None,
                        error: None,
                    };
                    (v, entry)
                })
                .collect(),
        )
    }

    pub(crate) fn is_not_loaded(&self) -> bool {
        matches!(self.status, Status::NotLoaded)
    }

    /// Why the model (not one version) is not what its folder asks for.
    pub(crate) fn error(&self) -> Option<&Error> {
        match &self.status {
            Status::Invalid(e) | Status::Failed(e) => Some(e),
            Status::Loaded { reload_error, .. } => reload_error.as_ref(),
            Status::NotLoaded | Status::Unresolved => None,
        }
    }

    /// The selected versions (none unless loaded).
    pub(crate) fn versions(&self) -> &BTreeMap<i64, VersionEntry> {
        match &self.status {
            Status::Loaded { versions, .. } => versions,
            _ => &NO_VERSIONS,
        }
    }

    /// Keeps the serving versions and records why a reload failed.
    pub(crate) fn reload_failed(&mut self, error: Error) {
        if let Status::Loaded { reload_error, .. } = &mut self.status {
            *reload_error = Some(error);
        }
    }

    pub(crate) fn failures(&self, name: &str) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(e) = self.error() {
            out.push(format!("'{name}': {e}"));
        }
        for (v, ve) in self.versions() {
            if ve.model.is_none() {
                out.push(format!("'{name}' version {v}: {}", ve.reason));
            }
        }
        out
    }

    /// The READY versions.
    pub(crate) fn ready(&self) -> impl Iterator<Item = &Model> {
        self.versions().values().filter_map(|v| v.model.as_ref())
    }

    /// Whether anything serves or will serve (a READY version, or an ensemble to resolve).
    pub(crate) fn is_live(&self) -> bool {
        self.ensemble.is_some() || self.ready().next().is_some()
    }
}

/// Reads, completes the backend fields of, normalises and validates one model's config.
fn poll(name: &str, dir: &Path, auto_complete: bool) -> Result<ModelConfig> {
    let path = dir.join("config.pbtxt");
    let mut config = if path.exists() || !auto_complete {
        ModelConfig::from_pbtxt_file(&path)?
    } else {
        ModelConfig::default()
    };
    scan::autofill_backend_fields(&mut config, name, dir)?;
    config::normalize(&mut config);
    config::validate_model_config(&config)?;
    if !auto_complete {
        config::validate_io_config(&config)?;
    }
    if config.name != name {
        return Err(Error::invalid_config(format!(
            "unexpected directory name '{name}' for model '{}', directory name must equal model name",
            config.name
        )));
    }
    Ok(config)
}

/// The versions the policy selects among the version folders.
fn select_versions(config: &ModelConfig, dir: &Path) -> Result<Vec<(i64, PathBuf)>> {
    let available = scan::version_dirs(dir)?;
    let selected: Vec<(i64, PathBuf)> = match config
        .version_policy
        .as_ref()
        .and_then(|p| p.policy_choice.as_ref())
    {
        Some(PolicyChoice::All(_)) => available,
        Some(PolicyChoice::Specific(s)) => {
            for v in &s.versions {
                if !available.iter().any(|(a, _)| a == v) {
                    tracing::warn!("version {v} is specified for model '{}', but the version directory is not present", config.name);
                }
            }
            available
                .into_iter()
                .filter(|(v, _)| s.versions.contains(v))
                .collect()
        }
        Some(PolicyChoice::Latest(l)) => {
            let n = l.num_versions as usize;
            let skip = available.len().saturating_sub(n);
            available.into_iter().skip(skip).collect()
        }
        None => available.into_iter().last().into_iter().collect(),
    };
    if selected.is_empty() {
        return Err(Error::invalid_config(format!(
            "at least one version must be available under the version policy of model '{}'",
            config.name
        )));
    }
    Ok(selected)
}

/// Reads the label files of the outputs; paths may not leave the model folder.
fn read_labels(config: &ModelConfig, model_dir: &Path) -> Result<BTreeMap<String, Vec<String>>> {
    let mut labels = BTreeMap::new();
    for output in &config.output {
        if output.label_filename.is_empty() {
            continue;
        }
        let file = &output.label_filename;
        let path = crate::util::paths::confined(model_dir, file).map_err(|_| {
            Error::invalid_config(format!(
                "label file path '{file}' for output '{}' in model '{}' is outside model directory",
                output.name, config.name
            ))
            .with_tensor(output.name.clone())
        })?;
        if labels.contains_key(&output.name) {
            return Err(Error::invalid_config(format!(
                "multiple label files for '{}'",
                output.name
            )));
        }
        let text =
            std::fs::read(&path).map_err(|e| Error::io(&path, "failed to read label file", e))?;
        let text = String::from_utf8_lossy(&text);
        labels.insert(
            output.name.clone(),
            text.split('\n').map(str::to_string).collect(),
        );
    }
    Ok(labels)
}

/// Completes and loads one version of a non-ensemble model.
fn load_version(
    polled: &ModelConfig,
    dir: &Path,
    version: i64,
    vdir: &Path,
    auto_complete: bool,
    opts: &LoadOptions,
) -> Result<Model> {
    let mut config = polled.clone();
    let backend = backend::find(&config, opts)?;
    // As in Triton, KIND_AUTO (and a config without groups) takes the GPUs when there are.
    let gpus = backend.gpu_count(opts);
    config::normalize_instance_groups(&mut config, gpus);
    // Groups are checked in order, as Triton does: the groups before the first KIND_GPU one,
    // then the GPU check, then everything.
    let gpu = config::model_instance_group::Kind::Gpu as i32;
    // A build with the `cuda` feature is Triton's GPU build, with or without a GPU.
    let gpu_support = cfg!(feature = "cuda");
    if let Some(first_gpu) = config.instance_group.iter().position(|g| g.kind == gpu) {
        if first_gpu > 0 {
            let mut before = config.clone();
            before.instance_group.truncate(first_gpu);
            config::validate_instance_groups(&before, gpu_support, gpus)?;
        }
        backend.check_instance_groups(&config, opts)?;
    }
    config::validate_instance_groups(&config, gpu_support, gpus)?;
    if auto_complete {
        backend.auto_complete(&mut config, vdir, opts)?;
        config::normalize(&mut config);
    }
    config::validate_model_config(&config)?;
    config::validate_io_config(&config)?;
    // Stricter than Triton (which reads them only on a GPU): no per-compute-capability file
    // name may leave the version folder either.
    for (cc, file) in &config.cc_model_filenames {
        if let Err(why) = crate::util::paths::check_relative(file) {
            return Err(Error::invalid_config(format!(
                "cc_model_filenames entry '{cc}': '{file}' for model '{}' {why}",
                config.name
            )));
        }
    }
    let labels = read_labels(&config, dir)?;
    let exec = backend.load(&config, vdir, opts)?;
    let model = Model::new(config, version, exec, labels, opts.max_request_bytes);
    crate::model::warmup::run(&model, dir)?;
    Ok(model)
}

fn version_failed(name: &str, v: i64, e: &Error) -> VersionEntry {
    let reason = format!("{}: {e}", e.kind().triton_code());
    tracing::error!("failed to load '{name}' version {v}: {reason}");
    VersionEntry {
        state: ModelState::Unavailable,
        reason,
        model: None,
        error: Some(e.clone()),
    }
}

/// Loads every model of the repository at `root`.
pub(crate) fn load_all(
    root: &Path,
    auto_complete: bool,
    opts: &LoadOptions,
) -> Result<BTreeMap<String, ModelEntry>> {
    let mut models = BTreeMap::new();
    for (name, dir) in scan::model_dirs(root)? {
        let entry = poll_model(&name, &dir, auto_complete, opts);
        models.insert(name, entry);
    }
    resolve_ensembles(&mut models, opts.max_request_bytes);
    Ok(models)
}

/// Reads one model folder and loads the versions its policy selects (an ensemble is only
/// polled here; [`resolve_ensembles`] loads it).
pub(crate) fn poll_model(
    name: &str,
    dir: &Path,
    auto_complete: bool,
    opts: &LoadOptions,
) -> ModelEntry {
    match poll(name, dir, auto_complete) {
        Err(e) => {
            tracing::error!("Poll failed for model directory '{name}': {e}");
            ModelEntry::new(Status::Invalid(e))
        }
        Ok(config) if config.is_ensemble() => ModelEntry {
            ensemble: Some((config, dir.to_path_buf())),
            ..ModelEntry::new(Status::Unresolved)
        },
        Ok(config) => load_model(name, config, dir, auto_complete, opts),
    }
}

/// The composing models an ensemble folder names (empty for anything else or on error).
pub(crate) fn ensemble_deps(name: &str, dir: &Path, auto_complete: bool) -> Vec<String> {
    match poll(name, dir, auto_complete) {
        Ok(c) if c.is_ensemble() => deps_of(&c),
        _ => Vec::new(),
    }
}

fn load_model(
    name: &str,
    config: ModelConfig,
    dir: &Path,
    auto_complete: bool,
    opts: &LoadOptions,
) -> ModelEntry {
    let span = tracing::info_span!("load_model", model = name);
    let _enter = span.enter();
    let versions = match select_versions(&config, dir) {
        Ok(v) => v,
        Err(e) => {
            tracing::error!("failed to load '{name}': {e}");
            return ModelEntry::failed(e);
        }
    };
    let mut loaded = BTreeMap::new();
    let mut any_failed = false;
    for (v, vdir) in versions {
        let entry = match load_version(&config, dir, v, &vdir, auto_complete, opts) {
            Ok(model) => {
                tracing::info!("successfully loaded '{name}' version {v}");
                VersionEntry {
                    state: ModelState::Ready,
                    reason: String::new(),
                    model: Some(model),
                    error: None,
                }
            }
            Err(e) => {
                any_failed = true;
                version_failed(name, v, &e.with_model(name).with_version(v))
            }
        };
        loaded.insert(v, entry);
    }
    // As in Triton, a load in which any version fails is rolled back as a whole.
    if any_failed {
        let first = loaded
            .values()
            .find(|v| v.model.is_none())
            .map(|v| (v.reason.clone(), v.error.clone()))
            .unwrap_or_default();
        for ve in loaded.values_mut() {
            if ve.model.take().is_some() {
                ve.state = ModelState::Unavailable;
                ve.reason = format!("another version failed to load: {}", first.0);
                ve.error = first.1.clone();
            }
        }
    }
    ModelEntry::loaded(loaded)
}

/// Resolves ensembles in dependency order: missing or failed composing models, cycles, then
/// the tensor checks against the completed composing configs. Every ensemble is resolved
/// again (against the composing models loaded now).
pub(crate) fn resolve_ensembles(
    models: &mut BTreeMap<String, ModelEntry>,
    max_request_bytes: usize,
) {
    // An ensemble is pending (part of a cycle, if a step asks for it) until it is `done`.
    let ensembles: Vec<String> = models
        .iter()
        .filter(|(_, e)| e.ensemble.is_some())
        .map(|(n, _)| n.clone())
        .collect();
    let mut done = BTreeSet::new();
    for name in &ensembles {
        let mut stack = Vec::new();
        resolve_one(name, models, &mut done, &mut stack, max_request_bytes);
    }
}

fn deps_of(config: &ModelConfig) -> Vec<String> {
    let mut deps: Vec<String> = config
        .ensemble()
        .map(|e| e.step.iter().map(|s| s.model_name.clone()).collect())
        .unwrap_or_default();
    deps.sort();
    deps.dedup();
    deps
}

fn resolve_one(
    name: &str,
    models: &mut BTreeMap<String, ModelEntry>,
    done: &mut BTreeSet<String>,
    stack: &mut Vec<String>,
    max_request_bytes: usize,
) {
    if done.contains(name) {
        return;
    }
    let Some((config, dir)) = models.get(name).and_then(|e| e.ensemble.clone()) else {
        return;
    };
    stack.push(name.to_string());
    let deps = deps_of(&config);
    let missing: Vec<&str> = deps
        .iter()
        .filter(|d| !models.contains_key(d.as_str()))
        .map(String::as_str)
        .collect();
    let result = if !missing.is_empty() {
        Err(Error::invalid_config(format!(
            "ensemble {name} contains models that are not available or ambiguous: {}",
            missing.join(", ")
        )))
    } else {
        let mut cycle = None;
        for d in &deps {
            if let Some(pos) = stack.iter().position(|s| s == d) {
                let start = &stack[pos];
                cycle = Some(format!(
                    "circular dependency between ensembles: {start} -> ... -> {name} -> {start}"
                ));
                break;
            }
            if models.get(d).is_some_and(|e| e.ensemble.is_some()) {
                resolve_one(d, models, done, stack, max_request_bytes);
            }
        }
        match cycle {
            Some(msg) => Err(Error::invalid_config(msg)),
            None => ensemble::check_dependencies(&config, &|dep, version| {
                composing_model(models, done, dep, version).map(|m| m.config().clone())
            }),
        }
    };
    stack.pop();
    done.insert(name.to_string());
    let mut entry = match result {
        Err(e) => {
            tracing::error!("failed to load '{name}': {e}");
            ModelEntry::failed(e)
        }
        Ok(()) => match unchanged_ensemble(name, &config, models, done) {
            // Same config, same composing versions: keep the loaded versions (and their
            // statistics).
            Some(versions) => ModelEntry::loaded(versions),
            None => load_ensemble(name, config.clone(), &dir, models, done, max_request_bytes),
        },
    };
    entry.ensemble = Some((config, dir));
    models.insert(name.to_string(), entry);
}

/// The loaded versions of ensemble `name` if it is being resolved again with the same config
/// and every step would get the same composing version as before.
fn unchanged_ensemble(
    name: &str,
    config: &ModelConfig,
    models: &BTreeMap<String, ModelEntry>,
    done: &BTreeSet<String>,
) -> Option<BTreeMap<i64, VersionEntry>> {
    let entry = models.get(name)?;
    let loaded: Vec<&Model> = entry.ready().collect();
    let first = loaded.first()?;
    // The loaded config carries the decoupled flag set at load; compare the rest.
    let mut same = config.clone();
    same.model_transaction_policy = first.config().model_transaction_policy;
    if first.config() != &same || loaded.len() != entry.versions().len() {
        return None;
    }
    let steps = first.steps();
    let wanted = config
        .ensemble()?
        .step
        .iter()
        .map(|s| (s.model_name.as_str(), s.model_version));
    if steps.len() != config.ensemble()?.step.len() {
        return None;
    }
    for ((dep, v), old) in wanted.zip(&steps) {
        let now = composing_model(models, done, dep, v).ok()?;
        if !now.same_as(old) {
            return None;
        }
    }
    Some(entry.versions().clone())
}

/// Version `version` (-1: latest ready) of a composing model, or why it cannot be used
/// (`done`: the ensembles resolved so far in this pass).
fn composing_model(
    models: &BTreeMap<String, ModelEntry>,
    done: &BTreeSet<String>,
    dep: &str,
    version: i64,
) -> std::result::Result<Model, ensemble::DepError> {
    let Some(entry) = models.get(dep) else {
        return Err(ensemble::DepError::Missing);
    };
    match &entry.status {
        Status::Invalid(e) => return Err(ensemble::DepError::Invalid(e.to_string())),
        Status::Failed(e) => return Err(ensemble::DepError::NotLoaded(Some(e.to_string()))),
        // A failed reload (`reload_error`) leaves the versions that served before serving:
        // the ensemble keeps using them.
        _ => {}
    }
    if entry.ensemble.is_some() && !done.contains(dep) {
        // An ensemble that is not resolved yet is part of a cycle.
        return Err(ensemble::DepError::NotLoaded(None));
    }
    let versions = entry.versions();
    let ready = |v: &VersionEntry| v.model.clone();
    if version == -1 {
        versions.values().rev().find_map(ready).ok_or_else(|| {
            ensemble::DepError::NotLoaded(
                versions
                    .values()
                    .find(|v| v.model.is_none())
                    .map(|v| v.reason.clone()),
            )
        })
    } else {
        if versions.values().all(|v| v.model.is_none()) {
            return Err(ensemble::DepError::NotLoaded(
                versions.values().next().map(|v| v.reason.clone()),
            ));
        }
        versions
            .get(&version)
            .and_then(ready)
            .ok_or(ensemble::DepError::VersionMissing(version))
    }
}

fn load_ensemble(
    name: &str,
    mut config: ModelConfig,
    dir: &Path,
    models: &BTreeMap<String, ModelEntry>,
    done: &BTreeSet<String>,
    max_request_bytes: usize,
) -> ModelEntry {
    let steps: Vec<(String, i64)> = config
        .ensemble()
        .map(|e| {
            e.step
                .iter()
                .map(|s| (s.model_name.clone(), s.model_version))
                .collect()
        })
        .unwrap_or_default();
    let mut step_models = Vec::new();
    for (dep, v) in &steps {
        match composing_model(models, done, dep, *v) {
            Ok(m) => step_models.push(m),
            Err(_) => {
                return ModelEntry::failed(Error::new(
                    ErrorKind::Unavailable,
                    format!("ensemble '{name}' depends on '{dep}' which has no loaded version."),
                ))
            }
        }
    }
    let step_configs: Vec<ModelConfig> = step_models.iter().map(|m| m.config().clone()).collect();
    if let Err(e) = ensemble::validate_tensors(&config, &step_configs) {
        tracing::error!("failed to load '{name}': {e}");
        return ModelEntry::failed(e);
    }
    let decoupled = step_configs.iter().any(|c| {
        c.model_transaction_policy
            .as_ref()
            .is_some_and(|p| p.decoupled)
    });
    config.model_transaction_policy = Some(ModelTransactionPolicy { decoupled });
    let versions = match select_versions(&config, dir) {
        Ok(v) => v,
        Err(e) => return ModelEntry::failed(e),
    };
    let versions = versions
        .into_iter()
        .map(|(v, _)| {
            (
                v,
                VersionEntry {
                    state: ModelState::Ready,
                    reason: String::new(),
                    error: None,
                    model: Some(Model::ensemble(
                        config.clone(),
                        v,
                        step_models.clone(),
                        max_request_bytes,
                    )),
                },
            )
        })
        .collect();
    ModelEntry::loaded(versions)
}
