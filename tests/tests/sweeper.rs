//! The sweeper terminates what outlived its run, and nothing else.

use aws_sdk_ec2::types::{
    IamInstanceProfileSpecification, InstanceType, ResourceType, Tag, TagSpecification,
};
use aws_sdk_ssm::types::ParameterType;
use chrono::{Duration, SecondsFormat, Utc};
use ephemera_core::contract::RunParameters;
use ephemera_core::tags;
use ephemera_functions::wiring::sweeper::Sweeper;
use ephemera_functions::{invoke, Function, Settings};
use ephemera_tests::iam::WORKER_PROFILE;
use ephemera_tests::{clients, fixtures, fresh_region, function_clients};
use serde_json::{json, Value};

/// An instance launched with the stack's worker profile, as launch-worker launches them.
async fn instance(aws: &ephemera_functions::Aws, image: &str, tags: &[(&str, String)]) -> String {
    launched(aws, image, tags, Some(WORKER_PROFILE)).await
}

async fn launched(
    aws: &ephemera_functions::Aws,
    image: &str,
    tags: &[(&str, String)],
    profile: Option<&str>,
) -> String {
    let spec = TagSpecification::builder()
        .resource_type(ResourceType::Instance)
        .set_tags(Some(
            tags.iter()
                .map(|(k, v)| Tag::builder().key(*k).value(v).build())
                .collect(),
        ))
        .build();
    let r = aws
        .ec2
        .run_instances()
        .image_id(image)
        .instance_type(InstanceType::T3Micro)
        .min_count(1)
        .max_count(1)
        .tag_specifications(spec)
        .set_iam_instance_profile(
            profile.map(|p| IamInstanceProfileSpecification::builder().name(p).build()),
        )
        .send()
        .await
        .unwrap();
    r.instances()[0].instance_id().unwrap().to_string()
}

async fn state(aws: &ephemera_functions::Aws, id: &str) -> String {
    fixtures::instance(aws, id)
        .await
        .state()
        .and_then(|s| s.name())
        .unwrap()
        .as_str()
        .to_string()
}

/// An execution of the stack's state machine that is still running (a long Wait).
async fn running_execution(aws: &ephemera_functions::Aws) -> String {
    let machine = aws
        .sfn
        .create_state_machine()
        .name("ephemera-worker")
        .definition(
            json!({"StartAt": "W", "States": {"W": {"Type": "Wait", "Seconds": 600, "End": true}}})
                .to_string(),
        )
        .role_arn("arn:aws:iam::123456789012:role/x")
        .send()
        .await
        .unwrap();
    aws.sfn
        .start_execution()
        .state_machine_arn(machine.state_machine_arn())
        .name("still-running")
        .send()
        .await
        .unwrap()
        .execution_arn()
        .to_string()
}

