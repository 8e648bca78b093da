//! The worker against a real PostgreSQL server, on the real FX bars in data/fx-1m.

use std::path::PathBuf;

use ephemera_tests::postgres::postgres;
use ephemera_worker::stage::Stage;
use ephemera_worker::{db, outputs, partition, queue, run, seed, store, validate};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

mod common;

fn data(pair: &str) -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("../data/fx-1m/{pair}.csv.gz"));
    assert!(
        p.exists(),
        "{} is missing: the repository's data/fx-1m holds the bars",
        p.display()
    );
    p
}

fn options(url: &str, worker: &str, concurrency: usize) -> run::Options {
    run::Options {
        database_url: url.to_string(),
        source: "bars_1m".into(),
        stages: vec![Stage::Indicators, Stage::Regression],
        concurrency,
        worker_id: worker.into(),
        run_id: "test".into(),
        lease_seconds: 600,
        max_attempts: 3,
        export: None,
        stop: Default::default(),
        progress: indicatif::ProgressBar::hidden(),
        params: Default::default(),
    }
}

async fn count(client: &tokio_postgres::Client, sql: &str) -> i64 {
    client.query_one(sql, &[]).await.unwrap().get(0)
}

#[tokio::test]
async fn seeds_computes_every_partition_once_and_a_rerun_changes_nothing() {
    let url = postgres().database("worker_full");
    let client = db::connect(&url).await.unwrap();
    common::read_run(&client, "test").await;
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
        count(&client, "SELECT count(*) FROM indicators").await,
        distinct
    );
    assert_eq!(
        count(&client, "SELECT count(*) FROM regression").await,
        distinct
    );
    assert_eq!(summary.rows_out as i64, 2 * distinct);
    assert_eq!(summary.rows_in as i64, 2 * source_rows);
    // Warm-up only at the very start of each pair: May starts warm from April's history.
    let may_nulls = count(
        &client,
        "SELECT count(*) FROM indicators WHERE ts >= '2023-05-01' AND rsi_14 IS NULL",
    )
    .await;
    assert_eq!(may_nulls, 0);
    let april_nulls = count(
        &client,
        "SELECT count(*) FROM indicators WHERE pair = 'EURUSD' AND macd IS NULL",
    )
    .await;
    assert_eq!(april_nulls, 33, "MACD(12,26,9) warm-up is 33 bars");
    let bad = count(
        &client,
        "SELECT count(*) FROM indicators WHERE rsi_14 < 0 OR rsi_14 > 100",
    )
    .await;
    assert_eq!(bad, 0);
    let r2 = count(
        &client,
        "SELECT count(*) FROM regression WHERE r2_1440 < 0 OR r2_1440 > 1",
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
        count(&client, "SELECT count(*) FROM indicators").await,
        distinct
    );
}

#[tokio::test]
async fn two_workers_share_the_work_and_an_expired_lease_is_taken_over() {
    let url = postgres().database("worker_share");
    let mut client = db::connect(&url).await.unwrap();
    common::read_run(&client, "test").await;
    db::init(&client, "bars_1m").await.unwrap();
    seed::seed_file(&client, "bars_1m", &data("GBPUSD"))
        .await
        .unwrap();
    seed::seed_file(&client, "bars_1m", &data("AUDUSD"))
        .await
        .unwrap();
    let stages = [Stage::Indicators, Stage::Regression];
    // As `run` does: the run's outputs, then its queue.
    outputs::create(&mut client, "test").await.unwrap();
    queue::enqueue(&client, "test", "bars_1m", &stages)
        .await
        .unwrap();
    // A worker that died holding a partition: its lease has expired.
    let dead = queue::claim(&client, "test", "dead", 600, 3)
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
            &[&dead.stage.name(), &dead.pair, &dead.month.first],
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
    let rows = count(&client, "SELECT count(*) FROM indicators").await;
    let distinct = count(
        &client,
        "SELECT count(*) FROM (SELECT DISTINCT pair, ts FROM bars_1m) d",
    )
    .await;
    assert_eq!(rows, distinct);
}

#[tokio::test]
async fn a_live_worker_keeps_its_lease_and_a_gone_one_loses_it() {
    let url = postgres().database("worker_lease_kept");
    let mut client = db::connect(&url).await.unwrap();
    common::read_run(&client, "test").await;
    db::init(&client, "bars_1m").await.unwrap();
    seed::seed_file(&client, "bars_1m", &data("GBPUSD"))
        .await
        .unwrap();
    outputs::create(&mut client, "test").await.unwrap();
    queue::enqueue(&client, "test", "bars_1m", &[Stage::Indicators])
        .await
        .unwrap();
    // One partition left to claim.
    client
        .execute(
            "UPDATE ephemera.partitions SET state = 'done'
              WHERE (stage, pair, month) <> (SELECT stage, pair, month FROM ephemera.partitions
                                              ORDER BY month LIMIT 1)",
            &[],
        )
        .await
        .unwrap();
    let held = queue::claim(&client, "test", "w/0", 3, 3)
        .await
        .unwrap()
        .unwrap();
    // Its worker is at it for longer than the lease: the lease is kept, nobody takes it over.
    let keeper = tokio::spawn(run::keep_leases(
        url.clone(),
        "test".into(),
        vec!["w/0".into()],
        3,
    ));
    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
    let thief = queue::claim(&client, "test", "thief", 3, 3).await.unwrap();
    assert!(
        thief.is_none(),
        "a live worker's lease was taken: {thief:?}"
    );
    // Its worker is gone: the lease expires and the partition is taken over.
    keeper.abort();
    tokio::time::sleep(std::time::Duration::from_secs(4)).await;
    let taken = queue::claim(&client, "test", "thief", 3, 3)
        .await
        .unwrap()
        .expect("a gone worker's lease expires");
    assert_eq!(
        (
            taken.stage,
            taken.pair.clone(),
            taken.month.first,
            taken.attempts
        ),
        (held.stage, held.pair.clone(), held.month.first, 2)
    );
}

