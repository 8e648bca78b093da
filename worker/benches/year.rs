//! The seeds' year: every pair of the eight major currencies (28 pairs, so every triangle and
//! currency index exists) × the weekday minutes of 2023 (10,483,200 bars, 336 pair-months), every
//! stage through the worker on `cores` tasks, each stage against the COPY ceiling of its own I/O,
//! and the whole run against the one cost no worker avoids: copying its output rows in.

use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Datelike, Duration, NaiveDate, Utc, Weekday};
use ephemera_worker::month::Month;
use ephemera_worker::stage::{Scope, Stage};
use ephemera_worker::{copy, db, outputs, partition, run};
use futures_util::{pin_mut, TryStreamExt};
use tokio_postgres::binary_copy::{BinaryCopyInWriter, BinaryCopyOutStream};
use tokio_postgres::types::ToSql;

use crate::{copy_out_pairs, options, placeholder_rows, rate};

pub const SOURCE: &str = "bars_year";

/// In market order: a pair's base is the earlier of its two currencies (EURUSD, USDJPY, CADCHF).
const CURRENCIES: [&str; 8] = ["EUR", "GBP", "AUD", "NZD", "USD", "CAD", "CHF", "JPY"];
/// Each currency's value in dollars on 2023-01-01 (the walks start there).
const START_USD: [f64; 8] = [1.07, 1.21, 0.68, 0.63, 1.0, 0.74, 1.08, 0.0076];

/// Rows per COPY of the ceiling: about one pair-month (31,000–45,000 bars).
const CHUNK: usize = 50_000;

/// What the seeds' own notes say one stage of this size took them.
const SEEDS_NOTE: &str = "the seeds' notes: one stage, 10.3 M rows, 7.2 h on 8 vCPUs";

/// The stages as the year runs them: indicators and regression together (the worker's main
/// figure), then each later stage alone.
const GROUPS: [&[Stage]; 5] = [
    &[Stage::Indicators, Stage::Regression],
    &[Stage::Regime],
    &[Stage::CurrencyIndex],
    &[Stage::Arbitrage],
    &[Stage::Causality],
];

pub fn pairs() -> Vec<String> {
    let mut out = vec![];
    for (i, base) in CURRENCIES.iter().enumerate() {
        for quote in &CURRENCIES[i + 1..] {
            out.push(format!("{base}{quote}"));
        }
    }
    out
}

/// The weekday minutes of 2023 (markets close at weekends).
fn minutes() -> Vec<DateTime<Utc>> {
    let first = NaiveDate::from_ymd_opt(2023, 1, 1).unwrap();
    let mut out = vec![];
    for d in first.iter_days().take_while(|d| d.year() == 2023) {
        if matches!(d.weekday(), Weekday::Sat | Weekday::Sun) {
            continue;
        }
        let midnight = d.and_hms_opt(0, 0, 0).unwrap().and_utc();
        out.extend((0..1440).map(|m| midnight + Duration::minutes(m)));
    }
    out
}

/// Each currency's dollar value at every minute and one more (the first bar's open): a random
/// walk per currency, so a pair is the ratio of its two walks and every triangle closes.
fn walks(n: usize) -> Vec<Vec<f64>> {
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    CURRENCIES
        .iter()
        .zip(START_USD)
        .map(|(c, start)| {
            let mut v = start;
            (0..=n)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    let r = (seed >> 11) as f64 / (1u64 << 53) as f64 - 0.5;
                    let now = v;
                    if *c != "USD" {
                        v *= 1.0 + r * 0.0003;
                    }
                    now
                })
                .collect()
        })
        .collect()
}

