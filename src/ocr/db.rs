//! PaddleOCR's DB text detector around `ch_PP-OCRv4_det_infer.onnx`: resize rule and
//! normalisation before, and the differentiable-binarisation post-processing after
//! (threshold, 2×2 dilation, contours, minimum-area rectangles, box score, unclip), as
//! rapidocr_onnxruntime 1.4.4 does it (see `shared/spec/ppocr-pipeline.md`).

use image::{GrayImage, Luma, RgbImage};
use imageproc::contours::find_contours;
use imageproc::drawing::draw_polygon_mut;
use imageproc::point::Point;
use ndarray::{s, Array4, ArrayView2};

use super::geometry::{dist, min_area_rect, order_mini_box, polygon_area, Pt};
use super::image_ops::{resize, round_to_32, write_bgr_normalized};

/// DB parameters (rapidocr's defaults).
#[derive(Debug, Clone)]
pub struct DbParams {
    /// Probability threshold of the bitmap.
    pub thresh: f32,
    /// Minimum mean probability inside a box.
    pub box_thresh: f32,
    /// Contours examined at most.
    pub max_candidates: usize,
    /// Unclip expansion ratio.
    pub unclip_ratio: f32,
    /// Dilate the bitmap with a 2×2 kernel.
    pub use_dilation: bool,
    /// Shorter side the image is scaled up to (`limit_type: min`).
    pub limit_side_len: u32,
}

impl Default for DbParams {
    fn default() -> Self {
        DbParams {
            thresh: 0.3,
            box_thresh: 0.5,
            max_candidates: 1000,
            unclip_ratio: 1.6,
            use_dilation: true,
            limit_side_len: 736,
        }
    }
}

/// The detector's input size for an image: the shorter side scaled up to `limit`, each side
/// then rounded to a multiple of 32 (separately).
pub fn input_size(w: u32, h: u32, limit: u32) -> (u32, u32) {
    let min = w.min(h).max(1);
    let ratio = if min < limit {
        f64::from(limit) / f64::from(min)
    } else {
        1.0
    };
    let rw = (f64::from(w) * ratio).floor();
    let rh = (f64::from(h) * ratio).floor();
    (round_to_32(rw), round_to_32(rh))
}

/// The detector's input `[1, 3, H, W]` for `img`.
pub fn preprocess(img: &RgbImage, params: &DbParams) -> Array4<f32> {
    let (w, h) = input_size(img.width(), img.height(), params.limit_side_len);
    let resized = resize(img, w, h);
    let mut x = Array4::<f32>::zeros((1, 3, h as usize, w as usize));
    write_bgr_normalized(&resized, x.slice_mut(s![0, .., .., ..]));
    x
}

fn mini_box(points: &[Pt]) -> Option<([Pt; 4], f32)> {
    let rect = min_area_rect(points)?;
    Some((order_mini_box(rect.points()), rect.size.0.min(rect.size.1)))
}

/// Mean probability inside the (integer) polygon of `quad`, over its clipped bounding box.
fn box_score(prob: &ArrayView2<f32>, quad: &[Pt; 4]) -> f32 {
    let (h, w) = prob.dim();
    let clampi = |v: f32, hi: usize| (v as i64).clamp(0, hi as i64 - 1) as usize;
    let xmin = clampi(quad.iter().map(|p| p.0).fold(f32::MAX, f32::min).floor(), w);
    let xmax = clampi(quad.iter().map(|p| p.0).fold(f32::MIN, f32::max).ceil(), w);
    let ymin = clampi(quad.iter().map(|p| p.1).fold(f32::MAX, f32::min).floor(), h);
    let ymax = clampi(quad.iter().map(|p| p.1).fold(f32::MIN, f32::max).ceil(), h);
    let mut mask = GrayImage::new((xmax - xmin + 1) as u32, (ymax - ymin + 1) as u32);
    let mut poly: Vec<Point<i32>> = quad
        .iter()
        .map(|p| Point::new(p.0 as i32 - xmin as i32, p.1 as i32 - ymin as i32))
        .collect();
    poly.dedup();
    if poly.len() > 1 && poly.first() == poly.last() {
        poly.pop();
    }
    if poly.len() >= 3 {
        draw_polygon_mut(&mut mask, &poly, Luma([1]));
    } else {
        for p in &poly {
            if let Some(px) = mask.get_pixel_mut_checked(p.x as u32, p.y as u32) {
                *px = Luma([1]);
            }
        }
    }
    let (mut sum, mut n) = (0.0f64, 0usize);
    for (x, y, m) in mask.enumerate_pixels() {
        if m[0] != 0 {
            sum += f64::from(prob[[ymin + y as usize, xmin + x as usize]]);
            n += 1;
        }
    }
    if n == 0 {
        0.0
    } else {
        (sum / n as f64) as f32
    }
}

