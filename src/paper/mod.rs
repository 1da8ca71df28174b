//! `grdr paper NAME`: a founding paper's tables reproduced by one resumable command. A paper
//! is a list of rows — each a shipped run config (`configs/runs/<row>.toml`) trained and
//! evaluated end to end, plus a rerank evaluation where a table needs one, or BM25 — and
//! the tables that read them. Everything is a step with an output file that marks it done:
//! the docid files and indexes the rows need (`prep/`, made when a row that needs them
//! still has to train), each row's training run
//! (`rows/<row>/`, done when its end-of-run `eval/metrics.json` exists; an interrupted one is
//! resumed from its checkpoint), its rerank evaluation (`rows/<row>/eval-rerank/`). A
//! finished step is never redone, so running the command again continues where it stopped.
//! Steps run as the CLI would run them (this binary, training through
//! `launcher/grdr-launch`), each logging to `logs/<step>.log`. Finally every table is
//! written as `<table>.md`, `.csv` and `.parquet`: our metrics, the paper's, each row's
//! time and peak memory, and its state (rows not run yet are listed, empty).
pub mod wu2024;

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{exit_code, Error, Result};
use crate::report::columns::{Column, ColumnData};
use crate::report::table::{write_csv, write_parquet};
use crate::sweep::launch::{shell_quote, Programs};
use crate::sweep::local::{run_logged, tail};

/// The docid file a GR row trains on (made once under `prep/`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Docids {
    Atomic,
    /// Hierarchical k-means over MiniLM document embeddings (k 10, leaves ≤ 100).
    Semantic,
    Title,
    /// 10 n-grams of 10 tokens per document (SEAL's training targets).
    Ngram,
}

/// One run of the paper: `name` is its config's stem (and its directory), or `bm25`.
pub struct Row {
    pub name: &'static str,
    pub docids: Option<Docids>,
    /// Evaluates through SEAL's FM-index over the corpus (made once under `prep/`).
    pub fm_index: bool,
    /// Also evaluated in the rerank setting (BM25's top 100, no gold added).
    pub rerank: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setting {
    EndToEnd,
    Rerank,
}

/// A table's line: which row, in which setting, and the paper's R@1, R@10, MRR@10.
pub struct TableRow {
    pub row: &'static str,
    pub label: &'static str,
    pub setting: Setting,
    pub paper: [Option<f64>; 3],
}

pub struct Table {
    pub name: &'static str,
    pub title: &'static str,
    pub rows: Vec<TableRow>,
}

pub struct Paper {
    pub name: &'static str,
    pub rows: Vec<Row>,
    pub tables: Vec<Table>,
}

/// The papers `grdr paper` knows.
pub fn by_name(name: &str) -> Result<Paper> {
    match name {
        "wu2024" => Ok(wu2024::paper()),
        other => Err(Error::usage("PAPER", format!("unknown paper {other:?} (known: wu2024)"))),
    }
}

/// The cause of the error of a step stopped by a signal (exit 75).
const PREEMPTED_STEP: &str = "preempted";

fn is_preempted(e: &Error) -> bool {
    matches!(e, Error::Io { source, .. } if source.kind() == std::io::ErrorKind::Interrupted && source.to_string() == PREEMPTED_STEP)
}

/// Our metrics in a table, in order (the paper's three first).
const METRICS: [&str; 5] = ["R@1", "R@10", "MRR@10", "nDCG@10", "R@100"];

pub struct PaperRun {
    pub data: PathBuf,
    pub out: PathBuf,
    pub ranks: usize,
    /// `--set` overrides given to every training run (e.g. a smaller budget).
    pub sets: Vec<String>,
    pub programs: Programs,
    /// Where the rows' configs are (`configs/runs/` of the checkout).
    pub configs: PathBuf,
}

impl PaperRun {
    fn rows_dir(&self, row: &str) -> PathBuf {
        self.out.join("rows").join(row)
    }

