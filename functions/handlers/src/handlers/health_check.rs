//! health-check: is the worker's instance running, passing its status checks, and has the worker
//! said it started, within the boot deadline?

use chrono::{DateTime, Utc};
use ephemera_core::caps;
use ephemera_core::contract::{RunParameters, Started};
use ephemera_core::health::{self, Failure, Health, Observation};
use ephemera_core::instance_state::InstanceState;
use ephemera_core::rundoc::{Attempt, HealthState, HealthVerdict, WorkerState};
use ephemera_core::RunSpec;
use serde::Deserialize;

use crate::aws::{Compute, InstanceView, Params};
use crate::error::Error;

#[derive(Debug, Deserialize)]
pub struct Input {
    pub run: RunSpec,
    pub worker: WorkerState,
    /// Set when the worker went silent (heartbeat or runtime timeout): was its instance taken
    /// by Spot? Spot's two-minute notice can end before a worker manages to report it.
    #[serde(default)]
    pub after_timeout: bool,
}

pub async fn handle<E: Compute, S: Params>(
    ec2: &E,
    params: &S,
    input: Input,
    now: DateTime<Utc>,
) -> Result<HealthState, Error> {
    let spec = &input.run;
    let current = input
        .worker
        .current()
        .ok_or_else(|| Error::BadInput("worker.attempts is empty: nothing was launched".into()))?;
    let instance = ec2
        .describe(std::slice::from_ref(&current.instance_id))
        .await?
        .into_iter()
        .next();
    if input.after_timeout {
        return went_silent(&current.instance_id, instance.as_ref(), now);
    }
    let state = instance.as_ref().and_then(|i| i.state);
    let (instance_status, system_status) = if state == Some(InstanceState::Running) {
        let checks = ec2.status_checks(&current.instance_id).await?;
        (checks.instance, checks.system)
    } else {
        (None, None)
    };
    // The signal is this instance's own; its value names the instance too, so that one
    // copied from elsewhere does not count.
    let worker_started = params
        .get(&RunParameters::of_run(&spec.run_id).started(&current.instance_id))
        .await?
        .and_then(|v| serde_json::from_str::<Started>(&v).ok())
        .is_some_and(|s| s.instance_id == current.instance_id);
    let obs = Observation {
        state,
        state_reason: instance.as_ref().and_then(|i| i.state_reason.clone()),
        instance_status,
        system_status,
        worker_started,
        launched_at: current.launched_at,
        now,
        boot_timeout_seconds: spec.limits.boot_timeout_seconds,
    };
    let verdict = health::judge(&obs);
    tracing::info!(instance = %current.instance_id, ?verdict, "health checked");
    state_of(verdict, spec, current, now)
}

/// The worker went silent (its heartbeat or runtime ran out): taken by Spot (it is relaunched),
/// or silent on an instance Spot did not take (it is lost).
fn went_silent(
    instance_id: &str,
    instance: Option<&InstanceView>,
    now: DateTime<Utc>,
) -> Result<HealthState, Error> {
    let reason = instance.and_then(|i| i.state_reason.clone());
    let state = instance
        .and_then(|i| i.state)
        .map_or("not found", InstanceState::name);
    tracing::info!(instance = %instance_id, state, ?reason, "the worker went silent");
    // Server.SpotInstanceTermination / Server.SpotInstanceShutdown
    // (https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_StateReason.html).
    if reason.as_deref().is_some_and(health::is_spot_reclaim) {
        return Err(Error::SpotInterrupted(format!(
            "{}: Spot took the instance ({}) and the worker could not report it",
            instance_id,
            reason.unwrap_or_default()
        )));
    }
    Ok(HealthState {
        verdict: HealthVerdict::Silent,
        instance_id: instance_id.to_string(),
        // The state reason is EC2's text: cut to what the run document plans for.
        detail: caps::cap(
            &format!(
                "the worker went silent; its instance is {state} ({}), not taken by Spot",
                reason.unwrap_or_else(|| "no state reason".into())
            ),
            caps::DETAIL_KEPT,
        ),
        wait_seconds: 0,
        checked_at: now,
        healthy_at: None,
    })
}

/// The verdict as the state machine takes it: a state to wait on, or an error to catch.
fn state_of(
    verdict: Health,
    spec: &RunSpec,
    current: &Attempt,
    now: DateTime<Utc>,
) -> Result<HealthState, Error> {
    match verdict {
        Health::Healthy => Ok(HealthState {
            verdict: HealthVerdict::Healthy,
            instance_id: current.instance_id.clone(),
            detail: "running, status checks ok, worker started".into(),
            wait_seconds: 0,
            checked_at: now,
            healthy_at: Some(now),
        }),
        Health::Booting { waiting_for } => {
            let left =
                spec.limits.boot_timeout_seconds as i64 - (now - current.launched_at).num_seconds();
            Ok(HealthState {
                verdict: HealthVerdict::Booting,
                instance_id: current.instance_id.clone(),
                detail: format!("waiting for {waiting_for}"),
                wait_seconds: spec.waits.boot_poll_seconds.min(left.max(1) as u64),
                checked_at: now,
                healthy_at: None,
            })
        }
        Health::Failed {
            failure: Failure::SpotReclaimed,
            reason,
        } => Err(Error::SpotInterrupted(format!(
            "{}: {reason}",
            current.instance_id
        ))),
        Health::Failed { reason, .. } => Err(Error::BootFailed(format!(
            "{}: {reason}",
            current.instance_id
        ))),
    }
}
