//! The grid: the product of a sweep's axes, each point named after its values
//! (`p03-num_negatives=7-dim=128`), so a directory listing reads as the sweep.
use crate::sweep::spec::{Axis, KEY_BASE};

/// One combination of axis values, before it is resolved into a run config.
#[derive(Debug, Clone, PartialEq)]
pub struct GridPoint {
    pub index: usize,
    /// `p<index>-<label>=<value>-…`: unique, file-name safe.
    pub name: String,
    /// Every axis key with its value, in axis order.
    pub values: Vec<(String, toml::Value)>,
}

/// The product of `axes`, the first axis varying slowest (a sweep with no axes is one point).
pub fn expand(axes: &[Axis]) -> Vec<GridPoint> {
    let total: usize = axes.iter().map(|a| a.rows.len()).product();
    let width = (total.saturating_sub(1)).to_string().len().max(2);
    (0..total)
        .map(|index| {
            // Mixed-radix digits of `index`, last axis fastest.
            let mut rest = index;
            let mut picks = vec![0; axes.len()];
            for (i, a) in axes.iter().enumerate().rev() {
                picks[i] = rest % a.rows.len();
                rest /= a.rows.len();
            }
            let mut name = format!("p{index:0width$}");
            let mut values = Vec::new();
            for (a, &pick) in axes.iter().zip(&picks) {
                let row = &a.rows[pick];
                // A zipped axis is named by its first key's value: one label per grid dimension.
                name.push_str(&format!("-{}={}", a.label, name_fragment(&a.keys[0], &row[0])));
                values.extend(a.keys.iter().cloned().zip(row.iter().cloned()));
            }
            GridPoint { index, name, values }
        })
        .collect()
}

/// A value as it appears in a point name: numbers as written, a base config by its file
/// stem, anything else with characters outside `[A-Za-z0-9._-]` replaced by `_`.
pub fn name_fragment(key: &str, v: &toml::Value) -> String {
    let raw = match v {
        toml::Value::String(s) if key == KEY_BASE => {
            std::path::Path::new(s).file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| s.clone())
        }
        toml::Value::String(s) => s.clone(),
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Float(f) => format!("{f}"),
        toml::Value::Boolean(b) => b.to_string(),
        other => other.to_string(),
    };
    let clean: String =
        raw.chars().map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '_' }).take(48).collect();
    if clean.is_empty() {
        "_".into()
    } else {
        clean
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use toml::Value::{Float, Integer, String as S};

    fn axis(label: &str, keys: &[&str], rows: Vec<Vec<toml::Value>>) -> Axis {
        Axis { label: label.into(), keys: keys.iter().map(|k| k.to_string()).collect(), rows }
    }

    #[test]
    fn product_of_axes_with_zipped_keys() {
        let axes = vec![
            axis("num_negatives", &["train.num_negatives"], vec![vec![Integer(1)], vec![Integer(3)], vec![Integer(7)]]),
            axis(
                "size",
                &["model.d_model", "model.num_layers"],
                vec![vec![Integer(64), Integer(1)], vec![Integer(128), Integer(2)]],
            ),
        ];
        let pts = expand(&axes);
        assert_eq!(pts.len(), 6);
        assert_eq!(pts[0].name, "p00-num_negatives=1-size=64");
        assert_eq!(pts[3].name, "p03-num_negatives=3-size=128");
        assert_eq!(
            pts[3].values,
            vec![
                ("train.num_negatives".into(), Integer(3)),
                ("model.d_model".into(), Integer(128)),
                ("model.num_layers".into(), Integer(2))
            ]
        );
        assert!(pts.iter().enumerate().all(|(i, p)| p.index == i));
    }

    #[test]
    fn names_are_file_safe_and_no_axes_is_one_point() {
        assert_eq!(expand(&[])[0].name, "p00");
        assert_eq!(name_fragment("base", &S("../runs/dr-minilm-scifact.toml".into())), "dr-minilm-scifact");
        assert_eq!(name_fragment("train.lr", &Float(0.0001)), "0.0001");
        assert_eq!(name_fragment("model.init", &S("a/b c".into())), "a_b_c");
        let many = vec![axis("x", &["t.x"], (0..120).map(|i| vec![Integer(i)]).collect())];
        assert_eq!(expand(&many)[7].name, "p007-x=7");
    }
}
