//! TensorBoard event files, read by TensorBoard's own reader (`scripts/tb_reference.py` in
//! the reference venv): a 2-rank tiny run killed after step 4 and resumed from its step-3
//! checkpoint holds every scalar of `metrics.jsonl` once, at its step, equal to the f32 of
//! the logged value; the end-of-run evaluation as `eval/*` at the last step; the resolved
//! config as text. `log.tensorboard = false` writes no `tb/`.
mod train_common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use serde_json::Value;
use train_common::*;

/// `scripts/tb_reference.py DIR` → its JSON (scalars in file order, duplicates kept).
fn read_tensorboard(dir: &Path) -> Value {
    let py = grdr::assets::reference_python().expect("reference python (run launcher/setup --reference)");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/tb_reference.py");
    let out = Command::new(py).arg(script).arg(dir).output().unwrap();
    assert!(out.status.success(), "tb_reference.py: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// tag → [(step, value)] of the scalars TensorBoard read (TensorBoard stores f32).
fn scalars(tb: &Value) -> BTreeMap<String, Vec<(i64, f32)>> {
    let mut by_tag: BTreeMap<String, Vec<(i64, f32)>> = BTreeMap::new();
    for s in tb["scalars"].as_array().unwrap() {
        by_tag
            .entry(s["tag"].as_str().unwrap().to_string())
            .or_default()
            .push((s["step"].as_i64().unwrap(), s["value"].as_f64().unwrap() as f32));
    }
    by_tag
}

/// What metrics.jsonl says each tag should hold: (step, f32 of the value), nulls left out.
fn expected(run: &Path) -> BTreeMap<String, Vec<(i64, f32)>> {
    let mut by_tag: BTreeMap<String, Vec<(i64, f32)>> = BTreeMap::new();
    for line in std::fs::read_to_string(run.join("metrics.jsonl")).unwrap().lines() {
        let rec: serde_json::Map<String, Value> = serde_json::from_str(line).unwrap();
        let step = rec["step"].as_i64().unwrap();
        for (key, v) in &rec {
            if key == "step" || key == "wall_time" {
                continue;
            }
            if let Some(x) = v.as_f64() {
                by_tag.entry(format!("train/{key}")).or_default().push((step, x as f32));
            }
        }
    }
    by_tag
}

#[test]
fn two_rank_resumed_run_reads_back_equal_to_metrics_jsonl() {
    let dir = tempfile::tempdir().unwrap();
    let text = tiny_dual(dataset())
        .replace("max_steps = 6", "max_steps = 6\ncheckpoint_every = 3")
        .replace("at_end = false", "at_end = true\nsplit = \"test\"");
    let cfg = write_config(dir.path(), "run.toml", &text);
    let run = dir.path().join("run");
    ok(&train_ranks(2, &cfg, &run, &[]));

    // Killed after step 4: the step-6 checkpoint, the model and evaluation are gone, the
    // log ran one step past the step-3 checkpoint. The resumed run replays steps 1-3.
    std::fs::remove_dir_all(run.join("checkpoints/step-6")).unwrap();
    std::fs::remove_dir_all(run.join("model")).unwrap();
    std::fs::remove_dir_all(run.join("eval")).unwrap();
    let log = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    std::fs::write(run.join("metrics.jsonl"), log.lines().take(4).map(|l| format!("{l}\n")).collect::<String>())
        .unwrap();
    ok(&train_ranks(2, &cfg, &run, &["--resume"]));

    let tb = read_tensorboard(&run.join("tb"));
    assert_eq!(tb["files"].as_array().unwrap().len(), 1, "one event file: {}", tb["files"]);
    let mut got = scalars(&tb);
    let eval: BTreeMap<String, Vec<(i64, f32)>> =
        got.iter().filter(|(k, _)| k.starts_with("eval/")).map(|(k, v)| (k.clone(), v.clone())).collect();
    got.retain(|k, _| k.starts_with("train/"));
    let want = expected(&run);
    assert_eq!(want["train/loss"].iter().map(|p| p.0).collect::<Vec<_>>(), [1, 2, 3, 4, 5, 6]);
    assert_eq!(got, want, "TensorBoard's scalars differ from metrics.jsonl");

    // End-of-run evaluation: every number of eval/metrics.json at step 6.
    let metrics: serde_json::Map<String, Value> =
        serde_json::from_str(&std::fs::read_to_string(run.join("eval/metrics.json")).unwrap()).unwrap();
    let numbers: Vec<(&String, f64)> = metrics.iter().filter_map(|(k, v)| Some((k, v.as_f64()?))).collect();
    assert!(numbers.iter().any(|(k, _)| *k == "nDCG@10"));
    assert_eq!(eval.len(), numbers.len(), "{eval:?}");
    for (k, v) in numbers {
        assert_eq!(eval[&format!("eval/{k}")], [(6, v as f32)], "eval/{k}");
    }

    // The resolved config, as text at step 0.
    let texts = tb["text"].as_array().unwrap();
    assert_eq!(texts.len(), 1);
    assert_eq!(texts[0]["tag"], "config");
    let config = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(texts[0]["value"].as_str().unwrap().contains(config.trim()), "{}", texts[0]["value"]);
}

#[test]
fn tensorboard_off_writes_no_event_files() {
    let dir = tempfile::tempdir().unwrap();
    let text =
        tiny_dual(dataset()).replace("max_steps = 6", "max_steps = 2").replace("[log]", "[log]\ntensorboard = false");
    let cfg = write_config(dir.path(), "run.toml", &text);
    let run = dir.path().join("run");
    ok(&train(&cfg, &run, &[]));
    assert!(run.join("metrics.jsonl").exists());
    assert!(!run.join("tb").exists());
}
