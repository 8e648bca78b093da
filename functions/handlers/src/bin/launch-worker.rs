//! The launch-worker Lambda.
//! It links its own handler and the clients it calls, nothing else.
// The handler's futures nest deeper than rustc's default layout depth (128).
#![recursion_limit = "256"]

use chrono::Utc;
use ephemera_functions::{
    aws::pricing::PriceListApi, aws::region, dispatch, dispatch::sdk_config, dispatch::serve,
    Settings,
};

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    let conf = sdk_config().await;
    let (ec2, ssm) = (
        aws_sdk_ec2::Client::new(&conf),
        aws_sdk_ssm::Client::new(&conf),
    );
    let sns = aws_sdk_sns::Client::new(&conf);
    let sts = aws_sdk_sts::Client::new(&conf);
    let prices = PriceListApi::new(&conf);
    let dynamodb = aws_sdk_dynamodb::Client::new(&conf);
    let region = region(&conf);
    let settings = Settings::from_env();
    serve(|payload| {
        let clients = dispatch::LaunchClients {
            ec2: &ec2,
            prices: &prices,
            ssm: &ssm,
            sts: &sts,
            sns: &sns,
            ledger: dispatch::ledger(&dynamodb, &settings),
        };
        dispatch::launch_worker(clients, &region, &settings, payload, Utc::now())
    })
    .await
}
