//! Step Functions caps every state's input and output at 256 KiB, and passing it is
//! `States.DataLimitExceeded`, which no `Catch` takes: the execution ends at once, without its
//! cleanup, report or email
//! (<https://docs.aws.amazon.com/step-functions/latest/dg/service-quotas.html#service-limits-task-executions>,
//! <https://docs.aws.amazon.com/step-functions/latest/dg/concepts-error-handling.html>).
//!
//! So the run document is bounded by construction: every text that comes from outside (an AWS
//! message, a Lambda's or the worker's error cause, a health detail) is cut where it enters
//! ([`cap`]), and [`bound`] builds the largest document a RunSpec can produce — its longest
//! instance type and subnet, every worker relaunched `limits.max_relaunches` times, each lost
//! with a cause of the largest size kept — serializes it with the real types and refuses, at
//! validation, a RunSpec whose bound passes [`PLANNED_BYTES`].

use chrono::{DateTime, TimeZone, Utc};
use ephemera_contract::summary::{Summary, Validation};

use crate::capacity::Tried;
use crate::caps::*;
use crate::cost::TypePrice;
use crate::instance_state::InstanceState;
use crate::market::Market;
use crate::report::{AttemptCost, WorkerLine};
use crate::rundoc::{
    Attempt, CaughtError, HealthState, HealthVerdict, Released, WorkerEnd, WorkerState, TRIED_KEPT,
};
use crate::runspec::RunSpec;

/// Step Functions' quota on a state's input or output, and on a task's result.
pub const STATE_QUOTA_BYTES: usize = 256 * 1024;
/// What a run may plan to reach: the rest is margin for the parts [`bound`] does not itemize
/// beyond [`FIXED_BYTES`].
pub const PLANNED_BYTES: usize = STATE_QUOTA_BYTES * 7 / 8;

/// `$.verification.outputs` at its largest.
const OUTPUTS_BYTES: usize = 1_200;
/// Everything a run document holds besides the RunSpec and what grows with its workers: the
/// quota lines, the snapshot, the checks, the phases, the orchestration, the notes, the keys.
/// Measured at 9.5 KB for a one-worker run with a snapshot and both errors set (the largest
/// fixed part seen); counted twice over.
pub const FIXED_BYTES: usize = 20 * 1024;

/// The largest state a RunSpec's run can carry, in bytes, and its parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bound {
    /// The run document at its fullest: the Cleanup state's input (RunSpec, quota, snapshot,
    /// every worker's end, the checks, the errors).
    pub document: usize,
    /// The report: terminate-with-cost-report's result, which is also the last states' whole
    /// output (`OutputPath: $.report`, so the document and the report never add up).
    pub report: usize,
    /// One worker's end at its largest.
    pub per_worker: usize,
}

impl Bound {
    /// The largest state input or output of the run.
    pub fn state(&self) -> usize {
        self.document.max(self.report)
    }
}

/// The bound for `spec` (see the module's comment).
pub fn bound(spec: &RunSpec) -> Bound {
    let w = Worst::of(spec);
    let workers = spec.worker.count as usize;
    let attempts = 1 + spec.limits.max_relaunches as usize;
    let per_worker = size(&w.end(attempts)) + 1;
    let error = size(&w.top_error()) + 1;
    // The verification's checks, in `$.verification` and again in the report; the workers
    // check names every lost worker with its cause.
    // With the outputs' line: the manifest's URL (a key is at most 1,024 bytes, a bucket's
    // name 63) and two counts.
    let checks = CHECK_DETAIL_KEPT * 2 + OUTPUTS_BYTES * 2;
    let report = FIXED_BYTES
        + checks
        + error * 2
        + workers * (size(&w.line()) + 1)
        + workers * attempts * (size(&w.cost()) + 1 + w.instance_id.len() + 3 + NOTE_PER_ATTEMPT);
    let spec_bytes = serde_json::to_string(spec).map_or(STATE_QUOTA_BYTES, |s| s.len());
    // The run's prices in `$.quota.prices`, one per candidate (each Map iteration's input holds
    // them too, but an iteration's input is smaller than the document).
    let prices = spec.worker.instance_types.len() * (size(&w.price()) + 1);
    let document = spec_bytes + FIXED_BYTES + checks + prices + workers * per_worker + 2 * error;
    Bound {
        document,
        report,
        per_worker,
    }
}

/// The most workers a run with `spec`'s other fields can have within [`PLANNED_BYTES`].
pub fn most_workers(spec: &RunSpec) -> u32 {
    let mut s = spec.clone();
    while s.worker.count > 1 && bound(&s).state() > PLANNED_BYTES {
        s.worker.count -= 1;
    }
    s.worker.count
}

/// A priced instance may add a note (its price estimated, or its history unread).
const NOTE_PER_ATTEMPT: usize = NOTE_KEPT + 1;

