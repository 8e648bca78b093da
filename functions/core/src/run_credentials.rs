//! One run's credentials: what its session of the run role (`RunRole`) may touch, decided from
//! the RunSpec alone (ARCHITECTURE.md, "One run's credentials").
//!
//! The role's own policy, keyed on the session tag `ephemera:run`, already confines writes,
//! deletes, listings and log lines to the run's prefix `runs/<run id>/` in both buckets; the
//! session policy written here narrows the reads to what the RunSpec names (the worker binary,
//! each `--fetch` source) and the secrets to the ones it names. A session policy can only take
//! permissions away (IAM user guide, session policies), so nothing written here can reach
//! another run's objects. Two holders: the agent (reads the secrets, renews the session) and the
//! job (neither: it cannot renew itself into a session without its session policy, and it never
//! sees a secret except the values the agent gives it).

use serde_json::{json, Value};
use thiserror::Error;

use crate::job_secrets::{self, Kind};
use crate::runspec::{parse_s3_url, RunSpec};

/// The longest session policy AssumeRole takes: 2,048 characters of plain text (STS API
/// reference, AssumeRole, `Policy`:
/// <https://docs.aws.amazon.com/STS/latest/APIReference/API_AssumeRole.html>).
pub const MAX_SESSION_POLICY_CHARS: usize = 2048;

/// The session tag that names the run (transitive: a renewal keeps it and cannot change it).
pub const RUN_TAG: &str = "ephemera:run";

/// The job's own place under its run's prefix (`runs/<run id>/job/`): the one place its session
/// writes.
pub const JOB_SCRATCH: &str = "job";

/// Who holds the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holder {
    /// The worker agent (root on the instance): the run's secrets and its own renewal.
    Agent,
    /// The user's command (an unprivileged user): its run's objects and inputs, nothing else.
    Job,
}

/// The stack's two buckets and the run role's ARN, from the deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stack<'a> {
    /// The stack's `ArtifactBucket`: the worker binary (`worker.artifact`), and the reports of runs
    /// that export nothing.
    pub artifact_bucket: &'a str,
    /// The stack's `ExportBucket`: where workers export and verify-completion reads.
    pub export_bucket: &'a str,
    /// The ARN of the stack's `RunRole`, whose session the run gets.
    pub run_role_arn: &'a str,
}

/// Why no session policy could be written for the run.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ScopeError {
    /// The policy would be this many characters, more than [`MAX_SESSION_POLICY_CHARS`].
    #[error("the run's session policy would be {0} characters; AssumeRole takes at most {MAX_SESSION_POLICY_CHARS} (name fewer inputs or secrets, or one prefix for several)")]
    TooLong(usize),
}

/// The run's own prefix in either bucket: everything it writes, lists and deletes is under it.
pub fn run_prefix(run_id: &str) -> String {
    format!("runs/{run_id}/")
}

