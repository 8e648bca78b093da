//! The worker against a real PostgreSQL server, on the real FX bars in ../shared/data.

use std::path::PathBuf;

use ephemera_tests::postgres::postgres;
use ephemera_worker::{db, queue, run, seed};

fn data(pair: &str) -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(format!("../../shared/data/fx-1m/{pair}.csv"));
    assert!(
        p.exists(),
        "{} is missing: ../shared must be beside the clone",
        p.display()
    );
    p
}

fn options(url: &str, worker: &str, concurrency: usize) -> run::Options {
    run::Options {
        database_url: url.to_string(),
        source: "bars_1m".into(),
        stages: vec!["indicators".into(), "regression".into()],
        concurrency,
        worker_id: worker.into(),
        run_id: "test".into(),
        lease_seconds: 600,
        max_attempts: 3,
        stop: Default::default(),
    }
}

async fn count(client: &tokio_postgres::Client, sql: &str) -> i64 {
    client.query_one(sql, &[]).await.unwrap().get(0)
}

#[tokio::test]
async fn seeds_computes_every_partition_once_and_a_rerun_changes_nothing() {
    let url = postgres().database("worker_full");
    let client = db::connect(&url).await.unwrap();
    db::init(&client, "bars_1m").await.unwrap();
    for pair in ["EURUSD", "USDJPY"] {
        let s = seed::seed_file(&client, "bars_1m", &data(pair))
            .await
            .unwrap();
        assert!(s.rows > 49_000, "{s:?}");
        assert_eq!(s.unreadable, 0);
    }
    // Two pairs × two months (April, May 2023) × two stages.
    let summary = run::run(options(&url, "w1", 2)).await.unwrap();
    assert_eq!(summary.partitions_done, 8, "{summary:?}");
    assert_eq!(summary.partitions_failed, 0);
    assert_eq!(summary.processed_here, 8);
    let source_rows = count(&client, "SELECT count(*) FROM bars_1m").await;
    let distinct = count(
        &client,
        "SELECT count(*) FROM (SELECT DISTINCT pair, ts FROM bars_1m) d",
    )
    .await;
    assert!(distinct < source_rows, "the data has duplicate timestamps");
    // Every distinct bar appears once per stage (no bad prices in this data).
    assert_eq!(
        count(&client, "SELECT count(*) FROM ephemera.indicators").await,
        distinct
    );
    assert_eq!(
        count(&client, "SELECT count(*) FROM ephemera.regression").await,
        distinct
    );
    assert_eq!(summary.rows_out as i64, 2 * distinct);
    assert_eq!(summary.rows_in as i64, 2 * source_rows);
    // Warm-up only at the very start of each pair: May starts warm from April's history.
    let may_nulls = count(
        &client,
        "SELECT count(*) FROM ephemera.indicators WHERE ts >= '2023-05-01' AND rsi_14 IS NULL",
    )
    .await;
    assert_eq!(may_nulls, 0);
    let april_nulls = count(
        &client,
        "SELECT count(*) FROM ephemera.indicators WHERE pair = 'EURUSD' AND macd IS NULL",
    )
    .await;
    assert_eq!(april_nulls, 33, "MACD(12,26,9) warm-up is 33 bars");
    let bad = count(
        &client,
        "SELECT count(*) FROM ephemera.indicators WHERE rsi_14 < 0 OR rsi_14 > 100",
    )
    .await;
    assert_eq!(bad, 0);
    let r2 = count(
        &client,
        "SELECT count(*) FROM ephemera.regression WHERE r2_1440 < 0 OR r2_1440 > 1",
    )
    .await;
    assert_eq!(r2, 0);
    // The data's known defects were counted, not fatal.
    let dups = count(
        &client,
        "SELECT coalesce(sum((quality->>'duplicate_ts')::bigint), 0)::bigint FROM ephemera.partitions WHERE stage = 'indicators'",
    )
    .await;
    assert_eq!(dups, source_rows - distinct);
    let gaps = count(
        &client,
        "SELECT max((quality->>'largest_gap_minutes')::bigint) FROM ephemera.partitions",
    )
    .await;
    assert!(gaps > 2800, "the 48 h gap: {gaps} minutes");

    // Rerun: nothing to do, nothing duplicated.
    let again = run::run(options(&url, "w2", 2)).await.unwrap();
    assert_eq!(again.processed_here, 0);
    assert_eq!(again.partitions_done, 8);
    assert_eq!(
        count(&client, "SELECT count(*) FROM ephemera.indicators").await,
        distinct
    );
}

