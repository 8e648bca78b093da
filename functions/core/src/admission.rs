//! Admission: whether a run may start, decided once, by quota-check (the run's first state)
//! and by `ephemera validate`, before anything is waited for or launched. Three layers, each
//! naming every field it refuses at once:
//!
//! - the RunSpec's fields and their rules (`RunSpec::parse`);
//! - the run's bounds, which need more than the fields: its execution history within Step
//!   Functions' 25,000 events and its run document within the 256 KiB state quota (`payload`),
//!   both of which end an execution without its cleanup when passed;
//! - what one deployment lets a RunSpec name ([`Deployment`]). The template grants the worker
//!   and the functions exactly one artifact bucket, one export bucket, one instance profile and
//!   its topics; a RunSpec that names anything else would be refused by AWS only after
//!   instances were launched and billed (or, for the export, after the whole job ran).

use crate::runspec::{parse_s3_url, FieldError, InvalidRunSpec, RunSpec};
use crate::s3_url::S3Url;
use crate::{image, job_secrets, payload, run_credentials, vcpus};

/// The RunSpec in `value`, its fields, its job's image and its bounds checked: what
/// `ephemera validate` says.
pub fn parse(value: &serde_json::Value) -> Result<RunSpec, InvalidRunSpec> {
    RunSpec::parse_then(value, beyond_the_fields)
}

/// The RunSpec in `value`, admitted to `deployment`: quota-check's judgement.
pub fn admit(
    value: &serde_json::Value,
    deployment: &Deployment,
) -> Result<RunSpec, InvalidRunSpec> {
    let spec = parse(value)?;
    deployment.check(&spec)?;
    Ok(spec)
}

/// A typed RunSpec's fields, image and bounds, as [`parse`] checks them.
pub fn validate(spec: &RunSpec) -> Result<(), InvalidRunSpec> {
    let mut errors = spec.validate().err().map_or(vec![], |e| e.errors);
    errors.extend(beyond_the_fields(spec));
    match errors.is_empty() {
        true => Ok(()),
        false => Err(InvalidRunSpec { errors }),
    }
}

/// What needs more than one field: the job's image against the candidates and the arguments
/// (`image`, said with the field rules), then, when those and the rules all hold, the bounds.
fn beyond_the_fields(spec: &RunSpec) -> Vec<FieldError> {
    let image = image::check(spec);
    if !image.is_empty() || spec.validate().is_err() {
        return image;
    }
    bounds(spec)
}

/// The run's history, then (when it holds) its document: each bound named on the fields that
/// move it.
fn bounds(spec: &RunSpec) -> Vec<FieldError> {
    let events = history_events(spec);
    if events > MAX_HISTORY_EVENTS {
        let crate::runspec::PollBounds {
            quota,
            snapshot,
            boot,
        } = spec.poll_bounds();
        return vec![FieldError {
            field: "waits".into(),
            message: format!(
                "up to {quota} quota polls, {snapshot} snapshot polls and {boot} boot polls make up to {events} execution history events; Step Functions ends an execution at 25,000 without running its cleanup, so at most {MAX_HISTORY_EVENTS} are allowed: raise waits.quota_poll_max_seconds or waits.boot_poll_seconds, or lower quota.max_wait_seconds, database.snapshot_timeout_seconds, limits.boot_timeout_seconds, limits.max_relaunches or worker.count (with the rest as given, at most {} workers fit)",
                most_workers_within_history(spec)
            ),
        }];
    }
    let b = payload::bound(spec);
    if b.state() <= payload::PLANNED_BYTES {
        return vec![];
    }
    let relaunches = spec.limits.max_relaunches;
    vec![FieldError {
        field: "worker.count".into(),
        message: format!(
            "{} workers with up to {relaunches} relaunches each could carry the run's state to {} KiB ({} KiB a worker at most); Step Functions fails an execution past {} KiB without running its cleanup, so at most {} KiB are planned: with limits.max_relaunches {relaunches}, at most {} workers (or lower limits.max_relaunches)",
            spec.worker.count,
            b.state() / 1024,
            b.per_worker / 1024,
            payload::STATE_QUOTA_BYTES / 1024,
            payload::PLANNED_BYTES / 1024,
            payload::most_workers(spec)
        ),
    }]
}

