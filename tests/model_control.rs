//! Model control (spec section (g)): NONE refuses load/unload, EXPLICIT loads what it is told
//! (ensembles with their composing models), POLL picks up added, removed and changed models
//! and versions; in-flight requests finish, failed reloads keep the old version serving, and a
//! model reloaded 100 times under 8 callers never gives a wrong or failed answer.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{add_sub_model, expect_error, fixtures, rss_kib, wait_until, Gate, ADD_SUB};
use modelyard::config::ModelConfig;
use modelyard::{ErrorKind, IndexEntry, ModelControl, ModelState, NativeModel, Repository, Tensor};
use ndarray::Array2;

const ENSEMBLE: &str = r#"
name: "ens" platform: "ensemble" max_batch_size: 8
input [ { name: "A" data_type: TYPE_FP32 dims: [ 16 ] }, { name: "B" data_type: TYPE_FP32 dims: [ 16 ] } ]
output [ { name: "SUM" data_type: TYPE_FP32 dims: [ 16 ] } ]
ensemble_scheduling { step [ { model_name: "m" model_version: -1
  input_map { key: "INPUT0" value: "A" } input_map { key: "INPUT1" value: "B" }
  output_map { key: "OUTPUT0" value: "SUM" } } ] }
"#;

/// `m` (add/sub), `other` (add/sub) and `ens` (an ensemble over `m`).
fn repo_dir() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    add_sub_model(tmp.path(), "m", ADD_SUB);
    add_sub_model(tmp.path(), "other", ADD_SUB);
    std::fs::create_dir_all(tmp.path().join("ens/1")).unwrap();
    std::fs::write(tmp.path().join("ens/config.pbtxt"), ENSEMBLE).unwrap();
    tmp
}

fn ones(rows: usize, v: f32) -> Tensor {
    Tensor::from(Array2::<f32>::from_elem((rows, 16), v))
}

/// INPUT0 + INPUT1 through `model` of `repo`, checked.
fn add(repo: &Repository, model: &str) -> modelyard::Result<()> {
    let m = repo.model(model)?;
    let (a, b) = if model == "ens" {
        ("A", "B")
    } else {
        ("INPUT0", "INPUT1")
    };
    let out = m.infer([(a, ones(2, 1.5)), (b, ones(2, 2.0))])?;
    let name = if model == "ens" { "SUM" } else { "OUTPUT0" };
    let sum = out.get(name).unwrap().view::<f32>().unwrap().to_owned();
    assert!(sum.iter().all(|&v| v == 3.5), "wrong answer from {model}");
    Ok(())
}

fn state(index: &[IndexEntry], name: &str, version: Option<i64>) -> Option<(ModelState, String)> {
    index
        .iter()
        .find(|e| e.name == name && e.version == version)
        .map(|e| (e.state, e.reason.clone()))
}

#[test]
fn none_mode_refuses_load_and_unload() {
    let tmp = repo_dir();
    let repo = Repository::load(tmp.path()).unwrap();
    assert_eq!(repo.model_control(), ModelControl::None);
    for e in [
        repo.load_model("m").unwrap_err(),
        repo.unload_model("m").unwrap_err(),
    ] {
        assert_eq!(
            e.message(),
            "explicit model load / unload is not allowed if polling is enabled"
        );
    }
    assert_eq!(repo.poll().unwrap_err().kind(), ErrorKind::Unsupported);
    add(&repo, "ens").unwrap();
}

