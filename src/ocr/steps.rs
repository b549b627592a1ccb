//! The Triton tutorial's Part 5 OCR ensemble steps, written in Rust as native models
//! (the tutorial writes them as Python models): `detection_preprocessing`,
//! `detection_postprocessing` and `recognition_postprocessing` around the EAST detector and
//! the 37-class recogniser. Register them with [`tutorial_steps`] and select them in a
//! `config.pbtxt` with `backend: "east_detection_preprocessing"` (and so on).

use ndarray::{s, ArrayD, Axis, Ix3, Ix4};

use super::ctc::{greedy_decode, Alphabet};
use super::db::{self, DbParams};
use super::east;
use super::pipeline::{db_crop, db_resize, rec_batch};
use crate::{Element, Error, NativeModel, RepositoryBuilder, Result, Tensor};

fn first_input(inputs: &[(String, Tensor)], i: usize) -> Result<&Tensor> {
    inputs
        .get(i)
        .map(|(_, t)| t)
        .ok_or_else(|| Error::invalid_input("missing input"))
}

/// Input `i` as a typed view of rank `D`.
fn input_view<T: Element, D: ndarray::Dimension>(
    inputs: &[(String, Tensor)],
    i: usize,
) -> Result<ndarray::ArrayView<'_, T, D>> {
    first_input(inputs, i)?
        .view::<T>()?
        .into_dimensionality::<D>()
        .map_err(|e| Error::invalid_input(e.to_string()))
}

fn output_name(outputs: &[String]) -> String {
    outputs.first().cloned().unwrap_or_default()
}

/// Image file bytes (`UINT8 [batch, n]`) → the tutorial's 640×480 blob `[batch, 480, 640, 3]`.
struct DetectionPreprocessing;

impl NativeModel for DetectionPreprocessing {
    fn execute(
        &self,
        inputs: &[(String, Tensor)],
        outputs: &[String],
    ) -> Result<Vec<(String, Tensor)>> {
        let bytes = first_input(inputs, 0)?.view::<u8>()?;
        let mut blobs = Vec::new();
        for item in bytes.outer_iter() {
            blobs.push(east::blob(&decode_image(item)?));
        }
        let views: Vec<_> = blobs.iter().map(|b| b.index_axis(Axis(0), 0)).collect();
        let batch =
            ndarray::stack(Axis(0), &views).map_err(|e| Error::invalid_input(e.to_string()))?;
        Ok(vec![(output_name(outputs), Tensor::from(batch))])
    }
}

/// Score `[b, H, W, 1]`, geometry `[b, H, W, 5]` and blob `[b, 480, 640, 3]` → the tutorial's
/// crops of every box kept by NMS, `[crops, 1, 32, 100]` (taken from the blob, as the
/// tutorial's step does).
struct DetectionPostprocessing;

impl NativeModel for DetectionPostprocessing {
    fn execute(
        &self,
        inputs: &[(String, Tensor)],
        outputs: &[String],
    ) -> Result<Vec<(String, Tensor)>> {
        let shape_err = |e: ndarray::ShapeError| Error::invalid_input(e.to_string());
        let scores = input_view::<f32, Ix4>(inputs, 0)?;
        let geometry = input_view::<f32, Ix4>(inputs, 1)?;
        let blob = input_view::<f32, Ix4>(inputs, 2)?;
        let mut crops = Vec::new();
        for b in 0..scores.len_of(Axis(0)) {
            let boxes = east::decode(
                scores
                    .index_axis(Axis(0), b)
                    .into_dimensionality::<Ix3>()
                    .map_err(shape_err)?,
                geometry
                    .index_axis(Axis(0), b)
                    .into_dimensionality::<Ix3>()
                    .map_err(shape_err)?,
                0.5,
            );
            let frame = east::blob_frame(blob.slice(s![b..b + 1, .., .., ..]));
            for k in east::nms_rotated(&boxes, 0.5, 0.4) {
                if let Some(c) = east::crop_tutorial_exact(&frame, &boxes[k].0.points()) {
                    crops.push(c);
                }
            }
        }
        let views: Vec<_> = crops.iter().map(|c| c.view()).collect();
        let batch = if views.is_empty() {
            ndarray::Array4::zeros((0, 1, east::CROP_H as usize, east::CROP_W as usize))
        } else {
            ndarray::stack(Axis(0), &views).map_err(shape_err)?
        };
        Ok(vec![(output_name(outputs), Tensor::from(batch))])
    }
}

