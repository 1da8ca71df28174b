//! An FM-index over the token ids of a corpus shard: SEAL's index (Bevilacqua et al. 2022),
//! answering for any token sequence — in generation order — how often it occurs, which tokens
//! follow it in the corpus and how often, and where it occurs (document, position).
//!
//! Text: each document's tokens followed by `eos`, each such block stored *reversed* (as
//! SEAL does), so that extending a prefix by one token on the right is one backward-search
//! step: the rows of the suffix array that start with the reversed prefix form a range, and
//! the BWT symbols of that range are exactly the tokens that follow the prefix in the corpus
//! (`eos` where it ends a document). Symbols are token + 1; the text ends with one 0, the
//! terminator (unique and smallest, so the BWT is a permutation of the text and every
//! occurrence, the last block's too, has its row).
//!
//! Parts: the suffix array (libsais) is used once to make the BWT and is then kept only at
//! text positions ≡ 0 mod `sample_rate` (locate walks LF at most that many steps); the BWT
//! is a [`WaveletMatrix`]; `offset[c] = C[c] − start of c at the bottom level` turns a
//! bottom position into the next range. The forward tokens are kept too (SEAL's full
//! scoring reads documents).
//!
//! File (one per shard, memory-mapped): a 4096-byte header — magic `GRDRFMIX`, then the JSON
//! [`FmMeta`] (sections, sizes, SHA-256 of the data), space-padded — then the data as
//! little-endian u64 words. Opening checks magic, format, sizes, sections and checksum.
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::wavelet::{self, RangeSymbol, RankBits, WaveletMatrix};
use crate::error::{Error, Location, Result};

pub const MAGIC: &[u8; 8] = b"GRDRFMIX";
pub const FORMAT: &str = "grdr-fm-index/1";
const HEADER_BYTES: usize = 4096;

/// A range of suffix-array rows: the occurrences of one token sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rows {
    pub lo: u64,
    pub hi: u64,
}

impl Rows {
    pub fn count(&self) -> u64 {
        self.hi - self.lo
    }
    pub fn is_empty(&self) -> bool {
        self.hi <= self.lo
    }
}

/// A token that follows a sequence, how often, and the rows of the extended sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Continuation {
    pub token: u32,
    pub rows: Rows,
}

