//! Stage `arbitrage`: every currency triangle the loaded pairs form, found from the pair names.
//!
//! Three currencies form a triangle when all three of their pairs are loaded, and every such
//! three give one triangle. The vehicle is the first of the three in a fixed order
//! ([`VEHICLE_ORDER`]: USD, EUR, JPY, GBP, …); the cross is the loaded pair of the other two, and
//! the triangle is named "<cross> via <vehicle>". So a triangle's name, its quoted leg and the
//! sign of its deviation depend on its three pairs only, whatever else is loaded; two triangles
//! that close on the same cross through different vehicles (GBPJPY via USD, GBPJPY via EUR) are
//! both computed. At each minute where all three legs have a bar, the
//! implied cross is the product of the two vehicle legs' rates (EURGBP via USD = EURUSD ·
//! 1/GBPUSD), and the deviation is quoted / implied − 1 in basis points. An event is a run of at
//! least `min_minutes` consecutive minutes (each one minute after the last) with |deviation| above
//! `threshold_bp`.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Result;
use chrono::DateTime;

use super::currency_index::currencies;
use crate::bars::Bars;
use crate::column::POSITIVE;
use crate::table::{Column, Def, Kind, Rows, Values};

pub const ARBITRAGE: Def = Def {
    name: "arbitrage",
    columns: &[
        Column::of("triangle", Kind::Text),
        Column::of("ts", Kind::Ts),
        Column::f64("implied").range(POSITIVE),
        Column::f64("quoted").range(POSITIVE),
        Column::f64("deviation_bp"),
    ],
    key: &["triangle", "ts"],
    month_column: "ts",
    pair_column: None,
    about: "Per triangle and minute where its three legs have a bar: the implied cross through the vehicle, the quoted cross and the deviation in basis points. One triangle for every three currencies whose pairs are loaded; the vehicle is the first of them in a fixed order (USD, EUR, JPY, GBP, CNY, AUD, CAD, CHF, HKD, SGD, SEK, KRW, NOK, NZD, then alphabetical), so a triangle's rows depend on its three pairs only.",
};

pub const ARBITRAGE_EVENTS: Def = Def {
    name: "arbitrage_events",
    columns: &[
        Column::of("triangle", Kind::Text),
        Column::of("start_ts", Kind::Ts),
        Column::of("end_ts", Kind::Ts),
        Column::of("minutes", Kind::Int),
        Column::f64("peak_bp"),
        Column::f64("mean_bp"),
    ],
    key: &["triangle", "start_ts"],
    month_column: "start_ts",
    pair_column: None,
    about: "Per triangle: runs of consecutive minutes whose deviation is beyond the threshold on one side, with their peak and mean. A triangle's events depend on its three pairs only.",
};

const MINUTE_US: i64 = 60_000_000;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Params {
    pub threshold_bp: f64,
    pub min_minutes: usize,
}

impl Default for Params {
    fn default() -> Params {
        Params {
            threshold_bp: 2.0,
            min_minutes: 3,
        }
    }
}

/// One leg used as a rate: the pair's index, and whether its close is inverted (1/close).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leg {
    pub pair: usize,
    pub invert: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Triangle {
    /// "EURGBP via USD".
    pub name: String,
    pub cross: usize,
    /// rate(cross base → vehicle) and rate(vehicle → cross quote).
    pub legs: [Leg; 2],
}

/// The order in which a triangle's currency is chosen as its vehicle: USD, then EUR, then the
/// others by their share of FX turnover (BIS Triennial Central Bank Survey, 2022); currencies not
/// listed come after these, alphabetically. Fixed, so that a triangle's vehicle, cross, name and
/// the sign of its deviation depend on its three currencies alone, never on what else is loaded.
pub const VEHICLE_ORDER: [&str; 14] = [
    "USD", "EUR", "JPY", "GBP", "CNY", "AUD", "CAD", "CHF", "HKD", "SGD", "SEK", "KRW", "NOK",
    "NZD",
];

/// The vehicle of three currencies: the first of them in [`VEHICLE_ORDER`], else the first
/// alphabetically.
pub fn vehicle(trio: [&str; 3]) -> &str {
    let rank = |c: &str| {
        VEHICLE_ORDER
            .iter()
            .position(|v| *v == c)
            .unwrap_or(usize::MAX)
    };
    trio.into_iter()
        .min_by(|x, y| rank(x).cmp(&rank(y)).then(x.cmp(y)))
        .unwrap_or(trio[0])
}

