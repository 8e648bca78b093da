//! The registry of stages: what each is called, what it partitions over, the order a partition
//! goes through them, and the tables each writes (declared beside its kernel in `features/`).
//! Stage names are strings only at the edges (the command line, the queue's rows). A new stage
//! is a variant here, its kernel and table in `features/`, and its arm in `partition/compute.rs`.

use std::fmt;

use crate::column::Column;
use crate::features::{arbitrage, causality, currency_index, indicators, regime, regression};
use crate::table::Def;

/// Every table a stage writes, in the order they are created.
pub const TABLES: [&Def; 7] = [
    &indicators::INDICATORS,
    &regression::REGRESSION,
    &regime::REGIME,
    &currency_index::CURRENCY_INDEX,
    &arbitrage::ARBITRAGE,
    &arbitrage::ARBITRAGE_EVENTS,
    &causality::CAUSALITY,
];

/// The column `name` of the output table `table`.
pub fn find(table: &str, name: &str) -> Option<&'static Column> {
    TABLES
        .iter()
        .find(|d| d.name == table)?
        .columns
        .iter()
        .find(|c| c.name == name)
}

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

    /// The per-pair stages whose kernels fill TA-Lib-style arrays over the month and the
    /// 2,000 bars before it (`table::Rows::of_columns` makes their rows).
    pub fn is_column_stage(self) -> bool {
        matches!(self, Stage::Indicators | Stage::Regression)
    }

    /// The tables the stage writes (none for validate and export, which read them).
    pub fn tables(self) -> &'static [&'static Def] {
        match self {
            Stage::Indicators => &[&indicators::INDICATORS],
            Stage::Regression => &[&regression::REGRESSION],
            Stage::Regime => &[&regime::REGIME],
            Stage::CurrencyIndex => &[&currency_index::CURRENCY_INDEX],
            Stage::Arbitrage => &[&arbitrage::ARBITRAGE, &arbitrage::ARBITRAGE_EVENTS],
            Stage::Causality => &[&causality::CAUSALITY],
            Stage::Validate | Stage::Export => &[],
        }
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

    #[test]
    fn every_table_has_its_key_and_month_and_a_partition_filter() {
        assert_eq!(
            currency_index::CURRENCY_INDEX.ddl("r"),
            "CREATE TABLE IF NOT EXISTS r.currency_index (currency text NOT NULL, ts \
             timestamptz NOT NULL, index double precision, log_return double precision, pairs \
             integer NOT NULL, pairs_loaded integer NOT NULL, PRIMARY KEY (currency, ts));\
             COMMENT ON TABLE r.currency_index IS 'Per currency and minute: the equal-weighted \
             mean log return of the loaded pairs that contain the currency and its index from \
             100. Over the pairs loaded: adding or removing a pair of the currency changes its \
             index (pairs_loaded says how many); a currency whose pairs are unchanged gets the \
             same rows whatever else is loaded.';\
             CREATE INDEX IF NOT EXISTS currency_index_ts ON r.currency_index (ts);"
        );
        // A quote in a description is doubled, as SQL's string literal wants.
        let quoted = Def {
            about: "the pair's own bars",
            ..causality::CAUSALITY
        };
        assert!(quoted.ddl("r").contains("IS 'the pair''s own bars';"));
        // Per-pair tables and those keyed by their month find a partition through the key.
        assert!(!regime::REGIME.ddl("r").contains("CREATE INDEX"));
        assert!(!causality::CAUSALITY.ddl("r").contains("CREATE INDEX"));
        assert_eq!(
            regime::REGIME.partition_filter(),
            "ts >= $1 AND ts < $2 AND pair = $3"
        );
        assert_eq!(causality::CAUSALITY.partition_filter(), "month = $1::date");
        for def in TABLES {
            for k in def.key {
                assert!(def.kind(k).is_some(), "{}: key {k}", def.name);
            }
            assert!(def.kind(def.month_column).is_some(), "{}", def.name);
        }
        // Each table is written by exactly one stage.
        for def in TABLES {
            let by: Vec<Stage> = Stage::ALL
                .into_iter()
                .filter(|s| s.tables().contains(&def))
                .collect();
            assert_eq!(by.len(), 1, "{}: {by:?}", def.name);
        }
        assert_eq!(find("regression", "r2_60").map(|c| c.nullable), Some(true));
        assert!(find("indicators", "nope").is_none());
        assert!(find("nope", "rsi_14").is_none());
        let bad = crate::table::Rows::new(
            &arbitrage::ARBITRAGE,
            vec![crate::table::Values::Int(vec![])],
        );
        assert!(bad.is_err());
    }
}
