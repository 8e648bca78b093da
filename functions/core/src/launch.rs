//! What a launch puts on its instance besides the RunSpec's choices: the tags every other part
//! recognises it by, and the deadline past which the sweeper terminates it whatever happens.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, SecondsFormat, Utc};

use crate::runspec::RunSpec;
use crate::tags;

/// Past the run's own limits, before the sweeper steps in: time for a relaunch's cleanup and
/// for the sweeper's schedule.
pub const DEADLINE_GRACE_SECONDS: u64 = 900;

/// The KMS key the root volume is encrypted with (`KmsKeyId`, None: the account's default).
/// With `Encrypted` and no key, EC2 uses the account's default EBS key, which an account may
/// have set to a customer managed key
/// (https://docs.aws.amazon.com/ebs/latest/userguide/ebs-encryption.html); using one takes
/// kms:CreateGrant and the data-key actions on it, without which the instance goes from
/// pending to terminated, `Client.InternalError`
/// (https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/troubleshooting-launch.html). The
/// template grants them on `EbsKmsKeyArn` only: a customer managed default that is not that
/// key is refused before anything launches.
pub fn ebs_key(configured: Option<&str>, account_default: &str) -> Result<Option<String>, String> {
    if let Some(k) = configured {
        return Ok(Some(k.to_string()));
    }
    if account_default.is_empty() || account_default.ends_with("alias/aws/ebs") {
        return Ok(None);
    }
    Err(format!(
        "this account encrypts new EBS volumes with the customer managed key {account_default} by default (GetEbsDefaultKmsKeyId), which the launch may not use: the instance would be terminated at launch (Client.InternalError). Deploy the stack with EbsKmsKeyArn={account_default} (and, for Spot, grant AWSServiceRoleForEC2Spot the key, as docs/deploy.md says)"
    ))
}

/// When an attempt whose LaunchWorker state was entered at `entered` must be gone: its whole
/// boot, the runtime it was granted (`limits.max_runtime_seconds`, or less when the run's cap
/// buys less: `crate::budget::grant`), and the grace. Its worst case counts exactly this.
pub fn deadline(spec: &RunSpec, entered: DateTime<Utc>, runtime_seconds: u64) -> DateTime<Utc> {
    entered
        + Duration::seconds(
            (runtime_seconds + spec.limits.boot_timeout_seconds + DEADLINE_GRACE_SECONDS) as i64,
        )
}

/// ephemera's tags (`contract/src/tags.rs`) plus the user's cost tags: the run, its
/// execution, which worker and which attempt, the deadline, and a Name.
pub fn tags(
    spec: &RunSpec,
    execution: &str,
    worker: u32,
    attempt: u32,
    deadline: DateTime<Utc>,
) -> BTreeMap<String, String> {
    let mut t = spec.tags.clone();
    t.insert(tags::MANAGED.into(), "true".into());
    t.insert(tags::RUN.into(), spec.run_id.clone());
    t.insert(tags::EXECUTION.into(), execution.to_string());
    t.insert(tags::WORKER.into(), worker.to_string());
    t.insert(tags::ATTEMPT.into(), attempt.to_string());
    t.insert(
        tags::DEADLINE.into(),
        deadline.to_rfc3339_opts(SecondsFormat::Secs, true),
    );
    t.entry("Name".into()).or_insert_with(|| {
        if spec.worker.count > 1 {
            format!("ephemera-{}-w{worker}-{attempt}", spec.run_id)
        } else {
            format!("ephemera-{}-{attempt}", spec.run_id)
        }
    });
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn spec(count: u32) -> RunSpec {
        let mut v = crate::runspec::tests::sample();
        v["worker"]["count"] = serde_json::json!(count);
        v["tags"] = serde_json::json!({"team": "fx", "Name": "mine"});
        RunSpec::parse(&v).unwrap()
    }

    #[test]
    fn the_deadline_is_the_runs_limits_and_the_grace_after_entering() {
        let s = spec(1);
        let at = Utc.with_ymd_and_hms(2026, 11, 30, 12, 0, 0).unwrap();
        let d = deadline(&s, at, s.limits.max_runtime_seconds);
        assert_eq!(
            (d - at).num_seconds() as u64,
            s.limits.max_runtime_seconds + s.limits.boot_timeout_seconds + 900
        );
        // A runtime the cap granted: the deadline is the grant's.
        let d = deadline(&s, at, 60);
        assert_eq!(
            (d - at).num_seconds() as u64,
            60 + s.limits.boot_timeout_seconds + 900
        );
    }

    #[test]
    fn tags_name_the_run_the_worker_and_the_attempt_and_keep_the_users() {
        let at = Utc.with_ymd_and_hms(2026, 11, 30, 12, 0, 0).unwrap();
        let t = tags(&spec(3), "arn:x", 2, 1, at);
        assert_eq!(t[tags::MANAGED], "true");
        assert_eq!(t[tags::EXECUTION], "arn:x");
        assert_eq!(t[tags::WORKER], "2");
        assert_eq!(t[tags::ATTEMPT], "1");
        assert_eq!(t[tags::DEADLINE], "2026-11-30T12:00:00Z");
        assert_eq!(t["team"], "fx");
        // The user's Name stands; without one, it says the run, worker and attempt.
        assert_eq!(t["Name"], "mine");
        let mut plain = spec(3);
        plain.tags.remove("Name");
        let run = plain.run_id.clone();
        assert_eq!(
            tags(&plain, "a", 2, 1, at)["Name"],
            format!("ephemera-{run}-w2-1")
        );
        plain.worker.count = 1;
        assert_eq!(
            tags(&plain, "a", 1, 3, at)["Name"],
            format!("ephemera-{run}-3")
        );
    }

    #[test]
    fn a_customer_managed_default_key_is_used_only_when_the_stack_names_it() {
        let cmk = "arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab";
        let aws_managed = "arn:aws:kms:eu-west-1:123456789012:alias/aws/ebs";
        assert_eq!(ebs_key(None, aws_managed), Ok(None));
        assert_eq!(ebs_key(None, "alias/aws/ebs"), Ok(None));
        let refused = ebs_key(None, cmk).unwrap_err();
        assert!(
            refused.contains(&format!("EbsKmsKeyArn={cmk}")),
            "{refused}"
        );
        assert_eq!(ebs_key(Some(cmk), cmk), Ok(Some(cmk.to_string())));
        assert_eq!(ebs_key(Some(cmk), aws_managed), Ok(Some(cmk.to_string())));
    }
}
