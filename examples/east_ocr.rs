//! Photo to text, in-process: the Triton tutorial's OCR client, done with modelyard.
//!
//! ```sh
//! cargo run --release --example east_ocr                       # fixtures/images/img1.jpg
//! cargo run --release --example east_ocr -- --timings --annotate out.png photo.jpg
//! cargo run --release --example east_ocr -- --repository my_tutorial_repo --json photo.jpg
//! ```
//!
//! The repository's `text_detection` model decides the pipeline: an EAST detector (the
//! tutorial's) gets the tutorial client's processing, a DB detector (PaddleOCR's, the default
//! repository `fixtures/ocr_repository`) gets rapidocr's. See `modelyard::ocr`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use ab_glyph::{FontRef, PxScale};
use clap::Parser;
use image::{Rgb, RgbImage};
use imageproc::drawing::{draw_hollow_polygon_mut, draw_text_mut};
use imageproc::point::Point;
use modelyard::ocr::{OcrOptions, OcrPipeline, TextLine};
use modelyard::Repository;

#[derive(Parser)]
#[command(about = "Read the text in photos with a Triton model repository, in-process")]
struct Args {
    /// Model repository with text_detection and text_recognition (and optionally
    /// text_classification) models.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/ocr_repository"))]
    repository: PathBuf,
    /// Print the results as JSON.
    #[arg(long)]
    json: bool,
    /// Write the picture with the boxes and the text drawn on it (one image only).
    #[arg(long, value_name = "OUT.png")]
    annotate: Option<PathBuf>,
    /// Print the time of each stage.
    #[arg(long)]
    timings: bool,
    /// EAST: crop from the mean-subtracted blob, as the tutorial's client does.
    #[arg(long)]
    tutorial_exact: bool,
    /// DB: skip the 0/180° classifier.
    #[arg(long)]
    no_classifier: bool,
    /// Send the image file's bytes through the repository's `ensemble_model` (the tutorial's
    /// Part 5 ensemble, steps as native models; default repository
    /// fixtures/ensemble_repository_ppocr with the PaddleOCR models, or
    /// fixtures/ensemble_repository with the tutorial-architecture ones) and print the texts.
    #[arg(long)]
    ensemble: bool,
    /// Images to read.
    #[arg(default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/images/img1.jpg"))]
    images: Vec<PathBuf>,
}

/// Images larger than this many pixels are refused before decoding.
const MAX_PIXELS: u64 = 100_000_000;

