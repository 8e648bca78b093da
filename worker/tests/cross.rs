//! The cross-pair stages (currency-index, arbitrage) on the real bars of all six pairs, through
//! PostgreSQL, the queue, validation and export, every value against a numpy computation from the
//! CSV files (`reference/cross_reference.py`); and a cross-pair partition redone as a whole when
//! one of its inputs changes.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use ephemera_worker::run;

/// The reference's records by kind, each keyed by its first two fields (name, time).
fn reference() -> BTreeMap<char, BTreeMap<(String, i64), Vec<String>>> {
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cross_reference.txt");
    let python = common::root().join(".venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run `make setup`",
        python.display()
    );
    let status = Command::new(python)
        .arg(common::root().join("worker/tests/reference/cross_reference.py"))
        .arg(&out)
        .args(common::csv_files())
        .status()
        .unwrap();
    assert!(status.success());
    let mut by_kind: BTreeMap<char, BTreeMap<(String, i64), Vec<String>>> = BTreeMap::new();
    for line in std::fs::read_to_string(&out).unwrap().lines() {
        let f: Vec<&str> = line.split('|').collect();
        let key = (f[1].to_string(), f[2].parse().unwrap());
        let rest = f[3..].iter().map(|s| s.to_string()).collect();
        assert!(by_kind
            .entry(f[0].chars().next().unwrap())
            .or_default()
            .insert(key, rest)
            .is_none());
    }
    by_kind
}

/// The largest |ours − theirs| / (rel·|theirs| + abs) over a column: at most 1 passes.
#[derive(Default)]
struct Worst(f64, String);

impl Worst {
    fn see(&mut self, ours: f64, theirs: f64, rel: f64, abs: f64, at: &str) {
        let share = (ours - theirs).abs() / (rel * theirs.abs() + abs);
        assert!(share.is_finite(), "{at}: {ours} vs {theirs}");
        if share > self.0 {
            *self = Worst(share, format!("{at}: {ours} vs {theirs}"));
        }
    }
    fn check(&self, what: &str) {
        println!("{what:<28} worst {:.3} of tolerance ({})", self.0, self.1);
        assert!(self.0 <= 1.0, "{what} outside tolerance at {}", self.1);
    }
}

async fn rows(
    client: &tokio_postgres::Client,
    sql: &str,
) -> BTreeMap<(String, i64), tokio_postgres::Row> {
    client
        .query(sql, &[])
        .await
        .unwrap()
        .into_iter()
        .map(|r| {
            let ts: chrono::DateTime<chrono::Utc> = r.get(1);
            ((r.get::<_, String>(0), ts.timestamp_micros()), r)
        })
        .collect()
}

fn f(s: &str) -> f64 {
    s.parse().unwrap()
}

