//! Stage `indicators`: TA-Lib's definitions and warm-up lengths, via the pure-Rust `ta-lib` crate.

use ta_lib::{Core, MAType, OutRange, RetCode};

use super::Columns;
use crate::bars::Bars;

pub const COLUMNS: [&str; 17] = [
    "rsi_14",
    "macd",
    "macd_signal",
    "macd_hist",
    "adx_14",
    "plus_di_14",
    "minus_di_14",
    "stoch_k",
    "stoch_d",
    "cci_14",
    "willr_14",
    "roc_10",
    "mfi_14",
    "bb_upper",
    "bb_middle",
    "bb_lower",
    "atr_14",
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
    let names = COLUMNS.iter().map(|s| s.to_string()).collect();
    if n == 0 {
        return Ok(Columns {
            names,
            values: vec![vec![]; COLUMNS.len()],
        });
    }
    let e = n - 1;
    let (h, l, c, v) = (&b.high[..], &b.low[..], &b.close[..], &b.volume[..]);
    // Lookbacks by column (see COLUMNS).
    let w = warm_up(core);
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

/// TA-Lib's lookback (bars without a value at the start of a series) of each column.
pub fn warm_up(core: &Core) -> Vec<usize> {
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
        assert_eq!(expect.map(|(name, _)| name), COLUMNS);
        // What validate excuses as warm-up, and where the values really start.
        let warm = warm_up(&core);
        for (i, (name, lookback)) in expect.into_iter().enumerate() {
            assert_eq!(warm[i], lookback, "{name}");
            assert_eq!(leading_none(&cols.values[i]), lookback, "{name}");
            assert!(
                cols.values[i][lookback..].iter().all(|v| v.is_finite()),
                "{name}"
            );
        }
        // RSI(14) and the Bollinger middle band by hand at the last bar.
        let i_mid = COLUMNS.iter().position(|c| *c == "bb_middle").unwrap();
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
