//! Which execution a RUN argument means: an execution ARN, an execution name, or a run id
//! (the RunSpec's `run_id` in the execution's input; `ephemera run` names executions
//! `<run_id>-<time>`, so those are looked at first). The newest match wins.

use aws_sdk_sfn::types::ExecutionStatus;
use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::errors::{CliError, Op};
use crate::history::time;

/// Executions looked into (DescribeExecution) for a run id when no name gives it away.
const SCAN_FOR_RUN_ID: usize = 50;
/// Executions listed at most when looking for a name.
const LIST_AT_MOST: usize = 1000;

/// One execution as DescribeExecution tells it.
#[derive(Debug, Clone)]
pub struct Execution {
    pub arn: String,
    pub name: String,
    pub status: ExecutionStatus,
    pub started: DateTime<Utc>,
    pub stopped: Option<DateTime<Utc>>,
    pub input: Value,
    pub output: Option<Value>,
    pub error: Option<String>,
    pub cause: Option<String>,
}

impl Execution {
    pub fn run_id(&self) -> Option<String> {
        run_id_of_input(&self.input)
    }

    pub fn is_running(&self) -> bool {
        self.status == ExecutionStatus::Running
    }
}

/// One line of ListExecutions.
#[derive(Debug, Clone, PartialEq)]
pub struct Listed {
    pub arn: String,
    pub name: String,
    pub status: ExecutionStatus,
    pub started: DateTime<Utc>,
    pub stopped: Option<DateTime<Utc>>,
}

/// The run id an execution runs under: the RunSpec's `run_id`, or for a scheduled occurrence
/// `<run_id>-<scheduler execution id>` as the state machine makes it.
pub fn run_id_of_input(input: &Value) -> Option<String> {
    if let Some(id) = input.get("run_id").and_then(Value::as_str) {
        return Some(id.to_string());
    }
    let base = input.get("runspec")?.get("run_id")?.as_str()?;
    let occurrence = input.get("schedule")?.get("execution")?.as_str()?;
    Some(format!("{base}-{occurrence}"))
}

/// The execution name `ephemera run` gives: the run id and the time (names are at most 80
/// characters).
pub fn execution_name(run_id: &str, now: DateTime<Utc>) -> String {
    let id: String = run_id.chars().take(64).collect();
    format!("{id}-{}", now.format("%Y%m%dT%H%M%S"))
}

pub fn is_execution_arn(s: &str) -> bool {
    s.starts_with("arn:") && s.contains(":execution:")
}

/// Among listed executions (newest first): the one named `run`, then those `ephemera run`
/// would have named for run id `run`, newest first.
pub fn candidates<'a>(listed: &'a [Listed], run: &str) -> (Option<&'a Listed>, Vec<&'a Listed>) {
    let exact = listed.iter().find(|l| l.name == run);
    let prefix = format!("{run}-");
    let named_for_run = listed
        .iter()
        .filter(|l| {
            l.name.strip_prefix(&prefix).is_some_and(|rest| {
                rest.len() == 15 && rest.chars().all(|c| c.is_ascii_digit() || c == 'T')
            })
        })
        .collect();
    (exact, named_for_run)
}

pub fn need_machine<'a>(machine: Option<&'a str>, what: &str) -> Result<&'a str, CliError> {
    machine.ok_or_else(|| {
        CliError::Usage(format!(
            "{what} needs the state machine: pass --state-machine ARN or set \
             EPHEMERA_STATE_MACHINE_ARN (the stack's output StateMachineArn)"
        ))
    })
}

pub async fn describe(sfn: &aws_sdk_sfn::Client, arn: &str) -> Result<Execution, CliError> {
    let d = sfn
        .describe_execution()
        .execution_arn(arn)
        .send()
        .await
        .map_err(|e| Op::new("states:DescribeExecution", arn).fail(e))?;
    let json = |s: Option<&str>| s.and_then(|s| serde_json::from_str::<Value>(s).ok());
    Ok(Execution {
        arn: d.execution_arn().to_string(),
        name: d.name().unwrap_or_default().to_string(),
        status: d.status().clone(),
        started: time(d.start_date()),
        stopped: d.stop_date().map(time),
        input: json(d.input()).unwrap_or(Value::Null),
        output: json(d.output()),
        error: d.error().map(str::to_string),
        cause: d.cause().map(str::to_string),
    })
}

