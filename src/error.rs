//! The one error type of the crate: an opaque [`Error`] with a [`kind`](Error::kind) to match on,
//! the model, version and tensor it concerns, and a message that uses Triton's wording where
//! Triton has one.

use std::fmt;

/// What went wrong, for callers that want to branch on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// `config.pbtxt` is not valid protobuf text format.
    Parse,
    /// The configuration breaks one of Triton's rules (Triton's "Invalid argument").
    InvalidConfig,
    /// A request does not match the model's inputs (Triton's "Invalid argument" at request time).
    InvalidInput,
    /// A model or version that does not exist.
    NotFound,
    /// The model or version exists but is not ready (failed to load, unloaded).
    Unavailable,
    /// A feature of the configuration or model this crate does not implement.
    Unsupported,
    /// The model file (ONNX) is missing, unreadable or malformed.
    ModelFile,
    /// A file-system error.
    Io,
    /// A tensor accessed with the wrong element type.
    DataType,
    /// The inference engine failed while running a model.
    Execution,
    /// A limit (size, memory) was exceeded.
    ResourceExhausted,
    /// The caller cancelled the request (dropped its future) before it ran.
    Cancelled,
    /// The request waited in the queue longer than its timeout ("Request timeout expired").
    TimedOut,
}

impl ErrorKind {
    /// Triton's status code string, as it appears in "failed to load 'm' version 1: `<Code>: <msg>`".
    pub fn triton_code(self) -> &'static str {
        match self {
            ErrorKind::Parse | ErrorKind::Execution => "Internal",
            ErrorKind::InvalidConfig | ErrorKind::InvalidInput | ErrorKind::DataType => {
                "Invalid argument"
            }
            ErrorKind::NotFound => "Not found",
            ErrorKind::Unavailable | ErrorKind::ModelFile | ErrorKind::Io => "Unavailable",
            ErrorKind::Unsupported => "Unsupported",
            ErrorKind::ResourceExhausted => "Unavailable",
            ErrorKind::Cancelled => "Cancelled",
            ErrorKind::TimedOut => "Unavailable",
        }
    }
}

/// The error type of every fallible modelyard call. Cloning keeps everything (the source is
/// shared): the repository keeps the error of a failed load and hands it out again.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub struct Error {
    kind: ErrorKind,
    message: String,
    model: Option<String>,
    version: Option<i64>,
    tensor: Option<String>,
    #[source]
    source: Option<std::sync::Arc<dyn std::error::Error + Send + Sync + 'static>>,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(src) = &self.source {
            write!(f, ": {src}")?;
        }
        Ok(())
    }
}

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A new error of `kind` with `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
            model: None,
            version: None,
            tensor: None,
            source: None,
        }
    }

    pub(crate) fn invalid_config(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidConfig, message)
    }

    pub(crate) fn invalid_input(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidInput, message)
    }

    /// What went wrong.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message without the source chain.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The model the error concerns, when there is one.
    pub fn model(&self) -> Option<&str> {
        self.model.as_deref()
    }

    /// The model version the error concerns, when there is one.
    pub fn version(&self) -> Option<i64> {
        self.version
    }

    /// The tensor the error concerns, when there is one.
    pub fn tensor(&self) -> Option<&str> {
        self.tensor.as_deref()
    }

    pub(crate) fn with_model(mut self, model: impl Into<String>) -> Self {
        self.model.get_or_insert_with(|| model.into());
        self
    }

    pub(crate) fn with_version(mut self, version: i64) -> Self {
        self.version.get_or_insert(version);
        self
    }

    pub(crate) fn with_tensor(mut self, tensor: impl Into<String>) -> Self {
        self.tensor.get_or_insert_with(|| tensor.into());
        self
    }

    pub(crate) fn with_source(
        mut self,
        source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Self {
        self.source = Some(std::sync::Arc::from(source.into()));
        self
    }

    /// The same error for another request of a batch (the source chain becomes text).
    pub(crate) fn duplicate(&self) -> Self {
        Error {
            kind: self.kind,
            message: self.to_string(),
            model: self.model.clone(),
            version: self.version,
            tensor: self.tensor.clone(),
            source: None,
        }
    }

    /// Prefixes the message (keeps kind, model, version, tensor and source).
    pub(crate) fn context(mut self, prefix: impl fmt::Display) -> Self {
        self.message = format!("{prefix}{}", self.message);
        self
    }

    pub(crate) fn io(path: &std::path::Path, what: &str, e: std::io::Error) -> Self {
        Self::new(ErrorKind::Io, format!("{what} {}", path.display())).with_source(e)
    }
}

/// For a caller's own file handling beside modelyard's (writing a repository, say): kind
/// [`ErrorKind::Io`], the I/O error as the source. modelyard's own I/O errors name the path.
impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::new(ErrorKind::Io, "I/O error").with_source(e)
    }
}
