//! The Triton tutorial's Part 5 OCR ensemble steps, written in Rust as native models
//! (the tutorial writes them as Python models): `detection_preprocessing`,
//! `detection_postprocessing` and `recognition_postprocessing` around the EAST detector and
//! the 37-class recogniser. Register them with [`tutorial_steps`] and select them in a
//! `config.pbtxt` with `backend: "east_detection_preprocessing"` (and so on).

use ndarray::{s, ArrayD, Axis, Ix3, Ix4};

use super::ctc::{greedy_decode, Alphabet};
use super::east;
use crate::backend::native::NativeModel;
use crate::error::{Error, Result};
use crate::repository::RepositoryBuilder;
use crate::tensor::Tensor;

fn first_input(inputs: &[(String, Tensor)], i: usize) -> Result<&Tensor> {
    inputs
        .get(i)
        .map(|(_, t)| t)
        .ok_or_else(|| Error::invalid_input("missing input"))
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
            let data: Vec<u8> = item.iter().copied().collect();
            let img = image::load_from_memory(&data).map_err(|e| {
                Error::invalid_input(format!("input_image is not a readable image: {e}"))
            })?;
            blobs.push(east::blob(&img.to_rgb8()));
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
        let scores = first_input(inputs, 0)?
            .view::<f32>()?
            .into_dimensionality::<Ix4>()
            .map_err(shape_err)?;
        let geometry = first_input(inputs, 1)?
            .view::<f32>()?
            .into_dimensionality::<Ix4>()
            .map_err(shape_err)?;
        let blob = first_input(inputs, 2)?
            .view::<f32>()?
            .into_dimensionality::<Ix4>()
            .map_err(shape_err)?;
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
        let scores = first_input(inputs, 0)?
            .view::<f32>()?
            .into_dimensionality::<Ix3>()
            .map_err(|e| Error::invalid_input(e.to_string()))?;
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
