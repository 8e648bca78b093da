//! The functions, and one entry per function over the clients it calls: each bootstrap
//! (`src/bin/<name>.rs`) calls its own entry, so it links one handler and its SDK clients only;
//! the test harness's front door calls them all through [`invoke`], so both run the same code.

use chrono::{DateTime, Utc};
use ephemera_core::metrics;
use serde_json::Value;

use crate::aws::pricing::PriceListApi;
use crate::aws::{Aws, LedgerTable};
use crate::error::Error;
use crate::handlers::{
    health_check, launch_worker, parse_input, quota_check, snapshot_database, spot_interruption,
    sweeper, terminate_report, verify_completion,
};

/// The Lambdas of template.yaml, each a binary of this crate named after it
/// (`src/bin/<name>.rs`) that links only its own handler and clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Function {
    QuotaCheck,
    SnapshotDatabase,
    LaunchWorker,
    HealthCheck,
    VerifyCompletion,
    TerminateWithCostReport,
    Sweeper,
    SpotInterruption,
}

impl Function {
    pub const ALL: [Function; 8] = [
        Function::QuotaCheck,
        Function::SnapshotDatabase,
        Function::LaunchWorker,
        Function::HealthCheck,
        Function::VerifyCompletion,
        Function::TerminateWithCostReport,
        Function::Sweeper,
        Function::SpotInterruption,
    ];

    /// The binary's name, and the function's in template.yaml (`Metadata.BuildProperties.Binary`).
    pub const fn name(self) -> &'static str {
        match self {
            Function::QuotaCheck => "quota-check",
            Function::SnapshotDatabase => "snapshot-database",
            Function::LaunchWorker => "launch-worker",
            Function::HealthCheck => "health-check",
            Function::VerifyCompletion => "verify-completion",
            Function::TerminateWithCostReport => "terminate-with-cost-report",
            Function::Sweeper => "sweeper",
            Function::SpotInterruption => "spot-interruption",
        }
    }
}

impl std::fmt::Display for Function {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Function {
    type Err = Error;
    fn from_str(name: &str) -> Result<Function, Error> {
        Function::ALL
            .into_iter()
            .find(|f| f.name() == name)
            .ok_or_else(|| {
                let known: Vec<&str> = Function::ALL.iter().map(|f| f.name()).collect();
                Error::Internal(format!(
                    "unknown function '{name}'; known: {}",
                    known.join(", ")
                ))
            })
    }
}

/// Deployment settings, read from the function's environment.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    pub default_topic: Option<String>,
    pub worker_instance_profile: Option<String>,
    /// EPHEMERA_WORKER_ROLE_ID: the worker role's RoleId (who may read a task token).
    pub worker_role_id: Option<String>,
    /// EPHEMERA_LEDGER_TABLE: the run ledger; without it no run is recorded or held to the
    /// monthly budget.
    pub ledger_table: Option<String>,
    /// EPHEMERA_MONTHLY_BUDGET_USD: the month's ceiling over every run; 0 is none.
    pub monthly_budget_usd: f64,
    pub lambda_memory_mb: u32,
    /// EPHEMERA_ALLOWED_TOPICS: the topics a RunSpec may name (comma-separated).
    pub allowed_topics: Vec<String>,
    /// EPHEMERA_ARTIFACT_BUCKET: the bucket the worker's role may fetch its binary from, and
    /// where terminate-with-cost-report stores the report of a run that exports nothing.
    pub artifact_bucket: Option<String>,
    /// EPHEMERA_WORKER_LOG_GROUP: the stack's worker log group, passed to each worker.
    pub worker_log_group: Option<String>,
    /// EPHEMERA_EXPORT_BUCKET: the one bucket the worker may export to.
    pub export_bucket: Option<String>,
    /// EPHEMERA_EBS_KMS_KEY: the key the workers' root volumes are encrypted with.
    pub ebs_kms_key: Option<String>,
    /// EPHEMERA_STACK: the stack's name, tagged on what it creates that outlives a run (its
    /// snapshots) so that it prunes only its own.
    pub stack: Option<String>,
    /// EPHEMERA_QUOTA_DENIAL_COOLOFF_HOURS (template QuotaDenialCooloffHours): after a denial,
    /// no increase request for this long; None is the default (`quota_request`).
    pub quota_denial_cooloff_hours: Option<u32>,
    /// EPHEMERA_RUN_ROLE_ARN (template RunRole): launch-worker hands each instance its run's
    /// session of it; None vends none.
    pub run_role_arn: Option<String>,
    /// EPHEMERA_TASK_TOKEN_KEY (template TaskTokenKey): the stack's own key the run's session
    /// is sealed under, as the task tokens are.
    pub task_token_key: Option<String>,
    /// EPHEMERA_MAX_QUOTA_REQUEST_VCPUS (template MaxQuotaRequestVcpus): no request's desired
    /// value above it; None is the default.
    pub max_quota_request_vcpus: Option<u32>,
    /// EPHEMERA_SECRET_PREFIX (template DatabaseSecretPrefix): the secrets and parameters the
    /// workers may read; a RunSpec's `job.secrets` outside it is refused at admission.
    pub secret_prefix: Option<String>,
}

