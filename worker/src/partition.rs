//! One partition, start to finish: read its bars (and warm-up history) with binary COPY out,
//! clean, compute the stage, then in one transaction replace its output with binary COPY in and
//! mark it done. A crash leaves nothing half-written; a rerun replaces, never duplicates. Every
//! output is the claim's run's (`outputs`): other runs' rows are never read or written.

use anyhow::{bail, Context, Result};
use chrono::{DateTime, NaiveDate, Utc};
use ephemera_contract::ManifestObject;
use futures_util::{pin_mut, TryStreamExt};
use ta_lib::Core;
use tokio_postgres::binary_copy::BinaryCopyOutStream;
use tokio_postgres::Client;

use crate::bars::{clean, Bars, Quality};
use crate::column::Columns;
use crate::copy;
use crate::db::{checked_ident, pair_literal, BAR_TYPES, SOURCE_TYPES};
use crate::export;
use crate::features::{
    arbitrage, causality, currency_index, indicators, regime, regression, Params,
};
use crate::month::Month;
use crate::outputs;
use crate::quality::{self, Computed, Exported};
use crate::queue::{self, Claim};
use crate::stage::{Scope, Stage};
use crate::store::{self, Store};
use crate::table::{self, Rows};
use crate::validate;

/// Bars read before the month so indicators and windows are warm at its first bar (the
/// longest window is 1440 bars; EMA-based indicators converge well within this).
pub const WARM_UP_BARS: i64 = 2000;

/// A partition's rows and its done-marker commit together without waiting for the log to
/// reach disk (1.0–1.4× on the write path of a durable server, README "Figures"). A server
/// crash can lose the last such commits, each whole: rows and marker go together and the queue
/// redoes the partition when its lease expires, so no rows are lost or doubled. Whatever `run`
/// reports it has made durable first (`db::flush`).
pub const ASYNC_COMMIT: &str = "SET LOCAL synchronous_commit = off";

#[derive(Debug, Clone, PartialEq)]
pub struct Done {
    pub rows_out: u64,
}

