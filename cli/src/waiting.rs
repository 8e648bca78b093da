//! Why a running run is where it is: one line for each place it waits (the run before its
//! workers, then each worker), read from the run document each state was entered with. The
//! complaint this answers is AWS Batch's "stuck in RUNNABLE" with no reason: ephemera knows the
//! quota request, the candidates EC2 refused, the instance's checks and the job's deadlines,
//! and says which one the run is waiting on.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use ephemera_core::contract::logs::HEARTBEAT_MESSAGE;
use ephemera_core::quota::{QuotaLine, QuotaState};
use ephemera_core::rundoc::{CaughtError, HealthState, WorkerState};
use ephemera_core::snapshot::SnapshotState;
use ephemera_core::vcpus::QuotaRefused;
use ephemera_core::State;
use ephemera_core::{caps, names};
use serde_json::from_value;
use serde_json::Value;

use crate::follow::elapsed;
use crate::history::{Event, Kind};

/// One place the run waits: the run itself (`slot` None) or one worker.
#[derive(Debug, Clone, PartialEq)]
pub struct Waiting {
    pub slot: Option<u64>,
    pub state: String,
    pub since: DateTime<Utc>,
    /// `quota: …`, `boot: …`: what it waits on, then why.
    pub why: String,
    /// A working job's attempt and instance: whose log stream says when it last heartbeat and
    /// what it last wrote ([`job_tail`]).
    pub job: Option<(u32, String)>,
}

impl Waiting {
    /// `worker 2: boot: i-0abc …` or `quota: …`.
    pub fn line(&self) -> String {
        match self.slot {
            Some(s) => format!("worker {s}: {}", self.why),
            None => self.why.clone(),
        }
    }
}

/// A lane's last state entered: its name, when, and the run document it was entered with.
type Entered = (String, DateTime<Utc>, Value);

/// Where the run waits now: the last state each lane (the run, each worker's Map iteration)
/// entered and has not left, with why. Empty once the run is over.
pub fn now(events: &[Event], now: DateTime<Utc>) -> Vec<Waiting> {
    // The lane's latest entry; None once that state was left and no other entered.
    let mut lanes: BTreeMap<Option<u64>, Option<Entered>> = BTreeMap::new();
    for e in events {
        match &e.kind {
            Kind::Entered { state, input } => {
                let doc = input
                    .as_deref()
                    .and_then(|i| serde_json::from_str::<Value>(i).ok())
                    .unwrap_or(Value::Null);
                let l = lane(&doc);
                if l.is_none() {
                    // The run's own lane moved on: the Map and its workers are over.
                    lanes.retain(|k, _| k.is_none());
                }
                lanes.insert(l, Some((state.clone(), e.at, doc)));
            }
            Kind::Exited { state, output } => {
                let doc = output
                    .as_deref()
                    .and_then(|o| serde_json::from_str::<Value>(o).ok())
                    .unwrap_or(Value::Null);
                let l = lane(&doc);
                if matches!(lanes.get(&l), Some(Some((s, _, _))) if s == state) {
                    lanes.insert(l, None);
                }
            }
            Kind::Other => {}
        }
    }
    lanes
        .into_iter()
        .filter_map(|(slot, entry)| {
            let (state, since, doc) = entry?;
            // The run's own lane in the Map waits on its workers, whose lines say why.
            let s = State::named(&state)?;
            if s == State::Workers {
                return None;
            }
            let job = match s {
                State::AwaitCompletion => part::<WorkerState>(&doc, "worker")
                    .and_then(|w| w.current().map(|a| (a.attempt, a.instance_id.clone()))),
                _ => None,
            };
            Some(Waiting {
                slot,
                why: why(s, &doc, since, now),
                state,
                since,
                job,
            })
        })
        .collect()
}