    /// Runs every unfinished step of `rows` (failed rows are reported after the others
    /// ran), then writes the tables. With `plan`, runs nothing and lists the commands.
    pub fn run(&self, paper: &Paper, rows: &[&Row], mut plan: Option<&mut Vec<String>>) -> Result<()> {
        for d in ["prep", "rows", "logs"].iter().filter(|_| plan.is_none()) {
            std::fs::create_dir_all(self.out.join(d)).map_err(|e| Error::io(self.out.join(d), "cannot create", e))?;
        }
        let mut failed = Vec::new();
        let mut stopped = None;
        for row in rows {
            match self.row(row, &mut plan) {
                Ok(()) => {}
                // A signal (a batch system's time limit, Ctrl-C) stops the whole run: the
                // step checkpointed, and the next invocation resumes it.
                Err(e) if crate::train::signal::received().is_some() || is_preempted(&e) => {
                    stopped = Some(e);
                    break;
                }
                Err(e) => {
                    tracing::error!("{}: {e}", row.name);
                    failed.push(row.name);
                }
            }
        }
        if plan.is_none() {
            for t in &paper.tables {
                self.write_table(t)?;
            }
            tracing::info!("tables written to {}", self.out.display());
        }
        if let Some(e) = stopped {
            return Err(e);
        }
        if !failed.is_empty() {
            return Err(Error::io(
                self.out.join("logs"),
                format!("{} row(s) failed: {} (see logs/; run again to retry them)", failed.len(), failed.join(", ")),
                std::io::Error::other("a step failed"),
            ));
        }
        Ok(())
    }

    /// One row: its training (or BM25), its rerank evaluation.
    fn row(&self, row: &Row, plan: &mut Option<&mut Vec<String>>) -> Result<()> {
        let dir = self.rows_dir(row.name);
        let grdr = self.programs.grdr.display().to_string();
        let data = self.data.display().to_string();
        if row.name == "bm25" {
            let argv = vec![grdr, "bm25".into(), "--data".into(), data, "--k".into(), "100".into()];
            let argv = [argv, vec!["--output".into(), dir.display().to_string(), "--overwrite".into()]].concat();
            return self.step("bm25", &dir.join("metrics.json"), argv, plan);
        }
        self.train(row, &dir, plan)?;
        if row.rerank {
            let out = dir.join("eval-rerank");
            let mut argv = self.launch();
            argv.extend(["eval", "--run"].map(String::from));
            argv.push(dir.display().to_string());
            argv.extend(["--rerank", "bm25", "--k", "100", "--overwrite", "--output"].map(String::from));
            argv.push(out.display().to_string());
            self.step(&format!("{}-rerank", row.name), &out.join("metrics.json"), argv, plan)?;
        }
        Ok(())
    }

    /// A row's training run (its end-of-run evaluation included), and the docid file and
    /// FM-index it needs, made only when the run is not done yet.
    fn train(&self, row: &Row, dir: &Path, plan: &mut Option<&mut Vec<String>>) -> Result<()> {
        let done = dir.join("eval").join("metrics.json");
        if done.exists() {
            tracing::info!("{}: done, skipped", row.name);
            return Ok(());
        }
        let data = self.data.display().to_string();
        let mut sets = vec![format!("data.path={data}")];
        if let Some(d) = row.docids {
            sets.push(format!("docids.path={}", self.docids(d, plan)?.display()));
        }
        if row.fm_index {
            sets.push(format!("eval.fm_index={}", self.fm_index(plan)?.display()));
        }
        sets.extend(self.sets.iter().cloned());
        let config = self.configs.join(format!("{}.toml", row.name));
        let mut argv = self.launch();
        argv.extend(["train", "--config"].map(String::from));
        argv.push(config.display().to_string());
        argv.extend(["--output".into(), dir.display().to_string(), "--resume".into()]);
        for s in sets {
            argv.extend(["--set".into(), s]);
        }
        self.step(row.name, &done, argv, plan)
    }

    /// `launcher/grdr-launch -n RANKS -- grdr`.
    fn launch(&self) -> Vec<String> {
        vec![
            self.programs.launcher.display().to_string(),
            "-n".into(),
            self.ranks.to_string(),
            "--".into(),
            self.programs.grdr.display().to_string(),
        ]
    }

