//! Per-version statistics as Triton's statistics extension defines them (spec section (f)),
//! recorded per request and per execution.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;

use super::scheduler::Done;

/// A count and a total duration (Triton's `duration_stat`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DurationStat {
    /// How many.
    pub count: u64,
    /// Total nanoseconds.
    pub ns: u64,
}

impl DurationStat {
    fn add(&mut self, d: Duration) {
        self.count += 1;
        self.ns += u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    }

    fn mean_us(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.ns as f64 / self.count as f64 / 1e3
        }
    }
}

/// Compute durations of the executions of one batch size.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchStats {
    /// Time preparing inputs.
    pub compute_input: DurationStat,
    /// Time in the model.
    pub compute_infer: DurationStat,
    /// Time preparing outputs.
    pub compute_output: DurationStat,
}

/// Statistics of one model version.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModelStatistics {
    /// Model name.
    pub name: String,
    /// Version.
    pub version: i64,
    /// Milliseconds since the epoch of the last execution (0: never).
    pub last_inference: u64,
    /// Inferences: the sum of the batch sizes of successful requests.
    pub inference_count: u64,
    /// Executions of the model.
    pub execution_count: u64,
    /// Successful requests, request start to end.
    pub success: DurationStat,
    /// Failed requests, request start to end.
    pub fail: DurationStat,
    /// Time successful requests waited for an instance.
    pub queue: DurationStat,
    /// Input preparation of successful requests.
    pub compute_input: DurationStat,
    /// Model execution of successful requests.
    pub compute_infer: DurationStat,
    /// Output preparation of successful requests.
    pub compute_output: DurationStat,
    /// Per executed batch size.
    pub batch_stats: BTreeMap<u64, BatchStats>,
}

impl fmt::Display for ModelStatistics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} v{}: {} inferences, {} executions, {} ok, {} failed",
            self.name,
            self.version,
            self.inference_count,
            self.execution_count,
            self.success.count,
            self.fail.count
        )?;
        writeln!(f, "  {:<16} {:>10} {:>14}", "stage", "count", "mean µs")?;
        for (label, s) in [
            ("request", self.success),
            ("queue", self.queue),
            ("compute_input", self.compute_input),
            ("compute_infer", self.compute_infer),
            ("compute_output", self.compute_output),
            ("failed", self.fail),
        ] {
            writeln!(f, "  {label:<16} {:>10} {:>14.1}", s.count, s.mean_us())?;
        }
        for (size, b) in &self.batch_stats {
            writeln!(
                f,
                "  batch {size:<10} {:>10} {:>14.1}",
                b.compute_infer.count,
                b.compute_infer.mean_us()
            )?;
        }
        Ok(())
    }
}

/// The running statistics of a version.
#[derive(Default)]
pub(crate) struct Recorder {
    stats: Mutex<ModelStatistics>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Recorder {
    pub(crate) fn new(name: &str, version: i64) -> Recorder {
        Recorder {
            stats: Mutex::new(ModelStatistics {
                name: name.to_string(),
                version,
                ..Default::default()
            }),
        }
    }

    /// One successful request of `batch` rows.
    pub(crate) fn request_ok(&self, total: Duration, done: &Done, batch: u64) {
        let mut s = self.stats.lock();
        s.success.add(total);
        s.queue.add(done.queue);
        s.compute_input.add(done.input);
        s.compute_infer.add(done.infer);
        s.compute_output.add(done.output);
        s.inference_count += batch.max(1);
    }

    /// One failed request.
    pub(crate) fn request_failed(&self, total: Duration) {
        self.stats.lock().fail.add(total);
    }

    /// One execution of a batch of `batch` rows (Triton counts batch statistics per
    /// execution, request statistics per request).
    pub(crate) fn execution(&self, batch: u64, input: Duration, infer: Duration, output: Duration) {
        let mut s = self.stats.lock();
        s.execution_count += 1;
        s.last_inference = now_ms();
        let b = s.batch_stats.entry(batch.max(1)).or_default();
        b.compute_input.add(input);
        b.compute_infer.add(infer);
        b.compute_output.add(output);
    }

    /// One execution that failed.
    pub(crate) fn execution_failed(&self) {
        let mut s = self.stats.lock();
        s.execution_count += 1;
        s.last_inference = now_ms();
    }

    /// Forgets what was recorded (the warmup samples' requests: Triton keeps them out of a
    /// model's inference statistics).
    pub(crate) fn reset(&self) {
        let mut s = self.stats.lock();
        *s = ModelStatistics {
            name: std::mem::take(&mut s.name),
            version: s.version,
            ..Default::default()
        };
    }

    pub(crate) fn snapshot(&self) -> ModelStatistics {
        self.stats.lock().clone()
    }
}
