//! The regime stage on the real bars of all six pairs, through PostgreSQL, the queue, validation
//! and export, every bar against a direct pandas computation from the CSV files
//! (`reference/regime_reference.py`: rolling sums and a 30-day rolling rank in pandas, the slope
//! as a two-pass fit per window in numpy, ADX from TA-Lib's C library).

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use ephemera_worker::run;

/// |ours − theirs| within rel·|theirs| + abs; returns the share of the tolerance used.
fn share(ours: Option<f64>, theirs: f64, rel: f64, abs: f64, at: &str) -> f64 {
    match ours {
        None => {
            assert!(theirs.is_nan(), "{at}: NULL, reference {theirs}");
            0.0
        }
        Some(o) => {
            assert!(!theirs.is_nan(), "{at}: {o}, reference undefined");
            (o - theirs).abs() / (rel * theirs.abs() + abs)
        }
    }
}

#[tokio::test]
async fn regimes_match_pandas_on_every_bar_of_all_pairs() {
    let (url, client) = common::seeded("regime").await;
    common::read_run(&client, "regime").await;
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("regime-export");
    let _ = std::fs::remove_dir_all(&out);
    let summary = run::run(common::options(
        &url,
        "regime",
        &["regime", "validate", "export"],
        Some(&out),
    ))
    .await
    .unwrap();
    // 6 pairs × 2 months × 3 stages.
    assert_eq!(
        (summary.partitions_done, summary.partitions_failed),
        (36, 0)
    );
    let v = summary.validation.clone().unwrap();
    assert_eq!(
        (v.nulls_beyond_warm_up, v.non_finite, v.out_of_range),
        (0, 0, 0),
        "{v:?}"
    );

    let reference = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("regime_reference.txt");
    let status = Command::new(common::root().join(".venv/bin/python"))
        .arg(common::root().join("worker/tests/reference/regime_reference.py"))
        .arg(&reference)
        .args(common::csv_files())
        .status()
        .unwrap();
    assert!(
        status.success(),
        "the reference script failed (make setup installs pandas)"
    );
    let ours: BTreeMap<(String, i64), tokio_postgres::Row> = client
        .query(
            "SELECT pair, ts, rv_60, rv_pct_30d, vol_regime, adx_14, slope_240, trend_regime
               FROM regime",
            &[],
        )
        .await
        .unwrap()
        .into_iter()
        .map(|r| {
            let ts: chrono::DateTime<chrono::Utc> = r.get(1);
            ((r.get(0), ts.timestamp_micros()), r)
        })
        .collect();
    let text = std::fs::read_to_string(&reference).unwrap();
    let lines: Vec<Vec<&str>> = text.lines().map(|l| l.split('|').collect()).collect();
    assert_eq!(ours.len(), lines.len(), "one row per clean bar");
    let mut worst: BTreeMap<&str, (f64, String)> = BTreeMap::new();
    let (mut near_threshold, mut classes) = (0usize, 0usize);
    for f in &lines {
        let key = (f[0].to_string(), f[1].parse::<i64>().unwrap());
        let o = ours
            .get(&key)
            .unwrap_or_else(|| panic!("no row for {key:?}"));
        let at = format!("{} {}", f[0], f[1]);
        let x = |s: &str| s.parse::<f64>().unwrap();
        let mut see = |name: &'static str, s: f64| {
            let w = worst.entry(name).or_default();
            if s > w.0 {
                *w = (s, at.clone());
            }
        };
        see("rv_60", share(o.get(2), x(f[2]), 1e-9, 1e-15, &at));
        see("adx_14", share(o.get(5), x(f[6]), 1e-9, 1e-9, &at));
        // Slopes cross zero: an absolute floor of 1e-14 price units a minute.
        see("slope_240", share(o.get(6), x(f[7]), 1e-9, 1e-14, &at));
        // The percentile: strictly-below counts agree, or fall inside the reference's interval
        // of exactly equal values.
        let pct: Option<f64> = o.get(3);
        let (lo, hi) = (x(f[3]), x(f[4]));
        match pct {
            None => assert!(lo.is_nan(), "{at}: NULL percentile, reference {lo}"),
            Some(p) => assert!(
                p >= lo - 1e-12 && p <= hi + 1e-12,
                "{at}: percentile {p}, reference [{lo}, {hi}]"
            ),
        }
        let vol: Option<String> = o.get(4);
        let trend: Option<String> = o.get(7);
        // A class may differ only where the reference's own input sits on the threshold within
        // the tolerance above: ADX at 25, a slope of zero, a tie interval across a boundary.
        let adx_edge = (x(f[6]) - 25.0).abs() <= 1e-9 * 25.0 + 1e-9;
        let slope_edge = x(f[7]).abs() <= 1e-14;
        let pct_edge = [0.25, 0.75].iter().any(|b| lo < *b && hi >= *b);
        let edge = adx_edge || slope_edge || pct_edge;
        let same = vol.as_deref().unwrap_or("") == f[5] && trend.as_deref().unwrap_or("") == f[8];
        if !same {
            assert!(
                edge,
                "{at}: ours {vol:?} {trend:?}, reference {} {}",
                f[5], f[8]
            );
            near_threshold += 1;
        }
        classes += 1;
    }
    for (name, (s, at)) in &worst {
        println!("{name:<10} worst {s:.3} of tolerance ({at})");
        assert!(*s <= 1.0, "{name} outside tolerance at {at}");
    }
    println!("classes: {classes} bars, {near_threshold} differ, each on a threshold");
    // Every label occurs in the real data.
    for (col, labels) in [
        ("vol_regime", ["low", "normal", "high"]),
        ("trend_regime", ["up", "down", "range"]),
    ] {
        for l in labels {
            let n: i64 = client
                .query_one(
                    &format!("SELECT count(*) FROM regime WHERE {col} = $1"),
                    &[&l],
                )
                .await
                .unwrap()
                .get(0);
            assert!(n > 1000, "{col} {l}: {n}");
        }
    }
    let manifest: ephemera_contract::Manifest =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest.objects.len(), 12, "6 pairs × 2 months");
    assert_eq!(
        manifest.objects.iter().map(|o| o.rows).sum::<u64>(),
        summary.rows_out
    );
}
