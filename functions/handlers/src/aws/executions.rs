//! Step Functions: is an execution still running?

use std::future::Future;

use crate::error::Error;

pub trait Executions: Send + Sync {
    /// The execution's status (RUNNING, SUCCEEDED, …), or None when it does not exist.
    fn status(
        &self,
        execution_arn: &str,
    ) -> impl Future<Output = Result<Option<String>, Error>> + Send;
}

impl Executions for aws_sdk_sfn::Client {
    async fn status(&self, execution_arn: &str) -> Result<Option<String>, Error> {
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
            Err(e) => Err(Error::aws("states", "DescribeExecution", e)),
        }
    }
}
