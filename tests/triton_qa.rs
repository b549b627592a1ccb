//! Triton's own QA cases (`fixtures/triton-qa/L0_model_config`, copied from Triton's
//! `qa/L0_model_config`), run the way Triton's harness runs them (see
//! `fixtures/triton-qa/INDEX.md`): the load must fail with an error matching `expected*`
//! (grep regexes), or succeed with a completed config equal (as protobuf) to an `expected*`.
//!
//! Cases for backends this crate does not run (TensorRT, OpenVINO, PyTorch, Python) are
//! references only and are not run. The "identity" test backend is built in.

mod common;

use std::path::{Path, PathBuf};

use common::{copy_dir, fixtures};
use modelyard::config::{model_instance_group::Kind, ModelConfig};
use modelyard::Repository;

fn qa() -> PathBuf {
    fixtures().join("triton-qa/L0_model_config")
}

fn case_dirs(group: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(qa().join(group))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    v.sort();
    v
}

/// grep basic regular expression → Rust regex.
fn bre(pattern: &str) -> regex::Regex {
    let mut out = String::new();
    let mut chars = pattern.trim_end_matches('\n').chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    out.push_str(&regex::escape(&n.to_string()));
                }
            }
            '(' | ')' | '{' | '}' | '+' | '?' | '|' => out.push_str(&regex::escape(&c.to_string())),
            _ => out.push(c),
        }
    }
    regex::Regex::new(&out).unwrap()
}

fn expected_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("expected")
        })
        .collect();
    v.sort();
    v
}

fn has_version_dir(dir: &Path) -> bool {
    std::fs::read_dir(dir).unwrap().any(|e| {
        let e = e.unwrap();
        e.file_type().unwrap().is_dir() && e.file_name().to_string_lossy().parse::<u64>().is_ok()
    })
}

/// Builds the repository for an autofill case: the case folder is one model when it has a
/// config.pbtxt, else its sub-folders are the models. Like the harness, gives every model
/// without a version folder an empty `1/` (except where the case is about that).
fn autofill_repo(case: &Path, tmp: &Path, make_versions: bool) -> PathBuf {
    let repo = tmp.join("models");
    std::fs::create_dir_all(&repo).unwrap();
    let name = case.file_name().unwrap();
    if case.join("config.pbtxt").exists() || !case_has_model_children(case) {
        copy_dir(case, &repo.join(name));
    } else {
        for e in std::fs::read_dir(case).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                copy_dir(&p, &repo.join(p.file_name().unwrap()));
            }
        }
    }
    if make_versions {
        for e in std::fs::read_dir(&repo).unwrap() {
            let p = e.unwrap().path();
            if !has_version_dir(&p) {
                std::fs::create_dir_all(p.join("1")).unwrap();
            }
        }
    }
    repo
}

fn case_has_model_children(case: &Path) -> bool {
    std::fs::read_dir(case).unwrap().any(|e| {
        let p = e.unwrap().path();
        p.is_dir() && p.join("config.pbtxt").exists()
    })
}

/// Where a pass runs GPU groups. Triton's expected files come from a machine with a GPU, where
/// `KIND_AUTO` resolves to `KIND_GPU`; without one the CPU-only substitutions of INDEX.md apply.
/// On a machine without a GPU the cases run a second time on the kernel emulator, which counts
/// as one GPU, so the expectations of a GPU machine are checked here too.
#[derive(Clone, Copy, Debug)]
struct Pass {
    emulated: bool,
}

impl Pass {
    fn all() -> Vec<Pass> {
        let mut passes = vec![Pass { emulated: false }];
        if cfg!(feature = "cuda") && modelyard::gpu::probe().is_err() {
            passes.push(Pass { emulated: true });
        }
        passes
    }

    fn gpu(self) -> bool {
        self.emulated || modelyard::gpu::probe().is_ok()
    }

    fn load(self, repo: &Path, auto_complete: bool) -> modelyard::Result<Repository> {
        Repository::builder(repo)
            .auto_complete(auto_complete)
            .cuda_emulator(self.emulated)
            .load()
    }
}

