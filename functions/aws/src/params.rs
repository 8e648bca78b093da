//! SSM Parameter Store: the worker's signals under its run's path.

use std::future::Future;

use aws_sdk_ssm::types::ParameterStringFilter;
use chrono::{DateTime, Utc};
use ephemera_core::sweep::Param;

use crate::error::Error;

pub trait Params: Send + Sync {
    /// The decrypted value, or None when the parameter does not exist.
    fn get(&self, name: &str) -> impl Future<Output = Result<Option<String>, Error>> + Send;
}

impl Params for aws_sdk_ssm::Client {
    async fn get(&self, name: &str) -> Result<Option<String>, Error> {
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
            Err(e) => Err(Error::aws("ssm", "GetParameter", e)),
        }
    }
}

/// Removing finished runs' signals: Parameter Store keeps at most 10,000 standard parameters
/// per account and region, and nothing reads a run's after it ends.
pub trait ParamHousekeeping: Send + Sync {
    /// Deletes those of `names` that exist; the names that did not are no error.
    fn delete_all(&self, names: &[String]) -> impl Future<Output = Result<(), Error>> + Send;

    /// Every parameter under `path`, at any depth: names and dates only (DescribeParameters
    /// never returns values).
    fn list_under(&self, path: &str) -> impl Future<Output = Result<Vec<Param>, Error>> + Send;
}

impl ParamHousekeeping for aws_sdk_ssm::Client {
    async fn list_under(&self, path: &str) -> Result<Vec<Param>, Error> {
        let filter = ParameterStringFilter::builder()
            .key("Path")
            .option("Recursive")
            .values(path)
            .build()
            .map_err(|e| Error::Internal(format!("the Path filter: {e}")))?;
        let mut pages = self
            .describe_parameters()
            .parameter_filters(filter)
            .max_results(50)
            .into_paginator()
            .send();
        let mut params = vec![];
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| Error::aws("ssm", "DescribeParameters", e))?;
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

    async fn delete_all(&self, names: &[String]) -> Result<(), Error> {
        // DeleteParameters takes at most 10 names; unknown ones come back as InvalidParameters.
        for chunk in names.chunks(10) {
            self.delete_parameters()
                .set_names(Some(chunk.to_vec()))
                .send()
                .await
                .map_err(|e| Error::aws("ssm", "DeleteParameters", e))?;
        }
        Ok(())
    }
}
