//! Reads an ONNX file's graph inputs and outputs (what ONNX Runtime reports to Triton):
//! names, element types and dims (symbolic or unknown dims as -1). Initializers are not inputs;
//! an initializer also listed as a graph input is an "overridable initializer".

use std::path::{Path, PathBuf};

use tract_onnx::pb::{self, type_proto};
use tract_onnx::prelude::Framework;

use crate::config::DataType;
use crate::error::{Error, ErrorKind, Result};

/// One graph input or output.
#[derive(Debug, Clone)]
pub(crate) struct OnnxTensor {
    pub name: String,
    pub data_type: DataType,
    /// None when the file declares no shape.
    pub dims: Option<Vec<i64>>,
}

/// The I/O of an ONNX graph, in graph order.
#[derive(Debug, Clone)]
pub(crate) struct OnnxIo {
    pub inputs: Vec<OnnxTensor>,
    pub overridable: Vec<OnnxTensor>,
    pub outputs: Vec<OnnxTensor>,
}

/// The model file of a version: `<version>/<default_model_filename or model.onnx>`, or
/// `<that>/model.onnx` when it is a folder. The name may not leave the version folder (no
/// `..`, not absolute); symbolic links are followed, as Triton follows them.
pub(crate) fn model_path(
    config: &crate::config::ModelConfig,
    version_dir: &Path,
) -> Result<PathBuf> {
    let file = if config.default_model_filename.is_empty() {
        "model.onnx"
    } else {
        config.default_model_filename.as_str()
    };
    let path = crate::util::paths::confined(version_dir, file).map_err(|why| {
        Error::invalid_config(format!(
            "default_model_filename '{file}' for model '{}' {why}",
            config.name
        ))
    })?;
    if path.is_dir() {
        return Ok(path.join("model.onnx"));
    }
    if !path.exists() {
        return Err(Error::new(
            ErrorKind::Unavailable,
            format!(
                "unable to find '{}' for model instance '{}'",
                path.display(),
                config.name
            ),
        ));
    }
    Ok(path)
}

/// Decodes the ONNX protobuf at `path`; neither the file nor the weights it declares may take
/// more than `limit` bytes (checked before anything that size is allocated).
pub(crate) fn read_proto(path: &Path, model: &str, limit: usize) -> Result<pb::ModelProto> {
    let size = std::fs::metadata(path)
        .map_err(|e| Error::io(path, "failed to read model file", e))?
        .len();
    if size > limit as u64 {
        return Err(too_big(model, size, limit));
    }
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, "failed to read model file", e))?;
    let proto = tract_onnx::onnx()
        .proto_model_for_read(&mut bytes.as_slice())
        .map_err(|e| {
            Error::new(
                ErrorKind::ModelFile,
                format!(
                    "failed to load model '{model}': '{}' is not a valid ONNX model ({e})",
                    path.display()
                ),
            )
        })?;
    if proto.graph.is_none() {
        return Err(Error::new(
            ErrorKind::ModelFile,
            format!(
                "failed to load model '{model}': '{}' contains no graph",
                path.display()
            ),
        ));
    }
    check_initializers(&proto, model, limit)?;
    check_acyclic(&proto, model)?;
    Ok(proto)
}

fn too_big(model: &str, bytes: u64, limit: usize) -> Error {
    Error::new(
        ErrorKind::ResourceExhausted,
        format!("failed to load model '{model}': it needs {bytes} bytes, more than the limit of {limit} bytes (RepositoryBuilder::max_model_bytes)"),
    )
}

/// Every node's inputs must be computable: graph inputs, initializers, or outputs of nodes
/// that can run first. A cycle (or a tensor nobody produces) is a load error, not a hang or a
/// crash later.
fn check_acyclic(proto: &pb::ModelProto, model: &str) -> Result<()> {
    let Some(graph) = &proto.graph else {
        return Ok(());
    };
    let mut available: std::collections::HashSet<&str> = graph
        .input
        .iter()
        .map(|i| i.name.as_str())
        .chain(graph.initializer.iter().map(|i| i.name.as_str()))
        .chain(std::iter::once(""))
        .collect();
    let mut pending: Vec<&pb::NodeProto> = graph.node.iter().collect();
    loop {
        let before = pending.len();
        pending.retain(|n| {
            if n.input.iter().all(|i| available.contains(i.as_str())) {
                available.extend(n.output.iter().map(String::as_str));
                false
            } else {
                true
            }
        });
        if pending.is_empty() {
            // Every graph output must be something the graph has (tract panics otherwise:
            // found by fuzz/onnx_load).
            if let Some(o) = graph
                .output
                .iter()
                .find(|o| !available.contains(o.name.as_str()))
            {
                return Err(Error::new(
                    ErrorKind::ModelFile,
                    format!(
                        "failed to load model '{model}': graph output '{}' is produced by no node",
                        o.name
                    ),
                ));
            }
            return Ok(());
        }
        if pending.len() == before {
            let n = pending[0];
            let missing = n
                .input
                .iter()
                .find(|i| !available.contains(i.as_str()))
                .cloned()
                .unwrap_or_default();
            return Err(Error::new(
                ErrorKind::ModelFile,
                format!(
                    "failed to load model '{model}': node '{}' ({}) needs '{missing}', which is part of a cycle or produced by no node",
                    n.name, n.op_type
                ),
            ));
        }
    }
}

