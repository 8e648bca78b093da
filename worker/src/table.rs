//! Typed output tables of the later stages (regime, currency-index, arbitrage, causality): their
//! schema, their rows in columns, the binary COPY that writes them and reads them back, and their
//! Parquet encoding. A table's partition is its rows of one month (of one pair for per-pair
//! stages), found by the month's time range on its time column, or its `month` column.

use std::sync::Arc;

use anyhow::{bail, Context, Result};
use arrow_array::{
    ArrayRef, Date32Array, Float64Array, Int32Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use arrow_schema::{Field, Schema};
use chrono::{DateTime, NaiveDate, Utc};
use futures_util::{pin_mut, TryStreamExt};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use tokio_postgres::binary_copy::{BinaryCopyInWriter, BinaryCopyOutStream};
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, Transaction};

use crate::stage::Stage;

pub use crate::column::{Column, Kind};
use crate::column::{ANY_WARM_UP, NON_NEGATIVE, PERCENT, POSITIVE, UNIT};

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
    fn partition_filter(&self) -> String {
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

pub const REGIME: Def = Def {
    name: "regime",
    columns: &[
        Column::of("pair", Kind::Text),
        Column::of("ts", Kind::Ts),
        Column::f64("rv_60")
            .warm_up(ANY_WARM_UP)
            .range(NON_NEGATIVE),
        Column::f64("rv_pct_30d").warm_up(ANY_WARM_UP).range(UNIT),
        Column::of("vol_regime", Kind::OptText),
        Column::f64("adx_14").warm_up(ANY_WARM_UP).range(PERCENT),
        Column::f64("slope_240").warm_up(ANY_WARM_UP),
        Column::of("trend_regime", Kind::OptText),
    ],
    key: &["pair", "ts"],
    month_column: "ts",
    pair_column: Some("pair"),
    about: "Per pair and bar: realised volatility over 60 bars, its percentile over the 30 days before, ADX(14), the 240-bar slope and the regimes they give. Depends on the pair's own bars only.",
};

pub const CURRENCY_INDEX: Def = Def {
    name: "currency_index",
    columns: &[
        Column::of("currency", Kind::Text),
        Column::of("ts", Kind::Ts),
        Column::f64("index").range(POSITIVE),
        Column::f64("log_return"),
        Column::of("pairs", Kind::Int),
        Column::of("pairs_loaded", Kind::Int),
    ],
    key: &["currency", "ts"],
    month_column: "ts",
    pair_column: None,
    about: "Per currency and minute: the equal-weighted mean log return of the loaded pairs that contain the currency and its index from 100. Over the pairs loaded: adding or removing a pair of the currency changes its index (pairs_loaded says how many); a currency whose pairs are unchanged gets the same rows whatever else is loaded.",
};

pub const ARBITRAGE: Def = Def {
    name: "arbitrage",
    columns: &[
        Column::of("triangle", Kind::Text),
        Column::of("ts", Kind::Ts),
        Column::f64("implied").range(POSITIVE),
        Column::f64("quoted").range(POSITIVE),
        Column::f64("deviation_bp"),
    ],
    key: &["triangle", "ts"],
    month_column: "ts",
    pair_column: None,
    about: "Per triangle and minute where its three legs have a bar: the implied cross through the vehicle, the quoted cross and the deviation in basis points. One triangle for every three currencies whose pairs are loaded; the vehicle is the first of them in a fixed order (USD, EUR, JPY, GBP, CNY, AUD, CAD, CHF, HKD, SGD, SEK, KRW, NOK, NZD, then alphabetical), so a triangle's rows depend on its three pairs only.",
};

pub const ARBITRAGE_EVENTS: Def = Def {
    name: "arbitrage_events",
    columns: &[
        Column::of("triangle", Kind::Text),
        Column::of("start_ts", Kind::Ts),
        Column::of("end_ts", Kind::Ts),
        Column::of("minutes", Kind::Int),
        Column::f64("peak_bp"),
        Column::f64("mean_bp"),
    ],
    key: &["triangle", "start_ts"],
    month_column: "start_ts",
    pair_column: None,
    about: "Per triangle: runs of consecutive minutes whose deviation is beyond the threshold on one side, with their peak and mean. A triangle's events depend on its three pairs only.",
};

pub const CAUSALITY: Def = Def {
    name: "causality",
    columns: &[
        Column::of("month", Kind::Date),
        Column::of("cause", Kind::Text),
        Column::of("effect", Kind::Text),
        Column::of("lag", Kind::Int),
        Column::f64("f_stat").range(NON_NEGATIVE),
        Column::f64("p_value").range(UNIT),
        Column::of("nobs", Kind::Int),
        Column::of("df_num", Kind::Int),
        Column::of("df_den", Kind::Int),
    ],
    key: &["month", "cause", "effect", "lag"],
    month_column: "month",
    pair_column: None,
    about: "Per month, ordered pair of pairs (cause, effect) and lag: the Granger ssr F test of 5-minute log returns and its p-value. A test depends on its two pairs only.",
};

/// Every typed table, for the schema.
pub const ALL: [&Def; 5] = [
    &REGIME,
    &CURRENCY_INDEX,
    &ARBITRAGE,
    &ARBITRAGE_EVENTS,
    &CAUSALITY,
];

/// The typed tables a stage writes (none for the column stages, validate and export).
pub fn of(stage: Stage) -> &'static [&'static Def] {
    match stage {
        Stage::Regime => &[&REGIME],
        Stage::CurrencyIndex => &[&CURRENCY_INDEX],
        Stage::Arbitrage => &[&ARBITRAGE, &ARBITRAGE_EVENTS],
        Stage::Causality => &[&CAUSALITY],
        _ => &[],
    }
}

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
    fn empty(kind: Kind) -> Values {
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
    fn kind(&self) -> Kind {
        match self {
            Values::Text(_) => Kind::Text,
            Values::OptText(_) => Kind::OptText,
            Values::Ts(_) => Kind::Ts,
            Values::Date(_) => Kind::Date,
            Values::Int(_) => Kind::Int,
            Values::F64(_) => Kind::F64,
        }
    }
    fn sql(&self, i: usize) -> &(dyn ToSql + Sync) {
        match self {
            Values::Text(v) => &v[i],
            Values::OptText(v) => &v[i],
            Values::Ts(v) => &v[i],
            Values::Date(v) => &v[i],
            Values::Int(v) => &v[i],
            Values::F64(v) => &v[i],
        }
    }
}

