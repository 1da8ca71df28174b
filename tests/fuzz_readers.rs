//! Structured fuzzing of every reader a user feeds files to: BEIR JSONL and qrels, TSV
//! collections, TREC runs and qrels, run configs, sweep files, docid tables, Parquet
//! datasets, checkpoints and HF model directories. Each reader gets mutations of a valid
//! file (bytes flipped, inserted, deleted, truncated, lines swapped, fields blanked) and
//! random bytes; whatever it gets, it returns — an error whose exit code is the README's
//! (2 usage, 3 bad input) — and never panics or hangs. proptest shrinks any failure to a
//! minimal file.
//!
//! `GRDR_FUZZ_CASES` cases per reader (default 10,000: the suite runs them in about a
//! minute); `scripts/fuzz` runs a longer campaign.
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use grdr::error::Error;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

fn cases() -> u32 {
    std::env::var("GRDR_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000)
}

/// One edit of a file's bytes.
#[derive(Debug, Clone)]
enum Mutation {
    Flip {
        at: usize,
        mask: u8,
    },
    Insert {
        at: usize,
        bytes: Vec<u8>,
    },
    Delete {
        at: usize,
        len: usize,
    },
    Truncate {
        at: usize,
    },
    /// A field separator, quote, brace or newline where it breaks structure.
    Punct {
        at: usize,
        byte: u8,
    },
    /// Swap two lines (order-dependent readers: headers, duplicates).
    SwapLines {
        a: usize,
        b: usize,
    },
    /// Replace the whole file with random bytes.
    Garbage(Vec<u8>),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let at = any::<usize>();
    prop_oneof![
        (at, 1u8..=255).prop_map(|(at, mask)| Mutation::Flip { at, mask }),
        (at, proptest::collection::vec(any::<u8>(), 1..8)).prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
        (at, 1usize..64).prop_map(|(at, len)| Mutation::Delete { at, len }),
        at.prop_map(|at| Mutation::Truncate { at }),
        (at, proptest::sample::select(b"\t\n\r\"{}[],: =#\\\x00\xff".to_vec()))
            .prop_map(|(at, byte)| Mutation::Punct { at, byte }),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Mutation::SwapLines { a, b }),
        proptest::collection::vec(any::<u8>(), 0..256).prop_map(Mutation::Garbage),
    ]
}

fn apply(seed: &[u8], edits: &[Mutation]) -> Vec<u8> {
    let mut b = seed.to_vec();
    for m in edits {
        let n = b.len().max(1);
        match m {
            Mutation::Flip { at, mask } => {
                if !b.is_empty() {
                    let i = at % b.len();
                    b[i] ^= mask;
                }
            }
            Mutation::Insert { at, bytes } => {
                let i = at % (b.len() + 1);
                b.splice(i..i, bytes.iter().copied());
            }
            Mutation::Delete { at, len } => {
                let i = at % n;
                let j = (i + len).min(b.len());
                if i < j {
                    b.drain(i..j);
                }
            }
            Mutation::Truncate { at } => b.truncate(at % n),
            Mutation::Punct { at, byte } => {
                if !b.is_empty() {
                    let i = at % b.len();
                    b[i] = *byte;
                }
            }
            Mutation::SwapLines { a, b: c } => {
                let mut lines: Vec<Vec<u8>> = b.split(|&x| x == b'\n').map(<[u8]>::to_vec).collect();
                let len = lines.len();
                lines.swap(a % len, c % len);
                b = lines.join(&b'\n');
            }
            Mutation::Garbage(g) => b = g.clone(),
        }
    }
    b
}

