//! The run's and the sweep's figures as CloudWatch metrics, in the embedded metric format
//! (EMF): one JSON line on the Lambda's standard output, from which CloudWatch Logs extracts
//! the metrics, with no call and no permission beyond the logs the function already writes
//! (https://docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/CloudWatch_Embedded_Metric_Format_Lambda.html).
//!
//! Dimensions stay few (the stack, and a run's outcome), so each name is at most three metrics;
//! custom metrics are billed by the hour they are sent in, so a few runs a month cost cents.
//! The template's alarms and dashboard name these metrics: a test holds them to [`ALL`].

use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};

use crate::report::CostReport;

/// The namespace of every ephemera metric.
pub const NAMESPACE: &str = "ephemera";

/// CloudWatch's units for these figures (a dollar amount has none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// A number of things (runs, attempts, reclaims, instances).
    Count,
    /// A duration in seconds.
    Seconds,
    /// No unit: the dollar amounts.
    None,
}

impl Unit {
    /// The unit as CloudWatch spells it (`Count`, `Seconds`, `None`).
    pub fn as_str(self) -> &'static str {
        match self {
            Unit::Count => "Count",
            Unit::Seconds => "Seconds",
            Unit::None => "None",
        }
    }
}

/// Which event a metric is sent with, and so its dimensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Each run's report: dimensions Stack and Outcome.
    Run,
    /// Each sweep: dimension Stack.
    Sweep,
    /// Each failed teardown (terminate-with-cost-report's error): dimension Stack.
    Cleanup,
}

impl Source {
    /// The dimensions its metrics carry, by name (`Stack`, `Outcome`).
    pub fn dimensions(self) -> &'static [&'static str] {
        match self {
            Source::Run => &["Stack", "Outcome"],
            Source::Sweep | Source::Cleanup => &["Stack"],
        }
    }
}

/// Every metric ephemera sends: name, unit, and the event it comes with.
pub const ALL: &[(&str, Unit, Source)] = &[
    ("Runs", Unit::Count, Source::Run),
    ("RunCostUsd", Unit::None, Source::Run),
    ("RunEstimateUsd", Unit::None, Source::Run),
    ("RunOnDemandEquivalentUsd", Unit::None, Source::Run),
    ("RunSavingsUsd", Unit::None, Source::Run),
    ("QuotaWaitSeconds", Unit::Seconds, Source::Run),
    ("BootSeconds", Unit::Seconds, Source::Run),
    ("WorkSeconds", Unit::Seconds, Source::Run),
    ("TeardownSeconds", Unit::Seconds, Source::Run),
    ("RunSeconds", Unit::Seconds, Source::Run),
    ("Attempts", Unit::Count, Source::Run),
    ("Relaunches", Unit::Count, Source::Run),
    ("SpotReclaims", Unit::Count, Source::Run),
    ("SweepChecked", Unit::Count, Source::Sweep),
    ("SweptInstances", Unit::Count, Source::Sweep),
    ("SignalsDeleted", Unit::Count, Source::Sweep),
    ("CleanupFailures", Unit::Count, Source::Cleanup),
];

/// One EMF document: `values` (each named in [`ALL`] for `source`) under the given dimension
/// values, stamped `at`.
fn document(source: Source, dims: &[&str], values: &[(&str, f64)], at: DateTime<Utc>) -> Value {
    let metrics: Vec<Value> = values
        .iter()
        .map(|(name, _)| {
            let unit = ALL
                .iter()
                .find(|(n, _, s)| n == name && *s == source)
                .map_or(Unit::None, |(_, u, _)| *u);
            json!({"Name": name, "Unit": unit.as_str()})
        })
        .collect();
    let mut doc = Map::new();
    doc.insert(
        "_aws".into(),
        json!({
            "Timestamp": at.timestamp_millis(),
            "CloudWatchMetrics": [{
                "Namespace": NAMESPACE,
                "Dimensions": [source.dimensions()],
                "Metrics": metrics,
            }],
        }),
    );
    for (name, value) in source.dimensions().iter().zip(dims) {
        doc.insert((*name).into(), json!(value));
    }
    for (name, value) in values {
        doc.insert((*name).into(), json!(value));
    }
    Value::Object(doc)
}

/// A run's figures, from its report.
pub fn of_run(report: &CostReport, stack: &str) -> Value {
    let p = &report.phases;
    let attempts = report.attempts.len() as f64;
    let workers = report.workers.len().max(1) as f64;
    let reclaims = report.attempts.iter().filter(|a| a.reclaimed()).count() as f64;
    let values = [
        ("Runs", 1.0),
        ("RunCostUsd", report.actual_usd),
        ("RunEstimateUsd", report.estimate_usd),
        ("RunOnDemandEquivalentUsd", report.on_demand_equivalent_usd),
        ("RunSavingsUsd", report.savings_usd),
        ("QuotaWaitSeconds", p.quota_wait_seconds as f64),
        ("BootSeconds", p.boot_seconds as f64),
        ("WorkSeconds", p.work_seconds as f64),
        ("TeardownSeconds", p.teardown_seconds as f64),
        ("RunSeconds", p.total_seconds as f64),
        ("Attempts", attempts),
        ("Relaunches", (attempts - workers).max(0.0)),
        ("SpotReclaims", reclaims),
    ];
    document(
        Source::Run,
        &[stack, report.outcome.as_str()],
        &values,
        report.generated_at,
    )
}

/// A sweep's figures.
pub fn of_sweep(
    stack: &str,
    checked: usize,
    swept: usize,
    signals_deleted: usize,
    at: DateTime<Utc>,
) -> Value {
    let values = [
        ("SweepChecked", checked as f64),
        ("SweptInstances", swept as f64),
        ("SignalsDeleted", signals_deleted as f64),
    ];
    document(Source::Sweep, &[stack], &values, at)
}