    /// The docid file of `scheme` under `prep/` (made when missing).
    fn docids(&self, scheme: Docids, plan: &mut Option<&mut Vec<String>>) -> Result<PathBuf> {
        let prep = self.out.join("prep");
        let grdr = self.programs.grdr.display().to_string();
        let data = self.data.display().to_string();
        let (name, extra): (&str, Vec<String>) = match scheme {
            Docids::Atomic => ("atomic", vec![]),
            Docids::Title => ("title", vec![]),
            Docids::Ngram => ("ngram", ["--ngram-len", "10", "--ngrams-per-doc", "10"].map(String::from).to_vec()),
            Docids::Semantic => {
                let emb = prep.join("minilm-docs.parquet");
                let argv = [grdr.clone(), "encode".into(), "--model".into(), "minilm".into(), "--data".into()];
                let argv =
                    [argv.to_vec(), vec![data.clone(), "--what".into(), "docs".into(), "--output".into()]].concat();
                self.step("encode-minilm-docs", &emb, [argv, vec![emb.display().to_string()]].concat(), plan)?;
                let extra = vec!["--embeddings".into(), emb.display().to_string()];
                ("semantic", [extra, ["--k", "10", "--leaf-size", "100"].map(String::from).to_vec()].concat())
            }
        };
        let out = prep.join(format!("docids-{name}.parquet"));
        let argv = [grdr, "docids".into(), "--data".into(), data, "--scheme".into(), name.into()].to_vec();
        let argv = [argv, extra, vec!["--output".into(), out.display().to_string()]].concat();
        self.step(&format!("docids-{name}"), &out, argv, plan)?;
        Ok(out)
    }

    /// SEAL's FM-index of the corpus under `prep/fm` (made when missing).
    fn fm_index(&self, plan: &mut Option<&mut Vec<String>>) -> Result<PathBuf> {
        let out = self.out.join("prep").join("fm");
        let argv = [self.programs.grdr.display().to_string(), "index".into(), "fm".into(), "--data".into()].to_vec();
        let argv = [argv, vec![self.data.display().to_string(), "--output".into(), out.display().to_string()]].concat();
        self.step("fm-index", &out.join("index.json"), argv, plan)?;
        Ok(out)
    }

    /// Runs `argv` unless `done` exists, its output appended to `logs/<name>.log`.
    fn step(&self, name: &str, done: &Path, argv: Vec<String>, plan: &mut Option<&mut Vec<String>>) -> Result<()> {
        if done.exists() {
            tracing::info!("{name}: done, skipped");
            return Ok(());
        }
        if let Some(p) = plan.as_mut() {
            let line = argv.iter().map(|a| shell_quote(a)).collect::<Vec<_>>().join(" ");
            if !p.contains(&line) {
                p.push(line); // a prerequisite of several rows is made once
            }
            return Ok(());
        }
        let log_path = self.out.join("logs").join(format!("{name}.log"));
        tracing::info!("{name}: running (log: {})", log_path.display());
        let t0 = std::time::Instant::now();
        let status = run_logged(&argv, &log_path)?;
        if status.code() == Some(i32::from(exit_code::PREEMPTED)) {
            return Err(Error::io(
                &log_path,
                format!("{name}: stopped by a signal after a checkpoint; run the same `grdr paper` again to resume"),
                std::io::Error::new(std::io::ErrorKind::Interrupted, PREEMPTED_STEP),
            ));
        }
        if !status.success() || !done.exists() {
            return Err(Error::io(
                &log_path,
                format!("{name} failed ({status}):\n{}", tail(&log_path, 15)),
                std::io::Error::other("step failed"),
            ));
        }
        tracing::info!("{name}: done in {:.0}s", t0.elapsed().as_secs_f64());
        Ok(())
    }

    /// `<table>.md`, `.csv`, `.parquet` in the output directory.
    fn write_table(&self, t: &Table) -> Result<()> {
        let lines: Vec<Line> = t.rows.iter().map(|r| self.line(r)).collect();
        let mut cols: Vec<(String, Vec<Value>)> = vec![
            ("model".into(), lines.iter().map(|l| l.label.into()).collect()),
            ("run".into(), lines.iter().map(|l| l.run.into()).collect()),
            ("setting".into(), lines.iter().map(|l| l.setting.into()).collect()),
            ("state".into(), lines.iter().map(|l| l.state.into()).collect()),
        ];
        for (i, m) in METRICS.iter().enumerate() {
            cols.push((m.to_string(), lines.iter().map(|l| l.ours[i].into()).collect()));
        }
        for (i, m) in METRICS[..3].iter().enumerate() {
            cols.push((format!("paper {m}"), lines.iter().map(|l| l.paper[i].into()).collect()));
        }
        for (i, m) in ["train_seconds", "train_peak_rss_mib", "eval_seconds", "eval_peak_rss_mib"].iter().enumerate() {
            cols.push((m.to_string(), lines.iter().map(|l| l.cost[i].into()).collect()));
        }
        let columns: Vec<Column> = cols
            .iter()
            .map(|(name, v)| Column {
                name: name.clone(),
                data: ColumnData::infer(&v.iter().map(Some).collect::<Vec<_>>()),
            })
            .collect();
        write_csv(&self.out.join(format!("{}.csv", t.name)), &columns)?;
        write_parquet(&self.out.join(format!("{}.parquet", t.name)), &columns)?;
        let md = markdown(t, &lines);
        let path = self.out.join(format!("{}.md", t.name));
        std::fs::write(&path, md).map_err(|e| Error::io(&path, "cannot write", e))
    }

