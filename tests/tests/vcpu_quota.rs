//! The vCPU quotas that runs started together share (issue 32, parts 4, 5 and 8), through the
//! front door, which plays EC2's refusal at launch (`VcpuLimitExceeded`,
//! `MaxSpotInstanceCountExceeded`, counted over the running and pending instances of each
//! quota's families: `ephemera_tests::vcpu_limits`) and records the vCPUs running in each quota
//! at every launch. The deployed ASL, the real handlers, a worker stand-in on every instance.

use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_sfn::types::ExecutionStatus;
use ephemera_core::State;
use ephemera_functions::aws::{LedgerTable, VcpuReservations};
use ephemera_tests::e2e::{self, report_for, Run};
use ephemera_tests::worker_standin::{self, Behaviour};
use ephemera_tests::{clients, fixtures, fresh_region, harness, iam, sdk_config, FaultRule};
use serde_json::{json, Value};

const SPOT: &str = "L-34B43A08";
const ON_DEMAND: &str = "L-1216C47A";

/// What the stack's runs hold in `codes` of `region`, read from the ledger table.
async fn held(region: &str, codes: &[&str]) -> Vec<(String, u32)> {
    let aws = clients(region);
    let ledger = LedgerTable {
        client: aws.dynamodb.clone(),
        table: iam::LEDGER_TABLE.into(),
    };
    ledger
        .held(region, codes)
        .await
        .expect("the reservations")
        .into_values()
        .map(|h| (h.code.clone(), h.total()))
        .collect()
}

/// Twenty runs started at the same moment, one 16-vCPU worker each, in quotas with room for four
/// at a time (64 vCPUs of Spot, 64 of On-Demand: a spot-then-on-demand run reserves both). Before
/// the reservations every run read the same free room and launched into it; now each is admitted
/// beside the others' reservations, waits (never refused, never failed) while they hold it, and
/// gives its room back when its report is made. EC2's quota is never passed: the front door
/// counts the vCPUs running in each quota at every launch, and refuses none.
#[tokio::test]
async fn twenty_runs_started_at_once_share_room_for_four() {
    const RUNS: usize = 20;
    let timeout = Duration::from_secs(900);
    let region = fresh_region();
    let aws = clients(region);
    let net = fixtures::network(&aws).await;
    let inbox = fixtures::inbox(region, "ephemera-reports").await;
    harness().door.with_quotas(region, |q| {
        q.applied.insert(SPOT.into(), 64.0);
        q.applied.insert(ON_DEMAND.into(), 64.0);
    });
    let machine = e2e::create_state_machine(region).await;
    let ids: Vec<String> = (0..RUNS).map(|i| format!("shared-{i:02}")).collect();
    let specs: Vec<Value> = ids
        .iter()
        .map(|id| {
            let mut spec = fixtures::runspec(id, &net, Some(&inbox.topic_arn));
            spec["expect"] = json!({"partitions": 2, "min_rows": 100});
            // Long enough for the last of five rounds.
            spec["quota"]["max_wait_seconds"] = json!(1200);
            spec["waits"]["boot_poll_seconds"] = json!(2);
            spec
        })
        .collect();
    // Each worker holds its instance a few seconds, so that the runs overlap.
    let worker = worker_standin::spawn_for(
        region,
        &ids,
        Arc::new(|run: &str| Behaviour::SucceedAfter(3, report_for(run, 2))),
        timeout,
    );
    let began = Instant::now();
    let executions: Vec<String> =
        futures_util::future::join_all(ids.iter().zip(&specs).map(|(id, spec)| {
            let machine = machine.clone();
            async move { e2e::start(region, &machine, &format!("{id}-1"), spec).await }
        }))
        .await;
    let sfn = aws_sdk_sfn::Client::new(&sdk_config(region));
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let statuses = futures_util::future::join_all(executions.iter().map(|e| {
            let sfn = sfn.clone();
            async move {
                sfn.describe_execution()
                    .execution_arn(e)
                    .send()
                    .await
                    .map(|d| d.status().clone())
                    .unwrap_or(ExecutionStatus::Running)
            }
        }))
        .await;
        if statuses.iter().all(|s| *s != ExecutionStatus::Running) || began.elapsed() > timeout {
            break;
        }
    }
    let took = began.elapsed();
    let log = worker.log().await;

    let door = &harness().door;
    let (spot_peak, od_peak) = (
        door.vcpu_limits.peak(region, SPOT),
        door.vcpu_limits.peak(region, ON_DEMAND),
    );
    eprintln!(
        "{RUNS} runs sharing 64 + 64 vCPUs: all ended in {:.0} s; most vCPUs running at once: {spot_peak} Spot, {od_peak} On-Demand",
        took.as_secs_f64()
    );
    let mut waited = 0;
    for (id, e) in ids.iter().zip(&executions) {
        let f = e2e::wait(region, e, Duration::from_secs(1)).await;
        assert_eq!(f.status, "SUCCEEDED", "{id}: {:?} {:?}", f.error, f.cause);
        assert_eq!(f.visited(State::WorkerLost), 0, "{id}: {:?}", f.path);
        assert_eq!(
            f.visited(State::LaunchQuotaRefused),
            0,
            "{id}: {:?}",
            f.path
        );
        if f.visited(State::WaitQuota) > 0 {
            waited += 1;
        }
        let attempts = f.report["attempts"].as_array().unwrap();
        assert_eq!(attempts.len(), 1, "{id}: {attempts:?}");
    }
    // Four at a time: at least sixteen runs waited for the others' room.
    assert!(waited >= RUNS - 4, "only {waited} runs waited");
    // No launch was refused for a quota, and none passed one.
    let refused = door.vcpu_limits.refusals_in(region);
    assert!(refused.is_empty(), "{refused:?}");
    assert!(spot_peak <= 64, "{spot_peak} Spot vCPUs at once");
    assert!(od_peak <= 64, "{od_peak} On-Demand vCPUs at once");
    assert!(spot_peak >= 32, "the runs overlapped: {spot_peak}");
    assert_eq!(
        door.vcpu_limits.launches_in(region).len(),
        RUNS,
        "one launch a run"
    );
    // Nobody asked for more: the room was there, held by the stack's own runs.
    assert_eq!(door.with_quotas(region, |q| q.increase_calls), 0);
    // Every run gave its room back with its report.
    assert_eq!(
        held(region, &[SPOT, ON_DEMAND]).await,
        vec![(ON_DEMAND.to_string(), 0), (SPOT.to_string(), 0)]
    );
    let served = log.iter().filter(|l| l.ends_with(": succeeded")).count();
    assert_eq!(served, RUNS, "every worker reported once");
}

