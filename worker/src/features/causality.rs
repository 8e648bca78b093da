//! Stage `causality`: per month, for every ordered pair of pairs (cause, effect), Granger
//! causality of 5-minute log returns at lags 1..=5 — the ssr F test of
//! `statsmodels.tsa.stattools.grangercausalitytests`.
//!
//! The 5-minute series: a pair's clean bars of the month fall in buckets of 5 minutes from the Unix
//! epoch (00:00–00:04, 00:05–00:09, …); a bucket's close is the close of its last bar. The return
//! of a bucket is ln(close / close of the bucket just before), and exists only when that previous
//! bucket has a bar: a move across a gap (a weekend, an outage, the month's start) is no 5-minute
//! return and is left out, never spread or filled.
//!
//! Alignment: both series sit on the same grid of buckets. The regression at lag L has one row per
//! bucket t where the cause and the effect both have a return at every bucket t−L..=t: the effect
//! at t regressed on a constant and the effect at t−1..t−L (restricted), plus the cause at
//! t−1..t−L (unrestricted). A row never reaches across a gap; on a gapless series these are
//! exactly the rows `grangercausalitytests` uses (`lagmat2ds(…, trim="both")`).
//!
//! F = (SSR_r − SSR_u) / L / (SSR_u / (n − 2L − 1)), with n the rows used, and p its survival
//! function under F(L, n − 2L − 1). Both sums come from one Householder QR of the unrestricted
//! design with the restricted columns first: Qᵀy's components past the restricted columns give
//! SSR_r − SSR_u directly, without subtracting two nearly equal sums. Where the test is undefined
//! (too few rows, a constant or collinear regressor, a perfect fit), F and p are NULL.

use anyhow::Result;
use chrono::NaiveDate;
use statrs::distribution::{ContinuousCDF, FisherSnedecor};

use crate::bars::Bars;
use crate::column::{NON_NEGATIVE, UNIT};
use crate::table::{Column, Def, Kind, Rows, Values};

pub const CAUSALITY: Def = Def {
    name: "causality",
    columns: &[
        Column::of("month", Kind::Date),
        Column::of("cause", Kind::Text),
        Column::of("effect", Kind::Text),
        Column::of("lag", Kind::Int),
        Column::f64("f_stat").range(NON_NEGATIVE),
        Column::f64("p_value").range(UNIT),
        Column::of("nobs", Kind::Int),
        Column::of("df_num", Kind::Int),
        Column::of("df_den", Kind::Int),
    ],
    key: &["month", "cause", "effect", "lag"],
    month_column: "month",
    pair_column: None,
    about: "Per month, ordered pair of pairs (cause, effect) and lag: the Granger ssr F test of 5-minute log returns and its p-value. A test depends on its two pairs only.",
};

/// The lags tested, 1..=LAGS.
pub const LAGS: usize = 5;
/// The bucket of the 5-minute series.
pub const BUCKET_US: i64 = 5 * 60_000_000;

/// A pair's 5-minute log returns: (bucket number since the epoch, return), in time order.
pub fn returns(bars: &Bars) -> Vec<(i64, f64)> {
    let mut closes: Vec<(i64, f64)> = vec![];
    for (t, c) in bars.ts.iter().zip(&bars.close) {
        let b = t.div_euclid(BUCKET_US);
        match closes.last_mut() {
            Some(last) if last.0 == b => last.1 = *c,
            _ => closes.push((b, *c)),
        }
    }
    closes
        .windows(2)
        .filter(|w| w[1].0 == w[0].0 + 1)
        .map(|w| (w[1].0, (w[1].1 / w[0].1).ln()))
        .collect()
}

/// One test's result.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Test {
    pub lag: usize,
    pub f: Option<f64>,
    pub p: Option<f64>,
    pub nobs: usize,
    pub df_num: usize,
    /// n − 2L − 1 (negative when there are too few rows).
    pub df_den: i64,
}

