//! Outputs per run: two runs on one database never touch each other's rows, `drop` removes one
//! run whole and nothing else, and the queue's claim and a run's reads stay on indexes.

use std::collections::BTreeMap;

use chrono::NaiveDate;
use ephemera_tests::postgres::postgres;
use ephemera_worker::features::{arbitrage, currency_index, indicators, Params};
use ephemera_worker::month::Month;
use ephemera_worker::outputs::{self, DropError};
use ephemera_worker::stage::Stage;
use ephemera_worker::{copy, db, queue, run};

mod common;

/// Every table of a run's schema, and its queue rows and validation findings: rows and a digest
/// of them, independent of the order they were written in.
async fn digest(
    client: &tokio_postgres::Client,
    run_id: &str,
) -> BTreeMap<String, (i64, Option<String>)> {
    let schema = outputs::schema(run_id).unwrap();
    let tables: Vec<String> = client
        .query(
            "SELECT tablename::text FROM pg_tables WHERE schemaname = $1 ORDER BY 1",
            &[&schema],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut out = BTreeMap::new();
    let mut see = |name: String, r: tokio_postgres::Row| {
        out.insert(name, (r.get(0), r.get(1)));
    };
    for t in tables {
        let r = client
            .query_one(
                &format!(
                    "SELECT count(*), md5(string_agg(x::text, '|' ORDER BY x::text))
                       FROM {schema}.{t} x"
                ),
                &[],
            )
            .await
            .unwrap();
        see(t, r);
    }
    // The resume record: what each partition read and wrote, and its quality and findings.
    let r = client
        .query_one(
            "SELECT count(*), md5(string_agg(concat_ws(',', stage, pair, month, state, rows_in,
                        rows_out, quality::text), '|' ORDER BY stage, pair, month))
               FROM ephemera.partitions WHERE run_id = $1",
            &[&run_id],
        )
        .await
        .unwrap();
    see("queue".into(), r);
    let r = client
        .query_one(
            "SELECT count(*), md5(string_agg(f::text, '|' ORDER BY f::text))
               FROM (SELECT to_jsonb(v) - 'run_id' AS f FROM ephemera.validation v
                      WHERE run_id = $1) v",
            &[&run_id],
        )
        .await
        .unwrap();
    see("validation".into(), r);
    out
}

fn rows(d: &BTreeMap<String, (i64, Option<String>)>, table: &str) -> i64 {
    d.get(table)
        .unwrap_or_else(|| panic!("no {table} in {d:?}"))
        .0
}

