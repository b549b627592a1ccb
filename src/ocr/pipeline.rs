//! The photo-to-text pipeline over a detection and a recognition model of a repository.

use std::time::{Duration, Instant};

use image::{imageops, RgbImage};
use ndarray::{s, Array4, Axis};

use super::ctc::{greedy_decode, Alphabet};
use super::db::{self, DbParams};
use super::east;
use super::geometry::{order_mini_box, Pt};
use super::image_ops::{batch_bgr_normalized, crop_size, perspective_crop, resize, round_to_32};
use crate::{Error, ErrorKind, Model, Repository, Result, Tensor};

/// Which detector family a detection model belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detector {
    /// EAST (the Triton tutorial's): NHWC score map `[.., 1]` and RBOX geometry `[.., 5]`.
    East,
    /// DB (PaddleOCR's): one probability map `[N, 1, H, W]`.
    Db,
}

/// Settings of the pipeline.
#[derive(Debug, Clone)]
pub struct OcrOptions {
    /// EAST only: crop from the mean-subtracted blob with swapped gray weights, exactly as the
    /// tutorial's client does (default: crop from the photo).
    pub tutorial_exact: bool,
    /// DB only: run the 0/180° classifier when the repository has one.
    pub use_classifier: bool,
    /// DB post-processing.
    pub db: DbParams,
    /// EAST score threshold (tutorial: 0.5).
    pub east_score_threshold: f32,
    /// EAST NMS IoU threshold (tutorial: 0.4).
    pub east_nms_threshold: f32,
    /// DB only: recognised lines below this mean probability are dropped (rapidocr: 0.5).
    pub text_score: f32,
    /// DB only: longer image side limit before detection (rapidocr: 2000).
    pub max_side_len: u32,
}

impl Default for OcrOptions {
    fn default() -> Self {
        OcrOptions {
            tutorial_exact: false,
            use_classifier: true,
            db: DbParams::default(),
            east_score_threshold: 0.5,
            east_nms_threshold: 0.4,
            text_score: 0.5,
            max_side_len: 2000,
        }
    }
}

/// One recognised line of text.
#[derive(Debug, Clone, PartialEq)]
pub struct TextLine {
    /// The text.
    pub text: String,
    /// Mean per-character probability.
    pub confidence: f32,
    /// Corners (top-left, top-right, bottom-right, bottom-left) in the input image's pixels.
    pub quad: [Pt; 4],
}

/// Time spent per stage of one run.
#[derive(Debug, Clone, Copy, Default)]
pub struct Timings {
    /// Resizing and normalising the image for the detector.
    pub preprocess: Duration,
    /// The detection model plus its decoding (boxes, NMS).
    pub detect: Duration,
    /// Perspective crops (and the angle classifier, for DB).
    pub crop: Duration,
    /// The recognition model plus CTC decoding.
    pub recognise: Duration,
}

/// A detector and a recogniser (and for DB optionally an angle classifier) with their
/// processing.
pub struct OcrPipeline {
    detector: Detector,
    det: Model,
    rec: Model,
    cls: Option<Model>,
    alphabet: Alphabet,
    /// Whether the recogniser outputs probabilities (PaddleOCR) rather than logits.
    rec_probabilities: bool,
    options: OcrOptions,
}

fn unsupported(msg: String) -> Error {
    Error::new(ErrorKind::Unsupported, msg)
}

