//! Stage `regression`: rolling OLS of close on time (the bar index) over several windows, in
//! O(1) per row from running sums. Time is local to the window (0 = its first bar), so the
//! intercept is the fitted close at the window's first bar.

use crate::bars::Bars;
use crate::column::{Column, Columns, NON_NEGATIVE, UNIT};
use crate::table::{keyed, Def};

/// The stage's table: (pair, ts) and the columns below, one row per bar of the month.
pub const REGRESSION: Def = Def {
    name: "regression",
    columns: &COLUMNS_KEYED,
    key: &["pair", "ts"],
    month_column: "ts",
    pair_column: Some("pair"),
    about: "Per pair and bar: rolling least squares of the close on time over 60, 240 and 1440 bars (slope, intercept, R², RMSE), warmed up on the bars before the month. Depends on the pair's own bars only.",
};

const COLUMNS_KEYED: [Column; 14] = keyed(COLUMNS);

fn nan_unless_finite(x: f64) -> f64 {
    if x.is_finite() {
        x
    } else {
        f64::NAN
    }
}

pub const WINDOWS: [usize; 3] = [60, 240, 1440];

/// The output columns, in the order `compute` returns them: per window (see WINDOWS) slope,
/// intercept, R², RMSE; a window needs w bars, so w − 1 are its warm-up. R² is NULL over a
/// window of equal closes, which is not a fault.
pub const COLUMNS: [Column; 12] = [
    Column::f64("slope_60").warm_up(59),
    Column::f64("intercept_60").warm_up(59),
    Column::f64("r2_60").warm_up(59).range(UNIT).nullable(),
    Column::f64("rmse_60").warm_up(59).range(NON_NEGATIVE),
    Column::f64("slope_240").warm_up(239),
    Column::f64("intercept_240").warm_up(239),
    Column::f64("r2_240").warm_up(239).range(UNIT).nullable(),
    Column::f64("rmse_240").warm_up(239).range(NON_NEGATIVE),
    Column::f64("slope_1440").warm_up(1439),
    Column::f64("intercept_1440").warm_up(1439),
    Column::f64("r2_1440").warm_up(1439).range(UNIT).nullable(),
    Column::f64("rmse_1440").warm_up(1439).range(NON_NEGATIVE),
];

/// (slope, intercept, r², rmse) per bar for one window; None during the first w-1 bars. R² is
/// None when the window's closes do not vary (no line explains a constant).
pub fn rolling_ols(close: &[f64], w: usize) -> [Vec<f64>; 4] {
    let n = close.len();
    let mut out: [Vec<f64>; 4] = std::array::from_fn(|_| vec![f64::NAN; n]);
    if w < 2 || n < w {
        return out;
    }
    let wf = w as f64;
    let sx = wf * (wf - 1.0) / 2.0;
    let sxx = (wf - 1.0) * wf * (2.0 * wf - 1.0) / 6.0;
    let var_x = sxx - sx * sx / wf;
    // Σy, Σy², Σ(i−a)·y over the window, with y = close − y0. Running sums drift and cancel as
    // they slide, so every w bars they are recomputed exactly over the window with a fresh
    // anchor (a = the window's first bar, y0 = its close): amortised O(1), accurate to about
    // a two-pass fit.
    let (mut y0, mut a) = (close[0], 0usize);
    let (mut sy, mut syy, mut siy) = (0.0f64, 0.0f64, 0.0f64);
    for i in 0..n {
        if i >= w && i % w == 0 {
            a = i + 1 - w;
            y0 = close[a];
            (sy, syy, siy) = (0.0, 0.0, 0.0);
            for (j, c) in close.iter().enumerate().take(i).skip(a) {
                let y = c - y0;
                sy += y;
                syy += y * y;
                siy += (j - a) as f64 * y;
            }
        } else if i >= w {
            let j = i - w;
            let yj = close[j] - y0;
            sy -= yj;
            syy -= yj * yj;
            siy -= (j - a) as f64 * yj;
        }
        let y = close[i] - y0;
        sy += y;
        syy += y * y;
        siy += (i - a) as f64 * y;
        if i + 1 < w {
            continue;
        }
        let start = (i + 1 - w - a) as f64;
        let sxy = siy - start * sy;
        let cov = sxy - sx * sy / wf;
        let var_y = (syy - sy * sy / wf).max(0.0);
        let slope = cov / var_x;
        let intercept = (sy - slope * sx) / wf + y0;
        let sse = (var_y - slope * cov).max(0.0);
        let scale = (sy / wf + y0).abs().max(1.0);
        let r2 = if var_y > 1e-18 * scale * scale * wf {
            (slope * cov / var_y).clamp(0.0, 1.0)
        } else {
            f64::NAN
        };
        out[0][i] = nan_unless_finite(slope);
        out[1][i] = nan_unless_finite(intercept);
        out[2][i] = r2;
        out[3][i] = nan_unless_finite((sse / wf).sqrt());
    }
    out
}

