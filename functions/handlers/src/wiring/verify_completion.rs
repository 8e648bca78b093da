//! verify-completion's wiring: S3 (the handler: `handlers::verify_completion`).

use aws_config::SdkConfig;
use chrono::{DateTime, Utc};
use lambda_runtime::{service_fn, LambdaEvent};
use serde_json::Value;

use super::{out, sdk_config};
use crate::aws::{s3_client, Aws};
use crate::error::Error;
use crate::function::Function;
use crate::handlers::{parse_input, verify_completion};

/// verify-completion's one client.
pub struct VerifyCompletion {
    s3: aws_sdk_s3::Client,
}

impl VerifyCompletion {
    pub fn new(conf: &SdkConfig) -> VerifyCompletion {
        VerifyCompletion {
            s3: s3_client(conf),
        }
    }

    /// Its client out of the harness's whole set.
    pub fn of(aws: &Aws) -> VerifyCompletion {
        VerifyCompletion { s3: aws.s3.clone() }
    }

    pub async fn call(&self, payload: Value, now: DateTime<Utc>) -> Result<Value, Error> {
        let input = parse_input(Function::VerifyCompletion.name(), payload)?;
        out(verify_completion::handle(&self.s3, input, now).await?)
    }
}

/// The bootstrap's body (`src/bin/verify-completion.rs`).
pub async fn serve() -> Result<(), lambda_runtime::Error> {
    let f = VerifyCompletion::new(&sdk_config().await);
    lambda_runtime::run(service_fn(|event: LambdaEvent<Value>| {
        f.call(event.payload, Utc::now())
    }))
    .await
}