#[test]
fn explicit_mode_loads_what_it_is_told_with_dependencies() {
    let tmp = repo_dir();
    let repo = Repository::builder(tmp.path())
        .model_control(ModelControl::Explicit)
        .load()
        .unwrap();
    let index = repo.index();
    for name in ["ens", "m", "other"] {
        assert_eq!(
            state(&index, name, None),
            Some((ModelState::Unknown, String::new()))
        );
    }
    let e = repo.model("m").unwrap_err();
    assert_eq!(
        e.message(),
        "Request for unknown model: 'm' has no available versions"
    );
    // Loading the ensemble loads `m`, not `other`.
    repo.load_model("ens").unwrap();
    add(&repo, "ens").unwrap();
    add(&repo, "m").unwrap();
    expect_error(
        repo.model("other"),
        ErrorKind::Unavailable,
        "Request for unknown model: 'other' has no available versions",
    );
    assert_eq!(repo.ready_models(), ["ens", "m"]);
    // Loading an unchanged model again is a no-op: the same version keeps its statistics.
    let before = repo.model("m").unwrap().statistics().success.count;
    repo.load_model("m").unwrap();
    assert_eq!(repo.model("m").unwrap().statistics().success.count, before);
    // Unknown and hostile names.
    for bad in ["nope", "../m", "", "m/1"] {
        assert_eq!(
            repo.load_model(bad).unwrap_err().kind(),
            ErrorKind::NotFound,
            "{bad}"
        );
    }
    // Loading an unrelated model keeps the ensemble as it is (its statistics too).
    let served = repo.model("ens").unwrap().statistics().success.count;
    assert!(served > 0);
    repo.load_model("other").unwrap();
    assert_eq!(
        repo.model("ens").unwrap().statistics().success.count,
        served
    );
    assert!(!repo
        .index()
        .iter()
        .any(|e| e.state == ModelState::Unloading));
    // Unloading a composing model makes the ensemble unavailable; loading it again restores it.
    repo.unload_model("m").unwrap();
    let index = repo.index();
    assert_eq!(
        state(&index, "m", Some(1)),
        Some((ModelState::Unavailable, "unloaded".into()))
    );
    assert_eq!(
        state(&index, "ens", None).unwrap().0,
        ModelState::Unavailable
    );
    expect_error(
        repo.model("ens"),
        ErrorKind::Unavailable,
        "Request for unknown model: 'ens' has no available versions",
    );
    repo.load_model("m").unwrap();
    add(&repo, "ens").unwrap();
    // Unloading an unknown model is a silent success.
    repo.unload_model("never-there").unwrap();
}

#[test]
fn startup_models_follow_tritons_rules() {
    let tmp = repo_dir();
    let explicit = || Repository::builder(tmp.path()).model_control(ModelControl::Explicit);
    let repo = explicit().startup_models(["other"]).load().unwrap();
    assert_eq!(repo.ready_models(), ["other"]);
    let repo = explicit().startup_models(["*"]).load().unwrap();
    assert_eq!(repo.ready_models(), ["ens", "m", "other"]);
    let e = explicit().startup_models(["*", "m"]).load().unwrap_err();
    assert_eq!(
        e.message(),
        "Wildcard model name '*' must be the ONLY startup model if specified at all."
    );
    expect_error(
        explicit().startup_models(["missing"]).load(),
        ErrorKind::NotFound,
        "failed to load 'missing', failed to poll from model repository",
    );
}

#[test]
fn a_failed_reload_keeps_the_old_version_serving() {
    let tmp = repo_dir();
    let repo = Repository::builder(tmp.path())
        .model_control(ModelControl::Explicit)
        .startup_models(["m"])
        .load()
        .unwrap();
    let v1 = repo.model("m").unwrap();
    // A version 2 whose model file is half written.
    let full = std::fs::read(fixtures().join("generated/add_sub_fp32_batch.onnx")).unwrap();
    std::fs::create_dir_all(tmp.path().join("m/2")).unwrap();
    std::fs::write(tmp.path().join("m/2/model.onnx"), &full[..full.len() / 2]).unwrap();
    let e = repo.load_model("m").unwrap_err();
    assert!(
        e.message().starts_with("load failed for model 'm': "),
        "{}",
        e.message()
    );
    assert_eq!(
        repo.model("m").unwrap().version(),
        1,
        "version 1 still serves"
    );
    add(&repo, "m").unwrap();
    // Once complete, the new version loads and the old one is retired; the caller that
    // still holds version 1 keeps using it (UNLOADING until it lets go).
    std::fs::write(tmp.path().join("m/2/model.onnx"), &full).unwrap();
    repo.load_model("m").unwrap();
    assert_eq!(repo.model("m").unwrap().version(), 2);
    let index = repo.index();
    assert_eq!(
        state(&index, "m", Some(1)).unwrap().0,
        ModelState::Unloading
    );
    assert_eq!(state(&index, "m", Some(2)).unwrap().0, ModelState::Ready);
    v1.infer([("INPUT0", ones(1, 1.0)), ("INPUT1", ones(1, 1.0))])
        .unwrap();
    drop(v1);
    assert!(
        state(&repo.index(), "m", Some(1)).is_none(),
        "retired once released"
    );
}

