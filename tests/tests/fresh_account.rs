//! A first run on a new AWS account, where moto would let everything through: every Lambda acts
//! with the policies template.yaml gives it, service-linked roles do not exist yet, quotas were
//! never changed, a region does not offer every type, and a new instance is not visible at once.
//! Each scenario names the AWS behaviour it relies on next to the harness code that plays it
//! (tests/src/frontdoor/, tests/src/requests.rs).

use aws_sdk_ec2::types::Tag;
use chrono::{Duration, Utc};
use ephemera_core::report::CostReport;
use ephemera_functions::Function;
use ephemera_tests::deployed::{call, execution, launch, topic};
use ephemera_tests::fixtures::{self, ctx, Ctx};
use ephemera_tests::harness;
use ephemera_tests::iam::{Principal, Statement, ACCOUNT};
use serde_json::json;

const SPOT: &str = "L-34B43A08";

fn function(name: &str) -> Principal {
    Principal::Function(name.into())
}

/// The template's policies in this region, changed by `edit`.
fn policies(
    c: &Ctx,
    edit: impl FnOnce(ephemera_tests::iam::Policies) -> ephemera_tests::iam::Policies,
) {
    let door = &harness().door;
    door.set_policies(c.region, edit(door.template_policies()));
}

#[tokio::test]
async fn the_first_quota_request_creates_the_service_quotas_role_only_with_the_permission() {
    let c = ctx().await;
    harness().door.with_quotas(c.region, |q| {
        q.applied.insert(SPOT.into(), 8.0);
    });
    let mut spec = fixtures::runspec("slr-quotas", &c.net, None);
    spec["worker"]["market"] = json!("spot");

    // As the template stood before: no iam:CreateServiceLinkedRole for Service Quotas.
    policies(&c, |p| {
        p.without(&function("quota-check"), "ServiceQuotasServiceLinkedRole")
    });
    let err = call(&c, Function::QuotaCheck, json!({"run": spec}))
        .await
        .unwrap_err();
    assert_eq!(err.error_type(), "Ephemera.AwsError", "{err}");
    assert!(
        err.to_string().contains("DependencyAccessDeniedException"),
        "{err}"
    );
    assert!(!harness()
        .door
        .has_service_linked_role(c.region, "servicequotas.amazonaws.com"));

    // With the template's statement the request goes in and AWS creates the role.
    policies(&c, |p| p);
    let out = call(&c, Function::QuotaCheck, json!({"run": spec}))
        .await
        .unwrap();
    assert_eq!(out["verdict"], "waiting", "{out}");
    assert!(harness()
        .door
        .has_service_linked_role(c.region, "servicequotas.amazonaws.com"));
}

#[tokio::test]
async fn a_never_changed_quota_is_read_from_the_unscoped_default() {
    let c = ctx().await;
    // No applied value: GetServiceQuota answers NoSuchResourceException and quota-check reads
    // GetAWSDefaultServiceQuota, which takes no resource ARN (Service Authorization Reference,
    // list_servicequotas.html).
    let spec = fixtures::runspec("default-quota", &c.net, None);
    let out = call(&c, Function::QuotaCheck, json!({"run": spec}))
        .await
        .unwrap();
    assert_eq!(out["verdict"], "enough", "{out}");
    assert!(out["quotas"][0]["is_default"].as_bool().unwrap(), "{out}");

    // Granted on a quota ARN, as the template had it, the default read is AccessDenied.
    policies(&c, |mut p| {
        p = p.without(&function("quota-check"), "DefaultQuotasHaveNoResourceScope");
        p.by_principal
            .get_mut(&function("quota-check"))
            .unwrap()
            .push(Statement {
                sid: "ScopedAsBefore".into(),
                allow: true,
                actions: vec!["servicequotas:GetAWSDefaultServiceQuota".into()],
                resources: vec![format!(
                    "arn:aws:servicequotas:${{AWS::Region}}:{ACCOUNT}:ec2/L-*"
                )],
                conditions: vec![],
            });
        p
    });
    let err = call(&c, Function::QuotaCheck, json!({"run": spec}))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("AccessDeniedException"), "{err}");
    let denied = harness().door.denials_in(c.region);
    assert!(denied
        .iter()
        .any(|d| d.action == "servicequotas:GetAWSDefaultServiceQuota" && d.resource == "*"));
}