/// Expands a box by `area * ratio / perimeter` on every side. For a rectangle this is exactly
/// the minimum-area rectangle of pyclipper's rounded offset polygon, which rapidocr computes.
fn unclip(quad: &[Pt; 4], ratio: f32) -> Option<([Pt; 4], f32)> {
    let area = polygon_area(quad);
    let perimeter: f32 = (0..4).map(|i| dist(quad[i], quad[(i + 1) % 4])).sum();
    if perimeter <= 0.0 {
        return None;
    }
    let d = area * ratio / perimeter;
    let mut rect = min_area_rect(quad)?;
    rect.size = (rect.size.0 + 2.0 * d, rect.size.1 + 2.0 * d);
    Some((order_mini_box(rect.points()), rect.size.0.min(rect.size.1)))
}

/// PaddleOCR's `order_points_clockwise`.
fn order_clockwise(quad: &[Pt; 4]) -> [Pt; 4] {
    order_mini_box(*quad)
}

/// Boxes (TL, TR, BR, BL, in the coordinates of an image of `img_w`×`img_h`) and scores from
/// the probability map `prob` (`[H, W]`), filtered and sorted in reading order.
pub fn postprocess(
    prob: ArrayView2<f32>,
    img_w: u32,
    img_h: u32,
    params: &DbParams,
) -> Vec<([Pt; 4], f32)> {
    let (mh, mw) = prob.dim();
    if mh == 0 || mw == 0 {
        return Vec::new();
    }
    let mut bitmap = GrayImage::from_fn(mw as u32, mh as u32, |x, y| {
        Luma([if prob[[y as usize, x as usize]] > params.thresh {
            255
        } else {
            0
        }])
    });
    if params.use_dilation {
        // cv2.dilate with a 2×2 kernel (anchor at its centre, (1, 1)): max over (x-1..x, y-1..y).
        let src = bitmap.clone();
        for (x, y, p) in bitmap.enumerate_pixels_mut() {
            let xs = x.saturating_sub(1)..=x;
            let on = xs
                .clone()
                .any(|xx| (y.saturating_sub(1)..=y).any(|yy| src.get_pixel(xx, yy)[0] != 0));
            *p = Luma([if on { 255 } else { 0 }]);
        }
    }
    let contours = find_contours::<i32>(&bitmap);
    let mut boxes = Vec::new();
    for contour in contours.iter().take(params.max_candidates) {
        let pts: Vec<Pt> = contour
            .points
            .iter()
            .map(|p| (p.x as f32, p.y as f32))
            .collect();
        let Some((quad, sside)) = mini_box(&pts) else {
            continue;
        };
        if sside < 3.0 {
            continue;
        }
        let score = box_score(&prob, &quad);
        if score < params.box_thresh {
            continue;
        }
        let Some((quad, sside)) = unclip(&quad, params.unclip_ratio) else {
            continue;
        };
        if sside < 5.0 {
            continue;
        }
        let (sx, sy) = (img_w as f32 / mw as f32, img_h as f32 / mh as f32);
        let scaled = quad.map(|(x, y)| {
            (
                (x * sx).round_ties_even().clamp(0.0, img_w as f32),
                (y * sy).round_ties_even().clamp(0.0, img_h as f32),
            )
        });
        boxes.push((scaled, score));
    }
    // filter_tag_det_res: order, clip, truncate, drop thin boxes.
    let (maxx, maxy) = (
        img_w.saturating_sub(1) as f32,
        img_h.saturating_sub(1) as f32,
    );
    let mut kept: Vec<([Pt; 4], f32)> = boxes
        .into_iter()
        .map(|(q, s)| {
            (
                order_clockwise(&q)
                    .map(|(x, y)| (x.clamp(0.0, maxx).trunc(), y.clamp(0.0, maxy).trunc())),
                s,
            )
        })
        .filter(|(q, _)| dist(q[0], q[1]) as i64 > 3 && dist(q[0], q[3]) as i64 > 3)
        .collect();
    sort_reading_order(&mut kept);
    kept
}

