//! Triton's `NormalizeModelConfig` and `NormalizeInstanceGroup`: defaults filled in before
//! validation, so that the completed config reads the same as Triton's.

use super::{
    model_config::SchedulingChoice, model_instance_group::Kind, model_sequence_batching,
    model_version_policy, ModelConfig, ModelInstanceGroup, ModelOptimizationPolicy,
    ModelVersionPolicy,
};
use model_sequence_batching::StrategyChoice;

/// Fills Triton's defaults: version policy `latest { num_versions: 1 }`, preferred batch size
/// `[max_batch_size]` for dynamic (and oldest sequence) batching, the sequence idle time, and
/// pinned input/output buffers for non-ensemble models.
pub fn normalize(config: &mut ModelConfig) {
    if config.version_policy.is_none() {
        config.version_policy = Some(ModelVersionPolicy {
            policy_choice: Some(model_version_policy::PolicyChoice::Latest(
                model_version_policy::Latest { num_versions: 1 },
            )),
        });
    }
    let mbs = config.max_batch_size;
    match &mut config.scheduling_choice {
        Some(SchedulingChoice::DynamicBatching(db))
            if db.preferred_batch_size.is_empty() && mbs > 0 =>
        {
            db.preferred_batch_size.push(mbs);
        }
        Some(SchedulingChoice::SequenceBatching(sb)) => {
            if sb.max_sequence_idle_microseconds == 0 {
                sb.max_sequence_idle_microseconds = 1_000_000;
            }
            if let Some(StrategyChoice::Oldest(o)) = &mut sb.strategy_choice {
                if o.preferred_batch_size.is_empty() && mbs > 0 {
                    o.preferred_batch_size.push(mbs);
                }
            }
        }
        _ => {}
    }
    if !config.is_ensemble() {
        let opt = config
            .optimization
            .get_or_insert_with(ModelOptimizationPolicy::default);
        let pinned = super::model_optimization_policy::PinnedMemoryBuffer { enable: true };
        opt.input_pinned_memory.get_or_insert(pinned);
        opt.output_pinned_memory.get_or_insert(pinned);
    }
}

/// Triton's instance-group normalisation (skipped for ensembles): a missing group becomes one
/// group named after the model, unnamed groups are named `<model>_<i>`, KIND_AUTO resolves to
/// GPU or CPU, a count below 1 becomes 1 (2 for KIND_CPU on onnxruntime/tensorflow), and a GPU
/// group without `gpus` takes every GPU. `gpu_count` is the number of usable GPUs.
pub fn normalize_instance_groups(config: &mut ModelConfig, gpu_count: usize) {
    if config.is_ensemble() {
        return;
    }
    if config.instance_group.is_empty() {
        config.instance_group.push(ModelInstanceGroup {
            name: config.name.clone(),
            ..Default::default()
        });
    }
    let backend = config.backend.clone();
    let name = config.name.clone();
    for (i, group) in config.instance_group.iter_mut().enumerate() {
        if group.name.is_empty() {
            group.name = format!("{name}_{i}");
        }
        // Only KIND_AUTO itself: an unknown number stays as it is (C++ open-enum semantics)
        // and validation refuses it.
        if group.kind == Kind::Auto as i32 {
            let missing_gpu = group.gpus.iter().any(|&g| g < 0 || g as usize >= gpu_count);
            group.set_kind(if gpu_count == 0 || missing_gpu {
                Kind::Cpu
            } else {
                Kind::Gpu
            });
        }
        if group.count < 1 {
            group.count = if group.kind() == Kind::Cpu
                && (backend == "onnxruntime" || backend == "tensorflow")
            {
                2
            } else {
                1
            };
        }
        if group.kind() == Kind::Gpu && group.gpus.is_empty() {
            group.gpus = (0..gpu_count as i32).collect();
        }
    }
}
