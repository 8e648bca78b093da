//! `ephemera plan` against the emulator (moto behind the front door, which plays
//! GetSpotPlacementScores and the Spot price history): the example RunSpec planned to start,
//! to wait and to be refused, in text and JSON with the verdict's exit code; a placement score
//! EC2 refuses (its rate, its day's configurations) shown as unknown, never a failed plan; and
//! the plan held to the run: its first candidate is where the deployed state machine launches,
//! and its quota verdict and increase are CheckQuota's.

use ephemera_core::catalog;
use ephemera_core::Market;
use ephemera_tests::cli::{text, write_spec};
use ephemera_tests::worker_standin::Behaviour;
use ephemera_tests::{clients, e2e, fixtures, fresh_region, harness};
use serde_json::{json, Value};

/// The binary as a person runs it, in `region` of the emulator, as its administrator.
fn ephemera(region: &str) -> tokio::process::Command {
    ephemera_tests::cli::command(env!("CARGO_BIN_EXE_ephemera"), region)
}

/// The example RunSpec (events/runspec.json) on this region's network.
fn example(net: &fixtures::Network) -> Value {
    let path = format!("{}/../events/runspec.json", env!("CARGO_MANIFEST_DIR"));
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    v["worker"]["subnets"] = json!(net.subnets);
    v["worker"]["security_groups"] = json!([net.security_group]);
    v["worker"]["image"] = json!(net.image);
    v
}

/// `ephemera plan` in text and in JSON: (exit code, text, JSON).
async fn plan(region: &str, name: &str, spec: &Value, extra: &[&str]) -> (i32, String, Value) {
    let path = write_spec(name, spec);
    let out = ephemera(region)
        .arg("plan")
        .arg(&path)
        .args(extra)
        .output()
        .await
        .unwrap();
    let (stdout, stderr) = text(&out);
    eprintln!("{stdout}{stderr}");
    let json_out = ephemera(region)
        .arg("plan")
        .arg(&path)
        .arg("--json")
        .args(extra)
        .output()
        .await
        .unwrap();
    let (json_text, json_err) = text(&json_out);
    let v: Value = serde_json::from_str(&json_text)
        .unwrap_or_else(|e| panic!("--json is JSON ({e}): {json_text}{json_err}"));
    assert_eq!(
        out.status.code(),
        json_out.status.code(),
        "text and JSON end alike"
    );
    (out.status.code().unwrap_or(-1), stdout, v)
}

fn quota_code(t: &str, m: Market) -> String {
    catalog::quota_code(catalog::quota_class(t).unwrap(), m)
        .unwrap()
        .to_string()
}

/// The zone id of each subnet, as DescribeSubnets says.
async fn zone_ids(region: &str, subnets: &[String]) -> Vec<String> {
    let aws = clients(region);
    let mut out = vec![];
    for s in subnets {
        let d = aws
            .ec2
            .describe_subnets()
            .subnet_ids(s)
            .send()
            .await
            .unwrap();
        out.push(d.subnets()[0].availability_zone_id().unwrap().to_string());
    }
    out
}

