//! Triton's `ValidateModelConfig`, `ValidateEnsembleSchedulingConfig`, `ValidateModelIOConfig`
//! and `ValidateInstanceGroup`, with Triton's exact messages (spec section (c)). Each function
//! stops at the first failure, in Triton's order.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use super::{
    batch_input,
    model_config::SchedulingChoice,
    model_instance_group::Kind,
    model_metrics::metric_control::MetricOptions,
    model_queue_policy::TimeoutAction,
    model_sequence_batching::{self, control},
    DataType, ModelConfig, ModelInput, ModelOutput, ModelTensorReshape, ENSEMBLE_PLATFORM,
};
use crate::error::{Error, Result};

fn err(msg: String) -> Result<()> {
    Err(Error::invalid_config(msg))
}

/// The backend a platform belongs to, for the known backends.
fn platform_backend(platform: &str) -> Option<&'static str> {
    Some(match platform {
        "tensorflow_graphdef" | "tensorflow_savedmodel" => "tensorflow",
        "tensorrt_plan" => "tensorrt",
        "onnxruntime_onnx" => "onnxruntime",
        "pytorch_libtorch" | "libtorch" | "torch_aoti" => "pytorch",
        _ => return None,
    })
}

/// `ValidateModelConfig`: the checks that need nothing but the config.
pub fn validate_model_config(config: &ModelConfig) -> Result<()> {
    let m = &config.name;
    if m.is_empty() {
        return err("model configuration must specify 'name'".into());
    }
    if config.backend.is_empty() && config.platform != ENSEMBLE_PLATFORM {
        return err(format!(
            "unexpected platform type '{}' for {m}",
            config.platform
        ));
    }
    if config.platform == ENSEMBLE_PLATFORM && !config.backend.is_empty() {
        return err(format!(
            "Ensemble model '{m}' must have platform type 'ensemble' and empty backend type"
        ));
    }
    if matches!(
        config.backend.as_str(),
        "tensorflow" | "tensorrt" | "onnxruntime" | "pytorch"
    ) && !config.platform.is_empty()
        && platform_backend(&config.platform) != Some(config.backend.as_str())
    {
        return err(format!(
            "unexpected 'platform' and 'backend' pair, got:{}, {}",
            config.platform, config.backend
        ));
    }
    if config.max_batch_size < 0 {
        return err(format!(
            "'max_batch_size' must be non-negative value for {m}"
        ));
    }
    if config.version_policy.is_none() {
        return err(format!("must specify 'version policy' for {m}"));
    }
    match &config.scheduling_choice {
        Some(SchedulingChoice::DynamicBatching(db)) => validate_dynamic_batching(config, db)?,
        Some(SchedulingChoice::SequenceBatching(sb)) => validate_sequence_batching(config, sb)?,
        _ => {}
    }
    if config.ensemble().is_some() {
        validate_ensemble_scheduling(config)?;
    } else if config.platform == ENSEMBLE_PLATFORM {
        return err(format!(
            "ensemble scheduling must be set for ensemble {m} whose platform is ensemble"
        ));
    }
    if config.response_cache.as_ref().is_some_and(|c| c.enable)
        && config
            .model_transaction_policy
            .as_ref()
            .is_some_and(|p| p.decoupled)
    {
        return err(format!("Response Cache does not currently support model {m} with 'decoupled' transaction policy. Please disable the response cache."));
    }
    validate_model_metrics(config)
}

/// Each preferred batch size is positive and at most `max_batch_size` (`what` names them as
/// Triton's messages do).
fn preferred_sizes(config: &ModelConfig, sizes: &[i32], what: &str) -> Result<()> {
    let m = &config.name;
    for &size in sizes {
        if size <= 0 {
            return err(format!("{what} must be positive for {m}"));
        }
        if size > config.max_batch_size {
            return err(format!("{what} must be <= max batch size for {m}"));
        }
    }
    Ok(())
}

