//! The failure paths the emulator cannot play, each through the real handler: EC2 and Step
//! Functions are SDK clients answered by aws-smithy-mocks rules (the adapters' wire handling
//! included); the services a case does not fault are small fakes of their traits.

use std::sync::Mutex;

use aws_sdk_ec2::error::ErrorMetadata;
use aws_sdk_ec2::operation::describe_images::DescribeImagesOutput;
use aws_sdk_ec2::operation::describe_instances::DescribeInstancesOutput;
use aws_sdk_ec2::operation::describe_spot_price_history::DescribeSpotPriceHistoryOutput;
use aws_sdk_ec2::operation::get_ebs_default_kms_key_id::GetEbsDefaultKmsKeyIdOutput;
use aws_sdk_ec2::operation::run_instances::RunInstancesError;
use aws_sdk_ec2::operation::terminate_instances::TerminateInstancesOutput;
use aws_sdk_ec2::types::{
    Image, Instance, InstanceLifecycleType, InstanceState, InstanceStateName, InstanceType,
    Placement, Reservation, Tag,
};
use aws_sdk_sfn::operation::get_execution_history::{
    GetExecutionHistoryError, GetExecutionHistoryOutput,
};
use aws_sdk_sfn::types::{HistoryEvent, HistoryEventType};
use aws_smithy_mocks::{mock, mock_client, Rule, RuleMode};
use chrono::{DateTime, Duration, Utc};
use ephemera_core::cost::{self, Orchestration};
use ephemera_core::ledger::{Entry, EntryState};
use ephemera_core::{names, tags};
use ephemera_functions::aws::{
    AwsError, Ledger, Notifier, ObjectWriter, Params, PriceList, Quote, Reserved, RunSessions,
    SealedParams, Vend,
};
use ephemera_functions::handlers::{launch_worker, terminate_report};
use ephemera_functions::Error;
use serde_json::{json, Value};

const RUN: &str = "faults";
const EXECUTION: &str = "arn:aws:states:us-east-1:123456789012:execution:ephemera:faults-1";
const ON_DEMAND_HOURLY: f64 = 0.58;

fn spec() -> Value {
    json!({
        "run_id": RUN,
        "worker": {
            "instance_types": ["c7g.4xlarge", "c6g.4xlarge"],
            "subnets": ["subnet-0aa1aa1aa1aa1aa1a", "subnet-0bb2bb2bb2bb2bb2b"],
            "security_groups": ["sg-0123abcd"],
            "image": "ami-0123456789abcdef0",
            "volume_gib": 20,
            "artifact": "s3://ephemera-artifacts/worker/ephemera-worker",
            "args": ["run"],
            "market": "spot-then-on-demand"
        },
        "quota": {"request_increase": false, "max_wait_seconds": 600},
        "limits": {"boot_timeout_seconds": 300, "heartbeat_seconds": 60,
                   "max_runtime_seconds": 3600, "budget_usd": 5.0, "max_relaunches": 2},
        "notify": {"topic_arn": "arn:aws:sns:us-east-1:123456789012:reports"}
    })
}

/// Every type at one On-Demand price, from "the Price List API".
struct Prices;
impl PriceList for Prices {
    async fn on_demand_hourly(&self, _: &str, _: &str) -> Option<Quote> {
        Some(Quote {
            usd_per_hour: ON_DEMAND_HOURLY,
            source: "price-list-api".into(),
        })
    }
}

/// No SSM parameter exists (the spec names its image directly).
struct NoParams;
impl Params for NoParams {
    async fn get(&self, _: &str) -> Result<Option<String>, AwsError> {
        Ok(None)
    }
}

impl SealedParams for NoParams {
    async fn put_sealed(&self, _: &str, _: &str, _: &str, _: &str) -> Result<bool, AwsError> {
        Err(AwsError::Internal(
            "no run role in this test: nothing is sealed".into(),
        ))
    }
}