/// The detector family from a `parameters { key: "ocr_detector" }` entry or from the outputs.
fn detector_of(det: &Model) -> Result<Detector> {
    let cfg = det.config();
    if let Some(p) = cfg.parameters.get("ocr_detector") {
        return match p.string_value.to_ascii_lowercase().as_str() {
            "east" => Ok(Detector::East),
            "db" => Ok(Detector::Db),
            other => Err(unsupported(format!(
                "model '{}': parameter ocr_detector is '{other}', expected 'east' or 'db'",
                cfg.name
            ))),
        };
    }
    let last: Vec<i64> = cfg
        .output
        .iter()
        .map(|o| o.dims.last().copied().unwrap_or(0))
        .collect();
    match last.as_slice() {
        [a, b] if (*a == 1 && *b == 5) || (*a == 5 && *b == 1) => Ok(Detector::East),
        [_] if cfg.output[0].dims.len() + usize::from(cfg.max_batch_size > 0) == 4 => {
            Ok(Detector::Db)
        }
        _ => {
            let outs: Vec<String> = cfg
                .output
                .iter()
                .map(|o| format!("{} {}", o.name, crate::config::dims_to_string(&o.dims)))
                .collect();
            Err(unsupported(format!(
                "detection model '{}' has outputs [{}]: expected EAST (a score map [..,1] and an RBOX geometry [..,5]) or DB (one probability map [N,1,H,W]); set parameters {{ key: \"ocr_detector\" value: {{ string_value: \"east\" }} }} to choose",
                cfg.name,
                outs.join(", ")
            )))
        }
    }
}

impl OcrPipeline {
    /// The pipeline over a repository's `text_detection` and `text_recognition` models (and
    /// `text_classification`, the angle classifier, when present).
    pub fn from_repository(repo: &Repository, options: OcrOptions) -> Result<OcrPipeline> {
        let cls = repo.model("text_classification").ok();
        OcrPipeline::new(
            repo.model("text_detection")?,
            repo.model("text_recognition")?,
            cls,
            options,
        )
    }

    /// The pipeline over explicit models.
    pub fn new(
        det: Model,
        rec: Model,
        cls: Option<Model>,
        options: OcrOptions,
    ) -> Result<OcrPipeline> {
        let detector = detector_of(&det)?;
        let rec_cfg = rec.config();
        let classes = rec_cfg
            .output
            .first()
            .and_then(|o| o.dims.last().copied())
            .unwrap_or(-1);
        let (alphabet, rec_probabilities) = match rec.metadata("character") {
            Some(chars) => (Alphabet::paddle(chars), true),
            None if classes == 37 => (Alphabet::tutorial(), false),
            None => {
                return Err(unsupported(format!(
                    "recognition model '{}' has {classes} classes and no 'character' dictionary in its metadata: expected the tutorial's 37-class recogniser or a PaddleOCR recogniser",
                    rec_cfg.name
                )))
            }
        };
        if classes > 0 && classes as usize != alphabet.classes() {
            return Err(unsupported(format!(
                "recognition model '{}' has {classes} classes but its dictionary gives {}",
                rec_cfg.name,
                alphabet.classes()
            )));
        }
        Ok(OcrPipeline {
            detector,
            det,
            rec,
            cls,
            alphabet,
            rec_probabilities,
            options,
        })
    }

    /// The detector family in use.
    pub fn detector(&self) -> Detector {
        self.detector
    }

    /// Reads every line of text in `img`.
    pub fn run(&self, img: &RgbImage) -> Result<(Vec<TextLine>, Timings)> {
        if img.width() == 0 || img.height() == 0 {
            return Err(Error::invalid_input("the image is empty"));
        }
        match self.detector {
            Detector::East => self.run_east(img),
            Detector::Db => self.run_db(img),
        }
    }

    fn input_name(model: &Model) -> Result<String> {
        model
            .config()
            .input
            .first()
            .map(|i| i.name.clone())
            .ok_or_else(|| unsupported(format!("model '{}' declares no input", model.name())))
    }

