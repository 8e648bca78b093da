//! The run's report (`$.report`): what it cost, how each worker and attempt ended, what was
//! verified, and where its copies and the month's page are stored. terminate-with-cost-report
//! builds it (`cost_report`); the email (`email`), the HTML page (`report_html`) and the
//! metrics (`metrics`) read it.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::cost::Orchestration;
use crate::instance_state::InstanceState;
use crate::market::Market;
use crate::rundoc::{failure_for, CaughtError};
use crate::runspec::{parse_s3_url, RunSpec};
use crate::snapshot::SnapshotState;
use crate::verify::Verification;

/// One instance the run launched, as the report prices it (from `cost_report::price`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttemptCost {
    /// The worker (`1..=worker.count`) the instance served.
    #[serde(default = "crate::rundoc::first")]
    pub worker: u32,
    /// Which of its worker's launches it was (1 for the first, then each relaunch).
    pub attempt: u32,
    /// The EC2 instance id (`i-…`).
    pub instance_id: String,
    /// The EC2 instance type it ran as (`c7g.large`).
    pub instance_type: String,
    /// Spot or On-Demand, as EC2 describes the instance.
    pub market: Market,
    /// The zone it ran in; None when EC2 no longer said.
    #[serde(default)]
    pub availability_zone: Option<String>,
    /// When it was launched (EC2's launch time).
    pub launched_at: DateTime<Utc>,
    /// When it stopped costing: its terminating transition, or when this report terminated it.
    pub ended_at: DateTime<Utc>,
    /// Seconds EC2 bills from `launched_at` to `ended_at` (whole seconds, 60 s minimum).
    pub billed_seconds: i64,
    /// What its compute cost in USD: the Spot price history over the billed seconds, else
    /// On-Demand.
    pub compute_usd: f64,
    /// What its gp3 root volume cost in USD over the billed seconds.
    pub ebs_usd: f64,
    /// What it would have cost On-Demand in USD, its volume included: the saving's reference.
    pub on_demand_equivalent_usd: f64,
    /// Its compute cost per hour in USD over the billed seconds (what Spot averaged).
    pub average_usd_per_hour: f64,
    /// Where the price came from: spot-price-history, price-list-api, fallback table (dated).
    pub price_source: String,
    /// State before ephemera's terminate call (already terminated, running, …).
    /// The instance's state when terminate-with-cost-report found it (None: unknown to this code).
    pub state_before: Option<InstanceState>,
    /// The order its launch tried candidates in, and the first one's facts
    /// (`placement::Choice::line`, cut at [`crate::placement::LINE_KEPT`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<String>,
}

impl AttemptCost {
    /// Spot took it back: a Spot instance already ending before terminate-with-cost-report
    /// acted.
    pub fn reclaimed(&self) -> bool {
        self.market == Market::Spot && self.state_before.is_some_and(InstanceState::is_ending)
    }
}

/// How long each part of the run took, in seconds (`cost_report::phases`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Phases {
    /// From quota-check's first look to its verdict that the quotas have room; 0 without a wait.
    pub quota_wait_seconds: i64,
    /// From the first healthy worker's launch to its being healthy (else from the first launch to
    /// teardown).
    pub boot_seconds: i64,
    /// From the first worker's being healthy to the start of teardown.
    pub work_seconds: i64,
    /// How long terminate-with-cost-report took to terminate the instances.
    pub teardown_seconds: i64,
    /// From the execution's start to the report.
    pub total_seconds: i64,
}