/// The deployment without a run role: no session is vended.
struct NoSessions;
impl RunSessions for NoSessions {
    async fn vend(&self, _: &Vend<'_>) -> Result<ephemera_core::contract::RunSession, AwsError> {
        Err(AwsError::Internal(
            "no run role in this test: no session is vended".into(),
        ))
    }
}

/// The type of the deployment without a ledger (`None`); never called.
struct NoLedger;
impl Ledger for NoLedger {
    async fn entries(&self, _: &str) -> Result<Vec<Entry>, AwsError> {
        Err(AwsError::Internal("no ledger in this test".into()))
    }
    async fn reserve(
        &self,
        _: &Entry,
        _: u32,
        _: f64,
        _: &ephemera_core::budget::Cap,
    ) -> Result<Reserved, AwsError> {
        Err(AwsError::Internal("no ledger in this test".into()))
    }
    async fn close(
        &self,
        _: &str,
        _: EntryState,
        _: Option<f64>,
        _: Option<&str>,
    ) -> Result<bool, AwsError> {
        Err(AwsError::Internal("no ledger in this test".into()))
    }
    async fn place(&self, _: &str, _: &ephemera_core::placement::Placed) -> Result<(), AwsError> {
        Err(AwsError::Internal("no ledger in this test".into()))
    }
    async fn observed(&self, _: &str) -> Result<Option<String>, AwsError> {
        Err(AwsError::Internal("no ledger in this test".into()))
    }
    async fn keep_observed(&self, _: &str, _: &str) -> Result<String, AwsError> {
        Err(AwsError::Internal("no ledger in this test".into()))
    }
}

impl ephemera_functions::aws::VcpuReservations for NoLedger {
    async fn held(
        &self,
        _: &str,
        _: &[&str],
    ) -> Result<std::collections::BTreeMap<String, ephemera_core::vcpus::Held>, AwsError> {
        Err(AwsError::Internal("no ledger in this test".into()))
    }
    async fn reserve(
        &self,
        _: &str,
        _: &str,
        _: &[ephemera_core::vcpus::Claim],
        _: &std::collections::BTreeMap<String, ephemera_core::vcpus::Held>,
    ) -> Result<bool, AwsError> {
        Err(AwsError::Internal("no ledger in this test".into()))
    }
    async fn release(&self, _: &str, _: &str, _: &[&str]) -> Result<Vec<(String, u32)>, AwsError> {
        Err(AwsError::Internal("no ledger in this test".into()))
    }
}

/// Records every email.
#[derive(Default)]
struct Outbox(Mutex<Vec<String>>);
impl Notifier for Outbox {
    async fn publish(
        &self,
        _: &str,
        subject: &str,
        _: &str,
        _: &[(&str, &str)],
    ) -> Result<String, AwsError> {
        self.0.lock().unwrap().push(subject.to_string());
        Ok("message-1".into())
    }
}

/// The run exports nothing and the deployment has no artifact bucket: nothing is stored.
struct NoObjects;
impl ObjectWriter for NoObjects {
    async fn put(&self, bucket: &str, _: &str, _: Vec<u8>, _: &str) -> Result<(), AwsError> {
        Err(AwsError::Internal(format!(
            "nothing should be stored ({bucket})"
        )))
    }
}

/// An EC2 client answered by `rules` (and the account's default EBS key, AWS's own), without
/// retries of its own.
fn ec2(rules: &[&Rule]) -> aws_sdk_ec2::Client {
    let key = mock!(aws_sdk_ec2::Client::get_ebs_default_kms_key_id).then_output(|| {
        GetEbsDefaultKmsKeyIdOutput::builder()
            .kms_key_id("arn:aws:kms:eu-west-1:123456789012:alias/aws/ebs")
            .build()
    });
    let mut all: Vec<&Rule> = rules.to_vec();
    all.push(&key);
    let rules = &all[..];
    mock_client!(aws_sdk_ec2, RuleMode::MatchAny, rules, |c| c
        .retry_config(aws_sdk_ec2::config::retry::RetryConfig::disabled()))
}

