//! What AWS would refuse late — after a launch, a boot, or the whole job — refused first, by
//! the state that can see it, naming the field or parameter: the template's grants (export
//! bucket, instance profile), the image's snapshot size, an account's own default EBS key; and
//! the Spot-interruption rules, which must match a reclaim and nothing else. Each scenario plays
//! AWS's late answer in the front door (tests/src/frontdoor/: `ec2.rs`, `spot.rs`), so it failed
//! before its check.

use ephemera_core::rundoc::WorkerState;
use ephemera_functions::{Function, Settings};
use ephemera_tests::deployed::{self, call, call_with, execution, launch};
use ephemera_tests::e2e::{self, State};
use ephemera_tests::fixtures::{self, ctx};
use ephemera_tests::harness;
use ephemera_tests::iam::ACCOUNT;
use ephemera_tests::worker_standin::Behaviour;
use serde_json::{json, Value};

/// The template grants the worker one export bucket and the functions one instance profile to
/// pass: a RunSpec naming others is refused at the first state, all of them at once, before
/// any quota is waited for or instance launched (AWS would refuse them only later: the profile
/// at RunInstances, the export after the whole job ran).
#[tokio::test]
async fn what_the_deployment_does_not_grant_is_refused_before_anything_is_launched() {
    let c = ctx().await;
    let mut spec = fixtures::runspec("ungranted", &c.net, None);
    spec["worker"]["args"] = json!(["run", "--export", "s3://someone-elses/runs/ungranted/"]);
    spec["expect"] = json!({"export_prefix": "s3://someone-elses/runs/ungranted/"});
    spec["worker"]["instance_profile"] = json!("admin");
    let err = call(&c, Function::QuotaCheck, json!({"run": spec}))
        .await
        .unwrap_err();
    assert_eq!(err.error_type(), "Ephemera.InvalidRunSpec", "{err}");
    let msg = err.to_string();
    for field in [
        "expect.export_prefix",
        "worker.args[2]",
        "worker.instance_profile",
    ] {
        assert!(msg.contains(field), "{field}: {msg}");
    }
    assert!(msg.contains("export bucket ephemera-features"), "{msg}");
    assert!(msg.contains("worker profile ephemera-worker"), "{msg}");

    // The deployment's own bucket and profile (by ARN) pass.
    spec["worker"]["args"] = json!(["run", "--export", "s3://ephemera-features/runs/ungranted/"]);
    spec["expect"] = json!({"export_prefix": "s3://ephemera-features/runs/ungranted/"});
    spec["worker"]["instance_profile"] = json!(format!(
        "arn:aws:iam::{ACCOUNT}:instance-profile/ephemera-worker"
    ));
    let ok = call(&c, Function::QuotaCheck, json!({"run": spec}))
        .await
        .unwrap();
    assert_eq!(ok["verdict"], "enough", "{ok}");
}

/// A root volume smaller than the image's snapshot (moto's images: 15 GiB) is refused by EC2
/// for every candidate alike; the launch says so once, naming the field, and asks EC2 nothing.
#[tokio::test]
async fn a_root_volume_smaller_than_the_images_snapshot_names_the_field() {
    let c = ctx().await;
    let mut spec = fixtures::runspec("small-root", &c.net, None);
    spec["worker"]["volume_gib"] = json!(8);
    let err = launch(&c, &spec, "small-root", json!({}))
        .await
        .unwrap_err();
    assert_eq!(err.error_type(), "Ephemera.InvalidRunSpec", "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("worker.volume_gib: 8 GiB is smaller than the root snapshot of image")
            && msg.contains("(15 GiB); set at least 15"),
        "{msg}"
    );
    assert_eq!(
        harness().door.throttles.asked(c.region, "ec2:RunInstances"),
        0
    );
}

/// An account whose default EBS key is its own (customer managed): EC2 accepts a launch whose
/// caller may not use that key, then terminates the instance (Client.InternalError). The launch
/// refuses first, naming the parameter; deployed with `EbsKmsKeyArn`, the root volume is
/// encrypted with it and the template's grant lets launch-worker use it.
#[tokio::test]
async fn an_accounts_own_default_ebs_key_is_named_before_launch_and_used_once_deployed() {
    let c = ctx().await;
    let key = format!(
        "arn:aws:kms:{}:{ACCOUNT}:key/0a1b2c3d-1111-2222-3333-444455556666",
        c.region
    );
    harness()
        .door
        .ebs_default_key
        .lock()
        .unwrap()
        .insert(c.region.into(), key.clone());
    let spec = fixtures::runspec("own-key", &c.net, None);
    let err = launch(&c, &spec, "own-key", json!({})).await.unwrap_err();
    assert_eq!(err.error_type(), "Ephemera.LaunchFailed", "{err}");
    assert!(
        err.to_string()
            .contains(&format!("Deploy the stack with EbsKmsKeyArn={key}")),
        "{err}"
    );
    assert_eq!(
        harness().door.throttles.asked(c.region, "ec2:RunInstances"),
        0
    );

    // Deployed with the key: the template's statement on it, the functions told of it.
    let template = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../template.yaml"),
    )
    .unwrap();
    harness().door.set_policies(
        c.region,
        ephemera_tests::iam::Policies::from_template_with(&template, &[("EbsKmsKeyArn", &key)]),
    );
    let settings = Settings {
        ebs_kms_key: Some(key.clone()),
        ..deployed::settings(&c)
    };
    let out = call_with(
        &c,
        Function::LaunchWorker,
        json!({"run": spec, "execution": execution(c.region, "own-key")}),
        settings,
    )
    .await
    .unwrap();
    let w: WorkerState = serde_json::from_value(out).unwrap();
    let i = fixtures::instance(&c.aws, &w.current().unwrap().instance_id).await;
    let state = i
        .state()
        .and_then(|s| s.name())
        .map(|n| n.as_str().to_string());
    assert_ne!(
        state.as_deref(),
        Some("terminated"),
        "{:?}",
        i.state_reason()
    );
    assert!(harness().door.denials_in(c.region).is_empty());
}

