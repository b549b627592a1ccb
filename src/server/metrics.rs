//! Prometheus metrics in text format with Triton's names and labels (`model`, `version`),
//! from the statistics the repository keeps for every ready version.

use std::fmt::Write;

use crate::{ModelStatistics, Repository};

type Pick = fn(&ModelStatistics) -> u64;

/// Triton's counters: name, help text, value.
const COUNTERS: &[(&str, &str, Pick)] = &[
    (
        "nv_inference_request_success",
        "Number of successful inference requests, all batch sizes",
        |s| s.success.count,
    ),
    (
        "nv_inference_request_failure",
        "Number of failed inference requests, all batch sizes",
        |s| s.fail.count,
    ),
    (
        "nv_inference_count",
        "Number of inferences performed (does not include cached requests)",
        |s| s.inference_count,
    ),
    (
        "nv_inference_exec_count",
        "Number of model executions performed (does not include cached requests)",
        |s| s.execution_count,
    ),
    (
        "nv_inference_request_duration_us",
        "Cumulative inference request duration in microseconds (includes cached requests)",
        |s| (s.success.ns + s.fail.ns) / 1000,
    ),
    (
        "nv_inference_queue_duration_us",
        "Cumulative inference queuing duration in microseconds (includes cached requests)",
        |s| s.queue.ns / 1000,
    ),
    (
        "nv_inference_compute_input_duration_us",
        "Cumulative compute input duration in microseconds (does not include cached requests)",
        |s| s.compute_input.ns / 1000,
    ),
    (
        "nv_inference_compute_infer_duration_us",
        "Cumulative compute inference duration in microseconds (does not include cached requests)",
        |s| s.compute_infer.ns / 1000,
    ),
    (
        "nv_inference_compute_output_duration_us",
        "Cumulative inference compute output duration in microseconds (does not include cached requests)",
        |s| s.compute_output.ns / 1000,
    ),
];

/// Prometheus label values escape `\`, `"` and newlines.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The `/metrics` page.
pub(crate) fn render(repo: &Repository) -> String {
    let stats = repo.statistics();
    let mut out = String::new();
    for (name, help, pick) in COUNTERS {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} counter");
        for s in &stats {
            let _ = writeln!(
                out,
                "{name}{{model=\"{}\",version=\"{}\"}} {}",
                label(&s.name),
                s.version,
                pick(s)
            );
        }
    }
    out
}