/// Expected error regexes; in a pass without a GPU, the CPU-only substitutions described in
/// INDEX.md where Triton's file assumes a GPU.
fn expected_errors(case: &Path, name: &str, pass: Pass) -> Vec<regex::Regex> {
    let cpu_only = match name {
        "invalid_gpu" => Some("instance group invalid_gpu_0 of model invalid_gpu has kind KIND_GPU but server does not support GPUs"),
        "negative_gpu" => Some("instance group negative_gpu_0 of model negative_gpu has kind KIND_CPU but specifies one or more GPUs"),
        _ => None,
    };
    match cpu_only {
        Some(text) if !pass.gpu() => vec![bre(text)],
        _ => expected_files(case)
            .iter()
            // `expected_ensemble` and `expected_unsupported` are retired alternatives.
            .filter(|p| {
                !p.to_string_lossy().ends_with("_ensemble")
                    && !p.to_string_lossy().ends_with("_unsupported")
            })
            .map(|p| bre(&std::fs::read_to_string(p).unwrap()))
            .collect(),
    }
}

fn assert_fails(
    case: &Path,
    repo: &Path,
    auto_complete: bool,
    pass: Pass,
    failures: &mut Vec<String>,
) {
    let name = case.file_name().unwrap().to_string_lossy().to_string();
    let patterns = expected_errors(case, &name, pass);
    assert!(!patterns.is_empty(), "{name}: no expected file");
    match pass.load(repo, auto_complete) {
        Ok(_) => failures.push(format!(
            "{} ({pass:?}): loaded, expected failure",
            case.display()
        )),
        Err(e) => {
            let msg = e.to_string();
            if !patterns.iter().any(|p| p.is_match(&msg)) {
                failures.push(format!(
                    "{} ({pass:?}):\n    got      {msg}\n    expected {:?}",
                    case.display(),
                    patterns.iter().map(|p| p.as_str()).collect::<Vec<_>>()
                ));
            }
        }
    }
}

