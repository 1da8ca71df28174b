//! Inverse document frequencies over the corpus with the model's own tokenizer (Wu et al.
//! §7.2 bucket query and document tokens by IDF): every document's "title text", all of it
//! (no truncation), special tokens left out. `idf(t) = ln(N / df(t))`, with df ≥ 1 assumed
//! for tokens the corpus never holds (they get the largest IDF, ln N).
use std::collections::HashSet;

use tokenizers::Tokenizer;

use super::table::{Col, Table};
use crate::data::batch::DocStore;
use crate::error::{Error, Result};
use crate::eval::run_eval::Context;

pub struct Idf {
    /// Document frequency per token id.
    pub df: Vec<u32>,
    pub n_docs: usize,
    /// The tokenizer's special tokens (never terms: [CLS], </s>, padding, [MASK], …).
    pub special: HashSet<i64>,
}

impl Idf {
    pub fn idf(&self, token: i64) -> f64 {
        let df = self.df.get(token as usize).copied().unwrap_or(0).max(1);
        (self.n_docs as f64 / df as f64).ln()
    }

    /// A token that can be exactly matched: not special.
    pub fn is_term(&self, token: i64) -> bool {
        !self.special.contains(&token)
    }

    /// The special tokens, and (when `count`) the document frequencies over every document
    /// of `ctx`'s dataset (rank 0 buckets; the other ranks only need the special tokens).
    pub fn load(ctx: &Context, count: bool) -> Result<Idf> {
        let path = &ctx.task.tokenizer_json;
        let err = |m: String| Error::Tokenizer { name: path.display().to_string(), message: m };
        let mut tok = Tokenizer::from_file(path).map_err(|e| err(e.to_string()))?;
        tok.with_padding(None);
        tok.with_truncation(None).map_err(|e| err(e.to_string()))?;
        let special: HashSet<i64> =
            tok.get_added_tokens_decoder().iter().filter(|(_, t)| t.special).map(|(&id, _)| id as i64).collect();
        let n_docs = if count { ctx.n_docs() } else { 0 };
        let mut df = vec![0u32; tok.get_vocab_size(true)];
        let mut store = DocStore::new(&ctx.ds.docs_path(), ctx.groups.clone(), 2);
        let bar = crate::progress::bar(n_docs as u64, "idf");
        for start in (0..n_docs).step_by(1024) {
            let texts: Vec<String> =
                (start..(start + 1024).min(n_docs)).map(|d| store.text(d as u32)).collect::<Result<_>>()?;
            let encs = tok.encode_batch(texts, false).map_err(|e| err(e.to_string()))?;
            for e in encs {
                let distinct: HashSet<u32> = e.get_ids().iter().copied().collect();
                for t in distinct {
                    if let Some(c) = df.get_mut(t as usize) {
                        *c += 1;
                    }
                }
            }
            bar.inc((texts_len(start, n_docs)) as u64);
        }
        bar.finish_and_clear();
        Ok(Idf { df, n_docs, special })
    }

    /// `idf.parquet`: every token with df > 0.
    pub fn table(&self) -> Table {
        let ids: Vec<usize> = (0..self.df.len()).filter(|&t| self.df[t] > 0).collect();
        Table::new(vec![
            ("token", Col::I32(ids.iter().map(|&t| t as i32).collect())),
            ("df", Col::I32(ids.iter().map(|&t| self.df[t] as i32).collect())),
            ("idf", Col::F64(ids.iter().map(|&t| self.idf(t as i64)).collect())),
        ])
    }
}

fn texts_len(start: usize, n: usize) -> usize {
    (start + 1024).min(n) - start
}