/// Only the Spot quota has room (On-Demand, the fallback of spot-then-on-demand, has 8 vCPUs of
/// the 16 a worker may need), and Spot is short of capacity. Before, the run started on Spot
/// alone and lost its worker to the shortage; now it waits for On-Demand room, requests it
/// (`quota.request_increase`), reserves both, and its worker, refused by Spot, launches
/// On-Demand.
#[tokio::test]
async fn only_spot_has_room_and_spot_is_short_the_run_waits_for_on_demand_and_succeeds() {
    let region = fresh_region();
    harness().door.with_quotas(region, |q| {
        q.applied.insert(SPOT.into(), 64.0);
        q.applied.insert(ON_DEMAND.into(), 8.0);
        q.next_script = vec!["CASE_OPENED".into(), "APPROVED".into()];
    });
    harness().door.add_fault(
        FaultRule::always(region, "RunInstances", "InsufficientInstanceCapacity", 500)
            .when("InstanceMarketOptions.MarketType", "spot"),
    );
    let r: Run = e2e::scenario(
        region,
        "fallback-room",
        Behaviour::Succeed(report_for("fallback-room", 2)),
        |_| {},
    )
    .await;
    assert_eq!(r.finished.status, "SUCCEEDED", "{:?}", r.finished.error);
    assert!(
        r.finished.visited(State::WaitQuota) >= 1,
        "{:?}",
        r.finished.path
    );
    assert_eq!(r.finished.visited(State::WorkerLost), 0);
    // The fallback's increase, and only it, was requested and waited for.
    let requests = harness().door.with_quotas(region, |q| {
        q.requests
            .iter()
            .map(|r| (r.code.clone(), r.desired))
            .collect::<Vec<_>>()
    });
    assert_eq!(requests, vec![(ON_DEMAND.to_string(), 16.0)]);
    let quota = &r.finished.document["quota"];
    assert_eq!(quota["markets"], json!(["spot", "on-demand"]), "{quota}");
    assert!(
        quota["reason"]
            .as_str()
            .unwrap()
            .contains("reserved 16 L-34B43A08, 16 L-1216C47A"),
        "{quota}"
    );
    let attempts = r.finished.report["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 1, "{attempts:?}");
    assert_eq!(attempts[0]["market"], "on-demand");
    assert!(harness().door.vcpu_limits.refusals_in(region).is_empty());
    r.assert_nothing_left();
    r.assert_email("SUCCEEDED");
    assert_eq!(
        held(region, &[SPOT, ON_DEMAND]).await,
        vec![(ON_DEMAND.to_string(), 0), (SPOT.to_string(), 0)]
    );
}

/// The room quota-check reserved is taken by an instance outside the stack before the worker
/// launches (another tool's, which no reservation knows): EC2 refuses the launch with
/// `VcpuLimitExceeded`. That is a quota verdict, not a lost worker: the worker waits with the
/// run's quota backoff and launches once the other instance is gone.
#[tokio::test]
async fn a_launch_refused_for_quota_waits_and_launches_once_room_returns() {
    let region = fresh_region();
    let aws = clients(region);
    let net = fixtures::network(&aws).await;
    let inbox = fixtures::inbox(region, "ephemera-reports").await;
    let door = &harness().door;
    door.with_quotas(region, |q| {
        q.applied.insert(ON_DEMAND.into(), 16.0);
    });
    // Right after quota-check reserves the run's 16 vCPUs, someone else launches 16.
    door.launch_outside_after(region, "quota-check", &net.image, "c7g.4xlarge", |out| {
        out["verdict"] == "enough"
    });
    let run_id = "outside-took-it";
    let mut spec = fixtures::runspec(run_id, &net, Some(&inbox.topic_arn));
    spec["expect"] = json!({"partitions": 2, "min_rows": 100});
    spec["worker"]["market"] = json!("on-demand");
    spec["waits"]["quota_poll_max_seconds"] = json!(8);
    let timeout = Duration::from_secs(240);
    let machine = e2e::create_state_machine(region).await;
    let worker = worker_standin::spawn(
        region,
        run_id,
        Behaviour::Succeed(report_for(run_id, 2)),
        timeout,
    );
    let execution = e2e::start(region, &machine, &format!("{run_id}-1"), &spec).await;
    // The worker's launch is refused; then the other instance goes.
    let refusal =
        ephemera_tests::eventually("a launch refused", Duration::from_secs(120), || async {
            door.vcpu_limits.refusals_in(region).into_iter().next()
        })
        .await;
    assert_eq!(refusal.code, ON_DEMAND);
    assert_eq!(
        (refusal.in_use, refusal.asked, refusal.applied),
        (16, 16, 16.0)
    );
    let outside = door.outside_instances(region);
    assert_eq!(outside.len(), 1);
    aws.ec2
        .terminate_instances()
        .set_instance_ids(Some(outside))
        .send()
        .await
        .expect("TerminateInstances");
    let finished = e2e::wait(region, &execution, timeout).await;
    let log = worker.log().await;
    eprintln!("{run_id}: {:?} worker {log:?}", finished.path);
    assert_eq!(
        finished.status, "SUCCEEDED",
        "{:?} {:?}",
        finished.error, finished.cause
    );
    let waits = finished.visited(State::LaunchQuotaRefused);
    assert!(waits >= 1, "{:?}", finished.path);
    assert_eq!(finished.visited(State::ReadLaunchQuotaWait), waits);
    assert_eq!(finished.visited(State::WaitLaunchQuota), waits);
    assert_eq!(finished.visited(State::LaunchWorker), waits + 1);
    assert_eq!(
        finished.visited(State::ReleaseWorker),
        0,
        "{:?}",
        finished.path
    );
    assert_eq!(finished.visited(State::WorkerLost), 0);
    let attempts = finished.report["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 1, "one attempt, launched after the wait");
    assert_eq!(attempts[0]["market"], "on-demand");
    // Never more than the quota at once, the other instance included.
    assert!(door.vcpu_limits.peak(region, ON_DEMAND) <= 16);
    let live: Vec<(String, String)> = fixtures::instances_of(&aws, run_id)
        .await
        .into_iter()
        .filter(|(_, s)| s == "pending" || s == "running")
        .collect();
    assert!(live.is_empty(), "{live:?}");
    assert_eq!(
        held(region, &[ON_DEMAND]).await,
        vec![(ON_DEMAND.to_string(), 0)]
    );
}
