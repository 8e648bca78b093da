//! quota-check against the Service Quotas stand-in and the Price List behind the front door:
//! requests followed until approved, denied or past the deadline, an approval waited for until
//! the applied value follows it, and the run's prices read once when the quotas have room.

use std::time::Duration;

use chrono::Utc;
use ephemera_core::quota::{QuotaState, QuotaVerdict};
use ephemera_core::rundoc::WorkerState;
use ephemera_functions::handlers::quota_check;
use ephemera_functions::Function;
use ephemera_tests::deployed::{call, execution};
use ephemera_tests::e2e;
use ephemera_tests::fixtures::{self, ctx, Ctx};
use ephemera_tests::worker_standin::Behaviour;
use ephemera_tests::{function_clients, harness, price_list, quotas};
use serde_json::{json, Value};

const SPOT: &str = "L-34B43A08";
const ON_DEMAND: &str = "L-1216C47A";

async fn poll_quota(c: &Ctx, spec: &Value, prev: Option<QuotaState>) -> QuotaState {
    serde_json::from_value(
        call(c, Function::QuotaCheck, json!({"run": spec, "quota": prev}))
            .await
            .unwrap(),
    )
    .unwrap()
}

/// The run's prices are read at the first poll (the run's cap is admitted before any quota
/// increase is asked for) and once more when the quotas have room (those are the run's: every
/// launch budgets with them), never on the polls between; a throttled Price List call is
/// retried rather than priced from the table: GetProducts' bucket (10, refilled at 5 a second)
/// is emptied first, as forty launches asking at once would empty it.
#[tokio::test]
async fn prices_are_read_to_admit_and_when_the_quotas_have_room_and_a_throttle_is_waited_out() {
    let c = ctx().await;
    let h = harness();
    let mut spec = fixtures::runspec("priced-once", &c.net, None);
    spec["worker"]["instance_types"] = json!(["c7g.4xlarge", "m7g.4xlarge"]);
    // Short at first: no price is read while the run waits for its quota.
    h.door.with_quotas(c.region, |q| {
        q.applied.insert(SPOT.into(), 8.0);
        q.applied.insert(ON_DEMAND.into(), 8.0);
        q.next_script = vec!["CASE_OPENED".into(), "APPROVED".into()];
    });
    let waiting = poll_quota(&c, &spec, None).await;
    assert_eq!(waiting.verdict, QuotaVerdict::Waiting, "{waiting:?}");
    assert!(waiting.prices.is_empty());
    // One read a candidate, to admit the run's worst case before the increase is requested.
    assert_eq!(
        h.door.throttles.asked(c.region, price_list::GET_PRODUCTS),
        2
    );
    // A poll while it waits reads none.
    let waiting = poll_quota(&c, &spec, Some(waiting)).await;
    assert_eq!(waiting.verdict, QuotaVerdict::Waiting, "{waiting:?}");
    assert_eq!(
        h.door.throttles.asked(c.region, price_list::GET_PRODUCTS),
        2
    );
    // Someone else in the account takes every token (as forty launches asking at once would)
    // until this run's first read has been throttled, then stops. The bucket refills at 5 a
    // second, so the SDK's four retries (backoff from 500 ms, full jitter) wait it out unless
    // their waits together come under 0.4 s: about one chance in 3,600. A hog held for
    // a fixed time instead failed whenever the jittered waits all fell inside it.
    let region = c.region;
    let hog = std::thread::spawn(move || {
        let door = &harness().door;
        let until = std::time::Instant::now() + Duration::from_secs(60);
        while std::time::Instant::now() < until {
            while door.throttles.take_from(
                region,
                "pricing",
                price_list::GET_PRODUCTS_BUCKET,
                "someone else",
            ) {}
            let refused = door.throttles.refused_in(region);
            if refused
                .iter()
                .any(|(what, _)| what == price_list::GET_PRODUCTS)
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    });
    let enough = poll_quota(&c, &spec, Some(waiting)).await;
    hog.join().unwrap();
    assert_eq!(enough.verdict, QuotaVerdict::Enough, "{enough:?}");
    let got: Vec<(&str, &str)> = enough
        .prices
        .iter()
        .map(|p| (p.instance_type.as_str(), p.source.as_str()))
        .collect();
    assert_eq!(
        got,
        vec![
            ("c7g.4xlarge", "price-list-api"),
            ("m7g.4xlarge", "price-list-api")
        ]
    );
    // The region's price as the API states it: USD to ten decimal places.
    let table = ephemera_core::catalog::on_demand_hourly_bound("c7g.4xlarge", c.region).unwrap();
    assert!((enough.prices[0].usd_per_hour - table).abs() < 1e-10);
    let refused = h.door.throttles.refused_in(c.region);
    assert!(
        refused
            .iter()
            .any(|(what, _)| what == price_list::GET_PRODUCTS),
        "the bucket was empty, so the first reads were throttled: {refused:?}"
    );

    // A launch given the run's prices asks for none.
    let asked = h.door.throttles.asked(c.region, price_list::GET_PRODUCTS);
    let w: WorkerState = serde_json::from_value(
        call(
            &c,
            Function::LaunchWorker,
            json!({"run": spec, "execution": execution(c.region, "priced-once"),
                   "prices": enough.prices}),
        )
        .await
        .unwrap(),
    )
    .unwrap();
    assert_eq!(
        h.door.throttles.asked(c.region, price_list::GET_PRODUCTS),
        asked
    );
    assert!(w.current().is_some());
    assert_eq!(fixtures::live(&c, "priced-once").await.len(), 1);
}

#[tokio::test]
async fn quota_short_is_requested_once_and_approved_after_several_polls() {
    let c = ctx().await;
    let h = harness();
    h.door.with_quotas(c.region, |q| {
        q.applied.insert(SPOT.into(), 8.0);
        q.applied.insert(ON_DEMAND.into(), 8.0);
        q.next_script = vec![
            "PENDING".into(),
            "CASE_OPENED".into(),
            "CASE_OPENED".into(),
            "APPROVED".into(),
        ];
    });
    let spec = fixtures::runspec("quota-approved", &c.net, None);
    let mut state = poll_quota(&c, &spec, None).await;
    let mut waits = vec![];
    let mut polls = 0;
    while state.verdict == QuotaVerdict::Waiting {
        waits.push(state.wait_seconds);
        polls += 1;
        assert!(polls < 10, "never approved: {state:?}");
        state = poll_quota(&c, &spec, Some(state)).await;
    }
    assert_eq!(state.verdict, QuotaVerdict::Enough, "{state:?}");
    assert_eq!(waits, vec![1, 2, 4, 4], "capped exponential backoff");
    let spot = state.quotas.iter().find(|l| l.code == SPOT).unwrap();
    assert_eq!(spot.applied, 16.0, "16 vCPUs of c7g.4xlarge, none in use");
    let req = spot.request.as_ref().unwrap();
    assert_eq!(req.status, "APPROVED");
    assert_eq!(req.desired, 16.0);
    assert!(req.case_id.as_deref().unwrap().starts_with("case-"));
    // Once per short quota (Spot and On-Demand), never again while polling.
    let calls = h.door.with_quotas(c.region, |q| q.increase_calls);
    assert_eq!(calls, 2);
}

/// An approval reaches GetServiceQuota's applied value some time later: the run waits for it
/// (it used to read "approved but still short" as a denial and end the run).
#[tokio::test]
async fn an_approval_the_applied_value_has_not_followed_yet_is_waited_for() {
    let c = ctx().await;
    let h = harness();
    h.door.with_quotas(c.region, |q| {
        q.applied.insert(SPOT.into(), 8.0);
        q.next_script = vec!["APPROVED".into()];
        q.apply_lag_reads = 2;
    });
    let mut spec = fixtures::runspec("quota-lagging", &c.net, None);
    spec["worker"]["market"] = json!("spot");
    let mut state = poll_quota(&c, &spec, None).await;
    let mut reasons = vec![];
    while state.verdict == QuotaVerdict::Waiting {
        reasons.push(state.reason.clone());
        assert!(reasons.len() < 10, "never applied: {state:?}");
        state = poll_quota(&c, &spec, Some(state)).await;
    }
    assert_eq!(
        state.verdict,
        QuotaVerdict::Enough,
        "{state:?} after {reasons:?}"
    );
    let lagging = reasons
        .iter()
        .filter(|r| r.contains("waiting for the applied value to follow"))
        .count();
    assert_eq!(lagging, 2, "two reads still saw 8 vCPUs: {reasons:?}");
    assert_eq!(state.quotas[0].applied, 16.0);
    assert_eq!(state.markets, vec![ephemera_core::Market::Spot]);
}

#[tokio::test]
async fn quota_denied_and_deadline() {
    let c = ctx().await;
    let h = harness();
    h.door.with_quotas(c.region, |q| {
        q.applied.insert(SPOT.into(), 8.0);
        q.next_script = vec!["CASE_OPENED".into(), "DENIED".into()];
    });
    let mut spec = fixtures::runspec("quota-denied", &c.net, None);
    spec["worker"]["market"] = json!("spot");
    let s1 = poll_quota(&c, &spec, None).await;
    assert_eq!(s1.verdict, QuotaVerdict::Waiting);
    // The deadline passes while the request is still open.
    let late = Utc::now() + chrono::Duration::hours(2);
    let role = function_clients(c.region, "quota-check");
    let s_late = quota_check::handle(
        quota_check::Clients {
            ec2: &role.ec2,
            quotas: &role.quotas,
            prices: &role.pricing,
            reservations: None::<&ephemera_functions::aws::LedgerTable>,
        },
        &quota_check::Config {
            region: c.region.into(),
            ..Default::default()
        },
        serde_json::from_value(json!({"run": spec, "quota": s1})).unwrap(),
        late,
    )
    .await
    .unwrap();
    assert_eq!(s_late.verdict, QuotaVerdict::DeadlinePassed, "{s_late:?}");
    let s3 = poll_quota(&c, &spec, Some(s_late)).await;
    assert_eq!(s3.verdict, QuotaVerdict::Denied, "{s3:?}");
    assert!(s3.reason.contains("ended DENIED"), "{}", s3.reason);
    assert_eq!(h.door.with_quotas(c.region, |q| q.increase_calls), 1);

    // Without permission to ask, a short quota is a denial at once.
    spec["quota"]["request_increase"] = json!(false);
    spec["run_id"] = json!("quota-no-ask");
    let s = poll_quota(&c, &spec, None).await;
    assert_eq!(s.verdict, QuotaVerdict::Denied);
    assert!(s.reason.contains("request_increase is false"));
}

#[tokio::test]
async fn enough_quota_falls_back_to_the_aws_default() {
    let c = ctx().await;
    let spec = fixtures::runspec("quota-default", &c.net, None);
    let s = poll_quota(&c, &spec, None).await;
    assert_eq!(s.verdict, QuotaVerdict::Enough, "{s:?}");
    assert!(s.quotas.iter().all(|l| l.is_default && l.request.is_none()));
    assert_eq!(s.quotas.len(), 2);
}

/// Polls until the verdict is no longer Waiting (at most ten polls).
async fn until_decided(c: &Ctx, spec: &Value, mut state: QuotaState) -> QuotaState {
    for _ in 0..10 {
        if state.verdict != QuotaVerdict::Waiting {
            return state;
        }
        state = poll_quota(c, spec, Some(state)).await;
    }
    panic!("still waiting after ten polls: {state:?}");
}

/// After a denial no run asks for the quota again until the stack's period has passed: the
/// next run is refused at once, naming the denial, its request and case, its date and when a
/// request may be filed again; once the period is over, a run files a new request.
#[tokio::test]
async fn a_denied_increase_is_not_requested_again_within_the_period() {
    let c = ctx().await;
    let h = harness();
    h.door.with_quotas(c.region, |q| {
        q.applied.insert(SPOT.into(), 8.0);
        q.next_script = vec!["CASE_OPENED".into(), "DENIED".into()];
    });
    let mut spec = fixtures::runspec("denied-first", &c.net, None);
    spec["worker"]["market"] = json!("spot");
    let first = poll_quota(&c, &spec, None).await;
    let first = until_decided(&c, &spec, first).await;
    assert_eq!(first.verdict, QuotaVerdict::Denied, "{first:?}");
    assert_eq!(h.door.with_quotas(c.region, |q| q.increase_calls), 1);
    let (denied_id, denied_on) = h.door.with_quotas(c.region, |q| {
        (q.requests[0].id.clone(), q.requests[0].last_updated)
    });

    // The next run: refused at once, nothing requested.
    spec["run_id"] = json!("denied-second");
    let second = poll_quota(&c, &spec, None).await;
    assert_eq!(second.verdict, QuotaVerdict::Denied, "{second:?}");
    let why = &second.reason;
    let on = chrono::DateTime::from_timestamp(denied_on as i64, 0).unwrap();
    let again = on + chrono::Duration::hours(168);
    for part in [
        format!("request {denied_id}, case case-{denied_id}"),
        format!("was DENIED on {}", on.to_rfc3339()),
        format!("no new request before {}", again.to_rfc3339()),
        "QuotaDenialCooloffHours is 168".to_string(),
    ] {
        assert!(why.contains(&part), "{part:?} not in {why}");
    }
    assert_eq!(h.door.with_quotas(c.region, |q| q.increase_calls), 1);

    // The period over (the denial dated 169 hours ago), a run asks again.
    h.door.with_quotas(c.region, |q| {
        q.requests[0].last_updated -= 169.0 * 3600.0;
        q.next_script = vec!["CASE_OPENED".into()];
    });
    spec["run_id"] = json!("denied-later");
    let later = poll_quota(&c, &spec, None).await;
    assert_eq!(later.verdict, QuotaVerdict::Waiting, "{later:?}");
    let filed = later.quotas[0].request.as_ref().unwrap();
    assert_ne!(filed.id, denied_id);
    assert_eq!(h.door.with_quotas(c.region, |q| q.increase_calls), 2);
}

/// One open request a quota, whoever filed it: a run short of a quota another run (or a
/// person) already asked for follows that request, and two runs waiting on one quota file one
/// request between them, whether they start one after the other or together.
#[tokio::test]
async fn an_open_request_is_followed_not_duplicated() {
    let c = ctx().await;
    let h = harness();
    h.door.with_quotas(c.region, |q| {
        q.applied.insert(SPOT.into(), 8.0);
        q.applied.insert(ON_DEMAND.into(), 8.0);
        q.next_script = vec![
            "CASE_OPENED".into(),
            "CASE_OPENED".into(),
            "APPROVED".into(),
        ];
    });
    let mut a = fixtures::runspec("follow-a", &c.net, None);
    a["worker"]["market"] = json!("spot");
    let mut b = a.clone();
    b["run_id"] = json!("follow-b");
    let sa = poll_quota(&c, &a, None).await;
    let sb = poll_quota(&c, &b, None).await;
    let ra = sa.quotas[0].request.as_ref().unwrap().id.clone();
    assert_eq!(sb.quotas[0].request.as_ref().unwrap().id, ra, "{sb:?}");
    assert_eq!(h.door.with_quotas(c.region, |q| q.increase_calls), 1);
    let sa = until_decided(&c, &a, sa).await;
    let sb = until_decided(&c, &b, sb).await;
    assert_eq!(sa.verdict, QuotaVerdict::Enough, "{sa:?}");
    assert_eq!(sb.verdict, QuotaVerdict::Enough, "{sb:?}");
    assert_eq!(h.door.with_quotas(c.region, |q| q.increase_calls), 1);

    // A person's open request for On-Demand: followed, not doubled.
    h.door.with_quotas(c.region, |q| {
        let t = Utc::now().timestamp() as f64;
        let mut mine =
            quotas::StandInRequest::filed("person-1", ON_DEMAND, 64.0, "CASE_OPENED", t, t);
        mine.script = ["APPROVED".to_string()].into();
        q.requests.push(mine);
    });
    let mut od = fixtures::runspec("follow-person", &c.net, None);
    od["worker"]["market"] = json!("on-demand");
    let s = poll_quota(&c, &od, None).await;
    assert_eq!(
        s.quotas[0].request.as_ref().unwrap().id,
        "person-1",
        "{s:?}"
    );
    let s = until_decided(&c, &od, s).await;
    assert_eq!(s.verdict, QuotaVerdict::Enough, "{s:?}");
    assert_eq!(h.door.with_quotas(c.region, |q| q.increase_calls), 1);

    // Two runs at once, a quota (Spot, now 16) short for both: one request between them.
    let mut x = fixtures::runspec("together-x", &c.net, None);
    x["worker"]["market"] = json!("spot");
    x["worker"]["count"] = json!(2);
    let mut y = x.clone();
    y["run_id"] = json!("together-y");
    let (sx, sy) = tokio::join!(poll_quota(&c, &x, None), poll_quota(&c, &y, None));
    let id = |s: &QuotaState| s.quotas[0].request.as_ref().map(|r| r.id.clone());
    assert!(id(&sx).is_some(), "{sx:?}");
    assert_eq!(id(&sx), id(&sy));
    let open_spot = h.door.with_quotas(c.region, |q| {
        q.requests.iter().filter(|r| r.code == SPOT).count()
    });
    assert_eq!(
        open_spot, 2,
        "the first run's approved request and one new one"
    );
}

/// No request asks for more than the stack's MaxQuotaRequestVcpus: a run that would need more
/// is refused naming the parameter, and nothing is requested.
#[tokio::test]
async fn a_request_above_the_stacks_cap_is_refused_naming_the_parameter() {
    let c = ctx().await;
    let h = harness();
    h.door.with_quotas(c.region, |q| {
        q.applied.insert(SPOT.into(), 8.0);
    });
    let mut spec = fixtures::runspec("above-cap", &c.net, None);
    spec["worker"]["market"] = json!("spot");
    let settings = ephemera_functions::Settings {
        max_quota_request_vcpus: Some(12),
        ..ephemera_tests::deployed::settings(&c)
    };
    let out = ephemera_tests::deployed::call_with(
        &c,
        Function::QuotaCheck,
        json!({"run": spec, "quota": null}),
        settings,
    )
    .await
    .unwrap();
    let s: QuotaState = serde_json::from_value(out).unwrap();
    assert_eq!(s.verdict, QuotaVerdict::Denied, "{s:?}");
    assert!(
        s.reason
            .contains("16 vCPUs, above the stack's MaxQuotaRequestVcpus (12)"),
        "{}",
        s.reason
    );
    assert_eq!(h.door.with_quotas(c.region, |q| q.increase_calls), 0);
    // Within the cap, the same run asks.
    spec["run_id"] = json!("within-cap");
    let s = poll_quota(&c, &spec, None).await;
    assert_eq!(s.verdict, QuotaVerdict::Waiting, "{s:?}");
    assert_eq!(h.door.with_quotas(c.region, |q| q.increase_calls), 1);
}

/// The harness holds quota-check's role to the catalog's vCPU quotas: another EC2 quota (here
/// Elastic IP addresses, L-0263D0A3) can neither be read nor asked for.
#[tokio::test]
async fn the_quota_check_role_may_ask_for_vcpu_quotas_only() {
    let c = ctx().await;
    let role = function_clients(c.region, "quota-check");
    let asked = |code: &'static str| {
        role.quotas
            .request_service_quota_increase()
            .service_code("ec2")
            .quota_code(code)
            .desired_value(5000.0)
            .send()
    };
    let refused = asked("L-0263D0A3").await.unwrap_err();
    assert!(
        refused
            .as_service_error()
            .is_some_and(|e| e.is_access_denied_exception()),
        "{refused:?}"
    );
    let read = role
        .quotas
        .get_service_quota()
        .service_code("ec2")
        .quota_code("L-0263D0A3")
        .send()
        .await
        .unwrap_err();
    assert!(
        read.as_service_error()
            .is_some_and(|e| e.is_access_denied_exception()),
        "{read:?}"
    );
    asked(SPOT).await.expect("a vCPU quota of the catalog");
}

