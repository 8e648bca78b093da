//! The RunSpec: what the user asks for, parsed strictly and validated field by field.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::catalog;
use crate::job_secrets;
use crate::market::MarketPolicy;
use crate::s3_url::S3Url;

/// Execution input. Unknown fields are refused so a typo never silently falls back to a default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunSpec {
    /// The JSON Schema an editor checks the file against (`runspec.schema.json`); not read.
    #[serde(rename = "$schema", default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<String>,
    /// The run's name: 1–64 of `A-Za-z0-9-_.`; it names the run's tags, SSM paths and S3 folders.
    pub run_id: String,
    /// What to launch and run: the candidates, the image, the worker binary and its arguments.
    pub worker: WorkerSpec,
    /// What to do when the vCPU quotas have no room for the run.
    #[serde(default)]
    pub quota: QuotaSpec,
    /// How a launch orders its candidates (`crate::placement`).
    #[serde(default)]
    pub capacity: CapacitySpec,
    /// The run's hard limits: runtime, money, boot and heartbeat timeouts, relaunches.
    pub limits: Limits,
    /// What verify-completion demands of the workers' reports and manifests.
    #[serde(default)]
    pub expect: Expectations,
    /// Where the report is sent.
    #[serde(default)]
    pub notify: Notify,
    /// The user's cost-allocation tags, added to every instance and volume.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// Poll intervals.
    #[serde(default)]
    pub waits: Waits,
    /// What happens to the workers' database before they write to it.
    #[serde(default)]
    pub database: Database,
    /// A job's container image (`crate::image`): the command in `worker.args` runs in it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<JobSpec>,
}

/// The job's container and its secrets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// The image the job's command (`worker.args` after `--`) runs in: a private ECR
    /// repository's (`<account>.dkr.ecr.<region>.amazonaws.com/<name>:<tag>`, pulled with the
    /// instance role's own credentials) or a public registry's. Needs an AMI with a container
    /// runtime in `worker.image` (docs/container.md). Without it the command runs on the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Environment variables the job gets from secrets: `{"NAME": "<ARN>"}`, each a Secrets
    /// Manager secret's ARN or an SSM SecureString parameter's, in the stack's region. The
    /// worker reads each once at start and gives the job its value (never on a command line);
    /// the value is redacted from every line of job text that leaves the instance.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, String>,
    /// Runs the command again when it fails with one of these exit codes (an `exec` job):
    /// on the same instance, after `backoff_seconds`, at most `max` times, its working and
    /// checkpoint directories as it left them. Every run counts against the attempt's runtime
    /// (`limits.max_runtime_seconds`) and so the budget; a Spot relaunch is separate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<JobRetry>,
}

/// `job.retry`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JobRetry {
    /// The exit codes that are retried (1–255; 128 + N is a kill by signal N, e.g. 137 for the
    /// OOM killer's SIGKILL).
    pub on_exit_codes: Vec<i32>,
    /// How many times at most (1–10).
    pub max: u32,
    /// Seconds between a failed run and the next (0–3600).
    #[serde(default)]
    pub backoff_seconds: u64,
}

/// What happens to the workers' database before they write to it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Database {
    /// An RDS snapshot of this instance or cluster, taken and waited for before any worker is
    /// launched; the run does not start without it.
    #[serde(default)]
    pub snapshot_before: Option<SnapshotSource>,
    /// How long the snapshot may take to become available.
    #[serde(default = "default_snapshot_timeout")]
    pub snapshot_timeout_seconds: u64,
    /// After a run whose outputs verified, how many of ephemera's snapshots of the same source
    /// to keep, this run's included; older ones are deleted (RDS allows 100 manual snapshots a
    /// region). 0 keeps every one.
    #[serde(default = "default_keep_snapshots")]
    pub keep_snapshots: u32,
}

impl Default for Database {
    fn default() -> Self {
        Database {
            snapshot_before: None,
            snapshot_timeout_seconds: default_snapshot_timeout(),
            keep_snapshots: default_keep_snapshots(),
        }
    }
}

fn default_keep_snapshots() -> u32 {
    3
}

/// RDS's default quota of manual snapshots a region
/// (<https://docs.aws.amazon.com/AmazonRDS/latest/UserGuide/CHAP_Limits.html>).
pub const MAX_KEEP_SNAPSHOTS: u32 = 100;

fn default_snapshot_timeout() -> u64 {
    3600
}

/// The RDS source of the snapshot: a DB instance, or an Aurora DB cluster (whose snapshot is a
/// cluster snapshot).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SnapshotSource {
    /// A DB instance identifier: its snapshot is a DB snapshot.
    #[serde(default)]
    pub instance: Option<String>,
    /// An Aurora DB cluster identifier: its snapshot is a DB cluster snapshot.
    #[serde(default)]
    pub cluster: Option<String>,
}

/// `worker`: the instances a run launches and what runs on them. Every type × subnet is a
/// candidate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkerSpec {
    /// In order of preference.
    pub instance_types: Vec<String>,
    /// The subnet ids (`subnet-…`) to launch in; at least one.
    pub subnets: Vec<String>,
    /// The security group ids (`sg-…`) the instances get; empty: the subnet's VPC default.
    #[serde(default)]
    pub security_groups: Vec<String>,
    /// `ami-…`, `resolve:ssm:/path` (resolved by EC2 at launch), or `auto`: the ECS-optimized
    /// Amazon Linux 2023 AMI for the candidates' architecture, its GPU variant on GPU types
    /// (`image::ami`).
    pub image: String,
    /// The root gp3 volume's size in GiB (encrypted; at least the image's root snapshot).
    #[serde(default = "default_volume_gib")]
    pub volume_gib: u32,
    /// `s3://bucket/key` of the worker binary.
    pub artifact: S3Url,
    /// The worker binary's arguments (`exec … -- <command>` for a job); no passwords.
    #[serde(default)]
    pub args: Vec<String>,
    /// Which market to launch in: `spot`, `on-demand` or `spot-then-on-demand`.
    #[serde(default)]
    pub market: MarketPolicy,
    /// Instance profile name or ARN; the template's worker profile when absent.
    #[serde(default)]
    pub instance_profile: Option<String>,
    /// How many workers share the run's queue, each on an instance of its own.
    #[serde(default = "one")]
    pub count: u32,
}

/// `worker.image: "auto"`: the ECS-optimized Amazon Linux 2023 AMI for the candidates'
/// architecture, its GPU variant on GPU types (`crate::image::ami` chooses it).
pub const AUTO_IMAGE: &str = "auto";

impl WorkerSpec {
    /// A job (`worker.args` starting `exec`): each worker is given its share (`EPHEMERA_WORKER`)
    /// and nobody redoes another's, so the run is done only when every worker is; the feature
    /// worker's workers share one queue instead.
    pub fn is_job(&self) -> bool {
        self.args.first().map(String::as_str) == Some("exec")
    }

    /// Where worker `slot`'s manifest is, as the RunSpec places it (never as a worker says):
    /// a job's in its worker's folder of `--to` (`<to>/worker-<n>/manifest.json`), the feature
    /// worker's at its `--export` (`<export>/manifest.json`). None when the arguments store
    /// nothing in S3 (no `--to`/`--export`, or a directory on the instance).
    pub fn manifest_url(&self, slot: u32) -> Option<String> {
        use crate::contract::manifest::{worker_folder, MANIFEST_FILE};
        let flag = if self.is_job() { "--to" } else { "--export" };
        let (_, target) = flag_values(&self.args, &[flag]).into_iter().last()?;
        let rest = target.strip_prefix("s3://")?;
        // As the worker's store reads a target: one '/' closes the prefix.
        let base = rest.strip_suffix('/').unwrap_or(rest);
        if base.is_empty() {
            return None;
        }
        Some(match self.is_job() {
            true => format!("s3://{base}/{}/{MANIFEST_FILE}", worker_folder(slot)),
            false => format!("s3://{base}/{MANIFEST_FILE}"),
        })
    }
}

/// The values of `flags` in the worker's own arguments (before a job's `--`), each with its
/// argument's index: `--flag X` or `--flag=X`.
pub fn flag_values<'a>(args: &'a [String], flags: &[&str]) -> Vec<(usize, &'a str)> {
    let own = match args.iter().position(|a| a == "--") {
        Some(end) => &args[..end],
        None => args,
    };
    let mut out = vec![];
    for (i, a) in own.iter().enumerate() {
        for &flag in flags {
            if let Some(v) = a.strip_prefix(flag).and_then(|r| r.strip_prefix('=')) {
                out.push((i, v));
            } else if a == flag {
                if let Some(v) = own.get(i + 1) {
                    out.push((i + 1, v.as_str()));
                }
            }
        }
    }
    out
}

fn default_volume_gib() -> u32 {
    30
}
fn one() -> u32 {
    1
}

/// `capacity`: the order a launch tries its candidates in.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CapacitySpec {
    /// `as-written` (the RunSpec's order: types, then subnets) or `price-capacity` (ranked by
    /// Spot price per vCPU-hour weighted by the Spot placement score and the reclaims the
    /// ledger saw, docs/runspec.md). Absent: `as-written`, so that a RunSpec written before the
    /// field keeps launching where it did; the examples set `price-capacity`.
    #[serde(default)]
    pub order: CapacityOrder,
}

/// `capacity.order`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum CapacityOrder {
    /// Markets (Spot before On-Demand), then `worker.instance_types`, then `worker.subnets`, in
    /// the RunSpec's order.
    #[default]
    AsWritten,
    /// Within each market, the cheapest expected cost first (`crate::placement::rank`).
    PriceCapacity,
}

impl CapacityOrder {
    /// As the RunSpec spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            CapacityOrder::AsWritten => "as-written",
            CapacityOrder::PriceCapacity => "price-capacity",
        }
    }
}

/// `quota`: what happens when the vCPU quotas have no room for the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct QuotaSpec {
    /// Ask Service Quotas for the missing vCPUs when a quota is short.
    #[serde(default = "yes")]
    pub request_increase: bool,
    /// How long to wait for quota room before giving up, in seconds (1–2592000, 30 days).
    #[serde(default = "default_quota_wait")]
    pub max_wait_seconds: u64,
}

fn yes() -> bool {
    true
}
fn default_quota_wait() -> u64 {
    2 * 86_400
}

