//! The run document the state machine carries between states (`$.run`, `$.quota`, `$.workers`,
//! `$.verification`, `$.report`; in each worker's Map iteration `$.slot`, `$.worker`,
//! `$.health`, `$.result`, `$.error`): each Lambda's typed input and output.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::capacity::Tried;
#[cfg(doc)]
use crate::contract::RunParameters;
use crate::cost::Orchestration;
use crate::instance_state::InstanceState;
use crate::runspec::{parse_s3_url, Market, RunSpec};
use crate::snapshot::SnapshotState;
use crate::verify::Check;

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
    pub attempt: u32,
    pub instance_id: String,
    pub instance_type: String,
    pub subnet: String,
    #[serde(default)]
    pub availability_zone: Option<String>,
    pub market: Market,
    pub launched_at: DateTime<Utc>,
    pub client_token: String,
    pub estimate_usd: f64,
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
    pub relaunches_left: u32,
    /// Read by the AwaitCompletion state (`HeartbeatSecondsPath`, `TimeoutSecondsPath`). With a
    /// money deadline, the timeout is its runtime and the stop allowance: the backstop of a
    /// worker that does not stop itself.
    pub heartbeat_seconds: u64,
    pub timeout_seconds: u64,
    /// The current attempt's money deadline: the runtime the run's cap granted it when less
    /// than `limits.max_runtime_seconds` (`crate::budget::grant`), handed to the worker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_seconds: Option<u64>,
    pub boot_poll_seconds: u64,
    /// The current attempt's token parameter ([`RunParameters::task_token`]) and the value of
    /// its [`crate::tags::READER`] tag ([`token_reader`]): AwaitCompletion creates it with both.
    pub token_parameter: String,
    pub token_reader: String,
}

fn first() -> u32 {
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
    pub slot: u32,
    #[serde(default)]
    pub worker: Option<WorkerState>,
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
    pub slot: u32,
    pub terminated: Vec<String>,
    /// The error that lost the worker, its cause cut to [`crate::payload::CAUSE_KEPT`]: the
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
    pub verdict: HealthVerdict,
    pub instance_id: String,
    pub detail: String,
    pub wait_seconds: u64,
    pub checked_at: DateTime<Utc>,
    #[serde(default)]
    pub healthy_at: Option<DateTime<Utc>>,
}

/// `$.verification`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verification {
    pub ok: bool,
    pub checks: Vec<Check>,
    pub verified_at: DateTime<Utc>,
    /// What the manifest lists, when the worker reported one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outputs: Option<Outputs>,
}

/// A run's outputs as its manifests list them: the feature worker's one export, or every
/// worker's share of a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outputs {
    /// The manifest; the first worker's when there are several (each worker's report names its
    /// own, `$.workers[i].result.manifest`: listing them here again would cost 40 URLs of up to
    /// a kilobyte each of the state payload).
    pub manifest: String,
    /// Objects and bytes of every manifest together.
    pub objects: u64,
    pub bytes: u64,
    /// How many manifests: one per worker for a job.
    #[serde(default = "one_manifest", skip_serializing_if = "is_one")]
    pub manifests: u32,
}

fn one_manifest() -> u32 {
    1
}

fn is_one(n: &u32) -> bool {
    *n == 1
}

impl Outputs {
    /// Where the outputs are listed, as the report says it: the manifest, or how many there are
    /// and the first.
    pub fn listed_in(&self) -> String {
        match self.manifests {
            0 | 1 => self.manifest.clone(),
            n => format!("{n} manifests, one per worker ({} …)", self.manifest),
        }
    }
}

/// A Step Functions error as caught (`Catch` with `ResultPath: $.error`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaughtError {
    #[serde(rename = "Error")]
    pub error: String,
    #[serde(rename = "Cause", default)]
    pub cause: Option<String>,
}

