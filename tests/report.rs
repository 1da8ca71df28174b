//! `grdr report` on a sweep directory built by hand in the layout `grdr sweep` writes:
//! 2 families (dr, gr-atomic) × 3 numbers of negatives, one point still running. Checks
//! the Parquet and CSV tables value by value, the markdown table, the PNG/SVG plots, and
//! the errors (malformed files → exit 3 naming the file, not a sweep → exit 2).
mod common;

use std::fs;
use std::path::{Path, PathBuf};

use arrow_array::{Array, Float64Array, Int64Array, RecordBatch, StringArray};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::json;

use common::{grdr, grdr_ok, stderr};

const NEGATIVES: [i64; 3] = [4, 16, 64];
const FAMILIES: [(&str, &str); 2] = [("dr", "dual"), ("gr-atomic", "generative")];

/// nDCG@10 of a point: rises with negatives, GR above DR (any distinct values do).
fn ndcg(family: usize, negatives: i64) -> f64 {
    0.3 + 0.1 * family as f64 + 0.02 * (negatives as f64).log2()
}

/// DR's Brier score (calibration on): falls with the number of negatives.
fn brier(negatives: i64) -> f64 {
    0.9 - 0.05 * (negatives as f64).log2()
}

fn point_name(index: usize, negatives: i64) -> String {
    format!("p{index:02}-num_negatives={negatives}")
}

/// Writes SWEEPDIR; the last point (gr-atomic, 64 negatives) is still running: state
/// `running`, no eval, a metrics.jsonl whose last record is being written.
fn make_sweep(root: &Path) -> PathBuf {
    let sweep = root.join("sweep");
    let mut points = Vec::new();
    for (f, (family, kind)) in FAMILIES.iter().enumerate() {
        for (k, &neg) in NEGATIVES.iter().enumerate() {
            let index = f * NEGATIVES.len() + k;
            let name = point_name(index, neg);
            let dir = sweep.join("points").join(&name);
            let run = dir.join("run");
            fs::create_dir_all(run.join("eval")).unwrap();
            fs::write(dir.join("config.toml"), format!("[train]\nnum_negatives = {neg}\n")).unwrap();
            let running = index == 5;
            let state = if running { "running" } else { "done" };
            let st = json!({"state": state, "job_id": format!("{}_{index}", 1000), "attempts": 1 + (index == 1) as i64,
                            "exit_code": if running { json!(null) } else { json!(0) }, "updated": 1763900000});
            fs::write(dir.join("state.json"), serde_json::to_string_pretty(&st).unwrap()).unwrap();
            let mut log = String::new();
            for step in 1..=3u64 {
                let rec = json!({"step": step * 10, "epoch": step as f64 * 0.1, "loss": 3.0 - step as f64 * 0.5 - index as f64 * 0.01,
                    "last_loss": 2.0, "lr": 1e-4, "grad_norm": 1.0, "samples_per_s": 100.0 * step as f64,
                    "tokens_per_s": 5000.0, "rss_mib": 900.0});
                log.push_str(&format!("{rec}\n"));
            }
            if running {
                log.push_str("{\"step\": 40, \"lo");
            } else {
                let train = json!({"steps": 30, "resumed_at": 0, "world_size": 2, "global_batch": 64, "parameters": 1000 + f,
                                   "train_seconds": 60.0 + index as f64, "grdr_version": "0.1.0"});
                fs::write(run.join("train.json"), train.to_string()).unwrap();
                fs::write(run.join("world.json"), json!({"world_size": 2, "nodes": 1 + index % 2}).to_string())
                    .unwrap();
                let mut m = json!({"nDCG@10": ndcg(f, neg), "R@1": 0.2, "R@10": 0.5, "R@100": 0.7 + 0.01 * k as f64,
                    "R@1000": 0.9, "MRR@10": 0.4, "MAP": 0.35, "success@1": 0.3, "success@5": 0.6, "success@10": 0.7,
                    "queries": 300, "eval_seconds": 12.5});
                if *family == "dr" {
                    m["Brier"] = json!(brier(neg));
                    m["Brier_exact"] = json!(true);
                }
                if *family == "gr-atomic" {
                    m["memorization_R@1"] = json!(0.95);
                    m["memorization_docs"] = json!(1000);
                }
                fs::write(run.join("eval/metrics.json"), serde_json::to_string_pretty(&m).unwrap()).unwrap();
            }
            fs::write(run.join("metrics.jsonl"), log).unwrap();
            points.push(json!({"name": name, "index": index, "family": family, "ranks": 2,
                "values": {"model.kind": kind, "train.num_negatives": neg}, "dir": format!("points/{name}")}));
        }
    }
    let sweep_json = json!({"name": "negatives", "spec": "configs/sweeps/negatives.toml", "backend": "local",
                            "axes": ["model.kind", "train.num_negatives"], "points": points});
    fs::write(sweep.join("sweep.json"), serde_json::to_string_pretty(&sweep_json).unwrap()).unwrap();
    sweep
}