fn size<T: serde::Serialize>(v: &T) -> usize {
    serde_json::to_string(v).map_or(STATE_QUOTA_BYTES, |s| s.len())
}

/// The longest value each variable field of `spec`'s run can take.
struct Worst {
    instance_id: String,
    instance_type: String,
    subnet: String,
    zone: String,
    time: DateTime<Utc>,
    run_id: String,
    manifest: String,
    /// The job's runs the summary may keep (`job.retry.max`; none without it).
    retries: usize,
}

impl Worst {
    fn of(spec: &RunSpec) -> Worst {
        let longest = |v: &[String]| {
            v.iter()
                .max_by_key(|s| s.len())
                .cloned()
                .unwrap_or_default()
        };
        Worst {
            // i- and 17 hex digits.
            instance_id: format!("i-{}", "f".repeat(17)),
            instance_type: longest(&spec.worker.instance_types),
            subnet: longest(&spec.worker.subnets),
            // The longest zone names are Local Zones' (us-west-2-lax-1a, 16).
            zone: "z".repeat(32),
            // Nanoseconds make the longest RFC 3339 form.
            time: Utc
                .timestamp_opt(4_102_444_799, 999_999_999)
                .single()
                .unwrap_or_default(),
            run_id: spec.run_id.clone(),
            retries: spec
                .job
                .as_ref()
                .and_then(|j| j.retry.as_ref())
                .map_or(0, |r| r.max as usize),
            // The worker writes `<its --export target>/manifest.json`: the target is one of its
            // arguments (or the expected prefix).
            manifest: format!(
                "{}/manifest.json",
                spec.worker
                    .args
                    .iter()
                    .map(String::as_str)
                    .chain(spec.expect.export_prefix.iter().map(|u| u.as_str()))
                    .max_by_key(|s| s.len())
                    .unwrap_or_default()
            ),
        }
    }

    fn text(n: usize) -> String {
        "x".repeat(n - 2)
    }

    fn money() -> f64 {
        // 24 characters, the longest an f64 prints.
        -2.225_073_858_507_201_4e-308
    }

    fn price(&self) -> TypePrice {
        TypePrice {
            instance_type: self.instance_type.clone(),
            usd_per_hour: Worst::money(),
            source: Worst::text(DETAIL_KEPT),
        }
    }

    fn attempt(&self, n: u32) -> Attempt {
        let tried = Tried {
            market: Market::OnDemand,
            instance_type: self.instance_type.clone(),
            subnet: self.subnet.clone(),
            code: Worst::text(CODE_KEPT),
            message: Worst::text(TRIED_MESSAGE_KEPT),
        };
        Attempt {
            attempt: n,
            instance_id: self.instance_id.clone(),
            instance_type: self.instance_type.clone(),
            subnet: self.subnet.clone(),
            availability_zone: Some(self.zone.clone()),
            market: Market::OnDemand,
            launched_at: self.time,
            client_token: "t".repeat(64),
            estimate_usd: Worst::money(),
            volume_gib: u32::MAX,
            tried: vec![tried; TRIED_KEPT],
            tried_total: u32::MAX,
            reused: false,
            placement: Some(Worst::text(crate::placement::LINE_KEPT)),
        }
    }

    fn error(&self, cause: usize) -> CaughtError {
        CaughtError {
            error: Worst::text(ERROR_NAME_KEPT),
            cause: Some(Worst::text(cause)),
        }
    }

    /// An error in the run document's top level: a Lambda's, whose cause is
    /// `{"errorType":…,"errorMessage":…}` with the message cut at [`MESSAGE_KEPT`]; as a
    /// string in the document, each of its escapes is escaped again (at most doubled).
    fn top_error(&self) -> CaughtError {
        self.error(2 * (MESSAGE_KEPT + ERROR_NAME_KEPT + 40))
    }

    fn summary(&self) -> serde_json::Value {
        let s = Summary {
            run_id: self.run_id.clone(),
            partitions_done: u64::MAX,
            partitions_failed: u64::MAX,
            rows_in: u64::MAX,
            rows_out: u64::MAX,
            processed_here: u64::MAX,
            // Every stage the worker has (worker/src/stage.rs).
            stages: [
                "indicators",
                "regression",
                "regime",
                "currency-index",
                "arbitrage",
                "causality",
                "validate",
                "export",
            ]
            .map(String::from)
            .to_vec(),
            seconds: Worst::money(),
            manifest: Some(self.manifest.clone()),
            validation: Some(Validation {
                partitions: u64::MAX,
                problems: u64::MAX,
                nulls_beyond_warm_up: u64::MAX,
                non_finite: u64::MAX,
                out_of_range: u64::MAX,
                unexpected_gaps: u64::MAX,
            }),
            // A job's command line is cut by the worker (`JOB_COMMAND_KEPT`).
            job: Some(ephemera_contract::summary::Job {
                command: "c".repeat(ephemera_contract::summary::JOB_COMMAND_KEPT),
                exit_code: i32::MIN,
                seconds: Worst::money(),
                retries: vec![
                    ephemera_contract::summary::Retried {
                        exit_code: i32::MIN,
                        seconds: Worst::money(),
                    };
                    self.retries
                ],
            }),
        };
        serde_json::to_value(s).unwrap_or_default()
    }

