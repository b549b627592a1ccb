//! Image operations shared by the pipelines: resizing, perspective crops, and packing pixels
//! into model input tensors.

use image::{imageops, ImageBuffer, Pixel, Primitive, RgbImage};
use imageproc::definitions::{Clamp, Image};
use imageproc::geometric_transformations::{warp_into_with, Interpolation};
use ndarray::{s, Array4, ArrayViewMut3};

use super::geometry::{dist, Pt};

/// Resizes with a linear (triangle) filter; a no-op when the size already matches.
pub fn resize(img: &RgbImage, w: u32, h: u32) -> RgbImage {
    if img.dimensions() == (w, h) {
        return img.clone();
    }
    imageops::resize(img, w.max(1), h.max(1), imageops::FilterType::Triangle)
}

/// Python's `round` (half to even) to a multiple of 32, at least 32.
pub fn round_to_32(x: f64) -> u32 {
    (((x / 32.0).round_ties_even() * 32.0) as u32).max(32)
}

/// What a warp samples outside the source image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Border {
    /// The nearest edge pixel (`BORDER_REPLICATE`).
    Replicate,
    /// Zero (`BORDER_CONSTANT`, OpenCV's default).
    Zero,
}

/// Warps the quadrilateral `from` of `img` onto the points `to` of a `w`×`h` output
/// (`cv2.getPerspectiveTransform` + `cv2.warpPerspective`). None when degenerate.
pub fn perspective_warp<P>(
    img: &Image<P>,
    from: &[Pt; 4],
    to: &[Pt; 4],
    w: u32,
    h: u32,
    interpolation: Interpolation,
    border: Border,
) -> Option<Image<P>>
where
    P: Pixel + Send + Sync,
    <P as Pixel>::Subpixel: Into<f32> + Clamp<f32> + Send + Sync,
{
    let (w, h) = (w.max(1), h.max(1));
    // Maps output coordinates to source coordinates.
    let to_source = homography(to, from)?;
    let back = |x: f32, y: f32| -> (f32, f32) {
        let (sx, sy) = project(&to_source, f64::from(x), f64::from(y));
        (sx as f32, sy as f32)
    };
    let (iw, ih) = img.dimensions();
    let (maxx, maxy) = (iw.saturating_sub(1) as f32, ih.saturating_sub(1) as f32);
    let zero = *Pixel::from_slice(
        &[<P as Pixel>::Subpixel::DEFAULT_MIN_VALUE; 4][..usize::from(P::CHANNEL_COUNT)],
    );
    let mut out = ImageBuffer::from_pixel(w, h, zero);
    if interpolation == Interpolation::Bilinear && border == Border::Zero {
        // OpenCV blends in-range neighbours with the zero border; imageproc's sampler gives
        // the default pixel as soon as one neighbour is outside.
        for (x, y, px) in out.enumerate_pixels_mut() {
            let (sx, sy) = back(x as f32, y as f32);
            *px = bilinear_zero(img, sx, sy);
        }
        return Some(out);
    }
    warp_into_with(
        img,
        |x, y| {
            let (sx, sy) = back(x, y);
            match border {
                Border::Replicate => (sx.clamp(0.0, maxx), sy.clamp(0.0, maxy)),
                Border::Zero => (sx, sy),
            }
        },
        interpolation,
        zero,
        &mut out,
    );
    Some(out)
}

