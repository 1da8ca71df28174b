//! The x axis of a scaling plot: linear, log2 or categorical, as one plotters coordinate.
//!
//! The seeds' figures put the number of negatives, the corpus size and the embedding
//! dimension on a log2 axis with a tick at every swept value, so the eye reads "each
//! doubling"; we do the same whenever the values are positive and span at least 8×.
//! Ticks are the swept values themselves (not round numbers): a sweep has a handful of
//! values and those are the ones a reader looks up. Non-numeric axes (a docid scheme,
//! a loss name) become categories at 0, 1, 2, ... in first-appearance order.
use std::ops::Range;

use plotters::coord::ranged1d::{KeyPointHint, NoDefaultFormatting, Ranged, ValueFormatter};

/// At most this many tick labels; more swept values are thinned (every k-th one).
const MAX_TICKS: usize = 12;

#[derive(Debug, Clone, PartialEq)]
pub enum Scale {
    Linear,
    Log2,
    /// Category names; a point's x is its category's index.
    Categorical(Vec<String>),
}

#[derive(Debug, Clone)]
pub struct XAxis {
    pub scale: Scale,
    /// The drawn range in data units (category indices for categorical axes), padded so
    /// the outer markers are not cut by the frame.
    lo: f64,
    hi: f64,
    ticks: Vec<f64>,
}

impl XAxis {
    /// A numeric axis over the swept values (duplicates allowed): log2 when they are
    /// positive and span a factor of 8 or more.
    pub fn numeric(values: &[f64]) -> XAxis {
        XAxis::over(values, true)
    }

    /// A linear axis, however wide (a training curve against the step).
    pub fn linear(values: &[f64]) -> XAxis {
        XAxis::over(values, false)
    }

    fn over(values: &[f64], allow_log2: bool) -> XAxis {
        let mut distinct: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
        distinct.sort_by(f64::total_cmp);
        distinct.dedup();
        if distinct.is_empty() {
            distinct.push(0.0);
        }
        let (min, max) = (distinct[0], distinct[distinct.len() - 1]);
        let log2 = allow_log2 && min > 0.0 && max / min >= 8.0;
        let (lo, hi) = if log2 {
            // A quarter of a doubling on each side.
            (min / 2f64.powf(0.25), max * 2f64.powf(0.25))
        } else {
            let pad = if max > min { (max - min) * 0.05 } else { min.abs().max(1.0) * 0.5 };
            (min - pad, max + pad)
        };
        XAxis { scale: if log2 { Scale::Log2 } else { Scale::Linear }, lo, hi, ticks: thin(distinct) }
    }

    /// A categorical axis over `names` (distinct, in display order).
    pub fn categorical(names: Vec<String>) -> XAxis {
        let n = names.len();
        XAxis {
            lo: -0.5,
            hi: n as f64 - 0.5,
            ticks: thin((0..n).map(|i| i as f64).collect()),
            scale: Scale::Categorical(names),
        }
    }

    /// The x position of a category (categorical axes).
    pub fn category_index(&self, name: &str) -> Option<f64> {
        match &self.scale {
            Scale::Categorical(names) => names.iter().position(|n| n == name).map(|i| i as f64),
            _ => None,
        }
    }

    /// The transform under which the axis is linear.
    fn t(&self, v: f64) -> f64 {
        match self.scale {
            Scale::Log2 => v.log2(),
            _ => v,
        }
    }

    /// The tick label of a value: ticks are the swept values, so their shortest form is
    /// what the sweep file says (`16`, `0.1`); learning-rate-sized ones as `3e-5`.
    pub fn label(&self, v: f64) -> String {
        match &self.scale {
            Scale::Categorical(names) => names.get(v.round() as usize).cloned().unwrap_or_default(),
            _ if v.fract() == 0.0 && v.abs() < 1e15 => format!("{}", v as i64),
            _ if v.abs() < 1e-3 => format!("{v:e}"),
            _ => format!("{v}"),
        }
    }

    /// What the axis title adds after the axis name.
    pub fn suffix(&self) -> &'static str {
        match self.scale {
            Scale::Log2 => " (log2 scale)",
            _ => "",
        }
    }
}

/// Keeps every k-th value so that at most [`MAX_TICKS`] remain (always the first).
fn thin(values: Vec<f64>) -> Vec<f64> {
    let step = values.len().div_ceil(MAX_TICKS).max(1);
    values.into_iter().step_by(step).collect()
}

impl Ranged for XAxis {
    type FormatOption = NoDefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        let (lo, hi) = (self.t(self.lo), self.t(self.hi));
        let frac = (self.t(*value) - lo) / (hi - lo);
        limit.0 + (frac * f64::from(limit.1 - limit.0)).round() as i32
    }

    fn key_points<Hint: KeyPointHint>(&self, hint: Hint) -> Vec<f64> {
        // Bold points only: grid lines and labels at the swept values, no light lines.
        if hint.weight().allow_light_points() {
            Vec::new()
        } else {
            self.ticks.clone()
        }
    }

    fn range(&self) -> Range<f64> {
        self.lo..self.hi
    }
}

impl ValueFormatter<f64> for XAxis {
    fn format_ext(&self, value: &f64) -> String {
        self.label(*value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log2_when_positive_and_wide() {
        let x = XAxis::numeric(&[4.0, 8.0, 16.0, 32.0, 8.0]);
        assert_eq!(x.scale, Scale::Log2);
        let ticks = |x: &XAxis| x.key_points(plotters::coord::ranged1d::BoldPoints(100));
        assert_eq!(ticks(&x), vec![4.0, 8.0, 16.0, 32.0]);
        // Each doubling is the same width on the page.
        let (a, b, c) = (x.map(&4.0, (0, 1000)), x.map(&8.0, (0, 1000)), x.map(&16.0, (0, 1000)));
        assert!(((b - a) - (c - b)).abs() <= 1, "{a} {b} {c}");
        assert_eq!(x.label(16.0), "16");
        assert_eq!(XAxis::numeric(&[1.0, 4.0]).scale, Scale::Linear);
        assert_eq!(XAxis::numeric(&[0.0, 100.0]).scale, Scale::Linear);
        assert_eq!(XAxis::linear(&[10.0, 1000.0]).scale, Scale::Linear);
        assert_eq!(XAxis::numeric(&[0.5, 0.25]).label(0.25), "0.25");
        assert_eq!(XAxis::numeric(&[1e-5, 1e-3]).label(3e-5), "3e-5");
    }

    #[test]
    fn categories_and_thinning() {
        let x = XAxis::categorical(vec!["atomic".into(), "semantic".into()]);
        assert_eq!(x.category_index("semantic"), Some(1.0));
        assert_eq!(x.label(1.0), "semantic");
        let many: Vec<f64> = (1..=30).map(f64::from).collect();
        assert!(XAxis::numeric(&many).key_points(plotters::coord::ranged1d::BoldPoints(100)).len() <= MAX_TICKS);
    }
}