/// An occurrence: the document (index within the shard) and the position of its first token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Occurrence {
    pub doc: u32,
    pub pos: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FmMeta {
    pub format: String,
    /// The tokenizer the token ids come from (artefact name or path, as given).
    pub tokenizer: String,
    pub eos: u32,
    /// This shard's documents are doc_idx `first_doc .. first_doc + n_docs` of the dataset.
    pub shard: usize,
    pub first_doc: u64,
    pub n_docs: u64,
    /// Text length: Σ (document tokens + 1), the terminator not counted.
    pub n_tokens: u64,
    /// Symbols are 0..sigma (token + 1; 0 = the terminator).
    pub sigma: u32,
    pub levels: u32,
    pub sample_rate: u64,
    /// Word offset and length of each section in the data.
    pub sections: Sections,
    pub sha256: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Sections {
    /// Document starts in the text, n_docs + 1 (u64).
    pub starts: (usize, usize),
    /// Forward tokens, document after document, each followed by eos (u16, packed).
    pub text: (usize, usize),
    pub wavelet: (usize, usize),
    /// Zeros per wavelet level (u64).
    pub zeros: (usize, usize),
    /// C[c] − bottom start of c, per symbol (i64).
    pub offset: (usize, usize),
    /// Rank bits marking the rows whose text position is sampled.
    pub marks: (usize, usize),
    /// Text position of each marked row, in row order (u32, packed).
    pub samples: (usize, usize),
}

enum Storage {
    Owned(Vec<u64>),
    Mapped(memmap2::Mmap),
}

pub struct FmIndex {
    pub meta: FmMeta,
    storage: Storage,
    /// Every token occurring in the shard but eos, ascending, with its count (the root's
    /// continuations, asked at the first step of every search).
    root: Vec<Continuation>,
}

/// Reinterprets u64 words as narrower integers (always aligned: u64 alignment covers them).
fn narrow<T: Copy>(words: &[u64]) -> &[T] {
    // SAFETY: u16/u32/i64 have no invalid bit patterns and need at most u64 alignment; the
    // prefix is empty because `words` is u64-aligned.
    let (pre, mid, _) = unsafe { words.align_to::<T>() };
    debug_assert!(pre.is_empty());
    mid
}

impl FmIndex {
    /// Builds the index of `docs` (token ids, eos excluded) as shard `shard` starting at
    /// dataset doc `first_doc`.
    pub fn build(docs: &[Vec<u32>], eos: u32, tokenizer: &str, shard: usize, first_doc: u64) -> Result<Self> {
        // Locate walks at most 15 LF steps; the samples cost 4 bytes per 16 tokens.
        let sample_rate = 16u64;
        // Reversed text (symbols = token + 1) and forward text, with document starts.
        let n: usize = docs.iter().map(|d| d.len() + 1).sum();
        let mut rev: Vec<u16> = Vec::with_capacity(n);
        let mut fwd: Vec<u16> = Vec::with_capacity(n);
        let mut starts: Vec<u64> = Vec::with_capacity(docs.len() + 1);
        let symbol = |t: u32| -> Result<u16> {
            u16::try_from(t + 1).ok().filter(|&s| s < u16::MAX).ok_or_else(|| {
                Error::usage("--tokenizer", format!("token id {t} too large: the FM-index holds ids below 65534"))
            })
        };
        for d in docs {
            starts.push(rev.len() as u64);
            if d.contains(&eos) {
                return Err(Error::usage("--data", format!("a document of shard {shard} holds eos={eos} itself")));
            }
            rev.push(symbol(eos)?);
            for &t in d.iter().rev() {
                rev.push(symbol(t)?);
            }
            fwd.extend(d.iter().map(|&t| t as u16));
            fwd.push(eos as u16);
        }
        starts.push(rev.len() as u64);
        rev.push(0); // the terminator
        if n as u64 >= u32::MAX as u64 {
            return Err(Error::usage("--shard-tokens", "a shard must hold fewer than 2^32 tokens"));
        }

        // Suffix array → BWT and position samples.
        let sa: Vec<i32> = {
            libsais::SuffixArrayConstruction::for_text(&rev)
                .in_owned_buffer32()
                .single_threaded()
                .run()
                .map_err(|e| Error::usage("grdr index fm", format!("suffix array construction failed: {e:?}")))?
                .into_vec()
        };
        let bwt: Vec<u16> = sa.iter().map(|&p| rev[(p as usize + rev.len() - 1) % rev.len()]).collect();
        let sigma = bwt.iter().copied().max().unwrap_or(0) as u32 + 1;
        let levels = (32 - (sigma - 1).leading_zeros()).max(1);
        let (wm_words, zeros, bottom) = wavelet::build(&bwt, levels);
        // C[c]: the text's symbols below c (the BWT holds the same multiset).
        let mut count = vec![0u64; sigma as usize];
        for &c in &bwt {
            count[c as usize] += 1;
        }
        let mut offset = vec![0i64; sigma as usize];
        let mut before = 0u64;
        let mut start = vec![u64::MAX; sigma as usize];
        for (i, &c) in bottom.iter().enumerate() {
            if start[c as usize] == u64::MAX {
                start[c as usize] = i as u64;
            }
        }
        for c in 0..sigma as usize {
            if start[c] != u64::MAX {
                offset[c] = before as i64 - start[c] as i64;
            }
            before += count[c];
        }
        let marks =
            wavelet::build_rank_bits(rev.len() as u64, |row| (sa[row as usize] as u64).is_multiple_of(sample_rate));
        let samples: Vec<u32> =
            sa.iter().filter(|&&p| (p as u64).is_multiple_of(sample_rate)).map(|&p| p as u32).collect();
        drop(sa);

        // Data words, section by section.
        let mut data: Vec<u64> = Vec::new();
        let mut put = |words: Vec<u64>| -> (usize, usize) {
            let at = data.len();
            let len = words.len();
            data.extend(words);
            (at, len)
        };
        let pack16 = |v: &[u16]| -> Vec<u64> {
            v.chunks(4).map(|c| c.iter().enumerate().fold(0u64, |w, (i, &x)| w | (x as u64) << (16 * i))).collect()
        };
        let pack32 = |v: &[u32]| -> Vec<u64> {
            v.chunks(2).map(|c| c.iter().enumerate().fold(0u64, |w, (i, &x)| w | (x as u64) << (32 * i))).collect()
        };
        let sections = Sections {
            starts: put(starts),
            text: put(pack16(&fwd)),
            wavelet: put(wm_words),
            zeros: put(zeros),
            offset: put(offset.iter().map(|&o| o as u64).collect()),
            marks: put(marks),
            samples: put(pack32(&samples)),
        };
        let meta = FmMeta {
            format: FORMAT.into(),
            tokenizer: tokenizer.into(),
            eos,
            shard,
            first_doc,
            n_docs: docs.len() as u64,
            n_tokens: n as u64,
            sigma,
            levels,
            sample_rate,
            sections,
            sha256: checksum(&data),
        };
        Ok(Self::from_parts(meta, Storage::Owned(data)))
    }

    fn from_parts(meta: FmMeta, storage: Storage) -> Self {
        let mut index = FmIndex { meta, storage, root: Vec::new() };
        let eos = index.meta.eos;
        index.root = index.continuations(index.all()).into_iter().filter(|c| c.token != eos).collect();
        index
    }

    /// Writes the index to `path` (through a temporary file renamed into place).
    pub fn write(&self, path: &Path) -> Result<()> {
        let json = serde_json::to_vec(&self.meta).expect("meta serialises");
        if json.len() + 8 > HEADER_BYTES {
            return Err(Error::usage("grdr index fm", "index metadata does not fit its header"));
        }
        let tmp = path.with_extension("fm.tmp");
        let write = || -> std::io::Result<()> {
            let mut f = std::io::BufWriter::new(File::create(&tmp)?);
            let mut header = vec![b' '; HEADER_BYTES];
            header[..8].copy_from_slice(MAGIC);
            header[8..8 + json.len()].copy_from_slice(&json);
            f.write_all(&header)?;
            for w in self.words() {
                f.write_all(&w.to_le_bytes())?;
            }
            f.into_inner().map_err(|e| e.into_error())?.sync_all()
        };
        write().map_err(|e| Error::io(&tmp, "cannot write", e))?;
        std::fs::rename(&tmp, path).map_err(|e| Error::io(path, "cannot rename into place", e))
    }

    /// Maps the index file at `path`, checking its magic, format and checksum.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io(path, "cannot open", e))?;
        // SAFETY: the file is opened read-only and index files are written once (renamed
        // into place), never modified while mapped.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, "cannot map", e))?;
        // Refused as input data (exit 3), naming the part of the file that is wrong.
        let bad = |field: &str, why: String| {
            Error::input(path, Location::File, field, format!("not a usable FM-index: {why}"))
        };
        if map.len() < HEADER_BYTES || &map[..8] != MAGIC {
            return Err(bad("magic", "no GRDRFMIX header (make it with `grdr index fm`)".into()));
        }
        let json = std::str::from_utf8(&map[8..HEADER_BYTES]).map_err(|e| bad("header", e.to_string()))?.trim_end();
        let meta: FmMeta = serde_json::from_str(json).map_err(|e| bad("header", e.to_string()))?;
        if meta.format != FORMAT {
            return Err(bad("format", format!("{} (this grdr reads {FORMAT})", meta.format)));
        }
        let s = &meta.sections;
        let words = s.samples.0 + s.samples.1;
        if (map.len() - HEADER_BYTES) != words * 8 || cfg!(target_endian = "big") {
            return Err(bad("size", format!("{} data bytes, the header says {}", map.len() - HEADER_BYTES, words * 8)));
        }
        let parts = [s.starts, s.text, s.wavelet, s.zeros, s.offset, s.marks, s.samples];
        if parts.iter().any(|&(at, len)| at.checked_add(len).is_none_or(|end| end > words))
            || meta.levels == 0
            || meta.levels > 16
            || meta.sample_rate == 0
        {
            return Err(bad("sections", "sections or sizes out of range".into()));
        }
        let index = Self::from_parts(meta, Storage::Mapped(map));
        if checksum(index.words()) != index.meta.sha256 {
            return Err(bad("sha256", "checksum mismatch: the file is damaged".into()));
        }
        Ok(index)
    }

    fn words(&self) -> &[u64] {
        match &self.storage {
            Storage::Owned(v) => v,
            Storage::Mapped(m) => {
                let data = &m[HEADER_BYTES..];
                // SAFETY: the map is page-aligned and the header a multiple of 8 bytes long.
                let (pre, mid, _) = unsafe { data.align_to::<u64>() };
                assert!(pre.is_empty(), "mapped index data is 8-byte aligned");
                mid
            }
        }
    }

    fn section(&self, (at, len): (usize, usize)) -> &[u64] {
        &self.words()[at..at + len]
    }

    fn wavelet(&self) -> WaveletMatrix<'_> {
        WaveletMatrix {
            words: self.section(self.meta.sections.wavelet),
            level_words: wavelet::rank_bits_words(self.n_rows()),
            zeros: self.section(self.meta.sections.zeros),
            levels: self.meta.levels,
        }
    }

    fn offset(&self, symbol: u16) -> i64 {
        narrow::<i64>(self.section(self.meta.sections.offset))[symbol as usize]
    }

    /// Suffix-array rows: every text position and the terminator's.
    fn n_rows(&self) -> u64 {
        self.meta.n_tokens + 1
    }

    /// The rows of the empty sequence: every suffix.
    pub fn all(&self) -> Rows {
        Rows { lo: 0, hi: self.n_rows() }
    }

    /// The rows of `rows`' sequence followed by `token` (empty if it never occurs).
    pub fn extend(&self, rows: Rows, token: u32) -> Rows {
        let sym = token as u64 + 1;
        if rows.is_empty() || sym >= self.meta.sigma as u64 {
            return Rows { lo: 0, hi: 0 };
        }
        let (lo, hi) = self.wavelet().descend(sym as u16, rows.lo, rows.hi);
        let off = self.offset(sym as u16);
        Rows { lo: (lo as i64 + off) as u64, hi: (hi as i64 + off) as u64 }
    }

    /// The rows of a whole token sequence.
    pub fn rows(&self, seq: &[u32]) -> Rows {
        seq.iter()
            .try_fold(self.all(), |r, &t| Some(self.extend(r, t)).filter(|r| !r.is_empty()))
            .unwrap_or(Rows { lo: 0, hi: 0 })
    }

    /// Occurrences of `seq` in the shard.
    pub fn count(&self, seq: &[u32]) -> u64 {
        self.rows(seq).count()
    }

    /// The tokens that follow `rows`' sequence (eos where it ends a document), ascending,
    /// with the rows each extension has.
    pub fn continuations(&self, rows: Rows) -> Vec<Continuation> {
        let mut syms: Vec<RangeSymbol> = Vec::new();
        self.wavelet().distinct(rows.lo, rows.hi, &mut syms);
        syms.into_iter()
            .filter(|s| s.symbol != 0)
            .map(|s| {
                let off = self.offset(s.symbol);
                Continuation {
                    token: s.symbol as u32 - 1,
                    rows: Rows { lo: (s.bottom_lo as i64 + off) as u64, hi: (s.bottom_hi as i64 + off) as u64 },
                }
            })
            .collect()
    }

    /// The continuations of the empty sequence, eos excluded (precomputed).
    pub fn root_continuations(&self) -> &[Continuation] {
        &self.root
    }

    /// The text position of row `row`'s suffix: LF steps to a sampled row.
    fn text_position(&self, mut row: u64) -> u64 {
        let marks = RankBits { words: self.section(self.meta.sections.marks) };
        let samples = narrow::<u32>(self.section(self.meta.sections.samples));
        let wm = self.wavelet();
        let mut steps = 0u64;
        loop {
            if marks.get(row) {
                return samples[marks.rank1(row) as usize] as u64 + steps;
            }
            let (sym, bottom) = wm.access(row);
            row = (bottom as i64 + self.offset(sym)) as u64;
            steps += 1;
        }
    }

    /// Where the sequence of length `len` found at `row` occurs.
    pub fn locate(&self, row: u64, len: usize) -> Occurrence {
        let j = self.text_position(row);
        let starts = narrow::<u64>(self.section(self.meta.sections.starts));
        let doc = starts.partition_point(|&s| s <= j) - 1;
        // Reversed block: eos at starts[doc], the last token right after it.
        let last = starts[doc + 1] - 1 - j; // forward position of the sequence's last token
        Occurrence { doc: doc as u32, pos: (last + 1 - len as u64) as u32 }
    }

    /// Every occurrence of the sequence at `rows` (length `len`), at most `limit`, in row order.
    pub fn locate_all(&self, rows: Rows, len: usize, limit: usize) -> Vec<Occurrence> {
        (rows.lo..rows.hi).take(limit).map(|r| self.locate(r, len)).collect()
    }

    /// Where shard document `doc` starts in the shard's text (its tokens, then eos).
    pub fn doc_start(&self, doc: u32) -> u64 {
        narrow::<u64>(self.section(self.meta.sections.starts))[doc as usize]
    }

    /// The tokens of shard document `doc` (eos excluded).
    pub fn doc_tokens(&self, doc: u32) -> Vec<u32> {
        let starts = narrow::<u64>(self.section(self.meta.sections.starts));
        let text = narrow::<u16>(self.section(self.meta.sections.text));
        let (a, b) = (starts[doc as usize] as usize, starts[doc as usize + 1] as usize - 1);
        text[a..b].iter().map(|&t| t as u32).collect()
    }

    /// Bytes of the index data (what a process maps).
    pub fn bytes(&self) -> usize {
        self.words().len() * 8
    }
}