/// The most execution history events the run can record: every poll loop at its longest
/// ([`RunSpec::poll_bounds`], 9 events a poll), each worker's other states and what the
/// run records besides, counted generously.
pub fn history_events(spec: &RunSpec) -> u64 {
    spec.poll_bounds().total() * EVENTS_PER_POLL
        + FIXED_EVENTS
        + u64::from(spec.worker.count)
            * (EVENTS_PER_WORKER + u64::from(vcpus::LAUNCH_QUOTA_WAITS) * EVENTS_PER_QUOTA_WAIT)
}

/// The most workers whose history stays within [`MAX_HISTORY_EVENTS`], the rest as given
/// (0 when not even one does).
pub fn most_workers_within_history(spec: &RunSpec) -> u32 {
    let mut s = spec.clone();
    let mut most = 0;
    for n in 1..=crate::runspec::MAX_WORKERS {
        s.worker.count = n;
        if history_events(&s) > MAX_HISTORY_EVENTS {
            break;
        }
        most = n;
    }
    most
}

/// A poll loop's history events: Task (entered, scheduled, started, succeeded, exited),
/// Choice (entered, exited) and Wait (entered, exited).
const EVENTS_PER_POLL: u64 = 9;
/// Everything else a run with relaunches records, generously.
const FIXED_EVENTS: u64 = 400;
/// A wait for vCPU quota at launch ([`vcpus::LAUNCH_QUOTA_WAITS`] a worker at most): the
/// refused LaunchWorker (entered, scheduled, started, failed, exited) and two Pass states that
/// read the wait from its error (entered, exited each), then the Wait (entered, exited).
const EVENTS_PER_QUOTA_WAIT: u64 = 11;
/// What each worker's Map iteration records besides its boot polls and its waits for vCPU quota
/// at launch: iteration events, launch, completion wait, relaunches, release, generously.
const EVENTS_PER_WORKER: u64 = 150;
/// Step Functions' hard limit is 25,000 events per execution; keep a margin.
pub const MAX_HISTORY_EVENTS: u64 = 20_000;

/// The deployment's grants (the functions' environment); `None` or empty: not restricted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Deployment {
    /// The topics the functions may publish to.
    pub allowed_topics: Vec<String>,
    /// The one bucket the worker's role may read its binary from.
    pub artifact_bucket: Option<String>,
    /// The one bucket the worker's role may write its export to and verify-completion reads.
    pub export_bucket: Option<String>,
    /// The instance profile the functions may pass (iam:PassRole on its role only), by name.
    pub worker_profile: Option<String>,
    /// The stack's region: a job's secrets are read there (the worker's grants name it).
    pub region: Option<String>,
    /// The template's `DatabaseSecretPrefix`: the workers may read only secrets whose name, and
    /// parameters whose path, starts with it.
    pub secret_prefix: Option<String>,
}