impl Default for QuotaSpec {
    fn default() -> Self {
        QuotaSpec {
            request_increase: true,
            max_wait_seconds: default_quota_wait(),
        }
    }
}

/// `limits`: how long and how much a run may take.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Seconds an instance has to become healthy (running, status checks ok, the worker started)
    /// after its launch (5–7200).
    #[serde(default = "default_boot_timeout")]
    pub boot_timeout_seconds: u64,
    /// Seconds without a heartbeat from the worker after which it is taken for gone
    /// (AwaitCompletion's `HeartbeatSeconds`); at least 30, less than `max_runtime_seconds`.
    #[serde(default = "default_heartbeat")]
    pub heartbeat_seconds: u64,
    /// The longest an attempt's work may run, in seconds (60–604800, 7 days).
    pub max_runtime_seconds: u64,
    /// The most the run may cost, in USD: nothing is launched unless what is left of it covers the
    /// attempt's worst case.
    pub budget_usd: f64,
    /// How many times a worker is launched again after Spot takes its instance (0–10).
    #[serde(default = "default_relaunches")]
    pub max_relaunches: u32,
}

fn default_boot_timeout() -> u64 {
    900
}
fn default_heartbeat() -> u64 {
    300
}
fn default_relaunches() -> u32 {
    2
}

/// `expect`: what verify-completion demands before the run counts as succeeded.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Expectations {
    /// Partitions the worker must report done.
    #[serde(default)]
    pub partitions: Option<u64>,
    /// Rows the workers must report written at least, in all (the feature worker only).
    #[serde(default)]
    pub min_rows: Option<u64>,
    /// `s3://bucket/prefix/`: where the export and its manifest must be.
    #[serde(default)]
    pub export_prefix: Option<S3Url>,
    /// Objects the manifest must list at least (a job's outputs: `exec --outputs`).
    #[serde(default)]
    pub min_objects: Option<u64>,
    /// Bytes the manifest's objects must hold at least, in all.
    #[serde(default)]
    pub min_bytes: Option<u64>,
    /// Whether `min_objects` and `min_bytes` hold for the workers' outputs together or for each
    /// worker's: a job's workers each publish their own share under `<to>/worker-<n>/`.
    #[serde(default)]
    pub counts: Counts,
}

/// What `expect.min_objects` and `expect.min_bytes` count (`expect.counts`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Counts {
    /// Every worker's outputs together.
    #[default]
    Total,
    /// Each worker's outputs on their own (a job only: the feature worker's workers share one
    /// export).
    PerWorker,
}

/// `notify`: where the report is sent.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Notify {
    /// The SNS topic the report is published to; the template's topic when absent.
    #[serde(default)]
    pub topic_arn: Option<String>,
}

/// Poll intervals. The defaults suit AWS; tests shorten them here rather than in the ASL.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Waits {
    /// The first wait between quota checks, in seconds; each wait doubles up to
    /// `quota_poll_max_seconds`.
    #[serde(default = "default_quota_poll_min")]
    pub quota_poll_min_seconds: u64,
    /// The longest wait between quota checks, in seconds.
    #[serde(default = "default_quota_poll_max")]
    pub quota_poll_max_seconds: u64,
    /// Seconds between health checks while an instance boots, and between snapshot checks.
    #[serde(default = "default_boot_poll")]
    pub boot_poll_seconds: u64,
}

fn default_quota_poll_min() -> u64 {
    60
}
fn default_quota_poll_max() -> u64 {
    1800
}
fn default_boot_poll() -> u64 {
    20
}

impl Default for Waits {
    fn default() -> Self {
        Waits {
            quota_poll_min_seconds: default_quota_poll_min(),
            quota_poll_max_seconds: default_quota_poll_max(),
            boot_poll_seconds: default_boot_poll(),
        }
    }
}

/// One problem with one field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldError {
    /// The field's path in the RunSpec (`limits.max_runtime_seconds`, `worker.subnets[0]`).
    pub field: String,
    /// What is wrong with it, and what would be accepted.
    pub message: String,
}

/// Every problem found in a RunSpec, so the user fixes them in one go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub struct InvalidRunSpec {
    /// Every field error found, in the order found.
    pub errors: Vec<FieldError>,
}

impl fmt::Display for InvalidRunSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid RunSpec: ")?;
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                write!(f, "; ")?;
            }
            write!(f, "{}: {}", e.field, e.message)?;
        }
        Ok(())
    }
}

/// The shortest `limits.heartbeat_seconds`: a worker busy with one partition must still be able to
/// beat.
pub const MIN_HEARTBEAT_SECONDS: u64 = 30;
/// The longest `limits.max_runtime_seconds`: 7 days, in seconds.
pub const MAX_RUNTIME_SECONDS: u64 = 7 * 86_400;
/// The most `worker.instance_types` one RunSpec may list.
pub const MAX_CANDIDATES: usize = 20;
/// Workers of one run: the state machine fans them out with an inline Map state, which runs
/// at most 40 iterations at once
/// (<https://docs.aws.amazon.com/step-functions/latest/dg/state-map-inline.html>).
pub const MAX_WORKERS: u32 = 40;
/// Types × subnets one launch may try (twice that RunInstances calls with the On-Demand fallback).
pub const MAX_TYPE_SUBNET_PAIRS: usize = 40;

impl RunSpec {
    /// The RunSpec's JSON Schema, generated from these types: committed as
    /// `runspec.schema.json` for editors (a test holds the file to the types).
    /// Keys are sorted, so the text is the same whether or not another crate of the build turns
    /// on serde_json's `preserve_order`.
    pub fn json_schema() -> serde_json::Value {
        fn sorted(v: serde_json::Value) -> serde_json::Value {
            match v {
                serde_json::Value::Object(m) => {
                    let mut entries: Vec<_> = m.into_iter().collect();
                    entries.sort_by(|a, b| a.0.cmp(&b.0));
                    serde_json::Value::Object(
                        entries.into_iter().map(|(k, v)| (k, sorted(v))).collect(),
                    )
                }
                serde_json::Value::Array(a) => {
                    serde_json::Value::Array(a.into_iter().map(sorted).collect())
                }
                other => other,
            }
        }
        sorted(serde_json::to_value(schemars::schema_for!(RunSpec)).unwrap_or_default())
    }

    /// Parses and validates, naming every bad field at once: each field missing, unknown or of
    /// the wrong type (by its path, `limits.max_runtime_seconds`), and the rules `validate`
    /// checks on the fields that were given.
    ///
    /// serde stops at the first error, so the document is repaired and parsed again until it
    /// parses: an unknown field is dropped, a wrong one dropped (its default applies) or, when
    /// required, replaced by a placeholder of the expected type. The placeholders' own
    /// findings are not reported: those fields are already named.
    ///
    /// The run's bounds are not checked here: `admission::parse` is this and them.
    pub fn parse(value: &serde_json::Value) -> Result<RunSpec, InvalidRunSpec> {
        RunSpec::parse_then(value, |_| vec![])
    }

    /// [`RunSpec::parse`], then `after`'s findings beside the field rules' (the layer above
    /// checks what needs more than the fields: `admission`'s), filtered like them.
    pub fn parse_then(
        value: &serde_json::Value,
        after: impl Fn(&RunSpec) -> Vec<FieldError>,
    ) -> Result<RunSpec, InvalidRunSpec> {
        if !value.is_object() {
            // serde would read a struct from an array too, field by position.
            return Err(InvalidRunSpec {
                errors: vec![FieldError {
                    field: "runspec".into(),
                    message: format!(
                        "must be a JSON object with run_id, worker and limits, not {}",
                        json_kind(value)
                    ),
                }],
            });
        }
        let mut doc = value.clone();
        let mut found: Vec<FieldError> = vec![];
        // Path of every field repaired → what serde expected there, if it said.
        let mut repaired: BTreeMap<String, Option<String>> = BTreeMap::new();
        for _ in 0..MAX_REPAIRS {
            let err = match serde_path_to_error::deserialize::<_, RunSpec>(&doc) {
                Ok(spec) => return spec.validated_after(found, &repaired, &after),
                Err(e) => e,
            };
            let path: Vec<Segment> = err.path().iter().map(Segment::of).collect();
            let message = err.into_inner().to_string();
            if !repair(&mut doc, path, &message, &mut found, &mut repaired) {
                break;
            }
        }
        if found.is_empty() {
            // Unreachable for any JSON value; kept so a failure is never silent.
            found.push(FieldError {
                field: "runspec".into(),
                message: "cannot be read as a RunSpec".into(),
            });
        }
        Err(InvalidRunSpec { errors: found })
    }

    /// `validate`'s findings and `after`'s added to the structural ones, except those about
    /// repaired fields.
    fn validated_after(
        self,
        mut found: Vec<FieldError>,
        repaired: &BTreeMap<String, Option<String>>,
        after: impl Fn(&RunSpec) -> Vec<FieldError>,
    ) -> Result<RunSpec, InvalidRunSpec> {
        let mut findings = self.validate().err().map_or(vec![], |e| e.errors);
        findings.extend(after(&self));
        found.extend(
            findings
                .into_iter()
                .filter(|f| !repaired.keys().any(|p| touches(f, p))),
        );
        if found.is_empty() {
            Ok(self)
        } else {
            Err(InvalidRunSpec { errors: found })
        }
    }

    /// The job's container image (`job.image`), if any.
    pub fn job_image(&self) -> Option<&str> {
        self.job.as_ref().and_then(|j| j.image.as_deref())
    }

