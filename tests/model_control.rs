//! Model control (spec section (g)): NONE refuses load/unload, EXPLICIT loads what it is told
//! (ensembles with their composing models), POLL picks up added, removed and changed models
//! and versions; in-flight requests finish, failed reloads keep the old version serving, and a
//! model reloaded 100 times under 8 callers never gives a wrong or failed answer.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{add_sub_model, expect_error, fixtures, rss_kib, ADD_SUB};
use modelyard::{ErrorKind, IndexEntry, ModelControl, ModelState, Repository, Tensor};
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
