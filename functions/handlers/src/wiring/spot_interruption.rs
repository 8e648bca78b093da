//! spot-interruption's wiring (EventBridge): EC2, SSM and Step Functions (the handler:
//! `handlers::spot_interruption`).

use aws_config::SdkConfig;
use lambda_runtime::{service_fn, LambdaEvent};
use serde_json::Value;

use super::{out, sdk_config};
use crate::aws::Aws;
use crate::error::Error;
use crate::function::Function;
use crate::handlers::{parse_input, spot_interruption};

/// spot-interruption's clients.
pub struct SpotInterruption {
    ec2: aws_sdk_ec2::Client,
    ssm: aws_sdk_ssm::Client,
    sfn: aws_sdk_sfn::Client,
}

impl SpotInterruption {
    pub fn new(conf: &SdkConfig) -> SpotInterruption {
        SpotInterruption {
            ec2: aws_sdk_ec2::Client::new(conf),
            ssm: aws_sdk_ssm::Client::new(conf),
            sfn: aws_sdk_sfn::Client::new(conf),
        }
    }

    /// Its clients out of the harness's whole set.
    pub fn of(aws: &Aws) -> SpotInterruption {
        SpotInterruption {
            ec2: aws.ec2.clone(),
            ssm: aws.ssm.clone(),
            sfn: aws.sfn.clone(),
        }
    }

    pub async fn call(&self, payload: Value) -> Result<Value, Error> {
        let input = parse_input(Function::SpotInterruption.name(), payload)?;
        out(spot_interruption::handle(&self.ec2, &self.ssm, &self.sfn, input).await?)
    }
}

/// The bootstrap's body (`src/bin/spot-interruption.rs`).
pub async fn serve() -> Result<(), lambda_runtime::Error> {
    let f = SpotInterruption::new(&sdk_config().await);
    lambda_runtime::run(service_fn(|event: LambdaEvent<Value>| {
        f.call(event.payload)
    }))
    .await
}
