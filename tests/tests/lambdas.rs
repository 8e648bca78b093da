//! Each Lambda handler called with real events against moto behind the front door.

use std::time::Duration;

use base64::Engine as _;
use chrono::Utc;
use ephemera_core::contract::{RunParameters, Started};
use ephemera_core::report::CostReport;
use ephemera_core::rundoc::WorkerState;
use ephemera_functions::handlers::{health_check, terminate_report};
use ephemera_functions::{Aws, Error, Function};
use ephemera_tests::deployed::{bare_settings, call_with, execution, launch_with};
use ephemera_tests::fixtures::{self, ctx};
use ephemera_tests::{function_clients, harness, FaultRule};
use serde_json::{json, Value};

#[tokio::test]
async fn launch_creates_a_tagged_imdsv2_instance_without_secrets_in_user_data() {
    let c = ctx().await;
    let spec = fixtures::runspec("launch-tags", &c.net, None);
    let w = launch_with(&c, &spec, "launch-tags", json!({}), bare_settings())
        .await
        .unwrap();
    assert_eq!(w.current().unwrap().attempt, 1);
    assert_eq!(w.current().unwrap().market, ephemera_core::Market::Spot);
    assert_eq!(w.current().unwrap().instance_type, "c7g.4xlarge");
    assert!(!w.current().unwrap().reused);
    assert_eq!(w.heartbeat_seconds, 60);
    // The token goes to a parameter of this instance's own, readable by its session only.
    let id = &w.current().unwrap().instance_id;
    assert_eq!(
        w.token_parameter,
        format!("/ephemera/runs/launch-tags/task-token/{id}")
    );
    assert_eq!(
        w.token_reader,
        format!("{}:{id}", ephemera_tests::iam::WORKER_ROLE_ID)
    );

    let i = &fixtures::instance(&c.aws, &w.current().unwrap().instance_id).await;
    let tags: std::collections::BTreeMap<_, _> = i
        .tags()
        .iter()
        .map(|t| (t.key().unwrap(), t.value().unwrap()))
        .collect();
    assert_eq!(tags["ephemera:managed"], "true");
    assert_eq!(tags["ephemera:run"], "launch-tags");
    assert_eq!(
        tags["ephemera:execution"],
        execution(c.region, "launch-tags")
    );
    assert_eq!(tags["ephemera:attempt"], "1");
    assert_eq!(tags["cost-center"], "research");
    assert!(chrono::DateTime::parse_from_rfc3339(tags["ephemera:deadline"]).is_ok());
    assert_eq!(
        i.metadata_options()
            .and_then(|m| m.http_tokens())
            .map(|t| t.as_str()),
        Some("required"),
        "IMDSv2 must be required"
    );
    assert!(i.key_name().is_none(), "no SSH key");
    assert_eq!(i.instance_lifecycle().map(|l| l.as_str()), Some("spot"));

    // The volume carries the run's tags too.
    let vols = c
        .aws
        .ec2
        .describe_volumes()
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name("tag:ephemera:run")
                .values("launch-tags")
                .build(),
        )
        .send()
        .await
        .unwrap();
    assert!(!vols.volumes().is_empty(), "the root volume is tagged");

    let ud = c
        .aws
        .ec2
        .describe_instance_attribute()
        .instance_id(&w.current().unwrap().instance_id)
        .attribute(aws_sdk_ec2::types::InstanceAttributeName::UserData)
        .send()
        .await
        .unwrap();
    let script = String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(ud.user_data().and_then(|u| u.value()).unwrap())
            .unwrap(),
    )
    .unwrap();
    assert!(script.contains("s3://ephemera-artifacts/worker/ephemera-worker"));
    assert!(script.contains("run --stages indicators,regression --run-id launch-tags --attempt 1"));
    assert!(!script.to_lowercase().contains("token"), "{script}");
    assert!(!script.contains("password"));
}

