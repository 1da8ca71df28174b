//! The foundation end to end on real data: SciFact → `grdr prepare` (Parquet that pyarrow
//! reads, manifest with checksums) → `grdr bm25` → run.trec + metrics.json, whose numbers
//! equal pytrec_eval's on the same run and the regression table in configs/expected/.
mod common;

use std::fs;

use common::{grdr_ok, prepare_scifact, reference_python};
use grdr::data::Dataset;

#[test]
fn prepare_bm25_and_metrics_on_scifact() {
    let tmp = tempfile::tempdir().unwrap();
    let ds_dir = prepare_scifact(tmp.path(), Some("minilm"));

    // The dataset: counts from ../shared/datasets/README.md, dense indexes, checksums.
    let ds = Dataset::open(&ds_dir).unwrap();
    let m = &ds.manifest;
    assert_eq!((m.docs, m.queries), (5183, 1109));
    assert_eq!((m.splits["test"].queries, m.splits["test"].qrels), (300, 339));
    assert_eq!((m.splits["train"].queries, m.splits["train"].qrels), (809, 919));
    assert_eq!(m.files["docs.parquet"].row_groups, 5183usize.div_ceil(1024));
    m.verify(&ds_dir).unwrap();
    let docs = ds.docs().unwrap();
    assert!(docs.iter().enumerate().all(|(i, d)| d.doc_idx == i as i64));
    assert!(docs.iter().all(|d| !d.text.contains("\\u")), "JSON escapes are decoded");
    assert_eq!(ds.split_queries("test").unwrap().len(), 300);

    // Token ids are the tokenizer's, without special tokens.
    let ids = grdr::data::corpus::read_input_ids(&ds.docs_path()).unwrap();
    let (tok, _) = grdr::data::tokenize::load("minilm").unwrap();
    let expected = tok.encode(docs[7].full_text(), false).unwrap().get_ids().to_vec();
    assert_eq!(ids[7], expected);
    assert_eq!(m.tokenizer.as_ref().unwrap().vocab_size, 30522);

    // pyarrow reads what we wrote, with the documented columns and no query metadata.
    let py = r#"
import sys, pyarrow.parquet as pq
d = pq.read_table(sys.argv[1] + "/docs.parquet"); q = pq.read_table(sys.argv[1] + "/queries.parquet")
r = pq.read_table(sys.argv[1] + "/qrels.parquet")
print(d.num_rows, ",".join(d.column_names), d.column("doc_id")[0].as_py())
print(q.num_rows, ",".join(q.column_names))
print(r.num_rows, ",".join(r.column_names))
"#;
    let out = reference_python(py, &[ds_dir.to_str().unwrap()]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], format!("5183 doc_idx,doc_id,title,text,input_ids {}", docs[0].doc_id));
    assert_eq!(lines[1], "1109 query_idx,query_id,text,input_ids");
    assert_eq!(lines[2], "1258 query_id,doc_id,relevance,split");

    // BM25: a full run file and metrics equal to the regression table and to pytrec_eval.
    let run_dir = tmp.path().join("bm25");
    let stdout = grdr_ok(&[
        "bm25",
        "--data",
        ds_dir.to_str().unwrap(),
        "--split",
        "test",
        "--output",
        run_dir.to_str().unwrap(),
    ]);
    assert!(stdout.contains("nDCG@10"), "the metrics table is printed: {stdout}");
    let run = grdr::eval::read_run(&run_dir.join("run.trec")).unwrap();
    assert_eq!(run.len(), 300);
    // Top 1000 unless a short query matches fewer docs; never empty on SciFact.
    assert!(run.values().all(|docs| !docs.is_empty() && docs.len() <= 1000));
    assert!(run.values().filter(|docs| docs.len() == 1000).count() >= 250);
    let ours: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(run_dir.join("metrics.json")).unwrap()).unwrap();

    let expected: serde_json::Value = serde_json::from_str(
        &fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/configs/expected/bm25-scifact-test.json")).unwrap(),
    )
    .unwrap();
    for (key, want) in expected["metrics"].as_object().unwrap() {
        let got = ours[key].as_f64().unwrap();
        assert!((got - want.as_f64().unwrap()).abs() < 1e-4, "{key}: {got} vs regression table {want}");
    }
    // The README's headline figure, and the published band it belongs to: BEIR's
    // Elasticsearch BM25 0.665 and Anserini's 0.679, within 0.01 (our analyser — Snowball
    // stemming, English stop words, tantivy's BM25 — differs from both in details).
    let ndcg = ours["nDCG@10"].as_f64().unwrap();
    assert!((ndcg - 0.6838).abs() <= 0.0005, "BM25 nDCG@10 {ndcg}, the README says 0.6838");
    assert!((0.665 - 0.01..=0.679 + 0.01).contains(&ndcg), "BM25 nDCG@10 {ndcg} outside the published band");

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/pytrec_reference.py");
    let qrels = common::scifact_dir().join("qrels/test.tsv");
    let code = format!("import runpy, sys; sys.argv = ['pytrec_reference.py'] + sys.argv[1:]; runpy.run_path({script:?}, run_name='__main__')");
    let reference: serde_json::Value = serde_json::from_str(&reference_python(
        &code,
        &["--qrels", qrels.to_str().unwrap(), "--run", run_dir.join("run.trec").to_str().unwrap()],
    ))
    .unwrap();
    for (key, want) in reference["mean"].as_object().unwrap() {
        let got = ours[key].as_f64().unwrap_or_else(|| panic!("{key} missing from metrics.json"));
        assert!((got - want.as_f64().unwrap()).abs() <= 1e-6, "{key}: ours {got}, pytrec_eval {want}");
    }
}
