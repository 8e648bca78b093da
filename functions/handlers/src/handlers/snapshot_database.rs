//! snapshot-database: `database.snapshot_before`, an RDS snapshot of the workers' database
//! before any of them is launched. Asks for it once (named after the execution, so a retried
//! call finds it), then follows it until it is available; the run does not start without it.
//! A source RDS will not snapshot yet (not `available`) is asked again at each poll until the
//! deadline. With `prune`, after the run's outputs verified: ephemera's older snapshots of the
//! source beyond `database.keep_snapshots` are deleted.

use chrono::{DateTime, Utc};
use ephemera_core::snapshot::{self, Pruned, SnapshotKind, SnapshotState, SnapshotVerdict};
use ephemera_core::{tags, RunSpec};
use serde::Deserialize;

use crate::aws::{AwsError, Snapshots};
use crate::error::Error;

#[derive(Debug, Deserialize)]
pub struct Input {
    pub run: RunSpec,
    pub execution: String,
    /// The previous poll's output; absent on the first call.
    #[serde(default)]
    pub snapshot: Option<SnapshotState>,
    /// Delete the source's older ephemera snapshots (`database.keep_snapshots`).
    #[serde(default)]
    pub prune: bool,
}

/// `stack`: the deployment's stack name, tagged on the snapshot so that pruning finds its own.
pub async fn handle<R: Snapshots>(
    rds: &R,
    input: Input,
    stack: Option<&str>,
    now: DateTime<Utc>,
) -> Result<SnapshotState, Error> {
    let spec = &input.run;
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
    let ask = || async {
        let mut t = spec.tags.clone();
        t.insert(tags::MANAGED.into(), "true".into());
        t.insert(tags::RUN.into(), spec.run_id.clone());
        t.insert(tags::EXECUTION.into(), input.execution.clone());
        if let Some(s) = stack {
            t.insert(tags::STACK.into(), s.to_string());
        }
        match rds.create(kind, db, &identifier, &t).await {
            Ok(status) => {
                tracing::info!(%identifier, source = db, status, "snapshot requested");
                Ok(status)
            }
            Err(AwsError::Call { code, message, .. }) if snapshot::is_source_busy(&code) => {
                tracing::info!(%identifier, source = db, %code, %message, "source not available yet; asking again at the next poll");
                Ok(snapshot::SOURCE_BUSY.to_string())
            }
            Err(e) => Err(failed(refusal(&e))),
        }
    };
    let (requested_at, status) = match &input.snapshot {
        None => (now, ask().await?),
        Some(prev) if prev.status == snapshot::SOURCE_BUSY => (prev.requested_at, ask().await?),
        Some(prev) => {
            let status = rds
                .status(kind, &identifier)
                .await?
                .ok_or_else(|| failed("it no longer exists".into()))?;
            (prev.requested_at, status)
        }
    };
    let deadline = snapshot::deadline(spec, requested_at);
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
            SnapshotVerdict::Creating => snapshot::next_wait(spec, now, deadline),
            SnapshotVerdict::Available => 0,
        },
        pruned: None,
        prune_error: None,
    })
}

/// After a verified run: ephemera's snapshots of the source beyond the newest
/// `database.keep_snapshots` (this run's always kept) deleted; the user's never touched.
pub async fn prune<R: Snapshots>(
    rds: &R,
    input: Input,
    stack: Option<&str>,
) -> Result<Pruned, Error> {
    let spec = &input.run;
    let keep = spec.database.keep_snapshots;
    let taken = input
        .snapshot
        .as_ref()
        .ok_or_else(|| Error::BadInput("prune needs the run's snapshot ($.snapshot)".into()))?;
    let listed = rds.list(taken.kind, &taken.source).await?;
    let deleted = snapshot::to_prune(&listed, keep, &taken.identifier, stack);
    for id in &deleted {
        rds.delete(taken.kind, id).await?;
    }
    tracing::info!(source = %taken.source, keep, ?deleted, "older snapshots pruned");
    Ok(Pruned::of(keep, &deleted))
}

/// What RDS answered, said for the user: a missing source names the field to fix.
fn refusal(e: &AwsError) -> String {
    match e {
        AwsError::Call { code, message, .. }
            if code.contains("DBInstanceNotFound") || code.contains("DBClusterNotFound") =>
        {
            format!("{code}: {message} (database.snapshot_before names a source this region does not have)")
        }
        other => other.to_string(),
    }
}