/// Loads the year into `SOURCE` with binary COPY, the pairs split over `cores` connections.
async fn generate(url: &str, cores: usize) -> u64 {
    let client = db::connect(url).await.unwrap();
    client
        .batch_execute(&format!("DROP TABLE IF EXISTS {SOURCE}"))
        .await
        .unwrap();
    db::init(&client, SOURCE).await.unwrap();
    let ts = Arc::new(minutes());
    let walks = Arc::new(walks(ts.len()));
    let mut tasks = vec![];
    for part in 0..cores {
        let (url, ts, walks) = (url.to_string(), ts.clone(), walks.clone());
        tasks.push(tokio::spawn(async move {
            let c = db::connect(&url).await.unwrap();
            let sink = c
                .copy_in(&format!(
                    "COPY {SOURCE} (pair, ts, open, high, low, close, volume)
                     FROM STDIN (FORMAT binary)"
                ))
                .await
                .unwrap();
            let w = BinaryCopyInWriter::new(sink, &db::SOURCE_TYPES);
            pin_mut!(w);
            let mut n = 0u64;
            let mut k = 0usize;
            for (i, base) in CURRENCIES.iter().enumerate() {
                for (j, quote) in CURRENCIES.iter().enumerate().skip(i + 1) {
                    k += 1;
                    if k % cores != part {
                        continue;
                    }
                    let pair = format!("{base}{quote}");
                    for (m, t) in ts.iter().enumerate() {
                        let open = walks[i][m] / walks[j][m];
                        let close = walks[i][m + 1] / walks[j][m + 1];
                        let (hi, lo) = (open.max(close) * 1.0001, open.min(close) * 0.9999);
                        let vol = 100.0 + ((m * 7919 + k * 104_729) % 1000) as f64;
                        let row: [&(dyn ToSql + Sync); 7] =
                            [&pair, t, &open, &hi, &lo, &close, &vol];
                        w.as_mut().write(&row).await.unwrap();
                        n += 1;
                    }
                }
            }
            w.finish().await.unwrap();
            n
        }));
    }
    let mut n = 0;
    for t in tasks {
        n += t.await.unwrap();
    }
    client
        .batch_execute(&format!("ANALYZE {SOURCE}"))
        .await
        .unwrap();
    n
}

/// Copies out every bar of the pairs `k % of == part`, as one stage's reads would.
async fn copy_out(client: &tokio_postgres::Client, part: usize, of: usize) -> u64 {
    let names: Vec<String> = pairs()
        .into_iter()
        .enumerate()
        .filter(|(k, _)| k % of == part)
        .map(|(_, p)| format!("'{p}'"))
        .collect();
    copy_out_pairs(client, SOURCE, &names.join(", ")).await
}

/// The peak resident memory of this process since the last reset (Linux's VmHWM), in MiB.
fn peak_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

/// Starts a new peak-memory measurement (writing 5 to clear_refs resets VmHWM).
fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// One group's measurement.
struct Measured {
    worker: f64,
    ceiling_out: f64,
    ceiling_in: f64,
    rows_out: u64,
}

/// Per output table of a run: rows and a digest of every row's text (order-free), so two runs'
/// tables can be compared to the bit (float text is shortest-exact since PostgreSQL 12).
async fn digests(client: &tokio_postgres::Client, schema: &str, stages: &[Stage]) -> Vec<String> {
    let mut out = vec![];
    for def in stages.iter().flat_map(|s| s.tables()) {
        let r = client
            .query_one(
                &format!(
                    "SELECT count(*), coalesce(sum(hashtextextended(t::text, 0)), 0)::text
                       FROM {schema}.{} t",
                    def.name
                ),
                &[],
            )
            .await
            .unwrap();
        let (n, digest): (i64, String) = (r.get(0), r.get(1));
        out.push(format!("{} {n} rows, digest {digest}", def.name));
    }
    out
}

/// One run of the worker on `stages` over the year: its time, summary, peak memory and digests.
async fn worker(
    url: &str,
    stages: &[Stage],
    run_id: &str,
    cores: usize,
) -> (f64, ephemera_contract::Summary, String, Vec<String>) {
    let client = db::connect(url).await.unwrap();
    let names: Vec<&str> = stages.iter().map(|s| s.name()).collect();
    let mut o = options(url, &names, run_id, cores);
    o.source = SOURCE.into();
    reset_peak();
    let t = Instant::now();
    let summary = run::run(o).await.unwrap();
    let secs = t.elapsed().as_secs_f64();
    let peak = peak_mib().map_or("not measured".into(), |m| format!("{m:.0} MiB"));
    assert_eq!(summary.partitions_failed, 0);
    let schema = outputs::schema(run_id).unwrap();
    (secs, summary, peak, digests(&client, &schema, stages).await)
}

