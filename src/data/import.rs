//! `grdr prepare`: validate BEIR or TSV collections and import them into a dataset
//! directory (see `corpus.rs`). Validation stops at the first problem with an error that
//! names the file, line and field; the output directory appears only when all is well.
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::atomic::{write_json, TempDir};
use crate::data::corpus::{self, Doc, Qrel, Query};
use crate::data::lines::Lines;
use crate::data::manifest::{self, Manifest, SplitCounts, TokenizerInfo};
use crate::data::tokenize;
use crate::data::trec::{read_qrels_rows, QrelRows};
use crate::error::{Error, Location, Result};

#[derive(Debug, Clone)]
pub struct PrepareOptions {
    /// Also store token ids of every doc and query (artefact name or tokenizer path).
    pub tokenizer: Option<String>,
    /// Rows per Parquet row group: the unit of sharding across ranks.
    pub row_group_rows: usize,
    pub overwrite: bool,
}

impl Default for PrepareOptions {
    fn default() -> Self {
        PrepareOptions { tokenizer: None, row_group_rows: 1024, overwrite: false }
    }
}

/// What a source yields before it is written: docs and queries in file order, judgements.
pub struct Collection {
    pub docs: Vec<Doc>,
    pub queries: Vec<Query>,
    pub qrels: Vec<Qrel>,
}

/// Ids end up in whitespace-separated TREC files: non-empty, without whitespace.
fn check_id(path: &Path, line: usize, field: &str, id: &str) -> Result<()> {
    crate::data::trec::check_id(path, line, field, id).map(|_| ())
}

/// `_id` as BEIR writes it: a string, or an integer taken as its decimal text.
fn json_id(path: &Path, line: usize, record: &serde_json::Map<String, Value>) -> Result<String> {
    let id = match record.get("_id") {
        None => return Err(Error::input(path, Location::Line(line), "_id", "missing")),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => n.to_string(),
        Some(other) => {
            return Err(Error::input(path, Location::Line(line), "_id", format!("must be a string, found {other}")))
        }
    };
    check_id(path, line, "_id", &id)?;
    Ok(id)
}

/// An optional string field (`title`): absent or null is "", anything but a string is refused.
fn json_str(
    path: &Path,
    line: usize,
    record: &serde_json::Map<String, Value>,
    field: &str,
    required: bool,
) -> Result<String> {
    match record.get(field) {
        None if required => Err(Error::input(path, Location::Line(line), field, "missing")),
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(Error::input(
            path,
            Location::Line(line),
            field,
            format!("must be a string, found {}", type_name(other)),
        )),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Parses one JSONL record, skipping blank lines. BEIR's `metadata` is never looked at: for
/// queries it holds the gold evidence, which a retriever must not see.
fn json_record(path: &Path, line: usize, text: &str) -> Result<Option<serde_json::Map<String, Value>>> {
    if text.trim().is_empty() {
        return Ok(None);
    }
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(map)) => Ok(Some(map)),
        Ok(other) => Err(Error::input(
            path,
            Location::Line(line),
            "(record)",
            format!("expected a JSON object, found {}", type_name(&other)),
        )),
        Err(e) => Err(Error::input(
            path,
            Location::Line(line),
            "(record)",
            format!("malformed JSON at column {}: {e}", e.column()),
        )),
    }
}

/// Remembers the line of each id to report both places of a duplicate.
struct IdSet {
    seen: HashMap<String, usize>,
}

impl IdSet {
    fn new() -> Self {
        IdSet { seen: HashMap::new() }
    }

    fn insert(&mut self, path: &Path, line: usize, field: &str, id: &str) -> Result<()> {
        if let Some(first) = self.seen.insert(id.to_string(), line) {
            return Err(Error::input(
                path,
                Location::Line(line),
                field,
                format!("duplicate id `{id}` (first seen on line {first})"),
            ));
        }
        Ok(())
    }
}

