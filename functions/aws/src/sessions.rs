//! STS: launch-worker vends each instance its run's session of the run role (`RunRole`), tagged
//! with the run and narrowed by the session policy the RunSpec decides
//! (`ephemera_core::run_credentials`).

use std::future::Future;

use aws_sdk_sts::types::Tag;
use ephemera_core::contract::RunSession;

use crate::error::AwsError;

/// What one AssumeRole of the run role asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct Vend<'a> {
    pub role_arn: &'a str,
    /// RoleSessionName: the instance id, so that CloudTrail names the instance that acted.
    pub session_name: &'a str,
    /// The `ephemera:run` tag's value, passed transitive so that no renewal can change it.
    pub run_id: &'a str,
    /// The session policy (JSON), at most 2,048 characters (`run_credentials`).
    pub policy: &'a str,
}

pub trait RunSessions: Send + Sync {
    fn vend(&self, v: &Vend<'_>) -> impl Future<Output = Result<RunSession, AwsError>> + Send;
}

impl RunSessions for aws_sdk_sts::Client {
    async fn vend(&self, v: &Vend<'_>) -> Result<RunSession, AwsError> {
        let tag = Tag::builder()
            .key(ephemera_core::run_credentials::RUN_TAG)
            .value(v.run_id)
            .build()
            .map_err(|e| AwsError::Internal(format!("the session tag: {e}")))?;
        let r = self
            .assume_role()
            .role_arn(v.role_arn)
            .role_session_name(v.session_name)
            .tags(tag)
            .transitive_tag_keys(ephemera_core::run_credentials::RUN_TAG)
            .policy(v.policy)
            // Role chaining (the Lambda's own credentials are a role session) caps a session at
            // one hour: the agent renews it before then (IAM user guide, "Role chaining").
            .duration_seconds(3600)
            .send()
            .await
            .map_err(|e| AwsError::sdk("sts", "AssumeRole", e))?;
        let c = r.credentials().ok_or_else(|| AwsError::Call {
            service: "sts",
            operation: "AssumeRole",
            code: "NoCredentials".into(),
            message: "AssumeRole answered without credentials".into(),
        })?;
        Ok(RunSession {
            role_arn: v.role_arn.to_string(),
            access_key_id: c.access_key_id().to_string(),
            secret_access_key: c.secret_access_key().to_string(),
            session_token: c.session_token().to_string(),
            expiration: crate::to_chrono(c.expiration()),
            policy: v.policy.to_string(),
            job_policy: None,
        })
    }
}
