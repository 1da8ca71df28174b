//! Metrics parity: grdr's evaluator against pytrec_eval
//! (`scripts/pytrec_reference.py`, run with the reference venv) on runs built over the
//! real SciFact qrels and corpus ids, every mean and every per-query value to 1e-6.
//!
//! The runs are synthetic but adversarial: relevant documents scattered from rank 1 to
//! past 1000, scores quantised so ties cross relevant/non-relevant documents (the
//! doc-id tie-break decides ranks), judged queries missing from the run, runs without
//! any relevant document, graded 0/1/2 qrels in TREC format, lists shorter than 10.
//! The reference venv is required: without it these tests fail, they never skip.
mod common;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use grdr::eval::{evaluate, evaluate_files, read_qrels, read_run, write_run, Qrels, Run, MEASURES};

const TOLERANCE: f64 = 1e-6;

/// SplitMix64: a fixed-seed generator, so every run of the test builds the same files.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1) with 53 random bits.
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }
}

fn scifact() -> PathBuf {
    common::scifact_dir()
}

fn corpus_ids() -> &'static [String] {
    static IDS: OnceLock<Vec<String>> = OnceLock::new();
    IDS.get_or_init(|| {
        let path = scifact().join("corpus.jsonl");
        let text = std::fs::read_to_string(&path).expect("read corpus.jsonl");
        text.lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).expect("corpus line is JSON");
                v["_id"].as_str().expect("corpus `_id`").to_owned()
            })
            .collect()
    })
}

/// How a synthetic run is made (one per scenario).
#[derive(Clone, Copy)]
struct Recipe {
    seed: u64,
    /// Each score is floored to one of this many levels (ties), or left exact.
    levels: Option<f64>,
    /// Probability that a judged query is left out of the run entirely.
    drop_query: f64,
    /// Probability that a query retrieves none of its relevant documents.
    no_relevant: f64,
    /// Probability that a query gets a short list (1–30 documents).
    short_list: f64,
    /// Number of extra queries that have no judgements (must be ignored).
    unjudged_queries: usize,
    /// Probability that a doc's score is its predecessor's plus < 1e-9: distinct in
    /// f64, equal in the f32 that pytrec_eval's trec_eval compares.
    near_tie: f64,
}

/// For each judged query: ~900–1200 random corpus docs, plus its judged docs with scores
/// skewed high (so they land anywhere from rank 1 to past 1000), in shuffled file order.
fn build_run(qrels: &Qrels, r: Recipe) -> Run {
    let ids = corpus_ids();
    let mut rng = Rng(r.seed);
    let mut run = Run::new();
    let mut queries: Vec<String> = qrels.keys().cloned().collect();
    queries.extend((0..r.unjudged_queries).map(|i| format!("unjudged-{i}")));
    for qid in queries {
        if qrels.contains_key(&qid) && rng.chance(r.drop_query) {
            continue;
        }
        let n = if rng.chance(r.short_list) { 1 + rng.below(30) } else { 900 + rng.below(300) };
        let levels = r.levels.map(|l| if rng.chance(0.3) { 3.0 } else { l });
        let score = |rng: &mut Rng, boost: f64| {
            let s = rng.unit().powf(boost);
            levels.map_or(s, |l| (s * l).floor() / l)
        };
        let mut seen = HashSet::new();
        let mut docs = Vec::new();
        let judged = qrels.get(&qid);
        if let Some(judged) = judged.filter(|_| !rng.chance(r.no_relevant)) {
            let mut judged: Vec<_> = judged.iter().collect();
            judged.sort();
            for (doc, &rel) in judged {
                if rng.chance(0.9) {
                    let boost = if rel > 0 { [0.01, 0.1, 1.0][rng.below(3)] } else { 0.5 };
                    let s = score(&mut rng, boost);
                    seen.insert(doc.clone());
                    docs.push((doc.clone(), s));
                }
            }
        }
        let relevant: HashSet<&String> =
            judged.map(|j| j.iter().filter(|(_, &r)| r > 0).map(|(d, _)| d).collect()).unwrap_or_default();
        while docs.len() < n {
            let doc = &ids[rng.below(ids.len())];
            // Filler is never relevant: which relevant docs appear is the recipe's choice.
            if !relevant.contains(doc) && seen.insert(doc.clone()) {
                docs.push((doc.clone(), score(&mut rng, 1.0)));
            }
        }
        for i in (1..docs.len()).rev() {
            docs.swap(i, rng.below(i + 1));
        }
        for i in 1..docs.len() {
            if rng.chance(r.near_tie) {
                docs[i].1 = docs[i - 1].1 + 1e-9 * rng.unit();
            }
        }
        run.insert(qid, docs);
    }
    run
}

