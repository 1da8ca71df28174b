//! Residual compression of token vectors (ColBERTv2, Santhanam et al. 2022): each vector is
//! stored as its nearest k-means centroid's id plus its residual from that centroid,
//! quantised to `nbits` bits per dimension.
//!
//! ```text
//! train:   sample (S, d) ─k-means (Lloyd, keyed init)→ centroids (C, d)
//!          residuals r = x − c[code(x)], all dimensions pooled:
//!          cutoffs = quantiles at i/2^b (i = 1 … 2^b − 1)   bucket edges
//!          weights = quantiles at (i + ½)/2^b (i = 0 … 2^b − 1)   each bucket's value
//! encode:  code = argmin_c ‖x − c‖ (i32), bucket_j = #(cutoffs < r_j), 8/b buckets a byte
//! decode:  x̂ = c[code] + weights[bucket]                      (n, d)
//!          (then normalised to unit length when the sample was: ColBERT's vectors are)
//! ```
//! A token costs 4 + d·b/8 bytes (36 at d = 128, b = 2) instead of 4·d (512).
use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};
use crate::rng::SplitMix64;

/// Scores per block of the nearest-centroid search: blocks of at most 8,192 rows hold at most
/// 512 MB of f32 scores up to 524,288 centroids (ColBERTv2's rule gives 131,072 at 10⁸ tokens).
const ASSIGN_SCORES: i64 = 1 << 27;

/// Centroids and residual buckets, shared by every shard of an index.
pub struct Codec {
    /// (C, d) f32.
    pub centroids: Tensor,
    /// Bits per residual dimension: 1, 2, 4 or 8.
    pub nbits: i64,
    /// (2^b − 1,) bucket edges, ascending.
    cutoffs: Tensor,
    /// (2^b,) the value each bucket decodes to.
    weights: Tensor,
    /// The vectors trained on are unit length (ColBERT normalises its tokens): decoded
    /// vectors are normalised back onto the sphere, as ColBERTv2's decompression does.
    unit: bool,
}

impl Codec {
    /// Trains the codec on `sample (S, d)`: `k` centroids by `iters` Lloyd iterations from
    /// `k` sample rows drawn by `seed`, then the residual buckets. The same sample, in the
    /// same order, gives the same codec.
    pub fn train(sample: &Tensor, k: usize, nbits: i64, iters: usize, seed: u64) -> Result<Codec> {
        check_nbits(nbits)?;
        let (s, d) = sample.size2().map_err(|e| Error::usage("sample", e.to_string()))?;
        if d % (8 / nbits) != 0 {
            return Err(Error::usage("--nbits", format!("{d} dimensions do not pack into bytes at {nbits} bits")));
        }
        if (k as i64) > s || k == 0 {
            return Err(Error::usage("--centroids", format!("{k} centroids from a sample of {s} vectors")));
        }
        let x = sample.to_kind(Kind::Float);
        let norms = x.square().sum_dim_intlist(1, false, Kind::Float).sqrt();
        let unit = (norms - 1.0).abs().max().double_value(&[]) < 1e-3;
        let centroids = tch::no_grad(|| kmeans(&x, k, iters, seed));
        let residuals = tch::no_grad(|| &x - centroids.index_select(0, &nearest(&x, &centroids))).reshape([-1]);
        let sorted = residuals.sort(0, false).0;
        let n = sorted.size()[0];
        let levels = 1i64 << nbits;
        let at = |q: f64| sorted.get(((q * n as f64) as i64).clamp(0, n - 1)).double_value(&[]) as f32;
        let cutoffs: Vec<f32> = (1..levels).map(|i| at(i as f64 / levels as f64)).collect();
        let weights: Vec<f32> = (0..levels).map(|i| at((i as f64 + 0.5) / levels as f64)).collect();
        let device = sample.device();
        Ok(Codec {
            centroids,
            nbits,
            cutoffs: Tensor::from_slice(&cutoffs).to_device(device),
            weights: Tensor::from_slice(&weights).to_device(device),
            unit,
        })
    }

    pub fn dim(&self) -> i64 {
        self.centroids.size()[1]
    }