/// Prints the pass count of a group and fails with every failure listed.
fn report(group: &str, cases: usize, unsupported: usize, failures: &[String]) {
    let pass = cases - failures.len() - unsupported;
    println!("{group}: {pass} of {cases} cases pass, {unsupported} unsupported");
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn noautofill_platform() {
    let mut failures = Vec::new();
    let cases = case_dirs("noautofill_platform");
    let passes = Pass::all();
    for (case, &pass) in cases
        .iter()
        .flat_map(|c| passes.iter().map(move |p| (c, p)))
    {
        let name = case.file_name().unwrap().to_string_lossy().to_string();
        let text = std::fs::read_to_string(case.join("config.pbtxt")).unwrap();
        let mut config: String = text
            .lines()
            .filter(|l| !l.trim_start().starts_with("platform"))
            .map(|l| format!("{l}\n"))
            .collect();
        config.push_str("platform: \"onnxruntime_onnx\"\n");
        let tmp = tempfile::tempdir().unwrap();
        let model = tmp.path().join(&name);
        std::fs::create_dir_all(&model).unwrap();
        std::fs::write(model.join("config.pbtxt"), config).unwrap();
        if matches!(
            name.as_str(),
            "invalid_cpu" | "invalid_gpu" | "negative_gpu"
        ) {
            std::fs::create_dir_all(model.join("1")).unwrap();
        }
        // Triton runs each case with --strict-model-config=true and with
        // --disable-auto-complete-config: both mean auto-complete off.
        assert_fails(case, tmp.path(), false, pass, &mut failures);
    }
    report(
        "noautofill_platform",
        cases.len() * passes.len(),
        0,
        &failures,
    );
}

#[test]
fn autofill_noplatform() {
    let mut failures = Vec::new();
    let mut n = 0;
    let mut unsupported = 0;
    for backend in ["common", "custom", "ensemble", "onnx"] {
        for case in case_dirs(&format!("autofill_noplatform/{backend}")) {
            n += 1;
            let tmp = tempfile::tempdir().unwrap();
            if case.ends_with("ensemble/invalid_decoupled_branching") {
                // Needs Triton's decoupled `repeat` test backend, which this crate does not
                // have: the load fails, but on the missing backend (listed in the README).
                let tmp = tempfile::tempdir().unwrap();
                let repo = autofill_repo(&case, tmp.path(), true);
                let err = Repository::load(&repo).unwrap_err().to_string();
                assert!(
                    err.contains("unable to find backend library for backend 'repeat'"),
                    "{err}"
                );
                unsupported += 1;
                continue;
            }
            let no_version = case.ends_with("common/no_version");
            let repo = autofill_repo(&case, tmp.path(), !no_version);
            assert_fails(&case, &repo, true, Pass { emulated: false }, &mut failures);
        }
    }
    report("autofill_noplatform", n, unsupported, &failures);
}

/// Triton's expected configs come from a GPU machine; on a machine without a usable GPU a
/// default group is KIND_CPU with count 2 for onnxruntime (1 otherwise) and no gpus
/// (INDEX.md). With a GPU the expected config stands as Triton wrote it.
fn cpu_substitution(mut expected: ModelConfig, pass: Pass) -> ModelConfig {
    if pass.gpu() {
        return expected;
    }
    let count = if expected.backend == "onnxruntime" {
        2
    } else {
        1
    };
    for g in &mut expected.instance_group {
        if g.kind() == Kind::Gpu {
            g.set_kind(Kind::Cpu);
            g.gpus.clear();
            g.count = count;
        }
    }
    expected
}

#[test]
fn autofill_noplatform_success() {
    let mut failures = Vec::new();
    let mut n = 0;
    let passes = Pass::all();
    for backend in ["custom", "ensemble", "onnx"] {
        for (case, &pass) in case_dirs(&format!("autofill_noplatform_success/{backend}"))
            .into_iter()
            .flat_map(|c| passes.iter().map(move |p| (c.clone(), p)))
        {
            n += 1;
            let name = case.file_name().unwrap().to_string_lossy().to_string();
            let tmp = tempfile::tempdir().unwrap();
            let repo = autofill_repo(&case, tmp.path(), true);
            if name == "cpu_instance" {
                // Triton's CI copies `onnx_zero_1_float16` here; we generate it.
                std::fs::copy(
                    fixtures().join("generated/onnx_zero_1_float16.onnx"),
                    repo.join(&name).join("1/model.onnx"),
                )
                .unwrap();
            }
            let expected_dir = if case.join("expected").exists() {
                case.clone()
            } else {
                case.join(&name)
            };
            let loaded = match pass.load(&repo, true) {
                Ok(r) => r,
                Err(e) => {
                    failures.push(format!(
                        "{} ({pass:?}): failed to load: {e}",
                        case.display()
                    ));
                    continue;
                }
            };
            let got = loaded.model(&name).unwrap().config().clone();
            let matched = expected_files(&expected_dir).iter().any(|p| {
                let expected = ModelConfig::from_pbtxt_file(p).unwrap();
                cpu_substitution(expected, pass) == got
            });
            if !matched {
                failures.push(format!(
                    "{} ({pass:?}): completed config differs from every expected file; got:\n{}",
                    case.display(),
                    got.to_pbtxt()
                ));
            }
        }
    }
    report("autofill_noplatform_success", n, 0, &failures);
}

#[test]
fn special_cases() {
    let mut failures = Vec::new();
    let cases = case_dirs("special_cases");
    for case in &cases {
        let name = case.file_name().unwrap().to_string_lossy().to_string();
        let tmp = tempfile::tempdir().unwrap();
        copy_dir(case, &tmp.path().join(&name));
        std::fs::create_dir_all(tmp.path().join(&name).join("1")).unwrap();
        // invalid_platform runs with --disable-auto-complete-config, the others with defaults.
        assert_fails(
            case,
            tmp.path(),
            name != "invalid_platform",
            Pass { emulated: false },
            &mut failures,
        );
    }
    report("special_cases", cases.len(), 0, &failures);
}
