//! The scheduler with real concurrency: Triton's batch forming (spec section (e) and the
//! outcomes of QA `L0_batcher`), queue policies, priorities, timeouts, cancellation,
//! preserve_ordering, and statistics that add up.
//!
//! The model is a native one that doubles its input and records every batch it runs. A
//! "blocker" request (a row holding -1) keeps the only instance busy until the test opens the
//! gate, so that the requests under test are queued exactly as the scenario says.

mod common;

use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::Gate;

use modelyard::config::ModelConfig;
use modelyard::{
    CancelToken, ErrorKind, InferOptions, ModelControl, ModelState, NativeModel, Repository, Tensor,
};
use ndarray::{Array2, ArrayD};

/// One execution: rows, first value of each row, when it started.
type Batches = Arc<Mutex<Vec<(usize, Vec<f32>, Instant)>>>;

struct Doubler {
    gate: Arc<Gate>,
    batches: Batches,
}

impl NativeModel for Doubler {
    fn execute(
        &self,
        inputs: &[(String, Tensor)],
        _: &[String],
    ) -> modelyard::Result<Vec<(String, Tensor)>> {
        let x = inputs
            .iter()
            .find(|(n, _)| n == "IN")
            .unwrap()
            .1
            .view::<f32>()?;
        let firsts: Vec<f32> = x
            .outer_iter()
            .map(|r| r.iter().next().copied().unwrap_or(0.0))
            .collect();
        self.batches
            .lock()
            .unwrap()
            .push((x.shape()[0], firsts.clone(), Instant::now()));
        if firsts.contains(&-1.0) {
            self.gate.pass();
        }
        if firsts.contains(&-2.0) {
            panic!("asked to panic");
        }
        // A row whose first value is 1e6 + ms sleeps that long.
        if let Some(ms) = firsts.iter().find(|&&v| v >= 1e6) {
            std::thread::sleep(Duration::from_millis((*ms - 1e6) as u64));
        }
        Ok(vec![("OUT".into(), Tensor::from(x.mapv(|v| v * 2.0)))])
    }
}

struct Fixture {
    _tmp: tempfile::TempDir,
    repo: Repository,
    model: modelyard::Model,
    gate: Arc<Gate>,
    batches: Batches,
}

fn fixture(max_batch: i32, dims: &str, scheduling: &str, count: i32) -> Fixture {
    fixture_of("doubler", "", max_batch, dims, scheduling, count)
}

/// `fixture` with the doubler registered as backend `backend` and `more_inputs` (config text
/// after the IN input) beside IN.
fn fixture_of(
    backend: &str,
    more_inputs: &str,
    max_batch: i32,
    dims: &str,
    scheduling: &str,
    count: i32,
) -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("doubler");
    std::fs::create_dir_all(dir.join("1")).unwrap();
    std::fs::write(
        dir.join("config.pbtxt"),
        format!(
            r#"backend: "{backend}" max_batch_size: {max_batch}
input [ {{ name: "IN" data_type: TYPE_FP32 dims: {dims} }} {more_inputs} ]
output [ {{ name: "OUT" data_type: TYPE_FP32 dims: {dims} }} ]
instance_group [ {{ count: {count} kind: KIND_CPU }} ]
{scheduling}"#
        ),
    )
    .unwrap();
    let gate = Arc::new(Gate::default());
    let batches: Batches = Arc::default();
    let (g, b) = (gate.clone(), batches.clone());
    // Explicit model control, so that a test can unload the model under load.
    let repo = Repository::builder(tmp.path())
        .model_control(ModelControl::Explicit)
        .startup_models(["doubler"])
        .native_backend(backend, move |_: &ModelConfig| {
            Ok(Box::new(Doubler {
                gate: g.clone(),
                batches: b.clone(),
            }) as Box<dyn NativeModel>)
        })
        .load()
        .unwrap();
    Fixture {
        model: repo.model("doubler").unwrap(),
        repo,
        _tmp: tmp,
        gate,
        batches,
    }
}

/// `rows` rows of width `width`, row i filled with `first + i`.
fn rows(first: f32, rows: usize, width: usize) -> Tensor {
    Tensor::from(Array2::from_shape_fn((rows, width), |(i, _)| {
        first + i as f32
    }))
}

