//! The run document the state machine carries between states (`$.run`, `$.quota`, `$.workers`,
//! `$.verification`, `$.report`; in each worker's Map iteration `$.slot`, `$.worker`,
//! `$.health`, `$.result`, `$.error`): each Lambda's typed input and output.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::capacity::Tried;
#[cfg(doc)]
use crate::contract::RunParameters;
use crate::market::Market;

/// The `aws:userid` of `instance_id`'s instance-role session: `role-id:instance-id` for a role
/// assigned to an EC2 instance, the role id being the role's `RoleId` (`AROA…`)
/// (<https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_variables.html#principaltable>).
/// A token parameter's [`crate::tags::READER`] tag holds it.
pub fn token_reader(worker_role_id: &str, instance_id: &str) -> String {
    format!("{worker_role_id}:{instance_id}")
}

/// One launched instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    /// Its number among its worker's launches: 1, then one more per relaunch.
    pub attempt: u32,
    /// The EC2 instance id (`i-…`).
    pub instance_id: String,
    /// The EC2 instance type it was launched as.
    pub instance_type: String,
    /// The subnet it was launched in.
    pub subnet: String,
    /// The subnet's availability zone, as EC2 described the instance.
    #[serde(default)]
    pub availability_zone: Option<String>,
    /// Spot or On-Demand, as EC2 described the instance.
    pub market: Market,
    /// EC2's launch time (else when launch-worker made it).
    pub launched_at: DateTime<Utc>,
    /// The RunInstances ClientToken it was launched with (`crate::capacity::client_token`).
    pub client_token: String,
    /// The worst case the run's cap granted this attempt, in USD (`crate::budget`).
    pub estimate_usd: f64,
    /// Its root volume's size in GiB (the RunSpec's `worker.volume_gib`).
    pub volume_gib: u32,
    /// The last [`TRIED_KEPT`] candidates that answered with a capacity or limit error before
    /// this one (every one is in launch-worker's log).
    #[serde(default)]
    pub tried: Vec<Tried>,
    /// How many candidates answered so: `tried` keeps the last few of them.
    #[serde(default)]
    pub tried_total: u32,
    /// True when the instance already existed (a retried call) and was returned as is.
    #[serde(default)]
    pub reused: bool,
    /// The order its candidates were tried in and the first one's facts
    /// (`crate::placement::Choice::line`, cut at [`crate::placement::LINE_KEPT`]: forty
    /// workers' attempts travel in one document, [`crate::payload`]); absent on a reused
    /// instance. launch-worker's log has the whole ranking.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<String>,
}

/// How many refused candidates an attempt keeps: the last, which says why the instance is the
/// one it is. Every worker's document travels in the execution's state, whose every input and
/// output Step Functions caps at 256 KiB (States.DataLimitExceeded, which no Catch takes): at
/// 40 workers each refused on ten Spot candidates, whole lists took the Map's output to 89 %
/// of it ([`crate::payload`] bounds the rest).
pub const TRIED_KEPT: usize = 1;

/// The refusals an attempt keeps: the last [`TRIED_KEPT`], and how many there were.
pub fn kept(mut tried: Vec<Tried>) -> (Vec<Tried>, u32) {
    let total = u32::try_from(tried.len()).unwrap_or(u32::MAX);
    let last = tried.split_off(tried.len().saturating_sub(TRIED_KEPT));
    (last, total)
}

