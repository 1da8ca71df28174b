//! One module per subcommand: its clap arguments and the code that carries it out.
pub mod analyze;
pub mod bm25;
pub mod docids;
pub mod encode;
pub mod eval;
pub mod eval_run;
pub mod index;
pub mod info;
pub mod paper;
pub mod prepare;
pub mod report;
pub mod subject;
pub mod sweep;
pub mod synth;
pub mod train;
pub mod tune;

/// Prints metrics as a two-column markdown table on stdout (what the README's main command
/// shows); `metrics.json` holds the same numbers for machines.
pub fn print_metrics_table(title: &str, metrics: &crate::eval::Metrics) {
    println!("\n{title}\n");
    println!("| metric | value |");
    println!("| --- | --- |");
    if let serde_json::Value::Object(map) = metrics.to_json() {
        for (k, v) in map {
            match v.as_f64() {
                Some(x) if k != "queries" => println!("| {k} | {x:.4} |"),
                _ => println!("| {k} | {v} |"),
            }
        }
    }
    println!();
}

/// Prints an evaluation's table and the figures beside it: calibration, GR memorisation.
pub fn print_summary(summary: &crate::eval::run_eval::EvalSummary) {
    print_metrics_table(&summary.title, &summary.metrics);
    let extra = &summary.extra;
    if let Some(b) = extra.get("Brier") {
        println!("Brier: {b}\n");
    }
    if let Some(m) = extra.get("memorization_R@1") {
        println!(
            "memorization (R@1 of {} documents' indexing inputs): {:.4}\n",
            extra.get("memorization_docs").unwrap_or(&serde_json::json!(0)),
            m.as_f64().unwrap_or(0.0)
        );
    }
}
