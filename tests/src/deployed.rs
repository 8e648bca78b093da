//! The functions as the template deploys them: their settings (environment) with the
//! template's parameter defaults, invoked as their execution roles through the front door.

use ephemera_core::rundoc::WorkerState;
use ephemera_functions::{invoke, Error, Function, Settings};
use serde_json::{json, Value};

use crate::fixtures::Ctx;
use crate::iam::{ACCOUNT, ARTIFACT_BUCKET, EXPORT_BUCKET, WORKER_PROFILE, WORKER_ROLE_ID};

/// An execution ARN of the stack's state machine for `run`.
pub fn execution(region: &str, run: &str) -> String {
    format!("arn:aws:states:{region}:{ACCOUNT}:execution:ephemera-worker:{run}-exec")
}

/// The stack's report topic.
pub fn topic(region: &str) -> String {
    format!(
        "arn:aws:sns:{region}:{ACCOUNT}:{}",
        crate::iam::REPORT_TOPIC
    )
}

/// The functions' environment as the template deploys it with its parameters' defaults.
pub fn settings(c: &Ctx) -> Settings {
    Settings {
        default_topic: Some(topic(c.region)),
        allowed_topics: vec![topic(c.region)],
        worker_instance_profile: Some(WORKER_PROFILE.into()),
        artifact_bucket: Some(ARTIFACT_BUCKET.into()),
        export_bucket: Some(EXPORT_BUCKET.into()),
        worker_role_id: Some(WORKER_ROLE_ID.into()),
        stack: Some(crate::iam::STACK.into()),
        secret_prefix: Some(crate::iam::SECRET_PREFIX.into()),
        ..Settings::default()
    }
}

/// Of the template's settings only the worker role's id and instance profile (instances
/// launched without the profile could not be terminated: the roles' `ec2:InstanceProfile`
/// condition); no topic, bucket, stack or ledger: the rest as the functions default them.
pub fn bare_settings() -> Settings {
    Settings {
        worker_role_id: Some(WORKER_ROLE_ID.into()),
        worker_instance_profile: Some(WORKER_PROFILE.into()),
        ..Settings::default()
    }
}

/// Invokes `function` as its execution role, with the settings the template deploys.
pub async fn call(c: &Ctx, function: Function, payload: Value) -> Result<Value, Error> {
    call_with(c, function, payload, settings(c)).await
}

/// Invokes `function` as its execution role, with `settings`.
pub async fn call_with(
    c: &Ctx,
    function: Function,
    payload: Value,
    settings: Settings,
) -> Result<Value, Error> {
    invoke(
        &crate::function_clients(c.region, function.name()),
        &settings,
        function,
        payload,
    )
    .await
}

/// launch-worker for `spec`'s first worker, with `extra` fields in its input.
pub async fn launch(c: &Ctx, spec: &Value, run: &str, extra: Value) -> Result<WorkerState, Error> {
    launch_with(c, spec, run, extra, settings(c)).await
}

/// launch-worker for `spec`'s first worker, with `extra` fields in its input and `settings`.
pub async fn launch_with(
    c: &Ctx,
    spec: &Value,
    run: &str,
    extra: Value,
    settings: Settings,
) -> Result<WorkerState, Error> {
    let mut input = json!({"run": spec, "execution": execution(c.region, run)});
    if let Value::Object(m) = extra {
        for (k, v) in m {
            input[k] = v;
        }
    }
    let out = call_with(c, Function::LaunchWorker, input, settings).await?;
    Ok(serde_json::from_value(out).expect("launch-worker's output is a WorkerState"))
}
