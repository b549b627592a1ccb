//! Soak test: 16 threads call the tutorial-architecture recogniser (dynamic batching, two
//! instances) for a fixed time while another thread reloads it, loads and unloads a second
//! model, and a POLL-mode repository over the same folder polls; a fourth of the callers use a
//! third model nothing reloads. Afterwards: every answer was the right one for its own input
//! (checked against single-request results), that steady model's statistics count exactly the
//! requests its callers saw answered (successes, rows, queue entries, executions by batch
//! size), no deadlock (a watchdog fails the test), and memory stayed steady.
//!
//! `soak_short` runs in CI (5 s); `soak_long` is ignored by default:
//! `SOAK_SECONDS=600 cargo test --release --test soak -- --ignored`.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use common::{fixtures, rss_kib};
use modelyard::{ErrorKind, ModelControl, Repository, Tensor};
use ndarray::ArrayD;

fn config(count: usize) -> String {
    format!(
        r#"backend: "onnxruntime" max_batch_size: 8
input [ {{ name: "input.1" data_type: TYPE_FP32 dims: [ 1, 32, 100 ] }} ]
output [ {{ name: "308" data_type: TYPE_FP32 dims: [ 26, 37 ] }} ]
dynamic_batching {{ max_queue_delay_microseconds: 1000 }}
instance_group [ {{ count: {count} kind: KIND_CPU }} ]"#
    )
}