fn progress_lines(lines: &mut Lines, what: &str, mut each: impl FnMut(usize, &str, &Path) -> Result<()>) -> Result<()> {
    let (_, len) = lines.progress();
    let bar = crate::progress::bar(len, what);
    let path = lines.path().to_path_buf();
    let mut n = 0usize;
    while let Some((line, text)) = lines.next_line()? {
        each(line, text, &path)?;
        n += 1;
        if n.is_multiple_of(65536) {
            bar.set_position(lines.progress().0);
        }
    }
    bar.finish_and_clear();
    Ok(())
}

pub fn read_beir_corpus(path: &Path) -> Result<Vec<Doc>> {
    let mut lines = Lines::open(path, "corpus")?;
    let mut docs = Vec::new();
    let mut ids = IdSet::new();
    progress_lines(&mut lines, "corpus", |line, text, path| {
        let Some(rec) = json_record(path, line, text)? else { return Ok(()) };
        let doc_id = json_id(path, line, &rec)?;
        let title = json_str(path, line, &rec, "title", false)?;
        let body = json_str(path, line, &rec, "text", true)?;
        if body.trim().is_empty() && title.trim().is_empty() {
            return Err(Error::input(path, Location::Line(line), "text", "empty text and no title"));
        }
        ids.insert(path, line, "_id", &doc_id)?;
        docs.push(Doc { doc_idx: docs.len() as i64, doc_id, title, text: body });
        Ok(())
    })?;
    if docs.is_empty() {
        return Err(Error::input(path, Location::File, "corpus", "no documents (only blank lines)"));
    }
    Ok(docs)
}

pub fn read_beir_queries(path: &Path) -> Result<Vec<Query>> {
    let mut lines = Lines::open(path, "queries")?;
    let mut queries = Vec::new();
    let mut ids = IdSet::new();
    progress_lines(&mut lines, "queries", |line, text, path| {
        let Some(rec) = json_record(path, line, text)? else { return Ok(()) };
        let query_id = json_id(path, line, &rec)?;
        let text = json_str(path, line, &rec, "text", true)?;
        if text.trim().is_empty() {
            return Err(Error::input(path, Location::Line(line), "text", "empty query text"));
        }
        ids.insert(path, line, "_id", &query_id)?;
        queries.push(Query { query_idx: queries.len() as i64, query_id, text });
        Ok(())
    })?;
    if queries.is_empty() {
        return Err(Error::input(path, Location::File, "queries", "no queries (only blank lines)"));
    }
    Ok(queries)
}

/// Checks that every judged id exists and tags the judgements with their split.
fn resolve_qrels(
    path: &Path,
    split: &str,
    read: QrelRows,
    docs: &HashSet<&str>,
    queries: &HashSet<&str>,
) -> Result<Vec<Qrel>> {
    let [qfield, dfield, _] = read.field_names;
    read.rows
        .into_iter()
        .map(|r| {
            if !queries.contains(r.query_id.as_str()) {
                return Err(Error::input(
                    path,
                    Location::Line(r.line),
                    qfield,
                    format!("unknown query `{}` (not in the queries file)", r.query_id),
                ));
            }
            if !docs.contains(r.doc_id.as_str()) {
                return Err(Error::input(
                    path,
                    Location::Line(r.line),
                    dfield,
                    format!("unknown document `{}` (not in the corpus)", r.doc_id),
                ));
            }
            Ok(Qrel { query_id: r.query_id, doc_id: r.doc_id, relevance: r.relevance, split: split.to_string() })
        })
        .collect()
}

fn split_name(path: &Path) -> Result<String> {
    let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    if name.is_empty() || name.chars().any(|c| !(c.is_ascii_alphanumeric() || c == '-' || c == '_')) {
        return Err(Error::input(
            path,
            Location::File,
            "split",
            format!("`{name}` is not a usable split name (letters, digits, - and _)"),
        ));
    }
    Ok(name)
}