/// Bytes per element of an ONNX `TensorProto.DataType` (0: strings or unknown).
fn onnx_element_size(dt: i32) -> usize {
    match dt {
        2 | 3 | 9 => 1,        // UINT8, INT8, BOOL
        4 | 5 | 10 | 16 => 2,  // UINT16, INT16, FLOAT16, BFLOAT16
        1 | 6 | 12 => 4,       // FLOAT, INT32, UINT32
        7 | 11 | 13 | 14 => 8, // INT64, DOUBLE, UINT64, COMPLEX64
        15 => 16,              // COMPLEX128
        _ => 0,
    }
}

/// Every initializer's dims must be valid, its stored data must match them, and together
/// they must fit in `limit` bytes: a file that claims a 100 GB initializer is refused here,
/// before the engine allocates anything for it.
fn check_initializers(proto: &pb::ModelProto, model: &str, limit: usize) -> Result<()> {
    let Some(graph) = &proto.graph else {
        return Ok(());
    };
    let mut total: u64 = 0;
    for t in &graph.initializer {
        let bad = |what: String| {
            Error::new(
                ErrorKind::ModelFile,
                format!(
                    "failed to load model '{model}': initializer '{}' {what}",
                    t.name
                ),
            )
        };
        let count = t
            .dims
            .iter()
            .try_fold(1u64, |a, &d| {
                u64::try_from(d).ok().and_then(|d| a.checked_mul(d))
            })
            .ok_or_else(|| bad(format!("has invalid dims {:?}", t.dims)))?;
        let size = onnx_element_size(t.data_type) as u64;
        let bytes = count
            .checked_mul(size.max(1))
            .ok_or_else(|| bad(format!("has too many elements {:?}", t.dims)))?;
        total = total.saturating_add(bytes);
        if total > limit as u64 {
            return Err(too_big(model, total, limit));
        }
        let external = t.data_location == Some(1);
        if external || size == 0 {
            continue;
        }
        let stored = if t.raw_data.is_empty() {
            (t.float_data.len()
                + t.int32_data.len()
                + t.int64_data.len()
                + t.double_data.len()
                + t.uint64_data.len()) as u64
        } else {
            t.raw_data.len() as u64 / size
        };
        if stored != count {
            return Err(bad(format!(
                "declares dims {:?} ({count} elements) but stores {stored}",
                t.dims
            )));
        }
    }
    Ok(())
}

/// ONNX `TensorProto.DataType` numbers to Triton data types.
fn map_type(t: i32) -> Option<DataType> {
    Some(match t {
        1 => DataType::TypeFp32,
        2 => DataType::TypeUint8,
        3 => DataType::TypeInt8,
        4 => DataType::TypeUint16,
        5 => DataType::TypeInt16,
        6 => DataType::TypeInt32,
        7 => DataType::TypeInt64,
        8 => DataType::TypeString,
        9 => DataType::TypeBool,
        10 => DataType::TypeFp16,
        11 => DataType::TypeFp64,
        12 => DataType::TypeUint32,
        13 => DataType::TypeUint64,
        16 => DataType::TypeBf16,
        _ => return None,
    })
}

fn tensor_of(v: &pb::ValueInfoProto) -> Result<OnnxTensor> {
    let Some(type_proto::Value::TensorType(t)) = v.r#type.as_ref().and_then(|t| t.value.as_ref())
    else {
        return Err(Error::new(
            ErrorKind::Unsupported,
            format!(
                "Unsupported ONNX Type 'ONNX_TYPE_SEQUENCE or ONNX_TYPE_MAP' for I/O '{}', expected 'ONNX_TYPE_TENSOR'.",
                v.name
            ),
        ));
    };
    let data_type = map_type(t.elem_type).ok_or_else(|| {
        Error::new(
            ErrorKind::Unsupported,
            format!(
                "unsupported ONNX element type {} for I/O '{}'",
                t.elem_type, v.name
            ),
        )
    })?;
    let dims = t.shape.as_ref().map(|s| {
        s.dim
            .iter()
            .map(|d| match d.value {
                Some(pb::tensor_shape_proto::dimension::Value::DimValue(v)) if v >= 0 => v,
                _ => -1,
            })
            .collect()
    });
    Ok(OnnxTensor {
        name: v.name.clone(),
        data_type,
        dims,
    })
}

impl OnnxIo {
    pub(crate) fn from_proto(proto: &pb::ModelProto) -> Result<OnnxIo> {
        let Some(graph) = proto.graph.as_ref() else {
            return Err(Error::new(ErrorKind::ModelFile, "model contains no graph"));
        };
        let inits: std::collections::HashSet<&str> =
            graph.initializer.iter().map(|i| i.name.as_str()).collect();
        let mut inputs = Vec::new();
        let mut overridable = Vec::new();
        for v in &graph.input {
            let t = tensor_of(v)?;
            if inits.contains(v.name.as_str()) {
                overridable.push(t);
            } else {
                inputs.push(t);
            }
        }
        let outputs = graph.output.iter().map(tensor_of).collect::<Result<_>>()?;
        Ok(OnnxIo {
            inputs,
            overridable,
            outputs,
        })
    }
}
