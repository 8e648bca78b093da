//! Feature stages: pure functions from clean bars to columns (None during warm-up).

pub mod indicators;
pub mod regression;

/// A stage's output: column names and, per column, one value per bar.
pub struct Columns {
    pub names: Vec<String>,
    pub values: Vec<Vec<Option<f64>>>,
}

/// NULL where the value is not finite (a division by a zero range, say).
pub(crate) fn finite(x: f64) -> Option<f64> {
    x.is_finite().then_some(x)
}