/// `dynamic_batching`: preferred sizes, priority levels, queue policies, ordering.
fn validate_dynamic_batching(config: &ModelConfig, db: &super::ModelDynamicBatching) -> Result<()> {
    let m = &config.name;
    preferred_sizes(
        config,
        &db.preferred_batch_size,
        "dynamic batching preferred size",
    )?;
    if db.priority_levels != 0 {
        let levels = db.priority_levels;
        if db.default_priority_level == 0 || db.default_priority_level > levels {
            return err(format!(
                "default priority level must be in range [1, {levels}] for {m}"
            ));
        }
        for &level in db.priority_queue_policy.keys() {
            if level == 0 || level > levels {
                return err(format!(
                    "priority queue policy must have priority level in range [1, {levels}] for {m}"
                ));
            }
        }
    }
    // Stricter than Triton, which accepts unknown enum numbers and fails later (or
    // never): a queue policy whose timeout action we cannot honour is refused.
    for p in db
        .default_queue_policy
        .iter()
        .chain(db.priority_queue_policy.values())
    {
        if TimeoutAction::try_from(p.timeout_action).is_err() {
            return err(format!(
                "unexpected timeout action {} in a queue policy of {m}",
                p.timeout_action
            ));
        }
    }
    if db.preserve_ordering {
        if db.priority_levels > 1 {
            return err(format!(
                "Only one priority level is allowed when 'preserve_ordering' is true for {m}"
            ));
        }
        let delays = db
            .default_queue_policy
            .iter()
            .chain(db.priority_queue_policy.values())
            .any(|p| {
                p.default_timeout_microseconds != 0 && p.timeout_action() == TimeoutAction::Delay
            });
        if delays {
            return err(format!(
                    "Queue policy can not have DELAY as timeout action when 'preserve_ordering' is true for {m}"
                ));
        }
    }
    Ok(())
}

/// `sequence_batching`: the response cache, control tensors and the strategy's sizes.
fn validate_sequence_batching(
    config: &ModelConfig,
    sb: &super::ModelSequenceBatching,
) -> Result<()> {
    let m = &config.name;
    if config.response_cache.as_ref().is_some_and(|c| c.enable) {
        return err(format!("Response Cache does not currently support model {m} with sequence batching scheduler. Please disable the response cache."));
    }
    validate_sequence_controls(sb, m)?;
    match &sb.strategy_choice {
        Some(model_sequence_batching::StrategyChoice::Oldest(o)) => {
            preferred_sizes(
                config,
                &o.preferred_batch_size,
                "sequence batching preferred batch size",
            )?;
        }
        Some(model_sequence_batching::StrategyChoice::Direct(d))
            if !(0.0..=1.0).contains(&d.minimum_slot_utilization) =>
        {
            return err(format!(
                "sequence batching minimum slot utilization must be in range (0.0, 1.0] for {m}"
            ));
        }
        _ => {}
    }
    Ok(())
}

/// `model_metrics`: each metric control names a family and its histogram buckets.
fn validate_model_metrics(config: &ModelConfig) -> Result<()> {
    if let Some(metrics) = &config.model_metrics {
        for mc in &metrics.metric_control {
            let Some(id) = &mc.metric_identifier else {
                return err("metric control must specify 'metric_identifier'".into());
            };
            if id.family.is_empty() {
                return err("metric identifier must specify non-empty 'family'".into());
            }
            match &mc.metric_options {
                Some(MetricOptions::HistogramOptions(h)) if !h.buckets.is_empty() => {}
                Some(MetricOptions::HistogramOptions(_)) => {
                    return err("histogram options must specify non-empty 'buckets'".into())
                }
                None => return err("metric control must specify 'histogram_options'".into()),
            }
        }
    }
    Ok(())
}

