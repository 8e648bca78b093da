//! The terminate-with-cost-report Lambda.
//! It links its own handler and the clients it calls, nothing else.

use chrono::Utc;
use ephemera_functions::{
    aws::pricing::PriceListApi, aws::region, aws::s3_client, dispatch, dispatch::sdk_config,
    dispatch::serve, Settings,
};

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    let conf = sdk_config().await;
    let ec2 = aws_sdk_ec2::Client::new(&conf);
    let prices = PriceListApi::new(&conf);
    let sns = aws_sdk_sns::Client::new(&conf);
    let sfn = aws_sdk_sfn::Client::new(&conf);
    let s3 = s3_client(&conf);
    let region = region(&conf);
    let settings = Settings::from_env();
    let dynamodb = aws_sdk_dynamodb::Client::new(&conf);
    let ssm = aws_sdk_ssm::Client::new(&conf);
    serve(|payload| {
        let clients = dispatch::TerminateClients {
            ec2: &ec2,
            prices: &prices,
            sns: &sns,
            history: &sfn,
            objects: &s3,
            ledger: dispatch::ledger(&dynamodb, &settings),
            signals: &ssm,
        };
        dispatch::terminate_with_cost_report(clients, &region, &settings, payload, Utc::now())
    })
    .await
}