#[tokio::test]
async fn a_retried_launch_returns_the_instance_it_already_made() {
    let c = ctx().await;
    let spec = fixtures::runspec("launch-retry", &c.net, None);
    let first = launch_with(&c, &spec, "launch-retry", json!({}), bare_settings())
        .await
        .unwrap();
    // moto ignores ClientToken, so this proves the lookup by tag.
    let second = launch_with(&c, &spec, "launch-retry", json!({}), bare_settings())
        .await
        .unwrap();
    assert_eq!(
        first.current().unwrap().instance_id,
        second.current().unwrap().instance_id
    );
    assert!(second.current().unwrap().reused);
    assert_eq!(fixtures::live(&c, "launch-retry").await.len(), 1);
}

#[tokio::test]
async fn spot_capacity_error_falls_back_to_on_demand() {
    let c = ctx().await;
    let h = harness();
    h.door.add_fault(
        FaultRule::always(
            c.region,
            "RunInstances",
            "InsufficientInstanceCapacity",
            500,
        )
        .when("InstanceMarketOptions.MarketType", "spot"),
    );
    let spec = fixtures::runspec("spot-fallback", &c.net, None);
    let w = launch_with(&c, &spec, "spot-fallback", json!({}), bare_settings())
        .await
        .unwrap();
    assert_eq!(w.current().unwrap().market, ephemera_core::Market::OnDemand);
    assert_eq!(w.current().unwrap().instance_type, "c7g.4xlarge");
    // Every Spot candidate (2 types × 2 subnets) was tried first: all four counted, the last
    // kept (the run document's size).
    assert_eq!(w.current().unwrap().tried_total, 4, "{:?}", w.current());
    assert_eq!(
        w.current().unwrap().tried.len(),
        1,
        "{:?}",
        w.current().unwrap().tried
    );
    assert!(w.current().unwrap().tried.iter().all(
        |t| t.code == "InsufficientInstanceCapacity" && t.market == ephemera_core::Market::Spot
    ));
    assert_eq!(fixtures::live(&c, "spot-fallback").await.len(), 1);
}

#[tokio::test]
async fn capacity_errors_on_every_candidate_end_in_capacity_unavailable() {
    let c = ctx().await;
    let h = harness();
    h.door.add_fault(FaultRule::always(
        c.region,
        "RunInstances",
        "InsufficientInstanceCapacity",
        500,
    ));
    let spec = fixtures::runspec("no-capacity", &c.net, None);
    let err = launch_with(&c, &spec, "no-capacity", json!({}), bare_settings())
        .await
        .unwrap_err();
    assert_eq!(err.error_type(), "Ephemera.CapacityUnavailable");
    match &err {
        Error::CapacityUnavailable { tried } => assert_eq!(tried.len(), 8, "{tried:?}"),
        e => panic!("{e:?}"),
    }
    let msg = err.to_string();
    assert!(msg.contains("spot c7g.4xlarge"), "{msg}");
    assert!(msg.contains("on-demand c6g.4xlarge"), "{msg}");
    assert!(fixtures::live(&c, "no-capacity").await.is_empty());
}

