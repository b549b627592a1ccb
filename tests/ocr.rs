//! Golden end-to-end OCR tests: real photos through the embedded PaddleOCR repository, and the
//! tutorial-shaped EAST repository through the tutorial's processing.
#![cfg(feature = "ocr")]

mod common;

use std::sync::OnceLock;

use common::fixtures;
use modelyard::ocr::{east, geometry::quad_iou, Detector, OcrOptions, OcrPipeline, TextLine};
use modelyard::{ErrorKind, Repository, Tensor};
use ndarray::Axis;

fn ocr() -> &'static OcrPipeline {
    static P: OnceLock<OcrPipeline> = OnceLock::new();
    P.get_or_init(|| {
        let repo = Repository::load(fixtures().join("ocr_repository")).unwrap();
        OcrPipeline::from_repository(&repo, OcrOptions::default()).unwrap()
    })
}

fn read(name: &str) -> Vec<TextLine> {
    let img = image::open(fixtures().join("images").join(name))
        .unwrap()
        .to_rgb8();
    let (lines, _) = ocr().run(&img).unwrap();
    lines
}

#[test]
fn tutorial_photo_reads_stop() {
    assert_eq!(ocr().detector(), Detector::Db);
    let lines = read("img1.jpg");
    let stop = lines
        .iter()
        .find(|l| l.text == "STOP")
        .unwrap_or_else(|| panic!("no STOP in {lines:?}"));
    assert!(stop.confidence > 0.9, "{stop:?}");
    // The sign is in the middle of the 3000x4000 photo.
    let cx = stop.quad.iter().map(|p| p.0).sum::<f32>() / 4.0;
    assert!((1000.0..2000.0).contains(&cx), "{stop:?}");
}

/// Every word of every line of `truth.json` is read, and the boxes of the detections that
/// carry the line's words together cover the line's polygon with IoU >= 0.5.
#[test]
fn every_truth_word_is_found_where_it_is() {
    let truth: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("images/truth.json")).unwrap(),
    )
    .unwrap();
    for image in ["word_640x480.png", "sign_1280x720.png"] {
        let lines = read(image);
        for line in truth[image]["lines"].as_array().unwrap() {
            let words: Vec<&str> = line["words"]
                .as_array()
                .unwrap()
                .iter()
                .map(|w| w.as_str().unwrap())
                .collect();
            let hits: Vec<&TextLine> = lines
                .iter()
                .filter(|l| l.text.split_whitespace().any(|w| words.contains(&w)))
                .collect();
            for w in &words {
                assert!(
                    hits.iter()
                        .any(|l| l.text.split_whitespace().any(|x| x == *w)),
                    "{image}: '{w}' not found in {lines:?}"
                );
            }
            let pts: Vec<(f32, f32)> = hits.iter().flat_map(|l| l.quad).collect();
            let (x0, x1) = (
                pts.iter().map(|p| p.0).fold(f32::MAX, f32::min),
                pts.iter().map(|p| p.0).fold(f32::MIN, f32::max),
            );
            let (y0, y1) = (
                pts.iter().map(|p| p.1).fold(f32::MAX, f32::min),
                pts.iter().map(|p| p.1).fold(f32::MIN, f32::max),
            );
            let found = [(x0, y0), (x1, y0), (x1, y1), (x0, y1)];
            let poly: Vec<(f32, f32)> = line["polygon"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| (p[0].as_f64().unwrap() as f32, p[1].as_f64().unwrap() as f32))
                .collect();
            let iou = quad_iou(&found, &[poly[0], poly[1], poly[2], poly[3]]);
            assert!(
                iou >= 0.5,
                "{image} '{}': IoU {iou} of {found:?} vs {poly:?}",
                line["text"]
            );
        }
    }
}

#[test]
fn image_without_text_gives_no_lines() {
    let blank = image::RgbImage::from_pixel(320, 240, image::Rgb([200, 200, 200]));
    let (lines, _) = ocr().run(&blank).unwrap();
    assert!(lines.is_empty(), "{lines:?}");
    let tiny = image::RgbImage::from_pixel(1, 1, image::Rgb([0, 0, 0]));
    assert!(ocr().run(&tiny).unwrap().0.is_empty());
    let empty = image::RgbImage::new(0, 0);
    assert_eq!(
        ocr().run(&empty).unwrap_err().kind(),
        ErrorKind::InvalidInput
    );
}