/// Runs `read` on `cases()` mutations of `seed`, written to `file` inside a fresh temp dir
/// laid out by `prepare`. Every outcome must be Ok or an error with exit code 2 or 3.
fn fuzz(name: &str, seed: &[u8], file: &str, prepare: impl Fn(&Path), read: impl Fn(&Path) -> grdr::Result<()>) {
    let dir = tempfile::tempdir().unwrap();
    prepare(dir.path());
    let path = dir.path().join(file);
    let mut runner = TestRunner::new(Config { cases: cases(), failure_persistence: None, ..Config::default() });
    let result = runner.run(&proptest::collection::vec(mutation(), 1..4), |edits| {
        std::fs::write(&path, apply(seed, &edits)).unwrap();
        match read(dir.path()) {
            Ok(()) => {}
            Err(e) => check_error(name, &e).map_err(TestCaseError::fail)?,
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{name}: {e}");
    }
}

fn check_error(name: &str, e: &Error) -> Result<(), String> {
    match e.exit_code() {
        2 | 3 => Ok(()),
        code => Err(format!("{name}: exit code {code} for bad input: {e}")),
    }
}

fn scifact() -> PathBuf {
    std::env::var_os("GRDR_SCIFACT")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/datasets/scifact"))
}

/// The first `n` lines of a SciFact file (a small valid seed).
fn head(file: &str, n: usize) -> Vec<u8> {
    let text = std::fs::read_to_string(scifact().join(file)).unwrap();
    text.lines().take(n).collect::<Vec<_>>().join("\n").into_bytes()
}

#[test]
fn beir_jsonl_and_qrels() {
    let corpus = head("corpus.jsonl", 6);
    let queries = head("queries.jsonl", 6);
    fuzz(
        "corpus.jsonl",
        &corpus,
        "corpus.jsonl",
        |_| {},
        |d| grdr::data::import::read_beir_corpus(&d.join("corpus.jsonl")).map(drop),
    );
    fuzz(
        "queries.jsonl",
        &queries,
        "queries.jsonl",
        |_| {},
        |d| grdr::data::import::read_beir_queries(&d.join("queries.jsonl")).map(drop),
    );
    // A whole BEIR directory whose qrels are mutated (ids must then resolve to the corpus).
    let ids: Vec<String> = String::from_utf8(corpus.clone())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["_id"].as_str().unwrap().to_string())
        .collect();
    let qids: Vec<String> = String::from_utf8(queries.clone())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["_id"].as_str().unwrap().to_string())
        .collect();
    let qrels = format!("query-id\tcorpus-id\tscore\n{}\t{}\t1\n{}\t{}\t1\n", qids[0], ids[0], qids[1], ids[2]);
    fuzz(
        "qrels/test.tsv",
        qrels.as_bytes(),
        "qrels/test.tsv",
        |d| {
            std::fs::write(d.join("corpus.jsonl"), &corpus).unwrap();
            std::fs::write(d.join("queries.jsonl"), &queries).unwrap();
            std::fs::create_dir_all(d.join("qrels")).unwrap();
        },
        |d| grdr::data::import::read_beir(d).map(drop),
    );
}

#[test]
fn tsv_collections() {
    let collection = b"d1\tThe first document\nd2\tA second one\nd3\tthird\n".to_vec();
    let queries = b"q1\twhat is first\nq2\tsecond?\n".to_vec();
    let qrels = b"q1\t0\td1\t1\nq2\t0\td2\t1\n".to_vec();
    let read = |d: &Path| {
        grdr::data::import::read_tsv(
            &d.join("collection.tsv"),
            &d.join("queries.tsv"),
            &[("dev".to_string(), d.join("qrels.tsv"))],
        )
        .map(drop)
    };
    let all = |d: &Path| {
        std::fs::write(d.join("collection.tsv"), &collection).unwrap();
        std::fs::write(d.join("queries.tsv"), &queries).unwrap();
        std::fs::write(d.join("qrels.tsv"), &qrels).unwrap();
    };
    fuzz("collection.tsv", &collection, "collection.tsv", all, read);
    fuzz("queries.tsv", &queries, "queries.tsv", all, read);
    fuzz("qrels.tsv (TREC)", &qrels, "qrels.tsv", all, read);
}