/// The triangles among `names` (pair names; others are ignored), sorted by name: one for every
/// three currencies whose three pairs are all loaded. Two triangles may close on the same cross
/// (GBPJPY via USD and GBPJPY via EUR): both are kept, their names differ by the vehicle.
pub fn triangles(names: &[&str]) -> Vec<Triangle> {
    let mut by_currencies: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    let mut all: BTreeSet<&str> = BTreeSet::new();
    for (k, name) in names.iter().enumerate() {
        if let Some((b, q)) = currencies(name) {
            by_currencies.insert((b, q), k);
            all.extend([b, q]);
        }
    }
    let find = |a: &str, b: &str| -> Option<Leg> {
        by_currencies
            .get(&(a, b))
            .map(|&pair| Leg {
                pair,
                invert: false,
            })
            .or_else(|| {
                by_currencies
                    .get(&(b, a))
                    .map(|&pair| Leg { pair, invert: true })
            })
    };
    let all: Vec<&str> = all.into_iter().collect();
    let mut out = vec![];
    for (i, a) in all.iter().enumerate() {
        for (j, b) in all.iter().enumerate().skip(i + 1) {
            for c in all.iter().skip(j + 1) {
                let vehicle = vehicle([*a, *b, *c]);
                let others: Vec<&str> =
                    [*a, *b, *c].into_iter().filter(|x| *x != vehicle).collect();
                let Some(cross) = find(others[0], others[1]).map(|l| l.pair) else {
                    continue;
                };
                let (base, quote) = currencies(names[cross]).unwrap_or_default();
                let (Some(to_vehicle), Some(from_vehicle)) =
                    (find(base, vehicle), find(vehicle, quote))
                else {
                    continue;
                };
                out.push(Triangle {
                    name: format!("{} via {vehicle}", names[cross]),
                    cross,
                    legs: [to_vehicle, from_vehicle],
                });
            }
        }
    }
    out.sort_by(|x, y| x.name.cmp(&y.name));
    out
}

fn rate(b: &Bars, i: usize, invert: bool) -> f64 {
    if invert {
        1.0 / b.close[i]
    } else {
        b.close[i]
    }
}

