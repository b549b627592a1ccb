//! `config/`: Triton's model configuration: the typed schema (generated from
//! `proto/model_config.proto`), the text-format reader, normalisation and validation.
//! Nothing here knows about ONNX or the file system layout; backends complete configs.

mod normalize;
mod pbtxt;
pub(crate) mod validate;

use std::sync::OnceLock;

use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor};

use crate::error::{Error, ErrorKind, Result};

#[allow(clippy::all, missing_docs)]
mod schema {
    include!(concat!(env!("OUT_DIR"), "/inference.rs"));
}

pub use normalize::{normalize, normalize_instance_groups};
pub use pbtxt::ParseError;
pub use schema::*;
pub use validate::{validate_instance_groups, validate_io_config, validate_model_config};

/// The `platform` of ensembles.
pub const ENSEMBLE_PLATFORM: &str = "ensemble";

fn pool() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        // The descriptor set is produced by our own build script from our own schema; a
        // failure here is a build defect, not a runtime condition.
        #[allow(clippy::expect_used)]
        DescriptorPool::decode(&include_bytes!(concat!(env!("OUT_DIR"), "/model_config.fds"))[..])
            .expect("the embedded descriptor set is valid")
    })
}

/// The reflection descriptor of a message of the schema, e.g. `"inference.ModelConfig"`.
pub fn descriptor(full_name: &str) -> Option<MessageDescriptor> {
    pool().get_message_by_name(full_name)
}

impl ModelConfig {
    /// The dims input `name` has inside the model: its `reshape`, else its `dims`, after a
    /// batch dimension of -1 (variable) when the model batches; `None` when the config does
    /// not name the input.
    pub(crate) fn model_input_dims(&self, name: &str) -> Option<Vec<i64>> {
        let input = self.input.iter().find(|i| i.name == name)?;
        let dims = input.reshape.as_ref().map_or(&input.dims, |r| &r.shape);
        let batch = (self.max_batch_size > 0).then_some(-1);
        Some(batch.into_iter().chain(dims.iter().copied()).collect())
    }

    /// Parses protobuf text format as Triton does (see the module docs of the reader for the
    /// accepted syntax). Errors carry `line:column`.
    pub fn from_pbtxt(text: &str) -> Result<ModelConfig> {
        Self::parse_text(text)
            .map_err(|e| Error::new(ErrorKind::Parse, format!("failed to read text proto: {e}")))
    }

    /// Reads and parses a `config.pbtxt`; errors name the file, line and column:
    /// "failed to read text proto from `<path>`: `<line>:<col>`: `<reason>`".
    pub fn from_pbtxt_file(path: impl AsRef<std::path::Path>) -> Result<ModelConfig> {
        let path = path.as_ref();
        let bytes = std::fs::read(path)
            .map_err(|e| Error::io(path, "failed to open text file for read", e))?;
        let text = String::from_utf8(bytes).map_err(|e| {
            Error::new(
                ErrorKind::Parse,
                format!(
                    "failed to read text proto from {}: file is not valid UTF-8 (byte {})",
                    path.display(),
                    e.utf8_error().valid_up_to()
                ),
            )
        })?;
        Self::parse_text(&text).map_err(|e| {
            Error::new(
                ErrorKind::Parse,
                format!("failed to read text proto from {}:{e}", path.display()),
            )
        })
    }

    fn parse_text(text: &str) -> std::result::Result<ModelConfig, ParseError> {
        let desc = descriptor("inference.ModelConfig").ok_or_else(|| ParseError {
            line: 0,
            column: 0,
            message: "schema has no inference.ModelConfig".into(),
        })?;
        let dynamic = pbtxt::parse(text, &desc)?;
        dynamic
            .transcode_to::<ModelConfig>()
            .map_err(|e| ParseError {
                line: 0,
                column: 0,
                message: format!("schema mismatch: {e}"),
            })
    }

    /// Prints the configuration in protobuf text format (parseable by [`from_pbtxt`](Self::from_pbtxt)
    /// and by Triton).
    pub fn to_pbtxt(&self) -> String {
        let Some(desc) = descriptor("inference.ModelConfig") else {
            return String::new();
        };
        match DynamicMessage::decode(desc, self.encode_to_vec().as_slice()) {
            Ok(m) => m.to_text_format_with_options(
                &prost_reflect::text_format::FormatOptions::new().pretty(true),
            ),
            Err(_) => String::new(),
        }
    }