impl Deployment {
    /// Every field the deployment cannot serve, named at once.
    pub fn check(&self, spec: &RunSpec) -> Result<(), InvalidRunSpec> {
        let mut errors = vec![];
        let mut add = |field: String, message: String| errors.push(FieldError { field, message });
        if let Some(allowed) = &self.artifact_bucket {
            if spec.worker.artifact.bucket() != allowed {
                add(
                    "worker.artifact".into(),
                    format!(
                        "'{}' is outside the artifact bucket {allowed}, the only one the worker's role may read",
                        spec.worker.artifact
                    ),
                );
            }
        }
        if let Some(t) = &spec.notify.topic_arn {
            if !self.allowed_topics.is_empty() && !self.allowed_topics.contains(t) {
                add(
                    "notify.topic_arn".into(),
                    format!(
                        "'{t}' is not a topic this deployment may publish to; allowed: {} (omit the field to use it)",
                        self.allowed_topics.join(", ")
                    ),
                );
            }
        }
        let prefix = spec.expect.export_prefix.as_ref().map(S3Url::as_str);
        if let (Some(allowed), Some(p)) = (&self.export_bucket, &spec.expect.export_prefix) {
            if p.bucket() != allowed {
                add(
                    "expect.export_prefix".into(),
                    format!(
                        "'{p}' is outside the export bucket {allowed}, the only one the worker may write to and verify-completion may read; use s3://{allowed}/<prefix>/"
                    ),
                );
            }
        }
        self.check_job_places(&spec.worker.args, &mut add);
        self.check_secrets(spec, &mut add);
        self.check_session_policies(spec, &mut add);
        self.check_run_prefix(spec, &mut add);
        for (i, target) in crate::runspec::flag_values(&spec.worker.args, &["--export", "--to"]) {
            let Some((bucket, _)) = parse_s3_url(target) else {
                continue; // a directory on the instance: the worker's own business
            };
            let field = format!("worker.args[{i}]");
            match (&self.export_bucket, prefix) {
                (Some(allowed), _) if bucket != allowed => add(
                    field,
                    format!(
                        "--export '{target}' is outside the export bucket {allowed}, the only one the worker's role may write to"
                    ),
                ),
                (_, Some(p)) if !target.starts_with(p) && !p.starts_with(target) => add(
                    field,
                    format!(
                        "--export '{target}' is not under expect.export_prefix '{p}': verify-completion would find no manifest after the whole job ran"
                    ),
                ),
                _ => {}
            }
        }
        if let (Some(ours), Some(asked)) = (&self.worker_profile, &spec.worker.instance_profile) {
            if !names_profile(asked, ours) {
                add(
                    "worker.instance_profile".into(),
                    format!(
                        "'{asked}' is not this deployment's worker profile {ours}: the functions may pass only its role, and only its role may read the run's task token (omit the field)"
                    ),
                );
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(InvalidRunSpec { errors })
        }
    }
}

/// The longest ARN the stack's run role can have: `arn:aws:iam::<account>:role/` and IAM's
/// 64-character role name (IAM user guide, "IAM and AWS STS quotas"). The session policies are
/// measured with it, since CheckQuota does not know the role's ARN.
const LONGEST_RUN_ROLE_ARN: &str = concat!(
    "arn:aws-us-gov:iam::123456789012:role/",
    "rrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrr"
);

impl Deployment {
    /// The run's two session policies (the agent's and the job's, `run_credentials`) fit in
    /// what AssumeRole takes: one too long would fail the launch after the run was admitted.
    /// The job's names the inputs only (`--fetch`), the agent's adds `job.secrets`: the field
    /// named is the one that made it too long.
    fn check_session_policies(&self, spec: &RunSpec, add: &mut impl FnMut(String, String)) {
        let (Some(artifact_bucket), Some(export_bucket)) = (
            self.artifact_bucket.as_deref(),
            self.export_bucket.as_deref(),
        ) else {
            return;
        };
        let stack = run_credentials::Stack {
            artifact_bucket,
            export_bucket,
            run_role_arn: LONGEST_RUN_ROLE_ARN,
        };
        for (holder, field, names) in [
            (
                run_credentials::Holder::Job,
                "worker.args",
                "the inputs its --fetch arguments and worker.artifact name",
            ),
            (
                run_credentials::Holder::Agent,
                "job.secrets",
                "the inputs and the secrets the run names",
            ),
        ] {
            if let Err(e) = run_credentials::session_policy(spec, &stack, holder) {
                add(field.into(), format!("{e}: it grants {names}"));
                return;
            }
        }
    }

    /// `job.secrets` the run's role can read: in the stack's region, under its secret prefix
    /// (`template.yaml`, RunRole's `ReadTheSecretsItsSessionNames` and
    /// `ReadTheParametersItsSessionNames`). Any other would be refused on the instance, after
    /// the launch was billed.
    fn check_secrets(&self, spec: &RunSpec, add: &mut impl FnMut(String, String)) {
        for (name, arn) in spec.job_secrets() {
            let Ok(parsed) = job_secrets::parse_arn(arn) else {
                continue; // the field rule names it
            };
            let field = format!("job.secrets.{name}");
            if let Some(region) = self.region.as_deref().filter(|r| *r != parsed.region) {
                add(
                    field.clone(),
                    format!(
                        "'{arn}' is in {}; the stack's workers read secrets in its region, {region}",
                        parsed.region
                    ),
                );
            }
            if let Some(prefix) = self
                .secret_prefix
                .as_deref()
                .filter(|p| !parsed.name.starts_with(p))
            {
                let example = match parsed.kind {
                    job_secrets::Kind::SecretsManager => format!("secret:{prefix}<name>"),
                    job_secrets::Kind::Parameter => format!("parameter/{prefix}<name>"),
                };
                add(
                    field,
                    format!(
                        "'{arn}' is outside the stack's secrets: the workers may read only those named {prefix}… (DatabaseSecretPrefix), e.g. …:{example}"
                    ),
                );
            }
        }
    }

