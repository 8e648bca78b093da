//! Feature stages: pure functions from clean bars to columns (None during warm-up).

pub mod arbitrage;
pub mod causality;
pub mod currency_index;
pub mod indicators;
pub mod regime;
pub mod regression;

use crate::column::Column;

/// The stages' settings a run may change (the command line's flags).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Params {
    pub arbitrage: arbitrage::Params,
}

/// The output columns of a column stage, after (pair, ts).
pub fn columns(stage: &str) -> anyhow::Result<&'static [Column]> {
    Ok(match stage {
        "indicators" => &indicators::COLUMNS,
        "regression" => &regression::COLUMNS,
        other => anyhow::bail!(
            "'{other}' is not a column stage; column stages: {}",
            crate::db::STAGES.join(", ")
        ),
    })
}

/// A stage's output: column names and, per column, one value per bar.
pub struct Columns {
    pub names: Vec<String>,
    /// A non-finite value (NaN in the warm-up, or a division by a zero range) is undefined and
    /// written as NULL.
    /// Plain f64 rather than Option halves the memory and lets TA-Lib write in place.
    pub values: Vec<Vec<f64>>,
}

/// NULL where the value is not finite (a division by a zero range, say).
pub fn finite(x: f64) -> Option<f64> {
    x.is_finite().then_some(x)
}