    /// Runs the recogniser on `[n, ...]` crops in batches the model accepts; returns one
    /// `[steps, classes]` score array per crop.
    fn recognise_batch(&self, crops: Array4<f32>) -> Result<Vec<ndarray::Array2<f32>>> {
        let cfg = self.rec.config();
        let input = Self::input_name(&self.rec)?;
        let n = crops.len_of(Axis(0));
        // A model without batching takes the leading dim as part of its fixed shape (the
        // tutorial's [1,1,32,100]): one crop per call.
        let chunk = if cfg.max_batch_size > 0 {
            (cfg.max_batch_size as usize).min(6)
        } else {
            1
        };
        let mut out = Vec::with_capacity(n);
        let mut start = 0;
        while start < n {
            let end = (start + chunk).min(n);
            let part = crops.slice(s![start..end, .., .., ..]).to_owned();
            let result = self.rec.infer([(input.as_str(), Tensor::from(part))])?;
            let Some((_, scores)) = result.iter().next() else {
                return Err(unsupported(format!(
                    "model '{}' returned no output",
                    cfg.name
                )));
            };
            let v = scores.view::<f32>()?;
            let v = v
                .into_dimensionality::<ndarray::Ix3>()
                .map_err(|e| unsupported(format!("recogniser output: {e}")))?;
            for i in 0..v.len_of(Axis(0)) {
                out.push(v.index_axis(Axis(0), i).to_owned());
            }
            start = end;
        }
        Ok(out)
    }

    // Long: the tutorial client's stages in order, each timed (decode, resize, detect, NMS,
    // crops, recognise); splitting would scatter the timings.
    fn run_east(&self, img: &RgbImage) -> Result<(Vec<TextLine>, Timings)> {
        let mut t = Timings::default();
        let clock = Instant::now();
        let blob = east::blob(img);
        t.preprocess = clock.elapsed();

        let clock = Instant::now();
        let det_cfg = self.det.config();
        // Only the tutorial-exact mode crops from the blob: build its frame before the blob
        // moves into the request, instead of copying the blob.
        let frame = self
            .options
            .tutorial_exact
            .then(|| east::blob_frame(blob.view()));
        let out = self
            .det
            .infer([(Self::input_name(&self.det)?, Tensor::from(blob))])?;
        let by_channels = |c: usize| {
            out.iter()
                .find(|(_, t)| t.shape().len() == 4 && t.shape()[3] == c)
                .map(|(_, t)| t.clone())
                .ok_or_else(|| {
                    unsupported(format!(
                        "EAST model '{}' did not return a [1,H,W,{c}] output",
                        det_cfg.name
                    ))
                })
        };
        let (score_t, geo_t) = (by_channels(1)?, by_channels(5)?);
        let (score, geo) = (score_t.view::<f32>()?, geo_t.view::<f32>()?);
        let score = score
            .index_axis(Axis(0), 0)
            .into_dimensionality()
            .map_err(|e| unsupported(e.to_string()))?;
        let geo = geo
            .index_axis(Axis(0), 0)
            .into_dimensionality()
            .map_err(|e| unsupported(e.to_string()))?;
        let boxes = east::decode(score, geo, self.options.east_score_threshold);
        let kept = east::nms_rotated(
            &boxes,
            self.options.east_score_threshold,
            self.options.east_nms_threshold,
        );
        t.detect = clock.elapsed();

        let clock = Instant::now();
        let mut crops = Vec::new();
        let mut quads = Vec::new();
        let (sx, sy) = (
            img.width() as f32 / east::BLOB_W as f32,
            img.height() as f32 / east::BLOB_H as f32,
        );
        for &k in &kept {
            let vertices = boxes[k].0.points();
            let crop = match &frame {
                Some(frame) => east::crop_tutorial_exact(frame, &vertices),
                None => east::crop(img, &vertices),
            };
            if let Some(c) = crop {
                crops.push(c);
                quads.push(order_mini_box(vertices.map(|(x, y)| (x * sx, y * sy))));
            }
        }
        t.crop = clock.elapsed();

        let clock = Instant::now();
        let mut lines = Vec::new();
        if !crops.is_empty() {
            let views: Vec<_> = crops.iter().map(|c| c.view()).collect();
            let batch = ndarray::stack(Axis(0), &views).map_err(|e| unsupported(e.to_string()))?;
            for (scores, quad) in self.recognise_batch(batch)?.into_iter().zip(quads) {
                let (text, confidence) =
                    greedy_decode(scores.view(), &self.alphabet, self.rec_probabilities);
                if !text.is_empty() {
                    lines.push(TextLine {
                        text,
                        confidence,
                        quad,
                    });
                }
            }
        }
        t.recognise = clock.elapsed();
        Ok((lines, t))
    }

