//! `seed`: loads bars from CSV files (`dtime,time,open,high,low,close,vwap,volume,count`, one file
//! per pair, named after it) into the source table with binary COPY. Rows are loaded as they are,
//! defects included: the worker's cleaning policy deals with them.

use std::path::Path;

use anyhow::{bail, Context, Result};
use chrono::{DateTime, Utc};
use futures_util::pin_mut;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::ToSql;
use tokio_postgres::Client;

use crate::bars::Bars;
use crate::db::{checked_ident, SOURCE_TYPES};

#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Seeded {
    pub pair: String,
    pub rows: u64,
    /// Lines that could not be read (bad number of fields, unparseable time).
    pub unreadable: u64,
}

/// Reads one pair's CSV file as it is (defects included): the pair (from the file name), its
/// bars in file order, and how many lines could not be read.
pub fn read_csv(path: &Path) -> Result<(String, Bars, u64)> {
    // EURUSD.csv or EURUSD.csv.gz: the pair is the name before the first dot.
    let pair = path
        .file_name()
        .and_then(|s| s.to_str())
        .and_then(|s| s.split('.').next())
        .map(str::to_ascii_uppercase)
        .filter(|p| !p.is_empty())
        .with_context(|| {
            format!(
                "{}: the file name must be the pair, e.g. EURUSD.csv",
                path.display()
            )
        })?;
    let file = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let input: Box<dyn std::io::Read> = if path.extension().is_some_and(|e| e == "gz") {
        Box::new(flate2::read::MultiGzDecoder::new(std::io::BufReader::new(
            file,
        )))
    } else {
        Box::new(file)
    };
    let mut reader = csv::Reader::from_reader(input);
    let headers = reader.headers()?.clone();
    let col = |name: &str| -> Result<usize> {
        headers
            .iter()
            .position(|h| h == name)
            .with_context(|| format!("{}: no '{name}' column", path.display()))
    };
    let (t, o, h, l, c, v) = (
        col("time")?,
        col("open")?,
        col("high")?,
        col("low")?,
        col("close")?,
        col("volume")?,
    );
    let mut bars = Bars::default();
    let mut unreadable = 0;
    for record in reader.records() {
        let Ok(r) = record else {
            unreadable += 1;
            continue;
        };
        let num = |i: usize| {
            r.get(i)
                .and_then(|s| s.trim().parse::<f64>().ok())
                .unwrap_or(f64::NAN)
        };
        let Some(ts) = r
            .get(t)
            .and_then(|s| s.trim().parse::<i64>().ok())
            .and_then(|s| DateTime::<Utc>::from_timestamp(s, 0))
        else {
            unreadable += 1;
            continue;
        };
        bars.push(
            ts.timestamp_micros(),
            num(o),
            num(h),
            num(l),
            num(c),
            num(v),
        );
    }
    Ok((pair, bars, unreadable))
}

pub async fn seed_file(client: &Client, source: &str, path: &Path) -> Result<Seeded> {
    let source = checked_ident(source)?;
    let (pair, bars, unreadable) = read_csv(path)?;
    if bars.is_empty() {
        bail!("{}: no readable rows", path.display());
    }
    let sink = client
        .copy_in(&format!(
            "COPY {source} (pair, ts, open, high, low, close, volume) FROM STDIN (FORMAT binary)"
        ))
        .await?;
    let writer = BinaryCopyInWriter::new(sink, &SOURCE_TYPES);
    pin_mut!(writer);
    for i in 0..bars.len() {
        let ts = DateTime::<Utc>::from_timestamp_micros(bars.ts[i]).unwrap_or_default();
        let row: [&(dyn ToSql + Sync); 7] = [
            &pair,
            &ts,
            &bars.open[i],
            &bars.high[i],
            &bars.low[i],
            &bars.close[i],
            &bars.volume[i],
        ];
        writer.as_mut().write(&row).await?;
    }
    writer.finish().await?;
    Ok(Seeded {
        pair,
        rows: bars.len() as u64,
        unreadable,
    })
}