/// `$20.00 (limits.budget_usd), ≈$19.53 left at the estimate so far`: what the run may still
/// spend, from the RunSpec every state carries (`$.run`).
pub fn budget(events: &[Event], spent_usd: f64) -> Option<String> {
    let cap = events.iter().rev().find_map(|e| match &e.kind {
        Kind::Entered { input: Some(i), .. } => serde_json::from_str::<Value>(i)
            .ok()?
            .pointer("/run/limits/budget_usd")?
            .as_f64(),
        _ => None,
    })?;
    Some(format!(
        "${cap:.2} (limits.budget_usd), ≈${:.4} left at the estimate so far",
        (cap - spent_usd).max(0.0)
    ))
}

/// A worker's iteration carries its slot; the run's own document does not.
fn lane(doc: &Value) -> Option<u64> {
    doc.get("slot").and_then(Value::as_u64)
}

fn part<T: serde::de::DeserializeOwned>(doc: &Value, key: &str) -> Option<T> {
    from_value(doc.get(key)?.clone()).ok()
}

fn ago(then: DateTime<Utc>, now: DateTime<Utc>) -> String {
    format!("{} ago", elapsed(now - then))
}

fn clock(t: DateTime<Utc>) -> String {
    t.format("%H:%M:%S UTC").to_string()
}

/// What `state` waits on, from the run document it was entered with.
pub fn why(state: State, doc: &Value, since: DateTime<Utc>, now: DateTime<Utc>) -> String {
    use State::*;
    let worker: Option<WorkerState> = part(doc, "worker");
    let current = worker.as_ref().and_then(WorkerState::current);
    match state {
        Scheduled | ScheduledRunId | StartScheduled | Start => "starting".into(),
        CheckQuota | QuotaVerdict | WaitQuota => match part::<QuotaState>(doc, "quota") {
            Some(q) => quota(&q, state, now),
            None => format!(
                "quota: reading the vCPU quotas, the usage and the prices (for {})",
                elapsed(now - since)
            ),
        },
        QuotaDenied | QuotaTimeout => "quota: refused; the run ends".into(),
        SnapshotWanted | SnapshotDatabase | SnapshotReady | WaitSnapshot => {
            match part::<SnapshotState>(doc, "snapshot") {
                Some(s) => format!(
                    "snapshot: {} of {} is {} (asked {}, gives up at {})",
                    s.identifier,
                    s.source,
                    s.status,
                    ago(s.requested_at, now),
                    clock(s.deadline)
                ),
                None => "snapshot: asking RDS for the snapshot before the run writes".into(),
            }
        }
        Stagger => "launch: staggered, so that the workers do not ask EC2 at once".into(),
        LaunchWorker => match current {
            Some(a) => format!(
                "launch: attempt {} after {} {} (Spot reclaimed it or it was lost)",
                a.attempt + 1,
                a.instance_id,
                a.instance_type
            ),
            None => "launch: asking EC2 for an instance, the candidates in the run's order".into(),
        },
        LaunchQuotaRefused | ReadLaunchQuotaWait | WaitLaunchQuota => {
            match doc
                .get("launch_quota")
                .and_then(|q| q.get("refused"))
                .and_then(|r| serde_json::from_value::<QuotaRefused>(r.clone()).ok())
            {
                Some(r) => format!(
                    "quota: the launch was refused for vCPU quota {}: {}; waiting {} s, then launching again ({} waits so far)",
                    ago(r.since, now),
                    r.reason,
                    r.wait_seconds,
                    r.waits
                ),
                None => "quota: the launch was refused for vCPU quota; waiting for room".into(),
            }
        }
        WaitBoot | HealthCheck | Booted | WaitHealth => {
            let mut s = match current {
                Some(a) => format!(
                    "boot: {} ({} {}, {}) launched {}",
                    a.instance_id,
                    a.market.as_str(),
                    a.instance_type,
                    a.availability_zone.as_deref().unwrap_or(&a.subnet),
                    ago(a.launched_at, now)
                ),
                None => "boot: waiting for the instance".into(),
            };
            match part::<HealthState>(doc, "health") {
                Some(h) => s.push_str(&format!("; {} (checked {})", h.detail, ago(h.checked_at, now))),
                None => s.push_str("; waiting for its status checks and the worker's \"started\""),
            }
            if let Some(a) = current.filter(|a| a.tried_total > 0) {
                s.push_str(&format!("; {}", capacity(a)));
            }
            s
        }
        AwaitCompletion => match (current, worker.as_ref()) {
            (Some(a), Some(w)) => format!(
                "job: working on {} for {}; a heartbeat is due every {} s, the run's deadline for it is {}",
                a.instance_id,
                elapsed(now - since),
                w.heartbeat_seconds,
                clock(since + chrono::Duration::seconds(w.timeout_seconds as i64))
            ),
            _ => "job: working".into(),
        },
        WasReclaimed | CanRelaunch | Relaunch => match (current, worker.as_ref()) {
            (Some(a), Some(w)) => format!(
                "relaunch: {} stopped reporting; asking whether Spot reclaimed it ({} relaunches left)",
                a.instance_id, w.relaunches_left
            ),
            _ => "relaunch: asking whether Spot reclaimed the instance".into(),
        },
        ReleaseWorker | WorkerLost | WorkerLostUnreleased => match part::<CaughtError>(doc, "error")
        {
            // Every candidate was refused: the refusals are the cause (`CapacityUnavailable`).
            Some(e) if e.error == names::CAPACITY_UNAVAILABLE => format!(
                "capacity: {}; the worker is lost",
                caps::cap(e.cause.as_deref().unwrap_or("no candidate had room"), CAUSE_SHOWN)
            ),
            Some(e) => format!(
                "release: the worker was lost to {}: {}; its instance is being terminated",
                e.error,
                caps::cap(e.cause.as_deref().unwrap_or("no cause given"), CAUSE_SHOWN)
            ),
            None => "release: the worker is done or lost; its instance is being terminated".into(),
        },
        WorkerReported => {
            "release: the worker is done or lost; its instance is being terminated".into()
        }
        VerifyCompletion => "verify: checking the outputs against the RunSpec".into(),
        PruneWanted | PruneSnapshots => "snapshot: pruning the database's older snapshots".into(),
        Workers => "workers".into(),
        TerminateWithCostReport | Cleanup | TellRefusal => {
            "teardown: terminating every instance and writing the cost report".into()
        }
        Done | Failed | CleanupFailed | RejectRunSpec | RejectRunSpecUntold => "ended".into(),
    }
}

