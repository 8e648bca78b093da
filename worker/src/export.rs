//! Stage `export`: a partition's tables as Parquet (zstd), one file per table, to S3 or a
//! directory; listed in the run's manifest (`ephemera_contract::Manifest`) that
//! verify-completion checks. `parquet` is the one encoder of every stage's rows.

use std::sync::Arc;

use anyhow::{Context, Result};
use arrow_array::{
    ArrayRef, Date32Array, Float64Array, Int32Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use arrow_schema::{Field, Schema};
use chrono::NaiveDate;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use crate::table::{Rows, Values};

/// The file name of one per-pair table's partition, Hive-style so query engines see pair and
/// month.
pub fn object_name(table: &str, pair: &str, month: NaiveDate) -> String {
    format!(
        "{table}/pair={pair}/month={}/part.parquet",
        month.format("%Y-%m")
    )
}

/// The file name of one month of a cross-pair table (which holds every pair).
pub fn month_object_name(table: &str, month: NaiveDate) -> String {
    format!("{table}/month={}/part.parquet", month.format("%Y-%m"))
}

/// Encodes rows as Parquet with zstd; the same rows always give the same bytes.
pub fn parquet(rows: &Rows) -> Result<Vec<u8>> {
    let mut fields = vec![];
    let mut arrays: Vec<ArrayRef> = vec![];
    for (c, v) in rows.def.columns.iter().zip(&rows.columns) {
        let array: ArrayRef = match v {
            Values::Text(v) => Arc::new(StringArray::from(v.clone())),
            Values::OptText(v) => Arc::new(StringArray::from(v.clone())),
            Values::Ts(v) => Arc::new(
                TimestampMicrosecondArray::from(
                    v.iter().map(|t| t.timestamp_micros()).collect::<Vec<_>>(),
                )
                .with_timezone("UTC"),
            ),
            Values::Date(v) => {
                let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).context("the epoch")?;
                Arc::new(Date32Array::from(
                    v.iter()
                        .map(|d| (*d - epoch).num_days() as i32)
                        .collect::<Vec<_>>(),
                ))
            }
            Values::Int(v) => Arc::new(Int32Array::from(v.clone())),
            Values::F64(v) => Arc::new(Float64Array::from(v.clone())),
        };
        fields.push(Field::new(c.name, c.kind.arrow(), c.kind.nullable()));
        arrays.push(array);
    }
    let schema = Arc::new(Schema::new(fields));
    let batch = RecordBatch::try_new(schema.clone(), arrays)?;
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
    use crate::table::{keyed, Column, Def};
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
        let values = [
            vec![Some(1.5), None, Some(-2.0)],
            vec![None, None, Some(0.25)],
        ];
        const COLUMNS: [Column; 4] = keyed([Column::f64("a"), Column::f64("b")]);
        const T: Def = Def {
            name: "t",
            columns: &COLUMNS,
            key: &["pair", "ts"],
            month_column: "ts",
            pair_column: Some("pair"),
            about: "a test's",
        };
        let ts = |us: i64| chrono::DateTime::from_timestamp_micros(us).unwrap();
        let t = Rows::new(
            &T,
            vec![
                Values::Text(vec!["EURUSD".into(); 3]),
                Values::Ts(vec![ts(0), ts(60_000_000), ts(120_000_000)]),
                Values::F64(values[0].clone()),
                Values::F64(values[1].clone()),
            ],
        )
        .unwrap();
        assert_eq!(columns.len() + 2, T.columns.len());
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
