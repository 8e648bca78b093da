//! sweeper: the backstop. On a schedule, terminates every instance tagged
//! `ephemera:managed=true` whose execution no longer runs or whose deadline has passed, and
//! deletes the signals (SSM parameters) of instances that are gone.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use ephemera_core::contract::RunParameters;
use ephemera_core::instance_state::InstanceState;
use ephemera_core::ledger::EntryState;
use ephemera_core::sweep::{launched_by_stack, stale_signals, sweep_reason};
use serde::{Deserialize, Serialize};

use crate::aws::{Compute, Executions, InstanceView, Ledger, Notifier, ParamHousekeeping};
use crate::error::Error;
use ephemera_core::tags;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Swept {
    pub instance_id: String,
    pub run_id: String,
    pub execution: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SweepReport {
    pub checked: usize,
    pub terminated: Vec<Swept>,
    /// Signals deleted: `started` parameters and task tokens of instances no longer live.
    #[serde(default)]
    pub signals_deleted: usize,
    /// What could not be done (the sweep itself still stands).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    pub swept_at: DateTime<Utc>,
}

/// What the sweeper reads and acts on: instances, executions, the topic it alerts, the ledger
/// it closes and the signals it deletes.
pub struct Services<'a, E, X, N, L, P> {
    pub ec2: &'a E,
    pub executions: &'a X,
    pub sns: &'a N,
    pub ledger: Option<&'a L>,
    pub params: &'a P,
}

/// `profile`: the stack's worker instance profile; a live instance tagged as managed but launched
/// without it is left alone (and said in the notes), whatever its tags say.
pub async fn handle<E: Compute, X: Executions, N: Notifier, L: Ledger, P: ParamHousekeeping>(
    s: Services<'_, E, X, N, L, P>,
    topic: Option<&str>,
    profile: Option<&str>,
    now: DateTime<Utc>,
) -> Result<SweepReport, Error> {
    let tagged = s
        .ec2
        .instances(&[(tags::MANAGED, "true")], &InstanceState::LIVE)
        .await?;
    let (live, impostors): (Vec<InstanceView>, Vec<InstanceView>) = tagged
        .into_iter()
        .partition(|i| launched_by_stack(i.profile.as_deref(), profile));
    let mut notes: Vec<String> = impostors
        .iter()
        .map(|i| {
            format!(
                "{} is tagged {}=true but was not launched with this stack's instance profile ({}): left alone",
                i.id,
                tags::MANAGED,
                i.profile.as_deref().unwrap_or("none")
            )
        })
        .collect();
    let swept = condemned(s.executions, &live, now).await;
    let ids: Vec<String> = swept.iter().map(|s| s.instance_id.clone()).collect();
    s.ec2.terminate(&ids).await?;
    for s in &swept {
        tracing::warn!(instance = %s.instance_id, run = %s.run_id, reason = %s.reason, "swept");
    }
    if let Some(l) = s.ledger {
        close_swept(l, &swept).await;
    }
    // Signals of instances that are gone: the swept ones, and any whose execution ended without
    // deleting them (a crash, or a run the sweeper ended before).
    let still_live: BTreeSet<&str> = live
        .iter()
        .map(|i| i.id.as_str())
        .filter(|id| !ids.iter().any(|s| s == id))
        .collect();
    let signals_deleted = delete_stale_signals(s.params, &still_live, now, &mut notes).await;
    let report = SweepReport {
        checked: live.len(),
        terminated: swept,
        signals_deleted,
        notes,
        swept_at: now,
    };
    if let (Some(t), false) = (topic, report.terminated.is_empty()) {
        alert(s.sns, t, &report).await?;
    }
    Ok(report)
}

/// The live instances to terminate, each with why: its execution is over, or its deadline
/// passed.
async fn condemned<X: Executions>(
    executions: &X,
    live: &[InstanceView],
    now: DateTime<Utc>,
) -> Vec<Swept> {
    let mut swept = vec![];
    for i in live {
        let execution = i.tags.get(tags::EXECUTION).cloned().unwrap_or_default();
        let status = if execution.is_empty() {
            None
        } else {
            match executions.status(&execution).await {
                Ok(s) => s,
                // Unknown is not over: only the deadline can condemn this one.
                Err(e) => {
                    tracing::warn!(instance = %i.id, error = %e, "cannot read the execution; applying the deadline only");
                    Some("RUNNING".to_string())
                }
            }
        };
        let deadline = i
            .tags
            .get(tags::DEADLINE)
            .and_then(|d| DateTime::parse_from_rfc3339(d).ok())
            .map(|d| d.with_timezone(&Utc));
        if let Some(reason) = sweep_reason(status.as_deref(), deadline, now) {
            swept.push(Swept {
                instance_id: i.id.clone(),
                run_id: i.tags.get(tags::RUN).cloned().unwrap_or_default(),
                execution,
                reason,
            });
        }
    }
    swept
}

/// A run whose execution never cleaned up still lands in the ledger: its reservation keeps
/// counting (no cost was measured), marked swept.
async fn close_swept<L: Ledger>(l: &L, swept: &[Swept]) {
    let executions: BTreeSet<&str> = swept
        .iter()
        .map(|s| s.execution.as_str())
        .filter(|e| !e.is_empty())
        .collect();
    for e in executions {
        if let Err(err) = l.close(e, EntryState::Swept, None, None).await {
            tracing::error!(execution = %e, error = %err, "the ledger could not be updated");
        }
    }
}

/// Deletes the signals of instances no longer live; how many (a failure is noted).
async fn delete_stale_signals<P: ParamHousekeeping>(
    params: &P,
    still_live: &BTreeSet<&str>,
    now: DateTime<Utc>,
    notes: &mut Vec<String>,
) -> usize {
    let listed = match params.list_under(RunParameters::ROOT).await {
        Ok(listed) => listed,
        Err(e) => {
            tracing::error!(error = %e, "signals could not be listed");
            notes.push(format!("signals not listed: {e}"));
            return 0;
        }
    };
    let stale = stale_signals(&listed, still_live, now);
    match params.delete_all(&stale).await {
        Ok(()) => stale.len(),
        Err(e) => {
            tracing::error!(error = %e, "stale signals could not be deleted");
            notes.push(format!("{} stale signal(s) left: {e}", stale.len()));
            0
        }
    }
}

/// Anything swept means something failed to clean up: said to the topic.
async fn alert<N: Notifier>(sns: &N, topic: &str, report: &SweepReport) -> Result<(), Error> {
    let lines: Vec<String> = report
        .terminated
        .iter()
        .map(|s| format!("{} (run {}): {}", s.instance_id, s.run_id, s.reason))
        .collect();
    let body = format!(
        "The ephemera sweeper terminated {} instance(s) that outlived their run:\n{}\n\n{}",
        report.terminated.len(),
        lines.join("\n"),
        serde_json::to_string_pretty(report).unwrap_or_default()
    );
    let subject = format!(
        "ephemera sweeper: terminated {} instance(s)",
        report.terminated.len()
    );
    sns.publish(topic, &subject, &body, &[("outcome", "SWEPT")])
        .await?;
    Ok(())
}