/// Sends a request on its own thread and checks that the caller gets exactly its own rows.
fn send(f: &Fixture, input: Tensor, options: InferOptions) -> JoinHandle<modelyard::Result<()>> {
    let model = f.model.clone();
    std::thread::spawn(move || {
        let out = model.infer_with([("IN", input.clone())], &options)?;
        let got = out.get("OUT").unwrap().view::<f32>().unwrap().to_owned();
        let want: ArrayD<f32> = input.view::<f32>().unwrap().mapv(|v| v * 2.0);
        assert_eq!(got, want, "a caller got rows that are not its own");
        Ok(())
    })
}

/// Time for a spawned request to reach the queue.
fn settle() {
    std::thread::sleep(Duration::from_millis(60));
}

/// Keeps the only instance busy (a blocker of max_batch_size rows runs alone and at once),
/// queues `sizes` (in that order, batch-1 ids 100, 200, ...),
/// opens the gate and returns the batch sizes executed after the blocker.
fn scenario(f: &Fixture, sizes: &[usize]) -> Vec<usize> {
    let max = f.model.config().max_batch_size as usize;
    let blocker = send(f, rows(-1.0, max, 4), InferOptions::new());
    settle();
    let handles: Vec<_> = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| {
            let h = send(f, rows(100.0 * (i + 1) as f32, n, 4), InferOptions::new());
            settle();
            h
        })
        .collect();
    f.gate.open();
    blocker.join().unwrap().unwrap();
    for h in handles {
        h.join().unwrap().unwrap();
    }
    let batches = f.batches.lock().unwrap();
    assert_eq!(batches[0].0, max, "the blocker ran alone");
    batches[1..].iter().map(|b| b.0).collect()
}

const L0_BATCHER: &str =
    "dynamic_batching { preferred_batch_size: [ 2, 6 ] max_queue_delay_microseconds: 400000 }";

#[test]
fn preferred_sizes_run_at_once_others_wait_for_the_delay() {
    // QA L0_batcher: max 8, preferred [2, 6]: batch 2, 6 or 7 run immediately; 1 or 3 after
    // the delay (400 ms here).
    for (n, immediate) in [(2, true), (6, true), (7, true), (1, false), (3, false)] {
        let f = fixture(8, "[ 4 ]", L0_BATCHER, 1);
        let start = Instant::now();
        send(&f, rows(1.0, n, 4), InferOptions::new())
            .join()
            .unwrap()
            .unwrap();
        let waited = start.elapsed();
        assert_eq!(f.batches.lock().unwrap().len(), 1);
        if immediate {
            assert!(
                waited < Duration::from_millis(300),
                "batch {n} waited {waited:?}"
            );
        } else {
            assert!(
                waited >= Duration::from_millis(400),
                "batch {n} waited only {waited:?}"
            );
        }
    }
}

#[test]
fn queued_requests_form_tritons_batches() {
    // Three queued batch-1 requests: a preferred batch of 2 at once, then 1 after the delay.
    let f = fixture(8, "[ 4 ]", L0_BATCHER, 1);
    assert_eq!(scenario(&f, &[1, 1, 1]), [2, 1]);
    let b = f.batches.lock().unwrap();
    assert!(
        b[2].2.duration_since(b[1].2) >= Duration::from_millis(300),
        "the last request waited for the delay"
    );
    drop(b);
    // Six queued batch-1 requests: one batch of 6.
    let f = fixture(8, "[ 4 ]", L0_BATCHER, 1);
    assert_eq!(scenario(&f, &[1; 6]), [6]);
    // Batch 3 pending, batch 4 arrives: 3 + 4 passes the largest preferred size (6) without
    // hitting one, so the 3 go at once; then the 4 after the delay.
    let f = fixture(8, "[ 4 ]", L0_BATCHER, 1);
    assert_eq!(scenario(&f, &[3, 4]), [3, 4]);
    // Preferred [4, 6], no delay: 4 → {4}; 5 → {4, 1}; 7 → {6, 1}; 3 → {3}.
    let no_delay = "dynamic_batching { preferred_batch_size: [ 4, 6 ] }";
    for (queued, want) in [(4, vec![4]), (5, vec![4, 1]), (7, vec![6, 1]), (3, vec![3])] {
        let f = fixture(8, "[ 4 ]", no_delay, 1);
        assert_eq!(scenario(&f, &vec![1; queued]), want, "{queued} queued");
    }
}

