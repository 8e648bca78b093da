//! Stage `regime`: per bar, a volatility regime and a trend regime.
//!
//! Volatility: `rv_60` = sqrt(Σ r²) over the bar's last 60 one-bar log returns; `rv_pct_30d` = the
//! share of the `rv_60` values of the bars in the 30 days before it (ts − 30 days ≤ ts' < ts)
//! that are strictly below its own (compared at 12 significant digits), once those hold at least
//! a day of values (1440); classed
//! `low` below 0.25, `high` from 0.75, `normal` between. Trend: `up` or `down` (the sign of the
//! 240-bar regression slope) where ADX(14) > 25, otherwise `range` (a zero slope included: a
//! window of one repeated close has slope exactly 0).

use anyhow::Result;
use chrono::DateTime;
use ta_lib::Core;

use super::{indicators, regression};
use crate::bars::Bars;
use crate::column::{ANY_WARM_UP, NON_NEGATIVE, PERCENT, UNIT};
use crate::table::{Column, Def, Kind, Rows, Values};

pub const REGIME: Def = Def {
    name: "regime",
    columns: &[
        Column::of("pair", Kind::Text),
        Column::of("ts", Kind::Ts),
        Column::f64("rv_60")
            .warm_up(ANY_WARM_UP)
            .range(NON_NEGATIVE),
        Column::f64("rv_pct_30d").warm_up(ANY_WARM_UP).range(UNIT),
        Column::of("vol_regime", Kind::OptText),
        Column::f64("adx_14").warm_up(ANY_WARM_UP).range(PERCENT),
        Column::f64("slope_240").warm_up(ANY_WARM_UP),
        Column::of("trend_regime", Kind::OptText),
    ],
    key: &["pair", "ts"],
    month_column: "ts",
    pair_column: Some("pair"),
    about: "Per pair and bar: realised volatility over 60 bars, its percentile over the 30 days before, ADX(14), the 240-bar slope and the regimes they give. Depends on the pair's own bars only.",
};

pub const RV_BARS: usize = 60;
pub const PCT_WINDOW_US: i64 = 30 * 24 * 60 * 60_000_000;
/// Fewer values than this in the 30 days before a bar (the data's first day) rank nothing.
pub const PCT_MIN_VALUES: usize = 1440;
pub const LOW_BELOW: f64 = 0.25;
pub const HIGH_FROM: f64 = 0.75;
pub const ADX_TREND: f64 = 25.0;
pub const SLOPE_BARS: usize = 240;
/// History read before the month: 30 days of percentile window, plus the rolling windows' own.
pub const HISTORY_DAYS: i64 = 32;

/// The labels the regime columns take.
pub const LABELS: [&str; 6] = ["low", "normal", "high", "up", "down", "range"];

/// `rv_60` per bar (NaN for the first 60).
pub fn realised_vol(close: &[f64]) -> Vec<f64> {
    let n = close.len();
    let r2: Vec<f64> = (0..n)
        .map(|i| {
            if i == 0 {
                f64::NAN
            } else {
                (close[i] / close[i - 1]).ln().powi(2)
            }
        })
        .collect();
    // Summed afresh per bar (60 terms): no running sum to drift, no order to depend on.
    (0..n)
        .map(|i| {
            if i < RV_BARS {
                f64::NAN
            } else {
                r2[i + 1 - RV_BARS..=i].iter().sum::<f64>().sqrt()
            }
        })
        .collect()
}

/// A Fenwick tree of counts over value ranks: add, remove, count below a rank, in O(log n).
struct Counts(Vec<u32>);

impl Counts {
    fn add(&mut self, rank: usize, d: i32) {
        let mut i = rank + 1;
        while i < self.0.len() {
            self.0[i] = self.0[i].wrapping_add_signed(d);
            i += i & i.wrapping_neg();
        }
    }
    /// How many values have a rank below `rank`.
    fn below(&self, rank: usize) -> usize {
        let (mut i, mut s) = (rank, 0usize);
        while i > 0 {
            s += self.0[i] as usize;
            i -= i & i.wrapping_neg();
        }
        s
    }
}

/// A value as ranked: at 12 significant digits, so that two volatilities equal but for the
/// order their 60 terms were summed in (the last bits) tie, as they should.
pub fn rank_key(x: f64) -> f64 {
    if x == 0.0 || !x.is_finite() {
        return x;
    }
    let scale = 10f64.powi(11 - x.abs().log10().floor() as i32);
    (x * scale).round() / scale
}