fn checksum(words: &[u64]) -> String {
    let mut h = Sha256::new();
    // SAFETY: viewing initialised u64s as bytes (little-endian hosts: the file's byte order).
    let bytes = unsafe { std::slice::from_raw_parts(words.as_ptr() as *const u8, words.len() * 8) };
    h.update(bytes);
    hex::encode(h.finalize())
}

/// The file of shard `shard` in index directory `dir`.
pub fn shard_path(dir: &Path, shard: usize) -> PathBuf {
    dir.join(format!("shard-{shard:05}.fm"))
}

/// The shards of an index directory, in order, checked against the dataset they serve.
pub fn open_dir(dir: &std::path::Path, n_docs: usize, tokenizer: &str) -> Result<Vec<FmIndex>> {
    let mut shards = Vec::new();
    while shard_path(dir, shards.len()).exists() {
        shards.push(FmIndex::open(&shard_path(dir, shards.len()))?);
    }
    let bad = |why: String| Error::usage(dir.display().to_string(), why);
    if shards.is_empty() {
        return Err(bad("no shard-00000.fm here (make the index with `grdr index fm`)".into()));
    }
    let indexed: u64 = shards.iter().map(|s| s.meta.n_docs).sum();
    if indexed != n_docs as u64 {
        return Err(bad(format!(
            "the index holds {indexed} documents, the dataset {n_docs}: built for another dataset?"
        )));
    }
    if shards[0].meta.tokenizer != tokenizer {
        tracing::warn!(
            "FM-index tokenized with `{}`, the model with `{tokenizer}`: make sure they are the same vocabulary",
            shards[0].meta.tokenizer
        );
    }
    Ok(shards)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn brute_count(docs: &[Vec<u32>], seq: &[u32]) -> Vec<Occurrence> {
        let mut out = Vec::new();
        for (d, doc) in docs.iter().enumerate() {
            for p in 0..doc.len().saturating_sub(seq.len() - 1) {
                if doc[p..p + seq.len()] == *seq {
                    out.push(Occurrence { doc: d as u32, pos: p as u32 });
                }
            }
        }
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn counts_continuations_and_locations_match_a_scan(
            docs in prop::collection::vec(prop::collection::vec(2u32..9, 0..60), 1..12),
            probes in prop::collection::vec(prop::collection::vec(2u32..9, 1..4), 1..20),
        ) {
            let eos = 1;
            let index = FmIndex::build(&docs, eos, "test", 0, 0).unwrap();
            for seq in &probes {
                let mut found = brute_count(&docs, seq);
                let rows = index.rows(seq);
                prop_assert_eq!(rows.count() as usize, found.len());
                let mut located = index.locate_all(rows, seq.len(), usize::MAX);
                located.sort();
                found.sort();
                prop_assert_eq!(&located, &found);
                // Continuations: every token after an occurrence (eos at a document's end).
                let mut next: std::collections::BTreeMap<u32, u64> = Default::default();
                for o in &found {
                    let doc = &docs[o.doc as usize];
                    let after = o.pos as usize + seq.len();
                    *next.entry(if after < doc.len() { doc[after] } else { eos }).or_default() += 1;
                }
                let conts = index.continuations(rows);
                let got: std::collections::BTreeMap<u32, u64> = conts.iter().map(|c| (c.token, c.rows.count())).collect();
                prop_assert_eq!(&got, &next);
                for c in conts.iter().filter(|c| c.token != eos) {
                    let mut longer = seq.clone();
                    longer.push(c.token);
                    prop_assert_eq!(c.rows, index.rows(&longer));
                }
            }
            for (d, doc) in docs.iter().enumerate() {
                prop_assert_eq!(&index.doc_tokens(d as u32), doc);
            }
            let total: u64 = index.root_continuations().iter().map(|c| c.rows.count()).sum();
            prop_assert_eq!(total as usize, docs.iter().map(Vec::len).sum::<usize>());
        }
    }

    #[test]
    fn survives_a_round_trip_through_its_file_and_refuses_damage() {
        let docs = vec![vec![5, 6, 7, 5, 6], vec![6, 7], vec![]];
        let index = FmIndex::build(&docs, 1, "test", 3, 10).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = shard_path(dir.path(), 3);
        index.write(&path).unwrap();
        let back = FmIndex::open(&path).unwrap();
        assert_eq!(back.meta, index.meta);
        assert_eq!(back.count(&[5, 6]), 2);
        assert_eq!(back.count(&[6, 7]), 2);
        assert_eq!(back.locate_all(back.rows(&[7, 5]), 2, 10), vec![Occurrence { doc: 0, pos: 2 }]);
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let err = FmIndex::open(&path).err().expect("damaged file refused").to_string();
        assert!(err.contains("checksum"), "{err}");
    }
}