#[test]
fn east_pipeline_runs_on_the_tutorial_repository() {
    let repo = Repository::load(fixtures().join("tutorial_repository")).unwrap();
    let east = OcrPipeline::from_repository(&repo, OcrOptions::default()).unwrap();
    assert_eq!(east.detector(), Detector::East);
    let img = image::open(fixtures().join("images/word_640x480.png"))
        .unwrap()
        .to_rgb8();
    // The tutorial-shaped fixtures have random weights: the text is noise, but every stage
    // runs, and every kept box is recognised (not only the first).
    let (lines, _) = east.run(&img).unwrap();
    // What the detector keeps, computed here from the model's own output: the pipeline must
    // recognise them all (a line is dropped only when its text decodes empty).
    let det = repo.model("text_detection").unwrap();
    let out = det
        .infer([("input_images:0", Tensor::from(east::blob(&img)))])
        .unwrap();
    let pick = |c: usize| {
        out.iter()
            .find(|(_, t)| t.shape()[3] == c)
            .unwrap()
            .1
            .view::<f32>()
            .unwrap()
            .index_axis(Axis(0), 0)
            .into_dimensionality::<ndarray::Ix3>()
            .unwrap()
            .to_owned()
    };
    let (score, geo) = (pick(1), pick(5));
    let boxes = east::decode(score.view(), geo.view(), 0.5);
    let kept = east::nms_rotated(&boxes, 0.5, 0.4);
    // The random-weight recogniser never decodes an empty string on these crops (550 boxes
    // kept, 550 lines when this was written): every kept box must come back as a line.
    assert!(
        kept.len() >= 2,
        "the fixture keeps several boxes: {}",
        kept.len()
    );
    assert_eq!(lines.len(), kept.len(), "one line per kept box: {lines:?}");
    for l in &lines {
        assert!(
            l.text
                .chars()
                .all(|c| c.is_ascii_digit() || c.is_ascii_lowercase()),
            "{l:?}"
        );
    }
}

#[test]
fn unknown_detector_outputs_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let det = tmp.path().join("text_detection");
    let rec = tmp.path().join("text_recognition");
    for (dir, onnx) in [
        (&det, "generated/add_sub_fp32_batch.onnx"),
        (&rec, "tutorial_repository/text_recognition/1/model.onnx"),
    ] {
        std::fs::create_dir_all(dir.join("1")).unwrap();
        std::fs::copy(fixtures().join(onnx), dir.join("1/model.onnx")).unwrap();
    }
    let repo = Repository::load(tmp.path()).unwrap();
    let e = OcrPipeline::from_repository(&repo, OcrOptions::default())
        .err()
        .unwrap();
    assert_eq!(e.kind(), ErrorKind::Unsupported);
    assert!(
        e.to_string()
            .contains("detection model 'text_detection' has outputs [OUTPUT0 [16], OUTPUT1 [16]]"),
        "{e}"
    );
}

/// Triton's classification extension on PaddleOCR's angle classifier, whose output has the
/// label file `0` / `180`.
#[test]
fn angle_classifier_top_class_with_labels() {
    use modelyard::ocr::image_ops::{batch_bgr_normalized, resize};
    let repo = Repository::load(fixtures().join("ocr_repository")).unwrap();
    let cls = repo.model("text_classification").unwrap();
    let img = image::open(fixtures().join("images/word_640x480.png"))
        .unwrap()
        .to_rgb8();
    let word = image::imageops::crop_imm(&img, 110, 185, 420, 110).to_image();
    let upright = resize(&word, 184, 48);
    let flipped = image::imageops::rotate180(&upright);
    let x = batch_bgr_normalized(&[upright, flipped], 48, 192);
    let out = cls
        .infer_classes(
            [("x", modelyard::Tensor::from(x))],
            &[("save_infer_model/scale_0.tmp_1", 1)],
        )
        .unwrap();
    let classes = out.get("save_infer_model/scale_0.tmp_1").unwrap();
    assert_eq!(classes.data_type(), modelyard::config::DataType::TypeString);
    assert_eq!(classes.shape(), &[2, 1]);
    let texts: Vec<String> = classes
        .bytes()
        .unwrap()
        .iter()
        .map(|b| String::from_utf8(b.to_vec()).unwrap())
        .collect();
    assert!(texts[0].ends_with(":0:0"), "{texts:?}");
    assert!(texts[1].ends_with(":1:180"), "{texts:?}");
    let score: f32 = texts[1].split(':').next().unwrap().parse().unwrap();
    assert!(score > 0.9, "{texts:?}");
    assert_eq!(
        texts[1]
            .split(':')
            .next()
            .unwrap()
            .split('.')
            .nth(1)
            .unwrap()
            .len(),
        6,
        "six decimals, as std::to_string"
    );
}