fn validate_sequence_controls(sb: &super::ModelSequenceBatching, m: &str) -> Result<()> {
    let mut tensor_kinds: BTreeMap<&str, control::Kind> = BTreeMap::new();
    let mut seen_kinds: BTreeSet<i32> = BTreeSet::new();
    for ci in &sb.control_input {
        if ci.name.is_empty() {
            return err(format!(
                "sequence batching control tensor must have a name for {m}"
            ));
        }
        for c in &ci.control {
            let kind = c.kind();
            if let Some(prev) = tensor_kinds.insert(&ci.name, kind) {
                if prev != kind || ci.control.len() > 1 {
                    return err(format!("sequence batching control tensor '{}' is specified for multiple control kinds for {m}", ci.name));
                }
            }
            if !seen_kinds.insert(kind as i32) {
                return err(format!(
                    "sequence batching specifies multiple {} tensors for {m}",
                    kind.as_str_name()
                ));
            }
            let given = [
                !c.int32_false_true.is_empty(),
                !c.fp32_false_true.is_empty(),
                !c.bool_false_true.is_empty(),
            ];
            let n = given.iter().filter(|g| **g).count();
            if kind == control::Kind::ControlSequenceCorrid {
                if n != 0 {
                    return err(format!("sequence batching must not specify either 'int32_false_true', 'fp32_false_true' or 'bool_false_true' for CONTROL_SEQUENCE_CORRID for {m}"));
                }
                if !matches!(
                    c.data_type(),
                    DataType::TypeUint64
                        | DataType::TypeInt64
                        | DataType::TypeUint32
                        | DataType::TypeInt32
                        | DataType::TypeString
                ) {
                    return err(format!("unexpected data type for control CONTROL_SEQUENCE_CORRID for {m}. Allowed data types are TYPE_UINT64, TYPE_INT64, TYPE_UINT32, TYPE_INT32 and TYPE_STRING"));
                }
                continue;
            }
            let k = kind.as_str_name();
            if n == 0 {
                return err(format!("sequence batching must specify either 'int32_false_true', 'fp32_false_true' or 'bool_false_true' for {k} for {m}"));
            }
            if n > 1 {
                return err(format!("sequence batching specifies more than one from 'int32_false_true', 'fp32_false_true' and 'bool_false_true' for {k} for {m}"));
            }
            for (field, len) in [
                ("int32_false_true", c.int32_false_true.len()),
                ("fp32_false_true", c.fp32_false_true.len()),
                ("bool_false_true", c.bool_false_true.len()),
            ] {
                if len != 0 && len != 2 {
                    return err(format!("sequence batching control '{field}' must have exactly 2 entries for {k} for {m}"));
                }
            }
        }
    }
    Ok(())
}

#[derive(Default)]
struct EnsembleTensor {
    is_output: bool,
    ready: bool,
    prev: Vec<String>,
    next: Vec<String>,
}