/// Recogniser scores `[n, 26, 37]` → texts, BYTES `[n, 1]` (greedy CTC over `0-9a-z`).
struct RecognitionPostprocessing;

impl NativeModel for RecognitionPostprocessing {
    fn execute(
        &self,
        inputs: &[(String, Tensor)],
        outputs: &[String],
    ) -> Result<Vec<(String, Tensor)>> {
        let scores = input_view::<f32, Ix3>(inputs, 0)?;
        let alphabet = Alphabet::tutorial();
        let texts: Vec<String> = scores
            .outer_iter()
            .map(|s| greedy_decode(s, &alphabet, false).0)
            .collect();
        let n = texts.len();
        let arr = ArrayD::from_shape_vec(vec![n, 1], texts)
            .map_err(|e| Error::invalid_input(e.to_string()))?;
        Ok(vec![(
            output_name(outputs),
            Tensor::from_bytes(arr.shape(), arr.iter().map(String::as_bytes))?,
        )])
    }
}

/// Registers the tutorial's Part 5 steps as native backends `east_detection_preprocessing`,
/// `east_detection_postprocessing` and `east_recognition_postprocessing`.
pub fn tutorial_steps(builder: RepositoryBuilder) -> RepositoryBuilder {
    builder
        .native_backend("east_detection_preprocessing", |_| {
            Ok(Box::new(DetectionPreprocessing) as Box<dyn NativeModel>)
        })
        .native_backend("east_detection_postprocessing", |_| {
            Ok(Box::new(DetectionPostprocessing) as Box<dyn NativeModel>)
        })
        .native_backend("east_recognition_postprocessing", |_| {
            Ok(Box::new(RecognitionPostprocessing) as Box<dyn NativeModel>)
        })
}

fn decode_image(bytes: ndarray::ArrayViewD<'_, u8>) -> Result<image::RgbImage> {
    let data: Vec<u8> = bytes.iter().copied().collect();
    image::load_from_memory(&data)
        .map(|img| img.to_rgb8())
        .map_err(|e| Error::invalid_input(format!("input_image is not a readable image: {e}")))
}

/// Image file bytes (`UINT8 [1, n]`) → the DB detector's input `[1, 3, H, W]` and the image it
/// was made from, `UINT8 [1, h, w, 3]` (after rapidocr's global resize), for the crops.
struct PpocrDetectionPreprocessing {
    params: DbParams,
    max_side_len: u32,
}

impl NativeModel for PpocrDetectionPreprocessing {
    fn execute(
        &self,
        inputs: &[(String, Tensor)],
        outputs: &[String],
    ) -> Result<Vec<(String, Tensor)>> {
        let bytes = first_input(inputs, 0)?.view::<u8>()?;
        if bytes.shape().first() != Some(&1) {
            return Err(Error::invalid_input(
                "the PaddleOCR steps take one image per request",
            ));
        }
        let raw = decode_image(bytes.index_axis(Axis(0), 0))?;
        let img = db_resize(&raw, self.max_side_len);
        let x = db::preprocess(&img, &self.params);
        let (w, h) = img.dimensions();
        let pixels =
            ndarray::Array4::from_shape_vec((1, h as usize, w as usize, 3), img.as_raw().clone())
                .map_err(|e| Error::invalid_input(e.to_string()))?;
        let mut out = Vec::new();
        for name in outputs {
            match name.as_str() {
                "detection_preprocessing_output" => {
                    out.push((name.clone(), Tensor::from(x.clone())))
                }
                _ => out.push((name.clone(), Tensor::from(pixels.clone()))),
            }
        }
        Ok(out)
    }
}

/// DB probability map `[1, 1, H, W]` and the image `[1, h, w, 3]` → the recogniser's batch of
/// every detected line in reading order, `[n, 3, 48, W]`.
struct PpocrDetectionPostprocessing {
    params: DbParams,
}