/// A throttled Price List does not hold quota-check past its deadline: GetProducts' bucket is
/// kept empty by someone else for the whole check, twelve candidates are priced, and the check
/// ends soon after its pricing deadline, the prices it could not read from the dated table,
/// marked estimated (without the deadline it took a retry sequence per group of five, 20 s or
/// so).
#[tokio::test]
async fn a_throttled_price_list_does_not_time_quota_check_out() {
    let c = ctx().await;
    let h = harness();
    let types = [
        "c7g.large",
        "c7g.xlarge",
        "c7g.2xlarge",
        "c7g.4xlarge",
        "c6g.large",
        "c6g.xlarge",
        "c6g.2xlarge",
        "c6g.4xlarge",
        "m7g.large",
        "m7g.xlarge",
        "m7g.2xlarge",
        "m6g.large",
    ];
    let mut spec = fixtures::runspec("priced-late", &c.net, None);
    spec["worker"]["instance_types"] = json!(types);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let region = c.region;
    let hog = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                while harness().door.throttles.take_from(
                    region,
                    "pricing",
                    price_list::GET_PRODUCTS_BUCKET,
                    "someone else",
                ) {}
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let role = function_clients(c.region, "quota-check");
    let within = Duration::from_secs(3);
    let started = std::time::Instant::now();
    let s = quota_check::handle(
        quota_check::Clients {
            ec2: &role.ec2,
            quotas: &role.quotas,
            prices: &role.pricing,
            reservations: None::<&ephemera_functions::aws::LedgerTable>,
        },
        &quota_check::Config {
            region: c.region.into(),
            pricing_within: within,
            ..Default::default()
        },
        serde_json::from_value(json!({"run": spec, "quota": null})).unwrap(),
        Utc::now(),
    )
    .await
    .unwrap();
    let took = started.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    hog.join().unwrap();
    assert!(
        took < within + Duration::from_secs(4),
        "quota-check took {took:?} with a {within:?} pricing deadline"
    );
    assert_eq!(s.verdict, QuotaVerdict::Enough, "{s:?}");
    assert_eq!(s.prices.len(), types.len());
    assert!(
        h.door
            .throttles
            .refused_in(c.region)
            .iter()
            .any(|(what, _)| what == price_list::GET_PRODUCTS),
        "the Price List was throttled"
    );
    // A refilled token may reach a read before the hog takes it (that type is the API's), and
    // a read whose retries all ended before the deadline falls back to the table as before.
    for p in &s.prices {
        let table = ephemera_core::catalog::on_demand_hourly_bound(&p.instance_type, c.region);
        assert!((p.usd_per_hour - table.unwrap()).abs() < 1e-9, "{p:?}");
        assert!(
            p.source.contains("fallback table") || p.source == "price-list-api",
            "{p:?}"
        );
    }
    assert!(
        s.prices
            .iter()
            .any(|p| p.source.ends_with("did not answer in time")),
        "the deadline priced some: {:?}",
        s.prices
    );
}

/// A quota-check that runs out of its Timeout is invoked again (CheckQuota's Retry on the
/// names Step Functions reports a Lambda timeout by), and the run goes on: the deployed ASL
/// executed end to end, the front door answering the first invocation as a timed-out Lambda.
#[tokio::test]
async fn a_quota_check_timeout_is_retried() {
    let region = ephemera_tests::fresh_region();
    harness().door.add_timeout(region, "quota-check", 1);
    let report = json!({"run_id": "e2e-qc-timeout", "partitions_done": 2,
                        "partitions_failed": 0, "rows_in": 1000, "rows_out": 1000,
                        "durations": {"total_seconds": 1.5}});
    let r = e2e::scenario(region, "e2e-qc-timeout", Behaviour::Succeed(report), |_| {}).await;
    assert_eq!(r.finished.status, "SUCCEEDED", "{:?}", r.finished);
    let checks = harness()
        .door
        .invocations_in(region)
        .iter()
        .filter(|f| f.as_str() == "quota-check")
        .count();
    assert_eq!(checks, 2, "the timed-out check and its retry");
    r.assert_nothing_left();
}