/// `$.worker` in a worker's Map iteration: the current attempt and every attempt so far (for
/// the cost report).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerState {
    /// Which of the run's workers (`1..=worker.count`).
    #[serde(default = "first")]
    pub slot: u32,
    /// Every attempt so far, the current one last ([`WorkerState::current`]). Never empty.
    pub attempts: Vec<Attempt>,
    /// Relaunches this worker has left, from `limits.max_relaunches` down; the `CanRelaunch` Choice
    /// state reads it.
    pub relaunches_left: u32,
    /// Read by the AwaitCompletion state (`HeartbeatSecondsPath`, `TimeoutSecondsPath`). With a
    /// money deadline, the timeout is its runtime and the stop allowance: the backstop of a
    /// worker that does not stop itself.
    pub heartbeat_seconds: u64,
    /// AwaitCompletion's `TimeoutSecondsPath`: `limits.max_runtime_seconds`, or with a money
    /// deadline `budget_seconds` and the stop allowance.
    pub timeout_seconds: u64,
    /// The current attempt's money deadline: the runtime the run's cap granted it when less
    /// than `limits.max_runtime_seconds` (`crate::budget::grant`), handed to the worker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_seconds: Option<u64>,
    /// How long the `WaitBoot` state waits after a launch before the first health check, in
    /// seconds (`waits.boot_poll_seconds`).
    pub boot_poll_seconds: u64,
    /// The current attempt's token parameter ([`RunParameters::task_token`]) and the value of
    /// its [`crate::tags::READER`] tag ([`token_reader`]): AwaitCompletion creates it with both.
    pub token_parameter: String,
    /// The `aws:userid` allowed to read the token parameter: this instance's role session
    /// ([`token_reader`]).
    pub token_reader: String,
}

pub(crate) fn first() -> u32 {
    1
}

impl WorkerState {
    /// The attempt under way: the last one (the document once kept a copy of it, which the
    /// 256 KiB payload quota could not spare).
    pub fn current(&self) -> Option<&Attempt> {
        self.attempts.last()
    }
}

/// One worker as its Map iteration ended (`$.workers[i]`): what it launched, and its report
/// or the error that lost it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerEnd {
    /// Which of the run's workers (`1..=worker.count`).
    pub slot: u32,
    /// Its last `$.worker`: every attempt it launched; None when its first launch failed.
    #[serde(default)]
    pub worker: Option<WorkerState>,
    /// Its last health check (`$.health`); None when it never got one.
    #[serde(default)]
    pub health: Option<HealthState>,
    /// The worker's SendTaskSuccess output: the run's summary.
    #[serde(default)]
    pub result: Option<serde_json::Value>,
    /// Why the worker was lost (its launch, boot or completion failed for good).
    #[serde(default)]
    pub error: Option<CaughtError>,
    /// What its release terminated, when it was lost.
    #[serde(default)]
    pub released: Option<Released>,
}

/// What a lost worker's release (terminate-with-cost-report with `release`) terminated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Released {
    /// Which of the run's workers was released (`1..=worker.count`).
    pub slot: u32,
    /// The instance ids the release terminated.
    pub terminated: Vec<String>,
    /// The error that lost the worker, its cause cut to [`crate::caps::CAUSE_KEPT`]: the
    /// iteration ends with this, not with the caught error (a worker's SendTaskFailure cause
    /// may be 32 KB, and forty of them would pass the state payload quota).
    #[serde(default)]
    pub error: Option<CaughtError>,
}

/// health-check's verdict, as the `Booted` Choice state reads it (`$.health.verdict`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthVerdict {
    /// Running, status checks ok, the worker said "started": await its completion.
    Healthy,
    /// Not yet: look again after `wait_seconds`.
    Booting,
    /// After a heartbeat timeout: the worker is gone and Spot did not take it.
    Silent,
}

/// `$.health`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthState {
    /// What the `Booted` Choice state does next.
    pub verdict: HealthVerdict,
    /// The instance that was checked.
    pub instance_id: String,
    /// What was found, in a line: what the boot is still waiting for, or why the worker is silent.
    pub detail: String,
    /// Seconds the `WaitHealth` state waits before the next check: `waits.boot_poll_seconds`, at
    /// most what is left of `limits.boot_timeout_seconds`; 0 unless booting.
    pub wait_seconds: u64,
    /// When health-check looked.
    pub checked_at: DateTime<Utc>,
    /// When the worker was first seen healthy; None until then.
    #[serde(default)]
    pub healthy_at: Option<DateTime<Utc>>,
}

/// A Step Functions error as caught (`Catch` with `ResultPath: $.error`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaughtError {
    /// The error's name (`Error`), e.g. `Worker.Failed` or `States.Timeout`.
    #[serde(rename = "Error")]
    pub error: String,
    /// The error's cause (`Cause`): a message, or a Lambda's JSON error; None when none was given.
    #[serde(rename = "Cause", default)]
    pub cause: Option<String>,
}

