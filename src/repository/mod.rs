//! `repository/`: a model repository on disk, loaded as Triton loads it: every model folder is
//! polled (config read, backend fields, normalisation, validation), the versions its policy
//! selects are loaded, then ensembles are checked against their composing models. Model
//! control (`control.rs`) decides which models load at start and how they change later.

mod control;
mod ensemble;
mod lifecycle;
mod scan;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};

pub use control::ModelControl;

use crate::backend::LoadOptions;
use crate::error::{Error, ErrorKind, Result};
use crate::model::{Model, ModelState};

/// One row of the repository index (Triton's `POST v2/repository/index`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexEntry {
    /// Model name (the folder name).
    pub name: String,
    /// Version, or None for a model that failed before any version was selected.
    pub version: Option<i64>,
    /// State of this version.
    pub state: ModelState,
    /// Why it is not ready ("" when ready).
    pub reason: String,
}

/// Options for [`Repository::builder`].
#[derive(Debug, Clone)]
pub struct RepositoryBuilder {
    root: PathBuf,
    auto_complete: bool,
    exit_on_error: bool,
    opts: LoadOptions,
    control: ModelControl,
    startup_models: Vec<String>,
    poll_interval: Option<Duration>,
}

impl RepositoryBuilder {
    /// Auto-complete configs from the model files (default true). `false` is Triton's
    /// `--disable-auto-complete-config`: a config.pbtxt is then required and must be complete.
    pub fn auto_complete(mut self, enabled: bool) -> Self {
        self.auto_complete = enabled;
        self
    }

    /// Fail the whole load if any model fails (default true, Triton's `--exit-on-error`).
    /// With `false`, good models serve and failed ones are UNAVAILABLE in the index.
    pub fn exit_on_error(mut self, enabled: bool) -> Self {
        self.exit_on_error = enabled;
        self
    }

    /// How many compiled plans (one per distinct set of input shapes) each model version keeps
    /// (default 16, least recently used evicted).
    pub fn plan_cache_capacity(mut self, plans: usize) -> Self {
        self.opts.plan_cache_capacity = plans.max(1);
        self
    }

    /// The max_batch_size ONNX auto-complete gives a batchable model (default 4, as Triton's
    /// `--backend-config=onnxruntime,default-max-batch-size`).
    pub fn default_max_batch_size(mut self, n: i32) -> Self {
        self.opts.default_max_batch_size = n;
        self
    }

    /// The largest total input size one request may carry, in bytes (default 1 GiB); larger
    /// requests fail with `ErrorKind::ResourceExhausted` before anything runs.
    pub fn max_request_bytes(mut self, bytes: usize) -> Self {
        self.opts.max_request_bytes = bytes;
        self
    }

    /// The largest model file, and the largest total size of the weights a model file
    /// declares, in bytes (default 16 GiB): larger models fail to load with
    /// `ErrorKind::ResourceExhausted` before their weights are allocated.
    pub fn max_model_bytes(mut self, bytes: usize) -> Self {
        self.opts.max_model_bytes = bytes;
        self
    }

    /// Runs GPU instance groups (`KIND_GPU`, and `KIND_AUTO`, which then resolves to the GPU)
    /// on the kernel emulator: the CUDA kernels of `kernels/*.cu` compiled for the host CPU
    /// by the C++ compiler (`$CXX` or `c++`), through the same executor as on a GPU. For
    /// testing the GPU path on machines without one; thousands of times slower than a GPU.
    /// Needs the `cuda` feature.
    pub fn cuda_emulator(mut self, on: bool) -> Self {
        self.opts.cuda_emulator = on;
        self
    }

    /// Registers a native backend: a `config.pbtxt` with `backend: "<name>"` is served by the
    /// model `factory` builds from its completed config (once per loaded version).
    pub fn native_backend<F>(self, name: impl Into<String>, factory: F) -> Self
    where
        F: Fn(&crate::config::ModelConfig) -> Result<Box<dyn crate::backend::native::NativeModel>>
            + Send
            + Sync
            + 'static,
    {
        self.native_backend_with_files(name, move |config, _| factory(config))
    }

