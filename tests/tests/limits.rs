//! AWS's limits and refusals that a run meets, played by the harness: Step Functions' 256 KiB
//! payload quota (moto fails an execution whose state output passes it) at forty workers, the
//! Price List API's bucket (prices are read once a run), EC2's
//! request throttling at launch, and a cleanup AWS refuses. The deployed ASL, the real handlers
//! behind the front door, a worker stand-in on every instance.

use ephemera_core::{caps, payload, RunSpec};
use ephemera_tests::e2e::State;
use ephemera_tests::e2e::{self, report_for, Run};
use ephemera_tests::iam::Principal;
use ephemera_tests::worker_standin::Behaviour;
use ephemera_tests::{fresh_region, harness, price_list, FaultRule};
use serde_json::{json, Value};
use std::time::Duration;

/// One execution in a fresh region whose RunInstances answer as `fault` says.
async fn scenario(
    run_id: &str,
    fault: impl FnOnce(&'static str) -> FaultRule,
    edit: impl FnOnce(&mut Value),
) -> Run {
    let region = fresh_region();
    harness().door.add_fault(fault(region));
    e2e::scenario_within(
        region,
        run_id,
        Behaviour::Succeed(report_for(run_id, 2)),
        Duration::from_secs(420),
        edit,
    )
    .await
}

/// Forty workers on one run through a Spot shortage: all ten Spot candidates (five types × two
/// subnets) refused, so every worker launches On-Demand after ten refusals. Step Functions fails
/// an execution outright, without Cleanup, when a state's output passes 256 KiB
/// (States.DataLimitExceeded, https://docs.aws.amazon.com/step-functions/latest/dg/service-quotas.html#service-limits-task-executions),
/// and moto plays that limit: the Map's output, one document per worker, must stay under it.
#[tokio::test]
async fn forty_workers_through_a_spot_shortage_stay_within_the_payload_quota() {
    let types = [
        "c7g.4xlarge",
        "c6g.4xlarge",
        "m7g.4xlarge",
        "m6g.4xlarge",
        "r7g.4xlarge",
    ];
    let r = scenario(
        "e2e-forty",
        |region| {
            FaultRule::always(region, "RunInstances", "InsufficientInstanceCapacity", 500)
                .when("InstanceMarketOptions.MarketType", "spot")
        },
        |spec| {
            spec["worker"]["count"] = json!(40);
            spec["worker"]["instance_types"] = json!(types);
            spec["limits"]["budget_usd"] = json!(400.0);
            spec["limits"]["max_runtime_seconds"] = json!(3600);
            // Within the history bound at 40 workers: 31 boot polls a worker, one attempt each.
            spec["limits"]["max_relaunches"] = json!(0);
            spec["limits"]["boot_timeout_seconds"] = json!(120);
            spec["waits"]["boot_poll_seconds"] = json!(5);
        },
    )
    .await;
    println!(
        "refused: {:?}",
        harness().door.throttles.refused_in(r.region)
    );
    assert_eq!(r.finished.status, "SUCCEEDED", "{:?}", r.finished.error);
    assert_eq!(r.finished.visited(State::LaunchWorker), 40);
    assert_eq!(r.instances.len(), 40, "{:?}", r.instances);
    r.assert_nothing_left();
    r.assert_email("SUCCEEDED");
    let workers = r.finished.workers.as_array().unwrap();
    assert_eq!(workers.len(), 40);
    let attempts = r.finished.report["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 40, "every instance billed");
    assert!(attempts.iter().all(|a| a["market"] == "on-demand"));
    // Prices read once per type for the whole run (quota-check), not once per launch and again
    // per bill: forty launches would take GetProducts' bucket of ten four times over.
    assert_eq!(
        harness()
            .door
            .throttles
            .asked(r.region, price_list::GET_PRODUCTS),
        types.len()
    );
    assert!(
        attempts
            .iter()
            .all(|a| a["price_source"] == "price-list-api"),
        "{attempts:?}"
    );
    let map_bytes = r.finished.workers.to_string().len();
    let largest = r.finished.largest_state_output;
    println!(
        "forty workers: the Map's output {map_bytes} bytes, the largest state output {largest} bytes ({:.0} % of 256 KiB)",
        largest as f64 / 2621.44
    );
    // The bound the RunSpec was admitted under holds over the real run.
    let b = bound_of(&r);
    println!("  its bound: {} bytes ({b:?})", b.state());
    assert!(largest <= b.state(), "{largest} > {b:?}");
    assert!(b.state() <= payload::PLANNED_BYTES);
}

/// The payload bound ([`payload::bound`]) of the run's RunSpec, as admitted.
fn bound_of(r: &Run) -> payload::Bound {
    let spec = RunSpec::parse(&r.finished.document["run"]).expect("the run's RunSpec");
    payload::bound(&spec)
}

/// Forty workers each failing with a 30 KB cause (SendTaskFailure takes 32,768 characters: a
/// job's stack trace, say). Before, each Map iteration ended with its caught error whole, the
/// Map's output passed a megabyte, and Step Functions (moto plays it) failed the execution
/// outright: no Cleanup, no report, no email, forty instances left to the sweeper. Now each lost
/// worker's release returns the error with its cause cut, and the run ends in Cleanup with its
/// report.
#[tokio::test]
async fn forty_workers_failing_with_long_causes_still_end_with_their_report() {
    let region = fresh_region();
    let cause = "at ephemera::job::step (src/job.rs:42)\n".repeat(800);
    assert!(cause.len() > 30_000);
    let r = e2e::scenario_within(
        region,
        "e2e-forty-causes",
        Behaviour::FailWith("Worker.Failed".into(), cause),
        Duration::from_secs(420),
        |spec| {
            spec["worker"]["count"] = json!(40);
            spec["limits"]["budget_usd"] = json!(400.0);
            spec["limits"]["max_relaunches"] = json!(0);
            spec["limits"]["boot_timeout_seconds"] = json!(120);
            spec["waits"]["boot_poll_seconds"] = json!(5);
        },
    )
    .await;
    println!("refused: {:?}", harness().door.throttles.refused_in(region));
    assert_eq!(r.finished.status, "FAILED", "{:?}", r.finished.error);
    assert_eq!(r.finished.error.as_deref(), Some("Worker.Failed"));
    assert_eq!(
        r.finished.visited(State::Cleanup),
        1,
        "{:?}",
        r.finished.path
    );
    r.assert_nothing_left();
    r.assert_email("FAILED");
    let workers = r.finished.workers.as_array().unwrap();
    assert_eq!(workers.len(), 40);
    for w in workers {
        let cause = w["error"]["Cause"].as_str().unwrap_or_default();
        assert!(cause.ends_with(" bytes cut)"), "{w}");
        assert!(json!(cause).to_string().len() <= caps::CAUSE_KEPT, "{w}");
    }
    assert_eq!(r.finished.report["attempts"].as_array().unwrap().len(), 40);
    let largest = r.finished.largest_state_output;
    let b = bound_of(&r);
    println!("forty long causes: the largest state {largest} bytes, its bound {b:?}");
    assert!(largest <= b.state(), "{largest} > {b:?}");
}

/// EC2 throttles the account (RequestLimitExceeded, 503) for four RunInstances calls: more than
/// the SDK's own three attempts, so launch-worker answers Ephemera.AwsError and the state's Retry
/// asks again; the ClientToken keeps it one launch. Before, the code was read as a fatal launch
/// error and the run lost its only worker.
#[tokio::test]
async fn a_throttled_launch_is_retried_not_lost() {
    let r = scenario(
        "e2e-throttled-launch",
        |region| FaultRule::always(region, "RunInstances", "RequestLimitExceeded", 503).times(4),
        |_| {},
    )
    .await;
    assert_eq!(r.finished.status, "SUCCEEDED", "{:?}", r.finished);
    assert_eq!(r.finished.visited(State::ReleaseWorker), 0);
    assert_eq!(r.instances.len(), 1, "{:?}", r.instances);
    r.assert_nothing_left();
    r.assert_email("SUCCEEDED");
}

/// The terminate role without `ec2:TerminateInstances` (taken away after deploy): AWS refuses the
/// cleanup. Not retried; an alert email names the instance left running, the action refused and
/// what to run; the execution ends Ephemera.CleanupFailed. Before, the denial was only in the
/// execution's history, with no email at all.
#[tokio::test]
async fn a_cleanup_aws_refuses_sends_an_alert_naming_what_is_left() {
    let region = fresh_region();
    let door = &harness().door;
    door.set_policies(
        region,
        door.template_policies().without(
            &Principal::Function("terminate-with-cost-report".into()),
            "TerminateOnlyEphemeraInstances",
        ),
    );
    let r = e2e::scenario(
        region,
        "e2e-cleanup-denied",
        Behaviour::Succeed(report_for("e2e-cleanup-denied", 2)),
        |_| {},
    )
    .await;
    assert_eq!(r.finished.status, "FAILED", "{:?}", r.finished);
    assert_eq!(r.finished.error.as_deref(), Some("Ephemera.CleanupFailed"));
    assert_eq!(r.finished.visited(State::TerminateWithCostReport), 1);
    // Not asked again: Cleanup would be refused the same way.
    assert_eq!(
        r.finished.visited(State::Cleanup),
        0,
        "{:?}",
        r.finished.path
    );
    let left = r.live();
    assert_eq!(left.len(), 1, "{:?}", r.instances);
    assert_eq!(r.emails.len(), 1, "one alert: {:?}", r.emails);
    let e = &r.emails[0];
    assert!(e.subject.contains("CLEANUP DENIED"), "{}", e.subject);
    assert!(e.subject.len() < 100);
    for needle in [
        left[0].0.as_str(),
        "ec2:TerminateInstances",
        "ephemera sweep --yes",
    ] {
        assert!(e.body.contains(needle), "{needle} in {}", e.body);
    }
}
