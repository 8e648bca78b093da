//! The `ephemera` binary against the emulator (moto behind the harness's front door, the
//! deployed ASL, the real handlers, a worker stand-in): every verb, the exit codes, and the
//! errors a person must be able to act on.

use std::process::Output;
use std::time::Duration;

use aws_sdk_ec2::types::{InstanceType, ResourceType, Tag, TagSpecification};
use ephemera_core::contract::logs::worker_log_stream;
use ephemera_core::tags;
use ephemera_tests::cli::{text, write_spec};
use ephemera_tests::iam::Principal;
use ephemera_tests::worker_standin::{self, Behaviour};
use ephemera_tests::{clients, e2e, eventually, fixtures, fresh_region, harness};
use serde_json::{json, Value};

/// The binary as a person runs it, in `region` of the emulator, as its administrator.
fn ephemera(region: &str) -> tokio::process::Command {
    ephemera_tests::cli::command(env!("CARGO_BIN_EXE_ephemera"), region)
}

async fn output(c: &mut tokio::process::Command) -> Output {
    c.output().await.expect("the ephemera binary runs")
}

/// No SDK internals in what a person reads.
fn assert_no_dump(stderr: &str) {
    for inner in [
        "DispatchFailure",
        "ConnectorError",
        "ServiceError",
        "ErrorMetadata",
        "Some(",
        "{ source",
    ] {
        assert!(
            !stderr.contains(inner),
            "a debug dump reached the user: {stderr}"
        );
    }
}

fn sample_path() -> String {
    format!("{}/../events/runspec.json", env!("CARGO_MANIFEST_DIR"))
}

fn report_of(run_id: &str) -> Value {
    json!({"run_id": run_id, "partitions_done": 1, "partitions_failed": 0,
           "rows_in": 10, "rows_out": 10})
}

#[tokio::test]
async fn validate_accepts_the_sample_and_names_every_bad_field() {
    let out = output(ephemera("us-east-1").args(["validate", &sample_path()])).await;
    assert!(out.status.success(), "{out:?}");
    assert!(text(&out)
        .0
        .contains("valid RunSpec for run 'fx-features-2023-04'"));

    let mut bad: Value =
        serde_json::from_str(&std::fs::read_to_string(sample_path()).unwrap()).unwrap();
    bad["limits"]["budget_usd"] = json!(-3);
    bad["worker"]["subnets"] = json!([]);
    bad["worker"].as_object_mut().unwrap().remove("image");
    bad["limits"]
        .as_object_mut()
        .unwrap()
        .remove("max_runtime_seconds");
    let path = write_spec("bad", &bad);
    let out = output(ephemera("us-east-1").arg("validate").arg(&path)).await;
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out).1;
    for line in [
        "invalid RunSpec, 4 problem(s):",
        "  worker.image: missing: this field is required",
        "  limits.max_runtime_seconds: missing: this field is required",
        "  worker.subnets: must list at least one subnet",
        "  limits.budget_usd: -3 must be a positive amount",
    ] {
        assert!(err.contains(line), "{line}\n{err}");
    }
}

