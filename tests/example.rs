//! The example's exit codes and messages, as the README promises them: bad input (not an image,
//! an empty or truncated file, a header claiming 20000x20000, a repository whose detector has
//! unknown outputs, `--annotate` with two images) prints "error: ..." and exits 1; grayscale
//! and RGBA pictures are read; a picture without text prints "no text found" and exits 0.
//!
//! Runs the `east_ocr` binary that `cargo test` builds beside the test binaries
//! (`target/<profile>/examples/`); `cargo test --test example` alone does not build it, so
//! build it first there (`cargo build --release --example east_ocr`).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::fixtures;

fn example() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile = exe.parent().and_then(Path::parent).unwrap();
    let bin = profile
        .join("examples")
        .join(format!("east_ocr{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.exists(),
        "{} is missing: `cargo test` builds it; alone, run `cargo build --release --example east_ocr`",
        bin.display()
    );
    bin
}

fn run(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(example()).args(args).output().unwrap()
}

/// Asserts exit code `code`, and `words` in stdout (exit 0) or in an "error: " line on stderr.
fn expect(out: &Output, code: i32, words: &str) {
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(
        out.status.code(),
        Some(code),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    if code == 0 {
        assert!(stdout.contains(words), "'{words}' not in stdout: {stdout}");
    } else {
        assert!(
            stderr
                .lines()
                .any(|l| l.starts_with("error: ") && l.contains(words)),
            "no 'error: ...{words}' line on stderr: {stderr}"
        );
    }
}

/// CRC-32 (ISO-HDLC), as PNG chunks carry it.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A PNG whose header says `w` x `h`, 8-bit RGB, followed by a few bytes of pixel data: what a
/// decoder reads to learn the size, and far too little for the picture.
fn png_header(w: u32, h: u32) -> Vec<u8> {
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut chunk = |kind: &[u8], data: &[u8]| {
        let body = [kind, data].concat();
        png.extend((data.len() as u32).to_be_bytes());
        png.extend(&body);
        png.extend(crc32(&body).to_be_bytes());
    };
    let ihdr = [w.to_be_bytes(), h.to_be_bytes()].concat();
    chunk(b"IHDR", &[ihdr.as_slice(), &[8, 2, 0, 0, 0]].concat());
    chunk(b"IDAT", &[0x78, 0x9c, 0x63, 0, 0, 0, 1, 0, 1]);
    chunk(b"IEND", &[]);
    png
}

#[test]
fn bad_input_exits_1_with_a_message() {
    let tmp = tempfile::tempdir().unwrap();
    let file = |name: &str, bytes: &[u8]| {
        let p = tmp.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    };
    let jpeg = std::fs::read(fixtures().join("images/img1.jpg")).unwrap();
    let png = std::fs::read(fixtures().join("images/word_640x480.png")).unwrap();
    assert_eq!(crc32(b"123456789"), 0xCBF4_3926, "the CRC-32 check value");
    for (path, words) in [
        (
            file("notes.png", b"hello, not a picture"),
            "notes.png is not a readable image",
        ),
        (file("empty.jpg", b""), "empty.jpg is not a readable image"),
        (
            file("cut.jpg", &jpeg[..jpeg.len() / 2]),
            "cut.jpg is a truncated JPEG",
        ),
        (
            file("cut.png", &png[..png.len() / 2]),
            "cut.png is not a readable image",
        ),
        (
            file("huge.png", &png_header(20_000, 20_000)),
            "huge.png is 20000x20000, larger than the 100000000-pixel limit",
        ),
        (tmp.path().join("missing.png"), "cannot open"),
    ] {
        expect(&run(&[path.as_os_str()]), 1, words);
    }
    let word = fixtures().join("images/word_640x480.png");
    let out = run(&[
        "--annotate".as_ref(),
        tmp.path().join("out.png").as_os_str(),
        word.as_os_str(),
        word.as_os_str(),
    ]);
    expect(&out, 1, "--annotate takes one image");

    // A repository whose text_detection is no detector.
    let repo = tmp.path().join("repo");
    for (model, onnx) in [
        ("text_detection", "generated/add_sub_fp32_batch.onnx"),
        (
            "text_recognition",
            "tutorial_repository/text_recognition/1/model.onnx",
        ),
    ] {
        std::fs::create_dir_all(repo.join(model).join("1")).unwrap();
        std::fs::copy(fixtures().join(onnx), repo.join(model).join("1/model.onnx")).unwrap();
    }
    let out = run(&["--repository".as_ref(), repo.as_os_str(), word.as_os_str()]);
    expect(&out, 1, "detection model 'text_detection' has outputs");
}

#[test]
fn grayscale_rgba_and_blank_pictures_exit_0() {
    let tmp = tempfile::tempdir().unwrap();
    let word = image::open(fixtures().join("images/word_640x480.png")).unwrap();
    let gray = tmp.path().join("gray.png");
    word.to_luma8().save(&gray).unwrap();
    let rgba = tmp.path().join("rgba.png");
    word.to_rgba8().save(&rgba).unwrap();
    let blank = tmp.path().join("blank.png");
    image::RgbImage::from_pixel(320, 160, image::Rgb([255, 255, 255]))
        .save(&blank)
        .unwrap();
    expect(&run(&[gray.as_os_str()]), 0, "HELLO");
    expect(&run(&[rgba.as_os_str()]), 0, "HELLO");
    let out = run(&[blank.as_os_str()]);
    expect(&out, 0, "no text found");
}