#[test]
fn batches_never_split_a_request_or_pass_max_batch_size() {
    // Default preferred size = max_batch_size (8): 5 + 5 cannot share a batch, so the first 5
    // goes alone; the second 5 and the 3 make the preferred 8.
    let f = fixture(8, "[ 4 ]", "dynamic_batching { }", 1);
    assert_eq!(scenario(&f, &[5, 5, 3]), [5, 8]);
    let f = fixture(8, "[ 4 ]", "dynamic_batching { }", 1);
    assert_eq!(scenario(&f, &[2, 3, 3, 4]), [8, 4]);
}

#[test]
fn only_requests_with_the_same_shapes_are_merged() {
    let f = fixture(8, "[ -1 ]", "dynamic_batching { }", 1);
    let blocker = send(&f, rows(-1.0, 1, 4), InferOptions::new());
    settle();
    let handles: Vec<_> = [rows(10.0, 1, 4), rows(20.0, 1, 5), rows(30.0, 2, 4)]
        .into_iter()
        .map(|x| {
            let h = send(&f, x, InferOptions::new());
            settle();
            h
        })
        .collect();
    f.gate.open();
    blocker.join().unwrap().unwrap();
    for h in handles {
        h.join().unwrap().unwrap();
    }
    let sizes: Vec<usize> = f.batches.lock().unwrap()[1..].iter().map(|b| b.0).collect();
    // In arrival order: [1x4], then [1x5] closes it; [1x5] alone, then [2x4].
    assert_eq!(sizes, [1, 1, 2]);
}

/// Shape tensors (`is_shape_tensor`, a TensorRT feature: here the native doubler registered as
/// backend "tensorrt" stands in) batch only with requests whose shape tensor holds the same
/// values past the batch dim, whatever their batch sizes (Triton's
/// `enforce_equal_shape_tensors`): a different value closes the batch.
#[test]
fn requests_batch_only_with_equal_shape_tensor_values() {
    let f = fixture_of(
        "tensorrt",
        r#", { name: "SHAPE" data_type: TYPE_INT32 dims: [ 2 ] is_shape_tensor: true }"#,
        8,
        "[ 4 ]",
        "dynamic_batching { }",
        1,
    );
    let send_shape = |first: f32, n: usize, shape: [i32; 2]| {
        let model = f.model.clone();
        std::thread::spawn(move || {
            let x = rows(first, n, 4);
            let s = Tensor::from(Array2::from_shape_fn((n, 2), |(_, j)| shape[j]));
            let out = model.infer([("IN", x.clone()), ("SHAPE", s)]).unwrap();
            let got = out.get("OUT").unwrap().view::<f32>().unwrap().to_owned();
            assert_eq!(got, x.view::<f32>().unwrap().mapv(|v| v * 2.0));
        })
    };
    let blocker = send_shape(-1.0, 8, [3, 4]);
    settle();
    let handles: Vec<_> = [
        (10.0, 1, [3, 4]),
        (20.0, 2, [3, 4]),
        (30.0, 1, [3, 5]),
        (40.0, 1, [3, 5]),
        (50.0, 3, [3, 4]),
    ]
    .into_iter()
    .map(|(first, n, shape)| {
        let h = send_shape(first, n, shape);
        settle();
        h
    })
    .collect();
    f.gate.open();
    blocker.join().unwrap();
    for h in handles {
        h.join().unwrap();
    }
    let firsts: Vec<Vec<f32>> = f.batches.lock().unwrap()[1..]
        .iter()
        .map(|b| b.1.clone())
        .collect();
    // [3, 4] x 3 rows, closed by [3, 5]; the two [3, 5] together; then [3, 4] again.
    assert_eq!(
        firsts,
        [
            vec![10.0, 20.0, 21.0],
            vec![30.0, 40.0],
            vec![50.0, 51.0, 52.0]
        ]
    );
}

#[test]
fn without_dynamic_batching_every_request_runs_alone() {
    let f = fixture(8, "[ 4 ]", "", 1);
    assert_eq!(scenario(&f, &[1, 1, 2, 1]), [1, 1, 2, 1]);
}

