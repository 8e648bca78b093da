//! Stage `currency-index`: per currency of the loaded pairs, a minute index from the log returns
//! of every pair that contains it.
//!
//! A pair's return at a minute is ln(close / its previous close in the month), signed + when the
//! currency is the pair's base (EUR in EURUSD) and − when it is the quote. The currency's return
//! at a minute is the equal-weighted mean over the pairs that have a return then (a pair in a gap
//! drops out; its first bar after the gap carries the whole move across it). The index is
//! 100 · exp(Σ returns so far): 100 at the currency's first minute of the month.

use std::collections::BTreeMap;

use anyhow::Result;
use chrono::DateTime;

use crate::bars::Bars;
use crate::column::POSITIVE;
use crate::table::{Column, Def, Kind, Rows, Values};

pub const CURRENCY_INDEX: Def = Def {
    name: "currency_index",
    columns: &[
        Column::of("currency", Kind::Text),
        Column::of("ts", Kind::Ts),
        Column::f64("index").range(POSITIVE),
        Column::f64("log_return"),
        Column::of("pairs", Kind::Int),
        Column::of("pairs_loaded", Kind::Int),
    ],
    key: &["currency", "ts"],
    month_column: "ts",
    pair_column: None,
    about: "Per currency and minute: the equal-weighted mean log return of the loaded pairs that contain the currency and its index from 100. Over the pairs loaded: adding or removing a pair of the currency changes its index (pairs_loaded says how many); a currency whose pairs are unchanged gets the same rows whatever else is loaded.",
};

/// Base and quote of a pair named as six letters (EURUSD → EUR, USD); None for other names.
pub fn currencies(pair: &str) -> Option<(&str, &str)> {
    (pair.len() == 6 && pair.bytes().all(|b| b.is_ascii_alphabetic()))
        .then(|| (&pair[..3], &pair[3..]))
}

/// `pairs`: every loaded pair's clean bars of the month, sorted by pair name.
pub fn compute(pairs: &[(String, Bars)]) -> Result<Rows> {
    // Currency → its pairs (index into `pairs`, sign), in pair-name order.
    let mut members: BTreeMap<&str, Vec<(usize, f64)>> = BTreeMap::new();
    for (k, (pair, bars)) in pairs.iter().enumerate() {
        let Some((base, quote)) = currencies(pair) else {
            continue;
        };
        if bars.is_empty() {
            continue;
        }
        members.entry(base).or_default().push((k, 1.0));
        members.entry(quote).or_default().push((k, -1.0));
    }
    let (mut cur, mut ts, mut index, mut ret, mut count, mut loaded) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    for (currency, legs) in &members {
        let mut minutes: Vec<i64> = legs
            .iter()
            .flat_map(|(k, _)| pairs[*k].1.ts.iter().copied())
            .collect();
        minutes.sort_unstable();
        minutes.dedup();
        // One cursor per leg: bars are in time order, so each pair is walked once.
        let mut at = vec![0usize; legs.len()];
        let mut cum = 0.0f64;
        for &t in &minutes {
            let (mut sum, mut n) = (0.0f64, 0i32);
            for (l, (k, sign)) in legs.iter().enumerate() {
                let b = &pairs[*k].1;
                let i = at[l];
                if i < b.len() && b.ts[i] == t {
                    if i > 0 {
                        sum += sign * (b.close[i] / b.close[i - 1]).ln();
                        n += 1;
                    }
                    at[l] += 1;
                }
            }
            let r = if n > 0 { sum / n as f64 } else { 0.0 };
            cum += r;
            cur.push(currency.to_string());
            ts.push(DateTime::from_timestamp_micros(t).unwrap_or_default());
            index.push(Some(100.0 * cum.exp()));
            ret.push(Some(r));
            count.push(n);
            loaded.push(legs.len() as i32);
        }
    }
    Rows::new(
        &CURRENCY_INDEX,
        vec![
            Values::Text(cur),
            Values::Ts(ts),
            Values::F64(index),
            Values::F64(ret),
            Values::Int(count),
            Values::Int(loaded),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bars(ts: &[i64], close: &[f64]) -> Bars {
        let mut b = Bars::default();
        for (t, c) in ts.iter().zip(close) {
            b.push(t * 60_000_000, *c, *c, *c, *c, 1.0);
        }
        b
    }

    #[test]
    fn signs_equal_weights_gaps_and_single_pairs() {
        let pairs = vec![
            (
                "EURUSD".to_string(),
                bars(&[0, 1, 2, 3], &[1.0, 1.1, 1.1, 1.21]),
            ),
            (
                "USDJPY".to_string(),
                bars(&[0, 1, 3], &[100.0, 110.0, 121.0]),
            ),
        ];
        let r = compute(&pairs).unwrap();
        let Values::Text(cur) = &r.columns[0] else {
            panic!()
        };
        assert_eq!(cur.iter().filter(|c| *c == "EUR").count(), 4);
        let Values::F64(ix) = &r.columns[2] else {
            panic!()
        };
        let Values::Int(n) = &r.columns[4] else {
            panic!()
        };
        let Values::Int(loaded) = &r.columns[5] else {
            panic!()
        };
        // EUR (base of EURUSD only): 100, 110, 110, 121; one pair, and it says so.
        let eur: Vec<f64> = (0..4).map(|i| ix[i].unwrap()).collect();
        for (a, b) in eur.iter().zip([100.0, 110.0, 110.0, 121.0]) {
            assert!((a - b).abs() < 1e-9, "{eur:?}");
        }
        assert_eq!((&n[..4], loaded[0]), (&[0, 1, 1, 1][..], 1));
        // USD is the quote of EURUSD (−) and the base of USDJPY (+): at minute 1 the mean of
        // −ln 1.1 and +ln 1.1 is 0; at minute 2 USDJPY is in a gap, EURUSD alone (0); at minute 3
        // USDJPY's return spans its gap.
        let usd: Vec<(f64, i32)> = (7..11).map(|i| (ix[i].unwrap(), n[i])).collect();
        assert!((usd[1].0 - 100.0).abs() < 1e-9 && usd[1].1 == 2, "{usd:?}");
        assert_eq!(usd[2].1, 1);
        assert!((usd[3].0 - 100.0).abs() < 1e-9 && usd[3].1 == 2, "{usd:?}");
        // JPY: the quote of USDJPY, three minutes only.
        assert_eq!(cur.iter().filter(|c| *c == "JPY").count(), 3);
        assert!((ix[6].unwrap() - 100.0 / 1.21).abs() < 1e-9);
    }
}
