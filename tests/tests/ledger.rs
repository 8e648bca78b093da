//! The run ledger and the monthly budget, through the deployed state machine and the real
//! handlers: a run is reserved at launch and settled at the end; a run that would take the month
//! past `MonthlyBudgetUsd` is refused before anything launches; passing 80 % alerts the report
//! topic; a run its execution never cleaned up lands in the ledger through the sweeper.

use aws_sdk_dynamodb::types::AttributeValue;
use chrono::Utc;
use ephemera_core::ledger::month_of;
use ephemera_functions::{invoke, Function, Settings};
use ephemera_tests::deployed;
use ephemera_tests::e2e::State;
use ephemera_tests::e2e::{self, Run};
use ephemera_tests::fixtures::{self, Email};
use ephemera_tests::iam::{ARTIFACT_BUCKET, LEDGER_TABLE, MONTHLY_BUDGET_USD};
use ephemera_tests::worker_standin::Behaviour;
use ephemera_tests::{clients, fresh_region, function_clients, harness};
use serde_json::{json, Value};

/// An earlier run of this month that cost `usd`, as terminate-with-cost-report leaves it.
async fn spent(region: &str, execution: &str, usd: f64) {
    harness().door.ensure_ledger(region).await;
    clients(region)
        .dynamodb
        .put_item()
        .table_name(LEDGER_TABLE)
        .item("execution", AttributeValue::S(execution.into()))
        .item("run_id", AttributeValue::S("earlier".into()))
        .item("month", AttributeValue::S(month_of(Utc::now())))
        .item("reserved_usd", AttributeValue::N(format!("{}", usd * 3.0)))
        .item("actual_usd", AttributeValue::N(usd.to_string()))
        .item("state", AttributeValue::S("ended".into()))
        .send()
        .await
        .unwrap();
}

/// The ledger's item of `execution`, as plain strings; each worker's reservation as
/// `workers.<n>`.
async fn entry(region: &str, execution: &str) -> Option<std::collections::HashMap<String, String>> {
    let got = clients(region)
        .dynamodb
        .get_item()
        .table_name(LEDGER_TABLE)
        .key("execution", AttributeValue::S(execution.into()))
        .send()
        .await
        .unwrap();
    got.item().map(|item| {
        let mut flat = std::collections::HashMap::new();
        for (k, v) in item {
            if let Ok(m) = v.as_m() {
                for (w, usd) in m {
                    flat.insert(format!("{k}.{w}"), usd.as_n().cloned().unwrap_or_default());
                }
            } else {
                let text = v.as_s().or_else(|_| v.as_n()).cloned().unwrap_or_default();
                flat.insert(k.clone(), text);
            }
        }
        flat
    })
}

async fn scenario(region: &'static str, run_id: &str) -> Run {
    let report = e2e::report_for(run_id, 2);
    e2e::scenario(region, run_id, Behaviour::Succeed(report), |_| {}).await
}

#[tokio::test]
async fn a_run_that_would_pass_the_monthly_budget_is_refused_before_launch() {
    let region = fresh_region();
    // The month so far: $1 short of the budget; the run's worst case is more than that.
    spent(region, "earlier-run", MONTHLY_BUDGET_USD - 1.0).await;
    let r = scenario(region, "ledger-refused").await;
    assert_eq!(r.finished.status, "FAILED", "{:?}", r.finished);
    assert_eq!(r.finished.error.as_deref(), Some("Ephemera.OverBudget"));
    let cause = r.finished.cause.clone().unwrap_or_default();
    assert!(cause.contains("monthly budget $833.00"), "{cause}");
    assert!(cause.contains("$832.00 spent or reserved"), "{cause}");
    assert!(r.instances.is_empty(), "{:?}", r.instances);
    assert_eq!(r.finished.visited(State::HealthCheck), 0);
    // Nothing reserved for it, and the refusal is in its report email.
    assert_eq!(entry(region, &r.execution).await, None);
    assert!(
        r.emails
            .iter()
            .any(|e| e.subject.contains(": FAILED $") && e.body.contains("monthly budget")),
        "{:?}",
        r.emails
    );
}