#[test]
fn a_full_queue_rejects_with_tritons_message() {
    let f = fixture(
        8,
        "[ 4 ]",
        "dynamic_batching { max_queue_delay_microseconds: 100000 default_queue_policy { max_queue_size: 2 } }",
        1,
    );
    let blocker = send(&f, rows(-1.0, 8, 4), InferOptions::new());
    settle();
    let queued = [
        send(&f, rows(1.0, 1, 4), InferOptions::new()),
        send(&f, rows(2.0, 1, 4), InferOptions::new()),
    ];
    settle();
    let e = f.model.infer([("IN", rows(3.0, 1, 4))]).unwrap_err();
    assert_eq!(e.message(), "Exceeds maximum queue size");
    assert_eq!(e.kind(), ErrorKind::ResourceExhausted);
    assert_eq!(e.model(), Some("doubler"));
    f.gate.open();
    blocker.join().unwrap().unwrap();
    for h in queued {
        h.join().unwrap().unwrap();
    }
    let s = f.model.statistics();
    assert_eq!((s.success.count, s.fail.count), (3, 1));
}

#[test]
fn timeouts_follow_the_queue_policy() {
    // REJECT after the default timeout (100 ms) while the instance is busy.
    let f = fixture(
        8,
        "[ 4 ]",
        "dynamic_batching { default_queue_policy { default_timeout_microseconds: 100000 } }",
        1,
    );
    let blocker = send(&f, rows(-1.0, 8, 4), InferOptions::new());
    settle();
    let start = Instant::now();
    let e = f.model.infer([("IN", rows(1.0, 1, 4))]).unwrap_err();
    assert_eq!(e.message(), "Request timeout expired");
    assert_eq!(e.kind(), ErrorKind::TimedOut);
    assert!(start.elapsed() >= Duration::from_millis(100));
    // A per-request timeout is ignored unless the policy allows overriding it.
    let mut opts = InferOptions::new().timeout(Duration::from_millis(10));
    let start = Instant::now();
    f.model
        .infer_with([("IN", rows(1.0, 1, 4))], &opts)
        .unwrap_err();
    assert!(
        start.elapsed() >= Duration::from_millis(100),
        "the override was not allowed"
    );
    f.gate.open();
    blocker.join().unwrap().unwrap();

    // allow_timeout_override: the smaller per-request timeout wins.
    let f = fixture(
        8,
        "[ 4 ]",
        "dynamic_batching { default_queue_policy { default_timeout_microseconds: 10000000 allow_timeout_override: true } }",
        1,
    );
    let blocker = send(&f, rows(-1.0, 8, 4), InferOptions::new());
    settle();
    let start = Instant::now();
    opts = opts.timeout(Duration::from_millis(50));
    let e = f
        .model
        .infer_with([("IN", rows(1.0, 1, 4))], &opts)
        .unwrap_err();
    assert_eq!(e.message(), "Request timeout expired");
    assert!(start.elapsed() < Duration::from_secs(5));
    f.gate.open();
    blocker.join().unwrap().unwrap();

    // DELAY: an expired request is not rejected; it runs behind the ones that have not
    // expired. The first request (rows of 1.0) asks for 20 ms and expires while the blocker
    // holds the instance; the second (5.0), queued after it with the default 10 s, has not.
    let f = fixture(
        8,
        "[ 4 ]",
        "dynamic_batching { default_queue_policy { default_timeout_microseconds: 10000000 allow_timeout_override: true timeout_action: DELAY } }",
        1,
    );
    let blocker = send(&f, rows(-1.0, 8, 4), InferOptions::new());
    settle();
    let late = send(
        &f,
        rows(1.0, 1, 4),
        InferOptions::new().timeout(Duration::from_millis(20)),
    );
    settle();
    let fresh = send(&f, rows(5.0, 1, 4), InferOptions::new());
    settle();
    f.gate.open();
    blocker.join().unwrap().unwrap();
    late.join().unwrap().unwrap();
    fresh.join().unwrap().unwrap();
    let order: Vec<Vec<f32>> = f
        .batches
        .lock()
        .unwrap()
        .iter()
        .skip(1)
        .map(|(_, firsts, _)| firsts.clone())
        .collect();
    assert_eq!(
        order,
        [vec![5.0, 1.0]],
        "the request that has not expired first, the delayed one behind it, in one batch"
    );
}