fn sfn(rules: &[&Rule]) -> aws_sdk_sfn::Client {
    mock_client!(aws_sdk_sfn, RuleMode::MatchAny, rules, |c| c
        .retry_config(aws_sdk_sfn::config::retry::RetryConfig::disabled()))
}

fn launch_config() -> launch_worker::Config {
    launch_worker::Config {
        region: "us-east-1".into(),
        worker_role_id: Some("AROAEXAMPLEWORKER".into()),
        ..Default::default()
    }
}

async fn launch(ec2: &aws_sdk_ec2::Client, input: Value) -> Result<(), Error> {
    let books = launch_worker::Books::<NoLedger, Outbox> {
        ledger: None,
        alerts: &Outbox::default(),
    };
    let clients = launch_worker::Clients {
        ec2,
        prices: &Prices,
        params: &NoParams,
        sessions: &NoSessions,
        books,
    };
    launch_worker::handle(
        clients,
        &launch_config(),
        serde_json::from_value(input).unwrap(),
        Utc::now(),
    )
    .await
    .map(|_| ())
}

#[tokio::test]
async fn a_fatal_launch_error_fails_the_launch_without_trying_other_candidates() {
    let none_yet = mock!(aws_sdk_ec2::Client::describe_instances)
        .then_output(|| DescribeInstancesOutput::builder().build());
    let image = mock!(aws_sdk_ec2::Client::describe_images).then_output(|| {
        DescribeImagesOutput::builder()
            .images(Image::builder().root_device_name("/dev/xvda").build())
            .build()
    });
    let run = mock!(aws_sdk_ec2::Client::run_instances).then_error(|| {
        RunInstancesError::generic(
            ErrorMetadata::builder()
                .code("InvalidParameterValue")
                .message(
                    "Volume of size 20GB is smaller than snapshot 'snap-1', expect size >= 30GB",
                )
                .build(),
        )
    });
    let client = ec2(&[&none_yet, &image, &run]);
    let err = launch(&client, json!({"run": spec(), "execution": EXECUTION}))
        .await
        .unwrap_err();
    assert_eq!(err.error_type(), names::LAUNCH_FAILED, "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains(
            "spot c7g.4xlarge in subnet-0aa1aa1aa1aa1aa1a: InvalidParameterValue: Volume of size"
        ),
        "{msg}"
    );
    // Eight candidates (two types × two subnets × Spot then On-Demand): a request that is
    // wrong is wrong on every one of them, so the first answer ends the launch.
    assert_eq!(run.num_calls(), 1);
}

#[tokio::test]
async fn a_relaunch_with_none_left_fails_naming_the_limit_and_launches_nothing() {
    let described = mock!(aws_sdk_ec2::Client::describe_instances)
        .then_output(|| DescribeInstancesOutput::builder().build());
    let image = mock!(aws_sdk_ec2::Client::describe_images).then_output(|| {
        DescribeImagesOutput::builder()
            .images(Image::builder().root_device_name("/dev/xvda").build())
            .build()
    });
    let run = mock!(aws_sdk_ec2::Client::run_instances).then_error(|| {
        RunInstancesError::generic(ErrorMetadata::builder().code("Unexpected").build())
    });
    let client = ec2(&[&described, &image, &run]);
    let attempt = json!({
        "attempt": 3, "instance_id": "i-0ccc", "instance_type": "c7g.4xlarge",
        "subnet": "subnet-0aa1aa1aa1aa1aa1a", "market": "on-demand", "launched_at": "2026-11-30T10:00:00Z",
        "client_token": "eph-3-x", "estimate_usd": 2.5, "volume_gib": 20
    });
    let worker = json!({
        "attempts": [attempt], "relaunches_left": 0,
        "heartbeat_seconds": 60, "timeout_seconds": 3600, "boot_poll_seconds": 1,
        "token_parameter": "/ephemera/runs/faults/task-token/i-0ccc",
        "token_reader": "AROAEXAMPLEWORKER:i-0ccc"
    });
    let err = launch(
        &client,
        json!({"run": spec(), "execution": EXECUTION, "worker": worker, "relaunch": true}),
    )
    .await
    .unwrap_err();
    assert_eq!(err.error_type(), names::LAUNCH_FAILED, "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("no relaunch left after attempt 3 (limits.max_relaunches = 2)"),
        "{msg}"
    );
    assert_eq!((described.num_calls(), run.num_calls()), (0, 0));

    // One relaunch left: the same input goes on to launch attempt 4.
    let mut one_left = worker.clone();
    one_left["relaunches_left"] = json!(1);
    let err = launch(
        &client,
        json!({"run": spec(), "execution": EXECUTION, "worker": one_left, "relaunch": true}),
    )
    .await
    .unwrap_err();
    assert!(!err.to_string().contains("no relaunch left"), "{err}");
    assert_eq!((described.num_calls(), run.num_calls()), (1, 1));
}

