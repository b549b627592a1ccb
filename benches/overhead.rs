//! What modelyard adds on top of the engine: the same tract plan called directly vs through
//! `Model::infer` (input checks, plan-cache lookup, output naming), side by side in one run;
//! plus config parsing and repository loading.

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::time::Duration;

use common::fixtures;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use modelyard::{config::ModelConfig, Repository, Tensor};
use tract_onnx::prelude::*;

/// A copy of the repository `src` in which every model runs on the CPU: its instance groups
/// replaced by one `KIND_CPU` group. On a GPU host `KIND_AUTO` would take the GPU, and this
/// bench compares modelyard's CPU path with tract's plan (GPU numbers: benches/gpu.rs).
fn on_cpu(src: &Path) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    common::copy_dir(src, tmp.path());
    for entry in std::fs::read_dir(tmp.path()).unwrap() {
        let config = entry.unwrap().path().join("config.pbtxt");
        let text = std::fs::read_to_string(&config).unwrap_or_default();
        assert!(!text.contains("instance_group"), "{}", config.display());
        std::fs::write(
            &config,
            format!("{text}\ninstance_group [ {{ kind: KIND_CPU }} ]\n"),
        )
        .unwrap();
    }
    tmp
}

/// `on_cpu` of the tutorial's Part 1 repository, loaded.
fn tutorial_on_cpu() -> (tempfile::TempDir, Repository) {
    let tmp = on_cpu(&fixtures().join("tutorial_repository"));
    let repo = Repository::load(tmp.path()).unwrap();
    for m in ["text_detection", "text_recognition"] {
        let kind = repo.model(m).unwrap().config().instance_group[0].kind();
        assert_eq!(kind.as_str_name(), "KIND_CPU", "{m}");
    }
    (tmp, repo)
}

fn direct_plan(model: &Path, shapes: &[&[usize]]) -> std::sync::Arc<TypedRunnableModel> {
    let mut m = tract_onnx::onnx().model_for_path(model).unwrap();
    for (i, s) in shapes.iter().enumerate() {
        m.set_input_fact(i, f32::fact(*s).into()).unwrap();
    }
    m.into_optimized().unwrap().into_runnable().unwrap()
}

/// modelyard vs tract on one model and input set.
fn compare(
    c: &mut Criterion,
    group: &str,
    repo: &Repository,
    model: &str,
    file: &Path,
    inputs: Vec<(&str, tract_ndarray::ArrayD<f32>)>,
) {
    let shapes: Vec<&[usize]> = inputs.iter().map(|(_, a)| a.shape()).collect();
    let plan = direct_plan(file, &shapes);
    let handle = repo.model(model).unwrap();
    let tensors: Vec<(String, Tensor)> = inputs
        .iter()
        .map(|(n, a)| (n.to_string(), Tensor::from(a.clone())))
        .collect();
    let values: TVec<TValue> = inputs
        .iter()
        .map(|(_, a)| a.clone().into_tensor().into_tvalue())
        .collect();
    let mut g = c.benchmark_group(group);
    g.bench_function(BenchmarkId::new("tract_direct", model), |b| {
        b.iter(|| plan.run(values.clone()).unwrap())
    });
    g.bench_function(BenchmarkId::new("modelyard_infer", model), |b| {
        b.iter(|| handle.infer(tensors.clone()).unwrap())
    });
    g.finish();
}

fn infer_overhead(c: &mut Criterion) {
    let (_tmp, tutorial) = tutorial_on_cpu();
    let crop = tract_ndarray::ArrayD::<f32>::from_shape_fn(vec![1, 1, 32, 100], |d| {
        (d[3] as f32 / 50.0) - 1.0
    });
    compare(
        c,
        "infer_overhead",
        &tutorial,
        "text_recognition",
        &fixtures().join("tutorial_repository/text_recognition/1/model.onnx"),
        vec![("input.1", crop)],
    );
    let img = tract_ndarray::ArrayD::<f32>::from_shape_fn(vec![1, 480, 640, 3], |d| {
        ((d[1] * 7 + d[2] * 3 + d[3]) % 255) as f32 - 120.0
    });
    compare(
        c,
        "infer_overhead",
        &tutorial,
        "text_detection",
        &fixtures().join("tutorial_repository/text_detection/1/model.onnx"),
        vec![("input_images:0", img)],
    );

    // A tiny model, where a fixed per-call cost would show most.
    let src = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(src.path().join("add_sub/1")).unwrap();
    std::fs::copy(
        fixtures().join("generated/add_sub_fp32_batch.onnx"),
        src.path().join("add_sub/1/model.onnx"),
    )
    .unwrap();
    let tmp = on_cpu(src.path());
    let dir = tmp.path().join("add_sub");
    let small = Repository::load(tmp.path()).unwrap();
    let a = tract_ndarray::ArrayD::<f32>::ones(vec![1, 16]);
    compare(
        c,
        "infer_overhead",
        &small,
        "add_sub",
        &dir.join("1/model.onnx"),
        vec![("INPUT0", a.clone()), ("INPUT1", a)],
    );
}