#[tokio::test]
async fn a_run_is_reserved_at_launch_settled_at_the_end_and_passing_80_percent_alerts() {
    let region = fresh_region();
    // The stack's artifact bucket, where the month's page goes.
    fixtures::bucket(&clients(region).s3, ARTIFACT_BUCKET, region).await;
    // Just under 80 % of the month: this run's reservation takes it past.
    spent(region, "earlier-run", MONTHLY_BUDGET_USD * 0.8 - 0.5).await;
    let r = scenario(region, "ledger-settled").await;
    assert_eq!(r.finished.status, "SUCCEEDED", "{:?}", r.finished);
    let report = &r.finished.report;

    let e = entry(region, &r.execution).await.expect("the run's entry");
    assert_eq!(e["state"], "ended");
    assert_eq!(e["run_id"], "ledger-settled");
    assert_eq!(e["month"], month_of(Utc::now()));
    let actual: f64 = e["actual_usd"].parse().unwrap();
    assert_eq!(actual, report["actual_usd"].as_f64().unwrap());
    let reserved: f64 = e["workers.1"].parse().unwrap();
    assert_eq!(reserved, report["estimate_usd"].as_f64().unwrap());
    assert!(reserved > 0.5 && actual < reserved, "{reserved} {actual}");

    // The month's page beside the reports, linked from the email: this run, settled.
    let month = month_of(Utc::now());
    let page = &report["month_page"];
    assert_eq!(
        page["key"],
        format!("months/{month}/index.html"),
        "{report}"
    );
    assert_eq!(page["bucket"], ARTIFACT_BUCKET);
    let html = clients(region)
        .s3
        .get_object()
        .bucket(ARTIFACT_BUCKET)
        .key(format!("months/{month}/index.html"))
        .send()
        .await
        .expect("the month's page")
        .body
        .collect()
        .await
        .unwrap()
        .into_bytes();
    let html = String::from_utf8(html.to_vec()).unwrap();
    assert!(html.contains("ledger-settled") && html.contains("SUCCEEDED"));
    assert!(html.contains("earlier"), "the month's other run");
    assert!(
        html.contains(r#"<span id="budget">$833.0000</span>"#),
        "{html}"
    );
    let settled = r
        .emails
        .iter()
        .find(|e| e.subject.contains("SUCCEEDED"))
        .unwrap_or_else(|| panic!("{:?}", r.emails));
    assert!(
        settled.body.contains(&format!(
            "The month at a glance ({month}): s3://{ARTIFACT_BUCKET}/months/{month}/index.html"
        )),
        "{}",
        settled.body
    );

    let alerts: Vec<&Email> = r
        .emails
        .iter()
        .filter(|e| e.subject.contains("passed 80% of the monthly budget"))
        .collect();
    assert_eq!(alerts.len(), 1, "{:?}", r.emails);
    assert!(
        alerts[0].body.contains("ledger-settled"),
        "{}",
        alerts[0].body
    );
}

#[tokio::test]
async fn a_run_never_cleaned_up_lands_in_the_ledger_through_the_sweeper() {
    let c = fixtures::ctx().await;
    harness().door.ensure_ledger(c.region).await;
    let settings = Settings {
        ledger_table: Some(LEDGER_TABLE.into()),
        monthly_budget_usd: MONTHLY_BUDGET_USD,
        ..deployed::bare_settings()
    };
    // Launched by an execution that then vanished (its Cleanup never ran).
    let execution = deployed::execution(c.region, "vanished");
    let spec = fixtures::runspec("ledger-swept", &c.net, None);
    let launched: Value = invoke(
        &function_clients(c.region, Function::LaunchWorker.name()),
        &settings,
        Function::LaunchWorker,
        json!({"run": spec, "execution": execution}),
    )
    .await
    .unwrap();
    let reserved = entry(c.region, &execution)
        .await
        .expect("reserved at launch");
    assert_eq!(reserved["state"], "running");
    let estimate = launched["attempts"][0]["estimate_usd"].as_f64().unwrap();
    assert_eq!(reserved["workers.1"].parse::<f64>().unwrap(), estimate);

    let swept = sweep(c.region, &settings).await;
    let id = launched["attempts"][0]["instance_id"].as_str().unwrap();
    assert!(swept.iter().any(|t| t == id), "{swept:?}");
    let after = entry(c.region, &execution).await.unwrap();
    // No cost was measured: its worst case keeps counting toward the month.
    assert_eq!(after["state"], "swept");
    assert_eq!(after["workers.1"], reserved["workers.1"]);
    assert!(!after.contains_key("actual_usd"), "{after:?}");

    // A run its report settled, one of whose launches finished after the teardown had listed
    // its instances (a stop mid-launch): the sweeper terminates that instance, and the run keeps
    // its measured bill rather than its reservation.
    let raced = deployed::execution(c.region, "raced");
    let late: Value = invoke(
        &function_clients(c.region, Function::LaunchWorker.name()),
        &settings,
        Function::LaunchWorker,
        json!({"run": fixtures::runspec("ledger-raced", &c.net, None), "execution": raced}),
    )
    .await
    .unwrap();
    use ephemera_functions::aws::ledger::{Ledger, LedgerTable};
    let table = LedgerTable {
        client: clients(c.region).dynamodb,
        table: LEDGER_TABLE.into(),
    };
    let month = entry(c.region, &raced).await.unwrap()["month"].clone();
    let counter = || async {
        entry(c.region, &format!("month#{month}")).await.unwrap()["committed_usd"]
            .parse::<f64>()
            .unwrap()
    };
    let before = counter().await;
    assert!(table
        .close(
            &raced,
            ephemera_core::ledger::EntryState::Ended,
            Some(0.01),
            Some("CANCELLED")
        )
        .await
        .unwrap());
    let settled = counter().await;
    // And a launch that reserves only now (its worker relaunched as the stop came) is refused
    // before it makes anything: the month's counter stays at the bill.
    let refused = invoke(
        &function_clients(c.region, Function::LaunchWorker.name()),
        &settings,
        Function::LaunchWorker,
        json!({"run": fixtures::runspec("ledger-raced", &c.net, None), "execution": raced,
               "worker": late, "relaunch": true}),
    )
    .await
    .unwrap_err();
    assert!(
        refused.to_string().contains("has already ended"),
        "{refused}"
    );
    assert_eq!(counter().await, settled);
    let swept = sweep(c.region, &settings).await;
    let id = late["attempts"][0]["instance_id"].as_str().unwrap();
    assert!(swept.iter().any(|t| t == id), "{swept:?}");
    let after = entry(c.region, &raced).await.unwrap();
    assert_eq!(
        (after["state"].as_str(), after["actual_usd"].as_str()),
        ("ended", "0.01")
    );
    assert!(settled < before, "{settled} {before}");
    assert_eq!(counter().await, settled);
}

/// The sweeper's pass, as its schedule invokes it; the ids it terminated.
async fn sweep(region: &'static str, settings: &Settings) -> Vec<String> {
    let swept: Value = invoke(
        &function_clients(region, Function::Sweeper.name()),
        settings,
        Function::Sweeper,
        json!({}),
    )
    .await
    .unwrap();
    swept["terminated"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["instance_id"].as_str().map(str::to_string))
        .collect()
}

/// Launches at the same instant whose worst cases together pass the monthly budget. The month's
/// counter and each run's reservation change in one transaction (conditional on the counter), so
/// exactly the launches that fit are admitted and a refused one leaves nothing behind. Before,
/// each launch judged the month from the index (eventually consistent) and then wrote its own
/// item: launches at the same instant each saw room and were all admitted.
#[tokio::test]
async fn launches_at_the_same_instant_never_together_pass_the_monthly_budget() {
    let c = fixtures::ctx().await;
    harness().door.ensure_ledger(c.region).await;
    let spec = fixtures::runspec("ledger-race", &c.net, None);
    let execution = |n: u32| deployed::execution(c.region, &format!("race-{n}"));
    let launch = |n: u32, budget: f64| {
        let settings = Settings {
            ledger_table: Some(LEDGER_TABLE.into()),
            monthly_budget_usd: budget,
            ..deployed::bare_settings()
        };
        let input = json!({"run": spec.clone(), "execution": execution(n)});
        async move {
            invoke(
                &function_clients(c.region, Function::LaunchWorker.name()),
                &settings,
                Function::LaunchWorker,
                input,
            )
            .await
        }
    };
    // One run first, with no ceiling: one launch's worst case, and the month's counter.
    let first = launch(0, 0.0).await.unwrap();
    let worst = first["attempts"][0]["estimate_usd"].as_f64().unwrap();
    assert!(worst > 0.0, "{first}");
    // Room for three and a half more: six launch at once, and exactly three fit.
    let budget = worst * 4.5;
    let results = futures_util::future::join_all((1..=6).map(|n| launch(n, budget))).await;
    let admitted: Vec<u32> = (1..=6)
        .filter(|n| results[*n as usize - 1].is_ok())
        .collect();
    assert_eq!(admitted.len(), 3, "{results:?}");
    for (n, r) in (1..=6).zip(&results) {
        match r {
            Ok(_) => assert!(entry(c.region, &execution(n)).await.is_some()),
            Err(e) => {
                assert_eq!(e.error_type(), "Ephemera.OverBudget", "{e}");
                assert!(e.to_string().contains("monthly budget"), "{e}");
                assert_eq!(entry(c.region, &execution(n)).await, None, "left behind");
            }
        }
    }
    let month = format!("month#{}", month_of(Utc::now()));
    let counter = entry(c.region, &month).await.expect("the month's counter");
    let committed: f64 = counter["committed_usd"].parse().unwrap();
    assert!(
        (committed - 4.0 * worst).abs() <= 1e-9 * worst,
        "{committed} for four launches of {worst}"
    );
    assert!(committed <= budget);
    let live = fixtures::instances_of(&c.aws, "ledger-race").await;
    assert_eq!(live.len(), 4, "{live:?}");
}

/// Two workers of one run relaunching at the same instant, with room left in the run's cap for
/// one more attempt: each writes its own place in the run's item, so only the run's counter,
/// conditional in the same write, keeps them from both being admitted. Exactly one launches; the
/// other is refused naming what is left and one attempt's worst case.
#[tokio::test]
async fn workers_relaunching_at_the_same_instant_share_the_rest_of_the_runs_cap() {
    use ephemera_core::budget::{self, Cap};
    let c = fixtures::ctx().await;
    harness().door.ensure_ledger(c.region).await;
    let mut spec = fixtures::runspec("cap-race", &c.net, None);
    spec["worker"]["count"] = json!(2);
    let s = ephemera_core::RunSpec::parse(&spec).unwrap();
    let w = fixtures::attempt_worst_case(&s, c.region);
    let worst = w.usd;
    let least = w.with_runtime(&s, budget::MIN_USEFUL_RUNTIME_SECONDS).usd;
    // Two first attempts and one more fit; a fourth does not, even at a minute's runtime.
    spec["limits"]["budget_usd"] =
        json!(Cap::of(&s, c.region).overhead_usd + 3.0 * worst + 0.5 * least);
    let execution = deployed::execution(c.region, "cap-race");
    let settings = Settings {
        worker_role_id: Some(ephemera_tests::iam::WORKER_ROLE_ID.into()),
        ledger_table: Some(LEDGER_TABLE.into()),
        ..Settings::default()
    };
    let launch = |input: Value| {
        let settings = settings.clone();
        async move {
            invoke(
                &function_clients(c.region, Function::LaunchWorker.name()),
                &settings,
                Function::LaunchWorker,
                input,
            )
            .await
        }
    };
    let mut first = vec![];
    for slot in [1, 2] {
        let w = launch(json!({"run": spec, "execution": execution, "slot": slot}))
            .await
            .unwrap();
        assert_eq!(w["attempts"][0]["estimate_usd"].as_f64().unwrap(), worst);
        first.push(w);
    }
    let relaunches = first.iter().enumerate().map(|(i, w)| {
        launch(json!({"run": spec, "execution": execution, "slot": i + 1,
                      "worker": w, "relaunch": true}))
    });
    let results = futures_util::future::join_all(relaunches).await;
    let admitted = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(admitted, 1, "{results:?}");
    let refused = results.iter().find_map(|r| r.as_ref().err()).unwrap();
    assert_eq!(refused.error_type(), "Ephemera.OverBudget");
    let text = refused.to_string();
    assert!(text.contains("attempt 2 was not launched"), "{text}");
    let left = format!("${:.4} is left of limits.budget_usd", 0.5 * least);
    assert!(text.contains(&left), "{left}: {text}");
    let e = entry(c.region, &execution).await.unwrap();
    let held: f64 = e["cap_reserved_usd"].parse().unwrap();
    assert!((held - 3.0 * worst).abs() < 1e-9, "{e:?}");
    let live = fixtures::instances_of(&c.aws, "cap-race").await;
    assert_eq!(live.len(), 3, "{live:?}");
}

/// A run that crosses a month boundary is booked in the month it started
/// (`ledger::booked_month`): its first attempt launched late on the last day of a month, its
/// relaunch after the month changed. Both reservations go to the run's one entry and the
/// starting month's counter (the new month's is not touched), and the run's measured cost
/// settles the starting month's counter to it.
#[tokio::test]
async fn a_run_that_crosses_a_month_boundary_is_booked_and_settled_in_the_month_it_started() {
    use chrono::{Datelike, TimeZone};
    use ephemera_functions::aws::ledger::{Ledger, LedgerTable};
    let c = fixtures::ctx().await;
    harness().door.ensure_ledger(c.region).await;
    let spec = fixtures::runspec("month-cross", &c.net, None);
    let execution = deployed::execution(c.region, "month-cross");
    let now = Utc::now();
    let this_month = Utc
        .with_ymd_and_hms(now.year(), now.month(), 1, 0, 0, 0)
        .unwrap();
    // Started ten minutes before the month began; relaunched in this month.
    let started = this_month - chrono::Duration::minutes(10);
    let (before, after) = (month_of(started), month_of(now));
    assert_ne!(before, after);
    let settings = Settings {
        ledger_table: Some(LEDGER_TABLE.into()),
        monthly_budget_usd: 1000.0,
        ..deployed::bare_settings()
    };
    let launch = |input: Value| {
        let settings = settings.clone();
        async move {
            invoke(
                &function_clients(c.region, Function::LaunchWorker.name()),
                &settings,
                Function::LaunchWorker,
                input,
            )
            .await
            .unwrap()
        }
    };
    let first = launch(json!({"run": spec, "execution": execution,
                              "started": started, "entered": started + chrono::Duration::minutes(1)}))
    .await;
    let worst = first["attempts"][0]["estimate_usd"].as_f64().unwrap();
    let second = launch(
        json!({"run": spec, "execution": execution, "started": started,
                               "entered": now, "worker": first, "relaunch": true}),
    )
    .await;
    assert_eq!(second["attempts"].as_array().unwrap().len(), 2, "{second}");
    let e = entry(c.region, &execution).await.unwrap();
    assert_eq!(e["month"], before, "{e:?}");
    let held: f64 = e["workers.1"].parse().unwrap();
    assert!((held - 2.0 * worst).abs() < 1e-9, "{e:?}");
    let counter = |month: String| async move {
        entry(c.region, &format!("month#{month}"))
            .await
            .map(|m| m["committed_usd"].parse::<f64>().unwrap())
    };
    let committed = counter(before.clone()).await.unwrap();
    assert!((committed - 2.0 * worst).abs() < 1e-9, "{committed}");
    assert!(
        counter(after.clone()).await.unwrap_or(0.0).abs() < 1e-9,
        "the new month holds nothing of the run"
    );
    // The report settles it where it is booked: the measured cost replaces both reservations
    // in the starting month's counter, whichever month the run ended in.
    let table = LedgerTable {
        client: clients(c.region).dynamodb,
        table: LEDGER_TABLE.into(),
    };
    let closed = table
        .close(
            &execution,
            ephemera_core::ledger::EntryState::Ended,
            Some(0.5),
            Some("BUDGET_EXHAUSTED"),
        )
        .await
        .unwrap();
    assert!(closed);
    let settled = counter(before).await.unwrap();
    assert!((settled - 0.5).abs() < 1e-9, "{settled}");
    assert!(counter(after).await.unwrap_or(0.0).abs() < 1e-9);
    let e = entry(c.region, &execution).await.unwrap();
    assert_eq!(e["outcome"], "BUDGET_EXHAUSTED");
}