/// SciFact test qrels made graded (TREC format, 0/1/2): relevant docs become 1 or 2,
/// extra random judgements of 0/1/2 are added, and some queries judge nothing relevant.
fn graded_qrels(base: &Qrels, seed: u64) -> Qrels {
    let ids = corpus_ids();
    let mut rng = Rng(seed);
    let mut out = Qrels::new();
    for (qid, judged) in base {
        let all_zero = rng.chance(0.1);
        let mut g = std::collections::HashMap::new();
        for doc in judged.keys() {
            g.insert(doc.clone(), if all_zero { 0 } else { 1 + rng.below(2) as i32 });
        }
        for _ in 0..rng.below(6) {
            let rel = if all_zero { 0 } else { rng.below(3) as i32 };
            g.entry(ids[rng.below(ids.len())].clone()).or_insert(rel);
        }
        out.insert(qid.clone(), g);
    }
    out
}

fn write_trec_qrels(path: &Path, qrels: &Qrels) {
    let mut text = String::new();
    for (qid, judged) in qrels {
        let mut docs: Vec<_> = judged.iter().collect();
        docs.sort();
        for (doc, rel) in docs {
            text.push_str(&format!("{qid} 0 {doc} {rel}\n"));
        }
    }
    std::fs::write(path, text).expect("write qrels");
}

/// The reference's output for (`qrels`, `run`): (means incl. "queries", per-query values).
type Reference = (serde_json::Map<String, serde_json::Value>, BTreeMap<String, BTreeMap<String, f64>>);

