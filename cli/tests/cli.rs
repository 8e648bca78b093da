//! The terminal path: validate a RunSpec, start a run against the emulator, wait for its report.

use std::process::Command;
use std::time::Duration;

use ephemera_tests::worker_standin::{self, Behaviour};
use ephemera_tests::{clients, e2e, fixtures, fresh_region, harness};
use serde_json::json;

fn ephemera() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ephemera"))
}

#[test]
fn validate_accepts_the_sample_and_names_bad_fields() {
    let sample = format!("{}/../events/runspec.json", env!("CARGO_MANIFEST_DIR"));
    let out = ephemera().args(["validate", &sample]).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout)
        .contains("valid RunSpec for run 'fx-features-2023-04'"));

    let mut bad: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&sample).unwrap()).unwrap();
    bad["limits"]["budget_usd"] = json!(-3);
    bad["worker"]["market"] = json!("spot");
    bad["worker"]["subnets"] = json!([]);
    let path = std::env::temp_dir().join("ephemera-bad-runspec.json");
    std::fs::write(&path, bad.to_string()).unwrap();
    let out = ephemera().arg("validate").arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("worker.subnets: must list at least one subnet"),
        "{err}"
    );
    assert!(
        err.contains("limits.budget_usd: -3 must be a positive amount"),
        "{err}"
    );
}

#[tokio::test]
async fn run_starts_an_execution_and_prints_the_report() {
    let region = fresh_region();
    let h = harness();
    let aws = clients(region);
    let net = fixtures::network(&aws).await;
    let spec = fixtures::runspec("cli-run", &net, None);
    let path = std::env::temp_dir().join("ephemera-cli-run.json");
    std::fs::write(&path, spec.to_string()).unwrap();
    let machine = e2e::create_state_machine(region).await;
    let report = json!({"run_id": "cli-run", "partitions_done": 1, "partitions_failed": 0,
                        "rows_in": 10, "rows_out": 10});
    let worker = worker_standin::spawn(
        region,
        "cli-run",
        Behaviour::Succeed(report),
        Duration::from_secs(90),
    );
    let endpoint = h.endpoint.clone();
    let out = tokio::task::spawn_blocking(move || {
        ephemera()
            .args([
                "run",
                path.to_str().unwrap(),
                "--wait",
                "--wait-timeout",
                "90",
            ])
            .env("EPHEMERA_STATE_MACHINE_ARN", machine)
            .env("AWS_ENDPOINT_URL", endpoint)
            .env("AWS_REGION", region)
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    worker.log().await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("started arn:aws:states:"), "{stdout}");
    assert!(stdout.contains("SUCCEEDED"), "{stdout}");
    assert!(stdout.contains("\"actual_usd\""), "{stdout}");
}