impl CaughtError {
    /// This error with its name and cause cut to the sizes the run document plans for
    /// ([`crate::payload`]).
    pub fn capped(&self) -> CaughtError {
        use crate::payload::{cap, CAUSE_KEPT, ERROR_NAME_KEPT};
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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttemptCost {
    /// The worker (`1..=worker.count`) the instance served.
    #[serde(default = "first")]
    pub worker: u32,
    pub attempt: u32,
    pub instance_id: String,
    pub instance_type: String,
    pub market: Market,
    #[serde(default)]
    pub availability_zone: Option<String>,
    pub launched_at: DateTime<Utc>,
    pub ended_at: DateTime<Utc>,
    pub billed_seconds: i64,
    pub compute_usd: f64,
    pub ebs_usd: f64,
    pub on_demand_equivalent_usd: f64,
    pub average_usd_per_hour: f64,
    /// Where the price came from: spot-price-history, price-list-api, fallback table (dated).
    pub price_source: String,
    /// State before ephemera's terminate call (already terminated, running, …).
    /// The instance's state when terminate-with-cost-report found it (None: unknown to this code).
    pub state_before: Option<InstanceState>,
}

impl AttemptCost {
    /// Spot took it back: a Spot instance already ending before terminate-with-cost-report
    /// acted.
    pub fn reclaimed(&self) -> bool {
        self.market == Market::Spot && self.state_before.is_some_and(InstanceState::is_ending)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Phases {
    pub quota_wait_seconds: i64,
    pub boot_seconds: i64,
    pub work_seconds: i64,
    pub teardown_seconds: i64,
    pub total_seconds: i64,
}

/// How the run ended, as the email's subject and the report say it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Outcome {
    Succeeded,
    Failed,
    /// A worker was stopped at the money deadline the run's cap granted it
    /// (`Worker.BudgetExhausted`): the run spent its cap, and stopped there. The execution
    /// itself fails (Step Functions knows only SUCCEEDED and FAILED).
    BudgetExhausted,
    /// The execution was stopped before it ended (`Ephemera.Cancelled`): torn down and
    /// reported by the stack's rule on its ABORTED status. The execution itself is ABORTED.
    Cancelled,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Succeeded => "SUCCEEDED",
            Outcome::Failed => "FAILED",
            Outcome::BudgetExhausted => "BUDGET_EXHAUSTED",
            Outcome::Cancelled => "CANCELLED",
        }
    }

    /// How a run that ended with `error` (none: it succeeded) ended.
    pub fn of(error: Option<&CaughtError>) -> Outcome {
        match error.map(|e| failure_for(e).error) {
            None => Outcome::Succeeded,
            Some(e) if e == crate::names::BUDGET_EXHAUSTED => Outcome::BudgetExhausted,
            Some(e) if e == crate::names::CANCELLED => Outcome::Cancelled,
            Some(_) => Outcome::Failed,
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `$.report`: what the run cost and how it went; also the JSON sent by SNS.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CostReport {
    pub run_id: String,
    pub execution: String,
    pub outcome: Outcome,
    #[serde(default)]
    pub error: Option<CaughtError>,
    /// What the execution fails with (see `failure_for`); absent on success.
    #[serde(default)]
    pub failure: Option<CaughtError>,
    pub estimate_usd: f64,
    pub budget_usd: f64,
    pub actual_usd: f64,
    pub compute_usd: f64,
    pub ebs_usd: f64,
    pub on_demand_equivalent_usd: f64,
    pub savings_usd: f64,
    pub orchestration: Orchestration,
    pub attempts: Vec<AttemptCost>,
    /// Each of the run's workers: how it ended.
    #[serde(default)]
    pub workers: Vec<WorkerLine>,
    pub phases: Phases,
    pub terminated: Vec<String>,
    pub generated_at: DateTime<Utc>,
    pub notes: Vec<String>,
    /// verify-completion's checks (`$.verification`); absent when the run ended before them.
    #[serde(default)]
    pub verification: Option<Verification>,
    /// Where `report.html` and `report.json` were stored; absent when they were not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stored: Option<StoredReport>,
    /// The month's page (every run of the month from the ledger), written with this report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub month_page: Option<MonthPage>,
    /// The snapshot taken before the workers wrote (`database.snapshot_before`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<SnapshotState>,
}

/// One worker in the report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerLine {
    pub slot: u32,
    /// Instances it launched (one plus its relaunches).
    pub attempts: u32,
    /// It sent its report (the run's summary).
    pub reported: bool,
    /// It was lost: why (its partitions were left for the others to take over).
    #[serde(default)]
    pub error: Option<CaughtError>,
    /// What it reported doing: a job's command and exit, or the feature worker's partitions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub work: Option<String>,
}

impl WorkerLine {
    /// What a worker's report says it did, in a line ([`crate::payload::WORK_KEPT`] at most).
    pub fn work_of(result: &serde_json::Value) -> Option<String> {
        let s: crate::contract::Summary = serde_json::from_value(result.clone()).ok()?;
        let line = match &s.job {
            Some(j) => format!(
                "`{}` exited {} after {:.0} s",
                j.command, j.exit_code, j.seconds
            ),
            None => format!(
                "{} partitions done ({} here), {} rows out",
                s.partitions_done, s.processed_here, s.rows_out
            ),
        };
        Some(crate::payload::cap(&line, crate::payload::WORK_KEPT))
    }

    /// How the worker ended, as the email and the page say it.
    pub fn ended(&self) -> String {
        if let (None, true, Some(w)) = (&self.error, self.reported, &self.work) {
            return format!("reported: {w}");
        }
        match (&self.error, self.reported) {
            (Some(e), _) => format!(
                "lost: {}{}",
                e.error,
                e.cause
                    .as_deref()
                    .map(|c| format!(" ({c})"))
                    .unwrap_or_default()
            ),
            (None, true) => "reported".into(),
            (None, false) => "did not report".into(),
        }
    }
}

/// The report's copies in S3: `report.html` and `report.json` in one folder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredReport {
    pub bucket: String,
    /// The folder, ending in `/` (or empty for the bucket's root).
    pub prefix: String,
}

impl StoredReport {
    pub fn html_key(&self) -> String {
        format!("{}report.html", self.prefix)
    }

    pub fn json_key(&self) -> String {
        format!("{}report.json", self.prefix)
    }

    pub fn html_uri(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.html_key())
    }

    /// The S3 console's page for the HTML report (sign-in, then a download or open button).
    pub fn html_console_url(&self) -> String {
        s3_console_url(&self.bucket, &self.html_key())
    }
}

/// Where the month's page is: one per month in the artifact bucket, rewritten by every report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MonthPage {
    /// `YYYY-MM`.
    pub month: String,
    pub bucket: String,
    pub key: String,
}