    /// The job's secrets (`job.secrets`): name → ARN, in name order.
    pub fn job_secrets(&self) -> impl Iterator<Item = (&str, &str)> {
        self.job
            .iter()
            .flat_map(|j| j.secrets.iter())
            .map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Every rule on the fields given, each finding naming its field. The job's image against
    /// the rest and the run's bounds (its history, its document) are `admission`'s.
    pub fn validate(&self) -> Result<(), InvalidRunSpec> {
        let mut errs = Errors::default();
        self.validate_run_id(&mut errs);
        self.validate_candidates(&mut errs);
        self.validate_network(&mut errs);
        self.validate_launch(&mut errs);
        self.validate_limits(&mut errs);
        self.validate_delivery(&mut errs);
        self.validate_waits(&mut errs);
        self.validate_database(&mut errs);
        self.validate_secrets(&mut errs);
        self.validate_retry(&mut errs);

        errs.finish()
    }

    /// `run_id`: it names tags, SSM paths, schemas and snapshots.
    fn validate_run_id(&self, errs: &mut Errors) {
        if self.run_id.is_empty() || self.run_id.len() > 64 || !self.run_id.chars().all(is_id_char)
        {
            errs.add(
                "run_id",
                format!(
                    "'{}' must be 1 to 64 characters of A-Z a-z 0-9 - _ . (it names tags and SSM paths)",
                    self.run_id
                ),
            );
        } else if self.run_id.starts_with('.') || self.run_id.contains("..") {
            // The id is a path segment in S3 keys, SSM paths and log streams: `..` would name
            // the parent of the run's own place, `.` the place itself.
            errs.add(
                "run_id",
                format!(
                    "'{}' must not start with '.' or contain '..' (it is a path segment in S3 keys and SSM paths)",
                    self.run_id
                ),
            );
        }
    }

    /// `worker.count` and `worker.instance_types`: what one launch may try, of one architecture.
    fn validate_candidates(&self, errs: &mut Errors) {
        let w = &self.worker;
        if !(1..=MAX_WORKERS).contains(&w.count) {
            errs.add(
                "worker.count",
                format!(
                    "{} is outside 1..={MAX_WORKERS} (workers of one run, each on its own instance)",
                    w.count
                ),
            );
        }

        if w.instance_types.is_empty() {
            errs.add(
                "worker.instance_types",
                "must list at least one instance type, e.g. [\"c7g.4xlarge\"]",
            );
        } else if w.instance_types.len() > MAX_CANDIDATES {
            errs.add(
                "worker.instance_types",
                format!("at most {MAX_CANDIDATES} candidates are allowed"),
            );
        }
        // Every type × subnet is tried in one launch-worker call, Spot then On-Demand: bounded
        // so that all of them fit in the function's time limit.
        let pairs = w.instance_types.len() * w.subnets.len();
        if pairs > MAX_TYPE_SUBNET_PAIRS {
            errs.add(
                "worker.subnets",
                format!(
                    "{} instance types × {} subnets make {pairs} candidates; at most {MAX_TYPE_SUBNET_PAIRS}, so that every one can be tried within one launch",
                    w.instance_types.len(),
                    w.subnets.len()
                ),
            );
        }
        let mut archs = BTreeMap::new();
        for (i, t) in w.instance_types.iter().enumerate() {
            let field = format!("worker.instance_types[{i}]");
            match catalog::lookup(t) {
                Some(info) => {
                    archs.entry(info.arch).or_insert_with(|| t.clone());
                }
                None => errs.add(
                    &field,
                    format!(
                        "unknown instance type '{t}'; allowed: a size of one of the families {}",
                        catalog::family_names().join(", ")
                    ),
                ),
            }
            if w.instance_types[..i].contains(t) {
                errs.add(&field, format!("'{t}' is listed twice"));
            }
        }
        if archs.len() > 1 {
            let list: Vec<String> = archs.iter().map(|(a, t)| format!("{t} is {a}")).collect();
            errs.add(
                "worker.instance_types",
                format!(
                    "candidates must share one architecture, since one image serves them all ({})",
                    list.join(", ")
                ),
            );
        }
    }

    /// `worker.subnets` and `worker.security_groups`.
    fn validate_network(&self, errs: &mut Errors) {
        let w = &self.worker;
        if w.subnets.is_empty() {
            errs.add(
                "worker.subnets",
                "must list at least one subnet id (subnet-…)",
            );
        }
        for (i, s) in w.subnets.iter().enumerate() {
            if !is_aws_id(s, "subnet-") {
                errs.add(
                    &format!("worker.subnets[{i}]"),
                    format!("'{s}' is not a subnet id (subnet- followed by hex digits)"),
                );
            }
        }
        for (i, s) in w.security_groups.iter().enumerate() {
            if !is_aws_id(s, "sg-") {
                errs.add(
                    &format!("worker.security_groups[{i}]"),
                    format!("'{s}' is not a security group id (sg- followed by hex digits)"),
                );
            }
        }
    }

    /// What the instance boots with: image, volume, artifact, arguments, profile.
    fn validate_launch(&self, errs: &mut Errors) {
        let w = &self.worker;
        if !(is_aws_id(&w.image, "ami-")
            || (w.image.starts_with("resolve:ssm:/") && w.image.len() > 13)
            || w.image == AUTO_IMAGE)
        {
            errs.add(
                "worker.image",
                format!(
                    "'{}' must be an AMI id (ami-…), resolve:ssm:/parameter/path or \"auto\" (the ECS-optimized Amazon Linux 2023 AMI for the types, its GPU variant on GPU types)",
                    w.image
                ),
            );
        }
        if !(8..=16_384).contains(&w.volume_gib) {
            errs.add(
                "worker.volume_gib",
                format!("{} is outside 8..=16384 GiB", w.volume_gib),
            );
        }
        if !w.artifact.is_object() {
            errs.add(
                "worker.artifact",
                format!(
                    "'{}' must be s3://bucket/key of the worker binary",
                    w.artifact
                ),
            );
        }
        let mut args_len = 0;
        for (i, a) in w.args.iter().enumerate() {
            args_len += a.len();
            let field = format!("worker.args[{i}]");
            if a.chars().any(|c| c == '\0' || c == '\n' || c == '\r') {
                errs.add(&field, "must not contain newlines or NUL");
            }
            let after_flag = i > 0 && is_credential_flag(&w.args[i - 1]) && !is_reference(a);
            if after_flag || carries_credential(a) {
                errs.add(&field, CARRIES_A_PASSWORD);
            }
        }
        if args_len > 4096 {
            errs.add(
                "worker.args",
                format!("{args_len} bytes in all; at most 4096 are allowed"),
            );
        }
        if w.is_job() {
            Self::validate_job(&w.args, errs);
        }
        if let Some(p) = &w.instance_profile {
            if p.is_empty() || p.contains(char::is_whitespace) {
                errs.add(
                    "worker.instance_profile",
                    "must be an instance profile name or ARN",
                );
            }
        }
    }

    /// `worker.args` of a job (`exec [--grace N] -- <command>`): what the worker would refuse
    /// only on the instance, after it was launched and billed until its boot deadline.
    fn validate_job(args: &[String], errs: &mut Errors) {
        let Some(dashes) = args.iter().position(|a| a == "--") else {
            errs.add(
                "worker.args",
                "a job is `exec [--grace SECONDS] -- <command> [args…]`: `--` and the command are missing",
            );
            return;
        };
        if dashes + 1 == args.len() {
            errs.add("worker.args", "no command after `--`");
        }
        for (i, a) in args[..dashes].iter().enumerate() {
            let grace = match a.strip_prefix("--grace=") {
                Some(v) => Some((i, v)),
                None if a == "--grace" => args.get(i + 1).map(|v| (i + 1, v.as_str())),
                None => None,
            };
            if let Some((at, v)) = grace {
                if !v.parse::<u64>().is_ok_and(|g| (1..=110).contains(&g)) {
                    errs.add(
                        &format!("worker.args[{at}]"),
                        format!("--grace {v}: 1 to 110 seconds (a Spot notice gives two minutes)"),
                    );
                }
            }
            if let Some(v) = a.strip_prefix("--checkpoint-every=").or_else(|| {
                (a == "--checkpoint-every")
                    .then(|| args.get(i + 1).map(String::as_str))
                    .flatten()
            }) {
                if !v.parse::<u64>().is_ok_and(|s| (10..=86_400).contains(&s)) {
                    errs.add(
                        &format!("worker.args[{i}]"),
                        format!("--checkpoint-every {v}: 10 to 86400 seconds"),
                    );
                }
            }
        }
        // Options that only work together: clap on the instance would refuse them after the
        // launch, so they are named here.
        let own = &args[..dashes];
        let has = |flag: &str| {
            own.iter()
                .any(|a| a == flag || a.starts_with(&format!("{flag}=")))
        };
        // Keeping checkpoints after success means something only when there are some; and it
        // is a switch (clap refuses `--keep-checkpoints=…` on the instance).
        if let Some(i) = own
            .iter()
            .position(|a| a.starts_with("--keep-checkpoints="))
        {
            errs.add(
                &format!("worker.args[{i}]"),
                "--keep-checkpoints takes no value",
            );
        }
        if has("--keep-checkpoints") && !has("--checkpoint") {
            errs.add(
                "worker.args",
                "--keep-checkpoints needs --checkpoint (exec --checkpoint DIR --checkpoint-to s3://bucket/prefix/ --keep-checkpoints)",
            );
        }
        for (one, other) in [("--outputs", "--to"), ("--checkpoint", "--checkpoint-to")] {
            if has(one) != has(other) {
                let (given, missing) = if has(one) { (one, other) } else { (other, one) };
                errs.add(
                    "worker.args",
                    format!("{given} needs {missing} (exec {one} DIR {other} s3://bucket/prefix/)"),
                );
            }
        }
    }

    /// `job.secrets`: each name an environment variable the worker does not set, each ARN a
    /// secret of one of the two kinds, a bounded count, and only for a job (the feature worker
    /// reads its one secret, the database URL, itself).
    fn validate_secrets(&self, errs: &mut Errors) {
        let Some(job) = &self.job else { return };
        if job.secrets.is_empty() {
            return;
        }
        if !self.worker.is_job() {
            errs.add(
                "job.secrets",
                "are given to a job's command: worker.args must be `exec [options] -- <command>`",
            );
        }
        if job.secrets.len() > job_secrets::MAX_SECRETS {
            errs.add(
                "job.secrets",
                format!(
                    "{} secrets; at most {} (each is named in the run's session policy, which AWS bounds)",
                    job.secrets.len(),
                    job_secrets::MAX_SECRETS
                ),
            );
        }
        for (name, arn) in &job.secrets {
            let field = format!("job.secrets.{name}");
            if let Some(p) = job_secrets::name_problem(name) {
                errs.add(&field, p);
            }
            if let Err(p) = job_secrets::parse_arn(arn) {
                errs.add(&field, format!("'{arn}' {p}"));
            }
        }
    }

    /// `job.retry`: exit codes a process can end with (0 is a success), a bounded count and
    /// delay, and only for a job (the feature worker's partitions have their own attempts).
    fn validate_retry(&self, errs: &mut Errors) {
        let Some(r) = self.job.as_ref().and_then(|j| j.retry.as_ref()) else {
            return;
        };
        if !self.worker.is_job() {
            errs.add(
                "job.retry",
                "runs a job's command again: worker.args must be `exec [options] -- <command>`",
            );
        }
        if r.on_exit_codes.is_empty() {
            errs.add(
                "job.retry.on_exit_codes",
                "is empty: name the exit codes (1-255) that are worth a retry",
            );
        }
        for (i, c) in r.on_exit_codes.iter().enumerate() {
            if !(1..=255).contains(c) {
                errs.add(
                    &format!("job.retry.on_exit_codes[{i}]"),
                    format!(
                        "{c} is outside 1..=255 (0 is a success; 128 + N is a kill by signal N)"
                    ),
                );
            }
        }
        let most = ephemera_contract::summary::JOB_RETRIES_MAX;
        if r.max == 0 || r.max > most {
            errs.add("job.retry.max", format!("{} is outside 1..={most}", r.max));
        }
        if r.backoff_seconds > 3600 {
            errs.add(
                "job.retry.backoff_seconds",
                format!("{} is outside 0..=3600", r.backoff_seconds),
            );
        }
    }

    /// `quota.max_wait_seconds` and `limits`: how long and how much.
    fn validate_limits(&self, errs: &mut Errors) {
        if self.quota.max_wait_seconds == 0 || self.quota.max_wait_seconds > 30 * 86_400 {
            errs.add(
                "quota.max_wait_seconds",
                format!(
                    "{} is outside 1..=2592000 (30 days)",
                    self.quota.max_wait_seconds
                ),
            );
        }

        let l = &self.limits;
        if !(5..=7200).contains(&l.boot_timeout_seconds) {
            errs.add(
                "limits.boot_timeout_seconds",
                format!("{} is outside 5..=7200", l.boot_timeout_seconds),
            );
        }
        if l.heartbeat_seconds < MIN_HEARTBEAT_SECONDS {
            errs.add(
                "limits.heartbeat_seconds",
                format!(
                    "{} is shorter than the {MIN_HEARTBEAT_SECONDS} s minimum (a worker busy with one partition must still be able to beat)",
                    l.heartbeat_seconds
                ),
            );
        }
        if !(60..=MAX_RUNTIME_SECONDS).contains(&l.max_runtime_seconds) {
            errs.add(
                "limits.max_runtime_seconds",
                format!(
                    "{} is outside 60..={MAX_RUNTIME_SECONDS} (7 days)",
                    l.max_runtime_seconds
                ),
            );
        } else if l.heartbeat_seconds >= l.max_runtime_seconds {
            // Step Functions requires HeartbeatSeconds < TimeoutSeconds; otherwise the task
            // fails with States.Runtime, which no Catch takes, so nothing is cleaned up.
            errs.add(
                "limits.heartbeat_seconds",
                format!(
                    "{} must be shorter than limits.max_runtime_seconds ({})",
                    l.heartbeat_seconds, l.max_runtime_seconds
                ),
            );
        }
        if !l.budget_usd.is_finite() || l.budget_usd <= 0.0 {
            errs.add(
                "limits.budget_usd",
                format!("{} must be a positive amount of US dollars", l.budget_usd),
            );
        }
        if l.max_relaunches > 10 {
            errs.add(
                "limits.max_relaunches",
                format!("{} is outside 0..=10", l.max_relaunches),
            );
        }
    }

    /// `expect`, `notify` and `tags`.
    fn validate_delivery(&self, errs: &mut Errors) {
        if self.worker.is_job() {
            // A command has no partitions and writes no rows the worker counts: either
            // expectation could never be met, and the run would fail after paying for its job.
            for (field, set) in [
                ("expect.partitions", self.expect.partitions.is_some()),
                ("expect.min_rows", self.expect.min_rows.is_some()),
            ] {
                if set {
                    errs.add(
                        field,
                        "counts the feature worker's partitions and rows; a job (worker.args starting `exec`) has neither: use expect.min_objects or expect.min_bytes",
                    );
                }
            }
        }
        if self.expect.counts == Counts::PerWorker {
            if !self.worker.is_job() {
                errs.add(
                    "expect.counts",
                    "per_worker applies to a job (worker.args starting `exec`), whose workers each publish their own outputs; the feature worker's workers share one export: use total",
                );
            } else if self.expect.min_objects.is_none() && self.expect.min_bytes.is_none() {
                errs.add(
                    "expect.counts",
                    "per_worker says how expect.min_objects and expect.min_bytes count, and neither is set",
                );
            }
        }
        if let Some(arn) = &self.notify.topic_arn {
            if !arn.starts_with("arn:aws") || !arn.contains(":sns:") {
                errs.add(
                    "notify.topic_arn",
                    format!("'{arn}' is not an SNS topic ARN (arn:aws:sns:region:account:name)"),
                );
            }
        }

        if self.tags.len() > 40 {
            errs.add(
                "tags",
                format!(
                    "{} tags given; at most 40 (EC2 allows 50, ephemera uses some)",
                    self.tags.len()
                ),
            );
        }
        for (k, v) in &self.tags {
            let field = format!("tags.{k}");
            if k.is_empty() || k.len() > 128 {
                errs.add(&field, "a tag key must be 1 to 128 characters");
            }
            if k.starts_with("aws:") || k.starts_with("ephemera:") {
                errs.add(&field, "keys starting with aws: or ephemera: are reserved");
            }
            if v.len() > 256 {
                errs.add(&field, "a tag value must be at most 256 characters");
            }
        }
    }

    /// `waits`: the poll periods.
    fn validate_waits(&self, errs: &mut Errors) {
        let wt = &self.waits;
        if wt.quota_poll_min_seconds == 0 || wt.quota_poll_min_seconds > wt.quota_poll_max_seconds {
            errs.add(
                "waits.quota_poll_min_seconds",
                format!(
                    "{} must be at least 1 and at most waits.quota_poll_max_seconds ({})",
                    wt.quota_poll_min_seconds, wt.quota_poll_max_seconds
                ),
            );
        }
        if wt.boot_poll_seconds == 0 || wt.boot_poll_seconds > 3600 {
            errs.add(
                "waits.boot_poll_seconds",
                format!("{} is outside 1..=3600", wt.boot_poll_seconds),
            );
        }
    }

    /// `database`: one snapshot source, named as RDS names DB instances and clusters.
    fn validate_database(&self, errs: &mut Errors) {
        let d = &self.database;
        if !(60..=86_400).contains(&d.snapshot_timeout_seconds) {
            errs.add(
                "database.snapshot_timeout_seconds",
                format!(
                    "{} is outside 60..=86400 (a snapshot of a large database takes minutes to hours)",
                    d.snapshot_timeout_seconds
                ),
            );
        }
        if d.keep_snapshots > MAX_KEEP_SNAPSHOTS {
            errs.add(
                "database.keep_snapshots",
                format!(
                    "{} is outside 0..={MAX_KEEP_SNAPSHOTS} (RDS holds at most {MAX_KEEP_SNAPSHOTS} manual snapshots a region; 0 keeps every one)",
                    d.keep_snapshots
                ),
            );
        }
        let Some(s) = &d.snapshot_before else {
            return;
        };
        match (&s.instance, &s.cluster) {
            (Some(_), Some(_)) | (None, None) => errs.add(
                "database.snapshot_before",
                "give exactly one of instance (a DB instance identifier) or cluster (an Aurora DB cluster identifier)".to_string(),
            ),
            (Some(id), None) => check_db_identifier(errs, "database.snapshot_before.instance", id),
            (None, Some(id)) => check_db_identifier(errs, "database.snapshot_before.cluster", id),
        }
    }

    /// The most quota polls (capped exponential backoff until `quota.max_wait_seconds`),
    /// snapshot polls (`database.snapshot_before`: every `waits.boot_poll_seconds` until
    /// `database.snapshot_timeout_seconds`, the last wait cut to the time left, plus the first
    /// call and the one past the deadline) and boot polls (every attempt of every worker: its boot
    /// timeout over the poll period) a run can make; all of them land in the one execution's
    /// history.
    pub fn poll_bounds(&self) -> PollBounds {
        let w = &self.waits;
        let (mut waited, mut wait, mut quota) = (0u64, w.quota_poll_min_seconds.max(1), 1u64);
        while waited < self.quota.max_wait_seconds {
            waited += wait;
            quota += 1;
            if wait >= w.quota_poll_max_seconds {
                quota += (self.quota.max_wait_seconds - waited.min(self.quota.max_wait_seconds))
                    / w.quota_poll_max_seconds.max(1);
                break;
            }
            wait = (wait * 2).min(w.quota_poll_max_seconds.max(1));
        }
        let snapshot = match self.database.snapshot_before {
            Some(_) => self.database.snapshot_timeout_seconds / w.boot_poll_seconds.max(1) + 2,
            None => 0,
        };
        let attempts = 1 + self.limits.max_relaunches as u64;
        let boot = u64::from(self.worker.count)
            * attempts
            * (self.limits.boot_timeout_seconds / w.boot_poll_seconds.max(1) + 1);
        PollBounds {
            quota,
            snapshot,
            boot,
        }
    }
}

/// The most polls of each waiting loop a run can make ([`RunSpec::poll_bounds`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PollBounds {
    /// Quota polls: capped exponential backoff until `quota.max_wait_seconds`.
    pub quota: u64,
    /// Snapshot polls (`database.snapshot_before`); 0 without a snapshot.
    pub snapshot: u64,
    /// Boot polls: every attempt of every worker, its boot timeout over the poll period.
    pub boot: u64,
}

