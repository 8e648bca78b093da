//! Step Functions history: what the orchestration itself cost, and what it saw of the workers.

use std::collections::{HashMap, HashSet};
use std::future::Future;

use ephemera_core::cost::{orchestration_cost, Orchestration};
use ephemera_core::rundoc::WorkersSeen;

use super::to_chrono;
use crate::error::AwsError;

/// What the execution's history says about the run.
#[derive(Debug, Clone, PartialEq)]
pub struct ExecutionStats {
    pub orchestration: Orchestration,
    pub started_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Each worker's end and every attempt launched, as the history has them.
    pub workers: WorkersSeen,
}

pub trait History: Send + Sync {
    /// None when the execution's history cannot be read (then the report says so).
    fn execution_stats(
        &self,
        execution_arn: &str,
        lambda_memory_mb: u32,
    ) -> impl Future<Output = Result<Option<ExecutionStats>, AwsError>> + Send;
    /// The run (`$.run`) as the state `state` was entered with it the first time; None when the
    /// execution never entered that state.
    fn run_entering(
        &self,
        execution_arn: &str,
        state: &str,
    ) -> impl Future<Output = Result<Option<serde_json::Value>, AwsError>> + Send;
}

/// What `e` says of the workers: an iteration's end, or a launch's attempts.
fn see_workers(
    workers: &mut WorkersSeen,
    e: &aws_sdk_sfn::types::HistoryEvent,
    at: chrono::DateTime<chrono::Utc>,
) {
    if let Some(d) = e.state_entered_event_details() {
        workers.entered(d.name(), d.input().unwrap_or_default(), at);
    }
    if let Some(d) = e.state_exited_event_details() {
        workers.exited(d.name(), d.output().unwrap_or_default());
    }
}

impl History for aws_sdk_sfn::Client {
    async fn execution_stats(
        &self,
        execution_arn: &str,
        lambda_memory_mb: u32,
    ) -> Result<Option<ExecutionStats>, AwsError> {
        let mut started_at = None;
        let mut transitions = 0u64;
        let mut invocations = 0u64;
        let mut seconds = 0.0f64;
        // A Task whose Resource is a function's ARN (every ephemera Lambda) records
        // LambdaFunctionScheduled -> LambdaFunctionStarted -> LambdaFunctionSucceeded/Failed/
        // TimedOut; one through the `lambda:invoke` integration records TaskScheduled(lambda) ->
        // TaskStarted -> TaskSucceeded/Failed. Other tasks (the worker's token wait) are not
        // Lambda time.
        let mut lambda_scheduled: HashSet<i64> = HashSet::new();
        let mut lambda_started: HashMap<i64, chrono::DateTime<chrono::Utc>> = HashMap::new();
        // An unreadable history leaves orchestration unpriced (a note), never a failed report.
        let Ok(events) = self
            .get_execution_history()
            .execution_arn(execution_arn)
            .into_paginator()
            .items()
            .send()
            .collect::<Result<Vec<_>, _>>()
            .await
        else {
            return Ok(None);
        };
        let mut workers = WorkersSeen::default();
        for e in &events {
            let kind = e.r#type().as_str();
            let at = to_chrono(e.timestamp());
            see_workers(&mut workers, e, at);
            if kind == "ExecutionStarted" {
                started_at = Some(at);
            }
            if kind.ends_with("StateEntered") {
                transitions += 1;
            }
            match kind {
                "LambdaFunctionScheduled" => {
                    invocations += 1;
                    lambda_scheduled.insert(e.id());
                }
                "LambdaFunctionStarted" if lambda_scheduled.contains(&e.previous_event_id()) => {
                    lambda_started.insert(e.id(), at);
                }
                "TaskScheduled" => {
                    let is_lambda = e
                        .task_scheduled_event_details()
                        .is_some_and(|d| d.resource_type() == "lambda");
                    if is_lambda {
                        invocations += 1;
                        lambda_scheduled.insert(e.id());
                    }
                }
                "TaskStarted" if lambda_scheduled.contains(&e.previous_event_id()) => {
                    lambda_started.insert(e.id(), at);
                }
                "TaskSucceeded"
                | "TaskFailed"
                | "TaskTimedOut"
                | "LambdaFunctionSucceeded"
                | "LambdaFunctionFailed"
                | "LambdaFunctionTimedOut" => {
                    if let Some(start) = lambda_started.remove(&e.previous_event_id()) {
                        seconds += (at - start).num_milliseconds().max(1) as f64 / 1000.0;
                    }
                }
                _ => {}
            }
        }
        let gb_seconds = seconds * lambda_memory_mb as f64 / 1024.0;
        Ok(Some(ExecutionStats {
            orchestration: orchestration_cost(transitions, invocations, gb_seconds),
            started_at,
            workers,
        }))
    }

    async fn run_entering(
        &self,
        execution_arn: &str,
        state: &str,
    ) -> Result<Option<serde_json::Value>, AwsError> {
        let mut pages = self
            .get_execution_history()
            .execution_arn(execution_arn)
            .into_paginator()
            .items()
            .send();
        while let Some(e) = pages.next().await {
            let e = e.map_err(|e| AwsError::sdk("states", "GetExecutionHistory", e))?;
            let Some(d) = e.state_entered_event_details() else {
                continue;
            };
            if d.name() != state {
                continue;
            }
            let input: Option<serde_json::Value> =
                d.input().and_then(|i| serde_json::from_str(i).ok());
            return Ok(input.and_then(|mut i| i.get_mut("run").map(serde_json::Value::take)));
        }
        Ok(None)
    }
}