#[test]
fn a_per_request_timeout_bounds_the_wait_without_dynamic_batching() {
    let f = fixture(8, "[ 4 ]", "", 1);
    let blocker = send(&f, rows(-1.0, 1, 4), InferOptions::new());
    settle();
    let e = f
        .model
        .infer_with(
            [("IN", rows(1.0, 1, 4))],
            &InferOptions::new().timeout(Duration::from_millis(30)),
        )
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::TimedOut);
    f.gate.open();
    blocker.join().unwrap().unwrap();
    assert_eq!(
        f.batches.lock().unwrap().len(),
        1,
        "the timed-out request never ran"
    );
}

#[test]
fn higher_priority_requests_run_first() {
    let f = fixture(
        1,
        "[ 4 ]",
        "dynamic_batching { priority_levels: 2 default_priority_level: 2 }",
        1,
    );
    let blocker = send(&f, rows(-1.0, 1, 4), InferOptions::new());
    settle();
    let low = send(&f, rows(10.0, 1, 4), InferOptions::new());
    settle();
    let also_low = send(&f, rows(20.0, 1, 4), InferOptions::new().priority(7));
    settle();
    let high = send(&f, rows(30.0, 1, 4), InferOptions::new().priority(1));
    settle();
    f.gate.open();
    for h in [blocker, low, also_low, high] {
        h.join().unwrap().unwrap();
    }
    let order: Vec<f32> = f.batches.lock().unwrap()[1..]
        .iter()
        .map(|b| b.1[0])
        .collect();
    assert_eq!(
        order,
        [30.0, 10.0, 20.0],
        "priority 1 first; 0 or out of range = default level"
    );
}

#[test]
fn cancelled_requests_leave_the_queue_and_never_run() {
    let f = fixture(8, "[ 4 ]", "dynamic_batching { }", 1);
    let blocker = send(&f, rows(-1.0, 8, 4), InferOptions::new());
    settle();
    // A cancel token, from another thread.
    let token = CancelToken::new();
    let waiting = send(
        &f,
        rows(10.0, 1, 4),
        InferOptions::new().cancel_token(&token),
    );
    settle();
    token.cancel();
    let e = waiting.join().unwrap().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Cancelled);
    // A dropped future.
    let fut = f.model.infer_async([("IN", rows(20.0, 1, 4))]);
    settle();
    drop(fut);
    settle();
    let kept = f.model.infer_async([("IN", rows(30.0, 1, 4))]);
    f.gate.open();
    blocker.join().unwrap().unwrap();
    let out = common::block_on(kept).unwrap();
    assert_eq!(out.get("OUT").unwrap().view::<f32>().unwrap()[[0, 0]], 60.0);
    let ran: Vec<f32> = f
        .batches
        .lock()
        .unwrap()
        .iter()
        .flat_map(|b| b.1.clone())
        .collect();
    assert!(!ran.contains(&10.0) && !ran.contains(&20.0), "ran {ran:?}");
    assert!(ran.contains(&30.0));
    let s = f.model.statistics();
    assert_eq!((s.success.count, s.fail.count), (2, 2));
}

#[test]
fn preserve_ordering_releases_responses_in_arrival_order() {
    for preserve in [false, true] {
        let f = fixture(
            1,
            "[ 4 ]",
            &format!("dynamic_batching {{ preserve_ordering: {preserve} }}"),
            2,
        );
        let done: Arc<Mutex<Vec<&str>>> = Arc::default();
        let call = |name: &'static str, first: f32| {
            let (model, done) = (f.model.clone(), done.clone());
            std::thread::spawn(move || {
                model.infer([("IN", rows(first, 1, 4))]).unwrap();
                done.lock().unwrap().push(name);
            })
        };
        let slow = call("slow", 1e6 + 300.0);
        settle();
        let fast = call("fast", 1e6);
        slow.join().unwrap();
        fast.join().unwrap();
        let order = done.lock().unwrap().clone();
        if preserve {
            assert_eq!(order, ["slow", "fast"]);
        } else {
            assert_eq!(
                order,
                ["fast", "slow"],
                "two instances: the fast one returns first"
            );
        }
    }
}

