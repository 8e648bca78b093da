//! The quota-check Lambda.
//! It links its own handler and the clients it calls, nothing else.

use chrono::Utc;
use ephemera_functions::{
    aws::pricing::PriceListApi, aws::region, dispatch, dispatch::sdk_config, dispatch::serve,
    handlers::quota_check, Settings,
};

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    let conf = sdk_config().await;
    let (ec2, quotas) = (
        aws_sdk_ec2::Client::new(&conf),
        aws_sdk_servicequotas::Client::new(&conf),
    );
    let prices = PriceListApi::new(&conf);
    let region = region(&conf);
    let settings = Settings::from_env();
    // The vCPUs the stack's runs reserve, in the ledger table.
    let ledger = dispatch::ledger(&aws_sdk_dynamodb::Client::new(&conf), &settings);
    serve(|payload| {
        let clients = quota_check::Clients {
            ec2: &ec2,
            quotas: &quotas,
            prices: &prices,
            reservations: ledger.as_ref(),
        };
        dispatch::quota_check(clients, &region, &settings, payload, Utc::now())
    })
    .await
}
