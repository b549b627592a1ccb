//! What the HTTP and gRPC front ends share: model lookup by name and version string, the
//! status an error maps to, tensor decoding rules, server and model metadata, and Triton's
//! restricted API groups.

use std::time::Duration;

use crate::config::DataType;
use crate::model::ModelState;
use crate::{Element, Error, ErrorKind, InferOptions, Model, Repository, Result, Tensor};

/// The server's name and version in its metadata.
pub(crate) const SERVER_NAME: &str = "modelyard";
pub(crate) const SERVER_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The extensions the server implements (Triton's names, as its server metadata lists them).
pub(crate) const EXTENSIONS: &[&str] = &[
    "classification",
    "model_repository",
    "model_repository(unload_dependents)",
    "schedule_policy",
    "model_configuration",
    "binary_tensor_data",
    "parameters",
    "statistics",
];

/// Triton's groups of endpoints that `--http-restricted-api` / `--grpc-restricted-protocol`
/// can put behind a header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ApiGroup {
    /// Server and model liveness and readiness.
    Health,
    /// Server and model metadata.
    Metadata,
    /// Inference.
    Inference,
    /// Shared-memory registration (not supported: always refused).
    SharedMemory,
    /// A model's configuration.
    ModelConfig,
    /// Repository index, load and unload.
    ModelRepository,
    /// Statistics.
    Statistics,
    /// Trace settings (not supported).
    Trace,
    /// Log settings (not supported).
    Logging,
}

impl ApiGroup {
    /// Triton's name of the group, as the command line spells it.
    pub fn name(self) -> &'static str {
        match self {
            ApiGroup::Health => "health",
            ApiGroup::Metadata => "metadata",
            ApiGroup::Inference => "inference",
            ApiGroup::SharedMemory => "shared-memory",
            ApiGroup::ModelConfig => "model-config",
            ApiGroup::ModelRepository => "model-repository",
            ApiGroup::Statistics => "statistics",
            ApiGroup::Trace => "trace",
            ApiGroup::Logging => "logging",
        }
    }

    fn all() -> [ApiGroup; 9] {
        [
            ApiGroup::Health,
            ApiGroup::Metadata,
            ApiGroup::Inference,
            ApiGroup::SharedMemory,
            ApiGroup::ModelConfig,
            ApiGroup::ModelRepository,
            ApiGroup::Statistics,
            ApiGroup::Trace,
            ApiGroup::Logging,
        ]
    }
}

/// API groups that a request may use only with a header (HTTP) or metadata key (gRPC) set
/// to a value: `--http-restricted-api=model-repository,statistics:admin-key=secret`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restriction {
    /// The groups it covers.
    pub groups: Vec<ApiGroup>,
    /// The header or metadata key (lower case).
    pub key: String,
    /// The value it must have.
    pub value: String,
}

impl Restriction {
    /// Parses Triton's `<API_1>,<API_2>,...:<restricted-key>=<restricted-value>`.
    pub fn parse(spec: &str) -> Result<Restriction> {
        let bad = |why: &str| {
            Error::new(
                ErrorKind::InvalidConfig,
                format!("failed to parse restricted API '{spec}': {why}; expected '<API_1>,<API_2>,...:<restricted-key>=<restricted-value>'"),
            )
        };
        let (apis, header) = spec.rsplit_once(':').ok_or_else(|| bad("no ':'"))?;
        let (key, value) = header.split_once('=').ok_or_else(|| bad("no '='"))?;
        if key.is_empty() {
            return Err(bad("the key is empty"));
        }
        let groups = apis
            .split(',')
            .map(|a| {
                ApiGroup::all()
                    .into_iter()
                    .find(|g| g.name() == a.trim())
                    .ok_or_else(|| bad(&format!("unknown restricted API '{a}'")))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Restriction {
            groups,
            key: key.to_ascii_lowercase(),
            value: value.to_string(),
        })
    }
}

/// `Ok` if the request may use `group`; otherwise Triton's refusal. `header` looks a key up
/// in the request's headers or metadata.
pub(crate) fn allowed<'a>(
    restrictions: &[Restriction],
    group: ApiGroup,
    header: impl Fn(&str) -> Option<&'a str>,
    what: &str,
) -> std::result::Result<(), String> {
    for r in restrictions.iter().filter(|r| r.groups.contains(&group)) {
        if header(&r.key) != Some(r.value.as_str()) {
            return Err(format!(
                "This {what} is restricted, expecting header '{}'",
                r.key
            ));
        }
    }
    Ok(())
}

/// The status class an error answers with; HTTP and gRPC each map it to their codes
/// (Triton's table: Internal 500, Not found 404, Unavailable 503, Unsupported 501, others
/// 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    BadRequest,
    NotFound,
    Unavailable,
    Unsupported,
    Internal,
    Cancelled,
    /// A size limit (a shape with too many elements, a request over the model's byte limit):
    /// the client's to fix, so HTTP 400 and gRPC RESOURCE_EXHAUSTED.
    TooLarge,
}

