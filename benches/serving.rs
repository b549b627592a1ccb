//! Serving under load: throughput and latency with 1, 4 and 16 concurrent callers, instance
//! count 1 vs 2, with and without dynamic batching, on the tutorial-architecture recogniser
//! (Part 2 config: batch dim, 1x32x100 crops) and the PaddleOCR recogniser (3x48x320 crops).
//!
//! Each criterion iteration sends 16 requests spread over the callers; the reported time is
//! the wall time per request (1 / throughput). The latency of every request is recorded too,
//! and p50/p99 per configuration are printed after each group.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use modelyard::{Model, Repository, Tensor};
use ndarray::ArrayD;

const REQUESTS: usize = 16;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

struct Case {
    label: &'static str,
    model_file: PathBuf,
    config: &'static str,
    input: (&'static str, Vec<usize>),
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            label: "tutorial_str",
            model_file: fixtures().join("tutorial_repository_part2/text_recognition/1/model.onnx"),
            config: r#"backend: "onnxruntime" max_batch_size: 8
input [ { name: "input.1" data_type: TYPE_FP32 dims: [ 1, 32, 100 ] } ]
output [ { name: "308" data_type: TYPE_FP32 dims: [ 26, 37 ] } ]"#,
            input: ("input.1", vec![1, 1, 32, 100]),
        },
        Case {
            label: "ppocr_rec",
            model_file: fixtures().join("ocr_repository/text_recognition/1/model.onnx"),
            config: r#"backend: "onnxruntime" max_batch_size: 6
input [ { name: "x" data_type: TYPE_FP32 dims: [ 3, 48, -1 ] } ]
output [ { name: "softmax_11.tmp_0" data_type: TYPE_FP32 dims: [ -1, 6625 ] } ]"#,
            input: ("x", vec![1, 3, 48, 320]),
        },
    ]
}

fn load(case: &Case, count: usize, batching: bool) -> (tempfile::TempDir, Model) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m");
    std::fs::create_dir_all(dir.join("1")).unwrap();
    std::fs::copy(&case.model_file, dir.join("1/model.onnx")).unwrap();
    let scheduling = if batching {
        "dynamic_batching { max_queue_delay_microseconds: 2000 }"
    } else {
        ""
    };
    std::fs::write(
        dir.join("config.pbtxt"),
        format!(
            "{}\ninstance_group [ {{ count: {count} kind: KIND_CPU }} ]\n{scheduling}",
            case.config
        ),
    )
    .unwrap();
    let repo = Repository::load(tmp.path()).unwrap();
    let model = repo.model("m").unwrap();
    (tmp, model)
}

/// Sends `REQUESTS` requests from `callers` threads; returns the wall time and appends every
/// request's latency.
fn round(
    model: &Model,
    input: &(String, Tensor),
    callers: usize,
    lat: &Mutex<Vec<Duration>>,
) -> Duration {
    let barrier = Arc::new(Barrier::new(callers + 1));
    let per = REQUESTS / callers;
    let handles: Vec<_> = (0..callers)
        .map(|_| {
            let (model, input, barrier) = (model.clone(), input.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                let mut mine = Vec::with_capacity(per);
                for _ in 0..per {
                    let t = Instant::now();
                    model.infer([input.clone()]).unwrap();
                    mine.push(t.elapsed());
                }
                mine
            })
        })
        .collect();
    barrier.wait();
    let start = Instant::now();
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.join().unwrap());
    }
    let wall = start.elapsed();
    lat.lock().unwrap().extend(all);
    wall
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).copied().unwrap_or_default()
}

fn serving(c: &mut Criterion) {
    for case in cases() {
        let mut g = c.benchmark_group(format!("serving_{}", case.label));
        g.sample_size(10)
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(4));
        let mut table = Vec::new();
        for batching in [false, true] {
            for count in [1, 2] {
                let (_tmp, model) = load(&case, count, batching);
                let x = ArrayD::<f32>::from_shape_fn(case.input.1.clone(), |d| {
                    ((d[2] * 3 + d[3]) % 17) as f32 / 8.0 - 1.0
                });
                let input = (case.input.0.to_string(), Tensor::from(x));
                model.infer([input.clone()]).unwrap();
                for callers in [1, 4, 16] {
                    let lat = Mutex::new(Vec::new());
                    let before = model.statistics();
                    let id = format!(
                        "count{count}{}/callers{callers}",
                        if batching { "_batched" } else { "" }
                    );
                    g.bench_function(BenchmarkId::from_parameter(&id), |b| {
                        b.iter_custom(|iters| {
                            let mut total = Duration::ZERO;
                            for _ in 0..iters {
                                total += round(&model, &input, callers, &lat);
                            }
                            total / REQUESTS as u32
                        })
                    });
                    let mut l = lat.into_inner().unwrap();
                    l.sort();
                    let s = model.statistics();
                    let mean_batch = (s.inference_count - before.inference_count) as f64
                        / (s.execution_count - before.execution_count).max(1) as f64;
                    table.push(format!(
                        "{:<28} p50 {:>8.2} ms  p99 {:>8.2} ms  mean batch {mean_batch:.2}",
                        id,
                        percentile(&l, 0.5).as_secs_f64() * 1e3,
                        percentile(&l, 0.99).as_secs_f64() * 1e3,
                    ));
                }
            }
        }
        g.finish();
        println!("\nlatency, {}:", case.label);
        for line in table {
            println!("  {line}");
        }
    }
}

criterion_group!(benches, serving);
criterion_main!(benches);