/// The projective transform taking the four points `from` onto `to` (`h[8]` = 1), solved as
/// `cv2.getPerspectiveTransform` does: the 8x8 linear system in f64 by Gaussian elimination
/// with partial pivoting. (imageproc's `Projection::from_control_points` solves it by an SVD
/// that drops small singular values: on an elongated box that put the corners 0.03 px off, a
/// visible difference at a sharp edge.) None when the points are degenerate.
fn homography(from: &[Pt; 4], to: &[Pt; 4]) -> Option<[f64; 9]> {
    let mut a = [[0f64; 9]; 8];
    for (i, (&(x, y), &(u, v))) in from.iter().zip(to).enumerate() {
        let (x, y, u, v) = (f64::from(x), f64::from(y), f64::from(u), f64::from(v));
        a[2 * i] = [x, y, 1.0, 0.0, 0.0, 0.0, -u * x, -u * y, u];
        a[2 * i + 1] = [0.0, 0.0, 0.0, x, y, 1.0, -v * x, -v * y, v];
    }
    for col in 0..8 {
        let pivot = (col..8).max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs()))?;
        if a[pivot][col].abs() < 1e-12 {
            return None;
        }
        a.swap(col, pivot);
        let p = a[col];
        for (r, row) in a.iter_mut().enumerate() {
            if r != col {
                let f = row[col] / p[col];
                for (x, y) in row.iter_mut().zip(p).skip(col) {
                    *x -= f * y;
                }
            }
        }
    }
    let mut h = [1f64; 9];
    for (i, row) in a.iter().enumerate() {
        h[i] = row[8] / row[i];
    }
    h.iter().all(|v| v.is_finite()).then_some(h)
}

/// (x, y) mapped through the projective transform `h`.
fn project(h: &[f64; 9], x: f64, y: f64) -> (f64, f64) {
    let d = h[6] * x + h[7] * y + h[8];
    (
        (h[0] * x + h[1] * y + h[2]) / d,
        (h[3] * x + h[4] * y + h[5]) / d,
    )
}

/// Bilinear sample at (x, y), neighbours outside the image counting as zero.
fn bilinear_zero<P>(img: &Image<P>, x: f32, y: f32) -> P
where
    P: Pixel,
    <P as Pixel>::Subpixel: Into<f32> + Clamp<f32>,
{
    let (x0, y0) = (x.floor(), y.floor());
    let (fx, fy) = (x - x0, y - y0);
    let (w, h) = (img.width() as i64, img.height() as i64);
    let n = usize::from(P::CHANNEL_COUNT);
    let mut acc = [0f32; 4];
    for (dx, dy, wt) in [
        (0, 0, (1.0 - fx) * (1.0 - fy)),
        (1, 0, fx * (1.0 - fy)),
        (0, 1, (1.0 - fx) * fy),
        (1, 1, fx * fy),
    ] {
        let (xi, yi) = (x0 as i64 + dx, y0 as i64 + dy);
        if xi < 0 || yi < 0 || xi >= w || yi >= h || wt == 0.0 {
            continue;
        }
        let p = img.get_pixel(xi as u32, yi as u32);
        for (a, c) in acc.iter_mut().zip(p.channels()) {
            *a += wt * (*c).into();
        }
    }
    let mut channels = [<P as Pixel>::Subpixel::DEFAULT_MIN_VALUE; 4];
    for (c, a) in channels.iter_mut().zip(acc).take(n) {
        *c = <P as Pixel>::Subpixel::clamp(a);
    }
    *P::from_slice(&channels[..n])
}

/// Crops the quadrilateral `quad` (TL, TR, BR, BL) into a `w`×`h` image as PaddleOCR does:
/// bicubic, replicated borders. None when the quadrilateral is degenerate.
pub fn perspective_crop(img: &RgbImage, quad: &[Pt; 4], w: u32, h: u32) -> Option<RgbImage> {
    let (w, h) = (w.max(1), h.max(1));
    let to = [
        (0.0, 0.0),
        (w as f32, 0.0),
        (w as f32, h as f32),
        (0.0, h as f32),
    ];
    perspective_warp(
        img,
        quad,
        &to,
        w,
        h,
        Interpolation::Bicubic,
        Border::Replicate,
    )
}

/// PaddleOCR's crop size for a box: the longer of each pair of opposite sides.
pub fn crop_size(quad: &[Pt; 4]) -> (u32, u32) {
    let w = dist(quad[0], quad[1]).max(dist(quad[2], quad[3]));
    let h = dist(quad[0], quad[3]).max(dist(quad[1], quad[2]));
    (w as u32, h as u32)
}