/// `ValidateEnsembleSchedulingConfig`: the step graph, before any composing model is known.
// Long on purpose: Triton's checks one by one, in its order (the first failing check
// decides the message its QA cases expect).
fn validate_ensemble_scheduling(config: &ModelConfig) -> Result<()> {
    let m = &config.name;
    if config.platform != ENSEMBLE_PLATFORM {
        return err(format!(
            "ensemble scheduling cannot be set for model '{m}' whose platform is not ensemble"
        ));
    }
    if !config.instance_group.is_empty() {
        return err(format!(
            "instance group should not be specified for ensemble '{m}'"
        ));
    }
    if config.optimization.is_some() {
        return err(format!(
            "optimization should not be specified for ensemble '{m}'"
        ));
    }
    if !config.model_warmup.is_empty() {
        return err(format!(
            "model_warmup can not be specified for ensemble '{m}'"
        ));
    }
    let steps = config.ensemble().map(|e| e.step.as_slice()).unwrap_or(&[]);
    if steps.is_empty() {
        return err(format!("must specify 'step' for ensemble '{m}'"));
    }
    let mut tensors: BTreeMap<String, EnsembleTensor> = BTreeMap::new();
    for (i, step) in steps.iter().enumerate() {
        for (field, empty) in [
            ("model_name", step.model_name.is_empty()),
            ("input_map", step.input_map.is_empty()),
            ("output_map", step.output_map.is_empty()),
        ] {
            if empty {
                return err(format!(
                    "must specify '{field}' in step {i} of ensemble '{m}'"
                ));
            }
        }
        let mut outputs = Vec::new();
        for tensor in step.output_map.values() {
            let t = tensors.entry(tensor.clone()).or_default();
            if t.is_output {
                return err(format!(
                    "ensemble tensor '{tensor}' can appear in an output map only once for ensemble '{m}' step {i}"
                ));
            }
            t.is_output = true;
            outputs.push(tensor.clone());
        }
        for tensor in step.input_map.values() {
            tensors.entry(tensor.clone()).or_default();
            for out in &outputs {
                if let Some(o) = tensors.get_mut(out) {
                    o.prev.push(tensor.clone());
                }
            }
            if let Some(t) = tensors.get_mut(tensor) {
                t.next.extend(outputs.iter().cloned());
            }
        }
    }
    let mut queue = VecDeque::new();
    for input in &config.input {
        let Some(t) = tensors.get_mut(&input.name) else {
            return err(format!(
                "ensemble input '{}' for ensemble {m}' is not used",
                input.name
            ));
        };
        t.ready = true;
        queue.push_back(input.name.clone());
    }
    let mut outputs = BTreeSet::new();
    for output in &config.output {
        if !tensors.contains_key(&output.name) {
            return err(format!(
                "ensemble output '{}' for ensemble {m}' is not used",
                output.name
            ));
        }
        outputs.insert(output.name.clone());
    }
    while let Some(name) = queue.pop_front() {
        let next = tensors
            .get(&name)
            .map(|t| t.next.clone())
            .unwrap_or_default();
        for n in next {
            let ready = match tensors.get(&n) {
                Some(t) if !t.ready => t
                    .prev
                    .iter()
                    .all(|p| tensors.get(p).is_some_and(|p| p.ready)),
                _ => continue,
            };
            if ready {
                if let Some(t) = tensors.get_mut(&n) {
                    t.ready = true;
                }
                queue.push_back(n);
            }
        }
    }
    for output in &config.output {
        if tensors.get(&output.name).is_some_and(|t| !t.ready) {
            let mut msg = format!("output '{}' for ensemble '{m}' is not written", output.name);
            if let Some(root) = unconnected_root(&tensors, &output.name) {
                msg.push_str(&format!(
                    ": at least one of its depending tensors, '{root}', is not connected"
                ));
            }
            return err(msg);
        }
    }
    for (name, t) in &tensors {
        if !t.ready || (t.next.is_empty() && !outputs.contains(name)) {
            return err(format!(
                "ensemble tensor '{name}' is unused in ensemble '{m}'"
            ));
        }
    }
    Ok(())
}

/// Follows not-ready producers back to a tensor that nothing produces.
fn unconnected_root(tensors: &BTreeMap<String, EnsembleTensor>, from: &str) -> Option<String> {
    let mut seen = BTreeSet::new();
    let mut stack = vec![from.to_string()];
    while let Some(name) = stack.pop() {
        if !seen.insert(name.clone()) {
            continue;
        }
        let t = tensors.get(&name)?;
        if t.prev.is_empty() && !t.ready && name != from {
            return Some(name);
        }
        for p in t.prev.iter().rev() {
            if tensors.get(p).is_some_and(|p| !p.ready) {
                stack.push(p.clone());
            }
        }
    }
    None
}

/// Element count in Triton's sense: -1 when any dim is variable, 0 for no dims.
fn element_count(dims: &[i64]) -> Option<i64> {
    if dims.contains(&-1) {
        return Some(-1);
    }
    let mut it = dims.iter();
    let Some(&first) = it.next() else {
        return Some(0);
    };
    it.try_fold(first, |acc, &d| acc.checked_mul(d))
}

fn segments(dims: &[i64]) -> Vec<i64> {
    let mut out = Vec::new();
    let mut cur: i64 = 1;
    for &d in dims {
        if d == -1 {
            out.push(cur);
            cur = 1;
        } else {
            cur = cur.saturating_mul(d);
        }
    }
    out.push(cur);
    out
}