impl CaughtError {
    /// This error with its name and cause cut to the sizes the run document plans for
    /// ([`crate::payload`]).
    pub fn capped(&self) -> CaughtError {
        use crate::caps::{cap, CAUSE_KEPT, ERROR_NAME_KEPT};
        CaughtError {
            error: cap(&self.error, ERROR_NAME_KEPT),
            cause: self.cause.as_deref().map(|c| cap(c, CAUSE_KEPT)),
        }
    }
}

/// The error the execution fails with. A Fail state may not raise names starting with `States.`,
/// and a worker's SendTaskFailure may carry no cause, so both are made presentable here; a
/// Lambda's JSON cause is reduced to its message.
pub fn failure_for(e: &CaughtError) -> CaughtError {
    let error = match e.error.as_str() {
        "States.HeartbeatTimeout" | "States.Timeout" => crate::names::WORKER_TIMED_OUT.to_string(),
        other if other.starts_with("States.") => format!("Ephemera.{other}"),
        other => other.to_string(),
    };
    let raw = e.cause.clone().unwrap_or_default();
    let message = serde_json::from_str::<serde_json::Value>(&raw)
        .ok()
        .and_then(|v| {
            v.get("errorMessage")
                .and_then(|m| m.as_str())
                .map(str::to_string)
        })
        .unwrap_or(raw);
    let cause = match (e.error.as_str(), message.is_empty()) {
        ("States.HeartbeatTimeout" | "States.Timeout", _) => format!(
            "{}: the worker sent no heartbeat within limits.heartbeat_seconds or ran past limits.max_runtime_seconds{}",
            e.error,
            if message.is_empty() { String::new() } else { format!(" ({message})") }
        ),
        (_, true) => format!("{} (no cause given)", e.error),
        (_, false) => message,
    };
    CaughtError {
        error,
        cause: Some(cause),
    }
}

/// What the execution's history says of its workers, beside the run document: each Map
/// iteration's end, and every attempt LaunchWorker returned. The report reads it where the
/// document falls short: a run stopped or failed before its Map ended has no `$.workers`, and
/// an instance EC2 no longer describes is known only from its launch.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WorkersSeen {
    /// By slot: when its iteration ended (WorkerReported, WorkerLost or WorkerLostUnreleased
    /// entered; the last, should a slot be seen twice).
    pub ended: std::collections::BTreeMap<u32, DateTime<Utc>>,
    /// Every attempt LaunchWorker returned, with its worker's slot, each instance once.
    pub launched: Vec<(u32, Attempt)>,
}

impl WorkersSeen {
    /// A state entered with `input` at `at`.
    pub fn entered(&mut self, state: &str, input: &str, at: DateTime<Utc>) {
        let ends = [
            crate::State::WorkerReported.name(),
            crate::State::WorkerLost.name(),
            crate::State::WorkerLostUnreleased.name(),
        ];
        if !ends.contains(&state) {
            return;
        }
        let slot = serde_json::from_str::<serde_json::Value>(input)
            .ok()
            .and_then(|v| v["slot"].as_u64())
            .and_then(|s| u32::try_from(s).ok());
        if let Some(slot) = slot {
            self.ended.insert(slot, at);
        }
    }

