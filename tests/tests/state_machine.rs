//! The deployed ASL, executed end to end by moto's Step Functions executor, its Lambda calls
//! served by the real handlers through the front door, a worker stand-in on the task token.
//! Every scenario asserts the final status, the path taken, the email, and that no instance
//! tagged for the run is left pending or running.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ephemera_tests::e2e::State;
use ephemera_tests::e2e::{self, report_for, Run};
use ephemera_tests::worker_standin::Behaviour;
use ephemera_tests::{clients, fresh_region, harness, FaultRule};
use serde_json::{json, Value};

const SPOT: &str = "L-34B43A08";
const ON_DEMAND: &str = "L-1216C47A";

/// Runs one execution of the deployed definition in a fresh region, `setup` first.
async fn scenario(
    run_id: &str,
    behaviour: Behaviour,
    setup: impl FnOnce(&'static str),
    edit: impl FnOnce(&mut Value),
) -> Run {
    let region = fresh_region();
    setup(region);
    e2e::scenario(region, run_id, behaviour, edit).await
}

#[tokio::test]
async fn happy_path() {
    let r = scenario(
        "e2e-happy",
        Behaviour::Succeed(report_for("e2e-happy", 2)),
        |_| {},
        |_| {},
    )
    .await;
    assert_eq!(r.finished.status, "SUCCEEDED", "{:?}", r.finished);
    for s in [
        State::Start,
        State::CheckQuota,
        State::LaunchWorker,
        State::AwaitCompletion,
        State::VerifyCompletion,
        State::TerminateWithCostReport,
        State::Done,
    ] {
        assert_eq!(r.finished.visited(s), 1, "{s} in {:?}", r.finished.path);
    }
    // The new instance is not found by id on the first checks (EC2's eventual consistency,
    // played by the front door): booting, not failed.
    assert!(
        r.finished.visited(State::HealthCheck) >= 2,
        "{:?}",
        r.finished.path
    );
    assert_eq!(r.finished.visited(State::Cleanup), 0);
    r.assert_nothing_left();
    assert_eq!(r.instances.len(), 1);
    r.assert_email("SUCCEEDED");
    let report = &r.finished.report;
    assert_eq!(report["outcome"], "SUCCEEDED");
    // Every Lambda task is priced: quota-check, launch-worker, health-check (at least twice),
    // verify-completion and terminate-with-cost-report, as the history records them
    // (LambdaFunctionScheduled for a Task whose Resource is a function ARN).
    let invocations = report["orchestration"]["lambda_invocations"]
        .as_u64()
        .unwrap();
    assert!(invocations >= 6, "{}", report["orchestration"]);
    // Their GB-seconds at the template's memory: more than none, and the seconds they stand
    // for (the functions ran one after another here) no more than the run's whole time, which
    // a price at any larger memory would pass. The run's time is in whole seconds: +1.
    let gb_seconds = report["orchestration"]["lambda_gb_seconds"]
        .as_f64()
        .unwrap();
    let lambda_seconds = gb_seconds / (f64::from(ephemera_tests::iam::lambda_memory_mb()) / 1024.0);
    let total = report["phases"]["total_seconds"].as_f64().unwrap();
    assert!(
        gb_seconds > 0.0 && lambda_seconds <= total + 1.0,
        "{gb_seconds} GB-s, {lambda_seconds} s of Lambda in a run of {total} s"
    );
    assert_eq!(report["attempts"].as_array().unwrap().len(), 1);
    assert_eq!(report["attempts"][0]["market"], "spot");
    assert!(
        report["orchestration"]["state_transitions"]
            .as_u64()
            .unwrap()
            >= 8,
        "{report}"
    );
    assert_eq!(r.finished.document["verification"]["ok"], true);
    assert_eq!(
        report["verification"]["ok"], true,
        "the checks reach the report"
    );
    assert_eq!(r.report()["run_id"], "e2e-happy");
}

/// Each attempt's task token is a parameter of its instance's own, tagged with the one role
/// session that may read it: while the run waits on it, the worker on that instance reads it, a
/// worker on any other instance is refused as AWS refuses it; once the run is over, its
/// parameters are gone.
#[tokio::test]
async fn a_task_token_is_read_only_by_its_own_instance() {
    let run_id = "e2e-token";
    let probe: Arc<Mutex<Option<TokenProbe>>> = Arc::default();
    let seen = probe.clone();
    let r = scenario(
        run_id,
        // The worker holds the token a few seconds, so that it can be probed while it exists.
        Behaviour::SucceedAfter(4, report_for(run_id, 2)),
        move |region| {
            // A role of the account allowed to read every parameter (the sweeper's, widened):
            // IAM lets its read of the token through, the key's policy must not.
            let door = &harness().door;
            let mut policies = door.template_policies();
            policies
                .by_principal
                .get_mut(&ephemera_tests::iam::Principal::Function("sweeper".into()))
                .unwrap()
                .push(ephemera_tests::iam::Statement {
                    sid: "ReadsEveryParameter".into(),
                    allow: true,
                    actions: vec!["ssm:GetParameter".into()],
                    resources: vec!["*".into()],
                    conditions: vec![],
                });
            door.set_policies(region, policies);
            tokio::spawn(async move {
                let found = probe_token(region, run_id).await;
                *seen.lock().unwrap() = Some(found);
            });
        },
        |_| {},
    )
    .await;
    assert_eq!(r.finished.status, "SUCCEEDED", "{:?}", r.finished);
    let (instance, _) = &r.instances[0];
    let p = probe
        .lock()
        .unwrap()
        .take()
        .expect("the token was probed while the run waited on it");
    assert_eq!(&p.instance, instance);
    assert!(p.own_read, "its own instance reads it");
    assert_eq!(p.other_read.as_deref(), Some("AccessDeniedException"));
    // Another role of the account with SSM read on everything cannot open it either: the
    // token is under the stack's own key, which only the worker role may decrypt.
    let broad = p.broad_read.as_deref().unwrap_or("let through");
    assert!(broad.contains("kms:Decrypt"), "{broad}");
    assert_eq!(
        p.key.as_deref(),
        Some(ephemera_tests::iam::task_token_key(r.region).as_str())
    );
    assert_eq!(
        p.reader,
        Some(format!(
            "{}:{instance}",
            ephemera_tests::iam::WORKER_ROLE_ID
        ))
    );
    // The run's signals went with it (terminate-with-cost-report deletes them).
    let left = clients(r.region)
        .ssm
        .get_parameters_by_path()
        .path(format!("/ephemera/runs/{run_id}"))
        .recursive(true)
        .send()
        .await
        .unwrap();
    assert!(left.parameters().is_empty(), "{:?}", left.parameters());
    r.assert_nothing_left();
}

/// What could be done with a run's task token while it existed.
struct TokenProbe {
    instance: String,
    own_read: bool,
    /// The error code a read as another instance got, None if it was let through.
    other_read: Option<String>,
    /// The refusal a role with `ssm:GetParameter` on every parameter got, None if let through.
    broad_read: Option<String>,
    /// The key the token is encrypted under.
    key: Option<String>,
    reader: Option<String>,
}

async fn probe_token(region: &'static str, run_id: &str) -> TokenProbe {
    let admin = clients(region).ssm;
    let name = ephemera_tests::eventually("the task token", Duration::from_secs(150), || {
        let admin = admin.clone();
        async move {
            let found = admin
                .get_parameters_by_path()
                .path(format!("/ephemera/runs/{run_id}/task-token"))
                .send()
                .await
                .ok()?;
            found
                .parameters()
                .first()
                .and_then(|p| p.name())
                .map(str::to_string)
        }
    })
    .await;
    let instance = name.rsplit('/').next().unwrap().to_string();
    let read_as = |session: &str| {
        let ssm = aws_sdk_ssm::Client::new(&ephemera_tests::instance_config(region, session));
        let name = name.clone();
        async move {
            ssm.get_parameter()
                .name(name)
                .with_decryption(true)
                .send()
                .await
        }
    };
    let own_read = read_as(&instance).await.is_ok_and(|o| {
        o.parameter()
            .and_then(|p| p.value())
            .is_some_and(|v| !v.is_empty())
    });
    let other_read = read_as("i-0another0instance1").await.err().map(|e| {
        aws_sdk_ssm::error::ProvideErrorMetadata::code(&e)
            .unwrap_or("?")
            .to_string()
    });
    let reader = admin
        .list_tags_for_resource()
        .resource_type(aws_sdk_ssm::types::ResourceTypeForTagging::Parameter)
        .resource_id(&name)
        .send()
        .await
        .ok()
        .and_then(|t| {
            t.tag_list()
                .iter()
                .find(|t| t.key() == ephemera_core::tags::READER)
                .map(|t| t.value().to_string())
        });
    let sweeper = ephemera_tests::iam::Principal::Function("sweeper".into());
    let broad = aws_sdk_ssm::Client::new(&ephemera_tests::principal_config(region, &sweeper));
    let broad_read = broad
        .get_parameter()
        .name(&name)
        .with_decryption(true)
        .send()
        .await
        .err()
        .map(|e| format!("{}", aws_sdk_ssm::error::DisplayErrorContext(&e)));
    let key = admin
        .describe_parameters()
        .parameter_filters(
            aws_sdk_ssm::types::ParameterStringFilter::builder()
                .key("Name")
                .option("Equals")
                .values(&name)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .ok()
        .and_then(|d| {
            d.parameters()
                .first()
                .and_then(|p| p.key_id().map(str::to_string))
        });
    TokenProbe {
        instance,
        own_read,
        other_read,
        broad_read,
        key,
        reader,
    }
}

#[tokio::test]
async fn quota_short_is_requested_once_then_approved_and_runs() {
    let r = scenario(
        "e2e-quota-approved",
        Behaviour::Succeed(report_for("e2e-quota-approved", 2)),
        |region| {
            harness().door.with_quotas(region, |q| {
                q.applied.insert(SPOT.into(), 8.0);
                q.next_script = vec!["PENDING".into(), "CASE_OPENED".into(), "APPROVED".into()];
            })
        },
        |spec| spec["worker"]["market"] = json!("spot"),
    )
    .await;
    assert_eq!(r.finished.status, "SUCCEEDED", "{:?}", r.finished);
    assert_eq!(
        r.finished.visited(State::WaitQuota),
        3,
        "{:?}",
        r.finished.path
    );
    assert_eq!(r.finished.visited(State::CheckQuota), 4);
    assert_eq!(
        harness().door.with_quotas(r.region, |q| q.increase_calls),
        1,
        "the increase is requested once"
    );
    r.assert_nothing_left();
    r.assert_email("SUCCEEDED");
    let quota = &r.finished.document["quota"]["quotas"][0];
    assert_eq!(quota["request"]["status"], "APPROVED");
    assert_eq!(quota["applied"], 16.0);
}

#[tokio::test]
async fn quota_denied_fails_and_launches_nothing() {
    let r = scenario(
        "e2e-quota-denied",
        Behaviour::Succeed(report_for("e2e-quota-denied", 2)),
        |region| {
            harness().door.with_quotas(region, |q| {
                q.applied.insert(ON_DEMAND.into(), 4.0);
                q.next_script = vec!["CASE_OPENED".into(), "DENIED".into()];
            })
        },
        |spec| spec["worker"]["market"] = json!("on-demand"),
    )
    .await;
    assert_eq!(r.finished.status, "FAILED");
    assert_eq!(r.finished.error.as_deref(), Some("Ephemera.QuotaDenied"));
    assert!(r
        .finished
        .cause
        .as_deref()
        .unwrap()
        .contains("ended DENIED"));
    assert_eq!(r.finished.visited(State::LaunchWorker), 0);
    assert_eq!(r.finished.visited(State::Cleanup), 1);
    assert!(r.instances.is_empty(), "{:?}", r.instances);
    let e = r.assert_email("FAILED");
    assert!(e.body.contains("nothing was launched"), "{}", e.body);
}

#[tokio::test]
async fn over_budget_fails_and_launches_nothing() {
    let r = scenario(
        "e2e-over-budget",
        Behaviour::Succeed(report_for("e2e-over-budget", 2)),
        |_| {},
        |spec| spec["limits"]["budget_usd"] = json!(0.25),
    )
    .await;
    assert_eq!(r.finished.status, "FAILED");
    assert_eq!(r.finished.error.as_deref(), Some("Ephemera.OverBudget"));
    assert!(r.finished.cause.as_deref().unwrap().contains("budget_usd"));
    assert!(r.instances.is_empty(), "{:?}", r.instances);
    assert_eq!(r.finished.visited(State::HealthCheck), 0);
    r.assert_email("FAILED");
}

#[tokio::test]
async fn spot_capacity_error_runs_on_demand() {
    let r = scenario(
        "e2e-spot-capacity",
        Behaviour::Succeed(report_for("e2e-spot-capacity", 2)),
        |region| {
            harness().door.add_fault(
                FaultRule::always(region, "RunInstances", "InsufficientInstanceCapacity", 500)
                    .when("InstanceMarketOptions.MarketType", "spot"),
            )
        },
        |_| {},
    )
    .await;
    assert_eq!(r.finished.status, "SUCCEEDED", "{:?}", r.finished);
    let report = &r.finished.report;
    assert_eq!(report["attempts"][0]["market"], "on-demand");
    // Two types × two subnets refused Spot: the last kept, all four counted.
    let current = &r.finished.workers[0]["worker"]["attempts"][0];
    assert_eq!(current["tried"].as_array().unwrap().len(), 1, "{current}");
    assert_eq!(current["tried_total"], 4, "{current}");
    r.assert_nothing_left();
    r.assert_email("SUCCEEDED");
}

#[tokio::test]
async fn boot_that_never_completes_is_cleaned_up() {
    let r = scenario(
        "e2e-no-boot",
        Behaviour::NeverStart,
        |_| {},
        |spec| spec["limits"]["boot_timeout_seconds"] = json!(5),
    )
    .await;
    assert_eq!(r.finished.status, "FAILED");
    assert_eq!(r.finished.error.as_deref(), Some("Ephemera.BootFailed"));
    assert!(r
        .finished
        .cause
        .as_deref()
        .unwrap()
        .contains("boot_timeout_seconds"));
    assert!(r.finished.visited(State::HealthCheck) >= 3);
    assert_eq!(r.finished.visited(State::Cleanup), 1);
    assert_eq!(r.finished.visited(State::AwaitCompletion), 0);
    assert_eq!(r.instances.len(), 1);
    r.assert_nothing_left();
    r.assert_email("FAILED");
}

#[tokio::test]
async fn a_worker_that_stops_heartbeating_is_cleaned_up() {
    let r = scenario(
        "e2e-silent",
        Behaviour::GoSilent,
        |_| {},
        |spec| spec["limits"]["heartbeat_seconds"] = json!(30),
    )
    .await;
    assert_eq!(r.finished.status, "FAILED");
    // moto reports States.Timeout where AWS says States.HeartbeatTimeout; either becomes
    // Worker.TimedOut, since a Fail state may not raise a States.* name.
    assert_eq!(r.finished.error.as_deref(), Some("Worker.TimedOut"));
    let cause = r.finished.cause.as_deref().unwrap();
    assert!(
        cause.starts_with("States.HeartbeatTimeout") || cause.starts_with("States.Timeout"),
        "{cause}"
    );
    assert_eq!(r.finished.visited(State::AwaitCompletion), 1);
    assert_eq!(r.finished.visited(State::Cleanup), 1);
    r.assert_nothing_left();
    r.assert_email("FAILED");
}

#[tokio::test]
async fn a_spot_interruption_relaunches_and_reports_both_attempts() {
    let r = scenario(
        "e2e-spot-interrupt",
        Behaviour::SpotInterruptFirst(report_for("e2e-spot-interrupt", 2)),
        |_| {},
        |_| {},
    )
    .await;
    assert_eq!(r.finished.status, "SUCCEEDED", "{:?}", r.finished);
    assert_eq!(r.finished.visited(State::Relaunch), 1);
    assert_eq!(r.finished.visited(State::LaunchWorker), 2);
    let report = &r.finished.report;
    let attempts = report["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{report}");
    assert_eq!(attempts[0]["market"], "spot");
    assert_eq!(
        attempts[1]["market"], "on-demand",
        "a relaunch goes On-Demand"
    );
    assert_eq!(r.instances.len(), 2);
    r.assert_nothing_left();
    let e = r.assert_email("SUCCEEDED");
    assert!(
        e.body.contains("#1 ") && e.body.contains("#2 "),
        "{}",
        e.body
    );
}

#[tokio::test]
async fn failed_verification_terminates_and_fails_with_the_checks() {
    let r = scenario(
        "e2e-verify",
        Behaviour::Succeed(report_for("e2e-verify", 1)),
        |_| {},
        |_| {},
    )
    .await;
    assert_eq!(r.finished.status, "FAILED");
    assert_eq!(
        r.finished.error.as_deref(),
        Some("Ephemera.VerificationFailed")
    );
    let cause = r.finished.cause.as_deref().unwrap();
    assert!(
        cause.contains("partitions_done (1 done, 2 expected)"),
        "{cause}"
    );
    assert_eq!(r.finished.visited(State::Cleanup), 1);
    r.assert_nothing_left();
    r.assert_email("FAILED");
}

#[tokio::test]
async fn a_lambda_crash_after_launch_still_terminates() {
    let r = scenario(
        "e2e-crash",
        Behaviour::Succeed(report_for("e2e-crash", 2)),
        |region| harness().door.add_crash(region, "health-check", 100),
        |_| {},
    )
    .await;
    assert_eq!(r.finished.status, "FAILED");
    // The worker is released at once, and the run cleans up what is left.
    assert_eq!(
        r.finished.visited(State::ReleaseWorker),
        1,
        "{:?}",
        r.finished.path
    );
    assert_eq!(r.finished.visited(State::Cleanup), 1);
    assert_eq!(r.instances.len(), 1);
    r.assert_nothing_left();
    let report = r.report();
    // Released by ReleaseWorker, so the cleanup found it already going; costed all the same.
    assert_eq!(report["attempts"].as_array().unwrap().len(), 1, "{report}");
    assert_ne!(report["attempts"][0]["state_before"], "running", "{report}");
    assert_eq!(report["workers"][0]["error"]["Error"], "Runtime.ExitError");
    r.assert_email("FAILED");
}

#[tokio::test]
async fn an_invalid_runspec_fails_clearly_and_launches_nothing() {
    let r = scenario(
        "e2e-invalid",
        Behaviour::Succeed(report_for("e2e-invalid", 2)),
        |_| {},
        |spec| {
            spec["limits"]["heartbeat_seconds"] = json!(5);
            spec["worker"]["instance_types"] = json!(["c7g.4xlarge", "z9.mega"]);
        },
    )
    .await;
    assert_eq!(r.finished.status, "FAILED");
    assert_eq!(r.finished.error.as_deref(), Some("Ephemera.InvalidRunSpec"));
    // The cause is the plain list of problems, one a line, not the Lambda's error JSON.
    let cause = r.finished.cause.as_deref().unwrap();
    let lines: Vec<&str> = cause.lines().collect();
    assert_eq!(lines.len(), 2, "{cause}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("worker.instance_types[1]: unknown instance type 'z9.mega'")),
        "{cause}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("limits.heartbeat_seconds: ")),
        "{cause}"
    );
    assert!(!cause.contains("errorType"), "{cause}");
    assert_eq!(
        r.finished.path,
        vec![
            State::Scheduled,
            State::Start,
            State::CheckQuota,
            State::TellRefusal,
            State::RejectRunSpec
        ]
    );
    assert!(r.instances.is_empty());
    // Told once, every problem named.
    assert_eq!(r.emails.len(), 1, "{:?}", r.emails);
    let e = &r.emails[0];
    assert_eq!(e.subject, "ephemera e2e-invalid: REFUSED (2 problems)");
    assert!(
        e.body
            .contains("- worker.instance_types[1]: unknown instance type 'z9.mega'"),
        "{}",
        e.body
    );
    assert!(
        e.body.contains("nothing was launched, reserved or billed"),
        "{}",
        e.body
    );
}

/// IAM is enforced: without the statement that lets the state machine hand the task token to
/// the worker (template.yaml, `HandTheTaskTokenToTheWorker`), AwaitCompletion fails as AWS fails
/// it, and the run still ends in Cleanup with nothing left running.
#[tokio::test]
async fn the_state_machine_without_its_ssm_statement_fails_at_the_handover_and_cleans_up() {
    use ephemera_tests::iam::Principal;
    let r = scenario(
        "e2e-no-handover",
        Behaviour::Succeed(report_for("e2e-no-handover", 2)),
        |region| {
            let door = &harness().door;
            door.set_policies(
                region,
                door.template_policies()
                    .without(&Principal::StateMachine, "HandTheTaskTokenToTheWorker"),
            );
        },
        |_| {},
    )
    .await;
    assert_eq!(r.finished.status, "FAILED", "{:?}", r.finished);
    assert_eq!(r.finished.visited(State::AwaitCompletion), 1);
    // Its only worker lost: verification has nothing to verify and fails with its error.
    assert_eq!(r.finished.visited(State::ReleaseWorker), 1);
    assert_eq!(r.finished.visited(State::VerifyCompletion), 1);
    assert_eq!(r.finished.visited(State::TerminateWithCostReport), 0);
    assert_eq!(r.finished.visited(State::Cleanup), 1);
    // The SDK integration's error (moto spells the service `ssm`, AWS `Ssm`), and its cause.
    let error = r.finished.error.as_deref().unwrap_or_default();
    assert!(
        error.ends_with(".AccessDeniedException"),
        "{:?}",
        r.finished
    );
    let cause = r.finished.cause.as_deref().unwrap_or_default();
    assert!(cause.contains("ssm:PutParameter"), "{:?}", r.finished);
    let denied = harness().door.denials_in(r.region);
    assert!(
        denied
            .iter()
            .any(|d| d.principal == Principal::StateMachine && d.action == "ssm:PutParameter"),
        "{denied:?}"
    );
    r.assert_nothing_left();
    r.assert_email("FAILED");
}

/// Spot takes the instance back before the worker can say so (its two-minute notice ends with
/// the instance gone): the heartbeat times out, the instance's state reason says Spot, and the
/// run relaunches instead of failing as a timed-out worker.
#[tokio::test]
async fn a_spot_reclaim_the_worker_could_not_report_relaunches() {
    let r = scenario(
        "e2e-reclaimed",
        Behaviour::ReclaimedFirst(2, report_for("e2e-reclaimed", 2)),
        |_| {},
        |spec| spec["limits"]["heartbeat_seconds"] = json!(30),
    )
    .await;
    assert_eq!(r.finished.status, "SUCCEEDED", "{:?}", r.finished);
    assert_eq!(
        r.finished.visited(State::WasReclaimed),
        1,
        "{:?}",
        r.finished.path
    );
    assert_eq!(r.finished.visited(State::LaunchWorker), 2);
    assert_eq!(r.finished.visited(State::Cleanup), 0);
    r.assert_nothing_left();
    let report = r.report();
    let attempts = report["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{report}");
    assert_eq!(attempts[0]["market"], "spot");
    // The history, which the report reads for a run stopped before its Map ended (and for an
    // instance EC2 no longer describes), saw both launches and the worker's end, as Step
    // Functions records them.
    use ephemera_functions::aws::history::History;
    let sfn = aws_sdk_sfn::Client::new(&ephemera_tests::sdk_config(r.region));
    let seen = sfn
        .execution_stats(&r.execution, 128)
        .await
        .unwrap()
        .expect("the history")
        .workers;
    let launched: Vec<(u32, u32)> = seen.launched.iter().map(|(s, a)| (*s, a.attempt)).collect();
    assert_eq!(launched, [(1, 1), (1, 2)], "{seen:?}");
    assert!(seen.ended.contains_key(&1), "{seen:?}");
}

/// EventBridge's Spot interruption warning reaches the spot-interruption Lambda, which fails the
/// waiting task at once: the run relaunches within seconds of the notice, not after a heartbeat
/// timeout (EventBridge → Lambda is AWS's part; the test delivers the event as the rule would).
#[tokio::test]
async fn the_spot_warning_event_relaunches_at_once() {
    let r = scenario(
        "e2e-warning",
        Behaviour::ReclaimedFirst(120, report_for("e2e-warning", 2)),
        |region| {
            tokio::spawn(async move {
                let door = &harness().door;
                let instance = ephemera_tests::eventually(
                    "the Spot notice",
                    Duration::from_secs(120),
                    || async {
                        door.spot_notices
                            .lock()
                            .unwrap()
                            .keys()
                            .find(|(r, _)| r == region)
                            .map(|(_, i)| i.clone())
                    },
                )
                .await;
                let event = json!({
                    "version": "0", "source": "aws.ec2", "region": region,
                    "detail-type": "EC2 Spot Instance Interruption Warning",
                    "resources": [format!("arn:aws:ec2:{region}:123456789012:instance/{instance}")],
                    "detail": {"instance-id": instance, "instance-action": "terminate"}
                });
                let out = ephemera_functions::invoke(
                    &ephemera_tests::function_clients(region, "spot-interruption"),
                    &ephemera_functions::Settings::default(),
                    ephemera_functions::Function::SpotInterruption,
                    event,
                )
                .await
                .expect("spot-interruption");
                assert_eq!(out["action"], "failed-the-task", "{out}");
            });
        },
        |spec| spec["limits"]["heartbeat_seconds"] = json!(120),
    )
    .await;
    assert_eq!(r.finished.status, "SUCCEEDED", "{:?}", r.finished);
    assert_eq!(
        r.finished.visited(State::WasReclaimed),
        0,
        "{:?}",
        r.finished.path
    );
    assert_eq!(r.finished.visited(State::CanRelaunch), 1);
    assert_eq!(r.finished.visited(State::LaunchWorker), 2);
    r.assert_nothing_left();
}

/// A scheduled occurrence (the template's schedule input, with EventBridge Scheduler's
/// `<aws.scheduler.execution-id>` filled in) runs under a run id of its own.
#[tokio::test]
async fn a_scheduled_occurrence_gets_a_run_id_of_its_own() {
    let r = scenario(
        "e2e-weekly-occ42",
        Behaviour::Succeed(report_for("e2e-weekly-occ42", 2)),
        |_| {},
        |spec| {
            spec["run_id"] = json!("e2e-weekly");
            *spec = json!({"schedule": {"execution": "occ42"}, "runspec": spec.clone()});
        },
    )
    .await;
    assert_eq!(r.finished.status, "SUCCEEDED", "{:?}", r.finished);
    assert_eq!(
        r.finished.path[..3],
        [
            State::Scheduled,
            State::ScheduledRunId,
            State::StartScheduled
        ]
    );
    assert_eq!(r.finished.document["run"]["run_id"], "e2e-weekly-occ42");
    assert_eq!(r.report()["run_id"], "e2e-weekly-occ42");
    r.assert_nothing_left();
}
