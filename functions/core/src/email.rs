//! The email SNS sends when a run ends: a subject under 100 characters (run, outcome, cost)
//! and a body a person reads, ending with the JSON report.

use crate::instance_state::InstanceState;
use crate::report::{s3_console_url, CostReport, Outcome};
use crate::snapshot::SnapshotState;

/// The email's lines on the older snapshots a verified run deleted, or why it could not.
fn snapshot_housekeeping(s: &SnapshotState) -> String {
    let mut b = String::new();
    if let Some(p) = &s.pruned {
        b.push_str(&format!(
            "  older snapshots deleted (database.keep_snapshots = {}): {}\n",
            p.keep,
            match p.deleted_count {
                0 => "none".to_string(),
                n if n as usize > p.deleted.len() => {
                    format!(
                        "{} and {} more",
                        p.deleted.join(", "),
                        n as usize - p.deleted.len()
                    )
                }
                _ => p.deleted.join(", "),
            }
        ));
    }
    if let Some(e) = &s.prune_error {
        b.push_str(&format!(
            "  older snapshots not deleted: {}: {}\n",
            e.error,
            e.cause.as_deref().unwrap_or("")
        ));
    }
    b
}

/// The email: a subject under 100 characters (run, outcome, cost) and a readable body that ends
/// with the JSON report.
pub fn render_email(r: &CostReport) -> (String, String) {
    let tail = format!(": {} ${:.2}", r.outcome, r.actual_usd);
    let room = 99 - "ephemera ".len() - tail.len();
    let run: String = if r.run_id.chars().count() > room {
        let mut s: String = r.run_id.chars().take(room.saturating_sub(1)).collect();
        s.push('~');
        s
    } else {
        r.run_id.clone()
    };
    let subject = format!("ephemera {run}{tail}");

    let mut b = String::new();
    email_outcome(r, &mut b);
    email_cost_and_work(r, &mut b);
    email_workers(r, &mut b);
    email_tail(r, &mut b);
    (subject, b)
}

/// The outcome, the error, where the page is and the snapshot taken.
fn email_outcome(r: &CostReport, b: &mut String) {
    b.push_str(&format!("Run {} {}.\n", r.run_id, r.outcome));
    if r.outcome == Outcome::Cancelled {
        b.push_str(
            "The run was cancelled before it ended: every instance was terminated (a job got SIGTERM and its grace, its checkpoint saved) and the month's ledger holds what it cost.\n",
        );
    }
    if r.outcome == Outcome::BudgetExhausted {
        b.push_str(&format!(
            "The run reached its cap, limits.budget_usd ${:.2}: its work was stopped at the money deadline (the job's grace given, its checkpoint saved) and nothing more was launched.\n",
            r.budget_usd
        ));
    }
    // The presentable form: a Lambda's JSON cause reduced to its message.
    if let Some(e) = r.failure.as_ref().or(r.error.as_ref()) {
        b.push_str(&format!(
            "Error: {}{}\n",
            e.error,
            e.cause
                .as_deref()
                .map(|c| format!(" - {c}"))
                .unwrap_or_default()
        ));
    }
    if let Some(s) = &r.stored {
        b.push_str(&format!(
            "Report with its timeline (HTML): {}\n  in the S3 console: {}\n",
            s.html_uri(),
            s.html_console_url()
        ));
    }
    if let Some(m) = &r.month_page {
        b.push_str(&format!(
            "The month at a glance ({}): {}\n  in the S3 console: {}\n",
            m.month,
            m.uri(),
            s3_console_url(&m.bucket, &m.key)
        ));
    }
    if let Some(s) = &r.snapshot {
        b.push_str(&format!(
            "Snapshot before writing: {} of {} {} ({}, requested {})\n",
            s.identifier,
            s.kind.noun(),
            s.source,
            s.status,
            s.requested_at.format("%Y-%m-%d %H:%M:%S UTC")
        ));
        b.push_str(&snapshot_housekeeping(s));
    }
}