/// `rv_pct_30d` per bar (NaN where undefined); `ts` in microseconds, ascending.
pub fn percentile_30d(ts: &[i64], rv: &[f64]) -> Vec<f64> {
    let rv: Vec<f64> = rv.iter().map(|x| rank_key(*x)).collect();
    let mut sorted: Vec<f64> = rv.iter().copied().filter(|v| !v.is_nan()).collect();
    sorted.sort_by(f64::total_cmp);
    sorted.dedup();
    let rank = |v: f64| sorted.partition_point(|x| *x < v);
    let mut counts = Counts(vec![0; sorted.len() + 1]);
    let (mut lo, mut held) = (0usize, 0usize);
    let mut out = vec![f64::NAN; rv.len()];
    for i in 0..rv.len() {
        // The window is [ts − 30 d, ts): drop what fell out, then rank against it, then join it.
        while lo < i && ts[lo] < ts[i] - PCT_WINDOW_US {
            if !rv[lo].is_nan() {
                counts.add(rank(rv[lo]), -1);
                held -= 1;
            }
            lo += 1;
        }
        if rv[i].is_nan() {
            continue;
        }
        let r = rank(rv[i]);
        if held >= PCT_MIN_VALUES {
            out[i] = counts.below(r) as f64 / held as f64;
        }
        counts.add(r, 1);
        held += 1;
    }
    out
}

pub fn vol_class(pct: f64) -> Option<&'static str> {
    if pct.is_nan() {
        None
    } else if pct < LOW_BELOW {
        Some("low")
    } else if pct >= HIGH_FROM {
        Some("high")
    } else {
        Some("normal")
    }
}

pub fn trend_class(adx: f64, slope: f64) -> Option<&'static str> {
    if adx.is_nan() || slope.is_nan() {
        None
    } else if adx > ADX_TREND && slope > 0.0 {
        Some("up")
    } else if adx > ADX_TREND && slope < 0.0 {
        Some("down")
    } else {
        Some("range")
    }
}

/// The regime rows of the bars from `first` on (the month), computed over all of `bars` (the
/// month and its history).
pub fn compute(core: &Core, pair: &str, bars: &Bars, first: usize) -> Result<Rows> {
    let n = bars.len();
    let rv = realised_vol(&bars.close);
    let pct = percentile_30d(&bars.ts, &rv);
    let e = n.saturating_sub(1);
    let [adx] = if n == 0 {
        [vec![]]
    } else {
        indicators::run(n, core.adx_lookback(14).unwrap_or(0), |[o]| {
            core.adx(0, e, &bars.high, &bars.low, &bars.close, 14, o)
        })
        .map_err(|e| anyhow::anyhow!("TA-Lib: {e:?}"))?
    };
    let [mut slope, ..] = regression::rolling_ols(&bars.close, SLOPE_BARS);
    // Over a window of one repeated close the slope is exactly 0 (a market that did not move is
    // in range), not the few ulps the running sums leave there.
    let mut same = 0usize;
    for (i, s) in slope.iter_mut().enumerate() {
        same = if i > 0 && bars.close[i] == bars.close[i - 1] {
            same + 1
        } else {
            1
        };
        if same >= SLOPE_BARS {
            *s = 0.0;
        }
    }
    let some = |x: f64| crate::column::finite(x);
    let range = first.min(n)..n;
    Rows::new(
        &REGIME,
        vec![
            Values::Text(vec![pair.to_string(); range.len()]),
            Values::Ts(
                range
                    .clone()
                    .map(|i| DateTime::from_timestamp_micros(bars.ts[i]).unwrap_or_default())
                    .collect(),
            ),
            Values::F64(range.clone().map(|i| some(rv[i])).collect()),
            Values::F64(range.clone().map(|i| some(pct[i])).collect()),
            Values::OptText(range.clone().map(|i| vol_class(pct[i])).collect()),
            Values::F64(range.clone().map(|i| some(adx[i])).collect()),
            Values::F64(range.clone().map(|i| some(slope[i])).collect()),
            Values::OptText(range.map(|i| trend_class(adx[i], slope[i])).collect()),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_counts_the_30_days_before_strictly_below() {
        let min = 60_000_000i64;
        let n = 2000;
        let ts: Vec<i64> = (0..n as i64).map(|i| i * min).collect();
        let rv: Vec<f64> = (0..n).map(|i| (i % 100) as f64).collect();
        let p = percentile_30d(&ts, &rv);
        assert!(p[..PCT_MIN_VALUES].iter().all(|x| x.is_nan()));
        // Bar 1440 (value 40): the 1440 before it hold 14 full cycles of 0..99 and 0..39.
        let below = 14 * 40 + 40;
        assert_eq!(p[1440], below as f64 / 1440.0);
        // A window of 30 days: a bar 31 days later does not see the first one.
        let ts2 = [0, PCT_WINDOW_US, PCT_WINDOW_US + 1];
        let mut counts = percentile_30d(&ts2, &[1.0, 2.0, 3.0]);
        counts.retain(|x| !x.is_nan());
        assert!(counts.is_empty(), "below the minimum of values");
        assert_eq!(vol_class(0.1), Some("low"));
        assert_eq!(vol_class(0.75), Some("high"));
        assert_eq!(vol_class(0.5), Some("normal"));
        assert_eq!(trend_class(30.0, -1e-9), Some("down"));
        assert_eq!(trend_class(25.0, 1.0), Some("range"));
        assert_eq!(trend_class(f64::NAN, 1.0), None);
        let rv = realised_vol(&[1.0; 70]);
        assert!(rv[59].is_nan() && rv[60] == 0.0);
    }
}
