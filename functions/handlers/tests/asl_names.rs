//! The error names of the state machine and of the code are one list (`ephemera_contract::names`):
//! every name the ASL catches or raises is defined there, and every name defined there is caught
//! or raised by the ASL or produced by the code.

use std::collections::BTreeSet;

use ephemera_core::names;
use ephemera_core::rundoc::{failure_for, CaughtError};
use ephemera_core::InvalidRunSpec;
use ephemera_functions::Error;
use serde_json::Value;

const ASL: &str = include_str!("../../../state-machines/ephemeral-worker.asl.json");

/// Names AWS defines, not ephemera: Step Functions' own and those of the service integrations
/// whose errors the ASL retries, and the Lambda runtime's (`Sandbox.Timedout`: a function
/// that ran out of its Timeout).
const AWS_NAMESPACES: [&str; 4] = ["States.", "Lambda.", "Ssm.", "Sandbox."];

/// Names in the list that the ASL neither catches by name nor raises, and no Lambda produces,
/// with who produces them and how the state machine meets them.
const RAISED_ELSEWHERE: [(&str, &str); 2] = [
    (
        names::WORKER_FAILED,
        "sent by the worker with SendTaskFailure (worker/src/main.rs, `report`); the ASL catches it \
         only through States.ALL, and the execution fails with it through $.report.failure",
    ),
    (
        names::CANCELLED,
        "given to StopExecution by `ephemera cancel` (cli/src/cancel.rs), and the error \
         terminate-with-cost-report reports an ABORTED execution with (core/src/stopped.rs): the \
         execution is stopped, so no state of it catches anything",
    ),
];

/// Every `ErrorEquals` entry, and every `Error` a Fail state raises or a Pass state sets for the
/// Fail state that raises `$.error.Error` / `$.report.failure.Error`.
fn asl_names(v: &Value, out: &mut BTreeSet<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("ErrorEquals", Value::Array(names)) => {
                        out.extend(names.iter().map(|n| n.as_str().unwrap().to_string()));
                    }
                    ("Error", Value::String(name)) => {
                        out.insert(name.clone());
                    }
                    _ => asl_names(v, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| asl_names(v, out)),
        _ => {}
    }
}

/// One of each error the Lambdas raise.
fn every_lambda_error() -> Vec<Error> {
    // A variant added to `Error` fails to compile here until it is added below as well.
    let _listed_below = |e: &Error| match e {
        Error::InvalidRunSpec(_)
        | Error::BadInput(_)
        | Error::Internal(_)
        | Error::OverBudget { .. }
        | Error::OverRunCap { .. }
        | Error::OverMonthlyBudget { .. }
        | Error::CapacityUnavailable { .. }
        | Error::QuotaExceeded(_)
        | Error::LaunchQuotaTimeout(_)
        | Error::LaunchFailed(_)
        | Error::BootFailed(_)
        | Error::SnapshotFailed(_)
        | Error::SpotInterrupted(_)
        | Error::VerificationFailed { .. }
        | Error::Refused { .. }
        | Error::CleanupDenied { .. }
        | Error::Aws { .. } => {}
        // Raises the name of an error already caught (another Lambda's, or the worker's): no
        // name of its own.
        Error::WorkersLost(_) => {}
    };
    vec![
        Error::InvalidRunSpec(InvalidRunSpec { errors: vec![] }),
        Error::BadInput(String::new()),
        Error::Internal(String::new()),
        Error::OverBudget {
            estimate: 2.0,
            budget: 1.0,
            detail: String::new(),
        },
        Error::OverRunCap {
            slot: 1,
            attempt: 3,
            remainder: 1.0,
            attempt_usd: 2.0,
            budget: 5.0,
            detail: String::new(),
        },
        Error::OverMonthlyBudget {
            month: "2026-11".into(),
            others: 800.0,
            this_run: 40.0,
            budget: 833.0,
        },
        Error::CapacityUnavailable { tried: vec![] },
        Error::QuotaExceeded(ephemera_core::vcpus::QuotaRefused {
            attempt: 1,
            waits: 1,
            since: chrono::Utc::now(),
            wait_seconds: 60,
            reason: String::new(),
        }),
        Error::LaunchQuotaTimeout(String::new()),
        Error::LaunchFailed(String::new()),
        Error::BootFailed(String::new()),
        Error::SnapshotFailed(String::new()),
        Error::SpotInterrupted(String::new()),
        Error::VerificationFailed { failed: vec![] },
        Error::Refused {
            instance: String::new(),
            why: String::new(),
        },
        Error::CleanupDenied {
            left: vec![],
            detail: String::new(),
        },
        Error::Aws {
            service: "ec2",
            operation: "RunInstances",
            code: String::new(),
            message: String::new(),
        },
    ]
}

fn in_asl() -> BTreeSet<String> {
    let asl: Value = serde_json::from_str(ASL).unwrap();
    let mut found = BTreeSet::new();
    asl_names(&asl, &mut found);
    found
}

#[test]
fn every_name_the_asl_catches_or_raises_is_in_the_list() {
    let found = in_asl();
    // The walk finds what it should: a caught name and a raised one.
    assert!(found.contains(names::SPOT_INTERRUPTED), "{found:?}");
    assert!(found.contains(names::QUOTA_DENIED), "{found:?}");
    let unknown: Vec<&String> = found
        .iter()
        .filter(|n| !AWS_NAMESPACES.iter().any(|p| n.starts_with(p)))
        .filter(|n| !names::ALL.contains(&n.as_str()))
        .collect();
    assert!(
        unknown.is_empty(),
        "named in the ASL but not in ephemera_contract::names: {unknown:?}"
    );
}

#[test]
fn every_name_in_the_list_is_caught_or_raised() {
    let asl = in_asl();
    let mut produced: BTreeSet<String> = every_lambda_error()
        .iter()
        .map(|e| e.error_type().to_string())
        .collect();
    // The Fail state raises what `failure_for` makes of a caught error.
    for caught in ["States.HeartbeatTimeout", "States.Timeout"] {
        produced.insert(
            failure_for(&CaughtError {
                error: caught.into(),
                cause: None,
            })
            .error,
        );
    }
    let unaccounted: Vec<&str> = names::ALL
        .iter()
        .copied()
        .filter(|n| !asl.contains(*n) && !produced.contains(*n))
        .filter(|n| !RAISED_ELSEWHERE.iter().any(|(e, _)| e == n))
        .collect();
    assert!(
        unaccounted.is_empty(),
        "in ephemera_contract::names but neither caught nor raised by the ASL nor produced by \
         a Lambda: {unaccounted:?} (remove them, or say in RAISED_ELSEWHERE who raises them)"
    );
    // The allow-list does not outlive its reasons.
    for (name, why) in RAISED_ELSEWHERE {
        assert!(names::ALL.contains(&name), "{name} is not in the list");
        assert!(
            !asl.contains(name) && !produced.contains(name),
            "{name} is caught or raised by the ASL or a Lambda now: drop it from \
             RAISED_ELSEWHERE ({why})"
        );
    }
}
