//! spot-interruption: EventBridge's Spot interruption warning (and a state change to
//! shutting-down/terminated that Spot caused) for an ephemera worker fails the task waiting on
//! that worker at once with `Worker.SpotInterrupted`, so the run relaunches without waiting for
//! the worker to say it or for its heartbeat to time out.
//! (https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/spot-instance-termination-notices.html)

use ephemera_core::contract::RunParameters;
use ephemera_core::health::is_spot_reclaim;
use ephemera_core::{names, tags};
use serde::{Deserialize, Serialize};

use crate::aws::{Compute, Params, TaskTokens};
use crate::error::Error;

pub const WARNING: &str = "EC2 Spot Instance Interruption Warning";
pub const STATE_CHANGE: &str = "EC2 Instance State-change Notification";

#[derive(Debug, Deserialize)]
pub struct Event {
    #[serde(rename = "detail-type")]
    pub detail_type: String,
    pub detail: Detail,
}

#[derive(Debug, Deserialize)]
pub struct Detail {
    #[serde(rename = "instance-id")]
    pub instance_id: String,
    /// State-change events only.
    #[serde(default)]
    pub state: Option<String>,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct Outcome {
    pub instance_id: String,
    /// failed-the-task, task-already-ended, or why the event was ignored.
    pub action: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
}

pub async fn handle<E: Compute, S: Params, T: TaskTokens>(
    ec2: &E,
    params: &S,
    tasks: &T,
    event: Event,
) -> Result<Outcome, Error> {
    let id = event.detail.instance_id.clone();
    let outcome = |action: &str, run: Option<&String>| Outcome {
        instance_id: id.clone(),
        action: action.into(),
        run_id: run.cloned(),
    };
    let Some(instance) = ec2.describe(std::slice::from_ref(&id)).await?.pop() else {
        return Ok(outcome("ignored: instance not found", None));
    };
    if instance.tags.get(tags::MANAGED).map(String::as_str) != Some("true") {
        return Ok(outcome("ignored: not an ephemera instance", None));
    }
    let run = instance.tags.get(tags::RUN);
    match event.detail_type.as_str() {
        WARNING => {}
        // ephemera terminates its own workers too: only Spot's termination is an interruption.
        STATE_CHANGE
            if matches!(
                event.detail.state.as_deref(),
                Some("shutting-down" | "terminated")
            ) && instance
                .state_reason
                .as_deref()
                .is_some_and(is_spot_reclaim) => {}
        _ => return Ok(outcome("ignored: not a Spot interruption", run)),
    }
    let Some(run) = run else {
        return Ok(outcome("ignored: no ephemera:run tag", None));
    };
    // Each attempt has a token of its own: an event about an earlier attempt's instance finds
    // that attempt's task already ended, and fails nothing the attempt that replaced it waits on.
    let run_parameters = RunParameters::of_run(run);
    let Some(token) = params.get(&run_parameters.task_token(&id)).await? else {
        return Ok(outcome("ignored: no task is waiting yet", Some(run)));
    };
    let cause = format!(
        "{id}: {} (EventBridge); the run relaunches",
        event.detail_type
    );
    let failed = tasks
        .fail_task(&token, names::SPOT_INTERRUPTED, &cause)
        .await?;
    tracing::info!(instance = %id, run = %run, failed, "Spot interruption");
    Ok(outcome(
        if failed {
            "failed-the-task"
        } else {
            "task-already-ended"
        },
        Some(run),
    ))
}
