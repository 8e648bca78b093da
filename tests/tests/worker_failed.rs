//! A worker that reports Worker.Failed, end to end: the deployed ASL in moto, the real handlers
//! behind the front door, a worker stand-in failing its task token.

use std::time::Duration;

use ephemera_tests::worker_standin::{self, Behaviour};
use ephemera_tests::{clients, e2e, fixtures, fresh_region};
use serde_json::json;

#[tokio::test]
async fn a_worker_failure_ends_the_run_failed_terminated_and_reported() {
    let run_id = "e2e-worker-failed";
    let region = fresh_region();
    let aws = clients(region);
    let net = fixtures::network(&aws).await;
    let inbox = fixtures::inbox(region, "ephemera-reports").await;
    let mut spec = fixtures::runspec(run_id, &net, Some(&inbox.topic_arn));
    spec["expect"] = json!({"partitions": 2, "min_rows": 100});
    let machine = e2e::create_state_machine(region).await;
    let worker = worker_standin::spawn(
        region,
        run_id,
        Behaviour::Fail("Worker.Failed".into()),
        Duration::from_secs(150),
    );
    let execution = e2e::start(region, &machine, &format!("{run_id}-1"), &spec).await;
    let done = e2e::wait(region, &execution, Duration::from_secs(180)).await;
    let log = worker.log().await;
    assert!(
        log.iter().any(|l| l.ends_with("failed Worker.Failed")),
        "{log:?}"
    );

    // The worker's own error and cause, not a relaunch: only a Spot interruption relaunches.
    assert_eq!(done.status, "FAILED", "{done:?}");
    assert_eq!(done.error.as_deref(), Some("Worker.Failed"), "{done:?}");
    // moto's SendTaskFailure drops the cause (moto/stepfunctions/responses.py reads only the
    // error), which the report then says; AWS passes it on.
    assert!(
        matches!(
            done.cause.as_deref(),
            Some("reported by the worker stand-in" | "Worker.Failed (no cause given)")
        ),
        "{done:?}"
    );
    assert_eq!(done.visited("AwaitCompletion"), 1, "{:?}", done.path);
    assert_eq!(done.visited("Relaunch"), 0, "{:?}", done.path);
    // The one worker is released; with no report, verification fails with its error.
    assert_eq!(done.visited("ReleaseWorker"), 1, "{:?}", done.path);
    assert_eq!(
        done.visited("TerminateWithCostReport"),
        0,
        "{:?}",
        done.path
    );
    assert_eq!(done.visited("Cleanup"), 1, "{:?}", done.path);

    // Everything terminated.
    let instances = fixtures::instances_of(&aws, run_id).await;
    assert_eq!(instances.len(), 1, "{instances:?}");
    assert!(
        instances
            .iter()
            .all(|(_, s)| s == "terminated" || s == "shutting-down"),
        "{instances:?}"
    );

    // The report names the failure, and is emailed once.
    assert_eq!(done.report["outcome"], "FAILED", "{}", done.report);
    assert_eq!(done.report["error"]["Error"], "Worker.Failed");
    assert_eq!(done.report["attempts"].as_array().unwrap().len(), 1);
    assert_eq!(
        done.report["terminated"],
        json!([instances[0].0.clone()]),
        "{}",
        done.report
    );
    let mut emails = inbox.read().await;
    if emails.is_empty() {
        // SNS → SQS delivery is synchronous in moto, but allow a moment.
        tokio::time::sleep(Duration::from_secs(1)).await;
        emails = inbox.read().await;
    }
    assert_eq!(emails.len(), 1, "{emails:?}");
    assert!(
        emails[0].subject.contains(": FAILED $"),
        "{}",
        emails[0].subject
    );
    assert!(
        emails[0].body.contains("Worker.Failed"),
        "{}",
        emails[0].body
    );
    // The attributes a subscription filter policy can select on.
    assert_eq!(
        emails[0].attributes["outcome"]["Value"], "FAILED",
        "{}",
        emails[0].attributes
    );
    assert_eq!(emails[0].attributes["run_id"]["Value"], run_id);
}
