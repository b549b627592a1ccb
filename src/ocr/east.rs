//! The Triton tutorial's EAST processing (its `client.py`): the 640×480 blob, the RBOX decode
//! at stride 4, rotated non-maximum suppression as `cv2.dnn.NMSBoxesRotated`, and the
//! four-point warp to the recogniser's 100×32 grayscale crop.

use image::{Rgb, Rgb32FImage, RgbImage};
use imageproc::geometric_transformations::Interpolation;
use ndarray::{Array4, ArrayView3, ArrayView4};

use super::geometry::{rotated_iou, Pt, RotatedRect};
use super::image_ops::{perspective_warp, resize, Border};

/// The blob size the tutorial feeds the detector.
pub const BLOB_W: u32 = 640;
/// The blob height.
pub const BLOB_H: u32 = 480;
/// `cv2.dnn.blobFromImage`'s mean, in the blob's (R, G, B) order after `swapRB`.
pub const MEAN: [f32; 3] = [123.68, 116.78, 103.94];
/// The recogniser's crop size.
pub const CROP_W: u32 = 100;
/// The recogniser's crop height.
pub const CROP_H: u32 = 32;

/// `blobFromImage(img, 1.0, (640, 480), MEAN, swapRB=True)` transposed to NHWC: the image
/// resized to 640×480, RGB, mean subtracted, `[1, 480, 640, 3]`.
pub fn blob(img: &RgbImage) -> Array4<f32> {
    let resized = resize(img, BLOB_W, BLOB_H);
    Array4::from_shape_fn((1, BLOB_H as usize, BLOB_W as usize, 3), |(_, y, x, c)| {
        f32::from(resized.get_pixel(x as u32, y as u32)[c]) - MEAN[c]
    })
}

/// Decodes EAST's score map (`[H, W]`) and RBOX geometry (`[H, W, 5]`: distances to the top,
/// right, bottom and left edges, then the angle) into rotated rectangles in blob pixels, with
/// their scores, for cells scoring at least `threshold`. Row-major order, as the tutorial.
pub fn decode(
    scores: ArrayView3<f32>,
    geometry: ArrayView3<f32>,
    threshold: f32,
) -> Vec<(RotatedRect, f32)> {
    let (h, w, _) = scores.dim();
    let mut out = Vec::new();
    for y in 0..h {
        for x in 0..w {
            let score = scores[[y, x, 0]];
            if score < threshold {
                continue;
            }
            let g = |i: usize| geometry[[y, x, i]];
            let (offset_x, offset_y) = (x as f32 * 4.0, y as f32 * 4.0);
            let angle = g(4);
            let (cos_a, sin_a) = (angle.cos(), angle.sin());
            let bh = g(0) + g(2);
            let bw = g(1) + g(3);
            let offset = (
                offset_x + cos_a * g(1) + sin_a * g(2),
                offset_y - sin_a * g(1) + cos_a * g(2),
            );
            let p1 = (-sin_a * bh + offset.0, -cos_a * bh + offset.1);
            let p3 = (-cos_a * bw + offset.0, sin_a * bw + offset.1);
            let center = (0.5 * (p1.0 + p3.0), 0.5 * (p1.1 + p3.1));
            out.push((
                RotatedRect {
                    center,
                    size: (bw, bh),
                    angle: -angle.to_degrees(),
                },
                score,
            ));
        }
    }
    out
}

/// `cv2.dnn.NMSBoxesRotated(boxes, scores, score_threshold, nms_threshold)`: indices of the
/// kept boxes, highest score first (ties keep input order).
pub fn nms_rotated(
    boxes: &[(RotatedRect, f32)],
    score_threshold: f32,
    nms_threshold: f32,
) -> Vec<usize> {
    let mut order: Vec<usize> = (0..boxes.len())
        .filter(|&i| boxes[i].1 > score_threshold)
        .collect();
    order.sort_by(|&a, &b| boxes[b].1.total_cmp(&boxes[a].1));
    let mut kept: Vec<usize> = Vec::new();
    for i in order {
        if kept
            .iter()
            .all(|&k| rotated_iou(&boxes[i].0, &boxes[k].0) <= nms_threshold)
        {
            kept.push(i);
        }
    }
    kept
}

/// The tutorial's target corners for `cv2.boxPoints` order (bottom-left, top-left, top-right,
/// bottom-right).
fn crop_targets() -> [Pt; 4] {
    let (w, h) = ((CROP_W - 1) as f32, (CROP_H - 1) as f32);
    [(0.0, h), (0.0, 0.0), (w, 0.0), (w, h)]
}