#[tokio::test]
async fn run_follows_to_the_report_and_the_run_reads_back_with_every_verb() {
    let region = fresh_region();
    let aws = clients(region);
    let net = fixtures::network(&aws).await;
    let spec = fixtures::runspec("cli-run", &net, None);
    let path = write_spec("run", &spec);
    let machine = e2e::create_state_machine(region).await;
    let worker = worker_standin::spawn(
        region,
        "cli-run",
        Behaviour::Succeed(report_of("cli-run")),
        Duration::from_secs(120),
    );
    let out = output(
        ephemera(region)
            .args(["run", path.to_str().unwrap(), "--wait-timeout", "120"])
            .args(["--state-machine", &machine]),
    )
    .await;
    worker.log().await;
    let (stdout, stderr) = text(&out);
    // Shown with --nocapture: what a person sees.
    eprintln!("{stdout}");
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("started arn:aws:states:"), "{stdout}");
    assert!(
        stdout.contains("follow it: ephemera status cli-run-"),
        "{stdout}"
    );
    // Each state once entered, in order, with the time since the start.
    let states: Vec<&str> = stdout
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let t = w.next()?;
            t.contains(':').then_some(())?;
            t.chars()
                .all(|c| c.is_ascii_digit() || c == ':')
                .then_some(())?;
            w.next()
        })
        .collect();
    let order = [
        "CheckQuota",
        "LaunchWorker",
        "HealthCheck",
        "AwaitCompletion",
        "TerminateWithCostReport",
        "Done",
    ];
    let mut at = 0;
    for s in order {
        at += states[at..]
            .iter()
            .position(|x| *x == s)
            .unwrap_or_else(|| panic!("{s} not entered after {:?}: {stdout}", &states[..at]));
    }
    assert!(stdout.contains("attempt #1 i-"), "{stdout}");
    assert!(stdout.contains("so far"), "{stdout}");
    assert!(stdout.contains("≈ cost so far: an estimate"), "{stdout}");
    assert!(stdout.contains("SUCCEEDED after "), "{stdout}");
    assert!(stdout.contains("Run cli-run SUCCEEDED."), "{stdout}");
    assert!(stdout.contains("Cost: $"), "{stdout}");
    assert!(
        !stdout.contains("\"actual_usd\""),
        "the summary, not the JSON: {stdout}"
    );

    // runs: the run with its outcome and measured cost.
    let out = output(ephemera(region).args(["runs", "--state-machine", &machine])).await;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let row = stdout
        .lines()
        .find(|l| l.starts_with("cli-run "))
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(row.contains("SUCCEEDED") && row.contains(" $0."), "{row}");
    assert!(stdout.starts_with("RUN "), "{stdout}");
    // The month so far, from the stack's ledger: this run, ended at its measured cost.
    let month = ephemera_core::ledger::month_of(chrono::Utc::now());
    let line = stdout
        .lines()
        .find(|l| l.starts_with(&format!("{month} so far: $")))
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(
        line.contains("by 1 run (1 ended) [ledger ephemera-ledger]"),
        "{line}"
    );
    // The month's page: this run, its measured cost against the budget given, no script.
    let month_page =
        std::env::temp_dir().join(format!("ephemera-cli-month-{}.html", std::process::id()));
    let out = output(ephemera(region).args([
        "runs",
        "--state-machine",
        &machine,
        "--html",
        month_page.to_str().unwrap(),
        "--budget",
        "833",
    ]))
    .await;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.starts_with(&format!("{month}: 1 run, $0.")),
        "{stdout}"
    );
    let html = std::fs::read_to_string(&month_page).unwrap();
    let _ = std::fs::remove_file(&month_page);
    assert_eq!(html.matches(r#"class="run-dot""#).count(), 1, "{html}");
    assert!(html.contains("cli-run") && html.contains("SUCCEEDED"));
    assert!(html.contains(r#"<span id="budget">$833.0000</span>"#));
    assert!(!html.contains("<script"));
    // A month that is not one is named with what is expected.
    let out = output(ephemera(region).args([
        "runs",
        "--state-machine",
        &machine,
        "--html",
        "/dev/null",
        "--month",
        "2026-13",
    ]))
    .await;
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--month 2026-13: expected a month as YYYY-MM"),
        "{stderr}"
    );

    // report by run id (text), by execution name (JSON).
    let out =
        output(ephemera(region).args(["report", "cli-run", "--state-machine", &machine])).await;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.starts_with("Run cli-run SUCCEEDED."), "{stdout}");
    assert!(stdout.contains("Attempts:\n  #1 i-"), "{stdout}");
    let name = row.split_whitespace().nth(1).unwrap().to_string();
    let out =
        output(ephemera(region).args(["report", &name, "--json", "--state-machine", &machine]))
            .await;
    let report: Value = serde_json::from_slice(&out.stdout).expect("the report's JSON");
    assert_eq!(report["run_id"], "cli-run");
    // --html writes the page beside what it prints: the timeline and the total are on it.
    let page =
        std::env::temp_dir().join(format!("ephemera-cli-report-{}.html", std::process::id()));
    let out = output(ephemera(region).args([
        "report",
        "cli-run",
        "--html",
        page.to_str().unwrap(),
        "--state-machine",
        &machine,
    ]))
    .await;
    assert!(out.status.success(), "{}", text(&out).1);
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(html.contains(r#"<svg id="timeline""#), "{html}");
    assert!(
        html.contains(&format!("${:.4}", report["actual_usd"].as_f64().unwrap())),
        "the total is on the page"
    );
    let _ = std::fs::remove_file(&page);
    assert_eq!(report["outcome"], "SUCCEEDED");
    assert!(report["actual_usd"].as_f64().unwrap() > 0.0, "{report}");

    // status without RUN: the latest execution.
    let out = output(ephemera(region).args(["status", "--state-machine", &machine])).await;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stdout.contains("run        cli-run"), "{stdout}");
    assert!(stdout.contains("status     SUCCEEDED after"), "{stdout}");
    assert!(stdout.contains("(measured; ephemera report"), "{stdout}");

    // logs: lines put in CloudWatch Logs by the worker's own shipping.
    // The stack's group, which the CLI finds from the execution's state machine.
    let group = ephemera_tests::iam::worker_log_group();
    let logs = aws_sdk_cloudwatchlogs::Client::new(&ephemera_tests::sdk_config(region));
    logs.create_log_group()
        .log_group_name(&group)
        .send()
        .await
        .unwrap();
    let instance = fixtures::instances_of(&aws, "cli-run").await[0].0.clone();
    let buffer = ephemera_worker::agent::logship::Buffer::new(100);
    buffer.push(
        &json!({"timestamp": "2026-11-30T10:16:12.345Z", "level": "INFO",
        "fields": {"message": "said started", "instance": instance, "attempt": 1},
        "target": "ephemera_worker::agent::link"})
        .to_string(),
    );
    buffer.push("partition EURGBP 2023-04 done");
    // Signed with the run's session, as the agent ships (the instance role ships nothing).
    let role =
        ephemera_tests::sdk_config_as(region, &fixtures::run_session(region, "cli-run").await);
    let shipped = ephemera_worker::agent::logship::Shipper::start(
        aws_sdk_cloudwatchlogs::Client::new(&role),
        &group,
        &worker_log_stream("cli-run", 1, &instance),
        buffer,
    )
    .finish(Duration::from_secs(10))
    .await;
    assert_eq!(shipped.shipped, 2, "{shipped:?}");
    let out = output(ephemera(region).args(["logs", "cli-run", "--state-machine", &machine])).await;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.starts_with(&format!(
            "== attempt 1 on {instance} ({group} cli-run/1/{instance})\n"
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "2026-11-30T10:16:12Z INFO  said started attempt=1 instance={instance}\n"
        )),
        "{stdout}"
    );
    assert!(stdout.contains("partition EURGBP 2023-04 done"), "{stdout}");
    let out =
        output(ephemera(region).args(["logs", &name, "--raw", "--state-machine", &machine])).await;
    assert!(
        text(&out).0.contains("\"message\":\"said started\""),
        "{out:?}"
    );
}

#[tokio::test]
async fn wait_timeout_exits_3_detach_returns_at_once_and_status_follows() {
    let region = fresh_region();
    let aws = clients(region);
    let net = fixtures::network(&aws).await;
    let machine = e2e::create_state_machine(region).await;
    // Spot has no capacity: the worker lands on On-Demand after every Spot candidate.
    harness().door.add_fault(
        ephemera_tests::FaultRule::always(
            region,
            "RunInstances",
            "InsufficientInstanceCapacity",
            500,
        )
        .when("InstanceMarketOptions.MarketType", "spot"),
    );
    // No worker yet: the run waits for its worker to say "started".
    let path = write_spec("slow", &fixtures::runspec("cli-slow", &net, None));
    let out = output(
        ephemera(region)
            .args(["run", path.to_str().unwrap(), "--wait-timeout", "3"])
            .args(["--state-machine", &machine]),
    )
    .await;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(3), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("still RUNNING after 3 s of waiting"),
        "{stdout}"
    );
    let name = stdout
        .lines()
        .find_map(|l| l.strip_prefix("  follow it: ephemera status "))
        .unwrap()
        .to_string();

    // status by run id while it runs: where it is, its attempt, a cost so far.
    let running = eventually("the attempt launched", Duration::from_secs(60), || {
        let machine = machine.clone();
        async move {
            let out =
                output(ephemera(region).args(["status", "cli-slow", "--state-machine", &machine]))
                    .await;
            let stdout = text(&out).0;
            (out.status.code() == Some(0) && stdout.contains("attempts   #1 i-")).then_some(stdout)
        }
    })
    .await;
    assert!(running.contains("status     RUNNING: in "), "{running}");
    assert!(
        running.contains(&format!("execution  {name} (arn:aws:states:{region}:")),
        "{running}"
    );
    assert!(running.contains("so far"), "{running}");
    // Why it waits: the boot of its on-demand instance, after Spot refused every candidate
    // (2 types x 2 subnets), and what is left of the budget.
    assert!(
        running.contains("waiting    worker 1: boot: i-")
            && running.contains("(on-demand c7g.4xlarge, "),
        "{running}"
    );
    assert!(
        running.contains(
            "capacity: 4 candidates were refused before this one (last: spot c6g.4xlarge in subnet-"
        ) && running.contains(": InsufficientInstanceCapacity)"),
        "{running}"
    );
    assert!(
        running.contains("budget     $20.00 (limits.budget_usd), ≈$"),
        "{running}"
    );

    // --detach: started and told how to follow, nothing more.
    let other = write_spec("detached", &fixtures::runspec("cli-detached", &net, None));
    let t0 = std::time::Instant::now();
    let out = output(
        ephemera(region)
            .args(["run", other.to_str().unwrap(), "--detach"])
            .args(["--state-machine", &machine]),
    )
    .await;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
    assert!(
        stdout.contains("follow it: ephemera status cli-detached-"),
        "{stdout}"
    );
    assert!(!stdout.contains("CheckQuota"), "{stdout}");

    // The worker comes: status (by execution name) sees the end.
    let worker = worker_standin::spawn(
        region,
        "cli-slow",
        Behaviour::Succeed(report_of("cli-slow")),
        Duration::from_secs(90),
    );
    let done = eventually("the run's end", Duration::from_secs(90), || {
        let (machine, name) = (machine.clone(), name.clone());
        async move {
            let out =
                output(ephemera(region).args(["status", &name, "--state-machine", &machine])).await;
            let stdout = text(&out).0;
            stdout
                .contains("status     SUCCEEDED")
                .then_some((out.status.code(), stdout))
        }
    })
    .await;
    worker.log().await;
    assert_eq!(done.0, Some(0), "{}", done.1);
}

