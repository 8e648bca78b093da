//! End to end: the deployed ASL file, created in moto with the template's substitutions and run
//! by moto's Step Functions executor, its Lambda calls served by the real handlers through the
//! front door, and a worker stand-in on the other side of the task token.

use std::time::Duration;

use aws_sdk_sfn::types::ExecutionStatus;
use serde_json::{json, Value};

use crate::fixtures::{self, Email};
use crate::worker_standin::{self, Behaviour};
use crate::{clients, sdk_config};

pub use ephemera_core::State;

pub const ACCOUNT: &str = "123456789012";

/// The ARNs and the partition the template substitutes into the definition
/// (`DefinitionSubstitutions`).
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
    // The SDK integration, in the partition's ARN (aws-cn, aws-us-gov elsewhere).
    .chain([
        (
            "PutTokenParameterAndWait".to_string(),
            "arn:aws:states:::aws-sdk:ssm:putParameter.waitForTaskToken".to_string(),
        ),
        (
            "TaskTokenKeyArn".to_string(),
            crate::iam::task_token_key(region),
        ),
    ])
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
    /// The states entered, in order.
    pub path: Vec<State>,
    /// The largest input or output of any state, in bytes: Step Functions' payload quota is
    /// 256 KiB for each.
    pub largest_state_output: usize,
    /// The cost report: the execution's output (the last states keep only the report), or for
    /// a failed execution (which has no output) Cleanup's.
    pub report: Value,
    /// The Map state's output: every worker's end (`$.workers`).
    pub workers: Value,
    /// The run document at its fullest: the last TerminateWithCostReport's or Cleanup's input
    /// (`run`, `quota`, `snapshot`, `workers`, `verification`, `error`).
    pub document: Value,
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
                .filter(|x| State::named(x.name()).is_some_and(State::reports))
                .find_map(|x| serde_json::from_str::<Value>(x.output()?).ok())
                .unwrap_or(Value::Null)
        };
        // The Map state's output: every worker's end.
        let workers = events
            .iter()
            .rev()
            .filter_map(|e| e.state_exited_event_details())
            .filter(|x| x.name() == State::Workers.name())
            .find_map(|x| serde_json::from_str::<Value>(x.output()?).ok())
            .map_or(Value::Null, |doc| doc["workers"].clone());
        let document = events
            .iter()
            .rev()
            .filter_map(|e| e.state_entered_event_details())
            .filter(|x| State::named(x.name()).is_some_and(State::reports))
            .find_map(|x| serde_json::from_str::<Value>(x.input()?).ok())
            .unwrap_or(Value::Null);
        Finished {
            status: d.status().as_str().to_string(),
            document,
            // The last states' output is the report alone (OutputPath: $.report).
            report: match &output {
                Value::Null => from_history(),
                r => r.clone(),
            },
            workers,
            output,
            error: d.error().map(str::to_string),
            cause: d.cause().map(str::to_string),
            path: events
                .iter()
                .filter_map(|e| e.state_entered_event_details())
                .map(|d| {
                    State::named(d.name()).unwrap_or_else(|| {
                        panic!("the ASL has a state {} that State does not name", d.name())
                    })
                })
                .collect(),
            largest_state_output: events
                .iter()
                .filter_map(|e| {
                    let entered = e.state_entered_event_details().and_then(|d| d.input());
                    let exited = e.state_exited_event_details().and_then(|d| d.output());
                    entered.or(exited).map(str::len)
                })
                .max()
                .unwrap_or(0),
        }
    }

    pub fn visited(&self, state: State) -> usize {
        self.path.iter().filter(|s| **s == state).count()
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

/// One finished execution of a scenario, and what it left behind.
pub struct Run {
    pub region: &'static str,
    pub execution: String,
    pub finished: Finished,
    /// What the run's SNS topic delivered (the report, and any budget alert).
    pub emails: Vec<Email>,
    /// Instances tagged for the run, with their state.
    pub instances: Vec<(String, String)>,
    /// What the worker stand-in did.
    pub worker_log: Vec<String>,
}

impl Run {
    pub fn live(&self) -> Vec<&(String, String)> {
        self.instances
            .iter()
            .filter(|(_, s)| s == "pending" || s == "running")
            .collect()
    }

    pub fn assert_nothing_left(&self) {
        assert!(self.live().is_empty(), "left running: {:?}", self.live());
    }

    /// The one email, its subject saying `outcome` (e.g. `SUCCEEDED`).
    pub fn assert_email(&self, outcome: &str) -> &Email {
        assert_eq!(self.emails.len(), 1, "one email: {:?}", self.emails);
        let e = &self.emails[0];
        assert!(
            e.subject.contains(&format!(": {outcome} $")),
            "subject {:?}",
            e.subject
        );
        assert!(e.subject.len() < 100);
        e
    }

    /// The JSON report the first email carries.
    pub fn report(&self) -> Value {
        let e = &self.emails[0];
        let json_part = e.body.split("--- report (JSON) ---\n").nth(1).unwrap();
        serde_json::from_str(json_part).unwrap()
    }
}

/// A worker's summary of `run_id`: `partitions` done and none failed, a thousand rows in and
/// out.
pub fn report_for(run_id: &str, partitions: u64) -> Value {
    json!({"run_id": run_id, "partitions_done": partitions, "partitions_failed": 0,
           "rows_in": 1000, "rows_out": 1000, "durations": {"total_seconds": 1.5}})
}

/// Runs the deployed definition once in `region`: a network, an inbox on the report topic, the
/// sample RunSpec of `run_id` (expecting 2 partitions of at least 100 rows) changed by `edit`,
/// and a worker stand-in that acts as `behaviour` says on whatever instance the run launches.
pub async fn scenario(
    region: &'static str,
    run_id: &str,
    behaviour: Behaviour,
    edit: impl FnOnce(&mut Value),
) -> Run {
    scenario_within(region, run_id, behaviour, Duration::from_secs(180), edit).await
}

/// As [`scenario`], waiting up to `timeout` for the execution to end (forty workers through a
/// new account's Lambda concurrency take minutes on this emulator).
pub async fn scenario_within(
    region: &'static str,
    run_id: &str,
    behaviour: Behaviour,
    timeout: Duration,
    edit: impl FnOnce(&mut Value),
) -> Run {
    let aws = clients(region);
    let net = fixtures::network(&aws).await;
    let inbox = fixtures::inbox(region, "ephemera-reports").await;
    let mut spec = fixtures::runspec(run_id, &net, Some(&inbox.topic_arn));
    spec["expect"] = json!({"partitions": 2, "min_rows": 100});
    edit(&mut spec);
    let machine = create_state_machine(region).await;
    let worker = worker_standin::spawn(region, run_id, behaviour, timeout);
    let execution = start(region, &machine, &format!("{run_id}-1"), &spec).await;
    let finished = wait(region, &execution, timeout).await;
    let worker_log = worker.log().await;
    // SNS → SQS delivery is synchronous in moto, but allow a moment.
    let mut emails = inbox.read().await;
    if emails.is_empty() {
        tokio::time::sleep(Duration::from_secs(1)).await;
        emails = inbox.read().await;
    }
    let run = Run {
        region,
        execution,
        finished,
        emails,
        instances: fixtures::instances_of(&aws, run_id).await,
        worker_log,
    };
    eprintln!(
        "{run_id}: {} {:?} {:?} path {:?} worker {:?}",
        run.finished.status,
        run.finished.error,
        run.finished.cause,
        run.finished.path,
        run.worker_log
    );
    run
}
