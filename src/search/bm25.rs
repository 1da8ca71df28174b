//! BM25 over tantivy: the baseline, the candidate generator of the rerank setting and the
//! source of hard negatives. Document = title + text in one field (Anserini's "flat"
//! BEIR index); English analysis = lower-casing, English stop words, Snowball stemming.
//! tantivy fixes k1 = 1.2, b = 0.75 (Elasticsearch's defaults, as in the BEIR paper;
//! Anserini uses 0.9/0.4).
use std::collections::BTreeMap;

use tantivy::collector::TopDocs;
use tantivy::query::{BooleanQuery, BoostQuery, Occur, Query, TermQuery};
use tantivy::schema::{Field, IndexRecordOption, Schema, TextFieldIndexing, TextOptions, FAST};
use tantivy::tokenizer::{
    Language, LowerCaser, RemoveLongFilter, SimpleTokenizer, Stemmer, StopWordFilter, TextAnalyzer, TokenStream,
};
use tantivy::{DocId, Index, IndexReader, Score, Searcher, SegmentReader, TantivyDocument, Term};

use crate::data::Doc;
use crate::error::{Error, Result};
use crate::search::topk::Hit;

const ANALYZER: &str = "grdr_en";

fn index_err(context: &str) -> impl FnOnce(tantivy::TantivyError) -> Error + '_ {
    move |source| Error::Index { context: context.to_string(), source }
}

fn english_analyzer() -> TextAnalyzer {
    TextAnalyzer::builder(SimpleTokenizer::default())
        .filter(RemoveLongFilter::limit(40))
        .filter(LowerCaser)
        .filter(StopWordFilter::new(Language::English).expect("tantivy ships English stop words"))
        .filter(Stemmer::new(Language::English))
        .build()
}

/// Orders like [`Hit`]: the score's bits in the high half (BM25 scores are >= 0, where f32
/// bit patterns order like the values), `u32::MAX - doc_idx` in the low half.
fn rank_key(score: Score, doc_idx: u64) -> u64 {
    debug_assert!(score >= 0.0 && doc_idx <= u32::MAX as u64);
    ((score.max(0.0).to_bits() as u64) << 32) | (u32::MAX as u64 - doc_idx)
}

fn hit_of_key(key: u64) -> Hit {
    Hit { score: f32::from_bits((key >> 32) as u32), doc_idx: (u32::MAX as u64 - (key & u32::MAX as u64)) as i64 }
}

/// An in-memory BM25 index over a corpus, searchable from many threads.
pub struct Bm25Index {
    reader: IndexReader,
    body: Field,
    analyzer: TextAnalyzer,
}

