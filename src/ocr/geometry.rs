//! Plane geometry the detectors need: rotated rectangles (OpenCV's `RotatedRect` conventions),
//! minimum-area rectangles in floating point, corner ordering, and the intersection-over-union
//! of convex polygons (for rotated NMS).

/// A point (x, y) in pixels.
pub type Pt = (f32, f32);

/// A rotated rectangle: centre, size and angle in degrees (OpenCV `RotatedRect`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RotatedRect {
    /// Centre.
    pub center: Pt,
    /// Width (along the angle direction) and height.
    pub size: (f32, f32),
    /// Rotation in degrees, clockwise in image coordinates (y down), as OpenCV.
    pub angle: f32,
}

impl RotatedRect {
    /// The four corners in OpenCV `boxPoints` order: bottom-left, top-left, top-right,
    /// bottom-right of the unrotated box, rotated.
    pub fn points(&self) -> [Pt; 4] {
        let a = self.angle.to_radians();
        let (b, c) = (a.cos() * 0.5, a.sin() * 0.5);
        let (cx, cy) = self.center;
        let (w, h) = self.size;
        let p0 = (cx - c * h - b * w, cy + b * h - c * w);
        let p1 = (cx + c * h - b * w, cy - b * h - c * w);
        let p2 = (2.0 * cx - p0.0, 2.0 * cy - p0.1);
        let p3 = (2.0 * cx - p1.0, 2.0 * cy - p1.1);
        [p0, p1, p2, p3]
    }

    /// Area.
    pub fn area(&self) -> f32 {
        self.size.0 * self.size.1
    }
}

fn cross(o: Pt, a: Pt, b: Pt) -> f32 {
    (a.0 - o.0) * (b.1 - o.1) - (a.1 - o.1) * (b.0 - o.0)
}

/// Convex hull (Andrew's monotone chain), counter-clockwise in a y-up frame.
pub fn convex_hull(points: &[Pt]) -> Vec<Pt> {
    let mut pts: Vec<Pt> = points.to_vec();
    pts.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)));
    pts.dedup();
    if pts.len() < 3 {
        return pts;
    }
    let mut hull: Vec<Pt> = Vec::with_capacity(pts.len() * 2);
    for pass in 0..2 {
        let start = hull.len();
        let iter: Box<dyn Iterator<Item = &Pt>> = if pass == 0 {
            Box::new(pts.iter())
        } else {
            Box::new(pts.iter().rev())
        };
        for &p in iter {
            while hull.len() >= start + 2
                && cross(hull[hull.len() - 2], hull[hull.len() - 1], p) <= 0.0
            {
                hull.pop();
            }
            hull.push(p);
        }
        hull.pop();
    }
    hull
}

/// The rectangle of least area enclosing `points` (rotating calipers over the hull, in f32,
/// as `cv2.minAreaRect`). None for no point.
pub fn min_area_rect(points: &[Pt]) -> Option<RotatedRect> {
    let hull = convex_hull(points);
    match hull.len() {
        0 => return None,
        1 => {
            return Some(RotatedRect {
                center: hull[0],
                size: (0.0, 0.0),
                angle: 0.0,
            })
        }
        _ => {}
    }
    let mut best: Option<(f32, RotatedRect)> = None;
    for i in 0..hull.len() {
        let (a, b) = (hull[i], hull[(i + 1) % hull.len()]);
        let (dx, dy) = (b.0 - a.0, b.1 - a.1);
        let len = (dx * dx + dy * dy).sqrt();
        if len == 0.0 {
            continue;
        }
        let (ux, uy) = (dx / len, dy / len);
        let (mut min_u, mut max_u, mut min_v, mut max_v) = (f32::MAX, f32::MIN, f32::MAX, f32::MIN);
        for &(px, py) in &hull {
            let u = px * ux + py * uy;
            let v = -px * uy + py * ux;
            min_u = min_u.min(u);
            max_u = max_u.max(u);
            min_v = min_v.min(v);
            max_v = max_v.max(v);
        }
        let (w, h) = (max_u - min_u, max_v - min_v);
        let area = w * h;
        if best.as_ref().is_none_or(|(a, _)| area < *a) {
            let (cu, cv) = ((min_u + max_u) / 2.0, (min_v + max_v) / 2.0);
            let center = (cu * ux - cv * uy, cu * uy + cv * ux);
            let angle = uy.atan2(ux).to_degrees();
            best = Some((
                area,
                RotatedRect {
                    center,
                    size: (w, h),
                    angle,
                },
            ));
        }
    }
    best.map(|(_, r)| r)
}