    /// Like [`native_backend`](Self::native_backend), with the version folder given to the
    /// factory too, for models that read data files of their own (a dictionary, weights).
    /// Use [`Repository::file_in`] to resolve a file name from the config safely.
    pub fn native_backend_with_files<F>(mut self, name: impl Into<String>, factory: F) -> Self
    where
        F: Fn(
                &crate::config::ModelConfig,
                &Path,
            ) -> Result<Box<dyn crate::backend::native::NativeModel>>
            + Send
            + Sync
            + 'static,
    {
        self.opts.natives.insert(name.into(), Arc::new(factory));
        self
    }

    /// The model-control mode (default [`ModelControl::None`], Triton's default).
    pub fn model_control(mut self, mode: ModelControl) -> Self {
        self.control = mode;
        self
    }

    /// In [`ModelControl::Explicit`] mode, the models loaded at start (Triton's
    /// `--load-model`; `"*"` alone loads every model). Without it, nothing loads at start.
    pub fn startup_models<I, S>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.startup_models = names.into_iter().map(Into::into).collect();
        self
    }

    /// In [`ModelControl::Poll`] mode, re-scan the repository on a background thread every
    /// `interval` (Triton's `--repository-poll-secs`); without it, only
    /// [`Repository::poll`] re-scans. The thread ends when the last clone of the repository
    /// is dropped.
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = Some(interval);
        self
    }

    /// Loads the repository.
    pub fn load(self) -> Result<Repository> {
        let span = tracing::info_span!("load_repository", root = %self.root.display());
        let _enter = span.enter();
        let models = control::startup(
            &self.root,
            self.control,
            &self.startup_models,
            self.auto_complete,
            &self.opts,
        )?;
        let failures: Vec<String> = models
            .iter()
            .flat_map(|(name, entry)| entry.failures(name))
            .collect();
        if self.exit_on_error && !failures.is_empty() {
            return Err(Error::new(
                ErrorKind::Unavailable,
                format!("failed to load all models: {}", failures.join("; ")),
            ));
        }
        let repo = Repository {
            inner: Arc::new(Inner {
                // Only model control compares folders with how they were loaded.
                fingerprints: Mutex::new(if self.control == ModelControl::None {
                    BTreeMap::new()
                } else {
                    control::fingerprints(&self.root, &models)
                }),
                models: RwLock::new(models),
                root: self.root,
                auto_complete: self.auto_complete,
                opts: self.opts,
                control: self.control,
                retiring: Mutex::new(Vec::new()),
            }),
        };
        if let (ModelControl::Poll, Some(every)) = (self.control, self.poll_interval) {
            control::spawn_poller(&repo, every)?;
        }
        Ok(repo)
    }
}

/// A loaded model repository. Cheap to clone, `Send + Sync`.
#[derive(Clone)]
pub struct Repository {
    inner: Arc<Inner>,
}

struct Inner {
    root: PathBuf,
    auto_complete: bool,
    opts: LoadOptions,
    control: ModelControl,
    models: RwLock<BTreeMap<String, lifecycle::ModelEntry>>,
    /// Held for the whole of a load, unload or poll (they run one at a time), with the
    /// fingerprint of each model folder as last loaded.
    fingerprints: Mutex<BTreeMap<String, u64>>,
    /// Versions taken out of service that callers still hold (UNLOADING in the index).
    retiring: Mutex<Vec<Model>>,
}

impl std::fmt::Debug for Repository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repository")
            .field("root", &self.inner.root)
            .field(
                "models",
                &self.inner.models.read().keys().collect::<Vec<_>>(),
            )
            .finish()
    }
}

fn unknown(msg: String) -> Error {
    Error::new(
        ErrorKind::NotFound,
        format!("Request for unknown model: {msg}"),
    )
}

impl Repository {
    /// Loads every model of the repository at `root` with Triton's defaults.
    pub fn load(root: impl AsRef<Path>) -> Result<Repository> {
        Self::builder(root).load()
    }

    /// A builder for loading with options.
    pub fn builder(root: impl AsRef<Path>) -> RepositoryBuilder {
        RepositoryBuilder {
            root: root.as_ref().to_path_buf(),
            auto_complete: true,
            exit_on_error: true,
            control: ModelControl::None,
            startup_models: Vec::new(),
            poll_interval: None,
            opts: LoadOptions {
                plan_cache_capacity: 16,
                default_max_batch_size: 4,
                max_request_bytes: 1 << 30,
                max_model_bytes: 16 << 30,
                cuda_emulator: false,
                natives: Default::default(),
            },
        }
    }