    /// A worker's end at its largest: every attempt made, a report and an error (a worker
    /// has one or the other; both is larger), its release.
    fn end(&self, attempts: usize) -> WorkerEnd {
        let all: Vec<Attempt> = (1..=attempts as u32).map(|n| self.attempt(n)).collect();
        WorkerEnd {
            slot: u32::MAX,
            worker: Some(WorkerState {
                slot: u32::MAX,
                attempts: all,
                relaunches_left: u32::MAX,
                heartbeat_seconds: u64::MAX,
                timeout_seconds: u64::MAX,
                budget_seconds: Some(u64::MAX),
                boot_poll_seconds: u64::MAX,
                token_parameter: format!(
                    "/ephemera/runs/{}/task-token/{}",
                    self.run_id, self.instance_id
                ),
                token_reader: format!("{}:{}", "A".repeat(21), self.instance_id),
            }),
            health: Some(HealthState {
                verdict: HealthVerdict::Booting,
                instance_id: self.instance_id.clone(),
                detail: Worst::text(DETAIL_KEPT),
                wait_seconds: u64::MAX,
                checked_at: self.time,
                healthy_at: Some(self.time),
            }),
            result: Some(self.summary()),
            error: Some(self.error(CAUSE_KEPT)),
            released: Some(Released {
                slot: u32::MAX,
                terminated: vec![self.instance_id.clone(); attempts],
                // WorkerLost keeps the release's error as the end's `error`, not twice.
                error: None,
            }),
        }
    }

    fn line(&self) -> WorkerLine {
        WorkerLine {
            slot: u32::MAX,
            attempts: u32::MAX,
            reported: false,
            error: Some(self.error(CAUSE_KEPT)),
            work: Some(Worst::text(WORK_KEPT)),
        }
    }

    fn cost(&self) -> AttemptCost {
        AttemptCost {
            worker: u32::MAX,
            attempt: u32::MAX,
            instance_id: self.instance_id.clone(),
            instance_type: self.instance_type.clone(),
            market: Market::OnDemand,
            availability_zone: Some(self.zone.clone()),
            launched_at: self.time,
            ended_at: self.time,
            billed_seconds: i64::MIN,
            compute_usd: Worst::money(),
            ebs_usd: Worst::money(),
            on_demand_equivalent_usd: Worst::money(),
            average_usd_per_hour: Worst::money(),
            price_source: Worst::text(DETAIL_KEPT),
            state_before: Some(InstanceState::ShuttingDown),
            placement: Some(Worst::text(crate::placement::LINE_KEPT)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(count: u32, relaunches: u32) -> RunSpec {
        let mut spec = RunSpec::parse(&crate::runspec::tests::sample()).unwrap();
        spec.worker.count = count;
        spec.limits.max_relaunches = relaunches;
        spec
    }

    #[test]
    fn a_jobs_retries_count_in_its_workers_reports() {
        let mut with = spec(40, 2);
        with.job = Some(crate::runspec::JobSpec {
            image: None,
            secrets: Default::default(),
            retry: Some(crate::runspec::JobRetry {
                on_exit_codes: vec![75],
                max: 10,
                backoff_seconds: 0,
            }),
        });
        assert!(bound(&with).per_worker > bound(&spec(40, 2)).per_worker);
    }

    #[test]
    fn forty_workers_with_the_default_relaunches_fit_the_plan() {
        let b = bound(&spec(40, 2));
        assert!(b.state() <= PLANNED_BYTES, "{b:?}");
        // Each relaunch adds an attempt to its worker's end and a priced instance to the report.
        let more = bound(&spec(40, 3));
        assert!(more.document > b.document && more.report > b.report);
        assert_eq!(most_workers(&spec(40, 2)), 40);
    }

    #[test]
    fn the_worst_values_are_the_longest_each_type_prints() {
        let w = Worst::of(&RunSpec::parse(&crate::runspec::tests::sample()).unwrap());
        assert_eq!(serde_json::to_string(&Worst::money()).unwrap().len(), 24);
        assert_eq!(
            serde_json::to_string(&w.time).unwrap(),
            "\"2099-12-31T23:59:59.999999999Z\""
        );
        assert_eq!(size(&w.error(CAUSE_KEPT).cause), CAUSE_KEPT);
    }
}
