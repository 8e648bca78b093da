//! The stages a run may name: what each partitions over and the order a partition goes through
//! them. Stage names are strings only at the edges (the command line, the queue's rows).

use std::fmt;

/// A partition of a cross-pair stage covers every pair of its month; its `pair` in the queue is
/// this marker.
pub const ALL_PAIRS: &str = "*";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Stage {
    Indicators,
    Regression,
    Regime,
    CurrencyIndex,
    Arbitrage,
    Causality,
    Validate,
    Export,
}

/// What one partition of a stage covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// One pair, one month.
    Pair,
    /// Every pair of one month (the stage reads several pairs at once).
    AllPairs,
    /// Follows the partition it checks or exports: either of the above.
    Follows,
}

#[derive(Debug, thiserror::Error)]
#[error("unknown stage '{0}'; stages: {list}", list = Stage::names().join(", "))]
pub struct UnknownStage(pub String);

impl Stage {
    pub const ALL: [Stage; 8] = [
        Stage::Indicators,
        Stage::Regression,
        Stage::Regime,
        Stage::CurrencyIndex,
        Stage::Arbitrage,
        Stage::Causality,
        Stage::Validate,
        Stage::Export,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Stage::Indicators => "indicators",
            Stage::Regression => "regression",
            Stage::Regime => "regime",
            Stage::CurrencyIndex => "currency-index",
            Stage::Arbitrage => "arbitrage",
            Stage::Causality => "causality",
            Stage::Validate => "validate",
            Stage::Export => "export",
        }
    }

    pub fn names() -> Vec<&'static str> {
        Stage::ALL.iter().map(|s| s.name()).collect()
    }

    pub fn parse(s: &str) -> Result<Stage, UnknownStage> {
        Stage::ALL
            .into_iter()
            .find(|x| x.name() == s)
            .ok_or_else(|| UnknownStage(s.to_string()))
    }

    /// A partition's stage waits for every stage of a lower rank in the same partition: features,
    /// then their validation, then their export.
    pub fn rank(self) -> i32 {
        match self {
            Stage::Validate => 1,
            Stage::Export => 2,
            _ => 0,
        }
    }

    pub fn scope(self) -> Scope {
        match self {
            Stage::Indicators | Stage::Regression | Stage::Regime => Scope::Pair,
            Stage::CurrencyIndex | Stage::Arbitrage | Stage::Causality => Scope::AllPairs,
            Stage::Validate | Stage::Export => Scope::Follows,
        }
    }

    /// The original per-pair stages, whose tables are (pair, ts, float columns…) written from
    /// TA-Lib-style column arrays; the later stages write typed tables (`crate::table`).
    pub fn is_column_stage(self) -> bool {
        matches!(self, Stage::Indicators | Stage::Regression)
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Stage {
    type Err = UnknownStage;
    fn from_str(s: &str) -> Result<Stage, UnknownStage> {
        Stage::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_ranks_order_partitions() {
        for s in Stage::ALL {
            assert_eq!(Stage::parse(s.name()).unwrap(), s);
        }
        let e = Stage::parse("arbitrag").unwrap_err().to_string();
        assert!(e.contains("currency-index, arbitrage, causality"), "{e}");
        assert_eq!(Stage::CurrencyIndex.scope(), Scope::AllPairs);
        assert_eq!(Stage::Regime.scope(), Scope::Pair);
        assert!(Stage::Causality.rank() < Stage::Validate.rank());
        assert!(Stage::Validate.rank() < Stage::Export.rank());
    }
}