/// How the run ended, as the email's subject and the report say it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Outcome {
    /// The run ended without an error.
    Succeeded,
    /// The run failed for any other reason (`failure` says which).
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
    /// The outcome's name as the report's JSON and the email's subject spell it (`SUCCEEDED`, …).
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
    /// The RunSpec's `run_id`.
    pub run_id: String,
    /// The Step Functions execution's ARN.
    pub execution: String,
    /// How the run ended.
    pub outcome: Outcome,
    /// The error the run ended with, as caught (`$.error`); absent on success.
    #[serde(default)]
    pub error: Option<CaughtError>,
    /// What the execution fails with (see `failure_for`); absent on success.
    #[serde(default)]
    pub failure: Option<CaughtError>,
    /// The worst cases the cap granted each of the run's launches, summed, in USD.
    pub estimate_usd: f64,
    /// The run's cap, `limits.budget_usd`, in USD.
    pub budget_usd: f64,
    /// What the run cost in USD: compute, EBS and the orchestration.
    pub actual_usd: f64,
    /// The instances' compute, in USD.
    pub compute_usd: f64,
    /// The instances' gp3 volumes, in USD.
    pub ebs_usd: f64,
    /// What the same instances, volumes and orchestration would have cost On-Demand, in USD.
    pub on_demand_equivalent_usd: f64,
    /// What Spot saved against On-Demand on the instances and volumes, in USD.
    pub savings_usd: f64,
    /// What the state machine and its Lambdas cost, from the execution's history.
    pub orchestration: Orchestration,
    /// Every instance the run launched, priced, by worker and attempt.
    pub attempts: Vec<AttemptCost>,
    /// Each of the run's workers: how it ended.
    #[serde(default)]
    pub workers: Vec<WorkerLine>,
    /// How long each part of the run took.
    pub phases: Phases,
    /// The instance ids terminated at teardown and by the lost workers' releases, sorted.
    pub terminated: Vec<String>,
    /// When the report was made.
    pub generated_at: DateTime<Utc>,
    /// What the reader should know of the figures: estimated prices, what could not be read, the
    /// prices' dates.
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
    /// Which of the run's workers (`1..=worker.count`).
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
    /// What a worker's report says it did, in a line ([`crate::caps::WORK_KEPT`] at most); a
    /// job's retries priced at `usd_per_hour`, the rate of the instance they ran on.
    pub fn work_of(result: &serde_json::Value, usd_per_hour: Option<f64>) -> Option<String> {
        let s: crate::contract::Summary = serde_json::from_value(result.clone()).ok()?;
        let line = match &s.job {
            Some(j) => {
                let mut line = format!(
                    "`{}` exited {} after {:.0} s",
                    j.command, j.exit_code, j.seconds
                );
                if !j.retries.is_empty() {
                    let runs: Vec<String> = j
                        .retries
                        .iter()
                        .map(|r| match usd_per_hour {
                            Some(rate) => format!(
                                "exit {} after {:.0} s, ≈${:.4}",
                                r.exit_code,
                                r.seconds,
                                rate * r.seconds / 3600.0
                            ),
                            None => format!("exit {} after {:.0} s", r.exit_code, r.seconds),
                        })
                        .collect();
                    line.push_str(&format!(
                        ", run again {} time{} on the same instance ({})",
                        j.retries.len(),
                        if j.retries.len() == 1 { "" } else { "s" },
                        runs.join(", ")
                    ));
                }
                line
            }
            None => format!(
                "{} partitions done ({} here), {} rows out",
                s.partitions_done, s.processed_here, s.rows_out
            ),
        };
        Some(crate::caps::cap(&line, crate::caps::WORK_KEPT))
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
    /// The bucket that holds both copies.
    pub bucket: String,
    /// The folder, ending in `/` (or empty for the bucket's root).
    pub prefix: String,
}

impl StoredReport {
    /// The HTML report's key (`<prefix>report.html`).
    pub fn html_key(&self) -> String {
        format!("{}report.html", self.prefix)
    }

    /// The JSON report's key (`<prefix>report.json`).
    pub fn json_key(&self) -> String {
        format!("{}report.json", self.prefix)
    }

    /// The HTML report's `s3://` URI.
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
    /// The artifact bucket that holds it.
    pub bucket: String,
    /// Its key: `months/<YYYY-MM>/index.html`.
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

