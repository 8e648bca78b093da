//! Each Lambda's wiring, in one module per function: the clients it calls (and nothing else),
//! its settings, and the call of its handler. The bootstrap (`src/bin/<name>.rs`) calls its
//! module's `serve`, which builds its own clients once per cold start, so a bootstrap links one
//! handler and its SDK clients only; the test harness's front door calls every function through
//! [`invoke`], with the same modules over its own clients, so both run the same code.

pub mod health_check;
pub mod launch_worker;
pub mod quota_check;
pub mod snapshot_database;
pub mod spot_interruption;
pub mod sweeper;
pub mod terminate_with_cost_report;
pub mod verify_completion;

use chrono::Utc;
use serde_json::Value;

use crate::aws::Aws;
use crate::error::Error;
use crate::function::Function;
use crate::settings::Settings;

/// Runs `function` with the clients of `aws` (the test harness's front door: the same code the
/// bootstraps run).
pub async fn invoke(
    aws: &Aws,
    settings: &Settings,
    function: Function,
    payload: Value,
) -> Result<Value, Error> {
    let now = Utc::now();
    match function {
        Function::QuotaCheck => {
            let f = quota_check::QuotaCheck::of(aws, settings);
            f.call(payload, now).await
        }
        Function::LaunchWorker => {
            let f = launch_worker::LaunchWorker::of(aws, settings);
            f.call(payload, now).await
        }
        Function::SnapshotDatabase => {
            let f = snapshot_database::SnapshotDatabase::of(aws, settings);
            f.call(payload, now).await
        }
        Function::HealthCheck => {
            let f = health_check::HealthCheck::of(aws);
            f.call(payload, now).await
        }
        Function::VerifyCompletion => {
            let f = verify_completion::VerifyCompletion::of(aws);
            f.call(payload, now).await
        }
        Function::TerminateWithCostReport => {
            let f = terminate_with_cost_report::TerminateWithCostReport::of(aws, settings);
            f.call(payload, now).await
        }
        Function::Sweeper => sweeper::Sweeper::of(aws, settings).call(now).await,
        Function::SpotInterruption => {
            let f = spot_interruption::SpotInterruption::of(aws);
            f.call(payload).await
        }
    }
}

/// The function's SDK configuration (region, credentials from its role); logging starts here,
/// so that the clients' own lines are JSON too. Each bootstrap builds its clients from it once,
/// then serves every event with them.
async fn sdk_config() -> aws_config::SdkConfig {
    lambda_runtime::tracing::init_default_subscriber();
    aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await
}

fn out<T: serde::Serialize>(v: T) -> Result<Value, Error> {
    serde_json::to_value(v).map_err(|e| Error::Internal(format!("output: {e}")))
}

/// Writes a metrics document (CloudWatch embedded metric format) as one line of standard
/// output, where Lambda's log agent ships it and CloudWatch extracts the metrics. Only inside
/// Lambda: the harness and the demo call the handlers in-process, where the line would be noise.
fn emit(doc: impl FnOnce(&str) -> Value) {
    if std::env::var_os("AWS_LAMBDA_FUNCTION_NAME").is_none() {
        return;
    }
    let stack = std::env::var("EPHEMERA_STACK")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "ephemera".into());
    println!("{}", doc(&stack));
}
