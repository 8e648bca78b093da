//! The health-check Lambda.
//! It links its own handler and the clients it calls, nothing else (`wiring::health_check`).

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    ephemera_functions::wiring::health_check::serve().await
}
