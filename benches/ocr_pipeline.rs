//! The OCR pipeline on the tutorial's photo (`fixtures/images/img1.jpg`, 3000x4000) with the
//! embedded PaddleOCR repository: the whole run and each stage. Compare with
//! `benches/rapidocr_compare.py` (rapidocr_onnxruntime 1.4.4 + ONNX Runtime), run just before or
//! after on the same machine.

use std::path::{Path, PathBuf};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use modelyard::ocr::{db, OcrOptions, OcrPipeline};
use modelyard::{Repository, Tensor};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

fn ocr(c: &mut Criterion) {
    // Every model of `ocr_repository` is `KIND_CPU` (GPU numbers are in benches/gpu.rs).
    let repo = Repository::load(fixtures().join("ocr_repository")).unwrap();
    for m in ["text_detection", "text_recognition", "text_classification"] {
        let kind = repo.model(m).unwrap().config().instance_group[0].kind();
        assert_eq!(kind.as_str_name(), "KIND_CPU", "{m}");
    }
    let pipeline = OcrPipeline::from_repository(&repo, OcrOptions::default()).unwrap();
    let bytes = std::fs::read(fixtures().join("images/img1.jpg")).unwrap();
    let img = image::load_from_memory(&bytes).unwrap().to_rgb8();
    let sign = image::open(fixtures().join("images/sign_1280x720.png"))
        .unwrap()
        .to_rgb8();
    // Build the plans once (first use of each shape), as a long-running service would.
    pipeline.run(&img).unwrap();
    pipeline.run(&sign).unwrap();

    let mut g = c.benchmark_group("ocr");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(20))
        .warm_up_time(Duration::from_secs(1));
    g.bench_function("img1_whole_pipeline", |b| {
        b.iter(|| pipeline.run(&img).unwrap())
    });
    g.bench_function("sign_1280x720_whole_pipeline", |b| {
        b.iter(|| pipeline.run(&sign).unwrap())
    });
    g.bench_function("img1_decode_jpeg", |b| {
        b.iter(|| image::load_from_memory(&bytes).unwrap().to_rgb8())
    });

    // Stages on the 1280x720 image (detector input 1280x736).
    let params = db::DbParams::default();
    let x = db::preprocess(&sign, &params);
    g.bench_function("sign_db_preprocess", |b| {
        b.iter(|| db::preprocess(&sign, &params))
    });
    let det = repo.model("text_detection").unwrap();
    // Built once: a `Tensor` clone shares its data, so the timed loop copies no 11 MB input.
    let x = Tensor::from(x);
    g.bench_function("sign_db_detector_model", |b| {
        b.iter(|| det.infer([("x", x.clone())]).unwrap())
    });
    let out = det.infer([("x", x.clone())]).unwrap();
    let prob = out.get("sigmoid_0.tmp_0").unwrap().view::<f32>().unwrap();
    let map = prob.slice(ndarray::s![0, 0, .., ..]);
    g.bench_function("sign_db_postprocess", |b| {
        b.iter(|| db::postprocess(map, sign.width(), sign.height(), &params))
    });
    g.finish();
}

criterion_group!(benches, ocr);
criterion_main!(benches);