/// One EventBridge call to moto (the JSON protocol), as the administrator.
async fn events(region: &str, op: &str, body: Value) -> Value {
    let resp = reqwest::Client::new()
        .post(format!("{}/", harness().moto))
        .header("content-type", "application/x-amz-json-1.1")
        .header("x-amz-target", format!("AWSEvents.{op}"))
        .header(
            "authorization",
            format!("AWS4-HMAC-SHA256 Credential=testing/20260101/{region}/events/aws4_request, SignedHeaders=host, Signature=0"),
        )
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{op}: {}", resp.status());
    serde_json::from_str(&resp.text().await.unwrap_or_default()).unwrap_or(Value::Null)
}

/// The rules template.yaml gives the spot-interruption function, put in EventBridge with a queue
/// as their target: a Spot warning and the state changes a reclaim ends in reach the function;
/// a launch's or a stop's (every instance in the region makes them) do not.
#[tokio::test]
async fn the_spot_rules_match_a_reclaim_and_no_other_state_change() {
    let c = ctx().await;
    let template: serde_yaml_ng::Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../template.yaml"),
        )
        .unwrap(),
    )
    .unwrap();
    let rules = template["Resources"]["SpotInterruptionFunction"]["Properties"]["Events"]
        .as_mapping()
        .unwrap()
        .iter()
        .map(|(name, e)| {
            let pattern: Value = serde_json::to_value(&e["Properties"]["Pattern"]).unwrap();
            (name.as_str().unwrap().to_string(), pattern)
        })
        .collect::<Vec<_>>();
    assert!(!rules.is_empty());

    let inbox = fixtures::inbox(c.region, "spot-rules").await;
    let conf = ephemera_tests::sdk_config(c.region);
    let sqs = aws_sdk_sqs::Client::new(&conf);
    let queue_arn = format!("arn:aws:sqs:{}:{ACCOUNT}:spot-rules-inbox", c.region);
    for (name, pattern) in &rules {
        events(
            c.region,
            "PutRule",
            json!({"Name": name, "EventPattern": pattern.to_string()}),
        )
        .await;
        events(
            c.region,
            "PutTargets",
            json!({"Rule": name, "Targets": [{"Id": "queue", "Arn": queue_arn}]}),
        )
        .await;
    }
    let event = |detail_type: &str, detail: Value| json!({"Source": "aws.ec2", "DetailType": detail_type, "Detail": detail.to_string()});
    let change = "EC2 Instance State-change Notification";
    let entries = vec![
        event(
            "EC2 Spot Instance Interruption Warning",
            json!({"instance-id": "i-warned", "instance-action": "terminate"}),
        ),
        event(
            change,
            json!({"instance-id": "i-pending", "state": "pending"}),
        ),
        event(
            change,
            json!({"instance-id": "i-running", "state": "running"}),
        ),
        event(
            change,
            json!({"instance-id": "i-stopped", "state": "stopped"}),
        ),
        event(
            change,
            json!({"instance-id": "i-shutting-down", "state": "shutting-down"}),
        ),
        event(
            change,
            json!({"instance-id": "i-terminated", "state": "terminated"}),
        ),
    ];
    events(c.region, "PutEvents", json!({"Entries": entries})).await;

    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..5 {
        let got = sqs
            .receive_message()
            .queue_url(&inbox.queue_url)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .send()
            .await
            .unwrap();
        for m in got.messages() {
            let body: Value = serde_json::from_str(m.body().unwrap_or("{}")).unwrap();
            seen.insert(body["detail"]["instance-id"].as_str().unwrap().to_string());
        }
    }
    let want: std::collections::BTreeSet<String> = ["i-warned", "i-shutting-down", "i-terminated"]
        .into_iter()
        .map(String::from)
        .collect();
    assert_eq!(seen, want);
}

/// A scheduled run whose RunSpec is refused is not silent: one REFUSED email says the schedule
/// started it, and the execution fails with the problems.
#[tokio::test]
async fn a_scheduled_run_refused_sends_its_refused_email() {
    let report = json!({"run_id": "e2e-weekly-bad-occ7", "partitions_done": 2});
    let r = e2e::scenario(
        ephemera_tests::fresh_region(),
        "e2e-weekly-bad-occ7",
        Behaviour::Succeed(report),
        |spec| {
            spec["run_id"] = json!("e2e-weekly-bad");
            spec["limits"]["budget_usd"] = json!(-1);
            *spec = json!({"schedule": {"execution": "occ7"}, "runspec": spec.clone()});
        },
    )
    .await;
    assert_eq!(r.finished.status, "FAILED");
    assert_eq!(
        r.finished.visited(State::TellRefusal),
        1,
        "{:?}",
        r.finished.path
    );
    let cause = r.finished.cause.as_deref().unwrap();
    assert!(cause.starts_with("limits.budget_usd: "), "{cause}");
    assert_eq!(r.emails.len(), 1, "{:?}", r.emails);
    let e = &r.emails[0];
    assert!(
        e.subject
            .starts_with("ephemera e2e-weekly-bad-occ7: REFUSED"),
        "{}",
        e.subject
    );
    assert!(
        e.body.contains("the stack's schedule (occurrence occ7)"),
        "{}",
        e.body
    );
    assert!(e.body.contains("- limits.budget_usd: "), "{}", e.body);
    assert!(r.instances.is_empty());
}