    /// The ensemble scheduling block, when this is an ensemble.
    pub fn ensemble(&self) -> Option<&ModelEnsembling> {
        match &self.scheduling_choice {
            Some(model_config::SchedulingChoice::EnsembleScheduling(e)) => Some(e),
            _ => None,
        }
    }

    /// The dynamic batching block, when present.
    pub fn dynamic_batching(&self) -> Option<&ModelDynamicBatching> {
        match &self.scheduling_choice {
            Some(model_config::SchedulingChoice::DynamicBatching(d)) => Some(d),
            _ => None,
        }
    }

    /// Whether this is an ensemble (`platform: "ensemble"`).
    pub fn is_ensemble(&self) -> bool {
        self.platform == ENSEMBLE_PLATFORM
    }
}

impl DataType {
    /// Size of one element in bytes; 0 for the variable-size TYPE_STRING (and TYPE_INVALID).
    pub fn byte_size(self) -> usize {
        match self {
            DataType::TypeBool | DataType::TypeUint8 | DataType::TypeInt8 => 1,
            DataType::TypeUint16
            | DataType::TypeInt16
            | DataType::TypeFp16
            | DataType::TypeBf16 => 2,
            DataType::TypeUint32 | DataType::TypeInt32 | DataType::TypeFp32 => 4,
            DataType::TypeUint64 | DataType::TypeInt64 | DataType::TypeFp64 => 8,
            DataType::TypeString | DataType::TypeInvalid => 0,
        }
    }

    /// The protocol (KServe v2) name: `FP32`, `BYTES`, …
    pub fn protocol_name(self) -> &'static str {
        match self {
            DataType::TypeInvalid => "INVALID",
            DataType::TypeBool => "BOOL",
            DataType::TypeUint8 => "UINT8",
            DataType::TypeUint16 => "UINT16",
            DataType::TypeUint32 => "UINT32",
            DataType::TypeUint64 => "UINT64",
            DataType::TypeInt8 => "INT8",
            DataType::TypeInt16 => "INT16",
            DataType::TypeInt32 => "INT32",
            DataType::TypeInt64 => "INT64",
            DataType::TypeFp16 => "FP16",
            DataType::TypeFp32 => "FP32",
            DataType::TypeFp64 => "FP64",
            DataType::TypeString => "BYTES",
            DataType::TypeBf16 => "BF16",
        }
    }

    /// The data type a protocol (KServe v2) name names, the inverse of
    /// [`protocol_name`](Self::protocol_name); `None` for an unknown name and for `INVALID`.
    pub fn from_protocol_name(name: &str) -> Option<DataType> {
        Some(match name {
            "BOOL" => DataType::TypeBool,
            "UINT8" => DataType::TypeUint8,
            "UINT16" => DataType::TypeUint16,
            "UINT32" => DataType::TypeUint32,
            "UINT64" => DataType::TypeUint64,
            "INT8" => DataType::TypeInt8,
            "INT16" => DataType::TypeInt16,
            "INT32" => DataType::TypeInt32,
            "INT64" => DataType::TypeInt64,
            "FP16" => DataType::TypeFp16,
            "FP32" => DataType::TypeFp32,
            "FP64" => DataType::TypeFp64,
            "BYTES" => DataType::TypeString,
            "BF16" => DataType::TypeBf16,
            _ => return None,
        })
    }
}

/// The config's name for a data-type number (`TYPE_FP32`), or the number for unknown values.
pub fn data_type_name(value: i32) -> String {
    DataType::try_from(value)
        .map(|d| d.as_str_name().to_string())
        .unwrap_or_else(|_| value.to_string())
}

/// Formats dims as Triton does in messages: `[-1,16]`.
pub fn dims_to_string(dims: &[i64]) -> String {
    let parts: Vec<String> = dims.iter().map(|d| d.to_string()).collect();
    format!("[{}]", parts.join(","))
}

#[cfg(test)]
mod tests;
