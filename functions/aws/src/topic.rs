//! SNS: the run's email.

use std::future::Future;

use aws_sdk_sns::types::MessageAttributeValue;

use crate::error::AwsError;

pub trait Notifier: Send + Sync {
    /// Publishes; returns the message id.
    fn publish(
        &self,
        topic_arn: &str,
        subject: &str,
        body: &str,
        attributes: &[(&str, &str)],
    ) -> impl Future<Output = Result<String, AwsError>> + Send;
}

impl Notifier for aws_sdk_sns::Client {
    async fn publish(
        &self,
        topic_arn: &str,
        subject: &str,
        body: &str,
        attributes: &[(&str, &str)],
    ) -> Result<String, AwsError> {
        let mut req = self
            .publish()
            .topic_arn(topic_arn)
            .subject(subject)
            .message(body);
        for (k, v) in attributes {
            let value = MessageAttributeValue::builder()
                .data_type("String")
                .string_value(*v)
                .build()
                .map_err(|e| AwsError::Internal(format!("SNS attribute {k}: {e}")))?;
            req = req.message_attributes(*k, value);
        }
        let r = req
            .send()
            .await
            .map_err(|e| AwsError::sdk("sns", "Publish", e))?;
        Ok(r.message_id().unwrap_or_default().to_string())
    }
}
