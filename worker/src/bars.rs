//! A partition's bars in columns, and the stated policy for bad input.

use serde::{Deserialize, Serialize};

/// Bars of one pair in time order, one column per field; `ts` in Unix microseconds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Bars {
    pub ts: Vec<i64>,
    pub open: Vec<f64>,
    pub high: Vec<f64>,
    pub low: Vec<f64>,
    pub close: Vec<f64>,
    pub volume: Vec<f64>,
}

impl Bars {
    pub fn len(&self) -> usize {
        self.ts.len()
    }
    pub fn is_empty(&self) -> bool {
        self.ts.is_empty()
    }
    pub fn push(&mut self, ts: i64, o: f64, h: f64, l: f64, c: f64, v: f64) {
        self.ts.push(ts);
        self.open.push(o);
        self.high.push(h);
        self.low.push(l);
        self.close.push(c);
        self.volume.push(v);
    }
    /// Appends `later`'s bars (a month after its history).
    pub fn extend(&mut self, later: &Bars) {
        self.ts.extend(&later.ts);
        self.open.extend(&later.open);
        self.high.extend(&later.high);
        self.low.extend(&later.low);
        self.close.extend(&later.close);
        self.volume.extend(&later.volume);
    }
    /// The bars sorted by time, stably (bars with one timestamp keep their order).
    pub fn in_time_order(self) -> Bars {
        if self.ts.is_sorted() {
            return self;
        }
        let mut idx: Vec<usize> = (0..self.len()).collect();
        idx.sort_by_key(|&i| self.ts[i]);
        let take = |c: &[f64]| idx.iter().map(|&i| c[i]).collect();
        Bars {
            ts: idx.iter().map(|&i| self.ts[i]).collect(),
            open: take(&self.open),
            high: take(&self.high),
            low: take(&self.low),
            close: take(&self.close),
            volume: take(&self.volume),
        }
    }
    /// The bars from index `k` on.
    pub fn from(&self, k: usize) -> Bars {
        let k = k.min(self.len());
        Bars {
            ts: self.ts[k..].to_vec(),
            open: self.open[k..].to_vec(),
            high: self.high[k..].to_vec(),
            low: self.low[k..].to_vec(),
            close: self.close[k..].to_vec(),
            volume: self.volume[k..].to_vec(),
        }
    }
}

/// What the cleaning found. The policy:
/// - a price that is NaN, infinite, zero or negative: the bar is dropped;
/// - high below low (or open/close outside them): the bar is dropped;
/// - a volume that is NaN, infinite or negative: set to 0, the bar kept;
/// - bars out of time order: sorted; two bars with one timestamp: the later row wins;
/// - gaps (weekends, outages): counted, never filled — indicators run over the bars that exist.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quality {
    pub rows_in: u64,
    pub bad_price: u64,
    pub high_below_low: u64,
    pub bad_volume: u64,
    pub out_of_order: u64,
    pub duplicate_ts: u64,
    pub gaps: u64,
    pub largest_gap_minutes: i64,
    pub rows_kept: u64,
}

const MINUTE_US: i64 = 60_000_000;

fn price_ok(x: f64) -> bool {
    x.is_finite() && x > 0.0
}

