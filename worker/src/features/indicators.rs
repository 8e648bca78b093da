//! Stage `indicators`: TA-Lib's definitions and warm-up lengths, via the pure-Rust `ta-lib` crate.

use ta_lib::{Core, MAType, OutRange, RetCode};

use crate::bars::Bars;
use crate::column::{Column, Columns, NON_NEGATIVE, PERCENT};
use crate::table::{keyed, Def};

/// The stage's table: (pair, ts) and the columns below, one row per bar of the month.
pub const INDICATORS: Def = Def {
    name: "indicators",
    columns: &COLUMNS_KEYED,
    key: &["pair", "ts"],
    month_column: "ts",
    pair_column: Some("pair"),
    about: "Per pair and bar: TA-Lib's momentum, trend, volatility and volume indicators (RSI, MACD, ADX and DI, stochastic, CCI, Williams %R, ROC, MFI, Bollinger bands, ATR), warmed up on the bars before the month. Depends on the pair's own bars only.",
};

const COLUMNS_KEYED: [Column; 19] = keyed(COLUMNS);

/// The output columns, in the order `compute` returns them. Each warm-up is TA-Lib's lookback
/// for the column's definition (the tests count each by hand and ask TA-Lib).
pub const COLUMNS: [Column; 17] = [
    Column::f64("rsi_14").warm_up(14).range(PERCENT),
    Column::f64("macd").warm_up(33),
    Column::f64("macd_signal").warm_up(33),
    Column::f64("macd_hist").warm_up(33),
    Column::f64("adx_14").warm_up(27).range(PERCENT),
    Column::f64("plus_di_14").warm_up(14).range(PERCENT),
    Column::f64("minus_di_14").warm_up(14).range(PERCENT),
    Column::f64("stoch_k").warm_up(17).range(PERCENT),
    Column::f64("stoch_d").warm_up(17).range(PERCENT),
    Column::f64("cci_14").warm_up(13),
    Column::f64("willr_14").warm_up(13).range((-100.0, 0.0)),
    Column::f64("roc_10").warm_up(10),
    Column::f64("mfi_14").warm_up(14).range(PERCENT),
    Column::f64("bb_upper").warm_up(19),
    Column::f64("bb_middle").warm_up(19),
    Column::f64("bb_lower").warm_up(19),
    Column::f64("atr_14").warm_up(14).range(NON_NEGATIVE),
];

/// Runs one TA-Lib call whose lookback is `lb` straight into `K` columns of n bars: TA-Lib
/// writes its packed output at `lb..`, the warm-up stays NaN, nothing is copied. Should a call
/// start elsewhere than its lookback, its output is moved to where it belongs.
pub(crate) fn run<const K: usize>(
    n: usize,
    lb: usize,
    f: impl FnOnce(&mut [&mut [f64]; K]) -> Result<OutRange, RetCode>,
) -> Result<[Vec<f64>; K], RetCode> {
    let mut out: [Vec<f64>; K] = std::array::from_fn(|_| vec![f64::NAN; n]);
    if n <= lb {
        return Ok(out);
    }
    let r = {
        let mut slices = out.each_mut().map(|v| &mut v[lb..]);
        f(&mut slices)?
    };
    if r.beg_idx != lb || r.count != n - lb {
        for col in out.iter_mut() {
            let count = r.count.min(n - lb).min(n.saturating_sub(r.beg_idx));
            col.copy_within(lb..lb + count, r.beg_idx.min(n));
            let (start, end) = (r.beg_idx.min(n), (r.beg_idx + count).min(n));
            col[..start].fill(f64::NAN);
            col[end..].fill(f64::NAN);
        }
    }
    Ok(out)
}

