//! SSM Parameter Store: the worker's signals under its run's path.

use std::future::Future;

use aws_sdk_ssm::types::ParameterStringFilter;
use chrono::{DateTime, Utc};
use ephemera_core::sweep::Param;

use crate::error::AwsError;

pub trait Params: Send + Sync {
    /// The decrypted value, or None when the parameter does not exist.
    fn get(&self, name: &str) -> impl Future<Output = Result<Option<String>, AwsError>> + Send;
}

impl Params for aws_sdk_ssm::Client {
    async fn get(&self, name: &str) -> Result<Option<String>, AwsError> {
        match self
            .get_parameter()
            .name(name)
            .with_decryption(true)
            .send()
            .await
        {
            Ok(r) => Ok(r.parameter().and_then(|p| p.value()).map(str::to_string)),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_parameter_not_found()) =>
            {
                Ok(None)
            }
            Err(e) => Err(AwsError::sdk("ssm", "GetParameter", e)),
        }
    }
}

/// Removing finished runs' signals: Parameter Store keeps at most 10,000 standard parameters
/// per account and region, and nothing reads a run's after it ends.
pub trait ParamHousekeeping: Send + Sync {
    /// Deletes those of `names` that exist; the names that did not are no error.
    fn delete_all(&self, names: &[String]) -> impl Future<Output = Result<(), AwsError>> + Send;

    /// Every parameter under `path`, at any depth: names and dates only (DescribeParameters
    /// never returns values).
    fn list_under(&self, path: &str) -> impl Future<Output = Result<Vec<Param>, AwsError>> + Send;
}

impl ParamHousekeeping for aws_sdk_ssm::Client {
    async fn list_under(&self, path: &str) -> Result<Vec<Param>, AwsError> {
        let filter = ParameterStringFilter::builder()
            .key("Path")
            .option("Recursive")
            .values(path)
            .build()
            .map_err(|e| AwsError::Internal(format!("the Path filter: {e}")))?;
        let mut pages = self
            .describe_parameters()
            .parameter_filters(filter)
            .max_results(50)
            .into_paginator()
            .send();
        let mut params = vec![];
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| AwsError::sdk("ssm", "DescribeParameters", e))?;
            params.extend(page.parameters().iter().filter_map(|p| {
                Some(Param {
                    name: p.name()?.to_string(),
                    modified: p
                        .last_modified_date()
                        .and_then(|d| DateTime::<Utc>::from_timestamp(d.secs(), d.subsec_nanos())),
                })
            }));
        }
        Ok(params)
    }

    async fn delete_all(&self, names: &[String]) -> Result<(), AwsError> {
        // DeleteParameters takes at most 10 names; unknown ones come back as InvalidParameters.
        for chunk in names.chunks(10) {
            self.delete_parameters()
                .set_names(Some(chunk.to_vec()))
                .send()
                .await
                .map_err(|e| AwsError::sdk("ssm", "DeleteParameters", e))?;
        }
        Ok(())
    }
}

/// A SecureString of one instance's own: under the stack's key, tagged with the one role session
/// allowed to read it (`ephemera:reader`, as the task token is).
pub trait SealedParams: Send + Sync {
    /// Writes `value` at `name` once; Ok(false) when it already exists (a retried call wrote
    /// it: SSM refuses `Overwrite` with `Tags`, and the earlier value stands).
    fn put_sealed(
        &self,
        name: &str,
        value: &str,
        key_id: &str,
        reader: &str,
    ) -> impl Future<Output = Result<bool, AwsError>> + Send;
}

impl SealedParams for aws_sdk_ssm::Client {
    async fn put_sealed(
        &self,
        name: &str,
        value: &str,
        key_id: &str,
        reader: &str,
    ) -> Result<bool, AwsError> {
        let tag = aws_sdk_ssm::types::Tag::builder()
            .key(ephemera_core::contract::tags::READER)
            .value(reader)
            .build()
            .map_err(|e| AwsError::Internal(format!("the reader tag: {e}")))?;
        match self
            .put_parameter()
            .name(name)
            .value(value)
            .r#type(aws_sdk_ssm::types::ParameterType::SecureString)
            .key_id(key_id)
            // A session token with tags and a session policy, beside a session policy of up to
            // 2,048 characters, can pass a standard parameter's 4 KB: Intelligent-Tiering makes
            // such a one advanced and leaves the rest standard (Parameter Store, "Managing
            // parameter tiers").
            .tier(aws_sdk_ssm::types::ParameterTier::IntelligentTiering)
            .tags(tag)
            .send()
            .await
        {
            Ok(_) => Ok(true),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_parameter_already_exists()) =>
            {
                Ok(false)
            }
            Err(e) => Err(AwsError::sdk("ssm", "PutParameter", e)),
        }
    }
}