/// The run's one Spot instance, launched an hour ago, still running.
fn spot_instance(launched: DateTime<Utc>) -> Instance {
    let tag = |k: &str, v: &str| Tag::builder().key(k).value(v).build();
    Instance::builder()
        .instance_id("i-0spot")
        .instance_type(InstanceType::from("c7g.4xlarge"))
        .state(
            InstanceState::builder()
                .name(InstanceStateName::Running)
                .build(),
        )
        .launch_time(aws_sdk_ec2::primitives::DateTime::from_secs(
            launched.timestamp(),
        ))
        .placement(Placement::builder().availability_zone("us-east-1a").build())
        .subnet_id("subnet-0aa1aa1aa1aa1aa1a")
        .instance_lifecycle(InstanceLifecycleType::Spot)
        .tags(tag(tags::MANAGED, "true"))
        .tags(tag(tags::RUN, RUN))
        .tags(tag(tags::EXECUTION, EXECUTION))
        .tags(tag(tags::ATTEMPT, "1"))
        .build()
}

/// A cleanup report of the failed run over `ec2` (its Spot prices) and `history`.
async fn report(
    spot_prices: &Rule,
    history: &Rule,
    now: DateTime<Utc>,
) -> (ephemera_core::report::CostReport, Vec<String>) {
    let launched = now - Duration::hours(1);
    let described = mock!(aws_sdk_ec2::Client::describe_instances).then_output(move || {
        DescribeInstancesOutput::builder()
            .reservations(
                Reservation::builder()
                    .instances(spot_instance(launched))
                    .build(),
            )
            .build()
    });
    let terminated = mock!(aws_sdk_ec2::Client::terminate_instances)
        .then_output(|| TerminateInstancesOutput::builder().build());
    let ec2 = ec2(&[&described, &terminated, spot_prices]);
    let sfn = sfn(&[history]);
    let outbox = Outbox::default();
    let input = json!({
        "run": spec(), "execution": EXECUTION,
        "error": {"Error": "Worker.Failed", "Cause": "the run failed"}
    });
    let services = terminate_report::Services {
        ec2: &ec2,
        prices: &Prices,
        sns: &outbox,
        history: &sfn,
        objects: &NoObjects,
        ledger: None::<&NoLedger>,
        signals: None::<&aws_sdk_ssm::Client>,
    };
    let report = terminate_report::handle(
        services,
        &terminate_report::Config {
            region: "us-east-1".into(),
            lambda_memory_mb: 128,
            ..Default::default()
        },
        serde_json::from_value(input).unwrap(),
        now,
    )
    .await
    .expect("a report, whatever could not be priced");
    assert_eq!(terminated.num_calls(), 1, "the instance is terminated");
    let emails = outbox.0.lock().unwrap().clone();
    (report, emails)
}

fn no_history() -> Rule {
    mock!(aws_sdk_sfn::Client::get_execution_history).then_output(|| {
        GetExecutionHistoryOutput::builder()
            .set_events(Some(vec![]))
            .build()
            .unwrap()
    })
}

