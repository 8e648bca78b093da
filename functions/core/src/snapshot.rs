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
    /// A DB instance's snapshot (CreateDBSnapshot).
    Instance,
    /// An Aurora DB cluster's snapshot (CreateDBClusterSnapshot).
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

    /// The source's name in words (`DB instance`, `DB cluster`), for messages.
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
    /// What the `SnapshotReady` Choice state does next.
    pub verdict: SnapshotVerdict,
    /// Whether the source is a DB instance or an Aurora cluster.
    pub kind: SnapshotKind,
    /// The DB instance or cluster identifier.
    pub source: String,
    /// The snapshot's identifier.
    pub identifier: String,
    /// RDS's status as last read.
    pub status: String,
    /// When the snapshot was first asked for: the start of its timeout.
    pub requested_at: DateTime<Utc>,
    /// When its status was last read.
    pub checked_at: DateTime<Utc>,
    /// When waiting ends: `requested_at` plus `database.snapshot_timeout_seconds`.
    pub deadline: DateTime<Utc>,
    /// Seconds to wait before the next poll (`waits.boot_poll_seconds`, never past the deadline);
    /// read by the Wait state's `SecondsPath`.
    pub wait_seconds: u64,
    /// After the run's outputs verified: ephemera's older snapshots of the source deleted
    /// (`database.keep_snapshots`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pruned: Option<Pruned>,
    /// Why pruning failed (it never fails a verified run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prune_error: Option<crate::rundoc::CaughtError>,
}

/// What pruning did. The names kept in the document are the first [`PRUNED_NAMED`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pruned {
    /// `database.keep_snapshots`.
    pub keep: u32,
    /// The deleted snapshots' identifiers, the first [`PRUNED_NAMED`] of them.
    pub deleted: Vec<String>,
    /// How many were deleted in all.
    pub deleted_count: u32,
}

/// Deleted snapshots named in the run document (each at most 63 bytes): the count says the rest.
pub const PRUNED_NAMED: usize = 20;

impl Pruned {
    /// What pruning `deleted` with `keep` kept, its names cut at [`PRUNED_NAMED`].
    pub fn of(keep: u32, deleted: &[String]) -> Pruned {
        Pruned {
            keep,
            deleted: deleted.iter().take(PRUNED_NAMED).cloned().collect(),
            deleted_count: deleted.len() as u32,
        }
    }
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

/// `$.snapshot.status` while RDS refuses to snapshot a source that is not `available` (it is
/// starting, modifying or backing up: `InvalidDBInstanceState`, `InvalidDBClusterStateFault`):
/// the snapshot is asked for again at the next poll, until the snapshot's deadline.
pub const SOURCE_BUSY: &str = "waiting-for-source";

/// RDS's refusal of a snapshot because of its source's state, not its name or rights.
pub fn is_source_busy(code: &str) -> bool {
    matches!(
        code,
        "InvalidDBInstanceState" | "InvalidDBInstanceStateFault" | "InvalidDBClusterStateFault"
    )
}

/// One of the source's manual snapshots, as listed for pruning.
#[derive(Debug, Clone, PartialEq)]
pub struct Listed {
    /// The snapshot's identifier.
    pub identifier: String,
    /// When RDS took it (SnapshotCreateTime); None when RDS did not say.
    pub created: Option<DateTime<Utc>>,
    /// Tagged `ephemera:managed=true`: only these are ever deleted.
    pub managed: bool,
    /// Its `ephemera:stack` tag: the stack that took it.
    pub stack: Option<String>,
}

/// Which of the source's snapshots to delete after a verified run: this stack's own (`stack`,
/// the `ephemera:stack` tag it puts on what it takes), beyond the newest `keep` (this run's,
/// `current`, always kept); the user's own snapshots and another stack's are never touched.
/// `keep` 0 deletes nothing.
pub fn to_prune(listed: &[Listed], keep: u32, current: &str, stack: Option<&str>) -> Vec<String> {
    if keep == 0 {
        return vec![];
    }
    let mut ours: Vec<&Listed> = listed
        .iter()
        .filter(|l| {
            l.managed && l.identifier.starts_with("ephemera-") && l.stack.as_deref() == stack
        })
        .collect();
    // Newest first; this run's first of all (RDS dates a snapshot when it starts, and a
    // snapshot still creating may have none yet).
    ours.sort_by(|a, b| {
        (b.identifier == current)
            .cmp(&(a.identifier == current))
            .then(b.created.cmp(&a.created))
    });
    ours.iter()
        .skip(keep as usize)
        .map(|l| l.identifier.clone())
        .collect()
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
        SOURCE_BUSY if now < deadline => Ok(SnapshotVerdict::Creating),
        SOURCE_BUSY => Err(
            "its source was never available to snapshot before the deadline (database.snapshot_timeout_seconds)"
                .to_string(),
        ),
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
    fn a_busy_source_is_waited_for_until_the_deadline() {
        let t = |s| Utc.with_ymd_and_hms(2026, 11, 30, 12, 0, s).unwrap();
        assert!(is_source_busy("InvalidDBInstanceState"));
        assert!(is_source_busy("InvalidDBClusterStateFault"));
        assert!(!is_source_busy("DBInstanceNotFound"));
        assert_eq!(
            judge(SOURCE_BUSY, t(0), t(10)),
            Ok(SnapshotVerdict::Creating)
        );
        assert!(judge(SOURCE_BUSY, t(10), t(10))
            .unwrap_err()
            .contains("never available"));
    }

    #[test]
    fn pruning_keeps_the_newest_of_ours_and_never_the_users() {
        let t = |d| Some(Utc.with_ymd_and_hms(2026, 11, d, 12, 0, 0).unwrap());
        let l = |id: &str, created, managed| Listed {
            identifier: id.into(),
            created,
            managed,
            stack: Some("fx".into()),
        };
        let listed = vec![
            l("ephemera-fx-a", t(1), true),
            l("ephemera-fx-b", t(2), true),
            l("ephemera-fx-c", t(3), true),
            l("ephemera-fx-d", t(4), true),
            l("ephemera-fx-now", None, true),
            l("nightly-backup", t(1), false),
            l("ephemera-lookalike", t(1), false),
            // Another stack's, older than all: never this stack's to delete.
            Listed {
                stack: Some("other".into()),
                ..l("ephemera-other-0", t(1), true)
            },
            Listed {
                stack: None,
                ..l("ephemera-untagged-0", t(1), true)
            },
        ];
        let fx = Some("fx");
        assert_eq!(
            to_prune(&listed, 3, "ephemera-fx-now", fx),
            vec!["ephemera-fx-b", "ephemera-fx-a"]
        );
        assert_eq!(
            to_prune(&listed, 1, "ephemera-fx-now", fx).len(),
            4,
            "this run's is the one kept"
        );
        assert!(to_prune(&listed, 0, "ephemera-fx-now", fx).is_empty());
        assert!(to_prune(&listed, 10, "ephemera-fx-now", fx).is_empty());
        assert!(to_prune(&listed, 1, "ephemera-fx-now", Some("other")).is_empty());
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
