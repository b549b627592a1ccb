//! CPU engines side by side (issue 14), in one run: per model and thread count, three rows,
//!
//! - `modelyard`: `Model::infer` on a `KIND_CPU` group with `intra_op_thread_count`, the
//!   native CPU engine a Triton repository gets by default (the lowering the GPU uses, our
//!   Rust kernels: an AVX-512 GEMM microkernel, vectorised element-wise loops, the shared
//!   spinning pool for the second thread);
//! - `modelyard_tract`: the same with `engine: "tract"` (tract's optimised plan behind our
//!   checks);
//! - `tract`: the same tract plan called directly (tract's multithreaded executor for 2
//!   threads), so the difference to `modelyard_tract` is our overhead;
//! - `ort`: ONNX Runtime 1.32 in the same process, the engine Triton itself uses for
//!   `backend: "onnxruntime"` (`--features bench-ort`; the library is loaded at run time from
//!   `ORT_DYLIB_PATH`, e.g. `onnxruntime/capi/libonnxruntime.so.1.32.0` inside the
//!   `onnxruntime` wheel from PyPI; without either, those rows print a notice).
//!
//! Throughput is in FLOP, so criterion's `elem/s` reads as FLOP/s: each graph's FLOPs are
//! counted from tract's cost model of the decluttered graph at the bench shape (2 per FMA),
//! printed once per model beside this core's measured FMA peak (~247 GFLOP/s on one core,
//! ~428 on both; `../shared/spec/cpu-kernels.md`).
//!
//! `cargo bench --bench cpu --features bench-ort` with `ORT_DYLIB_PATH` set. The models are
//! the real PP-OCRv4 detector, recogniser (batch 1 and 6) and orientation classifier, the
//! tutorial EAST and STR *fixtures* (the tf2onnx / torch.onnx structure at small widths), and
//! the full-size tutorial architectures (EAST with ResNet-50, 45 GFLOP at 480x640; the STR
//! ResNet-CTC), generated, not committed: `python3 fixtures/gen/generate.py --full` writes them
//! to `target/fullsize/` (needs `onnx` and `numpy`); without them those rows print a notice.

use std::path::{Path, PathBuf};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use modelyard::{Repository, Tensor};
use tract_linalg::multithread::{multithread_tract_scope, Executor};
use tract_onnx::prelude::*;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// One model at one input shape.
struct Case {
    name: &'static str,
    /// Relative to `fixtures/` (`../target/fullsize/` for the generated full-size models).
    file: &'static str,
    input: &'static str,
    shape: &'static [usize],
}

const CASES: &[Case] = &[
    Case {
        name: "ppocr_det_1x3x736x1280",
        file: "ocr_repository/text_detection/1/model.onnx",
        input: "x",
        shape: &[1, 3, 736, 1280],
    },
    Case {
        name: "ppocr_rec_1x3x48x320",
        file: "ocr_repository/text_recognition/1/model.onnx",
        input: "x",
        shape: &[1, 3, 48, 320],
    },
    Case {
        name: "ppocr_rec_6x3x48x320",
        file: "ocr_repository/text_recognition/1/model.onnx",
        input: "x",
        shape: &[6, 3, 48, 320],
    },
    Case {
        name: "ppocr_cls_6x3x48x192",
        file: "ocr_repository/text_classification/1/model.onnx",
        input: "x",
        shape: &[6, 3, 48, 192],
    },
    Case {
        name: "str_fixture_1x1x32x100",
        file: "tutorial_repository/text_recognition/1/model.onnx",
        input: "input.1",
        shape: &[1, 1, 32, 100],
    },
    Case {
        name: "east_fixture_1x480x640x3",
        file: "tutorial_repository/text_detection/1/model.onnx",
        input: "input_images:0",
        shape: &[1, 480, 640, 3],
    },
    Case {
        name: "str_resnet_1x1x32x100",
        file: "../target/fullsize/str_resnet.onnx",
        input: "input.1",
        shape: &[1, 1, 32, 100],
    },
    Case {
        name: "east_resnet50_1x480x640x3",
        file: "../target/fullsize/east_resnet50.onnx",
        input: "input_images:0",
        shape: &[1, 480, 640, 3],
    },
];

/// A deterministic input in [-1, 1].
fn input(shape: &[usize]) -> tract_ndarray::ArrayD<f32> {
    tract_ndarray::ArrayD::from_shape_fn(shape.to_vec(), |d| {
        let i: usize = tract_ndarray::Dimension::slice(&d)
            .iter()
            .enumerate()
            .map(|(k, v)| v * (k * 7 + 3))
            .sum();
        (i % 255) as f32 / 127.5 - 1.0
    })
}

fn typed(file: &Path, shape: &[usize]) -> TypedModel {
    let mut m = tract_onnx::onnx().model_for_path(file).unwrap();
    m.set_input_fact(0, f32::fact(shape).into()).unwrap();
    m.into_typed().unwrap().into_decluttered().unwrap()
}

/// FLOPs of one inference: tract's cost model of the decluttered graph, 2 per FMA.
fn flops(model: &TypedModel) -> u64 {
    let mut fma = 0i64;
    for node in model.nodes() {
        let facts: TVec<&TypedFact> = node
            .inputs
            .iter()
            .map(|i| model.outlet_fact(*i).unwrap())
            .collect();
        for (cost, n) in node.op.cost(&facts).unwrap_or_default() {
            if matches!(cost, tract_onnx::tract_core::ops::Cost::FMA(_)) {
                fma += n.to_i64().unwrap_or(0);
            }
        }
    }
    2 * fma.max(0) as u64
}