impl Bm25Index {
    /// Indexes `docs` (their `doc_idx` is stored as a fast field, so hits map back exactly).
    pub fn build(docs: &[Doc]) -> Result<Self> {
        let mut schema = Schema::builder();
        let indexing =
            TextFieldIndexing::default().set_tokenizer(ANALYZER).set_index_option(IndexRecordOption::WithFreqs);
        let body = schema.add_text_field("body", TextOptions::default().set_indexing_options(indexing));
        let doc_idx = schema.add_u64_field("doc_idx", FAST);
        let index = Index::create_in_ram(schema.build());
        index.tokenizers().register(ANALYZER, english_analyzer());

        if docs.len() > u32::MAX as usize {
            return Err(Error::usage("--data", "BM25 indexes at most 2^32 documents"));
        }
        let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).min(8);
        let mut writer = index
            .writer_with_num_threads::<TantivyDocument>(threads, 64_000_000 * threads)
            .map_err(index_err("cannot start the index writer"))?;
        let bar = crate::progress::bar(docs.len() as u64, "bm25 index");
        for (i, d) in docs.iter().enumerate() {
            let mut doc = TantivyDocument::default();
            doc.add_text(body, d.full_text());
            doc.add_u64(doc_idx, d.doc_idx as u64);
            writer.add_document(doc).map_err(index_err("cannot add a document"))?;
            if i % 4096 == 0 {
                bar.set_position(i as u64);
            }
        }
        writer.commit().map_err(index_err("cannot commit the index"))?;
        bar.finish_and_clear();
        let reader = index.reader().map_err(index_err("cannot open the index"))?;
        Ok(Bm25Index { reader, body, analyzer: english_analyzer() })
    }

    /// Bag-of-words query: each analysed term once, boosted by its count in the query
    /// (Anserini's BagOfWordsQueryGenerator), so queries need no escaping.
    fn query(&self, text: &str) -> Option<BooleanQuery> {
        let mut counts: BTreeMap<String, f32> = BTreeMap::new();
        let mut analyzer = self.analyzer.clone();
        let mut stream = analyzer.token_stream(text);
        while stream.advance() {
            *counts.entry(stream.token().text.clone()).or_default() += 1.0;
        }
        if counts.is_empty() {
            return None;
        }
        let clauses: Vec<(Occur, Box<dyn Query>)> = counts
            .into_iter()
            .map(|(t, n)| {
                let q: Box<dyn Query> =
                    Box::new(TermQuery::new(Term::from_field_text(self.body, &t), IndexRecordOption::WithFreqs));
                let q: Box<dyn Query> = if n == 1.0 { q } else { Box::new(BoostQuery::new(q, n)) };
                (Occur::Should, q)
            })
            .collect();
        Some(BooleanQuery::new(clauses))
    }

    fn search_with(&self, searcher: &Searcher, text: &str, k: usize) -> Result<Vec<Hit>> {
        let Some(query) = self.query(text) else { return Ok(Vec::new()) };
        if k == 0 {
            return Ok(Vec::new());
        }
        // The collector ranks by one u64 key = (score, reversed doc_idx), so ties at the k-th
        // place are cut in grdr's order (doc index ascending) whatever the segment layout
        // that a multi-threaded index writer happened to produce.
        let collector = TopDocs::with_limit(k).tweak_score(|segment: &SegmentReader| {
            let doc_idx =
                segment.fast_fields().u64("doc_idx").expect("doc_idx is a u64 fast field").first_or_default_col(0);
            move |doc: DocId, score: Score| rank_key(score, doc_idx.get_val(doc))
        });
        let found = searcher.search(&query, &collector).map_err(index_err("search failed"))?;
        Ok(found.into_iter().map(|(key, _)| hit_of_key(key)).collect())
    }

    /// Top-k docs for one query text, in grdr's order (score desc, doc index asc).
    pub fn search(&self, text: &str, k: usize) -> Result<Vec<Hit>> {
        self.search_with(&self.reader.searcher(), text, k)
    }

    /// Top-k docs for every query, queries spread over the available cores.
    pub fn search_all(&self, texts: &[&str], k: usize) -> Result<Vec<Vec<Hit>>> {
        let searcher = self.reader.searcher();
        let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        let chunk = texts.len().div_ceil(threads).max(1);
        let bar = crate::progress::bar(texts.len() as u64, "bm25 search");
        let results: Vec<Result<Vec<Vec<Hit>>>> = std::thread::scope(|s| {
            let handles: Vec<_> = texts
                .chunks(chunk)
                .map(|part| {
                    let (searcher, bar) = (&searcher, &bar);
                    s.spawn(move || {
                        part.iter()
                            .map(|t| {
                                bar.inc(1);
                                self.search_with(searcher, t, k)
                            })
                            .collect::<Result<Vec<_>>>()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().expect("search thread panicked")).collect()
        });
        bar.finish_and_clear();
        let mut out = Vec::with_capacity(texts.len());
        for r in results {
            out.extend(r?);
        }
        Ok(out)
    }

    pub fn num_docs(&self) -> u64 {
        self.reader.searcher().num_docs()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(i: i64, text: &str) -> Doc {
        Doc { doc_idx: i, doc_id: format!("d{i}"), title: String::new(), text: text.to_string() }
    }

    #[test]
    fn stems_and_ranks_matching_docs_first() {
        let docs = vec![doc(0, "cats and dogs"), doc(1, "running quickly in the park"), doc(2, "the runner runs")];
        let index = Bm25Index::build(&docs).unwrap();
        let hits = index.search("Runs?", 10).unwrap();
        let ids: Vec<i64> = hits.iter().map(|h| h.doc_idx).collect();
        assert_eq!(ids[0], 2, "stemmed `runs` matches doc 2 best: {hits:?}");
        assert!(ids.contains(&1), "`running` stems to `run` too");
        assert!(!ids.contains(&0));
    }

    #[test]
    fn stop_words_only_query_returns_nothing() {
        let index = Bm25Index::build(&[doc(0, "the and of")]).unwrap();
        assert!(index.search("the of and", 10).unwrap().is_empty());
    }

    #[test]
    fn rank_key_orders_like_hits() {
        let hits = [Hit { score: 2.5, doc_idx: 7 }, Hit { score: 2.5, doc_idx: 3 }, Hit { score: 0.0, doc_idx: 0 }];
        for a in hits {
            assert_eq!(hit_of_key(rank_key(a.score, a.doc_idx as u64)), a);
            for b in hits {
                assert_eq!(rank_key(a.score, a.doc_idx as u64).cmp(&rank_key(b.score, b.doc_idx as u64)), a.cmp(&b));
            }
        }
    }

    #[test]
    fn equal_scores_rank_by_doc_index() {
        // Enough docs for the multi-threaded writer to spread them over several segments.
        let docs: Vec<Doc> = (0..5000).map(|i| doc(i, "same words here")).collect();
        let index = Bm25Index::build(&docs).unwrap();
        let hits = index.search("words", 3).unwrap();
        assert_eq!(hits.iter().map(|h| h.doc_idx).collect::<Vec<_>>(), vec![0, 1, 2]);
    }
}
