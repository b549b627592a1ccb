//! The `onnxruntime` backend, run on tract: auto-complete, ONNX Runtime's load-time checks of
//! the config against the graph, and execution through per-shape optimised plans.

mod autocomplete;
mod checked_ops;
pub(crate) mod io;
mod parse;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use super::{Backend, LoadOptions};
use crate::config::{dims_to_string, DataType, ModelConfig};
use crate::error::{Error, Result};
use crate::execution::Executable;
use io::OnnxIo;

pub(crate) struct OnnxBackend;

impl Backend for OnnxBackend {
    fn auto_complete(
        &self,
        config: &mut ModelConfig,
        version_dir: &Path,
        opts: &LoadOptions,
    ) -> Result<()> {
        let has_inputs = !config.input.is_empty() || !config.batch_input.is_empty();
        if has_inputs && !config.output.is_empty() {
            return autocomplete::auto_complete(
                config,
                &OnnxIo {
                    inputs: vec![],
                    overridable: vec![],
                    outputs: vec![],
                },
                opts.default_max_batch_size,
            );
        }
        let path = io::model_path(config, version_dir)?;
        let proto = io::read_proto(&path, &config.name, opts.max_model_bytes)?;
        let io = OnnxIo::from_proto(&proto)?;
        autocomplete::auto_complete(config, &io, opts.default_max_batch_size)
    }

    fn load(
        &self,
        config: &ModelConfig,
        version_dir: &Path,
        opts: &LoadOptions,
    ) -> Result<Arc<dyn Executable>> {
        let path = io::model_path(config, version_dir)?;
        let mut proto = io::read_proto(&path, &config.name, opts.max_model_bytes)?;
        let io = OnnxIo::from_proto(&proto)?;
        validate_inputs(config, &io)?;
        validate_outputs(config, &io)?;
        let dir = path.parent().and_then(|p| p.to_str()).map(str::to_string);
        // The config's dims of each graph input, in the graph's order.
        let dims: Vec<_> = io
            .inputs
            .iter()
            .map(|t| config.model_input_dims(&t.name))
            .collect();
        let plans = parse::plans(
            &config.name,
            &mut proto,
            dir.as_deref(),
            &dims,
            opts.plan_cache_capacity,
            intra_op_threads(config).unwrap_or(1),
        )?;
        let native = engine(config)?;
        use crate::execution::program::executor::ProgramExecutable;
        #[cfg(feature = "cuda")]
        let gpu = crate::execution::cuda::device_for(config, opts.cuda_emulator)?;
        #[cfg(not(feature = "cuda"))]
        let gpu = None;
        let device = match gpu {
            Some(gpu) => Some(gpu),
            // Unset or 0: the machine's cores, as in Triton's ONNX Runtime backend.
            None if native => Some(crate::execution::cpu::device(
                intra_op_threads(config).unwrap_or(0),
            )),
            None => None,
        };
        if let Some(device) = device {
            let exec = ProgramExecutable::new(
                plans,
                device,
                config.max_batch_size > 0,
                opts.plan_cache_capacity,
            );
            exec.prepare(config)?;
            return Ok(Arc::new(exec));
        }
        Ok(Arc::new(plans))
    }
}

/// `parameters { key: "engine" }`: `tract` (the default: tract's own optimised plan) or
/// `native` (our kernels on the CPU, behind the lowering the GPU uses). Whether it is native.
fn engine(config: &ModelConfig) -> Result<bool> {
    match config
        .parameters
        .get("engine")
        .map(|p| p.string_value.as_str())
    {
        None => Ok(true),
        Some("tract") => Ok(false),
        Some("native") => Ok(true),
        Some(other) => Err(Error::invalid_config(format!(
            "model '{}': unknown engine '{other}' in parameters (expected 'tract' or 'native')",
            config.name
        ))),
    }
}

/// `parameters { key: "intra_op_thread_count" }`, as in Triton's ONNX Runtime backend.
/// Unset, tract's plan runs on one thread (its threading costs more than it gains on these
/// models) and the native engine on every core (0 says the same).
fn intra_op_threads(config: &ModelConfig) -> Option<usize> {
    config
        .parameters
        .get("intra_op_thread_count")
        .and_then(|p| p.string_value.parse::<usize>().ok())
}

fn unable(m: &str, what: String) -> Error {
    Error::invalid_config(format!("unable to load model '{m}', {what}"))
}

fn check_data_type(
    m: &str,
    kind: &str,
    name: &str,
    config_dt: i32,
    model_dt: DataType,
) -> Result<()> {
    let Ok(dt) = DataType::try_from(config_dt) else {
        return Err(Error::invalid_config(format!(
            "unsupported datatype {config_dt} for {kind} '{name}' for model '{m}'"
        ))
        .with_tensor(name));
    };
    if matches!(dt, DataType::TypeInvalid) {
        return Err(Error::invalid_config(format!(
            "unsupported datatype {} for {kind} '{name}' for model '{m}'",
            dt.as_str_name()
        ))
        .with_tensor(name));
    }
    if dt != model_dt {
        return Err(unable(
            m,
            format!(
                "configuration expects datatype {} for {kind} '{name}', model provides TYPE_{}",
                dt.as_str_name(),
                model_dt.protocol_name()
            ),
        )
        .with_tensor(name));
    }
    Ok(())
}

