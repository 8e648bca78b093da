//! One description per output column: its name, its type (which says whether it may be NULL in
//! the table), its warm-up, the range its values must lie in, and whether a NULL past the warm-up
//! is a value of its own. The tables' DDL, the binary COPY types, validation and the Parquet
//! schema all read it, so a column's facts live in one place.

use arrow_schema::{DataType, TimeUnit};
use tokio_postgres::types::Type;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Text,
    /// Text that may be NULL.
    OptText,
    Ts,
    Date,
    Int,
    /// NULL where undefined.
    F64,
}

impl Kind {
    /// The column's SQL type, with NOT NULL where it is never NULL.
    pub fn sql(self) -> &'static str {
        match self {
            Kind::Text => "text NOT NULL",
            Kind::OptText => "text",
            Kind::Ts => "timestamptz NOT NULL",
            Kind::Date => "date NOT NULL",
            Kind::Int => "integer NOT NULL",
            Kind::F64 => "double precision",
        }
    }
    /// The binary COPY type.
    pub fn pg(self) -> Type {
        match self {
            Kind::Text | Kind::OptText => Type::TEXT,
            Kind::Ts => Type::TIMESTAMPTZ,
            Kind::Date => Type::DATE,
            Kind::Int => Type::INT4,
            Kind::F64 => Type::FLOAT8,
        }
    }
    /// The Parquet (Arrow) type.
    pub fn arrow(self) -> DataType {
        match self {
            Kind::Text | Kind::OptText => DataType::Utf8,
            Kind::Ts => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            Kind::Date => DataType::Date32,
            Kind::Int => DataType::Int32,
            Kind::F64 => DataType::Float64,
        }
    }
    /// Whether the table and the Parquet file let it be NULL.
    pub fn nullable(self) -> bool {
        matches!(self, Kind::OptText | Kind::F64)
    }
}

/// Leading NULLs of any length are expected: the column's windows need history before the
/// partition that the data may not have (the regime's inputs at the data's start).
pub const ANY_WARM_UP: usize = usize::MAX;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Column {
    pub name: &'static str,
    pub kind: Kind,
    /// Leading rows without a value (a window's lookback, in bars), before any history.
    pub warm_up: usize,
    /// Where its values must lie, bounds included.
    pub range: Option<(f64, f64)>,
    /// A NULL past the warm-up is a value of its own, not a fault (R² over a window of equal
    /// closes is undefined).
    pub nullable: bool,
}

impl Column {
    /// A column that is never NULL and has no range (keys, labels, counts).
    pub const fn of(name: &'static str, kind: Kind) -> Column {
        Column {
            name,
            kind,
            warm_up: 0,
            range: None,
            nullable: false,
        }
    }
    /// A float column, without a warm-up or a range until said.
    pub const fn f64(name: &'static str) -> Column {
        Column::of(name, Kind::F64)
    }
    pub const fn warm_up(self, bars: usize) -> Column {
        Column {
            warm_up: bars,
            ..self
        }
    }
    pub const fn range(self, bounds: (f64, f64)) -> Column {
        Column {
            range: Some(bounds),
            ..self
        }
    }
    pub const fn nullable(self) -> Column {
        Column {
            nullable: true,
            ..self
        }
    }
}

/// `0..=100`: oscillators and directional indicators.
pub const PERCENT: (f64, f64) = (0.0, 100.0);
/// Non-negative: sizes, dispersions, F statistics.
pub const NON_NEGATIVE: (f64, f64) = (0.0, f64::INFINITY);
/// Strictly positive: prices and an index of prices.
pub const POSITIVE: (f64, f64) = (f64::MIN_POSITIVE, f64::INFINITY);
/// A share or a probability.
pub const UNIT: (f64, f64) = (0.0, 1.0);

/// The names of `columns`, in order.
pub fn names(columns: &[Column]) -> Vec<&'static str> {
    columns.iter().map(|c| c.name).collect()
}

/// A column stage's output from its kernel: column names and, per column, one value per bar
/// of the month and its history (NaN where undefined). Plain f64 rather than Option halves the
/// memory and lets TA-Lib write in place; `table::Rows::of_columns` makes the table's rows.
pub struct Columns {
    pub names: Vec<String>,
    pub values: Vec<Vec<f64>>,
}

/// NULL where the value is not finite (a warm-up's NaN, a division by a zero range).
pub fn finite(x: f64) -> Option<f64> {
    x.is_finite().then_some(x)
}