fn touch_version(dir: &Path, v: i64) {
    std::fs::create_dir_all(dir.join(v.to_string())).unwrap();
    std::fs::copy(
        fixtures().join("generated/add_sub_fp32_batch.onnx"),
        dir.join(format!("{v}/model.onnx")),
    )
    .unwrap();
}

#[test]
fn poll_picks_up_new_deleted_and_broken_versions_and_models() {
    let tmp = repo_dir();
    let repo = Repository::builder(tmp.path())
        .model_control(ModelControl::Poll)
        .load()
        .unwrap();
    assert_eq!(
        repo.load_model("m").unwrap_err().kind(),
        ErrorKind::Unavailable
    );
    let m = tmp.path().join("m");
    touch_version(&m, 2);
    repo.poll().unwrap();
    assert_eq!(repo.model("m").unwrap().version(), 2);
    add(&repo, "ens").unwrap();
    std::fs::remove_dir_all(m.join("2")).unwrap();
    repo.poll().unwrap();
    assert_eq!(repo.model("m").unwrap().version(), 1);
    // A half-written version 3 is not served; version 1 keeps serving.
    std::fs::create_dir_all(m.join("3")).unwrap();
    std::fs::write(m.join("3/model.onnx"), b"\x08\x07\x12").unwrap();
    repo.poll().unwrap();
    assert_eq!(repo.model("m").unwrap().version(), 1);
    let reason = state(&repo.index(), "m", None).unwrap().1;
    assert!(reason.contains("reload failed"), "{reason}");
    // The ensemble over `m` keeps serving on the version that keeps serving.
    add(&repo, "ens").unwrap();
    touch_version(&m, 3);
    repo.poll().unwrap();
    assert_eq!(repo.model("m").unwrap().version(), 3);
    // A model folder added, one removed.
    add_sub_model(tmp.path(), "added", ADD_SUB);
    std::fs::remove_dir_all(tmp.path().join("other")).unwrap();
    repo.poll().unwrap();
    add(&repo, "added").unwrap();
    assert_eq!(repo.model("other").unwrap_err().kind(), ErrorKind::NotFound);
    // A broken config: the old config keeps serving.
    std::fs::write(m.join("config.pbtxt"), "max_batch_size: banana").unwrap();
    repo.poll().unwrap();
    add(&repo, "m").unwrap();
}