/// The image file's bytes through the repository's `ensemble_model`: its `recognized_text`.
fn ensemble_texts(repo: &Repository, image: &std::path::Path) -> Vec<String> {
    let bytes = std::fs::read(image).unwrap();
    let n = bytes.len();
    let input = modelyard::Tensor::from(ndarray::Array2::from_shape_vec((1, n), bytes).unwrap());
    let out = repo
        .model("ensemble_model")
        .unwrap()
        .infer([("input_image", input)])
        .unwrap();
    out.get("recognized_text")
        .unwrap()
        .bytes()
        .unwrap()
        .iter()
        .map(|b| String::from_utf8(b.to_vec()).unwrap())
        .collect()
}

/// The tutorial's Part 5 repository (image bytes in, text out) with the pre/post-processing
/// steps as native models reads what the plain EAST pipeline reads.
#[test]
fn part5_ensemble_reads_like_the_plain_pipeline() {
    let repo = modelyard::ocr::steps::tutorial_steps(Repository::builder(
        fixtures().join("ensemble_repository"),
    ))
    .load()
    .unwrap();
    let path = fixtures().join("images/word_640x480.png");
    let texts = ensemble_texts(&repo, &path);

    let plain_repo = Repository::load(fixtures().join("tutorial_repository")).unwrap();
    let plain = OcrPipeline::from_repository(
        &plain_repo,
        OcrOptions {
            tutorial_exact: true,
            ..Default::default()
        },
    )
    .unwrap();
    let (lines, _) = plain.run(&image::open(&path).unwrap().to_rgb8()).unwrap();
    let from_ensemble: Vec<&str> = texts
        .iter()
        .map(String::as_str)
        .filter(|t| !t.is_empty())
        .collect();
    let from_pipeline: Vec<&str> = lines.iter().map(|l| l.text.as_str()).collect();
    assert!(!from_pipeline.is_empty());
    assert_eq!(from_ensemble, from_pipeline);

    let e = repo
        .model("ensemble_model")
        .unwrap()
        .infer([(
            "input_image",
            modelyard::Tensor::from(ndarray::Array2::<u8>::zeros((1, 10))),
        )])
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("input_image is not a readable image"),
        "{e}"
    );
}

/// The same Part 5 repository shape with the PaddleOCR models and the `ppocr_*` steps reads a
/// real photo: the same lines as the plain DB pipeline (without the angle classifier, which
/// the ensemble does not have).
#[test]
fn part5_ppocr_ensemble_reads_like_the_plain_pipeline() {
    let repo = modelyard::ocr::steps::ppocr_steps(Repository::builder(
        fixtures().join("ensemble_repository_ppocr"),
    ))
    .load()
    .unwrap();
    let path = fixtures().join("images/sign_1280x720.png");
    let texts: Vec<String> = ensemble_texts(&repo, &path)
        .into_iter()
        .filter(|t| !t.is_empty())
        .collect();

    let plain_repo = Repository::load(fixtures().join("ocr_repository")).unwrap();
    let plain = OcrPipeline::from_repository(
        &plain_repo,
        OcrOptions {
            use_classifier: false,
            ..Default::default()
        },
    )
    .unwrap();
    let (lines, _) = plain.run(&image::open(&path).unwrap().to_rgb8()).unwrap();
    let from_pipeline: Vec<&str> = lines.iter().map(|l| l.text.as_str()).collect();
    assert!(!from_pipeline.is_empty());
    assert_eq!(texts, from_pipeline);
}