impl MonthPage {
    /// `months/<YYYY-MM>/index.html` of `bucket`.
    pub fn of(bucket: &str, month: &str) -> MonthPage {
        MonthPage {
            month: month.into(),
            bucket: bucket.into(),
            key: format!("months/{month}/index.html"),
        }
    }

    pub fn uri(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.key)
    }
}

/// `https://s3.console.aws.amazon.com/s3/object/<bucket>?prefix=<key>`, the key percent-encoded
/// except for `/` so that it stays readable.
pub fn s3_console_url(bucket: &str, key: &str) -> String {
    let mut prefix = String::new();
    for b in key.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                prefix.push(b as char)
            }
            _ => prefix.push_str(&format!("%{b:02X}")),
        }
    }
    format!("https://s3.console.aws.amazon.com/s3/object/{bucket}?prefix={prefix}")
}

/// Where a run's report is stored: beside the manifest, i.e. in the folder of the worker's
/// manifest (`$.result.manifest`), or of `expect.export_prefix` when the run ended before one
/// was written (the worker writes `<export target>/manifest.json`); a job's workers each write
/// theirs in `<to>/worker-<n>/`, so a job's report goes in `<to>/`, beside all of them; a run
/// that exports nothing goes under `runs/<run_id>/` of the function's artifact bucket; None
/// when neither exists.
pub fn report_location(
    spec: &RunSpec,
    manifest: Option<&str>,
    artifact_bucket: Option<&str>,
) -> Option<StoredReport> {
    let folder = |url: &str, is_file: bool| {
        let (bucket, key) = parse_s3_url(url)?;
        let prefix = if is_file {
            let dir = key.rfind('/').map_or("", |i| &key[..=i]);
            match spec.worker.is_job() {
                true => above_worker_folder(dir).to_string(),
                false => dir.to_string(),
            }
        } else if key.is_empty() || key.ends_with('/') {
            key.to_string()
        } else {
            format!("{key}/")
        };
        Some(StoredReport {
            bucket: bucket.to_string(),
            prefix,
        })
    };
    manifest
        .and_then(|m| folder(m, true))
        .or_else(|| {
            spec.expect
                .export_prefix
                .as_deref()
                .and_then(|p| folder(p, false))
        })
        .or_else(|| {
            artifact_bucket.map(|b| StoredReport {
                bucket: b.to_string(),
                prefix: format!("runs/{}/", spec.run_id),
            })
        })
}

