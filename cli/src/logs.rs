//! `ephemera logs RUN`: the worker's log lines, as each attempt's worker shipped them to
//! CloudWatch Logs (group `/ephemera/<stack>/workers`, stream `<run_id>/<attempt>/<instance id>`).

use aws_sdk_cloudwatchlogs::Client;
use ephemera_core::contract::logs::{
    parse_worker_log_stream, worker_log_group_of, WORKER_LOG_GROUP,
};
use serde_json::Value;

use crate::errors::{CliError, Op};
use crate::history;
use crate::resolve::Execution;
use crate::terminal::printable;
use crate::Outcome;

/// A tracing JSON line (`{"timestamp","level","fields":{"message",…},"target"}`) as a person
/// reads it: `2026-11-30T10:16:12Z INFO said started instance=i-0abc attempt=1`. Anything
/// else is shown as it is.
pub fn readable(line: &str) -> String {
    let Ok(Value::Object(v)) = serde_json::from_str::<Value>(line) else {
        return line.to_string();
    };
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let mut out = vec![];
    if let Some(t) = v.get("timestamp").and_then(Value::as_str) {
        // Whole seconds are enough to read; the stream keeps the rest.
        let t = match (t.find('.'), t.ends_with('Z')) {
            (Some(dot), true) => format!("{}Z", &t[..dot]),
            _ => t.to_string(),
        };
        out.push(t);
    }
    if let Some(l) = v.get("level") {
        out.push(format!("{:<5}", text(l)));
    }
    let fields = v.get("fields").and_then(Value::as_object);
    // A job's own line (`exec`), relayed by the worker: shown as the job wrote it.
    if let Some(job) = fields.and_then(|f| f.get("job")) {
        let stream = fields
            .and_then(|f| f.get("stream"))
            .map_or("job".into(), text);
        out.push(format!("{stream}: {}", text(job)));
        return out.join(" ");
    }
    if let Some(m) = fields.and_then(|f| f.get("message")) {
        out.push(text(m));
    }
    let mut rest: Vec<(&String, &Value)> = fields
        .into_iter()
        .flatten()
        .filter(|(k, _)| *k != "message")
        .collect();
    rest.sort_by_key(|(k, _)| *k);
    out.extend(rest.into_iter().map(|(k, v)| format!("{k}={}", text(v))));
    if out.is_empty() {
        line.to_string()
    } else {
        out.join(" ")
    }
}

/// The run's streams of this execution's workers, by attempt.
pub fn streams_of(
    run_id: &str,
    names: &[String],
    instances: &[String],
) -> Vec<(u32, String, String)> {
    let mut found: Vec<(u32, String, String)> = names
        .iter()
        .filter_map(|n| {
            let (attempt, instance) = parse_worker_log_stream(run_id, n)?;
            // The same run id may have run before, on other instances.
            instances
                .contains(&instance)
                .then(|| (attempt, instance, n.clone()))
        })
        .collect();
    found.sort();
    found
}

pub async fn command(
    logs: &Client,
    sfn: &aws_sdk_sfn::Client,
    execution: &Execution,
    raw: bool,
) -> Result<Outcome, CliError> {
    let run_id = execution
        .run_id()
        .ok_or_else(|| CliError::Other(format!("{} has no run id in its input", execution.name)))?;
    let events = history::read(sfn, &execution.arn).await?;
    let instances: Vec<String> = history::attempts(&events)
        .into_iter()
        .map(|a| a.instance_id)
        .collect();
    if instances.is_empty() {
        println!("no worker logs: {} launched no instance", execution.name);
        return Ok(Outcome::Done);
    }
    let group = group_of(execution);
    let names = stream_names(logs, &group, &run_id).await?;
    let streams = streams_of(&run_id, &names, &instances);
    if streams.is_empty() {
        println!(
            "no log lines from the workers of {} yet (they ship to {group} every few seconds)",
            execution.name
        );
        return Ok(Outcome::Done);
    }
    for (attempt, instance, stream) in streams {
        println!("== attempt {attempt} on {instance} ({group} {stream})");
        read_from(logs, &group, &stream, None, |m| {
            println!("{}", shown(m, raw))
        })
        .await?;
    }
    Ok(Outcome::Done)
}

/// A shipped line as printed: readable (or raw), and never obeyed by the operator's terminal
/// (a job's text, whatever it wrote).
fn shown(message: &str, raw: bool) -> String {
    printable(&if raw {
        message.to_string()
    } else {
        readable(message)
    })
}

/// How many of a stream's newest lines `status` reads for a working job: a heartbeat line is
/// logged once a period, so a job that writes fewer than this many lines a period shows both.
const TAIL_LINES: i32 = 50;

/// The newest lines of one attempt's stream, oldest first, each with the time CloudWatch Logs
/// holds for it; none while the worker has shipped none (no stream yet).
pub async fn tail(
    logs: &Client,
    execution: &Execution,
    attempt: u32,
    instance: &str,
) -> Result<Vec<(chrono::DateTime<chrono::Utc>, String)>, CliError> {
    let run_id = execution
        .run_id()
        .ok_or_else(|| CliError::Other(format!("{} has no run id in its input", execution.name)))?;
    let group = group_of(execution);
    let stream = ephemera_core::contract::logs::worker_log_stream(&run_id, attempt, instance);
    let op = Op::new("logs:GetLogEvents", &stream);
    let page = match logs
        .get_log_events()
        .log_group_name(&group)
        .log_stream_name(&stream)
        .start_from_head(false)
        .limit(TAIL_LINES)
        .send()
        .await
    {
        Ok(p) => p,
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_resource_not_found_exception()) =>
        {
            return Ok(vec![])
        }
        Err(e) => return Err(op.fail(e)),
    };
    Ok(page
        .events()
        .iter()
        .filter_map(|e| {
            let at = chrono::DateTime::from_timestamp_millis(e.timestamp()?)?;
            Some((at, e.message()?.to_string()))
        })
        .collect())
}