/// How much of a lost worker's cause the waiting line shows (the history has it whole).
const CAUSE_SHOWN: usize = 400;

/// How much of a job's last line the waiting line shows (its stream has it whole).
const LAST_LINE_SHOWN: usize = 100;

/// `last heartbeat 0:12 ago; last line 0:03 ago: stdout: epoch 1 of 3 done`: from the newest
/// lines of a working job's stream (each with the time CloudWatch Logs holds for it, oldest
/// first), when it last showed it was alive (the worker's heartbeat line,
/// [`HEARTBEAT_MESSAGE`]) and what it last wrote.
pub fn job_tail(lines: &[(DateTime<Utc>, String)], now: DateTime<Utc>) -> String {
    let heartbeat = |line: &str| {
        serde_json::from_str::<Value>(line)
            .ok()
            .and_then(|v| {
                v.pointer("/fields/message")
                    .and_then(Value::as_str)
                    .map(|m| m == HEARTBEAT_MESSAGE)
            })
            .unwrap_or(false)
    };
    let beat = lines.iter().rev().find(|(_, l)| heartbeat(l));
    let last = lines.iter().rev().find(|(_, l)| !heartbeat(l));
    let beat = match beat {
        Some((at, _)) => format!("last heartbeat {}", ago(*at, now)),
        None => "no heartbeat logged yet".into(),
    };
    let last = match last {
        Some((at, line)) => {
            let shown = crate::logs::readable(line);
            // The time is said as "ago"; the line's own timestamp would say it twice.
            let shown = match shown.split_once(' ') {
                Some((t, rest)) if DateTime::parse_from_rfc3339(t).is_ok() => rest.trim_start(),
                _ => shown.as_str(),
            };
            format!(
                "last line {}: {}",
                ago(*at, now),
                caps::cap(shown, LAST_LINE_SHOWN)
            )
        }
        None => "no line shipped yet".into(),
    };
    format!("{beat}; {last}")
}