/// PaddleOCR's DB detector at the sign's size (1x3x736x1280), one thread. (Under tract 0.21 a
/// rewrite of its nearest Resize nodes into Expand made it 2x faster; measured here on 0.23.9
/// it no longer paid, and was removed.)
fn ppocr_detector(c: &mut Criterion) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ppocr_det");
    std::fs::create_dir_all(dir.join("1")).unwrap();
    let file = fixtures().join("ocr_repository/text_detection/1/model.onnx");
    std::fs::copy(&file, dir.join("1/model.onnx")).unwrap();
    std::fs::write(
        dir.join("config.pbtxt"),
        "backend: \"onnxruntime\"\nmax_batch_size: 0\n\
         instance_group [ { count: 1, kind: KIND_CPU } ]\n",
    )
    .unwrap();
    let repo = Repository::load(tmp.path()).unwrap();
    let x = tract_ndarray::ArrayD::<f32>::from_shape_fn(vec![1, 3, 736, 1280], |d| {
        ((d[1] * 7 + d[2] * 3 + d[3]) % 255) as f32 / 127.5 - 1.0
    });
    compare(
        c,
        "infer_overhead",
        &repo,
        "ppocr_det",
        &file,
        vec![("x", x)],
    );
}

fn config_parse(c: &mut Criterion) {
    let mut g = c.benchmark_group("config_parse");
    for (label, path) in [
        (
            "tutorial_part1_text_detection",
            "tutorial-configs/Part_1-model_deployment/model_repository/text_detection/config.pbtxt",
        ),
        (
            "tutorial_part5_ensemble",
            "tutorial-configs/Part_5-Model_Ensembles/model_repository/ensemble_model/config.pbtxt",
        ),
        (
            "tutorial_part4_ort_trt",
            "tutorial-configs/Part_4-inference_acceleration/sample_configs/ORT_TRT_config.pbtxt",
        ),
    ] {
        let text = std::fs::read_to_string(fixtures().join(path)).unwrap();
        g.bench_function(label, |b| {
            b.iter(|| ModelConfig::from_pbtxt(&text).unwrap())
        });
    }
    g.finish();
}

fn repository_load(c: &mut Criterion) {
    let mut g = c.benchmark_group("repository_load");
    let tmp = on_cpu(&fixtures().join("tutorial_repository"));
    g.bench_function("tutorial_repository", |b| {
        b.iter(|| Repository::load(tmp.path()).unwrap())
    });
    g.finish();
}

/// What `model_warmup` buys: load time and the latency of the first request, with and without
/// a warmup sample of the request's shape (tract compiles a plan per input shape on first use).
fn warmup(c: &mut Criterion) {
    let mut g = c.benchmark_group("warmup");
    g.sample_size(10);
    let warm = r#"
model_warmup [ { name: "zeros" batch_size: 1 inputs { key: "input_images:0" value: {
  data_type: TYPE_FP32 dims: [ 1, 480, 640, 3 ] zero_data: true } } } ]"#;
    let img = Tensor::from(tract_ndarray::ArrayD::<f32>::zeros(vec![1, 480, 640, 3]));
    for (label, extra) in [("no_warmup", ""), ("warmup", warm)] {
        let tmp = on_cpu(&fixtures().join("tutorial_repository"));
        std::fs::remove_dir_all(tmp.path().join("text_recognition")).unwrap();
        let config = tmp.path().join("text_detection/config.pbtxt");
        let text = std::fs::read_to_string(&config).unwrap();
        std::fs::write(&config, format!("{text}\n{extra}")).unwrap();
        g.bench_function(BenchmarkId::new("load", label), |b| {
            b.iter(|| Repository::load(tmp.path()).unwrap())
        });
        g.bench_function(BenchmarkId::new("first_request", label), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let repo = Repository::load(tmp.path()).unwrap();
                    let m = repo.model("text_detection").unwrap();
                    let start = std::time::Instant::now();
                    m.infer([("input_images:0", img.clone())]).unwrap();
                    total += start.elapsed();
                }
                total
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(4)).sample_size(30);
    targets = infer_overhead, ppocr_detector, config_parse, repository_load, warmup
}
criterion_main!(benches);