impl Settings {
    pub fn from_env() -> Settings {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        Settings {
            default_topic: var("EPHEMERA_TOPIC_ARN"),
            worker_instance_profile: var("EPHEMERA_WORKER_PROFILE"),
            worker_role_id: var("EPHEMERA_WORKER_ROLE_ID"),
            ledger_table: var("EPHEMERA_LEDGER_TABLE"),
            monthly_budget_usd: var("EPHEMERA_MONTHLY_BUDGET_USD")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0.0),
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
            worker_log_group: var("EPHEMERA_WORKER_LOG_GROUP"),
            export_bucket: var("EPHEMERA_EXPORT_BUCKET"),
            ebs_kms_key: var("EPHEMERA_EBS_KMS_KEY"),
            stack: var("EPHEMERA_STACK"),
            run_role_arn: var("EPHEMERA_RUN_ROLE_ARN"),
            task_token_key: var("EPHEMERA_TASK_TOKEN_KEY"),
            quota_denial_cooloff_hours: var("EPHEMERA_QUOTA_DENIAL_COOLOFF_HOURS")
                .and_then(|v| v.parse().ok()),
            max_quota_request_vcpus: var("EPHEMERA_MAX_QUOTA_REQUEST_VCPUS")
                .and_then(|v| v.parse().ok()),
            secret_prefix: var("EPHEMERA_SECRET_PREFIX"),
        }
    }
}

/// The ledger table, when the deployment has one.
pub fn ledger(dynamodb: &aws_sdk_dynamodb::Client, settings: &Settings) -> Option<LedgerTable> {
    settings.ledger_table.as_ref().map(|table| LedgerTable {
        client: dynamodb.clone(),
        table: table.clone(),
    })
}

fn out<T: serde::Serialize>(v: T) -> Result<Value, Error> {
    serde_json::to_value(v).map_err(|e| Error::Internal(format!("output: {e}")))
}

/// Runs `function` with the clients of `aws` (the test harness's front door: the same code the
/// bootstraps run).
pub async fn invoke(
    aws: &Aws,
    settings: &Settings,
    function: Function,
    payload: Value,
) -> Result<Value, Error> {
    let now = Utc::now();
    let region = aws.region.as_str();
    match function {
        Function::QuotaCheck => {
            let ledger = ledger(&aws.dynamodb, settings);
            let clients = quota_check::Clients {
                ec2: &aws.ec2,
                quotas: &aws.quotas,
                prices: &aws.pricing,
                reservations: ledger.as_ref(),
            };
            quota_check(clients, region, settings, payload, now).await
        }
        Function::LaunchWorker => {
            let clients = LaunchClients {
                ec2: &aws.ec2,
                prices: &aws.pricing,
                ssm: &aws.ssm,
                sts: &aws.sts,
                sns: &aws.sns,
                ledger: ledger(&aws.dynamodb, settings),
            };
            launch_worker(clients, region, settings, payload, now).await
        }
        Function::SnapshotDatabase => snapshot_database(&aws.rds, settings, payload, now).await,
        Function::HealthCheck => health_check(&aws.ec2, &aws.ssm, payload, now).await,
        Function::VerifyCompletion => verify_completion(&aws.s3, payload, now).await,
        Function::TerminateWithCostReport => {
            let clients = TerminateClients {
                ec2: &aws.ec2,
                prices: &aws.pricing,
                sns: &aws.sns,
                history: &aws.sfn,
                objects: &aws.s3,
                ledger: ledger(&aws.dynamodb, settings),
                signals: &aws.ssm,
            };
            terminate_with_cost_report(clients, region, settings, payload, now).await
        }
        Function::Sweeper => {
            let ledger = ledger(&aws.dynamodb, settings);
            let ledger = ledger.as_ref();
            let services = sweeper::Services {
                ec2: &aws.ec2,
                executions: &aws.sfn,
                sns: &aws.sns,
                ledger,
                params: &aws.ssm,
            };
            sweeper(services, region, settings, now).await
        }
        Function::SpotInterruption => {
            spot_interruption(&aws.ec2, &aws.ssm, &aws.sfn, payload).await
        }
    }
}

// One entry per function, over the clients it calls and nothing else: a bootstrap that calls
// one of these links one handler and its SDK clients only.