fn soak(seconds: u64) {
    let tmp = tempfile::tempdir().unwrap();
    let model = fixtures().join("tutorial_repository_part2/text_recognition/1/model.onnx");
    for name in ["text_recognition", "churn", "steady"] {
        let dir = tmp.path().join(name);
        std::fs::create_dir_all(dir.join("1")).unwrap();
        std::fs::copy(&model, dir.join("1/model.onnx")).unwrap();
        std::fs::write(dir.join("config.pbtxt"), config(2)).unwrap();
    }
    let explicit = Repository::builder(tmp.path())
        .model_control(ModelControl::Explicit)
        .startup_models(["*"])
        .load()
        .unwrap();
    let polled = Repository::builder(tmp.path())
        .model_control(ModelControl::Poll)
        .load()
        .unwrap();

    // Eight distinct crops and their single-request answers.
    let inputs: Vec<Tensor> = (0..8)
        .map(|k| {
            Tensor::from(ArrayD::<f32>::from_shape_fn(vec![1, 1, 32, 100], |d| {
                (((d[2] * 7 + d[3] * (k + 1)) % 23) as f32) / 11.0 - 1.0
            }))
        })
        .collect();
    let reference: Vec<ArrayD<f32>> = inputs
        .iter()
        .map(|x| {
            let out = explicit
                .model("text_recognition")
                .unwrap()
                .infer([("input.1", x.clone())])
                .unwrap();
            out.get("308").unwrap().view::<f32>().unwrap().to_owned()
        })
        .collect();

    let stop = Arc::new(AtomicBool::new(false));
    let progress = Arc::new(AtomicU64::new(0));
    let (done_tx, done_rx) = mpsc::channel();
    let mut callers = Vec::new();
    for t in 0..16 {
        let (explicit, polled, inputs, reference, stop, progress, done) = (
            explicit.clone(),
            polled.clone(),
            inputs.clone(),
            reference.clone(),
            stop.clone(),
            progress.clone(),
            done_tx.clone(),
        );
        callers.push(std::thread::spawn(move || {
            let (mut steady_ok, mut unavailable) = (0u64, 0u64);
            let mut i = t;
            while !stop.load(Ordering::SeqCst) {
                i = (i * 7 + 3) % 8;
                let (repo, name) = match t % 4 {
                    0 => (&polled, "text_recognition"),
                    1 => (&explicit, "churn"),
                    2 => (&explicit, "text_recognition"),
                    _ => (&explicit, "steady"),
                };
                let result = repo
                    .model(name)
                    .and_then(|m| m.infer([("input.1", inputs[i].clone())]));
                match result {
                    Ok(out) => {
                        steady_ok += u64::from(name == "steady");
                        let got = out.get("308").unwrap().view::<f32>().unwrap();
                        let diff = got
                            .iter()
                            .zip(reference[i].iter())
                            .map(|(a, b)| (a - b).abs())
                            .fold(0.0f32, f32::max);
                        assert!(
                            diff <= 1e-4,
                            "thread {t}: answer for input {i} off by {diff}"
                        );
                    }
                    // Only the model being unloaded and loaded may be missing.
                    Err(e) if name == "churn" && e.kind() == ErrorKind::Unavailable => {
                        unavailable += 1;
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Err(e) => panic!("thread {t}: {name} failed: {e}"),
                }
                progress.fetch_add(1, Ordering::Relaxed);
            }
            done.send(()).unwrap();
            (steady_ok, unavailable)
        }));
    }
    let control = {
        let (explicit, polled, stop, root) = (
            explicit.clone(),
            polled.clone(),
            stop.clone(),
            tmp.path().to_path_buf(),
        );
        std::thread::spawn(move || {
            let mut rounds = 0u64;
            while !stop.load(Ordering::SeqCst) {
                explicit.unload_model("churn").unwrap();
                std::thread::sleep(Duration::from_millis(20));
                explicit.load_model("churn").unwrap();
                std::fs::write(
                    root.join("text_recognition/config.pbtxt"),
                    config(1 + (rounds as usize % 2)),
                )
                .unwrap();
                explicit.load_model("text_recognition").unwrap();
                polled.poll().unwrap();
                rounds += 1;
            }
            rounds
        })
    };

    let start = Instant::now();
    let mut rss_start = None;
    let mut last = 0;
    let mut last_change = Instant::now();
    while start.elapsed() < Duration::from_secs(seconds) {
        std::thread::sleep(Duration::from_millis(250));
        if rss_start.is_none() && start.elapsed() > Duration::from_secs(seconds.min(10) / 2) {
            rss_start = rss_kib();
        }
        let now = progress.load(Ordering::Relaxed);
        if now != last {
            (last, last_change) = (now, Instant::now());
        }
        assert!(
            last_change.elapsed() < Duration::from_secs(30),
            "watchdog: no call finished for 30 s (deadlock?)"
        );
    }
    stop.store(true, Ordering::SeqCst);
    for _ in 0..16 {
        done_rx
            .recv_timeout(Duration::from_secs(60))
            .expect("watchdog: a caller did not stop within 60 s");
    }
    let (mut steady_ok, mut unavailable) = (0, 0);
    for h in callers {
        let (s, u) = h.join().unwrap();
        (steady_ok, unavailable) = (steady_ok + s, unavailable + u);
    }
    let rounds = control.join().unwrap();
    let calls = progress.load(Ordering::SeqCst);
    assert!(
        steady_ok > 20 && calls > 100 && rounds > 2,
        "{calls} calls, {steady_ok} to the steady model, control rounds {rounds}"
    );
    // The steady model's statistics count what its callers saw, one row per request.
    let stats = explicit.model("steady").unwrap().statistics();
    assert_eq!(stats.success.count, steady_ok, "successes: {stats}");
    assert_eq!(stats.inference_count, steady_ok, "inferences: {stats}");
    assert_eq!(stats.queue.count, steady_ok, "queue entries: {stats}");
    assert_eq!(stats.fail.count, 0, "failures: {stats}");
    let executed_rows: u64 = stats
        .batch_stats
        .iter()
        .map(|(size, b)| size * b.compute_infer.count)
        .sum();
    let executions: u64 = stats
        .batch_stats
        .values()
        .map(|b| b.compute_infer.count)
        .sum();
    assert_eq!(executed_rows, steady_ok, "rows by batch size: {stats}");
    assert_eq!(executions, stats.execution_count, "executions: {stats}");
    assert!(
        stats
            .batch_stats
            .keys()
            .all(|&size| (1..=8).contains(&size)),
        "batch sizes within max_batch_size: {stats}"
    );
    // Statistics agree with what the callers saw on the versions still loaded.
    let served: u64 = explicit
        .statistics()
        .iter()
        .chain(polled.statistics().iter())
        .map(|s| s.fail.count)
        .sum();
    assert_eq!(served, 0, "no request failed inside a loaded version");
    if let (Some(before), Some(after)) = (rss_start, rss_kib()) {
        assert!(
            after < before + 200 * 1024,
            "RSS grew from {before} KiB to {after} KiB"
        );
        println!(
            "soak {seconds}s: {calls} calls ({unavailable} unavailable while churn was unloaded), {rounds} control rounds, {} executions of {steady_ok} steady requests, RSS {before} -> {after} KiB",
            stats.execution_count
        );
    }
}

#[test]
fn soak_short() {
    soak(5);
}

#[test]
#[ignore]
fn soak_long() {
    let seconds = std::env::var("SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    soak(seconds);
}
