//! What one deployment lets a RunSpec name. The template grants the worker and the functions
//! exactly one artifact bucket, one export bucket, one instance profile and its topics; a
//! RunSpec that names anything else would be refused by AWS only after instances were
//! launched and billed (or, for the export, after the whole job ran). quota-check, the run's
//! first state, checks them all at once before anything is waited for or launched.

use crate::runspec::{parse_s3_url, FieldError, InvalidRunSpec, RunSpec};

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
}

impl Deployment {
    /// Every field the deployment cannot serve, named at once.
    pub fn check(&self, spec: &RunSpec) -> Result<(), InvalidRunSpec> {
        let mut errors = vec![];
        let mut add = |field: String, message: String| errors.push(FieldError { field, message });
        if let (Some(allowed), Some((bucket, _))) =
            (&self.artifact_bucket, parse_s3_url(&spec.worker.artifact))
        {
            if bucket != allowed {
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
        let prefix = spec.expect.export_prefix.as_deref();
        if let (Some(allowed), Some(p)) = (&self.export_bucket, prefix) {
            if parse_s3_url(p).is_some_and(|(bucket, _)| bucket != allowed) {
                add(
                    "expect.export_prefix".into(),
                    format!(
                        "'{p}' is outside the export bucket {allowed}, the only one the worker may write to and verify-completion may read; use s3://{allowed}/<prefix>/"
                    ),
                );
            }
        }
        self.check_job_places(&spec.worker.args, &mut add);
        for (i, target) in flag_values(&spec.worker.args, &["--export", "--to"]) {
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

impl Deployment {
    /// A job's `--checkpoint-to` (read and written: the export bucket) and `--fetch` (read:
    /// the artifact or the export bucket), the only places the worker's role grants.
    fn check_job_places(&self, args: &[String], add: &mut impl FnMut(String, String)) {
        for (i, to) in flag_values(args, &["--checkpoint-to"]) {
            match (parse_s3_url(to), &self.export_bucket) {
                (Some((bucket, _)), Some(allowed)) if bucket != allowed => add(
                    format!("worker.args[{i}]"),
                    format!("--checkpoint-to '{to}' is outside the export bucket {allowed}, the only one the worker's role may write to and read back from"),
                ),
                _ => {}
            }
        }
        for (i, from) in flag_values(args, &["--fetch"]) {
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

/// The values of `flags` in the worker's own arguments (before a job's `--`), each with its
/// argument's index: `--flag X` or `--flag=X`.
fn flag_values<'a>(args: &'a [String], flags: &[&str]) -> Vec<(usize, &'a str)> {
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

    fn deployment() -> Deployment {
        Deployment {
            allowed_topics: vec!["arn:aws:sns:eu-west-1:123456789012:reports".into()],
            artifact_bucket: Some("artifacts".into()),
            export_bucket: Some("exports".into()),
            worker_profile: Some("stack-WorkerInstanceProfile-abc".into()),
        }
    }

    fn spec(edit: impl FnOnce(&mut serde_json::Value)) -> RunSpec {
        let mut v = crate::runspec::tests::sample();
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
            "--fetch=s3://exports/inputs/",
            "--checkpoint",
            "ckpt",
            "--checkpoint-to",
            "s3://exports/checkpoints/",
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
        assert_eq!(e.errors[0].field, "worker.args[2]");
        assert!(e.errors[0]
            .message
            .contains("not under expect.export_prefix"));
        // A local directory is the worker's business.
        let local = spec(|v| v["worker"]["args"] = json!(["run", "--export", "/tmp/out"]));
        assert!(deployment().check(&local).is_ok());
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