#[tokio::test]
async fn currency_indexes_and_triangles_match_numpy_on_all_pairs_and_a_changed_input_redoes_the_month(
) {
    let (url, client) = common::seeded("cross").await;
    common::read_run(&client, "cross").await;
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cross-export");
    let _ = std::fs::remove_dir_all(&out);
    let stages = ["currency-index", "arbitrage", "validate", "export"];
    let summary = run::run(common::options(&url, "cross", &stages, Some(&out)))
        .await
        .unwrap();
    // Two months over all pairs (April, May 2023) × four stages: not one per pair.
    assert_eq!(
        (summary.partitions_done, summary.partitions_failed),
        (8, 0),
        "{summary:?}"
    );
    let reference = reference();

    // Currency indexes: every (currency, minute) of the reference, and no other.
    let ours = rows(
        &client,
        "SELECT currency, ts, index, log_return, pairs, pairs_loaded FROM currency_index",
    )
    .await;
    let theirs = &reference[&'C'];
    assert_eq!(ours.len(), theirs.len());
    let (mut index, mut ret) = (Worst::default(), Worst::default());
    for (key, t) in theirs {
        let o = ours
            .get(key)
            .unwrap_or_else(|| panic!("no row for {key:?}"));
        let at = format!("{} {}", key.0, key.1);
        index.see(o.get(2), f(&t[0]), 1e-12, 0.0, &at);
        ret.see(o.get(3), f(&t[1]), 1e-12, 1e-18, &at);
        assert_eq!(
            (o.get::<_, i32>(4), o.get::<_, i32>(5)),
            (t[2].parse().unwrap(), t[3].parse().unwrap()),
            "{at}"
        );
    }
    index.check("currency index");
    ret.check("currency log return");
    // Six currencies; AUD, CHF and JPY are in one loaded pair each, and say so; USD in five.
    let loaded: BTreeMap<String, i32> = client
        .query(
            "SELECT currency, max(pairs_loaded) FROM currency_index GROUP BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let expected: BTreeMap<String, i32> = [
        ("AUD", 1),
        ("CHF", 1),
        ("EUR", 2),
        ("GBP", 2),
        ("JPY", 1),
        ("USD", 5),
    ]
    .iter()
    .map(|(c, n)| (c.to_string(), *n))
    .collect();
    assert_eq!(loaded, expected);
    // Minutes where some of USD's pairs were missing used those that exist.
    let partial: i64 = client
        .query_one(
            "SELECT count(*) FROM currency_index WHERE currency = 'USD' AND pairs BETWEEN 1 AND 4",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(partial > 0);

    // Triangles: the one these names form, every minute where its three legs have a bar.
    let ours = rows(
        &client,
        "SELECT triangle, ts, implied, quoted, deviation_bp FROM arbitrage",
    )
    .await;
    let theirs = &reference[&'A'];
    assert_eq!(ours.len(), theirs.len());
    assert_eq!(
        ours.len(),
        49_834,
        "data/fx-1m/README.md: the triangle shares 49,834 minutes"
    );
    let (mut implied, mut dev) = (Worst::default(), Worst::default());
    for (key, t) in theirs {
        let o = ours
            .get(key)
            .unwrap_or_else(|| panic!("no row for {key:?}"));
        let at = format!("{} {}", key.0, key.1);
        implied.see(o.get(2), f(&t[0]), 1e-14, 0.0, &at);
        assert_eq!(
            o.get::<_, f64>(3),
            f(&t[1]),
            "{at}: the quoted cross is the close"
        );
        // quoted/implied − 1 cancels: a deviation carries the ratio's rounding, 1e-16 of 1e4 bp.
        dev.see(o.get(4), f(&t[2]), 1e-9, 1e-10, &at);
    }
    implied.check("implied cross");
    dev.check("deviation (bp)");
    let ours = rows(
        &client,
        "SELECT triangle, start_ts, end_ts, minutes, peak_bp, mean_bp FROM arbitrage_events",
    )
    .await;
    let theirs = &reference[&'E'];
    assert!(theirs.len() > 100);
    assert_eq!(ours.len(), theirs.len());
    let (mut peak, mut mean) = (Worst::default(), Worst::default());
    for (key, t) in theirs {
        let o = ours
            .get(key)
            .unwrap_or_else(|| panic!("no event at {key:?}"));
        let at = format!("{} {}", key.0, key.1);
        let end: chrono::DateTime<chrono::Utc> = o.get(2);
        assert_eq!(end.timestamp_micros(), t[0].parse::<i64>().unwrap(), "{at}");
        assert_eq!(o.get::<_, i32>(3), t[1].parse::<i32>().unwrap(), "{at}");
        peak.see(o.get(4), f(&t[2]), 1e-9, 1e-10, &at);
        mean.see(o.get(5), f(&t[3]), 1e-9, 1e-10, &at);
    }
    peak.check("event peak (bp)");
    mean.check("event mean (bp)");

    // The data's defects went through: duplicates cleaned, the 48 h gap left a gap.
    let q = client
        .query_one(
            "SELECT sum((quality->>'duplicate_ts')::bigint)::bigint, max((quality->>'largest_gap_minutes')::bigint)
               FROM ephemera.partitions WHERE stage = 'currency-index'",
            &[],
        )
        .await
        .unwrap();
    assert!(q.get::<_, i64>(0) > 0 && q.get::<_, i64>(1) > 2800);

    // Validated (no problem in any column) and exported: one file per table and month.
    let v = summary.validation.clone().unwrap();
    assert_eq!((v.partitions, v.problems), (2, 0), "{v:?}");
    let manifest: ephemera_contract::Manifest =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    let keys: Vec<&str> = manifest.objects.iter().map(|o| o.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "arbitrage/month=2023-04/part.parquet",
            "arbitrage/month=2023-05/part.parquet",
            "arbitrage_events/month=2023-04/part.parquet",
            "arbitrage_events/month=2023-05/part.parquet",
            "currency_index/month=2023-04/part.parquet",
            "currency_index/month=2023-05/part.parquet",
        ]
    );
    assert_eq!(
        manifest.objects.iter().map(|o| o.rows).sum::<u64>(),
        summary.rows_out
    );

    // One bar of April changes: April's cross-pair partitions are redone as a whole (every
    // currency and triangle, validated and exported again); May's are not touched.
    let before: BTreeMap<(String, String), chrono::DateTime<chrono::Utc>> = client
        .query(
            "SELECT stage, month::text, updated_at FROM ephemera.partitions",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| ((r.get(0), r.get(1)), r.get(2)))
        .collect();
    client
        .execute(
            "UPDATE bars_1m SET close = close * 1.001, high = high * 1.001
              WHERE pair = 'GBPUSD' AND ts = '2023-04-20 10:00:00+00'",
            &[],
        )
        .await
        .unwrap();
    let again = run::run(common::options(&url, "cross", &stages, Some(&out)))
        .await
        .unwrap();
    assert_eq!((again.processed_here, again.partitions_done), (4, 8));
    for r in client
        .query(
            "SELECT stage, month::text, updated_at FROM ephemera.partitions",
            &[],
        )
        .await
        .unwrap()
    {
        let key: (String, String) = (r.get(0), r.get(1));
        let redone = r.get::<_, chrono::DateTime<chrono::Utc>>(2) != before[&key];
        assert_eq!(redone, key.1 == "2023-04-01", "{key:?}");
    }
    let d: f64 = client
        .query_one(
            "SELECT deviation_bp FROM arbitrage WHERE ts = '2023-04-20 10:00:00+00'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let was = f(&reference[&'A'][&("EURGBP via USD".to_string(), 1681984800000000)][2]);
    assert!(
        (d - was - 10.0).abs() < 0.1,
        "GBPUSD 10 bp richer: {was} → {d}"
    );
}

/// The reads ask for no order (sorting on the server was a third of its work) and put each
/// pair's bars in time order themselves: a source whose rows lie shuffled on disk reads exactly
/// as one loaded in time order, with nothing counted out of order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_do_not_depend_on_how_the_rows_lie_on_disk() {
    use ephemera_worker::month::Month;
    use ephemera_worker::partition::{read, read_month};

    let (_, client) = common::seeded("shuffled").await;
    client
        .batch_execute(
            "CREATE TABLE bars_shuffled AS SELECT * FROM bars_1m ORDER BY md5(pair || ts::text);
             CREATE INDEX bars_shuffled_pair_ts ON bars_shuffled (pair, ts);
             ANALYZE bars_shuffled;",
        )
        .await
        .unwrap();
    let april = chrono::NaiveDate::from_ymd_opt(2023, 4, 1).unwrap();
    // The shuffle is real: the server hands the month's rows out of time order.
    let ts: Vec<chrono::DateTime<chrono::Utc>> = client
        .query(
            "SELECT ts FROM bars_shuffled WHERE pair = 'EURUSD'
               AND ts >= '2023-04-01' AND ts < '2023-05-01'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(ts.len() > 1000 && !ts.is_sorted(), "{} rows", ts.len());

    let (ordered, shuffled) = (
        read_month(&client, "bars_1m", april).await.unwrap(),
        read_month(&client, "bars_shuffled", april).await.unwrap(),
    );
    assert_eq!(ordered.pairs.len(), 6);
    assert_eq!(shuffled.pairs, ordered.pairs);
    assert_eq!(shuffled.quality, ordered.quality);
    assert_eq!(shuffled.quality.out_of_order, 0);
    assert_eq!(shuffled.inputs, ordered.inputs);
    let month = Month::of(april);
    assert_eq!(
        read(&client, "bars_shuffled", "EURUSD", month)
            .await
            .unwrap(),
        read(&client, "bars_1m", "EURUSD", month).await.unwrap()
    );
}

/// The worker computes each bar's hash of a month's fingerprint itself (`inputs::row_hash`), and
/// the run compares it with the server's `hash_record_extended` over the source at enqueue: the
/// two must agree on every kind of value a bar can hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_workers_row_hash_is_the_servers_on_every_kind_of_value() {
    use chrono::{DateTime, Utc};
    use ephemera_worker::inputs::{row_hash, ROW_HASH};

    let url = ephemera_tests::postgres::postgres().database("row_hash");
    let client = ephemera_worker::db::connect(&url).await.unwrap();
    client
        .batch_execute(
            "CREATE TABLE bars (ts timestamptz NOT NULL, open float8, high float8, low float8,
                                close float8, volume float8)",
        )
        .await
        .unwrap();
    let special = [
        Some(0.0),
        Some(-0.0),
        Some(f64::NAN),
        Some(-f64::NAN),
        Some(f64::INFINITY),
        Some(f64::NEG_INFINITY),
        Some(f64::MIN_POSITIVE / 4.0),
        Some(f64::MAX),
        Some(-1.5),
        Some(1.08345),
        None,
    ];
    // Times before and after PostgreSQL's epoch (2000) and Unix's (1970), to the microsecond.
    let times = [
        -2_208_988_800_000_000i64,
        -1,
        0,
        946_684_799_999_999,
        946_684_800_000_000,
        946_684_800_000_001,
        1_680_307_200_000_000,
        4_102_444_800_123_456,
    ];
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut n = 0;
    for (i, &t) in times.iter().enumerate() {
        for (j, &v) in special.iter().enumerate() {
            // Each special value in each column, the others ordinary or random bits.
            for k in 0..5 {
                let mut values: [Option<f64>; 5] =
                    [1, 2, 3, 4, 5].map(|c| Some(f64::from_bits(next()) * f64::from(c)));
                values[k] = v;
                values[(k + 1) % 5] = special[(i + j) % special.len()];
                let ts = DateTime::<Utc>::from_timestamp_micros(t + n).unwrap();
                client
                    .execute(
                        "INSERT INTO bars VALUES ($1, $2, $3, $4, $5, $6)",
                        &[
                            &ts, &values[0], &values[1], &values[2], &values[3], &values[4],
                        ],
                    )
                    .await
                    .unwrap();
                n += 1;
            }
        }
    }
    let rows = client
        .query(
            &format!("SELECT ts, open, high, low, close, volume, {ROW_HASH} FROM bars"),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len() as i64, n);
    for r in &rows {
        let ts: DateTime<Utc> = r.get(0);
        let values: [Option<f64>; 5] = [1, 2, 3, 4, 5].map(|k| r.get(k));
        let theirs: i64 = r.get(6);
        assert_eq!(
            row_hash(ts.timestamp_micros(), values),
            theirs,
            "{ts} {values:?}"
        );
    }
}
