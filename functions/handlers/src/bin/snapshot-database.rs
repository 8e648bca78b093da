//! The snapshot-database Lambda.
//! It links its own handler and the clients it calls, nothing else.

use chrono::Utc;
use ephemera_functions::{dispatch, dispatch::sdk_config, dispatch::serve, Settings};

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    let conf = sdk_config().await;
    let rds = aws_sdk_rds::Client::new(&conf);
    let settings = Settings::from_env();
    serve(|payload| dispatch::snapshot_database(&rds, &settings, payload, Utc::now())).await
}
