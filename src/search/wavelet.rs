//! A wavelet matrix over a sequence of small symbols (the FM-index's BWT), stored as plain
//! `u64` words so that an index file can be memory-mapped and read in place.
//!
//! Written here rather than taken from a crate: the FM-index needs, besides rank, the
//! *distinct symbols of a range with their ranks at both ends* (one descent that yields a
//! prefix's every continuation and the FM range each leads to, as sdsl's
//! `interval_symbols`), and a zero-copy layout over a mapped file; the wavelet crates
//! (vers-vecs, qwt, sucds) offer rank/select/quantile over owned, serde-serialised vectors.
//!
//! Layout: level ℓ (most significant bit first) is a bit vector of n bits in blocks of 8 words
//! (512 bits), each block led by one word: the count of ones before it (9 words a block, 12.5%
//! over the bits). Level ℓ+1 holds the symbols stably partitioned by their bit ℓ (zeros first),
//! so equal symbols end contiguous at the bottom.

/// Bits per rank block.
const BLOCK_BITS: u64 = 512;
/// Words per rank block: the count before it, then 8 words of bits.
const BLOCK_WORDS: usize = 9;

/// Words a rank bit vector of `n` bits takes.
pub fn rank_bits_words(n: u64) -> usize {
    (n / BLOCK_BITS + 1) as usize * BLOCK_WORDS
}

/// Builds a rank bit vector's words from `bit(i)` for i in 0..n.
pub fn build_rank_bits(n: u64, bit: impl Fn(u64) -> bool) -> Vec<u64> {
    let mut words = vec![0u64; rank_bits_words(n)];
    let mut ones = 0u64;
    for b in 0..(n / BLOCK_BITS + 1) {
        let base = b as usize * BLOCK_WORDS;
        words[base] = ones;
        for w in 0..8u64 {
            let mut word = 0u64;
            for k in 0..64u64 {
                let i = b * BLOCK_BITS + w * 64 + k;
                if i < n && bit(i) {
                    word |= 1 << k;
                }
            }
            ones += word.count_ones() as u64;
            words[base + 1 + w as usize] = word;
        }
    }
    words
}

/// A rank bit vector read in place.
#[derive(Clone, Copy)]
pub struct RankBits<'a> {
    pub words: &'a [u64],
}

impl RankBits<'_> {
    /// Ones in bits 0..i.
    #[inline]
    pub fn rank1(&self, i: u64) -> u64 {
        let base = (i / BLOCK_BITS) as usize * BLOCK_WORDS;
        let block = &self.words[base..base + BLOCK_WORDS];
        let within = i % BLOCK_BITS;
        let full = (within / 64) as usize;
        let mut r = block[0];
        for &w in &block[1..1 + full] {
            r += w.count_ones() as u64;
        }
        let bit = within % 64;
        if bit > 0 {
            r += (block[1 + full] & ((1u64 << bit) - 1)).count_ones() as u64;
        }
        r
    }

    #[inline]
    pub fn get(&self, i: u64) -> bool {
        let base = (i / BLOCK_BITS) as usize * BLOCK_WORDS;
        let within = i % BLOCK_BITS;
        (self.words[base + 1 + (within / 64) as usize] >> (within % 64)) & 1 == 1
    }
}

/// The wavelet matrix of `symbols` with `levels` bits per symbol: (the words of each level
/// concatenated, the zeros of each level, the bottom order). The bottom order is the
/// symbols as the last level leaves them (equal ones contiguous); the FM-index reads where
/// each symbol starts in it.
pub fn build(symbols: &[u16], levels: u32) -> (Vec<u64>, Vec<u64>, Vec<u16>) {
    let n = symbols.len() as u64;
    let mut cur = symbols.to_vec();
    let mut words = Vec::with_capacity(levels as usize * rank_bits_words(n));
    let mut zeros = Vec::with_capacity(levels as usize);
    for l in 0..levels {
        let shift = levels - 1 - l;
        words.extend(build_rank_bits(n, |i| (cur[i as usize] >> shift) & 1 == 1));
        let (mut zs, mut os): (Vec<u16>, Vec<u16>) = (Vec::with_capacity(cur.len()), Vec::new());
        for &s in &cur {
            if (s >> shift) & 1 == 0 {
                zs.push(s);
            } else {
                os.push(s);
            }
        }
        zeros.push(zs.len() as u64);
        zs.extend(os);
        cur = zs;
    }
    (words, zeros, cur)
}

/// A wavelet matrix read in place.
#[derive(Clone, Copy)]
pub struct WaveletMatrix<'a> {
    /// All levels' words, `level_words` each.
    pub words: &'a [u64],
    pub level_words: usize,
    pub zeros: &'a [u64],
    pub levels: u32,
}

/// One symbol of a range and where the range's two ends land at the bottom level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RangeSymbol {
    pub symbol: u16,
    pub bottom_lo: u64,
    pub bottom_hi: u64,
}