/// Applies the policy; returns the clean bars and what was done.
pub fn clean(raw: &Bars) -> (Bars, Quality) {
    let mut q = Quality {
        rows_in: raw.len() as u64,
        ..Quality::default()
    };
    let mut idx: Vec<usize> = Vec::with_capacity(raw.len());
    for i in 0..raw.len() {
        if i > 0 && raw.ts[i] < raw.ts[i - 1] {
            q.out_of_order += 1;
        }
        let (o, h, l, c) = (raw.open[i], raw.high[i], raw.low[i], raw.close[i]);
        if !(price_ok(o) && price_ok(h) && price_ok(l) && price_ok(c)) {
            q.bad_price += 1;
            continue;
        }
        if h < l || o > h || o < l || c > h || c < l {
            q.high_below_low += 1;
            continue;
        }
        idx.push(i);
    }
    // Stable sort keeps row order among equal timestamps, so "the later row wins" below.
    idx.sort_by_key(|&i| raw.ts[i]);
    let mut out = Bars::default();
    for (k, &i) in idx.iter().enumerate() {
        if idx.get(k + 1).is_some_and(|&j| raw.ts[j] == raw.ts[i]) {
            q.duplicate_ts += 1;
            continue;
        }
        let mut v = raw.volume[i];
        if !v.is_finite() || v < 0.0 {
            q.bad_volume += 1;
            v = 0.0;
        }
        if let Some(&prev) = out.ts.last() {
            let step = raw.ts[i] - prev;
            if step > MINUTE_US {
                q.gaps += 1;
                q.largest_gap_minutes = q.largest_gap_minutes.max(step / MINUTE_US);
            }
        }
        out.push(
            raw.ts[i],
            raw.open[i],
            raw.high[i],
            raw.low[i],
            raw.close[i],
            v,
        );
    }
    q.rows_kept = out.len() as u64;
    (out, q)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_in_time_order_keep_the_order_of_rows_with_one_timestamp() {
        let mut b = Bars::default();
        for (t, c) in [(3, 1.0), (1, 2.0), (3, 3.0), (2, 4.0), (1, 5.0)] {
            b.push(t, c, c, c, c, c * 10.0);
        }
        let sorted = b.in_time_order();
        assert_eq!(sorted.ts, vec![1, 1, 2, 3, 3]);
        assert_eq!(sorted.close, vec![2.0, 5.0, 4.0, 1.0, 3.0]);
        assert_eq!(sorted.open, sorted.close);
        assert_eq!(sorted.volume, vec![20.0, 50.0, 40.0, 10.0, 30.0]);
        assert_eq!(sorted.clone().in_time_order(), sorted);
    }

    #[test]
    fn the_policy() {
        let m = MINUTE_US;
        let mut raw = Bars::default();
        raw.push(0, 1.0, 1.1, 0.9, 1.0, 5.0);
        raw.push(2 * m, 1.0, 1.1, 0.9, 1.05, f64::NAN); // volume fixed
        raw.push(m, 1.0, 1.1, 0.9, 1.02, 1.0); // out of order
        raw.push(m, 1.0, 1.1, 0.9, 1.03, 1.0); // duplicate: this one wins
        raw.push(3 * m, f64::NAN, 1.1, 0.9, 1.0, 1.0);
        raw.push(4 * m, 1.0, 1.1, 0.9, 0.0, 1.0);
        raw.push(5 * m, 1.0, 0.8, 0.9, 0.85, 1.0); // high < low
        raw.push(6 * m, 1.0, f64::INFINITY, 0.9, 1.0, 1.0);
        raw.push(7 * m, -1.0, 1.1, 0.9, 1.0, 1.0);
        raw.push(8 * m, 1.0, 1.1, 0.9, f64::NEG_INFINITY, 1.0);
        raw.push(65 * m, 1.0, 1.1, 0.9, 1.0, -3.0); // gap of 63 minutes, volume fixed
        let (bars, q) = clean(&raw);
        assert_eq!(bars.ts, vec![0, m, 2 * m, 65 * m]);
        assert_eq!(bars.close, vec![1.0, 1.03, 1.05, 1.0]);
        assert_eq!(bars.volume, vec![5.0, 1.0, 0.0, 0.0]);
        assert_eq!(
            q,
            Quality {
                rows_in: 11,
                bad_price: 5,
                high_below_low: 1,
                bad_volume: 2,
                out_of_order: 1,
                duplicate_ts: 1,
                gaps: 1,
                largest_gap_minutes: 63,
                rows_kept: 4,
            }
        );
        let (empty, q) = clean(&Bars::default());
        assert!(empty.is_empty());
        assert_eq!(q.rows_kept, 0);
    }
}