/// A launch refused by the vCPU quotas (issue 32, part 4) is a quota verdict, not a lost worker:
/// one refusal a quota (the quota's other candidates would be refused too), then
/// `Ephemera.QuotaExceeded` carrying the wait the state machine reads, and after the wait the
/// launch asks again with requests of its own.
#[tokio::test]
async fn quota_refusals_are_a_wait_for_the_quota_not_a_lost_worker() {
    let c = ctx().await;
    let h = harness();
    h.door.add_fault(
        FaultRule::always(
            c.region,
            "RunInstances",
            "MaxSpotInstanceCountExceeded",
            400,
        )
        .when("InstanceMarketOptions.MarketType", "spot")
        .times(1),
    );
    h.door
        .add_fault(FaultRule::always(c.region, "RunInstances", "VcpuLimitExceeded", 400).times(1));
    let spec = fixtures::runspec("quota-refused", &c.net, None);
    let err = launch_with(&c, &spec, "quota-refused", json!({}), bare_settings())
        .await
        .unwrap_err();
    assert_eq!(err.error_type(), "Ephemera.QuotaExceeded", "{err}");
    // The cause is the wait, as JSON: the first of the worker's, with the run's quota backoff
    // (waits.quota_poll_min_seconds is 1 in the fixture).
    let wait: ephemera_core::vcpus::QuotaRefused =
        serde_json::from_str(&err.to_string()).expect("the cause is the wait as JSON");
    assert_eq!((wait.attempt, wait.waits, wait.wait_seconds), (1, 1, 1));
    assert!(
        wait.reason
            .contains("spot c7g.4xlarge (L-34B43A08): MaxSpotInstanceCountExceeded"),
        "{}",
        wait.reason
    );
    assert!(
        wait.reason
            .contains("on-demand c7g.4xlarge (L-1216C47A): VcpuLimitExceeded"),
        "{}",
        wait.reason
    );
    // One RunInstances a quota: c6g and the second subnet draw on the same ones.
    assert_eq!(h.door.faults_fired_in(c.region).len(), 2);
    assert!(fixtures::live(&c, "quota-refused").await.is_empty());
    // Back from the wait: the launch goes through.
    let out = call_with(
        &c,
        Function::LaunchWorker,
        json!({"run": spec, "execution": execution(c.region, "quota-refused"),
               "launch_quota": {"refused": wait}}),
        bare_settings(),
    )
    .await
    .unwrap();
    let w: WorkerState = serde_json::from_value(out).unwrap();
    assert_eq!(w.current().unwrap().attempt, 1);
    assert_eq!(w.current().unwrap().market, ephemera_core::Market::Spot);
    assert_eq!(fixtures::live(&c, "quota-refused").await.len(), 1);
}

#[tokio::test]
async fn throttling_is_retried() {
    let c = ctx().await;
    let h = harness();
    h.door.add_fault(
        FaultRule::always(c.region, "DescribeInstances", "RequestLimitExceeded", 503).times(1),
    );
    h.door.add_fault(
        FaultRule::always(c.region, "RunInstances", "RequestLimitExceeded", 503).times(1),
    );
    let spec = fixtures::runspec("throttled", &c.net, None);
    let w = launch_with(&c, &spec, "throttled", json!({}), bare_settings())
        .await
        .unwrap();
    assert_eq!(w.current().unwrap().market, ephemera_core::Market::Spot);
    assert!(
        w.current().unwrap().tried.is_empty(),
        "a throttle is retried, not a fallback"
    );
    let fired = h.door.faults_fired_in(c.region);
    assert_eq!(fired.len(), 2, "{fired:?}");
    assert_eq!(fixtures::live(&c, "throttled").await.len(), 1);
}

#[tokio::test]
async fn over_budget_launches_nothing() {
    let c = ctx().await;
    let mut spec = fixtures::runspec("over-budget", &c.net, None);
    spec["limits"]["budget_usd"] = json!(0.5);
    let err = launch_with(&c, &spec, "over-budget", json!({}), bare_settings())
        .await
        .unwrap_err();
    assert_eq!(err.error_type(), "Ephemera.OverBudget");
    // c7g.4xlarge at 0.58 $/h for its 2 h of runtime alone is 1.16 $.
    let text = err.to_string();
    assert!(text.contains("attempt 1 was not launched"), "{text}");
    assert!(
        text.contains("is left of limits.budget_usd $0.50"),
        "{text}"
    );
    assert!(fixtures::live(&c, "over-budget").await.is_empty());
}

