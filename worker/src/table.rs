//! Every stage's output as a typed table: its schema (`Def`: columns, key, how a partition's
//! rows are found) and its rows in columns (`Rows`). Pure: the kernels in `features/` declare
//! their tables and return rows of them; `copy.rs` writes and reads them with binary COPY,
//! `export.rs` encodes them as Parquet, `outputs.rs` creates them. A table's partition is its
//! rows of one month (of one pair for per-pair stages), found by the month's time range on its
//! time column, or its `month` column.

use anyhow::{bail, Result};
use chrono::{DateTime, NaiveDate, Utc};

use crate::column::{finite, Columns};
pub use crate::column::{Column, Kind};

/// A table's schema: columns in order, the primary key, and how a month's rows are found.
#[derive(Debug, PartialEq)]
pub struct Def {
    pub name: &'static str,
    pub columns: &'static [Column],
    pub key: &'static [&'static str],
    /// The column a month is taken on: a timestamp (the month's range) or a date (the month).
    pub month_column: &'static str,
    /// Per-pair tables: the pair column, which a partition's rows also match.
    pub pair_column: Option<&'static str>,
    /// What a row is, and what it depends on: the table's comment in PostgreSQL.
    pub about: &'static str,
}

impl Def {
    pub fn kind(&self, column: &str) -> Option<Kind> {
        self.columns
            .iter()
            .find(|c| c.name == column)
            .map(|c| c.kind)
    }

    /// Creates the table in `schema` if absent. Tables whose key does not lead with the month
    /// column (the cross-pair ones) also get an index on it: a partition's delete and read find
    /// their month through it rather than by scanning every month of the run.
    pub fn ddl(&self, schema: &str) -> String {
        let cols: Vec<String> = self
            .columns
            .iter()
            .map(|c| format!("{} {}", c.name, c.kind.sql()))
            .collect();
        let mut sql = format!(
            "CREATE TABLE IF NOT EXISTS {schema}.{} ({}, PRIMARY KEY ({}));",
            self.name,
            cols.join(", "),
            self.key.join(", ")
        );
        sql.push_str(&format!(
            "COMMENT ON TABLE {schema}.{} IS '{}';",
            self.name,
            self.about.replace('\'', "''")
        ));
        if self.pair_column.is_none() && self.key.first() != Some(&self.month_column) {
            sql.push_str(&format!(
                "CREATE INDEX IF NOT EXISTS {t}_{c} ON {schema}.{t} ({c});",
                t = self.name,
                c = self.month_column
            ));
        }
        sql
    }

    /// The WHERE clause of one partition's rows: $1 = the month's start, $2 = its end (or $1 = the
    /// month for a date column), then the pair.
    pub(crate) fn partition_filter(&self) -> String {
        let (m, next) = match self.kind(self.month_column) {
            Some(Kind::Date) => (format!("{} = $1::date", self.month_column), 2),
            _ => (format!("{c} >= $1 AND {c} < $2", c = self.month_column), 3),
        };
        match self.pair_column {
            Some(p) => format!("{m} AND {p} = ${next}"),
            None => m,
        }
    }
}

/// A per-pair table's columns: (pair, ts) then the stage's own, as one array (`M` = 2 + `N`).
pub const fn keyed<const N: usize, const M: usize>(own: [Column; N]) -> [Column; M] {
    assert!(
        M == N + 2,
        "a keyed table has two more columns than its stage's own"
    );
    let mut out = [PAIR; M];
    out[1] = TS;
    let mut i = 0;
    while i < N {
        out[i + 2] = own[i];
        i += 1;
    }
    out
}

/// The key columns of a per-pair table.
pub const PAIR: Column = Column::of("pair", Kind::Text);
pub const TS: Column = Column::of("ts", Kind::Ts);

/// One column's values.
#[derive(Debug, Clone, PartialEq)]
pub enum Values {
    Text(Vec<String>),
    OptText(Vec<Option<&'static str>>),
    Ts(Vec<DateTime<Utc>>),
    Date(Vec<NaiveDate>),
    Int(Vec<i32>),
    /// NULL where undefined.
    F64(Vec<Option<f64>>),
}

impl Values {
    pub(crate) fn empty(kind: Kind) -> Values {
        match kind {
            Kind::Text => Values::Text(vec![]),
            Kind::OptText => Values::OptText(vec![]),
            Kind::Ts => Values::Ts(vec![]),
            Kind::Date => Values::Date(vec![]),
            Kind::Int => Values::Int(vec![]),
            Kind::F64 => Values::F64(vec![]),
        }
    }
    pub fn len(&self) -> usize {
        match self {
            Values::Text(v) => v.len(),
            Values::OptText(v) => v.len(),
            Values::Ts(v) => v.len(),
            Values::Date(v) => v.len(),
            Values::Int(v) => v.len(),
            Values::F64(v) => v.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn kind(&self) -> Kind {
        match self {
            Values::Text(_) => Kind::Text,
            Values::OptText(_) => Kind::OptText,
            Values::Ts(_) => Kind::Ts,
            Values::Date(_) => Kind::Date,
            Values::Int(_) => Kind::Int,
            Values::F64(_) => Kind::F64,
        }
    }
}

/// A table's rows of one partition, in columns ordered as its `Def`.
#[derive(Debug, Clone, PartialEq)]
pub struct Rows {
    pub def: &'static Def,
    pub columns: Vec<Values>,
}

impl Rows {
    pub fn new(def: &'static Def, columns: Vec<Values>) -> Result<Rows> {
        if columns.len() != def.columns.len() {
            bail!(
                "{}: {} columns for {}",
                def.name,
                columns.len(),
                def.columns.len()
            );
        }
        let n = columns.first().map_or(0, Values::len);
        for (c, v) in def.columns.iter().zip(&columns) {
            if v.kind() != c.kind || v.len() != n {
                bail!(
                    "{}.{}: {:?} of {} rows, expected {:?} of {n}",
                    def.name,
                    c.name,
                    v.kind(),
                    v.len(),
                    c.kind
                );
            }
        }
        Ok(Rows { def, columns })
    }

    pub fn len(&self) -> usize {
        self.columns.first().map_or(0, Values::len)
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A per-pair column stage's rows from its kernel's arrays over the month and its history:
    /// the bars from `first` on (the month), each value NULL where it is not finite.
    pub fn of_columns(
        def: &'static Def,
        pair: &str,
        ts: &[i64],
        cols: &Columns,
        first: usize,
    ) -> Result<Rows> {
        let month = ts.get(first..).unwrap_or_default();
        let mut columns = vec![
            Values::Text(vec![pair.to_string(); month.len()]),
            Values::Ts(
                month
                    .iter()
                    .map(|&t| DateTime::<Utc>::from_timestamp_micros(t).unwrap_or_default())
                    .collect(),
            ),
        ];
        for values in &cols.values {
            let month = values.get(first..).unwrap_or_default();
            columns.push(Values::F64(month.iter().map(|&x| finite(x)).collect()));
        }
        Rows::new(def, columns)
    }

    pub fn column(&self, name: &str) -> Option<&Values> {
        self.def
            .columns
            .iter()
            .position(|c| c.name == name)
            .map(|k| &self.columns[k])
    }
}