    /// Where a run writes (`--export`, `--to`, `--checkpoint-to` in the export bucket) lies under
    /// its own prefix `runs/<run id>/`: the run's session writes, lists and deletes nowhere else
    /// (`RunRole`, keyed on its `ephemera:run` tag), so a place outside it would fail only once
    /// the job has run. Refused here, naming the argument.
    fn check_run_prefix(&self, spec: &RunSpec, add: &mut impl FnMut(String, String)) {
        let Some(export) = &self.export_bucket else {
            return;
        };
        let own = crate::run_credentials::run_prefix(&spec.run_id);
        for (i, place) in
            crate::runspec::flag_values(&spec.worker.args, &["--export", "--to", "--checkpoint-to"])
        {
            let Some((bucket, key)) = parse_s3_url(place) else {
                continue; // a directory on the instance: the worker's own business
            };
            if bucket == export && !key.starts_with(&own) {
                add(
                    format!("worker.args[{i}]"),
                    format!(
                        "'{place}' is not under the run's own prefix s3://{export}/{own}: the run's credentials write, list and delete nowhere else; use s3://{export}/{own}<place>/"
                    ),
                );
            }
        }
        // A `--fetch` of a prefix lists it: the run's role lists only under its own prefix
        // (`RunRole`, `ListItsOwnRun`, which holds even for a session without its policy), so
        // a prefix elsewhere in the stack's buckets would fail on the instance, after the
        // launch was billed. An archive or one object is read anywhere the session names.
        let stack: Vec<&str> = [&self.export_bucket, &self.artifact_bucket]
            .into_iter()
            .flatten()
            .map(String::as_str)
            .collect();
        for (i, from) in crate::runspec::flag_values(&spec.worker.args, &["--fetch"]) {
            let Some((bucket, key)) = parse_s3_url(from) else {
                continue;
            };
            if from.ends_with('/') && stack.contains(&bucket) && !key.starts_with(&own) {
                add(
                    format!("worker.args[{i}]"),
                    format!(
                        "--fetch '{from}' is a prefix outside the run's own s3://{bucket}/{own}: the run's credentials list nowhere else; fetch an archive (s3://{bucket}/{key}inputs.tar.gz) or copy the inputs under s3://{bucket}/{own}inputs/"
                    ),
                );
            }
        }
    }