    /// `file` (a name from a config) inside `dir`, or an `InvalidConfig` error if it could
    /// leave it (an absolute path or `..`) or is empty. Symbolic links inside `dir` are
    /// followed, as Triton does.
    pub fn file_in(dir: &Path, file: &str) -> Result<PathBuf> {
        crate::util::paths::confined(dir, file).map_err(|why| {
            Error::invalid_config(format!(
                "file '{file}' {why}: it must name a file inside '{}'",
                dir.display()
            ))
        })
    }

    /// The repository folder.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// The highest READY version of `name`.
    pub fn model(&self, name: &str) -> Result<Model> {
        let models = self.inner.models.read();
        let Some(entry) = models.get(name) else {
            return Err(unknown(format!("'{name}' is not found")).with_model(name));
        };
        entry
            .versions()
            .values()
            .rev()
            .find_map(|v| v.model.clone())
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::Unavailable,
                    format!("Request for unknown model: '{name}' has no available versions"),
                )
                .with_model(name)
            })
    }

    /// Version `version` of `name`, which must be READY.
    pub fn model_version(&self, name: &str, version: i64) -> Result<Model> {
        let models = self.inner.models.read();
        let Some(entry) = models.get(name) else {
            return Err(unknown(format!("'{name}' is not found")).with_model(name));
        };
        match entry.versions().get(&version) {
            None => Err(unknown(format!("'{name}' version {version} is not found")).with_model(name).with_version(version)),
            Some(v) => v.model.clone().ok_or_else(|| {
                Error::new(
                    ErrorKind::Unavailable,
                    format!("Request for unknown model: '{name}' version {version} is not at ready state"),
                )
                .with_model(name)
                .with_version(version)
            }),
        }
    }

    /// Every model folder and version with its state, sorted by name then version: a model
    /// never loaded has one row with no version and state UNKNOWN; versions being loaded are
    /// LOADING; versions taken out of service that callers still hold are UNLOADING.
    pub fn index(&self) -> Vec<IndexEntry> {
        let mut out = Vec::new();
        let models = self.inner.models.read();
        for (name, entry) in models.iter() {
            for v in &entry.loading {
                out.push(IndexEntry {
                    name: name.clone(),
                    version: Some(*v),
                    state: ModelState::Loading,
                    reason: String::new(),
                });
            }
            if entry.is_not_loaded() {
                out.push(IndexEntry {
                    name: name.clone(),
                    version: None,
                    state: ModelState::Unknown,
                    reason: String::new(),
                });
            } else if let Some(err) = entry.error() {
                out.push(IndexEntry {
                    name: name.clone(),
                    version: None,
                    state: ModelState::Unavailable,
                    reason: err.to_string(),
                });
            }
            for (v, ve) in entry.versions() {
                if entry.loading.contains(v) && ve.model.is_none() {
                    continue;
                }
                out.push(IndexEntry {
                    name: name.clone(),
                    version: Some(*v),
                    state: ve.state,
                    reason: ve.reason.clone(),
                });
            }
        }
        drop(models);
        let mut retiring = self.inner.retiring.lock();
        release_retired(&mut retiring);
        for m in retiring.iter() {
            out.push(IndexEntry {
                name: m.name().to_string(),
                version: Some(m.version()),
                state: ModelState::Unloading,
                reason: String::new(),
            });
        }
        out.sort_by(|a, b| (&a.name, a.version).cmp(&(&b.name, b.version)));
        out
    }

    /// Statistics of every READY version, sorted by name then version.
    pub fn statistics(&self) -> Vec<crate::model::ModelStatistics> {
        self.inner
            .models
            .read()
            .values()
            .flat_map(|e| e.ready().map(Model::statistics).collect::<Vec<_>>())
            .collect()
    }

    /// Names of the models with at least one READY version.
    pub fn ready_models(&self) -> Vec<String> {
        self.inner
            .models
            .read()
            .iter()
            .filter(|(_, e)| e.ready().next().is_some())
            .map(|(n, _)| n.clone())
            .collect()
    }
}

/// Drops the retired versions no caller holds any more: our own clone is the last one once
/// every caller has let go (a retired ensemble holds its steps: repeat until nothing changes).
fn release_retired(retiring: &mut Vec<Model>) {
    loop {
        let before = retiring.len();
        retiring.retain(|m| m.holders() > 1);
        if retiring.len() == before {
            break;
        }
    }
}