async fn copy_out(client: &Client, sql: &str) -> Result<Bars> {
    let stream = client.copy_out(sql).await?;
    let rows = BinaryCopyOutStream::new(stream, &BAR_TYPES);
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
pub async fn read(client: &Client, source: &str, pair: &str, month: Month) -> Result<(Bars, Bars)> {
    let source = checked_ident(source)?;
    let p = pair_literal(pair)?;
    let (s, e) = (month.start.to_rfc3339(), month.end.to_rfc3339());
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

pub fn compute(core: &Core, stage: Stage, bars: &Bars) -> Result<Columns> {
    Ok(match stage {
        Stage::Indicators => {
            indicators::compute(core, bars).map_err(|e| anyhow::anyhow!("TA-Lib: {e:?}"))?
        }
        Stage::Regression => regression::compute(bars),
        other => bail!("'{other}' does not compute columns from one pair's bars"),
    })
}

/// A cross-pair stage's tables from every pair's clean bars of one month (sorted by pair).
pub fn compute_cross(
    stage: Stage,
    month: NaiveDate,
    pairs: &[(String, Bars)],
    params: &Params,
) -> Result<Vec<Rows>> {
    Ok(match stage {
        Stage::CurrencyIndex => vec![currency_index::compute(pairs)?],
        Stage::Arbitrage => {
            let (minutes, events) = arbitrage::compute(pairs, params.arbitrage)?;
            vec![minutes, events]
        }
        Stage::Causality => vec![causality::compute(month, pairs)?],
        other => bail!("'{other}' is not a cross-pair stage"),
    })
}

/// What a partition's work needs besides the claim.
pub struct Work<'a> {
    pub core: &'a Core,
    pub source: &'a str,
    pub owner: &'a str,
    /// Where `export` writes; None when the run exports nothing.
    pub store: Option<&'a Store>,
    pub params: &'a Params,
}

/// Processes one claimed partition of any stage.
pub async fn process(client: &mut Client, cx: &Work<'_>, c: &Claim) -> Result<Done> {
    match c.stage {
        Stage::Validate => validate_partition(client, cx, c).await,
        Stage::Export => match cx.store {
            Some(store) => export_partition(client, cx, store, c).await,
            None => bail!("stage 'export' needs --export s3://bucket/prefix/ or a directory"),
        },
        s if s.is_column_stage() => features(client, cx, c).await,
        s => match s.scope() {
            Scope::AllPairs => cross_pair(client, cx, s, c).await,
            Scope::Pair => per_pair(client, cx, s, c).await,
            Scope::Follows => bail!("'{s}' is not handled by this worker"),
        },
    }
}

/// The feature stages of this run that a partition's validate or export covers.
async fn feature_stages(client: &Client, c: &Claim) -> Result<Vec<(Stage, Option<u64>)>> {
    let rows = client
        .query(
            "SELECT stage, quality FROM ephemera.partitions
              WHERE run_id = $1 AND pair = $2 AND month = $3 AND rank = 0 ORDER BY stage",
            &[&c.run_id, &c.pair, &c.month.first],
        )
        .await?;
    rows.iter()
        .map(|r| {
            let q: Option<Computed> = quality::read(r.get(1))?;
            Ok((Stage::parse(r.get(0))?, q.and_then(|q| q.history_bars)))
        })
        .collect()
}

/// A partition's rows of one table of its run, read back.
async fn read_table(client: &Client, def: &'static table::Def, c: &Claim) -> Result<Rows> {
    let part = copy::Partition {
        month: c.month,
        pair: c.one_pair(),
    };
    copy::read(client, &outputs::schema(&c.run_id)?, def, &part).await
}

async fn validate_partition(client: &mut Client, cx: &Work<'_>, c: &Claim) -> Result<Done> {
    let mut checks = vec![];
    let mut gaps = None;
    let mut rows_in = 0u64;
    for (stage, history) in feature_stages(client, c).await? {
        for def in stage.tables() {
            let rows = read_table(client, def, c).await?;
            rows_in += rows.len() as u64;
            checks.extend(validate::check_table(&rows, history.unwrap_or(0) as usize));
            if let (Some(_), Some(table::Values::Ts(ts))) = (def.pair_column, rows.column("ts")) {
                let ts: Vec<i64> = ts.iter().map(|t| t.timestamp_micros()).collect();
                gaps.get_or_insert_with(|| validate::gaps(&ts));
            }
        }
    }
    let report = validate::report(&checks, gaps.unwrap_or_default());
    let tx = client.transaction().await?;
    tx.execute(
        "DELETE FROM ephemera.validation WHERE run_id = $1 AND pair = $2 AND month = $3",
        &[&c.run_id, &c.pair, &c.month.first],
    )
    .await?;
    let insert = tx
        .prepare(
            "INSERT INTO ephemera.validation (run_id, pair, month, stage, column_name, rows, nulls,
                 nulls_beyond_warm_up, non_finite, out_of_range, min, max)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        )
        .await?;
    for k in &checks {
        tx.execute(
            &insert,
            &[
                &c.run_id,
                &c.pair,
                &c.month.first,
                &k.stage,
                &k.column,
                &(k.rows as i64),
                &(k.nulls as i64),
                &(k.nulls_beyond_warm_up as i64),
                &(k.non_finite as i64),
                &(k.out_of_range as i64),
                &k.min,
                &k.max,
            ],
        )
        .await?;
    }
    let json = serde_json::to_value(&report)?;
    queue::complete(&tx, cx.owner, c, rows_in as i64, 0, &json).await?;
    tx.commit().await?;
    if report.problems > 0 {
        tracing::warn!(pair = %c.pair, month = %c.month, problems = report.problems, findings = ?report.findings, "validation found problems");
    }
    Ok(Done { rows_out: 0 })
}

