//! The views researchers look at, checked with the tools they look with. A real local sweep
//! (tiny dual encoders on 700 SciFact documents: 2 learning rates × 2 seeds) is
//! - read by TensorBoard's own reader over the whole sweep directory
//!   (`scripts/tb_reference.py`): one event file per point, under its point name, holding
//!   its metrics.jsonl;
//! - reported with `grdr report --html` and opened in headless Chromium
//!   (`scripts/html_check.py`: Debian's chromium + chromedriver through selenium): the page
//!   loads with no console error, makes no request outside itself, has one table row per
//!   point, every figure is a non-empty inline SVG with its axis titles, the table sorts,
//!   and every link points at a file that is there.
//!
//! One point's run directory gets its own page, checked the same way.
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use serde_json::Value;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `scripts/<script>` in the reference venv; its stdout as JSON.
fn reference_script(script: &str, args: &[&str]) -> Value {
    let py = grdr::assets::reference_python().expect("reference python (run launcher/setup --reference)");
    let out = Command::new(py).arg(repo().join("scripts").join(script)).args(args).output().unwrap();
    assert!(out.status.success(), "{script}: {}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{script} printed no JSON ({e})"))
}

/// `html_check.py` on a page, with a screenshot beside it.
fn open_in_chromium(page: &Path) -> Value {
    let shot = page.with_extension("png");
    let check = reference_script("html_check.py", &[page.to_str().unwrap(), "--screenshot", shot.to_str().unwrap()]);
    let png = std::fs::read(&shot).expect("a screenshot");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "screenshot of {} is {} bytes",
        page.display(),
        png.len()
    );
    check
}

/// What every page must satisfy in the browser.
fn assert_loads_cleanly(check: &Value) {
    assert_eq!(check["console"], serde_json::json!([]), "console errors: {}", check["console"]);
    assert_eq!(check["external_requests"], serde_json::json!([]), "requests left the page");
    let figures = check["figures"].as_array().unwrap();
    assert!(!figures.is_empty(), "no figure");
    for f in figures {
        assert_eq!(f["svg"], true, "{f}");
        assert!(f["width"].as_f64().unwrap() > 200.0 && f["height"].as_f64().unwrap() > 100.0, "{f}");
        assert!(f["elements"].as_u64().unwrap() > 20, "an empty plot: {f}");
        assert!(f["has_x_label"] == true && f["has_y_label"] == true, "axis titles missing: {f}");
    }
}

/// Every relative `href` of the page resolves to a file or directory that exists.
fn assert_links_resolve(page: &Path) {
    let html = std::fs::read_to_string(page).unwrap();
    let dir = page.parent().unwrap();
    let hrefs: Vec<&str> = html.split("href=\"").skip(1).map(|s| &s[..s.find('"').unwrap()]).collect();
    assert!(!hrefs.is_empty(), "no links in {}", page.display());
    for h in hrefs {
        assert!(!h.contains("://"), "an absolute URL: {h}");
        assert!(dir.join(h).exists(), "{h} (from {}) does not exist", page.display());
    }
}

/// 2 learning rates × 2 seeds of tiny dual encoders on 700 documents.
fn sweep_spec() -> String {
    format!(
        "name = \"html-report\"\nranks = 1\n\n{TINY_DUAL_SWEEP_SET}data.corpus_docs = 700\ntrain.max_steps = 12\nlog.interval = 2\n{}",
        r#"
[[axis]]
key = "train.lr"
values = [1e-3, 3e-3]

[[axis]]
key = "train.seed"
values = [1, 2]
"#
    )
}