/// The strings of an SVG's `<text>` elements (plotters puts each on its own line).
fn svg_texts(svg: &str) -> Vec<String> {
    svg.split("<text").skip(1).filter_map(|t| Some(t[t.find('>')? + 1..t.find("</text>")?].trim().to_owned())).collect()
}

fn read_parquet(path: &Path) -> RecordBatch {
    let file = fs::File::open(path).unwrap();
    let reader = ParquetRecordBatchReaderBuilder::try_new(file).unwrap().build().unwrap();
    let batches: Vec<RecordBatch> = reader.map(Result::unwrap).collect();
    assert_eq!(batches.len(), 1);
    batches.into_iter().next().unwrap()
}

fn col<'a, T: 'static>(batch: &'a RecordBatch, name: &str) -> &'a T {
    batch.column_by_name(name).unwrap_or_else(|| panic!("column {name}")).as_any().downcast_ref::<T>().unwrap()
}

/// PNG signature and the IHDR width and height.
fn png_size(path: &Path) -> (u32, u32) {
    let bytes = fs::read(path).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{} is not a PNG", path.display());
    assert_eq!(&bytes[12..16], b"IHDR");
    let be = |b: &[u8]| u32::from_be_bytes(b.try_into().unwrap());
    (be(&bytes[16..20]), be(&bytes[20..24]))
}

#[test]
fn report_tables_and_plots() {
    let tmp = tempfile::tempdir().unwrap();
    let sweep = make_sweep(tmp.path());
    let out = grdr(&["report", sweep.to_str().unwrap(), "--metric", "memorization_R@1"]);
    assert!(out.status.success(), "grdr report failed: {}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("p05-num_negatives=64 (running)"), "one warning names the unfinished point: {err}");
    let report = sweep.join("report");

    // Parquet: one row per point, typed columns, nulls for the running point.
    let batch = read_parquet(&report.join("results.parquet"));
    assert_eq!(batch.num_rows(), 6);
    let names: Vec<String> = batch.schema().fields().iter().map(|f| f.name().clone()).collect();
    assert_eq!(&names[..6], ["point", "family", "model.kind", "train.num_negatives", "state", "attempts"]);
    for c in ["nDCG@10", "R@100", "MAP", "queries", "eval_seconds", "memorization_R@1", "steps", "world_size"] {
        assert!(names.iter().any(|n| n == c), "column {c} missing: {names:?}");
    }
    assert_eq!(
        &names[names.len() - 7..],
        ["parameters", "steps", "world_size", "nodes", "train_seconds", "final_loss", "samples_per_s"]
    );
    let params = col::<Int64Array>(&batch, "parameters");
    assert_eq!((params.value(0), params.value(3), params.is_null(5)), (1000, 1001, true), "from train.json");
    // Nodes from each run's world.json (null for the point still running).
    let nodes = col::<Int64Array>(&batch, "nodes");
    assert!((0..nodes.len()).any(|i| nodes.is_valid(i) && nodes.value(i) == 2), "{nodes:?}");
    let negs = col::<Int64Array>(&batch, "train.num_negatives");
    assert_eq!(negs.values().to_vec(), [4, 16, 64, 4, 16, 64]);
    let family = col::<StringArray>(&batch, "family");
    assert_eq!((family.value(0), family.value(5)), ("dr", "gr-atomic"));
    assert_eq!(col::<StringArray>(&batch, "model.kind").value(4), "generative");
    let state = col::<StringArray>(&batch, "state");
    assert_eq!((state.value(0), state.value(5)), ("done", "running"));
    assert_eq!(col::<Int64Array>(&batch, "attempts").value(1), 2);
    let nd = col::<Float64Array>(&batch, "nDCG@10");
    for (i, (f, n)) in [(0, 4), (0, 16), (0, 64), (1, 4), (1, 16)].into_iter().enumerate() {
        // serde_json (without `float_roundtrip`) may parse the last digit 1 ulp off.
        assert!((nd.value(i) - ndcg(f, n)).abs() < 1e-12, "row {i}: {} vs {}", nd.value(i), ndcg(f, n));
    }
    assert!(nd.is_null(5), "the running point has no metrics");
    assert_eq!(col::<Int64Array>(&batch, "queries").value(0), 300);
    let mem = col::<Float64Array>(&batch, "memorization_R@1");
    assert!(mem.is_null(0) && mem.value(3) == 0.95, "GR-only metric: null for DR");
    assert_eq!(col::<Int64Array>(&batch, "world_size").value(2), 2);
    let secs = col::<Float64Array>(&batch, "train_seconds");
    assert_eq!(secs.value(4), 64.0);
    assert!(secs.is_null(5));
    let loss = col::<Float64Array>(&batch, "final_loss");
    assert!((loss.value(1) - (1.5 - 0.01)).abs() < 1e-12, "last record's loss");
    assert!((loss.value(5) - (1.5 - 0.05)).abs() < 1e-12, "the half-written record is skipped");
    assert_eq!(col::<Float64Array>(&batch, "samples_per_s").value(0), 200.0);

    // CSV: same header and values (null = empty field).
    let csv = fs::read_to_string(report.join("results.csv")).unwrap();
    let lines: Vec<Vec<&str>> = csv.lines().map(|l| l.split(',').collect()).collect();
    assert_eq!(lines.len(), 7);
    assert_eq!(lines[0], names.iter().map(String::as_str).collect::<Vec<_>>());
    let at = |row: usize, name: &str| lines[row + 1][names.iter().position(|n| n == name).unwrap()];
    assert_eq!(at(2, "train.num_negatives"), "64");
    assert_eq!(at(3, "nDCG@10").parse::<f64>().unwrap(), nd.value(3));
    assert_eq!((at(5, "nDCG@10"), at(5, "state")), ("", "running"));

    // Markdown: axes, family, state, default + requested metrics, train seconds.
    let stdout = String::from_utf8_lossy(&out.stdout);
    let rows: Vec<&str> = stdout.lines().filter(|l| l.starts_with('|')).collect();
    assert_eq!(
        rows[0],
        "| kind | num_negatives | family | state | nDCG@10 | R@100 | Brier | memorization_R@1 | train s |"
    );
    assert_eq!(rows.len(), 8, "{stdout}");
    assert_eq!(rows[2], format!("| dual | 4 | dr | done | {:.4} | 0.7000 | {:.4} | - | 60.0 |", ndcg(0, 4), brier(4)));
    assert_eq!(rows[7], "| generative | 64 | gr-atomic | running | - | - | - | - | - |");
    assert!(stdout.contains("5 of 6 points done"), "{stdout}");

    // Plots: 4 metrics × 2 axes (model.kind is categorical), PNG + SVG each, and nDCG@10
    // with Brier on a second axis (the sweep computed it).
    for metric in ["nDCG@10", "R@100", "Brier", "memorization_R@1", "nDCG@10+Brier"] {
        for axis in ["num_negatives", "kind"] {
            let png = report.join(format!("{metric}-vs-{axis}.png"));
            assert_eq!(png_size(&png), (900, 600));
            assert!(fs::metadata(&png).unwrap().len() > 5_000, "a drawn plot, not a blank one");
        }
    }
    let svg = fs::read_to_string(report.join("nDCG@10-vs-num_negatives.svg")).unwrap();
    assert!(svg.starts_with("<svg"));
    let texts = svg_texts(&svg);
    for needle in ["dr", "gr-atomic", "train.num_negatives (log2 scale)", "nDCG@10", "4", "16", "64"] {
        assert!(texts.iter().any(|t| t == needle), "SVG lacks the text {needle:?}: {texts:?}");
    }
    // The twin figure: nDCG@10 on the left, Brier (dashed) on the right, one legend.
    let texts = svg_texts(&fs::read_to_string(report.join("nDCG@10+Brier-vs-num_negatives.svg")).unwrap());
    for needle in ["nDCG@10", "Brier (dashed)", "dr", "gr-atomic", "train.num_negatives (log2 scale)"] {
        assert!(texts.iter().any(|t| t == needle), "SVG lacks the text {needle:?}: {texts:?}");
    }
    // On categories no line is drawn: the right-hand metric is told by its hollow markers.
    let texts = svg_texts(&fs::read_to_string(report.join("nDCG@10+Brier-vs-kind.svg")).unwrap());
    assert!(texts.iter().any(|t| t == "Brier (hollow markers)"), "{texts:?}");
    // Against the categorical axis, the lines are (family, negatives) combinations.
    let texts = svg_texts(&fs::read_to_string(report.join("nDCG@10-vs-kind.svg")).unwrap());
    for needle in ["dr, num_negatives=16", "gr-atomic, num_negatives=4", "generative", "dual"] {
        assert!(texts.iter().any(|t| t == needle), "SVG lacks the text {needle:?}: {texts:?}");
    }
    let leftovers: Vec<_> = fs::read_dir(&report)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "temp files left: {leftovers:?}");

    // --output and --no-plots: tables only, elsewhere.
    let other = tmp.path().join("elsewhere");
    grdr_ok(&["report", sweep.to_str().unwrap(), "--output", other.to_str().unwrap(), "--no-plots"]);
    assert!(other.join("results.parquet").exists() && other.join("results.csv").exists());
    assert!(!fs::read_dir(&other).unwrap().flatten().any(|e| e.path().extension().is_some_and(|x| x == "png")));
}

fn expect_error(args: &[&str], code: i32, needles: &[&str]) {
    let out = grdr(args);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(code), "exit {code} expected: {err}");
    let line = err.lines().find(|l| l.starts_with("error:")).unwrap_or_default();
    for n in needles {
        assert!(line.contains(n), "error should mention {n:?}: {err}");
    }
}