fn validate_io_shape(
    name: &str,
    data_type: i32,
    dims: &[i64],
    reshape: Option<&ModelTensorReshape>,
    config: &ModelConfig,
    prefix: &str,
) -> Result<()> {
    let (m, max_batch_size) = (&config.name, config.max_batch_size);
    if name.is_empty() {
        return err(format!("{prefix}must specify 'name' for {m}"));
    }
    if data_type == DataType::TypeInvalid as i32 {
        return err(format!("{prefix}'{name}' must specify 'data_type' for {m}"));
    }
    if dims.is_empty() {
        return err(format!("{prefix}'{name}' must specify 'dims' for {m}"));
    }
    if dims.iter().any(|&d| d < 1 && d != -1) {
        return err(format!("{prefix}'{name}' dimension must be integer >= 1, or -1 to indicate a variable-size dimension for {m}"));
    }
    let overflow = || {
        err(format!(
            "element count for tensor '{name}' exceeds maximum size of {}",
            i64::MAX
        ))
    };
    let Some(dims_size) = element_count(dims) else {
        return overflow();
    };
    if let Some(reshape) = reshape {
        let shape = &reshape.shape;
        if max_batch_size == 0 && shape.is_empty() {
            return err(format!("{prefix}'{name}' cannot have empty reshape for non-batching model as scalar tensors are not supported for {m}"));
        }
        if shape.iter().any(|&d| d < 1 && d != -1) {
            return err(format!("{prefix}'{name}' reshape dimensions must be integer >= 1, or -1 to indicate a variable-size dimension for {m}"));
        }
        let Some(reshape_size) = element_count(shape) else {
            return overflow();
        };
        if dims_size != reshape_size && (reshape_size != 0 || dims_size != 1) {
            return err(format!(
                "{prefix}'{name}' has different size for dims and reshape for {m}"
            ));
        }
        if dims_size == -1 {
            let (a, b) = (segments(dims), segments(shape));
            if a.len() != b.len() {
                return err(format!("{prefix}'{name}' has different number of variable-size dimensions for dims and reshape for {m}"));
            }
            if a != b {
                return err(format!(
                    "{prefix}'{name}' has different size for dims and reshape for {m}"
                ));
            }
        }
    }
    Ok(())
}

/// Shape tensors and non-linear I/O formats exist only for TensorRT.
fn tensorrt_only_flags(shape_tensor: bool, non_linear: bool, config: &ModelConfig) -> Result<()> {
    let m = &config.name;
    let tensorrt = config.platform == "tensorrt_plan" || config.backend == "tensorrt";
    if shape_tensor && !tensorrt {
        return err(format!(
            "shape tensors are only supported for TensorRT platform for {m}"
        ));
    }
    if non_linear && !tensorrt {
        return err(format!(
            "Non-linear IO format is only supported for the TensorRT platform for {m}"
        ));
    }
    Ok(())
}

fn validate_input(io: &ModelInput, config: &ModelConfig) -> Result<()> {
    let m = &config.name;
    let r = io.reshape.as_ref();
    validate_io_shape(&io.name, io.data_type, &io.dims, r, config, "model input ")?;
    use super::model_input::Format;
    // Stricter than Triton (an open enum there): a format number no format has is refused.
    if Format::try_from(io.format).is_err() {
        return err(format!(
            "unexpected format {} for model input '{}' of {m}",
            io.format, io.name
        ));
    }
    if matches!(io.format(), Format::Nhwc | Format::Nchw) && io.dims.len() != 3 {
        return err(format!("model input NHWC/NCHW require 3 dims for {m}"));
    }
    tensorrt_only_flags(io.is_shape_tensor, io.is_non_linear_format_io, config)
}

fn validate_output(io: &ModelOutput, config: &ModelConfig) -> Result<()> {
    let r = io.reshape.as_ref();
    validate_io_shape(&io.name, io.data_type, &io.dims, r, config, "model output ")?;
    tensorrt_only_flags(io.is_shape_tensor, io.is_non_linear_format_io, config)
}

