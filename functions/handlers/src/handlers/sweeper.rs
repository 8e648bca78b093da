//! sweeper: the backstop. On a schedule, terminates every instance tagged
//! `ephemera:managed=true` whose execution no longer runs or whose deadline has passed.

use chrono::{DateTime, Utc};
use ephemera_core::instance_state::InstanceState;
use ephemera_core::ledger::EntryState;
use ephemera_core::sweep::sweep_reason;
use serde::{Deserialize, Serialize};

use crate::aws::{Compute, Executions, Ledger, Notifier};
use crate::error::Error;
use ephemera_core::tags;

/// The scheduled event carries nothing the sweeper needs.
#[derive(Debug, Default, Deserialize)]
pub struct Input {}

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
    pub swept_at: DateTime<Utc>,
}

pub async fn handle<E: Compute, X: Executions, N: Notifier, L: Ledger>(
    ec2: &E,
    executions: &X,
    sns: &N,
    ledger: Option<&L>,
    topic: Option<&str>,
    now: DateTime<Utc>,
) -> Result<SweepReport, Error> {
    let live = ec2
        .instances(&[(tags::MANAGED, "true")], &InstanceState::LIVE)
        .await?;
    let mut swept = vec![];
    for i in &live {
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
    let ids: Vec<String> = swept.iter().map(|s| s.instance_id.clone()).collect();
    ec2.terminate(&ids).await?;
    for s in &swept {
        tracing::warn!(instance = %s.instance_id, run = %s.run_id, reason = %s.reason, "swept");
    }
    // A run whose execution never cleaned up still lands in the ledger: its reservation keeps
    // counting (no cost was measured), marked swept.
    if let Some(l) = ledger {
        let executions: std::collections::BTreeSet<&str> = swept
            .iter()
            .map(|s| s.execution.as_str())
            .filter(|e| !e.is_empty())
            .collect();
        for e in executions {
            if let Err(err) = l.close(e, EntryState::Swept, None).await {
                tracing::error!(execution = %e, error = %err, "the ledger could not be updated");
            }
        }
    }
    let report = SweepReport {
        checked: live.len(),
        terminated: swept,
        swept_at: now,
    };
    if let (Some(t), false) = (topic, report.terminated.is_empty()) {
        let lines: Vec<String> = report
            .terminated
            .iter()
            .map(|s| format!("{} (run {}): {}", s.instance_id, s.run_id, s.reason))
            .collect();
        let body = format!(
            "The ephemera sweeper terminated {} instance(s) that outlived their run:\n{}\n\n{}",
            report.terminated.len(),
            lines.join("\n"),
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
        let subject = format!(
            "ephemera sweeper: terminated {} instance(s)",
            report.terminated.len()
        );
        sns.publish(t, &subject, &body, &[("outcome", "SWEPT")])
            .await?;
    }
    Ok(report)
}
