//! What a launch puts on its instance besides the RunSpec's choices: the tags every other part
//! recognises it by, and the deadline past which the sweeper terminates it whatever happens.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, SecondsFormat, Utc};

use crate::runspec::RunSpec;
use crate::tags;

/// Past the run's own limits, before the sweeper steps in: time for a relaunch's cleanup and
/// for the sweeper's schedule.
pub const DEADLINE_GRACE_SECONDS: u64 = 900;

/// When an attempt whose LaunchWorker state was entered at `entered` must be gone: its whole
/// boot and runtime, and the grace.
pub fn deadline(spec: &RunSpec, entered: DateTime<Utc>) -> DateTime<Utc> {
    entered
        + Duration::seconds(
            (spec.limits.max_runtime_seconds
                + spec.limits.boot_timeout_seconds
                + DEADLINE_GRACE_SECONDS) as i64,
        )
}

/// The tags of DESIGN.md plus the user's cost tags: the run, its execution, which worker and
/// which attempt, the deadline, and a Name.
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
        let d = deadline(&s, at);
        assert_eq!(
            (d - at).num_seconds() as u64,
            s.limits.max_runtime_seconds + s.limits.boot_timeout_seconds + 900
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
}
