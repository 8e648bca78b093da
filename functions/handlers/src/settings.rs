//! The deployment's settings, read once per cold start from the function's environment
//! (template.yaml's `Environment.Variables`).

use crate::aws::LedgerTable;

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

    /// The ledger table, when the deployment has one.
    pub fn ledger(&self, dynamodb: &aws_sdk_dynamodb::Client) -> Option<LedgerTable> {
        self.ledger_table.as_ref().map(|table| LedgerTable {
            client: dynamodb.clone(),
            table: table.clone(),
        })
    }
}