/// Optional text columns hold labels from a small set (regimes): one static string each.
fn intern(s: &str) -> &'static str {
    crate::features::regime::LABELS
        .iter()
        .find(|l| **l == s)
        .copied()
        .unwrap_or("?")
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

    pub fn column(&self, name: &str) -> Option<&Values> {
        self.def
            .columns
            .iter()
            .position(|c| c.name == name)
            .map(|k| &self.columns[k])
    }
}

/// What selects one partition's rows of a table.
#[derive(Debug, Clone, Copy)]
pub struct Partition<'a> {
    pub month: NaiveDate,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    /// For per-pair tables.
    pub pair: Option<&'a str>,
}

impl Partition<'_> {
    fn params(&self, def: &Def) -> Vec<&(dyn ToSql + Sync)> {
        let mut p: Vec<&(dyn ToSql + Sync)> = match def.kind(def.month_column) {
            Some(Kind::Date) => vec![&self.month],
            _ => vec![&self.start, &self.end],
        };
        if def.pair_column.is_some() {
            p.push(&self.pair);
        }
        p
    }

    /// The same filter with literals, for COPY (which takes no parameters).
    fn literal_filter(&self, def: &Def) -> Result<String> {
        let month = match def.kind(def.month_column) {
            Some(Kind::Date) => format!("{} = '{}'", def.month_column, self.month),
            _ => format!(
                "{c} >= '{}' AND {c} < '{}'",
                self.start.to_rfc3339(),
                self.end.to_rfc3339(),
                c = def.month_column
            ),
        };
        Ok(match (def.pair_column, self.pair) {
            (Some(col), Some(p)) => {
                format!("{month} AND {col} = {}", crate::db::pair_literal(p)?)
            }
            (Some(_), None) => bail!("{} is per pair: the partition names no pair", def.name),
            _ => month,
        })
    }
}

/// Replaces a partition's rows of the table in `schema` (its run's) inside the caller's
/// transaction: delete, then binary COPY in.
pub async fn replace(
    tx: &Transaction<'_>,
    schema: &str,
    part: &Partition<'_>,
    rows: &Rows,
) -> Result<u64> {
    let def = rows.def;
    tx.execute(
        &format!(
            "DELETE FROM {schema}.{} WHERE {}",
            def.name,
            def.partition_filter()
        ),
        &part.params(def),
    )
    .await
    .with_context(|| format!("deleting the partition's rows of {}", def.name))?;
    let names = crate::column::names(def.columns);
    let sink = tx
        .copy_in(&format!(
            "COPY {schema}.{} ({}) FROM STDIN (FORMAT binary)",
            def.name,
            names.join(", ")
        ))
        .await?;
    let types: Vec<Type> = def.columns.iter().map(|c| c.kind.pg()).collect();
    let writer = BinaryCopyInWriter::new(sink, &types);
    pin_mut!(writer);
    let mut row: Vec<&(dyn ToSql + Sync)> = Vec::with_capacity(names.len());
    for i in 0..rows.len() {
        row.clear();
        row.extend(rows.columns.iter().map(|c| c.sql(i)));
        writer.as_mut().write(&row).await?;
    }
    Ok(writer.finish().await?)
}

