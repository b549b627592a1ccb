//! The EAST path against the tutorial's own client code: `fixtures/gen/east_reference.py` ran
//! the tutorial's `client.py` functions once (OpenCV + ONNX Runtime) on the tiny EAST/STR
//! fixtures and recorded the decoded candidates, the boxes `cv2.dnn.NMSBoxesRotated` kept, the
//! crops and the texts. modelyard must reproduce them.
#![cfg(feature = "ocr")]

mod common;

use common::fixtures;
use modelyard::ocr::ctc::{greedy_decode, Alphabet};
use modelyard::ocr::east;
use modelyard::ocr::geometry::RotatedRect;
use modelyard::{Repository, Tensor};
use ndarray::{Axis, Ix3};

fn floats(file: &str) -> Vec<f32> {
    let bytes = std::fs::read(fixtures().join("reference/east_pipeline").join(file)).unwrap();
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

#[test]
fn east_processing_matches_the_tutorial_client() {
    let result: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("reference/east_pipeline/result.json")).unwrap(),
    )
    .unwrap();
    let repo = Repository::load(fixtures().join("tutorial_repository")).unwrap();
    let img = image::open(fixtures().join(result["image"].as_str().unwrap()))
        .unwrap()
        .to_rgb8();
    assert_eq!(
        img.dimensions(),
        (640, 480),
        "no resize, so the blob is exact"
    );

    let blob = east::blob(&img);
    let out = repo
        .model("text_detection")
        .unwrap()
        .infer([("input_images:0", Tensor::from(blob.clone()))])
        .unwrap();
    let score = out
        .get("feature_fusion/Conv_7/Sigmoid:0")
        .unwrap()
        .view::<f32>()
        .unwrap();
    let geo = out
        .get("feature_fusion/concat_3:0")
        .unwrap()
        .view::<f32>()
        .unwrap();
    let score = score
        .index_axis(Axis(0), 0)
        .into_dimensionality::<Ix3>()
        .unwrap();
    let geo = geo
        .index_axis(Axis(0), 0)
        .into_dimensionality::<Ix3>()
        .unwrap();

    // 1. Decoded candidates: the same cells, the same boxes. A cell whose score lies within
    //    1e-4 of the threshold may fall on either side between engines.
    let boxes = east::decode(score, geo, 0.5);
    let reference = floats("candidates.bin");
    assert_eq!(
        reference.len(),
        result["candidates"].as_u64().unwrap() as usize * 8
    );
    let cell = |r: &[f32]| (r[6] as usize, r[7] as usize);
    let (_, width, _) = score.dim();
    let mut ours = std::collections::HashMap::new();
    {
        let mut i = 0;
        for y in 0..score.dim().0 {
            for x in 0..width {
                if score[[y, x, 0]] >= 0.5 {
                    ours.insert((x, y), i);
                    i += 1;
                }
            }
        }
        assert_eq!(i, boxes.len());
    }
    let mut matched = 0;
    for want in reference.chunks_exact(8) {
        let (x, y) = cell(want);
        match ours.get(&(x, y)) {
            Some(&i) => {
                let (r, s) = boxes[i];
                let got = [r.center.0, r.center.1, r.size.0, r.size.1, r.angle, s];
                for (g, w) in got.iter().zip(want) {
                    assert!(
                        (g - w).abs() <= 1e-3 * w.abs().max(1.0),
                        "cell ({x},{y}): {got:?} vs {want:?}"
                    );
                }
                matched += 1;
            }
            None => assert!(
                (want[5] - 0.5).abs() < 1e-4,
                "cell ({x},{y}) missing: {want:?}"
            ),
        }
    }
    assert!(
        boxes.len() - matched <= 3 && matched + 3 >= reference.len() / 8,
        "{matched} of {} / {}",
        boxes.len(),
        reference.len() / 8
    );

    // 2. NMS keeps the same boxes in the same order, on the candidates OpenCV was given.
    let recorded: Vec<(RotatedRect, f32)> = reference
        .chunks_exact(8)
        .map(|w| {
            (
                RotatedRect {
                    center: (w[0], w[1]),
                    size: (w[2], w[3]),
                    angle: w[4],
                },
                w[5],
            )
        })
        .collect();
    let kept = east::nms_rotated(&recorded, 0.5, 0.4);
    let want_kept: Vec<usize> = result["kept"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    assert_eq!(kept, want_kept);
    let boxes = recorded;

    // 3. The tutorial's crops (from the blob, with its gray-weight quirk), within a small
    //    tolerance (OpenCV warps with fixed-point bilinear weights).
    let crops = floats("crops.bin");
    let frame = east::blob_frame(blob.view());
    let rec = repo.model("text_recognition").unwrap();
    let texts: Vec<&str> = result["texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    let read = |crop: ndarray::Array3<f32>| {
        let out = rec
            .infer([("input.1", Tensor::from(crop.insert_axis(Axis(0))))])
            .unwrap();
        let scores = out.get("308").unwrap().view::<f32>().unwrap();
        let scores = scores
            .index_axis(Axis(0), 0)
            .into_dimensionality::<ndarray::Ix2>()
            .unwrap();
        greedy_decode(scores, &Alphabet::tutorial(), false).0
    };
    let (mut worst, mut same_text) = (0f32, 0);
    for (n, &k) in kept.iter().enumerate() {
        let crop = east::crop_tutorial_exact(&frame, &boxes[k].0.points()).unwrap();
        if let Some(want) = crops.get(n * 3200..(n + 1) * 3200) {
            let diff = crop
                .iter()
                .zip(want)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            worst = worst.max(diff);
            // 4. The recogniser and CTC decode give the tutorial's text for its own crop.
            let reference_crop =
                ndarray::Array3::from_shape_vec((1, 32, 100), want.to_vec()).unwrap();
            assert_eq!(read(reference_crop), texts[n], "crop {n}");
        }
        // The random-weight recogniser has near-ties, so a crop a few thousandths off can flip
        // one character: almost every text from our own crops must match.
        same_text += usize::from(read(crop) == texts[n]);
    }
    assert!(
        same_text * 100 >= kept.len() * 97,
        "{same_text} of {} texts match",
        kept.len()
    );
    assert!(worst < 0.05, "crops differ by up to {worst}");
}