/// One failed teardown: the instances of a run may be left running.
pub fn of_cleanup_failure(stack: &str, at: DateTime<Utc>) -> Value {
    document(Source::Cleanup, &[stack], &[("CleanupFailures", 1.0)], at)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report_html::tests::report as sample_report;

    /// What CloudWatch reads from a document: (namespace, dimension names, metric name, unit,
    /// value), after checking the document against the EMF specification's rules.
    fn extracted(doc: &Value) -> Vec<(String, Vec<String>, String, String, f64)> {
        let aws = &doc["_aws"];
        assert!(aws["Timestamp"].as_i64().unwrap() > 0);
        let mut out = vec![];
        for d in aws["CloudWatchMetrics"].as_array().unwrap() {
            let ns = d["Namespace"].as_str().unwrap().to_string();
            let sets = d["Dimensions"].as_array().unwrap();
            for set in sets {
                let names: Vec<String> = set
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|n| n.as_str().unwrap().to_string())
                    .collect();
                // The specification: at most 30 dimensions a set, each a string member.
                assert!(names.len() <= 30);
                for n in &names {
                    assert!(doc[n].is_string(), "{n} is a string member");
                }
                for m in d["Metrics"].as_array().unwrap() {
                    let name = m["Name"].as_str().unwrap().to_string();
                    let unit = m["Unit"].as_str().unwrap().to_string();
                    let value = doc[&name].as_f64().expect("each metric a number member");
                    out.push((ns.clone(), names.clone(), name, unit, value));
                }
            }
        }
        out
    }

    #[test]
    fn a_run_sends_every_run_metric_with_its_stack_and_outcome() {
        let report = sample_report();
        let doc = of_run(&report, "ephemera");
        assert_eq!(doc["Stack"], "ephemera");
        assert_eq!(doc["Outcome"], report.outcome.as_str());
        let got = extracted(&doc);
        let expected: Vec<&str> = ALL
            .iter()
            .filter(|(_, _, s)| *s == Source::Run)
            .map(|(n, _, _)| *n)
            .collect();
        let names: Vec<&str> = got.iter().map(|g| g.2.as_str()).collect();
        assert_eq!(names, expected);
        for (ns, dims, name, unit, value) in &got {
            assert_eq!(ns, NAMESPACE);
            assert_eq!(dims, &["Stack", "Outcome"]);
            let (_, u, _) = ALL.iter().find(|(n, _, _)| n == name).unwrap();
            assert_eq!(unit, u.as_str(), "{name}");
            assert!(value.is_finite() && *value >= 0.0, "{name} = {value}");
        }
        let value = |n: &str| got.iter().find(|g| g.2 == n).unwrap().4;
        assert_eq!(value("Runs"), 1.0);
        assert_eq!(value("RunCostUsd"), report.actual_usd);
        assert_eq!(value("RunSeconds"), report.phases.total_seconds as f64);
        assert_eq!(value("Attempts"), report.attempts.len() as f64);
        // One line: Lambda ships each line of standard output as one log event.
        assert!(!serde_json::to_string(&doc).unwrap().contains('\n'));
    }

    #[test]
    fn a_run_stopped_at_its_cap_is_counted_under_its_own_outcome() {
        let mut report = sample_report();
        report.outcome = crate::report::Outcome::BudgetExhausted;
        let doc = of_run(&report, "ephemera");
        assert_eq!(doc["Outcome"], "BUDGET_EXHAUSTED");
        let got = extracted(&doc);
        assert!(got.iter().any(|g| g.2 == "Runs" && g.4 == 1.0));
    }

    #[test]
    fn a_reclaimed_spot_attempt_is_a_reclaim_and_its_successor_a_relaunch() {
        let mut report = sample_report();
        let mut first = report.attempts[0].clone();
        first.market = crate::Market::Spot;
        first.state_before = Some(crate::instance_state::InstanceState::Terminated);
        let mut second = first.clone();
        second.attempt = 1;
        second.state_before = Some(crate::instance_state::InstanceState::Running);
        report.attempts = vec![first, second];
        report.workers.truncate(1);
        let got = extracted(&of_run(&report, "s"));
        let value = |n: &str| got.iter().find(|g| g.2 == n).unwrap().4;
        assert_eq!(value("SpotReclaims"), 1.0);
        assert_eq!(value("Relaunches"), 1.0);
        assert_eq!(value("Attempts"), 2.0);
    }

    #[test]
    fn a_sweep_and_a_failed_cleanup_send_theirs_by_stack() {
        let at = Utc::now();
        let got = extracted(&of_sweep("s", 4, 2, 3, at));
        assert_eq!(
            got.iter()
                .map(|g| (g.2.as_str(), g.4, g.1.clone()))
                .collect::<Vec<_>>(),
            [
                ("SweepChecked", 4.0, vec!["Stack".to_string()]),
                ("SweptInstances", 2.0, vec!["Stack".to_string()]),
                ("SignalsDeleted", 3.0, vec!["Stack".to_string()]),
            ]
        );
        let got = extracted(&of_cleanup_failure("s", at));
        assert_eq!(got.len(), 1);
        assert_eq!((got[0].2.as_str(), got[0].4), ("CleanupFailures", 1.0));
        assert_eq!(got[0].3, "Count");
    }

    #[test]
    fn every_name_is_one_metric() {
        let mut names: Vec<&str> = ALL.iter().map(|(n, _, _)| *n).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), ALL.len());
    }
}