    /// A job's `--checkpoint-to` (read and written: the export bucket) and `--fetch` (read:
    /// the artifact or the export bucket), the only places the worker's role grants.
    fn check_job_places(&self, args: &[String], add: &mut impl FnMut(String, String)) {
        for (i, to) in crate::runspec::flag_values(args, &["--checkpoint-to"]) {
            match (parse_s3_url(to), &self.export_bucket) {
                (Some((bucket, _)), Some(allowed)) if bucket != allowed => add(
                    format!("worker.args[{i}]"),
                    format!("--checkpoint-to '{to}' is outside the export bucket {allowed}, the only one the worker's role may write to and read back from"),
                ),
                _ => {}
            }
        }
        for (i, from) in crate::runspec::flag_values(args, &["--fetch"]) {
            let Some((bucket, _)) = parse_s3_url(from) else {
                continue;
            };
            let readable: Vec<&String> = [&self.artifact_bucket, &self.export_bucket]
                .into_iter()
                .flatten()
                .collect();
            if !readable.is_empty() && !readable.contains(&&bucket.to_string()) {
                add(
                    format!("worker.args[{i}]"),
                    format!(
                        "--fetch '{from}' is outside the buckets the worker's role may read: {}",
                        readable
                            .iter()
                            .map(|b| b.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                );
            }
        }
    }
}

/// `asked` is the profile `name`, by name or by ARN (`arn:<partition>:iam::<account>:instance-profile/<path/>name`).
fn names_profile(asked: &str, name: &str) -> bool {
    if asked == name {
        return true;
    }
    asked.starts_with("arn:")
        && asked
            .split_once(":instance-profile/")
            .is_some_and(|(_, path)| path.rsplit('/').next() == Some(name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    use crate::runspec::tests::sample;

    fn errors_of(v: serde_json::Value) -> Vec<FieldError> {
        parse(&v).unwrap_err().errors
    }

    fn has(errs: &[FieldError], field: &str, needle: &str) -> bool {
        errs.iter()
            .any(|e| e.field == field && e.message.contains(needle))
    }

    fn payload_spec(count: u32, relaunches: u32) -> RunSpec {
        let mut spec = parse(&sample()).unwrap();
        spec.worker.count = count;
        spec.limits.max_relaunches = relaunches;
        spec
    }

    #[test]
    fn polls_that_could_outgrow_the_execution_history_are_refused() {
        // A 1 s boot poll over a 7,200 s boot timeout, three attempts: 21,603 boot polls.
        let mut v = sample();
        v["limits"]["boot_timeout_seconds"] = json!(7200);
        v["waits"] = json!({"boot_poll_seconds": 1});
        let errs = errors_of(v.clone());
        assert!(has(&errs, "waits", "21603 boot polls"), "{errs:?}");
        assert!(has(&errs, "waits", "25,000"), "{errs:?}");
        v["waits"] = json!({"boot_poll_seconds": 20});
        assert!(parse(&v).is_ok());
        // Quota polls over 30 days at a 60 s cap.
        let mut v = sample();
        v["quota"]["max_wait_seconds"] = json!(30 * 86_400);
        v["waits"] = json!({"quota_poll_min_seconds": 60, "quota_poll_max_seconds": 60});
        assert!(has(&errors_of(v.clone()), "waits", "43201 quota polls"));
        // The defaults (2 days, backoff to 30 min) stay far below the limit.
        let spec = parse(&sample()).unwrap();
        let p = spec.poll_bounds();
        assert!(p.quota < 120 && p.boot < 150 && p.snapshot == 0, "{p:?}");
        // A snapshot allowed a day, polled every 20 s: 4,322 polls, 38,898 events on their own
        // (this spec was accepted before the snapshot loop was counted).
        let mut v = sample();
        v["database"] =
            json!({"snapshot_before": {"instance": "fx-db"}, "snapshot_timeout_seconds": 86_400});
        let errs = errors_of(v.clone());
        assert!(has(&errs, "waits", "4322 snapshot polls"), "{errs:?}");
        assert!(
            has(&errs, "waits", "database.snapshot_timeout_seconds"),
            "{errs:?}"
        );
        // The default hour: 182 polls, within the bound.
        v["database"]["snapshot_timeout_seconds"] = json!(3600);
        assert_eq!(parse(&v).unwrap().poll_bounds().snapshot, 182);
    }

    #[test]
    fn the_history_of_the_defaults_and_the_most_workers_it_leaves_room_for() {
        // docs/guarantees.md's arithmetic: 100 quota polls, 46 boot polls an attempt, three attempts,
        // and up to six waits a worker for vCPU quota at launch.
        let spec = parse(&sample()).unwrap();
        let p = spec.poll_bounds();
        assert_eq!((p.quota, p.snapshot, p.boot), (100, 0, 138));
        assert_eq!(history_events(&spec), (100 + 138) * 9 + 400 + 150 + 6 * 11);
        assert_eq!(most_workers_within_history(&spec), 12);
        // Forty workers with the default waits: refused, naming how many fit.
        let mut v = sample();
        v["worker"]["count"] = json!(40);
        let errs = errors_of(v.clone());
        assert!(has(&errs, "waits", "at most 12 workers fit"), "{errs:?}");
        // With one attempt each and a 2-minute boot polled every 5 s, as tests/tests/limits.rs.
        v["limits"]["max_relaunches"] = json!(0);
        v["limits"]["boot_timeout_seconds"] = json!(120);
        v["waits"]["boot_poll_seconds"] = json!(5);
        assert!(parse(&v).is_ok(), "{:?}", errors_of(v));
    }

    #[test]
    fn a_run_that_could_pass_the_quota_is_refused_with_the_most_workers_that_fit() {
        let s = payload_spec(40, 5);
        assert!(payload::bound(&s).state() > payload::PLANNED_BYTES);
        let most = payload::most_workers(&s);
        assert!((1..40).contains(&most), "{most}");
        assert!(payload::bound(&payload_spec(most, 5)).state() <= payload::PLANNED_BYTES);
        assert!(payload::bound(&payload_spec(most + 1, 5)).state() > payload::PLANNED_BYTES);
        let mut v = sample();
        v["worker"]["count"] = 40.into();
        v["limits"]["max_relaunches"] = 5.into();
        // Few boot polls, so that the history's bound holds and the payload's is the one said.
        v["waits"] = serde_json::json!({"boot_poll_seconds": 60});
        v["limits"]["boot_timeout_seconds"] = 180.into();
        let errs = parse(&v).unwrap_err().errors;
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].field, "worker.count");
        assert!(
            errs[0].message.contains(&format!("at most {most} workers"))
                && errs[0].message.contains("256 KiB"),
            "{}",
            errs[0].message
        );
    }

    fn deployment() -> Deployment {
        Deployment {
            allowed_topics: vec!["arn:aws:sns:eu-west-1:123456789012:reports".into()],
            artifact_bucket: Some("artifacts".into()),
            export_bucket: Some("exports".into()),
            worker_profile: Some("stack-WorkerInstanceProfile-abc".into()),
            region: Some("eu-west-1".into()),
            secret_prefix: Some("ephemera/".into()),
        }
    }

    #[test]
    fn a_fetch_of_a_prefix_outside_the_runs_own_is_refused() {
        let job = |fetch: &str| {
            spec(|v| {
                v["worker"]["args"] = json!(["exec", "--fetch", fetch, "--", "true"]);
                v["expect"]["export_prefix"] = serde_json::Value::Null;
            })
        };
        let e = deployment()
            .check(&job("s3://artifacts/jobs/train-data/"))
            .unwrap_err();
        assert_eq!(
            e.errors
                .iter()
                .map(|e| e.field.as_str())
                .collect::<Vec<_>>(),
            ["worker.args[2]"]
        );
        assert!(
            e.errors[0].message.contains(
                "is a prefix outside the run's own s3://artifacts/runs/r1/: the run's credentials list nowhere else"
            ),
            "{e}"
        );
        // Under its own prefix, an archive or an object anywhere, or another bucket's (the
        // worker's grants name the stack's two): not this rule's.
        for fine in [
            "s3://artifacts/runs/r1/inputs/",
            "s3://artifacts/jobs/train-data.tar.gz",
            "s3://exports/data/one.csv",
        ] {
            assert_eq!(
                fields(deployment().check(&job(fine))),
                Vec::<String>::new(),
                "{fine}"
            );
        }
    }

    #[test]
    fn session_policies_longer_than_assume_role_takes_are_refused_naming_the_field() {
        let exec = |fetches: usize, secrets: usize| {
            spec(|v| {
                let mut args = vec![json!("exec")];
                for i in 0..fetches {
                    args.push(json!("--fetch"));
                    args.push(json!(format!(
                        "s3://artifacts/inputs/a-rather-long-folder-name-for-the-inputs-of-this-job/{i}.tar.gz"
                    )));
                }
                args.extend([json!("--"), json!("sh"), json!("-c"), json!("true")]);
                v["worker"]["args"] = json!(args);
                v["expect"] = json!({});
                let named: serde_json::Map<String, serde_json::Value> = (0..secrets)
                    .map(|i| {
                        (
                            format!("S{i}"),
                            json!(format!(
                                "arn:aws:secretsmanager:eu-west-1:123456789012:secret:ephemera/a-long-secret-name-{i}-AbCdEf"
                            )),
                        )
                    })
                    .collect();
                v["job"] = json!({ "secrets": named });
            })
        };
        let d = deployment();
        assert_eq!(fields(d.check(&exec(2, 2))), Vec::<String>::new());
        // Many inputs: the job's own session is too long.
        let errs = d.check(&exec(20, 0)).unwrap_err().errors;
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].field, "worker.args");
        assert!(
            errs[0].message.contains("AssumeRole takes at most 2048"),
            "{errs:?}"
        );
        // Inputs that fit, and ten secrets on top for the agent's: job.secrets is named.
        let errs = d.check(&exec(8, 10)).unwrap_err().errors;
        assert_eq!(
            errs.iter().map(|e| e.field.as_str()).collect::<Vec<_>>(),
            vec!["job.secrets"],
            "{errs:?}"
        );
        // Both measured with the longest role ARN the stack can have.
        assert_eq!(LONGEST_RUN_ROLE_ARN.len(), 38 + 64);
    }

