//! The one pseudo-random generator of grdr: SplitMix64 (Steele et al.) — tiny, fast, and
//! the same stream on every platform and rank count, so data orders, negatives and
//! synthetic corpora are pure functions of their seeds (nothing to checkpoint).
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator whose state starts at `seed`.
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    /// A generator keyed by several numbers (seed, a tag, the epoch, the step, …).
    pub fn keyed(parts: &[u64]) -> Self {
        let mut s = SplitMix64(0x9E37_79B9_7F4A_7C15);
        for &p in parts {
            s.0 ^= p;
            s.next_u64();
        }
        s
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0), by Lemire's multiply-shift (bias < n/2^64).
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }

    /// Fisher–Yates.
    pub fn shuffle<T>(&mut self, xs: &mut [T]) {
        for i in (1..xs.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            xs.swap(i, j);
        }
    }

    /// A non-negative seed for libtorch's generator (`tch::manual_seed`), keyed by `parts`:
    /// dropout masks as a pure function of (seed, tag, rank, step, …).
    pub fn torch_seed(parts: &[u64]) -> i64 {
        (SplitMix64::keyed(parts).next_u64() >> 1) as i64
    }

    /// Uniform in [0, 1) (53 random bits).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [lo, hi] (inclusive; modulo, bias < (hi-lo+1)/2^64).
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next_u64() % (hi - lo + 1) as u64) as usize
    }
}
