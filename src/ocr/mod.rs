//! OCR around a model repository: the pre- and post-processing that turn a photo into text
//! with a text detector and a text recogniser served by modelyard. Two detector families:
//! EAST (the Triton tutorial's detector, with its client's processing) and DB (PaddleOCR's,
//! with rapidocr's processing). Enabled by the default feature `ocr`.

pub mod ctc;
pub mod db;
pub mod east;
pub mod geometry;
pub mod image_ops;
mod pipeline;
pub mod steps;

pub use pipeline::{Detector, OcrOptions, OcrPipeline, TextLine, Timings};

/// The `image` crate (0.25) whose [`image::RgbImage`] the pipeline reads, re-exported so a user
/// names the same version without a dependency of their own.
pub use image;