    #[test]
    fn a_jobs_secrets_are_the_stacks_region_and_under_its_prefix() {
        let with = |secrets: serde_json::Value| {
            spec(|v| {
                v["worker"]["args"] = json!(["exec", "--", "sh", "-c", "true"]);
                v["expect"] = json!({});
                v["job"] = json!({ "secrets": secrets });
            })
        };
        let ok = with(json!({
            "A": "arn:aws:secretsmanager:eu-west-1:123456789012:secret:ephemera/api-AbCdEf",
            "B": "arn:aws:ssm:eu-west-1:123456789012:parameter/ephemera/db/password",
        }));
        assert_eq!(fields(deployment().check(&ok)), Vec::<String>::new());
        let bad = with(json!({
            "ELSEWHERE": "arn:aws:secretsmanager:us-east-1:123456789012:secret:ephemera/api-AbCdEf",
            "OUTSIDE": "arn:aws:ssm:eu-west-1:123456789012:parameter/prod/db/password",
        }));
        let errs = deployment().check(&bad).unwrap_err().errors;
        assert_eq!(
            errs.iter().map(|e| e.field.as_str()).collect::<Vec<_>>(),
            ["job.secrets.ELSEWHERE", "job.secrets.OUTSIDE"]
        );
        assert!(errs[0].message.contains("eu-west-1"), "{errs:?}");
        assert!(
            errs[1].message.contains("parameter/ephemera/<name>"),
            "{errs:?}"
        );
    }

