//! The run's cap, `limits.budget_usd`, kept by admission (issue 32), through the deployed state
//! machine and the real handlers: a run whose first attempts' worst case passes its cap, even
//! at the least runtime worth launching, is refused by CheckQuota before any quota increase is
//! asked for; a relaunch the rest of the cap cannot cover is not launched, and the run goes on
//! to its report; an attempt the rest buys less than its max runtime is launched with that
//! runtime, its money deadline. (The worker stopping at that deadline, end to end with the real
//! worker binary: `worker/tests/orchestrated.rs`,
//! `a_job_that_never_ends_is_stopped_at_the_runs_cap_with_its_checkpoint_saved`.)

use ephemera_core::budget::{self, Cap};
use ephemera_core::RunSpec;
use ephemera_tests::e2e::{self, State};
use ephemera_tests::iam::ARTIFACT_BUCKET;
use ephemera_tests::worker_standin::Behaviour;
use ephemera_tests::{clients, fixtures, fresh_region, harness};
use serde_json::json;

/// The issue's example: 40 × r7i.48xlarge, 60 s of runtime, a 7,200 s boot deadline, an image
/// whose user data never runs, $10. Counted at its runtime alone it was admitted at about $8.5
/// and could bill about $1,000 waiting out its boot deadlines. Its quota is short too: before,
/// CheckQuota would have asked for an increase and waited before the budget was looked at.
#[tokio::test]
async fn the_issues_example_is_refused_before_anything_is_asked_for_or_launched() {
    let region = fresh_region();
    // The stack's artifact bucket, where the report's page goes.
    fixtures::bucket(&clients(region).s3, ARTIFACT_BUCKET, region).await;
    let r = e2e::scenario(region, "cap-example", Behaviour::NeverStart, |spec| {
        spec["worker"]["instance_types"] = json!(["r7i.48xlarge"]);
        spec["worker"]["count"] = json!(40);
        spec["limits"]["max_runtime_seconds"] = json!(60);
        spec["limits"]["heartbeat_seconds"] = json!(30);
        spec["limits"]["boot_timeout_seconds"] = json!(7200);
        spec["limits"]["budget_usd"] = json!(10.0);
        // Within the history bound at 40 workers.
        spec["waits"]["boot_poll_seconds"] = json!(1200);
    })
    .await;
    assert_eq!(r.finished.status, "FAILED", "{:?}", r.finished);
    assert_eq!(
        r.finished.error.as_deref(),
        Some("Ephemera.OverBudget"),
        "{:?}",
        r.finished.cause
    );
    let cause = r.finished.cause.clone().unwrap_or_default();
    for said in [
        "exceeds limits.budget_usd $10.00",
        "40 workers (worker.count)",
        "r7i.48xlarge",
        "limits.boot_timeout_seconds 7200",
        "one sweeper interval 900",
        "no quota increase was requested and nothing was launched",
    ] {
        assert!(cause.contains(said), "{said}: {cause}");
    }
    // 40 × 192 vCPUs is past the quota the stand-in applies: nothing was asked for.
    assert_eq!(harness().door.with_quotas(region, |q| q.increase_calls), 0);
    assert_eq!(r.finished.visited(State::LaunchWorker), 0);
    assert!(r.instances.is_empty(), "{:?}", r.instances);
    // Its report, with its bill: no instance was billed, and only the few state transitions
    // and invocations of its admission were; its page is stored and linked from the email.
    let e = r.assert_email("FAILED");
    assert!(e.body.contains("limits.budget_usd"), "{}", e.body);
    let report = &r.finished.report;
    assert_eq!(report["compute_usd"].as_f64(), Some(0.0), "{report}");
    assert_eq!(report["ebs_usd"].as_f64(), Some(0.0), "{report}");
    assert_eq!(report["attempts"].as_array().map(Vec::len), Some(0));
    let actual = report["actual_usd"].as_f64().unwrap();
    assert!(actual < 0.01, "{actual}");
    assert!(!report["stored"].is_null(), "the report's page: {report}");
    assert!(
        e.body.contains("Report with its timeline (HTML)"),
        "{}",
        e.body
    );
}

