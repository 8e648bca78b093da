//! SSM Parameter Store: the worker's signals under its run's path.

use std::future::Future;

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

/// Removing a finished run's signals: Parameter Store keeps at most 10,000 standard parameters
/// per account and region, and nothing reads a run's after it ends.
pub trait ParamRemover: Send + Sync {
    /// Deletes those of `names` that exist; the names that did not are no error.
    fn delete_all(&self, names: &[String]) -> impl Future<Output = Result<(), Error>> + Send;
}

impl ParamRemover for aws_sdk_ssm::Client {
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
