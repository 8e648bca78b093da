//! What a set of pairs produces. The repository's six pairs are run through the cross-pair stages
//! (currency-index, arbitrage, causality), then the same six plus two crosses made from them
//! (EURJPY and GBPJPY, which close two triangles on one cross: GBPJPY via USD and via EUR). Every
//! triangle the loaded pairs close is written, with its minutes and events; a triangle's rows,
//! a causality test's rows and the index of a currency whose pairs did not change are identical
//! whatever else is loaded; the arbitrage of the eight pairs matches the numpy reference.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use ephemera_worker::{run, seed};

const STAGES: [&str; 3] = ["currency-index", "arbitrage", "causality"];

/// `name`.csv in `dir`: the cross of `a` (XXXUSD) and `b` (USDYYY) at every minute both have a
/// bar (the later of equal timestamps, as the worker's cleaning keeps), priced in three decimals
/// as a JPY cross is quoted. From 10:00 to 10:09 UTC every day its prices are `bump_bp` richer, so
/// that its triangles have events on both sides of the threshold.
fn cross_file(dir: &Path, name: &str, a: &str, b: &str, bump_bp: f64) -> PathBuf {
    let read = |pair: &str| {
        let (_, bars, _) =
            seed::read_csv(&common::root().join(format!("data/fx-1m/{pair}.csv.gz"))).unwrap();
        let mut by_ts = BTreeMap::new();
        for i in 0..bars.len() {
            let ohlc = [bars.open[i], bars.high[i], bars.low[i], bars.close[i]];
            by_ts.insert(bars.ts[i] / 1_000_000, ohlc);
        }
        by_ts
    };
    let (a, b) = (read(a), read(b));
    let mut csv = String::from("time,open,high,low,close,volume\n");
    for (t, x) in &a {
        let Some(y) = b.get(t) else { continue };
        let minute_of_day = t.rem_euclid(86_400) / 60;
        let bump = if (600..610).contains(&minute_of_day) {
            1.0 + bump_bp * 1e-4
        } else {
            1.0
        };
        // Rounding is monotonic, so low ≤ open, close ≤ high still holds.
        let p: Vec<String> = (0..4)
            .map(|k| format!("{:.3}", x[k] * y[k] * bump))
            .collect();
        csv.push_str(&format!("{t},{},1\n", p.join(",")));
    }
    let path = dir.join(format!("{name}.csv"));
    std::fs::write(&path, csv).unwrap();
    path
}

/// A table's rows as PostgreSQL prints them (float8 in its shortest exact form), keyed by the
/// first column, in key order.
async fn rows_by(
    client: &tokio_postgres::Client,
    table: &str,
    key: &str,
) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in client
        .query(
            &format!("SELECT {key}, t::text FROM {table} t ORDER BY t::text"),
            &[],
        )
        .await
        .unwrap()
    {
        out.entry(r.get(0)).or_default().push(r.get(1));
    }
    out
}

async fn run_on(name: &str, files: &[PathBuf]) -> tokio_postgres::Client {
    let url = ephemera_tests::postgres::postgres().database(name);
    let client = ephemera_worker::db::connect(&url).await.unwrap();
    ephemera_worker::db::init(&client, "bars_1m").await.unwrap();
    for f in files {
        seed::seed_file(&client, "bars_1m", f).await.unwrap();
    }
    let summary = run::run(common::options(&url, name, &STAGES, None))
        .await
        .unwrap();
    assert_eq!(summary.partitions_failed, 0, "{name}");
    common::read_run(&client, name).await;
    client
}

