//! The real worker binary at the end of the real state machine: the deployed ASL runs in moto,
//! its Lambdas are the real handlers, and the worker (standing in for the instance, with a local
//! IMDSv2) says "started", takes the token, heartbeats and reports its summary.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ephemera_contract::logs::worker_log_stream;
use ephemera_tests::e2e::State;
use ephemera_tests::iam::worker_log_group;
use ephemera_tests::postgres::postgres;
use ephemera_tests::{clients, e2e, fixtures, fresh_region, harness};
use ephemera_worker::{db, outputs, queue, seed, store};
use serde_json::json;

/// The local IMDS, following the test's instance id and notice flag.
async fn imds(instance_id: Arc<Mutex<String>>, spot_notice: Arc<Mutex<bool>>) -> String {
    ephemera_tests::imds::serve(
        move || instance_id.lock().unwrap().clone(),
        move || spot_notice.lock().unwrap().then(chrono::Utc::now),
    )
    .await
}

/// The first attempt's instance of worker `worker` (1..=worker.count) of the run.
async fn instance_of_worker(region: &str, run_id: &str, worker: u32) -> String {
    let worker = worker.to_string();
    fixtures::instance_tagged(
        region,
        run_id,
        &[
            ("tag:ephemera:attempt", "1"),
            ("tag:ephemera:worker", &worker),
        ],
    )
    .await
}

fn worker(
    region: &str,
    db_url: &str,
    imds_url: &str,
    run_id: &str,
    attempt: u32,
) -> tokio::process::Child {
    worker_with(
        region,
        db_url,
        imds_url,
        run_id,
        attempt,
        &[
            "--stages",
            &[PER_PAIR_STAGES, CROSS_PAIR_STAGES, &["validate", "export"]]
                .concat()
                .join(","),
            "--export",
            &format!("s3://{BUCKET}/runs/{run_id}/"),
        ],
    )
}

