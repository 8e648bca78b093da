//! Stage `export`: a partition's feature tables as Parquet (zstd), one file per stage, to S3 or a
//! directory; listed in the run's manifest (`ephemera_contract::Manifest`) that verify-completion
//! checks.

use std::sync::Arc;

use anyhow::Result;
use arrow_array::{ArrayRef, Float64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow_schema::{Field, Schema};
use chrono::NaiveDate;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use crate::column::{Column, Kind};

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

#[cfg(test)]
mod tests {
    use super::*;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    #[test]
    fn object_names_are_hive_style() {
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