/// Granger tests of `cause` → `effect` at lags 1..=max_lag, both as from [`returns`].
pub fn granger(cause: &[(i64, f64)], effect: &[(i64, f64)], max_lag: usize) -> Vec<Test> {
    granger_in(&mut Scratch::default(), cause, effect, max_lag)
}

/// The buffers of one test, kept for the next: a month's 3,780 tests allocating a dozen columns
/// each spent a fifth of the stage's time in page faults.
#[derive(Default)]
pub struct Scratch {
    x: Vec<f64>,
    y: Vec<f64>,
    run: Vec<usize>,
    rows: Vec<usize>,
    cols: Vec<Vec<f64>>,
    target: Vec<f64>,
    v: Vec<f64>,
}

/// [`granger`] in `scratch`'s buffers.
fn granger_in(
    scratch: &mut Scratch,
    cause: &[(i64, f64)],
    effect: &[(i64, f64)],
    max_lag: usize,
) -> Vec<Test> {
    // The buckets where both have a return, and how many consecutive buckets end at each.
    let mut x = std::mem::take(&mut scratch.x);
    let mut y = std::mem::take(&mut scratch.y);
    let mut run = std::mem::take(&mut scratch.run);
    x.clear();
    y.clear();
    run.clear();
    let (mut i, mut j) = (0, 0);
    let mut prev: Option<i64> = None;
    while i < cause.len() && j < effect.len() {
        let (bc, be) = (cause[i].0, effect[j].0);
        if bc < be {
            i += 1;
        } else if be < bc {
            j += 1;
        } else {
            let r = match (prev, run.last()) {
                (Some(p), Some(&r)) if p + 1 == bc => r + 1,
                _ => 1usize,
            };
            x.push(cause[i].1);
            y.push(effect[j].1);
            run.push(r);
            prev = Some(bc);
            i += 1;
            j += 1;
        }
    }
    let tests = (1..=max_lag)
        .map(|lag| test(scratch, &x, &y, &run, lag))
        .collect();
    (scratch.x, scratch.y, scratch.run) = (x, y, run);
    tests
}

fn test(scratch: &mut Scratch, x: &[f64], y: &[f64], run: &[usize], lag: usize) -> Test {
    // Rows: buckets with `lag` joint returns right before them.
    let rows = &mut scratch.rows;
    rows.clear();
    rows.extend((0..y.len()).filter(|&t| run[t] > lag));
    let n = rows.len();
    let df_den = n as i64 - 2 * lag as i64 - 1;
    let undefined = Test {
        lag,
        f: None,
        p: None,
        nobs: n,
        df_num: lag,
        df_den,
    };
    if df_den <= 0 {
        return undefined;
    }
    // Columns, restricted ones first: constant, effect lags, then cause lags.
    let cols = &mut scratch.cols;
    cols.resize_with(1 + 2 * lag, Vec::new);
    for (j, col) in cols.iter_mut().enumerate() {
        col.clear();
        match j {
            0 => col.resize(n, 1.0),
            j if j <= lag => col.extend(rows.iter().map(|&t| y[t - j])),
            j => col.extend(rows.iter().map(|&t| x[t - (j - lag)])),
        }
    }
    let target = &mut scratch.target;
    target.clear();
    target.extend(rows.iter().map(|&t| y[t]));
    if householder_qty(&mut cols[..1 + 2 * lag], target, &mut scratch.v).is_none() {
        return undefined;
    }
    let qty = &target[..];
    let p_r = 1 + lag;
    let p_u = 1 + 2 * lag;
    let explained: f64 = qty[p_r..p_u].iter().map(|v| v * v).sum();
    let ssr_u: f64 = qty[p_u..].iter().map(|v| v * v).sum();
    // Centred total sum of squares: ‖Qᵀy‖² = ‖y‖², and (Qᵀy)₀² = n·ȳ² (the first column is the
    // constant).
    let tss: f64 = qty.iter().map(|v| v * v).sum::<f64>() - qty[0] * qty[0];
    // statsmodels' perfect-fit test: SSR_u / TSS below machine epsilon.
    let fits = ssr_u > 0.0 && ssr_u / tss >= f64::EPSILON;
    if !fits {
        return undefined;
    }
    let f = explained / lag as f64 / (ssr_u / df_den as f64);
    let p = FisherSnedecor::new(lag as f64, df_den as f64)
        .ok()
        .map(|d| d.sf(f));
    Test {
        f: f.is_finite().then_some(f),
        p: p.filter(|p| p.is_finite()),
        ..undefined
    }
}