/// Reads a BEIR directory: `corpus.jsonl`, `queries.jsonl`, `qrels/<split>.tsv`.
pub fn read_beir(input: &Path) -> Result<Collection> {
    if !input.exists() {
        return Err(Error::input(input, Location::File, "--input", "does not exist"));
    }
    if !input.is_dir() {
        return Err(Error::input(
            input,
            Location::File,
            "--input",
            "is a file, expected a BEIR directory (corpus.jsonl, queries.jsonl, qrels/)",
        ));
    }
    let docs = read_beir_corpus(&input.join("corpus.jsonl"))?;
    let queries = read_beir_queries(&input.join("queries.jsonl"))?;
    let qrels_dir = input.join("qrels");
    let mut files: Vec<PathBuf> = match std::fs::read_dir(&qrels_dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "tsv"))
            .collect(),
        Err(e) => return Err(Error::io(&qrels_dir, "cannot read the qrels directory", e)),
    };
    files.sort();
    if files.is_empty() {
        return Err(Error::input(&qrels_dir, Location::File, "qrels", "no <split>.tsv files"));
    }
    let splits: Vec<(String, PathBuf)> = files.into_iter().map(|p| Ok((split_name(&p)?, p))).collect::<Result<_>>()?;
    let qrels = read_splits(&splits, &docs, &queries)?;
    Ok(Collection { docs, queries, qrels })
}

fn read_splits(splits: &[(String, PathBuf)], docs: &[Doc], queries: &[Query]) -> Result<Vec<Qrel>> {
    let doc_ids: HashSet<&str> = docs.iter().map(|d| d.doc_id.as_str()).collect();
    let query_ids: HashSet<&str> = queries.iter().map(|q| q.query_id.as_str()).collect();
    let mut qrels = Vec::new();
    for (split, path) in splits {
        qrels.extend(resolve_qrels(path, split, read_qrels_rows(path)?, &doc_ids, &query_ids)?);
    }
    Ok(qrels)
}

/// Reads an `id<TAB>text` (or `id<TAB>title<TAB>text`) file: MS MARCO / NQ320k style.
fn read_tsv_records(path: &Path, what: &str, with_title: bool) -> Result<Vec<(String, String, String)>> {
    let mut lines = Lines::open(path, what)?;
    let mut out = Vec::new();
    let mut ids = IdSet::new();
    progress_lines(&mut lines, what, |line, text, path| {
        if text.trim().is_empty() {
            return Ok(());
        }
        let fields: Vec<&str> = text.split('\t').collect();
        let (id, title, body) = match (with_title, fields.as_slice()) {
            (_, [id, body]) => (*id, "", *body),
            (true, [id, title, body]) => (*id, *title, *body),
            _ => {
                let expected = if with_title { "2 or 3 (id, [title,] text)" } else { "2 (id, text)" };
                return Err(Error::input(
                    path,
                    Location::Line(line),
                    "(row)",
                    format!("has {} tab-separated fields, expected {expected}", fields.len()),
                ));
            }
        };
        check_id(path, line, "id", id)?;
        if body.trim().is_empty() && title.trim().is_empty() {
            return Err(Error::input(path, Location::Line(line), "text", "empty text"));
        }
        ids.insert(path, line, "id", id)?;
        out.push((id.to_string(), title.to_string(), body.to_string()));
        Ok(())
    })?;
    if out.is_empty() {
        return Err(Error::input(path, Location::File, what, "no records (only blank lines)"));
    }
    Ok(out)
}

/// Reads a TSV collection, a TSV queries file and TREC/BEIR qrels files named by split.
pub fn read_tsv(collection: &Path, queries: &Path, qrels: &[(String, PathBuf)]) -> Result<Collection> {
    let docs: Vec<Doc> = read_tsv_records(collection, "collection", true)?
        .into_iter()
        .enumerate()
        .map(|(i, (doc_id, title, text))| Doc { doc_idx: i as i64, doc_id, title, text })
        .collect();
    let queries: Vec<Query> = read_tsv_records(queries, "queries", false)?
        .into_iter()
        .enumerate()
        .map(|(i, (query_id, _, text))| Query { query_idx: i as i64, query_id, text })
        .collect();
    if qrels.is_empty() {
        return Err(Error::usage("--qrels", "at least one SPLIT=FILE is needed"));
    }
    let qrels = read_splits(qrels, &docs, &queries)?;
    Ok(Collection { docs, queries, qrels })
}