/// PaddleOCR's `sorted_boxes`: by top-left y then x, then boxes on the same line (|Δy| < 10)
/// left to right.
pub fn sort_reading_order<T>(boxes: &mut [([Pt; 4], T)]) {
    boxes.sort_by(|a, b| {
        a.0[0]
            .1
            .total_cmp(&b.0[0].1)
            .then(a.0[0].0.total_cmp(&b.0[0].0))
    });
    for i in 0..boxes.len().saturating_sub(1) {
        for j in (0..=i).rev() {
            let (a, b) = (boxes[j].0[0], boxes[j + 1].0[0]);
            if (b.1 - a.1).abs() < 10.0 && b.0 < a.0 {
                boxes.swap(j, j + 1);
            } else {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;

    #[test]
    fn input_size_follows_rapidocr() {
        assert_eq!(
            input_size(640, 480, 736),
            (992, 736),
            "640x480 becomes 992x736"
        );
        assert_eq!(input_size(1504, 1984, 736), (1504, 1984));
        assert_eq!(input_size(1, 1, 736), (736, 736));
    }

    #[test]
    fn one_blob_gives_one_expanded_box() {
        let mut prob = Array2::<f32>::zeros((64, 128));
        prob.slice_mut(s![20..30, 10..90]).fill(0.9);
        let boxes = postprocess(prob.view(), 256, 128, &DbParams::default());
        assert_eq!(boxes.len(), 1, "{boxes:?}");
        let (q, score) = boxes[0];
        // The box covers the dilated bitmap: 80x10 cells of 0.9 among 81x11.
        assert!((score - 0.9 * 800.0 / 891.0).abs() < 0.01, "{score}");
        // After dilation the contour runs through pixel centres 9..=89 x 19..=29: an 80x10
        // rectangle, unclipped by 800*1.6/180 = 7.1 px per side, then scaled by 2.
        let (w, h) = (dist(q[0], q[1]), dist(q[0], q[3]));
        assert!((w - 2.0 * (80.0 + 2.0 * 7.11)).abs() < 2.0, "{q:?}");
        assert!((h - 2.0 * (10.0 + 2.0 * 7.11)).abs() < 2.0, "{q:?}");
        assert!(
            q[0].0 < q[1].0 && q[0].1 < q[3].1,
            "TL, TR, BR, BL order: {q:?}"
        );
    }

    #[test]
    fn weak_and_tiny_blobs_are_dropped() {
        let mut prob = Array2::<f32>::zeros((64, 64));
        prob.slice_mut(s![5..15, 5..40]).fill(0.4); // above thresh, below box_thresh
        prob[[50, 50]] = 0.99; // too small
        assert!(postprocess(prob.view(), 64, 64, &DbParams::default()).is_empty());
        assert!(postprocess(
            Array2::<f32>::zeros((0, 0)).view(),
            1,
            1,
            &DbParams::default()
        )
        .is_empty());
    }

    #[test]
    fn reading_order() {
        let q = |x: f32, y: f32| [(x, y), (x + 5.0, y), (x + 5.0, y + 5.0), (x, y + 5.0)];
        let mut boxes = vec![(q(50.0, 12.0), 0), (q(10.0, 15.0), 1), (q(0.0, 40.0), 2)];
        sort_reading_order(&mut boxes);
        let order: Vec<i32> = boxes.iter().map(|b| b.1).collect();
        assert_eq!(order, [1, 0, 2], "same line (|dy| < 10) goes left to right");
    }
}