/// The minute table and the event table of a month. `pairs` sorted by pair name.
pub fn compute(pairs: &[(String, Bars)], p: Params) -> Result<(Rows, Rows)> {
    let names: Vec<&str> = pairs.iter().map(|(n, _)| n.as_str()).collect();
    let (mut tri, mut ts, mut implied, mut quoted, mut dev) =
        (vec![], vec![], vec![], vec![], vec![]);
    let mut ev: [Vec<_>; 2] = [vec![], vec![]];
    let (mut ev_tri, mut ev_min, mut ev_peak, mut ev_mean) = (vec![], vec![], vec![], vec![]);
    for t in triangles(&names) {
        let [a, b] = t.legs;
        let (x, y, z) = (&pairs[t.cross].1, &pairs[a.pair].1, &pairs[b.pair].1);
        let (mut i, mut j, mut k) = (0, 0, 0);
        // The current run of minutes beyond the threshold: (start, last, count, peak, sum).
        let mut run: Option<(i64, i64, usize, f64, f64)> = None;
        let mut close_run = |run: &mut Option<(i64, i64, usize, f64, f64)>| {
            if let Some((s, e, n, peak, sum)) = run.take() {
                if n >= p.min_minutes {
                    ev_tri.push(t.name.clone());
                    ev[0].push(DateTime::from_timestamp_micros(s).unwrap_or_default());
                    ev[1].push(DateTime::from_timestamp_micros(e).unwrap_or_default());
                    ev_min.push(n as i32);
                    ev_peak.push(Some(peak));
                    ev_mean.push(Some(sum / n as f64));
                }
            }
        };
        // A three-way merge on time: a row where all three legs have a bar.
        while i < x.len() && j < y.len() && k < z.len() {
            let m = x.ts[i].max(y.ts[j]).max(z.ts[k]);
            if x.ts[i] < m {
                i += 1;
                continue;
            }
            if y.ts[j] < m {
                j += 1;
                continue;
            }
            if z.ts[k] < m {
                k += 1;
                continue;
            }
            let imp = rate(y, j, a.invert) * rate(z, k, b.invert);
            let q = x.close[i];
            let d = (q / imp - 1.0) * 1e4;
            tri.push(t.name.clone());
            ts.push(DateTime::from_timestamp_micros(m).unwrap_or_default());
            implied.push(Some(imp));
            quoted.push(Some(q));
            dev.push(Some(d));
            let beyond = d.abs() > p.threshold_bp;
            match (&mut run, beyond) {
                (Some((_, last, n, peak, sum)), true)
                    if m - *last == MINUTE_US && (d > 0.0) == (*peak > 0.0) =>
                {
                    *last = m;
                    *n += 1;
                    if d.abs() > peak.abs() {
                        *peak = d;
                    }
                    *sum += d;
                }
                (_, true) => {
                    close_run(&mut run);
                    run = Some((m, m, 1, d, d));
                }
                (_, false) => close_run(&mut run),
            }
            (i, j, k) = (i + 1, j + 1, k + 1);
        }
        close_run(&mut run);
    }
    let [starts, ends] = ev;
    Ok((
        Rows::new(
            &ARBITRAGE,
            vec![
                Values::Text(tri),
                Values::Ts(ts),
                Values::F64(implied),
                Values::F64(quoted),
                Values::F64(dev),
            ],
        )?,
        Rows::new(
            &ARBITRAGE_EVENTS,
            vec![
                Values::Text(ev_tri),
                Values::Ts(starts),
                Values::Ts(ends),
                Values::Int(ev_min),
                Values::F64(ev_peak),
                Values::F64(ev_mean),
            ],
        )?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn triangles_come_from_the_names() {
        let names = [
            "AUDUSD", "EURGBP", "EURUSD", "GBPUSD", "USDCHF", "USDJPY", "EURJPY", "X",
        ];
        let t = triangles(&names);
        let got: Vec<&str> = t.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(got, ["EURGBP via USD", "EURJPY via USD"]);
        // EURGBP = EURUSD · 1/GBPUSD; EURJPY = EURUSD · USDJPY.
        assert_eq!(
            t[0].legs,
            [
                Leg {
                    pair: 2,
                    invert: false
                },
                Leg {
                    pair: 3,
                    invert: true
                }
            ]
        );
        assert_eq!(
            t[1].legs,
            [
                Leg {
                    pair: 2,
                    invert: false
                },
                Leg {
                    pair: 5,
                    invert: false
                }
            ]
        );
        assert!(triangles(&["EURUSD", "GBPUSD", "AUDUSD"]).is_empty());
    }

    #[test]
    fn two_triangles_on_one_cross_are_both_kept() {
        // {GBP, JPY, USD} and {EUR, GBP, JPY} both close on GBPJPY.
        let names = ["EURGBP", "EURJPY", "EURUSD", "GBPJPY", "GBPUSD", "USDJPY"];
        let got: Vec<String> = triangles(&names).into_iter().map(|t| t.name).collect();
        assert_eq!(
            got,
            [
                "EURGBP via USD",
                "EURJPY via USD",
                "GBPJPY via EUR",
                "GBPJPY via USD"
            ]
        );
        let via_eur = &triangles(&names)[2];
        // GBPJPY = 1/EURGBP · EURJPY.
        assert_eq!(
            via_eur.legs,
            [
                Leg {
                    pair: 0,
                    invert: true
                },
                Leg {
                    pair: 1,
                    invert: false
                }
            ]
        );
    }

    #[test]
    fn a_triangle_is_the_same_whatever_else_is_loaded() {
        let small = ["EURGBP", "EURUSD", "GBPUSD"];
        // EUR and GBP are in more loaded pairs than USD here: the vehicle stays USD.
        let large = [
            "AUDJPY", "EURAUD", "EURCHF", "EURGBP", "EURJPY", "EURUSD", "GBPCHF", "GBPJPY",
            "GBPUSD", "NZDCAD",
        ];
        // A triangle by names: (name, cross, [(leg pair, inverted); 2]).
        type Named = (String, String, [(String, bool); 2]);
        let of = |names: &[&str]| -> Vec<Named> {
            triangles(names)
                .into_iter()
                .map(|t| {
                    let leg = |l: Leg| (names[l.pair].to_string(), l.invert);
                    (
                        t.name,
                        names[t.cross].to_string(),
                        [leg(t.legs[0]), leg(t.legs[1])],
                    )
                })
                .collect()
        };
        let shared = of(&small);
        assert_eq!(shared.len(), 1);
        assert_eq!(shared[0].0, "EURGBP via USD");
        assert!(of(&large).contains(&shared[0]), "{:?}", of(&large));
        assert_eq!(vehicle(["NZD", "CAD", "XAU"]), "CAD");
        assert_eq!(vehicle(["XAG", "XAU", "XPT"]), "XAG");
    }

    #[test]
    fn deviations_and_events() {
        let mk = |closes: &[f64], skip: &[i64]| {
            let mut b = Bars::default();
            for (t, c) in closes.iter().enumerate() {
                if !skip.contains(&(t as i64)) {
                    b.push(t as i64 * MINUTE_US, *c, *c, *c, *c, 1.0);
                }
            }
            b
        };
        // EURGBP quoted 3 bp rich for minutes 1..=3 and 6..=7 (too short), GBPUSD absent at 5.
        let rich = 0.8 * 1.0003;
        let eurgbp = [0.8, rich, rich, rich, 0.8, rich, rich, rich, 0.8];
        let pairs = vec![
            ("EURGBP".to_string(), mk(&eurgbp, &[])),
            ("EURUSD".to_string(), mk(&[1.0; 9], &[])),
            ("GBPUSD".to_string(), mk(&[1.25; 9], &[5])),
        ];
        let (rows, events) = compute(&pairs, Params::default()).unwrap();
        assert_eq!(rows.len(), 8);
        let Some(Values::F64(d)) = rows.column("deviation_bp") else {
            panic!()
        };
        assert!((d[1].unwrap() - 3.0).abs() < 1e-9, "{d:?}");
        assert!(d[0].unwrap().abs() < 1e-9);
        assert_eq!(events.len(), 1);
        let Some(Values::Int(m)) = events.column("minutes") else {
            panic!()
        };
        assert_eq!(m, &[3]);
        let Some(Values::F64(mean)) = events.column("mean_bp") else {
            panic!()
        };
        assert!((mean[0].unwrap() - 3.0).abs() < 1e-9);
        // With a 2-minute minimum, the run after the gap (minutes 6, 7) counts too.
        let p = Params {
            threshold_bp: 2.0,
            min_minutes: 2,
        };
        assert_eq!(compute(&pairs, p).unwrap().1.len(), 2);
    }
}
