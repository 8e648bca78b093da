//! What identifies a cross-pair month's inputs: per pair, its rows, first and last timestamp
//! (epoch µs) and the sum of its rows' hashes, so any changed, added or removed bar changes it.
//! The server computes it over the whole source at enqueue ([`aggregate`], to find the months
//! whose inputs changed); a partition computes the same from the rows it reads ([`Prints`],
//! [`row_hash`]), so what it records is exactly what it computed from, at no second pass over the
//! month and at no cost to the server.

use std::collections::BTreeMap;

/// A bar's hash, by the types' own hash functions (those hash partitioning keeps on disk, so a
/// server upgrade does not change them; PostgreSQL 14 or later). Not over the bar as text:
/// printing five floats was most of the cost (2.76 s against 1.43 s for 5 M bars, one core).
pub const ROW_HASH: &str = "hash_record_extended((ts, open, high, low, close, volume), 0)";

/// [`ROW_HASH`] of one bar, computed here from its values as read: PostgreSQL's
/// `hash_record_extended` with seed 0 over (timestamptz, five float8), which combines the columns'
/// own extended hashes as h = 31·h + column's (a NULL column adds 0). Hashing on the server was
/// a quarter of a month's read there (0.95–1.04 s against 0.63–0.74 s for 927,360 bars), where
/// both cores wait; the tests hold every kind of value against the server's answer.
pub fn row_hash(ts_unix_micros: i64, values: [Option<f64>; 5]) -> i64 {
    let mut h = timestamptz_hash(ts_unix_micros);
    for v in values {
        h = h.wrapping_mul(31).wrapping_add(v.map_or(0, float8_hash));
    }
    h as i64
}

/// PostgreSQL's epoch (2000-01-01) in Unix microseconds: a timestamptz is counted from it.
const PG_EPOCH_UNIX_MICROS: i64 = 946_684_800_000_000;

/// `timestamptz_hash_extended` (that is `hashint8extended`), seed 0: the low half xored with the
/// high half (its complement below zero), then Jenkins' lookup3 of that 32-bit word.
fn timestamptz_hash(ts_unix_micros: i64) -> u64 {
    let v = ts_unix_micros - PG_EPOCH_UNIX_MICROS;
    let (lo, hi) = (v as u32, (v >> 32) as u32);
    let word = lo ^ if v >= 0 { hi } else { !hi };
    let init = 0x9e37_79b9u32.wrapping_add(4 + 3_923_095);
    lookup3_final(init.wrapping_add(word), init, init)
}

/// `hashfloat8extended`, seed 0: zero of either sign hashes to the seed, every NaN as one NaN,
/// any other value as its 8 bytes (little-endian words, as the server on x86 and ARM lays them).
fn float8_hash(x: f64) -> u64 {
    if x == 0.0 {
        return 0;
    }
    let bits = if x.is_nan() { f64::NAN } else { x }.to_bits();
    let init = 0x9e37_79b9u32.wrapping_add(8 + 3_923_095);
    lookup3_final(
        init.wrapping_add(bits as u32),
        init.wrapping_add((bits >> 32) as u32),
        init,
    )
}

/// lookup3's final mixing of (a, b, c); the 64-bit result is b then c.
fn lookup3_final(mut a: u32, mut b: u32, mut c: u32) -> u64 {
    // Each step: x ^= y; x -= y rotated left by r.
    let step = |x: &mut u32, y: u32, r: u32| *x = (*x ^ y).wrapping_sub(y.rotate_left(r));
    step(&mut c, b, 14);
    step(&mut a, c, 11);
    step(&mut b, a, 25);
    step(&mut c, b, 16);
    step(&mut a, c, 4);
    step(&mut b, a, 14);
    step(&mut c, b, 24);
    (u64::from(b) << 32) | u64::from(c)
}

/// One pair's fingerprint as a JSON array, aggregated over a group of its bars. The sum is
/// text: it outgrows 64 bits, and a JSON number that large would be read back as a float.
pub fn aggregate() -> String {
    format!(
        "jsonb_build_array(count(*),
             (extract(epoch FROM min(ts)) * 1000000)::bigint,
             (extract(epoch FROM max(ts)) * 1000000)::bigint,
             sum({ROW_HASH})::text)"
    )
}

/// One pair's fingerprint, accumulated bar by bar.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Print {
    rows: i64,
    first: i64,
    last: i64,
    sum: i128,
}

/// Every pair's fingerprint of a month, from the rows as read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Prints(BTreeMap<String, Print>);

impl Prints {
    /// Adds one row as read (before any cleaning): its pair, timestamp and [`ROW_HASH`].
    pub fn add(&mut self, pair: &str, ts_micros: i64, hash: i64) {
        if !self.0.contains_key(pair) {
            self.0.insert(
                pair.to_string(),
                Print {
                    first: ts_micros,
                    last: ts_micros,
                    ..Print::default()
                },
            );
        }
        if let Some(p) = self.0.get_mut(pair) {
            p.rows += 1;
            p.first = p.first.min(ts_micros);
            p.last = p.last.max(ts_micros);
            p.sum += i128::from(hash);
        }
    }

    /// As [`aggregate`] over the same rows, one key per pair (`jsonb_object_agg`).
    pub fn json(&self) -> serde_json::Value {
        self.0
            .iter()
            .map(|(pair, p)| {
                (
                    pair.clone(),
                    serde_json::json!([p.rows, p.first, p.last, p.sum.to_string()]),
                )
            })
            .collect::<serde_json::Map<_, _>>()
            .into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_print_counts_spans_and_sums_beyond_64_bits() {
        let mut p = Prints::default();
        p.add("EURUSD", 120, i64::MAX);
        p.add("AUDUSD", 60, -5);
        p.add("EURUSD", 60, i64::MAX);
        p.add("EURUSD", 180, 2);
        let sum = (2 * i128::from(i64::MAX) + 2).to_string();
        assert_eq!(
            p.json(),
            serde_json::json!({"AUDUSD": [1, 60, 60, "-5"], "EURUSD": [3, 60, 180, sum]})
        );
        // Any changed hash changes the print.
        let mut q = p.clone();
        q.add("AUDUSD", 60, 0);
        assert_ne!(p.json(), q.json());
        assert_eq!(Prints::default().json(), serde_json::json!({}));
    }
}