#[tokio::test]
async fn the_first_spot_launch_without_the_spot_role_permission_goes_on_demand() {
    let c = ctx().await;
    let spec = fixtures::runspec("slr-spot", &c.net, None);
    policies(&c, |p| {
        p.without(&function("launch-worker"), "SpotServiceLinkedRole")
    });
    let w = launch(&c, &spec, "slr-spot", json!({})).await.unwrap();
    assert_eq!(w.current().unwrap().market.as_str(), "on-demand", "{w:?}");
    // One Spot candidate answered, the market was skipped, no other Spot candidate tried.
    assert_eq!(
        w.current().unwrap().tried.len(),
        1,
        "{:?}",
        w.current().unwrap().tried
    );
    assert_eq!(
        w.current().unwrap().tried[0].code,
        "AuthFailure.ServiceLinkedRoleCreationNotPermitted"
    );

    // The template lets launch-worker create the role: the next run gets Spot.
    let c2 = ctx().await;
    let spec = fixtures::runspec("slr-spot-2", &c2.net, None);
    let w = launch(&c2, &spec, "slr-spot-2", json!({})).await.unwrap();
    assert_eq!(w.current().unwrap().market.as_str(), "spot", "{w:?}");
    assert!(harness()
        .door
        .has_service_linked_role(c2.region, "spot.amazonaws.com"));
}

#[tokio::test]
async fn a_retried_launch_asks_ec2_for_exactly_the_same_instance() {
    let c = ctx().await;
    let spec = fixtures::runspec("retried", &c.net, None);
    let entered = Utc::now() - Duration::seconds(30);
    let first = launch(&c, &spec, "retried", json!({"entered": entered}))
        .await
        .unwrap();
    let id = first.current().unwrap().instance_id.clone();
    // The retry does not find the instance by its tags (DescribeInstances is eventually
    // consistent), so it calls RunInstances again with the same ClientToken: EC2 answers with
    // the same instance only if every parameter, tags included, is the same.
    c.aws
        .ec2
        .delete_tags()
        .resources(&id)
        .tags(Tag::builder().key("ephemera:attempt").build())
        .send()
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let again = launch(&c, &spec, "retried", json!({"entered": entered}))
        .await
        .unwrap();
    assert_eq!(again.current().unwrap().instance_id, id);
}

#[tokio::test]
async fn an_instance_not_visible_yet_is_still_booting() {
    let c = ctx().await;
    let spec = fixtures::runspec("not-visible", &c.net, None);
    let w = launch(&c, &spec, "not-visible", json!({})).await.unwrap();
    // Right after RunInstances, DescribeInstances by id answers InvalidInstanceID.NotFound.
    let h = call(&c, Function::HealthCheck, json!({"run": spec, "worker": w}))
        .await
        .unwrap();
    assert_eq!(h["verdict"], "booting", "{h}");
    assert!(
        h["detail"].as_str().unwrap().contains("not visible yet"),
        "{h}"
    );
}

#[tokio::test]
async fn the_root_volume_is_the_images_root_device() {
    let c = ctx().await;
    let spec = fixtures::runspec("root-device", &c.net, None);
    let w = launch(&c, &spec, "root-device", json!({})).await.unwrap();
    let image = c
        .aws
        .ec2
        .describe_images()
        .image_ids(&c.net.image)
        .send()
        .await
        .unwrap();
    let root = image.images()[0].root_device_name().unwrap().to_string();
    let i = &fixtures::instance(&c.aws, &w.current().unwrap().instance_id).await;
    let devices: Vec<&str> = i
        .block_device_mappings()
        .iter()
        .filter_map(|b| b.device_name())
        .collect();
    assert!(devices.contains(&root.as_str()), "{devices:?} vs {root}");
}