#[test]
fn a_background_poller_picks_up_a_new_version() {
    let tmp = repo_dir();
    let repo = Repository::builder(tmp.path())
        .model_control(ModelControl::Poll)
        .poll_interval(Duration::from_millis(20))
        .load()
        .unwrap();
    touch_version(&tmp.path().join("m"), 5);
    let start = Instant::now();
    while repo.model("m").unwrap().version() != 5 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the poller never saw version 5"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn reloading_100_times_under_8_callers_loses_nothing() {
    let tmp = repo_dir();
    let repo = Repository::builder(tmp.path())
        .model_control(ModelControl::Explicit)
        .startup_models(["ens"])
        .load()
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let callers: Vec<_> = (0..8)
        .map(|i| {
            let (repo, stop) = (repo.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    add(&repo, if i % 2 == 0 { "m" } else { "ens" }).unwrap();
                    n += 1;
                }
                n
            })
        })
        .collect();
    let config = tmp.path().join("m/config.pbtxt");
    let mut rss_after_warmup = None;
    for i in 0..100 {
        // A changed config (instance count) makes each load a real reload.
        std::fs::write(
            &config,
            format!(
                "{ADD_SUB}\ninstance_group [ {{ count: {} kind: KIND_CPU }} ]",
                1 + i % 3
            ),
        )
        .unwrap();
        repo.load_model("ens").unwrap();
        repo.load_model("m").unwrap();
        let count = repo.model("m").unwrap().config().instance_group[0].count;
        assert_eq!(count, 1 + i % 3, "reload {i} took effect");
        if i == 10 {
            rss_after_warmup = rss_kib();
        }
    }
    stop.store(true, Ordering::SeqCst);
    let calls: u64 = callers.into_iter().map(|h| h.join().unwrap()).sum();
    assert!(calls > 100, "the callers ran ({calls} calls)");
    let index = repo.index();
    assert_eq!(state(&index, "m", Some(1)).unwrap().0, ModelState::Ready);
    assert!(
        !index.iter().any(|e| e.state == ModelState::Unloading),
        "every retired version was released: {index:?}"
    );
    if let (Some(before), Some(after)) = (rss_after_warmup, rss_kib()) {
        // 90 reloads of a model whose file is ~1 KiB: growth here would be a leak.
        assert!(
            after < before + 64 * 1024,
            "RSS grew from {before} KiB to {after} KiB over 90 reloads"
        );
    }
}

/// A failed load keeps the kind of its cause: the repository stores the error, not its text.
#[test]
fn a_failed_load_keeps_the_kind_of_its_cause() {
    let tmp = repo_dir();
    let repo = Repository::builder(tmp.path())
        .model_control(ModelControl::Explicit)
        .load()
        .unwrap();
    // A config that breaks a rule: Triton's "Invalid argument".
    std::fs::write(
        tmp.path().join("m/config.pbtxt"),
        ADD_SUB.replace("max_batch_size: 8", "max_batch_size: -3"),
    )
    .unwrap();
    let e = repo.load_model("m").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidConfig, "{e}");
    assert!(
        e.message().starts_with("load failed for model 'm': "),
        "{e}"
    );
    assert!(e.message().contains("max_batch_size"), "{e}");
    // A model file that is not ONNX: the version fails with `ModelFile`.
    std::fs::write(tmp.path().join("other/1/model.onnx"), b"not a model").unwrap();
    let e = repo.load_model("other").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ModelFile, "{e}");
    assert!(
        e.message()
            .starts_with("load failed for model 'other': version 1 is at UNAVAILABLE state: "),
        "{e}"
    );
    assert_eq!(e.version(), Some(1));
}

/// Native model `offset`: Y = X + its config's `offset`. Its `gate` parameter: "run" makes each
/// execution pass the test's gate first, "load" makes the load pass it, "fail" refuses to load.
struct Offset {
    add: f32,
    gate: Option<Arc<Gate>>,
}

impl NativeModel for Offset {
    fn execute(
        &self,
        inputs: &[(String, Tensor)],
        _: &[String],
    ) -> modelyard::Result<Vec<(String, Tensor)>> {
        if let Some(gate) = &self.gate {
            gate.pass();
        }
        let x = inputs[0].1.view::<f32>()?;
        Ok(vec![("Y".into(), Tensor::from(x.mapv(|v| v + self.add)))])
    }
}

/// Writes model `name` of backend `offset` into `dir`.
fn offset_model(dir: &Path, name: &str, offset: f32, gate: &str) {
    std::fs::create_dir_all(dir.join(name).join("1")).unwrap();
    let config = format!(
        r#"name: "{name}" backend: "offset" max_batch_size: 4
        input [ {{ name: "X" data_type: TYPE_FP32 dims: [ 2 ] }} ]
        output [ {{ name: "Y" data_type: TYPE_FP32 dims: [ 2 ] }} ]
        parameters {{ key: "offset" value: {{ string_value: "{offset}" }} }}
        parameters {{ key: "gate" value: {{ string_value: "{gate}" }} }}"#
    );
    std::fs::write(dir.join(name).join("config.pbtxt"), config).unwrap();
}

