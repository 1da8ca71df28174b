//! `grdr sweep` without a cluster: every shipped preset expands and validates (counts,
//! names, resolved configs), bad sweep files are refused naming the file and the key, and
//! the local backend runs a one-point sweep end to end — stopped by SIGTERM and resumed
//! from its checkpoint — then a re-run skips it and a changed config is refused by point name.
mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use common::*;
use grdr::config::ModelKind;
use grdr::sweep::resolve::resolve_all;
use grdr::sweep::spec::SweepSpec;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// SciFact prepared once per test binary.
fn scifact() -> &'static Path {
    static DIR: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let out = prepare_scifact(dir.path(), None);
        (dir, out)
    })
    .1
}

fn data_set() -> String {
    format!("data.path={}", scifact().display())
}

#[test]
fn shipped_presets_expand_into_valid_configs() {
    let out = Path::new("/nonexistent/sweepdir");
    let expected = [
        ("negatives-dr-scifact.toml", 12),
        ("negatives-bank-dr-scifact.toml", 9),
        ("full-softmax-dr-scifact.toml", 9),
        ("dim-dr-scifact.toml", 9),
        ("corpus-size-dr-vs-gr-scifact.toml", 24),
        ("model-size-dr-vs-gr-scifact.toml", 18),
        ("tiny-test.toml", 2),
    ];
    let mut seen = 0;
    for e in std::fs::read_dir(repo().join("configs/sweeps")).unwrap() {
        let path = e.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        let spec = SweepSpec::load(&path).unwrap();
        let points = resolve_all(&spec, &[data_set()], out, repo()).unwrap_or_else(|e| panic!("{name}: {e}"));
        let want = expected.iter().find(|(n, _)| *n == name).unwrap_or_else(|| panic!("{name}: add it here")).1;
        assert_eq!(points.len(), want, "{name}");
        seen += 1;
        for p in &points {
            p.config.validate().unwrap();
            assert!(p.config.data.path.is_absolute(), "{name}: {}", p.config.data.path.display());
        }
        match name.as_str() {
            "negatives-dr-scifact.toml" => {
                assert_eq!(points[5].name(), "p05-num_negatives=3-seed=3");
                assert_eq!(points[5].config.train.num_negatives, Some(3));
                assert_eq!(points[5].config.train.seed, 3);
                assert!(points[5].config.eval.calibration, "Brier at every point");
                assert_eq!(points[5].config.train.batch_size, 16, "the base's value");
                assert_eq!(points[5].config.data.path, scifact());
                assert_eq!((points[5].family.as_str(), points[5].ranks), ("dr", Some(2)));
            }
            "negatives-bank-dr-scifact.toml" => {
                // The last K is every other document of SciFact: the full softmax.
                let last = &points[8].config;
                assert_eq!(last.train.negative_bank, grdr::config::NegativeBank::Sampled);
                assert_eq!((last.train.num_negatives, last.data.hard_negatives), (Some(5182), 0));
            }
            "full-softmax-dr-scifact.toml" => {
                // In-batch against the full softmax: a bank re-encoded every step, and every
                // document encoded with gradient at every step (through GradCache's chunks).
                let full = &points[3].config.train;
                assert_eq!(points[3].name(), "p03-corpus_docs=667-softmax=full-seed=1");
                assert_eq!((full.negative_bank, full.bank_refresh_steps), (grdr::config::NegativeBank::Full, 1));
                assert_eq!(points[0].config.train.negative_bank, grdr::config::NegativeBank::None);
                let corpus = &points[6].config.train;
                assert_eq!(points[6].name(), "p06-corpus_docs=667-softmax=corpus-seed=1");
                assert_eq!(
                    (corpus.negative_bank, corpus.grad_cache_chunk),
                    (grdr::config::NegativeBank::Corpus, Some(32))
                );
            }
            "model-size-dr-vs-gr-scifact.toml" => {
                // DR and GR at the same sizes, seed by seed: points 0..9 DR, 9..18 GR.
                for (dr, gr) in points[..9].iter().zip(&points[9..]) {
                    assert_eq!((dr.config.model.kind, gr.config.model.kind), (ModelKind::Dual, ModelKind::Generative));
                    let shape = |p: &grdr::sweep::resolve::ResolvedPoint| {
                        let m = &p.config.model;
                        (m.d_model, m.num_layers, m.num_heads, m.d_ff, m.tokenizer.clone(), p.config.train.seed)
                    };
                    assert_eq!(shape(dr), shape(gr));
                    assert_eq!(dr.config.data.query_max_len, gr.config.data.query_max_len);
                }
                assert_eq!(points[4].name(), "p04-base=dr-t5-scratch-scifact-d_model=128-seed=2");
                assert_eq!(points[4].config.model.d_model, 128);
                assert_eq!((points[4].config.train.epochs, points[13].config.train.epochs), (20.0, 4.0), "CPU budgets");
                assert!(points.iter().all(|p| p.config.eval.calibration), "Brier at every point");
            }
            "corpus-size-dr-vs-gr-scifact.toml" => {
                assert_eq!(points[0].name(), "p00-base=dr-minilm-scifact-corpus_docs=667-seed=1");
                assert_eq!(points[0].config.data.path, out.join("data/docs-667"));
                assert_eq!((points[0].config.train.epochs, points[12].config.train.epochs), (1.0, 4.0), "CPU budgets");
                assert!(points.iter().all(|p| p.config.eval.calibration), "Brier at every point");
                let gr = &points[12];
                assert_eq!(gr.config.model.kind, ModelKind::Generative);
                assert_eq!(gr.config.data.path, out.join("data/docs-667"), "DR and GR share the sample");
                assert_eq!(
                    gr.config.docids.path.as_deref(),
                    Some(out.join("data/docs-667/docids-atomic.parquet").as_path())
                );
                assert!(gr.family.starts_with("gr"), "{}", gr.family);
            }
            "tiny-test.toml" => {
                assert_eq!(points[1].name(), "p01-corpus_docs=1000");
                assert_eq!(points[1].config.model.d_model, 32);
                assert_eq!(points[1].corpus.as_ref().unwrap().docs, 1000);
            }
            _ => {}
        }
    }
    assert_eq!(seen, expected.len());

    // The binary's dry run prints the plan and writes nothing.
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("sw");
    let o = grdr_ok(&[
        "sweep",
        "configs/sweeps/negatives-dr-scifact.toml",
        "--dry-run",
        "--set",
        &data_set(),
        "--output",
        target.to_str().unwrap(),
    ]);
    assert!(o.contains("12 point(s)") && o.contains("p11-num_negatives=63-seed=3") && o.contains("grdr-launch"), "{o}");
    assert!(!target.exists());
}

