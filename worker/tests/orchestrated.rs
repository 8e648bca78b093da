//! The real worker binary at the end of the real state machine: the deployed ASL runs in moto,
//! its Lambdas are the real handlers, and the worker (standing in for the instance, with a local
//! IMDSv2) says "started", takes the token, heartbeats and reports its summary.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, put};
use axum::Router;
use ephemera_tests::postgres::postgres;
use ephemera_tests::{clients, e2e, fixtures, fresh_region, harness};
use ephemera_worker::{db, export, seed};
use serde_json::json;

/// A local IMDSv2: a session token, this instance's id, and (when set) a Spot notice.
async fn imds(instance_id: Arc<Mutex<String>>, spot_notice: Arc<Mutex<bool>>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new()
        .route(
            "/latest/api/token",
            put(|| async {
                let mut h = HeaderMap::new();
                h.insert(
                    "x-aws-ec2-metadata-token-ttl-seconds",
                    "21600".parse().unwrap(),
                );
                (h, "imds-session-token")
            }),
        )
        .route(
            "/latest/meta-data/instance-id",
            get(move || {
                let id = instance_id.lock().unwrap().clone();
                async move { id }
            }),
        )
        .route(
            "/latest/meta-data/spot/instance-action",
            get(move || {
                let on = *spot_notice.lock().unwrap();
                async move {
                    if on {
                        (
                            StatusCode::OK,
                            r#"{"action":"terminate","time":"2026-11-22T15:00:00Z"}"#,
                        )
                    } else {
                        (StatusCode::NOT_FOUND, "")
                    }
                }
            }),
        );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

async fn instance_of(region: &str, run_id: &str, attempt: &str) -> String {
    let aws = clients(region);
    ephemera_tests::eventually("the worker's instance", Duration::from_secs(60), || {
        let aws = aws.clone();
        async move {
            let r = aws
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
                        .name("tag:ephemera:attempt")
                        .values(attempt)
                        .build(),
                )
                .send()
                .await
                .ok()?;
            r.reservations()
                .iter()
                .flat_map(|r| r.instances())
                .find_map(|i| i.instance_id().map(str::to_string))
        }
    })
    .await
}

fn worker(
    region: &str,
    db_url: &str,
    imds_url: &str,
    run_id: &str,
    attempt: u32,
) -> tokio::process::Child {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_ephemera-worker"))
        .args([
            "run",
            "--stages",
            "indicators,regression,validate,export",
            "--export",
            &format!("s3://{BUCKET}/runs/{run_id}/"),
            "--concurrency",
            "2",
        ])
        .args(["--database-url", db_url, "--run-id", run_id])
        .args(["--attempt", &attempt.to_string()])
        .args([
            "--ssm-prefix",
            &format!("/ephemera/runs/{run_id}"),
            "--heartbeat-seconds",
            "30",
        ])
        .env("AWS_ENDPOINT_URL", &harness().endpoint)
        .env("AWS_REGION", region)
        // The worker's instance role: held to the template's WorkerRole policy.
        .env("AWS_ACCESS_KEY_ID", "worker")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds_url)
        .env("AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE", "IPv4")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

const BUCKET: &str = "ephemera-features";

#[tokio::test]
async fn the_real_worker_completes_a_run_and_resumes_after_a_spot_interruption() {
    let run_id = "worker-e2e";
    let region = fresh_region();
    let db_url = postgres().database("worker_e2e");
    let client = db::connect(&db_url).await.unwrap();
    db::init(&client, "bars_1m").await.unwrap();
    let csv = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/data/fx-1m/EURGBP.csv");
    seed::seed_file(&client, "bars_1m", &csv).await.unwrap();

    let aws = clients(region);
    let net = fixtures::network(&aws).await;
    let inbox = fixtures::inbox(region, "ephemera-reports").await;
    let mut spec = fixtures::runspec(run_id, &net, Some(&inbox.topic_arn));
    aws.s3.create_bucket().bucket(BUCKET).send().await.unwrap();
    // 1 pair × 2 months × 4 stages; the export checked by verify-completion.
    spec["expect"] = json!({"partitions": 8, "min_rows": 100000,
                            "export_prefix": format!("s3://{BUCKET}/runs/{run_id}/")});
    spec["limits"]["heartbeat_seconds"] = json!(30);
    let machine = e2e::create_state_machine(region).await;
    let execution = e2e::start(region, &machine, &format!("{run_id}-1"), &spec).await;

    // Attempt 1 gets a Spot notice at once: it stops before claiming and reports it.
    let instance_id = Arc::new(Mutex::new(String::new()));
    let notice = Arc::new(Mutex::new(true));
    let imds_url = imds(instance_id.clone(), notice.clone()).await;
    *instance_id.lock().unwrap() = instance_of(region, run_id, "1").await;
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
    *instance_id.lock().unwrap() = instance_of(region, run_id, "2").await;
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
    assert_eq!(done.visited("Relaunch"), 1, "{:?}", done.path);
    let result = &done.output["result"];
    assert_eq!(result["partitions_done"], 8, "{result}");
    assert_eq!(
        result["manifest"],
        format!("s3://{BUCKET}/runs/{run_id}/manifest.json")
    );
    assert_eq!(result["validation"]["partitions"], 2, "{result}");
    assert_eq!(result["validation"]["out_of_range"], 0, "{result}");
    let checks = done.output["verification"]["checks"].as_array().unwrap();
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
    assert_eq!(done.output["verification"]["ok"], true);
    assert_eq!(
        done.output["report"]["attempts"].as_array().unwrap().len(),
        2
    );
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
    assert_eq!(n, 8);

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
    let manifest: export::Manifest =
        serde_json::from_slice(&get(format!("runs/{run_id}/manifest.json")).await).unwrap();
    assert_eq!(manifest.run_id, run_id);
    assert_eq!(manifest.objects.len(), 4, "2 months × 2 feature stages");
    for o in &manifest.objects {
        let bytes = get(o.key.clone()).await;
        assert_eq!(bytes.len() as u64, o.bytes, "{}", o.key);
        assert_eq!(export::sha256_hex(&bytes), o.sha256, "{}", o.key);
    }
    assert_eq!(
        manifest.objects.iter().map(|o| o.rows).sum::<u64>(),
        result["rows_out"].as_u64().unwrap()
    );
}