impl NativeModel for PpocrDetectionPostprocessing {
    fn execute(
        &self,
        inputs: &[(String, Tensor)],
        outputs: &[String],
    ) -> Result<Vec<(String, Tensor)>> {
        let prob = input_view::<f32, Ix4>(inputs, 0)?;
        let pixels = input_view::<u8, Ix4>(inputs, 1)?;
        let (h, w) = (pixels.shape()[1], pixels.shape()[2]);
        let data: Vec<u8> = pixels.iter().copied().collect();
        let img = image::RgbImage::from_raw(w as u32, h as u32, data)
            .ok_or_else(|| Error::invalid_input("the image tensor is not [1, h, w, 3]"))?;
        let boxes = db::postprocess(
            prob.slice(s![0, 0, .., ..]),
            img.width(),
            img.height(),
            &self.params,
        );
        let crops: Vec<image::RgbImage> = boxes.iter().map(|(q, _)| db_crop(&img, q)).collect();
        let batch = if crops.is_empty() {
            ndarray::Array4::zeros((0, 3, 48, 320))
        } else {
            rec_batch(&crops.iter().collect::<Vec<_>>())
        };
        Ok(vec![(output_name(outputs), Tensor::from(batch))])
    }
}

/// Recogniser probabilities `[n, T, classes]` → one text per line, BYTES `[n, 1]`, with the
/// dictionary of the model; a line whose mean probability is below `text_score` (rapidocr:
/// 0.5) gives an empty text.
struct PpocrRecognitionPostprocessing {
    alphabet: Alphabet,
    text_score: f32,
}

impl NativeModel for PpocrRecognitionPostprocessing {
    fn execute(
        &self,
        inputs: &[(String, Tensor)],
        outputs: &[String],
    ) -> Result<Vec<(String, Tensor)>> {
        let probs = input_view::<f32, Ix3>(inputs, 0)?;
        if probs.shape()[2] != self.alphabet.classes() {
            return Err(Error::invalid_input(format!(
                "the recogniser gives {} classes but the dictionary has {}",
                probs.shape()[2],
                self.alphabet.classes()
            )));
        }
        let texts: Vec<String> = probs
            .outer_iter()
            .map(|p| greedy_decode(p, &self.alphabet, true))
            .map(|(t, score)| {
                if score >= self.text_score {
                    t
                } else {
                    String::new()
                }
            })
            .collect();
        let n = texts.len();
        Ok(vec![(
            output_name(outputs),
            Tensor::from_bytes(&[n, 1], texts.iter().map(String::as_bytes))?,
        )])
    }
}

/// A string parameter of a step's config.
fn parameter<'a>(config: &'a crate::config::ModelConfig, key: &str) -> Option<&'a str> {
    config.parameters.get(key).map(|p| p.string_value.as_str())
}

/// Registers the PaddleOCR versions of the Part 5 steps as native backends
/// `ppocr_detection_preprocessing`, `ppocr_detection_postprocessing` and
/// `ppocr_recognition_postprocessing`. The last reads its dictionary from the file its config
/// names in `parameters { key: "dictionary" ... }` (one character per line, in its version
/// folder; default `dictionary.txt`), as PaddleOCR stores it in the model's `character`
/// metadata.
pub fn ppocr_steps(builder: RepositoryBuilder) -> RepositoryBuilder {
    builder
        .native_backend("ppocr_detection_preprocessing", |_| {
            Ok(Box::new(PpocrDetectionPreprocessing {
                params: DbParams::default(),
                max_side_len: 2000,
            }) as Box<dyn NativeModel>)
        })
        .native_backend("ppocr_detection_postprocessing", |_| {
            Ok(Box::new(PpocrDetectionPostprocessing {
                params: DbParams::default(),
            }) as Box<dyn NativeModel>)
        })
        .native_backend_with_files("ppocr_recognition_postprocessing", |config, dir| {
            let file = parameter(config, "dictionary").unwrap_or("dictionary.txt");
            let path = crate::Repository::file_in(dir, file)?;
            let text = std::fs::read_to_string(&path)
                .map_err(|e| Error::io(&path, "failed to read dictionary", e))?;
            Ok(Box::new(PpocrRecognitionPostprocessing {
                alphabet: Alphabet::paddle(&text),
                text_score: 0.5,
            }) as Box<dyn NativeModel>)
        })
}