/// Householder QR of the columns (n rows each), applied to `y`: leaves Qᵀy in `y` (`v`: a buffer
/// for the reflections). None when a column is (numerically) a combination of the ones before it.
fn householder_qty(cols: &mut [Vec<f64>], y: &mut [f64], v: &mut Vec<f64>) -> Option<()> {
    let n = y.len();
    let p = cols.len();
    if n < p {
        return None;
    }
    for k in 0..p {
        let (all, tail) = sums_of_squares(&cols[k], k);
        let (scale, norm) = (all.sqrt(), tail.sqrt());
        // Rank: what is left of the column after the earlier ones is at rounding level.
        if norm.is_nan() || norm <= scale * 1e-10 {
            return None;
        }
        let alpha = if cols[k][k] > 0.0 { -norm } else { norm };
        // v = x − αe₁, stored in place of the column's tail; H = I − 2vvᵀ/(vᵀv).
        v.clear();
        v.extend_from_slice(&cols[k][k..]);
        v[0] -= alpha;
        // vᵀv rides along with the dot products: one pass instead of a sum of its own.
        let targets: Vec<&[f64]> = cols[k + 1..]
            .iter()
            .map(|c| &c[k..])
            .chain([&y[k..], &v[..]])
            .collect();
        let mut dots = dots(v, &targets);
        let vtv = dots.pop()?;
        let apply = |c: &mut [f64], dot: f64| {
            let s = 2.0 * dot / vtv;
            for (ci, vi) in c.iter_mut().zip(v.iter()) {
                *ci -= s * vi;
            }
        };
        for (c, &dot) in cols.iter_mut().skip(k + 1).zip(&dots) {
            apply(&mut c[k..], dot);
        }
        apply(&mut y[k..], dots[dots.len() - 1]);
        cols[k][k] = alpha;
    }
    Some(())
}

/// The column's sum of squares and that of its tail from `k`, each summed in index order from
/// −0.0 as `Iterator::sum` does (so the same bits), in one pass: two independent additions where
/// two passes waited on each addition in turn.
fn sums_of_squares(c: &[f64], k: usize) -> (f64, f64) {
    let mut all = -0.0f64;
    for x in &c[..k] {
        all += x * x;
    }
    let mut tail = -0.0f64;
    for x in &c[k..] {
        all += x * x;
        tail += x * x;
    }
    (all, tail)
}

/// `v`·`c` for each `c`, each summed in index order from −0.0 as `Iterator::sum` does (so the
/// same bits), four at a time: one pass feeds four independent additions, where one dot product
/// alone waits on each addition before the next (most of the stage's time).
fn dots(v: &[f64], cs: &[&[f64]]) -> Vec<f64> {
    let mut out = Vec::with_capacity(cs.len());
    for group in cs.chunks(4) {
        if let [a, b, c, d] = group {
            let mut acc = [-0.0f64; 4];
            for ((((x, a), b), c), d) in v.iter().zip(*a).zip(*b).zip(*c).zip(*d) {
                acc[0] += x * a;
                acc[1] += x * b;
                acc[2] += x * c;
                acc[3] += x * d;
            }
            out.extend_from_slice(&acc);
        } else {
            out.extend(
                group
                    .iter()
                    .map(|c| v.iter().zip(c.iter()).map(|(a, b)| a * b).sum::<f64>()),
            );
        }
    }
    out
}

