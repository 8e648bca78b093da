//! The sweeper's rule: an instance ephemera launched is terminated when its execution no longer
//! runs, or when its deadline has passed, whatever the execution says.

use std::collections::BTreeSet;

use chrono::{DateTime, Duration, Utc};
use ephemera_contract::RunParameters;

/// How often the sweeper runs (template.yaml `SweeperFunction`'s `rate(15 minutes)`, held to
/// this by `tests/tests/template.rs`): an instance past its deadline is gone at most this long
/// after it, which bounds what an attempt can bill (`crate::budget`).
pub const SWEEPER_INTERVAL_SECONDS: u64 = 900;

/// Why an instance must go, or None to keep it. `execution_status` is None when the execution
/// cannot be found (deleted, or a tag pointing nowhere).
pub fn sweep_reason(
    execution_status: Option<&str>,
    deadline: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Option<String> {
    if let Some(d) = deadline {
        if now >= d {
            return Some(format!(
                "its ephemera:deadline {} has passed",
                d.to_rfc3339()
            ));
        }
    }
    match execution_status {
        Some("RUNNING") | Some("PENDING_REDRIVE") => match deadline {
            Some(_) => None,
            None => Some("it has no ephemera:deadline tag".into()),
        },
        Some(other) => Some(format!("its execution is {other}")),
        None => Some("its execution does not exist".into()),
    }
}

/// Why a run's vCPU reservations (`crate::vcpus`) must be given back by the sweeper, or None
/// while its execution runs: a run that ended without its teardown (the cleanup failed, the
/// execution was stopped or timed out, or it is gone) never holds vCPUs for good.
pub fn release_reason(execution_status: Option<&str>) -> Option<String> {
    match execution_status {
        Some("RUNNING") | Some("PENDING_REDRIVE") => None,
        Some(other) => Some(format!("its execution is {other}")),
        None => Some("its execution does not exist".into()),
    }
}

/// Whether an instance was launched with the stack's worker instance profile (`stack`: its name,
/// as `!Ref` gives it, or its ARN), from the profile ARN EC2 reports for the instance. The tag
/// `ephemera:managed=true` alone is not enough to terminate an instance: anyone who may tag
/// instances in the account could set it on one of theirs. No stack profile known (a local
/// call without the stack's settings): every instance passes, and IAM's `ec2:InstanceProfile`
/// condition still stands.
pub fn launched_by_stack(instance_profile_arn: Option<&str>, stack: Option<&str>) -> bool {
    let Some(stack) = stack else {
        return true;
    };
    match instance_profile_arn {
        None => false,
        Some(arn) if stack.starts_with("arn:") => arn == stack,
        // `arn:aws:iam::123456789012:instance-profile/<path/>name`: the name is the last part.
        Some(arn) => arn.contains(":instance-profile/") && arn.rsplit('/').next() == Some(stack),
    }
}

/// A parameter under [`RunParameters::ROOT`], as listed (names and dates, never values).
#[derive(Debug, Clone, PartialEq)]
pub struct Param {
    /// The parameter's full name (`/ephemera/runs/<run id>/…`).
    pub name: String,
    /// When it was last written (LastModifiedDate); None when SSM did not say.
    pub modified: Option<DateTime<Utc>>,
}

/// How long a signal is left alone after it was written, whatever its instance looks like: an
/// instance launched a moment ago may not be listed yet (DescribeInstances is eventually
/// consistent), and its signals come minutes after its launch anyway.
pub const SIGNAL_GRACE: Duration = Duration::minutes(10);

/// The signals to delete: each instance's `started` signal and task token, once the instance is
/// no longer `live` (terminated, or gone from EC2) and the parameter is older than
/// [`SIGNAL_GRACE`]. terminate-with-cost-report deletes a run's own when it ends; these are
/// the ones no execution cleaned up (a run the sweeper ended, a crashed one).
pub fn stale_signals(params: &[Param], live: &BTreeSet<&str>, now: DateTime<Utc>) -> Vec<String> {
    params
        .iter()
        .filter(|p| p.modified.is_some_and(|m| now - m >= SIGNAL_GRACE))
        .filter(|p| RunParameters::instance_of(&p.name).is_some_and(|i| !live.contains(i)))
        .map(|p| p.name.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn only_instances_with_the_stacks_profile_are_the_stacks() {
        let ours = "arn:aws:iam::123456789012:instance-profile/stack-WorkerProfile-X1";
        let pathed = "arn:aws:iam::123456789012:instance-profile/teams/stack-WorkerProfile-X1";
        let name = Some("stack-WorkerProfile-X1");
        assert!(launched_by_stack(Some(ours), name));
        assert!(launched_by_stack(Some(pathed), name));
        assert!(launched_by_stack(Some(ours), Some(ours)));
        assert!(!launched_by_stack(Some(pathed), Some(ours)));
        // No profile, another profile, a name that only ends the same way: not ours.
        assert!(!launched_by_stack(None, name));
        let other = "arn:aws:iam::123456789012:instance-profile/prod-web";
        assert!(!launched_by_stack(Some(other), name));
        let longer = "arn:aws:iam::123456789012:instance-profile/xstack-WorkerProfile-X1";
        assert!(!launched_by_stack(Some(longer), name));
        // No stack profile known: nothing filtered here (IAM's condition still stands).
        assert!(launched_by_stack(None, None));
    }

    #[test]
    fn only_old_signals_of_instances_no_longer_live_are_stale() {
        let now = Utc.timestamp_opt(1_700_000_000, 0).unwrap();
        let run = RunParameters::of_run("r");
        let old = Some(now - Duration::hours(2));
        let param = |name: String, modified| Param { name, modified };
        let params = [
            param(run.started("i-gone"), old),
            param(run.task_token("i-gone"), old),
            param(run.started("i-live"), old),
            // Written a minute ago: its instance may not be listed yet.
            param(run.started("i-new"), Some(now - Duration::minutes(1))),
            // No date: nothing says it is old.
            param(run.task_token("i-undated"), None),
            // Not a signal: left alone whatever its age.
            param("/ephemera/runs/r/notes".into(), old),
        ];
        let live = BTreeSet::from(["i-live"]);
        assert_eq!(
            stale_signals(&params, &live, now),
            vec![run.started("i-gone"), run.task_token("i-gone")]
        );
        let at_grace = [param(run.started("i-gone"), Some(now - SIGNAL_GRACE))];
        assert_eq!(stale_signals(&at_grace, &live, now).len(), 1);
    }

    #[test]
    fn rules() {
        let now = Utc.timestamp_opt(1_700_000_000, 0).unwrap();
        let later = Some(now + Duration::hours(1));
        let earlier = Some(now - Duration::seconds(1));
        assert_eq!(sweep_reason(Some("RUNNING"), later, now), None);
        assert!(sweep_reason(Some("RUNNING"), earlier, now)
            .unwrap()
            .contains("deadline"));
        assert!(sweep_reason(Some("RUNNING"), None, now)
            .unwrap()
            .contains("no ephemera:deadline"));
        assert_eq!(
            sweep_reason(Some("FAILED"), later, now).as_deref(),
            Some("its execution is FAILED")
        );
        assert_eq!(
            sweep_reason(None, later, now).as_deref(),
            Some("its execution does not exist")
        );
    }

    #[test]
    fn a_finished_runs_vcpus_are_given_back_and_a_running_ones_kept() {
        assert_eq!(release_reason(Some("RUNNING")), None);
        assert_eq!(release_reason(Some("PENDING_REDRIVE")), None);
        assert_eq!(
            release_reason(Some("FAILED")).as_deref(),
            Some("its execution is FAILED")
        );
        assert!(release_reason(None).unwrap().contains("does not exist"));
    }
}