/// PaddleOCR's `get_mini_boxes` order of a rectangle's corners: top-left, top-right,
/// bottom-right, bottom-left (sorted by x, then each pair by y).
pub fn order_mini_box(points: [Pt; 4]) -> [Pt; 4] {
    let mut p = points;
    p.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (tl, bl) = if p[1].1 > p[0].1 {
        (p[0], p[1])
    } else {
        (p[1], p[0])
    };
    let (tr, br) = if p[3].1 > p[2].1 {
        (p[2], p[3])
    } else {
        (p[3], p[2])
    };
    [tl, tr, br, bl]
}

/// Area of a simple polygon (shoelace), always non-negative.
pub fn polygon_area(poly: &[Pt]) -> f32 {
    let n = poly.len();
    let mut s = 0.0;
    for i in 0..n {
        let (a, b) = (poly[i], poly[(i + 1) % n]);
        s += a.0 * b.1 - b.0 * a.1;
    }
    s.abs() / 2.0
}

/// Intersection of two convex polygons (Sutherland–Hodgman).
pub fn convex_intersection(subject: &[Pt], clip: &[Pt]) -> Vec<Pt> {
    // Work with a counter-clockwise clip polygon in the y-up sense.
    let mut clip = clip.to_vec();
    let signed: f32 = (0..clip.len())
        .map(|i| {
            let (a, b) = (clip[i], clip[(i + 1) % clip.len()]);
            a.0 * b.1 - b.0 * a.1
        })
        .sum();
    if signed < 0.0 {
        clip.reverse();
    }
    let mut out = subject.to_vec();
    for i in 0..clip.len() {
        if out.is_empty() {
            break;
        }
        let (a, b) = (clip[i], clip[(i + 1) % clip.len()]);
        let input = std::mem::take(&mut out);
        for j in 0..input.len() {
            let (p, q) = (input[j], input[(j + 1) % input.len()]);
            let (cp, cq) = (cross(a, b, p), cross(a, b, q));
            if cp >= 0.0 {
                out.push(p);
            }
            if (cp >= 0.0) != (cq >= 0.0) {
                let t = cp / (cp - cq);
                out.push((p.0 + t * (q.0 - p.0), p.1 + t * (q.1 - p.1)));
            }
        }
    }
    out
}

/// The overlap `cv2.dnn.NMSBoxesRotated` uses, reproduced with its quirks (OpenCV's
/// `rotatedRectangleIntersection` + `rotatedRectIOU`): 1 when one rectangle lies inside the
/// other (no edges cross) or both are the same, 0 when they do not meet or either is empty,
/// otherwise the area of the intersection over the union of the nominal areas.
pub fn rotated_iou(a: &RotatedRect, b: &RotatedRect) -> f32 {
    // An empty rectangle meets nothing (OpenCV 4.6+).
    if a.size.0 <= 0.0 || a.size.1 <= 0.0 || b.size.0 <= 0.0 || b.size.1 <= 0.0 {
        return 0.0;
    }
    // OpenCV moves the pair's mean centre to the origin first, for precision.
    let mid = (
        (a.center.0 + b.center.0) / 2.0,
        (a.center.1 + b.center.1) / 2.0,
    );
    let shift = |r: &RotatedRect| RotatedRect {
        center: (r.center.0 - mid.0, r.center.1 - mid.1),
        ..*r
    };
    let (p1, p2) = (shift(a).points(), shift(b).points());
    let same_eps = 1e-6 * a.area().max(b.area());
    if p1
        .iter()
        .zip(&p2)
        .all(|(u, v)| (u.0 - v.0).abs() <= same_eps && (u.1 - v.1).abs() <= same_eps)
    {
        return 1.0;
    }
    let vec = |p: &[Pt; 4], i: usize| (p[(i + 1) % 4].0 - p[i].0, p[(i + 1) % 4].1 - p[i].1);
    let mut points: Vec<Pt> = Vec::with_capacity(24);
    for i in 0..4 {
        for j in 0..4 {
            let (x21, y21) = (p2[j].0 - p1[i].0, p2[j].1 - p1[i].1);
            let ((vx1, vy1), (vx2, vy2)) = (vec(&p1, i), vec(&p2, j));
            let det = vx2 * vy1 - vx1 * vy2;
            if det.abs() < 1e-12 {
                continue;
            }
            let t1 = (vx2 * y21 - vy2 * x21) / det;
            let t2 = (vx1 * y21 - vy1 * x21) / det;
            if !t1.is_finite() || !t2.is_finite() {
                continue;
            }
            if (0.0..=1.0).contains(&t1) && (0.0..=1.0).contains(&t2) {
                points.push((p1[i].0 + vx1 * t1, p1[i].1 + vy1 * t1));
            }
        }
    }
    let partial = !points.is_empty();
    for (inner, outer) in [(&p1, &p2), (&p2, &p1)] {
        for &(x, y) in inner.iter() {
            let (mut pos, mut neg) = (0, 0);
            for j in 0..4 {
                // OpenCV evaluates the line equation in double precision.
                let (vx, vy) = vec(outer, j);
                let (ca, cb) = (-f64::from(vy), f64::from(vx));
                let c = -(ca * f64::from(outer[j].0) + cb * f64::from(outer[j].1));
                if ca * f64::from(x) + cb * f64::from(y) + c >= 0.0 {
                    pos += 1;
                } else {
                    neg += 1;
                }
            }
            if pos == 4 || neg == 4 {
                points.push((x, y));
            }
        }
    }
    if points.is_empty() {
        return 0.0;
    }
    if !partial {
        return 1.0;
    }
    let inter = polygon_area(&convex_hull(&points));
    inter / (a.area() + b.area() - inter)
}