impl PollBounds {
    /// Every poll the run can make, in all: what lands in the execution's history.
    pub fn total(&self) -> u64 {
        self.quota + self.snapshot + self.boot
    }
}

/// RDS identifiers: 1 to 63 letters, digits or hyphens, a letter first, no hyphen last and no
/// two in a row (CreateDBInstance's DBInstanceIdentifier).
fn check_db_identifier(errs: &mut Errors, field: &str, id: &str) {
    let ok = (1..=63).contains(&id.len())
        && id.starts_with(|c: char| c.is_ascii_alphabetic())
        && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        && !id.ends_with('-')
        && !id.contains("--");
    if !ok {
        errs.add(
            field,
            format!("'{id}' is not an RDS identifier: 1 to 63 letters, digits or hyphens, a letter first, no hyphen last and none doubled"),
        );
    }
}

/// More than any RunSpec has fields: each repair removes or fixes one.
const MAX_REPAIRS: usize = 200;

/// One step of a field's path in the document.
#[derive(Debug, Clone, PartialEq)]
enum Segment {
    Key(String),
    Index(usize),
}

impl Segment {
    fn of(s: &serde_path_to_error::Segment) -> Segment {
        match s {
            serde_path_to_error::Segment::Seq { index } => Segment::Index(*index),
            serde_path_to_error::Segment::Map { key } => Segment::Key(key.clone()),
            serde_path_to_error::Segment::Enum { variant } => Segment::Key(variant.clone()),
            serde_path_to_error::Segment::Unknown => Segment::Key("?".into()),
        }
    }
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// `worker.instance_types[1]`, as `validate` names fields; the whole document is `runspec`.
fn field_name(path: &[Segment]) -> String {
    let mut s = String::new();
    for seg in path {
        match seg {
            Segment::Key(k) if s.is_empty() => s.push_str(k),
            Segment::Key(k) => {
                s.push('.');
                s.push_str(k);
            }
            Segment::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    if s.is_empty() {
        "runspec".into()
    } else {
        s
    }
}

fn node_mut<'a>(
    doc: &'a mut serde_json::Value,
    path: &[Segment],
) -> Option<&'a mut serde_json::Value> {
    path.iter().try_fold(doc, |v, seg| match seg {
        Segment::Key(k) => v.as_object_mut()?.get_mut(k),
        Segment::Index(i) => v.as_array_mut()?.get_mut(*i),
    })
}

/// A value of the type serde said it expected (`expected u64`, `expected a string`, …).
fn placeholder(expected: &str) -> Option<serde_json::Value> {
    use serde_json::json;
    let e = expected.rsplit("expected ").next().unwrap_or_default();
    Some(match e {
        _ if e.starts_with("u8") || e.starts_with("u16") || e.starts_with("u32") => json!(0),
        _ if e.starts_with("u64") || e.starts_with("i64") || e.starts_with("i32") => json!(0),
        _ if e.starts_with("f64") || e.starts_with("f32") => json!(0.0),
        _ if e.starts_with("a string") => json!(""),
        _ if e.starts_with("s3://") => json!("s3://placeholder/placeholder"),
        _ if e.starts_with("a boolean") => json!(false),
        _ if e.starts_with("a sequence") => json!([]),
        _ if e.starts_with("struct ") || e.starts_with("a map") => json!({}),
        _ => return None,
    })
}

/// Records the error serde reported at `path` and changes `doc` so that parsing gets past it;
/// false when it cannot.
fn repair(
    doc: &mut serde_json::Value,
    mut path: Vec<Segment>,
    message: &str,
    found: &mut Vec<FieldError>,
    repaired: &mut BTreeMap<String, Option<String>>,
) -> bool {
    let record = |found: &mut Vec<FieldError>, field: &str, message: String| {
        let inside_repaired = repaired.keys().any(|p| {
            field.starts_with(p.as_str())
                && matches!(field.as_bytes().get(p.len()), Some(b'.') | Some(b'['))
        });
        if !inside_repaired && !repaired.contains_key(field) {
            found.push(FieldError {
                field: field.to_string(),
                message,
            });
        }
    };
    // `missing field `budget_usd`` comes with the path of the object that lacks it.
    if let Some(name) = message
        .strip_prefix("missing field `")
        .and_then(|m| m.strip_suffix('`'))
    {
        path.push(Segment::Key(name.to_string()));
        let field = field_name(&path);
        record(found, &field, "missing: this field is required".into());
        let value = match repaired.get(&field) {
            Some(Some(expected)) => placeholder(expected),
            // Its type is learnt from the error null gives.
            _ => Some(serde_json::Value::Null),
        };
        let (Some(value), Some(Segment::Key(name))) = (value, path.pop()) else {
            return false;
        };
        let Some(parent) = node_mut(doc, &path).and_then(|p| p.as_object_mut()) else {
            return false;
        };
        if parent.contains_key(&name) {
            return false;
        }
        parent.insert(name, value);
        repaired.entry(field).or_insert(None);
        return true;
    }
    let field = field_name(&path);
    record(found, &field, message.to_string());
    let Some(last) = path.pop() else {
        // The document itself is not an object.
        return false;
    };
    let Some(parent) = node_mut(doc, &path) else {
        return false;
    };
    let fixed = match (&last, parent) {
        // Dropped: an unknown field is gone, a wrong one takes its default (or is reported
        // missing next, and gets a placeholder of the type remembered here).
        (Segment::Key(k), serde_json::Value::Object(map)) => map.remove(k).is_some(),
        (Segment::Index(i), serde_json::Value::Array(items)) => match placeholder(message) {
            Some(p) if items.get(*i) != Some(&p) => {
                items[*i] = p;
                true
            }
            _ => false,
        },
        _ => false,
    };
    let expected = message.contains("expected ").then(|| message.to_string());
    if let Some(Some(seen)) = repaired.get(&field) {
        // The same field failing twice: the repair did not help.
        if expected.as_deref() == Some(seen.as_str()) && !message.starts_with("unknown field") {
            return false;
        }
    }
    repaired.insert(field, expected);
    fixed
}

/// Whether a finding of `validate` is about the repaired field `path` (or mentions it).
fn touches(finding: &FieldError, path: &str) -> bool {
    let f = finding.field.as_str();
    let under = |a: &str, b: &str| {
        a == b || (a.starts_with(b) && matches!(a.as_bytes().get(b.len()), Some(b'.') | Some(b'[')))
    };
    under(f, path) || under(path, f) || finding.message.contains(path)
}

#[derive(Default)]
struct Errors(Vec<FieldError>);

impl Errors {
    fn add(&mut self, field: &str, message: impl Into<String>) {
        self.0.push(FieldError {
            field: field.to_string(),
            message: message.into(),
        });
    }
    fn finish(self) -> Result<(), InvalidRunSpec> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(InvalidRunSpec { errors: self.0 })
        }
    }
}