#[tokio::test]
async fn an_instance_type_the_region_does_not_offer_is_named_up_front() {
    let c = ctx().await;
    harness()
        .door
        .unoffered
        .lock()
        .unwrap()
        .insert((c.region.to_string(), "c6g.4xlarge".to_string()));
    let spec = fixtures::runspec("unoffered", &c.net, None);
    let err = call(&c, Function::QuotaCheck, json!({"run": spec}))
        .await
        .unwrap_err();
    assert_eq!(err.error_type(), "Ephemera.InvalidRunSpec", "{err}");
    let msg = err.to_string();
    assert!(msg.contains("worker.instance_types[1]"), "{msg}");
    assert!(
        msg.contains(&format!(
            "'c6g.4xlarge' is not offered in region {}",
            c.region
        )),
        "{msg}"
    );
}

#[tokio::test]
async fn a_topic_the_functions_may_not_publish_to_is_refused_before_launch() {
    let c = ctx().await;
    let other = format!("arn:aws:sns:{}:{ACCOUNT}:someone-elses", c.region);
    let spec = fixtures::runspec("foreign-topic", &c.net, Some(&other));
    let err = call(&c, Function::QuotaCheck, json!({"run": spec}))
        .await
        .unwrap_err();
    assert_eq!(err.error_type(), "Ephemera.InvalidRunSpec");
    assert!(err.to_string().contains("notify.topic_arn"), "{err}");
    assert!(err.to_string().contains(&topic(c.region)), "{err}");
}

#[tokio::test]
async fn a_refused_email_or_spot_price_never_fails_the_report() {
    let c = ctx().await;
    let inbox = fixtures::inbox(c.region, "ephemera-reports").await;
    let spec = fixtures::runspec("no-mail", &c.net, None);
    let w = launch(&c, &spec, "no-mail", json!({})).await.unwrap();
    assert_eq!(w.current().unwrap().market.as_str(), "spot");
    // Publishing and Spot prices both denied to terminate-with-cost-report.
    policies(&c, |mut p| {
        let t = function("terminate-with-cost-report");
        p = p.without(&t, "SNSPublishMessagePolicy");
        p.by_principal.get_mut(&t).unwrap().push(Statement {
            sid: "NoPrices".into(),
            allow: false,
            actions: vec!["ec2:DescribeSpotPriceHistory".into()],
            resources: vec!["*".into()],
            conditions: vec![],
        });
        p
    });
    let out = call(
        &c,
        Function::TerminateWithCostReport,
        json!({"run": spec, "execution": execution(c.region, "no-mail"),
               "workers": [{"slot": 1, "worker": w}]}),
    )
    .await
    .unwrap();
    let report: CostReport = serde_json::from_value(out).unwrap();
    assert_eq!(report.outcome, ephemera_core::report::Outcome::Succeeded);
    assert_eq!(
        report.terminated,
        vec![w.current().unwrap().instance_id.clone()]
    );
    let notes = report.notes.join("\n");
    assert!(notes.contains("could not be emailed"), "{notes}");
    assert!(notes.contains("Spot price history unavailable"), "{notes}");
    assert!(
        report.attempts[0].price_source.starts_with("estimated"),
        "{:?}",
        report.attempts[0]
    );
    assert!(report.actual_usd > 0.0);
    assert!(inbox.read().await.is_empty());
}

#[tokio::test]
async fn an_artifact_the_worker_cannot_read_is_refused_before_launch() {
    let c = ctx().await;
    let mut spec = fixtures::runspec("foreign-artifact", &c.net, None);
    spec["worker"]["artifact"] = json!("s3://someone-elses-bucket/worker");
    let err = call(&c, Function::QuotaCheck, json!({"run": spec}))
        .await
        .unwrap_err();
    assert_eq!(err.error_type(), "Ephemera.InvalidRunSpec");
    let msg = err.to_string();
    assert!(msg.contains("worker.artifact"), "{msg}");
    assert!(
        msg.contains("outside the artifact bucket ephemera-artifacts"),
        "{msg}"
    );
}