#[tokio::test]
async fn every_triangle_is_written_and_nothing_depends_on_what_else_is_loaded() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("pair-sets");
    std::fs::create_dir_all(&dir).unwrap();
    let six = common::csv_files();
    let mut eight = six.clone();
    eight.push(cross_file(&dir, "EURJPY", "EURUSD", "USDJPY", 0.0));
    eight.push(cross_file(&dir, "GBPJPY", "GBPUSD", "USDJPY", 6.0));
    let small = run_on("pairsets_six", &six).await;
    let large = run_on("pairsets_eight", &eight).await;

    // Every triangle the eight pairs close, GBPJPY's two among them, with minutes and events.
    let minutes = rows_by(&large, "arbitrage", "triangle").await;
    let events = rows_by(&large, "arbitrage_events", "triangle").await;
    let names: Vec<&str> = minutes.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "EURGBP via USD",
            "EURJPY via USD",
            "GBPJPY via EUR",
            "GBPJPY via USD"
        ]
    );
    for t in ["GBPJPY via EUR", "GBPJPY via USD"] {
        println!(
            "{t}: {} minutes, {} events",
            minutes[t].len(),
            events.get(t).map_or(0, Vec::len)
        );
        assert!(minutes[t].len() > 1000, "{t}");
        assert!(events.get(t).is_some_and(|e| e.len() > 10), "{t}");
    }

    // The triangle the six pairs close: the same rows, to the bit, with two more pairs loaded.
    let (small_minutes, small_events) = (
        rows_by(&small, "arbitrage", "triangle").await,
        rows_by(&small, "arbitrage_events", "triangle").await,
    );
    assert_eq!(small_minutes.keys().collect::<Vec<_>>(), ["EURGBP via USD"]);
    assert_eq!(small_minutes["EURGBP via USD"], minutes["EURGBP via USD"]);
    assert_eq!(small_events["EURGBP via USD"], events["EURGBP via USD"]);

    // Causality: a test of two pairs reads those two pairs only.
    let pair_of = |cause: &str, effect: &str| format!("{cause}>{effect}");
    let causality = |client| async move {
        let mut out = BTreeMap::new();
        for r in client_query(client, "SELECT cause, effect, t::text FROM causality t").await {
            let key = pair_of(&r.get::<_, String>(0), &r.get::<_, String>(1));
            out.entry(key)
                .or_insert_with(BTreeSet::new)
                .insert(r.get::<_, String>(2));
        }
        out
    };
    let (c_small, c_large) = (causality(&small).await, causality(&large).await);
    assert_eq!(c_small.len(), 30);
    assert_eq!(c_large.len(), 56);
    for (k, v) in &c_small {
        assert_eq!(&c_large[k], v, "causality {k}");
    }

    // Currency index: an index per currency over its loaded pairs. USD, AUD and CHF are in the
    // same pairs in both runs, so their indices are identical; EUR, GBP and JPY gained pairs.
    let (i_small, i_large) = (
        rows_by(&small, "currency_index", "currency").await,
        rows_by(&large, "currency_index", "currency").await,
    );
    for c in ["USD", "AUD", "CHF"] {
        assert_eq!(i_small[c], i_large[c], "currency index {c}");
    }
    let about: String = large
        .query_one("SELECT obj_description('currency_index'::regclass)", &[])
        .await
        .unwrap()
        .get(0);
    assert!(about.contains("Over the pairs loaded"), "{about}");
    let loaded = |client| async move {
        client_query(
            client,
            "SELECT currency, max(pairs_loaded) FROM currency_index GROUP BY 1 ORDER BY 1",
        )
        .await
        .iter()
        .map(|r| (r.get::<_, String>(0), r.get::<_, i32>(1)))
        .collect::<BTreeMap<_, _>>()
    };
    let (l_small, l_large) = (loaded(&small).await, loaded(&large).await);
    for (c, extra) in [("EUR", 1), ("GBP", 1), ("JPY", 2), ("USD", 0)] {
        assert_eq!(l_large[c], l_small[c] + extra, "{c}");
    }

    // The eight pairs' arbitrage against the numpy reference: the same triangles, minutes and
    // events, the deviations within the cross test's tolerance.
    let out = dir.join("cross_reference.txt");
    let status = Command::new(common::root().join(".venv/bin/python"))
        .arg(common::root().join("worker/tests/reference/cross_reference.py"))
        .arg(&out)
        .args(&eight)
        .status()
        .unwrap();
    assert!(status.success(), "the reference script failed");
    let mut theirs: BTreeMap<(char, String), BTreeMap<i64, f64>> = BTreeMap::new();
    for line in std::fs::read_to_string(&out).unwrap().lines() {
        let f: Vec<&str> = line.split('|').collect();
        let kind = f[0].chars().next().unwrap();
        let value = match kind {
            'A' => f[5].parse().unwrap(),
            'E' => f[5].parse().unwrap(),
            _ => continue,
        };
        theirs
            .entry((kind, f[1].to_string()))
            .or_default()
            .insert(f[2].parse().unwrap(), value);
    }
    for (kind, table, time, value) in [
        ('A', "arbitrage", "ts", "deviation_bp"),
        ('E', "arbitrage_events", "start_ts", "peak_bp"),
    ] {
        let sql = format!("SELECT triangle, {time}, {value} FROM {table}");
        let mut ours: BTreeMap<(char, String), BTreeMap<i64, f64>> = BTreeMap::new();
        for r in client_query(&large, &sql).await {
            let ts: chrono::DateTime<chrono::Utc> = r.get(1);
            ours.entry((kind, r.get(0)))
                .or_default()
                .insert(ts.timestamp_micros(), r.get(2));
        }
        let want: BTreeMap<_, _> = theirs
            .iter()
            .filter(|(k, _)| k.0 == kind)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        assert_eq!(
            ours.keys().collect::<Vec<_>>(),
            want.keys().collect::<Vec<_>>()
        );
        for (k, theirs) in &want {
            let ours = &ours[k];
            assert_eq!(
                ours.keys().collect::<Vec<_>>(),
                theirs.keys().collect::<Vec<_>>(),
                "{table} {}: the same minutes",
                k.1
            );
            for (ts, t) in theirs {
                // As in cross.rs: quoted/implied − 1 carries the ratio's rounding, 1e-16 of 1e4 bp.
                let o = ours[ts];
                assert!(
                    (o - t).abs() <= 1e-9 * t.abs() + 1e-10,
                    "{table} {} at {ts}: {o} vs {t}",
                    k.1
                );
            }
        }
    }
}

async fn client_query(client: &tokio_postgres::Client, sql: &str) -> Vec<tokio_postgres::Row> {
    client.query(sql, &[]).await.unwrap()
}