/// `folder` (ending in '/') without its last segment when that is a job's worker folder
/// (`worker-<n>/`, [`crate::contract::manifest::worker_folder`]).
fn above_worker_folder(folder: &str) -> &str {
    let inner = folder.strip_suffix('/').unwrap_or(folder);
    let (parent, last) = inner.rsplit_once('/').map_or(("", inner), |(p, l)| (p, l));
    let is_worker = (1..=crate::runspec::MAX_WORKERS)
        .any(|n| last == crate::contract::manifest::worker_folder(n));
    match is_worker {
        true if parent.is_empty() => "",
        true => &folder[..=parent.len()],
        false => folder,
    }
}

/// The email's lines on the older snapshots a verified run deleted, or why it could not.
fn snapshot_housekeeping(s: &SnapshotState) -> String {
    let mut b = String::new();
    if let Some(p) = &s.pruned {
        b.push_str(&format!(
            "  older snapshots deleted (database.keep_snapshots = {}): {}\n",
            p.keep,
            match p.deleted_count {
                0 => "none".to_string(),
                n if n as usize > p.deleted.len() => {
                    format!(
                        "{} and {} more",
                        p.deleted.join(", "),
                        n as usize - p.deleted.len()
                    )
                }
                _ => p.deleted.join(", "),
            }
        ));
    }
    if let Some(e) = &s.prune_error {
        b.push_str(&format!(
            "  older snapshots not deleted: {}: {}\n",
            e.error,
            e.cause.as_deref().unwrap_or("")
        ));
    }
    b
}

/// The email: a subject under 100 characters (run, outcome, cost) and a readable body that ends
/// with the JSON report.
pub fn render_email(r: &CostReport) -> (String, String) {
    let tail = format!(": {} ${:.2}", r.outcome, r.actual_usd);
    let room = 99 - "ephemera ".len() - tail.len();
    let run: String = if r.run_id.chars().count() > room {
        let mut s: String = r.run_id.chars().take(room.saturating_sub(1)).collect();
        s.push('~');
        s
    } else {
        r.run_id.clone()
    };
    let subject = format!("ephemera {run}{tail}");

    let mut b = String::new();
    email_outcome(r, &mut b);
    email_cost_and_work(r, &mut b);
    email_workers(r, &mut b);
    email_tail(r, &mut b);
    (subject, b)
}

/// The outcome, the error, where the page is and the snapshot taken.
fn email_outcome(r: &CostReport, b: &mut String) {
    b.push_str(&format!("Run {} {}.\n", r.run_id, r.outcome));
    if r.outcome == Outcome::Cancelled {
        b.push_str(
            "The run was cancelled before it ended: every instance was terminated (a job got SIGTERM and its grace, its checkpoint saved) and the month's ledger holds what it cost.\n",
        );
    }
    if r.outcome == Outcome::BudgetExhausted {
        b.push_str(&format!(
            "The run reached its cap, limits.budget_usd ${:.2}: its work was stopped at the money deadline (the job's grace given, its checkpoint saved) and nothing more was launched.\n",
            r.budget_usd
        ));
    }
    // The presentable form: a Lambda's JSON cause reduced to its message.
    if let Some(e) = r.failure.as_ref().or(r.error.as_ref()) {
        b.push_str(&format!(
            "Error: {}{}\n",
            e.error,
            e.cause
                .as_deref()
                .map(|c| format!(" - {c}"))
                .unwrap_or_default()
        ));
    }
    if let Some(s) = &r.stored {
        b.push_str(&format!(
            "Report with its timeline (HTML): {}\n  in the S3 console: {}\n",
            s.html_uri(),
            s.html_console_url()
        ));
    }
    if let Some(m) = &r.month_page {
        b.push_str(&format!(
            "The month at a glance ({}): {}\n  in the S3 console: {}\n",
            m.month,
            m.uri(),
            s3_console_url(&m.bucket, &m.key)
        ));
    }
    if let Some(s) = &r.snapshot {
        b.push_str(&format!(
            "Snapshot before writing: {} of {} {} ({}, requested {})\n",
            s.identifier,
            s.kind.noun(),
            s.source,
            s.status,
            s.requested_at.format("%Y-%m-%d %H:%M:%S UTC")
        ));
        b.push_str(&snapshot_housekeeping(s));
    }
}

