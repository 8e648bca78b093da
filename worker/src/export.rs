//! Stage `export`: a partition's feature tables as Parquet (zstd), one file per stage, to S3 or a
//! directory; listed in the run's manifest (`ephemera_contract::Manifest`) that verify-completion
//! checks.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use arrow_array::{ArrayRef, Float64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow_schema::{Field, Schema};
use chrono::NaiveDate;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use sha2::{Digest, Sha256};

use crate::column::{Column, Kind};

/// Where the export goes: `s3://bucket/prefix/` or a local directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    S3 { bucket: String, prefix: String },
    Dir(PathBuf),
}

impl Target {
    pub fn parse(s: &str) -> Result<Target> {
        if let Some(rest) = s.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                bail!("--export '{s}': no bucket; expected s3://bucket/prefix/ or a directory");
            }
            let mut prefix = prefix.to_string();
            if !prefix.is_empty() && !prefix.ends_with('/') {
                prefix.push('/');
            }
            return Ok(Target::S3 {
                bucket: bucket.to_string(),
                prefix,
            });
        }
        if s.is_empty() || s.contains("://") {
            bail!("--export '{s}': expected s3://bucket/prefix/ or a local directory");
        }
        Ok(Target::Dir(PathBuf::from(s)))
    }

    /// The manifest key (relative name `rel`) as it is listed and fetched.
    pub fn key(&self, rel: &str) -> String {
        match self {
            Target::S3 { prefix, .. } => format!("{prefix}{rel}"),
            Target::Dir(_) => rel.to_string(),
        }
    }

    /// Where `key` is, for the report: an s3:// URL or a path.
    pub fn url(&self, key: &str) -> String {
        match self {
            Target::S3 { bucket, .. } => format!("s3://{bucket}/{key}"),
            Target::Dir(d) => d.join(key).display().to_string(),
        }
    }
}

/// Writes objects to a target. S3 needs a client; a directory does not.
#[derive(Clone)]
pub struct Store {
    pub target: Target,
    s3: Option<aws_sdk_s3::Client>,
}

impl Store {
    pub async fn new(target: Target) -> Store {
        let s3 = match &target {
            Target::S3 { .. } => {
                let conf = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
                // Against an emulator (a custom endpoint) buckets cannot be virtual hosts.
                let s3 = aws_sdk_s3::config::Builder::from(&conf)
                    .force_path_style(conf.endpoint_url().is_some())
                    .build();
                Some(aws_sdk_s3::Client::from_conf(s3))
            }
            Target::Dir(_) => None,
        };
        Store { target, s3 }
    }

    /// Stores `bytes` under `key` (from [`Target::key`]). A file appears whole or not at all.
    pub async fn put(&self, key: &str, bytes: Vec<u8>, content_type: &str) -> Result<()> {
        match (&self.target, &self.s3) {
            (Target::S3 { bucket, .. }, Some(s3)) => {
                s3.put_object()
                    .bucket(bucket)
                    .key(key)
                    .content_type(content_type)
                    .body(bytes.into())
                    .send()
                    .await
                    .with_context(|| format!("uploading s3://{bucket}/{key}"))?;
            }
            (Target::Dir(dir), _) => write_atomically(&dir.join(key), &bytes)?,
            (Target::S3 { .. }, None) => bail!("no S3 client for an s3:// target"),
        }
        Ok(())
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    let tmp = path.with_extension("partial");
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}

/// The file name of one stage of one partition, Hive-style so query engines see pair and month.
pub fn object_name(stage: &str, pair: &str, month: NaiveDate) -> String {
    format!(
        "{stage}/pair={pair}/month={}/part.parquet",
        month.format("%Y-%m")
    )
}

/// The file name of one month of a cross-pair table (which holds every pair).
pub fn month_object_name(table: &str, month: NaiveDate) -> String {
    format!("{table}/month={}/part.parquet", month.format("%Y-%m"))
}

/// One partition of one feature table, ready to encode.
pub struct Table<'a> {
    pub pair: &'a str,
    /// Microseconds since the epoch, UTC.
    pub ts: &'a [i64],
    /// The stage's columns after (pair, ts).
    pub columns: &'a [Column],
    pub values: &'a [Vec<Option<f64>>],
}

/// Encodes a table as Parquet with zstd. The same table always gives the same bytes, so a
/// rerun's checksums match.
pub fn parquet(t: &Table) -> Result<Vec<u8>> {
    let mut fields = vec![
        Field::new("pair", Kind::Text.arrow(), Kind::Text.nullable()),
        Field::new("ts", Kind::Ts.arrow(), Kind::Ts.nullable()),
    ];
    fields.extend(
        t.columns
            .iter()
            .map(|c| Field::new(c.name, c.kind.arrow(), c.kind.nullable())),
    );
    let schema = Arc::new(Schema::new(fields));
    let mut columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(vec![t.pair; t.ts.len()])),
        Arc::new(TimestampMicrosecondArray::from(t.ts.to_vec()).with_timezone("UTC")),
    ];
    for v in t.values {
        columns.push(Arc::new(Float64Array::from(v.clone())));
    }
    let batch = RecordBatch::try_new(schema.clone(), columns)?;
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3)?))
        .build();
    let mut out = Vec::new();
    let mut w = ArrowWriter::try_new(&mut out, schema, Some(props))?;
    w.write(&batch)?;
    w.close()?;
    Ok(out)
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    #[test]
    fn targets() {
        assert_eq!(
            Target::parse("s3://b/runs/r1").unwrap(),
            Target::S3 {
                bucket: "b".into(),
                prefix: "runs/r1/".into()
            }
        );
        let t = Target::parse("s3://b").unwrap();
        assert_eq!(t.key("m.json"), "m.json");
        assert_eq!(t.url("m.json"), "s3://b/m.json");
        assert!(Target::parse("s3:///x")
            .unwrap_err()
            .to_string()
            .contains("no bucket"));
        assert!(Target::parse("gs://b/x").is_err());
        assert_eq!(Target::parse("out").unwrap(), Target::Dir("out".into()));
        assert_eq!(
            object_name(
                "indicators",
                "EURUSD",
                NaiveDate::from_ymd_opt(2023, 4, 1).unwrap()
            ),
            "indicators/pair=EURUSD/month=2023-04/part.parquet"
        );
    }

    #[test]
    fn parquet_round_trips_and_is_deterministic() {
        let columns = [Column::f64("a"), Column::f64("b")];
        let values = vec![
            vec![Some(1.5), None, Some(-2.0)],
            vec![None, None, Some(0.25)],
        ];
        let t = Table {
            pair: "EURUSD",
            ts: &[0, 60_000_000, 120_000_000],
            columns: &columns,
            values: &values,
        };
        let bytes = parquet(&t).unwrap();
        assert_eq!(bytes, parquet(&t).unwrap());
        assert_eq!(&bytes[..4], b"PAR1");
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(bytes))
            .unwrap()
            .build()
            .unwrap();
        let batches: Vec<RecordBatch> = reader.map(|b| b.unwrap()).collect();
        assert_eq!(batches.len(), 1);
        let b = &batches[0];
        assert_eq!(b.num_rows(), 3);
        let a = b
            .column_by_name("a")
            .unwrap()
            .as_any()
            .downcast_ref::<Float64Array>()
            .unwrap();
        assert_eq!(a.iter().collect::<Vec<_>>(), values[0]);
    }
}