/// A worker Spot keeps taking back, with a cap of exactly two attempts and half of the least
/// third (a minute of runtime): the third launch is not made, the worker ends with its reason
/// naming what is left and the least attempt's worst case, and the run ends with its report,
/// its bill within the cap.
#[tokio::test]
async fn relaunches_stop_when_the_rest_of_the_cap_cannot_cover_one_more_attempt() {
    let region = fresh_region();
    let (mut worst, mut least) = (0.0, 0.0);
    let r = e2e::scenario(
        region,
        "cap-relaunch",
        Behaviour::SpotInterruptAlways,
        |spec| {
            spec["worker"]["market"] = json!("spot");
            spec["limits"]["max_relaunches"] = json!(4);
            let s = RunSpec::parse(spec).unwrap();
            let w = fixtures::attempt_worst_case(&s, region);
            worst = w.usd;
            least = w.with_runtime(&s, budget::MIN_USEFUL_RUNTIME_SECONDS).usd;
            let overhead = Cap::of(&s, region).overhead_usd;
            spec["limits"]["budget_usd"] = json!(overhead + 2.0 * worst + 0.5 * least);
        },
    )
    .await;
    assert_eq!(r.finished.status, "FAILED", "{:?}", r.finished);
    assert_eq!(
        r.finished.error.as_deref(),
        Some("Ephemera.OverBudget"),
        "{:?}",
        r.finished.cause
    );
    let cause = r.finished.cause.clone().unwrap_or_default();
    assert!(
        cause.contains("worker 1's attempt 3 was not launched"),
        "{cause}"
    );
    let left = format!("${:.4} is left of limits.budget_usd", 0.5 * least);
    assert!(cause.contains(&left), "{left}: {cause}");
    let one = format!("one attempt's worst case ${least:.4} at the least runtime");
    assert!(cause.contains(&one), "{one}: {cause}");
    // Two attempts launched, and two relaunches' worth of max_relaunches were left unused.
    assert_eq!(r.finished.visited(State::LaunchWorker), 3);
    assert_eq!(r.instances.len(), 2, "{:?}", r.instances);
    r.assert_nothing_left();
    let e = r.assert_email("FAILED");
    assert!(e.body.contains("attempt 3 was not launched"), "{}", e.body);
    let report = &r.finished.report;
    let estimate = report["estimate_usd"].as_f64().unwrap();
    assert!((estimate - 2.0 * worst).abs() < 1e-6, "{report}");
    let budget = report["budget_usd"].as_f64().unwrap();
    assert!(report["actual_usd"].as_f64().unwrap() <= budget, "{report}");
}

/// A relaunch the rest of the cap cannot wholly pay for is launched with the runtime the rest
/// buys, its money deadline: recorded in the worker's state (with the AwaitCompletion timeout
/// held to it) and reserved at that runtime's worst case; the attempt after it, which the rest
/// cannot buy a minute of, is not launched.
#[tokio::test]
async fn a_relaunch_the_rest_cannot_wholly_pay_for_is_granted_the_runtime_it_buys() {
    let region = fresh_region();
    let mut expected = None;
    let r = e2e::scenario(
        region,
        "cap-granted",
        Behaviour::SpotInterruptAlways,
        |spec| {
            spec["worker"]["market"] = json!("spot");
            spec["limits"]["max_relaunches"] = json!(4);
            let s = RunSpec::parse(spec).unwrap();
            let w = fixtures::attempt_worst_case(&s, region);
            let overhead = Cap::of(&s, region).overhead_usd;
            // One whole attempt and half of another.
            let budget_usd = overhead + 1.5 * w.usd;
            spec["limits"]["budget_usd"] = json!(budget_usd);
            let cap = Cap {
                budget_usd,
                overhead_usd: overhead,
            };
            let granted = budget::grant(&s, &w, cap.remainder(w.usd)).unwrap();
            expected = Some((w, granted));
        },
    )
    .await;
    let (whole, granted) = expected.unwrap();
    assert!(granted.capped(), "{granted:?}");
    assert!(granted.runtime_seconds >= budget::MIN_USEFUL_RUNTIME_SECONDS);
    assert_eq!(r.finished.status, "FAILED", "{:?}", r.finished);
    assert_eq!(
        r.finished.error.as_deref(),
        Some("Ephemera.OverBudget"),
        "{:?}",
        r.finished.cause
    );
    let cause = r.finished.cause.clone().unwrap_or_default();
    assert!(
        cause.contains("worker 1's attempt 3 was not launched"),
        "{cause}"
    );
    assert_eq!(r.instances.len(), 2, "{:?}", r.instances);
    let worker = &r.finished.workers[0]["worker"];
    let attempts = worker["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{worker}");
    assert_eq!(attempts[0]["estimate_usd"].as_f64(), Some(whole.usd));
    assert_eq!(attempts[1]["estimate_usd"].as_f64(), Some(granted.usd));
    assert_eq!(
        worker["budget_seconds"], granted.runtime_seconds,
        "{worker}"
    );
    assert_eq!(
        worker["timeout_seconds"],
        granted.runtime_seconds + budget::STOP_ALLOWANCE_SECONDS,
        "{worker}"
    );
    // Its deadline tag, the sweeper's backstop, is the grant's: boot, granted runtime, grace.
    let id = attempts[1]["instance_id"].as_str().unwrap();
    let instance = ephemera_tests::fixtures::instance(&clients(region), id).await;
    let tag = |k: &str| {
        instance
            .tags()
            .iter()
            .find(|t| t.key() == Some(k))
            .and_then(|t| t.value())
            .map(str::to_string)
    };
    let deadline =
        chrono::DateTime::parse_from_rfc3339(&tag("ephemera:deadline").unwrap()).unwrap();
    let launched =
        chrono::DateTime::parse_from_rfc3339(attempts[1]["launched_at"].as_str().unwrap()).unwrap();
    let lasts = (deadline - launched).num_seconds();
    let expected = (whole.boot_seconds + granted.runtime_seconds + whole.grace_seconds) as i64;
    assert!(
        (lasts - expected).abs() <= 30,
        "{lasts} s, not {expected} s"
    );
    r.assert_nothing_left();
    let report = &r.finished.report;
    let budget_usd = report["budget_usd"].as_f64().unwrap();
    assert!(
        report["estimate_usd"].as_f64().unwrap() <= budget_usd,
        "{report}"
    );
    assert!(report["actual_usd"].as_f64().unwrap() <= budget_usd);
}