/// Two runs that share table names but not their contents: A computes indicators and strict
/// arbitrage events; B also regression, and looser events.
fn two_runs(url: &str) -> (run::Options, run::Options) {
    let with = |name: &str, stages: &[&str], threshold_bp: f64, min_minutes: usize| {
        let mut o = common::options(url, name, stages, None);
        o.params = Params {
            arbitrage: arbitrage::Params {
                threshold_bp,
                min_minutes,
            },
        };
        o
    };
    (
        with("run-a", &["indicators", "arbitrage", "validate"], 2.0, 3),
        with(
            "run-b",
            &["regression", "indicators", "arbitrage", "validate"],
            0.5,
            2,
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_concurrent_runs_on_one_database_each_equal_the_same_run_alone() {
    let (url, mut client) = common::seeded("runs_concurrent").await;
    let (a, b) = two_runs(&url);

    // Each alone: the other's outputs are not in the database while it runs.
    let mut alone = BTreeMap::new();
    for o in [&a, &b] {
        let s = run::run(o.clone()).await.unwrap();
        assert_eq!(s.partitions_failed, 0, "{s:?}");
        alone.insert(o.run_id.clone(), digest(&client, &o.run_id).await);
        outputs::drop(&mut client, &o.run_id, false).await.unwrap();
    }
    let (alone_a, alone_b) = (&alone["run-a"], &alone["run-b"]);
    // They differ where they share a name, so rows landing in the other run's tables would show.
    assert_eq!(rows(alone_a, "regression"), 0);
    assert!(rows(alone_b, "regression") > 100_000, "{alone_b:?}");
    assert!(rows(alone_a, "indicators") > 100_000, "{alone_a:?}");
    assert!(rows(alone_b, "arbitrage_events") > 0, "{alone_b:?}");
    assert_ne!(
        alone_a["arbitrage_events"], alone_b["arbitrage_events"],
        "other thresholds, other events"
    );
    assert!(rows(alone_a, "validation") > 0);
    assert!(rows(alone_b, "validation") > rows(alone_a, "validation"));

    // Both at once, on one database.
    let (ra, rb) = tokio::join!(run::run(a.clone()), run::run(b.clone()));
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    // Recomputed whole after the drops, not taken from a record of the earlier runs.
    assert_eq!(ra.processed_here, ra.partitions_done, "{ra:?}");
    assert_eq!(rb.processed_here, rb.partitions_done, "{rb:?}");
    // And really at once: each run finished partitions while the other was still at work.
    let span = |run: &'static str| {
        let client = &client;
        async move {
            let r = client
                .query_one(
                    "SELECT min(updated_at), max(updated_at) FROM ephemera.partitions
                      WHERE run_id = $1",
                    &[&run],
                )
                .await
                .unwrap();
            (
                r.get::<_, chrono::DateTime<chrono::Utc>>(0),
                r.get::<_, chrono::DateTime<chrono::Utc>>(1),
            )
        }
    };
    let ((a0, a1), (b0, b1)) = (span("run-a").await, span("run-b").await);
    assert!(
        a0 < b1 && b0 < a1,
        "the runs did not overlap: {a0}..{a1}, {b0}..{b1}"
    );
    assert_eq!(&digest(&client, "run-a").await, alone_a);
    assert_eq!(&digest(&client, "run-b").await, alone_b);
}

/// Two pairs of synthetic 1-minute bars over April and May 2023.
async fn synthetic_bars(client: &tokio_postgres::Client) {
    client
        .batch_execute(
            "INSERT INTO bars_1m
             SELECT p, ts, c, c + 0.0002, c - 0.0002, c + 0.0001 * sin(n / 7.0), 10
               FROM (VALUES ('EURUSD', 1.1), ('USDJPY', 140.0)) v (p, c0),
                    generate_series(1, 30000) n,
                    LATERAL (SELECT '2023-04-20Z'::timestamptz + n * interval '1 minute' AS ts,
                                    c0 * (1 + 0.001 * sin(n / 300.0)) AS c) t",
        )
        .await
        .unwrap();
}

/// The binary's `drop`: (success, stdout, stderr).
fn drop_cli(url: &str, run_id: &str, force: bool) -> (bool, String, String) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_ephemera-worker"));
    cmd.args(["drop", "--run-id", run_id, "--database-url", url]);
    if force {
        cmd.arg("--force");
    }
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn left_of(client: &tokio_postgres::Client, run_id: &str) -> (bool, i64, i64, i64) {
    let r = client
        .query_one(
            "SELECT to_regnamespace($1::text) IS NOT NULL,
                    (SELECT count(*) FROM ephemera.partitions WHERE run_id = $2),
                    (SELECT count(*) FROM ephemera.validation WHERE run_id = $2),
                    (SELECT count(*) FROM ephemera.runs WHERE run_id = $2)",
            &[&outputs::schema(run_id).unwrap(), &run_id],
        )
        .await
        .unwrap();
    (r.get(0), r.get(1), r.get(2), r.get(3))
}

#[tokio::test]
async fn drop_removes_one_run_whole_and_leaves_the_other_untouched() {
    let url = postgres().database("runs_drop");
    let mut client = db::connect(&url).await.unwrap();
    db::init(&client, "bars_1m").await.unwrap();
    synthetic_bars(&client).await;
    let stages = ["indicators", "regression", "validate"];
    for run_id in ["keep", "gone"] {
        let s = run::run(common::options(&url, run_id, &stages, None))
            .await
            .unwrap();
        // Two pairs × two months × three stages.
        assert_eq!((s.partitions_done, s.partitions_failed), (12, 0), "{s:?}");
    }
    let keep = digest(&client, "keep").await;
    assert_eq!(rows(&keep, "indicators"), 60_000);
    assert_eq!(digest(&client, "gone").await, keep, "the same work");

    let (ok, out, err) = drop_cli(&url, "gone", false);
    assert!(ok, "{err}");
    let dropped: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(dropped["schema"], outputs::schema("gone").unwrap());
    assert_eq!(dropped["tables"], 7);
    assert!(dropped["bytes"].as_i64().unwrap() > 1_000_000, "{dropped}");
    assert_eq!(dropped["queue_rows"], 12);
    assert_eq!(
        dropped["validation_rows"].as_i64().unwrap(),
        rows(&keep, "validation")
    );
    assert_eq!(left_of(&client, "gone").await, (false, 0, 0, 0));
    assert_eq!(digest(&client, "keep").await, keep);

    // Again: nothing of it is left, and the binary says so rather than passing for a drop.
    let (ok, _, err) = drop_cli(&url, "gone", false);
    assert!(!ok);
    assert!(
        err.contains("no run 'gone' in this database") && err.contains("runs here: keep"),
        "{err}"
    );

    // A run a worker holds a live lease on is refused, and nothing of it is removed.
    client
        .execute(
            "UPDATE ephemera.partitions
                SET state = 'running', lease_owner = 'w', lease_until = now() + interval '10 minutes'
              WHERE run_id = 'keep' AND stage = 'validate' AND pair = 'EURUSD' AND month = '2023-05-01'",
            &[],
        )
        .await
        .unwrap();
    let e = outputs::drop(&mut client, "keep", false).await.unwrap_err();
    match e.downcast_ref::<DropError>() {
        Some(DropError::Busy { live: 1, .. }) => {}
        other => panic!("{other:?}: {e:#}"),
    }
    assert!(e.to_string().contains("--force"), "{e}");
    assert_eq!(
        left_of(&client, "keep").await,
        (true, 12, rows(&keep, "validation"), 1)
    );

    // Outputs dropped behind the queue's back: the next run redoes the partitions the queue
    // said were done, rather than trusting a record of rows that are gone.
    client
        .batch_execute(&format!(
            "DROP SCHEMA {} CASCADE;
             UPDATE ephemera.partitions SET state = 'done', lease_owner = NULL, lease_until = NULL
              WHERE run_id = 'keep'",
            outputs::schema("keep").unwrap()
        ))
        .await
        .unwrap();
    let s = run::run(common::options(&url, "keep", &stages, None))
        .await
        .unwrap();
    assert_eq!((s.processed_here, s.partitions_done), (12, 12), "{s:?}");
    assert_eq!(digest(&client, "keep").await, keep);

    // --force drops under a live lease.
    client
        .execute(
            "UPDATE ephemera.partitions
                SET state = 'running', lease_owner = 'w', lease_until = now() + interval '10 minutes'
              WHERE run_id = 'keep' AND stage = 'indicators'",
            &[],
        )
        .await
        .unwrap();
    assert!(!drop_cli(&url, "keep", false).0);

    // Something the run did not create in its schema (a view over its table): the drop stops,
    // naming it, and removes nothing; once it is gone the drop goes through.
    let schema = outputs::schema("keep").unwrap();
    client
        .batch_execute(&format!(
            "CREATE VIEW {schema}.someones_view AS SELECT * FROM {schema}.indicators"
        ))
        .await
        .unwrap();
    let (ok, _, err) = drop_cli(&url, "keep", true);
    assert!(!ok);
    assert!(err.contains("someones_view"), "{err}");
    assert_eq!(
        left_of(&client, "keep").await,
        (true, 12, rows(&keep, "validation"), 1)
    );
    client
        .batch_execute(&format!("DROP VIEW {schema}.someones_view"))
        .await
        .unwrap();
    let (ok, _, err) = drop_cli(&url, "keep", true);
    assert!(ok, "{err}");
    assert_eq!(left_of(&client, "keep").await, (false, 0, 0, 0));
}

/// The plan of a statement, parameters bound.
async fn plan(
    client: &tokio_postgres::Client,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> String {
    client
        .query(&format!("EXPLAIN (VERBOSE, COSTS OFF) {sql}"), params)
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test]
async fn the_claim_and_a_runs_reads_stay_on_indexes() {
    let url = postgres().database("runs_explain");
    let client = db::connect(&url).await.unwrap();
    db::init(&client, "bars_1m").await.unwrap();
    // Four pairs (two currencies' worth of crosses), a bar every 10 minutes for a year.
    client
        .batch_execute(
            "INSERT INTO bars_1m
             SELECT p, ts, c, c * 1.0002, c * 0.9998, c * (1 + 0.0001 * sin(n / 7.0)), 10
               FROM (VALUES ('EURUSD', 1.1), ('GBPUSD', 1.25), ('EURGBP', 0.88), ('USDJPY', 140.0))
                      v (p, c0),
                    generate_series(1, 52559) n,
                    LATERAL (SELECT '2023-01-01Z'::timestamptz + n * interval '10 minutes' AS ts,
                                    c0 * (1 + 0.01 * sin(n / 500.0)) AS c) t",
        )
        .await
        .unwrap();
    let s = run::run(common::options(
        &url,
        "explained",
        &["indicators", "currency-index"],
        None,
    ))
    .await
    .unwrap();
    assert_eq!(
        (s.partitions_done, s.partitions_failed),
        (4 * 12 + 12, 0),
        "{s:?}"
    );
    // A queue that has seen many runs (done, as most are), and one being worked on.
    client
        .batch_execute(
            "INSERT INTO ephemera.partitions (run_id, stage, rank, pair, month, state)
             SELECT 'old-' || r, s.stage, s.rank, p, m, 'done'
               FROM generate_series(1, 200) r,
                    (VALUES ('indicators', 0), ('regression', 0), ('validate', 1), ('export', 2))
                      s (stage, rank),
                    unnest(array['EURUSD', 'GBPUSD', 'EURGBP', 'USDJPY', 'USDCHF', 'AUDUSD']) p,
                    (SELECT d::date AS m FROM generate_series('2021-01-01'::timestamp,
                       '2022-12-01', '1 month') d) months",
        )
        .await
        .unwrap();
    let stages = [
        Stage::Indicators,
        Stage::Regression,
        Stage::Validate,
        Stage::Export,
    ];
    queue::enqueue(&client, "claiming", "bars_1m", &stages)
        .await
        .unwrap();
    // Statistics as autovacuum would have them by now; the test does not wait for it.
    let schema = outputs::schema("explained").unwrap();
    client
        .batch_execute(&format!(
            "ANALYZE ephemera.partitions; ANALYZE {schema}.indicators;
             ANALYZE {schema}.currency_index;"
        ))
        .await
        .unwrap();

    let claim = plan(
        &client,
        queue::CLAIM,
        &[&"claiming", &"probe", &600.0f64, &3i32],
    )
    .await;
    assert!(!claim.contains("Seq Scan"), "{claim}");
    // The candidates come from the open partitions' index, their earlier stages from the index
    // by month: neither walks the run's done rows, let alone other runs'.
    assert!(claim.contains("partitions_open"), "{claim}");
    assert!(claim.contains("partitions_by_month"), "{claim}");

    let may = NaiveDate::from_ymd_opt(2023, 5, 1).unwrap();
    let read = plan(
        &client,
        &copy::read_query(
            &schema,
            &indicators::INDICATORS,
            &copy::Partition {
                month: Month::of(may),
                pair: Some("EURUSD"),
            },
        )
        .unwrap(),
        &[],
    )
    .await;
    assert!(!read.contains("Seq Scan"), "{read}");
    // The run's own table, through its key: the pair and the month are index conditions.
    assert!(read.contains(&format!("on {schema}.indicators")), "{read}");
    assert!(
        read.contains("Index Scan on indicators_pkey") || read.contains("using indicators_pkey"),
        "{read}"
    );
    assert!(
        read.contains("Index Cond: ((indicators.pair = 'EURUSD'::text) AND (indicators.ts >="),
        "{read}"
    );

    let part = copy::Partition {
        month: Month::of(may),
        pair: None,
    };
    let read = plan(
        &client,
        &copy::read_query(&schema, &currency_index::CURRENCY_INDEX, &part).unwrap(),
        &[],
    )
    .await;
    assert!(!read.contains("Seq Scan"), "{read}");
    // The month is found through the index on it, not filtered out of every row of the run.
    assert!(
        read.contains(&format!("on {schema}.currency_index")),
        "{read}"
    );
    assert!(
        read.contains("Index Scan on currency_index_ts")
            || read.contains("using currency_index_ts"),
        "{read}"
    );
    assert!(
        read.contains("Index Cond: ((currency_index.ts >="),
        "{read}"
    );
}