fn write_spec(dir: &Path, body: &str) -> PathBuf {
    let base = repo().join("configs/runs/dr-minilm-scifact.toml");
    let path = dir.join("sweep.toml");
    std::fs::write(&path, format!("base = \"{}\"\n{body}", base.display())).unwrap();
    path
}

#[test]
fn bad_sweep_files_name_the_file_and_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let cases = [
        ("bogus = 1\n", vec!["bogus"]),
        ("[[axis]]\nkey = \"train.bogus\"\nvalues = [1, 2]\n", vec!["train.bogus", "bogus"]),
        ("[[axis]]\nkey = \"trian.lr\"\nvalues = [1e-3]\n", vec!["trian.lr"]),
        ("[[axis]]\nkey = \"train.num_negatives\"\nvalues = []\n", vec!["train.num_negatives", "empty"]),
        ("[[axis]]\nkey = \"train.batch_size\"\nvalues = [0, 8]\n", vec!["train.batch_size"]),
        ("[[axis]]\nkey = \"data.corpus_docs\"\nvalues = [999999]\n", vec!["data.corpus_docs", "5183"]),
    ];
    for (body, needles) in cases {
        let spec = write_spec(dir.path(), body);
        let o = grdr(&["sweep", spec.to_str().unwrap(), "--set", &data_set(), "--output", out.to_str().unwrap()]);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{body:?}: {err}");
        assert!(err.contains(spec.to_str().unwrap()), "{body:?}: the error names the sweep file: {err}");
        for n in needles {
            assert!(err.contains(n), "{body:?}: `{n}` missing from: {err}");
        }
        assert!(!out.exists(), "{body:?}: nothing written");
    }
}

fn tiny() -> String {
    format!(
        "{TINY_DUAL_SWEEP_SET}train.max_steps = 40\ntrain.lr = 1e-3\nlog.interval = 1\neval.calibration = true\n{}",
        r#"
[[axis]]
key = "data.corpus_docs"
values = [700]
"#
    )
}

