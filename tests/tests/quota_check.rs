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
use ephemera_tests::fixtures::{self, ctx, Ctx};
use ephemera_tests::{function_clients, harness, price_list};
use serde_json::{json, Value};

const SPOT: &str = "L-34B43A08";
const ON_DEMAND: &str = "L-1216C47A";

/// Instances of this run that are pending or running.
async fn live(c: &Ctx, run: &str) -> Vec<String> {
    fixtures::instances_of(&c.aws, run)
        .await
        .into_iter()
        .filter(|(_, state)| state == "pending" || state == "running")
        .map(|(id, _)| id)
        .collect()
}

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
    assert_eq!(live(&c, "priced-once").await.len(), 1);
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
