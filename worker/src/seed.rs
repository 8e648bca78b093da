//! `seed`: loads bars from CSV files (`dtime,time,open,high,low,close,vwap,volume,count`, one file
//! per pair, named after it) into the source table with binary COPY. Rows are loaded as they are,
//! defects included: the worker's cleaning policy deals with them.

use std::path::Path;

use anyhow::{bail, Context, Result};
use chrono::{DateTime, Utc};
use futures_util::pin_mut;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::Client;

use crate::db::checked_ident;

#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Seeded {
    pub pair: String,
    pub rows: u64,
    /// Lines that could not be read (bad number of fields, unparseable time).
    pub unreadable: u64,
}

pub async fn seed_file(client: &Client, source: &str, path: &Path) -> Result<Seeded> {
    let source = checked_ident(source)?;
    let pair = path
        .file_stem()
        .and_then(|s| s.to_str())
        .map(str::to_ascii_uppercase)
        .filter(|p| !p.is_empty())
        .with_context(|| {
            format!(
                "{}: the file name must be the pair, e.g. EURUSD.csv",
                path.display()
            )
        })?;
    let mut reader =
        csv::Reader::from_path(path).with_context(|| format!("reading {}", path.display()))?;
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

    let sink = client
        .copy_in(&format!(
            "COPY {source} (pair, ts, open, high, low, close, volume) FROM STDIN (FORMAT binary)"
        ))
        .await?;
    let writer = BinaryCopyInWriter::new(
        sink,
        &[
            Type::TEXT,
            Type::TIMESTAMPTZ,
            Type::FLOAT8,
            Type::FLOAT8,
            Type::FLOAT8,
            Type::FLOAT8,
            Type::FLOAT8,
        ],
    );
    pin_mut!(writer);
    let mut out = Seeded {
        pair: pair.clone(),
        ..Seeded::default()
    };
    for record in reader.records() {
        let Ok(r) = record else {
            out.unreadable += 1;
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
            out.unreadable += 1;
            continue;
        };
        let (vo, vh, vl, vc, vv) = (num(o), num(h), num(l), num(c), num(v));
        let row: [&(dyn ToSql + Sync); 7] = [&pair, &ts, &vo, &vh, &vl, &vc, &vv];
        writer.as_mut().write(&row).await?;
        out.rows += 1;
    }
    writer.finish().await?;
    if out.rows == 0 {
        bail!("{}: no readable rows", path.display());
    }
    Ok(out)
}