/// The worker on `stages`, then the COPY ceiling of the same I/O in two phases: every bar
/// copied out once per stage, then as many rows as the worker wrote copied into the stage's own
/// tables (emptied), each phase over `cores` connections.
async fn measure(url: &str, stages: &[Stage], cores: usize) -> (Measured, Vec<String>) {
    let client = db::connect(url).await.unwrap();
    let names: Vec<&str> = stages.iter().map(|s| s.name()).collect();
    let run_id = format!("year-{}", names.join("-"));
    let (worker, summary, peak, digests) = worker(url, stages, &run_id, cores).await;
    let schema = outputs::schema(&run_id).unwrap();

    let mut counts = vec![];
    for def in stages.iter().flat_map(|s| s.tables()) {
        let n: i64 = client
            .query_one(&format!("SELECT count(*) FROM {schema}.{}", def.name), &[])
            .await
            .unwrap()
            .get(0);
        counts.push((*def, n as usize));
        client
            .batch_execute(&format!("TRUNCATE {schema}.{}", def.name))
            .await
            .unwrap();
    }
    let t = Instant::now();
    let mut tasks = vec![];
    for part in 0..cores {
        let (url, reads) = (url.to_string(), stages.len());
        tasks.push(tokio::spawn(async move {
            let c = db::connect(&url).await.unwrap();
            let mut n = 0;
            for _ in 0..reads {
                n += copy_out(&c, part, cores).await;
            }
            n
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let ceiling_out = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let mut tasks = vec![];
    for part in 0..cores {
        let (url, counts, schema) = (url.to_string(), counts.clone(), schema.clone());
        tasks.push(tokio::spawn(async move {
            let mut c = db::connect(&url).await.unwrap();
            let tx = c.transaction().await.unwrap();
            // A month the bench has no rows in: the replace deletes nothing.
            let nowhere = NaiveDate::from_ymd_opt(1900, 1, 1).unwrap();
            let p = copy::Partition {
                month: Month::of(nowhere),
                pair: Some("none"),
            };
            for (def, n) in counts {
                let (share, from) = (
                    n / cores + usize::from(part < n % cores),
                    part * (n / cores + 1),
                );
                // In COPYs of about a partition's rows, as the worker writes: one COPY of the
                // whole share would hold gigabytes, which the allocator keeps and the next
                // stage's peak memory would show.
                for at in (0..share).step_by(CHUNK) {
                    let rows = placeholder_rows(def, CHUNK.min(share - at), from + at);
                    copy::replace(&tx, &schema, &p, &rows).await.unwrap();
                }
            }
            tx.commit().await.unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let ceiling_in = t.elapsed().as_secs_f64();
    let ceiling = ceiling_out + ceiling_in;
    let scope = match stages[0].scope() {
        Scope::AllPairs => "a partition per month over all pairs",
        _ => "a partition per (pair, month)",
    };
    println!(
        "  {} ({scope}): {} partitions, {} rows out in {worker:.1} s ({}), peak memory {peak}; \
         COPY ceiling {ceiling:.1} s (out {ceiling_out:.1} s + in {ceiling_in:.1} s): ratio {:.2}\n    {}",
        names.join(" + "),
        summary.partitions_done,
        summary.rows_out,
        rate(summary.rows_out, worker),
        worker / ceiling,
        digests.join("; ")
    );
    (
        Measured {
            worker,
            ceiling_out,
            ceiling_in,
            rows_out: summary.rows_out,
        },
        digests,
    )
}

/// Where a cross-pair partition's time goes, on one month of the year (its run's tables exist):
/// the month's bars copied out as they are, the worker's read of them (the same COPY, each row
/// decoded, hashed, fingerprinted and cleaned by the worker), then each stage's kernel and its
/// write (the partition's rows replaced in its run's table, one transaction). Returns each
/// stage's compute seconds.
async fn breakdown(url: &str) -> Vec<(Stage, f64)> {
    let mut client = db::connect(url).await.unwrap();
    let month = Month::of(NaiveDate::from_ymd_opt(2023, 3, 1).unwrap());
    let names: Vec<String> = pairs().iter().map(|p| format!("'{p}'")).collect();
    let t = Instant::now();
    let s = client
        .copy_out(&format!(
            "COPY (SELECT pair, ts, open, high, low, close, volume FROM {SOURCE}
                    WHERE pair IN ({}) AND {} ORDER BY pair, ts)
             TO STDOUT (FORMAT binary)",
            names.join(", "),
            month.filter("ts")
        ))
        .await
        .unwrap();
    let rows = BinaryCopyOutStream::new(s, &db::SOURCE_TYPES);
    pin_mut!(rows);
    let mut n = 0u64;
    while rows.try_next().await.unwrap().is_some() {
        n += 1;
    }
    let copy_out = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let bars = partition::read_month(&client, SOURCE, month.first)
        .await
        .unwrap();
    let read = t.elapsed().as_secs_f64();
    let mut steps = vec![];
    let mut kernels = vec![];
    for stage in [Stage::CurrencyIndex, Stage::Arbitrage, Stage::Causality] {
        let t = Instant::now();
        let tables =
            partition::compute_cross(stage, month.first, &bars.pairs, &Default::default()).unwrap();
        let compute = t.elapsed().as_secs_f64();
        kernels.push((stage, compute));
        let schema = outputs::schema(&format!("year-{stage}")).unwrap();
        let t = Instant::now();
        let tx = client.transaction().await.unwrap();
        let p = copy::Partition { month, pair: None };
        let mut written = 0;
        for rows in &tables {
            written += copy::replace(&tx, &schema, &p, rows).await.unwrap();
        }
        tx.commit().await.unwrap();
        steps.push(format!(
            "{stage} compute {compute:.2} s, write {written} rows {:.2} s",
            t.elapsed().as_secs_f64()
        ));
    }
    println!(
        "  one cross-pair partition (2023-03, {n} bars of {} pairs): COPY out alone {copy_out:.2} s, \
         the worker's read (hashes, fingerprint, cleaning) {read:.2} s; {}",
        bars.pairs.len(),
        steps.join("; ")
    );
    kernels
}

/// The year: generated, then every group measured, then the totals.
pub async fn run(url: &str, cores: usize) {
    let t = Instant::now();
    let n = generate(url, cores).await;
    println!(
        "\nthe seeds' year: {n} bars ({} pairs × 12 months of weekday minutes, {} pair-months) \
         generated in {:.1} s; every stage, {cores} tasks:",
        pairs().len(),
        pairs().len() * 12,
        t.elapsed().as_secs_f64()
    );
    let mut all = vec![];
    let mut digests = vec![];
    for stages in GROUPS {
        let (m, d) = measure(url, stages, cores).await;
        all.push(m);
        digests.extend(d);
    }
    let kernels = breakdown(url).await;
    // A cross-pair stage over 1.5 whose computation alone, spread over every core, is as much
    // as its whole ceiling: no I/O saving brings it to 1.5 (the kernel's sums are the
    // reference's order, bit for bit).
    for (stages, m) in GROUPS.iter().zip(&all) {
        let ceiling = m.ceiling_out + m.ceiling_in;
        let Some(&(stage, month)) = kernels
            .iter()
            .find(|(s, _)| stages.len() == 1 && stages[0] == *s)
        else {
            continue;
        };
        let compute = month * 12.0 / cores as f64;
        if m.worker / ceiling > 1.5 {
            println!(
                "  {stage} over 1.5 and why: its computation alone, one month {month:.2} s × 12 \
                 months over {cores} cores = {compute:.1} s, is {:.0} % of its whole ceiling \
                 ({ceiling:.1} s)",
                100.0 * compute / ceiling
            );
        }
    }
    let separate: f64 = all.iter().map(|m| m.worker).sum();
    let copy_in: f64 = all.iter().map(|m| m.ceiling_in).sum();
    let ceiling: f64 = all.iter().map(|m| m.ceiling_out + m.ceiling_in).sum();
    let rows: u64 = all.iter().map(|m| m.rows_out).sum();
    println!(
        "  the stages one run each: {separate:.1} s for {rows} rows out; their COPY ceilings \
         {ceiling:.1} s (ratio {:.2}); copying their output rows in alone {copy_in:.1} s",
        separate / ceiling,
    );
    // The product's own way: one run, every stage, the stages sharing their reads.
    let every: Vec<Stage> = GROUPS.iter().flat_map(|g| g.iter().copied()).collect();
    let (whole, summary, peak, whole_digests) = worker(url, &every, "year-all", cores).await;
    assert_eq!(summary.rows_out, rows);
    assert_eq!(
        whole_digests, digests,
        "one run's tables differ from the stage runs'"
    );
    println!(
        "  the year, every stage in one run: {whole:.1} s, {} partitions, {} rows out, peak \
         memory {peak}, every table equal to the stage runs' (digests); against copying its \
         output rows in alone ({copy_in:.1} s): ratio {:.2} (aim <= 1.2)\n  {SEEDS_NOTE}; here \
         every stage of the same size in {whole:.0} s on {cores} cores",
        summary.partitions_done,
        summary.rows_out,
        whole / copy_in,
    );
}
