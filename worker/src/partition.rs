//! One partition, start to finish: read its bars (and warm-up history) with binary COPY out,
//! clean, compute the stage, then in one transaction replace its output with binary COPY in and
//! mark it done. A crash leaves nothing half-written; a rerun replaces, never duplicates.

use anyhow::{bail, Context, Result};
use chrono::{DateTime, Datelike, NaiveDate, Utc};
use futures_util::{pin_mut, TryStreamExt};
use ta_lib::Core;
use tokio_postgres::binary_copy::{BinaryCopyInWriter, BinaryCopyOutStream};
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::Client;

use crate::bars::{clean, Bars, Quality};
use crate::db::{checked_ident, stage_columns};
use crate::features::{indicators, regression, Columns};
use crate::queue::{self, Claim};

/// Bars read before the month so indicators and windows are warm at its first bar (the
/// longest window is 1440 bars; EMA-based indicators converge well within this).
pub const WARM_UP_BARS: i64 = 2000;

#[derive(Debug, Clone, PartialEq)]
pub struct Done {
    pub rows_in: u64,
    pub rows_out: u64,
    pub quality: Quality,
}

fn month_bounds(month: NaiveDate) -> (DateTime<Utc>, DateTime<Utc>) {
    let start = month.with_day(1).unwrap_or(month);
    let next = if start.month() == 12 {
        NaiveDate::from_ymd_opt(start.year() + 1, 1, 1)
    } else {
        NaiveDate::from_ymd_opt(start.year(), start.month() + 1, 1)
    }
    .unwrap_or(start);
    (
        start.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc(),
        next.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc(),
    )
}

fn pair_literal(pair: &str) -> Result<String> {
    if pair.is_empty()
        || pair.len() > 32
        || !pair
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-/.".contains(c))
    {
        bail!("'{pair}' is not a pair name this worker reads");
    }
    Ok(format!("'{pair}'"))
}

async fn copy_out(client: &Client, sql: &str) -> Result<Bars> {
    let stream = client.copy_out(sql).await?;
    let rows = BinaryCopyOutStream::new(
        stream,
        &[
            Type::TIMESTAMPTZ,
            Type::FLOAT8,
            Type::FLOAT8,
            Type::FLOAT8,
            Type::FLOAT8,
            Type::FLOAT8,
        ],
    );
    pin_mut!(rows);
    let mut b = Bars::default();
    let nan = |v: Option<f64>| v.unwrap_or(f64::NAN);
    while let Some(r) = rows.try_next().await? {
        let ts: DateTime<Utc> = r.get(0);
        b.push(
            ts.timestamp_micros(),
            nan(r.get(1)),
            nan(r.get(2)),
            nan(r.get(3)),
            nan(r.get(4)),
            r.get::<Option<f64>>(5).unwrap_or(0.0),
        );
    }
    Ok(b)
}

/// Reads the month's bars and the warm-up history before it.
pub async fn read(
    client: &Client,
    source: &str,
    pair: &str,
    month: NaiveDate,
) -> Result<(Bars, Bars)> {
    let source = checked_ident(source)?;
    let p = pair_literal(pair)?;
    let (start, end) = month_bounds(month);
    let (s, e) = (start.to_rfc3339(), end.to_rfc3339());
    let history = copy_out(
        client,
        &format!(
            "COPY (SELECT * FROM (SELECT ts, open, high, low, close, volume FROM {source}
                    WHERE pair = {p} AND ts < '{s}' ORDER BY ts DESC LIMIT {WARM_UP_BARS}) h ORDER BY ts)
             TO STDOUT (FORMAT binary)"
        ),
    )
    .await?;
    let month_bars = copy_out(
        client,
        &format!(
            "COPY (SELECT ts, open, high, low, close, volume FROM {source}
                    WHERE pair = {p} AND ts >= '{s}' AND ts < '{e}' ORDER BY ts)
             TO STDOUT (FORMAT binary)"
        ),
    )
    .await?;
    Ok((history, month_bars))
}

pub fn compute(core: &Core, stage: &str, bars: &Bars) -> Result<Columns> {
    Ok(match stage {
        "indicators" => {
            indicators::compute(core, bars).map_err(|e| anyhow::anyhow!("TA-Lib: {e:?}"))?
        }
        "regression" => regression::compute(bars),
        other => bail!("unknown stage '{other}'"),
    })
}

/// Processes one claimed partition.
pub async fn process(
    client: &mut Client,
    core: &Core,
    source: &str,
    owner: &str,
    c: &Claim,
) -> Result<Done> {
    let (history, month_raw) = read(client, source, &c.pair, c.month)
        .await
        .with_context(|| format!("reading {} {}", c.pair, c.month))?;
    let (_, quality) = clean(&month_raw);
    let mut all = history;
    all.ts.extend(&month_raw.ts);
    all.open.extend(&month_raw.open);
    all.high.extend(&month_raw.high);
    all.low.extend(&month_raw.low);
    all.close.extend(&month_raw.close);
    all.volume.extend(&month_raw.volume);
    let (bars, _) = clean(&all);
    let (start, end) = month_bounds(c.month);
    let first = bars.ts.partition_point(|&t| t < start.timestamp_micros());
    let cols = compute(core, &c.stage, &bars)?;
    let names = stage_columns(&c.stage)?;
    debug_assert_eq!(names, cols.names);

    let tx = client.transaction().await?;
    tx.execute(
        &format!(
            "DELETE FROM ephemera.{} WHERE pair = $1 AND ts >= $2 AND ts < $3",
            c.stage
        ),
        &[&c.pair, &start, &end],
    )
    .await?;
    let sink = tx
        .copy_in(&format!(
            "COPY ephemera.{} (pair, ts, {}) FROM STDIN (FORMAT binary)",
            c.stage,
            names.join(", ")
        ))
        .await?;
    let mut types = vec![Type::TEXT, Type::TIMESTAMPTZ];
    types.extend(std::iter::repeat_n(Type::FLOAT8, names.len()));
    let writer = BinaryCopyInWriter::new(sink, &types);
    pin_mut!(writer);
    let mut rows_out = 0u64;
    let mut row: Vec<Option<f64>> = vec![None; names.len()];
    for i in first..bars.len() {
        let ts = DateTime::<Utc>::from_timestamp_micros(bars.ts[i]).unwrap_or_default();
        for (k, col) in cols.values.iter().enumerate() {
            row[k] = col[i];
        }
        let mut refs: Vec<&(dyn ToSql + Sync)> = Vec::with_capacity(names.len() + 2);
        refs.push(&c.pair);
        refs.push(&ts);
        for v in &row {
            refs.push(v);
        }
        writer.as_mut().write(&refs).await?;
        rows_out += 1;
    }
    writer.finish().await?;
    let quality_json = serde_json::to_value(&quality)?;
    queue::complete(
        &tx,
        owner,
        c,
        quality.rows_in as i64,
        rows_out as i64,
        &quality_json,
    )
    .await?;
    tx.commit().await?;
    Ok(Done {
        rows_in: quality.rows_in,
        rows_out,
        quality,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_and_names() {
        let (s, e) = month_bounds(NaiveDate::from_ymd_opt(2023, 12, 1).unwrap());
        assert_eq!(s.to_rfc3339(), "2023-12-01T00:00:00+00:00");
        assert_eq!(e.to_rfc3339(), "2024-01-01T00:00:00+00:00");
        assert_eq!(pair_literal("EURUSD").unwrap(), "'EURUSD'");
        assert!(pair_literal("x'; DROP TABLE t; --").is_err());
    }
}