#[tokio::test]
async fn a_denied_spot_quota_does_not_hold_up_what_on_demand_can_serve() {
    let c = ctx().await;
    harness().door.with_quotas(c.region, |q| {
        q.applied.insert(SPOT.into(), 8.0);
        q.next_script = vec!["DENIED".into()];
    });
    // The default market policy, spot-then-on-demand; On-Demand has its default 1,152 vCPUs.
    let spec = fixtures::runspec("spot-denied", &c.net, None);
    let first = call(&c, Function::QuotaCheck, json!({"run": spec}))
        .await
        .unwrap();
    assert_eq!(first["verdict"], "enough", "{first}");
    assert!(
        first["reason"]
            .as_str()
            .unwrap()
            .contains("spot short, so the run starts with on-demand"),
        "{first}"
    );
    // The Spot request still went in, once, for the runs after this one; its denial later
    // changes nothing for this run.
    let again = call(
        &c,
        Function::QuotaCheck,
        json!({"run": spec, "quota": first}),
    )
    .await
    .unwrap();
    assert_eq!(again["verdict"], "enough", "{again}");
    assert_eq!(
        harness().door.with_quotas(c.region, |q| q.increase_calls),
        1
    );
    // The launch takes quota-check's word: On-Demand alone, not one Spot candidate asked for
    // (each would be refused by the short quota, a RunInstances call from the account's bucket).
    assert_eq!(first["markets"], json!(["on-demand"]), "{first}");
    let w = launch(
        &c,
        &spec,
        "spot-denied",
        json!({"markets": first["markets"], "prices": first["prices"]}),
    )
    .await
    .unwrap();
    let a = w.current().unwrap();
    assert_eq!(a.market.as_str(), "on-demand", "{w:?}");
    assert!(a.tried.is_empty(), "{:?}", a.tried);
}

#[tokio::test]
async fn spot_takes_an_instance_back_after_its_notice() {
    let c = ctx().await;
    let spec = fixtures::runspec("reclaim", &c.net, None);
    let w = launch(&c, &spec, "reclaim", json!({})).await.unwrap();
    let id = w.current().unwrap().instance_id.clone();
    harness()
        .door
        .reclaim_spot(c.region, &id, std::time::Duration::from_millis(300));
    assert!(harness().door.spot_notice(c.region, &id).is_some());
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    let i = &fixtures::instance(&c.aws, &id).await;
    assert_eq!(
        i.state().and_then(|s| s.name()).map(|n| n.as_str()),
        Some("terminated")
    );
    assert_eq!(
        i.state_reason().and_then(|r| r.code()),
        Some("Server.SpotInstanceTermination")
    );
}

#[tokio::test]
async fn the_scheduler_may_start_only_the_stacks_state_machine() {
    let c = ctx().await;
    let machine = ephemera_tests::e2e::create_state_machine(c.region).await;
    let other = c
        .aws
        .sfn
        .create_state_machine()
        .name("someone-elses")
        .definition(r#"{"StartAt":"P","States":{"P":{"Type":"Pass","End":true}}}"#)
        .role_arn(format!("arn:aws:iam::{ACCOUNT}:role/x"))
        .send()
        .await
        .unwrap()
        .state_machine_arn()
        .to_string();
    let scheduler = aws_sdk_sfn::Client::new(&ephemera_tests::principal_config(
        c.region,
        &Principal::Scheduler,
    ));
    let spec = fixtures::runspec("scheduled", &c.net, None);
    let input = json!({"schedule": {"execution": "x1"}, "runspec": spec}).to_string();
    let started = scheduler
        .start_execution()
        .state_machine_arn(&machine)
        .name("scheduled-x1")
        .input(&input)
        .send()
        .await;
    assert!(started.is_ok(), "{started:?}");
    let refused = scheduler
        .start_execution()
        .state_machine_arn(&other)
        .name("scheduled-x2")
        .send()
        .await
        .unwrap_err();
    assert_eq!(
        aws_sdk_sfn::error::ProvideErrorMetadata::code(&refused),
        Some("AccessDeniedException")
    );
    // Stop the started run: its worker will never come.
    let arn = started.unwrap().execution_arn().to_string();
    let _ = c.aws.sfn.stop_execution().execution_arn(arn).send().await;
}