/// The quotas that do not fit, each with its request: what the run waits for.
fn quota(q: &QuotaState, state: State, now: DateTime<Utc>) -> String {
    let short: Vec<&QuotaLine> = q.quotas.iter().filter(|l| !l.fits).collect();
    if short.is_empty() {
        return if state == State::CheckQuota {
            format!("quota: checking again ({} checks so far)", q.polls)
        } else {
            format!("quota: {}", q.reason)
        };
    }
    let lines: Vec<String> = short.iter().map(|l| quota_line(l, now)).collect();
    format!(
        "quota: {}; {}, gives up at {}",
        lines.join("; "),
        if state == State::WaitQuota {
            format!("next look in {} s", q.wait_seconds)
        } else {
            "looking now".into()
        },
        clock(q.deadline)
    )
}

fn quota_line(l: &QuotaLine, now: DateTime<Utc>) -> String {
    let mut s = format!(
        "{} ({}) needs {} vCPUs, {} applied{}, {} in use outside ephemera, {} held by other runs",
        l.code,
        l.market.as_str(),
        l.needed_vcpus,
        l.applied,
        if l.is_default { " (AWS's default)" } else { "" },
        l.usage_vcpus,
        l.reserved_vcpus
    );
    match (&l.request, &l.barred) {
        (Some(r), _) => s.push_str(&format!(
            "; increase request {} to {} is {} since {} ({}){}",
            r.id,
            r.desired,
            r.status,
            clock(r.requested_at),
            ago(r.requested_at, now),
            r.case_id
                .as_deref()
                .map(|c| format!(", support case {c}"))
                .unwrap_or_default()
        )),
        (None, Some(why)) => s.push_str(&format!("; no increase may be asked: {why}")),
        (None, None) => {
            s.push_str("; no increase asked (quota.request_increase is off), waiting for room")
        }
    }
    s
}

