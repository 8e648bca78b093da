//! A partition's month as the worker reads and writes it: the first day, and the time range
//! [start, end) its bars and rows fall in, computed once when the partition is claimed.

use chrono::{DateTime, Datelike, NaiveDate, Utc};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Month {
    /// The month's first day.
    pub first: NaiveDate,
    pub start: DateTime<Utc>,
    /// The next month's start: the range is half-open.
    pub end: DateTime<Utc>,
}

impl Month {
    /// The month `day` falls in.
    pub fn of(day: NaiveDate) -> Month {
        let first = day.with_day(1).unwrap_or(day);
        let next = if first.month() == 12 {
            NaiveDate::from_ymd_opt(first.year() + 1, 1, 1)
        } else {
            NaiveDate::from_ymd_opt(first.year(), first.month() + 1, 1)
        }
        .unwrap_or(first);
        Month {
            first,
            start: first.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc(),
            end: next.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc(),
        }
    }

    /// `ts >= '<start>' AND ts < '<end>'` on `column`, with literals (COPY takes no parameters).
    pub fn filter(&self, column: &str) -> String {
        format!(
            "{column} >= '{}' AND {column} < '{}'",
            self.start.to_rfc3339(),
            self.end.to_rfc3339()
        )
    }
}

impl std::fmt::Display for Month {
    /// As the month's first day (`2023-04-01`), as the queue stores it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.first.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_month_is_half_open_and_december_ends_in_january() {
        let m = Month::of(NaiveDate::from_ymd_opt(2023, 12, 17).unwrap());
        assert_eq!(m.first, NaiveDate::from_ymd_opt(2023, 12, 1).unwrap());
        assert_eq!(m.start.to_rfc3339(), "2023-12-01T00:00:00+00:00");
        assert_eq!(m.end.to_rfc3339(), "2024-01-01T00:00:00+00:00");
        assert_eq!(
            m.filter("ts"),
            "ts >= '2023-12-01T00:00:00+00:00' AND ts < '2024-01-01T00:00:00+00:00'"
        );
    }
}