fn is_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.'
}

fn is_aws_id(s: &str, prefix: &str) -> bool {
    s.strip_prefix(prefix)
        .is_some_and(|h| (8..=17).contains(&h.len()) && h.chars().all(|c| c.is_ascii_hexdigit()))
}

/// `s3://bucket/key` → (bucket, key), by [`S3Url`]'s rules: for a URL in an argument, read
/// where it is used (the RunSpec's own URL fields are typed).
pub fn parse_s3_url(url: &str) -> Option<(&str, &str)> {
    let parsed = S3Url::parse(url)?;
    let bucket_end = "s3://".len() + parsed.bucket().len();
    Some((
        &url["s3://".len()..bucket_end],
        url[bucket_end..].strip_prefix('/').unwrap_or_default(),
    ))
}

/// What a refused argument is told: where its value belongs instead.
const CARRIES_A_PASSWORD: &str = "looks like it carries a password (user data, the history and the report are not secret): put the value in Secrets Manager or an SSM SecureString, name it in job.secrets ({\"NAME\": \"<ARN>\"}) and read it from the job's environment ($NAME)";

/// An argument that carries a credential itself ([`looks_like_credential`]), or a shell line
/// (`sh -c "mysql --password hunter2"`) one of whose words does or whose credential flag is
/// followed by a value. A value that is a variable (`$DB_PASSWORD`, `"${TOKEN}"`) is what
/// `job.secrets` is for, and is not refused.
fn carries_credential(arg: &str) -> bool {
    if looks_like_credential(arg) {
        return true;
    }
    let words: Vec<&str> = arg.split_whitespace().collect();
    if words.len() < 2 {
        return false;
    }
    words.iter().enumerate().any(|(i, w)| {
        looks_like_credential(w)
            || (is_credential_flag(w) && words.get(i + 1).is_some_and(|v| !is_reference(v)))
    })
}

/// `$NAME`, `${NAME}`, `"$NAME"`: a variable of the job's environment, not a value.
fn is_reference(value: &str) -> bool {
    value
        .trim_matches(|c| c == '"' || c == '\'')
        .starts_with('$')
}

/// A URL with a password (`scheme://user:pass@host`), or a `key=value` pair whose key names a
/// credential (`password=…`, `--api-key=…`, `DB_TOKEN=…`), case aside.
fn looks_like_credential(arg: &str) -> bool {
    if arg.to_ascii_lowercase().contains("secret_access_key") {
        return true;
    }
    if let Some((key, value)) = arg.split_once('=') {
        if !value.is_empty() && !is_reference(value) && names_a_credential(key) {
            return true;
        }
    }
    if let Some((_, rest)) = arg.split_once("://") {
        if let Some((userinfo, _)) = rest.split_once('@') {
            return userinfo.contains(':') && !userinfo.contains('/');
        }
    }
    false
}

/// A flag that takes a credential as its next argument (`--password x`, `--token x`,
/// `--api-key x`, `-p` is not one: too many tools use it for a port or a path).
fn is_credential_flag(arg: &str) -> bool {
    arg.starts_with('-') && !arg.contains('=') && names_a_credential(arg)
}

