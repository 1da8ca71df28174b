//! `grdr paper wu2024` end to end on SciFact with tiny budgets (`--set` shrinks every row's
//! model and steps): BM25, a GR row with its rerank evaluation (DSI atomic) and the NP row
//! run as the CLI runs them; the tables hold exactly the numbers of the rows' own
//! metrics.json files, in Markdown, CSV and Parquet; rows not run are listed as such; a
//! second invocation redoes nothing; misuse is refused up front.
mod train_common;

use std::path::Path;
use std::process::{Command, Output};

use train_common::*;

fn paper(out: &Path, extra: &[&str]) -> Output {
    Command::new(bin())
        .args(["paper", "wu2024", "--data", dataset().to_str().unwrap(), "--output", out.to_str().unwrap()])
        .args(["--ranks", "1", "--rows", "bm25,dsi-atomic-scifact,genre-np-scifact"])
        .args(extra)
        .env("CI", "1")
        .env("OMP_NUM_THREADS", "1")
        .output()
        .unwrap()
}

const TINY: [&str; 16] = [
    "--set",
    "train.max_steps=2",
    "--set",
    "model.d_model=32",
    "--set",
    "model.num_layers=1",
    "--set",
    "model.d_ff=64",
    "--set",
    "model.num_heads=2",
    "--set",
    "eval.memorization_docs=10",
    "--set",
    "eval.k=10",
    "--set",
    "train.batch_size=8",
];

fn json(p: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// The CSV as (header, rows of cells), every line with the header's width.
fn csv(p: &Path) -> (Vec<String>, Vec<Vec<String>>) {
    let text = std::fs::read_to_string(p).unwrap();
    let mut lines = text.lines().map(fields);
    let header = lines.next().unwrap();
    let rows: Vec<Vec<String>> = lines.collect();
    assert!(rows.iter().all(|r| r.len() == header.len()), "{}: ragged", p.display());
    (header, rows)
}

/// One CSV line's fields (RFC 4180: quoted fields may hold commas, quotes doubled).
fn fields(line: &str) -> Vec<String> {
    let (mut out, mut cur, mut quoted) = (Vec::new(), String::new(), false);
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            ('"', _) => quoted = !quoted,
            (',', false) => out.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    out.push(cur);
    out
}

#[test]
fn paper_runs_its_rows_writes_the_tables_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("wu2024");
    let o = paper(&out, &TINY);
    ok(&o);

    // Table 7's BM25 line and Table 6's NP line are their runs' metrics, in all three files.
    let rows = out.join("rows");
    let bm25 = json(&rows.join("bm25/metrics.json"));
    let np = json(&rows.join("genre-np-scifact/eval/metrics.json"));
    let dsi_rerank = json(&rows.join("dsi-atomic-scifact/eval-rerank/metrics.json"));
    assert_eq!(json(&rows.join("dsi-atomic-scifact/eval-rerank/run.json"))["rerank"]["setting"], "bm25");
    for (table, run, want) in
        [("table7", "bm25", &bm25), ("table6", "genre-np-scifact", &np), ("table5", "dsi-atomic-scifact", &dsi_rerank)]
    {
        let (header, lines) = csv(&out.join(format!("{table}.csv")));
        let col = |name: &str| header.iter().position(|h| h == name).unwrap();
        let line = lines.iter().find(|l| l[col("run")] == run).unwrap_or_else(|| panic!("{table}: no {run} line"));
        assert_eq!(line[col("state")], "done");
        assert!(line[col("nDCG@10")].parse::<f64>().is_ok(), "{table} {run}: nDCG@10 recorded");
        for m in ["R@1", "R@10", "MRR@10", "nDCG@10", "R@100"] {
            // (R@100 is absent where the tiny runs retrieve 10.)
            assert_eq!(line[col(m)].parse::<f64>().ok(), want[m].as_f64(), "{table} {run} {m}");
        }
        // Rows not run are listed, empty.
        assert!(lines.iter().filter(|l| l[col("run")] != run).all(|l| l[col("state")] == "not run"));
        let md = std::fs::read_to_string(out.join(format!("{table}.md"))).unwrap();
        assert!(md.contains(&format!("`{run}` |")), "{table}.md lists {run} as done");
        // Parquet: the same columns, one row per line.
        let file = std::fs::File::open(out.join(format!("{table}.parquet"))).unwrap();
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file).unwrap();
        let schema = reader.schema().clone();
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(names, header.iter().map(String::as_str).collect::<Vec<_>>());
        let batches: Vec<_> = reader.build().unwrap().collect::<Result<_, _>>().unwrap();
        assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), lines.len());
    }
    // Time and memory of the NP row: its training's.
    let (header, lines) = csv(&out.join("table6.csv"));
    let col = |name: &str| header.iter().position(|h| h == name).unwrap();
    let line = lines.iter().find(|l| l[col("run")] == "genre-np-scifact").unwrap();
    let train = json(&rows.join("genre-np-scifact/train.json"));
    assert_eq!(line[col("train_seconds")].parse::<f64>().unwrap(), train["train_seconds"].as_f64().unwrap());
    assert!(line[col("train_peak_rss_mib")].parse::<f64>().unwrap() > 0.0);

    // Again: every step is skipped, nothing is rewritten.
    let stamp = |p: &Path| std::fs::metadata(p).unwrap().modified().unwrap();
    let before = stamp(&rows.join("genre-np-scifact/eval/metrics.json"));
    let again = paper(&out, &TINY);
    ok(&again);
    let log = String::from_utf8_lossy(&again.stderr);
    for step in ["bm25", "dsi-atomic-scifact", "dsi-atomic-scifact-rerank", "genre-np-scifact"] {
        assert!(log.contains(&format!("{step}: done, skipped")), "{step} not skipped:\n{log}");
    }
    assert_eq!(stamp(&rows.join("genre-np-scifact/eval/metrics.json")), before);
    // A dry run of the whole paper lists only what is left.
    let o = Command::new(bin())
        .args([
            "paper",
            "wu2024",
            "--data",
            dataset().to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
            "--dry-run",
        ])
        .output()
        .unwrap();
    ok(&o);
    let plan = String::from_utf8_lossy(&o.stdout);
    assert!(plan.contains("colbert-minilm-scifact.toml") && plan.contains("docids-semantic.parquet"));
    assert!(!plan.contains("genre-np-scifact.toml") && !plan.contains("grdr bm25 "), "{plan}");

    // Misuse: an unknown paper or row, a directory that is not a dataset.
    let usage = |o: &Output, what: &str| {
        assert_eq!(o.status.code(), Some(2), "{}", String::from_utf8_lossy(&o.stderr));
        assert!(String::from_utf8_lossy(&o.stderr).contains(what));
    };
    let run = |args: &[&str]| Command::new(bin()).args(args).output().unwrap();
    let data = dataset().to_str().unwrap();
    usage(&run(&["paper", "nope", "--data", data, "--output", "x"]), "PAPER");
    usage(&run(&["paper", "wu2024", "--data", data, "--output", "x", "--rows", "colbert"]), "--rows");
    usage(&run(&["paper", "wu2024", "--data", "/nonexistent", "--output", "x"]), "--data");
}