    pub fn num_centroids(&self) -> i64 {
        self.centroids.size()[0]
    }

    /// Bytes of one token's packed residual.
    pub fn residual_bytes(&self) -> i64 {
        self.dim() * self.nbits / 8
    }

    /// `x (n, d)` → (codes (n,) i32, packed residuals (n, d·b/8) u8).
    pub fn encode(&self, x: &Tensor) -> (Tensor, Tensor) {
        tch::no_grad(|| {
            let x = x.to_kind(Kind::Float);
            let codes = nearest(&x, &self.centroids); // (n,) i64
            let r = &x - self.centroids.index_select(0, &codes);
            let buckets = Tensor::bucketize(&r, &self.cutoffs, false, false); // (n, d) in 0..2^b
            (codes.to_kind(Kind::Int), self.pack(&buckets))
        })
    }

    /// The vectors of `codes (n,)` and `packed (n, d·b/8)`: (n, d) f32.
    pub fn decode(&self, codes: &Tensor, packed: &Tensor) -> Tensor {
        tch::no_grad(|| {
            let buckets = self.unpack(packed); // (n, d) i64
            let x = self.centroids.index_select(0, &codes.to_kind(Kind::Int64))
                + self.weights.index_select(0, &buckets.reshape([-1])).view_as(&buckets);
            if self.unit {
                let norms = x.square().sum_dim_intlist(1, true, Kind::Float).sqrt().clamp_min(1e-12);
                x / norms
            } else {
                x
            }
        })
    }

    /// (n, d) bucket ids → (n, d·b/8) bytes, the lowest bits holding the first dimension.
    fn pack(&self, buckets: &Tensor) -> Tensor {
        let per = 8 / self.nbits;
        let n = buckets.size()[0];
        let shifts = self.shifts(buckets.device());
        (buckets.view([n, -1, per]) * shifts).sum_dim_intlist(-1, false, Kind::Int64).to_kind(Kind::Uint8)
    }

    fn unpack(&self, packed: &Tensor) -> Tensor {
        let n = packed.size()[0];
        let shifts = self.shifts(packed.device());
        let mask = (1i64 << self.nbits) - 1;
        packed.to_kind(Kind::Int64).unsqueeze(-1).floor_divide(&shifts).remainder(mask + 1).view([n, -1])
    }

    /// (8/b,) the place value of each bucket within a byte: 1, 2^b, 2^2b, ….
    fn shifts(&self, device: Device) -> Tensor {
        let per = 8 / self.nbits;
        Tensor::from_slice(&(0..per).map(|j| 1i64 << (j * self.nbits)).collect::<Vec<_>>()).to_device(device)
    }
}

/// Residuals pack whole buckets into bytes: 1, 2, 4 or 8 bits each.
pub fn check_nbits(nbits: i64) -> Result<()> {
    if [1, 2, 4, 8].contains(&nbits) {
        Ok(())
    } else {
        Err(Error::usage("--nbits", format!("{nbits} bits per dimension: use 1, 2, 4 or 8")))
    }
}

/// Index of each row's nearest centroid (squared distance, ties to the lower index): (n,) i64.
fn nearest(x: &Tensor, c: &Tensor) -> Tensor {
    let half_norms = c.square().sum_dim_intlist(1, false, Kind::Float) * 0.5; // (C,)
    let n = x.size()[0];
    let block = (ASSIGN_SCORES / c.size()[0].max(1)).clamp(256, 8192);
    let parts: Vec<Tensor> = (0..n)
        .step_by(block as usize)
        .map(|lo| {
            let rows = x.narrow(0, lo, block.min(n - lo));
            (rows.matmul(&c.tr()) - &half_norms).argmax(1, false) // max x·c − ½‖c‖² = min ‖x − c‖²
        })
        .collect();
    if parts.is_empty() {
        Tensor::zeros([0], (Kind::Int64, x.device()))
    } else {
        Tensor::cat(&parts, 0)
    }
}

