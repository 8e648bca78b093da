//! The sweeper terminates what outlived its run, and nothing else.

use aws_sdk_ec2::types::{InstanceType, ResourceType, Tag, TagSpecification};
use chrono::{Duration, SecondsFormat, Utc};
use ephemera_core::tags;
use ephemera_functions::{invoke, Function, Settings};
use ephemera_tests::{clients, fixtures, fresh_region, function_clients};
use serde_json::{json, Value};

async fn instance(aws: &ephemera_functions::Aws, image: &str, tags: &[(&str, String)]) -> String {
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

#[tokio::test]
async fn sweeps_instances_whose_run_is_over_or_past_its_deadline() {
    let region = fresh_region();
    let aws = clients(region);
    let net = fixtures::network(&aws).await;
    let inbox = fixtures::inbox(region, "ephemera-reports").await;

    // An execution of the stack's state machine that is still running (a long Wait).
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
    let running = aws
        .sfn
        .start_execution()
        .state_machine_arn(machine.state_machine_arn())
        .name("still-running")
        .send()
        .await
        .unwrap()
        .execution_arn()
        .to_string();
    let gone = format!("arn:aws:states:{region}:123456789012:execution:ephemera-worker:gone");
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

    let settings = Settings {
        default_topic: Some(inbox.topic_arn.clone()),
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
    let text = out.to_string();
    assert!(text.contains("its execution does not exist"), "{text}");
    assert!(text.contains("deadline"), "{text}");

    let mail = inbox.read().await;
    assert_eq!(mail.len(), 1);
    assert_eq!(
        mail[0].subject,
        "ephemera sweeper: terminated 2 instance(s)"
    );

    // Nothing left to sweep: no email, nothing terminated.
    let again: Value = invoke(&role, &settings, Function::Sweeper, json!({}))
        .await
        .unwrap();
    assert_eq!(again["terminated"].as_array().unwrap().len(), 0);
    assert!(inbox.read().await.is_empty());
}