#[test]
fn statistics_count_requests_and_executions_separately() {
    let f = fixture(8, "[ 4 ]", L0_BATCHER, 1);
    assert_eq!(scenario(&f, &[1; 6]), [6]);
    let s = f.model.statistics();
    assert_eq!(s.success.count, 7, "six requests and the blocker");
    assert_eq!(s.inference_count, 14);
    assert_eq!(s.execution_count, 2);
    assert_eq!(s.queue.count, 7);
    let sizes: Vec<(u64, u64)> = s
        .batch_stats
        .iter()
        .map(|(b, st)| (*b, st.compute_infer.count))
        .collect();
    assert_eq!(sizes, [(6, 1), (8, 1)]);
    // Queued requests waited at least as long as the blocker held the instance.
    assert!(s.queue.ns >= 6 * 50_000_000, "queue {:?}", s.queue);
}

#[test]
fn a_panic_inside_a_batch_fails_that_batch_only() {
    let f = fixture(8, "[ 4 ]", "dynamic_batching { }", 1);
    let blocker = send(&f, rows(-1.0, 4, 4), InferOptions::new());
    settle();
    let doomed = [
        send(&f, rows(-2.0, 1, 4), InferOptions::new()),
        send(&f, rows(5.0, 1, 4), InferOptions::new()),
    ];
    settle();
    f.gate.open();
    blocker.join().unwrap().unwrap();
    for h in doomed {
        let e = h.join().unwrap().unwrap_err();
        assert!(e.message().contains("panicked"), "{e}");
    }
    // The model keeps serving.
    let out = f.model.infer([("IN", rows(7.0, 2, 4))]).unwrap();
    assert_eq!(out.get("OUT").unwrap().view::<f32>().unwrap()[[1, 0]], 16.0);
    // A request larger than max_batch_size is refused before it is queued.
    let e = f.model.infer([("IN", rows(1.0, 9, 4))]).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
}

#[test]
fn sixteen_callers_each_get_their_own_rows() {
    let f = fixture(
        8,
        "[ 4 ]",
        "dynamic_batching { max_queue_delay_microseconds: 2000 }",
        2,
    );
    let handles: Vec<_> = (0..16)
        .map(|t| {
            let model = f.model.clone();
            std::thread::spawn(move || {
                for i in 0..50 {
                    let n = 1 + (t + i) % 3;
                    let x = rows((t * 1000 + i * 10) as f32, n, 4);
                    let out = model.infer([("IN", x.clone())]).unwrap();
                    let want: ArrayD<f32> = x.view::<f32>().unwrap().mapv(|v| v * 2.0);
                    assert_eq!(out.get("OUT").unwrap().view::<f32>().unwrap(), want.view());
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let s = f.model.statistics();
    assert_eq!(s.success.count, 800);
    let rows_run: u64 = f.batches.lock().unwrap().iter().map(|b| b.0 as u64).sum();
    assert_eq!(s.inference_count, rows_run, "every row ran exactly once");
    assert_eq!(s.execution_count as usize, f.batches.lock().unwrap().len());
    assert!(s.execution_count < 800, "some requests were batched");
}

#[test]
fn requests_queued_on_an_unloaded_model_still_finish() {
    let f = fixture(8, "[ 4 ]", "dynamic_batching { }", 1);
    // Callers that fetched the model before the unload, some queued behind the blocker.
    let blocker = send(&f, rows(-1.0, 8, 4), InferOptions::new());
    settle();
    let queued: Vec<_> = (0..4)
        .map(|i| send(&f, rows(10.0 * i as f32, 2, 4), InferOptions::new()))
        .collect();
    settle();
    f.repo.unload_model("doubler").unwrap();
    let e = f.repo.model("doubler").unwrap_err();
    assert_eq!(
        e.kind(),
        ErrorKind::Unavailable,
        "new requests find no version"
    );
    let index = f.repo.index();
    assert!(
        index
            .iter()
            .any(|e| e.version == Some(1) && e.state == ModelState::Unloading),
        "held by its callers: {index:?}"
    );
    f.gate.open();
    blocker.join().unwrap().unwrap();
    for h in queued {
        h.join().unwrap().unwrap();
    }
    let s = f.model.statistics();
    assert_eq!((s.success.count, s.fail.count), (5, 0), "none lost");
    assert_eq!(s.inference_count, 16);
}