#[tokio::test]
async fn the_example_plans_to_start_to_wait_and_to_be_refused() {
    let region = fresh_region();
    let aws = clients(region);
    let net = fixtures::network(&aws).await;
    let door = &harness().door;
    let zones = zone_ids(region, &net.subnets).await;
    door.spot_placements
        .set_score(region, &zones[0], "c7g.4xlarge", 8, None);
    door.spot_placements
        .set_score(region, &zones[1], "c7g.4xlarge", 3, None);

    // Start: the quotas (a fresh account's defaults) have room; the budget covers the run.
    let mut spec = example(&net);
    spec["limits"]["budget_usd"] = json!(20.0);
    let (code, out, v) = plan(region, "start", &spec, &[]).await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(v["verdict"], "start");
    assert!(
        out.starts_with("plan for run 'fx-features-2023-04' in "),
        "{out}"
    );
    assert!(out.contains(": would start now"), "{out}");
    let first = v["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["order"] == 1)
        .unwrap();
    assert_eq!(first["market"], "spot");
    assert_eq!(first["instance_type"], "c7g.4xlarge");
    assert_eq!(first["subnet"], json!(net.subnets[0]));
    assert_eq!(first["score"], 8);
    // The Spot price now and its range over 7 days (the door's history: a change halfway, up).
    let spot = &first["spot"];
    assert!(
        spot["min_usd_per_hour"].as_f64().unwrap() < spot["max_usd_per_hour"].as_f64().unwrap()
    );
    assert!(
        first["on_demand_usd_per_hour"].as_f64().unwrap()
            > spot["max_usd_per_hour"].as_f64().unwrap()
    );
    assert!(out.contains("  1. spot c7g.4xlarge"), "{out}");
    assert!(out.contains("score 8"), "{out}");
    // The example ranks by price and capacity: second the cheaper c6g.4xlarge in the first
    // zone (scored 5, the door's unset score), and c7g.4xlarge where it scores 3 after both
    // c6g.4xlarge candidates.
    let at = |t: &str, s: &str| {
        v["candidates"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["market"] == "spot" && c["instance_type"] == t && c["subnet"] == s)
            .unwrap()
            .clone()
    };
    let c6g: Vec<u64> = net
        .subnets
        .iter()
        .map(|s| at("c6g.4xlarge", s)["order"].as_u64().unwrap())
        .collect();
    assert!(c6g.contains(&2) && c6g.contains(&3), "{c6g:?}");
    assert_eq!(at("c6g.4xlarge", &net.subnets[0])["score"], 5);
    let low = at("c7g.4xlarge", &net.subnets[1]);
    assert_eq!(low["score"], 3);
    // Dearer than m7g.4xlarge (scored 5) once its score weighs: the last Spot candidate.
    assert_eq!(low["order"], 6);
    assert!(
        v["order_rule"]
            .as_str()
            .unwrap()
            .starts_with("price-capacity"),
        "{v}"
    );
    // 3 types × 2 subnets × 2 markets, each with its place.
    assert_eq!(v["candidates"].as_array().unwrap().len(), 12);
    assert!(
        v["cost"]["expected_usd"].as_f64().unwrap() < v["cost"]["worst_case_usd"].as_f64().unwrap()
    );
    assert!(
        v["bounds"]["history_events"].as_u64().unwrap()
            <= v["bounds"]["max_history_events"].as_u64().unwrap()
    );
    // The run document's bound, against Step Functions' 256 KiB a state's input or output.
    let document = v["bounds"]["document_bytes"].as_u64().unwrap();
    assert_eq!(v["bounds"]["document_limit_bytes"], 256 * 1024);
    assert!(document > 0 && document <= 256 * 1024, "{document}");
    assert!(
        out.contains(&format!("{document} of 262144 bytes of run document")),
        "{out}"
    );
    assert!(out.contains("cost: expected $"), "{out}");

    // Wait: the On-Demand quota (the fallback) is short; an increase would be requested, and
    // planning requests nothing.
    let od = quota_code("c7g.4xlarge", Market::OnDemand);
    door.with_quotas(region, |q| {
        q.applied.insert(od.clone(), 8.0);
    });
    let (code, out, v) = plan(region, "wait", &spec, &[]).await;
    assert_eq!(code, 3, "{out}");
    assert_eq!(v["verdict"], "wait");
    assert!(out.contains(": would wait for quota"), "{out}");
    let line = v["quotas"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["code"] == json!(od))
        .unwrap();
    assert_eq!(line["fits"], false);
    assert_eq!(line["needed_vcpus"], 16);
    assert_eq!(line["would_request"], 16.0);
    assert!(
        v["waiting_for"]
            .as_str()
            .unwrap()
            .contains("an increase to 16 would be requested"),
        "{v}"
    );
    assert!(out.contains("would request an increase to 16"), "{out}");
    assert_eq!(
        door.with_quotas(region, |q| q.increase_calls),
        0,
        "nothing requested"
    );

    // Refused: no increase may be asked for and the cap covers no attempt; both named.
    spec["quota"]["request_increase"] = json!(false);
    spec["limits"]["budget_usd"] = json!(0.05);
    let (code, out, v) = plan(region, "refuse", &spec, &[]).await;
    assert_eq!(code, 4, "{out}");
    assert_eq!(v["verdict"], "refuse");
    assert!(out.contains(": would be refused"), "{out}");
    let problems = v["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(
        out.contains("refused: limits.budget_usd: $0.05 cannot cover"),
        "{out}"
    );
    assert!(out.contains("quota.request_increase is false"), "{out}");

    // An invalid RunSpec is refused with every field named, in JSON too.
    spec["limits"]["budget_usd"] = json!(-1);
    spec["worker"]["subnets"] = json!([]);
    let (code, out, v) = plan(region, "invalid", &spec, &[]).await;
    assert_eq!(code, 4, "{out}");
    let all = v["problems"].to_string();
    assert!(
        all.contains("limits.budget_usd") && all.contains("worker.subnets"),
        "{all}"
    );
    assert_eq!(door.with_quotas(region, |q| q.increase_calls), 0);
    // Nothing launched by any plan.
    assert!(fixtures::instances_of(&aws, "fx-features-2023-04")
        .await
        .is_empty());
}

#[tokio::test]
async fn a_placement_score_ec2_refuses_is_unknown_and_the_plan_goes_on() {
    // The day's configurations used up: MaxConfigLimitExceeded.
    let region = fresh_region();
    let aws = clients(region);
    let net = fixtures::network(&aws).await;
    let door = &harness().door;
    door.spot_placements.set_configuration_limit(region, 1);
    let mut spec = example(&net);
    spec["limits"]["budget_usd"] = json!(20.0);
    let (code, out, v) = plan(region, "config-limit", &spec, &[]).await;
    assert_eq!(code, 0, "{out}");
    let spot: Vec<&Value> = v["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["market"] == "spot")
        .collect();
    // The first type's configuration was new and scored; the others were refused.
    let c7g = spot
        .iter()
        .find(|c| c["instance_type"] == "c7g.4xlarge")
        .unwrap();
    assert!(c7g["score"].is_number(), "{c7g}");
    let m7g = spot
        .iter()
        .find(|c| c["instance_type"] == "m7g.4xlarge")
        .unwrap();
    assert!(m7g["score"].is_null());
    assert!(
        m7g["score_note"]
            .as_str()
            .unwrap()
            .contains("score unknown: MaxConfigLimitExceeded"),
        "{m7g}"
    );
    assert!(
        out.contains("score unknown: MaxConfigLimitExceeded"),
        "{out}"
    );
    let (_, refused) = door.spot_placements.answered_in(region);
    assert!(refused.iter().all(|c| c == "MaxConfigLimitExceeded") && !refused.is_empty());

    // Its own rate: no token at all, RequestLimitExceeded (the SDK's retries included).
    let region = fresh_region();
    let aws = clients(region);
    let net = fixtures::network(&aws).await;
    door.spot_placements.set_rate(region, 0.0, 0.0);
    let mut spec = example(&net);
    spec["limits"]["budget_usd"] = json!(20.0);
    let (code, out, v) = plan(region, "rate", &spec, &[]).await;
    assert_eq!(code, 0, "{out}");
    for c in v["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["market"] == "spot")
    {
        assert!(c["score"].is_null());
        assert!(
            c["score_note"]
                .as_str()
                .unwrap()
                .contains("RequestLimitExceeded"),
            "{c}"
        );
    }
    let (served, refused) = door.spot_placements.answered_in(region);
    assert_eq!(served, 0);
    assert!(refused.iter().all(|c| c == "RequestLimitExceeded") && !refused.is_empty());
}

#[tokio::test]
async fn the_plan_and_the_run_agree() {
    // Spot short and On-Demand with room: CheckQuota starts the run On-Demand and asks for the
    // Spot increase; the plan must say both, and name the candidate the launch takes.
    let region = fresh_region();
    let aws = clients(region);
    let net = fixtures::network(&aws).await;
    let door = &harness().door;
    let spot_code = quota_code("c7g.4xlarge", Market::Spot);
    door.with_quotas(region, |q| {
        q.applied.insert(spot_code.clone(), 8.0);
        // Requests stay open while the run goes on.
        q.next_script = vec!["CASE_OPENED".into()];
    });
    let run_id = "plan-agrees";
    // The RunSpec e2e::scenario starts (its topic aside, which the plan does not read).
    let mut spec = fixtures::runspec(run_id, &net, None);
    spec["expect"] = json!({"partitions": 2, "min_rows": 100});
    let (code, out, planned) = plan(region, "agrees", &spec, &[]).await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(planned["markets"], json!(["on-demand"]));
    let first = planned["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["order"] == 1)
        .unwrap()
        .clone();
    let spot_line = planned["quotas"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["code"] == json!(spot_code))
        .unwrap()
        .clone();
    assert_eq!(spot_line["fits"], false);

    let run = e2e::scenario(
        region,
        run_id,
        Behaviour::Succeed(json!({"run_id": run_id, "partitions_done": 2,
            "partitions_failed": 0, "rows_in": 1000, "rows_out": 1000,
            "durations": {"total_seconds": 1.5}})),
        |_| {},
    )
    .await;
    assert_eq!(run.finished.status, "SUCCEEDED", "{:?}", run.finished.cause);
    // CheckQuota's verdict and markets are the plan's.
    let quota = &run.finished.document["quota"];
    assert_eq!(quota["verdict"], "enough");
    assert_eq!(quota["markets"], planned["markets"]);
    // The increase CheckQuota filed is the one the plan said it would.
    let filed: Vec<f64> = door.with_quotas(region, |q| {
        q.requests
            .iter()
            .filter(|r| r.code == spot_code)
            .map(|r| r.desired)
            .collect()
    });
    assert_eq!(filed, vec![spot_line["would_request"].as_f64().unwrap()]);
    // The run launched where the plan said it would first.
    assert_eq!(run.instances.len(), 1, "{:?}", run.instances);
    let i = fixtures::instance(&aws, &run.instances[0].0).await;
    assert_eq!(
        i.instance_type().unwrap().as_str(),
        first["instance_type"].as_str().unwrap()
    );
    assert_eq!(i.subnet_id().unwrap(), first["subnet"].as_str().unwrap());
    let market = match i.instance_lifecycle().map(|l| l.as_str()) {
        Some("spot") => "spot",
        _ => "on-demand",
    };
    assert_eq!(market, first["market"].as_str().unwrap());

    // The month, from the ledger the run settled in: what it spent, and whether the same run
    // again would fit what the stack's monthly budget leaves (LaunchWorker's guard).
    let table = ephemera_tests::iam::LEDGER_TABLE;
    let (code, out, again) = plan(
        region,
        "month",
        &spec,
        &["--ledger", table, "--budget", "1000"],
    )
    .await;
    assert_eq!(code, 0, "{out}");
    let month = &again["cost"]["month"];
    let spent = month["spent_usd"].as_f64().unwrap();
    assert!(spent > 0.0, "{month}");
    assert_eq!(month["fits"], true);
    assert_eq!(
        month["month"],
        json!(ephemera_core::ledger::month_of(chrono::Utc::now()))
    );
    assert!(out.contains("the run fits"), "{out}");
    // The open Spot increase is followed, not asked again.
    let spot_again = again["quotas"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["code"] == json!(spot_code))
        .unwrap()
        .clone();
    assert!(spot_again["would_request"].is_null(), "{spot_again}");
    let filed_id = door.with_quotas(region, |q| {
        q.requests
            .iter()
            .find(|r| r.code == spot_code)
            .map(|r| r.id.clone())
    });
    assert_eq!(spot_again["request"]["id"], json!(filed_id.unwrap()));
    let budget = format!("{:.2}", spent + 0.5);
    let (code, out, over) = plan(
        region,
        "month-over",
        &spec,
        &["--ledger", table, "--budget", &budget],
    )
    .await;
    assert_eq!(code, 4, "{out}");
    assert_eq!(over["problems"].as_array().unwrap().len(), 1, "{over}");
    assert!(out.contains("refused: the month's budget: "), "{out}");
}

#[tokio::test]
async fn price_capacity_ranks_a_dearer_or_low_scoring_first_choice_lower_and_the_run_launches_where_the_plan_said(
) {
    // The user lists c7g.4xlarge first, then c6g.4xlarge (16 vCPUs each; c6g is the cheaper by
    // the hour, On-Demand and so Spot). c7g.4xlarge scores 4 in both zones, c6g.4xlarge 9 in the
    // second subnet's zone and 1 in the first's: price-capacity puts c6g.4xlarge in the second
    // subnet first, the user's first choice after it, and the one scoring 1 last of the Spot
    // candidates (the door's Spot prices differ by at most 5 % of On-Demand between zones, which
    // these scores leave no say).
    let region = fresh_region();
    let aws = clients(region);
    let net = fixtures::network(&aws).await;
    let door = &harness().door;
    let zones = zone_ids(region, &net.subnets).await;
    for z in &zones {
        door.spot_placements
            .set_score(region, z, "c7g.4xlarge", 4, None);
        door.spot_placements
            .set_score(region, z, "c6g.4xlarge", 9, None);
    }
    door.spot_placements
        .set_score(region, &zones[0], "c6g.4xlarge", 1, None);
    let run_id = "plan-ranks";
    let mut spec = fixtures::runspec(run_id, &net, None);
    spec["expect"] = json!({"partitions": 2, "min_rows": 100});
    spec["capacity"] = json!({"order": "price-capacity"});
    let (code, out, planned) = plan(region, "ranks", &spec, &[]).await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(planned["markets"], json!(["spot", "on-demand"]));
    let mut spot: Vec<Value> = planned["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["market"] == "spot")
        .cloned()
        .collect();
    spot.sort_by_key(|c| c["order"].as_u64());
    let names: Vec<(String, String)> = spot
        .iter()
        .map(|c| {
            (
                c["instance_type"].as_str().unwrap().to_string(),
                c["subnet"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let (a, b) = (net.subnets[0].clone(), net.subnets[1].clone());
    assert_eq!(names[0], ("c6g.4xlarge".to_string(), b), "{out}");
    assert_eq!(names[3], ("c6g.4xlarge".to_string(), a), "{out}");
    // The two c7g.4xlarge candidates, scored alike, go by their zone's Spot price.
    assert!(names[1..3].iter().all(|(t, _)| t == "c7g.4xlarge"), "{out}");
    assert!(
        spot[1]["spot"]["now_usd_per_hour"].as_f64()
            <= spot[2]["spot"]["now_usd_per_hour"].as_f64(),
        "{out}"
    );
    assert!(
        spot[0]["why"]
            .as_str()
            .unwrap()
            .contains("per vCPU-hour weighted"),
        "{out}"
    );
    assert_eq!(spot[3]["score"], 1);
    // On-Demand stays after Spot.
    let od_orders: Vec<u64> = planned["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["market"] == "on-demand")
        .map(|c| c["order"].as_u64().unwrap())
        .collect();
    assert!(od_orders.iter().all(|o| *o > 4), "{od_orders:?}");
    assert!(out.contains("price-capacity"), "{out}");
    let (asked_by_plans, _) = door.spot_placements.answered_in(region);

    let run = e2e::scenario(
        region,
        run_id,
        Behaviour::Succeed(json!({"run_id": run_id, "partitions_done": 2,
            "partitions_failed": 0, "rows_in": 1000, "rows_out": 1000,
            "durations": {"total_seconds": 1.5}})),
        |s| s["capacity"] = json!({"order": "price-capacity"}),
    )
    .await;
    assert_eq!(run.finished.status, "SUCCEEDED", "{:?}", run.finished.cause);
    // Launched where the plan said first: c6g.4xlarge, the second subnet, Spot.
    assert_eq!(run.instances.len(), 1, "{:?}", run.instances);
    let i = fixtures::instance(&aws, &run.instances[0].0).await;
    assert_eq!(i.instance_type().unwrap().as_str(), names[0].0);
    assert_eq!(i.subnet_id().unwrap(), names[0].1);
    assert_eq!(i.instance_lifecycle().map(|l| l.as_str()), Some("spot"));
    // The run asked the same two configurations the plan did, once each.
    let (asked, refused) = door.spot_placements.answered_in(region);
    assert_eq!((asked - asked_by_plans, refused.len()), (2, 0));
    // The ranking and its facts are in the run document, the report and the email.
    let attempt = &run.finished.document["workers"][0]["worker"]["attempts"][0];
    let line = attempt["placement"].as_str().unwrap_or_default();
    let zone = attempt["availability_zone"].as_str().unwrap();
    assert!(
        line.starts_with(&format!("tried c6g.4xlarge in {zone} first: score 9, $"))
            && line.ends_with(" 0 reclaims in 0 runs (spot, 8 ranked)"),
        "{attempt}"
    );
    let report = run.finished.report.to_string();
    assert!(report.contains(line), "{report}");
    let email = run.assert_email("SUCCEEDED");
    assert!(email.body.contains(line), "{}", email.body);
}

// capacity.order price-capacity against the ledger's reclaim history, end to end: a run whose
// Spot worker is taken back books the reclaim in its ledger item, and the next run (and its
// plan, with the ledger) ranks that type in that zone down, so it launches in the other zone.

/// One type, so that only the zones compete: the door's Spot prices differ by a cent of the
/// On-Demand price per zone letter (`frontdoor/spot.rs`, `spot_price_history`), every zone scores alike.
fn price_capacity(s: &mut Value) {
    s["capacity"] = json!({"order": "price-capacity"});
    s["worker"]["instance_types"] = json!(["c7g.4xlarge"]);
}

/// The zone of the instance the run's worker 1 launched in its `attempt` (from 1).
fn zone_of(run: &e2e::Run, attempt: usize) -> String {
    let a = &run.finished.document["workers"][0]["worker"]["attempts"][attempt - 1];
    a["availability_zone"]
        .as_str()
        .unwrap_or_else(|| panic!("attempt {attempt}: {a}"))
        .to_string()
}

#[tokio::test]
async fn the_ledgers_reclaim_history_moves_a_candidate_down() {
    let region = fresh_region();
    let aws = clients(region);
    let door = &harness().door;

    // Run 1: Spot in the cheaper zone, taken back, relaunched On-Demand.
    let first = e2e::scenario(
        region,
        "reclaimed-1",
        Behaviour::SpotInterruptFirst(e2e::report_for("reclaimed-1", 2)),
        price_capacity,
    )
    .await;
    assert_eq!(first.finished.status, "SUCCEEDED", "{:?}", first.finished);
    let attempts = first.finished.document["workers"][0]["worker"]["attempts"].clone();
    assert_eq!(attempts[0]["market"], "spot", "{attempts}");
    assert_eq!(attempts[1]["market"], "on-demand", "{attempts}");
    let reclaimed_zone = zone_of(&first, 1);
    let line = attempts[0]["placement"].as_str().unwrap_or_default();
    assert!(
        line.starts_with(&format!("tried c7g.4xlarge in {reclaimed_zone} first: "))
            && line.ends_with(" 0 reclaims in 0 runs (spot, 4 ranked)"),
        "{attempts}"
    );
    // The relaunch ranked from the facts the first launch kept: one configuration asked.
    let (asked, refused) = door.spot_placements.answered_in(region);
    assert_eq!((asked, refused.len()), (1, 0));
    // The ledger booked the Spot launch and its reclaim in the run's item.
    let item = aws
        .dynamodb
        .get_item()
        .table_name(ephemera_tests::iam::LEDGER_TABLE)
        .key(
            "execution",
            aws_sdk_dynamodb::types::AttributeValue::S(first.execution.clone()),
        )
        .send()
        .await
        .unwrap();
    let placements = item.item().unwrap()["placements"].as_l().unwrap().clone();
    let reclaimed: Vec<bool> = placements
        .iter()
        .map(|p| *p.as_m().unwrap()["reclaimed"].as_bool().unwrap())
        .collect();
    assert_eq!(reclaimed, [false, true], "{placements:?}");

    // The plan of the next run, with the ledger, now puts the other zone first and says why.
    let net = fixtures::network(&aws).await;
    let mut spec = fixtures::runspec("reclaimed-2", &net, None);
    price_capacity(&mut spec);
    let path = std::env::temp_dir().join(format!("ephemera-placement-{}.json", std::process::id()));
    std::fs::write(&path, spec.to_string()).unwrap();
    let out = ephemera(region)
        .args(["plan", path.to_str().unwrap(), "--json", "--ledger"])
        .arg(ephemera_tests::iam::LEDGER_TABLE)
        .output()
        .await
        .unwrap();
    let planned: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    let ranked = planned["ranking"]["candidates"].as_array().unwrap().clone();
    assert_eq!(ranked[0]["market"], "spot");
    assert_ne!(ranked[0]["zone"], json!(reclaimed_zone), "{ranked:?}");
    let down = ranked
        .iter()
        .find(|c| c["market"] == "spot" && c["zone"] == json!(reclaimed_zone))
        .unwrap();
    assert_eq!(
        (
            down["seen"]["launches"].as_u64(),
            down["seen"]["reclaims"].as_u64()
        ),
        (Some(1), Some(1)),
        "{down}"
    );
    // Without the history it would still come first: the cheaper zone (or, at a tie, the one
    // written first, where the first run went).
    assert!(
        down["usd_per_hour"].as_f64() <= ranked[0]["usd_per_hour"].as_f64(),
        "{ranked:?}"
    );

    // Run 2 launches where the plan said: the zone without the reclaim.
    let second = e2e::scenario(
        region,
        "reclaimed-2",
        Behaviour::Succeed(e2e::report_for("reclaimed-2", 2)),
        price_capacity,
    )
    .await;
    assert_eq!(second.finished.status, "SUCCEEDED", "{:?}", second.finished);
    let zone = zone_of(&second, 1);
    assert_eq!(json!(zone), ranked[0]["zone"]);
    assert_ne!(zone, reclaimed_zone);
    let line = second.finished.document["workers"][0]["worker"]["attempts"][0]["placement"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        line.starts_with(&format!("tried c7g.4xlarge in {zone} first: ")),
        "{line}"
    );
    let email = second.assert_email("SUCCEEDED");
    assert!(email.body.contains(&line), "{}", email.body);
}

#[tokio::test]
async fn price_capacity_without_scores_keeps_the_written_order_and_says_why() {
    // GetSpotPlacementScores throttled (its own rate, no token at all): the plan and the run
    // keep the written order, the run launches on the first candidate as written, and its
    // attempt says why; nothing incomplete is kept for the run's other launches.
    let region = fresh_region();
    let aws = clients(region);
    let net = fixtures::network(&aws).await;
    let door = &harness().door;
    door.spot_placements.set_rate(region, 0.0, 0.0);
    let run_id = "plan-unscored";
    let mut spec = fixtures::runspec(run_id, &net, None);
    spec["expect"] = json!({"partitions": 2, "min_rows": 100});
    spec["capacity"] = json!({"order": "price-capacity"});
    let (code, out, planned) = plan(region, "unscored", &spec, &[]).await;
    assert_eq!(code, 0, "{out}");
    let rule = planned["order_rule"].as_str().unwrap();
    assert!(
        rule.starts_with("price-capacity fell back to the written order (scores of c7g.4xlarge: RequestLimitExceeded"),
        "{rule}"
    );
    let first = planned["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["order"] == 1)
        .unwrap()
        .clone();
    assert_eq!(
        (&first["instance_type"], &first["subnet"]),
        (&json!("c7g.4xlarge"), &json!(net.subnets[0]))
    );

    let run = e2e::scenario(
        region,
        run_id,
        Behaviour::Succeed(json!({"run_id": run_id, "partitions_done": 2,
            "partitions_failed": 0, "rows_in": 1000, "rows_out": 1000,
            "durations": {"total_seconds": 1.5}})),
        |s| s["capacity"] = json!({"order": "price-capacity"}),
    )
    .await;
    assert_eq!(run.finished.status, "SUCCEEDED", "{:?}", run.finished.cause);
    let i = fixtures::instance(&aws, &run.instances[0].0).await;
    assert_eq!(i.instance_type().unwrap().as_str(), "c7g.4xlarge");
    assert_eq!(i.subnet_id().unwrap(), net.subnets[0]);
    let attempt = &run.finished.document["workers"][0]["worker"]["attempts"][0];
    let line = attempt["placement"].as_str().unwrap_or_default();
    assert!(
        line.starts_with("written order (scores of c7g.4xlarge: RequestLimitExceeded"),
        "{attempt}"
    );
    let (served, refused) = door.spot_placements.answered_in(region);
    assert_eq!(served, 0);
    assert!(!refused.is_empty() && refused.iter().all(|c| c == "RequestLimitExceeded"));
    let item = aws
        .dynamodb
        .get_item()
        .table_name(ephemera_tests::iam::LEDGER_TABLE)
        .key(
            "execution",
            aws_sdk_dynamodb::types::AttributeValue::S(run.execution.clone()),
        )
        .send()
        .await
        .unwrap();
    assert!(
        !item.item().unwrap().contains_key("placement_observed"),
        "incomplete facts are not kept"
    );
}
