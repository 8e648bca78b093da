//! `database.snapshot_before`: the RDS snapshot taken before any worker writes. Its name, its
//! state as the state machine carries it (`$.snapshot`), and what a status means.

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::runspec::{RunSpec, SnapshotSource};

/// A DB instance's snapshot, or an Aurora cluster's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SnapshotKind {
    Instance,
    Cluster,
}

impl SnapshotKind {
    /// The RunSpec's source as (kind, identifier).
    pub fn of(source: &SnapshotSource) -> Option<(SnapshotKind, &str)> {
        match (&source.instance, &source.cluster) {
            (Some(i), None) => Some((SnapshotKind::Instance, i)),
            (None, Some(c)) => Some((SnapshotKind::Cluster, c)),
            _ => None,
        }
    }

    pub fn noun(self) -> &'static str {
        match self {
            SnapshotKind::Instance => "DB instance",
            SnapshotKind::Cluster => "DB cluster",
        }
    }
}

/// The Choice state's reading (`$.snapshot.verdict`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SnapshotVerdict {
    /// Not yet: look again after `wait_seconds`.
    Creating,
    /// Taken: the workers may start.
    Available,
}

/// `$.snapshot`, passed back in on every poll and named in the report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotState {
    pub verdict: SnapshotVerdict,
    pub kind: SnapshotKind,
    /// The DB instance or cluster identifier.
    pub source: String,
    /// The snapshot's identifier.
    pub identifier: String,
    /// RDS's status as last read.
    pub status: String,
    pub requested_at: DateTime<Utc>,
    pub checked_at: DateTime<Utc>,
    pub deadline: DateTime<Utc>,
    pub wait_seconds: u64,
}

/// The snapshot of one execution of a run: `ephemera-<run id>-<8 hex of the execution>`,
/// so that a retried call finds the snapshot it asked for and two executions of one run id
/// never share one. RDS identifiers are letters, digits and single hyphens, a letter first, at
/// most 63 characters (the cluster snapshot's limit; a DB snapshot's is 255).
pub fn identifier(run_id: &str, execution: &str) -> String {
    let mut readable = String::new();
    for c in run_id.chars() {
        let c = if c.is_ascii_alphanumeric() {
            c.to_ascii_lowercase()
        } else {
            '-'
        };
        if c == '-' && (readable.is_empty() || readable.ends_with('-')) {
            continue;
        }
        readable.push(c);
    }
    let readable: String = readable.chars().take(44).collect();
    let readable = readable.trim_end_matches('-');
    let hash = Sha256::digest(execution.as_bytes());
    let hex: String = hash[..4].iter().map(|b| format!("{b:02x}")).collect();
    if readable.is_empty() {
        format!("ephemera-{hex}")
    } else {
        format!("ephemera-{readable}-{hex}")
    }
}

/// What a snapshot status means now: wait, go, or a reason the run cannot start.
pub fn judge(
    status: &str,
    now: DateTime<Utc>,
    deadline: DateTime<Utc>,
) -> Result<SnapshotVerdict, String> {
    match status {
        "available" => Ok(SnapshotVerdict::Available),
        // DescribeDBSnapshots / DescribeDBClusterSnapshots: creating, then available; a copy or
        // an upgrade passes through the others.
        "creating" | "pending" | "copying" | "upgrading" | "backing-up" if now < deadline => {
            Ok(SnapshotVerdict::Creating)
        }
        "creating" | "pending" | "copying" | "upgrading" | "backing-up" => Err(format!(
            "still {status} at its deadline (database.snapshot_timeout_seconds)"
        )),
        other => Err(format!("its status is {other}")),
    }
}

/// When to look again: the run's boot poll period, never past the deadline.
pub fn next_wait(spec: &RunSpec, now: DateTime<Utc>, deadline: DateTime<Utc>) -> u64 {
    let left = (deadline - now).num_seconds().max(1) as u64;
    spec.waits.boot_poll_seconds.clamp(1, left)
}

/// The deadline of a snapshot requested at `requested_at`.
pub fn deadline(spec: &RunSpec, requested_at: DateTime<Utc>) -> DateTime<Utc> {
    requested_at + Duration::seconds(spec.database.snapshot_timeout_seconds as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn identifiers_are_rds_names_one_per_execution() {
        let e1 = "arn:aws:states:us-east-1:1:execution:ephemera-worker:fx-1";
        let e2 = "arn:aws:states:us-east-1:1:execution:ephemera-worker:fx-2";
        let a = identifier("fx_2023.04", e1);
        assert!(a.starts_with("ephemera-fx-2023-04-"), "{a}");
        assert_eq!(a, identifier("fx_2023.04", e1));
        assert_ne!(a, identifier("fx_2023.04", e2));
        for run in ["--a__b--", "X", &"long-run-id.".repeat(10), "_"] {
            let id = identifier(run, e1);
            assert!(id.len() <= 63, "{id}");
            assert!(!id.contains("--") && !id.ends_with('-'), "{id}");
            assert!(id
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'));
        }
    }

    #[test]
    fn statuses_wait_go_or_stop() {
        let t = |s| Utc.with_ymd_and_hms(2026, 11, 30, 12, 0, s).unwrap();
        assert_eq!(
            judge("available", t(0), t(10)),
            Ok(SnapshotVerdict::Available)
        );
        assert_eq!(
            judge("creating", t(0), t(10)),
            Ok(SnapshotVerdict::Creating)
        );
        assert!(judge("creating", t(10), t(10))
            .unwrap_err()
            .contains("snapshot_timeout_seconds"));
        assert!(judge("failed", t(0), t(10)).unwrap_err().contains("failed"));
        // Available at the deadline still counts: it is there.
        assert_eq!(
            judge("available", t(20), t(10)),
            Ok(SnapshotVerdict::Available)
        );
    }
}