/// The repository at `dir` in explicit mode with the `offset` backend bound to `gate`.
fn offset_repo(dir: &Path, startup: &[&str], gate: &Arc<Gate>) -> Repository {
    let gate = gate.clone();
    Repository::builder(dir)
        .model_control(ModelControl::Explicit)
        .startup_models(startup.iter().copied())
        .native_backend("offset", move |cfg: &ModelConfig| {
            let param = |k: &str| {
                cfg.parameters
                    .get(k)
                    .map(|p| p.string_value.clone())
                    .unwrap_or_default()
            };
            let add = param("offset").parse().unwrap_or(f32::NAN);
            match param("gate").as_str() {
                "fail" => {
                    return Err(modelyard::Error::new(
                        ErrorKind::InvalidConfig,
                        "this version refuses to load",
                    ))
                }
                "load" => gate.pass(),
                _ => {}
            }
            let run = (param("gate") == "run").then(|| gate.clone());
            Ok(Box::new(Offset { add, gate: run }) as Box<dyn NativeModel>)
        })
        .load()
        .unwrap()
}

/// Y for X = [1, 1] through `model` (both elements must agree).
fn y(repo: &Repository, model: &str) -> modelyard::Result<f32> {
    let x = Tensor::from(Array2::<f32>::from_elem((1, 2), 1.0));
    let out = repo.model(model)?.infer([("X", x)])?;
    let y = out.get("Y").unwrap().view::<f32>().unwrap().to_owned();
    assert_eq!(y.shape(), [1, 2]);
    assert_eq!(y[[0, 0]], y[[0, 1]]);
    Ok(y[[0, 0]])
}

fn has_row(repo: &Repository, name: &str, version: i64, want: ModelState) -> bool {
    repo.index()
        .iter()
        .any(|e| e.name == name && e.version == Some(version) && e.state == want)
}

/// Callers run while reloads fail and while a slow reload builds: the version being built is
/// LOADING beside the READY one, every request is answered by the old or the new version (never
/// an error, never the old one after the new), and the new one serves once it is swapped in.
#[test]
fn callers_see_no_failure_while_reloads_fail_and_while_a_reload_is_loading() {
    let tmp = tempfile::tempdir().unwrap();
    offset_model(tmp.path(), "m", 1.0, "");
    let gate = Arc::new(Gate::default());
    let repo = offset_repo(tmp.path(), &["m"], &gate);
    let stop = Arc::new(AtomicBool::new(false));
    let (seen_old, seen_new) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let callers: Vec<_> = (0..4)
        .map(|_| {
            let (repo, stop) = (repo.clone(), stop.clone());
            let (seen_old, seen_new) = (seen_old.clone(), seen_new.clone());
            std::thread::spawn(move || {
                let (mut old, mut new) = (0u64, 0u64);
                while !stop.load(Ordering::SeqCst) {
                    match y(&repo, "m").unwrap() {
                        2.0 => {
                            assert_eq!(new, 0, "the old version answered after the new one");
                            if old == 0 {
                                seen_old.fetch_add(1, Ordering::SeqCst);
                            }
                            old += 1;
                        }
                        11.0 => {
                            if new == 0 {
                                seen_new.fetch_add(1, Ordering::SeqCst);
                            }
                            new += 1;
                        }
                        other => panic!("answer {other} from neither version"),
                    }
                }
                (old, new)
            })
        })
        .collect();
    // Every caller is running before anything changes.
    wait_until("every caller to start", || {
        seen_old.load(Ordering::SeqCst) == 4
    });
    for i in 0..5 {
        offset_model(tmp.path(), "m", 50.0 + i as f32, "fail");
        let e = repo.load_model("m").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidConfig, "{e}");
        assert!(e.message().contains("this version refuses to load"), "{e}");
        assert_eq!(y(&repo, "m").unwrap(), 2.0, "the old version serves");
        assert!(has_row(&repo, "m", 1, ModelState::Ready));
    }
    // A reload that takes as long as the test wants: LOADING beside READY, the old one serving.
    offset_model(tmp.path(), "m", 10.0, "load");
    let loader = {
        let repo = repo.clone();
        std::thread::spawn(move || repo.load_model("m"))
    };
    gate.wait_for(1);
    assert!(
        has_row(&repo, "m", 1, ModelState::Loading),
        "{:?}",
        repo.index()
    );
    assert!(
        has_row(&repo, "m", 1, ModelState::Ready),
        "{:?}",
        repo.index()
    );
    assert_eq!(
        y(&repo, "m").unwrap(),
        2.0,
        "the old version serves while loading"
    );
    gate.open();
    loader.join().unwrap().unwrap();
    assert_eq!(y(&repo, "m").unwrap(), 11.0);
    assert!(
        !has_row(&repo, "m", 1, ModelState::Loading),
        "{:?}",
        repo.index()
    );
    wait_until("every caller to see the new version", || {
        seen_new.load(Ordering::SeqCst) == 4
    });
    stop.store(true, Ordering::SeqCst);
    for h in callers {
        let (old, new) = h.join().unwrap();
        assert!(
            old > 0 && new > 0,
            "each caller saw both versions ({old}, {new})"
        );
    }
}