/// Euclidean distance.
pub fn dist(a: Pt, b: Pt) -> f32 {
    ((a.0 - b.0).powi(2) + (a.1 - b.1).powi(2)).sqrt()
}

/// Intersection over union of two convex quadrilaterals (any corner order).
pub fn quad_iou(a: &[Pt; 4], b: &[Pt; 4]) -> f32 {
    let (ha, hb) = (convex_hull(a), convex_hull(b));
    let inter = polygon_area(&convex_intersection(&ha, &hb));
    let union = polygon_area(&ha) + polygon_area(&hb) - inter;
    if union <= 0.0 {
        0.0
    } else {
        inter / union
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn box_points_follow_opencv() {
        // cv2.boxPoints(((10, 20), (8, 4), 0)) = [[6,22],[6,18],[14,18],[14,22]]
        let r = RotatedRect {
            center: (10.0, 20.0),
            size: (8.0, 4.0),
            angle: 0.0,
        };
        let p = r.points();
        let expected = [(6.0, 22.0), (6.0, 18.0), (14.0, 18.0), (14.0, 22.0)];
        for (a, b) in p.iter().zip(expected) {
            assert!(dist(*a, b) < 1e-5, "{p:?}");
        }
        // cv2.boxPoints(((0, 0), (2, 2), 45)) has a corner at (0, -1.414...)
        let r = RotatedRect {
            center: (0.0, 0.0),
            size: (2.0, 2.0),
            angle: 45.0,
        };
        assert!(r
            .points()
            .iter()
            .any(|p| dist(*p, (0.0, -std::f32::consts::SQRT_2)) < 1e-5));
    }

    #[test]
    fn min_area_rect_of_a_rotated_box() {
        let r = RotatedRect {
            center: (50.0, 40.0),
            size: (30.0, 10.0),
            angle: 30.0,
        };
        let pts = r.points();
        let m = min_area_rect(&pts).unwrap();
        assert!((m.area() - 300.0).abs() < 1e-2, "{m:?}");
        assert!(dist(m.center, (50.0, 40.0)) < 1e-3);
        assert!(min_area_rect(&[]).is_none());
        let line = min_area_rect(&[(0.0, 0.0), (4.0, 0.0)]).unwrap();
        assert_eq!(line.area(), 0.0);
    }

    #[test]
    fn mini_box_order() {
        let ordered = order_mini_box([(10.0, 10.0), (0.0, 0.0), (10.0, 0.0), (0.0, 10.0)]);
        assert_eq!(
            ordered,
            [(0.0, 0.0), (10.0, 0.0), (10.0, 10.0), (0.0, 10.0)]
        );
    }

    #[test]
    fn iou_of_rotated_rectangles() {
        let a = RotatedRect {
            center: (0.0, 0.0),
            size: (2.0, 2.0),
            angle: 0.0,
        };
        assert!((rotated_iou(&a, &a) - 1.0).abs() < 1e-6);
        let b = RotatedRect {
            center: (1.0, 0.0),
            size: (2.0, 2.0),
            angle: 0.0,
        };
        assert!((rotated_iou(&a, &b) - 2.0 / 6.0).abs() < 1e-6);
        let c = RotatedRect {
            center: (0.0, 0.0),
            size: (2.0, 2.0),
            angle: 45.0,
        };
        // Square vs the same square rotated 45°: intersection is a regular octagon.
        let octagon = 8.0 * (std::f32::consts::SQRT_2 - 1.0);
        assert!((rotated_iou(&a, &c) - octagon / (8.0 - octagon)).abs() < 1e-5);
        let far = RotatedRect {
            center: (10.0, 0.0),
            size: (2.0, 2.0),
            angle: 10.0,
        };
        assert_eq!(rotated_iou(&a, &far), 0.0);
    }
}