/// The stack's group, named after its state machine (`<stack>-worker`).
fn group_of(execution: &Execution) -> String {
    worker_log_group_of(&execution.arn).unwrap_or_else(|| WORKER_LOG_GROUP.to_string())
}

/// The run's stream names in the group.
async fn stream_names(logs: &Client, group: &str, run_id: &str) -> Result<Vec<String>, CliError> {
    let op = Op::new("logs:DescribeLogStreams", group);
    let mut pages = logs
        .describe_log_streams()
        .log_group_name(group)
        .log_stream_name_prefix(format!("{run_id}/"))
        .into_paginator()
        .send();
    let mut names = vec![];
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| match e.as_service_error() {
            Some(s) if s.is_resource_not_found_exception() => CliError::Other(format!(
                "the log group {group} does not exist in this region: the ephemera \
                 stack creates it (deploy the current template)"
            )),
            _ => op.fail(e),
        })?;
        names.extend(
            page.log_streams()
                .iter()
                .filter_map(|s| s.log_stream_name().map(str::to_string)),
        );
    }
    Ok(names)
}

/// Every line of `stream` after `token` (from its head without one), each handed to `each`;
/// the token to read on from.
async fn read_from(
    logs: &Client,
    group: &str,
    stream: &str,
    mut token: Option<String>,
    mut each: impl FnMut(&str),
) -> Result<Option<String>, CliError> {
    let op = Op::new("logs:GetLogEvents", stream);
    loop {
        let page = logs
            .get_log_events()
            .log_group_name(group)
            .log_stream_name(stream)
            .start_from_head(true)
            .set_next_token(token.clone())
            .send()
            .await
            .map_err(|e| op.fail(e))?;
        for e in page.events() {
            each(e.message().unwrap_or_default());
        }
        // The stream's end: the forward token stops changing.
        let next = page.next_forward_token().map(str::to_string);
        if next.is_none() || next == token {
            return Ok(next.or(token));
        }
        token = next;
    }
}

/// How often `--follow` looks for new lines and new attempts: workers ship every 2 s.
const FOLLOW_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// `ephemera logs RUN --follow`: every worker's lines as they are shipped, each prefixed with
/// its worker and attempt, new attempts' streams taken up as they appear, until the run ends
/// (then what was shipped up to its end); the exit code says how it ended, as `status` does.
pub async fn follow(
    logs: &Client,
    sfn: &aws_sdk_sfn::Client,
    execution: &Execution,
    raw: bool,
) -> Result<Outcome, CliError> {
    let run_id = execution
        .run_id()
        .ok_or_else(|| CliError::Other(format!("{} has no run id in its input", execution.name)))?;
    let group = group_of(execution);
    let mut read: std::collections::BTreeMap<String, Option<String>> = Default::default();
    let mut ended = None;
    loop {
        let now = crate::resolve::describe(sfn, &execution.arn).await?;
        let events = history::read(sfn, &execution.arn).await?;
        let attempts = history::attempts_by_worker(&events);
        // The group may not be there before the first line is shipped.
        let names = match attempts.is_empty() {
            true => vec![],
            false => stream_names(logs, &group, &run_id).await?,
        };
        for (slot, a) in &attempts {
            let stream = ephemera_core::contract::logs::worker_log_stream(
                &run_id,
                a.attempt,
                &a.instance_id,
            );
            if !names.contains(&stream) {
                continue;
            }
            let token = read.get(&stream).cloned().flatten();
            let prefix = format!("[worker {slot} #{}]", a.attempt);
            let next = read_from(logs, &group, &stream, token, |m| {
                println!("{prefix} {}", shown(m, raw))
            })
            .await?;
            read.insert(stream, next);
        }
        // One more pass after the end: the last lines are shipped as the worker stops.
        if ended.is_some() {
            break;
        }
        if !now.is_running() {
            ended = Some(now.status.clone());
        }
        tokio::time::sleep(FOLLOW_EVERY).await;
    }
    Ok(match ended {
        Some(aws_sdk_sfn::types::ExecutionStatus::Succeeded) => Outcome::Done,
        _ => Outcome::RunFailed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracing_lines_read_as_text() {
        let line = r#"{"timestamp":"2026-11-30T10:16:12.345678Z","level":"INFO","fields":{"message":"said started","instance":"i-0abc","attempt":1},"target":"ephemera_worker::agent::link"}"#;
        assert_eq!(
            readable(line),
            "2026-11-30T10:16:12Z INFO  said started attempt=1 instance=i-0abc"
        );
        assert_eq!(readable("plain text"), "plain text");
        // A job's line under `exec`: the job's own words, with the stream it wrote them to.
        let job = r#"{"timestamp":"2026-11-30T10:16:13.1Z","level":"INFO","fields":{"stream":"stderr","job":"epoch 3: loss=0.21"},"target":"ephemera_worker::exec::supervise"}"#;
        assert_eq!(
            readable(job),
            "2026-11-30T10:16:13Z INFO  stderr: epoch 3: loss=0.21"
        );
        assert_eq!(readable("[1,2]"), "[1,2]");
    }

    #[test]
    fn streams_are_this_executions_in_attempt_order() {
        let names: Vec<String> = ["fx/2/i-2", "fx/1/i-1", "fx/1/i-old", "fx-2023/1/i-9"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let got = streams_of("fx", &names, &["i-1".into(), "i-2".into()]);
        assert_eq!(
            got,
            vec![
                (1, "i-1".into(), "fx/1/i-1".into()),
                (2, "i-2".into(), "fx/2/i-2".into())
            ]
        );
    }
}
