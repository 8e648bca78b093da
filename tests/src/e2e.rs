//! End to end: the deployed ASL file, created in moto with the template's substitutions and run
//! by moto's Step Functions executor, its Lambda calls served by the real handlers through the
//! front door, and a worker stand-in on the other side of the task token.

use std::time::Duration;

use aws_sdk_sfn::types::ExecutionStatus;
use serde_json::Value;

use crate::sdk_config;

pub const ACCOUNT: &str = "123456789012";

/// The ARNs the template substitutes into the definition (`DefinitionSubstitutions`).
pub fn substitutions(region: &str) -> Vec<(String, String)> {
    [
        ("QuotaCheckFunctionArn", "quota-check"),
        ("SnapshotDatabaseFunctionArn", "snapshot-database"),
        ("LaunchWorkerFunctionArn", "launch-worker"),
        ("HealthCheckFunctionArn", "health-check"),
        ("VerifyCompletionFunctionArn", "verify-completion"),
        (
            "TerminateWithCostReportFunctionArn",
            "terminate-with-cost-report",
        ),
    ]
    .iter()
    .map(|(k, f)| {
        (
            k.to_string(),
            format!("arn:aws:lambda:{region}:{ACCOUNT}:function:ephemera-{f}"),
        )
    })
    .collect()
}

pub fn asl_path() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../state-machines/ephemeral-worker.asl.json")
}

/// The ASL file with `${Name}` replaced as CloudFormation would.
pub fn definition(region: &str) -> String {
    let mut text = std::fs::read_to_string(asl_path()).expect("the ASL file");
    for (k, v) in substitutions(region) {
        text = text.replace(&format!("${{{k}}}"), &v);
    }
    assert!(
        !text.contains("${"),
        "a substitution is missing in the definition"
    );
    text
}

pub async fn create_state_machine(region: &str) -> String {
    let sfn = aws_sdk_sfn::Client::new(&sdk_config(region));
    sfn.create_state_machine()
        .name("ephemera-worker")
        .definition(definition(region))
        .role_arn(format!(
            "arn:aws:iam::{ACCOUNT}:role/ephemera-state-machine"
        ))
        .send()
        .await
        .expect("CreateStateMachine")
        .state_machine_arn()
        .to_string()
}

#[derive(Debug, Clone)]
pub struct Finished {
    pub status: String,
    pub output: Value,
    pub error: Option<String>,
    pub cause: Option<String>,
    /// Names of the states entered, in order.
    pub path: Vec<String>,
    /// The cost report: the output's `report`, or for a failed execution (which has no output)
    /// the one Cleanup or TerminateWithCostReport left in the state data.
    pub report: Value,
}

impl Finished {
    /// How the execution ended, from DescribeExecution and the states it entered.
    pub fn new(
        d: &aws_sdk_sfn::operation::describe_execution::DescribeExecutionOutput,
        events: &[aws_sdk_sfn::types::HistoryEvent],
    ) -> Finished {
        let output: Value = d
            .output()
            .and_then(|o| serde_json::from_str(o).ok())
            .unwrap_or(Value::Null);
        let from_history = || {
            events
                .iter()
                .rev()
                .filter_map(|e| e.state_exited_event_details())
                .filter(|x| matches!(x.name(), "Cleanup" | "TerminateWithCostReport"))
                .find_map(|x| serde_json::from_str::<Value>(x.output()?).ok())
                .map(|data| data["report"].clone())
                .unwrap_or(Value::Null)
        };
        Finished {
            status: d.status().as_str().to_string(),
            report: match &output["report"] {
                Value::Null => from_history(),
                r => r.clone(),
            },
            output,
            error: d.error().map(str::to_string),
            cause: d.cause().map(str::to_string),
            path: events
                .iter()
                .filter_map(|e| e.state_entered_event_details())
                .map(|d| d.name().to_string())
                .collect(),
        }
    }

    pub fn visited(&self, state: &str) -> usize {
        self.path.iter().filter(|s| *s == state).count()
    }
}

pub async fn start(region: &str, machine: &str, name: &str, input: &Value) -> String {
    let sfn = aws_sdk_sfn::Client::new(&sdk_config(region));
    sfn.start_execution()
        .state_machine_arn(machine)
        .name(name)
        .input(input.to_string())
        .send()
        .await
        .expect("StartExecution")
        .execution_arn()
        .to_string()
}

/// Every event of an execution so far, in order (the SDK's paginator over GetExecutionHistory).
pub async fn history(
    sfn: &aws_sdk_sfn::Client,
    execution: &str,
) -> Result<Vec<aws_sdk_sfn::types::HistoryEvent>, aws_sdk_sfn::Error> {
    let mut events = vec![];
    let mut pages = sfn
        .get_execution_history()
        .execution_arn(execution)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        events.extend(page?.events().iter().cloned());
    }
    Ok(events)
}

pub async fn wait(region: &str, execution: &str, timeout: Duration) -> Finished {
    let sfn = aws_sdk_sfn::Client::new(&sdk_config(region));
    // On timeout the execution is returned as it is (RUNNING), so the test shows where it hung.
    let until = std::time::Instant::now() + timeout;
    let d = loop {
        let d = sfn
            .describe_execution()
            .execution_arn(execution)
            .send()
            .await
            .expect("DescribeExecution");
        if *d.status() != ExecutionStatus::Running || std::time::Instant::now() > until {
            break d;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let events = history(&sfn, execution).await.expect("GetExecutionHistory");
    Finished::new(&d, &events)
}
