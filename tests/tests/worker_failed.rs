//! A worker that reports Worker.Failed, end to end: the deployed ASL in moto, the real handlers
//! behind the front door, a worker stand-in failing its task token.

use ephemera_tests::e2e::State;
use ephemera_tests::worker_standin::Behaviour;
use ephemera_tests::{e2e, fresh_region};
use serde_json::json;

#[tokio::test]
async fn a_worker_failure_ends_the_run_failed_terminated_and_reported() {
    let run_id = "e2e-worker-failed";
    let r = e2e::scenario(
        fresh_region(),
        run_id,
        Behaviour::Fail("Worker.Failed".into()),
        |_| {},
    )
    .await;
    let (done, log, instances) = (&r.finished, &r.worker_log, &r.instances);
    assert!(
        log.iter().any(|l| l.ends_with("failed Worker.Failed")),
        "{log:?}"
    );

    // The worker's own error and cause, not a relaunch: only a Spot interruption relaunches.
    assert_eq!(done.status, "FAILED", "{done:?}");
    assert_eq!(done.error.as_deref(), Some("Worker.Failed"), "{done:?}");
    // The worker's cause, as AWS passes it on (moto dropped it until the harness taught it:
    // tests/moto/aws_answers.py).
    assert_eq!(
        done.cause.as_deref(),
        Some("reported by the worker stand-in"),
        "{done:?}"
    );
    assert_eq!(done.visited(State::AwaitCompletion), 1, "{:?}", done.path);
    assert_eq!(done.visited(State::Relaunch), 0, "{:?}", done.path);
    // The one worker is released; with no report, verification fails with its error.
    assert_eq!(done.visited(State::ReleaseWorker), 1, "{:?}", done.path);
    assert_eq!(
        done.visited(State::TerminateWithCostReport),
        0,
        "{:?}",
        done.path
    );
    assert_eq!(done.visited(State::Cleanup), 1, "{:?}", done.path);

    // Everything terminated.
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
    let emails = &r.emails;
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
