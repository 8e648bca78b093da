//! The verify-completion Lambda.
//! It links its own handler and the clients it calls, nothing else.

use chrono::Utc;
use ephemera_functions::{aws::s3_client, dispatch, dispatch::sdk_config, dispatch::serve};

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    let conf = sdk_config().await;
    let s3 = s3_client(&conf);
    serve(|payload| dispatch::verify_completion(&s3, payload, Utc::now())).await
}