#[tokio::test]
async fn two_workers_share_the_work_and_an_expired_lease_is_taken_over() {
    let url = postgres().database("worker_share");
    let client = db::connect(&url).await.unwrap();
    db::init(&client, "bars_1m").await.unwrap();
    seed::seed_file(&client, "bars_1m", &data("GBPUSD"))
        .await
        .unwrap();
    seed::seed_file(&client, "bars_1m", &data("AUDUSD"))
        .await
        .unwrap();
    let stages = vec!["indicators".to_string(), "regression".to_string()];
    queue::enqueue(&client, "bars_1m", &stages).await.unwrap();
    // A worker that died holding a partition: its lease has expired.
    let dead = queue::claim(&client, "dead", &stages, 600, 3)
        .await
        .unwrap()
        .unwrap();
    client
        .execute(
            "UPDATE ephemera.partitions SET lease_until = now() - interval '1 second' WHERE lease_owner = 'dead'",
            &[],
        )
        .await
        .unwrap();

    let (a, b) = tokio::join!(
        run::run(options(&url, "a", 2)),
        run::run(options(&url, "b", 2))
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.processed_here + b.processed_here, 8, "{a:?} {b:?}");
    // Each summary counts what was done when that worker ran out of work; the later one sees all.
    assert_eq!(a.partitions_done.max(b.partitions_done), 8, "{a:?} {b:?}");
    let taken_over: i32 = client
        .query_one(
            "SELECT attempts FROM ephemera.partitions WHERE stage = $1 AND pair = $2 AND month = $3",
            &[&dead.stage, &dead.pair, &dead.month],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(taken_over, 2);
    // Nobody else computed a partition twice.
    assert_eq!(
        count(
            &client,
            "SELECT count(*) FROM ephemera.partitions WHERE attempts > 1"
        )
        .await,
        1
    );
    let rows = count(&client, "SELECT count(*) FROM ephemera.indicators").await;
    let distinct = count(
        &client,
        "SELECT count(*) FROM (SELECT DISTINCT pair, ts FROM bars_1m) d",
    )
    .await;
    assert_eq!(rows, distinct);
}

#[tokio::test]
async fn a_lost_lease_rolls_the_partition_back_and_bad_rows_are_counted() {
    let url = postgres().database("worker_faults");
    let mut client = db::connect(&url).await.unwrap();
    db::init(&client, "bars_1m").await.unwrap();
    // A short, dirty series: NaN, zero, high < low, a duplicate, an out-of-order bar.
    client
        .batch_execute(
            "INSERT INTO bars_1m VALUES
              ('XAUUSD', '2023-04-03 00:00Z', 1, 1.1, 0.9, 1.0, 1),
              ('XAUUSD', '2023-04-03 00:02Z', 1, 1.1, 0.9, 1.0, 1),
              ('XAUUSD', '2023-04-03 00:01Z', 1, 1.1, 0.9, 1.0, 1),
              ('XAUUSD', '2023-04-03 00:01Z', 1, 1.1, 0.9, 1.05, 1),
              ('XAUUSD', '2023-04-03 00:03Z', 'NaN', 1.1, 0.9, 1.0, 1),
              ('XAUUSD', '2023-04-03 00:04Z', 1, 1.1, 0.9, 0, 1),
              ('XAUUSD', '2023-04-03 00:05Z', 1, 0.8, 0.9, 0.85, 1),
              ('XAUUSD', '2023-04-03 00:06Z', 1, 1.1, 0.9, 1.0, NULL)",
        )
        .await
        .unwrap();
    let stages = vec!["indicators".to_string()];
    queue::enqueue(&client, "bars_1m", &stages).await.unwrap();
    let c = queue::claim(&client, "slow", &stages, 600, 3)
        .await
        .unwrap()
        .unwrap();
    // Another worker takes the partition over while "slow" still computes it.
    client
        .execute("UPDATE ephemera.partitions SET lease_owner = 'fast'", &[])
        .await
        .unwrap();
    let core = ta_lib::Core::new();
    let err = ephemera_worker::partition::process(&mut client, &core, "bars_1m", "slow", &c)
        .await
        .unwrap_err();
    assert!(err.downcast_ref::<queue::LeaseLost>().is_some(), "{err:#}");
    assert_eq!(
        count(&client, "SELECT count(*) FROM ephemera.indicators").await,
        0,
        "rolled back"
    );

    // Done properly: the policy keeps 4 bars, all NULL (shorter than any warm-up), and says why.
    client
        .execute(
            "UPDATE ephemera.partitions SET state = 'pending', lease_owner = NULL",
            &[],
        )
        .await
        .unwrap();
    let mut o = options(&url, "w", 1);
    o.stages = stages;
    let s = run::run(o).await.unwrap();
    assert_eq!(s.partitions_done, 1);
    assert_eq!(s.rows_out, 4);
    let q: serde_json::Value = client
        .query_one("SELECT quality FROM ephemera.partitions", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(q["bad_price"], 2);
    assert_eq!(q["high_below_low"], 1);
    assert_eq!(q["duplicate_ts"], 1);
    // Read in time order, so the out-of-order insert is only a duplicate's neighbour here.
    assert_eq!(q["out_of_order"], 0);
    assert_eq!(q["rows_kept"], 4);
    assert_eq!(
        count(
            &client,
            "SELECT count(*) FROM ephemera.indicators WHERE rsi_14 IS NULL"
        )
        .await,
        4
    );
}
