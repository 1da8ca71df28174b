//! Bad input gets one clear error naming file, line and field, exit code 3, and no output
//! directory (nor temp leftovers). Each case starts from a small valid BEIR directory and
//! breaks one thing.
mod common;

use std::fs;
use std::path::Path;

use common::{grdr, stderr};

const CORPUS: &str = concat!(
    r#"{"_id": "d1", "title": "Alpha", "text": "first doc", "metadata": {}}"#,
    "\n",
    r#"{"_id": "d2", "title": "", "text": "second doc"}"#,
    "\n",
    r#"{"_id": "d3", "title": "Gamma", "text": "third doc"}"#,
    "\n",
);
const QUERIES: &str = concat!(
    r#"{"_id": "q1", "text": "first question", "metadata": {"d1": []}}"#,
    "\n",
    r#"{"_id": "q2", "text": "second question"}"#,
    "\n",
);
const QRELS: &str = "query-id\tcorpus-id\tscore\r\nq1\td1\t1\r\nq2\td3\t1\r\n";

fn write_beir(dir: &Path, corpus: &[u8], queries: &[u8], qrels: &[u8]) {
    fs::create_dir_all(dir.join("qrels")).unwrap();
    fs::write(dir.join("corpus.jsonl"), corpus).unwrap();
    fs::write(dir.join("queries.jsonl"), queries).unwrap();
    fs::write(dir.join("qrels/test.tsv"), qrels).unwrap();
}

/// Runs `prepare beir` on the given files and checks the failure is reported as specified.
fn expect_bad(corpus: &str, queries: &str, qrels: &str, file: &str, place: &str, field: &str, words: &str) {
    expect_bad_bytes(corpus.as_bytes(), queries.as_bytes(), qrels.as_bytes(), file, place, field, words)
}

fn expect_bad_bytes(corpus: &[u8], queries: &[u8], qrels: &[u8], file: &str, place: &str, field: &str, words: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("beir");
    write_beir(&input, corpus, queries, qrels);
    let output = tmp.path().join("out").join("ds");
    let out = grdr(&["prepare", "beir", "--input", input.to_str().unwrap(), "--output", output.to_str().unwrap()]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(3), "exit code 3 expected, stderr: {err}");
    let first_line = err.lines().find(|l| l.starts_with("error:")).unwrap_or_default();
    for needle in [file, place, &format!("`{field}`"), words] {
        assert!(first_line.contains(needle), "error should mention {needle:?}: {err}");
    }
    assert_eq!(err.matches("error:").count(), 1, "one error, printed once: {err}");
    assert!(!output.exists(), "no output directory may be left behind");
    let leftovers: Vec<_> =
        fs::read_dir(tmp.path().join("out")).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    assert!(leftovers.is_empty(), "temp dirs left behind: {leftovers:?}");
}

