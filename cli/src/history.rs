//! What an execution's history says: the states entered, the current one, the run document's
//! attempts and the cost report. Read from the SDK's events into plain ones, so that the
//! decisions below are pure.

use std::collections::BTreeMap;

use aws_sdk_sfn::types::HistoryEvent;
use chrono::{DateTime, Utc};
use ephemera_core::rundoc::Attempt;
use ephemera_core::State;
use serde_json::Value;

use crate::errors::{CliError, Op};

/// One history event, as far as the CLI cares.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub kind: Kind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    /// A state was entered, with its input (the run document).
    Entered {
        state: String,
        input: Option<String>,
    },
    /// A state was left, with its output.
    Exited {
        state: String,
        output: Option<String>,
    },
    Other,
}

pub fn time(t: &aws_sdk_sfn::primitives::DateTime) -> DateTime<Utc> {
    DateTime::from_timestamp(t.secs(), t.subsec_nanos()).unwrap_or_default()
}

fn event(e: &HistoryEvent) -> Event {
    let kind = if let Some(d) = e.state_entered_event_details() {
        Kind::Entered {
            state: d.name().to_string(),
            input: d.input().map(str::to_string),
        }
    } else if let Some(d) = e.state_exited_event_details() {
        Kind::Exited {
            state: d.name().to_string(),
            output: d.output().map(str::to_string),
        }
    } else {
        Kind::Other
    };
    Event {
        id: e.id(),
        at: time(e.timestamp()),
        kind,
    }
}

/// The whole history, oldest first.
pub async fn read(sfn: &aws_sdk_sfn::Client, execution: &str) -> Result<Vec<Event>, CliError> {
    let op = Op::new("states:GetExecutionHistory", execution);
    let mut pages = sfn
        .get_execution_history()
        .execution_arn(execution)
        .into_paginator()
        .send();
    let mut events = vec![];
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| op.fail(e))?;
        events.extend(page.events().iter().map(event));
    }
    events.sort_by_key(|e| e.id);
    Ok(events)
}

/// One state entered.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub state: String,
    pub at: DateTime<Utc>,
    /// Its place in the events, so that what was known then can be read.
    pub index: usize,
}

/// The states entered, in order.
pub fn entered(events: &[Event]) -> Vec<Step> {
    events
        .iter()
        .enumerate()
        .filter_map(|(index, e)| match &e.kind {
            Kind::Entered { state, .. } => Some(Step {
                state: state.clone(),
                at: e.at,
                index,
            }),
            _ => None,
        })
        .collect()
}

/// The state the execution is in now: the last one entered, unless it was left since (the
/// execution is then between states or over).
pub fn current_state(events: &[Event]) -> Option<(String, DateTime<Utc>)> {
    let last = events
        .iter()
        .rev()
        .find(|e| !matches!(e.kind, Kind::Other))?;
    match &last.kind {
        Kind::Entered { state, .. } => Some((state.clone(), last.at)),
        _ => None,
    }
}

/// The run's attempts, every worker's (`$.worker.attempts` in each worker's Map iteration,
/// `$.workers[*].worker.attempts` after it), each worker's as its latest state saw them.
pub fn attempts(events: &[Event]) -> Vec<Attempt> {
    attempts_by_worker(events)
        .into_iter()
        .map(|(_, a)| a)
        .collect()
}

/// [`attempts`], each with its worker's slot.
pub fn attempts_by_worker(events: &[Event]) -> Vec<(u64, Attempt)> {
    let mut by_worker: BTreeMap<u64, Vec<Attempt>> = BTreeMap::new();
    let mut take = |w: &Value| {
        let slot = w.get("slot").and_then(Value::as_u64).unwrap_or(1);
        let found = w
            .get("attempts")
            .and_then(|a| serde_json::from_value::<Vec<Attempt>>(a.clone()).ok());
        if let Some(a) = found {
            by_worker.entry(slot).or_insert(a);
        }
    };
    for e in events.iter().rev() {
        let (Kind::Entered { input: Some(d), .. }
        | Kind::Exited {
            output: Some(d), ..
        }) = &e.kind
        else {
            continue;
        };
        let Ok(doc) = serde_json::from_str::<Value>(d) else {
            continue;
        };
        if let Some(w) = doc.get("worker") {
            take(w);
        }
        for end in doc
            .get("workers")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(w) = end.get("worker") {
                take(w);
            }
        }
    }
    by_worker
        .into_iter()
        .flat_map(|(slot, a)| a.into_iter().map(move |a| (slot, a)))
        .collect()
}