#[tokio::test]
async fn a_lost_lease_rolls_the_partition_back_and_bad_rows_are_counted() {
    let url = postgres().database("worker_faults");
    let mut client = db::connect(&url).await.unwrap();
    common::read_run(&client, "test").await;
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
    let stages = [Stage::Indicators];
    outputs::create(&mut client, "test").await.unwrap();
    queue::enqueue(&client, "test", "bars_1m", &stages)
        .await
        .unwrap();
    let c = queue::claim(&client, "test", "slow", 600, 3)
        .await
        .unwrap()
        .unwrap();
    // Another worker takes the partition over while "slow" still computes it.
    client
        .execute("UPDATE ephemera.partitions SET lease_owner = 'fast'", &[])
        .await
        .unwrap();
    let core = ta_lib::Core::new();
    let work = partition::Work {
        core: &core,
        source: "bars_1m",
        owner: "slow",
        store: None,
        params: &Default::default(),
        reads: &partition::SharedReads::new(1),
    };
    let err = partition::process(&mut client, &work, &c)
        .await
        .unwrap_err();
    assert!(err.downcast_ref::<queue::LeaseLost>().is_some(), "{err:#}");
    assert_eq!(
        count(&client, "SELECT count(*) FROM indicators").await,
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
    o.stages = stages.to_vec();
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
    // The NULL volume is read as 0 (no volume), a bar like any other, not a bad volume. (The
    // partition reads its bars in time order, so the cleaning never meets one out of order
    // here: bars::tests::the_policy counts those.)
    assert_eq!(q["rows_in"], 8);
    assert_eq!(q["bad_volume"], 0);
    assert_eq!(q["rows_kept"], 4);
    assert_eq!(
        count(
            &client,
            "SELECT count(*) FROM indicators WHERE rsi_14 IS NULL"
        )
        .await,
        4
    );
}

fn scratch(name: &str) -> PathBuf {
    let d =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[tokio::test]
async fn validates_and_exports_parquet_with_a_manifest_and_flags_planted_faults() {
    let url = postgres().database("worker_export");
    let client = db::connect(&url).await.unwrap();
    common::read_run(&client, "exported").await;
    db::init(&client, "bars_1m").await.unwrap();
    seed::seed_file(&client, "bars_1m", &data("USDCHF"))
        .await
        .unwrap();
    let dir = scratch("export");
    let mut o = options(&url, "w", 2);
    o.run_id = "exported".into();
    o.stages = vec![
        Stage::Indicators,
        Stage::Regression,
        Stage::Validate,
        Stage::Export,
    ];
    o.export = Some(store::Target::Dir(dir.clone()));
    let s = run::run(o.clone()).await.unwrap();
    // One pair × two months × four stages.
    assert_eq!((s.partitions_done, s.partitions_failed), (8, 0), "{s:?}");
    let v = s.validation.clone().unwrap();
    assert_eq!(v.partitions, 2);
    // The real bars: every value finite and in range; NULLs only in warm-up (April has no
    // history) or where R² is undefined.
    assert_eq!(
        (v.non_finite, v.out_of_range, v.problems),
        (0, 0, 0),
        "{v:?}"
    );

    let manifest_path = dir.join("manifest.json");
    assert_eq!(s.manifest.as_deref(), Some(manifest_path.to_str().unwrap()));
    let m: ephemera_contract::Manifest =
        serde_json::from_slice(&std::fs::read(&manifest_path).unwrap()).unwrap();
    assert_eq!(m.run_id, "exported");
    assert_eq!(m.objects.len(), 4);
    assert_eq!(m.objects.iter().map(|o| o.rows).sum::<u64>(), s.rows_out);
    for obj in &m.objects {
        let bytes = std::fs::read(dir.join(&obj.key)).unwrap();
        assert_eq!(
            (bytes.len() as u64, Some(store::sha256_hex(&bytes))),
            (obj.bytes, obj.sha256.clone())
        );
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(bytes))
            .unwrap()
            .build()
            .unwrap();
        let rows: usize = reader.map(|b| b.unwrap().num_rows()).sum();
        assert_eq!(rows as u64, obj.rows, "{}", obj.key);
    }
    let april = m
        .objects
        .iter()
        .find(|o| o.key == "indicators/pair=USDCHF/month=2023-04/part.parquet")
        .unwrap();
    assert_eq!(
        april.rows as i64,
        count(
            &client,
            "SELECT count(*) FROM indicators WHERE ts < '2023-05-01Z'"
        )
        .await
    );

    // Plant faults in May's output, validate again: each is found and named.
    client
        .batch_execute(
            "UPDATE indicators SET rsi_14 = 140 WHERE ts = (SELECT min(ts) + interval '3 days' FROM indicators WHERE ts >= '2023-05-01Z');
             UPDATE indicators SET macd = NULL WHERE ts = (SELECT max(ts) FROM indicators);
             UPDATE regression SET rmse_60 = 'NaN' WHERE ts = (SELECT max(ts) FROM regression);
             UPDATE ephemera.partitions SET state = 'pending', attempts = 0
              WHERE run_id = 'exported' AND stage IN ('validate', 'export') AND month = '2023-05-01';",
        )
        .await
        .unwrap();
    let s = run::run(o).await.unwrap();
    let after = s.validation.unwrap();
    assert_eq!(
        (
            after.out_of_range,
            after.nulls_beyond_warm_up,
            after.non_finite
        ),
        (1, v.nulls_beyond_warm_up + 1, 1),
        "{after:?}"
    );
    assert_eq!(after.problems, 3);
    let flagged = validate::findings(&client, "exported").await.unwrap();
    let names: Vec<String> = flagged["flagged"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            format!(
                "{} {} {}",
                f["month"].as_str().unwrap(),
                f["stage"].as_str().unwrap(),
                f["column"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        names,
        [
            "2023-05-01 indicators macd",
            "2023-05-01 indicators rsi_14",
            "2023-05-01 regression rmse_60"
        ]
    );
}

/// A digest of a run's output tables, independent of the order rows were written in.
async fn output_digest(client: &tokio_postgres::Client) -> (String, String) {
    let d = |t: &str| format!("SELECT md5(string_agg(x::text, '|' ORDER BY pair, ts)) FROM {t} x");
    let a: String = client
        .query_one(&d("indicators"), &[])
        .await
        .unwrap()
        .get(0);
    let b: String = client
        .query_one(&d("regression"), &[])
        .await
        .unwrap()
        .get(0);
    (a, b)
}

#[tokio::test]
async fn killed_mid_run_and_run_again_gives_the_same_tables_as_one_clean_run() {
    let clean_url = postgres().database("worker_clean");
    let killed_url = postgres().database("worker_killed");
    for url in [&clean_url, &killed_url] {
        let client = db::connect(url).await.unwrap();
        db::init(&client, "bars_1m").await.unwrap();
        for pair in ["EURUSD", "GBPUSD", "USDJPY"] {
            seed::seed_file(&client, "bars_1m", &data(pair))
                .await
                .unwrap();
        }
    }
    let clean = run::run(options(&clean_url, "clean", 2)).await.unwrap();
    assert_eq!(clean.partitions_done, 12);

    // The killed worker's leases are short, so that the next one waits little for them; the
    // next one's are not: a lease shorter than a partition takes on a loaded machine would be
    // taken over by its own other task until the partition ran out of attempts.
    let worker = |url: &str, lease: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_ephemera-worker"))
            .args([
                "run",
                "--run-id",
                "test",
                "--concurrency",
                "2",
                "--lease-seconds",
                lease,
            ])
            .args(["--database-url", url])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let client = db::connect(&killed_url).await.unwrap();
    common::read_run(&client, "test").await;
    let mut child = worker(&killed_url, "2");
    // Kill it once some partitions are done and others are in flight.
    let t0 = std::time::Instant::now();
    loop {
        let done = client
            .query_one(
                "SELECT count(*) FROM ephemera.partitions WHERE state = 'done'",
                &[],
            )
            .await
            .map(|r| r.get::<_, i64>(0))
            .unwrap_or(0);
        if done >= 2 {
            break;
        }
        assert!(
            t0.elapsed().as_secs() < 120,
            "the worker never finished a partition"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    child.kill().unwrap(); // SIGKILL: no cleanup, leases left behind
    child.wait().unwrap();
    let in_flight = count(
        &client,
        "SELECT count(*) FROM ephemera.partitions WHERE state <> 'done'",
    )
    .await;
    assert!(in_flight > 0, "killed too late to test anything");

    // The next worker waits out the dead one's leases and takes its partitions over.
    let status = worker(&killed_url, "600").wait().unwrap();
    assert!(status.success());
    assert_eq!(
        count(
            &client,
            "SELECT count(*) FROM ephemera.partitions WHERE state = 'done'"
        )
        .await,
        12
    );
    let clean_client = db::connect(&clean_url).await.unwrap();
    common::read_run(&clean_client, "test").await;
    assert_eq!(
        output_digest(&client).await,
        output_digest(&clean_client).await
    );
    assert_eq!(
        count(&client, "SELECT count(*) FROM indicators").await,
        count(&clean_client, "SELECT count(*) FROM indicators").await
    );
}