#[test]
fn trec_runs_and_qrels() {
    let run = b"q1 Q0 d1 1 2.5 grdr\nq1 Q0 d2 2 1.25 grdr\nq2 Q0 d3 1 -0.5 grdr\n".to_vec();
    let qrels = b"query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td3\t2\n".to_vec();
    fuzz("run.trec", &run, "run.trec", |_| {}, |d| grdr::eval::read_run(&d.join("run.trec")).map(drop));
    fuzz("qrels", &qrels, "qrels.tsv", |_| {}, |d| grdr::eval::read_qrels(&d.join("qrels.tsv")).map(drop));
    // eval-run end to end: both files read, then scored.
    fuzz(
        "eval-run",
        &run,
        "run.trec",
        |d| std::fs::write(d.join("qrels.tsv"), &qrels).unwrap(),
        |d| grdr::eval::evaluate_files(&d.join("qrels.tsv"), &d.join("run.trec")).map(drop),
    );
}

#[test]
fn run_configs_and_sweep_files() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = std::fs::read(root.join("configs/runs/dsi-semantic-scifact.toml")).unwrap();
    fuzz(
        "config.toml",
        &config,
        "run.toml",
        |_| {},
        |d| grdr::config::RunConfig::load(&d.join("run.toml"), &[]).map(drop),
    );
    let sweep = std::fs::read(root.join("configs/sweeps/tiny-test.toml")).unwrap();
    let base = std::fs::read(root.join("configs/runs/dr-minilm-scifact.toml")).unwrap();
    fuzz(
        "sweep.toml",
        &sweep,
        "sweeps/s.toml",
        |d| {
            std::fs::create_dir_all(d.join("sweeps")).unwrap();
            std::fs::create_dir_all(d.join("runs")).unwrap();
            std::fs::write(d.join("runs/dr-minilm-scifact.toml"), &base).unwrap();
        },
        |d| {
            let spec = grdr::sweep::spec::SweepSpec::load(&d.join("sweeps/s.toml"))?;
            grdr::sweep::resolve::resolve_all(&spec, &["data.path=/nonexistent".into()], &d.join("out"), d).map(drop)
        },
    );
}

/// A small prepared dataset and its docid table, made once (Parquet seeds).
fn prepared() -> &'static Path {
    static DIR: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("beir");
        std::fs::create_dir_all(src.join("qrels")).unwrap();
        std::fs::write(src.join("corpus.jsonl"), head("corpus.jsonl", 40)).unwrap();
        std::fs::write(src.join("queries.jsonl"), head("queries.jsonl", 1109)).unwrap();
        let ids: Vec<String> = String::from_utf8(head("corpus.jsonl", 40))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["_id"].as_str().unwrap().to_string())
            .collect();
        let q: serde_json::Value = serde_json::from_slice(&head("queries.jsonl", 1)).unwrap();
        let qrels = format!("query-id\tcorpus-id\tscore\n{}\t{}\t1\n", q["_id"].as_str().unwrap(), ids[3]);
        std::fs::write(src.join("qrels/test.tsv"), qrels).unwrap();
        let out = dir.path().join("ds");
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_grdr"))
            .args(["-q", "prepare", "beir", "--input", src.to_str().unwrap(), "--output", out.to_str().unwrap()])
            .args(["--row-group-rows", "8"])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_grdr"))
            .args(["-q", "docids", "--data", out.to_str().unwrap(), "--scheme", "atomic", "--output"])
            .arg(out.join("docids.parquet"))
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        (dir, out)
    })
    .1
}

