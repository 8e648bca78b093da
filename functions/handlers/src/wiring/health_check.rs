//! health-check's wiring: EC2 and SSM (the handler: `handlers::health_check`).

use aws_config::SdkConfig;
use chrono::{DateTime, Utc};
use lambda_runtime::{service_fn, LambdaEvent};
use serde_json::Value;

use super::{out, sdk_config};
use crate::aws::Aws;
use crate::error::Error;
use crate::function::Function;
use crate::handlers::{health_check, parse_input};

/// health-check's clients.
pub struct HealthCheck {
    ec2: aws_sdk_ec2::Client,
    ssm: aws_sdk_ssm::Client,
}

impl HealthCheck {
    pub fn new(conf: &SdkConfig) -> HealthCheck {
        HealthCheck {
            ec2: aws_sdk_ec2::Client::new(conf),
            ssm: aws_sdk_ssm::Client::new(conf),
        }
    }

    /// Its clients out of the harness's whole set.
    pub fn of(aws: &Aws) -> HealthCheck {
        HealthCheck {
            ec2: aws.ec2.clone(),
            ssm: aws.ssm.clone(),
        }
    }

    pub async fn call(&self, payload: Value, now: DateTime<Utc>) -> Result<Value, Error> {
        let input = parse_input(Function::HealthCheck.name(), payload)?;
        out(health_check::handle(&self.ec2, &self.ssm, input, now).await?)
    }
}

/// The bootstrap's body (`src/bin/health-check.rs`).
pub async fn serve() -> Result<(), lambda_runtime::Error> {
    let f = HealthCheck::new(&sdk_config().await);
    lambda_runtime::run(service_fn(|event: LambdaEvent<Value>| {
        f.call(event.payload, Utc::now())
    }))
    .await
}