/// Writes `img` into `dst` (`[3, h, w]`, channels B, G, R as PaddleOCR feeds them) as
/// `(v / 255 - 0.5) / 0.5`; `dst` may be wider than the image (right padding stays as is).
pub fn write_bgr_normalized(img: &RgbImage, mut dst: ArrayViewMut3<f32>) {
    let (w, h) = img.dimensions();
    for (x, y, p) in img.enumerate_pixels() {
        if x >= w || y >= h {
            continue;
        }
        for c in 0..3 {
            dst[[c, y as usize, x as usize]] = (f32::from(p[2 - c]) / 255.0 - 0.5) / 0.5;
        }
    }
}

/// Packs images of height `h` into a zero-padded `[n, 3, h, w]` batch (BGR, normalised).
pub fn batch_bgr_normalized(images: &[RgbImage], h: usize, w: usize) -> Array4<f32> {
    let mut batch = Array4::<f32>::zeros((images.len(), 3, h, w));
    for (i, img) in images.iter().enumerate() {
        let iw = (img.width() as usize).min(w);
        write_bgr_normalized(img, batch.slice_mut(s![i, .., .., ..iw]));
    }
    batch
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_rounding_to_32() {
        assert_eq!(round_to_32(62.5 * 32.0), 62 * 32);
        assert_eq!(round_to_32(63.5 * 32.0), 64 * 32);
        assert_eq!(round_to_32(3.0), 32);
    }

    #[test]
    fn homography_maps_an_elongated_box_exactly() {
        // A 31x189 box at -15.7 degrees onto the tutorial's 100x32 crop (an EAST fixture box
        // on which imageproc's SVD solve was 0.03 px off at the corners).
        let from = [
            (222.58955, 428.00827),
            (171.28456, 245.54666),
            (201.44264, 237.06674),
            (252.74763, 419.52835),
        ];
        let to = [(0.0, 31.0), (0.0, 0.0), (99.0, 0.0), (99.0, 31.0)];
        let h = homography(&to, &from).unwrap();
        for ((x, y), (u, v)) in to.iter().zip(from) {
            let (x, y) = (f64::from(*x), f64::from(*y));
            let (mu, mv) = project(&h, x, y);
            assert!(
                (mu - f64::from(u)).abs() < 1e-6 && (mv - f64::from(v)).abs() < 1e-6,
                "({x}, {y}) -> ({mu}, {mv}), want ({u}, {v})"
            );
        }
        assert!(homography(&to, &[(1.0, 1.0); 4]).is_none(), "degenerate");
    }

    #[test]
    fn axis_aligned_crop_copies_pixels() {
        let img = RgbImage::from_fn(20, 10, |x, y| image::Rgb([x as u8, y as u8, 0]));
        let quad = [(4.0, 2.0), (12.0, 2.0), (12.0, 6.0), (4.0, 6.0)];
        assert_eq!(crop_size(&quad), (8, 4));
        let crop = perspective_crop(&img, &quad, 8, 4).unwrap();
        assert_eq!(crop.get_pixel(0, 0).0, [4, 2, 0]);
        assert_eq!(crop.get_pixel(7, 3).0, [11, 5, 0]);
        assert!(perspective_crop(&img, &[(1.0, 1.0); 4], 8, 4).is_none());
    }

    #[test]
    fn normalisation_is_bgr_in_minus_one_to_one() {
        let img = RgbImage::from_pixel(2, 1, image::Rgb([255, 0, 127]));
        let b = batch_bgr_normalized(&[img], 1, 3);
        assert_eq!(b.shape(), &[1, 3, 1, 3]);
        assert_eq!(b[[0, 0, 0, 0]], (127.0 / 255.0 - 0.5) / 0.5); // B first
        assert_eq!(b[[0, 2, 0, 1]], 1.0); // R last
        assert_eq!(b[[0, 1, 0, 0]], -1.0);
        assert_eq!(b[[0, 0, 0, 2]], 0.0, "right padding is 0");
    }
}