    /// A state exited with `output`: LaunchWorker's carries the worker's attempts (`$.worker`).
    pub fn exited(&mut self, state: &str, output: &str) {
        if state != crate::State::LaunchWorker.name() {
            return;
        }
        let Some(w) = serde_json::from_str::<serde_json::Value>(output)
            .ok()
            .and_then(|v| serde_json::from_value::<WorkerState>(v["worker"].clone()).ok())
        else {
            return;
        };
        for a in w.attempts {
            if !self
                .launched
                .iter()
                .any(|(_, k)| k.instance_id == a.instance_id)
            {
                self.launched.push((w.slot, a));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_history_gives_each_workers_end_and_every_attempt_launched() {
        let t = |s: i64| DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap();
        let attempt = |n: u32, id: &str| {
            serde_json::json!({"attempt": n, "instance_id": id, "instance_type": "c7g.large",
                "subnet": "s", "market": "spot", "launched_at": t(n as i64 * 100),
                "client_token": "c", "estimate_usd": 0.1, "volume_gib": 30})
        };
        let worker = |slot: u32, attempts: Vec<serde_json::Value>| {
            serde_json::json!({"run": {}, "slot": slot, "worker": {"slot": slot,
                "attempts": attempts, "relaunches_left": 1, "heartbeat_seconds": 60,
                "timeout_seconds": 600, "boot_poll_seconds": 5, "token_parameter": "p",
                "token_reader": "r"}})
            .to_string()
        };
        let mut seen = WorkersSeen::default();
        seen.exited("LaunchWorker", &worker(2, vec![attempt(1, "i-a")]));
        // The relaunch's output holds both attempts: each instance is kept once.
        seen.exited(
            "LaunchWorker",
            &worker(2, vec![attempt(1, "i-a"), attempt(2, "i-b")]),
        );
        seen.exited("HealthCheck", &worker(3, vec![attempt(1, "i-c")]));
        seen.exited("LaunchWorker", "not json");
        seen.entered("WorkerReported", r#"{"slot": 2}"#, t(900));
        seen.entered("WorkerLost", r#"{"slot": 3}"#, t(950));
        seen.entered("AwaitCompletion", r#"{"slot": 4}"#, t(990));
        let ids: Vec<(u32, &str)> = seen
            .launched
            .iter()
            .map(|(s, a)| (*s, a.instance_id.as_str()))
            .collect();
        assert_eq!(ids, [(2, "i-a"), (2, "i-b")]);
        assert_eq!(
            seen.ended.into_iter().collect::<Vec<_>>(),
            [(2, t(900)), (3, t(950))]
        );
    }

    #[test]
    fn a_token_reader_is_the_instance_role_sessions_userid() {
        assert_eq!(
            token_reader("AROAEXAMPLEROLEID0001", "i-0abc"),
            "AROAEXAMPLEROLEID0001:i-0abc"
        );
    }

    #[test]
    fn failures_are_raisable_and_readable() {
        let f = failure_for(&CaughtError {
            error: "States.Timeout".into(),
            cause: None,
        });
        assert_eq!(f.error, "Worker.TimedOut");
        assert!(f
            .cause
            .unwrap()
            .starts_with("States.Timeout: the worker sent no heartbeat"));
        let f = failure_for(&CaughtError {
            error: "States.TaskFailed".into(),
            cause: Some("boom".into()),
        });
        assert_eq!(f.error, "Ephemera.States.TaskFailed");
        assert_eq!(f.cause.as_deref(), Some("boom"));
        let f = failure_for(&CaughtError {
            error: "Ephemera.BootFailed".into(),
            cause: Some(
                r#"{"errorMessage":"i-1: impaired","errorType":"Ephemera.BootFailed"}"#.into(),
            ),
        });
        assert_eq!(f.error, "Ephemera.BootFailed");
        assert_eq!(f.cause.as_deref(), Some("i-1: impaired"));
        let f = failure_for(&CaughtError {
            error: "Worker.Failed".into(),
            cause: None,
        });
        assert_eq!(f.cause.as_deref(), Some("Worker.Failed (no cause given)"));
    }

    #[test]
    fn an_attempt_keeps_its_last_refusals_and_counts_them_all() {
        let refusal = |n: usize| crate::capacity::Tried {
            market: crate::market::Market::Spot,
            instance_type: format!("c7g.{n}xlarge"),
            subnet: "subnet-1".into(),
            code: "InsufficientInstanceCapacity".into(),
            message: "x".repeat(160),
        };
        let (kept_, total) = kept((1..=10).map(refusal).collect());
        assert_eq!(total, 10);
        assert_eq!(kept_, vec![refusal(10)]);
        assert_eq!(kept(vec![refusal(1)]), (vec![refusal(1)], 1));
        assert_eq!(kept(vec![]), (vec![], 0));
    }
}