#[test]
fn local_backend_resumes_skips_finished_points_and_refuses_changed_ones() {
    let dir = tempfile::tempdir().unwrap();
    let spec = write_spec(dir.path(), &format!("name = \"local-one\"\nranks = 1\n{}", tiny()));
    let out = dir.path().join("sw");
    let args = ["sweep", spec.to_str().unwrap(), "--set", &data_set(), "--output", out.to_str().unwrap()];
    let name = "p00-corpus_docs=700";
    let point = out.join("points").join(name);
    let read = |p: &Path| -> serde_json::Value { serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap() };
    let t0 = std::time::Instant::now();

    // SIGTERM to `grdr sweep` mid-training: the point checkpoints and is left preempted.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_grdr"))
        .args(args)
        .env("CI", "true")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let steps = || std::fs::read_to_string(point.join("run/metrics.jsonl")).map(|s| s.lines().count()).unwrap_or(0);
    while steps() < 3 {
        assert!(t0.elapsed().as_secs() < 120, "no training progress");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("run the same `grdr sweep` again to resume"), "{err}");
    let state = read(&point.join("state.json"));
    assert_eq!((state["state"].as_str(), state["exit_code"].as_i64()), (Some("preempted"), Some(75)), "{err}");
    assert!(!grdr::train::checkpoint::list(&point.join("run")).is_empty(), "a checkpoint on SIGTERM");

    // Again: the point resumes from its checkpoint and finishes.
    let stdout = grdr_ok(&args);
    eprintln!("local sweep: {:.1}s", t0.elapsed().as_secs_f64());
    let train = read(&point.join("run/train.json"));
    assert!(train["resumed_at"].as_u64().unwrap() > 0, "{train}");

    let manifest = read(&out.join("sweep.json"));
    assert_eq!(manifest["name"], "local-one");
    assert_eq!(manifest["backend"], "local");
    assert_eq!(manifest["axes"], serde_json::json!(["data.corpus_docs"]));
    let p = &manifest["points"][0];
    assert_eq!((p["name"].as_str(), p["index"].as_u64(), p["family"].as_str()), (Some(name), Some(0), Some("dr")));
    assert_eq!((p["ranks"].as_u64(), p["dir"].as_str()), (Some(1), Some(format!("points/{name}").as_str())));
    assert_eq!(p["values"], serde_json::json!({"data.corpus_docs": 700}));
    assert_eq!(std::fs::read_to_string(out.join("sweep.toml")).unwrap(), std::fs::read_to_string(&spec).unwrap());

    let state = read(&point.join("state.json"));
    assert_eq!(
        (state["state"].as_str(), state["attempts"].as_u64(), state["exit_code"].as_i64()),
        (Some("done"), Some(2), Some(0))
    );
    assert!(point.join("run/eval/metrics.json").exists());
    let config = grdr::config::RunConfig::load(&point.join("config.toml"), &[]).unwrap();
    assert_eq!(config.data.path, out.join("data/docs-700"));
    let sample = grdr::data::Dataset::open(&out.join("data/docs-700")).unwrap();
    assert_eq!(sample.manifest.docs, 700);
    // The sample changes the corpus only: every judged document of SciFact is inside, and
    // its queries and judgements are SciFact's, unchanged.
    let full = grdr::data::Dataset::open(scifact()).unwrap();
    let qrels = full.qrels(None).unwrap();
    assert_eq!(sample.qrels(None).unwrap(), qrels);
    assert_eq!(sample.queries().unwrap(), full.queries().unwrap());
    assert_eq!(sample.manifest.splits, full.manifest.splits);
    let inside: std::collections::HashSet<String> = sample.docs().unwrap().into_iter().map(|d| d.doc_id).collect();
    let judged: std::collections::HashSet<&str> = qrels.iter().map(|q| q.doc_id.as_str()).collect();
    assert!(judged.iter().all(|d| inside.contains(*d)), "a judged document left the sample");
    assert_eq!(judged.len(), 667, "SciFact's judged documents (train + test qrels)");
    assert!(stdout.contains(name) && stdout.contains("done"), "{stdout}");

    // The point's Brier (end-of-run evaluation, `eval.calibration`) is what `grdr eval
    // --calibration` computes from the same run.
    let point_metrics = read(&point.join("run/eval/metrics.json"));
    let again = dir.path().join("eval-again");
    grdr_ok(&[
        "eval",
        "--run",
        point.join("run").to_str().unwrap(),
        "--calibration",
        "--output",
        again.to_str().unwrap(),
    ]);
    let eval_metrics = read(&again.join("metrics.json"));
    let (a, b) = (point_metrics["Brier"].as_f64().unwrap(), eval_metrics["Brier"].as_f64().unwrap());
    assert!((a - b).abs() <= 1e-9 * b.abs().max(1.0), "sweep point Brier {a} vs grdr eval {b}");
    assert!((0.0..=2.0).contains(&a), "{a}");
    assert_eq!(point_metrics["Brier_exact"], true, "DR normalises over the whole corpus");
    for k in ["gap@16", "gap@64", "gap@256", "gap@1024"] {
        assert_eq!(point_metrics[k], eval_metrics[k], "{k}");
    }
    assert!(read(&point.join("run/train.json"))["parameters"].as_u64().unwrap() > 0, "parameters counted");
    if out.join("report").exists() {
        assert!(out.join("report/results.parquet").exists());
    }

    // Once more: nothing to do, the point keeps its attempts.
    let o = grdr(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("done, skipped"), "{}", stderr(&o));
    assert_eq!(read(&point.join("state.json"))["attempts"], 2);

    // A changed config is refused by point and key; the run is kept.
    let changed = [&args[..], &["--set", "train.lr=0.002"]].concat();
    let o = grdr(&changed);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains(name) && err.contains("train.lr") && err.contains("--overwrite"), "{err}");
    assert!(point.join("run/eval/metrics.json").exists());
    // A dry run predicts the real one: refused the same way; with --overwrite, the point
    // would restart (not "done, skipped"), and nothing is written.
    let o = grdr(&[&changed[..], &["--dry-run"]].concat());
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("train.lr"), "{}", stderr(&o));
    let o = grdr(&[&changed[..], &["--dry-run", "--overwrite"]].concat());
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("would restart") && !stderr(&o).contains("done, skipped"), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains(" train "), "the plan shows the command");
    assert!(point.join("run/eval/metrics.json").exists(), "a dry run changes nothing");

    let table = grdr_ok(&["sweep", "status", out.to_str().unwrap()]);
    assert!(table.contains(name) && table.contains("| done") && table.contains("corpus_docs=700"), "{table}");
}
