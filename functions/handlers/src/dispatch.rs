//! Runs a handler by function name with the real clients: used by the Lambda bootstraps and by
//! the test harness's front door, so both execute exactly the same code.

use chrono::Utc;
use serde_json::Value;

use crate::aws::Aws;
use crate::error::Error;
use crate::handlers::{
    health_check, launch_worker, parse_input, quota_check, spot_interruption, sweeper,
    terminate_report, verify_completion,
};

pub const FUNCTIONS: [&str; 7] = [
    "quota-check",
    "launch-worker",
    "health-check",
    "verify-completion",
    "terminate-with-cost-report",
    "sweeper",
    "spot-interruption",
];

/// Deployment settings, read from the function's environment.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    pub default_topic: Option<String>,
    pub worker_instance_profile: Option<String>,
    /// EPHEMERA_WORKER_ROLE_ID: the worker role's RoleId (who may read a task token).
    pub worker_role_id: Option<String>,
    pub lambda_memory_mb: u32,
    /// EPHEMERA_ALLOWED_TOPICS: the topics a RunSpec may name (comma-separated).
    pub allowed_topics: Vec<String>,
    /// EPHEMERA_ARTIFACT_BUCKET: the bucket the worker's role may fetch its binary from, and
    /// where terminate-with-cost-report stores the report of a run that exports nothing.
    pub artifact_bucket: Option<String>,
}

impl Settings {
    pub fn from_env() -> Settings {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        Settings {
            default_topic: var("EPHEMERA_TOPIC_ARN"),
            worker_instance_profile: var("EPHEMERA_WORKER_PROFILE"),
            worker_role_id: var("EPHEMERA_WORKER_ROLE_ID"),
            lambda_memory_mb: var("AWS_LAMBDA_FUNCTION_MEMORY_SIZE")
                .and_then(|m| m.parse().ok())
                .unwrap_or(128),
            allowed_topics: var("EPHEMERA_ALLOWED_TOPICS")
                .map(|v| {
                    v.split(',')
                        .map(|t| t.trim().to_string())
                        .filter(|t| !t.is_empty())
                        .collect()
                })
                .unwrap_or_default(),
            artifact_bucket: var("EPHEMERA_ARTIFACT_BUCKET"),
        }
    }
}

fn out<T: serde::Serialize>(v: T) -> Result<Value, Error> {
    serde_json::to_value(v).map_err(|e| Error::Internal(format!("output: {e}")))
}

pub async fn invoke(
    aws: &Aws,
    settings: &Settings,
    function: &str,
    payload: Value,
) -> Result<Value, Error> {
    let now = Utc::now();
    match function {
        "quota-check" => out(quota_check::handle(
            &aws.ec2,
            &aws.quotas,
            &quota_check::Config {
                region: aws.region.clone(),
                allowed_topics: settings.allowed_topics.clone(),
                artifact_bucket: settings.artifact_bucket.clone(),
            },
            parse_input(function, payload)?,
            now,
        )
        .await?),
        "launch-worker" => {
            let config = launch_worker::Config {
                region: aws.region.clone(),
                instance_profile: settings.worker_instance_profile.clone(),
                worker_role_id: settings.worker_role_id.clone(),
            };
            out(launch_worker::handle(
                &aws.ec2,
                &aws.pricing,
                &aws.ssm,
                &config,
                parse_input(function, payload)?,
                now,
            )
            .await?)
        }
        "health-check" => {
            out(
                health_check::handle(&aws.ec2, &aws.ssm, parse_input(function, payload)?, now)
                    .await?,
            )
        }
        "verify-completion" => {
            out(verify_completion::handle(&aws.s3, parse_input(function, payload)?, now).await?)
        }
        "terminate-with-cost-report" => {
            let config = terminate_report::Config {
                region: aws.region.clone(),
                default_topic: settings.default_topic.clone(),
                lambda_memory_mb: settings.lambda_memory_mb,
                artifact_bucket: settings.artifact_bucket.clone(),
            };
            out(terminate_report::handle(
                &aws.ec2,
                &aws.pricing,
                &aws.sns,
                &aws.sfn,
                &aws.s3,
                &config,
                parse_input(function, payload)?,
                now,
            )
            .await?)
        }
        "sweeper" => out(sweeper::handle(
            &aws.ec2,
            &aws.sfn,
            &aws.sns,
            settings.default_topic.as_deref(),
            now,
        )
        .await?),
        "spot-interruption" => out(spot_interruption::handle(
            &aws.ec2,
            &aws.ssm,
            &aws.sfn,
            parse_input(function, payload)?,
        )
        .await?),
        other => Err(Error::Internal(format!(
            "unknown function '{other}'; known: {}",
            FUNCTIONS.join(", ")
        ))),
    }
}

/// The body of every bootstrap: JSON logs, clients built once, then serve events.
pub async fn serve(function: &'static str) -> Result<(), lambda_runtime::Error> {
    lambda_runtime::tracing::init_default_subscriber();
    let aws = Aws::from_env().await;
    let settings = Settings::from_env();
    lambda_runtime::run(lambda_runtime::service_fn(
        |event: lambda_runtime::LambdaEvent<Value>| {
            let (aws, settings) = (&aws, &settings);
            async move { invoke(aws, settings, function, event.payload).await }
        },
    ))
    .await
}