/// `ValidateModelIOConfig`: every input and output shape, then batch inputs/outputs.
pub fn validate_io_config(config: &ModelConfig) -> Result<()> {
    for io in &config.input {
        validate_input(io, config)?;
    }
    for io in &config.output {
        validate_output(io, config)?;
    }
    let m = &config.name;
    let inputs: BTreeSet<&str> = config.input.iter().map(|i| i.name.as_str()).collect();
    for bi in &config.batch_input {
        if bi.source_input.len() != 1 {
            let kind = batch_input::Kind::try_from(bi.kind)
                .map(|k| k.as_str_name().to_string())
                .unwrap_or_else(|_| bi.kind.to_string());
            return err(format!(
                "batch input kind '{kind}' expects 1 source input, got {} for {m}",
                bi.source_input.len()
            ));
        }
        if !matches!(bi.data_type(), DataType::TypeInt32 | DataType::TypeFp32) {
            return err(format!(
                "batch input data type must be TYPE_INT32 or TYPE_FP32 for {m}"
            ));
        }
        for s in &bi.source_input {
            if !inputs.contains(s.as_str()) {
                return err(format!("unknown source input name '{s}' for {m}"));
            }
        }
    }
    let outputs: BTreeSet<&str> = config.output.iter().map(|o| o.name.as_str()).collect();
    let mut targets = BTreeSet::new();
    for bo in &config.batch_output {
        if bo.source_input.len() != 1 {
            return err(format!(
                "batch output kind 'BATCH_SCATTER_WITH_INPUT_SHAPE' expects 1 source input, got {} for {m}",
                bo.source_input.len()
            ));
        }
        for s in &bo.source_input {
            if !inputs.contains(s.as_str()) {
                return err(format!("unknown source input name '{s}' for {m}"));
            }
        }
        for t in &bo.target_name {
            if !outputs.contains(t.as_str()) {
                return err(format!("unknown target output name '{t}' for {m}"));
            }
            if !targets.insert(t.as_str()) {
                return err(format!(
                    "target output name '{t}' can only be specified once for {m}"
                ));
            }
        }
    }
    Ok(())
}

/// `ValidateInstanceGroup` for a build without GPU execution (`gpu_support == false`) or with
/// `gpu_count` usable GPUs.
pub fn validate_instance_groups(
    config: &ModelConfig,
    gpu_support: bool,
    gpu_count: usize,
) -> Result<()> {
    if config.is_ensemble() {
        return Ok(());
    }
    let m = &config.name;
    if config.instance_group.is_empty() {
        return err(format!(
            "must specify one or more 'instance group's for {m}"
        ));
    }
    for g in &config.instance_group {
        let name = &g.name;
        if Kind::try_from(g.kind).is_err() {
            // An enum number outside the schema (Triton accepts it and treats it as AUTO).
            return err(format!(
                "instance group {name} of model {m} has unexpected kind {}",
                g.kind
            ));
        }
        match g.kind() {
            Kind::Model if !g.gpus.is_empty() => {
                return err(format!("instance group {name} of model {m} has kind KIND_MODEL but specifies one or more GPUs"));
            }
            Kind::Cpu if !g.gpus.is_empty() => {
                return err(format!("instance group {name} of model {m} has kind KIND_CPU but specifies one or more GPUs"));
            }
            Kind::Gpu if !gpu_support => {
                return err(format!("instance group {name} of model {m} has kind KIND_GPU but server does not support GPUs"));
            }
            // As Triton: only a group that lists no GPU says none are available; listed ids
            // are checked one by one (with no GPU, the list after "are:" is empty).
            Kind::Gpu if g.gpus.is_empty() && gpu_count == 0 => {
                return err(format!("instance group {name} of model {m} has kind KIND_GPU but no GPUs are available"));
            }
            Kind::Gpu => {
                for &id in &g.gpus {
                    if id < 0 || id as usize >= gpu_count {
                        let ids: Vec<String> = (0..gpu_count).map(|i| i.to_string()).collect();
                        return err(format!("instance group {name} of model {m} specifies invalid or unsupported gpu id {id}. GPUs with at least the minimum required CUDA compute compatibility of 6.0 are: {}", ids.join(" ")));
                    }
                }
            }
            _ => {}
        }
        if !g.profile.is_empty() && config.backend != "tensorrt" {
            return err(format!("instance group {name} of model {m} and platform {}specifies profile field which is only supported for TensorRT models", config.platform));
        }
    }
    Ok(())
}
