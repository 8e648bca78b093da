//! A typed table's partition written and read with binary COPY: the one writer and the one
//! reader of every stage's output (`table::Rows`), in the run's schema.

use anyhow::{bail, Context, Result};
use futures_util::{pin_mut, TryStreamExt};
use tokio_postgres::binary_copy::{BinaryCopyInWriter, BinaryCopyOutStream};
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, Transaction};

use crate::column::names;
use crate::db::pair_literal;
use crate::month::Month;
use crate::table::{Def, Kind, Rows, Values};

/// What selects one partition's rows of a table.
#[derive(Debug, Clone, Copy)]
pub struct Partition<'a> {
    pub month: Month,
    /// For per-pair tables.
    pub pair: Option<&'a str>,
}

impl Partition<'_> {
    fn params(&self, def: &Def) -> Vec<&(dyn ToSql + Sync)> {
        let mut p: Vec<&(dyn ToSql + Sync)> = match def.kind(def.month_column) {
            Some(Kind::Date) => vec![&self.month.first],
            _ => vec![&self.month.start, &self.month.end],
        };
        if def.pair_column.is_some() {
            p.push(&self.pair);
        }
        p
    }

    /// The same filter with literals, for COPY (which takes no parameters).
    fn literal_filter(&self, def: &Def) -> Result<String> {
        let month = match def.kind(def.month_column) {
            Some(Kind::Date) => format!("{} = '{}'", def.month_column, self.month.first),
            _ => self.month.filter(def.month_column),
        };
        Ok(match (def.pair_column, self.pair) {
            (Some(col), Some(p)) => {
                format!("{month} AND {col} = {}", pair_literal(p)?)
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
    let names = names(def.columns);
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
        row.extend(rows.columns.iter().map(|c| sql(c, i)));
        writer.as_mut().write(&row).await?;
    }
    Ok(writer.finish().await?)
}

/// The query that reads a partition's rows of the table in `schema`, in key order.
pub fn read_query(schema: &str, def: &Def, part: &Partition<'_>) -> Result<String> {
    let names = names(def.columns);
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

/// One cell, as binary COPY sends it.
fn sql(v: &Values, i: usize) -> &(dyn ToSql + Sync) {
    match v {
        Values::Text(v) => &v[i],
        Values::OptText(v) => &v[i],
        Values::Ts(v) => &v[i],
        Values::Date(v) => &v[i],
        Values::Int(v) => &v[i],
        Values::F64(v) => &v[i],
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
