//! Following a run as it goes: each state as the execution enters it, the errors it catches,
//! and the worker's progress read from the queue in PostgreSQL.

use std::time::Duration;

use anyhow::{Context, Result};
use aws_sdk_sfn::types::{ExecutionStatus, HistoryEvent, HistoryEventType};
use serde_json::Value;

use crate::Console;
use ephemera_tests::e2e::Finished;

/// One line for a history event worth showing, if it is.
pub fn describe(e: &HistoryEvent, started: f64) -> Option<String> {
    let at = e.timestamp().as_secs_f64() - started;
    if let Some(d) = e.state_entered_event_details() {
        return Some(format!("{at:>7.1}s  → {}", d.name()));
    }
    let text = match e.r#type() {
        HistoryEventType::ExecutionStarted => "execution started".to_string(),
        HistoryEventType::LambdaFunctionFailed => {
            let d = e.lambda_function_failed_event_details()?;
            format!(
                "  ✗ {}: {}",
                d.error().unwrap_or("?"),
                short(d.cause().unwrap_or(""))
            )
        }
        HistoryEventType::TaskFailed => {
            let d = e.task_failed_event_details()?;
            format!(
                "  ✗ {}: {}",
                d.error().unwrap_or("?"),
                short(d.cause().unwrap_or(""))
            )
        }
        HistoryEventType::TaskTimedOut => {
            let d = e.task_timed_out_event_details()?;
            format!("  ✗ {}", d.error().unwrap_or("timed out"))
        }
        HistoryEventType::ExecutionSucceeded => "execution SUCCEEDED".to_string(),
        HistoryEventType::ExecutionFailed => {
            let d = e.execution_failed_event_details()?;
            format!(
                "execution FAILED: {}: {}",
                d.error().unwrap_or("?"),
                short(d.cause().unwrap_or(""))
            )
        }
        HistoryEventType::ExecutionAborted => {
            let d = e.execution_aborted_event_details();
            format!(
                "execution ABORTED: {}: {}",
                d.and_then(|d| d.error()).unwrap_or("stopped"),
                short(d.and_then(|d| d.cause()).unwrap_or(""))
            )
        }
        _ => return None,
    };
    Some(format!("{at:>7.1}s  {text}"))
}

/// A Lambda's cause is JSON with the message inside; a worker's is text, maybe none.
fn short(cause: &str) -> String {
    if cause.is_empty() {
        return "(no cause given)".into();
    }
    let message = serde_json::from_str::<Value>(cause)
        .ok()
        .and_then(|v| v["errorMessage"].as_str().map(str::to_string))
        .unwrap_or_else(|| cause.to_string());
    let mut s: String = message.chars().take(240).collect();
    if message.chars().count() > 240 {
        s.push('…');
    }
    s
}

/// The queue's (done, all) for the run, or None before the worker has planned it.
async fn progress(db: &tokio_postgres::Client, run_id: &str) -> Option<(u64, u64)> {
    let row = db
        .query_one(
            "SELECT count(*) FILTER (WHERE state = 'done'), count(*)
               FROM ephemera.partitions WHERE run_id = $1",
            &[&run_id],
        )
        .await
        .ok()?;
    let (done, all): (i64, i64) = (row.get(0), row.get(1));
    (all > 0).then_some((done as u64, all as u64))
}

/// Prints the run until the execution ends, and returns how it ended.
pub async fn follow(
    sfn: &aws_sdk_sfn::Client,
    execution: &str,
    db_url: &str,
    run_id: &str,
    console: &Console,
) -> Result<Finished> {
    let (db, conn) = tokio_postgres::connect(db_url, tokio_postgres::NoTls)
        .await
        .context("connecting to the demo's PostgreSQL")?;
    tokio::spawn(conn);
    let mut shown = 0usize;
    let mut started = None;
    // The workers' progress is told while they work: once the Map state is over, the lines
    // that follow (verification, the report) are the run's last word.
    let mut working = true;
    loop {
        // Progress first: the partitions done before this read show above the states that
        // followed them.
        if let (true, Some((done, all))) = (working, progress(&db, run_id).await) {
            console.progress(done, all);
        }
        let events = ephemera_tests::e2e::history(sfn, execution)
            .await
            .context("GetExecutionHistory")?;
        for e in events.iter().skip(shown) {
            let t0 = *started.get_or_insert(e.timestamp().as_secs_f64());
            if let Some(line) = describe(e, t0) {
                console.line(&line);
            }
        }
        shown = events.len();
        if working
            && events
                .iter()
                .any(|e| *e.r#type() == HistoryEventType::MapStateExited)
        {
            working = false;
            console.finish();
        }
        let d = sfn
            .describe_execution()
            .execution_arn(execution)
            .send()
            .await
            .context("DescribeExecution")?;
        if *d.status() != ExecutionStatus::Running && shown > 0 {
            // The closing event may land just after the status: one more read shows it.
            let last_seen = events
                .last()
                .map(|e| {
                    matches!(
                        e.r#type(),
                        HistoryEventType::ExecutionSucceeded
                            | HistoryEventType::ExecutionFailed
                            | HistoryEventType::ExecutionAborted
                            | HistoryEventType::ExecutionTimedOut
                    )
                })
                .unwrap_or(false);
            if last_seen {
                console.finish();
                return Ok(Finished::new(&d, &events));
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