fn worker_with(
    region: &str,
    db_url: &str,
    imds_url: &str,
    run_id: &str,
    attempt: u32,
    stages: &[&str],
) -> tokio::process::Child {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_ephemera-worker"));
    // The worker's instance role, from the local IMDS: held to the template's WorkerRole policy.
    ephemera_tests::instance_env(&mut cmd, region, imds_url);
    cmd.arg("run")
        .args(stages)
        .args(["--concurrency", "2"])
        .args(["--database-url", db_url, "--run-id", run_id])
        .args(["--attempt", &attempt.to_string()])
        .args([
            "--ssm-prefix",
            &format!("/ephemera/runs/{run_id}"),
            "--heartbeat-seconds",
            "30",
        ])
        // The stack's group, as launch-worker's user data names it.
        .args(["--log-group", &worker_log_group()])
        // launch-worker vended the run's session: its S3 and log calls are made with it (the
        // instance role has no S3 or log grant).
        .arg("--run-session")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

const BUCKET: &str = ephemera_tests::iam::EXPORT_BUCKET;

/// The export bucket, created by whichever test comes first: bucket names are the account's,
/// not a region's, and the tests run side by side (each run writes under its own prefix).
async fn export_bucket(s3: &aws_sdk_s3::Client, region: &str) {
    fixtures::bucket(s3, BUCKET, region).await;
}
/// A triangle's three pairs, so the cross-pair stages have something to cross.
const PAIRS: [&str; 3] = ["EURGBP", "EURUSD", "GBPUSD"];
const MONTHS: usize = 2;
const PER_PAIR_STAGES: &[&str] = &["indicators", "regression", "regime"];
/// One partition per month over all pairs; arbitrage writes two tables, the others one.
const CROSS_PAIR_STAGES: &[&str] = &["currency-index", "arbitrage", "causality"];
const CROSS_PAIR_TABLES: usize = 4;
/// Feature partitions, each followed by a validate and an export partition.
const FEATURE_PARTITIONS: usize =
    PAIRS.len() * MONTHS * PER_PAIR_STAGES.len() + MONTHS * CROSS_PAIR_STAGES.len();
/// Validate (and export) partitions: one per (pair, month), one per month over all pairs.
const CHECKED_PARTITIONS: usize = PAIRS.len() * MONTHS + MONTHS;
const PARTITIONS: usize = FEATURE_PARTITIONS + 2 * CHECKED_PARTITIONS;
const OBJECTS: usize = PAIRS.len() * MONTHS * PER_PAIR_STAGES.len() + MONTHS * CROSS_PAIR_TABLES;

#[tokio::test]
async fn the_real_worker_completes_a_run_and_resumes_after_a_spot_interruption() {
    let run_id = "worker-e2e";
    let region = fresh_region();
    let db_url = postgres().database("worker_e2e");
    let client = db::connect(&db_url).await.unwrap();
    db::init(&client, "bars_1m").await.unwrap();
    for pair in PAIRS {
        let csv = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join(format!("../data/fx-1m/{pair}.csv.gz"));
        seed::seed_file(&client, "bars_1m", &csv).await.unwrap();
    }

    let aws = clients(region);
    let net = fixtures::network(&aws).await;
    let inbox = fixtures::inbox(region, "ephemera-reports").await;
    let mut spec = fixtures::runspec(run_id, &net, Some(&inbox.topic_arn));
    export_bucket(&aws.s3, region).await;
    // The workers' log group, as the template creates it.
    let logs = aws_sdk_cloudwatchlogs::Client::new(&ephemera_tests::sdk_config(region));
    logs.create_log_group()
        .log_group_name(worker_log_group())
        .send()
        .await
        .unwrap();
    // Every partition of every stage; the export checked by verify-completion.
    spec["expect"] = json!({"partitions": PARTITIONS, "min_rows": 100000,
                            "export_prefix": format!("s3://{BUCKET}/runs/{run_id}/")});
    spec["limits"]["heartbeat_seconds"] = json!(30);
    let machine = e2e::create_state_machine(region).await;
    let execution = e2e::start(region, &machine, &format!("{run_id}-1"), &spec).await;

    // Attempt 1 gets a Spot notice at once: it stops before claiming and reports it.
    let instance_id = Arc::new(Mutex::new(String::new()));
    let notice = Arc::new(Mutex::new(true));
    let imds_url = imds(instance_id.clone(), notice.clone()).await;
    let first_instance = fixtures::instance_of(region, run_id, "1").await;
    *instance_id.lock().unwrap() = first_instance.clone();
    let first = worker(region, &db_url, &imds_url, run_id, 1)
        .wait_with_output()
        .await
        .unwrap();
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );

    // The state machine relaunches; attempt 2 runs undisturbed and does all the work.
    *notice.lock().unwrap() = false;
    let second_instance = fixtures::instance_of(region, run_id, "2").await;
    *instance_id.lock().unwrap() = second_instance.clone();
    let second = worker(region, &db_url, &imds_url, run_id, 2)
        .wait_with_output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&second.stdout);
    assert!(
        second.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&second.stderr)
    );

    let done = e2e::wait(region, &execution, Duration::from_secs(120)).await;
    assert_eq!(done.status, "SUCCEEDED", "{done:?}");
    assert_eq!(done.visited(State::Relaunch), 1, "{:?}", done.path);
    let result = &done.workers[0]["result"];
    assert_eq!(result["partitions_done"], PARTITIONS, "{result}");
    assert_eq!(
        result["manifest"],
        format!("s3://{BUCKET}/runs/{run_id}/manifest.json")
    );
    assert_eq!(
        result["validation"]["partitions"], CHECKED_PARTITIONS,
        "{result}"
    );
    assert_eq!(result["validation"]["problems"], 0, "{result}");
    assert_eq!(result["validation"]["out_of_range"], 0, "{result}");
    let checks = done.document["verification"]["checks"].as_array().unwrap();
    for name in [
        "objects_present",
        "object_sizes",
        "manifest_rows_match_report",
    ] {
        assert!(
            checks.iter().any(|c| c["name"] == name && c["ok"] == true),
            "{name}: {checks:?}"
        );
    }
    assert_eq!(result["partitions_failed"], 0);
    assert!(result["rows_out"].as_u64().unwrap() > 100_000);
    assert_eq!(done.document["verification"]["ok"], true);
    assert_eq!(done.report["attempts"].as_array().unwrap().len(), 2);
    let live = clients(region)
        .ec2
        .describe_instances()
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name("tag:ephemera:run")
                .values(run_id)
                .build(),
        )
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name("instance-state-name")
                .values("running")
                .build(),
        )
        .send()
        .await
        .unwrap();
    assert!(live.reservations().is_empty(), "nothing left running");
    let n: i64 = client
        .query_one(
            "SELECT count(*) FROM ephemera.partitions WHERE state = 'done'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, PARTITIONS as i64);
    for table in ["currency_index", "arbitrage", "arbitrage_events"] {
        let rows: i64 = client
            .query_one(
                &format!(
                    "SELECT count(*) FROM {}",
                    outputs::table(run_id, table).unwrap()
                ),
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert!(rows > 0, "{table} is empty");
    }

    // The manifest in S3 lists every Parquet file with its real size and checksum.
    let s3 = clients(region).s3;
    let get = |key: String| {
        let s3 = s3.clone();
        async move {
            let o = s3
                .get_object()
                .bucket(BUCKET)
                .key(key)
                .send()
                .await
                .unwrap();
            o.body.collect().await.unwrap().into_bytes().to_vec()
        }
    };
    let manifest: ephemera_contract::Manifest =
        serde_json::from_slice(&get(format!("runs/{run_id}/manifest.json")).await).unwrap();
    assert_eq!(manifest.run_id, run_id);
    assert_eq!(
        manifest.objects.len(),
        OBJECTS,
        "every table of every partition"
    );
    for o in &manifest.objects {
        let bytes = get(o.key.clone()).await;
        assert_eq!(bytes.len() as u64, o.bytes, "{}", o.key);
        assert_eq!(Some(store::sha256_hex(&bytes)), o.sha256, "{}", o.key);
    }
    assert_eq!(
        manifest.objects.iter().map(|o| o.rows).sum::<u64>(),
        result["rows_out"].as_u64().unwrap()
    );
    // The report beside the manifest: the timeline has both attempts, and the checks are there.
    let html = String::from_utf8(get(format!("runs/{run_id}/report.html")).await).unwrap();
    assert_eq!(
        html.matches(r#"data-phase="work" data-worker="1" data-attempt="#)
            .count(),
        2
    );
    assert!(html.contains(r#"data-check="manifest_rows_match_report""#));
    assert_eq!(done.report["stored"]["prefix"], format!("runs/{run_id}/"));

    // Each worker shipped its log lines to a stream of its own, with its instance role.
    let lines = |attempt: u32, instance: String| {
        let logs = logs.clone();
        async move {
            logs.get_log_events()
                .log_group_name(worker_log_group())
                .log_stream_name(worker_log_stream(run_id, attempt, &instance))
                .start_from_head(true)
                .send()
                .await
                .unwrap()
                .events()
                .iter()
                .map(|e| e.message().unwrap_or_default().to_string())
                .collect::<Vec<_>>()
        }
    };
    let one = lines(1, first_instance).await;
    let two = lines(2, second_instance).await;
    let has = |lines: &[String], text: &str| lines.iter().any(|l| l.contains(text));
    assert!(has(&one, "said started"), "{one:?}");
    assert!(has(&one, "reported the interruption"), "{one:?}");
    assert!(has(&two, "task token received"), "{two:?}");
    // Its heartbeats, logged as `ephemera status` reads them back (the first at once).
    assert!(
        has(&two, ephemera_contract::logs::HEARTBEAT_MESSAGE),
        "{two:?}"
    );
    assert!(!has(&two, "reported the interruption"), "{two:?}");
    // The lines are the JSON lines the worker writes to stderr.
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(two.iter().all(|l| stderr.contains(l.as_str())), "{two:?}");
    assert!(!has(&two, "not every log line"), "{two:?}");
    let denied: Vec<_> = harness()
        .door
        .denials_in(region)
        .into_iter()
        .filter(|d| d.action.starts_with("logs:"))
        .collect();
    assert!(denied.is_empty(), "{denied:?}");
}

/// How long after the notice is posted the worker may take to report it: it looks every 2 s,
/// then aborts, hands back and sends SendTaskFailure.
const NOTICE_TO_FAILURE: Duration = Duration::from_secs(6);

/// One pair-month of 5-second bars (518,400 rows): a partition that takes many seconds.
async fn one_long_month(client: &tokio_postgres::Client) {
    db::init(client, "bars_1m").await.unwrap();
    client
        .batch_execute(
            "INSERT INTO bars_1m
             SELECT 'EURJPY', ts, p, p + 0.02, p - 0.02, p + 0.01, 100
               FROM (SELECT ts, 150 + sin(extract(epoch FROM ts) / 3600.0)
                                    + 0.01 * cos(extract(epoch FROM ts) / 7.0) AS p
                       FROM generate_series('2023-04-01Z'::timestamptz, '2023-04-30 23:59:55Z',
                                            interval '5 seconds') AS ts) g",
        )
        .await
        .unwrap();
}

/// Until a worker session is inside a partition's transaction, writing its output with COPY.
async fn mid_partition(client: &tokio_postgres::Client) {
    ephemera_tests::eventually(
        "the worker writing a partition",
        Duration::from_secs(120),
        || async move {
            let n: i64 = client
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity
                      WHERE state = 'active' AND query LIKE 'COPY ephemera\\_run\\_% FROM STDIN%'",
                    &[],
                )
                .await
                .ok()?
                .get(0);
            (n > 0).then_some(())
        },
    )
    .await;
}

/// Every partition of `run_id` done, or pending with no lease, its attempt not counted and its
/// output absent; returns how many were handed back.
async fn done_or_handed_back(client: &tokio_postgres::Client, run_id: &str) -> usize {
    let rows = client
        .query(
            "SELECT stage, state, lease_owner, attempts FROM ephemera.partitions
              WHERE run_id = $1 ORDER BY stage",
            &[&run_id],
        )
        .await
        .unwrap();
    let mut handed_back = 0;
    for r in &rows {
        let (stage, state): (String, String) = (r.get(0), r.get(1));
        let out: i64 = client
            .query_one(
                &format!(
                    "SELECT count(*) FROM {}",
                    outputs::table(run_id, &stage).unwrap()
                ),
                &[],
            )
            .await
            .unwrap()
            .get(0);
        match state.as_str() {
            "done" => assert!(out > 500_000, "{stage}: {out}"),
            "pending" => {
                handed_back += 1;
                assert_eq!(out, 0, "{stage}: the interrupted partition rolled back");
                assert_eq!(r.get::<_, Option<String>>(2), None, "{stage}: no lease");
                assert_eq!(r.get::<_, i32>(3), 0, "{stage}: the attempt is not counted");
            }
            other => panic!("{stage} is {other}"),
        }
    }
    handed_back
}

#[tokio::test]
async fn a_spot_notice_mid_partition_fails_the_task_within_seconds_and_hands_the_partition_back() {
    let run_id = "worker-spot-abort";
    let region = fresh_region();
    let db_url = postgres().database("worker_spot_abort");
    let client = db::connect(&db_url).await.unwrap();
    one_long_month(&client).await;

    let aws = clients(region);
    let net = fixtures::network(&aws).await;
    let mut spec = fixtures::runspec(run_id, &net, None);
    spec["expect"] = json!({"partitions": 2, "min_rows": 500000});
    spec["limits"]["heartbeat_seconds"] = json!(30);
    let machine = e2e::create_state_machine(region).await;
    let execution = e2e::start(region, &machine, &format!("{run_id}-1"), &spec).await;

    let instance_id = Arc::new(Mutex::new(String::new()));
    let notice = Arc::new(Mutex::new(false));
    let imds_url = imds(instance_id.clone(), notice.clone()).await;
    *instance_id.lock().unwrap() = fixtures::instance_of(region, run_id, "1").await;
    let stages = ["--stages", "indicators,regression"];
    let first = worker_with(region, &db_url, &imds_url, run_id, 1, &stages);
    mid_partition(&client).await;
    *notice.lock().unwrap() = true;
    let noticed = std::time::Instant::now();
    let first = tokio::time::timeout(Duration::from_secs(60), first.wait_with_output())
        .await
        .expect("the worker ends soon after the notice")
        .unwrap();
    // The worker exits once SendTaskFailure has been answered.
    let notice_to_failure = noticed.elapsed();
    let stderr = String::from_utf8_lossy(&first.stderr);
    assert!(first.status.success(), "{stderr}");
    assert!(
        notice_to_failure < NOTICE_TO_FAILURE,
        "{notice_to_failure:?}\n{stderr}"
    );
    assert!(stderr.contains("reported the interruption"), "{stderr}");
    // This region has no log group: shipping fails, the work and its timing do not.
    assert!(stderr.contains("cannot create the log stream"), "{stderr}");
    assert!(
        stderr.contains("not every log line reached CloudWatch Logs"),
        "{stderr}"
    );

    // Nothing half-written, nothing held.
    let handed_back = done_or_handed_back(&client, run_id).await;
    assert!(handed_back >= 1, "interrupted too late to test anything");
    // Claimable at once by anyone (here a probe, which gives it back).
    let probe = queue::claim(&client, run_id, "probe", 600, 3)
        .await
        .unwrap()
        .expect("an interrupted partition is claimable at once");
    assert!(queue::release(&client, "probe", &probe).await.unwrap());

    // The state machine relaunches; attempt 2 runs undisturbed and does the partition whole.
    *notice.lock().unwrap() = false;
    *instance_id.lock().unwrap() = fixtures::instance_of(region, run_id, "2").await;
    let started = std::time::Instant::now();
    let second = worker_with(region, &db_url, &imds_url, run_id, 2, &stages)
        .wait_with_output()
        .await
        .unwrap();
    let whole_run = started.elapsed();
    assert!(
        second.status.success(),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    eprintln!(
        "notice to SendTaskFailure answered: {notice_to_failure:?}; the undisturbed rerun of \
         {handed_back} partition(s): {whole_run:?}"
    );
    let done = e2e::wait(region, &execution, Duration::from_secs(120)).await;
    assert_eq!(done.status, "SUCCEEDED", "{done:?}");
    assert_eq!(done.visited(State::Relaunch), 1, "{:?}", done.path);
    assert_eq!(done.workers[0]["result"]["partitions_done"], 2);
    assert_eq!(done.workers[0]["result"]["partitions_failed"], 0);
    for stage in ["indicators", "regression"] {
        let n: i64 = client
            .query_one(
                &format!(
                    "SELECT count(*) FROM {}",
                    outputs::table(run_id, stage).unwrap()
                ),
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 518_400, "{stage}");
    }
}

/// SIGTERM (the instance shutting down, or an operator) is not a Spot notice: the worker aborts
/// the partitions in hand, hands them back uncounted, and fails its task with Worker.Failed,
/// which ends the run (only a Spot interruption relaunches) with everything terminated.
#[tokio::test]
async fn sigterm_mid_partition_hands_the_partition_back_and_fails_the_run() {
    let run_id = "worker-sigterm";
    let region = fresh_region();
    let db_url = postgres().database("worker_sigterm");
    let client = db::connect(&db_url).await.unwrap();
    one_long_month(&client).await;

    let aws = clients(region);
    let net = fixtures::network(&aws).await;
    let inbox = fixtures::inbox(region, "ephemera-reports").await;
    let mut spec = fixtures::runspec(run_id, &net, Some(&inbox.topic_arn));
    spec["expect"] = json!({"partitions": 2, "min_rows": 500000});
    spec["limits"]["heartbeat_seconds"] = json!(30);
    let machine = e2e::create_state_machine(region).await;
    let execution = e2e::start(region, &machine, &format!("{run_id}-1"), &spec).await;

    let instance_id = Arc::new(Mutex::new(String::new()));
    let imds_url = imds(instance_id.clone(), Arc::new(Mutex::new(false))).await;
    *instance_id.lock().unwrap() = fixtures::instance_of(region, run_id, "1").await;
    let worker = worker_with(
        region,
        &db_url,
        &imds_url,
        run_id,
        1,
        &["--stages", "indicators,regression"],
    );
    mid_partition(&client).await;
    let pid = worker.id().expect("the worker is running").to_string();
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(kill.success());
    let out = tokio::time::timeout(Duration::from_secs(60), worker.wait_with_output())
        .await
        .expect("the worker ends soon after SIGTERM")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Reported, so the worker's own exit is clean: the run's failure is the state machine's.
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("SIGTERM: aborting the partitions in hand"),
        "{stderr}"
    );
    assert!(!stderr.contains("reported the interruption"), "{stderr}");
    let handed_back = done_or_handed_back(&client, run_id).await;
    assert!(handed_back >= 1, "interrupted too late to test anything");

    let done = e2e::wait(region, &execution, Duration::from_secs(120)).await;
    assert_eq!(done.status, "FAILED", "{done:?}");
    assert_eq!(done.error.as_deref(), Some("Worker.Failed"), "{done:?}");
    // The worker's cause, as AWS passes it on (tests/moto/aws_answers.py teaches moto so).
    assert_eq!(
        done.cause.as_deref(),
        Some("stopped by SIGTERM before the work was done"),
        "{done:?}"
    );
    assert_eq!(done.visited(State::Relaunch), 0, "{:?}", done.path);
    assert_eq!(done.visited(State::Cleanup), 1, "{:?}", done.path);
    let instances = fixtures::instances_of(&aws, run_id).await;
    assert!(
        instances
            .iter()
            .all(|(_, s)| s == "terminated" || s == "shutting-down"),
        "{instances:?}"
    );
    assert_eq!(done.report["error"]["Error"], "Worker.Failed");
    let mut emails = inbox.read().await;
    if emails.is_empty() {
        tokio::time::sleep(Duration::from_secs(1)).await;
        emails = inbox.read().await;
    }
    assert_eq!(emails.len(), 1, "{emails:?}");
}

/// An object of the export bucket, as JSON.
async fn s3_json(s3: &aws_sdk_s3::Client, key: &str) -> serde_json::Value {
    let o = s3
        .get_object()
        .bucket(BUCKET)
        .key(key)
        .send()
        .await
        .unwrap();
    serde_json::from_slice(&o.body.collect().await.unwrap().into_bytes()).unwrap()
}

/// `ephemera-worker exec` on the instance, running `sh -c script` for `run_id`'s `attempt`
/// (with `options` before the `--`).
fn job(
    region: &str,
    imds_url: &str,
    run_id: &str,
    attempt: u32,
    options: &[&str],
    script: &str,
) -> tokio::process::Child {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_ephemera-worker"));
    ephemera_tests::instance_env(&mut cmd, region, imds_url);
    // As launch-worker's user data puts it: the link's options before `--`, the job after.
    cmd.args(["exec", "--grace", "5", "--run-id", run_id])
        .args(["--attempt", &attempt.to_string()])
        .args(["--ssm-prefix", &format!("/ephemera/runs/{run_id}")])
        .args([
            "--heartbeat-seconds",
            "30",
            "--log-group",
            &worker_log_group(),
        ])
        .arg("--run-session")
        .args(options)
        .args(["--", "sh", "-c", script])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// Any command as the run's worker: its inputs fetched from S3, a job stopped by a Spot notice
/// (SIGTERM, then its grace) has its checkpoint saved and runs again on the relaunch, on another
/// machine, with the checkpoint back and told it resumes; its outputs (one in parts) stored with
/// their manifest; one that exits non-zero ends the run with its exit status and the last lines
/// of its stderr in the report.
#[tokio::test]
async fn any_command_under_exec_is_relaunched_after_spot_and_reported_by_its_exit_status() {
    let region = fresh_region();
    let aws = clients(region);
    let net = fixtures::network(&aws).await;
    let inbox = fixtures::inbox(region, "ephemera-reports").await;
    let logs = aws_sdk_cloudwatchlogs::Client::new(&ephemera_tests::sdk_config(region));
    logs.create_log_group()
        .log_group_name(worker_log_group())
        .send()
        .await
        .unwrap();
    let machine = e2e::create_state_machine(region).await;
    let base = std::env::temp_dir().join(format!("ephemera-exec-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base).unwrap();
    let seen = base.join("attempts");
    export_bucket(&aws.s3, region).await;
    let run_id = "exec-spot";
    // The job's inputs: an archive in the export bucket.
    let inputs = format!("jobs/{run_id}/inputs.tar.gz");
    aws.s3
        .put_object()
        .bucket(BUCKET)
        .key(&inputs)
        .body(fixtures::tar_gz(&[("input.txt", b"hello\n")]).into())
        .send()
        .await
        .unwrap();
    // The checkpoint's file and one output are 9 MiB (and a byte): past the store's 8 MiB, so
    // both go up in parts.
    // The trap first, then the line that says the job runs: the notice is posted only once the
    // line is there, so SIGTERM never comes before the job can save its state.
    let script = format!(
        "trap 'head -c 9437184 /dev/zero > \"$EPHEMERA_CHECKPOINT/big.tmp\" && mv \"$EPHEMERA_CHECKPOINT/big.tmp\" \"$EPHEMERA_CHECKPOINT/big\" && echo 2 > \"$EPHEMERA_CHECKPOINT/step\"; echo stopping at the notice >&2; exit 0' TERM; \
         echo \"attempt $EPHEMERA_ATTEMPT resumed $EPHEMERA_RESUMED restored $EPHEMERA_CHECKPOINT_RESTORED input $(cat input.txt)\" >> {seen}; \
         if [ \"$EPHEMERA_RESUMED\" = true ]; then \
           test \"$(cat \"$EPHEMERA_CHECKPOINT/step\")\" = 2 && test \"$(wc -c < \"$EPHEMERA_CHECKPOINT/big\")\" -eq 9437184 || exit 9; \
           mkdir -p out/step=2 && printf 'a,b\\n1,2\\n' > out/step=2/part.csv && head -c 9437185 /dev/zero > out/model.bin && exit 0; fi; \
         while true; do sleep 0.1; done",
        seen = seen.display(),
    );

    let to = format!("s3://{BUCKET}/runs/{run_id}/");
    let fetch = format!("s3://{BUCKET}/{inputs}");
    // Under the run's own prefix: CheckQuota refuses a checkpoint place anywhere else.
    let checkpoint_to = format!("s3://{BUCKET}/runs/{run_id}/checkpoints/");
    let options = |workdir: &str| -> Vec<String> {
        [
            "--workdir",
            workdir,
            "--fetch",
            &fetch,
            "--checkpoint",
            "ckpt",
            "--checkpoint-to",
            &checkpoint_to,
            "--outputs",
            "out",
            "--to",
            &to,
        ]
        .map(String::from)
        .to_vec()
    };
    let mut spec = fixtures::runspec(run_id, &net, Some(&inbox.topic_arn));
    let mut args = vec![json!("exec")];
    args.extend(
        options("/var/lib/ephemera/work")
            .into_iter()
            .map(|o| json!(o)),
    );
    args.extend([json!("--"), json!("sh"), json!("-c"), json!(script)]);
    spec["worker"]["args"] = json!(args);
    spec["expect"] = json!({"export_prefix": to});
    spec["limits"]["heartbeat_seconds"] = json!(30);
    let execution = e2e::start(region, &machine, &format!("{run_id}-1"), &spec).await;
    let instance_id = Arc::new(Mutex::new(String::new()));
    let notice = Arc::new(Mutex::new(false));
    let imds_url = imds(instance_id.clone(), notice.clone()).await;
    *instance_id.lock().unwrap() = fixtures::instance_of(region, run_id, "1").await;
    // Each attempt on a machine of its own: an empty working directory.
    let first_options = options(&base.join("w1").display().to_string());
    let first_options: Vec<&str> = first_options.iter().map(String::as_str).collect();
    let first = job(region, &imds_url, run_id, 1, &first_options, &script);
    // Spot's notice once the job runs (its trap is set): posted earlier, SIGTERM killed the
    // shell before its trap and the checkpoint was saved empty.
    ephemera_tests::eventually(
        "the first attempt's job runs",
        Duration::from_secs(60),
        || {
            let seen = seen.clone();
            async move {
                std::fs::read_to_string(&seen)
                    .ok()
                    .filter(|s| s.contains("attempt 1"))
            }
        },
    )
    .await;
    *notice.lock().unwrap() = true;
    let first = first.wait_with_output().await.unwrap();
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    *notice.lock().unwrap() = false;
    *instance_id.lock().unwrap() = fixtures::instance_of(region, run_id, "2").await;
    let second_options = options(&base.join("w2").display().to_string());
    let second_options: Vec<&str> = second_options.iter().map(String::as_str).collect();
    let second = job(region, &imds_url, run_id, 2, &second_options, &script)
        .wait_with_output()
        .await
        .unwrap();
    assert!(
        second.status.success(),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    let done = e2e::wait(region, &execution, Duration::from_secs(120)).await;
    assert_eq!(done.status, "SUCCEEDED", "{done:?}");
    assert_eq!(done.visited(State::Relaunch), 1, "{:?}", done.path);
    let result = &done.workers[0]["result"];
    assert_eq!(result["job"]["exit_code"], 0, "{result}");
    assert!(
        result["job"]["command"]
            .as_str()
            .unwrap()
            .starts_with("sh -c "),
        "{result}"
    );
    assert_eq!(
        std::fs::read_to_string(&seen).unwrap(),
        "attempt 1 resumed false restored 0 input hello\nattempt 2 resumed true restored 2 input hello\n"
    );
    // The notice's save (its 9 MiB file in parts) came back whole: the second attempt checked
    // it above. The job succeeded, so its checkpoints are gone (deleted once its outputs were
    // stored, signed as the worker role).
    let left = aws
        .s3
        .list_objects_v2()
        .bucket(BUCKET)
        .prefix(format!("runs/{run_id}/checkpoints/{run_id}/"))
        .send()
        .await
        .unwrap();
    assert_eq!(left.contents().len(), 0, "{:?}", left.contents());
    // Its outputs, stored with their manifest and checked by verify-completion.
    // Under the worker's own folder: each worker of a job lists its own share.
    assert_eq!(
        result["manifest"],
        format!("{to}worker-1/manifest.json"),
        "{result}"
    );
    let checks = done.document["verification"]["checks"].as_array().unwrap();
    for name in ["objects_present", "object_sizes"] {
        assert!(
            checks.iter().any(|c| c["name"] == name && c["ok"] == true),
            "{name}: {checks:?}"
        );
    }
    let stored = aws
        .s3
        .get_object()
        .bucket(BUCKET)
        .key(format!("runs/{run_id}/worker-1/step=2/part.csv"))
        .send()
        .await
        .unwrap();
    assert_eq!(stored.content_length(), Some(8));
    let model = aws
        .s3
        .get_object()
        .bucket(BUCKET)
        .key(format!("runs/{run_id}/worker-1/model.bin"))
        .send()
        .await
        .unwrap();
    assert_eq!(model.content_length(), Some(9437185));
    let bytes = model.body.collect().await.unwrap().into_bytes();
    let manifest = s3_json(&aws.s3, &format!("runs/{run_id}/worker-1/manifest.json")).await;
    let listed = manifest["objects"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["key"] == format!("runs/{run_id}/worker-1/model.bin"))
        .expect("model.bin in the manifest");
    assert_eq!(listed["sha256"], store::sha256_hex(&bytes), "{manifest}");
    std::fs::remove_dir_all(&base).unwrap();

    // A job that fails: its status and its stderr's last lines reach the report.
    let run_id = "exec-fails";
    let mut spec = fixtures::runspec(run_id, &net, Some(&inbox.topic_arn));
    let failing = "echo reading the input; echo 'no such column: price' >&2; exit 3";
    spec["worker"]["args"] = json!(["exec", "--", "sh", "-c", failing]);
    spec["limits"]["heartbeat_seconds"] = json!(30);
    let execution = e2e::start(region, &machine, &format!("{run_id}-1"), &spec).await;
    *instance_id.lock().unwrap() = fixtures::instance_of(region, run_id, "1").await;
    let out = job(region, &imds_url, run_id, 1, &[], failing)
        .wait_with_output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let done = e2e::wait(region, &execution, Duration::from_secs(120)).await;
    assert_ne!(done.status, "SUCCEEDED", "{done:?}");
    let error = done.workers[0]["error"].to_string();
    assert!(error.contains("Worker.Failed"), "{error}");
    assert!(
        error.contains("exited with status 3") && error.contains("no such column: price"),
        "{error}"
    );
    assert_eq!(
        done.visited(State::Relaunch),
        0,
        "a failed job is not relaunched"
    );
}

/// A job that ignores SIGTERM: on the notice it is killed after its grace, its checkpoint is
/// saved as it left it, and the relaunch resumes from that save (the attempt's own, fenced:
/// the relaunch took the place over before it fetched a file).
#[tokio::test]
async fn a_job_that_ignores_sigterm_is_killed_after_its_grace_and_resumes_from_its_last_save() {
    let region = fresh_region();
    let aws = clients(region);
    let net = fixtures::network(&aws).await;
    let logs = aws_sdk_cloudwatchlogs::Client::new(&ephemera_tests::sdk_config(region));
    logs.create_log_group()
        .log_group_name(worker_log_group())
        .send()
        .await
        .unwrap();
    let machine = e2e::create_state_machine(region).await;
    let base = std::env::temp_dir().join(format!("ephemera-deaf-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base).unwrap();
    let seen = base.join("attempts");
    export_bucket(&aws.s3, region).await;
    let run_id = "exec-deaf";
    // Attempt 1 writes its step whole and says it runs, then ignores SIGTERM and goes on.
    // Attempt 2 says which step it found and exits 0.
    let script = format!(
        "trap '' TERM; \
         if [ \"$EPHEMERA_RESUMED\" = true ]; then \
           echo \"attempt $EPHEMERA_ATTEMPT restored $EPHEMERA_CHECKPOINT_RESTORED step $(cat \"$EPHEMERA_CHECKPOINT/step\")\" >> {seen}; exit 0; fi; \
         echo 41 > \"$EPHEMERA_CHECKPOINT/step.tmp\" && mv \"$EPHEMERA_CHECKPOINT/step.tmp\" \"$EPHEMERA_CHECKPOINT/step\"; \
         echo \"attempt $EPHEMERA_ATTEMPT runs\" >> {seen}; \
         while true; do sleep 0.1; done",
        seen = seen.display(),
    );
    // Under the run's own prefix: CheckQuota refuses a checkpoint place anywhere else.
    let checkpoint_to = format!("s3://{BUCKET}/runs/{run_id}/checkpoints/");
    let options = |workdir: &str| -> Vec<String> {
        [
            "--workdir",
            workdir,
            "--checkpoint",
            "ckpt",
            "--checkpoint-to",
            &checkpoint_to,
        ]
        .map(String::from)
        .to_vec()
    };
    let mut spec = fixtures::runspec(run_id, &net, None);
    let mut args = vec![json!("exec")];
    args.extend(
        options("/var/lib/ephemera/work")
            .into_iter()
            .map(|o| json!(o)),
    );
    args.extend([json!("--"), json!("sh"), json!("-c"), json!(script)]);
    spec["worker"]["args"] = json!(args);
    spec["limits"]["heartbeat_seconds"] = json!(30);
    let execution = e2e::start(region, &machine, &format!("{run_id}-1"), &spec).await;
    let instance_id = Arc::new(Mutex::new(String::new()));
    let notice = Arc::new(Mutex::new(false));
    let imds_url = imds(instance_id.clone(), notice.clone()).await;
    *instance_id.lock().unwrap() = fixtures::instance_of(region, run_id, "1").await;
    let first_options = options(&base.join("w1").display().to_string());
    let first_options: Vec<&str> = first_options.iter().map(String::as_str).collect();
    let first = job(region, &imds_url, run_id, 1, &first_options, &script);
    ephemera_tests::eventually(
        "the first attempt's job runs",
        Duration::from_secs(60),
        || {
            let seen = seen.clone();
            async move {
                std::fs::read_to_string(&seen)
                    .ok()
                    .filter(|s| s.contains("attempt 1 runs"))
            }
        },
    )
    .await;
    *notice.lock().unwrap() = true;
    let started = std::time::Instant::now();
    let first = first.wait_with_output().await.unwrap();
    let stderr = String::from_utf8_lossy(&first.stderr);
    assert!(first.status.success(), "{stderr}");
    // It was not stopped by SIGTERM: killed once its grace (5 s) ran out, then saved.
    assert!(stderr.contains("SIGKILL"), "{stderr}");
    assert!(started.elapsed() >= Duration::from_secs(5), "{stderr}");
    *notice.lock().unwrap() = false;
    *instance_id.lock().unwrap() = fixtures::instance_of(region, run_id, "2").await;
    let second_options = options(&base.join("w2").display().to_string());
    let second_options: Vec<&str> = second_options.iter().map(String::as_str).collect();
    let second = job(region, &imds_url, run_id, 2, &second_options, &script)
        .wait_with_output()
        .await
        .unwrap();
    assert!(
        second.status.success(),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    let done = e2e::wait(region, &execution, Duration::from_secs(120)).await;
    assert_eq!(done.status, "SUCCEEDED", "{done:?}");
    assert_eq!(done.visited(State::Relaunch), 1, "{:?}", done.path);
    assert_eq!(
        std::fs::read_to_string(&seen).unwrap(),
        "attempt 1 runs\nattempt 2 restored 1 step 41\n"
    );
    std::fs::remove_dir_all(&base).unwrap();
}

/// A job of two workers run to its end: each worker's instance played by the real binary with
/// its own IMDS, `--worker n --workers 2` as the user data gives them, its outputs under `to`.
async fn two_shares(
    region: &'static str,
    run_id: &str,
    script: &str,
    expect: serde_json::Value,
) -> e2e::Run {
    let aws = clients(region);
    let net = fixtures::network(&aws).await;
    let inbox = fixtures::inbox(region, "ephemera-reports").await;
    let logs = aws_sdk_cloudwatchlogs::Client::new(&ephemera_tests::sdk_config(region));
    let _ = logs
        .create_log_group()
        .log_group_name(worker_log_group())
        .send()
        .await;
    export_bucket(&aws.s3, region).await;
    let machine = e2e::create_state_machine(region).await;
    let to = format!("s3://{BUCKET}/runs/{run_id}/");
    let mut spec = fixtures::runspec(run_id, &net, Some(&inbox.topic_arn));
    spec["worker"]["count"] = json!(2);
    spec["worker"]["args"] = json!([
        "exec",
        "--outputs",
        "out",
        "--to",
        to,
        "--",
        "sh",
        "-c",
        script
    ]);
    spec["expect"] = expect;
    spec["limits"]["heartbeat_seconds"] = json!(30);
    let execution = e2e::start(region, &machine, &format!("{run_id}-1"), &spec).await;
    let base = std::env::temp_dir().join(format!("ephemera-{run_id}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let mut jobs = vec![];
    for worker in [1u32, 2] {
        let instance = instance_of_worker(region, run_id, worker).await;
        let imds_url = imds(Arc::new(Mutex::new(instance)), Arc::new(Mutex::new(false))).await;
        // Each instance's own empty disk.
        let workdir = base.join(format!("w{worker}"));
        std::fs::create_dir_all(&workdir).unwrap();
        let workdir = workdir.display().to_string();
        let (n, workers) = (worker.to_string(), "2".to_string());
        let options = [
            "--worker",
            &n,
            "--workers",
            &workers,
            "--workdir",
            &workdir,
            "--outputs",
            "out",
            "--to",
            &to,
        ];
        jobs.push(job(region, &imds_url, run_id, 1, &options, script));
    }
    for j in jobs {
        let out = j.wait_with_output().await.unwrap();
        // The worker itself ends well whatever its command did: it reported how that ended.
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let finished = e2e::wait(region, &execution, Duration::from_secs(120)).await;
    let mut emails = inbox.read().await;
    if emails.is_empty() {
        tokio::time::sleep(Duration::from_secs(1)).await;
        emails = inbox.read().await;
    }
    let _ = std::fs::remove_dir_all(&base);
    e2e::Run {
        region,
        execution,
        finished,
        emails,
        instances: fixtures::instances_of(&aws, run_id).await,
        worker_log: vec![],
    }
}

/// Writes the worker's share as `out/part.txt`, and worker 1 one file more.
const SHARES: &str =
    "mkdir -p out/more && echo \"share $EPHEMERA_WORKER of $EPHEMERA_WORKERS\" > out/part.txt && \
     if [ \"$EPHEMERA_WORKER\" = 1 ]; then echo more > out/more/extra.txt; fi";

/// A job's workers each do their own share, which nobody else redoes: one whose command
/// exits 1 fails the run, naming it, though the other reported; every instance terminated and
/// the report sent.
#[tokio::test]
async fn a_job_whose_second_worker_fails_fails_naming_it_with_nothing_left_running() {
    let region = fresh_region();
    let script = format!(
        "{SHARES}; if [ \"$EPHEMERA_WORKER\" = 2 ]; then echo 'share 2 is broken' >&2; exit 1; fi"
    );
    let r = two_shares(
        region,
        "shares-fail",
        &script,
        json!({"export_prefix": format!("s3://{BUCKET}/runs/shares-fail/")}),
    )
    .await;
    let done = &r.finished;
    assert_eq!(done.status, "FAILED", "{done:?}");
    assert_eq!(done.error.as_deref(), Some("Worker.Failed"), "{done:?}");
    let cause = done.cause.clone().unwrap_or_default();
    assert!(
        cause.starts_with("worker 2 of 2 failed: Worker.Failed: `sh -c "),
        "{cause}"
    );
    assert!(
        cause.contains("exited with status 1") && cause.contains("share 2 is broken"),
        "{cause}"
    );
    assert!(cause.contains("1 of 2 reported"), "{cause}");
    // Worker 1 did report: before, that alone passed the run on its outputs.
    let slot = |n: u64| {
        done.workers
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["slot"] == n)
            .cloned()
            .unwrap()
    };
    assert_eq!(slot(1)["result"]["job"]["exit_code"], 0, "{}", done.workers);
    assert!(slot(2)["result"].is_null(), "{}", done.workers);
    assert_eq!(done.visited(State::VerifyCompletion), 1, "{:?}", done.path);
    assert_eq!(done.visited(State::Relaunch), 0, "{:?}", done.path);
    assert_eq!(done.visited(State::ReleaseWorker), 1, "{:?}", done.path);
    assert_eq!(done.visited(State::Cleanup), 1, "{:?}", done.path);
    // Both instances terminated, nothing left running.
    assert_eq!(r.instances.len(), 2, "{:?}", r.instances);
    r.assert_nothing_left();
    // The report is sent, saying why.
    assert_eq!(done.report["outcome"], "FAILED", "{}", done.report);
    assert_eq!(done.report["error"]["Error"], "Worker.Failed");
    let email = r.assert_email("FAILED");
    assert!(
        email.body.contains("worker 2 of 2 failed"),
        "{}",
        email.body
    );
}

/// Both workers' commands exit 0: two manifests, each in its worker's folder listing its own
/// files, both verified; `expect.min_objects` counts both together by default, each worker's
/// apart with `counts: per_worker`.
#[tokio::test]
async fn a_job_of_two_workers_verifies_both_manifests_and_counts_in_total_or_per_worker() {
    let region = fresh_region();
    let aws = clients(region);
    let run_id = "shares-ok";
    let to = format!("s3://{BUCKET}/runs/{run_id}/");
    // Three objects in all (two and one): no worker's alone reaches three.
    let r = two_shares(
        region,
        run_id,
        SHARES,
        json!({"export_prefix": to, "min_objects": 3}),
    )
    .await;
    let done = &r.finished;
    assert_eq!(done.status, "SUCCEEDED", "{done:?}");
    for (worker, files) in [
        (1, vec!["more/extra.txt", "part.txt"]),
        (2, vec!["part.txt"]),
    ] {
        let folder = format!("runs/{run_id}/worker-{worker}/");
        let manifest = s3_json(&aws.s3, &format!("{folder}manifest.json")).await;
        let keys: Vec<&str> = manifest["objects"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["key"].as_str().unwrap())
            .collect();
        let expected: Vec<String> = files.iter().map(|f| format!("{folder}{f}")).collect();
        assert_eq!(keys, expected, "worker {worker}: {manifest}");
        let share = aws
            .s3
            .get_object()
            .bucket(BUCKET)
            .key(format!("{folder}part.txt"))
            .send()
            .await
            .unwrap();
        assert_eq!(
            share.body.collect().await.unwrap().into_bytes().as_ref(),
            format!("share {worker} of 2\n").as_bytes()
        );
    }
    let verification = &done.document["verification"];
    let checks = verification["checks"].as_array().unwrap();
    let detail = |name: &str| {
        checks
            .iter()
            .find(|c| c["name"] == name && c["ok"] == true)
            .map(|c| c["detail"].as_str().unwrap_or_default().to_string())
            .unwrap_or_else(|| panic!("{name} did not pass: {checks:?}"))
    };
    assert_eq!(
        detail("workers"),
        "2 of 2 worker(s) reported (1, 2): every share of the job is done"
    );
    assert_eq!(detail("objects_present"), "3 objects found");
    detail("object_sizes");
    assert_eq!(
        detail("min_objects"),
        "3 objects listed in 2 manifests, at least 3 expected in total"
    );
    assert!(
        detail("manifest_location").starts_with("2 manifest(s), each in its worker's folder"),
        "{checks:?}"
    );
    // Nothing of the feature worker's queue in a job's checks.
    for name in ["no_failed_partitions", "manifest_rows_match_report"] {
        assert!(!checks.iter().any(|c| c["name"] == name), "{checks:?}");
    }
    assert_eq!(verification["outputs"]["objects"], 3, "{verification}");
    assert_eq!(verification["outputs"]["manifests"], 2, "{verification}");
    // The report beside both folders, not in the first one.
    s3_json(&aws.s3, &format!("runs/{run_id}/report.json")).await;
    r.assert_nothing_left();

    // The same job, at least two objects from each worker: worker 2 wrote one.
    let run_id = "shares-each";
    let r = two_shares(
        region,
        run_id,
        SHARES,
        json!({"export_prefix": format!("s3://{BUCKET}/runs/{run_id}/"), "min_objects": 2, "counts": "per_worker"}),
    )
    .await;
    let done = &r.finished;
    assert_eq!(done.status, "FAILED", "{done:?}");
    assert_eq!(
        done.error.as_deref(),
        Some("Ephemera.VerificationFailed"),
        "{done:?}"
    );
    let cause = done.cause.clone().unwrap_or_default();
    assert!(
        cause.contains("worker 2 lists 1 objects, at least 2 expected of each worker"),
        "{cause}"
    );
    r.assert_nothing_left();
    r.assert_email("FAILED");
}

/// The money deadline launch-worker handed the attempt: `--budget-seconds` in the user data of
/// the instance.
async fn budget_seconds_of(ec2: &aws_sdk_ec2::Client, instance_id: &str) -> Option<u64> {
    use base64::Engine;
    let attr = ec2
        .describe_instance_attribute()
        .instance_id(instance_id)
        .attribute(aws_sdk_ec2::types::InstanceAttributeName::UserData)
        .send()
        .await
        .unwrap();
    let encoded = attr.user_data()?.value()?;
    let script = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .unwrap();
    let command = ephemera_core::userdata::worker_command(&String::from_utf8(script).unwrap())?;
    let at = command.iter().position(|a| a == "--budget-seconds")?;
    command.get(at + 1)?.parse().ok()
}

/// The issue's second test: a job that never ends, with a budget that buys its attempt only a
/// short runtime past the boot deadline, the grace and the sweeper interval that every attempt
/// reserves (75 s here, to keep the test short: the arithmetic is the same for ten minutes).
/// launch-worker grants that runtime as the attempt's money deadline and hands it to the
/// worker; the real worker stops the job at it as at a Spot notice (SIGTERM, the job's trap
/// saves its checkpoint), reports `Worker.BudgetExhausted`, and the run ends BUDGET_EXHAUSTED
/// in the email and the report, not relaunched, nothing left running, the bill within the cap.
#[tokio::test]
async fn a_job_that_never_ends_is_stopped_at_the_runs_cap_with_its_checkpoint_saved() {
    use ephemera_core::budget::{self, Cap};
    const GRANTED: u64 = 75;
    let region = fresh_region();
    let aws = clients(region);
    let net = fixtures::network(&aws).await;
    let inbox = fixtures::inbox(region, "ephemera-reports").await;
    let logs = aws_sdk_cloudwatchlogs::Client::new(&ephemera_tests::sdk_config(region));
    logs.create_log_group()
        .log_group_name(worker_log_group())
        .send()
        .await
        .unwrap();
    let machine = e2e::create_state_machine(region).await;
    let base = std::env::temp_dir().join(format!("ephemera-cap-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base).unwrap();
    let seen = base.join("attempts");
    export_bucket(&aws.s3, region).await;
    let run_id = "exec-cap";
    // It counts for ever, saving its step at SIGTERM (its trap, then exit 0).
    let script = format!(
        "trap 'echo 7 > \"$EPHEMERA_CHECKPOINT/step.tmp\" && mv \"$EPHEMERA_CHECKPOINT/step.tmp\" \"$EPHEMERA_CHECKPOINT/step\"; echo saved at the stop >&2; exit 0' TERM; \
         echo \"attempt $EPHEMERA_ATTEMPT runs\" >> {seen}; \
         while true; do sleep 0.1; done",
        seen = seen.display(),
    );
    // Under the run's own prefix: CheckQuota refuses a checkpoint place anywhere else.
    let checkpoint_to = format!("s3://{BUCKET}/runs/{run_id}/checkpoints/");
    let options = |workdir: &str| -> Vec<String> {
        [
            "--workdir",
            workdir,
            "--checkpoint",
            "ckpt",
            "--checkpoint-to",
            &checkpoint_to,
        ]
        .map(String::from)
        .to_vec()
    };
    let mut spec = fixtures::runspec(run_id, &net, Some(&inbox.topic_arn));
    let mut args = vec![json!("exec")];
    args.extend(
        options("/var/lib/ephemera/work")
            .into_iter()
            .map(|o| json!(o)),
    );
    args.extend([json!("--"), json!("sh"), json!("-c"), json!(script)]);
    spec["worker"]["args"] = json!(args);
    spec["limits"]["heartbeat_seconds"] = json!(30);
    // The budget: the run's own orchestration and one attempt of GRANTED seconds' runtime at
    // the dearest candidate's On-Demand price (the front door's Price List answers the dated
    // table's), as launch-worker counts it.
    let s = ephemera_core::RunSpec::parse(&spec).unwrap();
    let whole = fixtures::attempt_worst_case(&s, region);
    let granted = whole.with_runtime(&s, GRANTED);
    let cap = ephemera_core::cost::usd(Cap::of(&s, region).overhead_usd + granted.usd);
    spec["limits"]["budget_usd"] = json!(cap);

    let execution = e2e::start(region, &machine, &format!("{run_id}-1"), &spec).await;
    let instance_id = Arc::new(Mutex::new(String::new()));
    let notice = Arc::new(Mutex::new(false));
    let imds_url = imds(instance_id.clone(), notice.clone()).await;
    let id = fixtures::instance_of(region, run_id, "1").await;
    *instance_id.lock().unwrap() = id.clone();
    // The money deadline as launch-worker handed it to the instance.
    let handed = budget_seconds_of(&aws.ec2, &id).await;
    assert_eq!(handed, Some(GRANTED), "the user data's --budget-seconds");
    let mut opts = options(&base.join("w1").display().to_string());
    opts.extend(["--budget-seconds".to_string(), GRANTED.to_string()]);
    let opts: Vec<&str> = opts.iter().map(String::as_str).collect();
    let started = std::time::Instant::now();
    let out = job(region, &imds_url, run_id, 1, &opts, &script)
        .wait_with_output()
        .await
        .unwrap();
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("money deadline"), "{stderr}");
    assert!(stderr.contains("saved at the stop"), "{stderr}");
    // Stopped at its deadline, not before; its grace (5 s), the save and the report after.
    assert!(took >= Duration::from_secs(GRANTED), "{took:?}");
    assert!(took < Duration::from_secs(GRANTED + 30), "{took:?}");

    let done = e2e::wait(region, &execution, Duration::from_secs(120)).await;
    assert_eq!(done.status, "FAILED", "{done:?}");
    assert_eq!(
        done.error.as_deref(),
        Some("Worker.BudgetExhausted"),
        "{done:?}"
    );
    assert_eq!(done.visited(State::Relaunch), 0, "{:?}", done.path);
    assert_eq!(done.visited(State::ReleaseWorker), 1, "{:?}", done.path);
    // Recorded in the worker's state: the grant, and the AwaitCompletion backstop after it.
    let worker = &done.workers[0]["worker"];
    assert_eq!(worker["budget_seconds"], GRANTED, "{worker}");
    assert_eq!(
        worker["timeout_seconds"],
        GRANTED + budget::STOP_ALLOWANCE_SECONDS,
        "{worker}"
    );
    // The checkpoint the trap wrote at the stop, in S3 for a later run to resume from.
    let saved = aws
        .s3
        .list_objects_v2()
        .bucket(BUCKET)
        .prefix(format!("runs/{run_id}/checkpoints/{run_id}/"))
        .send()
        .await
        .unwrap();
    assert!(
        saved
            .contents()
            .iter()
            .any(|o| o.key().is_some_and(|k| k.ends_with("/step"))),
        "{:?}",
        saved.contents()
    );
    // The report and the email: BUDGET_EXHAUSTED, the bill within the cap.
    let report = &done.report;
    assert_eq!(report["outcome"], "BUDGET_EXHAUSTED", "{report}");
    assert_eq!(
        report["error"]["Error"], "Worker.BudgetExhausted",
        "{report}"
    );
    let actual = report["actual_usd"].as_f64().unwrap();
    assert!(actual <= cap, "{actual} > {cap}");
    let estimate = report["estimate_usd"].as_f64().unwrap();
    assert!((estimate - granted.usd).abs() < 1e-6, "{report}");
    let instances = fixtures::instances_of(&aws, run_id).await;
    assert!(
        instances
            .iter()
            .all(|(_, s)| s == "terminated" || s == "shutting-down"),
        "{instances:?}"
    );
    let mut emails = inbox.read().await;
    if emails.is_empty() {
        tokio::time::sleep(Duration::from_secs(1)).await;
        emails = inbox.read().await;
    }
    assert_eq!(emails.len(), 1, "{emails:?}");
    assert!(
        emails[0].subject.contains(": BUDGET_EXHAUSTED $"),
        "{}",
        emails[0].subject
    );
    assert!(
        emails[0].body.contains("reached its cap"),
        "{}",
        emails[0].body
    );
    assert_eq!(emails[0].attributes["outcome"]["Value"], "BUDGET_EXHAUSTED");
    assert_eq!(std::fs::read_to_string(&seen).unwrap(), "attempt 1 runs\n");
    std::fs::remove_dir_all(&base).unwrap();
}

/// The `--secret NAME=ARN` arguments launch-worker put in the instance's user data (read back
/// from EC2, as the instance's bootstrap reads it), and the user data itself.
async fn secret_options_of(ec2: &aws_sdk_ec2::Client, instance_id: &str) -> (Vec<String>, String) {
    let (own, script) = own_options_of(ec2, instance_id).await;
    let secrets = own
        .iter()
        .enumerate()
        .filter(|(_, a)| *a == "--secret")
        .flat_map(|(i, _)| own[i..=i + 1].to_vec())
        .collect();
    (secrets, script)
}

/// The worker's own options (before `--`) as launch-worker put them in the instance's user
/// data, and the user data.
async fn own_options_of(ec2: &aws_sdk_ec2::Client, instance_id: &str) -> (Vec<String>, String) {
    use base64::Engine as _;
    let attribute = ec2
        .describe_instance_attribute()
        .instance_id(instance_id)
        .attribute(aws_sdk_ec2::types::InstanceAttributeName::UserData)
        .send()
        .await
        .unwrap();
    let encoded = attribute
        .user_data()
        .and_then(|u| u.value())
        .expect("the instance's user data");
    let script = String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .unwrap(),
    )
    .unwrap();
    let command = ephemera_core::userdata::worker_command(&script).expect("the worker's command");
    let own = command[..command.iter().position(|a| a == "--").unwrap()].to_vec();
    (own, script)
}

/// A job that fails with an exit code `job.retry` names runs again on its instance (its
/// working directory as it left it) and succeeds: the run SUCCEEDS, the summary keeps the
/// failed run's exit code and the email tells it. One that keeps failing stops at `max`, and
/// its cause names the retries.
#[tokio::test]
async fn a_job_failing_with_a_listed_exit_code_runs_again_on_its_instance() {
    let region = fresh_region();
    let aws = clients(region);
    let net = fixtures::network(&aws).await;
    let inbox = fixtures::inbox(region, "ephemera-reports").await;
    let logs = aws_sdk_cloudwatchlogs::Client::new(&ephemera_tests::sdk_config(region));
    let _ = logs
        .create_log_group()
        .log_group_name(worker_log_group())
        .send()
        .await;
    let machine = e2e::create_state_machine(region).await;
    export_bucket(&aws.s3, region).await;
    let base = std::env::temp_dir().join(format!("ephemera-retry-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let instance_id = Arc::new(Mutex::new(String::new()));
    let imds_url = imds(instance_id.clone(), Arc::new(Mutex::new(false))).await;
    let run = |run_id: &'static str, script: &'static str| {
        let (net, inbox, machine, base, aws) = (&net, &inbox, &machine, &base, &aws);
        let (imds_url, instance_id) = (imds_url.clone(), instance_id.clone());
        async move {
            let to = format!("s3://{BUCKET}/runs/{run_id}/");
            let mut spec = fixtures::runspec(run_id, net, Some(&inbox.topic_arn));
            spec["worker"]["args"] = json!([
                "exec",
                "--outputs",
                "out",
                "--to",
                to,
                "--",
                "sh",
                "-c",
                script
            ]);
            spec["job"] = json!({"retry": {"on_exit_codes": [75], "max": 2, "backoff_seconds": 1}});
            spec["expect"] = json!({"export_prefix": to, "min_objects": 1});
            spec["limits"]["heartbeat_seconds"] = json!(30);
            let execution = e2e::start(region, machine, &format!("{run_id}-1"), &spec).await;
            let instance = fixtures::instance_of(region, run_id, "1").await;
            *instance_id.lock().unwrap() = instance.clone();
            let (own, _) = own_options_of(&aws.ec2, &instance).await;
            assert_eq!(
                own[2..8],
                [
                    "--retry-on",
                    "75",
                    "--retry-max",
                    "2",
                    "--retry-backoff",
                    "1"
                ],
                "launch-worker tells the worker the job's retries: {own:?}"
            );
            let workdir = base.join(run_id).display().to_string();
            std::fs::create_dir_all(&workdir).unwrap();
            let mut options: Vec<&str> = own[2..8].iter().map(String::as_str).collect();
            options.extend(["--workdir", &workdir, "--outputs", "out", "--to", &to]);
            let out = job(region, &imds_url, run_id, 1, &options, script)
                .wait_with_output()
                .await
                .unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr).to_string();
            assert!(out.status.success(), "{stderr}");
            (
                e2e::wait(region, &execution, Duration::from_secs(120)).await,
                stderr,
            )
        }
    };

    // Fails once (its working directory remembers), then succeeds.
    let (done, stderr) = run(
        "exec-retry",
        "if [ -f tried ]; then mkdir -p out && echo ok > out/ok.txt;          else touch tried; echo 'the service is busy' >&2; exit 75; fi",
    )
    .await;
    assert_eq!(done.status, "SUCCEEDED", "{done:?}\n{stderr}");
    let job = &done.workers[0]["result"]["job"];
    assert_eq!(job["exit_code"], 0, "{job}");
    assert_eq!(job["retries"].as_array().map(Vec::len), Some(1), "{job}");
    assert_eq!(job["retries"][0]["exit_code"], 75, "{job}");
    assert!(
        stderr.contains("the job failed with an exit code job.retry names"),
        "{stderr}"
    );
    let mut emails = inbox.read().await;
    if emails.is_empty() {
        tokio::time::sleep(Duration::from_secs(1)).await;
        emails = inbox.read().await;
    }
    let body = emails.last().map(|e| e.body.clone()).unwrap_or_default();
    assert!(
        body.contains("run again 1 time on the same instance (exit 75 after "),
        "{body}"
    );
    // The retry's own cost, at the attempt's price for the time it ran.
    let retry = body
        .split("run again 1 time on the same instance (exit 75 after ")
        .nth(1)
        .and_then(|rest| rest.split_once(')'))
        .map(|(line, _)| line.to_string())
        .unwrap_or_default();
    assert!(
        retry.contains(" s, ≈$") && retry.chars().filter(|c| *c == '$').count() == 1,
        "{retry}"
    );

    // Always 75: two retries, then the run fails naming them.
    let (done, _) = run("exec-retry-out", "echo 'still busy' >&2; exit 75").await;
    assert_eq!(done.status, "FAILED", "{done:?}");
    let cause = done.cause.clone().unwrap_or_default();
    assert!(
        cause.contains("exited with status 75")
            && cause.contains("after 2 retries on this instance (exit 75, exit 75)"),
        "{cause}"
    );
    let _ = std::fs::remove_dir_all(&base);
}

/// Everything a run left that a person or a log reader can see: every shipped log line of its
/// attempt, its execution history, the emails, the report stored beside its outputs.
async fn what_a_run_shows(
    region: &str,
    execution: &str,
    run_id: &str,
    instance_id: &str,
    emails: &[fixtures::Email],
) -> (Vec<String>, String) {
    let aws = clients(region);
    // Every line of every stream of every log group in the region, not only the attempt's.
    let logs = aws_sdk_cloudwatchlogs::Client::new(&ephemera_tests::sdk_config(region));
    let mut lines: Vec<String> = vec![];
    let mut streams = vec![];
    let groups = logs.describe_log_groups().send().await.unwrap();
    for group in groups
        .log_groups()
        .iter()
        .filter_map(|g| g.log_group_name())
    {
        let listed = logs
            .describe_log_streams()
            .log_group_name(group)
            .send()
            .await
            .unwrap();
        for stream in listed
            .log_streams()
            .iter()
            .filter_map(|s| s.log_stream_name())
        {
            streams.push(format!("{group} {stream}"));
            let events = logs
                .get_log_events()
                .log_group_name(group)
                .log_stream_name(stream)
                .start_from_head(true)
                .send()
                .await
                .unwrap();
            lines.extend(
                events
                    .events()
                    .iter()
                    .map(|e| e.message().unwrap_or_default().to_string()),
            );
        }
    }
    let attempt = format!(
        "{} {}",
        worker_log_group(),
        worker_log_stream(run_id, 1, instance_id)
    );
    assert!(streams.contains(&attempt), "{attempt} in {streams:?}");
    let sfn = aws_sdk_sfn::Client::new(&ephemera_tests::sdk_config(region));
    let history = e2e::history(&sfn, execution).await.unwrap();
    let mut rest = format!("{}\n{emails:?}\n", history_text(&history));
    for key in ["report.json", "report.html"] {
        if let Ok(o) = aws
            .s3
            .get_object()
            .bucket(BUCKET)
            .key(format!("runs/{run_id}/{key}"))
            .send()
            .await
        {
            rest.push_str(&String::from_utf8_lossy(
                &o.body.collect().await.unwrap().into_bytes(),
            ));
        }
    }
    (lines, rest)
}

/// Every input, output, error and cause the history holds (the SDK's Debug form hides them as
/// sensitive, so each is taken out by name).
fn history_text(events: &[aws_sdk_sfn::types::HistoryEvent]) -> String {
    let mut out = vec![];
    for e in events {
        let mut add = |s: Option<&str>| out.extend(s.map(str::to_string));
        if let Some(d) = e.execution_started_event_details() {
            add(d.input());
        }
        if let Some(d) = e.execution_succeeded_event_details() {
            add(d.output());
        }
        if let Some(d) = e.execution_failed_event_details() {
            add(d.error());
            add(d.cause());
        }
        if let Some(d) = e.state_entered_event_details() {
            add(d.input());
        }
        if let Some(d) = e.state_exited_event_details() {
            add(d.output());
        }
        if let Some(d) = e.task_scheduled_event_details() {
            add(Some(d.parameters()));
        }
        if let Some(d) = e.task_succeeded_event_details() {
            add(d.output());
        }
        if let Some(d) = e.task_failed_event_details() {
            add(d.error());
            add(d.cause());
        }
        if let Some(d) = e.lambda_function_succeeded_event_details() {
            add(d.output());
        }
        if let Some(d) = e.lambda_function_failed_event_details() {
            add(d.error());
            add(d.cause());
        }
    }
    out.join("\n")
}

/// `job.secrets` end to end: a secret in Secrets Manager and a SecureString in Parameter Store
/// reach the job's environment (the job checks both against their SHA-256 and exits non-zero
/// otherwise) and the run SUCCEEDS; the job prints them (stdout, stderr, base64), and no log
/// line shipped, no history event, email or report holds a value, only `[redacted]`; the user
/// data names the ARNs only. A job that fails printing its secret has it redacted from its
/// cause; a secret that cannot be read fails the run before the job starts, naming it.
#[tokio::test]
async fn a_jobs_secrets_reach_its_environment_and_nothing_else() {
    let region = fresh_region();
    let aws = clients(region);
    let net = fixtures::network(&aws).await;
    let inbox = fixtures::inbox(region, "ephemera-reports").await;
    let logs = aws_sdk_cloudwatchlogs::Client::new(&ephemera_tests::sdk_config(region));
    logs.create_log_group()
        .log_group_name(worker_log_group())
        .send()
        .await
        .unwrap();
    let machine = e2e::create_state_machine(region).await;
    export_bucket(&aws.s3, region).await;
    let conf = ephemera_tests::sdk_config(region);
    // Values whose base64 differs from either alphabet's and that no line would hold by chance.
    let api_key = "sm-Value+7f3a/9c1e";
    let db_password = "ps-value-41d2e8b0";
    let api_arn = aws_sdk_secretsmanager::Client::new(&conf)
        .create_secret()
        .name("ephemera/exec-secrets/api")
        .secret_string(api_key)
        .send()
        .await
        .unwrap()
        .arn
        .unwrap();
    aws_sdk_ssm::Client::new(&conf)
        .put_parameter()
        .name("/ephemera/exec-secrets/db")
        .value(db_password)
        .r#type(aws_sdk_ssm::types::ParameterType::SecureString)
        .send()
        .await
        .unwrap();
    let db_arn = format!(
        "arn:aws:ssm:{region}:{}:parameter/ephemera/exec-secrets/db",
        ephemera_tests::iam::ACCOUNT
    );
    let sha = |v: &str| store::sha256_hex(v.as_bytes());
    let base = std::env::temp_dir().join(format!("ephemera-secrets-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let instance_id = Arc::new(Mutex::new(String::new()));
    let imds_url = imds(instance_id.clone(), Arc::new(Mutex::new(false))).await;

    // 1. Both read, checked, printed every way; the run succeeds.
    let run_id = "exec-secrets";
    let to = format!("s3://{BUCKET}/runs/{run_id}/");
    let script = format!(
        "test \"$(printf %s \"$API_KEY\" | sha256sum | cut -c1-64)\" = {} || {{ echo 'API_KEY is not the secret' >&2; exit 7; }}; \
         test \"$(printf %s \"$DB_PASSWORD\" | sha256sum | cut -c1-64)\" = {} || {{ echo 'DB_PASSWORD is not the secret' >&2; exit 8; }}; \
         echo \"the key is $API_KEY\"; echo \"the password is $DB_PASSWORD\" >&2; printf %s \"$API_KEY\" | base64; \
         mkdir -p out && echo done > out/ok.txt",
        sha(api_key),
        sha(db_password)
    );
    let mut spec = fixtures::runspec(run_id, &net, Some(&inbox.topic_arn));
    spec["worker"]["args"] = json!([
        "exec",
        "--outputs",
        "out",
        "--to",
        to,
        "--",
        "sh",
        "-c",
        script
    ]);
    spec["job"] = json!({"secrets": {"API_KEY": api_arn, "DB_PASSWORD": db_arn}});
    spec["expect"] = json!({"export_prefix": to, "min_objects": 1});
    spec["limits"]["heartbeat_seconds"] = json!(30);
    let execution = e2e::start(region, &machine, &format!("{run_id}-1"), &spec).await;
    let instance = fixtures::instance_of(region, run_id, "1").await;
    *instance_id.lock().unwrap() = instance.clone();
    let (secret_options, user_data) = secret_options_of(&aws.ec2, &instance).await;
    assert_eq!(
        secret_options,
        [
            "--secret".to_string(),
            format!("API_KEY={api_arn}"),
            "--secret".into(),
            format!("DB_PASSWORD={db_arn}")
        ],
        "launch-worker tells the worker each secret by its ARN"
    );
    let workdir = base.join("w1").display().to_string();
    std::fs::create_dir_all(&workdir).unwrap();
    let mut options: Vec<&str> = secret_options.iter().map(String::as_str).collect();
    options.extend(["--workdir", &workdir, "--outputs", "out", "--to", &to]);
    let out = job(region, &imds_url, run_id, 1, &options, &script)
        .wait_with_output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{stderr}");
    let done = e2e::wait(region, &execution, Duration::from_secs(120)).await;
    assert_eq!(done.status, "SUCCEEDED", "{done:?}\n{stderr}");
    let mut emails = inbox.read().await;
    if emails.is_empty() {
        tokio::time::sleep(Duration::from_secs(1)).await;
        emails = inbox.read().await;
    }
    assert!(!emails.is_empty(), "the report's email");
    let (lines, rest) = what_a_run_shows(region, &execution, run_id, &instance, &emails).await;
    let has = |text: &str| lines.iter().any(|l| l.contains(text));
    assert!(has("the key is [redacted]"), "{lines:#?}");
    assert!(has("the password is [redacted]"), "{lines:#?}");
    assert!(has(r#""job":"[redacted]"#), "the base64 line: {lines:#?}");
    {
        use base64::Engine as _;
        let forms = [
            api_key.to_string(),
            db_password.to_string(),
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(api_key),
        ];
        for form in &forms {
            assert!(!has(form), "{form} shipped: {lines:#?}");
            assert!(
                !rest.contains(form.as_str()),
                "{form} in the history, email or report"
            );
            assert!(
                !user_data.contains(form.as_str()),
                "{form} in the user data"
            );
            assert!(
                !stderr.contains(form.as_str()),
                "{form} in the worker's own log"
            );
        }
    }
    // What was searched is there: the history's RunSpec (an ARN is no secret) and the report.
    assert!(
        rest.contains(&api_arn) && rest.contains("Run exec-secrets SUCCEEDED"),
        "{rest}"
    );

    // 2. A job that fails with its secret on stderr: its cause says `[redacted]`.
    let run_id = "exec-secrets-fails";
    let failing = "echo \"cannot log in with $API_KEY\" >&2; exit 3";
    let mut spec = fixtures::runspec(run_id, &net, Some(&inbox.topic_arn));
    spec["worker"]["args"] = json!(["exec", "--", "sh", "-c", failing]);
    spec["job"] = json!({"secrets": {"API_KEY": api_arn}});
    spec["limits"]["heartbeat_seconds"] = json!(30);
    let execution = e2e::start(region, &machine, &format!("{run_id}-1"), &spec).await;
    let instance = fixtures::instance_of(region, run_id, "1").await;
    *instance_id.lock().unwrap() = instance.clone();
    let (secret_options, _) = secret_options_of(&aws.ec2, &instance).await;
    let options: Vec<&str> = secret_options.iter().map(String::as_str).collect();
    let out = job(region, &imds_url, run_id, 1, &options, failing)
        .wait_with_output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let done = e2e::wait(region, &execution, Duration::from_secs(120)).await;
    assert_ne!(done.status, "SUCCEEDED", "{done:?}");
    let error = done.workers[0]["error"].to_string();
    assert!(
        error.contains("exited with status 3") && error.contains("cannot log in with [redacted]"),
        "{error}"
    );
    let emails = inbox.read().await;
    let (lines, rest) = what_a_run_shows(region, &execution, run_id, &instance, &emails).await;
    assert!(!rest.contains(api_key) && !lines.iter().any(|l| l.contains(api_key)));

    // 3. A secret that cannot be read: the job never starts, the cause names it.
    let run_id = "exec-secrets-missing";
    let missing = format!(
        "arn:aws:secretsmanager:{region}:{}:secret:ephemera/exec-secrets/gone-AbCdEf",
        ephemera_tests::iam::ACCOUNT
    );
    let marker = base.join("started");
    let starts = format!("touch {}", marker.display());
    let mut spec = fixtures::runspec(run_id, &net, Some(&inbox.topic_arn));
    spec["worker"]["args"] = json!(["exec", "--", "sh", "-c", starts]);
    spec["job"] = json!({"secrets": {"API_KEY": api_arn, "GONE": missing}});
    spec["limits"]["heartbeat_seconds"] = json!(30);
    let execution = e2e::start(region, &machine, &format!("{run_id}-1"), &spec).await;
    let instance = fixtures::instance_of(region, run_id, "1").await;
    *instance_id.lock().unwrap() = instance.clone();
    let (secret_options, _) = secret_options_of(&aws.ec2, &instance).await;
    let options: Vec<&str> = secret_options.iter().map(String::as_str).collect();
    let out = job(region, &imds_url, run_id, 1, &options, &starts)
        .wait_with_output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let done = e2e::wait(region, &execution, Duration::from_secs(120)).await;
    assert_ne!(done.status, "SUCCEEDED", "{done:?}");
    let error = done.workers[0]["error"].to_string();
    assert!(
        error.contains("before the command started")
            && error.contains(&format!("GONE ({missing})"))
            && !error.contains("API_KEY ("),
        "{error}"
    );
    assert!(!marker.exists(), "the job started without its secrets");
    let _ = std::fs::remove_dir_all(&base);
}