pub(crate) fn status_of(e: &Error) -> Status {
    if e.kind() == ErrorKind::ResourceExhausted {
        return Status::TooLarge;
    }
    match e.kind().triton_code() {
        "Internal" => Status::Internal,
        "Not found" => Status::NotFound,
        "Unavailable" => Status::Unavailable,
        "Unsupported" => Status::Unsupported,
        "Cancelled" => Status::Cancelled,
        _ => Status::BadRequest,
    }
}

pub(crate) fn invalid(message: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidInput, message)
}

/// The version a request names ("" is the latest ready version).
pub(crate) fn model(repo: &Repository, name: &str, version: &str) -> Result<Model> {
    if version.is_empty() {
        return repo.model(name);
    }
    let v = parse_version(version)?;
    repo.model_version(name, v)
}

pub(crate) fn parse_version(version: &str) -> Result<i64> {
    version.parse::<i64>().ok().filter(|v| *v >= 0).ok_or_else(|| {
        invalid(format!(
            "failed to get model version from specified version string '{version}', version should be an integral value > 0"
        ))
    })
}

/// Whether the model (or that version) is ready; unknown models are not.
pub(crate) fn model_ready(repo: &Repository, name: &str, version: &str) -> bool {
    model(repo, name, version).is_ok()
}

/// The ready versions of `name`, oldest first.
pub(crate) fn ready_versions(repo: &Repository, name: &str) -> Vec<i64> {
    repo.index()
        .into_iter()
        .filter(|e| e.name == name && e.state == ModelState::Ready)
        .filter_map(|e| e.version)
        .collect()
}

/// One tensor of a model's metadata.
pub(crate) struct TensorMeta {
    pub(crate) name: String,
    pub(crate) datatype: &'static str,
    pub(crate) shape: Vec<i64>,
}

/// A model's metadata (KServe's `$metadata_model_response`).
pub(crate) struct ModelMeta {
    pub(crate) name: String,
    pub(crate) versions: Vec<String>,
    pub(crate) platform: String,
    pub(crate) inputs: Vec<TensorMeta>,
    pub(crate) outputs: Vec<TensorMeta>,
}

pub(crate) fn model_metadata(repo: &Repository, name: &str, version: &str) -> Result<ModelMeta> {
    let m = model(repo, name, version)?;
    let config = m.config();
    let batch = config.max_batch_size > 0;
    let meta = |name: &str, dt: i32, dims: &[i64]| TensorMeta {
        name: name.to_string(),
        datatype: DataType::try_from(dt)
            .unwrap_or(DataType::TypeInvalid)
            .protocol_name(),
        shape: batch
            .then_some(-1)
            .into_iter()
            .chain(dims.iter().copied())
            .collect(),
    };
    let versions = if version.is_empty() {
        ready_versions(repo, name)
    } else {
        vec![m.version()]
    };
    Ok(ModelMeta {
        name: m.name().to_string(),
        versions: versions.iter().map(i64::to_string).collect(),
        platform: if config.platform.is_empty() {
            config.backend.clone()
        } else {
            config.platform.clone()
        },
        inputs: config
            .input
            .iter()
            .map(|i| meta(&i.name, i.data_type, &i.dims))
            .collect(),
        outputs: config
            .output
            .iter()
            .map(|o| meta(&o.name, o.data_type, &o.dims))
            .collect(),
    })
}

/// Statistics of a model (all its ready versions, or one), or of every model.
pub(crate) fn statistics(
    repo: &Repository,
    name: &str,
    version: &str,
) -> Result<Vec<crate::ModelStatistics>> {
    if name.is_empty() {
        return Ok(repo.statistics());
    }
    if !version.is_empty() {
        return Ok(vec![model(repo, name, version)?.statistics()]);
    }
    repo.model(name)?;
    Ok(repo
        .statistics()
        .into_iter()
        .filter(|s| s.name == name)
        .collect())
}

/// A protocol data type name (`FP32`, `BYTES`) of tensor `tensor`.
pub(crate) fn data_type(name: &str, tensor: &str) -> Result<DataType> {
    DataType::from_protocol_name(name)
        .ok_or_else(|| invalid(format!("invalid datatype '{name}' of input '{tensor}'")))
}

/// A request's shape, checked: no negative dims, and an element count that fits.
pub(crate) fn shape(dims: &[i64], tensor: &str) -> Result<Vec<usize>> {
    let shape = dims
        .iter()
        .map(|&d| usize::try_from(d).ok())
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| {
            invalid(format!(
                "unable to parse shape of input '{tensor}': {dims:?} has a negative dimension"
            ))
        })?;
    shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .filter(|n| *n <= isize::MAX as usize)
        .ok_or_else(|| {
            Error::new(
                ErrorKind::ResourceExhausted,
                format!("shape {dims:?} of input '{tensor}' has too many elements"),
            )
        })?;
    Ok(shape)
}

pub(crate) fn element_count(shape: &[usize]) -> usize {
    shape.iter().product()
}

