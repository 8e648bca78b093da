//! The quota-check Lambda.
//! It links its own handler and the clients it calls, nothing else (`wiring::quota_check`).

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    ephemera_functions::wiring::quota_check::serve().await
}