/// The S3 reads the RunSpec names, as ARNs: the worker binary and each `--fetch` source (a
/// prefix ending in `/` as everything under it).
pub fn inputs(spec: &RunSpec) -> Vec<String> {
    let mut sources = vec![spec.worker.artifact.as_str()];
    let args = &spec.worker.args;
    let own = args
        .iter()
        .position(|a| a == "--")
        .map_or(&args[..], |d| &args[..d]);
    for (i, a) in own.iter().enumerate() {
        if let Some(v) = a.strip_prefix("--fetch=") {
            sources.push(v);
        } else if a == "--fetch" {
            if let Some(v) = own.get(i + 1) {
                sources.push(v);
            }
        }
    }
    let mut out: Vec<String> = sources
        .into_iter()
        .filter_map(parse_s3_url)
        .map(|(bucket, key)| {
            let star = if key.ends_with('/') || key.is_empty() {
                "*"
            } else {
                ""
            };
            format!("arn:aws:s3:::{bucket}/{key}{star}")
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The prefixes the run may list: its own, and each `--fetch` prefix.
fn listable(spec: &RunSpec, stack: &Stack) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = [stack.export_bucket, stack.artifact_bucket]
        .iter()
        .map(|b| (b.to_string(), format!("{}*", run_prefix(&spec.run_id))))
        .collect();
    for arn in inputs(spec) {
        if let Some(place) = arn.strip_prefix("arn:aws:s3:::") {
            if let (Some((bucket, key)), true) = (place.split_once('/'), place.ends_with('*')) {
                out.push((bucket.to_string(), key.to_string()));
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// The secrets `spec` names (`job.secrets`), as the resources of the action that reads each
/// kind: Secrets Manager's GetSecretValue, Parameter Store's GetParameter.
///
/// A Secrets Manager ARN as the console shows it ends in the six characters Secrets Manager
/// appends to the name; an ARN given without them (a "partial ARN") is matched with
/// `-??????`, as the Secrets Manager user guide's IAM examples do, so that the policy names
/// that secret and not every secret whose name starts alike.
pub fn secrets(spec: &RunSpec) -> Vec<(&'static str, String)> {
    let mut out: Vec<(&'static str, String)> = spec
        .job_secrets()
        .filter_map(|(_, arn)| {
            let parsed = job_secrets::parse_arn(arn).ok()?;
            let resource = match parsed.kind {
                Kind::SecretsManager if !has_suffix(parsed.name) => format!("{arn}-??????"),
                _ => arn.to_string(),
            };
            Some((parsed.kind.action(), resource))
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Whether a secret's name ends in Secrets Manager's `-` and six letters or digits.
fn has_suffix(name: &str) -> bool {
    name.rsplit_once('-')
        .is_some_and(|(_, s)| s.len() == 6 && s.chars().all(|c| c.is_ascii_alphanumeric()))
}

/// The session policy of `holder`'s session for `spec`: its inputs read, its run's prefix in
/// both buckets written, listed and deleted, its log streams, and for the agent the secrets
/// the RunSpec names (`job.secrets`) and its renewal. Too long for AssumeRole is an error the
/// RunSpec's check reports before anything is launched.
pub fn session_policy(spec: &RunSpec, stack: &Stack, holder: Holder) -> Result<Value, ScopeError> {
    let under = |rel: &str| -> Vec<String> {
        [stack.export_bucket, stack.artifact_bucket]
            .iter()
            .map(|b| format!("arn:aws:s3:::{b}/{}{rel}*", run_prefix(&spec.run_id)))
            .collect()
    };
    // The agent writes the run's outputs, manifests and checkpoints; the job reads them and
    // writes only its scratch `runs/<run id>/job/`, so that a job's credentials, copied out,
    // can change nothing the run is judged or resumed by.
    let write = ["s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"];
    let mut statements =
        vec![json!({"Effect": "Allow", "Action": "s3:GetObject", "Resource": inputs(spec)})];
    match holder {
        Holder::Agent => statements.push(json!({"Effect": "Allow",
            "Action": ["s3:GetObject", write[0], write[1], write[2]], "Resource": under("")})),
        Holder::Job => {
            statements
                .push(json!({"Effect": "Allow", "Action": "s3:GetObject", "Resource": under("")}));
            statements.push(json!({"Effect": "Allow", "Action": write,
                "Resource": under(&format!("{JOB_SCRATCH}/"))}));
        }
    }
    let mut by_bucket: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for (bucket, prefix) in listable(spec, stack) {
        by_bucket.entry(bucket).or_default().push(prefix);
    }
    for (bucket, prefixes) in by_bucket {
        statements.push(json!({"Effect": "Allow", "Action": "s3:ListBucket",
            "Resource": format!("arn:aws:s3:::{bucket}"),
            "Condition": {"StringLike": {"s3:prefix": prefixes}}}));
    }
    // The agent ships the worker's lines, the job's among them (capped, and counted in the
    // run's budget); the job writes no line itself: its own writes to CloudWatch Logs would be
    // billed outside the cap, and could forge the agent's heartbeat or its account of the work.
    if holder == Holder::Agent {
        statements
            .push(json!({"Effect": "Allow", "Action": "logs:CreateLogStream", "Resource": "*"}));
        statements.push(json!({"Effect": "Allow", "Action": "logs:PutLogEvents", "Resource": "*"}));
    }
    if holder == Holder::Agent {
        let mut by_action: std::collections::BTreeMap<&str, Vec<String>> = Default::default();
        for (action, resource) in secrets(spec) {
            by_action.entry(action).or_default().push(resource);
        }
        for (action, resources) in by_action {
            statements.push(json!({"Effect": "Allow", "Action": action, "Resource": resources}));
        }
        statements.push(json!({"Effect": "Allow", "Action": "sts:AssumeRole",
            "Resource": stack.run_role_arn}));
    }
    let policy = json!({"Version": "2012-10-17", "Statement": statements});
    let chars = policy.to_string().chars().count();
    if chars > MAX_SESSION_POLICY_CHARS {
        return Err(ScopeError::TooLong(chars));
    }
    Ok(policy)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const STACK: Stack = Stack {
        artifact_bucket: "art",
        export_bucket: "exp",
        run_role_arn: "arn:aws:iam::1:role/run",
    };

    fn spec(args: &[&str]) -> RunSpec {
        with_secrets(args, &[])
    }

    fn with_secrets(args: &[&str], secrets: &[(&str, &str)]) -> RunSpec {
        let mut v = serde_json::json!({
            "run_id": "r1",
            "worker": {"instance_types": ["m7i.large"], "subnets": ["subnet-1"],
                       "image": "ami-1", "artifact": "s3://art/worker/ephemera-worker"},
            "limits": {"budget_usd": 5.0, "max_runtime_seconds": 3600}
        });
        v["worker"]["args"] = serde_json::json!(args);
        if !secrets.is_empty() {
            let named: serde_json::Map<String, Value> = secrets
                .iter()
                .map(|(k, v)| (k.to_string(), json!(v)))
                .collect();
            v["job"] = json!({ "secrets": named });
        }
        serde_json::from_value(v).expect("a RunSpec")
    }

    fn actions_on(policy: &Value, resource: &str) -> Vec<String> {
        policy["Statement"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| {
                s["Resource"] == resource
                    || s["Resource"]
                        .as_array()
                        .is_some_and(|r| r.iter().any(|x| x == resource))
            })
            .flat_map(|s| match &s["Action"] {
                Value::String(a) => vec![a.clone()],
                Value::Array(a) => a.iter().map(|x| x.as_str().unwrap().to_string()).collect(),
                _ => vec![],
            })
            .collect()
    }

    #[test]
    fn the_inputs_are_the_binary_and_each_fetch_source() {
        let s = spec(&[
            "exec",
            "--fetch",
            "s3://art/jobs/train.tar.gz",
            "--fetch=s3://exp/shared/",
            "--",
            "sh",
            "--fetch",
            "s3://art/not-an-input",
        ]);
        assert_eq!(
            inputs(&s),
            [
                "arn:aws:s3:::art/jobs/train.tar.gz",
                "arn:aws:s3:::art/worker/ephemera-worker",
                "arn:aws:s3:::exp/shared/*",
            ]
        );
    }

    #[test]
    fn the_job_reads_its_inputs_and_writes_its_run_only() {
        let s = with_secrets(
            &["exec", "--fetch", "s3://art/jobs/train.tar.gz", "--", "sh"],
            &[(
                "K",
                "arn:aws:secretsmanager:us-east-1:123456789012:secret:k-AbCdEf",
            )],
        );
        let p = session_policy(&s, &STACK, Holder::Job).unwrap();
        assert_eq!(
            actions_on(&p, "arn:aws:s3:::art/jobs/train.tar.gz"),
            ["s3:GetObject"]
        );
        assert_eq!(
            actions_on(&p, "arn:aws:s3:::exp/runs/r1/*"),
            ["s3:GetObject"]
        );
        let scratch = actions_on(&p, "arn:aws:s3:::exp/runs/r1/job/*");
        assert!(
            scratch.contains(&"s3:PutObject".to_string())
                && scratch.contains(&"s3:DeleteObject".to_string())
        );
        let text = p.to_string();
        assert!(
            !text.contains("secretsmanager") && !text.contains("sts:"),
            "{text}"
        );
        assert!(text.contains(r#""s3:prefix":["runs/r1/*"]"#), "{text}");
        // No log line of its own: what it prints reaches the agent's capped stream.
        assert!(!text.contains("logs:"), "{text}");
    }

    #[test]
    fn the_agent_reads_the_named_secrets_and_renews() {
        let secret = "arn:aws:secretsmanager:us-east-1:123456789012:secret:k-AbCdEf";
        let partial = "arn:aws:secretsmanager:us-east-1:123456789012:secret:team/db";
        let parameter = "arn:aws:ssm:us-east-1:123456789012:parameter/team/token";
        let s = with_secrets(
            &["exec", "--", "sh"],
            &[("A", secret), ("B", partial), ("C", parameter)],
        );
        let p = session_policy(&s, &STACK, Holder::Agent).unwrap();
        assert_eq!(actions_on(&p, secret), ["secretsmanager:GetSecretValue"]);
        // A partial ARN names that secret's full ARNs, not every name it begins.
        assert_eq!(
            actions_on(&p, &format!("{partial}-??????")),
            ["secretsmanager:GetSecretValue"]
        );
        assert_eq!(actions_on(&p, parameter), ["ssm:GetParameter"]);
        // Each secret under its own action only.
        assert!(!p.to_string().contains("secretsmanager:*"));
        assert_eq!(
            actions_on(&p, "*")
                .iter()
                .filter(|a| a.starts_with("ssm"))
                .count(),
            0
        );
        assert_eq!(
            actions_on(&p, "arn:aws:iam::1:role/run"),
            ["sts:AssumeRole"]
        );
    }

    #[test]
    fn a_policy_too_long_for_assume_role_is_refused() {
        let many: Vec<(String, String)> = (0..40)
            .map(|i| {
                (
                    format!("S{i}"),
                    format!(
                        "arn:aws:secretsmanager:eu-west-1:123456789012:secret:team/api-key-{i}-AbCdEf"
                    ),
                )
            })
            .collect();
        let named: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let args = ["exec", "--", "sh"];
        assert!(matches!(
            session_policy(&with_secrets(&args, &named), &STACK, Holder::Agent),
            Err(ScopeError::TooLong(n)) if n > MAX_SESSION_POLICY_CHARS
        ));
        assert!(session_policy(&with_secrets(&args, &named[..2]), &STACK, Holder::Agent).is_ok());
    }
}