#[tokio::test]
async fn health_check_waits_for_the_worker_then_fails_on_deadline_or_termination() {
    let c = ctx().await;
    let spec = fixtures::runspec("health", &c.net, None);
    let w = launch_with(&c, &spec, "health", json!({}), bare_settings())
        .await
        .unwrap();
    let input = |w: &WorkerState| json!({"run": spec, "worker": w});
    let h: Value = call_with(&c, Function::HealthCheck, input(&w), bare_settings())
        .await
        .unwrap();
    assert_eq!(h["verdict"], "booting");
    assert!(
        h["detail"].as_str().unwrap().contains("started signal"),
        "{h}"
    );
    assert_eq!(h["wait_seconds"], 1);

    // Past the boot deadline without the signal.
    let late = Utc::now() + chrono::Duration::seconds(301);
    let role = function_clients(c.region, "health-check");
    let err = health_check::handle(
        &role.ec2,
        &role.ssm,
        serde_json::from_value(input(&w)).unwrap(),
        late,
    )
    .await
    .unwrap_err();
    assert_eq!(err.error_type(), "Ephemera.BootFailed");
    assert!(err.to_string().contains("boot_timeout_seconds"), "{err}");

    // Another instance's signal does not count, nor one at this instance's name that names
    // another; this instance's own does.
    let put = |at: String, id: String| {
        let ssm = c.aws.ssm.clone();
        async move {
            ssm.put_parameter()
                .name(RunParameters::of_run("health").started(&at))
                .value(
                    serde_json::to_string(&Started {
                        instance_id: id,
                        attempt: 1,
                        at: Utc::now(),
                    })
                    .unwrap(),
                )
                .r#type(aws_sdk_ssm::types::ParameterType::String)
                .overwrite(true)
                .send()
                .await
                .unwrap();
        }
    };
    let (other, mine) = (
        "i-0000000000000000".to_string(),
        w.current().unwrap().instance_id.clone(),
    );
    put(other.clone(), other.clone()).await;
    let h: Value = call_with(&c, Function::HealthCheck, input(&w), bare_settings())
        .await
        .unwrap();
    assert_eq!(h["verdict"], "booting");
    put(mine.clone(), other).await;
    let h: Value = call_with(&c, Function::HealthCheck, input(&w), bare_settings())
        .await
        .unwrap();
    assert_eq!(h["verdict"], "booting");
    put(mine.clone(), mine).await;
    let h: Value = call_with(&c, Function::HealthCheck, input(&w), bare_settings())
        .await
        .unwrap();
    assert_eq!(h["verdict"], "healthy", "{h}");

    c.aws
        .ec2
        .terminate_instances()
        .instance_ids(&w.current().unwrap().instance_id)
        .send()
        .await
        .unwrap();
    let err = call_with(&c, Function::HealthCheck, input(&w), bare_settings())
        .await
        .unwrap_err();
    assert_eq!(err.error_type(), "Ephemera.BootFailed");
    assert!(err.to_string().contains("terminated"), "{err}");
}

async fn put_object(aws: &Aws, bucket: &str, key: &str, body: Vec<u8>) {
    aws.s3
        .put_object()
        .bucket(bucket)
        .key(key)
        .body(body.into())
        .send()
        .await
        .unwrap();
}

/// Stored as the worker stores an output, with its SHA-256 (which S3 checks and keeps); that
/// SHA-256 as the manifest records it.
async fn put_summed(aws: &Aws, bucket: &str, key: &str, body: Vec<u8>) -> String {
    use sha2::Digest as _;
    let sum = base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(&body));
    aws.s3
        .put_object()
        .bucket(bucket)
        .key(key)
        .checksum_algorithm(aws_sdk_s3::types::ChecksumAlgorithm::Sha256)
        .checksum_sha256(&sum)
        .body(body.into())
        .send()
        .await
        .unwrap();
    sum
}