    fn spec(edit: impl FnOnce(&mut serde_json::Value)) -> RunSpec {
        let mut v = crate::runspec::tests::sample();
        // The run whose own prefix the places below are under.
        v["run_id"] = json!("r1");
        v["worker"]["artifact"] = json!("s3://artifacts/bin/ephemera-worker");
        v["worker"]["args"] = json!(["run", "--export", "s3://exports/runs/r1/"]);
        v["expect"]["export_prefix"] = json!("s3://exports/runs/r1/");
        edit(&mut v);
        RunSpec::parse(&v).unwrap()
    }

    fn fields(r: Result<(), InvalidRunSpec>) -> Vec<String> {
        r.err()
            .map(|e| e.errors.into_iter().map(|e| e.field).collect())
            .unwrap_or_default()
    }

    #[test]
    fn what_the_deployment_grants_passes() {
        assert_eq!(
            fields(deployment().check(&spec(|_| {}))),
            Vec::<String>::new()
        );
        let by_arn = spec(|v| {
            v["worker"]["instance_profile"] = json!(
                "arn:aws-cn:iam::123456789012:instance-profile/ephemera/stack-WorkerInstanceProfile-abc"
            )
        });
        assert_eq!(fields(deployment().check(&by_arn)), Vec::<String>::new());
        // A deployment that restricts nothing (the functions run outside the template).
        let other = spec(|v| v["expect"]["export_prefix"] = json!("s3://elsewhere/x/"));
        assert!(Deployment::default().check(&other).is_err()); // --export not under the prefix
    }

    #[test]
    fn an_export_outside_the_export_bucket_is_refused_before_anything_runs() {
        let s = spec(|v| {
            v["expect"]["export_prefix"] = json!("s3://someone-elses/runs/r1/");
            v["worker"]["args"] = json!(["run", "--export=s3://someone-elses/runs/r1/"]);
        });
        let e = deployment().check(&s).unwrap_err();
        assert_eq!(
            e.errors
                .iter()
                .map(|e| e.field.as_str())
                .collect::<Vec<_>>(),
            ["expect.export_prefix", "worker.args[1]"]
        );
        assert!(e.to_string().contains("the export bucket exports"), "{e}");
    }

    #[test]
    fn a_jobs_inputs_and_checkpoints_must_be_where_the_worker_may_read_and_write() {
        let job = |args: serde_json::Value| {
            spec(|v| {
                v["worker"]["args"] = args;
                v["expect"]["export_prefix"] = serde_json::Value::Null;
            })
        };
        let fine = job(json!([
            "exec",
            "--fetch",
            "s3://artifacts/jobs/train.tar.gz",
            "--fetch=s3://exports/runs/r1/inputs/",
            "--checkpoint",
            "ckpt",
            "--checkpoint-to",
            "s3://exports/runs/r1/checkpoints/",
            "--",
            "python3",
            "train.py",
            "--fetch",
            "s3://anywhere/x"
        ]));
        assert_eq!(fields(deployment().check(&fine)), Vec::<String>::new());
        let e = deployment()
            .check(&job(json!([
                "exec",
                "--fetch",
                "s3://someone-elses/job.tgz",
                "--checkpoint",
                "c",
                "--checkpoint-to=s3://artifacts/ckpt/",
                "--",
                "true"
            ])))
            .unwrap_err();
        assert_eq!(
            e.errors
                .iter()
                .map(|e| e.field.as_str())
                .collect::<Vec<_>>(),
            ["worker.args[5]", "worker.args[2]"]
        );
        let text = e.to_string();
        assert!(
            text.contains(
                "--checkpoint-to 's3://artifacts/ckpt/' is outside the export bucket exports"
            ),
            "{text}"
        );
        assert!(text.contains("--fetch 's3://someone-elses/job.tgz' is outside the buckets the worker's role may read: artifacts, exports"), "{text}");
    }