/// What it cost against the estimate and the budget, the time per phase, what was done and
/// what it left.
fn email_cost_and_work(r: &CostReport, b: &mut String) {
    b.push_str(&format!(
        "\nCost: ${:.4} actual (compute ${:.4}, EBS ${:.4}, orchestration ${:.4})\n",
        r.actual_usd, r.compute_usd, r.ebs_usd, r.orchestration.usd
    ));
    b.push_str(&format!(
        "Estimate before launch ${:.4}, budget ${:.2}, On-Demand would have cost ${:.4} (saved ${:.4})\n",
        r.estimate_usd, r.budget_usd, r.on_demand_equivalent_usd, r.savings_usd
    ));
    let p = &r.phases;
    b.push_str(&format!(
        "Time: quota wait {} s, boot {} s, work {} s, teardown {} s, total {} s\n",
        p.quota_wait_seconds, p.boot_seconds, p.work_seconds, p.teardown_seconds, p.total_seconds
    ));
    if let [w] = r.workers.as_slice() {
        if let (None, Some(work)) = (&w.error, &w.work) {
            b.push_str(&format!("Work: {work}\n"));
        }
    }
    if let Some(o) = r.verification.as_ref().and_then(|v| v.outputs.as_ref()) {
        b.push_str(&format!(
            "Outputs: {} object(s), {} bytes, listed in {}\n",
            o.objects,
            o.bytes,
            o.listed_in()
        ));
    }
}

/// Each worker (when there are several, or one was lost) and each instance.
fn email_workers(r: &CostReport, b: &mut String) {
    if r.workers.len() > 1 || r.workers.iter().any(|w| w.error.is_some()) {
        b.push_str("\nWorkers:\n");
        for w in &r.workers {
            b.push_str(&format!(
                "  worker {}: {} instance(s), {}\n",
                w.slot,
                w.attempts,
                w.ended()
            ));
        }
    }
    b.push_str("\nAttempts:\n");
    let many = r.workers.len() > 1;
    for a in &r.attempts {
        b.push_str(&format!(
            "  {}#{} {} {} {} in {}: {} s billed, ${:.4} ({}), was {}\n",
            if many {
                format!("worker {} ", a.worker)
            } else {
                String::new()
            },
            a.attempt,
            a.instance_id,
            a.instance_type,
            a.market.as_str(),
            a.availability_zone.as_deref().unwrap_or("?"),
            a.billed_seconds,
            a.compute_usd,
            a.price_source,
            a.state_before.map_or("unknown", InstanceState::name)
        ));
    }
    if r.attempts.is_empty() {
        b.push_str("  none: nothing was launched\n");
    }
}