/// An ensemble request in flight while a composing model is reloaded finishes on the models it
/// started with (as Triton's ensemble context, which holds its steps' models from the start);
/// the next request runs on the new one, and the old versions are released when it is done.
#[test]
fn an_ensemble_request_in_flight_finishes_on_the_steps_it_started_with() {
    let tmp = tempfile::tempdir().unwrap();
    offset_model(tmp.path(), "first", 1.0, "run");
    offset_model(tmp.path(), "second", 10.0, "");
    std::fs::create_dir_all(tmp.path().join("pipe/1")).unwrap();
    std::fs::write(
        tmp.path().join("pipe/config.pbtxt"),
        r#"name: "pipe" platform: "ensemble" max_batch_size: 4
        input [ { name: "X" data_type: TYPE_FP32 dims: [ 2 ] } ]
        output [ { name: "Y" data_type: TYPE_FP32 dims: [ 2 ] } ]
        ensemble_scheduling { step [
          { model_name: "first" model_version: -1 input_map { key: "X" value: "X" } output_map { key: "Y" value: "T" } },
          { model_name: "second" model_version: -1 input_map { key: "X" value: "T" } output_map { key: "Y" value: "Y" } }
        ] }"#,
    )
    .unwrap();
    let gate = Arc::new(Gate::default());
    let repo = offset_repo(tmp.path(), &["pipe"], &gate);
    let in_flight = {
        let repo = repo.clone();
        std::thread::spawn(move || y(&repo, "pipe"))
    };
    gate.wait_for(1);
    // The request is inside `first`; `second` changes under it.
    offset_model(tmp.path(), "second", 100.0, "");
    repo.load_model("second").unwrap();
    assert_eq!(y(&repo, "second").unwrap(), 101.0);
    for m in ["second", "pipe"] {
        assert!(
            has_row(&repo, m, 1, ModelState::Unloading),
            "{m}: {:?}",
            repo.index()
        );
        assert!(
            has_row(&repo, m, 1, ModelState::Ready),
            "{m}: {:?}",
            repo.index()
        );
    }
    gate.open();
    assert_eq!(
        in_flight.join().unwrap().unwrap(),
        12.0,
        "1 + 1 + 10: the old `second`"
    );
    assert_eq!(
        y(&repo, "pipe").unwrap(),
        102.0,
        "1 + 1 + 100: the new `second`"
    );
    let unloading: Vec<IndexEntry> = repo
        .index()
        .into_iter()
        .filter(|e| e.state == ModelState::Unloading)
        .collect();
    assert!(unloading.is_empty(), "released once done: {unloading:?}");
}