/// A tensor of `shape` from its elements, which must fill it.
pub(crate) fn tensor_from<T: Element>(
    shape: &[usize],
    values: Vec<T>,
    tensor: &str,
) -> Result<Tensor>
where
    Tensor: From<ndarray::ArrayD<T>>,
{
    let n = element_count(shape);
    if values.len() != n {
        return Err(count_mismatch(tensor, shape, values.len()));
    }
    ndarray::ArrayD::from_shape_vec(shape.to_vec(), values)
        .map(Tensor::from)
        .map_err(|e| invalid(format!("input '{tensor}': {e}")))
}

pub(crate) fn count_mismatch(tensor: &str, shape: &[usize], got: usize) -> Error {
    invalid(format!(
        "unable to parse 'data' of input '{tensor}': shape {shape:?} holds {} elements, the data has {got}",
        element_count(shape)
    ))
}

/// What a request asks of one output.
#[derive(Debug, Clone, Default)]
pub(crate) struct WantedOutput {
    pub(crate) name: String,
    pub(crate) class_count: usize,
    pub(crate) binary: Option<bool>,
}

/// The request-level options: the outputs wanted, Triton's `priority` and `timeout`
/// (microseconds) parameters.
pub(crate) fn options(
    wanted: &[WantedOutput],
    priority: Option<u64>,
    timeout_us: Option<u64>,
) -> InferOptions {
    let mut options = InferOptions::new();
    if !wanted.is_empty() {
        options = options.outputs(wanted.iter().map(|w| w.name.clone()));
    }
    for w in wanted.iter().filter(|w| w.class_count > 0) {
        options = options.classification(w.name.clone(), w.class_count);
    }
    if let Some(p) = priority {
        options = options.priority(u32::try_from(p).unwrap_or(u32::MAX));
    }
    if let Some(t) = timeout_us.filter(|t| *t > 0) {
        options = options.timeout(Duration::from_micros(t));
    }
    options
}

/// Request parameters that the server does not implement: Triton's sequence batching.
pub(crate) fn check_parameter(name: &str) -> Result<()> {
    match name {
        "sequence_id" | "sequence_start" | "sequence_end" => Err(Error::new(
            ErrorKind::Unsupported,
            format!("the '{name}' parameter needs a sequence batcher, which modelyard does not implement"),
        )),
        _ => Ok(()),
    }
}

/// Parameters of a load request: `unload_dependents` is accepted; Triton's config and file
/// overrides are refused, so a request can never point the server at files outside the
/// repository.
pub(crate) fn check_load_parameter(name: &str) -> Result<()> {
    if name == "config" || name.starts_with("file:") {
        return Err(Error::new(
            ErrorKind::Unsupported,
            format!("load parameter '{name}' (config and file overrides) is not supported by modelyard: change the files in the repository and load again"),
        ));
    }
    Ok(())
}

/// Runs a request's blocking work (parsing, inference, encoding) on the network worker that
/// received it, which hands its other connections to another worker for the while
/// (`block_in_place`): no trip to the blocking pool and back (two thread wake-ups fewer per
/// request), and a slow model still does not stall the other connections. A panic (none is
/// known: the library denies them) answers an error instead of ending the connection's task.
pub(crate) fn blocking<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    tokio::task::block_in_place(|| {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|_| {
            Err(Error::new(
                ErrorKind::Execution,
                "the request failed: the handler panicked",
            ))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restrictions_parse_as_triton_writes_them() {
        let r = Restriction::parse("model-repository,statistics:Admin-Key=secret").unwrap();
        assert_eq!(r.groups, [ApiGroup::ModelRepository, ApiGroup::Statistics]);
        assert_eq!((r.key.as_str(), r.value.as_str()), ("admin-key", "secret"));
        assert!(Restriction::parse("statistics").is_err());
        assert!(Restriction::parse("nonsense:k=v").is_err());
        let rs = [r];
        let refused = allowed(&rs, ApiGroup::Statistics, |_| None, "API").unwrap_err();
        assert_eq!(
            refused,
            "This API is restricted, expecting header 'admin-key'"
        );
        assert!(allowed(
            &rs,
            ApiGroup::Statistics,
            |k| (k == "admin-key").then_some("secret"),
            "API"
        )
        .is_ok());
        assert!(allowed(&rs, ApiGroup::Statistics, |_| Some("wrong"), "API").is_err());
        assert!(allowed(&rs, ApiGroup::Inference, |_| None, "API").is_ok());
    }

    #[test]
    fn shapes_are_checked() {
        assert_eq!(shape(&[2, 3], "x").unwrap(), [2, 3]);
        assert_eq!(
            shape(&[-1], "x").unwrap_err().kind(),
            ErrorKind::InvalidInput
        );
        assert_eq!(
            shape(&[1 << 40, 1 << 40], "x").unwrap_err().kind(),
            ErrorKind::ResourceExhausted
        );
        assert!(data_type("FP32", "x").is_ok());
        assert!(data_type("FLOAT", "x").is_err());
        assert!(parse_version("abc").is_err());
        assert_eq!(parse_version("3").unwrap(), 3);
    }
}