#[test]
fn valid_input_is_accepted() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("beir");
    write_beir(&input, CORPUS.as_bytes(), QUERIES.as_bytes(), QRELS.as_bytes());
    let output = tmp.path().join("ds");
    let out = grdr(&["prepare", "beir", "--input", input.to_str().unwrap(), "--output", output.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(output.join("manifest.json").exists());
}

#[test]
fn malformed_json() {
    let corpus = CORPUS.replace(r#"{"_id": "d2""#, r#"{"_id": "d2","#);
    expect_bad(&corpus, QUERIES, QRELS, "corpus.jsonl", "line 2", "(record)", "malformed JSON");
}

#[test]
fn record_not_an_object() {
    let corpus = format!("{CORPUS}[1, 2]\n");
    expect_bad(&corpus, QUERIES, QRELS, "corpus.jsonl", "line 4", "(record)", "expected a JSON object");
}

#[test]
fn missing_doc_id() {
    let corpus = CORPUS.replace(r#""_id": "d3", "#, "");
    expect_bad(&corpus, QUERIES, QRELS, "corpus.jsonl", "line 3", "_id", "missing");
}

#[test]
fn id_of_wrong_type() {
    let corpus = CORPUS.replace(r#""_id": "d2""#, r#""_id": {"x": 1}"#);
    expect_bad(&corpus, QUERIES, QRELS, "corpus.jsonl", "line 2", "_id", "must be a string");
}

#[test]
fn id_with_whitespace() {
    let corpus = CORPUS.replace(r#""_id": "d2""#, r#""_id": "d 2""#);
    expect_bad(&corpus, QUERIES, QRELS, "corpus.jsonl", "line 2", "_id", "whitespace");
}

#[test]
fn missing_doc_text() {
    let corpus = CORPUS.replace(r#", "text": "first doc""#, "");
    expect_bad(&corpus, QUERIES, QRELS, "corpus.jsonl", "line 1", "text", "missing");
}

#[test]
fn title_of_wrong_type() {
    let corpus = CORPUS.replace(r#""title": "Gamma""#, r#""title": 7"#);
    expect_bad(&corpus, QUERIES, QRELS, "corpus.jsonl", "line 3", "title", "must be a string");
}

#[test]
fn empty_doc_text() {
    let corpus = CORPUS.replace(r#""title": "", "text": "second doc""#, r#""title": "", "text": "  ""#);
    expect_bad(&corpus, QUERIES, QRELS, "corpus.jsonl", "line 2", "text", "empty text");
}

#[test]
fn duplicate_doc_id() {
    let corpus = CORPUS.replace(r#""_id": "d3""#, r#""_id": "d1""#);
    expect_bad(&corpus, QUERIES, QRELS, "corpus.jsonl", "line 3", "_id", "duplicate id `d1` (first seen on line 1)");
}

#[test]
fn non_utf8_bytes() {
    let mut corpus = CORPUS.as_bytes().to_vec();
    let at = CORPUS.find("second").unwrap();
    corpus[at] = 0xff;
    expect_bad_bytes(
        &corpus,
        QUERIES.as_bytes(),
        QRELS.as_bytes(),
        "corpus.jsonl",
        "line 2",
        "(line)",
        "not valid UTF-8",
    );
}

#[test]
fn empty_corpus_file() {
    expect_bad("", QUERIES, QRELS, "corpus.jsonl", "corpus.jsonl", "corpus", "file is empty");
}

#[test]
fn empty_query_text() {
    let queries = QUERIES.replace("second question", "");
    expect_bad(CORPUS, &queries, QRELS, "queries.jsonl", "line 2", "text", "empty query text");
}

#[test]
fn duplicate_query_id() {
    let queries = QUERIES.replace(r#""_id": "q2""#, r#""_id": "q1""#);
    expect_bad(CORPUS, &queries, QRELS, "queries.jsonl", "line 2", "_id", "duplicate id `q1`");
}

#[test]
fn qrels_wrong_header() {
    let qrels = QRELS.replace("query-id\tcorpus-id\tscore", "qid\tdocid\tscore");
    expect_bad(
        CORPUS,
        QUERIES,
        &qrels,
        "test.tsv",
        "line 1",
        "header",
        "expected the BEIR header `query-id<TAB>corpus-id<TAB>score`",
    );
}

#[test]
fn qrels_wrong_column_count() {
    let qrels = QRELS.replace("q2\td3\t1", "q2\td3");
    expect_bad(CORPUS, QUERIES, &qrels, "test.tsv", "line 3", "columns", "expected 3 tab-separated fields, found 2");
}

#[test]
fn qrels_non_numeric_score() {
    let qrels = QRELS.replace("q2\td3\t1", "q2\td3\thigh");
    expect_bad(CORPUS, QUERIES, &qrels, "test.tsv", "line 3", "score", "relevance `high` is not an integer");
}

#[test]
fn qrels_unknown_doc() {
    let qrels = QRELS.replace("q2\td3\t1", "q2\td9\t1");
    expect_bad(CORPUS, QUERIES, &qrels, "test.tsv", "line 3", "corpus-id", "unknown document `d9`");
}

#[test]
fn qrels_unknown_query() {
    let qrels = QRELS.replace("q2\td3\t1", "q7\td3\t1");
    expect_bad(CORPUS, QUERIES, &qrels, "test.tsv", "line 3", "query-id", "unknown query `q7`");
}

#[test]
fn qrels_duplicate_judgement() {
    let qrels = format!("{QRELS}q1\td1\t0\r\n");
    expect_bad(CORPUS, QUERIES, &qrels, "test.tsv", "line 4", "corpus-id", "judges doc `d1` again (first at line 2)");
}

#[test]
fn input_is_a_file() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("corpus.jsonl");
    fs::write(&file, CORPUS).unwrap();
    let output = tmp.path().join("ds");
    let out = grdr(&["prepare", "beir", "--input", file.to_str().unwrap(), "--output", output.to_str().unwrap()]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("corpus.jsonl") && err.contains("`--input`") && err.contains("is a file"), "{err}");
    assert!(!output.exists());
}

#[test]
fn missing_qrels_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("beir");
    write_beir(&input, CORPUS.as_bytes(), QUERIES.as_bytes(), QRELS.as_bytes());
    fs::remove_dir_all(input.join("qrels")).unwrap();
    let output = tmp.path().join("ds");
    let out = grdr(&["prepare", "beir", "--input", input.to_str().unwrap(), "--output", output.to_str().unwrap()]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("qrels") && err.contains("cannot read the qrels directory"), "{err}");
    assert!(!output.exists());
}

#[test]
fn existing_output_is_not_touched() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("beir");
    write_beir(&input, CORPUS.as_bytes(), QUERIES.as_bytes(), QRELS.as_bytes());
    let output = tmp.path().join("ds");
    fs::create_dir(&output).unwrap();
    fs::write(output.join("keep"), "x").unwrap();
    let out = grdr(&["prepare", "beir", "--input", input.to_str().unwrap(), "--output", output.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--overwrite"));
    assert_eq!(fs::read_to_string(output.join("keep")).unwrap(), "x");
}

#[test]
fn tsv_collection_wrong_columns_and_trec_qrels_bad_relevance() {
    let tmp = tempfile::tempdir().unwrap();
    let (c, q, r) = (tmp.path().join("collection.tsv"), tmp.path().join("queries.tsv"), tmp.path().join("qrels.txt"));
    fs::write(&c, "0\tfirst passage\n1\tsecond passage\n2\n").unwrap();
    fs::write(&q, "10\twhat is first\n").unwrap();
    fs::write(&r, "10 0 0 1\n").unwrap();
    let output = tmp.path().join("ds");
    let qrels_arg = format!("dev={}", r.display());
    let args = [
        "prepare",
        "tsv",
        "--collection",
        c.to_str().unwrap(),
        "--queries",
        q.to_str().unwrap(),
        "--qrels",
        &qrels_arg,
        "--output",
        output.to_str().unwrap(),
    ];
    let out = grdr(&args);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("collection.tsv:line 3") && err.contains("`(row)`"), "{err}");

    fs::write(&c, "0\tfirst passage\n1\tsecond passage\n").unwrap();
    fs::write(&r, "10 0 0 1\n10 0 1 yes\n").unwrap();
    let out = grdr(&args);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        err.contains("qrels.txt:line 2") && err.contains("`rel`") && err.contains("`yes` is not an integer"),
        "{err}"
    );
    assert!(!output.exists());

    fs::write(&r, "10 0 0 1\n10 0 1 2\n").unwrap();
    let out = grdr(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    let m: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(output.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(m["splits"]["dev"]["qrels"], 2);
    assert_eq!(m["docs"], 2);
}
