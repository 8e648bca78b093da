//! Stage `validate`: checks a partition's feature tables after they are written. Per column:
//! NULLs beyond the warm-up, non-finite values, values outside the column's range; per
//! partition: time gaps. The checks are pure; `process` reads the tables and stores the report.

use chrono::{DateTime, Datelike, Utc, Weekday};
use serde::{Deserialize, Serialize};

use crate::column::Column;

/// Slack for values computed in floating point that sit exactly on a bound (RSI of 100, R² of 1).
const EPS: f64 = 1e-9;
const MINUTE_US: i64 = 60_000_000;
/// A gap longer than this that is not a weekend is reported as unexpected.
const UNEXPECTED_GAP_MINUTES: i64 = 60;

/// Checks every float column of a table's partition (rows in key order, so per pair and time
/// for per-pair tables). Leading NULLs are expected up to each column's warm-up less the
/// `history` bars its stage had before the month.
pub fn check_table(rows: &crate::table::Rows, history: usize) -> Vec<ColumnCheck> {
    let def = rows.def;
    def.columns
        .iter()
        .zip(&rows.columns)
        .filter_map(|(column, v)| match v {
            crate::table::Values::F64(v) => Some(check_column(def.name, column, v, history)),
            _ => None,
        })
        .collect()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ColumnCheck {
    pub stage: String,
    pub column: String,
    pub rows: u64,
    pub nulls: u64,
    pub nulls_beyond_warm_up: u64,
    pub non_finite: u64,
    pub out_of_range: u64,
    pub min: Option<f64>,
    pub max: Option<f64>,
}

impl ColumnCheck {
    /// Findings that make the column suspect (NULLs only where they are not expected).
    pub fn problems(&self) -> u64 {
        let nullable = crate::stage::find(&self.stage, &self.column).is_some_and(|c| c.nullable);
        let nulls = if nullable {
            0
        } else {
            self.nulls_beyond_warm_up
        };
        nulls + self.non_finite + self.out_of_range
    }
}

/// Checks one column of `stage` (a column stage or a typed table). Leading NULLs are expected
/// up to the column's warm-up less the `history` bars that preceded the partition.
pub fn check_column(
    stage: &str,
    column: &Column,
    values: &[Option<f64>],
    history: usize,
) -> ColumnCheck {
    let expected_warm_up = column.warm_up.saturating_sub(history);
    let leading = values.iter().take_while(|v| v.is_none()).count();
    let nulls = values.iter().filter(|v| v.is_none()).count();
    let (mut non_finite, mut out_of_range) = (0u64, 0u64);
    let (mut min, mut max) = (None::<f64>, None::<f64>);
    let bounds = column.range;
    for v in values.iter().flatten() {
        if !v.is_finite() {
            non_finite += 1;
            continue;
        }
        min = Some(min.map_or(*v, |m| m.min(*v)));
        max = Some(max.map_or(*v, |m| m.max(*v)));
        if let Some((lo, hi)) = bounds {
            if *v < lo - EPS || *v > hi + EPS {
                out_of_range += 1;
            }
        }
    }
    ColumnCheck {
        stage: stage.to_string(),
        column: column.name.to_string(),
        rows: values.len() as u64,
        nulls: nulls as u64,
        nulls_beyond_warm_up: (nulls - leading.min(expected_warm_up)) as u64,
        non_finite,
        out_of_range,
        min,
        max,
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gaps {
    /// Steps longer than one minute.
    pub gaps: u64,
    pub largest_gap_minutes: i64,
    /// Gaps over an hour that do not span a Saturday (the FX market's weekly close).
    pub unexpected: u64,
    /// Timestamps not after the one before (the output should never have these).
    pub not_increasing: u64,
}

fn spans_saturday(from_us: i64, to_us: i64) -> bool {
    let (Some(a), Some(b)) = (
        DateTime::<Utc>::from_timestamp_micros(from_us),
        DateTime::<Utc>::from_timestamp_micros(to_us),
    ) else {
        return false;
    };
    let mut d = a.date_naive();
    while d <= b.date_naive() {
        if d.weekday() == Weekday::Sat {
            return true;
        }
        match d.succ_opt() {
            Some(n) => d = n,
            None => return false,
        }
    }
    false
}

/// Time gaps in a partition's timestamps (microseconds, as stored).
pub fn gaps(ts: &[i64]) -> Gaps {
    let mut g = Gaps::default();
    for w in ts.windows(2) {
        let step = w[1] - w[0];
        if step <= 0 {
            g.not_increasing += 1;
        } else if step > MINUTE_US {
            let minutes = step / MINUTE_US;
            g.gaps += 1;
            g.largest_gap_minutes = g.largest_gap_minutes.max(minutes);
            if minutes > UNEXPECTED_GAP_MINUTES && !spans_saturday(w[0], w[1]) {
                g.unexpected += 1;
            }
        }
    }
    g
}

/// What a validate partition stores as its quality report.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub columns: u64,
    pub problems: u64,
    pub nulls_beyond_warm_up: u64,
    pub non_finite: u64,
    pub out_of_range: u64,
    #[serde(flatten)]
    pub gaps: Gaps,
    /// One line per column with a problem.
    pub findings: Vec<String>,
}

pub fn report(checks: &[ColumnCheck], gaps: Gaps) -> Report {
    let mut r = Report {
        columns: checks.len() as u64,
        gaps,
        ..Report::default()
    };
    for c in checks {
        r.problems += c.problems();
        r.nulls_beyond_warm_up += c.nulls_beyond_warm_up;
        r.non_finite += c.non_finite;
        r.out_of_range += c.out_of_range;
        if c.problems() > 0 {
            r.findings.push(format!(
                "{}.{}: {} NULL beyond warm-up, {} non-finite, {} out of range",
                c.stage, c.column, c.nulls_beyond_warm_up, c.non_finite, c.out_of_range
            ));
        }
    }
    r.problems += r.gaps.not_increasing;
    r
}

/// Every column of a run with a problem, from the report table.
pub async fn findings(
    client: &tokio_postgres::Client,
    run_id: &str,
) -> anyhow::Result<serde_json::Value> {
    let rows = client
        .query(
            "SELECT pair, month::text, stage, column_name, rows, nulls, nulls_beyond_warm_up,
                    non_finite, out_of_range, min, max
               FROM ephemera.validation WHERE run_id = $1 ORDER BY pair, month, stage, column_name",
            &[&run_id],
        )
        .await?;
    let mut columns = 0u64;
    let mut flagged = vec![];
    for r in &rows {
        columns += 1;
        let c = ColumnCheck {
            stage: r.get(2),
            column: r.get(3),
            rows: r.get::<_, i64>(4) as u64,
            nulls: r.get::<_, i64>(5) as u64,
            nulls_beyond_warm_up: r.get::<_, i64>(6) as u64,
            non_finite: r.get::<_, i64>(7) as u64,
            out_of_range: r.get::<_, i64>(8) as u64,
            min: r.get(9),
            max: r.get(10),
        };
        if c.problems() > 0 {
            let mut v = serde_json::to_value(&c)?;
            v["pair"] = r.get::<_, String>(0).into();
            v["month"] = r.get::<_, String>(1).into();
            v["problems"] = c.problems().into();
            flagged.push(v);
        }
    }
    Ok(serde_json::json!({ "run_id": run_id, "columns_checked": columns, "flagged": flagged }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(table: &str, name: &str) -> Option<(f64, f64)> {
        crate::stage::find(table, name).unwrap().range
    }

    #[test]
    fn ranges_by_column() {
        assert_eq!(range("indicators", "rsi_14"), Some((0.0, 100.0)));
        assert_eq!(range("indicators", "willr_14"), Some((-100.0, 0.0)));
        assert_eq!(range("regression", "r2_1440"), Some((0.0, 1.0)));
        assert_eq!(range("indicators", "stoch_d"), Some((0.0, 100.0)));
        assert_eq!(range("regression", "rmse_60"), Some((0.0, f64::INFINITY)));
        assert_eq!(range("indicators", "macd"), None);
        assert_eq!(range("regression", "slope_60"), None);
        assert_eq!(range("regime", "rv_pct_30d"), Some((0.0, 1.0)));
        assert_eq!(range("regime", "slope_240"), None);
        assert_eq!(range("arbitrage", "quoted").unwrap().0, f64::MIN_POSITIVE);
        assert_eq!(range("causality", "f_stat"), Some((0.0, f64::INFINITY)));
        assert_eq!(
            crate::stage::find("regime", "adx_14").unwrap().warm_up,
            crate::column::ANY_WARM_UP
        );
        assert!(crate::stage::find("indicators", "nope").is_none());
        assert!(crate::stage::find("nope", "rsi_14").is_none());
    }

    #[test]
    fn warm_up_nulls_are_expected_others_are_not() {
        let v = [
            None,
            None,
            Some(50.0),
            None,
            Some(100.0 + 1e-12),
            Some(101.0),
        ];
        // RSI(14) with 12 bars of history before the partition: 2 leading NULLs expected.
        let rsi = &crate::features::indicators::COLUMNS[0];
        let r2 = crate::stage::find("regression", "r2_60").unwrap();
        let c = check_column("indicators", rsi, &v, 12);
        assert_eq!((c.rows, c.nulls, c.nulls_beyond_warm_up), (6, 3, 1));
        assert_eq!((c.non_finite, c.out_of_range), (0, 1));
        assert_eq!((c.min, c.max), (Some(50.0), Some(101.0)));
        assert_eq!(c.problems(), 2);
        // With history before the partition, no leading NULL is expected.
        assert_eq!(
            check_column("indicators", rsi, &v, 14).nulls_beyond_warm_up,
            3
        );
        // A leading run longer than the warm-up counts past it.
        assert_eq!(
            check_column("indicators", rsi, &v, 13).nulls_beyond_warm_up,
            2
        );
        let nan = [Some(f64::NAN), Some(f64::INFINITY), Some(0.5)];
        assert_eq!(check_column("regression", r2, &nan, 60).non_finite, 2);
        // R² over a flat window is NULL by definition: reported, not a problem.
        let r2 = check_column("regression", r2, &[Some(0.5), None], 60);
        assert_eq!((r2.nulls_beyond_warm_up, r2.problems()), (1, 0));
    }

    #[test]
    fn weekend_gaps_are_expected_others_are_not() {
        let t = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().timestamp_micros();
        let ts = [
            t("2023-04-07T20:58:00Z"), // Friday
            t("2023-04-07T20:59:00Z"),
            t("2023-04-09T21:00:00Z"), // Sunday: weekend close
            t("2023-04-09T21:05:00Z"), // 5 minutes
            t("2023-04-10T03:05:00Z"), // Monday, 6 hours: unexpected
            t("2023-04-10T03:05:00Z"), // repeated
        ];
        let g = gaps(&ts);
        assert_eq!(g.gaps, 3);
        assert_eq!(g.unexpected, 1);
        assert_eq!(g.not_increasing, 1);
        assert_eq!(g.largest_gap_minutes, 2881);
        let rsi = &crate::features::indicators::COLUMNS[0];
        let r = report(&[check_column("indicators", rsi, &[Some(-1.0)], 14)], g);
        assert_eq!(r.problems, 2);
        assert_eq!(r.findings.len(), 1);
        assert!(
            r.findings[0].starts_with("indicators.rsi_14: 0 NULL"),
            "{:?}",
            r.findings
        );
    }
}