    fn run_db(&self, raw: &RgbImage) -> Result<(Vec<TextLine>, Timings)> {
        let mut t = Timings::default();
        let clock = Instant::now();
        let (rw, rh) = raw.dimensions();
        let img = db_resize(raw, self.options.max_side_len);
        let x = db::preprocess(&img, &self.options.db);
        t.preprocess = clock.elapsed();

        let clock = Instant::now();
        let out = self
            .det
            .infer([(Self::input_name(&self.det)?, Tensor::from(x))])?;
        let Some((_, prob)) = out.iter().next() else {
            return Err(unsupported(format!(
                "model '{}' returned no output",
                self.det.name()
            )));
        };
        let prob = prob.view::<f32>()?;
        if prob.ndim() != 4 {
            return Err(unsupported(format!(
                "DB model '{}' returned shape {:?}, expected [1,1,H,W]",
                self.det.name(),
                prob.shape()
            )));
        }
        let map = prob.slice(s![0, 0, .., ..]);
        let boxes = db::postprocess(map, img.width(), img.height(), &self.options.db);
        t.detect = clock.elapsed();

        let clock = Instant::now();
        let mut crops: Vec<RgbImage> = Vec::with_capacity(boxes.len());
        for (quad, _) in &boxes {
            crops.push(db_crop(&img, quad));
        }
        if self.options.use_classifier {
            if let Some(cls) = &self.cls {
                self.classify(cls, &mut crops)?;
            }
        }
        t.crop = clock.elapsed();

        let clock = Instant::now();
        let texts = self.recognise_db(&crops)?;
        let (fx, fy) = (
            rw as f32 / img.width() as f32,
            rh as f32 / img.height() as f32,
        );
        let lines = texts
            .into_iter()
            .zip(&boxes)
            .filter(|((text, score), _)| *score >= self.options.text_score && !text.is_empty())
            .map(|((text, confidence), (quad, _))| TextLine {
                text,
                confidence,
                quad: quad.map(|(x, y)| {
                    (
                        (x * fx).clamp(0.0, rw as f32),
                        (y * fy).clamp(0.0, rh as f32),
                    )
                }),
            })
            .collect();
        t.recognise = clock.elapsed();
        Ok((lines, t))
    }

    /// The 0/180° classifier: crops whose top class is 180 with probability > 0.9 are turned.
    fn classify(&self, cls: &Model, crops: &mut [RgbImage]) -> Result<()> {
        let input = Self::input_name(cls)?;
        let mut order: Vec<usize> = (0..crops.len()).collect();
        order.sort_by(|&a, &b| aspect(&crops[a]).total_cmp(&aspect(&crops[b])));
        let chunk = if cls.config().max_batch_size > 0 {
            (cls.config().max_batch_size as usize).min(6)
        } else {
            1
        };
        for ids in order.chunks(chunk) {
            let resized: Vec<RgbImage> = ids
                .iter()
                .map(|&i| {
                    let w = ((48.0 * aspect(&crops[i])).ceil() as u32).clamp(1, 192);
                    resize(&crops[i], w, 48)
                })
                .collect();
            let out = cls.infer([(
                input.as_str(),
                Tensor::from(batch_bgr_normalized(&resized, 48, 192)),
            )])?;
            let Some((_, probs)) = out.iter().next() else {
                continue;
            };
            let probs = probs.view::<f32>()?;
            for (row, &i) in probs.outer_iter().zip(ids) {
                if row.len() >= 2 && row[1] > row[0] && row[1] > 0.9 {
                    crops[i] = imageops::rotate180(&crops[i]);
                }
            }
        }
        Ok(())
    }