#[tokio::test]
async fn verify_completion_checks_the_report_and_the_exported_objects() {
    let c = ctx().await;
    // The template's ExportBucket: the only bucket verify-completion may read.
    let bucket = ephemera_tests::iam::EXPORT_BUCKET;
    fixtures::bucket(&c.aws.s3, bucket, c.region).await;
    let mut spec = fixtures::runspec("verify", &c.net, None);
    spec["expect"] = json!({"partitions": 2, "min_rows": 10, "export_prefix": format!("s3://{bucket}/runs/verify/")});
    let eur = put_summed(
        &c.aws,
        bucket,
        "runs/verify/EURUSD/2023-04.parquet",
        vec![1; 300],
    )
    .await;
    let gbp = put_summed(
        &c.aws,
        bucket,
        "runs/verify/GBPUSD/2023-04.parquet",
        vec![2; 200],
    )
    .await;
    let manifest = json!({"run_id": "verify", "objects": [
        {"key": "runs/verify/EURUSD/2023-04.parquet", "rows": 12, "bytes": 300, "checksum_sha256": eur},
        {"key": "runs/verify/GBPUSD/2023-04.parquet", "rows": 8, "bytes": 200, "checksum_sha256": gbp}
    ]});
    put_object(
        &c.aws,
        bucket,
        "runs/verify/manifest.json",
        manifest.to_string().into_bytes(),
    )
    .await;
    let report = json!({"run_id": "verify", "partitions_done": 2, "partitions_failed": 0,
        "rows_in": 20, "rows_out": 20, "manifest": format!("s3://{bucket}/runs/verify/manifest.json")});
    let ok: Value = call_with(
        &c,
        Function::VerifyCompletion,
        json!({"run": spec, "workers": [{"slot": 1, "result": report}]}),
        bare_settings(),
    )
    .await
    .unwrap();
    assert_eq!(ok["ok"], true);
    assert!(ok["checks"].as_array().unwrap().len() >= 8, "{ok}");

    // One object shrinks, the report claims a failed partition.
    put_object(
        &c.aws,
        bucket,
        "runs/verify/GBPUSD/2023-04.parquet",
        vec![2; 10],
    )
    .await;
    let mut bad = report.clone();
    bad["partitions_failed"] = json!(1);
    let err = call_with(
        &c,
        Function::VerifyCompletion,
        json!({"run": spec, "workers": [{"slot": 1, "result": bad}]}),
        bare_settings(),
    )
    .await
    .unwrap_err();
    assert_eq!(err.error_type(), "Ephemera.VerificationFailed");
    let msg = err.to_string();
    assert!(msg.contains("no_failed_partitions"), "{msg}");
    assert!(msg.contains("object_sizes"), "{msg}");
    assert!(msg.contains("10 bytes, manifest says 200"), "{msg}");
    // Written since the worker sent it, without a SHA-256 of its own.
    assert!(msg.contains("object_checksums"), "{msg}");
    assert!(
        msg.contains("runs/verify/GBPUSD/2023-04.parquet: S3 keeps no SHA-256"),
        "{msg}"
    );
}

