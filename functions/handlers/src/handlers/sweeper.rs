//! sweeper: the backstop. On a schedule, terminates every instance tagged
//! `ephemera:managed=true` whose execution no longer runs or whose deadline has passed, and
//! deletes the signals (SSM parameters) of instances that are gone.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use ephemera_core::contract::RunParameters;
use ephemera_core::instance_state::InstanceState;
use ephemera_core::ledger::EntryState;
use ephemera_core::sweep::{launched_by_stack, release_reason, stale_signals, sweep_reason};
use serde::{Deserialize, Serialize};

use crate::aws::{
    Compute, Executions, InstanceView, Ledger, Notifier, ParamHousekeeping, VcpuReservations,
};
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
    /// vCPU reservations given back for runs whose execution no longer runs (the backstop of
    /// the teardown's own release).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vcpus_released: Vec<ReleasedVcpus>,
    /// What could not be done (the sweep itself still stands).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    pub swept_at: DateTime<Utc>,
}

/// A finished run's reservation in one quota, given back by the sweeper.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReleasedVcpus {
    pub execution: String,
    pub quota_code: String,
    pub vcpus: u32,
    pub reason: String,
}

/// What the sweeper reads and acts on: instances, executions, the topic it alerts, the ledger
/// it closes (and gives finished runs' vCPU reservations back in) and the signals it deletes.
pub struct Services<'a, E, X, N, L, P> {
    pub ec2: &'a E,
    pub executions: &'a X,
    pub sns: &'a N,
    pub ledger: Option<&'a L>,
    pub params: &'a P,
}

/// `profile`: the stack's worker instance profile; a live instance tagged as managed but launched
/// without it is left alone (and said in the notes), whatever its tags say.
/// `region`: the function's, whose vCPU reservations it looks after.
pub async fn handle<
    E: Compute,
    X: Executions,
    N: Notifier,
    L: Ledger + VcpuReservations,
    P: ParamHousekeeping,
>(
    s: Services<'_, E, X, N, L, P>,
    topic: Option<&str>,
    profile: Option<&str>,
    region: &str,
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
    let mut vcpus_released = vec![];
    if let Some(l) = s.ledger {
        close_swept(l, &swept).await;
        vcpus_released = release_finished(l, s.executions, region, &mut notes).await;
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
        vcpus_released,
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

/// Gives back the vCPU reservations of every run whose execution no longer runs (its teardown
/// failed, or never came: the execution was stopped, timed out or deleted), in every quota of
/// the region: a run that dies never holds vCPUs for good. A failure is noted.
async fn release_finished<L: VcpuReservations, X: Executions>(
    l: &L,
    executions: &X,
    region: &str,
    notes: &mut Vec<String>,
) -> Vec<ReleasedVcpus> {
    let codes = ephemera_core::catalog::quota_codes();
    let held = match l.held(region, &codes).await {
        Ok(h) => h,
        Err(e) => {
            tracing::error!(error = %e, "the vCPU reservations could not be read");
            notes.push(format!("vCPU reservations not read: {e}"));
            return vec![];
        }
    };
    let mut runs: BTreeSet<&str> = BTreeSet::new();
    for h in held.values() {
        runs.extend(h.runs.keys().map(String::as_str));
    }
    let mut released = vec![];
    for execution in runs {
        let status = match executions.status(execution).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(%execution, error = %e, "cannot read the execution; its vCPUs are kept");
                continue;
            }
        };
        let Some(reason) = release_reason(status.as_deref()) else {
            continue;
        };
        let of: Vec<&str> = held
            .values()
            .filter(|h| h.own(execution).is_some())
            .map(|h| h.code.as_str())
            .collect();
        match l.release(region, execution, &of).await {
            Ok(gone) => {
                for (code, vcpus) in gone {
                    tracing::warn!(%execution, %code, vcpus, %reason, "vCPU reservation given back");
                    released.push(ReleasedVcpus {
                        execution: execution.to_string(),
                        quota_code: code,
                        vcpus,
                        reason: reason.clone(),
                    });
                }
            }
            Err(e) => {
                tracing::error!(%execution, error = %e, "a vCPU reservation could not be given back");
                notes.push(format!("the vCPUs of {execution} not given back: {e}"));
            }
        }
    }
    released
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