/// Lloyd's k-means from `k` rows of `x` picked by a keyed shuffle; an empty cluster keeps
/// its centroid.
fn kmeans(x: &Tensor, k: usize, iters: usize, seed: u64) -> Tensor {
    let s = x.size()[0];
    let mut rows: Vec<i64> = (0..s).collect();
    SplitMix64::keyed(&[seed, 0x6b6d]).shuffle(&mut rows);
    let mut c = x.index_select(0, &Tensor::from_slice(&rows[..k]).to_device(x.device()));
    for _ in 0..iters {
        let assign = nearest(x, &c);
        let sums = Tensor::zeros_like(&c).index_add(0, &assign, x);
        let counts = assign.bincount::<Tensor>(None, k as i64).to_kind(Kind::Float).unsqueeze(1); // (C, 1)
        c = (sums / counts.clamp_min(1.0)).where_self(&counts.gt(0.0), &c);
    }
    c
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// (rows, cols) uniform in [−1, 1) from a keyed stream: no global torch RNG, which
    /// tests running in parallel threads would share.
    pub(crate) fn uniform(seed: u64, rows: i64, cols: i64) -> Tensor {
        let mut rng = SplitMix64::keyed(&[seed]);
        let v: Vec<f32> = (0..rows * cols).map(|_| (rng.unit() * 2.0 - 1.0) as f32).collect();
        Tensor::from_slice(&v).view([rows, cols])
    }

    /// Points around 4 well-separated centres in 8 dimensions.
    fn clustered(n: i64) -> Tensor {
        let centres = Tensor::eye(8, (Kind::Float, Device::Cpu)).narrow(0, 0, 4) * 5.0;
        let which = Tensor::arange(n, (Kind::Int64, Device::Cpu)).remainder(4);
        centres.index_select(0, &which) + uniform(4, n, 8) * 0.17
    }

    #[test]
    fn packing_round_trips_every_bucket_value() {
        for nbits in [1i64, 2, 4, 8] {
            let codec = Codec {
                centroids: Tensor::zeros([1, 16], (Kind::Float, Device::Cpu)),
                nbits,
                cutoffs: Tensor::zeros([(1 << nbits) - 1], (Kind::Float, Device::Cpu)),
                weights: Tensor::zeros([1 << nbits], (Kind::Float, Device::Cpu)),
                unit: false,
            };
            let buckets = Tensor::arange(3 * 16, (Kind::Int64, Device::Cpu)).remainder(1 << nbits).view([3, 16]);
            let packed = codec.pack(&buckets);
            assert_eq!(packed.size(), [3, 16 * nbits / 8]);
            assert!(codec.unpack(&packed).equal(&buckets), "{nbits} bits");
        }
    }

    #[test]
    fn kmeans_finds_separated_clusters_and_residuals_shrink_with_bits() {
        let x = clustered(400);
        let mut errors = Vec::new();
        for nbits in [1i64, 2, 4] {
            let codec = Codec::train(&x, 16, nbits, 10, 7).unwrap();
            let (codes, packed) = codec.encode(&x);
            // No centroid serves two clusters (point i is in cluster i mod 4).
            let c: Vec<i32> = Vec::try_from(&codes).unwrap();
            let mut cluster_of: std::collections::HashMap<i32, usize> = Default::default();
            assert!(c.iter().enumerate().all(|(i, code)| *cluster_of.entry(*code).or_insert(i % 4) == i % 4), "{c:?}");
            assert!(cluster_of.len() >= 4);
            let err = (codec.decode(&codes, &packed) - &x).square().mean(Kind::Float).double_value(&[]);
            errors.push(err);
        }
        // The centroid alone leaves variance 0.01 a dimension; residual bits recover most of it.
        assert!(errors[0] < 0.01 && errors[1] < errors[0] && errors[2] < errors[1] && errors[2] < 0.001, "{errors:?}");
    }

    #[test]
    fn misuse_is_an_error() {
        let x = clustered(8);
        assert!(Codec::train(&x, 4, 3, 1, 0).is_err(), "3 bits");
        assert!(Codec::train(&x, 9, 2, 1, 0).is_err(), "more centroids than vectors");
        assert!(Codec::train(&x.narrow(1, 0, 3), 2, 2, 1, 0).is_err(), "3 dimensions at 2 bits");
    }
}