    /// The page's `s3://` URI.
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

/// Where a run's report is stored, decided from the RunSpec alone (never from a worker's
/// report): beside the manifest as the RunSpec places it ([`crate::runspec::WorkerSpec::manifest_url`]:
/// the feature worker's `<export>/manifest.json`; a job's workers each write theirs in
/// `<to>/worker-<n>/`, so a job's report goes in `<to>/`, beside all of them), else in
/// `expect.export_prefix`; a run that exports nothing goes under `runs/<run_id>/` of the
/// function's artifact bucket; None when neither exists.
pub fn report_location(spec: &RunSpec, artifact_bucket: Option<&str>) -> Option<StoredReport> {
    let manifest = spec.worker.manifest_url(1);
    let manifest = manifest.as_deref();
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
                .as_ref()
                .and_then(|p| folder(p.as_str(), false))
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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn a_jobs_line_tells_its_retries_with_their_exit_codes() {
        let job = |retries: serde_json::Value| {
            serde_json::json!({"run_id": "r", "partitions_done": 0, "partitions_failed": 0,
                "rows_in": 0, "rows_out": 0, "stages": [], "seconds": 9.0,
                "job": {"command": "python3 train.py", "exit_code": 0, "seconds": 9.0,
                        "retries": retries}})
        };
        assert_eq!(
            WorkerLine::work_of(&job(serde_json::json!([])), Some(0.36)).unwrap(),
            "`python3 train.py` exited 0 after 9 s"
        );
        assert_eq!(
            WorkerLine::work_of(&job(serde_json::json!([
                {"exit_code": 75, "seconds": 4.2}, {"exit_code": 137, "seconds": 61.0}])), Some(0.36))
            .unwrap(),
            "`python3 train.py` exited 0 after 9 s, run again 2 times on the same instance (exit 75 after 4 s, ≈$0.0004, exit 137 after 61 s, ≈$0.0061)"
        );
        assert!(WorkerLine::work_of(
            &job(serde_json::json!([{"exit_code": 75, "seconds": 4.2}])),
            None
        )
        .unwrap()
        .ends_with("(exit 75 after 4 s)"));
    }

    #[test]
    fn console_url_encodes_all_but_slashes() {
        assert_eq!(
            s3_console_url("b", "runs/a b+c/report.html"),
            "https://s3.console.aws.amazon.com/s3/object/b?prefix=runs/a%20b%2Bc/report.html"
        );
    }

    #[test]
    fn the_report_goes_beside_the_manifest_the_runspec_places_else_the_export_prefix_else_the_artifact_bucket(
    ) {
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
        // No arguments that store anything: the export prefix.
        assert_eq!(
            report_location(&spec, Some("art")),
            at("out", "runs/fx-2023/")
        );
        // The feature worker's `--export`, even when it differs from the export prefix; what
        // a worker's report says is not asked.
        v["worker"]["args"] = serde_json::json!(["run", "--export", "s3://out/x/y"]);
        let spec = RunSpec::parse(&v).unwrap();
        assert_eq!(
            spec.worker.manifest_url(1).unwrap(),
            "s3://out/x/y/manifest.json"
        );
        assert_eq!(report_location(&spec, Some("art")), at("out", "x/y/"));
        // A directory on the instance does not decide.
        v["worker"]["args"] = serde_json::json!(["run", "--export", "/tmp/out"]);
        let spec = RunSpec::parse(&v).unwrap();
        assert_eq!(spec.worker.manifest_url(1), None);
        assert_eq!(report_location(&spec, None), at("out", "runs/fx-2023/"));
        v["expect"]["export_prefix"] = "s3://out/no-slash".into();
        let spec = RunSpec::parse(&v).unwrap();
        assert_eq!(report_location(&spec, None), at("out", "no-slash/"));
        v["expect"] = serde_json::json!({});
        let spec = RunSpec::parse(&v).unwrap();
        assert_eq!(
            report_location(&spec, Some("art")),
            at("art", "runs/fx-2023/")
        );
        assert_eq!(report_location(&spec, None), None);
        // A job: beside every worker's folder of `--to`, not in the first one's.
        v["worker"]["args"] = serde_json::json!([
            "exec",
            "--outputs",
            "o",
            "--to",
            "s3://out/runs/j/",
            "--",
            "sh"
        ]);
        let spec = RunSpec::parse(&v).unwrap();
        assert_eq!(
            spec.worker.manifest_url(2).unwrap(),
            "s3://out/runs/j/worker-2/manifest.json"
        );
        assert_eq!(report_location(&spec, None), at("out", "runs/j/"));
        v["worker"]["args"] =
            serde_json::json!(["exec", "--outputs", "o", "--to=s3://out", "--", "sh"]);
        let spec = RunSpec::parse(&v).unwrap();
        assert_eq!(
            spec.worker.manifest_url(1).unwrap(),
            "s3://out/worker-1/manifest.json"
        );
        assert_eq!(report_location(&spec, None), at("out", ""));
        // A `--to` after the job's `--` is the job's own argument, not the worker's.
        v["worker"]["args"] =
            serde_json::json!(["exec", "--", "cp", "--to", "s3://out/elsewhere/"]);
        let spec = RunSpec::parse(&v).unwrap();
        assert_eq!(spec.worker.manifest_url(1), None);
    }
}