fn pytrec_reference(qrels: &Path, run: &Path) -> Reference {
    let python = grdr::assets::reference_python()
        .unwrap_or_else(|e| panic!("metrics parity needs the reference venv (launcher/setup --reference): {e}"));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/pytrec_reference.py");
    let out = Command::new(&python)
        .arg(&script)
        .arg("--qrels")
        .arg(qrels)
        .arg("--run")
        .arg(run)
        .output()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", python.display()));
    assert!(
        out.status.success(),
        "{} {} failed ({}); is pytrec_eval installed in the reference venv \
         (launcher/setup --reference)?\n{}",
        python.display(),
        script.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("reference prints JSON");
    let mean = v["mean"].as_object().expect("`mean` object").clone();
    let per_query = serde_json::from_value(v["per_query"].clone()).expect("`per_query` map");
    (mean, per_query)
}

/// Scores `run` with grdr (through the files, as `grdr eval-run` does) and with
/// pytrec_eval, asserts agreement, and returns (queries compared, max abs difference).
fn check_parity(name: &str, qrels_path: &Path, run: &Run, dir: &Path) -> (usize, f64) {
    let run_path = dir.join(format!("{name}.trec"));
    write_run(&run_path, run, "parity").expect("write run");
    let started = std::time::Instant::now();
    let ours = evaluate_files(qrels_path, &run_path).expect("grdr evaluates");
    let elapsed = started.elapsed();
    let qrels = read_qrels(qrels_path).expect("read qrels");
    let started = std::time::Instant::now();
    let in_memory = evaluate(&qrels, run);
    let eval_only = started.elapsed();
    assert_eq!(ours, in_memory, "{name}: the run file must read back exactly");
    let (mean, per_query) = pytrec_reference(qrels_path, &run_path);

    let mut max_diff = 0.0f64;
    let mut mismatches = Vec::new();
    assert_eq!(
        ours.per_query.keys().collect::<Vec<_>>(),
        per_query.keys().collect::<Vec<_>>(),
        "{name}: query sets differ"
    );
    for (qid, theirs) in &per_query {
        for m in MEASURES {
            let (a, b) = (ours.per_query[qid][m], theirs[m]);
            max_diff = max_diff.max((a - b).abs());
            if (a - b).abs() > TOLERANCE {
                mismatches.push(format!("{qid} {m}: grdr {a} pytrec_eval {b}"));
            }
        }
    }
    for m in MEASURES {
        let (a, b) = (ours.mean[m], mean[m].as_f64().expect("mean value"));
        max_diff = max_diff.max((a - b).abs());
        if (a - b).abs() > TOLERANCE {
            mismatches.push(format!("mean {m}: grdr {a} pytrec_eval {b}"));
        }
    }
    assert_eq!(mean["queries"], ours.queries, "{name}: query count");
    assert!(
        mismatches.is_empty(),
        "{name}: {} values differ by more than {TOLERANCE}:\n{}",
        mismatches.len(),
        mismatches.iter().take(20).cloned().collect::<Vec<_>>().join("\n")
    );
    eprintln!(
        "{name}: {} queries ({} missing from run), {} run lines, max |diff| {max_diff:e}, \
         grdr {elapsed:?} from files, {eval_only:?} in memory; means {}",
        ours.queries,
        ours.missing_from_run,
        run.values().map(Vec::len).sum::<usize>(),
        ours.to_json()
    );
    (ours.queries, max_diff)
}

/// How many judged queries change on any measure when `run` is ordered by `order`
/// instead of trec_eval's rule (the scores are replaced by distinct rank scores).
fn queries_changed_by(
    qrels: &Qrels,
    run: &Run,
    order: impl Fn(&(String, f64), &(String, f64)) -> std::cmp::Ordering,
) -> usize {
    let reordered: Run = run
        .iter()
        .map(|(q, docs)| {
            let mut docs = docs.clone();
            docs.sort_by(&order);
            let n = docs.len();
            (q.clone(), docs.into_iter().enumerate().map(|(i, (d, _))| (d, (n - i) as f64)).collect())
        })
        .collect();
    let (ours, other) = (evaluate(qrels, run), evaluate(qrels, &reordered));
    qrels.keys().filter(|q| ours.per_query[*q] != other.per_query[*q]).count()
}

const BASE: Recipe = Recipe {
    seed: 0,
    levels: None,
    drop_query: 0.0,
    no_relevant: 0.0,
    short_list: 0.0,
    unjudged_queries: 0,
    near_tie: 0.0,
};

fn split(name: &str) -> (PathBuf, Qrels) {
    let path = scifact().join("qrels").join(format!("{name}.tsv"));
    let qrels = read_qrels(&path).expect("read SciFact qrels");
    (path, qrels)
}

#[test]
fn noisy_runs_match_pytrec_eval() {
    let dir = tempfile::tempdir().unwrap();
    for (i, name) in ["test", "train"].into_iter().enumerate() {
        let (path, qrels) = split(name);
        let run = build_run(&qrels, Recipe { seed: 11 + i as u64, near_tie: 0.05, ..BASE });
        check_parity(&format!("noisy-{name}"), &path, &run, dir.path());

        // Ordering by the f64 scores (instead of pytrec_eval's f32) must matter somewhere,
        // or the near ties would not be testing anything.
        let changed = queries_changed_by(&qrels, &run, |a, b| b.1.total_cmp(&a.1).then_with(|| b.0.cmp(&a.0)));
        eprintln!("noisy-{name}: f64 instead of f32 score comparison changes {changed} queries");
        assert!(changed >= 1, "noisy-{name}: no query depends on f32 near ties");
    }
}

#[test]
fn tied_runs_match_pytrec_eval_and_ties_matter() {
    let dir = tempfile::tempdir().unwrap();
    for (i, name) in ["test", "train"].into_iter().enumerate() {
        let (path, qrels) = split(name);
        let run = build_run(&qrels, Recipe { seed: 21 + i as u64, levels: Some(20.0), ..BASE });
        check_parity(&format!("tied-{name}"), &path, &run, dir.path());

        // Ties broken by ascending doc id must score differently on some queries, or
        // this scenario would not be testing the tie-break at all.
        let changed = queries_changed_by(&qrels, &run, |a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        eprintln!("tied-{name}: ascending doc-id tie-break changes {changed} queries");
        assert!(changed >= 5, "tied-{name}: only {changed} queries depend on the tie-break");
    }
}

#[test]
fn partial_runs_match_pytrec_eval() {
    let dir = tempfile::tempdir().unwrap();
    let (path, qrels) = split("train");
    let recipe = Recipe {
        seed: 31,
        levels: Some(50.0),
        drop_query: 0.15,
        no_relevant: 0.2,
        short_list: 0.2,
        unjudged_queries: 25,
        near_tie: 0.02,
    };
    let run = build_run(&qrels, recipe);
    let ours = evaluate(&qrels, &run);
    assert!(ours.missing_from_run > 50 && ours.unjudged_in_run == 25);
    check_parity("partial-train", &path, &run, dir.path());
}

#[test]
fn graded_trec_qrels_match_pytrec_eval() {
    let dir = tempfile::tempdir().unwrap();
    let (_, base) = split("test");
    let graded = graded_qrels(&base, 41);
    let path = dir.path().join("graded.qrels");
    write_trec_qrels(&path, &graded);
    assert_eq!(read_qrels(&path).expect("read graded qrels"), graded);
    let recipe = Recipe { seed: 42, levels: Some(20.0), drop_query: 0.05, short_list: 0.1, ..BASE };
    let run = build_run(&graded, recipe);
    check_parity("graded-test", &path, &run, dir.path());
}

#[test]
fn malformed_files_are_refused_with_file_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    type Reader = fn(&Path) -> grdr::Result<()>;
    let qrels: Reader = |p| read_qrels(p).map(drop);
    let run: Reader = |p| read_run(p).map(drop);
    let beir = "query-id\tcorpus-id\tscore\r\n";
    let cases: Vec<(&str, Reader, String, &str)> = vec![
        ("empty.tsv", qrels, String::new(), "empty file"),
        ("header.tsv", qrels, "qid\tdoc\tscore\r\n1\td\t1\r\n".into(), ":line 1: field `header`"),
        ("cols.tsv", qrels, format!("{beir}1\td\t1\r\n2\td\r\n"), ":line 3: field `columns`"),
        ("rel.tsv", qrels, format!("{beir}1\td\t1\r\n1\te\thigh\r\n"), ":line 3: field `score`"),
        ("dup.tsv", qrels, format!("{beir}1\td\t1\r\n1\td\t0\r\n"), ":line 3: field `corpus-id`"),
        ("trec.qrels", qrels, "1 0 d 1\n1 0 e one\n".into(), ":line 2: field `rel`"),
        ("empty.trec", run, String::new(), "empty file"),
        ("cols.trec", run, "1 Q0 d 1 0.5 t\n1 Q0 e 2 0.4\n".into(), ":line 2: field `columns`"),
        ("score.trec", run, "1 Q0 d 1 0.5 t\n1 Q0 e 2 x t\n".into(), ":line 2: field `score`"),
        ("rank.trec", run, "1 Q0 d first 0.5 t\n".into(), ":line 1: field `rank`"),
        ("dup.trec", run, "1 Q0 d 1 0.5 t\n1 Q0 d 2 0.4 t\n".into(), ":line 2: field `docno`"),
    ];
    for (file, read, text, expected) in cases {
        let path = dir.path().join(file);
        std::fs::write(&path, text).unwrap();
        let msg = read(&path).expect_err(file).to_string();
        assert!(msg.contains(&path.display().to_string()), "{file}: no path in `{msg}`");
        assert!(msg.contains(expected), "{file}: expected `{expected}` in `{msg}`");
    }
    let bad_utf8 = dir.path().join("utf8.trec");
    std::fs::write(&bad_utf8, b"1 Q0 d 1 0.5 t\n1 Q0 \xc3\x28 2 0.4 t\n").unwrap();
    let msg = read_run(&bad_utf8).unwrap_err().to_string();
    assert!(msg.contains("utf8.trec:line 2: field `encoding`"), "{msg}");
}