async fn export_partition(
    client: &mut Client,
    cx: &Work<'_>,
    store: &Store,
    c: &Claim,
) -> Result<Done> {
    let mut objects = vec![];
    for (stage, _) in feature_stages(client, c).await? {
        for def in stage.tables() {
            let rows = read_table(client, def, c).await?;
            let n = rows.len() as u64;
            // Encoding is CPU work: off the async threads.
            let bytes = tokio::task::spawn_blocking(move || export::parquet(&rows)).await??;
            let name = match stage.scope() {
                Scope::AllPairs => export::month_object_name(def.name, c.month.first),
                _ => export::object_name(def.name, &c.pair, c.month.first),
            };
            let key = store.target.key(&name);
            objects.push(ManifestObject {
                key: key.clone(),
                rows: n,
                bytes: bytes.len() as u64,
                sha256: Some(store::sha256_hex(&bytes)),
            });
            store
                .put(&key, bytes, "application/vnd.apache.parquet")
                .await?;
        }
    }
    let rows: u64 = objects.iter().map(|o| o.rows).sum();
    let tx = client.transaction().await?;
    let json = serde_json::to_value(Exported { objects })?;
    queue::complete(&tx, cx.owner, c, rows as i64, rows as i64, &json).await?;
    tx.commit().await?;
    Ok(Done { rows_out: rows })
}

/// Every pair's bars of one month, each cleaned by the bar policy, sorted by pair; and the
/// cleaning's totals.
pub async fn read_month(
    client: &Client,
    source: &str,
    month: NaiveDate,
) -> Result<(Vec<(String, Bars)>, Quality)> {
    let source = checked_ident(source)?;
    let (start, end) = crate::month::month_bounds(month);
    let stream = client
        .copy_out(&format!(
            "COPY (SELECT pair, ts, open, high, low, close, volume FROM {source}
                    WHERE ts >= '{}' AND ts < '{}' ORDER BY pair, ts)
             TO STDOUT (FORMAT binary)",
            start.to_rfc3339(),
            end.to_rfc3339()
        ))
        .await?;
    let rows = BinaryCopyOutStream::new(stream, &SOURCE_TYPES);
    pin_mut!(rows);
    let mut raw: Vec<(String, Bars)> = vec![];
    let nan = |v: Option<f64>| v.unwrap_or(f64::NAN);
    while let Some(r) = rows.try_next().await? {
        let pair: &str = r.get(0);
        if raw.last().is_none_or(|(p, _)| p != pair) {
            raw.push((pair.to_string(), Bars::default()));
        }
        let b = &mut raw.last_mut().context("a pair's bars")?.1;
        let ts: DateTime<Utc> = r.get(1);
        b.push(
            ts.timestamp_micros(),
            nan(r.get(2)),
            nan(r.get(3)),
            nan(r.get(4)),
            nan(r.get(5)),
            r.get::<Option<f64>>(6).unwrap_or(0.0),
        );
    }
    let mut total = Quality::default();
    let pairs = raw
        .into_iter()
        .map(|(pair, b)| {
            let (bars, q) = clean(&b);
            total.rows_in += q.rows_in;
            total.bad_price += q.bad_price;
            total.high_below_low += q.high_below_low;
            total.bad_volume += q.bad_volume;
            total.out_of_order += q.out_of_order;
            total.duplicate_ts += q.duplicate_ts;
            total.gaps += q.gaps;
            total.largest_gap_minutes = total.largest_gap_minutes.max(q.largest_gap_minutes);
            total.rows_kept += q.rows_kept;
            (pair, bars)
        })
        .collect();
    Ok((pairs, total))
}

/// Writes a stage's typed tables of one partition and marks it done, in one transaction.
async fn write_tables(
    client: &mut Client,
    owner: &str,
    c: &Claim,
    tables: &[Rows],
    rows_in: u64,
    quality: serde_json::Value,
) -> Result<u64> {
    let part = copy::Partition {
        month: c.month,
        pair: c.one_pair(),
    };
    let schema = outputs::schema(&c.run_id)?;
    let tx = client.transaction().await?;
    tx.batch_execute(ASYNC_COMMIT).await?;
    let mut rows_out = 0;
    for rows in tables {
        rows_out += copy::replace(&tx, &schema, &part, rows).await?;
    }
    queue::complete(&tx, owner, c, rows_in as i64, rows_out as i64, &quality).await?;
    tx.commit().await?;
    Ok(rows_out)
}