    /// PaddleOCR recognition: crops sorted by aspect ratio, batches of up to 6 padded to a
    /// common width; returns (text, score) per crop in the original order.
    fn recognise_db(&self, crops: &[RgbImage]) -> Result<Vec<(String, f32)>> {
        let mut results = vec![(String::new(), 0.0f32); crops.len()];
        let mut order: Vec<usize> = (0..crops.len()).collect();
        order.sort_by(|&a, &b| aspect(&crops[a]).total_cmp(&aspect(&crops[b])));
        let cfg = self.rec.config();
        let chunk = if cfg.max_batch_size > 0 {
            (cfg.max_batch_size as usize).min(6)
        } else {
            1
        };
        let input = Self::input_name(&self.rec)?;
        for ids in order.chunks(chunk) {
            let chunk: Vec<&RgbImage> = ids.iter().map(|&i| &crops[i]).collect();
            let out = self
                .rec
                .infer([(input.as_str(), Tensor::from(rec_batch(&chunk)))])?;
            let Some((_, scores)) = out.iter().next() else {
                continue;
            };
            let scores = scores.view::<f32>()?;
            for (row, &i) in scores.outer_iter().zip(ids) {
                let row = row
                    .into_dimensionality::<ndarray::Ix2>()
                    .map_err(|e| unsupported(format!("recogniser output: {e}")))?;
                results[i] = greedy_decode(row, &self.alphabet, self.rec_probabilities);
            }
        }
        Ok(results)
    }
}

/// rapidocr's global resize before DB detection: the longer side down to `max_side_len`,
/// the shorter up to 30, both to multiples of 32.
pub(crate) fn db_resize(raw: &RgbImage, max_side_len: u32) -> std::borrow::Cow<'_, RgbImage> {
    let (rw, rh) = raw.dimensions();
    let (max, min) = (rw.max(rh), rw.min(rh));
    if max > max_side_len || min < 30 {
        let ratio = if max > max_side_len {
            f64::from(max_side_len) / f64::from(max)
        } else {
            30.0 / f64::from(min)
        };
        let w = round_to_32((f64::from(rw) * ratio).floor());
        let h = round_to_32((f64::from(rh) * ratio).floor());
        std::borrow::Cow::Owned(resize(raw, w, h))
    } else {
        std::borrow::Cow::Borrowed(raw)
    }
}

/// The upright crop of a DB box (perspective warp; tall crops turned a quarter).
pub(crate) fn db_crop(img: &RgbImage, quad: &[super::geometry::Pt; 4]) -> RgbImage {
    let (w, h) = crop_size(quad);
    let crop = perspective_crop(img, quad, w, h).unwrap_or_else(|| RgbImage::new(1, 1));
    if f64::from(crop.height()) / f64::from(crop.width().max(1)) >= 1.5 {
        imageops::rotate270(&crop)
    } else {
        crop
    }
}

/// Crops resized to height 48 and padded to one width (at least 320), as PaddleOCR's
/// recogniser takes a batch: `[n, 3, 48, W]`, BGR normalised to [-1, 1].
pub(crate) fn rec_batch(crops: &[&RgbImage]) -> ndarray::Array4<f32> {
    let max_ratio = crops
        .iter()
        .map(|c| aspect(c))
        .fold(320.0f32 / 48.0, f32::max);
    let img_w = (48.0 * max_ratio) as usize;
    let resized: Vec<RgbImage> = crops
        .iter()
        .map(|c| {
            let w = ((48.0 * aspect(c)).ceil() as usize).clamp(1, img_w);
            resize(c, w as u32, 48)
        })
        .collect();
    batch_bgr_normalized(&resized, 48, img_w)
}

fn aspect(img: &RgbImage) -> f32 {
    img.width() as f32 / img.height().max(1) as f32
}