fn load_image(path: &PathBuf) -> Result<RgbImage, String> {
    // JPEG decoders fill a cut-off file with grey; a JPEG must end with its EOI marker.
    let bytes = std::fs::read(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    if bytes.starts_with(&[0xff, 0xd8]) && !bytes.ends_with(&[0xff, 0xd9]) {
        return Err(format!(
            "{} is a truncated JPEG (no end-of-image marker)",
            path.display()
        ));
    }
    let reader = image::ImageReader::open(path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?
        .with_guessed_format()
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let (w, h) = reader
        .into_dimensions()
        .map_err(|e| format!("{} is not a readable image: {e}", path.display()))?;
    if u64::from(w) * u64::from(h) > MAX_PIXELS {
        return Err(format!(
            "{} is {w}x{h}, larger than the {MAX_PIXELS}-pixel limit",
            path.display()
        ));
    }
    let img = image::ImageReader::open(path)
        .and_then(|r| r.with_guessed_format())
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?
        .decode()
        .map_err(|e| format!("{} is not a readable image: {e}", path.display()))?;
    // Grayscale and RGBA pictures become RGB (alpha dropped).
    Ok(img.to_rgb8())
}

fn annotate(img: &RgbImage, lines: &[TextLine], out: &PathBuf) -> Result<(), String> {
    let font = FontRef::try_from_slice(include_bytes!("../fixtures/fonts/DejaVuSans.ttf"))
        .map_err(|e| e.to_string())?;
    let mut canvas = img.clone();
    let thickness = (img.width().max(img.height()) / 500).max(1) as i32;
    for line in lines {
        for d in 0..thickness {
            let poly: Vec<Point<f32>> = line
                .quad
                .iter()
                .map(|&(x, y)| Point::new(x + d as f32, y + d as f32))
                .collect();
            draw_hollow_polygon_mut(&mut canvas, &poly, Rgb([255, 0, 0]));
        }
        let height = (line.quad[3].1 - line.quad[0].1).abs().max(12.0);
        let scale = PxScale::from((height * 0.6).min(200.0));
        let y = (line.quad[0].1 - scale.y).max(0.0) as i32;
        draw_text_mut(
            &mut canvas,
            Rgb([0, 160, 0]),
            line.quad[0].0 as i32,
            y,
            scale,
            &font,
            &line.text,
        );
    }
    canvas
        .save(out)
        .map_err(|e| format!("cannot write {}: {e}", out.display()))
}

/// The Part 5 way: image bytes in, texts out, all inside one ensemble.
fn run_ensemble(args: &Args) -> Result<(), String> {
    let root = if args.repository.ends_with("ocr_repository") {
        PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/fixtures/ensemble_repository_ppocr"
        ))
    } else {
        args.repository.clone()
    };
    let builder = modelyard::ocr::steps::tutorial_steps(Repository::builder(&root));
    let repo = modelyard::ocr::steps::ppocr_steps(builder)
        .load()
        .map_err(|e| e.to_string())?;
    let ensemble = repo.model("ensemble_model").map_err(|e| e.to_string())?;
    for path in &args.images {
        let bytes =
            std::fs::read(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        let n = bytes.len();
        let input = modelyard::Tensor::from(
            ndarray::Array2::from_shape_vec((1, n), bytes).map_err(|e| e.to_string())?,
        );
        let out = ensemble
            .infer([("input_image", input)])
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let texts = out
            .get("recognized_text")
            .ok_or("the ensemble returned no recognized_text")?
            .bytes()
            .map_err(|e| e.to_string())?;
        println!("{}:", path.display());
        let texts: Vec<String> = texts
            .iter()
            .map(|t| String::from_utf8_lossy(t).into_owned())
            .filter(|t| !t.is_empty())
            .collect();
        if texts.is_empty() {
            println!("  no text found");
        }
        for t in texts {
            println!("  {t}");
        }
    }
    Ok(())
}

fn run(args: &Args) -> Result<(), String> {
    if args.ensemble {
        return run_ensemble(args);
    }
    let clock = Instant::now();
    let repo = Repository::load(&args.repository).map_err(|e| e.to_string())?;
    let options = OcrOptions {
        tutorial_exact: args.tutorial_exact,
        use_classifier: !args.no_classifier,
        ..Default::default()
    };
    let pipeline = OcrPipeline::from_repository(&repo, options).map_err(|e| e.to_string())?;
    if args.timings {
        eprintln!(
            "load repository: {:.1} ms ({:?} detector)",
            clock.elapsed().as_secs_f64() * 1e3,
            pipeline.detector()
        );
    }
    let mut json = Vec::new();
    for path in &args.images {
        let clock = Instant::now();
        let img = load_image(path)?;
        let decode = clock.elapsed();
        let (lines, t) = pipeline
            .run(&img)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if args.json {
            json.push(serde_json::json!({
                "image": path.display().to_string(),
                "lines": lines.iter().map(|l| serde_json::json!({
                    "text": l.text,
                    "confidence": l.confidence,
                    "box": l.quad.iter().map(|p| [p.0, p.1]).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
            }));
        } else {
            println!("{}:", path.display());
            if lines.is_empty() {
                println!("  no text found");
            }
            for l in &lines {
                let q: Vec<String> = l
                    .quad
                    .iter()
                    .map(|p| format!("({:.0},{:.0})", p.0, p.1))
                    .collect();
                println!("  {:<30} {:.3}  {}", l.text, l.confidence, q.join(" "));
            }
        }
        if args.timings {
            let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
            eprintln!(
                "  decode {:.1} ms, preprocess {:.1} ms, detect {:.1} ms, crop {:.1} ms, recognise {:.1} ms",
                ms(decode), ms(t.preprocess), ms(t.detect), ms(t.crop), ms(t.recognise)
            );
        }
        if let Some(out) = &args.annotate {
            annotate(&img, &lines, out)?;
            eprintln!("wrote {}", out.display());
        }
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json).map_err(|e| e.to_string())?
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.annotate.is_some() && args.images.len() > 1 {
        eprintln!("error: --annotate takes one image");
        return ExitCode::FAILURE;
    }
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