/// A one-model repository for `case` with `threads` intra-op threads on one CPU instance.
fn repository(case: &Case, threads: usize, engine: &str) -> (tempfile::TempDir, Repository) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m");
    std::fs::create_dir_all(dir.join("1")).unwrap();
    std::fs::copy(fixtures().join(case.file), dir.join("1/model.onnx")).unwrap();
    // A batch of 6 needs batching; 0 lets auto-complete decide for the others (as Triton).
    let max_batch = if case.shape[0] > 1 { 8 } else { 0 };
    std::fs::write(
        dir.join("config.pbtxt"),
        format!(
            "backend: \"onnxruntime\"\nmax_batch_size: {max_batch}\n\
             instance_group [ {{ count: 1, kind: KIND_CPU }} ]\n\
             parameters {{ key: \"intra_op_thread_count\" value: {{ string_value: \"{threads}\" }} }}\n\
             parameters {{ key: \"engine\" value: {{ string_value: \"{engine}\" }} }}\n"
        ),
    )
    .unwrap();
    let repo = Repository::load(tmp.path()).unwrap();
    (tmp, repo)
}

#[cfg(feature = "bench-ort")]
mod ort_rows {
    use std::sync::OnceLock;

    /// Whether ONNX Runtime could be loaded (once per process), or why not.
    pub fn ready() -> Result<(), String> {
        static INIT: OnceLock<Result<(), String>> = OnceLock::new();
        INIT.get_or_init(|| {
            let path = std::env::var("ORT_DYLIB_PATH").map_err(|_| {
                "ORT_DYLIB_PATH is not set (point it at onnxruntime/capi/libonnxruntime.so.1.32.0 \
                 from the onnxruntime wheel)"
                    .to_string()
            })?;
            ort::init_from(&path).map_err(|e| e.to_string())?.commit();
            Ok(())
        })
        .clone()
    }

    /// A session on `file` with `threads` intra-op threads, all optimisations (ORT's
    /// default for Triton's onnxruntime backend), spinning allowed (its default).
    pub fn session(file: &std::path::Path, threads: usize) -> ort::session::Session {
        ort::session::Session::builder()
            .and_then(|b| b.with_intra_threads(threads))
            .and_then(|b| b.with_inter_threads(1))
            .and_then(|b| {
                b.with_optimization_level(ort::session::builder::GraphOptimizationLevel::Level3)
            })
            .and_then(|b| b.commit_from_file(file))
            .unwrap()
    }
}

fn engines(c: &mut Criterion) {
    #[cfg(not(feature = "bench-ort"))]
    eprintln!("NOTICE: built without `bench-ort`: no ONNX Runtime rows");
    #[cfg(feature = "bench-ort")]
    if let Err(why) = ort_rows::ready() {
        eprintln!("NOTICE: no ONNX Runtime rows: {why}");
    }
    for case in CASES {
        let file = fixtures().join(case.file);
        if !file.exists() {
            eprintln!(
                "NOTICE: no {} rows: {} is missing (`python3 fixtures/gen/generate.py --full` \
                 generates the full-size models)",
                case.name,
                file.display()
            );
            continue;
        }
        let model = typed(&file, case.shape);
        let flops = flops(&model);
        eprintln!(
            "{}: {:.2} GFLOP per inference (criterion's elem/s = FLOP/s; peak ~247 G/s on 1 core, ~428 on 2)",
            case.name,
            flops as f64 / 1e9
        );
        let plan = model.into_optimized().unwrap().into_runnable().unwrap();
        let x = input(case.shape);
        let value = x.clone().into_tensor().into_tvalue();
        let tensor = Tensor::from(x.clone());
        for threads in [1usize, 2] {
            let mut g = c.benchmark_group(format!("cpu/{}", case.name));
            g.throughput(Throughput::Elements(flops));
            g.sample_size(10);
            g.warm_up_time(Duration::from_millis(500));
            g.measurement_time(Duration::from_secs(3));
            // The default engine (native with the `cuda` feature), then tract's plan behind
            // the same checks.
            for (row, engine) in [("modelyard", "native"), ("modelyard_tract", "tract")] {
                if engine == "native" && !cfg!(feature = "cuda") {
                    continue;
                }
                let (_tmp, repo) = repository(case, threads, engine);
                let handle = repo.model("m").unwrap();
                g.bench_function(BenchmarkId::new(row, format!("{threads}t")), |b| {
                    b.iter(|| handle.infer([(case.input, tensor.clone())]).unwrap())
                });
            }
            let executor = (threads > 1).then(|| Executor::multithread(threads));
            g.bench_function(BenchmarkId::new("tract", format!("{threads}t")), |b| {
                b.iter(|| match &executor {
                    Some(ex) => {
                        multithread_tract_scope(ex.clone(), || plan.run(tvec![value.clone()]))
                            .unwrap()
                    }
                    None => plan.run(tvec![value.clone()]).unwrap(),
                })
            });
            #[cfg(feature = "bench-ort")]
            if ort_rows::ready().is_ok() {
                let mut session = ort_rows::session(&file, threads);
                g.bench_function(BenchmarkId::new("ort", format!("{threads}t")), |b| {
                    b.iter(|| {
                        let t = ort::value::TensorRef::from_array_view(x.view()).unwrap();
                        let out = session.run(ort::inputs![case.input => t]).unwrap();
                        std::hint::black_box(out.len())
                    })
                });
            }
            g.finish();
        }
    }
}

criterion_group!(benches, engines);
criterion_main!(benches);