/// The query that reads a partition's rows of the table in `schema`, in key order.
pub fn read_query(schema: &str, def: &Def, part: &Partition<'_>) -> Result<String> {
    let names = crate::column::names(def.columns);
    Ok(format!(
        "SELECT {} FROM {schema}.{} WHERE {} ORDER BY {}",
        names.join(", "),
        def.name,
        part.literal_filter(def)?,
        def.key.join(", ")
    ))
}

/// Reads a partition's rows of the table in `schema` back with binary COPY out, in key order.
pub async fn read(
    client: &Client,
    schema: &str,
    def: &'static Def,
    part: &Partition<'_>,
) -> Result<Rows> {
    let stream = client
        .copy_out(&format!(
            "COPY ({}) TO STDOUT (FORMAT binary)",
            read_query(schema, def, part)?
        ))
        .await?;
    let types: Vec<Type> = def.columns.iter().map(|c| c.kind.pg()).collect();
    let rows = BinaryCopyOutStream::new(stream, &types);
    pin_mut!(rows);
    let mut cols: Vec<Values> = def.columns.iter().map(|c| Values::empty(c.kind)).collect();
    while let Some(r) = rows.try_next().await? {
        for (k, c) in cols.iter_mut().enumerate() {
            match c {
                Values::Text(v) => v.push(r.get(k)),
                Values::OptText(v) => v.push(r.get::<Option<&str>>(k).map(intern)),
                Values::Ts(v) => v.push(r.get(k)),
                Values::Date(v) => v.push(r.get(k)),
                Values::Int(v) => v.push(r.get(k)),
                Values::F64(v) => v.push(r.get(k)),
            }
        }
    }
    Rows::new(def, cols)
}

/// Encodes rows as Parquet with zstd; the same rows always give the same bytes.
pub fn parquet(rows: &Rows) -> Result<Vec<u8>> {
    let mut fields = vec![];
    let mut arrays: Vec<ArrayRef> = vec![];
    for (c, v) in rows.def.columns.iter().zip(&rows.columns) {
        let array: ArrayRef = match v {
            Values::Text(v) => Arc::new(StringArray::from(v.clone())),
            Values::OptText(v) => Arc::new(StringArray::from(v.clone())),
            Values::Ts(v) => Arc::new(
                TimestampMicrosecondArray::from(
                    v.iter().map(|t| t.timestamp_micros()).collect::<Vec<_>>(),
                )
                .with_timezone("UTC"),
            ),
            Values::Date(v) => {
                let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).context("the epoch")?;
                Arc::new(Date32Array::from(
                    v.iter()
                        .map(|d| (*d - epoch).num_days() as i32)
                        .collect::<Vec<_>>(),
                ))
            }
            Values::Int(v) => Arc::new(Int32Array::from(v.clone())),
            Values::F64(v) => Arc::new(Float64Array::from(v.clone())),
        };
        fields.push(Field::new(c.name, c.kind.arrow(), c.kind.nullable()));
        arrays.push(array);
    }
    let schema = Arc::new(Schema::new(fields));
    let batch = RecordBatch::try_new(schema.clone(), arrays)?;
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3)?))
        .build();
    let mut out = Vec::new();
    let mut w = ArrowWriter::try_new(&mut out, schema, Some(props))?;
    w.write(&batch)?;
    w.close()?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemas_and_filters() {
        assert_eq!(
            CURRENCY_INDEX.ddl("r"),
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
            ..CAUSALITY
        };
        assert!(quoted.ddl("r").contains("IS 'the pair''s own bars';"));
        // Per-pair tables and those keyed by their month find a partition through the key.
        assert!(!REGIME.ddl("r").contains("CREATE INDEX"));
        assert!(!CAUSALITY.ddl("r").contains("CREATE INDEX"));
        assert_eq!(
            REGIME.partition_filter(),
            "ts >= $1 AND ts < $2 AND pair = $3"
        );
        assert_eq!(CAUSALITY.partition_filter(), "month = $1::date");
        for def in ALL {
            for k in def.key {
                assert!(def.kind(k).is_some(), "{}: key {k}", def.name);
            }
            assert!(def.kind(def.month_column).is_some(), "{}", def.name);
        }
        let bad = Rows::new(&ARBITRAGE, vec![Values::Int(vec![])]);
        assert!(bad.is_err());
    }
}