/// Triton's `CompareDimsSupported`: config dims (or reshape) against the model's dims.
/// Inputs accept a fixed config dim where the model has -1; outputs must match exactly.
fn compare_dims(
    m: &str,
    name: &str,
    model: &Option<Vec<i64>>,
    dims: &[i64],
    max_batch_size: i32,
    exact: bool,
) -> Result<()> {
    let Some(model) = model else {
        return Ok(());
    };
    let err = |msg: String| Err(Error::invalid_config(msg).with_tensor(name));
    let model_s = dims_to_string(model);
    if max_batch_size > 0 {
        if model.first() != Some(&-1) {
            return err(format!("model '{m}', tensor '{name}': for the model to support batching the shape should have at least 1 dimension and the first dimension must be -1; but shape expected by the model is {model_s}"));
        }
        let full: Vec<i64> = std::iter::once(-1).chain(dims.iter().copied()).collect();
        if !dims_match(model, &full, exact) {
            return err(format!("model '{m}', tensor '{name}': the model expects {} dimensions (shape {model_s}) but the model configuration specifies {} dimensions (an initial batch dimension because max_batch_size > 0 followed by the explicit tensor shape, making complete shape {})", model.len(), full.len(), dims_to_string(&full)));
        }
    } else {
        if model.is_empty() {
            if dims.iter().all(|&d| d == 1) {
                return Ok(());
            }
            return Err(unable(m, format!("scalar tensor '{name}', should only provide 1 in the model configuration when the model doesn't support batching. Model configuration provided: {}.", dims_to_string(dims))).with_tensor(name));
        }
        if !dims_match(model, dims, exact) {
            return err(format!("model '{m}', tensor '{name}': the model expects {} dimensions (shape {model_s}) but the model configuration specifies {} dimensions (shape {})", model.len(), dims.len(), dims_to_string(dims)));
        }
    }
    Ok(())
}

fn dims_match(model: &[i64], config: &[i64], exact: bool) -> bool {
    if exact {
        model == config
    } else {
        crate::util::dims::fits(model, config)
    }
}

/// One config tensor against the model's: its data type, then its dims (or its reshape).
/// Inputs accept a fixed dim where the model has -1; outputs must match exactly.
fn check_tensor(
    config: &ModelConfig,
    kind: &str,
    name: &str,
    data_type: i32,
    dims: &[i64],
    reshape: Option<&[i64]>,
    t: &io::OnnxTensor,
) -> Result<()> {
    let m = &config.name;
    check_data_type(m, kind, name, data_type, t.data_type)?;
    let dims = reshape.unwrap_or(dims);
    compare_dims(
        m,
        name,
        &t.dims,
        dims,
        config.max_batch_size,
        kind == "output",
    )
}

fn validate_inputs(config: &ModelConfig, io: &OnnxIo) -> Result<()> {
    let m = &config.name;
    let optional = config.input.iter().filter(|i| i.optional).count();
    let expected = config.input.len() - optional + config.batch_input.len();
    if expected != io.inputs.len() {
        return Err(unable(
            m,
            format!(
                "configuration expects {expected} inputs, model provides {}",
                io.inputs.len()
            ),
        ));
    }
    let allowed: BTreeSet<&str> = io
        .inputs
        .iter()
        .chain(&io.overridable)
        .map(|t| t.name.as_str())
        .collect();
    for input in &config.input {
        let n = &input.name;
        let Some(t) = io
            .inputs
            .iter()
            .chain(&io.overridable)
            .find(|t| &t.name == n)
        else {
            let list: Vec<&str> = allowed.iter().copied().collect();
            return Err(Error::invalid_config(format!(
                "unexpected inference input '{n}', allowed inputs are: {}",
                list.join(", ")
            ))
            .with_tensor(n));
        };
        if input.optional && config.max_batch_size != 0 {
            return Err(unable(
                m,
                format!("optional input '{n}' is not supported for models that support batching"),
            )
            .with_tensor(n));
        }
        let reshape = input.reshape.as_ref().map(|r| r.shape.as_slice());
        check_tensor(config, "input", n, input.data_type, &input.dims, reshape, t)?;
    }
    Ok(())
}

fn validate_outputs(config: &ModelConfig, io: &OnnxIo) -> Result<()> {
    for output in &config.output {
        let n = &output.name;
        let Some(t) = io.outputs.iter().find(|t| &t.name == n) else {
            let mut list: Vec<&str> = io.outputs.iter().map(|t| t.name.as_str()).collect();
            list.sort_unstable();
            return Err(Error::invalid_config(format!(
                "unexpected inference output '{n}', allowed outputs are: {}",
                list.join(", ")
            ))
            .with_tensor(n));
        };
        let reshape = output.reshape.as_ref().map(|r| r.shape.as_slice());
        check_tensor(
            config,
            "output",
            n,
            output.data_type,
            &output.dims,
            reshape,
            t,
        )?;
    }
    Ok(())
}