#[tokio::test]
async fn sweeps_instances_whose_run_is_over_or_past_its_deadline() {
    let region = fresh_region();
    let aws = clients(region);
    let net = fixtures::network(&aws).await;
    let inbox = fixtures::inbox(region, "ephemera-reports").await;

    let running = running_execution(&aws).await;
    let gone = ephemera_tests::deployed::execution(region, "gone");
    let future = (Utc::now() + Duration::hours(2)).to_rfc3339_opts(SecondsFormat::Secs, true);
    let past = (Utc::now() - Duration::minutes(1)).to_rfc3339_opts(SecondsFormat::Secs, true);
    let managed = |run: &str, exec: &str, deadline: &str| {
        vec![
            (tags::MANAGED, "true".to_string()),
            (tags::RUN, run.to_string()),
            (tags::EXECUTION, exec.to_string()),
            (tags::DEADLINE, deadline.to_string()),
        ]
    };
    let keep = instance(&aws, &net.image, &managed("alive", &running, &future)).await;
    let orphan = instance(&aws, &net.image, &managed("orphan", &gone, &future)).await;
    let overdue = instance(&aws, &net.image, &managed("overdue", &running, &past)).await;
    let foreign = instance(&aws, &net.image, &[("Name", "not-ours".to_string())]).await;
    // Someone else's instance, tagged as ephemera's (its run long over) but launched without
    // the stack's profile: the tag alone does not make it the sweeper's.
    let impostor = launched(&aws, &net.image, &managed("impostor", &gone, &past), None).await;

    let settings = Settings {
        default_topic: Some(inbox.topic_arn.clone()),
        worker_instance_profile: Some(WORKER_PROFILE.into()),
        ..Settings::default()
    };
    let role = function_clients(region, "sweeper");
    let out: Value = invoke(
        &role,
        &settings,
        Function::Sweeper,
        json!({"detail-type": "Scheduled Event"}),
    )
    .await
    .unwrap();
    assert_eq!(out["checked"], 3, "{out}");
    let swept: Vec<&str> = out["terminated"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["instance_id"].as_str().unwrap())
        .collect();
    assert_eq!(swept.len(), 2, "{out}");
    assert!(swept.contains(&orphan.as_str()) && swept.contains(&overdue.as_str()));
    assert_eq!(state(&aws, &keep).await, "running");
    assert_eq!(state(&aws, &foreign).await, "running");
    assert_eq!(state(&aws, &orphan).await, "terminated");
    assert_eq!(state(&aws, &overdue).await, "terminated");
    assert_eq!(state(&aws, &impostor).await, "running");
    let text = out.to_string();
    assert!(
        text.contains(&format!("{impostor} is tagged ephemera:managed=true but was not launched with this stack's instance profile")),
        "{text}"
    );
    assert!(text.contains("its execution does not exist"), "{text}");
    assert!(text.contains("deadline"), "{text}");

    let mail = inbox.read().await;
    assert_eq!(mail.len(), 1);
    assert_eq!(
        mail[0].subject,
        "ephemera sweeper: terminated 2 instance(s)"
    );

    // Without the code's check, the role's own condition (`ec2:InstanceProfile`) still refuses.
    let unfiltered = Settings {
        worker_instance_profile: None,
        ..settings.clone()
    };
    let refused = invoke(&role, &unfiltered, Function::Sweeper, json!({}))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains("UnauthorizedOperation") || refused.contains("AccessDenied"),
        "{refused}"
    );
    assert_eq!(state(&aws, &impostor).await, "running");
    let _ = inbox.read().await;

    // Nothing left to sweep: no email, nothing terminated.
    let again: Value = invoke(&role, &settings, Function::Sweeper, json!({}))
        .await
        .unwrap();
    assert_eq!(again["terminated"].as_array().unwrap().len(), 0);
    assert!(inbox.read().await.is_empty());
}

/// The signals (SSM parameters) of instances that are gone go too, once they are older than the
/// grace: a run the sweeper ended, or one whose execution crashed, leaves no parameter behind.
#[tokio::test]
async fn signals_of_instances_that_are_gone_are_deleted_once_old() {
    let region = fresh_region();
    let aws = clients(region);
    let net = fixtures::network(&aws).await;
    let running = running_execution(&aws).await;
    let future = (Utc::now() + Duration::hours(2)).to_rfc3339_opts(SecondsFormat::Secs, true);
    let managed = vec![
        (tags::MANAGED, "true".to_string()),
        (tags::RUN, "r".to_string()),
        (tags::EXECUTION, running.clone()),
        (tags::DEADLINE, future),
    ];
    let live = instance(&aws, &net.image, &managed).await;
    let gone = instance(&aws, &net.image, &managed).await;
    aws.ec2
        .terminate_instances()
        .instance_ids(&gone)
        .send()
        .await
        .unwrap();
    let run = RunParameters::of_run("r");
    let other = format!("{}/r/notes", RunParameters::ROOT);
    for (name, kind) in [
        (run.started(&live), ParameterType::String),
        (run.task_token(&live), ParameterType::SecureString),
        (run.started(&gone), ParameterType::String),
        (run.task_token(&gone), ParameterType::SecureString),
        (other.clone(), ParameterType::String),
    ] {
        aws.ssm
            .put_parameter()
            .name(name)
            .value("x")
            .r#type(kind)
            .send()
            .await
            .unwrap();
    }
    let exists = |name: String| {
        let ssm = aws.ssm.clone();
        async move { ssm.get_parameter().name(name).send().await.is_ok() }
    };

    // The sweeper's own role: DescribeParameters on *, DeleteParameters on signals only.
    let role = function_clients(region, "sweeper");
    let sweep = |now| {
        let role = role.clone();
        async move {
            Sweeper::of(&role, &Settings::default())
                .call(now)
                .await
                .unwrap()
        }
    };
    // Just written: left alone, whatever its instance (it may be too new to be listed).
    let at_once = sweep(Utc::now()).await;
    assert_eq!(at_once["signals_deleted"], 0, "{at_once}");
    assert!(exists(run.started(&gone)).await);

    let later = sweep(Utc::now() + Duration::hours(1)).await;
    assert_eq!(later["terminated"].as_array().unwrap().len(), 0, "{later}");
    assert_eq!(later["signals_deleted"], 2, "{later}");
    assert!(later.get("notes").is_none(), "{later}");
    assert!(!exists(run.started(&gone)).await);
    assert!(!exists(run.task_token(&gone)).await);
    assert!(
        exists(run.started(&live)).await,
        "a live instance keeps its signals"
    );
    assert!(exists(run.task_token(&live)).await);
    assert!(exists(other).await, "only signals are deleted");
}