#[test]
fn report_errors_name_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let sweep = make_sweep(tmp.path());
    let s = sweep.to_str().unwrap();

    expect_error(&["report", tmp.path().to_str().unwrap()], 2, &["is not a sweep directory (no sweep.json)"]);
    expect_error(&["report", s, "--metric", "nDGC@10"], 2, &["--metric", "nDGC@10", "nDCG@10"]);

    let log = sweep.join("points").join(point_name(1, 16)).join("run/metrics.jsonl");
    let text = fs::read_to_string(&log).unwrap();
    fs::write(&log, text.replacen("\"step\":20", "\"step\":20,,", 1)).unwrap();
    expect_error(&["report", s], 3, &["p01-num_negatives=16/run/metrics.jsonl:line 2", "`record`"]);
    fs::write(&log, text).unwrap();

    let metrics = sweep.join("points").join(point_name(2, 64)).join("run/eval/metrics.json");
    fs::write(&metrics, "{\"nDCG@10\": 0.5,\n \"R@100\": }\n").unwrap();
    expect_error(&["report", s], 3, &["p02-num_negatives=64/run/eval/metrics.json:line 2", "`metrics`"]);
    assert!(!sweep.join("report").exists(), "no report from a sweep with a malformed file");
}

/// A sweep whose axis `softmax` zips two keys (`[none, 50]`, `[full, 1]`), three seeds each;
/// `with_groups: false` writes sweep.json as versions before `axis_groups` did.
fn make_zipped_sweep(root: &Path, with_groups: bool) -> PathBuf {
    let sweep = root.join(if with_groups { "zipped" } else { "legacy" });
    let mut points = Vec::new();
    for (z, (bank, refresh)) in [("none", 50), ("full", 1)].into_iter().enumerate() {
        for seed in 1..=3i64 {
            let index = z * 3 + seed as usize - 1;
            let name = format!("p{index:02}-softmax={bank}-seed={seed}");
            let run = sweep.join("points").join(&name).join("run");
            fs::create_dir_all(run.join("eval")).unwrap();
            let st = json!({"state": "done", "job_id": null, "attempts": 1, "exit_code": 0, "updated": 1763900000});
            fs::write(run.parent().unwrap().join("state.json"), st.to_string()).unwrap();
            let m = json!({"nDCG@10": 0.8 + 0.01 * z as f64 + 0.001 * seed as f64, "R@100": 0.9, "Brier": 0.3 + 0.3 * z as f64});
            fs::write(run.join("eval/metrics.json"), m.to_string()).unwrap();
            points.push(
                json!({"name": name, "index": index, "family": "dr", "ranks": 2, "dir": format!("points/{name}"),
                "values": {"train.negative_bank": bank, "train.bank_refresh_steps": refresh, "train.seed": seed}}),
            );
        }
    }
    let mut sweep_json = json!({"name": "softmax", "spec": "configs/sweeps/softmax.toml", "backend": "local",
        "axes": ["train.negative_bank", "train.bank_refresh_steps", "train.seed"], "points": points});
    if with_groups {
        sweep_json["axis_groups"] = json!([
            {"label": "softmax", "keys": ["train.negative_bank", "train.bank_refresh_steps"]},
            {"label": "seed", "keys": ["train.seed"]}]);
    }
    fs::write(sweep.join("sweep.json"), serde_json::to_string_pretty(&sweep_json).unwrap()).unwrap();
    sweep
}