/// `pairs`: every loaded pair's clean bars of the month, sorted by pair name. Rows in key order
/// (cause, effect, lag); pairs without a bar in the month are left out.
pub fn compute(month: NaiveDate, pairs: &[(String, Bars)]) -> Result<Rows> {
    let series: Vec<(&str, Vec<(i64, f64)>)> = pairs
        .iter()
        .filter(|(_, b)| !b.is_empty())
        .map(|(p, b)| (p.as_str(), returns(b)))
        .collect();
    let (mut m, mut cause, mut effect, mut lag, mut f, mut p, mut nobs, mut dn, mut dd) = (
        vec![],
        vec![],
        vec![],
        vec![],
        vec![],
        vec![],
        vec![],
        vec![],
        vec![],
    );
    let mut scratch = Scratch::default();
    for (c, xs) in &series {
        for (e, ys) in &series {
            if c == e {
                continue;
            }
            for t in granger_in(&mut scratch, xs, ys, LAGS) {
                m.push(month);
                cause.push(c.to_string());
                effect.push(e.to_string());
                lag.push(t.lag as i32);
                f.push(t.f);
                p.push(t.p);
                nobs.push(i32::try_from(t.nobs)?);
                dn.push(t.df_num as i32);
                dd.push(i32::try_from(t.df_den)?);
            }
        }
    }
    Rows::new(
        &CAUSALITY,
        vec![
            Values::Date(m),
            Values::Text(cause),
            Values::Text(effect),
            Values::Int(lag),
            Values::F64(f),
            Values::F64(p),
            Values::Int(nobs),
            Values::Int(dn),
            Values::Int(dd),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000_000;

    #[test]
    fn dots_four_at_a_time_are_the_sequential_sums_to_the_bit() {
        let v: Vec<f64> = (0..1001)
            .map(|i| ((i * 37 % 101) as f64 - 50.0) / 7.0)
            .collect();
        let cols: Vec<Vec<f64>> = (0..7)
            .map(|j| {
                (0..1001)
                    .map(|i| (((i + 13 * j) * 53 % 97) as f64).sqrt() * 1e-3)
                    .collect()
            })
            .collect();
        let mut cs: Vec<&[f64]> = cols.iter().map(|c| c.as_slice()).collect();
        // A product sum that is zero of either sign keeps the sign `sum` gives it.
        let (zero, neg) = (vec![0.0; 1001], vec![-0.0; 1001]);
        cs.extend([zero.as_slice(), neg.as_slice()]);
        let neg_v = vec![1.0; 1001];
        for v in [&v, &neg_v] {
            let got = dots(v, &cs);
            assert_eq!(got.len(), cs.len());
            for (g, c) in got.iter().zip(&cs) {
                let want: f64 = v.iter().zip(c.iter()).map(|(a, b)| a * b).sum();
                assert_eq!(g.to_bits(), want.to_bits());
            }
        }
    }

    #[test]
    fn sums_of_squares_in_one_pass_are_the_two_sums_to_the_bit() {
        let c: Vec<f64> = (0..999)
            .map(|i| (((i * 61 % 89) as f64) - 44.0).cbrt() * 1e-4)
            .collect();
        for k in [0, 1, 7, 998, 999] {
            let (all, tail) = sums_of_squares(&c, k);
            let want_all: f64 = c.iter().map(|v| v * v).sum();
            let want_tail: f64 = c[k..].iter().map(|v| v * v).sum();
            assert_eq!(
                (all.to_bits(), tail.to_bits()),
                (want_all.to_bits(), want_tail.to_bits())
            );
        }
    }

    #[test]
    fn buckets_take_the_last_close_and_skip_returns_across_gaps() {
        let mut b = Bars::default();
        // Buckets 0 (two bars), 1, 3 (bucket 2 missing).
        for (t, c) in [(0, 1.0), (4, 2.0), (5, 4.0), (15, 8.0), (19, 16.0)] {
            b.push(t * MIN, c, c, c, c, 1.0);
        }
        let r = returns(&b);
        assert_eq!(r.len(), 1, "{r:?}");
        assert_eq!(r[0].0, 1);
        assert!((r[0].1 - 2f64.ln()).abs() < 1e-15);
    }

    /// Against an OLS by the normal equations in a case where it is exact enough: an effect that
    /// depends on the cause's previous value, and a cause that does not depend on the effect.
    // Textbook elimination, indexed as written.
    #[allow(clippy::needless_range_loop)]
    #[test]
    fn f_against_normal_equations_and_direction() {
        let mut s = 12345u64;
        let mut noise = || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 11) as f64 / (1u64 << 53) as f64) - 0.5
        };
        let n = 400;
        let mut x = vec![0.0; n];
        let mut y = vec![0.0; n];
        for t in 1..n {
            x[t] = noise();
            y[t] = 0.5 * x[t - 1] + noise();
        }
        let xs: Vec<(i64, f64)> = x.iter().enumerate().map(|(t, v)| (t as i64, *v)).collect();
        let ys: Vec<(i64, f64)> = y.iter().enumerate().map(|(t, v)| (t as i64, *v)).collect();
        let fwd = granger(&xs, &ys, 2);
        let back = granger(&ys, &xs, 2);
        assert_eq!(fwd[0].nobs, n - 1);
        assert_eq!(fwd[1].df_den, (n - 2) as i64 - 5);
        assert!(fwd[0].p.unwrap() < 1e-10, "{fwd:?}");
        assert!(back[0].p.unwrap() > 1e-3, "{back:?}");
        // Lag 1 by the normal equations (3 and 2 regressors, solved by Cramer's rule).
        let rows: Vec<usize> = (1..n).collect();
        let ssr = |with_cause: bool| -> f64 {
            let k = if with_cause { 3 } else { 2 };
            let reg = |t: usize| -> Vec<f64> {
                let mut v = vec![1.0, y[t - 1]];
                if with_cause {
                    v.push(x[t - 1]);
                }
                v
            };
            let mut a = vec![vec![0.0; k + 1]; k];
            for &t in &rows {
                let r = reg(t);
                for i in 0..k {
                    for j in 0..k {
                        a[i][j] += r[i] * r[j];
                    }
                    a[i][k] += r[i] * y[t];
                }
            }
            // Gaussian elimination.
            for c in 0..k {
                for r in c + 1..k {
                    let m = a[r][c] / a[c][c];
                    for j in c..=k {
                        a[r][j] -= m * a[c][j];
                    }
                }
            }
            let mut beta = vec![0.0; k];
            for c in (0..k).rev() {
                let s: f64 = (c + 1..k).map(|j| a[c][j] * beta[j]).sum();
                beta[c] = (a[c][k] - s) / a[c][c];
            }
            rows.iter()
                .map(|&t| {
                    let e = y[t] - reg(t).iter().zip(&beta).map(|(a, b)| a * b).sum::<f64>();
                    e * e
                })
                .sum()
        };
        let (r, u) = (ssr(false), ssr(true));
        let f = (r - u) / u * (n - 1 - 3) as f64;
        assert!((fwd[0].f.unwrap() - f).abs() <= 1e-9 * f, "{fwd:?} {f}");
    }

    #[test]
    fn rows_never_reach_across_a_gap_and_constants_are_undefined() {
        // Two runs of 20 buckets: at lag 3, 17 rows in each.
        let a: Vec<(i64, f64)> = (0..20)
            .chain(100..120)
            .map(|t| (t, ((t * 7919) % 13) as f64 - 6.0))
            .collect();
        let b: Vec<(i64, f64)> = (0..20)
            .chain(100..120)
            .map(|t| (t, ((t * 104729) % 17) as f64 - 8.0))
            .collect();
        let t = granger(&a, &b, 3);
        assert_eq!(t[2].nobs, 34);
        assert!(t[2].f.is_some());
        let flat: Vec<(i64, f64)> = (0..50).map(|t| (t, 1.0)).collect();
        let u = granger(&flat, &b, 1);
        assert_eq!(u[0].f, None);
        assert_eq!(granger(&a[..3], &b[..3], 2)[1].f, None);
    }
}
