//! snapshot-database: `database.snapshot_before`, an RDS snapshot of the workers' database
//! before any of them is launched. Asks for it once (named after the execution, so a retried
//! call finds it), then follows it until it is available; the run does not start without it.

use chrono::{DateTime, Utc};
use ephemera_core::snapshot::{self, SnapshotKind, SnapshotState, SnapshotVerdict};
use ephemera_core::tags;
use serde::Deserialize;

use super::parse_spec;
use crate::aws::Snapshots;
use crate::error::Error;

#[derive(Debug, Deserialize)]
pub struct Input {
    pub run: serde_json::Value,
    pub execution: String,
    /// The previous poll's output; absent on the first call.
    #[serde(default)]
    pub snapshot: Option<SnapshotState>,
}

pub async fn handle<R: Snapshots>(
    rds: &R,
    input: Input,
    now: DateTime<Utc>,
) -> Result<SnapshotState, Error> {
    let spec = parse_spec(&input.run)?;
    let source = spec.database.snapshot_before.as_ref().ok_or_else(|| {
        Error::BadInput(
            "snapshot-database called for a run without database.snapshot_before".into(),
        )
    })?;
    let (kind, db) = SnapshotKind::of(source)
        .ok_or_else(|| Error::BadInput("database.snapshot_before names no single source".into()))?;
    let identifier = snapshot::identifier(&spec.run_id, &input.execution);
    let failed = |why: String| {
        Error::SnapshotFailed(format!(
            "snapshot {identifier} of {} {db}: {why}; no worker was launched",
            kind.noun()
        ))
    };
    let (requested_at, status) = match &input.snapshot {
        None => {
            let mut t = spec.tags.clone();
            t.insert(tags::MANAGED.into(), "true".into());
            t.insert(tags::RUN.into(), spec.run_id.clone());
            t.insert(tags::EXECUTION.into(), input.execution.clone());
            let status = rds
                .create(kind, db, &identifier, &t)
                .await
                .map_err(|e| failed(refusal(&e)))?;
            tracing::info!(%identifier, source = db, status, "snapshot requested");
            (now, status)
        }
        Some(prev) => {
            let status = rds
                .status(kind, &identifier)
                .await?
                .ok_or_else(|| failed("it no longer exists".into()))?;
            (prev.requested_at, status)
        }
    };
    let deadline = snapshot::deadline(&spec, requested_at);
    let verdict = snapshot::judge(&status, now, deadline).map_err(failed)?;
    tracing::info!(%identifier, status, ?verdict, "snapshot checked");
    Ok(SnapshotState {
        verdict,
        kind,
        source: db.to_string(),
        identifier,
        status,
        requested_at,
        checked_at: now,
        deadline,
        wait_seconds: match verdict {
            SnapshotVerdict::Creating => snapshot::next_wait(&spec, now, deadline),
            SnapshotVerdict::Available => 0,
        },
    })
}

/// What RDS answered, said for the user: a missing source names the field to fix.
fn refusal(e: &Error) -> String {
    match e {
        Error::Aws { code, message, .. }
            if code.contains("DBInstanceNotFound") || code.contains("DBClusterNotFound") =>
        {
            format!("{code}: {message} (database.snapshot_before names a source this region does not have)")
        }
        other => other.to_string(),
    }
}