#[tokio::test]
async fn status_says_a_run_waits_on_its_quota_request() {
    let region = fresh_region();
    let aws = clients(region);
    let net = fixtures::network(&aws).await;
    let machine = e2e::create_state_machine(region).await;
    // 8 Spot vCPUs where the run needs 16, and the increase stays pending.
    harness().door.with_quotas(region, |q| {
        q.applied.insert("L-34B43A08".into(), 8.0);
        q.next_script = vec!["PENDING".into()];
    });
    let mut spec = fixtures::runspec("cli-quota", &net, None);
    spec["worker"]["market"] = json!("spot");
    let path = write_spec("quota", &spec);
    let out = output(
        ephemera(region)
            .args(["run", path.to_str().unwrap(), "--detach"])
            .args(["--state-machine", &machine]),
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
    let waiting = eventually("the run waiting on quota", Duration::from_secs(60), || {
        let machine = machine.clone();
        async move {
            let out =
                output(ephemera(region).args(["status", "cli-quota", "--state-machine", &machine]))
                    .await;
            let stdout = text(&out).0;
            stdout.contains("increase request").then_some(stdout)
        }
    })
    .await;
    assert!(
        waiting.contains(
            "waiting    quota: L-34B43A08 (spot) needs 16 vCPUs, 8 applied, 0 in use outside ephemera, 0 held by other runs; increase request "
        ),
        "{waiting}"
    );
    assert!(waiting.contains(" is PENDING since "), "{waiting}");
    assert!(waiting.contains("attempts   none launched"), "{waiting}");
    // Nothing is left waiting behind the test.
    let out = output(
        ephemera(region)
            .args(["cancel", "cli-quota", "--reason", "test over"])
            .args(["--state-machine", &machine]),
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
}

#[tokio::test]
async fn a_failed_run_exits_1_with_its_error_and_its_report() {
    let region = fresh_region();
    let aws = clients(region);
    let net = fixtures::network(&aws).await;
    let machine = e2e::create_state_machine(region).await;
    let path = write_spec("fail", &fixtures::runspec("cli-fail", &net, None));
    let worker = worker_standin::spawn(
        region,
        "cli-fail",
        Behaviour::Fail("Worker.Failed".into()),
        Duration::from_secs(120),
    );
    let out = output(
        ephemera(region)
            .args(["run", path.to_str().unwrap(), "--wait-timeout", "120"])
            .args(["--state-machine", &machine]),
    )
    .await;
    worker.log().await;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    let headline = stdout
        .lines()
        .find(|l| l.starts_with("FAILED after "))
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(headline.contains(": Worker.Failed - "), "{headline}");
    assert!(stdout.contains("Run cli-fail FAILED."), "{stdout}");
    assert!(stdout.contains("Terminated: i-"), "{stdout}");

    // The report of a failed run comes from its history (Cleanup), and status says it failed.
    let out =
        output(ephemera(region).args(["report", "cli-fail", "--state-machine", &machine])).await;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(text(&out).0.contains("Error: Worker.Failed"), "{out:?}");
    let out =
        output(ephemera(region).args(["status", "cli-fail", "--state-machine", &machine])).await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(text(&out).0.contains("status     FAILED after"), "{out:?}");
}

/// `ephemera cancel` mid-job: the execution stops with the reason, and the event EventBridge
/// delivers for its ABORTED status (the stack's rule on terminate-with-cost-report) tears it
/// down as Cleanup would: nothing left running, the ledger settled to the measured cost, the
/// CANCELLED report emailed with the reason. A stop from the console (no error, no cause) is
/// torn down the same way.
#[tokio::test]
async fn cancel_stops_the_run_and_its_stop_is_torn_down_settled_and_reported() {
    use ephemera_functions::{invoke, Function};

    let region = fresh_region();
    let AtWork {
        aws,
        inbox,
        machine,
        worker,
        sfn,
        execution,
    } = AtWork::start(region, "cli-cancel").await;
    // At work: status says so, with the heartbeat the run expects.
    let out =
        output(ephemera(region).args(["status", "cli-cancel", "--state-machine", &machine])).await;
    let at_work = text(&out).0;
    assert!(
        at_work.contains("waiting    worker 1: job: working on i-")
            && at_work.contains("a heartbeat is due every 60 s"),
        "{at_work}"
    );
    let live = fixtures::instances_of(&aws, "cli-cancel").await;
    assert!(
        live.iter().any(|(_, s)| s == "running" || s == "pending"),
        "{live:?}"
    );

    let out = output(
        ephemera(region)
            .args(["cancel", "cli-cancel", "--reason", "wrong input data"])
            .args(["--state-machine", &machine]),
    )
    .await;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("cancelled cli-cancel-"), "{stdout}");
    let d = eventually("the execution ABORTED", Duration::from_secs(30), || {
        let (sfn, execution) = (sfn.clone(), execution.clone());
        async move {
            let d = sfn
                .describe_execution()
                .execution_arn(&execution)
                .send()
                .await
                .ok()?;
            (d.status().as_str() == "ABORTED").then_some(d)
        }
    })
    .await;
    assert_eq!(d.error(), Some("Ephemera.Cancelled"));
    assert_eq!(d.cause(), Some("wrong input data"));
    // Cancelling again says so and changes nothing.
    let again = output(
        ephemera(region)
            .args(["cancel", &execution])
            .args(["--state-machine", &machine]),
    )
    .await;
    assert_eq!(again.status.code(), Some(0));
    assert!(
        text(&again).0.contains("is not running (ABORTED)"),
        "{:?}",
        text(&again)
    );

    // What EventBridge delivers for the ABORTED status to the rule's target.
    let ms = |t: &aws_sdk_sfn::primitives::DateTime| t.to_millis().unwrap();
    let event = |error: Option<&str>, cause: Option<&str>| {
        json!({
            "version": "0", "source": "aws.states", "region": region,
            "detail-type": ephemera_core::stopped::DETAIL_TYPE,
            "resources": [execution],
            "detail": {
                "executionArn": execution, "stateMachineArn": machine,
                "name": d.name(), "status": "ABORTED",
                "startDate": ms(d.start_date()), "stopDate": d.stop_date().map(ms),
                "input": d.input(), "output": null, "error": error, "cause": cause
            }
        })
    };
    let settings = harness().door.deployed_settings(region).await;
    let report = invoke(
        &ephemera_tests::function_clients(region, Function::TerminateWithCostReport.name()),
        &settings,
        Function::TerminateWithCostReport,
        event(d.error(), d.cause()),
    )
    .await
    .expect("the teardown of a stopped run");
    worker.log().await;
    assert_eq!(report["outcome"], "CANCELLED", "{report}");
    assert_eq!(report["error"]["Error"], "Ephemera.Cancelled", "{report}");
    assert_eq!(report["error"]["Cause"], "wrong input data", "{report}");
    let left: Vec<(String, String)> = fixtures::instances_of(&aws, "cli-cancel")
        .await
        .into_iter()
        .filter(|(_, s)| s == "running" || s == "pending")
        .collect();
    assert!(left.is_empty(), "left running: {left:?}");
    // The ledger: the run's reservation replaced by what it cost, its outcome CANCELLED.
    let billed = settled_as_cancelled(&aws, region, &execution, &report).await;
    let mail = eventually("the CANCELLED email", Duration::from_secs(30), || async {
        inbox
            .read()
            .await
            .into_iter()
            .find(|m| m.subject.contains("cli-cancel"))
    })
    .await;
    assert!(mail.subject.contains("CANCELLED"), "{}", mail.subject);
    assert!(mail.body.contains("wrong input data"), "{}", mail.body);
    assert!(mail.body.contains("The run was cancelled"), "{}", mail.body);
    let page = stored_page(&aws, &report).await;
    assert!(
        page.contains("CANCELLED") && page.contains("wrong input data"),
        "{page}"
    );
    assert!(page.contains(&format!("${billed:.4}")), "{page}");

    // A console stop gives no error or cause: cancelled all the same, said so.
    let console = invoke(
        &ephemera_tests::function_clients(region, Function::TerminateWithCostReport.name()),
        &settings,
        Function::TerminateWithCostReport,
        event(None, None),
    )
    .await
    .unwrap();
    assert_eq!(console["outcome"], "CANCELLED", "{console}");
    assert_eq!(
        console["error"]["Cause"], "stopped before it ended (no reason given)",
        "{console}"
    );
}

/// A run started with `ephemera run --detach`, its worker (a stand-in) at work for longer than
/// a test lasts: its AwaitCompletion entered. Its report goes to the stack's artifact bucket.
struct AtWork {
    aws: ephemera_functions::Aws,
    inbox: fixtures::Inbox,
    machine: String,
    worker: worker_standin::StandIn,
    sfn: aws_sdk_sfn::Client,
    execution: String,
}

impl AtWork {
    async fn start(region: &'static str, run_id: &str) -> AtWork {
        let aws = clients(region);
        let net = fixtures::network(&aws).await;
        let inbox = fixtures::inbox(region, ephemera_tests::iam::REPORT_TOPIC).await;
        let machine = e2e::create_state_machine(region).await;
        fixtures::bucket(&aws.s3, ephemera_tests::iam::ARTIFACT_BUCKET, region).await;
        let worker = worker_standin::spawn(
            region,
            run_id,
            Behaviour::SucceedAfter(600, report_of(run_id)),
            Duration::from_secs(120),
        );
        let spec = fixtures::runspec(run_id, &net, Some(&inbox.topic_arn));
        let path = write_spec(run_id, &spec);
        let out = output(
            ephemera(region)
                .args(["run", path.to_str().unwrap(), "--detach"])
                .args(["--state-machine", &machine]),
        )
        .await;
        assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
        let sfn = aws_sdk_sfn::Client::new(&ephemera_tests::sdk_config(region));
        let execution = eventually("the worker at work", Duration::from_secs(90), || async {
            let listed = sfn
                .list_executions()
                .state_machine_arn(&machine)
                .send()
                .await
                .ok()?;
            let arn = listed.executions().first()?.execution_arn().to_string();
            let history = sfn
                .get_execution_history()
                .execution_arn(&arn)
                .send()
                .await
                .ok()?;
            history
                .events()
                .iter()
                .filter_map(|e| e.state_entered_event_details())
                .any(|d| d.name() == "AwaitCompletion")
                .then_some(arn)
        })
        .await;
        AtWork {
            aws,
            inbox,
            machine,
            worker,
            sfn,
            execution,
        }
    }
}

/// The stopped run's ledger entry: ended CANCELLED, its reservation replaced by the report's
/// measured cost (above zero: the instance ran); that cost.
async fn settled_as_cancelled(
    aws: &ephemera_functions::Aws,
    region: &str,
    execution: &str,
    report: &Value,
) -> f64 {
    use ephemera_aws::{Ledger as _, LedgerTable};
    let billed = report["actual_usd"].as_f64().unwrap();
    assert!(billed > 0.0, "{report}");
    let settings = harness().door.deployed_settings(region).await;
    let ledger = LedgerTable {
        client: aws.dynamodb.clone(),
        table: settings.ledger_table.clone().unwrap(),
    };
    let month = ephemera_core::ledger::month_of(chrono::Utc::now());
    let entry = ledger
        .entries(&month)
        .await
        .unwrap()
        .into_iter()
        .find(|e| e.execution == execution)
        .expect("the run's ledger entry");
    assert_eq!(
        entry.state,
        ephemera_core::ledger::EntryState::Ended,
        "{entry:?}"
    );
    assert_eq!(entry.outcome.as_deref(), Some("CANCELLED"), "{entry:?}");
    assert!(
        (entry.actual_usd.unwrap() - billed).abs() < 1e-6,
        "{entry:?} {billed}"
    );
    billed
}

/// The report page terminate-with-cost-report stored (where `report.stored` says).
async fn stored_page(aws: &ephemera_functions::Aws, report: &Value) -> String {
    let stored = &report["stored"];
    let bucket = stored["bucket"]
        .as_str()
        .unwrap_or_else(|| panic!("the report was stored: {report}"));
    let page = aws
        .s3
        .get_object()
        .bucket(bucket)
        .key(format!("{}report.html", stored["prefix"].as_str().unwrap()))
        .send()
        .await
        .unwrap()
        .body
        .collect()
        .await
        .unwrap()
        .into_bytes();
    String::from_utf8(page.to_vec()).unwrap()
}

/// A run stopped from the console (or `aws stepfunctions stop-execution`: no error, no cause),
/// as its own run: the stack's rule on the ABORTED status brings terminate-with-cost-report,
/// which terminates its instance, settles its month's reservation to what it cost, and sends
/// and stores a CANCELLED report saying no reason was given.
#[tokio::test]
async fn a_console_stop_is_torn_down_settled_and_reported_as_cancelled() {
    let region = fresh_region();
    harness().door.deliver_stops(region);
    let AtWork {
        aws,
        inbox,
        worker,
        sfn,
        execution,
        ..
    } = AtWork::start(region, "cli-console-stop").await;
    // The console's Stop: StopExecution with neither error nor cause.
    sfn.stop_execution()
        .execution_arn(&execution)
        .send()
        .await
        .unwrap();
    let report = eventually("the rule's teardown", Duration::from_secs(60), || async {
        harness().door.stop_report(&execution)
    })
    .await
    .expect("the teardown of the stopped run");
    worker.log().await;
    assert_eq!(report["outcome"], "CANCELLED", "{report}");
    assert_eq!(
        report["error"]["Cause"], "stopped before it ended (no reason given)",
        "{report}"
    );
    let left: Vec<(String, String)> = fixtures::instances_of(&aws, "cli-console-stop")
        .await
        .into_iter()
        .filter(|(_, s)| s == "running" || s == "pending")
        .collect();
    assert!(left.is_empty(), "left running: {left:?}");
    settled_as_cancelled(&aws, region, &execution, &report).await;
    let mail = eventually("the CANCELLED email", Duration::from_secs(30), || async {
        inbox
            .read()
            .await
            .into_iter()
            .find(|m| m.subject.contains("cli-console-stop"))
    })
    .await;
    assert!(mail.subject.contains("CANCELLED"), "{}", mail.subject);
    assert!(
        mail.body
            .contains("stopped before it ended (no reason given)"),
        "{}",
        mail.body
    );
    // The page stored beside the run says so too.
    let page = stored_page(&aws, &report).await;
    assert!(page.contains("CANCELLED"), "{page}");
    assert!(
        page.contains("stopped before it ended (no reason given)"),
        "{page}"
    );
}

/// `ephemera logs RUN --follow`: a line shipped while the worker works is shown with its worker
/// and attempt before the run ends, and the command returns when the run has ended (exit 0:
/// it succeeded).
#[tokio::test]
async fn logs_follow_shows_lines_as_they_are_shipped_and_returns_when_the_run_ends() {
    use tokio::io::AsyncBufReadExt as _;

    let region = fresh_region();
    let aws = clients(region);
    let net = fixtures::network(&aws).await;
    let machine = e2e::create_state_machine(region).await;
    let group = ephemera_tests::iam::worker_log_group();
    let logs = aws_sdk_cloudwatchlogs::Client::new(&ephemera_tests::sdk_config(region));
    logs.create_log_group()
        .log_group_name(&group)
        .send()
        .await
        .unwrap();
    // The worker holds its token (heartbeating) for 20 s, then succeeds.
    let worker = worker_standin::spawn(
        region,
        "cli-follow",
        Behaviour::SucceedAfter(20, report_of("cli-follow")),
        Duration::from_secs(120),
    );
    let path = write_spec("follow", &fixtures::runspec("cli-follow", &net, None));
    let out = output(
        ephemera(region)
            .args(["run", path.to_str().unwrap(), "--detach"])
            .args(["--state-machine", &machine]),
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
    let instance = eventually("the worker's instance", Duration::from_secs(60), || {
        let aws = aws.clone();
        async move {
            fixtures::instances_of(&aws, "cli-follow")
                .await
                .into_iter()
                .find(|(_, s)| s == "running")
                .map(|(i, _)| i)
        }
    })
    .await;
    let mut follow = ephemera(region)
        .args([
            "logs",
            "cli-follow",
            "--follow",
            "--state-machine",
            &machine,
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(follow.stdout.take().unwrap()).lines();
    // A line shipped now, as the worker ships it.
    let buffer = ephemera_worker::agent::logship::Buffer::new(100);
    buffer.push("epoch 1 of 3 done");
    // The worker's heartbeat line, as its agent logs it once a heartbeat period.
    buffer.push(
        &serde_json::json!({"timestamp": "2026-12-07T08:00:00.000Z", "level": "INFO",
                            "fields": {"message": ephemera_core::contract::logs::HEARTBEAT_MESSAGE},
                            "target": "ephemera_worker::agent::link"})
        .to_string(),
    );
    let role =
        ephemera_tests::sdk_config_as(region, &fixtures::run_session(region, "cli-follow").await);
    let shipped = ephemera_worker::agent::logship::Shipper::start(
        aws_sdk_cloudwatchlogs::Client::new(&role),
        &group,
        &worker_log_stream("cli-follow", 1, &instance),
        buffer,
    )
    .finish(Duration::from_secs(10))
    .await;
    assert_eq!(shipped.shipped, 2, "{shipped:?}");
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("a line within 30 s")
        .unwrap()
        .expect("a line");
    assert_eq!(line, "[worker 1 #1] epoch 1 of 3 done");
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("a second line within 30 s")
        .unwrap();
    assert_eq!(
        line.as_deref(),
        Some("[worker 1 #1] 2026-12-07T08:00:00Z INFO  heartbeat sent")
    );
    let sfn = aws_sdk_sfn::Client::new(&ephemera_tests::sdk_config(region));
    let listed = sfn
        .list_executions()
        .state_machine_arn(&machine)
        .send()
        .await
        .unwrap();
    assert_eq!(
        listed.executions()[0].status().as_str(),
        "RUNNING",
        "the line came while the run was still running"
    );
    // `status` of the working job (once its token is held): its last heartbeat and its last
    // line, from its stream.
    let waiting = eventually("the job working", Duration::from_secs(30), || {
        let machine = machine.clone();
        async move {
            let out = output(ephemera(region).args([
                "status",
                "cli-follow",
                "--state-machine",
                &machine,
            ]))
            .await;
            let (stdout, _) = text(&out);
            stdout
                .lines()
                .find(|l| l.starts_with("waiting") && l.contains("job: working"))
                .map(str::to_string)
        }
    })
    .await;
    assert!(
        waiting.contains(&format!("worker 1: job: working on {instance} for ")),
        "{waiting}"
    );
    // Both within the last ten seconds (the lines were shipped just before).
    assert!(waiting.contains("; last heartbeat 0:0"), "{waiting}");
    assert!(
        waiting.contains(" ago; last line 0:0") && waiting.ends_with(" ago: epoch 1 of 3 done"),
        "{waiting}"
    );
    let status = tokio::time::timeout(Duration::from_secs(90), follow.wait())
        .await
        .expect("--follow returns once the run has ended")
        .unwrap();
    worker.log().await;
    assert_eq!(status.code(), Some(0));
    assert_eq!(
        lines.next_line().await.unwrap(),
        None,
        "nothing more was shipped"
    );
}

#[tokio::test]
async fn no_credentials_is_said_plainly() {
    let home = std::env::temp_dir().join(format!("ephemera-no-home-{}", std::process::id()));
    std::fs::create_dir_all(&home).unwrap();
    let out = output(
        tokio::process::Command::new(env!("CARGO_BIN_EXE_ephemera"))
            .env_clear()
            .env("PATH", &home)
            .env("HOME", &home)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_REGION", "us-east-1")
            // Nowhere: no call may leave the machine, even if credentials were found.
            .env("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
            .args(["run", &sample_path()])
            .args([
                "--state-machine",
                "arn:aws:states:us-east-1:123456789012:stateMachine:ephemera-worker",
            ]),
    )
    .await;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stdout}\n{stderr}");
    assert!(
        stderr.starts_with("error: no AWS credentials found: set AWS_PROFILE"),
        "{stderr}"
    );
    assert!(
        stderr.contains("aws sso login") && stderr.contains("aws configure"),
        "{stderr}"
    );
    assert_no_dump(&stderr);
    let _ = std::fs::remove_dir_all(&home);
}

#[tokio::test]
async fn a_missing_state_machine_is_named_with_where_its_arn_is() {
    let region = fresh_region();
    let gone = format!(
        "arn:aws:states:{region}:{}:stateMachine:ephemera-worker",
        e2e::ACCOUNT
    );
    let out =
        output(ephemera(region).args(["run", &sample_path(), "--state-machine", &gone])).await;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stdout}\n{stderr}");
    assert!(
        stderr.starts_with(&format!("error: no such state machine: {gone}\n")),
        "{stderr}"
    );
    assert!(stderr.contains("output StateMachineArn"), "{stderr}");
    assert_no_dump(&stderr);
    // Without one at all, the flag and the variable are named.
    let out = output(ephemera(region).args(["runs"])).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out)
            .1
            .contains("--state-machine ARN or set EPHEMERA_STATE_MACHINE_ARN"),
        "{out:?}"
    );
}

#[tokio::test]
async fn access_denied_names_the_action_refused() {
    let region = fresh_region();
    let machine = e2e::create_state_machine(region).await;
    // Signed as the worker's instance role, whose policy (template.yaml) cannot start runs.
    let out = output(
        ephemera(region)
            .env("AWS_ACCESS_KEY_ID", Principal::Worker.access_key())
            .args(["run", &sample_path(), "--state-machine", &machine]),
    )
    .await;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stdout}\n{stderr}");
    assert!(
        stderr.starts_with(&format!(
            "error: access denied: the AWS identity in use may not call states:StartExecution on {machine}\n"
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains("allow states:StartExecution in its IAM policy"),
        "{stderr}"
    );
    assert!(stderr.contains(&Principal::Worker.arn()), "{stderr}");
    assert_no_dump(&stderr);
    let denied = harness().door.denials_in(region);
    assert!(
        denied.iter().any(|d| d.action == "states:StartExecution"),
        "{denied:?}"
    );
}

#[tokio::test]
async fn sweep_lists_what_outlived_its_run_and_terminates_only_with_yes() {
    let region = fresh_region();
    let aws = clients(region);
    let net = fixtures::network(&aws).await;
    let machine = e2e::create_state_machine(region).await;
    // A run that is still going (no worker comes): its instance must be kept.
    let live = e2e::start(
        region,
        &machine,
        "cli-live-1",
        &fixtures::runspec("cli-live", &net, None),
    )
    .await;
    let kept = eventually("the live run's instance", Duration::from_secs(60), || {
        let aws = aws.clone();
        async move {
            fixtures::instances_of(&aws, "cli-live")
                .await
                .first()
                .map(|i| i.0.clone())
        }
    })
    .await;
    let later = (chrono::Utc::now() + chrono::Duration::hours(2)).to_rfc3339();
    let earlier = (chrono::Utc::now() - chrono::Duration::minutes(1)).to_rfc3339();
    let gone = ephemera_tests::deployed::execution(region, "cli-gone");
    let launch = |tags: Vec<(&'static str, String)>| {
        let aws = aws.clone();
        let (image, subnet) = (net.image.clone(), net.subnets[0].clone());
        async move {
            let spec = TagSpecification::builder()
                .resource_type(ResourceType::Instance)
                .set_tags(Some(
                    tags.into_iter()
                        .map(|(k, v)| Tag::builder().key(k).value(v).build())
                        .collect(),
                ))
                .build();
            aws.ec2
                .run_instances()
                .image_id(image)
                .subnet_id(subnet)
                .instance_type(InstanceType::T4gMedium)
                .min_count(1)
                .max_count(1)
                .tag_specifications(spec)
                .send()
                .await
                .unwrap()
                .instances()[0]
                .instance_id()
                .unwrap()
                .to_string()
        }
    };
    let orphan = launch(vec![
        (tags::MANAGED, "true".into()),
        (tags::RUN, "cli-gone".into()),
        (tags::EXECUTION, gone.clone()),
        (tags::DEADLINE, later.clone()),
    ])
    .await;
    let overdue = launch(vec![
        (tags::MANAGED, "true".into()),
        (tags::RUN, "cli-live".into()),
        (tags::EXECUTION, live.clone()),
        (tags::DEADLINE, earlier),
    ])
    .await;
    let foreign = launch(vec![
        (tags::RUN, "cli-gone".into()),
        (tags::EXECUTION, gone),
    ])
    .await;

    let state = |id: String| {
        let aws = aws.clone();
        async move {
            fixtures::instance(&aws, &id)
                .await
                .state()
                .unwrap()
                .name()
                .unwrap()
                .as_str()
                .to_string()
        }
    };
    let out = output(ephemera(region).args(["sweep", "--state-machine", &machine])).await;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stdout.starts_with("would terminate 2 instance(s) in "),
        "{stdout}"
    );
    let line = |id: &str| stdout.lines().find(|l| l.contains(id)).map(str::to_string);
    assert!(
        line(&orphan)
            .unwrap()
            .ends_with("its execution does not exist"),
        "{stdout}"
    );
    assert!(
        line(&overdue).unwrap().contains("ephemera:deadline"),
        "{stdout}"
    );
    assert!(
        line(&kept).is_none() && line(&foreign).is_none(),
        "{stdout}"
    );
    assert!(stdout.contains("dry run: nothing terminated"), "{stdout}");
    assert_eq!(state(orphan.clone()).await, "running");

    let out = output(ephemera(region).args(["sweep", "--yes", "--state-machine", &machine])).await;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stdout.contains(&format!("terminated {orphan}: running -> shutting-down"))
            || stdout.contains(&format!("terminated {orphan}: running -> terminated")),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("terminated {overdue}")),
        "{stdout}"
    );
    for id in [&orphan, &overdue] {
        assert_ne!(state(id.clone()).await, "running", "{id}");
    }
    for id in [&kept, &foreign] {
        assert_eq!(state(id.clone()).await, "running", "{id}");
    }
}