/// Warps `from` (in `img` pixels) onto the 100×32 crop and maps each pixel through `gray` to
/// the recogniser's `((gray / 255) - 0.5) * 2`, as `[1, 32, 100]`.
fn warp_to_crop<P>(
    img: &image::ImageBuffer<P, Vec<P::Subpixel>>,
    from: &[Pt; 4],
    gray: impl Fn(&P) -> f32,
) -> Option<ndarray::Array3<f32>>
where
    P: image::Pixel + Send + Sync,
    P::Subpixel: Into<f32> + imageproc::definitions::Clamp<f32> + Send + Sync,
{
    let warped = perspective_warp(
        img,
        from,
        &crop_targets(),
        CROP_W,
        CROP_H,
        Interpolation::Bilinear,
        Border::Zero,
    )?;
    Some(ndarray::Array3::from_shape_fn(
        (1, CROP_H as usize, CROP_W as usize),
        |(_, y, x)| ((gray(warped.get_pixel(x as u32, y as u32)) / 255.0) - 0.5) * 2.0,
    ))
}

/// The recogniser input `[1, 32, 100]` for one box. `vertices` are `cv2.boxPoints` corners in
/// blob pixels; the crop is taken from the original image (vertices scaled to it) with
/// bilinear interpolation. None when degenerate.
pub fn crop(img: &RgbImage, vertices: &[Pt; 4]) -> Option<ndarray::Array3<f32>> {
    let (sx, sy) = (
        img.width() as f32 / BLOB_W as f32,
        img.height() as f32 / BLOB_H as f32,
    );
    let from = vertices.map(|(x, y)| (x * sx, y * sy));
    // cv2.cvtColor(RGB2GRAY) weights, rounded to 8 bits as OpenCV does for u8 images.
    warp_to_crop(img, &from, |p: &Rgb<u8>| {
        (0.299 * f32::from(p[0]) + 0.587 * f32::from(p[1]) + 0.114 * f32::from(p[2])).round()
    })
}

/// The blob (`[1, 480, 640, 3]`, or one item of a batch) as a float image, the frame the
/// tutorial's client crops from. Build it once per blob, then crop every box from it.
pub fn blob_frame(blob: ArrayView4<f32>) -> Rgb32FImage {
    Rgb32FImage::from_fn(BLOB_W, BLOB_H, |x, y| {
        Rgb([0, 1, 2].map(|c| blob[[0, y as usize, x as usize, c]]))
    })
}

/// The tutorial client's crop, quirk included: it warps the mean-subtracted blob itself (RGB
/// in memory, see [`blob_frame`]) and converts it with `COLOR_BGR2GRAY`, so the channel
/// weights are swapped and the values are offset by the mean.
pub fn crop_tutorial_exact(
    frame: &Rgb32FImage,
    vertices: &[Pt; 4],
) -> Option<ndarray::Array3<f32>> {
    warp_to_crop(frame, vertices, |p: &Rgb<f32>| {
        0.114 * p[0] + 0.587 * p[1] + 0.299 * p[2]
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array3;

    #[test]
    fn decode_an_axis_aligned_cell() {
        let mut scores = Array3::<f32>::zeros((2, 3, 1));
        let mut geo = Array3::<f32>::zeros((2, 3, 5));
        scores[[1, 2, 0]] = 0.9;
        // 4 px to the top, 10 right, 6 bottom, 20 left, no angle, at cell (x=2, y=1) = (8, 4).
        for (i, v) in [4.0, 10.0, 6.0, 20.0, 0.0].into_iter().enumerate() {
            geo[[1, 2, i]] = v;
        }
        let boxes = decode(scores.view(), geo.view(), 0.5);
        assert_eq!(boxes.len(), 1);
        let (r, s) = boxes[0];
        assert_eq!(s, 0.9);
        assert_eq!(r.size, (30.0, 10.0));
        // x from 8-20 to 8+10 → centre 3; y from 4-4 to 4+6 → centre 5.
        assert!(
            (r.center.0 - 3.0).abs() < 1e-5 && (r.center.1 - 5.0).abs() < 1e-5,
            "{r:?}"
        );
        assert_eq!(r.angle, 0.0);
    }

    #[test]
    fn nms_keeps_the_best_of_overlapping_boxes() {
        let r = |x: f32| RotatedRect {
            center: (x, 0.0),
            size: (10.0, 10.0),
            angle: 0.0,
        };
        let boxes = vec![(r(0.0), 0.6), (r(1.0), 0.9), (r(50.0), 0.7), (r(2.0), 0.4)];
        assert_eq!(nms_rotated(&boxes, 0.5, 0.4), [1, 2]);
    }

    #[test]
    fn crop_maps_the_box_onto_100x32() {
        let img = RgbImage::from_fn(640, 480, |x, _| Rgb([if x < 320 { 0 } else { 255 }; 3]));
        // A box covering x 300..340 at blob scale: left half black, right half white.
        let r = RotatedRect {
            center: (320.0, 100.0),
            size: (40.0, 16.0),
            angle: 0.0,
        };
        let c = crop(&img, &r.points()).unwrap();
        assert_eq!(c.shape(), &[1, 32, 100]);
        assert_eq!(c[[0, 16, 10]], -1.0);
        assert_eq!(c[[0, 16, 90]], 1.0);
    }
}
