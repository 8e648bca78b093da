//! Feature stages: pure functions from clean bars to columns (None during warm-up).

pub mod arbitrage;
pub mod causality;
pub mod currency_index;
pub mod indicators;
pub mod regime;
pub mod regression;

/// The stages' settings a run may change (the command line's flags).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Params {
    pub arbitrage: arbitrage::Params,
}

/// Leading bars without a value, per output column of a feature stage.
pub fn warm_up(core: &ta_lib::Core, stage: &str) -> Option<Vec<usize>> {
    match stage {
        "indicators" => Some(indicators::warm_up(core)),
        "regression" => Some(regression::warm_up()),
        _ => None,
    }
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