/// What was terminated, the notes, the execution and the JSON report.
fn email_tail(r: &CostReport, b: &mut String) {
    b.push_str(&format!(
        "\nTerminated: {}\n",
        if r.terminated.is_empty() {
            "nothing left to terminate".to_string()
        } else {
            r.terminated.join(", ")
        }
    ));
    for n in &r.notes {
        b.push_str(&format!("Note: {n}\n"));
    }
    b.push_str(&format!("Execution: {}\n", r.execution));
    b.push_str("\n--- report (JSON) ---\n");
    b.push_str(&serde_json::to_string_pretty(r).unwrap_or_default());
    b.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn subject_stays_under_100_characters() {
        let mut r = CostReport {
            run_id: "x".repeat(200),
            execution: "arn".into(),
            outcome: Outcome::Succeeded,
            error: None,
            failure: None,
            estimate_usd: 1.0,
            budget_usd: 2.0,
            actual_usd: 0.1234,
            compute_usd: 0.1,
            ebs_usd: 0.02,
            on_demand_equivalent_usd: 0.3,
            savings_usd: 0.2,
            orchestration: Orchestration::default(),
            attempts: vec![],
            workers: vec![],
            snapshot: None,
            phases: Phases::default(),
            terminated: vec![],
            generated_at: Utc::now(),
            notes: vec![],
            verification: None,
            stored: None,
            month_page: None,
        };
        let (s, body) = render_email(&r);
        assert!(s.chars().count() < 100, "{}", s.len());
        assert!(s.ends_with(": SUCCEEDED $0.12"), "{s}");
        assert!(body.contains("nothing was launched"));
        r.run_id = "fx-2023".into();
        assert_eq!(render_email(&r).0, "ephemera fx-2023: SUCCEEDED $0.12");
        let json_part = body.split("--- report (JSON) ---\n").nth(1).unwrap();
        let back: CostReport = serde_json::from_str(json_part).unwrap();
        assert_eq!(back.outcome, Outcome::Succeeded);
        assert!(
            !body.contains("S3 console"),
            "no link when nothing was stored"
        );

        r.stored = Some(StoredReport {
            bucket: "out".into(),
            prefix: "runs/fx-2023/".into(),
        });
        let (_, body) = render_email(&r);
        assert!(
            body.contains("(HTML): s3://out/runs/fx-2023/report.html\n  in the S3 console: https://s3.console.aws.amazon.com/s3/object/out?prefix=runs/fx-2023/report.html\n"),
            "{body}"
        );
        // A job's run: what it ran and what it left, in words.
        r.workers = vec![WorkerLine {
            slot: 1,
            attempts: 2,
            reported: true,
            error: None,
            work: WorkerLine::work_of(&serde_json::json!({
                "run_id": "fx-2023", "partitions_done": 0, "partitions_failed": 0,
                "rows_in": 0, "rows_out": 0, "seconds": 811.6,
                "job": {"command": "python3 train.py --epochs 3", "exit_code": 0, "seconds": 811.6}
            })),
        }];
        r.verification = Some(Verification {
            ok: true,
            checks: vec![],
            verified_at: Utc::now(),
            outputs: Some(Outputs {
                manifest: "s3://out/runs/fx-2023/manifest.json".into(),
                objects: 3,
                bytes: 9437193,
                manifests: 1,
            }),
        });
        let (_, body) = render_email(&r);
        assert!(
            body.contains("Work: `python3 train.py --epochs 3` exited 0 after 812 s\nOutputs: 3 object(s), 9437193 bytes, listed in s3://out/runs/fx-2023/manifest.json\n"),
            "{body}"
        );
        // A job's workers each list their share: the report says how many manifests.
        if let Some(o) = r.verification.as_mut().and_then(|v| v.outputs.as_mut()) {
            o.manifest = "s3://out/runs/fx-2023/worker-1/manifest.json".into();
            o.manifests = 2;
        }
        let (_, body) = render_email(&r);
        assert!(
            body.contains("Outputs: 3 object(s), 9437193 bytes, listed in 2 manifests, one per worker (s3://out/runs/fx-2023/worker-1/manifest.json …)\n"),
            "{body}"
        );
        // One manifest is not said on the wire, and outputs written before the count read as one.
        let mut one = r.verification.clone().unwrap().outputs.unwrap();
        one.manifests = 1;
        let wire = serde_json::to_value(&one).unwrap();
        assert!(wire.get("manifests").is_none(), "{wire}");
        assert_eq!(serde_json::from_value::<Outputs>(wire).unwrap(), one);
        // Reports stored before these fields existed still read.
        let mut old = serde_json::to_value(&r).unwrap();
        old.as_object_mut().unwrap().remove("verification");
        old.as_object_mut().unwrap().remove("stored");
        let old: CostReport = serde_json::from_value(old).unwrap();
        assert_eq!((old.verification, old.stored), (None, None));
    }
    #[test]
    fn a_worker_stopped_at_the_money_deadline_ends_the_run_budget_exhausted() {
        let caught = |e: &str| CaughtError {
            error: e.into(),
            cause: Some("why".into()),
        };
        assert_eq!(Outcome::of(None), Outcome::Succeeded);
        assert_eq!(Outcome::of(Some(&caught("Worker.Failed"))), Outcome::Failed);
        assert_eq!(
            Outcome::of(Some(&caught(crate::names::BUDGET_EXHAUSTED))),
            Outcome::BudgetExhausted
        );
        assert_eq!(
            serde_json::to_value(Outcome::BudgetExhausted).unwrap(),
            "BUDGET_EXHAUSTED"
        );
        assert_eq!(
            serde_json::to_value(Outcome::Succeeded).unwrap(),
            "SUCCEEDED"
        );
    }

    #[test]
    fn console_url_encodes_all_but_slashes() {
        assert_eq!(
            s3_console_url("b", "runs/a b+c/report.html"),
            "https://s3.console.aws.amazon.com/s3/object/b?prefix=runs/a%20b%2Bc/report.html"
        );
    }

    #[test]
    fn the_report_goes_beside_the_manifest_else_the_export_prefix_else_the_artifact_bucket() {
        let mut v = serde_json::json!({
            "run_id": "fx-2023",
            "worker": {"instance_types": ["c7g.large"], "subnets": ["subnet-0a1b2c3d"],
                       "image": "ami-0a1b2c3d", "artifact": "s3://art/w"},
            "limits": {"max_runtime_seconds": 3600, "budget_usd": 1},
            "expect": {"export_prefix": "s3://out/runs/fx-2023/"}
        });
        let spec = RunSpec::parse(&v).unwrap();
        let at = |b: &str, p: &str| {
            Some(StoredReport {
                bucket: b.into(),
                prefix: p.into(),
            })
        };
        // The manifest's folder, even when it differs from the export prefix.
        assert_eq!(
            report_location(&spec, Some("s3://out/x/y/manifest.json"), Some("art")),
            at("out", "x/y/")
        );
        assert_eq!(
            report_location(&spec, Some("s3://out/manifest.json"), None),
            at("out", "")
        );
        // No manifest (the run failed before its export): where it would have been.
        assert_eq!(
            report_location(&spec, None, Some("art")),
            at("out", "runs/fx-2023/")
        );
        // A manifest that is no s3:// URL does not decide.
        assert_eq!(
            report_location(&spec, Some("/tmp/out/manifest.json"), None),
            at("out", "runs/fx-2023/")
        );
        v["expect"]["export_prefix"] = "s3://out/no-slash".into();
        let spec = RunSpec::parse(&v).unwrap();
        assert_eq!(report_location(&spec, None, None), at("out", "no-slash/"));
        v["expect"] = serde_json::json!({});
        let spec = RunSpec::parse(&v).unwrap();
        assert_eq!(
            report_location(&spec, None, Some("art")),
            at("art", "runs/fx-2023/")
        );
        assert_eq!(report_location(&spec, None, None), None);
        // A job: beside every worker's folder, not in the first one's.
        v["worker"]["args"] = serde_json::json!(["exec", "--", "sh"]);
        let spec = RunSpec::parse(&v).unwrap();
        assert_eq!(
            report_location(&spec, Some("s3://out/runs/j/worker-2/manifest.json"), None),
            at("out", "runs/j/")
        );
        assert_eq!(
            report_location(&spec, Some("s3://out/worker-1/manifest.json"), None),
            at("out", "")
        );
        // A folder that is not a worker's stays where it is.
        assert_eq!(
            report_location(&spec, Some("s3://out/runs/j/manifest.json"), None),
            at("out", "runs/j/")
        );
        assert_eq!(
            report_location(&spec, Some("s3://out/runs/worker-x/manifest.json"), None),
            at("out", "runs/worker-x/")
        );
    }

    #[test]
    fn an_attempt_keeps_its_last_refusals_and_counts_them_all() {
        let refusal = |n: usize| crate::capacity::Tried {
            market: crate::runspec::Market::Spot,
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