fn copy_dataset(to: &Path) {
    for e in std::fs::read_dir(prepared()).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

/// Parquet datasets: every file of a prepared dataset, read through what training and
/// evaluation read (a changed size is refused on open; flipped bytes inside Parquet pages
/// surface as Parquet or validation errors, never a panic).
#[test]
fn parquet_datasets_and_docid_tables() {
    let read_all = |d: &Path| -> grdr::Result<()> {
        let ds = grdr::data::Dataset::open(d)?;
        ds.docs()?;
        ds.queries()?;
        ds.qrels(None)?;
        Ok(())
    };
    for file in ["docs.parquet", "queries.parquet", "qrels.parquet", "manifest.json"] {
        let seed = std::fs::read(prepared().join(file)).unwrap();
        fuzz(file, &seed, file, copy_dataset, read_all);
    }
    // The Parquet decoders themselves, past the manifest's size check (which refuses most
    // mutations before any page is read).
    let seed = std::fs::read(prepared().join("docs.parquet")).unwrap();
    fuzz(
        "docs.parquet (decoder)",
        &seed,
        "docs.parquet",
        |_| {},
        |d| {
            grdr::data::shard::read_row_groups(&d.join("docs.parquet"))?;
            grdr::data::corpus::read_input_ids(&d.join("docs.parquet")).map(drop)
        },
    );
    let seed = std::fs::read(prepared().join("docids.parquet")).unwrap();
    fuzz(
        "docids.parquet",
        &seed,
        "docids.parquet",
        |_| {},
        |d| grdr::data::docid::DocidTable::read(&d.join("docids.parquet")).map(drop),
    );
}

/// Checkpoints: state.json, the model and optimizer files and config.toml of a real
/// checkpoint; `verify` then a model load must refuse every damaged one.
#[test]
fn checkpoints_and_hf_directories() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/parity/bert");
    let copy_fixture = |d: &Path| {
        for e in std::fs::read_dir(&fixture).unwrap() {
            let e = e.unwrap();
            if e.path().is_file() {
                std::fs::copy(e.path(), d.join(e.file_name())).unwrap();
            }
        }
    };
    let load =
        |d: &Path| grdr::model::hf::load::<grdr::model::BertModel>(d, grdr::model::LoadOptions::default()).map(drop);
    for file in ["config.json", "model.safetensors"] {
        let seed = std::fs::read(fixture.join(file)).unwrap();
        fuzz(&format!("HF {file}"), &seed, file, copy_fixture, load);
    }
    // A checkpoint written by the trainer's own writer.
    let src = tempfile::tempdir().unwrap();
    let ckpt = make_checkpoint(src.path());
    let copy_ckpt = |d: &Path| {
        for e in std::fs::read_dir(&ckpt).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), d.join(e.file_name())).unwrap();
        }
    };
    let verify = |d: &Path| grdr::train::checkpoint::verify(d).map(drop);
    for file in ["state.json", "model.safetensors", "optimizer.safetensors", "config.toml"] {
        let seed = std::fs::read(ckpt.join(file)).unwrap();
        fuzz(&format!("checkpoint {file}"), &seed, file, copy_ckpt, verify);
    }
}

/// A real checkpoint of a tiny dual encoder (one step of `grdr train`).
fn make_checkpoint(dir: &Path) -> PathBuf {
    let data = prepared();
    let cfg = dir.join("run.toml");
    std::fs::write(
        &cfg,
        format!(
            "[data]\npath = \"{}\"\nquery_max_len = 8\ndoc_max_len = 8\ntrain_split = \"test\"\n[model]\nkind = \"dual\"\ninit = \"scratch\"\n\
             arch = \"bert\"\ntokenizer = \"minilm\"\nd_model = 8\nnum_layers = 1\nnum_heads = 2\nd_ff = 8\n\
             [train]\nbatch_size = 1\nmax_steps = 1\nthreads = 1\n[eval]\nat_end = false\n\
             [log]\nprogress = false\n",
            data.display()
        ),
    )
    .unwrap();
    let run = dir.join("run");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_grdr"))
        .args(["-q", "train", "--config", cfg.to_str().unwrap(), "--output", run.to_str().unwrap()])
        .env("CI", "1")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    run.join("checkpoints/step-1")
}