fn pngs(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".png"))
        .collect();
    names.sort();
    names
}

#[test]
fn a_zipped_axis_is_one_x_axis_named_by_its_label() {
    let tmp = tempfile::tempdir().unwrap();
    let sweep = make_zipped_sweep(tmp.path(), true);
    grdr_ok(&["report", sweep.to_str().unwrap()]);
    let report = sweep.join("report");
    assert_eq!(
        pngs(&report),
        ["Brier-vs-softmax.png", "R@100-vs-softmax.png", "nDCG@10+Brier-vs-softmax.png", "nDCG@10-vs-softmax.png"],
        "one x axis for the zipped keys, none for the key that moves with the first"
    );
    let texts = svg_texts(&fs::read_to_string(report.join("nDCG@10-vs-softmax.svg")).unwrap());
    let legend: Vec<&String> = texts.iter().filter(|t| t.starts_with("dr")).collect();
    assert_eq!(legend, ["dr"], "one line through both values, not one per refresh interval: {texts:?}");
    for needle in ["softmax: train.negative_bank (zipped with bank_refresh_steps)", "none", "full"] {
        assert!(texts.iter().any(|t| t == needle), "SVG lacks the text {needle:?}: {texts:?}");
    }

    // A sweep.json without groups: every key is its own axis, as before.
    let legacy = make_zipped_sweep(tmp.path(), false);
    grdr_ok(&["report", legacy.to_str().unwrap(), "--metric", "nDCG@10"]);
    let names = pngs(&legacy.join("report"));
    assert!(names.contains(&"nDCG@10-vs-negative_bank.png".to_owned()), "{names:?}");
    assert!(names.contains(&"nDCG@10-vs-bank_refresh_steps.png".to_owned()), "{names:?}");
}