/// A flag's or a variable's name (`--db-password`, `API_KEY`, `client_secret`) that says its
/// value is a credential. Names ending in `-secret` alone are not: `--database-secret` takes a
/// Secrets Manager secret's id, which is what a RunSpec should pass.
fn names_a_credential(name: &str) -> bool {
    let name = name
        .trim_start_matches('-')
        .to_ascii_lowercase()
        .replace('-', "_");
    if name == "secret" {
        return true;
    }
    const WORDS: [&str; 9] = [
        "password",
        "passwd",
        "token",
        "api_key",
        "apikey",
        "client_secret",
        "secret_key",
        "access_key",
        "private_key",
    ];
    WORDS
        .iter()
        .any(|w| name == *w || name.ends_with(&format!("_{w}")))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::{json, Value};

    pub fn sample() -> serde_json::Value {
        json!({
            "run_id": "fx-2023-04",
            "worker": {
                "instance_types": ["c7g.4xlarge", "c6g.4xlarge"],
                "subnets": ["subnet-0a1b2c3d", "subnet-0a1b2c3e"],
                "security_groups": ["sg-0a1b2c3d"],
                "image": "resolve:ssm:/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-arm64",
                "artifact": "s3://ephemera-artifacts/worker/ephemera-worker",
                "args": ["run", "--stages", "indicators,regression"]
            },
            "limits": {"max_runtime_seconds": 14400, "budget_usd": 5.0}
        })
    }

    fn errors_of(v: serde_json::Value) -> Vec<FieldError> {
        RunSpec::parse(&v).unwrap_err().errors
    }

    fn has(errs: &[FieldError], field: &str, needle: &str) -> bool {
        errs.iter()
            .any(|e| e.field == field && e.message.contains(needle))
    }

    #[test]
    fn sample_is_valid_with_defaults() {
        let spec = RunSpec::parse(&sample()).unwrap();
        assert_eq!(spec.worker.market, MarketPolicy::SpotThenOnDemand);
        assert_eq!(spec.limits.heartbeat_seconds, 300);
        assert_eq!(spec.worker.volume_gib, 30);
        assert!(spec.quota.request_increase);
    }

    #[test]
    fn capacity_order_is_as_written_when_absent_and_one_of_two_values() {
        let spec = RunSpec::parse(&sample()).unwrap();
        assert_eq!(spec.capacity.order, CapacityOrder::AsWritten);
        let mut v = sample();
        v["capacity"] = json!({"order": "price-capacity"});
        assert_eq!(
            RunSpec::parse(&v).unwrap().capacity.order,
            CapacityOrder::PriceCapacity
        );
        v["capacity"] = json!({"order": "cheapest"});
        let errs = errors_of(v.clone());
        assert!(
            has(&errs, "capacity.order", "as-written")
                && has(&errs, "capacity.order", "price-capacity"),
            "the field and what it allows: {errs:?}"
        );
        v["capacity"] = json!({"ordre": "as-written"});
        assert!(has(&errors_of(v), "capacity.ordre", "unknown field"));
    }

    #[test]
    fn unknown_field_is_named() {
        let mut v = sample();
        v["limits"]["budget"] = json!(3);
        let errs = errors_of(v);
        assert_eq!(errs[0].field, "limits.budget");
        assert!(
            errs[0].message.contains("unknown field `budget`"),
            "{errs:?}"
        );
        assert!(errs[0].message.contains("budget_usd"), "{errs:?}");
    }

    #[test]
    fn wrong_type_names_the_path() {
        let mut v = sample();
        v["limits"]["max_runtime_seconds"] = json!(-5);
        let errs = errors_of(v);
        assert_eq!(errs[0].field, "limits.max_runtime_seconds");
        assert!(errs[0].message.contains("expected u64"), "{errs:?}");
    }

    #[test]
    fn unknown_market_lists_the_allowed_ones() {
        let mut v = sample();
        v["worker"]["market"] = json!("cheap");
        let errs = errors_of(v);
        assert_eq!(errs[0].field, "worker.market");
        assert!(errs[0].message.contains("spot-then-on-demand"), "{errs:?}");
    }

    #[test]
    fn every_bad_field_is_reported_at_once() {
        let mut v = sample();
        v["worker"]["instance_types"] = json!(["c7g.4xlarge", "q9.huge"]);
        v["worker"]["subnets"] = json!([]);
        v["limits"]["budget_usd"] = json!(-1.0);
        v["limits"]["heartbeat_seconds"] = json!(10);
        let errs = errors_of(v);
        assert!(has(
            &errs,
            "worker.instance_types[1]",
            "unknown instance type 'q9.huge'"
        ));
        assert!(has(&errs, "worker.subnets", "at least one subnet"));
        assert!(has(&errs, "limits.budget_usd", "positive"));
        assert!(has(&errs, "limits.heartbeat_seconds", "30 s minimum"));
        assert_eq!(errs.len(), 4, "{errs:?}");
        let text = InvalidRunSpec { errors: errs }.to_string();
        assert!(text.starts_with("invalid RunSpec: worker.instance_types[1]"));
    }

    #[test]
    fn every_missing_unknown_and_mistyped_field_is_reported_with_the_rest() {
        let mut v = sample();
        v.as_object_mut().unwrap().remove("run_id");
        v["worker"].as_object_mut().unwrap().remove("image");
        v["limits"].as_object_mut().unwrap().remove("budget_usd");
        v["limits"]["max_runtime_seconds"] = json!("4h");
        v["worker"]["volume_gib"] = json!("big");
        v["worker"]["instance_types"] = json!(["c7g.4xlarge", 7]);
        v["worker"]["colour"] = json!("blue");
        // A field that parses but breaks a rule is reported too.
        v["worker"]["subnets"] = json!(["subnet-xyz"]);
        let errs = errors_of(v);
        assert!(has(&errs, "run_id", "missing"), "{errs:?}");
        assert!(has(&errs, "worker.image", "missing"), "{errs:?}");
        assert!(has(&errs, "limits.budget_usd", "missing"), "{errs:?}");
        assert!(
            has(&errs, "limits.max_runtime_seconds", "expected u64"),
            "{errs:?}"
        );
        assert!(has(&errs, "worker.volume_gib", "expected u32"), "{errs:?}");
        assert!(
            has(&errs, "worker.instance_types[1]", "expected a string"),
            "{errs:?}"
        );
        assert!(
            has(&errs, "worker.colour", "unknown field `colour`"),
            "{errs:?}"
        );
        assert!(
            has(&errs, "worker.subnets[0]", "not a subnet id"),
            "{errs:?}"
        );
        // Nothing about the values put in to get past the missing and mistyped ones.
        assert_eq!(errs.len(), 8, "{errs:?}");
    }

    #[test]
    fn a_missing_section_is_one_finding_and_a_non_object_is_named() {
        let mut v = sample();
        v.as_object_mut().unwrap().remove("limits");
        v.as_object_mut().unwrap().remove("worker");
        let errs = errors_of(v);
        assert_eq!(
            errs.iter().map(|e| e.field.as_str()).collect::<Vec<_>>(),
            ["worker", "limits"],
            "{errs:?}"
        );
        let errs = errors_of(json!([1, 2]));
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].field, "runspec");
        assert!(errs[0].message.contains("not an array"), "{errs:?}");
        // A wrong section is named once, not with each of its fields.
        let mut v = sample();
        v["limits"] = json!("none");
        let errs = errors_of(v);
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(has(&errs, "limits", "expected struct Limits"), "{errs:?}");
    }

    #[test]
    fn candidates_are_bounded_by_what_one_launch_can_try() {
        let mut v = sample();
        v["worker"]["instance_types"] = json!([
            "c7g.large",
            "c7g.xlarge",
            "c7g.2xlarge",
            "c7g.4xlarge",
            "c7g.8xlarge"
        ]);
        v["worker"]["subnets"] = json!((0..9)
            .map(|i| format!("subnet-{i:08x}"))
            .collect::<Vec<_>>());
        assert!(has(
            &errors_of(v.clone()),
            "worker.subnets",
            "5 instance types × 9 subnets make 45 candidates; at most 40"
        ));
        v["worker"]["subnets"] = json!((0..8)
            .map(|i| format!("subnet-{i:08x}"))
            .collect::<Vec<_>>());
        assert!(RunSpec::parse(&v).is_ok(), "{:?}", errors_of(v));
    }

    #[test]
    fn heartbeat_must_be_shorter_than_the_runtime() {
        let mut v = sample();
        v["limits"]["max_runtime_seconds"] = json!(600);
        v["limits"]["heartbeat_seconds"] = json!(600);
        assert!(has(
            &errors_of(v.clone()),
            "limits.heartbeat_seconds",
            "must be shorter than limits.max_runtime_seconds (600)"
        ));
        v["limits"]["heartbeat_seconds"] = json!(599);
        assert!(RunSpec::parse(&v).is_ok());
    }

    /// The repository's root, where `runspec.schema.json` and the examples are.
    fn repo(rel: &str) -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../..")
            .join(rel)
    }

    #[test]
    fn a_market_policy_is_named_as_the_runspec_spells_it() {
        for p in [
            MarketPolicy::Spot,
            MarketPolicy::OnDemand,
            MarketPolicy::SpotThenOnDemand,
        ] {
            assert_eq!(serde_json::to_value(p).unwrap(), p.as_str());
        }
    }

    #[test]
    fn the_committed_schema_is_the_types_schema() {
        let path = repo("runspec.schema.json");
        let generated = serde_json::to_string_pretty(&RunSpec::json_schema()).unwrap() + "\n";
        if std::env::var_os("EPHEMERA_WRITE_SCHEMA").is_some() {
            std::fs::write(&path, &generated).unwrap();
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == generated,
            "runspec.schema.json differs from the RunSpec's types; write it again with \
             `EPHEMERA_WRITE_SCHEMA=1 cargo test -p ephemera-core schema`"
        );
    }

    /// The object schema `node` stands for: its `$ref` followed, an optional's non-null branch.
    fn object_schema<'a>(schema: &'a Value, node: &'a Value) -> Option<&'a Value> {
        if let Some(r) = node.get("$ref").and_then(Value::as_str) {
            let name = r.strip_prefix("#/$defs/")?;
            return object_schema(schema, &schema["$defs"][name]);
        }
        if let Some(alts) = node
            .get("anyOf")
            .or(node.get("oneOf"))
            .and_then(Value::as_array)
        {
            return alts.iter().find_map(|a| object_schema(schema, a));
        }
        node.get("properties").is_some().then_some(node)
    }

    /// Fields of `doc` the schema does not list, by path (a map's keys are free).
    fn unknown_to_schema(schema: &Value, node: &Value, doc: &Value, at: &str) -> Vec<String> {
        let (Some(obj), Some(node)) = (doc.as_object(), object_schema(schema, node)) else {
            return vec![];
        };
        let mut out = vec![];
        for (k, v) in obj {
            let path = if at.is_empty() {
                k.clone()
            } else {
                format!("{at}.{k}")
            };
            match node["properties"].get(k) {
                Some(sub) => out.extend(unknown_to_schema(schema, sub, v, &path)),
                None if node.get("additionalProperties") == Some(&Value::Bool(false)) => {
                    out.push(path)
                }
                None => {}
            }
        }
        out
    }

    #[test]
    fn the_schema_and_validate_agree_on_every_example() {
        let schema = RunSpec::json_schema();
        assert_eq!(
            schema["additionalProperties"], false,
            "unknown fields are refused"
        );
        let required: Vec<&str> = schema["required"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(required, ["run_id", "worker", "limits"]);
        for rel in ["events/runspec.json", "examples/resumable-job/runspec.json"] {
            let text = std::fs::read_to_string(repo(rel)).unwrap();
            let doc: Value = serde_json::from_str(&text).unwrap();
            assert!(
                doc["$schema"]
                    .as_str()
                    .is_some_and(|s| s.ends_with("runspec.schema.json")),
                "{rel}"
            );
            assert!(
                crate::admission::parse(&doc).is_ok(),
                "{rel}: {:?}",
                crate::admission::parse(&doc).err()
            );
            assert_eq!(
                unknown_to_schema(&schema, &schema, &doc, ""),
                Vec::<String>::new(),
                "{rel}"
            );
            // A field neither knows is refused by both.
            let mut wrong = doc.clone();
            wrong["limits"]["budget"] = json!(5);
            assert_eq!(
                unknown_to_schema(&schema, &schema, &wrong, ""),
                ["limits.budget"]
            );
            assert!(has(&errors_of(wrong), "limits.budget", "unknown field"));
        }
    }

    #[test]
    fn a_job_is_refused_before_launch_when_the_worker_would_refuse_it() {
        let mut v = sample();
        v["worker"]["args"] = json!(["exec", "--grace", "60", "--", "python3", "job.py"]);
        assert!(RunSpec::parse(&v).is_ok(), "{:?}", errors_of(v.clone()));
        v["worker"]["args"] = json!(["exec", "python3", "job.py"]);
        assert!(has(
            &errors_of(v.clone()),
            "worker.args",
            "`--` and the command are missing"
        ));
        v["worker"]["args"] = json!(["exec", "--"]);
        assert!(has(
            &errors_of(v.clone()),
            "worker.args",
            "no command after `--`"
        ));
        v["worker"]["args"] = json!(["exec", "--grace", "300", "--", "sh"]);
        assert!(has(
            &errors_of(v.clone()),
            "worker.args[2]",
            "1 to 110 seconds"
        ));
        v["worker"]["args"] = json!(["exec", "--grace=0", "--", "sh"]);
        assert!(has(
            &errors_of(v.clone()),
            "worker.args[1]",
            "1 to 110 seconds"
        ));
        v["worker"]["args"] = json!([
            "exec",
            "--checkpoint",
            "c",
            "--checkpoint-every",
            "5",
            "--",
            "sh"
        ]);
        let errs = errors_of(v.clone());
        assert!(
            has(&errs, "worker.args[3]", "10 to 86400 seconds"),
            "{errs:?}"
        );
        assert!(
            has(&errs, "worker.args", "--checkpoint needs --checkpoint-to"),
            "{errs:?}"
        );
        v["worker"]["args"] = json!(["exec", "--keep-checkpoints", "--", "sh"]);
        assert!(has(
            &errors_of(v.clone()),
            "worker.args",
            "--keep-checkpoints needs --checkpoint"
        ));
        v["worker"]["args"] = json!([
            "exec",
            "--checkpoint=c",
            "--checkpoint-to=s3://b/c/",
            "--keep-checkpoints=yes",
            "--",
            "sh"
        ]);
        assert!(has(
            &errors_of(v.clone()),
            "worker.args[3]",
            "--keep-checkpoints takes no value"
        ));
        v["worker"]["args"] = json!(["exec", "--to=s3://b/x/", "--", "sh"]);
        assert!(has(
            &errors_of(v.clone()),
            "worker.args",
            "--to needs --outputs"
        ));
        v["worker"]["args"] = json!([
            "exec",
            "--fetch",
            "s3://b/job.tgz",
            "--checkpoint",
            "c",
            "--checkpoint-to",
            "s3://b/c/",
            "--checkpoint-every=60",
            "--keep-checkpoints",
            "--outputs",
            "out",
            "--to",
            "s3://b/o/",
            "--",
            "sh",
            "--checkpoint"
        ]);
        assert!(RunSpec::parse(&v).is_ok(), "{:?}", errors_of(v));
    }

    #[test]
    fn a_jobs_counts_are_in_total_or_per_worker_and_nothing_else() {
        let mut v = sample();
        v["worker"]["args"] = json!(["exec", "--outputs", "out", "--to", "s3://b/o/", "--", "sh"]);
        v["expect"] = json!({"min_objects": 2});
        let spec = RunSpec::parse(&v).unwrap();
        assert_eq!(spec.expect.counts, Counts::Total, "total by default");
        assert!(spec.worker.is_job());
        v["expect"]["counts"] = json!("per_worker");
        assert_eq!(RunSpec::parse(&v).unwrap().expect.counts, Counts::PerWorker);
        v["expect"]["counts"] = json!("each");
        let errs = errors_of(v.clone());
        assert!(has(&errs, "expect.counts", "unknown variant"), "{errs:?}");
        // Per worker with nothing to count.
        v["expect"] = json!({"counts": "per_worker"});
        let errs = errors_of(v.clone());
        assert!(has(&errs, "expect.counts", "neither is set"), "{errs:?}");
        // The feature worker's workers share one export: nothing is per worker.
        let mut v = sample();
        v["expect"] = json!({"min_objects": 2, "counts": "per_worker"});
        assert!(!RunSpec::parse(&sample()).unwrap().worker.is_job());
        let errs = errors_of(v);
        assert!(has(&errs, "expect.counts", "applies to a job"), "{errs:?}");
    }

    #[test]
    fn a_job_is_not_held_to_partitions_or_rows() {
        let mut v = sample();
        v["worker"]["args"] = json!(["exec", "--", "./train"]);
        v["expect"] = json!({"partitions": 3, "min_rows": 10});
        let errs = errors_of(v.clone());
        assert!(has(&errs, "expect.partitions", "a job"), "{errs:?}");
        assert!(has(&errs, "expect.min_rows", "min_objects"), "{errs:?}");
        v["expect"] = json!({"min_objects": 1});
        assert!(RunSpec::parse(&v).is_ok());
    }

    #[test]
    fn empty_candidates_and_mixed_architectures() {
        let mut v = sample();
        v["worker"]["instance_types"] = json!([]);
        assert!(has(
            &errors_of(v.clone()),
            "worker.instance_types",
            "at least one"
        ));
        v["worker"]["instance_types"] = json!(["c7g.large", "c7i.large"]);
        assert!(has(
            &errors_of(v),
            "worker.instance_types",
            "one architecture"
        ));
    }

    #[test]
    fn an_artifact_that_is_not_an_s3_url_is_named_once_beside_the_other_bad_fields() {
        let mut v = sample();
        v["worker"]["artifact"] = json!("https://example.com/w");
        v["limits"]["budget_usd"] = json!(-1);
        let errs = errors_of(v);
        let artifact: Vec<_> = errs
            .iter()
            .filter(|e| e.field == "worker.artifact")
            .collect();
        assert_eq!(artifact.len(), 1, "{errs:?}");
        assert!(
            artifact[0].message.contains("expected s3://bucket/key"),
            "{errs:?}"
        );
        assert!(
            errs.iter().any(|e| e.field == "limits.budget_usd"),
            "{errs:?}"
        );
        // A prefix is an S3 URL but not the worker binary.
        let mut v = sample();
        v["worker"]["artifact"] = json!("s3://bkt/worker/");
        let errs = errors_of(v);
        assert!(
            errs.iter()
                .any(|e| e.field == "worker.artifact" && e.message.contains("of the worker binary")),
            "{errs:?}"
        );
    }

    #[test]
    fn ids_urls_and_secrets() {
        let mut v = sample();
        v["worker"]["subnets"] = json!(["subnet-xyz"]);
        v["worker"]["security_groups"] = json!(["default"]);
        v["worker"]["image"] = json!("ubuntu");
        v["worker"]["artifact"] = json!("https://example.com/w");
        v["worker"]["args"] = json!(["--database-url", "postgres://u:hunter2@db/x"]);
        v["expect"] = json!({"export_prefix": "/tmp/out"});
        v["notify"] = json!({"topic_arn": "my-topic"});
        v["tags"] = json!({"ephemera:run": "x"});
        let errs = errors_of(v);
        for f in [
            "worker.subnets[0]",
            "worker.security_groups[0]",
            "worker.image",
            "worker.artifact",
            "worker.args[1]",
            "expect.export_prefix",
            "notify.topic_arn",
            "tags.ephemera:run",
        ] {
            assert!(errs.iter().any(|e| e.field == f), "{f} missing in {errs:?}");
        }
    }

    #[test]
    fn credentials_are_refused_as_flags_and_pairs_but_secret_ids_are_not() {
        let args_errs = |args: Value| {
            let mut v = sample();
            v["worker"]["args"] = args;
            RunSpec::parse(&v)
                .err()
                .map_or(vec![], |e| e.errors)
                .into_iter()
                .filter(|e| e.message.contains("carries a password"))
                .map(|e| e.field)
                .collect::<Vec<_>>()
        };
        for (args, field) in [
            (json!(["--password", "hunter2"]), "worker.args[1]"),
            (json!(["--password=hunter2"]), "worker.args[0]"),
            (json!(["--token", "abc"]), "worker.args[1]"),
            (json!(["--api-key", "abc"]), "worker.args[1]"),
            (json!(["--db-password", "x"]), "worker.args[1]"),
            (json!(["api_key=abc"]), "worker.args[0]"),
            (json!(["GITHUB_TOKEN=ghp_x"]), "worker.args[0]"),
            (json!(["--client-secret=abc"]), "worker.args[0]"),
            (json!(["secret=abc"]), "worker.args[0]"),
            (json!(["password=x"]), "worker.args[0]"),
            (
                json!(["exec", "--", "python3", "job.py", "--token", "t"]),
                "worker.args[5]",
            ),
            // Each flag, either spelling, any case; each key=value form.
            (json!(["--PASSWORD", "hunter2"]), "worker.args[1]"),
            (json!(["--Token=abc"]), "worker.args[0]"),
            (json!(["--secret", "abc"]), "worker.args[1]"),
            (json!(["--secret=abc"]), "worker.args[0]"),
            (json!(["--api_key", "abc"]), "worker.args[1]"),
            (json!(["--api-key=abc"]), "worker.args[0]"),
            (json!(["token=abc"]), "worker.args[0]"),
            (json!(["apikey=abc"]), "worker.args[0]"),
            (json!(["API_KEY=abc"]), "worker.args[0]"),
            (json!(["Password=abc"]), "worker.args[0]"),
            // Inside a shell line: the words are the arguments the shell will pass.
            (
                json!([
                    "exec",
                    "--",
                    "sh",
                    "-c",
                    "mysql --password hunter2 -e 'select 1'"
                ]),
                "worker.args[4]",
            ),
            (
                json!(["exec", "--", "sh", "-c", "curl -d token=abc https://x"]),
                "worker.args[4]",
            ),
        ] {
            assert_eq!(args_errs(args.clone()), [field], "{args}");
        }
        // A secret's id, a timeout named after the token, counts of tokens: not credentials.
        for args in [
            json!(["--database-secret", "ephemera/fx-db"]),
            json!(["--token-timeout-seconds", "600"]),
            json!([
                "exec",
                "--",
                "train",
                "--max-tokens=4096",
                "--tokenizer",
                "bpe"
            ]),
            json!(["--password="]),
            // A file or a URL that holds or hands out the credential is not the credential:
            // refusing `--password-file` would push people to pass the value itself.
            json!(["--password-file", "/run/secrets/db"]),
            json!(["--token-url", "https://auth.example.com/token"]),
            json!(["--secret-name", "team/api-key"]),
            // The job reading its secret from the environment `job.secrets` fills.
            json!(["--password=$DB_PASSWORD"]),
            json!(["--token", "${HF_TOKEN}"]),
            json!([
                "exec",
                "--",
                "sh",
                "-c",
                "mysql --password \"$DB_PASSWORD\" -e 'select 1'; echo token count"
            ]),
        ] {
            assert!(args_errs(args.clone()).is_empty(), "{args}");
        }
        // The refusal says where the value belongs.
        let mut v = sample();
        v["worker"]["args"] = json!(["--password", "hunter2"]);
        assert!(has(&errors_of(v), "worker.args[1]", "job.secrets"));
    }

    #[test]
    fn job_retry_is_refused_naming_each_field_and_what_is_allowed() {
        let job = |args: Value, retry: Value| {
            let mut v = sample();
            v["worker"]["args"] = args;
            v["expect"] = json!({});
            v["job"] = json!({ "retry": retry });
            v
        };
        let exec = json!(["exec", "--", "python3", "train.py"]);
        let ok = RunSpec::parse(&job(
            exec.clone(),
            json!({"on_exit_codes": [75, 137], "max": 2, "backoff_seconds": 30}),
        ))
        .unwrap();
        assert_eq!(
            ok.job.unwrap().retry.unwrap(),
            JobRetry {
                on_exit_codes: vec![75, 137],
                max: 2,
                backoff_seconds: 30
            }
        );
        let errs = errors_of(job(
            exec,
            json!({"on_exit_codes": [0, 256, 3], "max": 11, "backoff_seconds": 3601}),
        ));
        assert!(
            has(&errs, "job.retry.on_exit_codes[0]", "0 is a success"),
            "{errs:?}"
        );
        assert!(
            has(&errs, "job.retry.on_exit_codes[1]", "outside 1..=255"),
            "{errs:?}"
        );
        assert!(
            has(&errs, "job.retry.max", "11 is outside 1..=10"),
            "{errs:?}"
        );
        assert!(
            has(&errs, "job.retry.backoff_seconds", "outside 0..=3600"),
            "{errs:?}"
        );
        assert_eq!(errs.len(), 4, "{errs:?}");
        let errs = errors_of(job(
            json!(["run", "--stages", "indicators"]),
            json!({"on_exit_codes": [], "max": 1}),
        ));
        assert!(
            has(&errs, "job.retry", "worker.args must be `exec"),
            "{errs:?}"
        );
        assert!(
            has(&errs, "job.retry.on_exit_codes", "is empty"),
            "{errs:?}"
        );
        let errs = errors_of(job(
            json!(["exec", "--", "true"]),
            json!({"on_exit_codes": [1], "max": 1, "sleep": 3}),
        ));
        assert!(errs.iter().any(|e| e.message.contains("sleep")), "{errs:?}");
    }

    #[test]
    fn job_secrets_are_refused_naming_each_field_and_what_is_allowed() {
        const SM: &str = "arn:aws:secretsmanager:us-east-1:123456789012:secret:team/api-AbCdEf";
        const PS: &str = "arn:aws:ssm:us-east-1:123456789012:parameter/team/db";
        let job = |secrets: Value| {
            let mut v = sample();
            v["worker"]["args"] = json!(["exec", "--", "python3", "job.py"]);
            v["job"] = json!({ "secrets": secrets });
            v
        };
        let spec = RunSpec::parse(&job(json!({"API_KEY": SM, "DB_PASSWORD": PS}))).unwrap();
        assert_eq!(
            spec.job_secrets().collect::<Vec<_>>(),
            [("API_KEY", SM), ("DB_PASSWORD", PS)]
        );
        assert_eq!(spec.job_image(), None, "secrets without an image");
        let errs = errors_of(job(json!({
            "EPHEMERA_RUN_ID": SM,
            "AWS_ACCESS_KEY_ID": SM,
            "1X": SM,
            "KEY": "team/api-key",
            "WILD": "arn:aws:ssm:us-east-1:123456789012:parameter/team/*",
        })));
        for (field, says) in [
            ("job.secrets.EPHEMERA_RUN_ID", "starts with EPHEMERA_"),
            ("job.secrets.AWS_ACCESS_KEY_ID", "starts with AWS_"),
            ("job.secrets.1X", "environment variable's name"),
            ("job.secrets.KEY", "Secrets Manager secret's ARN"),
            ("job.secrets.WILD", "no wildcards"),
        ] {
            assert!(has(&errs, field, says), "{field}: {errs:?}");
        }
        assert_eq!(errs.len(), 5, "{errs:?}");
        let many: serde_json::Map<String, Value> = (0..=job_secrets::MAX_SECRETS)
            .map(|i| (format!("S{i}"), json!(SM)))
            .collect();
        assert!(has(
            &errors_of(job(Value::Object(many))),
            "job.secrets",
            "at most"
        ));
        // The feature worker takes none.
        let mut v = sample();
        v["job"] = json!({ "secrets": {"API_KEY": SM} });
        assert!(has(&errors_of(v), "job.secrets", "exec"));
    }

    #[test]
    fn a_run_id_is_not_a_relative_path() {
        for id in [".", "..", "a..b", ".hidden"] {
            let mut v = sample();
            v["run_id"] = json!(id);
            assert!(
                has(&errors_of(v), "run_id", "must not start with '.'"),
                "{id}"
            );
        }
        let mut v = sample();
        v["run_id"] = json!("fx.2023-04");
        assert!(RunSpec::parse(&v).is_ok());
    }

    #[test]
    fn a_snapshot_names_one_rds_source() {
        let spec = RunSpec::parse(&sample()).unwrap();
        assert_eq!(spec.database, Database::default());
        let mut v = sample();
        v["database"] = json!({"snapshot_before": {"instance": "fx-db"}});
        let spec = RunSpec::parse(&v).unwrap();
        assert_eq!(
            spec.database.snapshot_before.unwrap().instance.as_deref(),
            Some("fx-db")
        );
        assert_eq!(spec.database.keep_snapshots, 3, "three kept by default");
        v["database"]["keep_snapshots"] = json!(101);
        let errs = errors_of(v);
        assert!(
            has(&errs, "database.keep_snapshots", "outside 0..=100")
                && has(&errs, "database.keep_snapshots", "0 keeps every one"),
            "{errs:?}"
        );
        for (source, field, needle) in [
            (json!({}), "database.snapshot_before", "exactly one"),
            (
                json!({"instance": "a", "cluster": "b"}),
                "database.snapshot_before",
                "exactly one",
            ),
            (
                json!({"instance": "1db"}),
                "database.snapshot_before.instance",
                "a letter first",
            ),
            (
                json!({"cluster": "fx--db"}),
                "database.snapshot_before.cluster",
                "none doubled",
            ),
        ] {
            let mut v = sample();
            v["database"] = json!({"snapshot_before": source, "snapshot_timeout_seconds": 10});
            let errs = errors_of(v);
            assert!(has(&errs, field, needle), "{errs:?}");
            assert!(has(
                &errs,
                "database.snapshot_timeout_seconds",
                "60..=86400"
            ));
        }
        let mut v = sample();
        v["database"] = json!({"snapshot_before": {"db": "x"}});
        assert!(has(&errors_of(v), "database.snapshot_before.db", ""));
    }

    #[test]
    fn worker_count_is_one_unless_given_and_bounded() {
        assert_eq!(RunSpec::parse(&sample()).unwrap().worker.count, 1);
        for bad in [0, MAX_WORKERS + 1] {
            let mut v = sample();
            v["worker"]["count"] = json!(bad);
            let errs = errors_of(v);
            assert!(has(&errs, "worker.count", "outside 1..=40"), "{errs:?}");
        }
        let mut v = sample();
        v["worker"]["count"] = json!(3);
        assert_eq!(RunSpec::parse(&v).unwrap().worker.count, 3);
        // Every worker's boot polls land in the one history: many workers with long boots
        // would pass Step Functions' event limit.
        v["worker"]["count"] = json!(MAX_WORKERS);
        v["limits"]["boot_timeout_seconds"] = json!(3600);
        v["limits"]["max_relaunches"] = json!(3);
        v["waits"] = json!({"boot_poll_seconds": 10});
        let errs = crate::admission::parse(&v).unwrap_err().errors;
        assert!(has(&errs, "waits", "worker.count"), "{errs:?}");
    }

    #[test]
    fn limits_ranges() {
        let mut v = sample();
        v["limits"] = json!({"max_runtime_seconds": 30, "budget_usd": 1, "boot_timeout_seconds": 1, "max_relaunches": 11});
        let errs = errors_of(v);
        assert!(has(&errs, "limits.max_runtime_seconds", "outside 60"));
        assert!(has(&errs, "limits.boot_timeout_seconds", "outside 5"));
        assert!(has(&errs, "limits.max_relaunches", "outside 0..=10"));
    }

    #[test]
    fn s3_urls() {
        assert_eq!(parse_s3_url("s3://bkt/a/b"), Some(("bkt", "a/b")));
        assert_eq!(parse_s3_url("s3://bkt"), Some(("bkt", "")));
        assert_eq!(parse_s3_url("s3://B/x"), None);
        assert_eq!(parse_s3_url("http://b/x"), None);
    }
}