    #[test]
    fn an_export_beside_the_expected_prefix_is_refused() {
        let s = spec(|v| v["worker"]["args"] = json!(["run", "--export", "s3://exports/other/"]));
        let e = deployment().check(&s).unwrap_err();
        assert!(e.errors.iter().all(|e| e.field == "worker.args[2]"), "{e}");
        assert!(
            e.errors
                .iter()
                .any(|e| e.message.contains("not under expect.export_prefix")),
            "{e}"
        );
        // A local directory is the worker's business.
        let local = spec(|v| v["worker"]["args"] = json!(["run", "--export", "/tmp/out"]));
        assert!(deployment().check(&local).is_ok());
    }

    #[test]
    fn a_runs_outputs_and_checkpoints_must_lie_under_its_own_prefix() {
        let s = spec(|v| {
            v["expect"]["export_prefix"] = serde_json::Value::Null;
            v["worker"]["args"] = json!([
                "exec",
                "--checkpoint",
                "ckpt",
                "--checkpoint-to",
                "s3://exports/checkpoints/",
                "--outputs",
                "out",
                "--to=s3://exports/runs/r2/",
                "--",
                "sh",
                "-c",
                "true --to s3://exports/anywhere/"
            ]);
        });
        assert_eq!(
            fields(deployment().check(&s)),
            ["worker.args[4]", "worker.args[7]"]
        );
        let e = deployment().check(&s).unwrap_err();
        assert!(
            e.errors[0].message.contains(
                "'s3://exports/checkpoints/' is not under the run's own prefix s3://exports/runs/r1/"
            ),
            "{e}"
        );
        // Another run's prefix is not the run's own, even one that starts alike.
        let alike =
            spec(|v| v["worker"]["args"] = json!(["run", "--export", "s3://exports/runs/r1x/"]));
        assert!(fields(deployment().check(&alike)).contains(&"worker.args[2]".to_string()));
        let fine = spec(|v| {
            v["worker"]["args"] = json!([
                "exec",
                "--checkpoint",
                "c",
                "--checkpoint-to",
                "s3://exports/runs/r1/checkpoints/",
                "--outputs",
                "out",
                "--to",
                "s3://exports/runs/r1/",
                "--",
                "true"
            ]);
        });
        assert_eq!(fields(deployment().check(&fine)), Vec::<String>::new());
    }

    #[test]
    fn a_jobs_outputs_go_to_the_export_bucket_too() {
        let s = spec(|v| {
            v["worker"]["args"] = json!([
                "exec",
                "--outputs",
                "out",
                "--to",
                "s3://elsewhere/x/",
                "--",
                "sh",
                "-c",
                "echo --to s3://ignored/"
            ]);
        });
        let e = deployment().check(&s).unwrap_err();
        assert_eq!(e.errors.len(), 1, "{e}");
        assert_eq!(e.errors[0].field, "worker.args[4]");
    }

    #[test]
    fn another_instance_profile_is_refused_naming_the_deployments() {
        for asked in [
            "admin",
            "arn:aws:iam::123456789012:instance-profile/admin",
            "arn:aws:iam::123456789012:instance-profile/stack-WorkerInstanceProfile-abc/x",
        ] {
            let s = spec(|v| v["worker"]["instance_profile"] = json!(asked));
            let e = deployment().check(&s).unwrap_err();
            assert_eq!(e.errors[0].field, "worker.instance_profile", "{asked}");
            assert!(e.errors[0]
                .message
                .contains("stack-WorkerInstanceProfile-abc"));
        }
    }

    #[test]
    fn every_grant_is_checked_at_once() {
        let s = spec(|v| {
            v["worker"]["artifact"] = json!("s3://other/bin");
            v["notify"]["topic_arn"] = json!("arn:aws:sns:eu-west-1:123456789012:other");
            v["worker"]["instance_profile"] = json!("admin");
        });
        assert_eq!(
            fields(deployment().check(&s)),
            [
                "worker.artifact",
                "notify.topic_arn",
                "worker.instance_profile"
            ]
        );
    }
}