/// `ephemera schema` prints the schema the repository commits for editors, and `--help` runs
/// (as after `cargo install --path cli`).
#[tokio::test]
async fn the_schema_it_prints_is_the_committed_one() {
    let o =
        output(tokio::process::Command::new(env!("CARGO_BIN_EXE_ephemera")).arg("schema")).await;
    assert!(o.status.success(), "{:?}", text(&o));
    let committed = std::fs::read_to_string(format!(
        "{}/../runspec.schema.json",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    assert_eq!(text(&o).0, committed);
    let help =
        output(tokio::process::Command::new(env!("CARGO_BIN_EXE_ephemera")).arg("--help")).await;
    assert!(help.status.success());
    assert!(text(&help).0.contains("schema"), "{:?}", text(&help));
}

/// The CLI links the adapters it shares with the Lambdas, not the Lambdas: no handler crate is
/// in its dependency tree (dev-dependencies aside, which only its tests link).
#[test]
fn the_cli_links_no_handler() {
    let out = std::process::Command::new(env!("CARGO"))
        .args([
            "tree",
            "--offline",
            "--locked",
            "-p",
            "ephemera-cli",
            "-e",
            "normal",
            "--prefix",
            "none",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo tree");
    let tree = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        tree.lines().any(|l| l.starts_with("ephemera-aws ")),
        "{tree}"
    );
    for crate_name in ["ephemera-functions ", "ephemera-worker ", "lambda_runtime "] {
        assert!(
            !tree.lines().any(|l| l.starts_with(crate_name)),
            "{crate_name}is linked:\n{tree}"
        );
    }
}

/// No crate of the workspace links the legacy TLS stack (rustls 0.21, rustls-webpki 0.101,
/// RUSTSEC-2026-0098, -0099, -0104) that the SDKs' default `rustls` feature brings with hyper
/// 0.14: the root Cargo.toml turns their defaults off for `default-https-client` (rustls 0.23).
/// Dev-dependencies included: the tests' clients are built the same way.
#[test]
fn no_legacy_tls_stack_is_linked() {
    let out = std::process::Command::new(env!("CARGO"))
        .args([
            "tree",
            "--offline",
            "--locked",
            "--workspace",
            "-e",
            "normal,build,dev",
            "--prefix",
            "none",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo tree");
    let tree = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        tree.lines().any(|l| l.starts_with("rustls v0.23.")),
        "{tree}"
    );
    for legacy in [
        "rustls v0.21.",
        "rustls-webpki v0.101.",
        "hyper-rustls v0.24.",
        "hyper v0.14.",
    ] {
        let found: Vec<&str> = tree.lines().filter(|l| l.starts_with(legacy)).collect();
        assert!(found.is_empty(), "{legacy} is linked: {found:?}");
    }
}
