//! Statistics (Triton's statistics extension) and instance groups.

mod common;

use common::{block_on, ADD_SUB};

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use modelyard::config::ModelConfig;
use modelyard::{NativeModel, Repository, Tensor};
use ndarray::Array2;

#[test]
fn counts_add_up() {
    let tmp = tempfile::tempdir().unwrap();
    common::add_sub_model(tmp.path(), "m", ADD_SUB);
    let repo = Repository::load(tmp.path()).unwrap();
    let m = repo.model("m").unwrap();
    assert_eq!(m.statistics().execution_count, 0);
    for rows in [1, 2, 3, 2] {
        let t = Tensor::from(Array2::<f32>::ones((rows, 16)));
        m.infer([("INPUT0", t.clone()), ("INPUT1", t)]).unwrap();
    }
    let bad = Tensor::from(Array2::<f64>::ones((1, 16)));
    m.infer([("INPUT0", bad.clone()), ("INPUT1", bad)])
        .unwrap_err();
    let s = m.statistics();
    assert_eq!((s.name.as_str(), s.version), ("m", 1));
    assert_eq!(s.success.count, 4);
    assert_eq!(s.fail.count, 1);
    assert_eq!(s.inference_count, 8, "sum of batch sizes");
    assert_eq!(s.execution_count, 4);
    for d in [s.queue, s.compute_input, s.compute_infer, s.compute_output] {
        assert_eq!(d.count, 4);
    }
    assert!(s.success.ns >= s.compute_infer.ns && s.compute_infer.ns > 0);
    let sizes: Vec<(u64, u64)> = s
        .batch_stats
        .iter()
        .map(|(b, st)| (*b, st.compute_infer.count))
        .collect();
    assert_eq!(sizes, [(1, 1), (2, 2), (3, 1)]);
    assert!(s.last_inference > 1_700_000_000_000);
    assert_eq!(repo.statistics(), vec![s.clone()]);
    let table = s.to_string();
    assert!(
        table.starts_with("m v1: 8 inferences, 4 executions, 4 ok, 1 failed"),
        "{table}"
    );
}

/// Sleeps and records the highest number of concurrent executions.
struct Slow {
    running: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
}

impl NativeModel for Slow {
    fn execute(
        &self,
        inputs: &[(String, Tensor)],
        _: &[String],
    ) -> modelyard::Result<Vec<(String, Tensor)>> {
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(100));
        self.running.fetch_sub(1, Ordering::SeqCst);
        Ok(vec![("OUT".into(), inputs[0].1.clone())])
    }
}

fn slow_model(count: i32, peak: &Arc<AtomicUsize>) -> (tempfile::TempDir, modelyard::Model) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("slow");
    std::fs::create_dir_all(dir.join("1")).unwrap();
    std::fs::write(
        dir.join("config.pbtxt"),
        format!(r#"backend: "slow" input [ {{ name: "IN" data_type: TYPE_FP32 dims: [ 1 ] }} ] output [ {{ name: "OUT" data_type: TYPE_FP32 dims: [ 1 ] }} ] instance_group [ {{ count: {count} kind: KIND_CPU }} ]"#),
    )
    .unwrap();
    let (p, running) = (peak.clone(), Arc::new(AtomicUsize::new(0)));
    let repo = Repository::builder(tmp.path())
        .native_backend("slow", move |_: &ModelConfig| {
            Ok(Box::new(Slow {
                running: running.clone(),
                peak: p.clone(),
            }) as Box<dyn NativeModel>)
        })
        .load()
        .unwrap();
    (tmp, repo.model("slow").unwrap())
}

fn peak_with(count: i32, callers: usize) -> (usize, modelyard::ModelStatistics) {
    let peak = Arc::new(AtomicUsize::new(0));
    let (_tmp, model) = slow_model(count, &peak);
    let barrier = Arc::new(Barrier::new(callers));
    let handles: Vec<_> = (0..callers)
        .map(|i| {
            let (model, barrier) = (model.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                let out = model
                    .infer([("IN", Tensor::from(ndarray::arr1(&[i as f32])))])
                    .unwrap();
                assert_eq!(
                    out.get("OUT").unwrap().view::<f32>().unwrap()[[0]],
                    i as f32,
                    "each caller gets its own answer"
                );
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    (peak.load(Ordering::SeqCst), model.statistics())
}

#[test]
fn instances_bound_parallel_executions_and_callers_wait() {
    let (peak, stats) = peak_with(2, 6);
    assert_eq!(peak, 2, "two instances run two calls at once, never more");
    assert_eq!(stats.success.count, 6);
    // Six 100 ms calls on two instances: the later ones waited for an instance.
    assert!(
        stats.queue.ns >= Duration::from_millis(200).as_nanos() as u64,
        "{stats}"
    );
    let (peak, _) = peak_with(1, 3);
    assert_eq!(peak, 1);
}

#[test]
fn async_calls_complete_and_dropped_ones_are_cancelled() {
    let peak = Arc::new(AtomicUsize::new(0));
    let (_tmp, model) = slow_model(1, &peak);
    let futures: Vec<_> = (0..3)
        .map(|i| model.infer_async([("IN", Tensor::from(ndarray::arr1(&[i as f32])))]))
        .collect();
    for (i, f) in futures.into_iter().enumerate() {
        let out = block_on(f).unwrap();
        assert_eq!(
            out.get("OUT").unwrap().view::<f32>().unwrap()[[0]],
            i as f32
        );
    }
    assert_eq!(
        peak.load(Ordering::SeqCst),
        1,
        "one instance: async calls queue too"
    );

    // Occupy the only instance, then drop a queued request: it never runs.
    let busy = model.infer_async([("IN", Tensor::from(ndarray::arr1(&[9.0f32])))]);
    std::thread::sleep(Duration::from_millis(20));
    drop(model.infer_async([("IN", Tensor::from(ndarray::arr1(&[10.0f32])))]));
    block_on(busy).unwrap();
    // The cancelled request gives up as soon as it gets the instance.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while model.statistics().fail.count == 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let s = model.statistics();
    assert_eq!(
        (s.success.count, s.execution_count, s.fail.count),
        (4, 4, 1),
        "{s}"
    );
}