/// The cost report (`$.report`) the run's last terminate-with-cost-report wrote: on success
/// it is also the execution's output, on failure (Cleanup, then Fail) only the history has it.
pub fn report(events: &[Event]) -> Option<Value> {
    events.iter().rev().find_map(|e| match &e.kind {
        Kind::Exited {
            state,
            output: Some(out),
        } if State::named(state).is_some_and(State::reports) => {
            report_in(&serde_json::from_str(out).ok()?)
        }
        _ => None,
    })
}

/// The report in a state's or the execution's output: the output itself, since the last
/// states keep only the report (`OutputPath: $.report`, so that the run document and the
/// report never add up against the 256 KiB payload quota), or its `report` field, as
/// executions of an earlier deployment have it.
pub fn report_in(doc: &Value) -> Option<Value> {
    if doc.get("outcome").is_some() && doc.get("attempts").is_some() {
        return Some(doc.clone());
    }
    doc.get("report").filter(|r| r.is_object()).cloned()
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use chrono::TimeZone;
    use serde_json::json;

    pub fn at(s: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + s, 0).unwrap()
    }

    pub fn entered_at(id: i64, s: i64, state: &str, input: Option<Value>) -> Event {
        Event {
            id,
            at: at(s),
            kind: Kind::Entered {
                state: state.into(),
                input: input.map(|v| v.to_string()),
            },
        }
    }

    pub fn exited_at(id: i64, s: i64, state: &str, output: Option<Value>) -> Event {
        Event {
            id,
            at: at(s),
            kind: Kind::Exited {
                state: state.into(),
                output: output.map(|v| v.to_string()),
            },
        }
    }

    pub fn attempt(n: u32, instance: &str, ty: &str, market: &str, launched: i64) -> Value {
        json!({"attempt": n, "instance_id": instance, "instance_type": ty, "subnet": "subnet-1",
               "availability_zone": "us-east-1a", "market": market, "launched_at": at(launched),
               "client_token": "t", "estimate_usd": 1.0, "volume_gib": 30})
    }

    #[test]
    fn the_current_state_is_the_last_entered_and_not_yet_left() {
        let events = vec![
            entered_at(2, 0, "Start", None),
            exited_at(3, 0, "Start", None),
            entered_at(4, 1, "CheckQuota", None),
            Event {
                id: 5,
                at: at(2),
                kind: Kind::Other,
            },
        ];
        assert_eq!(current_state(&events), Some(("CheckQuota".into(), at(1))));
        let mut done = events.clone();
        done.push(exited_at(6, 3, "CheckQuota", None));
        assert_eq!(current_state(&done), None);
        let steps: Vec<(String, usize)> = entered(&done)
            .into_iter()
            .map(|s| (s.state, s.index))
            .collect();
        assert_eq!(steps, vec![("Start".into(), 0), ("CheckQuota".into(), 2)]);
        assert_eq!(current_state(&[]), None);
    }

    #[test]
    fn attempts_come_from_the_latest_run_document() {
        let one = json!({"run": {}, "worker": {"attempts": [attempt(1, "i-1", "c7g.large", "spot", 10)]}});
        let two = json!({"run": {}, "worker": {"attempts": [
            attempt(1, "i-1", "c7g.large", "spot", 10),
            attempt(2, "i-2", "c7g.large", "on-demand", 100)]}});
        let events = vec![
            entered_at(1, 0, "LaunchWorker", Some(json!({"worker": null}))),
            exited_at(2, 5, "LaunchWorker", Some(one)),
            entered_at(3, 90, "WaitBoot", Some(two)),
            entered_at(4, 95, "HealthCheck", Some(json!("not a document"))),
        ];
        let a = attempts(&events);
        assert_eq!(a.len(), 2);
        assert_eq!(a[1].instance_id, "i-2");
        assert!(attempts(&events[..1]).is_empty());
    }

    #[test]
    fn the_report_is_read_from_cleanup_as_well() {
        let report = json!({"run_id": "r", "actual_usd": 0.5});
        let events = vec![
            exited_at(1, 0, "LaunchWorker", Some(json!({"report": "no"}))),
            exited_at(2, 9, "Cleanup", Some(json!({"report": report.clone()}))),
            exited_at(3, 10, "Failed", None),
        ];
        assert_eq!(super::report(&events), Some(report));
        assert_eq!(super::report(&events[..1]), None);
    }

    #[test]
    fn the_report_is_the_last_states_whole_output() {
        let report = json!({"run_id": "r", "outcome": "FAILED", "attempts": [], "actual_usd": 0.5});
        let events = vec![exited_at(2, 9, "Cleanup", Some(report.clone()))];
        assert_eq!(super::report(&events), Some(report.clone()));
        assert_eq!(report_in(&report), Some(report.clone()));
        assert_eq!(report_in(&json!({"report": report.clone()})), Some(report));
        assert_eq!(report_in(&json!({"run": {}, "workers": []})), None);
    }
}
