//! Step Functions where moto falls short: StopExecution ends a Standard execution at once, with
//! the error and cause it was given, in DescribeExecution, ListExecutions and
//! GetExecutionHistory
//! (https://docs.aws.amazon.com/step-functions/latest/apireference/API_StopExecution.html); and
//! the stack's EventBridge rule on stopped executions, delivered to terminate-with-cost-report as
//! EventBridge delivers it
//! (https://docs.aws.amazon.com/step-functions/latest/dg/cw-events.html).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::Response;

use super::{proxy_raw, rebuild, target_operation, FrontDoor};

impl FrontDoor {
    /// Plays the stack's rule on stopped executions in `region`: each StopExecution through the
    /// door is followed by the rule's delivery to terminate-with-cost-report.
    pub fn deliver_stops(&self, region: &str) {
        self.stop_rule.lock().unwrap().insert(region.to_string());
    }

    /// What the rule's target answered for a stopped execution: its report, or its error.
    pub fn stop_report(&self, execution: &str) -> Option<Result<serde_json::Value, String>> {
        self.stop_reports.lock().unwrap().get(execution).cloned()
    }
}

/// The stack's EventBridge rule on the execution's ABORTED status (template.yaml,
/// terminate-with-cost-report's `ExecutionStopped` event), as EventBridge delivers it to terminate-with-cost-report: a
/// `Step Functions Execution Status Change` event with the execution's name, dates, input,
/// error and cause
/// (https://docs.aws.amazon.com/step-functions/latest/dg/cw-events.html). EventBridge delivers
/// within seconds; the target's answer is kept for `stop_report`.
pub(super) async fn deliver_stop(door: Arc<FrontDoor>, region: String, arn: String) {
    tokio::time::sleep(Duration::from_millis(500)).await;
    let Some(d) = door
        .moto_json(
            &region,
            "states",
            "AWSStepFunctions.DescribeExecution",
            serde_json::json!({ "executionArn": arn }),
        )
        .await
    else {
        door.stop_reports
            .lock()
            .unwrap()
            .insert(arn, Err("DescribeExecution: moto did not answer".into()));
        return;
    };
    let (error, cause, at) = door
        .stopped
        .lock()
        .unwrap()
        .get(&arn)
        .cloned()
        .unwrap_or((None, None, 0.0));
    let ms = |secs: f64| (secs * 1000.0) as i64;
    let event = serde_json::json!({
        "version": "0", "source": "aws.states", "region": region,
        "detail-type": ephemera_core::stopped::DETAIL_TYPE,
        "resources": [arn],
        "detail": {
            "executionArn": arn, "stateMachineArn": d["stateMachineArn"],
            "name": d["name"], "status": "ABORTED",
            "startDate": ms(d["startDate"].as_f64().unwrap_or(at)), "stopDate": ms(at),
            "input": d["input"], "output": null, "error": error, "cause": cause
        }
    });
    let endpoint = door.endpoint.lock().unwrap().clone();
    let endpoint = endpoint.unwrap_or_else(|| door.moto.clone());
    let function = ephemera_functions::Function::TerminateWithCostReport;
    let aws = door.clients_for(&region, function.name(), &endpoint);
    let settings = door.deployed_settings(&region).await;
    let answer = ephemera_functions::invoke(&aws, &settings, function, event)
        .await
        .map_err(|e| e.to_string());
    door.stop_reports.lock().unwrap().insert(arn, answer);
}

/// What a StopExecution was given: error, cause, and when (seconds since the epoch).
pub(super) type Stopped = (Option<String>, Option<String>, f64);

/// StopExecution ends a Standard execution at once: from the call on it is ABORTED, with the
/// error and cause it was given
/// (https://docs.aws.amazon.com/step-functions/latest/apireference/API_StopExecution.html).
/// moto drops both, and its executor notices a stop only when the state it waits in returns (a
/// task token's wait: at the next heartbeat, minutes later): the door keeps what each stop was
/// given and answers DescribeExecution and ListExecutions for that execution as AWS would.
pub(super) async fn stop_is_at_once(
    door: &FrontDoor,
    parts: &axum::http::request::Parts,
    bytes: axum::body::Bytes,
) -> Option<Response<Body>> {
    let op = target_operation(&parts.headers);
    if !matches!(
        op,
        "StopExecution" | "DescribeExecution" | "ListExecutions" | "GetExecutionHistory"
    ) {
        return None;
    }
    let input: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
    let mut r = proxy_raw(door, parts, bytes).await?;
    if r.0 != 200 {
        return Some(rebuild(r));
    }
    let mut out: serde_json::Value = serde_json::from_str(&r.2).unwrap_or_default();
    let stopped = |item: &mut serde_json::Value, door: &FrontDoor, described: bool| {
        let arn = item["executionArn"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let Some((error, cause, at)) = door.stopped.lock().unwrap().get(&arn).cloned() else {
            return;
        };
        item["status"] = "ABORTED".into();
        item["stopDate"] = at.into();
        if described {
            item["error"] = error.map_or(serde_json::Value::Null, Into::into);
            item["cause"] = cause.map_or(serde_json::Value::Null, Into::into);
        }
    };
    match op {
        "StopExecution" => {
            let arn = input["executionArn"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let at = out["stopDate"].as_f64().unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0.0, |d| d.as_secs_f64())
            });
            let given = |k: &str| input[k].as_str().map(String::from);
            door.stopped
                .lock()
                .unwrap()
                .insert(arn, (given("error"), given("cause"), at));
            return Some(rebuild(r));
        }
        "DescribeExecution" => stopped(&mut out, door, true),
        "GetExecutionHistory" => {
            let arn = input["executionArn"].as_str().unwrap_or_default();
            let last_page = out["nextToken"].is_null() && input["reverseOrder"] != true;
            if let Some(stop) = door.stopped.lock().unwrap().get(arn).cloned() {
                aborted_history(&mut out, stop, last_page);
            }
        }
        _ => {
            if let Some(items) = out["executions"].as_array_mut() {
                items.iter_mut().for_each(|i| stopped(i, door, false));
            }
        }
    }
    r.2 = out.to_string();
    Some(rebuild(r))
}

/// A stopped execution's history as Step Functions keeps it: nothing after the stop, and the
/// stop itself last (`ExecutionAborted` with the error and cause StopExecution was given). moto
/// runs the states on after its StopExecution, so its history would go on to a
/// `TaskFailed`/`ExecutionFailed` the execution never had.
fn aborted_history(out: &mut serde_json::Value, stop: Stopped, last_page: bool) {
    let (error, cause, at) = stop;
    let Some(events) = out["events"].as_array_mut() else {
        return;
    };
    events.retain(|e| {
        e["timestamp"].as_f64().is_none_or(|t| t <= at)
            && !matches!(
                e["type"].as_str(),
                Some("ExecutionFailed" | "ExecutionSucceeded" | "ExecutionTimedOut")
            )
    });
    let last_id = events
        .iter()
        .filter_map(|e| e["id"].as_i64())
        .max()
        .unwrap_or(0);
    if last_page && !events.iter().any(|e| e["type"] == "ExecutionAborted") {
        let mut details = serde_json::Map::new();
        if let Some(e) = error {
            details.insert("error".into(), e.into());
        }
        if let Some(c) = cause {
            details.insert("cause".into(), c.into());
        }
        events.push(serde_json::json!({
            "timestamp": at, "type": "ExecutionAborted", "id": last_id + 1,
            "previousEventId": last_id, "executionAbortedEventDetails": details
        }));
    }
}