/// Loads and unloads from three threads at once, and polls from two threads beside the
/// background poller while versions come and go, with callers running throughout: each
/// request is answered right or refused as unavailable (Triton's words), and the repository
/// ends consistent (what was loaded last serves, nothing is left LOADING or UNLOADING).
#[test]
fn concurrent_loads_unloads_and_polls_leave_a_consistent_repository() {
    let callers = |repo: &Repository, models: &'static [&'static str], stop: &Arc<AtomicBool>| {
        (0..4)
            .map(|i| {
                let (repo, stop) = (repo.clone(), stop.clone());
                std::thread::spawn(move || {
                    let (mut ok, mut refused) = (0u64, 0u64);
                    while !stop.load(Ordering::SeqCst) {
                        match add(&repo, models[i % models.len()]) {
                            Ok(()) => ok += 1,
                            Err(e) => {
                                assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
                                let m = e.message();
                                assert!(
                                    m.contains("has no available versions")
                                        || m.contains("is not ready")
                                        || m.contains("UNAVAILABLE"),
                                    "{e}"
                                );
                                refused += 1;
                            }
                        }
                    }
                    (ok, refused)
                })
            })
            .collect::<Vec<_>>()
    };
    let no_transients = |repo: &Repository| {
        let left: Vec<IndexEntry> = repo
            .index()
            .into_iter()
            .filter(|e| matches!(e.state, ModelState::Loading | ModelState::Unloading))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    };

    // Explicit: three threads load and unload `m` and the ensemble over it.
    let tmp = repo_dir();
    let repo = Repository::builder(tmp.path())
        .model_control(ModelControl::Explicit)
        .startup_models(["ens"])
        .load()
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let running = callers(&repo, &["m", "ens"], &stop);
    let control: Vec<_> = (0..3)
        .map(|t| {
            let repo = repo.clone();
            std::thread::spawn(move || {
                for i in 0..30 {
                    match (t + i) % 4 {
                        0 => repo.load_model("ens"),
                        1 => repo.unload_model("m"),
                        2 => repo.load_model("m"),
                        _ => repo.unload_model("ens"),
                    }
                    .map_err(|e| (e.kind(), e.to_string()))
                    .or_else(|(kind, text)| {
                        // Loading the ensemble while another thread unloads `m` again may
                        // find `m` gone: Triton's refusal, nothing else.
                        assert_eq!(kind, ErrorKind::Unavailable, "{text}");
                        Ok::<(), ()>(())
                    })
                    .unwrap();
                }
            })
        })
        .collect();
    for h in control {
        h.join().unwrap();
    }
    repo.load_model("ens").unwrap();
    add(&repo, "ens").unwrap();
    add(&repo, "m").unwrap();
    stop.store(true, Ordering::SeqCst);
    let (ok, refused) = running
        .into_iter()
        .map(|h| h.join().unwrap())
        .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
    assert!(
        ok > 0 && refused > 0,
        "both happened ({ok} answered, {refused} refused)"
    );
    no_transients(&repo);
    assert!(has_row(&repo, "m", 1, ModelState::Ready));
    assert!(has_row(&repo, "ens", 1, ModelState::Ready));

    // Poll: the background poller and two threads poll while version 2 comes and goes; the
    // model is never unloaded, so no request may fail.
    let tmp = repo_dir();
    let repo = Repository::builder(tmp.path())
        .model_control(ModelControl::Poll)
        .poll_interval(Duration::from_millis(1))
        .load()
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let running = callers(&repo, &["m", "ens"], &stop);
    let pollers: Vec<_> = (0..2)
        .map(|_| {
            let (repo, stop) = (repo.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    repo.poll().unwrap();
                }
            })
        })
        .collect();
    let m = tmp.path().join("m");
    for _ in 0..20 {
        touch_version(&m, 2);
        std::thread::sleep(Duration::from_millis(2));
        std::fs::remove_dir_all(m.join("2")).unwrap();
        std::thread::sleep(Duration::from_millis(2));
    }
    touch_version(&m, 2);
    stop.store(true, Ordering::SeqCst);
    for h in pollers {
        h.join().unwrap();
    }
    let (ok, refused) = running
        .into_iter()
        .map(|h| h.join().unwrap())
        .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
    assert_eq!(refused, 0, "a request failed while polling ({ok} answered)");
    repo.poll().unwrap();
    assert_eq!(repo.model("m").unwrap().version(), 2);
    add(&repo, "ens").unwrap();
    no_transients(&repo);
}
