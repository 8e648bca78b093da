//! The spot-interruption Lambda (EventBridge): a Spot notice fails the waiting task at once.
//! It links its own handler and the clients it calls, nothing else.

use ephemera_functions::{dispatch, dispatch::sdk_config, dispatch::serve};

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    let conf = sdk_config().await;
    let ec2 = aws_sdk_ec2::Client::new(&conf);
    let ssm = aws_sdk_ssm::Client::new(&conf);
    let sfn = aws_sdk_sfn::Client::new(&conf);
    serve(|payload| dispatch::spot_interruption(&ec2, &ssm, &sfn, payload)).await
}
