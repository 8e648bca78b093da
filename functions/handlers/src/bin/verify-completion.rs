//! The verify-completion Lambda.
//! It links its own handler and the clients it calls, nothing else (`wiring::verify_completion`).

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    ephemera_functions::wiring::verify_completion::serve().await
}