#[tokio::test]
async fn terminate_reports_the_cost_by_email_and_is_idempotent() {
    let c = ctx().await;
    let inbox = fixtures::inbox(c.region, "ephemera-reports").await;
    let spec = fixtures::runspec("terminate", &c.net, Some(&inbox.topic_arn));
    let w = launch_with(&c, &spec, "terminate", json!({}), bare_settings())
        .await
        .unwrap();
    let payload = json!({"run": spec, "execution": execution(c.region, "terminate"),
                         "workers": [{"slot": 1, "worker": w}]});
    let report: CostReport = serde_json::from_value(
        call_with(
            &c,
            Function::TerminateWithCostReport,
            payload.clone(),
            bare_settings(),
        )
        .await
        .unwrap(),
    )
    .unwrap();
    assert_eq!(report.outcome, ephemera_core::report::Outcome::Succeeded);
    assert_eq!(
        report.terminated,
        vec![w.current().unwrap().instance_id.clone()]
    );
    assert!(
        fixtures::live(&c, "terminate").await.is_empty(),
        "nothing left running"
    );
    let a = &report.attempts[0];
    assert_eq!(a.billed_seconds, 60, "the 60 s minimum");
    // Priced from the Spot price history (the front door answers it as AWS does), not from
    // On-Demand.
    assert_eq!(a.price_source, "spot-price-history");
    assert!(a.average_usd_per_hour > 0.0 && a.ebs_usd > 0.0, "{a:?}");
    assert!(
        a.on_demand_equivalent_usd > a.compute_usd + a.ebs_usd,
        "{a:?}"
    );
    // Each figure is rounded to the millionth of a dollar on its own.
    assert!(
        report.actual_usd >= a.compute_usd + a.ebs_usd - 2e-6,
        "{report:?}"
    );
    assert!(report.estimate_usd > 0.0 && report.budget_usd == 20.0);

    let mail = ephemera_tests::eventually("the SNS email", Duration::from_secs(10), || async {
        let m = inbox.read().await;
        (!m.is_empty()).then_some(m)
    })
    .await;
    assert_eq!(mail.len(), 1);
    let e = &mail[0];
    assert!(
        e.subject.starts_with("ephemera terminate: SUCCEEDED $"),
        "{}",
        e.subject
    );
    assert!(e.subject.len() < 100);
    assert!(e.body.contains(&w.current().unwrap().instance_id));
    let json_part = e.body.split("--- report (JSON) ---\n").nth(1).unwrap();
    let sent: CostReport = serde_json::from_str(json_part).unwrap();
    assert_eq!(sent.actual_usd, report.actual_usd);

    // Again: nothing to terminate, the same instance reported as already terminated.
    let again: CostReport = serde_json::from_value(
        call_with(
            &c,
            Function::TerminateWithCostReport,
            payload,
            bare_settings(),
        )
        .await
        .unwrap(),
    )
    .unwrap();
    assert!(again.terminated.is_empty());
    assert_eq!(
        again.attempts[0].state_before,
        Some(ephemera_core::instance_state::InstanceState::Terminated)
    );
}

#[tokio::test]
async fn cleanup_finds_an_instance_the_run_document_lost_and_refuses_foreign_ones() {
    let c = ctx().await;
    let spec = fixtures::runspec("lost", &c.net, None);
    // Launched, but the Lambda "crashed" before its output reached the state machine.
    let w = launch_with(&c, &spec, "lost", json!({}), bare_settings())
        .await
        .unwrap();
    let report: CostReport = serde_json::from_value(
        call_with(
            &c,
            Function::TerminateWithCostReport,
            json!({"run": spec, "execution": execution(c.region, "lost"),
                   "error": {"Error": "States.TaskFailed", "Cause": "crashed"}}),
            bare_settings(),
        )
        .await
        .unwrap(),
    )
    .unwrap();
    assert_eq!(report.outcome, ephemera_core::report::Outcome::Failed);
    assert_eq!(
        report.terminated,
        vec![w.current().unwrap().instance_id.clone()]
    );
    assert!(fixtures::live(&c, "lost").await.is_empty());

    // An instance not tagged for this run is never terminated.
    let foreign = c
        .aws
        .ec2
        .run_instances()
        .image_id(&c.net.image)
        .instance_type(aws_sdk_ec2::types::InstanceType::T3Micro)
        .min_count(1)
        .max_count(1)
        .send()
        .await
        .unwrap();
    let foreign_id = foreign.instances()[0].instance_id().unwrap().to_string();
    fixtures::instance(&c.aws, &foreign_id).await;
    let mut doc: WorkerState = w.clone();
    doc.attempts[0].instance_id = foreign_id.clone();
    let role = function_clients(c.region, "terminate-with-cost-report");
    let services = terminate_report::Services {
        ec2: &role.ec2,
        prices: &role.pricing,
        sns: &role.sns,
        history: &role.sfn,
        objects: &role.s3,
        ledger: None::<&ephemera_functions::aws::LedgerTable>,
        signals: None::<&aws_sdk_ssm::Client>,
    };
    let err = terminate_report::handle(
        services,
        &terminate_report::Config::default(),
        serde_json::from_value(
            json!({"run": spec, "execution": execution(c.region, "other"),
                   "workers": [{"slot": 1, "worker": doc}]}),
        )
        .unwrap(),
        Utc::now(),
    )
    .await
    .unwrap_err();
    assert_eq!(err.error_type(), "Ephemera.RefusedToTerminate");
    let st = c
        .aws
        .ec2
        .describe_instances()
        .instance_ids(&foreign_id)
        .send()
        .await
        .unwrap();
    let state = st.reservations()[0].instances()[0]
        .state()
        .and_then(|s| s.name())
        .map(|n| n.as_str().to_string());
    assert_eq!(state.as_deref(), Some("running"));
}