#[test]
fn a_sweep_reads_in_tensorboard_and_as_one_html_page() {
    let dir = tempfile::tempdir().unwrap();
    let data = prepare_scifact(dir.path(), None);
    let spec = dir.path().join("sweep.toml");
    let base = repo().join("configs/runs/dr-minilm-scifact.toml");
    std::fs::write(&spec, format!("base = \"{}\"\n{}", base.display(), sweep_spec())).unwrap();
    let sweep = dir.path().join("sw");
    let data_set = format!("data.path={}", data.display());
    grdr_ok(&["sweep", spec.to_str().unwrap(), "--set", &data_set, "--output", sweep.to_str().unwrap()]);
    let manifest: Value = serde_json::from_str(&std::fs::read_to_string(sweep.join("sweep.json")).unwrap()).unwrap();
    let names: Vec<String> =
        manifest["points"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap().to_string()).collect();
    assert_eq!(names.len(), 4);

    // TensorBoard over the sweep: each point's curve under its name, equal to its log.
    let tb = reference_script("tb_reference.py", &[sweep.to_str().unwrap()]);
    let files: Vec<&str> = tb["files"].as_array().unwrap().iter().map(|f| f.as_str().unwrap()).collect();
    assert_eq!(files.len(), names.len(), "{files:?}");
    for name in &names {
        assert!(files.iter().any(|f| f.starts_with(&format!("points/{name}/run/tb/"))), "{name}: {files:?}");
    }
    let loss_events = tb["scalars"].as_array().unwrap().iter().filter(|s| s["tag"] == "train/loss").count();
    let logged: usize = names
        .iter()
        .map(|n| {
            std::fs::read_to_string(sweep.join("points").join(n).join("run/metrics.jsonl")).unwrap().lines().count()
        })
        .sum();
    assert_eq!((loss_events, logged), (4 * 6, 4 * 6));
    assert_eq!(tb["cross_check"]["agrees"], true, "tbparse reads the same: {}", tb["cross_check"]);

    // The sweep's page.
    let out = grdr_ok(&["report", sweep.to_str().unwrap(), "--html"]);
    let page = sweep.join("report/report.html");
    assert!(out.contains(page.to_str().unwrap()), "{out}");
    let check = open_in_chromium(&page);
    assert_loads_cleanly(&check);
    assert_eq!(check["title"], "Sweep html-report");
    assert_eq!(check["rows"], 4);
    let mut shown: Vec<String> =
        check["points"].as_array().unwrap().iter().map(|p| p.as_str().unwrap().to_string()).collect();
    shown.sort();
    let mut want = names.clone();
    want.sort();
    assert_eq!(shown, want);
    // nDCG@10 and R@100 against the learning rate, seeds averaged (the seed is no x axis).
    let figures = check["figures"].as_array().unwrap();
    let pairs: Vec<(String, String)> = figures
        .iter()
        .map(|f| (f["y_label"].as_str().unwrap().to_string(), f["x_label"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(pairs, [("nDCG@10", "train.lr"), ("R@100", "train.lr")].map(|(a, b)| (a.into(), b.into())));
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(html.contains("mean ± s.d. over seeds"), "seeds are summarised with error bars");
    // Sorting by a number column: ascending, then descending.
    let sort = &check["sortable"];
    assert_eq!(
        (sort["first_order"].as_str(), sort["second_order"].as_str()),
        (Some("ascending"), Some("descending")),
        "{sort}"
    );
    assert_links_resolve(&page);

    // One point's run: its own page (curves, metrics, config).
    let run = sweep.join("points").join(&names[0]).join("run");
    let o = grdr(&["report", run.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "a run directory without --html: {}", stderr(&o));
    assert!(stderr(&o).contains("--html"), "{}", stderr(&o));
    grdr_ok(&["report", run.to_str().unwrap(), "--html"]);
    let run_page: PathBuf = run.join("report/report.html");
    let check = open_in_chromium(&run_page);
    assert_loads_cleanly(&check);
    let ys: Vec<&str> = check["figures"].as_array().unwrap().iter().map(|f| f["y_label"].as_str().unwrap()).collect();
    assert!(ys.contains(&"loss") && ys.contains(&"learning rate"), "{ys:?}");
    let html = std::fs::read_to_string(&run_page).unwrap();
    assert!(html.contains("nDCG@10") && html.contains("[train]"), "metrics and config on the page");
    assert_links_resolve(&run_page);

    // Neither a sweep nor a run: a usage error naming the directory.
    let o = grdr(&["report", dir.path().to_str().unwrap(), "--html"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains(dir.path().to_str().unwrap()), "{}", stderr(&o));
}
