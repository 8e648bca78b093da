//! The health-check Lambda.
//! It links its own handler and the clients it calls, nothing else.

use chrono::Utc;
use ephemera_functions::{dispatch, dispatch::sdk_config, dispatch::serve};

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    let conf = sdk_config().await;
    let (ec2, ssm) = (
        aws_sdk_ec2::Client::new(&conf),
        aws_sdk_ssm::Client::new(&conf),
    );
    serve(|payload| dispatch::health_check(&ec2, &ssm, payload, Utc::now())).await
}