/// `capacity: 4 candidates refused before it (last: spot c7g.4xlarge in subnet-1:
/// InsufficientInstanceCapacity)`.
fn capacity(a: &ephemera_core::rundoc::Attempt) -> String {
    let kept: Vec<String> = a.tried.iter().map(|t| t.to_string()).collect();
    format!(
        "capacity: {} candidate{} refused before this one{}",
        a.tried_total,
        if a.tried_total == 1 { " was" } else { "s were" },
        if kept.is_empty() {
            String::new()
        } else {
            format!(" (last: {})", kept.join("; "))
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::tests::{at, attempt, entered_at, exited_at};
    use serde_json::json;

    fn quota_doc(status: &str, fits: bool) -> Value {
        json!({"run": {}, "quota": {
            "verdict": "waiting", "reason": "short", "wait_seconds": 300, "polls": 2,
            "started_at": at(0), "checked_at": at(50), "deadline": at(3600),
            "quotas": [{"code": "L-34B43A08", "market": "spot", "applied": 8.0,
                        "is_default": false, "usage_vcpus": 4, "reserved_vcpus": 0,
                        "needed_vcpus": 16, "fits": fits,
                        "request": {"id": "req-1", "desired": 28.0, "status": status,
                                    "requested_at": at(10)}}]}})
    }

    #[test]
    fn a_run_waiting_on_quota_names_the_request_its_status_and_since_when() {
        let events = vec![
            entered_at(1, 0, "CheckQuota", Some(json!({"run": {}, "quota": null}))),
            exited_at(2, 5, "CheckQuota", Some(quota_doc("CASE_OPENED", false))),
            entered_at(3, 5, "WaitQuota", Some(quota_doc("CASE_OPENED", false))),
        ];
        let w = super::now(&events, at(70));
        assert_eq!(w.len(), 1, "{w:?}");
        assert_eq!(w[0].slot, None);
        let line = w[0].line();
        assert!(
            line.starts_with("quota: L-34B43A08 (spot) needs 16 vCPUs, 8 applied, 4 in use outside ephemera, 0 held by other runs; increase request req-1 to 28 is CASE_OPENED since "),
            "{line}"
        );
        assert!(line.contains("(1:00 ago)"), "{line}");
        assert!(
            line.ends_with("next look in 300 s, gives up at 09:00:00 UTC"),
            "{line}"
        );
        // While CheckQuota itself runs the first time, it says so.
        let first = super::now(&events[..1], at(3));
        assert!(
            first[0].why.starts_with("quota: reading the vCPU quotas"),
            "{first:?}"
        );
    }

    #[test]
    fn a_barred_quota_says_why_no_increase_is_asked() {
        let mut doc = quota_doc("PENDING", false);
        doc["quota"]["quotas"][0]["request"] = Value::Null;
        doc["quota"]["quotas"][0]["barred"] = json!("denied 2 days ago");
        let w = why(State::WaitQuota, &doc, at(0), at(10));
        assert!(
            w.contains("; no increase may be asked: denied 2 days ago;"),
            "{w}"
        );
    }

    fn boot_doc(slot: u64, tried_total: u32) -> Value {
        let mut a = attempt(1, "i-0abc", "c6g.4xlarge", "on-demand", 100);
        a["tried_total"] = json!(tried_total);
        a["tried"] = json!([{"market": "spot", "instance_type": "c7g.4xlarge",
                             "subnet": "subnet-2", "code": "InsufficientInstanceCapacity",
                             "message": "no"}]);
        json!({"run": {}, "slot": slot, "worker": {"slot": slot, "attempts": [a],
               "relaunches_left": 2, "heartbeat_seconds": 60, "timeout_seconds": 7200,
               "boot_poll_seconds": 5, "token_parameter": "p", "token_reader": "r"},
               "health": {"verdict": "booting", "instance_id": "i-0abc",
                          "detail": "running, status checks initializing", "wait_seconds": 5,
                          "checked_at": at(150)}})
    }

    #[test]
    fn each_worker_says_what_it_waits_on_and_a_left_state_says_nothing() {
        let mut working = boot_doc(2, 0);
        working["health"]["verdict"] = json!("healthy");
        let events = vec![
            entered_at(1, 0, "Workers", Some(json!({"run": {}}))),
            entered_at(2, 150, "WaitHealth", Some(boot_doc(1, 4))),
            entered_at(3, 160, "AwaitCompletion", Some(working)),
        ];
        let w = super::now(&events, at(160));
        assert_eq!(w.len(), 2, "{w:?}");
        assert_eq!(
            w[0].line(),
            "worker 1: boot: i-0abc (on-demand c6g.4xlarge, us-east-1a) launched 1:00 ago; running, status checks initializing (checked 0:10 ago); capacity: 4 candidates were refused before this one (last: spot c7g.4xlarge in subnet-2: InsufficientInstanceCapacity)"
        );
        assert_eq!(
            w[1].line(),
            "worker 2: job: working on i-0abc for 0:00; a heartbeat is due every 60 s, the run's deadline for it is 10:02:40 UTC"
        );
        // The worker's state left and nothing else entered: it waits on nothing named.
        let mut left = events.clone();
        left.push(exited_at(4, 170, "AwaitCompletion", Some(boot_doc(2, 0))));
        assert_eq!(super::now(&left, at(170)).len(), 1);
    }

    #[test]
    fn a_launch_refused_for_quota_says_the_refusal_and_the_wait() {
        let doc = json!({"run": {}, "slot": 1, "launch_quota": {"refused": {
            "attempt": 1, "waits": 2, "since": at(0), "wait_seconds": 120,
            "reason": "VcpuLimitExceeded: L-1216C47A"}}});
        let w = why(State::WaitLaunchQuota, &doc, at(10), at(60));
        assert_eq!(
            w,
            "quota: the launch was refused for vCPU quota 1:00 ago: VcpuLimitExceeded: L-1216C47A; waiting 120 s, then launching again (2 waits so far)"
        );
    }

    #[test]
    fn the_budget_left_is_the_runspecs_cap_less_the_estimate() {
        let events = vec![entered_at(
            1,
            0,
            "CheckQuota",
            Some(json!({"run": {"limits": {"budget_usd": 20.0}}})),
        )];
        assert_eq!(
            budget(&events, 0.47).as_deref(),
            Some("$20.00 (limits.budget_usd), ≈$19.5300 left at the estimate so far")
        );
        assert_eq!(
            budget(&events, 25.0)
                .as_deref()
                .map(|b| b.contains("≈$0.0000 left")),
            Some(true)
        );
        assert_eq!(budget(&[], 1.0), None);
    }

    #[test]
    fn a_working_job_says_when_it_last_heartbeat_and_what_it_last_wrote() {
        let beat = |t: i64| {
            (
                at(t),
                json!({"timestamp": "2026-12-07T08:00:00.000Z", "level": "INFO",
                       "fields": {"message": HEARTBEAT_MESSAGE},
                       "target": "ephemera_worker::agent::link"})
                .to_string(),
            )
        };
        let job = json!({"timestamp": "2026-12-07T08:00:05.123Z", "level": "INFO",
                         "fields": {"job": "epoch 2 of 3 done", "stream": "stdout"}})
        .to_string();
        let lines = vec![beat(0), (at(5), job), beat(60), (at(62), "x".repeat(300))];
        let tail = job_tail(&lines, at(70));
        assert!(
            tail.starts_with("last heartbeat 0:10 ago; last line 0:08 ago: xxx"),
            "{tail}"
        );
        assert!(tail.ends_with("bytes cut)"), "{tail}");
        // The job's own line, read as `ephemera logs` shows it, without its timestamp.
        assert_eq!(
            job_tail(&lines[..3], at(70)),
            "last heartbeat 0:10 ago; last line 1:05 ago: INFO  stdout: epoch 2 of 3 done"
        );
        assert_eq!(
            job_tail(&[], at(70)),
            "no heartbeat logged yet; no line shipped yet"
        );
        // A working job's line names the stream to read; others do not.
        let mut working = boot_doc(1, 0);
        working["health"]["verdict"] = json!("healthy");
        let events = vec![
            entered_at(1, 0, "Workers", Some(json!({"run": {}}))),
            entered_at(2, 150, "AwaitCompletion", Some(working)),
            entered_at(3, 150, "WaitHealth", Some(boot_doc(2, 0))),
        ];
        let w = super::now(&events, at(160));
        assert_eq!(w[0].job, Some((1, "i-0abc".to_string())));
        assert_eq!(w[1].job, None);
    }

    #[test]
    fn a_worker_no_candidate_had_room_for_says_each_refusal() {
        let doc = json!({"run": {}, "slot": 3, "error": {
            "Error": "Ephemera.CapacityUnavailable",
            "Cause": "no capacity on any candidate; tried spot c7g.4xlarge in subnet-1: InsufficientInstanceCapacity; on-demand c7g.4xlarge in subnet-1: InsufficientInstanceCapacity"}});
        let events = vec![
            entered_at(1, 0, "Workers", Some(json!({"run": {}}))),
            entered_at(2, 30, "ReleaseWorker", Some(doc.clone())),
        ];
        let w = super::now(&events, at(31));
        assert_eq!(
            w[0].line(),
            "worker 3: capacity: no capacity on any candidate; tried spot c7g.4xlarge in subnet-1: InsufficientInstanceCapacity; on-demand c7g.4xlarge in subnet-1: InsufficientInstanceCapacity; the worker is lost"
        );
        let mut other = doc;
        other["error"] = json!({"Error": "Ephemera.BootFailed", "Cause": "impaired"});
        assert_eq!(
            why(State::WorkerLost, &other, at(0), at(1)),
            "release: the worker was lost to Ephemera.BootFailed: impaired; its instance is being terminated"
        );
    }

    #[test]
    fn every_state_has_a_reason() {
        for s in State::ALL {
            assert!(!why(*s, &Value::Null, at(0), at(1)).is_empty(), "{s}");
        }
    }
}