fn spot_history(points: &'static [(i64, &'static str)], now: DateTime<Utc>) -> Rule {
    mock!(aws_sdk_ec2::Client::describe_spot_price_history).then_output(move || {
        DescribeSpotPriceHistoryOutput::builder()
            .set_spot_price_history(Some(
                points
                    .iter()
                    .map(|(hours_ago, price)| {
                        aws_sdk_ec2::types::SpotPrice::builder()
                            .spot_price(*price)
                            .timestamp(aws_sdk_ec2::primitives::DateTime::from_secs(
                                (now - Duration::hours(*hours_ago)).timestamp(),
                            ))
                            .build()
                    })
                    .collect(),
            ))
            .build()
    })
}

#[tokio::test]
async fn a_spot_instance_without_price_history_is_priced_at_on_demand_and_says_so() {
    let now = Utc::now();
    let (r, emails) = report(&spot_history(&[], now), &no_history(), now).await;
    assert_eq!(r.attempts.len(), 1, "{r:?}");
    let a = &r.attempts[0];
    let on_demand = cost::usd(cost::on_demand_cost(ON_DEMAND_HOURLY, a.billed_seconds));
    assert!(on_demand > 0.5, "{on_demand}");
    assert_eq!(
        (a.compute_usd, a.price_source.as_str()),
        (on_demand, "price-list-api")
    );
    assert!(
        r.notes.iter().any(|n| n
            == "i-0spot: no Spot price history for c7g.4xlarge in us-east-1a; priced at On-Demand (price-list-api)"),
        "{:?}",
        r.notes
    );
    assert_eq!(emails.len(), 1);

    // The same instance with a history is priced from it (half the On-Demand price here).
    let (r, _) = report(&spot_history(&[(2, "0.29")], now), &no_history(), now).await;
    let a = &r.attempts[0];
    assert_eq!(a.price_source, "spot-price-history");
    assert!((a.compute_usd - on_demand / 2.0).abs() < 1e-6, "{a:?}");
    assert!(!r.notes.iter().any(|n| n.contains("no Spot price history")));
}

#[tokio::test]
async fn an_unreadable_execution_history_leaves_orchestration_unpriced_with_a_note() {
    let now = Utc::now();
    let denied = mock!(aws_sdk_sfn::Client::get_execution_history).then_error(|| {
        GetExecutionHistoryError::generic(
            aws_sdk_sfn::error::ErrorMetadata::builder()
                .code("AccessDeniedException")
                .message("not authorized to perform: states:GetExecutionHistory")
                .build(),
        )
    });
    let (r, emails) = report(&spot_history(&[(2, "0.29")], now), &denied, now).await;
    assert_eq!(denied.num_calls(), 1);
    assert_eq!(r.orchestration, Orchestration::default());
    assert!(
        r.notes
            .contains(&"the execution history could not be read; orchestration not priced".into()),
        "{:?}",
        r.notes
    );
    // Everything else is still there: the instance's cost, the failure, the email.
    assert_eq!(r.attempts.len(), 1);
    assert!(r.compute_usd > 0.0);
    assert_eq!(r.actual_usd, cost::usd(r.compute_usd + r.ebs_usd));
    assert_eq!(serde_json::to_value(&r).unwrap()["outcome"], "FAILED");
    assert_eq!(emails.len(), 1);

    // A readable history prices it: one state entered, one Lambda run.
    let readable = mock!(aws_sdk_sfn::Client::get_execution_history).then_output(move || {
        let at = aws_sdk_sfn::primitives::DateTime::from_secs(now.timestamp());
        GetExecutionHistoryOutput::builder()
            .events(
                HistoryEvent::builder()
                    .id(1)
                    .timestamp(at)
                    .r#type(HistoryEventType::TaskStateEntered)
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap()
    });
    let (r, _) = report(&spot_history(&[(2, "0.29")], now), &readable, now).await;
    assert_eq!(r.orchestration.state_transitions, 1);
    assert!(!r.notes.iter().any(|n| n.contains("execution history")));
}
