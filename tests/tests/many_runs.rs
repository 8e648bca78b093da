//! Two hundred runs at once in one account, one worker each, through the front door with AWS's
//! limits on (a new account's Lambda concurrency of 10, Parameter Store's 40 transactions a
//! second, EC2's request buckets, the Price List's, and the vCPU quotas at launch): the deployed
//! ASL, the real handlers, a worker stand-in on every instance. The quotas have room for a tenth
//! of the runs at once, so nine in ten wait for the room the others reserved (issue 32, part 4).
//! Each run must end SUCCEEDED with its own email, its own instance terminated and billed, and
//! nothing of another run's touched; no quota is ever passed. Minutes long, so it runs under
//! `make scale` (EPHEMERA_SCALE_RUNS runs, 200 by default), not `make test`.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_sfn::types::ExecutionStatus;
use ephemera_tests::e2e;
use ephemera_tests::worker_standin::{self, Behaviour};
use ephemera_tests::{clients, fixtures, fresh_region, harness, sdk_config};
use serde_json::{json, Value};

const SPOT: &str = "L-34B43A08";
const ON_DEMAND: &str = "L-1216C47A";

#[tokio::test]
#[ignore = "minutes long: make scale"]
async fn two_hundred_runs_at_once_each_end_with_their_own_report_and_nothing_left() {
    let n: usize = std::env::var("EPHEMERA_SCALE_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let timeout = Duration::from_secs(60 * 30);
    let region = fresh_region();
    let aws = clients(region);
    let net = fixtures::network(&aws).await;
    let inbox = fixtures::inbox(region, "ephemera-reports").await;
    // Room for a tenth of the runs at once: each reserves its 16 vCPUs of Spot and of
    // On-Demand (its fallback), so the others wait for the room to come back, by rounds.
    let at_once = n.div_ceil(10).max(1);
    let room = 16.0 * at_once as f64;
    harness().door.with_quotas(region, |q| {
        q.applied.insert(SPOT.into(), room);
        q.applied.insert(ON_DEMAND.into(), room);
    });
    let machine = e2e::create_state_machine(region).await;
    let ids: Vec<String> = (0..n).map(|i| format!("many-{i:03}")).collect();
    let specs: Vec<Value> = ids
        .iter()
        .map(|id| {
            let mut spec = fixtures::runspec(id, &net, Some(&inbox.topic_arn));
            spec["expect"] = json!({"partitions": 2, "min_rows": 100});
            // Up to the default boot poll (20 s) with a tenth of the runs at once: twenty runs
            // polling every second would ask DescribeInstances ten times what EC2's bucket
            // refills. The waiting runs poll their quota every few seconds up to a tenth of the
            // runs' count, so that 180 of them never ask quota-check more than the account's
            // Lambda concurrency serves; ten rounds fit in the wait.
            spec["waits"]["boot_poll_seconds"] = json!(at_once.clamp(2, 20));
            spec["waits"]["quota_poll_min_seconds"] = json!(2);
            spec["waits"]["quota_poll_max_seconds"] = json!(at_once.clamp(5, 20));
            spec["quota"]["max_wait_seconds"] = json!(3600);
            spec
        })
        .collect();
    let worker = worker_standin::spawn_for(
        region,
        &ids,
        Arc::new(|run: &str| Behaviour::Succeed(e2e::report_for(run, 2))),
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
    let mut statuses: Vec<String>;
    loop {
        tokio::time::sleep(Duration::from_secs(5)).await;
        statuses = futures_util::future::join_all(executions.iter().map(|e| {
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
        .await
        .into_iter()
        .map(|s| s.as_str().to_string())
        .collect();
        let running = statuses.iter().filter(|s| *s == "RUNNING").count();
        if running == 0 || began.elapsed() > timeout {
            break;
        }
    }
    let took = began.elapsed();
    let worker_log = worker.log().await;

    let mut emails = vec![];
    loop {
        let got = inbox.read().await;
        if got.is_empty() {
            break;
        }
        emails.extend(got);
    }
    let refused = harness().door.throttles.refused_in(region);
    let door = &harness().door;
    let (spot_peak, od_peak) = (
        door.vcpu_limits.peak(region, SPOT),
        door.vcpu_limits.peak(region, ON_DEMAND),
    );
    eprintln!(
        "{n} runs at once, with vCPU room for {at_once} at a time ({room} Spot, {room} On-Demand): all ended in {:.0} s; most vCPUs running at once: {spot_peak} Spot, {od_peak} On-Demand; refused by the account's limits: {refused:?}",
        took.as_secs_f64()
    );

    let mut failed = vec![];
    for ((id, execution), status) in ids.iter().zip(&executions).zip(&statuses) {
        if status != "SUCCEEDED" {
            let f = e2e::wait(region, execution, Duration::from_secs(1)).await;
            failed.push(format!("{id}: {status} {:?} {:?}", f.error, f.cause));
        }
    }
    assert!(failed.is_empty(), "{} of {n}: {failed:#?}", failed.len());

    // One email a run, each naming its own run and carrying its own report.
    let mut mailed = BTreeSet::new();
    for e in &emails {
        let json_part = e.body.split("--- report (JSON) ---\n").nth(1).unwrap();
        let report: Value = serde_json::from_str(json_part).unwrap();
        let run = report["run_id"].as_str().unwrap().to_string();
        assert!(e.subject.contains(&run), "{} vs {run}", e.subject);
        assert!(e.subject.contains(": SUCCEEDED $"), "{run}: {}", e.subject);
        assert!(mailed.insert(run.clone()), "{run} mailed twice");
        // Every instance the report bills is the run's own, and was terminated.
        for a in report["attempts"].as_array().unwrap() {
            let id = a["instance_id"].as_str().unwrap();
            let own = fixtures::instances_of(&aws, &run).await;
            assert!(own.iter().any(|(i, _)| i == id), "{run} billed {id}");
        }
    }
    assert_eq!(mailed.len(), n, "emails for every run");
    for id in &ids {
        let own = fixtures::instances_of(&aws, id).await;
        assert_eq!(own.len(), 1, "{id}: {own:?}");
        assert!(own.iter().all(|(_, s)| s == "terminated"), "{id}: {own:?}");
    }
    let served = worker_log
        .iter()
        .filter(|l| l.ends_with(": succeeded"))
        .count();
    assert_eq!(served, n, "every worker reported once");
    // No launch was refused for a quota, none passed one, and every run gave its room back.
    let quota_refusals = door.vcpu_limits.refusals_in(region);
    assert!(quota_refusals.is_empty(), "{quota_refusals:?}");
    assert!(
        f64::from(spot_peak) <= room,
        "{spot_peak} Spot vCPUs at once"
    );
    assert!(
        f64::from(od_peak) <= room,
        "{od_peak} On-Demand vCPUs at once"
    );
    let ledger = ephemera_functions::aws::LedgerTable {
        client: aws.dynamodb.clone(),
        table: ephemera_tests::iam::LEDGER_TABLE.into(),
    };
    let held = ephemera_functions::aws::VcpuReservations::held(&ledger, region, &[SPOT, ON_DEMAND])
        .await
        .unwrap();
    assert!(held.values().all(|h| h.total() == 0), "{held:?}");
}