impl<'a> WaveletMatrix<'a> {
    #[inline]
    fn level(&self, l: u32) -> RankBits<'a> {
        let a = l as usize * self.level_words;
        RankBits { words: &self.words[a..a + self.level_words] }
    }

    /// Where positions `lo` and `hi` land at the bottom following `symbol`'s bits: the
    /// occurrences of `symbol` in `lo..hi` are `bottom_lo..bottom_hi` there.
    #[inline]
    pub fn descend(&self, symbol: u16, mut lo: u64, mut hi: u64) -> (u64, u64) {
        for l in 0..self.levels {
            let bits = self.level(l);
            let (r_lo, r_hi) = (bits.rank1(lo), bits.rank1(hi));
            if (symbol >> (self.levels - 1 - l)) & 1 == 0 {
                lo -= r_lo;
                hi -= r_hi;
            } else {
                lo = self.zeros[l as usize] + r_lo;
                hi = self.zeros[l as usize] + r_hi;
            }
        }
        (lo, hi)
    }

    /// The symbol at `i` and where `i` lands at the bottom (its rank among equal symbols,
    /// offset by where they start): the LF-mapping's two halves in one descent.
    #[inline]
    pub fn access(&self, mut i: u64) -> (u16, u64) {
        let mut symbol = 0u16;
        for l in 0..self.levels {
            let bits = self.level(l);
            let one = bits.get(i);
            let r = bits.rank1(i);
            symbol = (symbol << 1) | one as u16;
            i = if one { self.zeros[l as usize] + r } else { i - r };
        }
        (symbol, i)
    }

    /// Every distinct symbol of positions `lo..hi`, ascending, with where the range's ends
    /// land at the bottom for it, appended to `out`. One descent over the levels, visiting
    /// only the branches the range reaches.
    pub fn distinct(&self, lo: u64, hi: u64, out: &mut Vec<RangeSymbol>) {
        if lo < hi {
            self.distinct_from(0, 0, lo, hi, out);
        }
    }

    fn distinct_from(&self, l: u32, prefix: u16, lo: u64, hi: u64, out: &mut Vec<RangeSymbol>) {
        if l == self.levels {
            out.push(RangeSymbol { symbol: prefix, bottom_lo: lo, bottom_hi: hi });
            return;
        }
        let bits = self.level(l);
        let (r_lo, r_hi) = (bits.rank1(lo), bits.rank1(hi));
        let (z_lo, z_hi) = (lo - r_lo, hi - r_hi);
        if z_lo < z_hi {
            self.distinct_from(l + 1, prefix << 1, z_lo, z_hi, out);
        }
        if r_lo < r_hi {
            let z = self.zeros[l as usize];
            self.distinct_from(l + 1, (prefix << 1) | 1, z + r_lo, z + r_hi, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn matrix(words: &[u64], zeros: &[u64], levels: u32, n: u64) -> WaveletMatrix<'static> {
        let words: &'static [u64] = Box::leak(words.to_vec().into_boxed_slice());
        let zeros: &'static [u64] = Box::leak(zeros.to_vec().into_boxed_slice());
        WaveletMatrix { words, level_words: rank_bits_words(n), zeros, levels }
    }

    proptest! {
        #[test]
        fn rank_bits_count_ones(bits in prop::collection::vec(any::<bool>(), 0..2000)) {
            let words = build_rank_bits(bits.len() as u64, |i| bits[i as usize]);
            let r = RankBits { words: &words };
            let mut ones = 0;
            for (i, &b) in bits.iter().enumerate() {
                prop_assert_eq!(r.rank1(i as u64), ones);
                prop_assert_eq!(r.get(i as u64), b);
                ones += b as u64;
            }
            prop_assert_eq!(r.rank1(bits.len() as u64), ones);
        }

        #[test]
        fn distinct_and_access_match_a_scan(seq in prop::collection::vec(0u16..40, 1..700), a in 0usize..700, b in 0usize..700) {
            let levels = 6;
            let n = seq.len() as u64;
            let (words, zeros, bottom) = build(&seq, levels);
            let wm = matrix(&words, &zeros, levels, n);
            let (lo, hi) = ((a % seq.len()) as u64, (b % (seq.len() + 1)) as u64);
            let (lo, hi) = (lo.min(hi), lo.max(hi));
            let mut out = Vec::new();
            wm.distinct(lo, hi, &mut out);
            let mut expect: Vec<u16> = seq[lo as usize..hi as usize].to_vec();
            expect.sort_unstable();
            expect.dedup();
            prop_assert_eq!(out.iter().map(|s| s.symbol).collect::<Vec<_>>(), expect);
            for s in &out {
                let count = seq[lo as usize..hi as usize].iter().filter(|&&x| x == s.symbol).count() as u64;
                prop_assert_eq!(s.bottom_hi - s.bottom_lo, count);
                prop_assert_eq!(wm.descend(s.symbol, lo, hi), (s.bottom_lo, s.bottom_hi));
                prop_assert!(bottom[s.bottom_lo as usize..s.bottom_hi as usize].iter().all(|&x| x == s.symbol));
            }
            for (i, &s) in seq.iter().enumerate() {
                let (sym, pos) = wm.access(i as u64);
                prop_assert_eq!(sym, s);
                prop_assert_eq!(bottom[pos as usize], s);
                let before = seq[..i].iter().filter(|&&x| x == s).count() as u64;
                let start = bottom.iter().position(|&x| x == s).unwrap() as u64;
                prop_assert_eq!(pos - start, before);
            }
        }
    }
}