    /// A table line from the row's files (empty where the row has not run).
    fn line(&self, r: &TableRow) -> Line {
        let dir = self.rows_dir(r.row);
        let eval_dir = match (r.row, r.setting) {
            ("bm25", _) => dir.clone(),
            (_, Setting::EndToEnd) => dir.join("eval"),
            (_, Setting::Rerank) => dir.join("eval-rerank"),
        };
        let metrics = read_json(&eval_dir.join("metrics.json"));
        let run = read_json(&eval_dir.join("run.json"));
        let train = read_json(&dir.join("train.json"));
        let ours = METRICS.map(|m| metrics.as_ref().and_then(|j| j[m].as_f64()));
        let eval_seconds = run.as_ref().and_then(|j| {
            j["seconds"].as_f64().or_else(|| Some(j["index_seconds"].as_f64()? + j["search_seconds"].as_f64()?))
        });
        let eval_rss = run.as_ref().and_then(|j| {
            j["peak_rss_mib_per_rank"].as_array().map(|a| a.iter().filter_map(Value::as_f64).fold(0.0, f64::max))
        });
        Line {
            label: r.label,
            run: r.row,
            setting: match r.setting {
                Setting::EndToEnd => "end to end",
                Setting::Rerank => "rerank",
            },
            state: if metrics.is_some() { "done" } else { "not run" },
            ours,
            paper: r.paper,
            cost: [
                train.as_ref().and_then(|j| j["train_seconds"].as_f64()),
                peak_train_rss(&dir),
                eval_seconds,
                eval_rss,
            ],
        }
    }
}

struct Line {
    label: &'static str,
    run: &'static str,
    setting: &'static str,
    state: &'static str,
    ours: [Option<f64>; 5],
    paper: [Option<f64>; 3],
    /// Train seconds, train peak RSS (MiB, rank 0), eval seconds, eval peak RSS (MiB, max rank).
    cost: [Option<f64>; 4],
}

fn read_json(path: &Path) -> Option<Value> {
    serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
}

/// The largest `rss_mib` of a run's metrics log (rank 0's, per logging interval).
fn peak_train_rss(run: &Path) -> Option<f64> {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).ok()?;
    text.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()?["rss_mib"].as_f64()).reduce(f64::max)
}

fn markdown(t: &Table, lines: &[Line]) -> String {
    let num = |x: Option<f64>, scale: f64, digits: usize| {
        x.map_or("—".to_string(), |v| format!("{:.*}", digits, v * scale))
    };
    let mut s = format!("## {}\n\n", t.title);
    s += "Ours: SciFact test, R@1 / R@10 / MRR@10 / nDCG@10 / R@100 ×100; paper: NQ320k.\n\n";
    s += "| model | setting | R@1 | R@10 | MRR@10 | nDCG@10 | R@100 | paper R@1 | paper R@10 | paper M@10 | train s | train peak MiB | eval s | eval peak MiB | run |\n";
    s += &"| --- ".repeat(15);
    s += "|\n";
    for l in lines {
        let mut cells = vec![l.label.to_string(), l.setting.to_string()];
        cells.extend(l.ours.iter().map(|&x| num(x, 100.0, 1)));
        cells.extend(l.paper.iter().map(|&x| num(x, 1.0, 1)));
        cells.extend(l.cost.iter().map(|&x| num(x, 1.0, 0)));
        cells.push(if l.state == "done" { format!("`{}`", l.run) } else { format!("`{}` (not run)", l.run) });
        s += &format!("| {} |\n", cells.join(" | "));
    }
    s
}