pub fn compute(b: &Bars) -> Columns {
    let mut values = vec![];
    for w in WINDOWS {
        values.extend(rolling_ols(&b.close, w));
    }
    Columns {
        names: COLUMNS.iter().map(|c| c.name.to_string()).collect(),
        values,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The textbook O(w) fit of one window.
    fn naive(y: &[f64]) -> (f64, f64, f64, f64) {
        let n = y.len() as f64;
        let mx = (n - 1.0) / 2.0;
        let my = y.iter().sum::<f64>() / n;
        let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
        for (i, v) in y.iter().enumerate() {
            let dx = i as f64 - mx;
            sxy += dx * (v - my);
            sxx += dx * dx;
            syy += (v - my) * (v - my);
        }
        let slope = sxy / sxx;
        let intercept = my - slope * mx;
        let sse: f64 = y
            .iter()
            .enumerate()
            .map(|(i, v)| (v - intercept - slope * i as f64).powi(2))
            .sum();
        (slope, intercept, 1.0 - sse / syy, (sse / n).sqrt())
    }

    #[test]
    fn columns_follow_the_windows() {
        let mut k = 0;
        for w in WINDOWS {
            for m in ["slope", "intercept", "r2", "rmse"] {
                assert_eq!(COLUMNS[k].name, format!("{m}_{w}"));
                assert_eq!(COLUMNS[k].warm_up, w - 1, "{}", COLUMNS[k].name);
                k += 1;
            }
        }
        assert_eq!(k, COLUMNS.len());
        // The values really start after the warm-up.
        let close: Vec<f64> = (0..2000)
            .map(|i| 1.0 + (i as f64 * 0.3).sin() * 0.01)
            .collect();
        let cols = compute(&Bars {
            ts: (0..2000).collect(),
            open: close.clone(),
            high: close.clone(),
            low: close.clone(),
            close: close.clone(),
            volume: vec![1.0; 2000],
        });
        for (c, v) in COLUMNS.iter().zip(&cols.values) {
            assert_eq!(
                v.iter().take_while(|x| x.is_nan()).count(),
                c.warm_up,
                "{}",
                c.name
            );
        }
    }

    #[test]
    fn matches_the_naive_fit_on_every_window() {
        let close: Vec<f64> = (0..3000)
            .map(|i| {
                let x = i as f64;
                145.0 + 0.3 * (x / 50.0).sin() + 0.001 * x + 0.05 * ((x * 7.3).sin())
            })
            .collect();
        let w = 240;
        let [s, b, r2, rmse] = rolling_ols(&close, w);
        assert!(s[w - 2].is_nan() && s[w - 1].is_finite());
        for i in (w - 1..close.len()).step_by(97) {
            let (ns, nb, nr2, nrmse) = naive(&close[i + 1 - w..=i]);
            assert!((s[i] - ns).abs() < 1e-9, "slope at {i}");
            assert!((b[i] - nb).abs() < 1e-7, "intercept at {i}");
            assert!((r2[i] - nr2).abs() < 1e-7, "r2 at {i}");
            assert!((rmse[i] - nrmse).abs() < 1e-7, "rmse at {i}");
        }
    }

    #[test]
    fn exact_line_and_constant_series() {
        let line: Vec<f64> = (0..100).map(|i| 2.0 + 0.5 * i as f64).collect();
        let [s, b, r2, rmse] = rolling_ols(&line, 60);
        assert!((s[99] - 0.5).abs() < 1e-9);
        assert!((b[99] - (2.0 + 0.5 * 40.0)).abs() < 1e-9);
        assert!((r2[99] - 1.0).abs() < 1e-9);
        assert!(rmse[99] < 1e-6);
        let flat = vec![1.25; 100];
        let [s, _, r2, rmse] = rolling_ols(&flat, 60);
        assert_eq!(s[99], 0.0);
        assert!(r2[99].is_nan());
        assert_eq!(rmse[99], 0.0);
        assert!(rolling_ols(&flat[..10], 60)[0].iter().all(|v| v.is_nan()));
    }
}
