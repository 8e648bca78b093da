//! The three-workers scenario: three workers share the run's queue; Spot takes worker 1's first
//! instance back mid-run (it is relaunched and resumes), and worker 3's process is killed for
//! good while it holds a partition (its instance stays up and silent until the heartbeat
//! timeout releases it; its lease expires and another worker takes the partition over).
//! Then every partition must have been done exactly once, as the workers' own logs tell.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, Result};
use tokio::sync::watch;

use crate::{ec2, Console};
use ephemera_tests::harness;

/// The scenario's workers.
pub const WORKERS: u32 = 3;
/// The worker the scenario kills for good.
const KILLED: u32 = 3;
/// The worker whose first instance Spot reclaims.
const RECLAIMED: u32 = 1;

/// Waits until all three workers run and worker 3 holds a partition, then reclaims worker 1's
/// instance (notice, then termination 10 s later) and kills worker 3's process outright.
pub async fn reclaim_one_and_kill_one(
    region: &'static str,
    db_url: String,
    run_id: String,
    mut seen: watch::Receiver<ec2::Seen>,
    console: Console,
) -> Result<()> {
    let (reclaimed, killed, pid) = loop {
        {
            let s = seen.borrow();
            let first = |w: u32| s.instances.get(&(w, 1)).cloned();
            if let (Some(r), Some(k)) = (first(RECLAIMED), first(KILLED)) {
                if (1..=WORKERS).all(|w| first(w).is_some()) {
                    if let Some(pid) = s.pids.get(&k) {
                        break (r, k, *pid);
                    }
                }
            }
        }
        seen.changed().await?;
    };
    let (db, conn) = tokio_postgres::connect(&db_url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    // The worker names its leases `worker-<pid>-<nonce>/<task>` (its default --worker-id).
    let owner = format!("worker-{pid}-%");
    loop {
        let r = db
            .query_one(
                "SELECT count(*) FILTER (WHERE state = 'done'),
                        count(*) FILTER (WHERE state = 'running' AND lease_owner LIKE $2)
                   FROM ephemera.partitions WHERE run_id = $1",
                &[&run_id, &owner],
            )
            .await?;
        let (done, held): (i64, i64) = (r.get(0), r.get(1));
        if done >= 2 && held > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    console.line(&format!(
        "EC2: Spot interruption notice for worker {RECLAIMED}'s {reclaimed}; it is terminated in \
         10 s (2 min on AWS)"
    ));
    harness()
        .door
        .reclaim_spot(region, &reclaimed, Duration::from_secs(10));
    let status = tokio::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .await?;
    if !status.success() {
        return Err(anyhow!("kill -KILL {pid}: {status}"));
    }
    console.line(&format!(
        "EC2: worker {KILLED}'s process on {killed} killed for good while it held a partition; \
         the instance stays up, silent"
    ));
    Ok(())
}

/// Every partition of the run done, none failed, at least one taken over after its lease
/// expired, and each done exactly once: one "partition done" line in all the workers' logs
/// (written after its commit) per partition, but for the few the killed worker committed as it
/// died (its COMMIT reached the server, its line was never written), each claimed just once.
pub async fn exactly_once(db_url: &str, run_id: &str, logs: &Path) -> Result<(), String> {
    let (db, conn) = tokio_postgres::connect(db_url, tokio_postgres::NoTls)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let rows = db
        .query(
            "SELECT stage, pair, month::text, state, attempts FROM ephemera.partitions
              WHERE run_id = $1",
            &[&run_id],
        )
        .await
        .map_err(|e| e.to_string())?;
    let mut done_lines: BTreeMap<(String, String, String), u32> = BTreeMap::new();
    let entries = std::fs::read_dir(logs).map_err(|e| e.to_string())?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if !(name.starts_with("worker-") && name.ends_with(".log")) {
            continue;
        }
        let text = std::fs::read_to_string(entry.path()).map_err(|e| e.to_string())?;
        for line in text.lines() {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            let f = &v["fields"];
            if f["message"] == "partition done" {
                let s = |k: &str| f[k].as_str().unwrap_or_default().to_string();
                *done_lines
                    .entry((s("stage"), s("pair"), s("month")))
                    .or_default() += 1;
            }
        }
    }
    let mut problems = vec![];
    let (mut taken_over, mut unlogged) = (0, vec![]);
    for r in &rows {
        let key: (String, String, String) = (r.get(0), r.get(1), r.get(2));
        let (state, attempts): (String, i32) = (r.get(3), r.get(4));
        if state != "done" {
            problems.push(format!("{key:?} is {state}"));
        }
        match done_lines.remove(&key).unwrap_or(0) {
            1 => {}
            // Committed by the killed worker as it died: its COMMIT reached the server, its
            // log line did not. Then nobody else ever claimed it (one attempt).
            0 if attempts == 1 => unlogged.push(key),
            n => problems.push(format!(
                "{key:?} done {n} times in the workers' logs ({attempts} attempts)"
            )),
        }
        // An interruption's hand-back does not count an attempt; an expired lease does.
        if attempts >= 2 {
            taken_over += 1;
        }
    }
    // At most what the killed worker had in hand: one partition per task, a task per core.
    let tasks = std::thread::available_parallelism().map_or(1, |n| n.get());
    if unlogged.len() > tasks {
        problems.push(format!(
            "{} partitions done with no worker saying so: {unlogged:?}",
            unlogged.len()
        ));
    }
    if rows.is_empty() {
        problems.push("the run has no partitions".into());
    }
    if taken_over == 0 {
        problems.push("no partition was taken over from the killed worker".into());
    }
    problems.extend(
        done_lines
            .keys()
            .map(|k| format!("{k:?} done in a log but not in the queue")),
    );
    if problems.is_empty() {
        return Ok(());
    }
    Err(problems.join("; "))
}