/// Processes one claimed partition of a per-pair stage with a typed table (regime): its bars of
/// the month with the history its windows need.
async fn per_pair(client: &mut Client, cx: &Work<'_>, stage: Stage, c: &Claim) -> Result<Done> {
    let source = checked_ident(cx.source)?;
    let p = pair_literal(&c.pair)?;
    let (start, end) = (c.month.start, c.month.end);
    let from = start - chrono::Duration::days(regime::HISTORY_DAYS);
    let raw = copy_out(
        client,
        &format!(
            "COPY (SELECT ts, open, high, low, close, volume FROM {source}
                    WHERE pair = {p} AND ts >= '{}' AND ts < '{}' ORDER BY ts)
             TO STDOUT (FORMAT binary)",
            from.to_rfc3339(),
            end.to_rfc3339()
        ),
    )
    .await
    .with_context(|| format!("reading {} {}", c.pair, c.month))?;
    let (bars, _) = clean(&raw);
    let first = bars.ts.partition_point(|&t| t < start.timestamp_micros());
    // The month's own bars, for its quality counts (as the other per-pair stages report them).
    let k = raw.ts.partition_point(|&t| t < start.timestamp_micros());
    let month_raw = Bars {
        ts: raw.ts[k..].to_vec(),
        open: raw.open[k..].to_vec(),
        high: raw.high[k..].to_vec(),
        low: raw.low[k..].to_vec(),
        close: raw.close[k..].to_vec(),
        volume: raw.volume[k..].to_vec(),
    };
    let (_, quality) = clean(&month_raw);
    let (core, pair) = (cx.core.clone(), c.pair.clone());
    let tables = tokio::task::spawn_blocking(move || match stage {
        Stage::Regime => regime::compute(&core, &pair, &bars, first).map(|r| vec![r]),
        other => bail!("'{other}' has no per-pair table"),
    })
    .await??;
    let json = serde_json::to_value(Computed {
        bars: quality.clone(),
        history_bars: Some(first as u64),
        inputs: None,
    })?;
    let rows_out = write_tables(client, cx.owner, c, &tables, quality.rows_in, json).await?;
    Ok(Done { rows_out })
}

/// Processes one claimed partition of a cross-pair stage: every pair of its month at once.
async fn cross_pair(client: &mut Client, cx: &Work<'_>, stage: Stage, c: &Claim) -> Result<Done> {
    // Taken before the bars are read: if they change in between, the recorded inputs are the
    // older ones and the next run redoes the partition, never the other way round.
    let inputs = queue::inputs(client, cx.source, Some(c.month.first))
        .await?
        .remove(&c.month.first)
        .unwrap_or_default();
    let (pairs, quality) = read_month(client, cx.source, c.month.first)
        .await
        .with_context(|| format!("reading every pair of {}", c.month))?;
    let (params, month) = (*cx.params, c.month.first);
    let tables =
        tokio::task::spawn_blocking(move || compute_cross(stage, month, &pairs, &params)).await??;
    let json = serde_json::to_value(Computed {
        bars: quality.clone(),
        history_bars: None,
        inputs: Some(inputs),
    })?;
    let rows_out = write_tables(client, cx.owner, c, &tables, quality.rows_in, json).await?;
    Ok(Done { rows_out })
}

/// Processes one claimed partition of a column stage (indicators, regression): the pair's bars
/// of the month with the 2,000 before it, its kernel's arrays made the table's rows.
async fn features(client: &mut Client, cx: &Work<'_>, c: &Claim) -> Result<Done> {
    let (history, month_raw) = read(client, cx.source, &c.pair, c.month)
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
    let first = bars
        .ts
        .partition_point(|&t| t < c.month.start.timestamp_micros());
    let def = *c
        .stage
        .tables()
        .first()
        .with_context(|| format!("'{}' writes no table", c.stage))?;
    // CPU work off the async threads, so an interruption is acted on at once (and a large
    // partition does not stall the other tasks' I/O).
    let (core, stage, pair) = (cx.core.clone(), c.stage, c.pair.clone());
    let tables = tokio::task::spawn_blocking(move || {
        let cols = compute(&core, stage, &bars)?;
        Rows::of_columns(def, &pair, &bars.ts, &cols, first).map(|r| vec![r])
    })
    .await??;
    // Validate needs history_bars: how much of each column's warm-up the history covered.
    let json = serde_json::to_value(Computed {
        bars: quality.clone(),
        history_bars: Some(first as u64),
        inputs: None,
    })?;
    let rows_out = write_tables(client, cx.owner, c, &tables, quality.rows_in, json).await?;
    Ok(Done { rows_out })
}
