//! Step 1 of a stage's partition: its bars, cleaned, with what a partition records about them
//! (the cleaning's counts, the history its windows had, a cross-pair month's inputs).

use anyhow::{Context, Result};
use chrono::{DateTime, NaiveDate, Utc};
use futures_util::{pin_mut, TryStreamExt};
use tokio_postgres::binary_copy::BinaryCopyOutStream;
use tokio_postgres::Client;

use crate::bars::{clean, Bars, Quality};
use crate::db::{checked_ident, pair_literal, BAR_TYPES, SOURCE_TYPES};
use crate::features::regime;
use crate::month::Month;
use crate::quality::Computed;
use crate::queue::{self, Claim};
use crate::stage::Stage;

/// Bars read before the month so indicators and windows are warm at its first bar (the
/// longest window is 1440 bars; EMA-based indicators converge well within this).
pub const WARM_UP_BARS: i64 = 2000;

/// What the compute step gets: one pair's clean bars from its history on (the month's from
/// `first`), or every pair's clean bars of the month.
pub enum Input {
    Pair {
        bars: Bars,
        first: usize,
        /// The month's own bars' cleaning, as the partition reports it.
        quality: Quality,
    },
    Month {
        pairs: Vec<(String, Bars)>,
        quality: Quality,
        /// What identified the month's bars when they were read (`queue::inputs`).
        inputs: serde_json::Value,
    },
}

impl Input {
    pub fn rows_in(&self) -> u64 {
        match self {
            Input::Pair { quality, .. } | Input::Month { quality, .. } => quality.rows_in,
        }
    }

    /// The partition's quality record: validate needs `history_bars` (how much of each
    /// column's warm-up the history covered).
    pub fn quality(&self) -> Result<serde_json::Value> {
        Ok(serde_json::to_value(match self {
            Input::Pair { first, quality, .. } => Computed {
                bars: quality.clone(),
                history_bars: Some(*first as u64),
                inputs: None,
            },
            Input::Month {
                quality, inputs, ..
            } => Computed {
                bars: quality.clone(),
                history_bars: None,
                inputs: Some(inputs.clone()),
            },
        })?)
    }
}

/// The bars the claim's stage reads: the pair's month with the 2,000 bars before it (column
/// stages), with the days before it (regime), or every pair's month (cross-pair stages).
pub async fn input(client: &Client, source: &str, c: &Claim) -> Result<Input> {
    match c.stage {
        s if s.is_column_stage() => {
            let (history, month_raw) = read(client, source, &c.pair, c.month)
                .await
                .with_context(|| format!("reading {} {}", c.pair, c.month))?;
            let (_, quality) = clean(&month_raw);
            let mut all = history;
            all.extend(&month_raw);
            Ok(pair_input(&all, c.month, quality))
        }
        Stage::Regime => {
            let from = c.month.start - chrono::Duration::days(regime::HISTORY_DAYS);
            let raw = read_range(client, source, &c.pair, from, c.month.end)
                .await
                .with_context(|| format!("reading {} {}", c.pair, c.month))?;
            // The month's own bars, for its quality counts (as the other per-pair stages
            // report them).
            let k = raw
                .ts
                .partition_point(|&t| t < c.month.start.timestamp_micros());
            let (_, quality) = clean(&raw.from(k));
            Ok(pair_input(&raw, c.month, quality))
        }
        _ => {
            // Taken before the bars are read: if they change in between, the recorded inputs
            // are the older ones and the next run redoes the partition, never the other way
            // round.
            let inputs = queue::inputs(client, source, Some(c.month.first))
                .await?
                .remove(&c.month.first)
                .unwrap_or_default();
            let (pairs, quality) = read_month(client, source, c.month.first)
                .await
                .with_context(|| format!("reading every pair of {}", c.month))?;
            Ok(Input::Month {
                pairs,
                quality,
                inputs,
            })
        }
    }
}

/// One pair's raw bars (history and month) cleaned, the month's first bar found.
fn pair_input(raw: &Bars, month: Month, quality: Quality) -> Input {
    let (bars, _) = clean(raw);
    let first = bars
        .ts
        .partition_point(|&t| t < month.start.timestamp_micros());
    Input::Pair {
        bars,
        first,
        quality,
    }
}

async fn copy_out(client: &Client, sql: &str) -> Result<Bars> {
    let stream = client.copy_out(sql).await?;
    let rows = BinaryCopyOutStream::new(stream, &BAR_TYPES);
    pin_mut!(rows);
    let mut b = Bars::default();
    while let Some(r) = rows.try_next().await? {
        push_bar(&mut b, &r, 0);
    }
    Ok(b)
}

/// Appends the bar in `r`'s columns from `at` on (ts, open, high, low, close, volume): a
/// missing price is NaN (the cleaning drops the bar), a missing volume 0.
fn push_bar(b: &mut Bars, r: &tokio_postgres::binary_copy::BinaryCopyOutRow, at: usize) {
    let nan = |v: Option<f64>| v.unwrap_or(f64::NAN);
    let ts: DateTime<Utc> = r.get(at);
    b.push(
        ts.timestamp_micros(),
        nan(r.get(at + 1)),
        nan(r.get(at + 2)),
        nan(r.get(at + 3)),
        nan(r.get(at + 4)),
        r.get::<Option<f64>>(at + 5).unwrap_or(0.0),
    );
}

/// One pair's bars in [from, to), by time.
async fn read_range(
    client: &Client,
    source: &str,
    pair: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Bars> {
    let source = checked_ident(source)?;
    let p = pair_literal(pair)?;
    copy_out(
        client,
        &format!(
            "COPY (SELECT ts, open, high, low, close, volume FROM {source}
                    WHERE pair = {p} AND ts >= '{}' AND ts < '{}' ORDER BY ts)
             TO STDOUT (FORMAT binary)",
            from.to_rfc3339(),
            to.to_rfc3339()
        ),
    )
    .await
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

/// Every pair's bars of one month, each cleaned by the bar policy, sorted by pair; and the
/// cleaning's totals.
pub async fn read_month(
    client: &Client,
    source: &str,
    month: NaiveDate,
) -> Result<(Vec<(String, Bars)>, Quality)> {
    let source = checked_ident(source)?;
    let stream = client
        .copy_out(&format!(
            "COPY (SELECT pair, ts, open, high, low, close, volume FROM {source}
                    WHERE {} ORDER BY pair, ts)
             TO STDOUT (FORMAT binary)",
            Month::of(month).filter("ts")
        ))
        .await?;
    let rows = BinaryCopyOutStream::new(stream, &SOURCE_TYPES);
    pin_mut!(rows);
    let mut raw: Vec<(String, Bars)> = vec![];
    while let Some(r) = rows.try_next().await? {
        let pair: &str = r.get(0);
        if raw.last().is_none_or(|(p, _)| p != pair) {
            raw.push((pair.to_string(), Bars::default()));
        }
        push_bar(&mut raw.last_mut().context("a pair's bars")?.1, &r, 1);
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
