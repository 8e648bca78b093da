//! Step 1 of a stage's partition: its bars, cleaned, with what a partition records about them
//! (the cleaning's counts, the history its windows had, a cross-pair month's inputs).

use anyhow::{Context, Result};
use chrono::{DateTime, NaiveDate, Utc};
use futures_util::{pin_mut, TryStreamExt};
use tokio_postgres::binary_copy::BinaryCopyOutStream;
use tokio_postgres::Client;

use crate::bars::{clean, Bars, Quality};
use crate::db::{checked_ident, month_pairs, pair_literal, BAR_TYPES, SOURCE_TYPES};
use crate::features::regime;
use crate::inputs::{row_hash, Prints};
use crate::month::Month;
use crate::quality::Computed;
use crate::queue::Claim;
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
    Month(MonthBars),
}

/// Every pair's clean bars of one month, sorted by pair, with the cleaning's totals and the
/// fingerprint of the rows read (`inputs`): what a cross-pair partition computed from.
pub struct MonthBars {
    pub pairs: Vec<(String, Bars)>,
    pub quality: Quality,
    pub inputs: serde_json::Value,
}

impl Input {
    pub fn rows_in(&self) -> u64 {
        match self {
            Input::Pair { quality, .. } | Input::Month(MonthBars { quality, .. }) => {
                quality.rows_in
            }
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
            Input::Month(MonthBars {
                quality, inputs, ..
            }) => Computed {
                bars: quality.clone(),
                history_bars: None,
                inputs: Some(inputs.clone()),
            },
        })?)
    }
}

/// Which bars a stage reads: the pair's month with the 2,000 bars before it (the column
/// stages), with the days before it (regime), or every pair's month (cross-pair stages).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    WarmUp,
    Days,
    Month,
}

impl Shape {
    pub fn of(stage: Stage) -> Shape {
        match stage {
            s if s.is_column_stage() => Shape::WarmUp,
            Stage::Regime => Shape::Days,
            _ => Shape::Month,
        }
    }
}

/// The bars the claim's stage reads (`Shape`).
pub async fn input(client: &Client, source: &str, c: &Claim) -> Result<Input> {
    match Shape::of(c.stage) {
        Shape::WarmUp => {
            let (history, month_raw) = read(client, source, &c.pair, c.month)
                .await
                .with_context(|| format!("reading {} {}", c.pair, c.month))?;
            let (_, quality) = clean(&month_raw);
            let mut all = history;
            all.extend(&month_raw);
            Ok(pair_input(&all, c.month, quality))
        }
        Shape::Days => {
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
        Shape::Month => Ok(Input::Month(
            read_month(client, source, c.month.first)
                .await
                .with_context(|| format!("reading every pair of {}", c.month))?,
        )),
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
        push(&mut b, bar_of(&r, 0));
    }
    Ok(b)
}

/// The bar in `r`'s columns from `at` on (ts, open, high, low, close, volume), as stored: its
/// time in Unix microseconds and its five values, NULL as None.
fn bar_of(r: &tokio_postgres::binary_copy::BinaryCopyOutRow, at: usize) -> (i64, [Option<f64>; 5]) {
    let ts: DateTime<Utc> = r.get(at);
    (
        ts.timestamp_micros(),
        [1, 2, 3, 4, 5].map(|k| r.get::<Option<f64>>(at + k)),
    )
}

/// Appends a bar as [`bar_of`] reads it: a missing price is NaN (the cleaning drops the bar), a
/// missing volume 0.
fn push(b: &mut Bars, (ts, [o, h, l, c, v]): (i64, [Option<f64>; 5])) {
    let nan = |v: Option<f64>| v.unwrap_or(f64::NAN);
    b.push(ts, nan(o), nan(h), nan(l), nan(c), v.unwrap_or(0.0));
}

/// One pair's bars in [from, to), by time (sorted here, as in [`read_month`]).
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
                    WHERE pair = {p} AND ts >= '{}' AND ts < '{}')
             TO STDOUT (FORMAT binary)",
            from.to_rfc3339(),
            to.to_rfc3339()
        ),
    )
    .await
    .map(Bars::in_time_order)
}

/// Reads the month's bars and the warm-up history before it (the month's sorted here, as in
/// [`read_month`]).
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
                    WHERE pair = {p} AND ts >= '{s}' AND ts < '{e}')
             TO STDOUT (FORMAT binary)"
        ),
    )
    .await?
    .in_time_order();
    Ok((history, month_bars))
}

/// Every pair's bars of one month, each cleaned by the bar policy, and their fingerprint.
///
/// The rows come as the server finds them, not ordered: sorting the month by (pair, ts) was a
/// third of the server's work (an external merge of every pair's month, 1.1–1.5 s against
/// 0.7–0.8 s unsorted for 927,360 bars), and each pair's bars are put in time order here (a
/// stable sort, so rows with one timestamp keep the order they came in, as they did).
pub async fn read_month(client: &Client, source: &str, month: NaiveDate) -> Result<MonthBars> {
    let source = checked_ident(source)?;
    let month = Month::of(month);
    let mut prints = Prints::default();
    let mut raw: Vec<(String, Bars)> = vec![];
    if let Some(pairs) = month_pairs(client, source, &month).await? {
        let stream = client
            .copy_out(&format!(
                "COPY (SELECT pair, ts, open, high, low, close, volume FROM {source}
                        WHERE pair IN {pairs} AND {})
                 TO STDOUT (FORMAT binary)",
                month.filter("ts")
            ))
            .await?;
        let rows = BinaryCopyOutStream::new(stream, &SOURCE_TYPES);
        pin_mut!(rows);
        // The pair of the last row: rows come in runs of one pair (a heap page holds one pair's
        // bars as they were loaded), so the search below is rare.
        let mut at = 0;
        while let Some(r) = rows.try_next().await? {
            let pair: &str = r.get(0);
            if raw.get(at).is_none_or(|(p, _)| p != pair) {
                at = match raw.iter().position(|(p, _)| p == pair) {
                    Some(k) => k,
                    None => {
                        raw.push((pair.to_string(), Bars::default()));
                        raw.len() - 1
                    }
                };
            }
            let (ts, values) = bar_of(&r, 1);
            push(&mut raw[at].1, (ts, values));
            prints.add(pair, ts, row_hash(ts, values));
        }
    }
    raw.sort_by(|a, b| a.0.cmp(&b.0));
    let mut quality = Quality::default();
    let pairs = raw
        .into_iter()
        .map(|(pair, b)| {
            let (bars, q) = clean(&b.in_time_order());
            quality.rows_in += q.rows_in;
            quality.bad_price += q.bad_price;
            quality.high_below_low += q.high_below_low;
            quality.bad_volume += q.bad_volume;
            quality.out_of_order += q.out_of_order;
            quality.duplicate_ts += q.duplicate_ts;
            quality.gaps += q.gaps;
            quality.largest_gap_minutes = quality.largest_gap_minutes.max(q.largest_gap_minutes);
            quality.rows_kept += q.rows_kept;
            (pair, bars)
        })
        .collect();
    Ok(MonthBars {
        pairs,
        quality,
        inputs: prints.json(),
    })
}