/// Writes a validated collection as a dataset directory, atomically.
pub fn write_dataset(
    c: &Collection,
    output: &Path,
    opts: &PrepareOptions,
    source_kind: &str,
    source_path: &Path,
) -> Result<Manifest> {
    if opts.row_group_rows == 0 {
        return Err(Error::usage("--row-group-rows", "must be at least 1"));
    }
    let out = TempDir::new(output, opts.overwrite)?;
    let dir = out.path();

    let (doc_tokens, query_tokens, tokenizer) = match &opts.tokenizer {
        None => (None, None, None),
        Some(name) => {
            let (tok, file) = tokenize::load(name)?;
            let doc_texts: Vec<String> = c.docs.iter().map(Doc::full_text).collect();
            let doc_refs: Vec<&str> = doc_texts.iter().map(String::as_str).collect();
            let q_refs: Vec<&str> = c.queries.iter().map(|q| q.text.as_str()).collect();
            let dt = tokenize::encode_all(&tok, &file, &doc_refs, "tokenize docs")?;
            let qt = tokenize::encode_all(&tok, &file, &q_refs, "tokenize queries")?;
            let info = TokenizerInfo {
                name: name.clone(),
                sha256: manifest::sha256_file(&file)?,
                vocab_size: tok.get_vocab_size(true),
                add_special_tokens: false,
            };
            (Some(dt), Some(qt), Some(info))
        }
    };

    let source = Source { kind: source_kind, path: source_path };
    let tokens = (doc_tokens.as_deref(), query_tokens.as_deref());
    let m = write_files(dir, (&c.docs, &c.queries, &c.qrels), tokens, opts.row_group_rows, tokenizer, &source)?;
    out.commit()?;
    Ok(m)
}

/// Where a dataset came from (recorded in its manifest).
/// Token ids of every row (docs or queries), when the dataset stores them.
type TokenIds<'a> = Option<&'a [Vec<u32>]>;

pub struct Source<'a> {
    pub kind: &'a str,
    pub path: &'a Path,
}

/// Writes a dataset's files into `dir` (the caller's temp dir): docs, queries and qrels as
/// Parquet with `row_group_rows` rows per group (token ids when given), then manifest.json
/// describing them. Shared by `grdr prepare` and the corpus samples of `grdr sweep`.
pub fn write_files(
    dir: &Path,
    (docs, queries, qrels): (&[Doc], &[Query], &[Qrel]),
    (doc_tokens, query_tokens): (TokenIds, TokenIds),
    row_group_rows: usize,
    tokenizer: Option<TokenizerInfo>,
    source: &Source,
) -> Result<Manifest> {
    corpus::write_docs(&dir.join(corpus::DOCS_FILE), docs, doc_tokens, row_group_rows)?;
    corpus::write_queries(&dir.join(corpus::QUERIES_FILE), queries, query_tokens, row_group_rows)?;
    corpus::write_qrels(&dir.join(corpus::QRELS_FILE), qrels)?;

    let mut splits: BTreeMap<String, (HashSet<&str>, usize)> = BTreeMap::new();
    for q in qrels {
        let e = splits.entry(q.split.clone()).or_default();
        e.0.insert(q.query_id.as_str());
        e.1 += 1;
    }
    let mut files = BTreeMap::new();
    for name in [corpus::DOCS_FILE, corpus::QUERIES_FILE, corpus::QRELS_FILE] {
        files.insert(name.to_string(), manifest::describe_parquet(&dir.join(name))?);
    }
    let m = Manifest {
        format: manifest::FORMAT.to_string(),
        grdr_version: crate::VERSION.to_string(),
        source_kind: source.kind.to_string(),
        source_path: source.path.display().to_string(),
        docs: docs.len(),
        queries: queries.len(),
        splits: splits.into_iter().map(|(k, (qs, n))| (k, SplitCounts { queries: qs.len(), qrels: n })).collect(),
        row_group_rows,
        tokenizer,
        files,
    };
    write_json(&dir.join(manifest::MANIFEST_FILE), &m)?;
    Ok(m)
}
