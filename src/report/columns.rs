//! The results table as typed columns, one type per column inferred over all points.
//!
//! Axis values and metrics arrive as JSON values; pandas/polars users want `num_negatives`
//! as an integer column and `nDCG@10` as a float column, not strings. A column is `Int`
//! when every non-null value is an integer, `Float` when every one is a number (or there
//! is none yet), `Bool` when every one is a boolean, and `Str` otherwise (numbers then
//! written as JSON text).
use serde_json::Value;

use super::collect::Results;

#[derive(Debug, Clone, PartialEq)]
pub enum ColumnData {
    Int(Vec<Option<i64>>),
    Float(Vec<Option<f64>>),
    Bool(Vec<Option<bool>>),
    Str(Vec<Option<String>>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Column {
    pub name: String,
    pub data: ColumnData,
}

impl ColumnData {
    /// Infers the type of a column from its JSON values (`None` = null).
    pub fn infer(values: &[Option<&Value>]) -> ColumnData {
        let present = || values.iter().flatten().filter(|v| !v.is_null());
        if present().next().is_none() {
            // Nobody has a value yet (every point pending): metrics are floats.
            ColumnData::Float(vec![None; values.len()])
        } else if present().all(|v| v.is_i64()) {
            ColumnData::Int(values.iter().map(|v| v.and_then(Value::as_i64)).collect())
        } else if present().all(|v| v.is_number()) {
            ColumnData::Float(values.iter().map(|v| v.and_then(Value::as_f64)).collect())
        } else if present().all(|v| v.is_boolean()) {
            ColumnData::Bool(values.iter().map(|v| v.and_then(Value::as_bool)).collect())
        } else {
            ColumnData::Str(values.iter().map(|v| v.filter(|v| !v.is_null()).map(json_text)).collect())
        }
    }

    pub fn len(&self) -> usize {
        match self {
            ColumnData::Int(v) => v.len(),
            ColumnData::Float(v) => v.len(),
            ColumnData::Bool(v) => v.len(),
            ColumnData::Str(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn is_numeric(&self) -> bool {
        matches!(self, ColumnData::Int(_) | ColumnData::Float(_))
    }

    /// Row `i` as a number (numeric columns only).
    pub fn number(&self, i: usize) -> Option<f64> {
        match self {
            ColumnData::Int(v) => v[i].map(|x| x as f64),
            ColumnData::Float(v) => v[i],
            _ => None,
        }
    }

    /// Row `i` as exact text (shortest round-trip floats), `None` when null: CSV cells,
    /// category names and legend labels.
    pub fn text(&self, i: usize) -> Option<String> {
        match self {
            ColumnData::Int(v) => v[i].map(|x| x.to_string()),
            ColumnData::Float(v) => v[i].map(|x| x.to_string()),
            ColumnData::Bool(v) => v[i].map(|x| x.to_string()),
            ColumnData::Str(v) => v[i].clone(),
        }
    }
}

/// A string as itself, anything else as compact JSON.
fn json_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Names of the training columns, after the metrics.
pub const TRAINING_COLUMNS: [&str; 7] =
    ["parameters", "steps", "world_size", "nodes", "train_seconds", "final_loss", "samples_per_s"];

/// The table: `point`, `family`, one column per axis (its full key), `state`, `attempts`,
/// every metric, then the training figures. A metric whose name is already taken by an
/// earlier column is renamed `eval.<name>` so no two columns share a name.
pub fn columns(results: &Results) -> Vec<Column> {
    let rows = &results.rows;
    let mut out = vec![
        Column { name: "point".into(), data: ColumnData::Str(rows.iter().map(|r| Some(r.name.clone())).collect()) },
        Column { name: "family".into(), data: ColumnData::Str(rows.iter().map(|r| Some(r.family.clone())).collect()) },
    ];
    for axis in &results.axes {
        let values: Vec<Option<&Value>> = rows.iter().map(|r| r.values.get(axis)).collect();
        out.push(Column { name: axis.clone(), data: ColumnData::infer(&values) });
    }
    out.push(Column {
        name: "state".into(),
        data: ColumnData::Str(rows.iter().map(|r| Some(r.state.clone())).collect()),
    });
    out.push(Column { name: "attempts".into(), data: ColumnData::Int(rows.iter().map(|r| r.attempts).collect()) });
    let taken = |name: &str, cols: &[Column]| cols.iter().any(|c| c.name == name) || TRAINING_COLUMNS.contains(&name);
    for metric in &results.metric_names {
        let values: Vec<Option<&Value>> = rows.iter().map(|r| r.metrics.get(metric)).collect();
        let name = if taken(metric, &out) { format!("eval.{metric}") } else { metric.clone() };
        out.push(Column { name, data: ColumnData::infer(&values) });
    }
    let t = |f: fn(&super::Training) -> Option<f64>| ColumnData::Float(rows.iter().map(|r| f(&r.training)).collect());
    let [parameters, steps, world_size, nodes, train_seconds, final_loss, samples_per_s] =
        TRAINING_COLUMNS.map(String::from);
    out.push(Column { name: parameters, data: ColumnData::Int(rows.iter().map(|r| r.training.parameters).collect()) });
    out.push(Column { name: steps, data: ColumnData::Int(rows.iter().map(|r| r.training.steps).collect()) });
    out.push(Column { name: world_size, data: ColumnData::Int(rows.iter().map(|r| r.training.world_size).collect()) });
    out.push(Column { name: nodes, data: ColumnData::Int(rows.iter().map(|r| r.training.nodes).collect()) });
    out.push(Column { name: train_seconds, data: t(|t| t.train_seconds) });
    out.push(Column { name: final_loss, data: t(|t| t.final_loss) });
    out.push(Column { name: samples_per_s, data: t(|t| t.mean_samples_per_s) });
    out
}

/// Axis names for people (markdown headers, plot files and labels): the last segment of
/// the key (`num_negatives` for `train.num_negatives`) unless two axes share it.
pub fn short_axis_names(axes: &[String]) -> Vec<String> {
    let last = |a: &str| a.rsplit('.').next().unwrap_or(a).to_owned();
    axes.iter()
        .map(|a| if axes.iter().filter(|b| last(b) == last(a)).count() > 1 { a.clone() } else { last(a) })
        .collect()
}

/// The column called `name`.
pub fn find<'a>(columns: &'a [Column], name: &str) -> Option<&'a Column> {
    columns.iter().find(|c| c.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn infer(values: &[Value]) -> ColumnData {
        let refs: Vec<Option<&Value>> = values.iter().map(Some).collect();
        ColumnData::infer(&refs)
    }

    #[test]
    fn types_are_inferred_over_the_column() {
        assert_eq!(infer(&[json!(4), json!(null), json!(16)]), ColumnData::Int(vec![Some(4), None, Some(16)]));
        assert_eq!(infer(&[json!(4), json!(0.5)]), ColumnData::Float(vec![Some(4.0), Some(0.5)]));
        assert_eq!(infer(&[json!(true), json!(false)]), ColumnData::Bool(vec![Some(true), Some(false)]));
        assert_eq!(
            infer(&[json!("atomic"), json!(8), json!([1])]),
            ColumnData::Str(vec![Some("atomic".into()), Some("8".into()), Some("[1]".into())])
        );
        assert_eq!(ColumnData::infer(&[None, Some(&json!(null))]), ColumnData::Float(vec![None, None]));
    }

    #[test]
    fn short_names_stay_unique() {
        let axes = ["train.num_negatives", "model.dim", "data.dim"].map(String::from);
        assert_eq!(short_axis_names(&axes), ["num_negatives", "model.dim", "data.dim"]);
    }
}