/// What it cost against the estimate and the budget, the time per phase, what was done and
/// what it left.
fn email_cost_and_work(r: &CostReport, b: &mut String) {
    b.push_str(&format!(
        "\nCost: ${:.4} actual (compute ${:.4}, EBS ${:.4}, orchestration ${:.4})\n",
        r.actual_usd, r.compute_usd, r.ebs_usd, r.orchestration.usd
    ));
    b.push_str(&format!(
        "Estimate before launch ${:.4}, budget ${:.2}, On-Demand would have cost ${:.4} (saved ${:.4})\n",
        r.estimate_usd, r.budget_usd, r.on_demand_equivalent_usd, r.savings_usd
    ));
    let p = &r.phases;
    b.push_str(&format!(
        "Time: quota wait {} s, boot {} s, work {} s, teardown {} s, total {} s\n",
        p.quota_wait_seconds, p.boot_seconds, p.work_seconds, p.teardown_seconds, p.total_seconds
    ));
    if let [w] = r.workers.as_slice() {
        if let (None, Some(work)) = (&w.error, &w.work) {
            b.push_str(&format!("Work: {work}\n"));
        }
    }
    if let Some(o) = r.verification.as_ref().and_then(|v| v.outputs.as_ref()) {
        b.push_str(&format!(
            "Outputs: {} object(s), {} bytes, listed in {}\n",
            o.objects,
            o.bytes,
            o.listed_in()
        ));
    }
}

/// Each worker (when there are several, or one was lost) and each instance.
fn email_workers(r: &CostReport, b: &mut String) {
    if r.workers.len() > 1 || r.workers.iter().any(|w| w.error.is_some()) {
        b.push_str("\nWorkers:\n");
        for w in &r.workers {
            b.push_str(&format!(
                "  worker {}: {} instance(s), {}\n",
                w.slot,
                w.attempts,
                w.ended()
            ));
        }
    }
    b.push_str("\nAttempts:\n");
    let many = r.workers.len() > 1;
    for a in &r.attempts {
        b.push_str(&format!(
            "  {}#{} {} {} {} in {}: {} s billed, ${:.4} ({}), was {}\n",
            if many {
                format!("worker {} ", a.worker)
            } else {
                String::new()
            },
            a.attempt,
            a.instance_id,
            a.instance_type,
            a.market.as_str(),
            a.availability_zone.as_deref().unwrap_or("?"),
            a.billed_seconds,
            a.compute_usd,
            a.price_source,
            a.state_before.map_or("unknown", InstanceState::name)
        ));
        if let Some(p) = &a.placement {
            b.push_str(&format!("    {p}\n"));
        }
    }
    if r.attempts.is_empty() {
        b.push_str("  none: nothing was launched\n");
    }
}