#[tokio::test]
async fn invoked_through_the_front_door_errors_have_lambda_semantics() {
    let c = ctx().await;
    let h = harness();
    let mut spec = fixtures::runspec("bad-input", &c.net, None);
    spec["worker"]["instance_types"] = json!([]);
    spec["limits"]["heartbeat_seconds"] = json!(5);
    let url = format!(
        "{}/2015-03-31/functions/arn:aws:lambda:{}:123456789012:function:quota-check/invocations",
        h.endpoint, c.region
    );
    let auth = format!(
        "AWS4-HMAC-SHA256 Credential=testing/20260101/{}/lambda/aws4_request, SignedHeaders=host, Signature=0",
        c.region
    );
    let resp = reqwest::Client::new()
        .post(url)
        .header("authorization", auth)
        .body(json!({"run": spec}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-amz-function-error"], "Unhandled");
    let body: Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
    assert_eq!(body["errorType"], "Ephemera.InvalidRunSpec");
    let msg = body["errorMessage"].as_str().unwrap();
    assert!(
        msg.contains("worker.instance_types: must list at least one instance type"),
        "{msg}"
    );
    assert!(
        msg.contains("limits.heartbeat_seconds: 5 is shorter than the 30 s minimum"),
        "{msg}"
    );
    assert!(fixtures::live(&c, "bad-input").await.is_empty());
    assert_eq!(h.door.invocations_in(c.region), vec!["quota-check"]);
    // The states after CheckQuota read the RunSpec it accepted as a typed value: a document
    // that is not a RunSpec at all is a contract error naming the field, and nothing launches.
    spec["worker"]["instance_types"] = json!("m5.large");
    let err = launch_with(&c, &spec, "bad-input", json!({}), bare_settings())
        .await
        .unwrap_err();
    assert_eq!(err.error_type(), "Ephemera.BadInput");
    assert!(
        err.to_string().contains("run.worker.instance_types"),
        "{err}"
    );
    assert!(fixtures::live(&c, "bad-input").await.is_empty());
}

#[tokio::test]
async fn a_relaunch_goes_on_demand_and_keeps_both_attempts() {
    let c = ctx().await;
    let spec = fixtures::runspec("relaunch", &c.net, None);
    let first = launch_with(&c, &spec, "relaunch", json!({}), bare_settings())
        .await
        .unwrap();
    let out = call_with(&c, Function::LaunchWorker,
        json!({"run": spec, "execution": execution(c.region, "relaunch"), "worker": first, "relaunch": true}), bare_settings())
    .await
    .unwrap();
    let second: WorkerState = serde_json::from_value(out).unwrap();
    assert_eq!(second.current().unwrap().attempt, 2);
    assert_eq!(
        second.current().unwrap().market,
        ephemera_core::Market::OnDemand
    );
    assert_eq!(second.attempts.len(), 2);
    assert_eq!(second.relaunches_left, 1);
}
