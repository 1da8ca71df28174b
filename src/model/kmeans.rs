//! Deterministic k-means (Lloyd) over a small set of f32 vectors: NP-decoding compresses the
//! contextual embeddings of each docid token type to at most k centroids, thousands of
//! tiny problems (most types occur a few times) solved on every rank with bit-equal
//! results. Written here rather than taken from linfa-clustering: that crate draws its
//! initialisation from an RNG and brings ndarray's tree for a 60-line loop; here the
//! initialisation is farthest-point from the first vector, so every rank (and a resumed
//! run) gets the same centroids with no seed to carry.

/// Centroids (k × d, row-major) and each point's centroid index.
pub struct Clusters {
    pub centroids: Vec<f32>,
    pub assignment: Vec<usize>,
}

/// Lloyd iterations at most (they stop earlier once no assignment changes).
const MAX_ITERS: usize = 20;

fn dist2(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(x, y)| f64::from(x - y).powi(2)).sum()
}

/// The nearest centroid of `point` (ties: the lowest index).
fn nearest(point: &[f32], centroids: &[f32], d: usize) -> usize {
    let mut best = (0, f64::INFINITY);
    for (c, row) in centroids.chunks_exact(d).enumerate() {
        let e = dist2(point, row);
        if e < best.1 {
            best = (c, e);
        }
    }
    best.0
}

/// k-means of the `points.len() / d` vectors of width `d` into `min(k, n)` clusters.
/// Initialisation: the first point, then repeatedly the point farthest from the chosen ones
/// (the first of equals); a cluster left empty keeps its centroid.
pub fn kmeans(points: &[f32], d: usize, k: usize) -> Clusters {
    let n = points.len() / d;
    let k = k.min(n);
    let point = |i: usize| &points[i * d..(i + 1) * d];
    if k == 0 {
        return Clusters { centroids: vec![], assignment: vec![] };
    }
    // Farthest-point initialisation.
    let mut centroids: Vec<f32> = point(0).to_vec();
    let mut closest: Vec<f64> = (0..n).map(|i| dist2(point(i), point(0))).collect();
    while centroids.len() / d < k {
        let far = (0..n).fold(0, |b, i| if closest[i] > closest[b] { i } else { b });
        centroids.extend_from_slice(point(far));
        for (i, c) in closest.iter_mut().enumerate() {
            *c = c.min(dist2(point(i), point(far)));
        }
    }
    let mut assignment: Vec<usize> = (0..n).map(|i| nearest(point(i), &centroids, d)).collect();
    for _ in 0..MAX_ITERS {
        // Update: each centroid the mean (f64) of its points.
        let mut sums = vec![0f64; k * d];
        let mut counts = vec![0usize; k];
        for (i, &c) in assignment.iter().enumerate() {
            counts[c] += 1;
            for (s, &x) in sums[c * d..(c + 1) * d].iter_mut().zip(point(i)) {
                *s += f64::from(x);
            }
        }
        for c in (0..k).filter(|&c| counts[c] > 0) {
            for j in 0..d {
                centroids[c * d + j] = (sums[c * d + j] / counts[c] as f64) as f32;
            }
        }
        // Assign: stop when nothing moves.
        let next: Vec<usize> = (0..n).map(|i| nearest(point(i), &centroids, d)).collect();
        if next == assignment {
            break;
        }
        assignment = next;
    }
    Clusters { centroids, assignment }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn separates_well_apart_groups_and_keeps_small_sets_whole() {
        // Two groups around (0,0) and (10,10): two centroids at their means.
        let pts = [0.0, 0.0, 0.2, 0.0, 10.0, 10.0, 0.0, 0.4, 10.2, 9.8];
        let c = kmeans(&pts, 2, 2);
        assert_eq!(c.assignment, vec![0, 0, 1, 0, 1]);
        let close = |a: f32, b: f32| (a - b).abs() < 1e-6;
        assert!(close(c.centroids[0], 0.2 / 3.0) && close(c.centroids[1], 0.4 / 3.0));
        assert!(close(c.centroids[2], 10.1) && close(c.centroids[3], 9.9));
        // Fewer points than k: every point its own centroid.
        let c = kmeans(&pts[..4], 2, 5);
        assert_eq!(c.assignment, vec![0, 1]);
        assert_eq!(c.centroids, pts[..4].to_vec());
    }

    #[test]
    fn lloyd_reaches_a_fixed_point_equal_to_brute_force_on_small_sets() {
        // On 7 points in 1-D, k = 2, the result is a local optimum: every point at its
        // nearest centroid and every centroid the mean of its points.
        let pts = [1.0f32, 2.0, 3.0, 7.0, 8.0, 20.0, 21.0];
        let c = kmeans(&pts, 1, 2);
        for (i, &a) in c.assignment.iter().enumerate() {
            assert_eq!(a, nearest(&pts[i..i + 1], &c.centroids, 1));
        }
        for k in 0..2 {
            let mine: Vec<f32> = (0..7).filter(|&i| c.assignment[i] == k).map(|i| pts[i]).collect();
            let mean = mine.iter().sum::<f32>() / mine.len() as f32;
            assert!((mean - c.centroids[k]).abs() < 1e-5);
        }
    }
}
