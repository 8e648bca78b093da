//! Step Functions: is an execution still running?

use std::future::Future;

use crate::error::AwsError;

pub trait Executions: Send + Sync {
    /// The execution's status (RUNNING, SUCCEEDED, …), or None when it does not exist.
    fn status(
        &self,
        execution_arn: &str,
    ) -> impl Future<Output = Result<Option<String>, AwsError>> + Send;
}

impl Executions for aws_sdk_sfn::Client {
    async fn status(&self, execution_arn: &str) -> Result<Option<String>, AwsError> {
        match self
            .describe_execution()
            .execution_arn(execution_arn)
            .send()
            .await
        {
            Ok(d) => Ok(Some(d.status().as_str().to_string())),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_execution_does_not_exist() || s.is_invalid_arn()) =>
            {
                Ok(None)
            }
            Err(e) => Err(AwsError::sdk("states", "DescribeExecution", e)),
        }
    }
}

/// Failing a task that waits on a token (`.waitForTaskToken`).
pub trait TaskTokens: Send + Sync {
    /// Fails the task; Ok(false) when the token no longer waits (the task ended already).
    fn fail_task(
        &self,
        token: &str,
        error: &str,
        cause: &str,
    ) -> impl Future<Output = Result<bool, AwsError>> + Send;
}

impl TaskTokens for aws_sdk_sfn::Client {
    async fn fail_task(&self, token: &str, error: &str, cause: &str) -> Result<bool, AwsError> {
        match self
            .send_task_failure()
            .task_token(token)
            .error(error)
            .cause(cause)
            .send()
            .await
        {
            Ok(_) => Ok(true),
            Err(e)
                if e.as_service_error().is_some_and(|s| {
                    s.is_task_does_not_exist() || s.is_task_timed_out() || s.is_invalid_token()
                }) =>
            {
                Ok(false)
            }
            Err(e) => Err(AwsError::sdk("states", "SendTaskFailure", e)),
        }
    }
}