/// What was terminated, the notes, the execution and the JSON report.
fn email_tail(r: &CostReport, b: &mut String) {
    b.push_str(&format!(
        "\nTerminated: {}\n",
        if r.terminated.is_empty() {
            "nothing left to terminate".to_string()
        } else {
            r.terminated.join(", ")
        }
    ));
    for n in &r.notes {
        b.push_str(&format!("Note: {n}\n"));
    }
    b.push_str(&format!("Execution: {}\n", r.execution));
    b.push_str("\n--- report (JSON) ---\n");
    b.push_str(&serde_json::to_string_pretty(r).unwrap_or_default());
    b.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cost::Orchestration;
    use crate::report::{Outcome, Phases, StoredReport, WorkerLine};
    use crate::verify::{Outputs, Verification};
    use chrono::Utc;

    #[test]
    fn subject_stays_under_100_characters() {
        let mut r = CostReport {
            run_id: "x".repeat(200),
            execution: "arn".into(),
            outcome: Outcome::Succeeded,
            error: None,
            failure: None,
            estimate_usd: 1.0,
            budget_usd: 2.0,
            actual_usd: 0.1234,
            compute_usd: 0.1,
            ebs_usd: 0.02,
            on_demand_equivalent_usd: 0.3,
            savings_usd: 0.2,
            orchestration: Orchestration::default(),
            attempts: vec![],
            workers: vec![],
            snapshot: None,
            phases: Phases::default(),
            terminated: vec![],
            generated_at: Utc::now(),
            notes: vec![],
            verification: None,
            stored: None,
            month_page: None,
        };
        let (s, body) = render_email(&r);
        assert!(s.chars().count() < 100, "{}", s.len());
        assert!(s.ends_with(": SUCCEEDED $0.12"), "{s}");
        assert!(body.contains("nothing was launched"));
        r.run_id = "fx-2023".into();
        assert_eq!(render_email(&r).0, "ephemera fx-2023: SUCCEEDED $0.12");
        let json_part = body.split("--- report (JSON) ---\n").nth(1).unwrap();
        let back: CostReport = serde_json::from_str(json_part).unwrap();
        assert_eq!(back.outcome, Outcome::Succeeded);
        assert!(
            !body.contains("S3 console"),
            "no link when nothing was stored"
        );

        r.stored = Some(StoredReport {
            bucket: "out".into(),
            prefix: "runs/fx-2023/".into(),
        });
        let (_, body) = render_email(&r);
        assert!(
            body.contains("(HTML): s3://out/runs/fx-2023/report.html\n  in the S3 console: https://s3.console.aws.amazon.com/s3/object/out?prefix=runs/fx-2023/report.html\n"),
            "{body}"
        );
        // A job's run: what it ran and what it left, in words.
        r.workers = vec![WorkerLine {
            slot: 1,
            attempts: 2,
            reported: true,
            error: None,
            work: WorkerLine::work_of(
                &serde_json::json!({
                    "run_id": "fx-2023", "partitions_done": 0, "partitions_failed": 0,
                    "rows_in": 0, "rows_out": 0, "seconds": 811.6,
                    "job": {"command": "python3 train.py --epochs 3", "exit_code": 0, "seconds": 811.6}
                }),
                None,
            ),
        }];
        r.verification = Some(Verification {
            ok: true,
            checks: vec![],
            verified_at: Utc::now(),
            outputs: Some(Outputs {
                manifest: "s3://out/runs/fx-2023/manifest.json".into(),
                objects: 3,
                bytes: 9437193,
                manifests: 1,
            }),
        });
        let (_, body) = render_email(&r);
        assert!(
            body.contains("Work: `python3 train.py --epochs 3` exited 0 after 812 s\nOutputs: 3 object(s), 9437193 bytes, listed in s3://out/runs/fx-2023/manifest.json\n"),
            "{body}"
        );
        // A job's workers each list their share: the report says how many manifests.
        if let Some(o) = r.verification.as_mut().and_then(|v| v.outputs.as_mut()) {
            o.manifest = "s3://out/runs/fx-2023/worker-1/manifest.json".into();
            o.manifests = 2;
        }
        let (_, body) = render_email(&r);
        assert!(
            body.contains("Outputs: 3 object(s), 9437193 bytes, listed in 2 manifests, one per worker (s3://out/runs/fx-2023/worker-1/manifest.json …)\n"),
            "{body}"
        );
        // One manifest is not said on the wire, and outputs written before the count read as one.
        let mut one = r.verification.clone().unwrap().outputs.unwrap();
        one.manifests = 1;
        let wire = serde_json::to_value(&one).unwrap();
        assert!(wire.get("manifests").is_none(), "{wire}");
        assert_eq!(serde_json::from_value::<Outputs>(wire).unwrap(), one);
        // Reports stored before these fields existed still read.
        let mut old = serde_json::to_value(&r).unwrap();
        old.as_object_mut().unwrap().remove("verification");
        old.as_object_mut().unwrap().remove("stored");
        let old: CostReport = serde_json::from_value(old).unwrap();
        assert_eq!((old.verification, old.stored), (None, None));
    }
}
