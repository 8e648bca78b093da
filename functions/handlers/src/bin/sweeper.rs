//! The sweeper Lambda (scheduled): terminates instances that outlived their run.
//! It links its own handler and the clients it calls, nothing else.

use chrono::Utc;
use ephemera_functions::{aws::region, dispatch, dispatch::sdk_config, dispatch::serve, Settings};

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    let conf = sdk_config().await;
    let ec2 = aws_sdk_ec2::Client::new(&conf);
    let sfn = aws_sdk_sfn::Client::new(&conf);
    let sns = aws_sdk_sns::Client::new(&conf);
    let ssm = aws_sdk_ssm::Client::new(&conf);
    let settings = Settings::from_env();
    let region = region(&conf);
    let ledger = dispatch::ledger(&aws_sdk_dynamodb::Client::new(&conf), &settings);
    let ledger = ledger.as_ref();
    serve(|_| {
        let services = ephemera_functions::handlers::sweeper::Services {
            ec2: &ec2,
            executions: &sfn,
            sns: &sns,
            ledger,
            params: &ssm,
        };
        dispatch::sweeper(services, &region, &settings, Utc::now())
    })
    .await
}