pub fn compute(core: &Core, b: &Bars) -> Result<Columns, RetCode> {
    let n = b.len();
    let names = COLUMNS.iter().map(|c| c.name.to_string()).collect();
    if n == 0 {
        return Ok(Columns {
            names,
            values: vec![vec![]; COLUMNS.len()],
        });
    }
    let e = n - 1;
    let (h, l, c, v) = (&b.high[..], &b.low[..], &b.close[..], &b.volume[..]);
    // Lookbacks by column (see COLUMNS).
    let w = COLUMNS.map(|c| c.warm_up);
    let [rsi] = run(n, w[0], |[o]| core.rsi(0, e, c, 14, o))?;
    let [macd, signal, hist] = run(n, w[1], |[a, s, hh]| {
        core.macd(0, e, c, 12, 26, 9, a, s, hh)
    })?;
    let [adx] = run(n, w[4], |[o]| core.adx(0, e, h, l, c, 14, o))?;
    let [pdi] = run(n, w[5], |[o]| core.plus_di(0, e, h, l, c, 14, o))?;
    let [mdi] = run(n, w[6], |[o]| core.minus_di(0, e, h, l, c, 14, o))?;
    let [k, d] = run(n, w[7], |[k, d]| {
        core.stoch(0, e, h, l, c, 14, 3, MAType::SMA, 3, MAType::SMA, k, d)
    })?;
    let [cci] = run(n, w[9], |[o]| core.cci(0, e, h, l, c, 14, o))?;
    let [willr] = run(n, w[10], |[o]| core.willr(0, e, h, l, c, 14, o))?;
    let [roc] = run(n, w[11], |[o]| core.roc(0, e, c, 10, o))?;
    let [mfi] = run(n, w[12], |[o]| core.mfi(0, e, h, l, c, v, 14, o))?;
    let [up, mid, low] = run(n, w[13], |[u, m, lo]| {
        core.bbands(0, e, c, 20, 2.0, 2.0, MAType::SMA, u, m, lo)
    })?;
    let [atr] = run(n, w[16], |[o]| core.atr(0, e, h, l, c, 14, o))?;
    Ok(Columns {
        names,
        values: vec![
            rsi, macd, signal, hist, adx, pdi, mdi, k, d, cci, willr, roc, mfi, up, mid, low, atr,
        ],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(n: usize) -> Bars {
        let mut b = Bars::default();
        for i in 0..n {
            let x = i as f64;
            let c = 1.1 + 0.01 * (x / 7.0).sin() + 0.0001 * x;
            b.push(
                i as i64 * 60_000_000,
                c,
                c + 0.002,
                c - 0.002,
                c + 0.0005,
                10.0 + (x % 5.0),
            );
        }
        b
    }

    /// TA-Lib's lookback (bars without a value at the start of a series) of each column.
    fn talib_lookbacks(core: &Core) -> Vec<usize> {
        let macd = core.macd_lookback(12, 26, 9).unwrap_or(0);
        let stoch = core
            .stoch_lookback(14, 3, MAType::SMA, 3, MAType::SMA)
            .unwrap_or(0);
        let bb = core.bbands_lookback(20, 2.0, 2.0, MAType::SMA).unwrap_or(0);
        vec![
            core.rsi_lookback(14).unwrap_or(0),
            macd,
            macd,
            macd,
            core.adx_lookback(14).unwrap_or(0),
            core.plus_di_lookback(14).unwrap_or(0),
            core.minus_di_lookback(14).unwrap_or(0),
            stoch,
            stoch,
            core.cci_lookback(14).unwrap_or(0),
            core.willr_lookback(14).unwrap_or(0),
            core.roc_lookback(10).unwrap_or(0),
            core.mfi_lookback(14).unwrap_or(0),
            bb,
            bb,
            bb,
            core.atr_lookback(14).unwrap_or(0),
        ]
    }

    fn leading_none(col: &[f64]) -> usize {
        col.iter().take_while(|v| v.is_nan()).count()
    }

    #[test]
    fn warm_up_is_talibs_lookback() {
        let core = Core::new();
        let b = series(300);
        let cols = compute(&core, &b).unwrap();
        // Each definition's lookback counted by hand, not asked of TA-Lib: RSI and MFI need
        // n changes; MACD the slow EMA's 25 plus the signal's 8; ADX 2n − 1; Stochastic
        // (14 − 1) + (3 − 1) + (3 − 1); CCI and %R n − 1 bars before the first window; ROC n;
        // the Bollinger SMA 19; ATR n; ±DI n.
        let expect = [
            ("rsi_14", 14),
            ("macd", 33),
            ("macd_signal", 33),
            ("macd_hist", 33),
            ("adx_14", 27),
            ("plus_di_14", 14),
            ("minus_di_14", 14),
            ("stoch_k", 17),
            ("stoch_d", 17),
            ("cci_14", 13),
            ("willr_14", 13),
            ("roc_10", 10),
            ("mfi_14", 14),
            ("bb_upper", 19),
            ("bb_middle", 19),
            ("bb_lower", 19),
            ("atr_14", 14),
        ];
        assert_eq!(expect.map(|(name, _)| name), COLUMNS.map(|c| c.name));
        // What validate excuses as warm-up, and where the values really start.
        let talib = talib_lookbacks(&core);
        for (i, (name, lookback)) in expect.into_iter().enumerate() {
            assert_eq!(COLUMNS[i].warm_up, lookback, "{name}");
            assert_eq!(talib[i], lookback, "{name}");
            assert_eq!(leading_none(&cols.values[i]), lookback, "{name}");
            assert!(
                cols.values[i][lookback..].iter().all(|v| v.is_finite()),
                "{name}"
            );
        }
        // RSI(14) and the Bollinger middle band by hand at the last bar.
        let i_mid = COLUMNS.iter().position(|c| c.name == "bb_middle").unwrap();
        let sma20: f64 = b.close[280..300].iter().sum::<f64>() / 20.0;
        assert!((cols.values[i_mid][299] - sma20).abs() < 1e-12);
        let rsi = &cols.values[0];
        assert!(rsi
            .iter()
            .filter(|r| !r.is_nan())
            .all(|r| (0.0..=100.0).contains(r)));
    }

    #[test]
    fn rising_prices_give_rsi_100_and_short_series_all_null() {
        let core = Core::new();
        let mut b = Bars::default();
        for i in 0..40 {
            let c = 1.0 + i as f64 * 0.01;
            b.push(i, c, c, c, c, 1.0);
        }
        let cols = compute(&core, &b).unwrap();
        assert_eq!(cols.values[0][39], 100.0);
        let short = series(10);
        let cols = compute(&core, &short).unwrap();
        assert!(cols
            .values
            .iter()
            .all(|c| c.len() == 10 && c.iter().all(|v| v.is_nan())));
    }
}