pub async fn quota_check(
    clients: quota_check::Clients<
        '_,
        aws_sdk_ec2::Client,
        aws_sdk_servicequotas::Client,
        PriceListApi,
        LedgerTable,
    >,
    region: &str,
    settings: &Settings,
    payload: Value,
    now: DateTime<Utc>,
) -> Result<Value, Error> {
    let config = quota_check::Config {
        region: region.into(),
        deployment: ephemera_core::admission::Deployment {
            allowed_topics: settings.allowed_topics.clone(),
            artifact_bucket: settings.artifact_bucket.clone(),
            export_bucket: settings.export_bucket.clone(),
            worker_profile: settings.worker_instance_profile.clone(),
            region: Some(region.into()),
            secret_prefix: settings.secret_prefix.clone(),
        },
        requests: quota_bounds(settings),
        ..Default::default()
    };
    let input = parse_input(Function::QuotaCheck.name(), payload)?;
    out(quota_check::handle(clients, &config, input, now).await?)
}

/// The stack's bounds on quota increase requests, each parameter's default where unset.
fn quota_bounds(settings: &Settings) -> ephemera_core::quota_request::Bounds {
    let d = ephemera_core::quota_request::Bounds::default();
    ephemera_core::quota_request::Bounds {
        cooloff_hours: settings
            .quota_denial_cooloff_hours
            .unwrap_or(d.cooloff_hours),
        max_desired_vcpus: settings
            .max_quota_request_vcpus
            .unwrap_or(d.max_desired_vcpus),
    }
}

/// launch-worker's clients: it prices, launches, signs the token over, and books the run.
pub struct LaunchClients<'a> {
    pub ec2: &'a aws_sdk_ec2::Client,
    pub prices: &'a PriceListApi,
    pub ssm: &'a aws_sdk_ssm::Client,
    pub sts: &'a aws_sdk_sts::Client,
    pub sns: &'a aws_sdk_sns::Client,
    pub ledger: Option<LedgerTable>,
}

pub async fn launch_worker(
    c: LaunchClients<'_>,
    region: &str,
    settings: &Settings,
    payload: Value,
    now: DateTime<Utc>,
) -> Result<Value, Error> {
    let config = launch_worker::Config {
        region: region.into(),
        instance_profile: settings.worker_instance_profile.clone(),
        worker_role_id: settings.worker_role_id.clone(),
        monthly_budget_usd: settings.monthly_budget_usd,
        alert_topic: settings.default_topic.clone(),
        worker_log_group: settings.worker_log_group.clone(),
        ebs_kms_key: settings.ebs_kms_key.clone(),
        run_role_arn: settings.run_role_arn.clone(),
        sealing_key: settings.task_token_key.clone(),
        artifact_bucket: settings.artifact_bucket.clone(),
        export_bucket: settings.export_bucket.clone(),
    };
    let input = parse_input(Function::LaunchWorker.name(), payload)?;
    let books = launch_worker::Books {
        ledger: c.ledger.as_ref(),
        alerts: c.sns,
    };
    let clients = launch_worker::Clients {
        ec2: c.ec2,
        prices: c.prices,
        params: c.ssm,
        sessions: c.sts,
        books,
    };
    out(launch_worker::handle(clients, &config, input, now).await?)
}

pub async fn snapshot_database(
    rds: &aws_sdk_rds::Client,
    settings: &Settings,
    payload: Value,
    now: DateTime<Utc>,
) -> Result<Value, Error> {
    let input: snapshot_database::Input = parse_input(Function::SnapshotDatabase.name(), payload)?;
    let stack = settings.stack.as_deref();
    if input.prune {
        return out(snapshot_database::prune(rds, input, stack).await?);
    }
    out(snapshot_database::handle(rds, input, stack, now).await?)
}

pub async fn health_check(
    ec2: &aws_sdk_ec2::Client,
    ssm: &aws_sdk_ssm::Client,
    payload: Value,
    now: DateTime<Utc>,
) -> Result<Value, Error> {
    let input = parse_input(Function::HealthCheck.name(), payload)?;
    out(health_check::handle(ec2, ssm, input, now).await?)
}

pub async fn verify_completion(
    s3: &aws_sdk_s3::Client,
    payload: Value,
    now: DateTime<Utc>,
) -> Result<Value, Error> {
    let input = parse_input(Function::VerifyCompletion.name(), payload)?;
    out(verify_completion::handle(s3, input, now).await?)
}

/// terminate-with-cost-report's clients: it calls five services.
pub struct TerminateClients<'a> {
    pub ec2: &'a aws_sdk_ec2::Client,
    pub prices: &'a PriceListApi,
    pub sns: &'a aws_sdk_sns::Client,
    pub history: &'a aws_sdk_sfn::Client,
    pub objects: &'a aws_sdk_s3::Client,
    pub ledger: Option<LedgerTable>,
    pub signals: &'a aws_sdk_ssm::Client,
}