/// The newest executions of the state machine, at most `limit`.
pub async fn list(
    sfn: &aws_sdk_sfn::Client,
    machine: &str,
    limit: usize,
) -> Result<Vec<Listed>, CliError> {
    let op = Op::new("states:ListExecutions", machine);
    let mut pages = sfn
        .list_executions()
        .state_machine_arn(machine)
        .max_results(limit.clamp(1, 1000) as i32)
        .into_paginator()
        .send();
    let mut out = vec![];
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| op.fail(e))?;
        out.extend(page.executions().iter().map(|e| Listed {
            arn: e.execution_arn().to_string(),
            name: e.name().to_string(),
            status: e.status().clone(),
            started: time(e.start_date()),
            stopped: e.stop_date().map(time),
        }));
        if out.len() >= limit {
            break;
        }
    }
    // Newest first, whatever order the pages came in.
    out.sort_by_key(|l| std::cmp::Reverse(l.started));
    out.truncate(limit);
    Ok(out)
}

/// The execution RUN names; `None` for RUN means the newest one.
pub async fn resolve(
    sfn: &aws_sdk_sfn::Client,
    machine: Option<&str>,
    run: Option<&str>,
) -> Result<Execution, CliError> {
    let Some(run) = run else {
        let machine = need_machine(machine, "without a RUN, the latest run")?;
        let newest = list(sfn, machine, 1).await?;
        let first = newest
            .first()
            .ok_or_else(|| CliError::NoSuchRun(format!("{machine} has no executions yet")))?;
        return describe(sfn, &first.arn).await;
    };
    if is_execution_arn(run) {
        return describe(sfn, run).await;
    }
    let machine = need_machine(machine, &format!("finding run '{run}'"))?;
    let listed = list(sfn, machine, LIST_AT_MOST).await?;
    let (exact, named_for_run) = candidates(&listed, run);
    if let Some(e) = exact {
        return describe(sfn, &e.arn).await;
    }
    for l in &named_for_run {
        let e = describe(sfn, &l.arn).await?;
        if e.run_id().as_deref() == Some(run) {
            return Ok(e);
        }
    }
    // Started elsewhere (the console, the schedule): read the newest inputs.
    for l in listed
        .iter()
        .filter(|l| !named_for_run.iter().any(|n| n.arn == l.arn))
        .take(SCAN_FOR_RUN_ID)
    {
        let e = describe(sfn, &l.arn).await?;
        if e.run_id().as_deref() == Some(run) {
            return Ok(e);
        }
    }
    Err(CliError::NoSuchRun(format!(
        "no execution of {machine} is named '{run}' or runs run id '{run}' (among the newest \
         {SCAN_FOR_RUN_ID} looked into); `ephemera runs` lists the recent ones"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::tests::at;
    use serde_json::json;

    fn listed(name: &str, s: i64) -> Listed {
        Listed {
            arn: format!("arn:aws:states:r:1:execution:m:{name}"),
            name: name.into(),
            status: ExecutionStatus::Succeeded,
            started: at(s),
            stopped: None,
        }
    }

    #[test]
    fn run_ids_are_read_from_the_input_as_the_state_machine_makes_them() {
        assert_eq!(
            run_id_of_input(&json!({"run_id": "fx", "worker": {}})).as_deref(),
            Some("fx")
        );
        let scheduled = json!({"schedule": {"execution": "abc"}, "runspec": {"run_id": "weekly"}});
        assert_eq!(run_id_of_input(&scheduled).as_deref(), Some("weekly-abc"));
        assert_eq!(run_id_of_input(&json!({})), None);
    }

    #[test]
    fn names_then_run_ids_newest_first() {
        let now = at(0);
        let name = execution_name("fx", now);
        assert_eq!(name.len(), "fx-".len() + 15);
        let list = vec![
            listed(&execution_name("fx", at(100)), 100),
            listed(&execution_name("fx-2023", at(50)), 50),
            listed(&name, 0),
            listed("fx", -10),
        ];
        let (exact, named) = candidates(&list, "fx");
        assert_eq!(exact.unwrap().name, "fx");
        // "fx-2023-…" is run fx-2023's, not run fx's.
        assert_eq!(
            named.iter().map(|l| l.started).collect::<Vec<_>>(),
            vec![at(100), at(0)]
        );
        let (exact, named) = candidates(&list, "fx-2023");
        assert!(exact.is_none());
        assert_eq!(named.len(), 1);
        assert!(is_execution_arn(&list[0].arn) && !is_execution_arn("fx"));
        assert_eq!(execution_name(&"x".repeat(80), now).len(), 80);
    }
}