/// The backstop of the vCPU reservations (issue 32, part 4): a run whose execution ended without
/// its teardown (stopped, timed out, its cleanup failed, or gone altogether) gets its vCPUs given
/// back at the sweeper's next tick, so that no run that dies holds them for good; a running run
/// keeps its own.
#[tokio::test]
async fn the_vcpus_of_a_run_that_ended_without_its_teardown_are_given_back() {
    use ephemera_core::vcpus::Claim;
    use ephemera_functions::aws::{LedgerTable, VcpuReservations};
    const SPOT: &str = "L-34B43A08";
    let region = fresh_region();
    let aws = clients(region);
    ephemera_tests::harness().door.ensure_ledger(region).await;
    let sfn = aws_sdk_sfn::Client::new(&ephemera_tests::sdk_config(region));
    let machine = sfn
        .create_state_machine()
        .name("ephemera-worker")
        .definition(
            r#"{"StartAt":"Work","States":{"Work":{"Type":"Wait","Seconds":600,"End":true}}}"#,
        )
        .role_arn(format!(
            "arn:aws:iam::{}:role/ephemera-state-machine",
            ephemera_tests::iam::ACCOUNT
        ))
        .send()
        .await
        .unwrap()
        .state_machine_arn()
        .to_string();
    let running = sfn
        .start_execution()
        .state_machine_arn(&machine)
        .name("still-running")
        .input("{}")
        .send()
        .await
        .unwrap()
        .execution_arn()
        .to_string();
    let gone = ephemera_tests::deployed::execution(region, "gone");
    let ledger = LedgerTable {
        client: aws.dynamodb.clone(),
        table: ephemera_tests::iam::LEDGER_TABLE.into(),
    };
    let claims = [Claim::new(SPOT, 16, 64.0, 0)];
    for e in [&running, &gone] {
        let held = ledger.held(region, &[SPOT]).await.unwrap();
        assert!(ledger.reserve(region, e, &claims, &held).await.unwrap());
    }
    let total = |ledger: LedgerTable| async move {
        ledger.held(region, &[SPOT]).await.unwrap()[SPOT].total()
    };
    assert_eq!(total(ledger.clone()).await, 32);

    let settings = Settings {
        ledger_table: Some(ephemera_tests::iam::LEDGER_TABLE.into()),
        ..Settings::default()
    };
    let role = function_clients(region, "sweeper");
    let sweep = || invoke(&role, &settings, Function::Sweeper, Value::Null);
    let first = sweep().await.unwrap();
    assert_eq!(
        first["vcpus_released"],
        json!([{"execution": gone, "quota_code": SPOT, "vcpus": 16,
                "reason": "its execution does not exist"}]),
        "{first}"
    );
    assert_eq!(
        total(ledger.clone()).await,
        16,
        "the running run keeps its own"
    );
    // Nothing twice.
    let again = sweep().await.unwrap();
    assert!(again.get("vcpus_released").is_none(), "{again}");
    // Stopped without its teardown: given back at the next tick.
    sfn.stop_execution()
        .execution_arn(&running)
        .send()
        .await
        .unwrap();
    let after = sweep().await.unwrap();
    assert_eq!(
        after["vcpus_released"][0]["execution"],
        json!(running),
        "{after}"
    );
    assert_eq!(
        after["vcpus_released"][0]["reason"], "its execution is ABORTED",
        "{after}"
    );
    assert_eq!(total(ledger).await, 0);
}