pub async fn terminate_with_cost_report(
    c: TerminateClients<'_>,
    region: &str,
    settings: &Settings,
    payload: Value,
    now: DateTime<Utc>,
) -> Result<Value, Error> {
    let config = terminate_report::Config {
        region: region.into(),
        default_topic: settings.default_topic.clone(),
        lambda_memory_mb: settings.lambda_memory_mb,
        artifact_bucket: settings.artifact_bucket.clone(),
        monthly_budget_usd: settings.monthly_budget_usd,
    };
    // A run refused before it started: told, nothing to terminate.
    if payload.get("refused").is_some() {
        let input = parse_input(Function::TerminateWithCostReport.name(), payload)?;
        return out(terminate_report::tell_refusal(c.sns, &config, input).await?);
    }
    // The Map state's per-worker cleanup calls this function with `release`.
    if payload.get("release").is_some() {
        let input = parse_input(Function::TerminateWithCostReport.name(), payload)?;
        return out(terminate_report::release(c.ec2, input).await?);
    }
    // The stack's rule on an execution stopped or timed out: the same teardown and report, with
    // the run and the error read from the execution.
    let input = if payload["detail-type"] == ephemera_core::stopped::DETAIL_TYPE {
        match terminate_report::input_of_stop(c.history, &payload).await? {
            Some(input) => input,
            None => return out(serde_json::json!({"ignored": payload["detail"]["status"]})),
        }
    } else {
        parse_input(Function::TerminateWithCostReport.name(), payload)?
    };
    let services = terminate_report::Services {
        ec2: c.ec2,
        prices: c.prices,
        sns: c.sns,
        history: c.history,
        objects: c.objects,
        ledger: c.ledger.as_ref(),
        signals: Some(c.signals),
    };
    match terminate_report::handle(services, &config, input, now).await {
        Ok(report) => {
            emit(|stack| metrics::of_run(&report, stack));
            out(report)
        }
        Err(e) => {
            emit(|stack| metrics::of_cleanup_failure(stack, Utc::now()));
            Err(e)
        }
    }
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

pub async fn sweeper(
    services: sweeper::Services<
        '_,
        aws_sdk_ec2::Client,
        aws_sdk_sfn::Client,
        aws_sdk_sns::Client,
        LedgerTable,
        aws_sdk_ssm::Client,
    >,
    region: &str,
    settings: &Settings,
    now: DateTime<Utc>,
) -> Result<Value, Error> {
    let topic = settings.default_topic.as_deref();
    let profile = settings.worker_instance_profile.as_deref();
    let report = sweeper::handle(services, topic, profile, region, now).await?;
    emit(|stack| {
        metrics::of_sweep(
            stack,
            report.checked,
            report.terminated.len(),
            report.signals_deleted,
            report.swept_at,
        )
    });
    out(report)
}

pub async fn spot_interruption(
    ec2: &aws_sdk_ec2::Client,
    ssm: &aws_sdk_ssm::Client,
    sfn: &aws_sdk_sfn::Client,
    payload: Value,
) -> Result<Value, Error> {
    let input = parse_input(Function::SpotInterruption.name(), payload)?;
    out(spot_interruption::handle(ec2, ssm, sfn, input).await?)
}

/// The body of every bootstrap: JSON logs, then `handler` for each event. The bootstrap builds
/// its clients once, from [`sdk_config`], before calling this.
pub async fn serve<F, Fut>(handler: F) -> Result<(), lambda_runtime::Error>
where
    F: Fn(Value) -> Fut,
    Fut: std::future::Future<Output = Result<Value, Error>>,
{
    lambda_runtime::run(lambda_runtime::service_fn(
        |event: lambda_runtime::LambdaEvent<Value>| handler(event.payload),
    ))
    .await
}

/// The function's SDK configuration (region, credentials from its role); logging starts here,
/// so that the clients' own lines are JSON too.
pub async fn sdk_config() -> aws_config::SdkConfig {
    lambda_runtime::tracing::init_default_subscriber();
    aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_function_is_found_by_its_name_and_no_other() {
        for f in Function::ALL {
            assert_eq!(f.name().parse::<Function>().unwrap(), f);
        }
        let names: std::collections::BTreeSet<&str> =
            Function::ALL.iter().map(|f| f.name()).collect();
        assert_eq!(names.len(), Function::ALL.len(), "names are distinct");
        let e = "launch".parse::<Function>().unwrap_err().to_string();
        assert!(e.contains("unknown function 'launch'"), "{e}");
        assert!(e.contains("launch-worker"), "{e}");
    }
}
